//! Hush beside vodozemac (Olm): session creation, encrypt and decrypt, the DH
//! ratchet step, and the same operations through [`SessionManager`] on a
//! `MemoryStore` and on a `SqliteStore`, so that sealing and the SQLite commit
//! show up as their own rows.
//!
//! `cargo bench -p hush-benches`; the numbers and how to read them are in
//! `docs/performance.md`.
//!
//! Hush draws all of its randomness from a seeded `ChaCha20Rng`, so every run
//! computes the same keys and messages. vodozemac takes its randomness from the
//! operating system and cannot be seeded; its timings do not depend on the
//! values drawn.
//!
//! Both libraries are measured bytes to bytes: Hush's encrypt returns the wire
//! bytes and its decrypt parses them, so the vodozemac rows include
//! `OlmMessage::to_parts` and `OlmMessage::from_parts`. vodozemac sessions use
//! `SessionConfig::version_2` (untruncated HMAC-SHA-256), Hush uses AES-256-GCM.

#![allow(
    clippy::expect_used,
    reason = "benchmark setup: any failure is a bug to stop on"
)]

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    BatchSize, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group,
    criterion_main,
};
use hush::keys::{DeviceAddress, DeviceAuthKeyPair, DeviceId, IdentityKeyPair, UserId};
use hush::session::Session;
use hush::store::{MemoryStore, SqliteStore, StorageKey, Store};
use hush::{PreKeyBundle, SessionManager, hazmat};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use vodozemac::olm::{Account, OlmMessage, PreKeyMessage, Session as OlmSession, SessionConfig};

/// The virtual time every operation runs at.
const NOW: u64 = 1_700_000_000;

/// Payload sizes of the encrypt and decrypt groups.
const SIZES: [(usize, &str); 3] = [(64, "64 B"), (1024, "1 KiB"), (64 * 1024, "64 KiB")];

