//! The attachment pointer: what travels inside the end-to-end message.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use super::{
    AttachmentError, AttachmentKind, COMMITMENT_LEN, MAX_BLOB_ID_LEN, MAX_MEDIA_TYPE_LEN,
    POINTER_VERSION, commitment_of,
};
use crate::codec::{DecodeError, Reader, Writer};
use crate::secret::Secret32;

/// Everything a recipient needs to fetch and decrypt one attachment: the
/// attachment key (secret: zeroized on drop, never printed), the key
/// commitment, the kind, the plaintext size, the media type and the server's
/// blob id.
///
/// A pointer's key always matches its commitment: [`from_bytes`](Self::from_bytes)
/// refuses one that does not.
#[derive(PartialEq, Eq)]
pub struct AttachmentPointer {
    key: Secret32,
    commitment: [u8; COMMITMENT_LEN],
    kind: AttachmentKind,
    plaintext_len: u64,
    media_type: String,
    blob_id: Vec<u8>,
}

impl fmt::Debug for AttachmentPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            key: _,
            commitment,
            kind,
            plaintext_len,
            media_type,
            blob_id,
        } = self;
        f.debug_struct("AttachmentPointer")
            .field("key", &"<redacted>")
            .field("commitment", &Hex(commitment))
            .field("kind", kind)
            .field("plaintext_len", plaintext_len)
            .field("media_type", media_type)
            .field("blob_id", &Hex(blob_id))
            .finish()
    }
}

impl AttachmentPointer {
    /// The key commitment: `HKDF-SHA256(attachment key, "hush.v1.attachment.commitment")`.
    #[must_use]
    pub fn commitment(&self) -> &[u8; COMMITMENT_LEN] {
        &self.commitment
    }

    /// Image or file.
    #[must_use]
    pub fn kind(&self) -> AttachmentKind {
        self.kind
    }

    /// The size of the decrypted attachment.
    #[must_use]
    pub fn plaintext_len(&self) -> u64 {
        self.plaintext_len
    }

    /// The exact size of the blob on the server.
    #[must_use]
    pub fn ciphertext_len(&self) -> u64 {
        super::ciphertext_len(self.plaintext_len).unwrap_or(u64::MAX)
    }

    /// The media type the sender declared, such as `image/png`. It is the
    /// sender's claim, not checked against the content.
    #[must_use]
    pub fn media_type(&self) -> &str {
        &self.media_type
    }

    /// The server's opaque id of the blob.
    #[must_use]
    pub fn blob_id(&self) -> &[u8] {
        &self.blob_id
    }

    pub(super) fn key(&self) -> &Secret32 {
        &self.key
    }

    /// The encoding, version 1. It contains the attachment key, so it is
    /// returned in a buffer that is zeroized when dropped.
    ///
    /// | bytes | field |
    /// |---|---|
    /// | 1 | version = `0x01` |
    /// | 1 | kind: `0x01` image, `0x02` file |
    /// | 8 | plaintext size (u64 BE), at most the cap of the kind |
    /// | 32 | attachment key |
    /// | 32 | key commitment |
    /// | 1 | `n`, media type length, 1 to 127 |
    /// | n | media type, printable ASCII (`0x20..=0x7e`) |
    /// | 1 | `m`, blob id length, 1 to 64 |
    /// | m | blob id |
    #[must_use]
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let len =
            1 + 1 + 8 + 32 + COMMITMENT_LEN + 1 + self.media_type.len() + 1 + self.blob_id.len();
        // Exact capacity: the buffer holding the key never reallocates.
        let mut w = Writer::with_capacity(len);
        w.u8(POINTER_VERSION)
            .u8(self.kind.tag())
            .u64(self.plaintext_len)
            .raw(self.key.as_bytes())
            .raw(&self.commitment)
            .bytes_u8(self.media_type.as_bytes())
            .bytes_u8(&self.blob_id);
        Zeroizing::new(w.into_vec())
    }

    /// Decodes a pointer written by [`to_bytes`](Self::to_bytes).
    ///
    /// # Errors
    /// [`AttachmentError::Decode`] for a truncated input, trailing bytes, an
    /// unknown version or kind or an over-long field;
    /// [`AttachmentError::TooLarge`] for a size above the cap of the kind;
    /// [`AttachmentError::InvalidMediaType`], [`AttachmentError::InvalidBlobId`];
    /// [`AttachmentError::CommitmentMismatch`] if the commitment is not that of
    /// the key.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AttachmentError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != POINTER_VERSION {
            return Err(DecodeError::UnsupportedVersion(version).into());
        }
        let kind = AttachmentKind::from_tag(r.u8()?)?;
        let plaintext_len = r.u64()?;
        let mut raw_key = r.array::<32>()?;
        let key = Secret32::new(raw_key);
        raw_key.zeroize();
        let commitment = r.array::<COMMITMENT_LEN>()?;
        let media_type = r.bytes_u8()?;
        if media_type.len() > MAX_MEDIA_TYPE_LEN {
            return Err(DecodeError::TooLong {
                len: media_type.len(),
                max: MAX_MEDIA_TYPE_LEN,
            }
            .into());
        }
        let blob_id = r.bytes_u8()?;
        if blob_id.len() > MAX_BLOB_ID_LEN {
            return Err(DecodeError::TooLong {
                len: blob_id.len(),
                max: MAX_BLOB_ID_LEN,
            }
            .into());
        }
        r.finish()?;
        kind.check_len(plaintext_len)?;
        let media_type =
            std::str::from_utf8(media_type).map_err(|_| AttachmentError::InvalidMediaType)?;
        check_media_type(media_type)?;
        check_blob_id(blob_id)?;
        if !bool::from(commitment_of(&key).ct_eq(&commitment)) {
            return Err(AttachmentError::CommitmentMismatch);
        }
        Ok(Self {
            key,
            commitment,
            kind,
            plaintext_len,
            media_type: media_type.to_owned(),
            blob_id: blob_id.to_vec(),
        })
    }
}

