//! The Hush reference server: a TLS 1.3 relay for the Hush protocol with
//! SQLite (the embedded default) or MySQL storage.
//!
//! The server never sees plaintext or private keys: it stores accounts,
//! device certificates, prekeys and sealed envelopes, checks signatures
//! against account identities, and forwards envelopes to devices. See
//! `docs/server.md` for running it and `docs/protocol.md` for the protocol.
//!
//! The crate also holds [`net`], the tokio transport that drives the SDK's
//! sans-IO [`hush::client::Client`] over TLS, used by the examples, the
//! load generator and the server's own tests.

pub mod blob;
pub mod config;
mod connection;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod push;
pub mod server;
pub mod storage;
pub mod tls;

pub use config::Config;
pub use server::{RunningServer, start};
