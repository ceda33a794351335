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

/// `(HMAC(key, 0x01), HMAC(key, 0x02))`, keying HMAC once for both.
fn hmac_pair(key: &Secret32) -> (Secret32, Secret32) {
    let (mut one, mut two) = (Secret32::zero(), Secret32::zero());
    // HMAC accepts keys of any length, so this cannot fail.
    if let Ok(mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes()) {
        let mut first = mac.clone();
        first.update(&[0x01]);
        one.as_mut().copy_from_slice(&first.finalize().into_bytes());
        let mut second = mac;
        second.update(&[0x02]);
        two.as_mut()
            .copy_from_slice(&second.finalize().into_bytes());
    }
    (one, two)
}

impl ChainKey {
    pub(crate) fn new(key: Secret32) -> Self {
        Self(key)
    }

    /// The message key at this position and the chain key after it.
    pub(crate) fn step(&self) -> (MessageKey, ChainKey) {
        {
            let (message_key, chain_key) = hmac_pair(&self.0);
            (MessageKey::new(message_key), ChainKey(chain_key))
        }
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