/// An encrypted attachment before upload: the pointer without the server's
/// blob id. [`Encryptor::finish`](super::Encryptor::finish) returns it; once
/// the server has stored the blob, [`into_pointer`](Self::into_pointer) adds
/// the id.
pub struct PendingPointer {
    key: Secret32,
    commitment: [u8; COMMITMENT_LEN],
    kind: AttachmentKind,
    plaintext_len: u64,
    media_type: String,
}

impl fmt::Debug for PendingPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            key: _,
            commitment,
            kind,
            plaintext_len,
            media_type,
        } = self;
        f.debug_struct("PendingPointer")
            .field("key", &"<redacted>")
            .field("commitment", &Hex(commitment))
            .field("kind", kind)
            .field("plaintext_len", plaintext_len)
            .field("media_type", media_type)
            .finish()
    }
}

impl PendingPointer {
    pub(super) fn new(
        key: Secret32,
        commitment: [u8; COMMITMENT_LEN],
        kind: AttachmentKind,
        media_type: String,
        plaintext_len: u64,
    ) -> Self {
        Self {
            key,
            commitment,
            kind,
            plaintext_len,
            media_type,
        }
    }

    /// The key commitment, as in the blob header.
    #[must_use]
    pub fn commitment(&self) -> &[u8; COMMITMENT_LEN] {
        &self.commitment
    }

    /// Image or file: what the upload is declared as.
    #[must_use]
    pub fn kind(&self) -> AttachmentKind {
        self.kind
    }

    /// The size of the plaintext.
    #[must_use]
    pub fn plaintext_len(&self) -> u64 {
        self.plaintext_len
    }

    /// The exact size of the blob: the size an upload declares.
    #[must_use]
    pub fn ciphertext_len(&self) -> u64 {
        super::ciphertext_len(self.plaintext_len).unwrap_or(u64::MAX)
    }

    /// Completes the pointer with the id under which the server stored the blob.
    ///
    /// # Errors
    /// [`AttachmentError::InvalidBlobId`] if `blob_id` is empty or longer than
    /// [`MAX_BLOB_ID_LEN`].
    pub fn into_pointer(self, blob_id: Vec<u8>) -> Result<AttachmentPointer, AttachmentError> {
        check_blob_id(&blob_id)?;
        let Self {
            key,
            commitment,
            kind,
            plaintext_len,
            media_type,
        } = self;
        Ok(AttachmentPointer {
            key,
            commitment,
            kind,
            plaintext_len,
            media_type,
            blob_id,
        })
    }
}

/// 1 to [`MAX_MEDIA_TYPE_LEN`] bytes of printable ASCII.
pub(super) fn check_media_type(media_type: &str) -> Result<(), AttachmentError> {
    let ok = !media_type.is_empty()
        && media_type.len() <= MAX_MEDIA_TYPE_LEN
        && media_type.bytes().all(|b| (0x20..=0x7e).contains(&b));
    if ok {
        Ok(())
    } else {
        Err(AttachmentError::InvalidMediaType)
    }
}

