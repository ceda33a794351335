//! Chunked attachment encryption, for apps that store blobs themselves.
//! (The [`crate::Client`] uploads and downloads through the reference
//! server with the same format.)

use std::sync::{Arc, Mutex};

use hush::attachment::{AttachmentPointer, Decryptor, Encryptor, PendingPointer};
use zeroize::Zeroizing;

use crate::HushError;
use crate::device::lock;
use crate::types::{AttachmentInfo, AttachmentKind, fresh_rng};

/// What a pointer says (kind, media type, sizes), without downloading.
///
/// # Errors
/// [`HushError::Attachment`] for a malformed pointer.
#[uniffi::export]
pub fn attachment_info(pointer: Vec<u8>) -> Result<AttachmentInfo, HushError> {
    let pointer = Zeroizing::new(pointer);
    Ok((&AttachmentPointer::from_bytes(&pointer)?).into())
}

#[allow(
    clippy::large_enum_variant,
    reason = "one value per object, behind its mutex; never moved in a hot path"
)]
enum EncryptState {
    Running(Encryptor),
    Finished(PendingPointer),
    Done,
}

/// Encrypts an attachment of a known length piece by piece, under a fresh
/// key: [`Self::update`] for every piece, [`Self::finish`] once, then
/// [`Self::pointer`] with the id the app stored the blob under. The
/// concatenated output is the blob.
#[derive(uniffi::Object)]
pub struct AttachmentEncryptor {
    state: Mutex<EncryptState>,
}

impl std::fmt::Debug for AttachmentEncryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AttachmentEncryptor")
    }
}

#[uniffi::export]
impl AttachmentEncryptor {
    /// An encryptor for `plaintext_len` bytes of `kind`.
    ///
    /// # Errors
    /// [`HushError::Attachment`] over the kind's size cap or for a media
    /// type that is too long.
    #[uniffi::constructor]
    pub fn new(
        kind: AttachmentKind,
        media_type: String,
        plaintext_len: u64,
    ) -> Result<Arc<Self>, HushError> {
        let mut rng = fresh_rng();
        let encryptor = Encryptor::new(&mut rng, kind.to_sdk(), &media_type, plaintext_len)?;
        Ok(Arc::new(Self {
            state: Mutex::new(EncryptState::Running(encryptor)),
        }))
    }

    /// The blob's length.
    ///
    /// # Errors
    /// [`HushError::AlreadyUsed`] after `finish`.
    pub fn ciphertext_len(&self) -> Result<u64, HushError> {
        match &*lock(&self.state)? {
            EncryptState::Running(e) => Ok(e.ciphertext_len()),
            _ => Err(finished()),
        }
    }

    /// Encrypts the next piece of plaintext; returns the next blob bytes.
    ///
    /// # Errors
    /// [`HushError::Attachment`] past the announced length;
    /// [`HushError::AlreadyUsed`] after `finish`.
    pub fn update(&self, plaintext: Vec<u8>) -> Result<Vec<u8>, HushError> {
        let plaintext = Zeroizing::new(plaintext);
        match &mut *lock(&self.state)? {
            EncryptState::Running(e) => {
                let mut out = Vec::with_capacity(plaintext.len() + 64);
                e.update(&plaintext, &mut out)?;
                Ok(out)
            }
            _ => Err(finished()),
        }
    }

    /// Ends the blob; returns its last bytes.
    ///
    /// # Errors
    /// [`HushError::Attachment`] if fewer bytes than announced were given.
    pub fn finish(&self) -> Result<Vec<u8>, HushError> {
        let mut state = lock(&self.state)?;
        match std::mem::replace(&mut *state, EncryptState::Done) {
            EncryptState::Running(e) => {
                let mut out = Vec::new();
                let pending = e.finish(&mut out)?;
                *state = EncryptState::Finished(pending);
                Ok(out)
            }
            other => {
                *state = other;
                Err(finished())
            }
        }
    }

    /// The pointer to send, naming the blob by `blob_id` (at most 64
    /// bytes). Holds the key: as secret as a message. Called once.
    ///
    /// # Errors
    /// [`HushError::TransferNotReady`] before `finish`;
    /// [`HushError::Attachment`] for a blob id that is too long.
    pub fn pointer(&self, blob_id: Vec<u8>) -> Result<Vec<u8>, HushError> {
        let mut state = lock(&self.state)?;
        match std::mem::replace(&mut *state, EncryptState::Done) {
            EncryptState::Finished(pending) => {
                Ok(pending.into_pointer(blob_id)?.to_bytes().to_vec())
            }
            other => {
                let running = matches!(other, EncryptState::Running(_));
                *state = other;
                Err(if running {
                    HushError::TransferNotReady
                } else {
                    finished()
                })
            }
        }
    }
}

fn finished() -> HushError {
    HushError::AlreadyUsed {
        what: "the attachment encryptor".into(),
    }
}

/// Decrypts a blob piece by piece against its pointer. Only authenticated
/// bytes come out; [`Self::finish`] checks that nothing was cut off.
#[derive(uniffi::Object)]
pub struct AttachmentDecryptor {
    state: Mutex<Option<Decryptor>>,
}

impl std::fmt::Debug for AttachmentDecryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AttachmentDecryptor")
    }
}

#[uniffi::export]
impl AttachmentDecryptor {
    /// A decryptor for the blob `pointer` names.
    ///
    /// # Errors
    /// [`HushError::Attachment`] for a malformed pointer.
    #[uniffi::constructor]
    pub fn new(pointer: Vec<u8>) -> Result<Arc<Self>, HushError> {
        let pointer = Zeroizing::new(pointer);
        let decryptor = Decryptor::new(&AttachmentPointer::from_bytes(&pointer)?)?;
        Ok(Arc::new(Self {
            state: Mutex::new(Some(decryptor)),
        }))
    }

    /// The next blob bytes; returns the plaintext they complete (possibly
    /// empty).
    ///
    /// # Errors
    /// [`HushError::Attachment`] for tampered bytes or too many bytes.
    pub fn update(&self, blob: Vec<u8>) -> Result<Vec<u8>, HushError> {
        match &mut *lock(&self.state)? {
            Some(d) => {
                let mut out = Vec::with_capacity(blob.len());
                d.update(&blob, &mut out)?;
                Ok(out)
            }
            None => Err(HushError::AlreadyUsed {
                what: "the attachment decryptor".into(),
            }),
        }
    }

    /// Checks the blob was whole.
    ///
    /// # Errors
    /// [`HushError::Attachment`] for a truncated blob.
    pub fn finish(&self) -> Result<(), HushError> {
        match lock(&self.state)?.take() {
            Some(d) => Ok(d.finish()?),
            None => Err(HushError::AlreadyUsed {
                what: "the attachment decryptor".into(),
            }),
        }
    }
}
