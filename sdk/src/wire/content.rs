//! The plaintext inside an envelope: a versioned [`Content`].
//!
//! `Content` is encoded as `version (u8) || postcard(content)`, then padded
//! ([`super::padding`]) and encrypted by the session. Every content carries a
//! sender-chosen random 128-bit [`MessageId`]: the key an app uses to drop a
//! sender's deliberate resends (a resend reuses the id), and what receipts name.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;
use zeroize::Zeroizing;

use super::envelope::MAX_CONTENT_LEN;
use super::padding::{self, PaddingError};
use crate::attachment::AttachmentPointer;
use crate::codec::DecodeError;
use crate::keys::UserId;

/// The version byte of the content encoding.
pub const CONTENT_VERSION: u8 = 1;
/// Message ids per receipt, at most.
pub const MAX_RECEIPT_IDS: usize = 1024;

/// Why content could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ContentError {
    /// Malformed bytes.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Malformed padding.
    #[error(transparent)]
    Padding(#[from] PaddingError),
    /// Over [`MAX_CONTENT_LEN`] once encoded, or too many receipt ids.
    #[error("content too large")]
    TooLarge,
}

/// A sender-chosen random message id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// A fresh random id.
    pub fn random<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut b = [0u8; 16];
        rng.fill_bytes(&mut b);
        Self(b)
    }
}

/// Which receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReceiptKind {
    /// The messages reached the recipient's device.
    Delivered,
    /// The recipient read them.
    Read,
}

/// What a message says. Its `Debug` output shows no text.
#[derive(PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Body {
    /// Text.
    Text(String),
    /// An encrypted attachment on the server, with its key.
    Attachment {
        /// Where and how to fetch and check it.
        #[serde(with = "pointer_bytes")]
        pointer: AttachmentPointer,
        /// An optional caption.
        caption: Option<String>,
    },
    /// Delivery or read receipts.
    Receipt {
        /// Which receipt.
        kind: ReceiptKind,
        /// The messages it covers, at most [`MAX_RECEIPT_IDS`].
        messages: Vec<MessageId>,
    },
    /// A copy, for the sender's other devices, of what it sent to `recipient`.
    SentSync {
        /// Who the message went to.
        recipient: UserId,
        /// The message that was sent.
        content: Box<Content>,
    },
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Text(t) => write!(f, "Text(<{} bytes>)", t.len()),
            Body::Attachment { pointer, caption } => f
                .debug_struct("Attachment")
                .field("pointer", pointer)
                .field("caption_len", &caption.as_ref().map(String::len))
                .finish(),
            Body::Receipt { kind, messages } => f
                .debug_struct("Receipt")
                .field("kind", kind)
                .field("messages", messages)
                .finish(),
            Body::SentSync { recipient, content } => f
                .debug_struct("SentSync")
                .field("recipient", recipient)
                .field("content", content)
                .finish(),
        }
    }
}

mod pointer_bytes {
    use super::*;

    pub(super) fn serialize<S: Serializer>(p: &AttachmentPointer, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&p.to_bytes())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<AttachmentPointer, D::Error> {
        let raw = Zeroizing::new(<Vec<u8>>::deserialize(d)?);
        AttachmentPointer::from_bytes(&raw).map_err(serde::de::Error::custom)
    }
}

/// One end-to-end message's plaintext.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    /// The sender's id for it.
    pub id: MessageId,
    /// The sender's clock when it was written (seconds since the Unix epoch).
    pub sent_at: u64,
    /// What it says.
    pub body: Body,
}

impl Content {
    /// Encodes and pads the content, ready for encryption. The buffer is
    /// wiped when dropped.
    ///
    /// # Errors
    /// [`ContentError::TooLarge`] over [`MAX_CONTENT_LEN`].
    pub fn to_padded(&self) -> Result<Zeroizing<Vec<u8>>, ContentError> {
        self.check_limits()?;
        let size =
            postcard::experimental::serialized_size(self).map_err(|_| ContentError::TooLarge)?;
        if size + 1 > MAX_CONTENT_LEN {
            return Err(ContentError::TooLarge);
        }
        let mut encoded = Zeroizing::new(vec![0u8; 1 + size]);
        encoded[0] = CONTENT_VERSION;
        postcard::to_slice(self, &mut encoded[1..]).map_err(|_| ContentError::TooLarge)?;
        Ok(Zeroizing::new(padding::pad(&encoded)))
    }

