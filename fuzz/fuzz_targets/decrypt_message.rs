//! Arbitrary bytes decrypted as a message from a known sender, by a receiver
//! with an established session and by one with none. See `harness.rs`.

#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::decrypt_message(data));
