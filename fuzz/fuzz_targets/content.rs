//! Arbitrary bytes unpadded and decoded as message content; what decodes
//! must survive re-encoding. See `harness/wire.rs`.

#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::wire::content(data));
