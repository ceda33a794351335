//! Byte formats between clients and the server.
//!
//! * [`frame`]: length-prefixed frames with caps checked before allocation.
//! * [`padding`]: size buckets for plaintext before encryption.

pub mod frame;
pub mod padding;
