//! Sealing of stored values and keyed row keys.
//!
//! ```text
//! seal key  = HKDF-SHA256(salt = none, ikm = storage key, info = "hush.v1.store.seal")
//! index key = HKDF-SHA256(salt = none, ikm = storage key, info = "hush.v1.store.index")
//! check     = HKDF-SHA256(salt = none, ikm = storage key, info = "hush.v1.store.check")
//! row key   = HMAC-SHA256(index key, table id (u8) || id)
//! value     = version (u8) || nonce (12, random) || AES-256-GCM(seal key, nonce, postcard(record), AAD)
//! AAD       = "hush.v1.store" || table id (u8) || row key (32) || version (u8)
//! ```

use aes_gcm::aead::{Aead, Nonce, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use super::{StorageKey, StoreError, Table};
use crate::secret::Secret32;

/// Version of every record format written by this build.
pub(crate) const RECORD_VERSION: u8 = 1;
const AAD_LABEL: &[u8] = b"hush.v1.store";
/// The row in [`Table::Meta`] holding the key check value.
pub(crate) const CHECK_ROW: &[u8] = b"key-check";

pub(crate) struct Vault {
    cipher: Aes256Gcm,
    index_key: Secret32,
    check: Secret32,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault(<redacted>)")
    }
}

fn derive(key: &StorageKey, info: &[u8]) -> Secret32 {
    let hk = Hkdf::<Sha256>::new(None, key.as_bytes());
    let mut out = Secret32::zero();
    // 32 bytes is a valid HKDF-SHA256 output length.
    let _ = hk.expand(info, out.as_mut());
    out
}

impl Vault {
    pub(crate) fn new(key: &StorageKey) -> Self {
        let seal = derive(key, b"hush.v1.store.seal");
        Self {
            cipher: Aes256Gcm::new(seal.as_bytes().into()),
            index_key: derive(key, b"hush.v1.store.index"),
            check: derive(key, b"hush.v1.store.check"),
        }
    }

    pub(crate) fn check_value(&self) -> Vec<u8> {
        self.check.as_bytes().to_vec()
    }

    pub(crate) fn matches_check(&self, stored: &[u8]) -> bool {
        stored.len() == 32 && bool::from(stored.ct_eq(self.check.as_bytes()))
    }

    pub(crate) fn row_key(&self, table: Table, id: &[u8]) -> Vec<u8> {
        let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(self.index_key.as_bytes()) {
            Ok(mac) => mac,
            // HMAC takes keys of any length.
            Err(_) => return Vec::new(),
        };
        mac.update(&[table.id()]);
        mac.update(id);
        mac.finalize().into_bytes().to_vec()
    }

    fn aad(table: Table, row: &[u8], version: u8) -> Vec<u8> {
        let mut aad = Vec::with_capacity(AAD_LABEL.len() + 2 + row.len());
        aad.extend_from_slice(AAD_LABEL);
        aad.push(table.id());
        aad.extend_from_slice(row);
        aad.push(version);
        aad
    }

    pub(crate) fn seal<T: Serialize, R: rand_core::CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        table: Table,
        row: &[u8],
        value: &T,
    ) -> Result<Vec<u8>, StoreError> {
        // Serialise into a buffer of the exact size, so no reallocation
        // leaves a stray copy of secrets behind; it is wiped below.
        let size = postcard::experimental::serialized_size(value)
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        let mut plain = vec![0u8; size];
        postcard::to_slice(value, &mut plain).map_err(|e| StoreError::Backend(Box::new(e)))?;
        let mut nonce = [0u8; 12];
        rng.fill_bytes(&mut nonce);
        let aad = Self::aad(table, row, RECORD_VERSION);
        let sealed = self
            .cipher
            .encrypt(
                &Nonce::<Aes256Gcm>::from(nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .map_err(|_| StoreError::Corrupted(table));
        plain.zeroize();
        let sealed = sealed?;
        let mut out = Vec::with_capacity(1 + 12 + sealed.len());
        out.push(RECORD_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    pub(crate) fn open<T: DeserializeOwned>(
        &self,
        table: Table,
        row: &[u8],
        sealed: &[u8],
    ) -> Result<T, StoreError> {
        let (&version, rest) = sealed.split_first().ok_or(StoreError::Corrupted(table))?;
        if version != RECORD_VERSION {
            return Err(StoreError::UnsupportedVersion(version));
        }
        if rest.len() < 12 + 16 {
            return Err(StoreError::Corrupted(table));
        }
        let (nonce, ciphertext) = rest.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| StoreError::Corrupted(table))?;
        let aad = Self::aad(table, row, version);
        let mut plain = self
            .cipher
            .decrypt(
                &Nonce::<Aes256Gcm>::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| StoreError::Corrupted(table))?;
        let value = match postcard::take_from_bytes(&plain) {
            Ok((value, [])) => Ok(value),
            _ => Err(StoreError::Corrupted(table)),
        };
        plain.zeroize();
        value
    }
}
