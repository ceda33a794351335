#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        reason = "tests"
    )
)]

pub mod attachment;
pub mod client;
mod codec;
pub mod keys;
pub mod link;
pub mod ratchet;
mod secret;
pub mod x3dh;

pub use codec::DecodeError;
pub mod fingerprint;
#[cfg(feature = "hazmat")]
pub mod hazmat;
mod manager;
pub mod session;
pub mod store;
pub mod wire;

pub use keys::PreKeyBundle;
pub use manager::{
    Decrypted, Error, Event, IdentityChange, InboxMessage, MAX_ONE_TIME_PREKEYS_PER_BATCH,
    Received, SessionManager,
};

#[cfg(test)]
mod vectors;
