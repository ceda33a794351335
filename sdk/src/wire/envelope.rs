//! The end-to-end envelope: what one sending device addresses to one
//! recipient device, relayed by the server without being able to read it.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::padding;
use crate::codec::DecodeError;
use crate::keys::{DeviceAddress, KEM_CIPHERTEXT_LEN, UserId};
use crate::ratchet::{HEADER_LEN, TAG_LEN};
use crate::session::SessionMessage;

/// The version of the envelope format.
pub const ENVELOPE_VERSION: u8 = 1;
/// The largest plaintext content, before padding: 1 MiB.
pub const MAX_CONTENT_LEN: usize = 1 << 20;
/// The largest initial header, a PQXDH one: version, a certificate with a
/// 255-byte user id, identity, base key, prekey choice, creation time, and
/// the PQ prekey kind, id and ML-KEM-1024 ciphertext.
pub const MAX_INITIAL_HEADER_LEN: usize = 1
    + (1 + 1 + UserId::MAX_LEN + 4 + 32 + 8 + 64)
    + 32
    + 32
    + 1
    + 8
    + 8
    + (1 + 4 + KEM_CIPHERTEXT_LEN);
/// The largest session message: tag, initial header, ratchet header, the
/// padded maximal content and the tag.
pub const MAX_SESSION_MESSAGE_LEN: usize =
    1 + MAX_INITIAL_HEADER_LEN + HEADER_LEN + padding_max() + TAG_LEN;
/// Bytes an envelope adds around its session message, at most: version,
/// kind, the sender address with postcard's length prefixes, and the
/// message's length prefix.
pub const ENVELOPE_OVERHEAD: usize = 1 + 1 + (2 + UserId::MAX_LEN + 5) + 5;
/// The largest encoded envelope.
pub const MAX_ENVELOPE_LEN: usize = MAX_SESSION_MESSAGE_LEN + ENVELOPE_OVERHEAD;

const fn padding_max() -> usize {
    // padded_len(MAX_CONTENT_LEN): Padmé of 2^20 + 1 rounds up to 2^20 + 2^15.
    MAX_CONTENT_LEN + (1 << 15)
}

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The bytes are malformed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The envelope or its message exceeds its cap.
    #[error("envelope of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// The length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The kind byte disagrees with the session message it carries.
    #[error("envelope kind does not match its message")]
    KindMismatch,
}

/// Whether the message starts a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EnvelopeKind {
    /// An initial (prekey) message.
    Initial,
    /// A message on an established session.
    Normal,
}

/// One device's encrypted message to one device. Decoding (also inside a
/// protocol message) validates version, kind and caps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawEnvelope")]
pub struct Envelope {
    version: u8,
    kind: EnvelopeKind,
    sender: DeviceAddress,
    message: Vec<u8>,
}

/// The same fields, before validation.
#[derive(Deserialize)]
struct RawEnvelope {
    version: u8,
    kind: EnvelopeKind,
    sender: DeviceAddress,
    message: Vec<u8>,
}

impl TryFrom<RawEnvelope> for Envelope {
    type Error = EnvelopeError;
    fn try_from(raw: RawEnvelope) -> Result<Self, EnvelopeError> {
        let RawEnvelope {
            version,
            kind,
            sender,
            message,
        } = raw;
        let envelope = Self {
            version,
            kind,
            sender,
            message,
        };
        envelope.validate()?;
        Ok(envelope)
    }
}

impl Envelope {
    /// Wraps session message bytes (from
    /// [`SessionManager::encrypt`](crate::SessionManager::encrypt)) sent by `sender`.
    ///
    /// # Errors
    /// [`EnvelopeError::TooLong`] over [`MAX_SESSION_MESSAGE_LEN`], or a decode
    /// error if `message` is not a session message.
    pub fn new(sender: DeviceAddress, message: Vec<u8>) -> Result<Self, EnvelopeError> {
        if message.len() > MAX_SESSION_MESSAGE_LEN {
            return Err(EnvelopeError::TooLong {
                len: message.len(),
                max: MAX_SESSION_MESSAGE_LEN,
            });
        }
        let kind = match message.first() {
            Some(&SessionMessage::TAG_INITIAL) => EnvelopeKind::Initial,
            Some(&SessionMessage::TAG_NORMAL) => EnvelopeKind::Normal,
            Some(&t) => return Err(DecodeError::UnknownTag(t).into()),
            None => return Err(DecodeError::Truncated.into()),
        };
        Ok(Self {
            version: ENVELOPE_VERSION,
            kind,
            sender,
            message,
        })
    }

