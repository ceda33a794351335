//! PQXDH acceptance: PQ prekey signatures checked before any session, PQ
//! one-time prekey consumption, the PQ last-resort replay cache, a tampered
//! KEM ciphertext, the classical fallback (refused by default), and stores
//! written before PQXDH gaining a PQ prekey.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use common::{Pair, T0, addr, bundle_with_one_time, device, rng};
use hush::keys::{KEM_CIPHERTEXT_LEN, KeyError, PqPreKeyKind, SignatureLabel, SignedPqPreKey};
use hush::session::SessionMessage;
use hush::store::{MemoryStore, SqliteStore, StorageKey, Table};
use hush::x3dh::{ClassicalFallback, PQXDH_VERSION, PreKeyChoice, X3DH_VERSION, X3dhError};
use hush::{Error, PreKeyBundle};
use proptest::prelude::*;

/// Bob's bundle with a classical one-time prekey and a PQ one-time prekey.
fn full_bundle(p: &mut Pair) -> PreKeyBundle {
    let pq = p
        .bob
        .generate_pq_one_time_prekeys(&mut p.rng, 1, T0)
        .unwrap();
    PreKeyBundle {
        pq_prekey: Some(pq[0].clone()),
        ..bundle_with_one_time(&mut p.bob, &mut p.rng)
    }
}

/// The header of an initial message and the offset of its KEM ciphertext.
fn kem_offset(wire: &[u8]) -> usize {
    let SessionMessage::Initial { header, .. } = SessionMessage::from_bytes(wire).unwrap() else {
        panic!("not an initial message");
    };
    let ct = header
        .prekeys
        .kem()
        .expect("a PQXDH header")
        .ciphertext
        .clone();
    wire.windows(KEM_CIPHERTEXT_LEN)
        .position(|w| w == ct.as_bytes())
        .unwrap()
}

#[test]
fn a_pqxdh_session_works_with_one_time_and_last_resort_pq_prekeys() {
    for one_time in [true, false] {
        let mut p = Pair::new(40 + u64::from(one_time));
        let bundle = if one_time {
            full_bundle(&mut p)
        } else {
            p.bob.bundle().unwrap()
        };
        let kind = bundle.pq_prekey.as_ref().unwrap().kind();
        assert_eq!(kind == PqPreKeyKind::OneTime, one_time);
        p.alice.start_session(&mut p.rng, &bundle, T0).unwrap();
        let m = p.a_to_b(b"hello");
        assert_eq!(m[1], PQXDH_VERSION);
        let SessionMessage::Initial { header, .. } = SessionMessage::from_bytes(&m).unwrap() else {
            panic!("initial form expected");
        };
        let kem = header.prekeys.kem().unwrap();
        assert_eq!(kem.kind, kind);
        assert_eq!(kem.id, bundle.pq_prekey.as_ref().unwrap().id());
        assert_eq!(p.bob_reads(&m).unwrap(), b"hello");
        let r = p.b_to_a(b"hi");
        assert_eq!(p.alice_reads(&r).unwrap(), b"hi");
        let m = p.a_to_b(b"normal now");
        assert!(matches!(
            SessionMessage::from_bytes(&m).unwrap(),
            SessionMessage::Normal(_)
        ));
        assert_eq!(p.bob_reads(&m).unwrap(), b"normal now");
        // Reopened from the store, the session goes on.
        let mut p = p.reopen();
        let m = p.a_to_b(b"after reopening");
        assert_eq!(p.bob_reads(&m).unwrap(), b"after reopening");
    }
}

