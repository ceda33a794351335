//! Byte formats between clients and the server.
//!
//! * [`frame`]: length-prefixed frames with caps checked before allocation.
//! * [`padding`]: size buckets for plaintext before encryption.
//! * [`envelope`]: the end-to-end envelope and its caps.
//! * [`content`]: the versioned plaintext inside an envelope.
//! * [`protocol`]: requests, responses and pushes of the reference server protocol.

pub mod content;
pub mod envelope;
pub mod frame;
pub mod padding;
pub mod protocol;
