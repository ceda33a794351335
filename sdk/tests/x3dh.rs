//! X3DH acceptance: agreement, refusal of bad bundles before any DH, one-time
//! prekey consumption, last-resort replay, identity changes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use common::{Pair, T0, addr, bundle_with_one_time, device, rng};
use hush::keys::{IdentityKeyPair, KeyError};
use hush::session::SessionMessage;
use hush::store::{MemoryStore, StorageKey, Table};
use hush::{Error, Event, PreKeyBundle};

#[test]
fn both_sides_derive_the_same_session_with_and_without_one_time_prekey() {
    for with_otk in [true, false] {
        let mut p = Pair::new(1);
        let bundle = if with_otk {
            bundle_with_one_time(&mut p.bob, &mut p.rng)
        } else {
            p.bob.bundle().unwrap()
        };
        let events = p.alice.start_session(&mut p.rng, &bundle, p.now).unwrap();
        assert!(events.contains(&Event::DeviceAdded(addr("bob", 1))));
        assert!(
            matches!(&events[0], Event::IdentityTrusted { user, .. } if user.as_str() == "bob")
        );
        let m = p.a_to_b(b"first");
        assert_eq!(p.bob_reads(&m).unwrap(), b"first");
        let r = p.b_to_a(b"reply");
        assert_eq!(p.alice_reads(&r).unwrap(), b"reply");
        // Both hold a session with the same base key.
        let a = p.alice.active_session(&addr("bob", 1)).unwrap().unwrap();
        let b = p.bob.active_session(&addr("alice", 1)).unwrap().unwrap();
        assert_eq!(a.base_key(), b.base_key());
        assert!(!a.is_pending());
    }
}

#[test]
fn bad_signatures_and_foreign_certificates_are_refused_before_any_session() {
    let mut p = Pair::new(2);
    let mut r = rng(99);
    let mut mallory = device(
        MemoryStore::new(),
        &StorageKey::generate(&mut r),
        "bob",
        1,
        &mut r,
    );
    let good = bundle_with_one_time(&mut p.bob, &mut p.rng);

    // A signed prekey of another identity.
    let bad_spk = PreKeyBundle {
        signed_prekey: mallory.bundle().unwrap().signed_prekey,
        ..good.clone()
    };
    assert!(matches!(
        p.alice.start_session(&mut p.rng, &bad_spk, T0),
        Err(Error::Key(KeyError::BadSignature(_)))
    ));
    // A last-resort prekey of another identity.
    let bad_lrk = PreKeyBundle {
        last_resort_prekey: mallory.bundle().unwrap().last_resort_prekey,
        ..good.clone()
    };
    assert!(p.alice.start_session(&mut p.rng, &bad_lrk, T0).is_err());
    // A certificate of another identity.
    let bad_cert = PreKeyBundle {
        certificate: mallory.bundle().unwrap().certificate,
        ..good.clone()
    };
    assert!(p.alice.start_session(&mut p.rng, &bad_cert, T0).is_err());
    assert!(!p.alice.has_session(&addr("bob", 1)).unwrap());
    assert_eq!(
        p.alice.trusted_identity(&addr("bob", 1).user).unwrap(),
        None,
        "nothing trusted"
    );

    // After trusting Bob, a bundle under Mallory's identity is an identity change.
    p.alice.start_session(&mut p.rng, &good, T0).unwrap();
    let mallory_bundle = bundle_with_one_time(&mut mallory, &mut r);
    match p.alice.start_session(&mut p.rng, &mallory_bundle, T0) {
        Err(Error::IdentityChanged(change)) => {
            assert_eq!(change.trusted, p.bob.identity_key());
            assert_eq!(change.received, mallory.identity_key());
        }
        other => panic!("expected an identity change, got {other:?}"),
    }
    // Accepting it explicitly lets the session start.
    let user = addr("bob", 1).user;
    p.alice
        .accept_identity_change(&mut p.rng, &user, &mallory.identity_key(), T0)
        .unwrap();
    assert!(
        !p.alice.has_session(&addr("bob", 1)).unwrap(),
        "old sessions are dropped"
    );
    p.alice
        .start_session(&mut p.rng, &mallory_bundle, T0)
        .unwrap();
}

