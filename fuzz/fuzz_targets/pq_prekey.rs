//! Arbitrary bytes decoded as a signed ML-KEM-1024 prekey and as a bare
//! encapsulation key; what decodes must re-encode to the same bytes. See
//! `harness.rs`.

#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::pq_prekey(data));
