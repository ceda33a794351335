//! The facade from Rust: what the foreign tests cannot reach cheaply
//! (every truncation of a bundle, thread sharing of one device).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::sync::Arc;

use hush_ffi::{Device, HushError, NewDevice};

fn device(user: &str) -> Arc<Device> {
    Device::create_in_memory(NewDevice::for_new_account(user.into()).unwrap(), 1).unwrap()
}

#[test]
fn every_truncated_or_extended_bundle_is_refused_without_panicking() {
    let (alice, bob) = (device("alice"), device("bob"));
    let bundle = bob.bundle().unwrap();
    assert_eq!(bundle.first(), Some(&hush::PreKeyBundle::VERSION));
    for len in 0..bundle.len() {
        let err = alice.start_session(bundle[..len].to_vec()).unwrap_err();
        assert!(
            matches!(err, HushError::InvalidArgument { .. }),
            "{len}: {err:?}"
        );
    }
    let mut longer = bundle.clone();
    longer.push(0);
    assert!(matches!(
        alice.start_session(longer),
        Err(HushError::InvalidArgument { .. })
    ));
    let mut other_version = bundle.clone();
    other_version[0] = 9;
    assert!(matches!(
        alice.start_session(other_version),
        Err(HushError::InvalidArgument { .. })
    ));
    // A changed byte inside is refused too (decoding or signatures).
    let mut flipped = bundle.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(alice.start_session(flipped).is_err());
    alice.start_session(bundle).unwrap();
    assert!(alice.has_session(bob.address().unwrap()).unwrap());
}

#[test]
fn one_device_serves_many_threads() {
    let (alice, bob) = (device("alice"), device("bob"));
    alice.start_session(bob.bundle().unwrap()).unwrap();
    let to_bob = alice.session(bob.address().unwrap()).unwrap();
    let from_alice = bob.session(alice.address().unwrap()).unwrap();
    from_alice
        .decrypt(&to_bob.encrypt(b"first").unwrap())
        .unwrap();
    let messages: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|n| {
                let to_bob = to_bob.clone();
                s.spawn(move || {
                    (0..20)
                        .map(|i| to_bob.encrypt(format!("{n}/{i}").as_bytes()).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut seen: Vec<String> = messages
        .iter()
        .map(|m| String::from_utf8(from_alice.decrypt(m).unwrap()).unwrap())
        .collect();
    seen.sort();
    let mut expected: Vec<String> = (0..4)
        .flat_map(|n| (0..20).map(move |i| format!("{n}/{i}")))
        .collect();
    expected.sort();
    assert_eq!(seen, expected);
}