#[test]
fn a_one_time_prekey_is_consumed_exactly_once() {
    let mut p = Pair::new(3);
    let bundle = bundle_with_one_time(&mut p.bob, &mut p.rng);
    // Two initiators race for the same one-time prekey (a misbehaving server).
    let mut r = rng(7);
    let carol_key = StorageKey::generate(&mut r);
    let mut carol = device(MemoryStore::new(), &carol_key, "carol", 1, &mut r);
    p.alice.start_session(&mut p.rng, &bundle, T0).unwrap();
    carol.start_session(&mut r, &bundle, T0).unwrap();
    let from_alice = p.a_to_b(b"a");
    let from_carol = carol.encrypt(&mut r, p.bob.address(), b"c", T0).unwrap();
    assert_eq!(p.bob_reads(&from_alice).unwrap(), b"a");
    let before = p.bob.store().clone();
    match p.bob.decrypt(&mut r, &addr("carol", 1), &from_carol, T0) {
        Err(Error::UnknownOneTimePreKey(id)) => {
            assert_eq!(Some(id), bundle.one_time_prekey.map(|k| k.id))
        }
        other => panic!("expected a used one-time prekey error, got {other:?}"),
    }
    assert_eq!(&before, p.bob.store(), "a refused message stores nothing");
}

#[test]
fn an_unknown_one_time_prekey_id_is_refused() {
    let mut p = Pair::new(4);
    let mut bundle = bundle_with_one_time(&mut p.bob, &mut p.rng);
    if let Some(k) = bundle.one_time_prekey.as_mut() {
        k.id = hush::keys::PreKeyId(4242);
    }
    p.alice.start_session(&mut p.rng, &bundle, T0).unwrap();
    let m = p.a_to_b(b"x");
    assert!(matches!(
        p.bob_reads(&m),
        Err(Error::UnknownOneTimePreKey(hush::keys::PreKeyId(4242)))
    ));
}

#[test]
fn repeated_initial_messages_reach_the_same_session() {
    let mut p = Pair::connected(5);
    let m1 = p.a_to_b(b"one");
    let m2 = p.a_to_b(b"two");
    assert!(matches!(
        SessionMessage::from_bytes(&m2).unwrap(),
        SessionMessage::Initial { .. }
    ));
    // Delivered out of order: the second initial message creates the session,
    // the first is matched to it by its base key (its one-time prekey is gone).
    assert_eq!(p.bob_reads(&m2).unwrap(), b"two");
    assert_eq!(p.bob_reads(&m1).unwrap(), b"one");
    assert_eq!(p.bob.session_count(&addr("alice", 1)).unwrap(), 1);
    // Once Bob replied, Alice sends normal messages.
    let r = p.b_to_a(b"ok");
    p.alice_reads(&r).unwrap();
    let m3 = p.a_to_b(b"three");
    assert!(matches!(
        SessionMessage::from_bytes(&m3).unwrap(),
        SessionMessage::Normal(_)
    ));
    assert_eq!(p.bob_reads(&m3).unwrap(), b"three");
}

#[test]
fn a_replayed_last_resort_initial_message_is_refused() {
    let mut p = Pair::new(6);
    let bundle = p.bob.bundle().unwrap(); // no one-time prekey left: last resort
    p.alice.start_session(&mut p.rng, &bundle, T0).unwrap();
    let m = p.a_to_b(b"hello");
    assert_eq!(p.bob_reads(&m).unwrap(), b"hello");
    // Bob loses the session (e.g. restored from an old backup) but keeps the
    // replay cache: the same initial message must not create a session again.
    let mut store = p.bob.store().clone();
    store.rows_mut().retain(|(t, _), _| *t != Table::Sessions);
    let key = p.bob_key.clone();
    let mut bob = hush::SessionManager::open(store, &key).unwrap();
    assert!(matches!(
        bob.decrypt(&mut p.rng, &addr("alice", 1), &m, T0),
        Err(Error::ReplayedInitialMessage)
    ));
    // A different initiator (new base key) on the same last-resort key is fine.
    let mut r = rng(8);
    let mut carol = device(
        MemoryStore::new(),
        &StorageKey::generate(&mut r),
        "carol",
        1,
        &mut r,
    );
    carol.start_session(&mut r, &bundle, T0).unwrap();
    let c = carol.encrypt(&mut r, &addr("bob", 1), b"hi", T0).unwrap();
    assert_eq!(
        bob.decrypt(&mut r, &addr("carol", 1), &c, T0)
            .unwrap()
            .plaintext,
        b"hi"
    );
}