/// 1 to [`MAX_BLOB_ID_LEN`] bytes.
fn check_blob_id(blob_id: &[u8]) -> Result<(), AttachmentError> {
    if blob_id.is_empty() || blob_id.len() > MAX_BLOB_ID_LEN {
        return Err(AttachmentError::InvalidBlobId);
    }
    Ok(())
}

/// Public bytes shown in hex by `Debug`.
struct Hex<'a>(&'a [u8]);

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
impl AttachmentPointer {
    /// The same pointer claiming another commitment, which `from_bytes` would refuse.
    pub(super) fn with_commitment(mut self, commitment: [u8; COMMITMENT_LEN]) -> Self {
        self.commitment = commitment;
        self
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::attachment::{MAX_FILE_LEN, MAX_IMAGE_LEN};

    fn pointer(
        kind: AttachmentKind,
        len: u64,
        media_type: &str,
        blob_id: &[u8],
    ) -> AttachmentPointer {
        let key = Secret32::new([0x5a; 32]);
        let commitment = commitment_of(&key);
        PendingPointer::new(key, commitment, kind, media_type.to_owned(), len)
            .into_pointer(blob_id.to_vec())
            .unwrap()
    }

    fn sample() -> AttachmentPointer {
        pointer(AttachmentKind::Image, 123_456, "image/png", b"blob-42")
    }

    #[test]
    fn round_trips_and_matches_the_layout() {
        let p = sample();
        let bytes = p.to_bytes();
        assert_eq!(bytes.len(), 1 + 1 + 8 + 32 + 32 + 1 + 9 + 1 + 7);
        assert_eq!(bytes[0], POINTER_VERSION);
        assert_eq!(bytes[1], 1);
        assert_eq!(&bytes[2..10], &123_456u64.to_be_bytes());
        assert_eq!(&bytes[10..42], &[0x5a; 32]);
        assert_eq!(&bytes[42..74], p.commitment());
        assert_eq!(bytes[74], 9);
        assert_eq!(&bytes[75..84], b"image/png");
        assert_eq!(bytes[84], 7);
        assert_eq!(&bytes[85..], b"blob-42");
        let back = AttachmentPointer::from_bytes(&bytes).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.kind(), AttachmentKind::Image);
        assert_eq!(back.plaintext_len(), 123_456);
        assert_eq!(back.media_type(), "image/png");
        assert_eq!(back.blob_id(), b"blob-42");
        assert_eq!(back.ciphertext_len(), 40 + 123_456 + 2 * 16);
    }