#[test]
fn a_tampered_pq_prekey_signature_is_refused_before_any_session_is_created() {
    let mut p = Pair::new(42);
    let good = full_bundle(&mut p);
    let before = p.alice.store().clone();
    let mut bytes = good.pq_prekey.as_ref().unwrap().to_bytes();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let tampered = PreKeyBundle {
        pq_prekey: Some(SignedPqPreKey::from_bytes(&bytes).unwrap()),
        ..good.clone()
    };
    assert!(matches!(
        p.alice.start_session(&mut p.rng, &tampered, T0),
        Err(Error::Key(KeyError::BadSignature(
            SignatureLabel::PqOneTimePreKey
        )))
    ));
    // A PQ prekey of another device of the same account, or of another account.
    let mut r = rng(43);
    let mut mallory = device(
        MemoryStore::new(),
        &StorageKey::generate(&mut r),
        "bob",
        1,
        &mut r,
    );
    let foreign = mallory.generate_pq_one_time_prekeys(&mut r, 1, T0).unwrap();
    let swapped = PreKeyBundle {
        pq_prekey: Some(foreign[0].clone()),
        ..good.clone()
    };
    assert!(matches!(
        p.alice.start_session(&mut p.rng, &swapped, T0),
        Err(Error::Key(KeyError::BadSignature(_)))
    ));
    // Nothing was stored: no session, no trusted identity, no device.
    assert_eq!(p.alice.store(), &before);
    assert_eq!(p.alice.session_count(&addr("bob", 1)).unwrap(), 0);
    assert!(
        p.alice
            .trusted_identity(&addr("bob", 1).user)
            .unwrap()
            .is_none()
    );
    // The genuine bundle still works.
    p.alice.start_session(&mut p.rng, &good, T0).unwrap();
}

#[test]
fn a_tampered_kem_ciphertext_fails_the_first_message_and_nothing_is_stored() {
    let mut p = Pair::new(44);
    let bundle = full_bundle(&mut p);
    p.alice.start_session(&mut p.rng, &bundle, T0).unwrap();
    let m = p.a_to_b(b"hello");
    let at = kem_offset(&m);
    let before = p.bob.store().clone();
    for i in [0, 1, KEM_CIPHERTEXT_LEN / 2, KEM_CIPHERTEXT_LEN - 1] {
        let mut bad = m.clone();
        bad[at + i] ^= 0x40;
        // ML-KEM decapsulation yields another secret without reporting it;
        // the first message's AEAD then fails.
        assert!(matches!(
            p.bob_reads(&bad),
            Err(Error::Ratchet(
                hush::ratchet::RatchetError::AuthenticationFailed
            ))
        ));
        assert_eq!(p.bob.store(), &before);
    }
    // The PQ one-time prekey was not consumed: the genuine message works.
    assert_eq!(p.bob_reads(&m).unwrap(), b"hello");
}

#[test]
fn a_pq_one_time_prekey_is_consumed_exactly_once() {
    let mut p = Pair::new(45);
    let pq = p
        .bob
        .generate_pq_one_time_prekeys(&mut p.rng, 1, T0)
        .unwrap();
    let bundle = PreKeyBundle {
        pq_prekey: Some(pq[0].clone()),
        ..p.bob.bundle().unwrap()
    };
    p.alice.start_session(&mut p.rng, &bundle, T0).unwrap();
    let m = p.a_to_b(b"first");
    assert_eq!(p.bob_reads(&m).unwrap(), b"first");
    // Another initiator (another base key) with the same PQ one-time prekey.
    let mut r = rng(46);
    let mut carol = device(
        MemoryStore::new(),
        &StorageKey::generate(&mut r),
        "carol",
        1,
        &mut r,
    );
    carol.start_session(&mut r, &bundle, T0).unwrap();
    let c = carol.encrypt(&mut r, &addr("bob", 1), b"hi", T0).unwrap();
    let before = p.bob.store().clone();
    assert!(matches!(
        p.bob.decrypt(&mut r, &addr("carol", 1), &c, T0),
        Err(Error::UnknownPqOneTimePreKey(id)) if id == pq[0].id()
    ));
    assert_eq!(p.bob.store(), &before);
}

