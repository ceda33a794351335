//! Message keys: each encrypts exactly one message with AES-256-GCM.
//!
//! The AES key is `HKDF-SHA256(salt = none, ikm = MK, info = "hush.v1.message-key")`;
//! the 96-bit nonce is random and travels in the header, so a rolled-back
//! state may re-use a key but never a (key, nonce) pair.

use aes_gcm::aead::{Aead, Nonce, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::RatchetError;
use crate::secret::Secret32;

/// HKDF info deriving the AES key from a message key.
pub(crate) const MESSAGE_KEY_INFO: &[u8] = b"hush.v1.message-key";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MessageKey(Secret32);

impl MessageKey {
    pub(crate) fn new(key: Secret32) -> Self {
        Self(key)
    }

    fn cipher(&self) -> Aes256Gcm {
        let hk = Hkdf::<Sha256>::new(None, self.0.as_bytes());
        let mut aes_key = Secret32::zero();
        // 32 bytes is a valid HKDF-SHA256 output length.
        let _ = hk.expand(MESSAGE_KEY_INFO, aes_key.as_mut());
        Aes256Gcm::new(aes_key.as_bytes().into())
    }

    pub(crate) fn encrypt(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, RatchetError> {
        self.cipher()
            .encrypt(
                &Nonce::<Aes256Gcm>::from(*nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| RatchetError::MessageTooLong)
    }

    pub(crate) fn decrypt(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, RatchetError> {
        self.cipher()
            .decrypt(
                &Nonce::<Aes256Gcm>::from(*nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| RatchetError::AuthenticationFailed)
    }

    #[cfg(test)]
    pub(crate) fn as_secret(&self) -> &Secret32 {
        &self.0
    }
}
