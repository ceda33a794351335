//! Arbitrary bytes decoded as a client frame payload; what decodes must
//! survive re-encoding. See `harness/wire.rs`.

#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::wire::client_frame(data));