#[test]
fn a_replayed_kem_ciphertext_on_the_pq_last_resort_prekey_is_refused() {
    let mut p = Pair::new(47);
    // Classical one-time prekeys, PQ last resort: only the PQ replay cache
    // can notice a reused ciphertext under a new base key.
    let first = bundle_with_one_time(&mut p.bob, &mut p.rng);
    p.alice.start_session(&mut p.rng, &first, T0).unwrap();
    let m1 = p.a_to_b(b"one");
    assert_eq!(p.bob_reads(&m1).unwrap(), b"one");
    let second = bundle_with_one_time(&mut p.bob, &mut p.rng);
    p.alice.start_session(&mut p.rng, &second, T0).unwrap();
    let m2 = p.a_to_b(b"two");
    let (at1, at2) = (kem_offset(&m1), kem_offset(&m2));
    assert_eq!(at1, at2);
    let mut spliced = m2.clone();
    spliced[at2..at2 + KEM_CIPHERTEXT_LEN].copy_from_slice(&m1[at1..at1 + KEM_CIPHERTEXT_LEN]);
    let before = p.bob.store().clone();
    assert!(matches!(
        p.bob_reads(&spliced),
        Err(Error::ReplayedInitialMessage)
    ));
    assert_eq!(p.bob.store(), &before);
    assert_eq!(p.bob_reads(&m2).unwrap(), b"two");
}

#[test]
fn a_bundle_without_a_pq_prekey_is_refused_unless_the_app_opts_in() {
    let mut p = Pair::new(48);
    let classical = PreKeyBundle {
        pq_prekey: None,
        ..bundle_with_one_time(&mut p.bob, &mut p.rng)
    };
    let before = p.alice.store().clone();
    assert_eq!(p.alice.classical_fallback(), ClassicalFallback::Refuse);
    assert!(matches!(
        p.alice.start_session(&mut p.rng, &classical, T0),
        Err(Error::X3dh(X3dhError::NoPqPreKey))
    ));
    assert_eq!(p.alice.store(), &before);
    p.alice.set_classical_fallback(ClassicalFallback::Allow);
    p.alice.start_session(&mut p.rng, &classical, T0).unwrap();
    let m = p.a_to_b(b"classical");
    assert_eq!(m[1], X3DH_VERSION);
    assert_eq!(p.bob_reads(&m).unwrap(), b"classical");
    // The setting is not persisted.
    let p = p.reopen();
    assert_eq!(p.alice.classical_fallback(), ClassicalFallback::Refuse);
}

#[test]
fn the_pq_last_resort_prekey_rotates_with_the_classical_ones() {
    let mut p = Pair::new(49);
    let first = p.bob.bundle().unwrap().pq_prekey.unwrap();
    assert_eq!(first.kind(), PqPreKeyKind::LastResort);
    // A first message queued on the old key.
    let bundle = p.bob.bundle().unwrap();
    p.alice.start_session(&mut p.rng, &bundle, T0).unwrap();
    let queued = p.a_to_b(b"queued");
    let week = hush::keys::PreKeySettings::DEFAULT_ROTATION;
    assert!(!p.bob.rotate_prekeys(&mut p.rng, T0 + 1).unwrap());
    assert!(p.bob.rotate_prekeys(&mut p.rng, T0 + week).unwrap());
    let second = p.bob.bundle().unwrap().pq_prekey.unwrap();
    assert_ne!(second.id(), first.id());
    let mut p = p.reopen();
    assert_eq!(p.bob.bundle().unwrap().pq_prekey.unwrap(), second);
    p.now = T0 + week;
    assert_eq!(p.bob_reads(&queued).unwrap(), b"queued");
}

