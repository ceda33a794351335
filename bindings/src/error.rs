//! The one error type of the bindings.

use hush::attachment::AttachmentError;
use hush::client::ClientError;
use hush::link::LinkError;
use hush::store::StoreError;

/// Every failure of a Hush call. Python raises it as `HushError.<Variant>`,
/// Kotlin as `HushException.<Variant>`, Swift throws `HushError.<variant>`.
/// No variant carries a secret.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum HushError {
    /// An argument is malformed: a user id, a device address, bytes of the
    /// wrong length or format.
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// What was wrong.
        reason: String,
    },
    /// The storage key does not open this store.
    #[error("wrong storage key")]
    WrongStorageKey,
    /// The store holds no device: create one first.
    #[error("the store holds no device")]
    NoAccount,
    /// The store already holds a device.
    #[error("the store already holds a device")]
    AccountExists,
    /// Another instance has this store open (one instance per store).
    #[error("the store is in use by another instance")]
    StoreLocked,
    /// The store failed (I/O, SQLite, the app's storage), or a value in it is
    /// damaged. Nothing of the failed call was kept.
    #[error("storage: {reason}")]
    Storage {
        /// What failed.
        reason: String,
    },
    /// There is no session with this device: start one from its bundle.
    #[error("no session with {peer}")]
    NoSession {
        /// The peer device (`user/device`).
        peer: String,
    },
    /// The user presented another account identity than the trusted one.
    /// Nothing from or to the user is accepted until the app calls
    /// `Device.accept_identity_change` (after the user compared safety numbers).
    #[error("the identity of {user} changed")]
    IdentityChanged {
        /// The user.
        user: String,
        /// The identity trusted so far (32 bytes).
        trusted: Vec<u8>,
        /// The identity now presented (32 bytes).
        received: Vec<u8>,
    },
    /// The device is not certified by its user's trusted identity.
    #[error("device {device} is not certified by its account identity")]
    UntrustedDevice {
        /// The device (`user/device`).
        device: String,
    },
    /// A message or bundle was refused: it does not authenticate, is
    /// malformed, is a replay, or names a prekey this device does not hold.
    #[error("refused: {reason}")]
    Refused {
        /// Why.
        reason: String,
    },
    /// The byte stream from the server is broken or unreadable: close the
    /// connection and reconnect.
    #[error("protocol: {reason}; reconnect")]
    Protocol {
        /// What was wrong.
        reason: String,
    },
    /// An attachment cannot be encrypted or decrypted (too large, out of
    /// order, tampered or truncated).
    #[error("attachment: {reason}")]
    Attachment {
        /// Why.
        reason: String,
    },
    /// A link code was refused (another server's, or damaged).
    #[error("link: {reason}")]
    Link {
        /// Why.
        reason: String,
    },
    /// No such transfer, or it is not ready for this call (wait for
    /// `UploadReady`).
    #[error("transfer not ready")]
    TransferNotReady,
    /// The object was used after it was consumed (a device handed to its
    /// client, a finished encryptor, a used registration key).
    #[error("{what} was already used")]
    AlreadyUsed {
        /// What.
        what: String,
    },
    /// A bug, or a call that panicked earlier on another thread; the object
    /// should be dropped.
    #[error("internal error: {reason}")]
    Internal {
        /// What happened.
        reason: String,
    },
}

impl HushError {
    pub(crate) fn invalid(reason: impl std::fmt::Display) -> Self {
        Self::InvalidArgument {
            reason: reason.to_string(),
        }
    }
}

/// A callback of the app (its [`crate::AppStorage`]) raised something that
/// is not a `HushError`.
impl From<uniffi::UnexpectedUniFFICallbackError> for HushError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        Self::Storage {
            reason: format!("app storage callback failed: {}", e.reason),
        }
    }
}

impl From<StoreError> for HushError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::WrongKey => Self::WrongStorageKey,
            StoreError::NoAccount => Self::NoAccount,
            StoreError::AccountExists => Self::AccountExists,
            StoreError::Locked => Self::StoreLocked,
            // An error the app's storage raised comes back unchanged.
            StoreError::Backend(inner) => match inner.downcast::<HushError>() {
                Ok(own) => *own,
                Err(other) => Self::Storage {
                    reason: other.to_string(),
                },
            },
            other => Self::Storage {
                reason: other.to_string(),
            },
        }
    }
}

impl From<hush::Error> for HushError {
    fn from(e: hush::Error) -> Self {
        match e {
            hush::Error::Store(s) => s.into(),
            hush::Error::NoSession(peer) => Self::NoSession {
                peer: peer.to_string(),
            },
            hush::Error::IdentityChanged(change) => Self::IdentityChanged {
                user: change.user.to_string(),
                trusted: change.trusted.to_bytes().to_vec(),
                received: change.received.to_bytes().to_vec(),
            },
            hush::Error::UntrustedDevice(device) => Self::UntrustedDevice {
                device: device.to_string(),
            },
            hush::Error::TooManyPreKeys { max } => {
                Self::invalid(format!("at most {max} one-time prekeys per batch"))
            }
            other => Self::Refused {
                reason: other.to_string(),
            },
        }
    }
}

impl From<ClientError> for HushError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Sdk(inner) => inner.into(),
            ClientError::Frame(_) | ClientError::Decode(_) => Self::Protocol {
                reason: e.to_string(),
            },
            ClientError::Attachment(inner) => inner.into(),
            ClientError::Link(inner) => inner.into(),
            ClientError::TransferNotReady => Self::TransferNotReady,
            other => Self::invalid(other),
        }
    }
}

impl From<AttachmentError> for HushError {
    fn from(e: AttachmentError) -> Self {
        Self::Attachment {
            reason: e.to_string(),
        }
    }
}

impl From<LinkError> for HushError {
    fn from(e: LinkError) -> Self {
        Self::Link {
            reason: e.to_string(),
        }
    }
}

impl From<hush::DecodeError> for HushError {
    fn from(e: hush::DecodeError) -> Self {
        Self::invalid(e)
    }
}

impl From<hush::keys::KeyError> for HushError {
    fn from(e: hush::keys::KeyError) -> Self {
        Self::invalid(e)
    }
}