    /// Removes the padding and decodes.
    ///
    /// # Errors
    /// Padding, version and decode errors; trailing bytes are refused.
    pub fn from_padded(padded: &[u8]) -> Result<Self, ContentError> {
        let encoded = padding::unpad(padded)?;
        if encoded.len() > MAX_CONTENT_LEN {
            return Err(ContentError::TooLarge);
        }
        let (&version, body) = encoded.split_first().ok_or(DecodeError::Truncated)?;
        if version != CONTENT_VERSION {
            return Err(DecodeError::UnsupportedVersion(version).into());
        }
        let content: Self = match postcard::take_from_bytes(body) {
            Ok((c, [])) => c,
            Ok((_, rest)) => return Err(DecodeError::TrailingBytes(rest.len()).into()),
            Err(_) => return Err(DecodeError::Truncated.into()),
        };
        content.check_limits()?;
        Ok(content)
    }

    fn check_limits(&self) -> Result<(), ContentError> {
        match &self.body {
            Body::Receipt { messages, .. } if messages.len() > MAX_RECEIPT_IDS => {
                Err(ContentError::TooLarge)
            }
            // One level of sync only: a copy of a copy is refused.
            Body::SentSync { content, .. } if matches!(content.body, Body::SentSync { .. }) => {
                Err(ContentError::Decode(DecodeError::UnknownTag(3)))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand_chacha::ChaCha20Rng;
    use rand_chacha::rand_core::SeedableRng;

    use super::*;
    use crate::attachment::{AttachmentKind, Encryptor};

    fn pointer(rng: &mut ChaCha20Rng) -> AttachmentPointer {
        let mut enc = Encryptor::new(rng, AttachmentKind::Image, "image/png", 3).unwrap();
        let mut blob = Vec::new();
        enc.update(b"png", &mut blob).unwrap();
        enc.finish(&mut blob)
            .unwrap()
            .into_pointer(b"blob-1".to_vec())
            .unwrap()
    }

    fn samples(seed: u64) -> Vec<Content> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let id = MessageId::random(&mut rng);
        let text = "x".repeat((seed % 700) as usize);
        vec![
            Content {
                id,
                sent_at: seed,
                body: Body::Text(text.clone()),
            },
            Content {
                id,
                sent_at: 1,
                body: Body::Attachment {
                    pointer: pointer(&mut rng),
                    caption: Some(text),
                },
            },
            Content {
                id,
                sent_at: 2,
                body: Body::Receipt {
                    kind: ReceiptKind::Read,
                    messages: vec![id; (seed % 9) as usize],
                },
            },
            Content {
                id,
                sent_at: 3,
                body: Body::SentSync {
                    recipient: UserId::new("bob").unwrap(),
                    content: Box::new(Content {
                        id,
                        sent_at: 3,
                        body: Body::Text("hi".into()),
                    }),
                },
            },
        ]
    }

    proptest! {
        /// Every kind of content survives encoding, padding and decoding, and
        /// the padded size is one of the buckets.
        #[test]
        fn content_round_trips(seed in any::<u64>()) {
            for content in samples(seed) {
                let padded = content.to_padded().unwrap();
                prop_assert!(padded.len() >= padding::MIN_PADDED_LEN);
                let encoded = padding::unpad(&padded).unwrap().len();
                prop_assert_eq!(padded.len(), padding::padded_len(encoded));
                prop_assert_eq!(Content::from_padded(&padded).unwrap(), content);
            }
        }

        /// Arbitrary bytes decode to content or a typed error.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = Content::from_padded(&bytes);
        }
    }

    #[test]
    fn limits_are_enforced() {
        let id = MessageId([1; 16]);
        let big = Content {
            id,
            sent_at: 0,
            body: Body::Text("y".repeat(MAX_CONTENT_LEN)),
        };
        assert_eq!(big.to_padded(), Err(ContentError::TooLarge));
        let receipts = Content {
            id,
            sent_at: 0,
            body: Body::Receipt {
                kind: ReceiptKind::Delivered,
                messages: vec![id; MAX_RECEIPT_IDS + 1],
            },
        };
        assert_eq!(receipts.to_padded(), Err(ContentError::TooLarge));
        let inner = Content {
            id,
            sent_at: 0,
            body: Body::SentSync {
                recipient: UserId::new("b").unwrap(),
                content: Box::new(Content {
                    id,
                    sent_at: 0,
                    body: Body::Text(String::new()),
                }),
            },
        };
        let nested = Content {
            id,
            sent_at: 0,
            body: Body::SentSync {
                recipient: UserId::new("b").unwrap(),
                content: Box::new(inner),
            },
        };
        assert!(nested.to_padded().is_err());
        let ok = Content {
            id,
            sent_at: 0,
            body: Body::Text("z".into()),
        }
        .to_padded()
        .unwrap();
        let mut other_version = ok.to_vec();
        other_version[0] = 9;
        assert!(matches!(
            Content::from_padded(&other_version),
            Err(ContentError::Decode(DecodeError::UnsupportedVersion(9)))
        ));
    }
}