/// A store written before PQXDH has no PQ prekey: its bundle has none until
/// `rotate_prekeys` makes one, and then peers reach it with PQXDH.
#[test]
fn a_store_written_before_pqxdh_gains_a_pq_last_resort_prekey_on_rotation() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("alice.db"), dir.path().join("alice.db")).unwrap();
    let keys = std::fs::read_to_string(src.join("keys.hex")).unwrap();
    let key = StorageKey::from_bytes(
        hex::decode(keys.lines().next().unwrap())
            .unwrap()
            .try_into()
            .unwrap(),
    );
    let now = 1_790_000_000 + 3600;
    let mut old = hush::SessionManager::open(
        SqliteStore::open(dir.path().join("alice.db")).unwrap(),
        &key,
    )
    .unwrap();
    assert!(old.bundle().unwrap().pq_prekey.is_none());
    let mut r = rng(50);
    old.rotate_prekeys(&mut r, now).unwrap();
    let bundle = old.bundle().unwrap();
    assert!(bundle.pq_prekey.is_some());
    bundle.verify().unwrap();
    let mut carol = device(
        MemoryStore::new(),
        &StorageKey::generate(&mut r),
        "carol",
        1,
        &mut r,
    );
    carol.start_session(&mut r, &bundle, now).unwrap();
    let m = carol
        .encrypt(&mut r, old.address(), b"post-quantum hello", now)
        .unwrap();
    assert_eq!(m[1], PQXDH_VERSION);
    let got = old.decrypt(&mut r, &addr("carol", 1), &m, now).unwrap();
    assert_eq!(got.plaintext, b"post-quantum hello");
    // Reopened, the PQ prekey is still there.
    drop(old);
    let old = hush::SessionManager::open(
        SqliteStore::open(dir.path().join("alice.db")).unwrap(),
        &key,
    )
    .unwrap();
    assert_eq!(old.bundle().unwrap().pq_prekey, bundle.pq_prekey);
}

#[test]
fn pq_types_print_no_secrets_and_headers_round_trip() {
    let mut p = Pair::new(51);
    let bundle = full_bundle(&mut p);
    p.alice.start_session(&mut p.rng, &bundle, T0).unwrap();
    let m = p.a_to_b(b"x");
    let SessionMessage::Initial { header, .. } = SessionMessage::from_bytes(&m).unwrap() else {
        panic!("initial form expected");
    };
    assert!(matches!(header.prekeys, PreKeyChoice::PqOneTime { .. }));
    let printed = format!("{header:?}");
    assert!(
        printed.len() < 2000,
        "the ciphertext is abbreviated: {printed}"
    );
    let round: hush::x3dh::InitialHeader =
        postcard::from_bytes(&postcard::to_allocvec(&header).unwrap()).unwrap();
    assert_eq!(&round, &*header);
    let json: hush::x3dh::InitialHeader =
        serde_json::from_str(&serde_json::to_string(&header).unwrap()).unwrap();
    assert_eq!(&json, &*header);
}

