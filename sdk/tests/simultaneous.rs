//! Both devices initiate at once and their messages cross.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use common::{Pair, addr, bundle_with_one_time};

/// Both sides end up sending on the same session, and messages that crossed
/// on the losing session are still decrypted without changing the choice.
#[test]
fn simultaneous_initiation_converges_on_one_session() {
    for seed in 0..16 {
        let mut p = Pair::new(seed);
        let alice_bundle = bundle_with_one_time(&mut p.alice, &mut p.rng);
        let bob_bundle = bundle_with_one_time(&mut p.bob, &mut p.rng);
        // Same second on both clocks: the base keys decide.
        p.alice
            .start_session(&mut p.rng, &bob_bundle, p.now)
            .unwrap();
        p.bob
            .start_session(&mut p.rng, &alice_bundle, p.now)
            .unwrap();
        let a1 = p.a_to_b(b"a1");
        let b1 = p.b_to_a(b"b1");
        // They cross.
        assert_eq!(p.bob_reads(&a1).unwrap(), b"a1");
        assert_eq!(p.alice_reads(&b1).unwrap(), b"b1");
        let on_alice = p.alice.active_session(&addr("bob", 1)).unwrap().unwrap();
        let on_bob = p.bob.active_session(&addr("alice", 1)).unwrap().unwrap();
        assert_eq!(
            on_alice.base_key(),
            on_bob.base_key(),
            "seed {seed}: same active session"
        );
        assert_eq!(p.alice.session_count(&addr("bob", 1)).unwrap(), 2);

        // More traffic crossing both ways never flips the choice.
        let chosen = *on_alice.base_key();
        for round in 0..3u8 {
            let a = p.a_to_b(&[round]);
            let b = p.b_to_a(&[round, round]);
            assert_eq!(p.alice_reads(&b).unwrap(), vec![round, round]);
            assert_eq!(p.bob_reads(&a).unwrap(), vec![round]);
            for m in [&p.alice, &p.bob] {
                let peer = if m.address().user.as_str() == "alice" {
                    addr("bob", 1)
                } else {
                    addr("alice", 1)
                };
                assert_eq!(
                    m.active_session(&peer).unwrap().unwrap().base_key(),
                    &chosen
                );
            }
        }
        let on_alice = p.alice.active_session(&addr("bob", 1)).unwrap().unwrap();
        assert!(!on_alice.is_pending(), "the winner got its reply");
    }
}

/// A session initiated later (a re-key, or a peer that lost its state) wins.
#[test]
fn a_newer_session_takes_over() {
    let mut p = Pair::connected(40);
    let m = p.a_to_b(b"old");
    p.bob_reads(&m).unwrap();
    let r = p.b_to_a(b"old reply");
    p.alice_reads(&r).unwrap();
    p.now += 60;
    let alice_bundle = bundle_with_one_time(&mut p.alice, &mut p.rng);
    p.bob
        .start_session(&mut p.rng, &alice_bundle, p.now)
        .unwrap();
    let b = p.b_to_a(b"new");
    assert_eq!(p.alice_reads(&b).unwrap(), b"new");
    let on_alice = p.alice.active_session(&addr("bob", 1)).unwrap().unwrap();
    let on_bob = p.bob.active_session(&addr("alice", 1)).unwrap().unwrap();
    assert_eq!(on_alice.base_key(), on_bob.base_key());
    assert_eq!(on_alice.created_at(), p.now);
    let a = p.a_to_b(b"on the new one");
    assert_eq!(p.bob_reads(&a).unwrap(), b"on the new one");
}

/// A peer that lost its sessions starts again and takes over, whatever the
/// two clocks say (here the first session was made on a clock a day fast).
#[test]
fn a_peer_that_lost_its_state_takes_over_whatever_the_clocks() {
    let mut p = Pair::new(50);
    let bundle = bundle_with_one_time(&mut p.bob, &mut p.rng);
    p.alice
        .start_session(&mut p.rng, &bundle, p.now + 86_400)
        .unwrap();
    let m = p.a_to_b(b"hi");
    p.bob_reads(&m).unwrap();
    let r = p.b_to_a(b"hello");
    p.alice_reads(&r).unwrap();

    // Bob's sessions are lost (say, a restored backup); he starts again.
    let mut store = p.bob.store().clone();
    store
        .rows_mut()
        .retain(|(t, _), _| *t != hush::store::Table::Sessions);
    p.bob = hush::SessionManager::open(store, &p.bob_key).unwrap();
    let alice_bundle = bundle_with_one_time(&mut p.alice, &mut p.rng);
    p.bob
        .start_session(&mut p.rng, &alice_bundle, p.now)
        .unwrap();
    for round in 0..3u8 {
        let b = p.b_to_a(&[round]);
        assert_eq!(p.alice_reads(&b).unwrap(), vec![round]);
        let a = p.a_to_b(&[round, 1]);
        assert_eq!(p.bob_reads(&a).unwrap(), vec![round, 1], "round {round}");
    }
}

/// Sessions added later never push the newest out, however many there are.
#[test]
fn the_newest_session_is_kept_when_the_list_is_full() {
    let mut p = Pair::new(60);
    for i in 0..8u64 {
        let bundle = bundle_with_one_time(&mut p.bob, &mut p.rng);
        // Each new session is made on an older clock than the one before.
        p.alice
            .start_session(&mut p.rng, &bundle, p.now - i * 1000)
            .unwrap();
        let m = p.a_to_b(&[i as u8]);
        assert_eq!(p.bob_reads(&m).unwrap(), vec![i as u8]);
        let r = p.b_to_a(b"ok");
        assert_eq!(p.alice_reads(&r).unwrap(), b"ok");
    }
    assert_eq!(p.bob.session_count(&addr("alice", 1)).unwrap(), 5);
}
