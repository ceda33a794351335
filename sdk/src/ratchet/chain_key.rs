//! Chain keys: `MK = HMAC-SHA256(CK, 0x01)`, `CK' = HMAC-SHA256(CK, 0x02)`.

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::RatchetError;
use super::message_key::MessageKey;
use crate::secret::Secret32;

/// The largest number of message keys one message may make the receiver derive
/// (and store as skipped) in one chain.
pub const MAX_MESSAGE_GAP: u32 = 2_000;

/// Skipped keys, the key of the wanted message, and the chain key after it.
pub(crate) type Advance = (Vec<(u32, MessageKey)>, MessageKey, ChainKey);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ChainKey(Secret32);

fn hmac(key: &Secret32, byte: u8) -> Secret32 {
    let mut out = Secret32::zero();
    // HMAC accepts keys of any length, so this cannot fail.
    if let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes()) {
        mac.update(&[byte]);
        out.as_mut().copy_from_slice(&mac.finalize().into_bytes());
    }
    out
}

impl ChainKey {
    pub(crate) fn new(key: Secret32) -> Self {
        Self(key)
    }

    /// The message key at this position and the chain key after it.
    pub(crate) fn step(&self) -> (MessageKey, ChainKey) {
        (
            MessageKey::new(hmac(&self.0, 0x01)),
            ChainKey(hmac(&self.0, 0x02)),
        )
    }

    /// From position `from` (this key), derives the keys of positions
    /// `from..to` (to be stored as skipped), the message key of `to` and the
    /// chain key of `to + 1`. Mutates nothing.
    ///
    /// # Errors
    /// [`RatchetError::TooFarAhead`] when `to - from` exceeds [`MAX_MESSAGE_GAP`].
    pub(crate) fn advance_to(&self, from: u32, to: u32) -> Result<Advance, RatchetError> {
        let gap = to
            .checked_sub(from)
            .ok_or(RatchetError::DuplicateOrExpired)?;
        if gap > MAX_MESSAGE_GAP {
            return Err(RatchetError::TooFarAhead { gap });
        }
        let mut skipped = Vec::with_capacity(gap as usize);
        let mut ck = self.clone();
        for i in from..to {
            let (mk, next) = ck.step();
            skipped.push((i, mk));
            ck = next;
        }
        let (mk, next) = ck.step();
        Ok((skipped, mk, next))
    }

    /// The keys of positions `from..to`, to be stored as skipped when a chain ends.
    pub(crate) fn skip_to(
        &self,
        from: u32,
        to: u32,
    ) -> Result<Vec<(u32, MessageKey)>, RatchetError> {
        if to <= from {
            return Ok(Vec::new());
        }
        let gap = to - from;
        if gap > MAX_MESSAGE_GAP {
            return Err(RatchetError::TooFarAhead { gap });
        }
        let mut skipped = Vec::with_capacity(gap as usize);
        let mut ck = self.clone();
        for i in from..to {
            let (mk, next) = ck.step();
            skipped.push((i, mk));
            ck = next;
        }
        Ok(skipped)
    }
}
