//! Property tests over whole conversations between two devices.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use common::Pair;
use hush::Error;
use hush::ratchet::RatchetError;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Action {
    /// Alice (true) or Bob (false) sends a message.
    Send(bool),
    /// Deliver the in-flight message at this (wrapped) index.
    Deliver(usize),
    /// Lose the in-flight message at this index.
    Drop(usize),
    /// Deliver again a message that was already delivered.
    Replay(usize),
    /// Deliver a copy of an in-flight message with one byte changed.
    Tamper(usize, usize, u8),
    /// Persist both devices and reopen them from their stores.
    Reopen,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => any::<bool>().prop_map(Action::Send),
        4 => any::<usize>().prop_map(Action::Deliver),
        1 => any::<usize>().prop_map(Action::Drop),
        1 => any::<usize>().prop_map(Action::Replay),
        2 => (any::<usize>(), any::<usize>(), 1..=255u8).prop_map(|(i, at, x)| Action::Tamper(i, at, x)),
        1 => Just(Action::Reopen),
    ]
}

struct InFlight {
    from_alice: bool,
    wire: Vec<u8>,
    plaintext: Vec<u8>,
}

fn read(p: &mut Pair, from_alice: bool, wire: &[u8]) -> Result<Vec<u8>, Error> {
    if from_alice {
        p.bob_reads(wire)
    } else {
        p.alice_reads(wire)
    }
}

fn receiver_store(p: &Pair, from_alice: bool) -> hush::store::MemoryStore {
    if from_alice {
        p.bob.store().clone()
    } else {
        p.alice.store().clone()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// With random send interleavings, delivery order, drops, duplicates and
    /// tampering, and reopening the stores at any step: every delivered message
    /// decrypts exactly once to its plaintext; replays and tampered bytes fail
    /// with a typed error and leave the receiver's stored state unchanged.
    #[test]
    fn every_delivered_message_decrypts_exactly_once(seed in any::<u64>(), actions in prop::collection::vec(action(), 1..80)) {
        let mut p = Pair::connected(seed);
        let mut in_flight: Vec<InFlight> = Vec::new();
        let mut delivered: Vec<InFlight> = Vec::new();
        let mut counter = 0u32;
        for action in actions {
            match action {
                Action::Send(from_alice) => {
                    if !from_alice && !p.bob.has_session(p.alice.address()).unwrap() {
                        continue; // Bob cannot send before Alice's first message arrives.
                    }
                    counter += 1;
                    let plaintext = format!("{} #{counter}", if from_alice { "alice" } else { "bob" }).into_bytes();
                    let wire = if from_alice { p.a_to_b(&plaintext) } else { p.b_to_a(&plaintext) };
                    in_flight.push(InFlight { from_alice, wire, plaintext });
                }
                Action::Deliver(i) if !in_flight.is_empty() => {
                    let m = in_flight.remove(i % in_flight.len());
                    let got = read(&mut p, m.from_alice, &m.wire);
                    prop_assert_eq!(got.as_ref().ok(), Some(&m.plaintext), "{:?}", got);
                    delivered.push(m);
                }
                Action::Drop(i) if !in_flight.is_empty() => {
                    in_flight.remove(i % in_flight.len());
                }
                Action::Replay(i) if !delivered.is_empty() => {
                    let m = &delivered[i % delivered.len()];
                    let (from_alice, wire) = (m.from_alice, m.wire.clone());
                    let before = receiver_store(&p, from_alice);
                    let got = read(&mut p, from_alice, &wire);
                    prop_assert!(
                        matches!(got, Err(Error::Ratchet(RatchetError::DuplicateOrExpired | RatchetError::AuthenticationFailed))),
                        "replay gave {:?}", got
                    );
                    prop_assert!(before == receiver_store(&p, from_alice), "replay changed the state");
                }
                Action::Tamper(i, at, x) if !in_flight.is_empty() => {
                    let m = &in_flight[i % in_flight.len()];
                    let from_alice = m.from_alice;
                    let mut wire = m.wire.clone();
                    let at = at % wire.len();
                    wire[at] ^= x;
                    let before = receiver_store(&p, from_alice);
                    let got = read(&mut p, from_alice, &wire);
                    prop_assert!(got.is_err(), "tampered byte {} accepted", at);
                    prop_assert!(before == receiver_store(&p, from_alice), "tampering changed the state");
                }
                Action::Reopen => p = p.reopen(),
                _ => {}
            }
        }
        // Everything still in flight is delivered at the end, in any order.
        for m in in_flight.drain(..).rev() {
            prop_assert_eq!(read(&mut p, m.from_alice, &m.wire).unwrap(), m.plaintext);
        }
    }
}

/// Session state survives a round trip through the store bit for bit: a
/// reopened device continues the conversation in both directions.
#[test]
fn reopened_devices_continue_the_conversation() {
    let mut p = Pair::connected(3);
    let m = p.a_to_b(b"before");
    assert_eq!(p.bob_reads(&m).unwrap(), b"before");
    let mut p = p.reopen();
    let r = p.b_to_a(b"after");
    assert_eq!(p.alice_reads(&r).unwrap(), b"after");
    let mut p = p.reopen();
    let m = p.a_to_b(b"again");
    assert_eq!(p.bob_reads(&m).unwrap(), b"again");
}

/// An inbox copy is kept until confirmed; a redelivered envelope is never
/// decrypted twice.
#[test]
fn redelivered_envelopes_come_from_the_inbox() {
    use hush::Received;
    let mut p = Pair::connected(4);
    let m = p.a_to_b(b"keep me");
    let alice = p.alice.address().clone();
    let got = p
        .bob
        .receive(&mut p.rng, &alice, b"env-1", &m, p.now)
        .unwrap();
    assert!(matches!(&got, Received::New { message, .. } if message.plaintext == b"keep me"));
    // Crash before the app confirmed: the envelope comes again after reopen.
    let mut p = p.reopen();
    match p
        .bob
        .receive(&mut p.rng, &alice, b"env-1", &m, p.now)
        .unwrap()
    {
        Received::Unconfirmed(message) => assert_eq!(message.plaintext, b"keep me"),
        other => panic!("expected the inbox copy, got {other:?}"),
    }
    assert_eq!(p.bob.inbox().unwrap().len(), 1);
    p.bob.confirm(b"env-1").unwrap();
    assert!(p.bob.inbox().unwrap().is_empty());
    assert_eq!(
        p.bob
            .receive(&mut p.rng, &alice, b"env-1", &m, p.now)
            .unwrap(),
        Received::AlreadyConfirmed
    );
    // Processed ids are forgotten after the queue lifetime.
    assert_eq!(p.bob.purge_processed(p.now + 10, 5).unwrap(), 1);
}
