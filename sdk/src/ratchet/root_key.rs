//! The root key and the root KDF: `RK', CK = HKDF-SHA256(salt = RK, ikm = DH, info)`.

use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroize;

use super::chain_key::ChainKey;
use crate::secret::Secret32;

/// HKDF info of the root KDF.
pub(crate) const ROOT_INFO: &[u8] = b"hush.v1.root";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RootKey(Secret32);

impl RootKey {
    pub(crate) fn new(key: Secret32) -> Self {
        Self(key)
    }

    /// One DH ratchet step: mixes a DH output into the root key and returns the
    /// next root key and the new chain key.
    pub(crate) fn advance(&self, dh_output: &Secret32) -> (RootKey, ChainKey) {
        let hk = Hkdf::<Sha256>::new(Some(self.0.as_bytes()), dh_output.as_bytes());
        let mut okm = [0u8; 64];
        // 64 bytes is a valid HKDF-SHA256 output length.
        let _ = hk.expand(ROOT_INFO, &mut okm);
        let mut root = [0u8; 32];
        let mut chain = [0u8; 32];
        root.copy_from_slice(&okm[..32]);
        chain.copy_from_slice(&okm[32..]);
        okm.zeroize();
        let out = (
            RootKey(Secret32::new(root)),
            ChainKey::new(Secret32::new(chain)),
        );
        root.zeroize();
        chain.zeroize();
        out
    }

    #[cfg(test)]
    pub(crate) fn as_secret(&self) -> &Secret32 {
        &self.0
    }
}