    /// The kind.
    pub fn kind(&self) -> EnvelopeKind {
        self.kind
    }

    /// The device that says it sent this (the server checks it against the
    /// authenticated connection; the session binds it cryptographically).
    pub fn sender(&self) -> &DeviceAddress {
        &self.sender
    }

    /// The session message bytes.
    pub fn message(&self) -> &[u8] {
        &self.message
    }

    fn validate(&self) -> Result<(), EnvelopeError> {
        if self.version != ENVELOPE_VERSION {
            return Err(DecodeError::UnsupportedVersion(self.version).into());
        }
        if self.message.len() > MAX_SESSION_MESSAGE_LEN {
            return Err(EnvelopeError::TooLong {
                len: self.message.len(),
                max: MAX_SESSION_MESSAGE_LEN,
            });
        }
        let expected = match self.kind {
            EnvelopeKind::Initial => SessionMessage::TAG_INITIAL,
            EnvelopeKind::Normal => SessionMessage::TAG_NORMAL,
        };
        if self.message.first() != Some(&expected) {
            return Err(EnvelopeError::KindMismatch);
        }
        Ok(())
    }

    /// Encodes the envelope: postcard of `(version, kind, sender, message)`,
    /// the version first.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes and validates an envelope.
    ///
    /// # Errors
    /// [`EnvelopeError::TooLong`] over [`MAX_ENVELOPE_LEN`] (checked first),
    /// decode errors, a version other than [`ENVELOPE_VERSION`], or
    /// [`EnvelopeError::KindMismatch`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        if bytes.len() > MAX_ENVELOPE_LEN {
            return Err(EnvelopeError::TooLong {
                len: bytes.len(),
                max: MAX_ENVELOPE_LEN,
            });
        }
        if let Some(&v) = bytes.first()
            && v != ENVELOPE_VERSION
        {
            return Err(DecodeError::UnsupportedVersion(v).into());
        }
        let raw: RawEnvelope = match postcard::take_from_bytes(bytes) {
            Ok((e, [])) => e,
            Ok((_, rest)) => return Err(DecodeError::TrailingBytes(rest.len()).into()),
            Err(_) => return Err(DecodeError::Truncated.into()),
        };
        raw.try_into()
    }
}

/// Pads content bytes for encryption (see [`padding`]).
///
/// # Errors
/// [`EnvelopeError::TooLong`] over [`MAX_CONTENT_LEN`].
pub fn pad_content(content: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    if content.len() > MAX_CONTENT_LEN {
        return Err(EnvelopeError::TooLong {
            len: content.len(),
            max: MAX_CONTENT_LEN,
        });
    }
    Ok(padding::pad(content))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::DeviceId;

    fn sender() -> DeviceAddress {
        DeviceAddress::new(UserId::new("alice").unwrap(), DeviceId(3))
    }

    #[test]
    fn the_cap_matches_the_padding_function() {
        assert_eq!(padding::padded_len(MAX_CONTENT_LEN), padding_max());
        assert!(pad_content(&vec![0; MAX_CONTENT_LEN + 1]).is_err());
    }

    #[test]
    fn envelopes_round_trip_and_are_validated() {
        let e = Envelope::new(sender(), vec![SessionMessage::TAG_NORMAL, 1, 2, 3]).unwrap();
        assert_eq!(e.kind(), EnvelopeKind::Normal);
        let bytes = e.to_bytes();
        assert_eq!(bytes[0], ENVELOPE_VERSION);
        assert_eq!(Envelope::from_bytes(&bytes).unwrap(), e);
        let mut wrong_kind = bytes.clone();
        wrong_kind[1] = 0; // Initial
        assert_eq!(
            Envelope::from_bytes(&wrong_kind),
            Err(EnvelopeError::KindMismatch)
        );
        let mut wrong_version = bytes.clone();
        wrong_version[0] = 2;
        assert!(matches!(
            Envelope::from_bytes(&wrong_version),
            Err(EnvelopeError::Decode(DecodeError::UnsupportedVersion(2)))
        ));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(Envelope::from_bytes(&trailing).is_err());
        assert!(Envelope::new(sender(), vec![9]).is_err());
        assert!(Envelope::new(sender(), Vec::new()).is_err());
        assert!(matches!(
            Envelope::from_bytes(&vec![1; MAX_ENVELOPE_LEN + 1]),
            Err(EnvelopeError::TooLong { .. })
        ));
    }
}