#[test]
fn rotated_prekeys_still_open_queued_first_messages_within_the_grace_period() {
    let mut p = Pair::new(9);
    let bundle = p.bob.bundle().unwrap();
    p.alice.start_session(&mut p.rng, &bundle, T0).unwrap();
    let m = p.a_to_b(b"queued");
    // Bob rotates after 8 days; the message was queued meanwhile.
    let later = T0 + 8 * 24 * 3600;
    assert!(p.bob.rotate_prekeys(&mut p.rng, later).unwrap());
    assert_ne!(
        p.bob.bundle().unwrap().last_resort_prekey.id(),
        bundle.last_resort_prekey.id()
    );
    p.now = later;
    assert_eq!(p.bob_reads(&m).unwrap(), b"queued");
    // Far past the grace period the old key is gone.
    let mut p = Pair::new(10);
    let bundle = p.bob.bundle().unwrap();
    p.alice.start_session(&mut p.rng, &bundle, T0).unwrap();
    let m = p.a_to_b(b"too late");
    let t1 = T0 + 8 * 24 * 3600;
    p.bob.rotate_prekeys(&mut p.rng, t1).unwrap();
    let t2 = t1 + hush::keys::PreKeySettings::DEFAULT_GRACE + 1;
    p.bob.rotate_prekeys(&mut p.rng, t2).unwrap();
    p.now = t2;
    assert!(matches!(
        p.bob_reads(&m),
        Err(Error::UnknownLastResortPreKey(_))
    ));
}

#[test]
fn a_message_from_a_device_with_a_foreign_certificate_is_refused() {
    let mut p = Pair::connected(11);
    let m = p.a_to_b(b"x");
    // Claimed to come from another device than the certificate names.
    assert!(matches!(
        p.bob.decrypt(&mut p.rng, &addr("alice", 2), &m, T0),
        Err(Error::SenderMismatch)
    ));
    // A ghost device of a trusted user, certified by someone else, is refused.
    let mut r = rng(12);
    let ghost_identity = IdentityKeyPair::generate(&mut r);
    let auth = hush::keys::DeviceAuthKeyPair::generate(&mut r);
    let user = addr("alice", 1).user;
    let ghost =
        ghost_identity.certify_device(&user, hush::keys::DeviceId(7), &auth.public_key(), T0);
    assert_eq!(p.bob_reads(&m).unwrap(), b"x");
    assert!(matches!(
        p.bob.add_device(&mut p.rng, &ghost),
        Err(Error::UntrustedDevice(_))
    ));
    let real = p.alice.identity_key_pair().certify_device(
        &user,
        hush::keys::DeviceId(7),
        &auth.public_key(),
        T0,
    );
    assert_eq!(
        p.bob.add_device(&mut p.rng, &real).unwrap(),
        vec![Event::DeviceAdded(addr("alice", 7))]
    );
    assert_eq!(p.bob.known_devices(&user).unwrap().len(), 2);
}

#[test]
fn safety_numbers_match_on_both_sides() {
    let mut p = Pair::connected(13);
    let m = p.a_to_b(b"x");
    p.bob_reads(&m).unwrap();
    let on_alice = p
        .alice
        .safety_number(&addr("bob", 1).user)
        .unwrap()
        .unwrap();
    let on_bob = p
        .bob
        .safety_number(&addr("alice", 1).user)
        .unwrap()
        .unwrap();
    assert_eq!(on_alice.digits(), on_bob.digits());
    assert!(on_bob.matches_qr(&on_alice.qr_payload()).unwrap());
}

#[test]
fn too_many_one_time_prekeys_at_once_are_refused() {
    let mut p = Pair::new(14);
    assert!(matches!(
        p.bob.generate_one_time_prekeys(&mut p.rng, 101),
        Err(Error::TooManyPreKeys { max: 100 })
    ));
    assert_eq!(
        p.bob
            .generate_one_time_prekeys(&mut p.rng, 100)
            .unwrap()
            .len(),
        100
    );
}