#[derive(Debug, Clone, Copy)]
enum PqSlot {
    OneTime,
    LastResort,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Whatever prekeys the bundle carries (classical one-time or not, PQ
    /// one-time or last resort), both sides agree; and an initial message
    /// with any one byte flipped is refused with a typed error and leaves
    /// the responder's store unchanged, after which the genuine message
    /// still opens the session.
    #[test]
    fn pqxdh_agrees_and_any_flipped_byte_is_refused_without_a_trace(
        seed in any::<u64>(),
        classical_one_time in any::<bool>(),
        pq_one_time in any::<bool>(),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut p = Pair::new(seed);
        let slot = if pq_one_time { PqSlot::OneTime } else { PqSlot::LastResort };
        let mut bundle = if classical_one_time {
            bundle_with_one_time(&mut p.bob, &mut p.rng)
        } else {
            p.bob.bundle().unwrap()
        };
        if let PqSlot::OneTime = slot {
            let pq = p.bob.generate_pq_one_time_prekeys(&mut p.rng, 1, T0).unwrap();
            bundle.pq_prekey = Some(pq[0].clone());
        }
        p.alice.start_session(&mut p.rng, &bundle, T0).unwrap();
        let m = p.a_to_b(b"property");
        let before = p.bob.store().clone();
        let mut bad = m.clone();
        let i = flip.index(bad.len());
        bad[i] ^= 1 << bit;
        prop_assert!(p.bob_reads(&bad).is_err());
        prop_assert_eq!(p.bob.store(), &before);
        prop_assert_eq!(p.bob_reads(&m).unwrap(), b"property".to_vec());
        let r = p.b_to_a(b"reply");
        prop_assert_eq!(p.alice_reads(&r).unwrap(), b"reply".to_vec());
    }
}

#[test]
fn the_pq_last_resort_replay_rows_live_in_the_replay_table() {
    let mut p = Pair::new(52);
    let bundle = p.bob.bundle().unwrap();
    p.alice.start_session(&mut p.rng, &bundle, T0).unwrap();
    let m = p.a_to_b(b"x");
    let before = p
        .bob
        .store()
        .clone()
        .rows_mut()
        .keys()
        .filter(|(t, _)| *t == Table::LastResortReplay)
        .count();
    assert_eq!(p.bob_reads(&m).unwrap(), b"x");
    let after = p
        .bob
        .store()
        .clone()
        .rows_mut()
        .keys()
        .filter(|(t, _)| *t == Table::LastResortReplay)
        .count();
    // One entry for the classical last-resort prekey, one for the PQ one.
    assert_eq!(after, before + 2);
}

/// The sizes `docs/performance.md` reports, for users `alice` and `bob`.
#[test]
fn bundle_and_initial_message_sizes_are_as_documented() {
    let mut p = Pair::new(53);
    let pq_bundle = full_bundle(&mut p);
    let classical = PreKeyBundle {
        pq_prekey: None,
        ..pq_bundle.clone()
    };
    let size = |b: &PreKeyBundle| postcard::to_allocvec(b).unwrap().len();
    let (classical_size, pq_size) = (size(&classical), size(&pq_bundle));
    println!("bundle (postcard): X3DH {classical_size} B, PQXDH {pq_size} B");
    // Postcard: varint id and time, a length prefix on key and signature.
    assert_eq!((classical_size, pq_size), (389, 2031));
    p.alice.start_session(&mut p.rng, &pq_bundle, T0).unwrap();
    let pq_initial = p.a_to_b(b"hi");
    let mut q = Pair::new(54);
    q.alice.set_classical_fallback(ClassicalFallback::Allow);
    let b = PreKeyBundle {
        pq_prekey: None,
        ..bundle_with_one_time(&mut q.bob, &mut q.rng)
    };
    q.alice.start_session(&mut q.rng, &b, T0).unwrap();
    let classical_initial = q.a_to_b(b"hi");
    println!(
        "initial message with 2 B plaintext: X3DH {} B, PQXDH {} B",
        classical_initial.len(),
        pq_initial.len()
    );
    assert_eq!(classical_initial.len(), 1 + 197 + 53 + 2 + 16);
    assert_eq!(pq_initial.len(), classical_initial.len() + 1 + 4 + 1568);
    assert_eq!(SignedPqPreKey::ENCODED_LEN, 1645);
    // The envelope cap leaves room for the largest header, a PQXDH one with
    // a 255-byte user id ("alice" has 5).
    assert_eq!(
        197 + 1 + 4 + KEM_CIPHERTEXT_LEN + (255 - 5),
        hush::wire::envelope::MAX_INITIAL_HEADER_LEN
    );
}

/// When a retired PQ last-resort prekey passes its grace period, it goes
/// together with its replay-cache entries, like a classical one.
#[test]
fn a_dropped_pq_last_resort_prekey_takes_its_replay_entries_along() {
    let mut p = Pair::new(55);
    let bundle = p.bob.bundle().unwrap();
    p.alice.start_session(&mut p.rng, &bundle, T0).unwrap();
    let m = p.a_to_b(b"x");
    assert_eq!(p.bob_reads(&m).unwrap(), b"x");
    let replay_rows = |p: &Pair| {
        p.bob
            .store()
            .clone()
            .rows_mut()
            .keys()
            .filter(|(t, _)| *t == Table::LastResortReplay)
            .count()
    };
    assert_eq!(replay_rows(&p), 2);
    let settings = hush::keys::PreKeySettings::default();
    let retired = T0 + settings.rotation_interval;
    assert!(p.bob.rotate_prekeys(&mut p.rng, retired).unwrap());
    assert_eq!(replay_rows(&p), 2);
    let _ = p
        .bob
        .rotate_prekeys(&mut p.rng, retired + settings.grace_period + 1)
        .unwrap();
    assert_eq!(replay_rows(&p), 0);
}
