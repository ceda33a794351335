//! The Rust side of `bindings/python/bench/roundtrip.py`: the same 1 KiB
//! encrypt + decrypt round trip through the facade's `PeerSession`, with no
//! foreign language in between, to tell the Rust work from the crossing.
//!
//! ```text
//! cargo run --release -p hush-ffi --example roundtrip
//! ```

use std::time::Instant;

use hush_ffi::{Device, HushError, NewDevice};

fn main() -> Result<(), HushError> {
    let alice = Device::create_in_memory(NewDevice::for_new_account("alice".into())?, 1)?;
    let bob = Device::create_in_memory(NewDevice::for_new_account("bob".into())?, 1)?;
    alice.start_session(bob.bundle()?)?;
    let to_bob = alice.session(bob.address()?)?;
    let from_alice = bob.session(alice.address()?)?;
    // One message each way first, as the Python benchmark does.
    from_alice.decrypt(&to_bob.encrypt(b"first")?)?;
    to_bob.decrypt(&from_alice.encrypt(b"reply")?)?;
    let payload = vec![7u8; 1024];
    let rounds = 20_000;
    for _ in 0..3 {
        let start = Instant::now();
        for _ in 0..rounds {
            let plaintext = from_alice.decrypt(&to_bob.encrypt(&payload)?)?;
            assert_eq!(plaintext.len(), payload.len(), "round trip");
        }
        let per = start.elapsed().as_secs_f64() / f64::from(rounds) * 1e6;
        println!("PeerSession encrypt + decrypt, 1 KiB, from Rust: {per:.1} us");
    }
    Ok(())
}
