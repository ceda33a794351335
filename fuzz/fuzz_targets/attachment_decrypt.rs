//! Arbitrary bytes decrypted as the blob of a known attachment pointer, cut
//! where the input says, or decoded as a pointer. See `harness/attachment.rs`.

#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::attachment::attachment_decrypt(data));
