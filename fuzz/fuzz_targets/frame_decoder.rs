//! A byte stream pushed into the frame decoder in pieces the input chooses,
//! at once and byte by byte; every way must give the frames the format
//! defines. See `harness/wire.rs`.

#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::wire::frame_decoder(data));
