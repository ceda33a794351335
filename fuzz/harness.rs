//! The fuzz harness, shared by the cargo-fuzz targets in `fuzz/fuzz_targets/`
//! and by the corpus replay test `sdk/tests/fuzz_corpus.rs`, which includes
//! this file with `#[path]`. It uses only Hush's public, non-`hazmat` API, so
//! the replay test runs in every `cargo test`.
//!
//! Each entry point takes arbitrary bytes and panics only when Hush breaks a
//! promise: a panic inside Hush, a failed operation that changed the store
//! ("on any error, nothing was stored"), a message that decrypts twice, a
//! decoded value that does not survive re-encoding, a frame stream that
//! splits differently depending on where the bytes were cut, or an
//! attachment that releases bytes it did not authenticate.
//!
//! This file holds the session and store targets; [`wire`] the byte formats
//! between client and server, [`attachment`] the attachment pointer and blob.
//!
//! The fixtures are built once, deterministically (seeded RNG, fixed time),
//! so a corpus file means the same thing on every run.

#![allow(
    dead_code,
    reason = "each includer uses a different part of the harness"
)]
#![allow(
    clippy::expect_used,
    reason = "the fixture is built from fixed inputs; a failure is a harness bug"
)]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use aes_gcm::aead::{Aead, Nonce, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use hkdf::Hkdf;
use hush::keys::{DeviceAddress, DeviceAuthKeyPair, DeviceId, IdentityKeyPair, UserId};
use hush::store::{MemoryStore, StorageKey, Table};
use hush::{PreKeyBundle, SessionManager};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use sha2::Sha256;

/// The virtual time of the fixture and of every fuzzed operation.
pub(crate) const NOW: u64 = 1_700_000_000;
/// The receiver's storage key.
pub(crate) const STORAGE_KEY: [u8; 32] = [0x5e; 32];
/// The envelope id the receiver already processed (its inbox copy is unconfirmed).
pub(crate) const PROCESSED_ENVELOPE: &[u8] = b"envelope-0";

/// A fuzz target: the name of its corpus directory and its entry point.
pub(crate) type Target = (&'static str, fn(&[u8]));

/// A stored row: (table, row key) and the stored bytes.
pub(crate) type Row = ((Table, Vec<u8>), Vec<u8>);

/// The fuzz targets.
pub(crate) const TARGETS: [Target; 9] = [
    ("decrypt_message", decrypt_message),
    ("open_stored_state", open_stored_state),
    ("frame_decoder", wire::frame_decoder),
    ("client_frame", wire::client_frame),
    ("server_frame", wire::server_frame),
    ("envelope", wire::envelope),
    ("content", wire::content),
    ("attachment_decrypt", attachment::attachment_decrypt),
    ("pq_prekey", pq_prekey),
];

/// A seed corpus file: target, file name, contents.
pub(crate) type Seed = (&'static str, String, Vec<u8>);

// Paths relative to this file, whichever crate includes it.
#[path = "harness/attachment.rs"]
pub(crate) mod attachment;
#[path = "harness/wire.rs"]
pub(crate) mod wire;

/// Messages captured while the fixture was built, all addressed to Bob.
#[derive(Debug)]
pub(crate) struct Captured {
    /// Alice's first message (initial form, one-time prekey), received by Bob.
    pub(crate) alice_initial: Vec<u8>,
    /// Alice's second message, still in initial form, decrypted by Bob.
    pub(crate) alice_initial_again: Vec<u8>,
    /// Alice's next message after Bob's reply (normal form, new ratchet key); not yet received.
    pub(crate) alice_next: Vec<u8>,
    /// The message after that, same chain; not yet received.
    pub(crate) alice_after_next: Vec<u8>,
    /// Carol's first message (initial form, last-resort prekey), received by Bob.
    pub(crate) carol_initial: Vec<u8>,
    /// Carol's second message, not yet received.
    pub(crate) carol_next: Vec<u8>,
    /// Bob's reply to Alice (addressed to Alice, not to Bob).
    pub(crate) bob_reply: Vec<u8>,
}

/// The receiver Bob in two states, and what is needed to drive him.
#[derive(Debug)]
pub(crate) struct Fixture {
    /// Bob before any message arrived: prekeys published, no session.
    pub(crate) fresh: MemoryStore,
    /// Bob with sessions with Alice and Carol, trusted identities, known
    /// devices, unused one-time prekeys, a last-resort replay entry, and one
    /// processed envelope whose inbox copy is unconfirmed: a row in every table.
    pub(crate) established: MemoryStore,
    /// Alice's device.
    pub(crate) alice: DeviceAddress,
    /// Carol's device.
    pub(crate) carol: DeviceAddress,
    /// A bundle of Carol's, to start another session with.
    pub(crate) carol_bundle: PreKeyBundle,
    /// The captured messages.
    pub(crate) messages: Captured,
}

fn storage_key() -> StorageKey {
    StorageKey::from_bytes(STORAGE_KEY)
}

fn device(name: &str, key: &StorageKey, rng: &mut ChaCha20Rng) -> SessionManager<MemoryStore> {
    SessionManager::create(
        MemoryStore::new(),
        key,
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

fn build() -> Fixture {
    let mut rng = ChaCha20Rng::from_seed([0xf2; 32]);
    let other_key = StorageKey::from_bytes([0x11; 32]);
    let mut alice = device("alice", &other_key, &mut rng);
    let mut bob = device("bob", &storage_key(), &mut rng);
    let mut carol = device("carol", &other_key, &mut rng);

    let one_time = bob
        .generate_one_time_prekeys(&mut rng, 3)
        .expect("one-time prekeys");
    let bundle = PreKeyBundle {
        one_time_prekey: one_time.first().copied(),
        ..bob.bundle().expect("bundle")
    };
    alice
        .start_session(&mut rng, &bundle, NOW)
        .expect("Alice starts");
    let alice_initial = alice
        .encrypt(&mut rng, bob.address(), b"hi Bob", NOW)
        .expect("encrypt");
    let alice_initial_again = alice
        .encrypt(&mut rng, bob.address(), b"are you there?", NOW)
        .expect("encrypt");
    let fresh = bob.store().clone();

    bob.receive(
        &mut rng,
        alice.address(),
        PROCESSED_ENVELOPE,
        &alice_initial,
        NOW,
    )
    .expect("Bob receives");
    bob.decrypt(&mut rng, alice.address(), &alice_initial_again, NOW)
        .expect("Bob decrypts");
    let bob_reply = bob
        .encrypt(&mut rng, alice.address(), b"hi Alice", NOW)
        .expect("reply");
    alice
        .decrypt(&mut rng, bob.address(), &bob_reply, NOW)
        .expect("Alice decrypts");
    let alice_next = alice
        .encrypt(&mut rng, bob.address(), b"good", NOW)
        .expect("encrypt");
    let alice_after_next = alice
        .encrypt(&mut rng, bob.address(), b"news", NOW)
        .expect("encrypt");

    // No one-time prekey: Carol's session uses Bob's last-resort prekey.
    carol
        .start_session(&mut rng, &bob.bundle().expect("bundle"), NOW)
        .expect("Carol starts");
    let carol_initial = carol
        .encrypt(&mut rng, bob.address(), b"hi from Carol", NOW)
        .expect("encrypt");
    let carol_next = carol
        .encrypt(&mut rng, bob.address(), b"me again", NOW)
        .expect("encrypt");
    bob.decrypt(&mut rng, carol.address(), &carol_initial, NOW)
        .expect("Bob decrypts Carol");

    let carol_bundle = carol.bundle().expect("bundle");
    Fixture {
        fresh,
        established: bob.store().clone(),
        alice: alice.address().clone(),
        carol: carol.address().clone(),
        carol_bundle,
        messages: Captured {
            alice_initial,
            alice_initial_again,
            alice_next,
            alice_after_next,
            carol_initial,
            carol_next,
            bob_reply,
        },
    }
}

/// The fixture, built on first use.
pub(crate) fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build)
}

fn open(store: MemoryStore) -> SessionManager<MemoryStore> {
    SessionManager::open(store, &storage_key()).expect("the fixture store opens")
}

/// Runs `op`; if it fails, the store must be exactly as before.
fn unchanged_on_error<T, E>(
    bob: &mut SessionManager<MemoryStore>,
    what: &str,
    op: impl FnOnce(&mut SessionManager<MemoryStore>) -> Result<T, E>,
) -> Option<T> {
    let before = bob.store().clone();
    match op(bob) {
        Ok(value) => Some(value),
        Err(_) => {
            assert!(bob.store() == &before, "a failed {what} changed the store");
            None
        }
    }
}

/// Decrypts `data` as a message from Alice, on the established receiver and
/// on the fresh one, both through `decrypt` and through `receive`. A message
/// that decrypts must not decrypt a second time.
pub(crate) fn decrypt_message(data: &[u8]) {
    let fx = fixture();
    let mut rng = ChaCha20Rng::from_seed([0xd1; 32]);
    for store in [&fx.established, &fx.fresh] {
        let mut bob = open(store.clone());
        let first = unchanged_on_error(&mut bob, "decrypt", |b| {
            b.decrypt(&mut rng, &fx.alice, data, NOW)
        });
        if first.is_some() {
            let again = unchanged_on_error(&mut bob, "repeated decrypt", |b| {
                b.decrypt(&mut rng, &fx.alice, data, NOW)
            });
            assert!(again.is_none(), "a message decrypted twice");
        }

        let mut bob = open(store.clone());
        unchanged_on_error(&mut bob, "receive", |b| {
            b.receive(&mut rng, &fx.alice, b"envelope-fuzz", data, NOW)
        });
    }
}

// ---------------------------------------------------------------------------
// Stored state.

/// Every row of the established store, in the store's (deterministic) order.
pub(crate) fn established_rows() -> Vec<Row> {
    let mut store = fixture().established.clone();
    store
        .rows_mut()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The format of a sealed row, as documented in the store's `vault` module:
/// `version || nonce || AES-256-GCM(seal key, nonce, record, AAD)` with
/// `AAD = "hush.v1.store" || table id || row key || version`. Written here
/// from that description so the fuzzer can reach the record decoders behind
/// the AEAD; the replay test checks it against real rows.
const RECORD_VERSION: u8 = 1;

fn seal_cipher() -> Aes256Gcm {
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(None, &STORAGE_KEY)
        .expand(b"hush.v1.store.seal", &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 length");
    Aes256Gcm::new(&key.into())
}

fn aad(table: Table, row: &[u8]) -> Vec<u8> {
    let mut aad = b"hush.v1.store".to_vec();
    aad.push(table.id());
    aad.extend_from_slice(row);
    aad.push(RECORD_VERSION);
    aad
}

/// Seals `record` for `row` of `table` under the fixture's storage key.
pub(crate) fn seal(table: Table, row: &[u8], record: &[u8]) -> Vec<u8> {
    let nonce = [0u8; 12];
    let sealed = seal_cipher()
        .encrypt(
            &Nonce::<Aes256Gcm>::from(nonce),
            Payload {
                msg: record,
                aad: &aad(table, row),
            },
        )
        .expect("AES-GCM seals any short record");
    let mut out = vec![RECORD_VERSION];
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Opens a sealed row (the postcard record inside), if it is one.
pub(crate) fn unseal(table: Table, row: &[u8], value: &[u8]) -> Option<Vec<u8>> {
    let (&version, rest) = value.split_first()?;
    if version != RECORD_VERSION || rest.len() < 12 {
        return None;
    }
    let (nonce, ciphertext) = rest.split_at(12);
    let nonce: [u8; 12] = nonce.try_into().ok()?;
    seal_cipher()
        .decrypt(
            &Nonce::<Aes256Gcm>::from(nonce),
            Payload {
                msg: ciphertext,
                aad: &aad(table, row),
            },
        )
        .ok()
}

/// How `open_stored_state` reads its input: the first byte chooses the row
/// (`byte >> 2`, modulo the number of rows) and what happens to it; the rest is
/// the new content.
pub(crate) mod selector {
    /// The rest is sealed as the row's record (so the record decoder sees it).
    pub(crate) const SEALED: u8 = 0b01;
    /// The row is removed (the rest is ignored).
    pub(crate) const DELETE: u8 = 0b10;
    /// The rest replaces the stored bytes as they are.
    pub(crate) const RAW: u8 = 0b00;

    /// The selector byte for row `index` with `mode`.
    pub(crate) fn byte(index: usize, mode: u8) -> u8 {
        ((index as u8) << 2) | mode
    }
}

/// Replaces one row of the established store as `data` says, then opens the
/// device and runs every operation over it: each must fail without changing
/// the store, or succeed; none may panic.
pub(crate) fn open_stored_state(data: &[u8]) {
    let Some((&choice, content)) = data.split_first() else {
        return;
    };
    let fx = fixture();
    let mut store = fx.established.clone();
    let rows: &mut BTreeMap<(Table, Vec<u8>), Vec<u8>> = store.rows_mut();
    let index = usize::from(choice >> 2) % rows.len().max(1);
    let Some(key) = rows.keys().nth(index).cloned() else {
        return;
    };
    if choice & selector::DELETE != 0 {
        rows.remove(&key);
    } else if choice & selector::SEALED != 0 && key.0 != Table::Meta {
        rows.insert(key.clone(), seal(key.0, &key.1, content));
    } else {
        rows.insert(key, content.to_vec());
    }
    let Ok(mut bob) = SessionManager::open(store, &storage_key()) else {
        return;
    };
    exercise(&mut bob, fx);
}

/// Every operation of the manager, on Alice's and Carol's sessions.
fn exercise(bob: &mut SessionManager<MemoryStore>, fx: &Fixture) {
    let mut rng = ChaCha20Rng::from_seed([0xe3; 32]);
    let m = &fx.messages;
    let (alice, carol) = (&fx.alice, &fx.carol);

    let _ = bob.has_session(alice);
    let _ = bob.session_count(carol);
    let _ = bob.active_session(alice);
    let _ = bob.trusted_identity(&alice.user);
    let _ = bob.known_devices(&carol.user);
    let _ = bob.safety_number(&alice.user);
    let _ = bob.inbox();
    let _ = bob.bundle();

    unchanged_on_error(bob, "decrypt", |b| {
        b.decrypt(&mut rng, alice, &m.alice_after_next, NOW)
    });
    unchanged_on_error(bob, "decrypt", |b| {
        b.decrypt(&mut rng, alice, &m.alice_next, NOW)
    });
    unchanged_on_error(bob, "decrypt", |b| {
        b.decrypt(&mut rng, alice, &m.alice_initial, NOW)
    });
    unchanged_on_error(bob, "decrypt", |b| {
        b.decrypt(&mut rng, carol, &m.carol_next, NOW)
    });
    unchanged_on_error(bob, "decrypt", |b| {
        b.decrypt(&mut rng, carol, &m.carol_initial, NOW)
    });
    unchanged_on_error(bob, "receive", |b| {
        b.receive(&mut rng, alice, PROCESSED_ENVELOPE, &m.alice_initial, NOW)
    });
    unchanged_on_error(bob, "encrypt", |b| {
        b.encrypt(&mut rng, alice, b"reply", NOW)
    });
    unchanged_on_error(bob, "encrypt", |b| {
        b.encrypt(&mut rng, carol, b"reply", NOW)
    });
    unchanged_on_error(bob, "start_session", |b| {
        b.start_session(&mut rng, &fx.carol_bundle, NOW)
    });
    unchanged_on_error(bob, "add_device", |b| {
        b.add_device(&mut rng, &fx.carol_bundle.certificate)
    });
    unchanged_on_error(bob, "generate_one_time_prekeys", |b| {
        b.generate_one_time_prekeys(&mut rng, 2)
    });
    // Past the rotation interval and every grace period: keys and replay entries go.
    let later = NOW + 365 * 24 * 3600;
    unchanged_on_error(bob, "rotate_prekeys", |b| b.rotate_prekeys(&mut rng, later));
    unchanged_on_error(bob, "purge_processed", |b| b.purge_processed(later, 0));
    unchanged_on_error(bob, "confirm", |b| b.confirm(PROCESSED_ENVELOPE));
    let identity = fx.carol_bundle.identity;
    unchanged_on_error(bob, "accept_identity_change", |b| {
        b.accept_identity_change(&mut rng, &carol.user, &identity, NOW)
    });
}

/// The seed corpus of every target: for `decrypt_message` the captured
/// messages, truncations and bit flips of them; for `open_stored_state` every
/// row's real record, sealed and raw, with truncations, bit flips and
/// deletions; for the others see [`wire::seeds`] and [`attachment::seeds`].
/// Decodes a signed ML-KEM-1024 prekey (and the bytes as a bare
/// encapsulation key); what decodes must re-encode to the same bytes, since
/// both encodings are strict.
pub(crate) fn pq_prekey(data: &[u8]) {
    if let Ok(prekey) = hush::keys::SignedPqPreKey::from_bytes(data) {
        assert_eq!(
            prekey.to_bytes(),
            data,
            "a PQ prekey changed through re-encoding"
        );
    }
    if let Ok(key) = hush::keys::KemPublicKey::from_bytes(data) {
        assert_eq!(
            &key.as_bytes()[..],
            data,
            "a KEM key changed through re-encoding"
        );
    }
}

/// A PQ one-time and a PQ last-resort prekey of a fresh device, whole, cut,
/// with a changed kind, an unreduced key coefficient, or a trailing byte.
fn pq_prekey_seeds() -> Vec<Seed> {
    let mut rng = ChaCha20Rng::from_seed([0x9c; 32]);
    let mut dora = SessionManager::create(
        MemoryStore::new(),
        &StorageKey::from_bytes(STORAGE_KEY),
        IdentityKeyPair::generate(&mut rng),
        DeviceAuthKeyPair::generate(&mut rng),
        UserId::new("dora").expect("valid user id"),
        DeviceId(3),
        Default::default(),
        &mut rng,
        NOW,
    )
    .expect("create device");
    let one_time = dora
        .generate_pq_one_time_prekeys(&mut rng, 1, NOW)
        .expect("PQ one-time prekey");
    let last_resort = dora
        .bundle()
        .expect("bundle")
        .pq_prekey
        .expect("PQ last-resort prekey");
    let mut out = Vec::new();
    for (name, prekey) in [("one-time", &one_time[0]), ("last-resort", &last_resort)] {
        let bytes = prekey.to_bytes();
        out.push(("pq_prekey", format!("valid-{name}"), bytes.clone()));
        out.push((
            "pq_prekey",
            format!("valid-{name}-key"),
            bytes[13..13 + 1568].to_vec(),
        ));
        for cut in [1, 13, 1000, bytes.len() - 1] {
            out.push((
                "pq_prekey",
                format!("truncated-{name}-{cut}"),
                bytes[..cut].to_vec(),
            ));
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        out.push(("pq_prekey", format!("trailing-{name}"), trailing));
        let mut kind = bytes.clone();
        kind[0] = 3;
        out.push(("pq_prekey", format!("bad-kind-{name}"), kind));
        let mut unreduced = bytes.clone();
        unreduced[13..16].copy_from_slice(&[0xff; 3]);
        out.push(("pq_prekey", format!("unreduced-{name}"), unreduced));
    }
    out
}

pub(crate) fn seed_corpus() -> Vec<Seed> {
    let mut out = session_seeds();
    out.extend(pq_prekey_seeds());
    out.extend(wire::seeds());
    out.extend(attachment::seeds());
    out
}

fn session_seeds() -> Vec<Seed> {
    let fx = fixture();
    let m = &fx.messages;
    let mut out = Vec::new();
    let mut add =
        |target: &'static str, name: String, bytes: Vec<u8>| out.push((target, name, bytes));

    let named: [(&str, &[u8]); 7] = [
        ("alice-initial", &m.alice_initial),
        ("alice-initial-again", &m.alice_initial_again),
        ("alice-next", &m.alice_next),
        ("alice-after-next", &m.alice_after_next),
        ("carol-initial", &m.carol_initial),
        ("carol-next", &m.carol_next),
        ("bob-reply", &m.bob_reply),
    ];
    for (name, bytes) in named {
        add("decrypt_message", format!("valid-{name}"), bytes.to_vec());
    }
    add("decrypt_message", "empty".into(), Vec::new());
    for (name, bytes) in [
        ("alice-initial", &m.alice_initial),
        ("alice-next", &m.alice_next),
    ] {
        for cut in [1, 2, bytes.len() / 2, bytes.len() - 1] {
            add(
                "decrypt_message",
                format!("truncated-{name}-{cut}"),
                bytes[..cut].to_vec(),
            );
        }
        // The tag, the version, a key byte, the counters, the ciphertext, the AEAD tag.
        for at in [0, 1, 5, 40, bytes.len() - 20, bytes.len() - 1] {
            let mut flipped = bytes.to_vec();
            flipped[at] ^= 0x01;
            add("decrypt_message", format!("flip-{name}-{at}"), flipped);
        }
    }

    for (index, ((table, row), value)) in established_rows().into_iter().enumerate() {
        let tag = format!("{index:02}-{table:?}").to_lowercase();
        match unseal(table, &row, &value) {
            Some(record) => {
                let sealed = selector::byte(index, selector::SEALED);
                add(
                    "open_stored_state",
                    format!("{tag}-record"),
                    [&[sealed][..], &record].concat(),
                );
                if record.len() > 2 {
                    let cut = &record[..record.len() / 2];
                    add(
                        "open_stored_state",
                        format!("{tag}-record-truncated"),
                        [&[sealed][..], cut].concat(),
                    );
                    let mut flipped = record.clone();
                    flipped[record.len() / 3] ^= 0x80;
                    add(
                        "open_stored_state",
                        format!("{tag}-record-flipped"),
                        [&[sealed][..], &flipped].concat(),
                    );
                }
            }
            None => {
                let raw = selector::byte(index, selector::RAW);
                add(
                    "open_stored_state",
                    format!("{tag}-raw"),
                    [&[raw][..], &value].concat(),
                );
            }
        }
        // A damaged sealed value fails the same way in every table; a few suffice.
        if matches!(table, Table::Meta | Table::Account | Table::Sessions) {
            let mut flipped = value.clone();
            if let Some(byte) = flipped.last_mut() {
                *byte ^= 0x01;
            }
            let raw = selector::byte(index, selector::RAW);
            add(
                "open_stored_state",
                format!("{tag}-raw-flipped"),
                [&[raw][..], &flipped].concat(),
            );
        }
        add(
            "open_stored_state",
            format!("{tag}-deleted"),
            vec![selector::byte(index, selector::DELETE)],
        );
    }
    out
}
