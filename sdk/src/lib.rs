#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests"))]

mod codec;
pub mod keys;
pub mod ratchet;
mod secret;
pub mod x3dh;

pub use codec::DecodeError;