    #[test]
    fn every_truncation_and_any_trailing_byte_is_refused() {
        let bytes = sample().to_bytes();
        for cut in 0..bytes.len() {
            assert!(
                AttachmentPointer::from_bytes(&bytes[..cut]).is_err(),
                "cut {cut}"
            );
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(matches!(
            AttachmentPointer::from_bytes(&longer),
            Err(AttachmentError::Decode(DecodeError::TrailingBytes(1)))
        ));
    }

    fn decode_with(edit: impl FnOnce(&mut Vec<u8>)) -> Result<AttachmentPointer, AttachmentError> {
        let mut bytes = sample().to_bytes().to_vec();
        edit(&mut bytes);
        AttachmentPointer::from_bytes(&bytes)
    }

    #[test]
    fn bad_fields_are_refused() {
        assert!(matches!(
            decode_with(|b| b[0] = 2),
            Err(AttachmentError::Decode(DecodeError::UnsupportedVersion(2)))
        ));
        assert!(matches!(
            decode_with(|b| b[1] = 3),
            Err(AttachmentError::Decode(DecodeError::UnknownTag(3)))
        ));
        // An image one byte over its cap; as a file the same size is fine.
        let over = (MAX_IMAGE_LEN + 1).to_be_bytes();
        assert!(matches!(
            decode_with(|b| b[2..10].copy_from_slice(&over)),
            Err(AttachmentError::TooLarge { .. })
        ));
        assert!(
            decode_with(|b| {
                b[1] = 2;
                b[2..10].copy_from_slice(&over);
            })
            .is_ok()
        );
        let over = (MAX_FILE_LEN + 1).to_be_bytes();
        assert!(matches!(
            decode_with(|b| {
                b[1] = 2;
                b[2..10].copy_from_slice(&over);
            }),
            Err(AttachmentError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_with(|b| b[75] = b'\n'),
            Err(AttachmentError::InvalidMediaType)
        ));
        assert!(matches!(
            decode_with(|b| b[75] = 0xc3),
            Err(AttachmentError::InvalidMediaType)
        ));
    }

    #[test]
    fn field_lengths_are_capped() {
        let with_fields = |media_type: &[u8], blob_id: &[u8]| {
            let mut bytes = sample().to_bytes()[..74].to_vec();
            bytes.push(media_type.len() as u8);
            bytes.extend_from_slice(media_type);
            bytes.push(blob_id.len() as u8);
            bytes.extend_from_slice(blob_id);
            AttachmentPointer::from_bytes(&bytes)
        };
        assert!(with_fields(&[b'a'; 127], &[1; 64]).is_ok());
        assert!(matches!(
            with_fields(&[b'a'; 128], &[1; 64]),
            Err(AttachmentError::Decode(DecodeError::TooLong {
                len: 128,
                max: 127
            }))
        ));
        assert!(matches!(
            with_fields(b"", &[1; 64]),
            Err(AttachmentError::InvalidMediaType)
        ));
        assert!(matches!(
            with_fields(b"a/b", &[1; 65]),
            Err(AttachmentError::Decode(DecodeError::TooLong {
                len: 65,
                max: 64
            }))
        ));
        assert!(matches!(
            with_fields(b"a/b", b""),
            Err(AttachmentError::InvalidBlobId)
        ));
    }

    #[test]
    fn a_commitment_that_is_not_the_keys_is_refused() {
        // Flip any bit of the key or of the commitment.
        for pos in [10, 41, 42, 73] {
            assert!(matches!(
                decode_with(|b| b[pos] ^= 1),
                Err(AttachmentError::CommitmentMismatch)
            ));
        }
    }

    #[test]
    fn blob_ids_are_checked_when_completing_a_pointer() {
        let pending = || {
            let key = Secret32::new([1; 32]);
            let commitment = commitment_of(&key);
            PendingPointer::new(key, commitment, AttachmentKind::File, "a/b".into(), 1)
        };
        assert!(matches!(
            pending().into_pointer(Vec::new()),
            Err(AttachmentError::InvalidBlobId)
        ));
        assert!(matches!(
            pending().into_pointer(vec![0; 65]),
            Err(AttachmentError::InvalidBlobId)
        ));
        assert!(pending().into_pointer(vec![0; 64]).is_ok());
    }

    #[test]
    fn debug_prints_no_key_material() {
        let p = sample();
        let key_hex = "5a".repeat(32);
        for printed in [
            format!("{p:?}"),
            format!("{:?}", {
                let key = Secret32::new([0x5a; 32]);
                let commitment = commitment_of(&key);
                PendingPointer::new(key, commitment, AttachmentKind::File, "a/b".into(), 1)
            }),
        ] {
            assert!(!printed.contains(&key_hex[..8]), "{printed}");
            assert!(!printed.contains("90, 90"), "{printed}");
            assert!(printed.contains("<redacted>"), "{printed}");
        }
    }

    fn kind() -> impl Strategy<Value = AttachmentKind> {
        prop_oneof![Just(AttachmentKind::Image), Just(AttachmentKind::File)]
    }

    proptest! {
        /// Every valid pointer survives `to_bytes` then `from_bytes` unchanged.
        #[test]
        fn every_pointer_round_trips(
            kind in kind(),
            len in 0..=MAX_IMAGE_LEN,
            media_type in "[ -~]{1,127}",
            blob_id in prop::collection::vec(any::<u8>(), 1..=64),
        ) {
            let p = pointer(kind, len, &media_type, &blob_id);
            prop_assert_eq!(AttachmentPointer::from_bytes(&p.to_bytes()).unwrap(), p);
        }

        /// Any byte string decodes to a pointer or a typed error, never a panic.
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = AttachmentPointer::from_bytes(&bytes);
        }

        /// The encoding is canonical: any single-byte change to a valid
        /// encoding is refused or decodes to a pointer that encodes back to
        /// exactly the changed bytes.
        #[test]
        fn decoding_is_canonical(pos in any::<prop::sample::Index>(), x in 1..=255u8) {
            let mut bytes = sample().to_bytes().to_vec();
            let i = pos.index(bytes.len());
            bytes[i] ^= x;
            if let Ok(p) = AttachmentPointer::from_bytes(&bytes) {
                prop_assert_eq!(&p.to_bytes()[..], &bytes[..]);
            }
        }
    }
}