#[test]
fn small_order_and_non_canonical_keys_in_messages_are_refused_at_decoding() {
    let mut p = Pair::connected(15);
    let m = p.a_to_b(b"x");
    // tag, header version, certificate of "alice" (115 bytes), identity (32): then the base key.
    let base_key_at = 1 + 1 + 115 + 32;
    let identity_at = 1 + 1 + 115;
    for (at, bad) in [
        (base_key_at, [0u8; 32]),
        (base_key_at, {
            let mut p = [0xffu8; 32];
            p[31] = 0x7f;
            p[0] = 0xed;
            p
        }),
        (identity_at, {
            let mut one = [0u8; 32];
            one[0] = 1;
            one
        }),
    ] {
        let mut tampered = m.clone();
        tampered[at..at + 32].copy_from_slice(&bad);
        let before = p.bob.store().clone();
        assert!(
            matches!(
                p.bob_reads(&tampered),
                Err(Error::Decode(hush::DecodeError::InvalidKey))
            ),
            "offset {at}"
        );
        assert_eq!(&before, p.bob.store());
    }
    assert_eq!(p.bob_reads(&m).unwrap(), b"x");
    // Prekeys with such keys do not decode either.
    let mut spk = p.bob.bundle().unwrap().signed_prekey.to_bytes();
    spk[13..45].copy_from_slice(&[0u8; 32]);
    assert_eq!(
        hush::keys::SignedPreKey::from_bytes(&spk),
        Err(hush::DecodeError::InvalidKey)
    );
}

#[test]
fn debug_output_of_public_types_shows_no_secrets() {
    let mut p = Pair::connected(16);
    let key = format!("{:?}", StorageKey::from_bytes([0xab; 32]));
    assert!(!key.contains("ab") && !key.contains("171"), "{key}");
    let m = p.a_to_b(b"very private words");
    let bob_addr = addr("bob", 1);
    let alice_addr = p.alice.address().clone();
    let decrypted = p.bob.decrypt(&mut p.rng, &alice_addr, &m, T0).unwrap();
    let seed = p.alice.identity_key_pair().to_seed_bytes();
    let auth_seed = p.alice.device_auth_key().to_seed_bytes();
    let printed = [
        format!("{:?}", p.alice),
        format!("{:?}", p.alice.identity_key_pair()),
        format!("{:?}", p.alice.device_auth_key()),
        format!("{:?}", p.alice.active_session(&bob_addr).unwrap().unwrap()),
        format!("{decrypted:?}"),
    ]
    .join("\n");
    for secret in [&seed[..], &auth_seed[..]] {
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let list = format!("{:?}", &secret[..6]);
        assert!(!printed.contains(&hex[..12]), "{printed}");
        assert!(!printed.contains(&list[1..list.len() - 1]), "{printed}");
    }
    assert!(!printed.contains("very private"), "{printed}");
    // Seeds restore the same keys.
    let restored = IdentityKeyPair::from_seed_bytes(&seed);
    assert_eq!(restored.public_key(), p.alice.identity_key());
}

/// An identity change is reported only for a message that authenticates under
/// the new identity: a forged header naming another identity is refused
/// without any warning the user could be talked into accepting.
#[test]
fn an_identity_change_is_reported_only_for_authentic_messages() {
    let mut p = Pair::connected(17);
    let m = p.a_to_b(b"first");
    p.bob_reads(&m).unwrap();
    // The server replays Alice's initial message with another identity pasted in.
    let mut r = rng(18);
    let mallory = IdentityKeyPair::generate(&mut r);
    let identity_at = 1 + 1 + 115;
    let mut forged = m.clone();
    forged[identity_at..identity_at + 32].copy_from_slice(&mallory.public_key().to_bytes());
    let got = p.bob_reads(&forged);
    assert!(!matches!(got, Err(Error::IdentityChanged(_))), "{got:?}");
    assert!(got.is_err());

    // Alice really rotates her identity (a new account identity on the same
    // device address): that message authenticates, so the change is reported.
    let mut r = rng(19);
    let key = StorageKey::generate(&mut r);
    let mut new_alice = device(MemoryStore::new(), &key, "alice", 1, &mut r);
    let bundle = bundle_with_one_time(&mut p.bob, &mut p.rng);
    new_alice.start_session(&mut r, &bundle, T0).unwrap();
    let m = new_alice
        .encrypt(&mut r, &addr("bob", 1), b"new me", T0)
        .unwrap();
    let before = p.bob.store().clone();
    match p.bob_reads(&m) {
        Err(Error::IdentityChanged(change)) => {
            assert_eq!(change.received, new_alice.identity_key());
            assert_eq!(change.trusted, p.alice.identity_key());
        }
        other => panic!("expected an identity change, got {other:?}"),
    }
    assert_eq!(
        &before,
        p.bob.store(),
        "nothing is stored before the user decides"
    );
}
