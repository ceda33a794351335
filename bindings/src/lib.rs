//! `hush-ffi`: the Hush SDK for Python, Kotlin and Swift, through uniffi.
//!
//! A thin facade over [`hush`]: every type here converts to or from an SDK
//! type and every call takes one lock and makes one SDK call. The objects
//! are thread-safe (an `Arc` around a mutex); every error arrives as a
//! [`HushError`], which each language raises as an exception; nothing here
//! panics on bad input.
//!
//! | object | what |
//! |---|---|
//! | [`NewDevice`] | the keys of a device not yet registered, and its [`Registration`] |
//! | [`Registration`] | the sans-IO side of registering or linking |
//! | [`Device`] | a registered device over its store: sessions, safety numbers |
//! | [`PeerSession`] | one peer's session: the byte-in, byte-out hot path |
//! | [`Client`] | the sans-IO protocol client of the same device |
//! | [`AttachmentEncryptor`], [`AttachmentDecryptor`] | chunked attachment encryption |
//! | [`AppStorage`] | a store the app provides (a callback interface) |
//!
//! docs/bindings.md shows the flow in each language.

// uniffi's scaffolding is generated unsafe code at the FFI boundary; the
// code written here has none (the SDK itself forbids it).
#![allow(unsafe_code, reason = "uniffi's generated scaffolding")]
#![allow(
    unreachable_pub,
    clippy::needless_pass_by_value,
    reason = "uniffi exports take owned arguments"
)]

mod attachment;
mod client;
mod device;
mod error;
mod storage;
mod types;

pub use attachment::{AttachmentDecryptor, AttachmentEncryptor, attachment_info};
pub use client::{Client, ClientEvent};
pub use device::{
    Device, LinkedAccount, NewDevice, PeerSession, Registration, RegistrationEvent,
    generate_storage_key,
};
pub use error::HushError;
pub use storage::{AppStorage, StoreOp, StoredRow};
pub use types::{
    AttachmentInfo, AttachmentKind, DecryptedMessage, DeviceAddress, InboxEntry, MessageBody,
    MessageContent, SafetyNumber, ServerErrorCode, TrustEvent,
};

uniffi::setup_scaffolding!();
