//! The Hush reference server: a TLS 1.3 relay for the Hush protocol with
//! SQLite (the embedded default) or MySQL storage.
//!
//! The server never sees plaintext or private keys: it stores accounts,
//! device certificates, prekeys and sealed envelopes, checks signatures
//! against account identities, and forwards envelopes to devices.

pub mod blob;
pub mod storage;