fn seeded(seed: u8) -> ChaCha20Rng {
    ChaCha20Rng::from_seed([seed; 32])
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn olm_config() -> SessionConfig {
    SessionConfig::version_2()
}

// ---------------------------------------------------------------------------
// Setup helpers (never timed).

fn device<S: Store>(store: S, name: &str, rng: &mut ChaCha20Rng) -> SessionManager<S> {
    SessionManager::create(
        store,
        &StorageKey::generate(rng),
        IdentityKeyPair::generate(rng),
        DeviceAuthKeyPair::generate(rng),
        UserId::new(name).expect("valid user id"),
        DeviceId(1),
        Default::default(),
        rng,
        NOW,
    )
    .expect("create device")
}

/// `owner`'s bundle, with one fresh one-time prekey.
fn bundle<S: Store>(owner: &mut SessionManager<S>, rng: &mut ChaCha20Rng) -> PreKeyBundle {
    let one_time = owner
        .generate_one_time_prekeys(rng, 1)
        .expect("one-time prekey");
    PreKeyBundle {
        one_time_prekey: one_time.first().copied(),
        ..owner.bundle().expect("bundle")
    }
}

/// Alice starts a session with Bob and one message goes each way. Afterwards
/// Bob's sending chain is live (his next encrypt does no DH step) and Alice has
/// a receiving chain for it; Alice's next encrypt steps the DH ratchet.
fn handshake<S: Store>(
    alice: &mut SessionManager<S>,
    bob: &mut SessionManager<S>,
    rng: &mut ChaCha20Rng,
) {
    let bob_bundle = bundle(bob, rng);
    alice
        .start_session(rng, &bob_bundle, NOW)
        .expect("start session");
    let first = alice
        .encrypt(rng, bob.address(), b"hello Bob", NOW)
        .expect("first message");
    bob.decrypt(rng, alice.address(), &first, NOW)
        .expect("first message decrypts");
    let reply = bob
        .encrypt(rng, alice.address(), b"hello Alice", NOW)
        .expect("reply");
    alice
        .decrypt(rng, bob.address(), &reply, NOW)
        .expect("reply decrypts");
}

/// Two detached Hush sessions after [`handshake`].
struct HushPair {
    alice: Session,
    bob: Session,
    rng: ChaCha20Rng,
}

fn hush_pair(seed: u8) -> HushPair {
    let mut rng = seeded(seed);
    let mut alice = device(MemoryStore::new(), "alice", &mut rng);
    let mut bob = device(MemoryStore::new(), "bob", &mut rng);
    handshake(&mut alice, &mut bob, &mut rng);
    HushPair {
        alice: alice
            .active_session(bob.address())
            .expect("store")
            .expect("Alice's session"),
        bob: bob
            .active_session(alice.address())
            .expect("store")
            .expect("Bob's session"),
        rng,
    }
}

/// Two vodozemac sessions in the same state as [`hush_pair`]: Alice created
/// the outbound session, one message went each way.
struct OlmPair {
    alice: OlmSession,
    bob: OlmSession,
}

fn pre_key(message: OlmMessage) -> PreKeyMessage {
    match message {
        OlmMessage::PreKey(m) => Some(m),
        OlmMessage::Normal(_) => None,
    }
    .expect("a pre-key message")
}

fn olm_pair() -> OlmPair {
    let alice_account = Account::new();
    let mut bob_account = Account::new();
    let one_time = *bob_account
        .generate_one_time_keys(1)
        .created
        .first()
        .expect("one-time key");
    let mut alice = alice_account
        .create_outbound_session(olm_config(), bob_account.curve25519_key(), one_time)
        .expect("outbound session");
    let first = pre_key(alice.encrypt(b"hello Bob").expect("first message"));
    let mut bob = bob_account
        .create_inbound_session(olm_config(), alice_account.curve25519_key(), &first)
        .expect("inbound session")
        .session;
    let reply = bob.encrypt(b"hello Alice").expect("reply");
    alice.decrypt(&reply).expect("reply decrypts");
    OlmPair { alice, bob }
}

fn olm_encrypt(session: &mut OlmSession, plaintext: &[u8]) -> (usize, Vec<u8>) {
    session.encrypt(plaintext).expect("encrypt").to_parts()
}

fn olm_decrypt(session: &mut OlmSession, (kind, bytes): &(usize, Vec<u8>)) -> Vec<u8> {
    let message = OlmMessage::from_parts(*kind, bytes).expect("decode");
    session.decrypt(&message).expect("decrypt")
}

// ---------------------------------------------------------------------------
// Benchmarks.

/// The public-key operations session creation and the DH ratchet are made of,
/// so that the protocol rows can be checked against counts of them.
fn primitives(c: &mut Criterion) {
    use ed25519_dalek::{Signer, SigningKey};
    use x25519_dalek::{PublicKey, StaticSecret};

    let mut g = c.benchmark_group("primitives");
    let ours = StaticSecret::from([7; 32]);
    let theirs = PublicKey::from(&StaticSecret::from([9; 32]));
    g.bench_function("x25519 public key (fixed base)", |b| {
        b.iter(|| PublicKey::from(black_box(&ours)))
    });
    g.bench_function("x25519 diffie-hellman", |b| {
        b.iter(|| black_box(&ours).diffie_hellman(black_box(&theirs)))
    });
    g.bench_function("hush X25519PublicKey::from_bytes", |b| {
        b.iter(|| {
            hush::keys::X25519PublicKey::from_bytes(black_box(theirs.as_bytes()))
                .expect("valid key")
        })
    });

    let signing = SigningKey::from_bytes(&[5; 32]);
    let verifying = signing.verifying_key();
    let message = [0x5a; 120];
    let signature = signing.sign(&message);
    g.bench_function("ed25519 verify_strict", |b| {
        b.iter(|| {
            verifying
                .verify_strict(black_box(&message), black_box(&signature))
                .expect("valid")
        })
    });

    let mut rng = seeded(8);
    let identity = IdentityKeyPair::generate(&mut rng);
    let public = identity.public_key();
    let certificate = identity.certify_device(
        &UserId::new("alice").expect("valid user id"),
        DeviceId(1),
        &DeviceAuthKeyPair::generate(&mut rng).public_key(),
        NOW,
    );
    g.bench_function("hush DeviceCertificate::verify", |b| {
        b.iter(|| {
            black_box(&certificate)
                .verify(black_box(&public))
                .expect("valid")
        })
    });
    g.bench_function("hush IdentityKey::from_bytes", |b| {
        b.iter(|| {
            hush::keys::IdentityKey::from_bytes(black_box(&public.to_bytes())).expect("valid")
        })
    });
    g.bench_function("hush IdentityKey::to_x25519", |b| {
        b.iter(|| black_box(&public).to_x25519())
    });
    g.finish();
}

fn x3dh(c: &mut Criterion) {
    let mut g = c.benchmark_group("x3dh");
    let mut rng = seeded(1);
    let mut alice = device(MemoryStore::new(), "alice", &mut rng);
    let mut bob = device(MemoryStore::new(), "bob", &mut rng);
    let pq_bundle = {
        let pq = bob
            .generate_pq_one_time_prekeys(&mut rng, 1, NOW)
            .expect("PQ one-time prekey");
        PreKeyBundle {
            pq_prekey: pq.first().cloned(),
            ..bundle(&mut bob, &mut rng)
        }
    };
    // The classical rows: a bundle without a PQ prekey, which the app must
    // allow explicitly.
    let bob_bundle = PreKeyBundle {
        pq_prekey: None,
        ..bundle(&mut bob, &mut rng)
    };
    alice.set_classical_fallback(hush::x3dh::ClassicalFallback::Allow);
    let first = b"hello Bob";

    // PQXDH: verify the bundle (4 Ed25519), 4 X25519 DH, one ML-KEM-1024
    // encapsulation (the encapsulation key is parsed and checked first).
    g.bench_function("hush/pqxdh initiate", |b| {
        b.iter(|| {
            alice
                .dangerous_initiate(&mut rng, black_box(&pq_bundle), NOW)
                .expect("initiate")
        })
    });
    g.bench_function("hush/pqxdh initiate + first encrypt", |b| {
        b.iter(|| {
            let mut session = alice
                .dangerous_initiate(&mut rng, black_box(&pq_bundle), NOW)
                .expect("initiate");
            hazmat::encrypt(&mut session, &mut rng, first).expect("encrypt")
        })
    });
    // Decode the initial message, load the prekeys, one ML-KEM-1024
    // decapsulation (the key is expanded from its seed), 4 DH, the first message.
    let mut session = alice
        .dangerous_initiate(&mut rng, &pq_bundle, NOW)
        .expect("initiate");
    let pq_initial = hazmat::encrypt(&mut session, &mut rng, first).expect("encrypt");
    g.bench_function("hush/pqxdh respond", |b| {
        b.iter(|| {
            bob.dangerous_respond(&mut rng, black_box(&pq_initial), NOW)
                .expect("respond")
        })
    });

    // Verify the bundle (3 Ed25519), 4 X25519 DH, make the session.
    g.bench_function("hush/initiate", |b| {
        b.iter(|| {
            alice
                .dangerous_initiate(&mut rng, black_box(&bob_bundle), NOW)
                .expect("initiate")
        })
    });
    // The initiator's first message adds Hush's first DH ratchet step.
    g.bench_function("hush/initiate + first encrypt", |b| {
        b.iter(|| {
            let mut session = alice
                .dangerous_initiate(&mut rng, black_box(&bob_bundle), NOW)
                .expect("initiate");
            hazmat::encrypt(&mut session, &mut rng, first).expect("encrypt")
        })
    });
    // Decode the initial message, find the prekeys, 4 DH, decrypt the first message.
    let mut session = alice
        .dangerous_initiate(&mut rng, &bob_bundle, NOW)
        .expect("initiate");
    let initial = hazmat::encrypt(&mut session, &mut rng, first).expect("encrypt");
    g.bench_function("hush/respond", |b| {
        b.iter(|| {
            bob.dangerous_respond(&mut rng, black_box(&initial), NOW)
                .expect("respond")
        })
    });

    let olm_alice = Account::new();
    let mut olm_bob = Account::new();
    let olm_bob_key = olm_bob.curve25519_key();
    let one_time = *olm_bob
        .generate_one_time_keys(1)
        .created
        .first()
        .expect("one-time key");
    g.bench_function("vodozemac/outbound", |b| {
        b.iter(|| {
            olm_alice
                .create_outbound_session(olm_config(), black_box(olm_bob_key), black_box(one_time))
                .expect("outbound")
        })
    });
    g.bench_function("vodozemac/outbound + first encrypt", |b| {
        b.iter(|| {
            let mut session = olm_alice
                .create_outbound_session(olm_config(), black_box(olm_bob_key), black_box(one_time))
                .expect("outbound");
            olm_encrypt(&mut session, first)
        })
    });
    // vodozemac removes the one-time key it used, so every inbound session
    // needs a fresh responder account and pre-key message (made in setup).
    let olm_alice_key = olm_alice.curve25519_key();
    g.bench_function("vodozemac/inbound", |b| {
        b.iter_batched(
            || {
                let mut responder = Account::new();
                let one_time = *responder
                    .generate_one_time_keys(1)
                    .created
                    .first()
                    .expect("one-time key");
                let mut outbound = olm_alice
                    .create_outbound_session(olm_config(), responder.curve25519_key(), one_time)
                    .expect("outbound");
                let message = pre_key(outbound.encrypt(first).expect("encrypt"));
                (responder, message.to_bytes())
            },
            |(mut responder, bytes)| {
                let message = PreKeyMessage::from_bytes(&bytes).expect("decode");
                let created = responder
                    .create_inbound_session(olm_config(), olm_alice_key, &message)
                    .expect("inbound");
                (responder, created)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn batch_size(len: usize) -> BatchSize {
    if len > 4096 {
        BatchSize::LargeInput
    } else {
        BatchSize::SmallInput
    }
}

fn encrypt(c: &mut Criterion) {
    let mut g = c.benchmark_group("encrypt");
    for (len, label) in SIZES {
        let plaintext = payload(len);
        g.throughput(Throughput::Bytes(len as u64));
        let HushPair {
            mut bob, mut rng, ..
        } = hush_pair(2);
        g.bench_function(BenchmarkId::new("hush", label), |b| {
            b.iter(|| hazmat::encrypt(&mut bob, &mut rng, black_box(&plaintext)).expect("encrypt"))
        });
        let OlmPair {
            bob: mut olm_bob, ..
        } = olm_pair();
        g.bench_function(BenchmarkId::new("vodozemac", label), |b| {
            b.iter(|| olm_encrypt(&mut olm_bob, black_box(&plaintext)))
        });
    }
    g.finish();
}

fn decrypt(c: &mut Criterion) {
    let mut g = c.benchmark_group("decrypt");
    for (len, label) in SIZES {
        let plaintext = payload(len);
        g.throughput(Throughput::Bytes(len as u64));
        // Messages are made in setup and decrypted in the order they were made,
        // so every one lands on the current receiving chain: no DH step, no
        // skipped keys.
        let HushPair {
            mut alice,
            mut bob,
            mut rng,
        } = hush_pair(3);
        g.bench_function(BenchmarkId::new("hush", label), |b| {
            b.iter_batched(
                || hazmat::encrypt(&mut bob, &mut rng, &plaintext).expect("encrypt"),
                |message| hazmat::decrypt(&mut alice, &message, NOW).expect("decrypt"),
                batch_size(len),
            )
        });
        let OlmPair {
            alice: mut olm_alice,
            bob: mut olm_bob,
        } = olm_pair();
        g.bench_function(BenchmarkId::new("vodozemac", label), |b| {
            b.iter_batched(
                || olm_encrypt(&mut olm_bob, &plaintext),
                |message| olm_decrypt(&mut olm_alice, &message),
                batch_size(len),
            )
        });
    }
    g.finish();
}

fn round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("encrypt+decrypt");
    let plaintext = payload(1024);
    g.throughput(Throughput::Bytes(1024));
    let HushPair {
        mut alice,
        mut bob,
        mut rng,
    } = hush_pair(4);
    g.bench_function(BenchmarkId::new("hush", "1 KiB"), |b| {
        b.iter(|| {
            let message =
                hazmat::encrypt(&mut bob, &mut rng, black_box(&plaintext)).expect("encrypt");
            hazmat::decrypt(&mut alice, &message, NOW).expect("decrypt")
        })
    });
    let OlmPair {
        alice: mut olm_alice,
        bob: mut olm_bob,
    } = olm_pair();
    g.bench_function(BenchmarkId::new("vodozemac", "1 KiB"), |b| {
        b.iter(|| {
            let message = olm_encrypt(&mut olm_bob, black_box(&plaintext));
            olm_decrypt(&mut olm_alice, &message)
        })
    });
    g.finish();
}

/// One message A→B then B→A after the direction changed: each encrypt makes a
/// new ratchet key pair and one DH, each decrypt one DH.
fn dh_ratchet_step(c: &mut Criterion) {
    let mut g = c.benchmark_group("dh_ratchet_step");
    let plaintext = payload(64);
    let HushPair {
        mut alice,
        mut bob,
        mut rng,
    } = hush_pair(5);
    g.bench_function("hush/A->B, B->A", |b| {
        b.iter(|| {
            let m = hazmat::encrypt(&mut alice, &mut rng, &plaintext).expect("encrypt");
            hazmat::decrypt(&mut bob, &m, NOW).expect("decrypt");
            let r = hazmat::encrypt(&mut bob, &mut rng, &plaintext).expect("encrypt");
            hazmat::decrypt(&mut alice, &r, NOW).expect("decrypt")
        })
    });
    let OlmPair {
        alice: mut olm_alice,
        bob: mut olm_bob,
    } = olm_pair();
    g.bench_function("vodozemac/A->B, B->A", |b| {
        b.iter(|| {
            let m = olm_encrypt(&mut olm_alice, &plaintext);
            olm_decrypt(&mut olm_bob, &m);
            let r = olm_encrypt(&mut olm_bob, &plaintext);
            olm_decrypt(&mut olm_alice, &r)
        })
    });
    g.finish();
}

/// The full `SessionManager` path over a store: load and open the sessions
/// row, run the ratchet, seal the row and commit it as one batch.
fn manager_ops<S: Store>(g: &mut BenchmarkGroup<'_, WallTime>, mut store: impl FnMut(&str) -> S) {
    let plaintext = payload(1024);
    let mut rng = seeded(6);
    let mut pair = |rng: &mut ChaCha20Rng, tag: &str| {
        let mut alice = device(store(&format!("{tag}-alice")), "alice", rng);
        let mut bob = device(store(&format!("{tag}-bob")), "bob", rng);
        handshake(&mut alice, &mut bob, rng);
        (alice, bob)
    };
    let addr = |m: &SessionManager<S>| -> DeviceAddress { m.address().clone() };

    let (alice, mut bob) = pair(&mut rng, "encrypt");
    let to_alice = addr(&alice);
    g.bench_function("encrypt 1 KiB", |b| {
        b.iter(|| {
            bob.encrypt(&mut rng, &to_alice, black_box(&plaintext), NOW)
                .expect("encrypt")
        })
    });

    let (mut alice, mut bob) = pair(&mut rng, "decrypt");
    let (to_alice, from_bob) = (addr(&alice), addr(&bob));
    let mut alice_rng = seeded(7);
    g.bench_function("decrypt 1 KiB", |b| {
        b.iter_batched(
            || {
                bob.encrypt(&mut rng, &to_alice, &plaintext, NOW)
                    .expect("encrypt")
            },
            |message| {
                alice
                    .decrypt(&mut alice_rng, &from_bob, &message, NOW)
                    .expect("decrypt")
            },
            BatchSize::SmallInput,
        )
    });

    // Carol keeps starting sessions with Dave; after the first few, Carol's
    // row for Dave holds the cap of 1 + 4 sessions, which is sealed each time.
    let mut carol = device(store("start-carol"), "carol", &mut rng);
    let mut dave = device(store("start-dave"), "dave", &mut rng);
    let dave_bundle = bundle(&mut dave, &mut rng);
    g.bench_function("start_session", |b| {
        b.iter(|| {
            carol
                .start_session(&mut rng, black_box(&dave_bundle), NOW)
                .expect("start")
        })
    });
}

fn manager(c: &mut Criterion) {
    let mut g = c.benchmark_group("manager_memory");
    manager_ops(&mut g, |_| MemoryStore::new());
    g.finish();
}

fn sqlite(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut g = c.benchmark_group("sqlite");
    // Each commit is an fsync (synchronous = FULL): milliseconds, not microseconds.
    g.sample_size(10).sampling_mode(SamplingMode::Flat);
    manager_ops(&mut g, |name| {
        SqliteStore::open(dir.path().join(format!("{name}.db"))).expect("open SQLite store")
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
}

criterion_group! {
    name = protocol;
    config = config();
    targets = primitives, x3dh, encrypt, decrypt, round_trip, dh_ratchet_step, manager, sqlite
}
criterion_main!(protocol);
