//! A valid store with one row replaced, sealed or raw, or removed; the device
//! is opened and every operation run over it. See `harness.rs`.

#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::open_stored_state(data));
