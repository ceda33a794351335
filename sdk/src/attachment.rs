//! Encrypted attachments: files and images of up to 50 MiB, encrypted in one
//! streaming pass and in constant memory.
//!
//! The sender encrypts a file under a fresh random 32-byte **attachment key**,
//! uploads the encrypted blob to the server and sends an
//! [`AttachmentPointer`] (key, key commitment, size, media type, kind and the
//! server's blob id) inside an end-to-end encrypted message. The recipient
//! downloads the blob and decrypts it with the pointer.
//!
//! # Construction
//!
//! A STREAM-style online AEAD over AES-256-GCM:
//!
//! ```text
//! AES key    = HKDF-SHA256(salt = none, ikm = attachment key, info = "hush.v1.attachment.key",        L = 32)
//! commitment = HKDF-SHA256(salt = none, ikm = attachment key, info = "hush.v1.attachment.commitment", L = 32)
//! header     = version (u8) = 0x01 || nonce prefix (7, random) || commitment (32)
//! nonce_i    = nonce prefix (7) || i (u32 big-endian) || last flag (u8: 0x00, or 0x01 on the last chunk)
//! chunk_i    = AES-256-GCM(AES key, nonce_i, AAD = header, plaintext bytes [i·C, min((i+1)·C, len)))
//! blob       = header || chunk_0 || … || chunk_{n-1}          (each chunk carries its 16-byte tag)
//! ```
//!
//! with `C` = [`CHUNK_LEN`] = 64 KiB and `n = max(1, ⌈len / C⌉)`: every
//! chunk but the last holds exactly `C` bytes of plaintext, the last holds 1
//! to `C` bytes (0 only for an empty file). The chunk index and the last flag
//! are part of each nonce, so a reordered, duplicated, dropped or appended
//! chunk fails to authenticate, and a stream cut at a chunk boundary lacks the
//! chunk sealed as last, which [`Decryptor::finish`] reports.
//!
//! GCM does not commit to its key: one ciphertext can be made to decrypt
//! validly under two keys. The **commitment** closes that gap. It is carried in
//! the blob header and in the pointer, and the decryptor recomputes it from the
//! key it is given and compares (in constant time) with both before it
//! decrypts anything, so one upload cannot decrypt to two different files.
//!
//! Sizes are declared up front: the encryptor is told the plaintext size and
//! refuses more or fewer bytes, the decryptor expects exactly
//! [`ciphertext_len`] bytes and refuses anything beyond. Images are capped at
//! [`MAX_IMAGE_LEN`] (5 MiB) and files at [`MAX_FILE_LEN`] (50 MiB) of
//! plaintext; a server checks declared upload sizes against
//! [`AttachmentKind::max_ciphertext_len`].
//!
//! Memory stays bounded whatever the file size: [`Encryptor`] and
//! [`Decryptor`] each buffer less than one sealed chunk
//! ([`MAX_BUFFERED_LEN`]), and the [`encrypt_stream`] / [`decrypt_stream`]
//! helpers move one chunk at a time from a [`std::io::Read`] to a
//! [`std::io::Write`]. A caller that already holds the file or the blob in a
//! writable buffer (a download buffer, a mapped file) can instead seal and
//! open it chunk by chunk where it lies, with no copy at all:
//! [`Encryptor::seal_chunk_in_place`] and [`Decryptor::open_chunk_in_place`]
//! (the [`Encryptor`] docs show how).
//!
//! ```
//! use hush::attachment::{AttachmentKind, AttachmentPointer, Decryptor, Encryptor};
//! # use rand_chacha::rand_core::SeedableRng;
//! # let mut rng = rand_chacha::ChaCha20Rng::from_seed([3; 32]);
//! // Alice encrypts a photo, chunk by chunk, into the blob she uploads.
//! let photo = vec![0x42u8; 200_000];
//! let mut enc = Encryptor::new(&mut rng, AttachmentKind::Image, "image/jpeg", photo.len() as u64)?;
//! let mut blob = Vec::new();
//! for piece in photo.chunks(10_000) {
//!     enc.update(piece, &mut blob)?;
//! }
//! let pending = enc.finish(&mut blob)?;
//! assert_eq!(blob.len() as u64, pending.ciphertext_len());
//! // The server stored the blob under an id; the pointer travels end to end.
//! let pointer_bytes = pending.into_pointer(b"blob-7f3a".to_vec())?.to_bytes();
//!
//! // Bob decodes the pointer, downloads the blob and decrypts it.
//! let pointer = AttachmentPointer::from_bytes(&pointer_bytes)?;
//! assert_eq!(pointer.media_type(), "image/jpeg");
//! let mut dec = Decryptor::new(&pointer)?;
//! let mut photo_out = Vec::new();
//! for piece in blob.chunks(4_096) {
//!     dec.update(piece, &mut photo_out)?;
//! }
//! dec.finish()?;
//! assert_eq!(photo_out, photo);
//! # Ok::<(), hush::attachment::AttachmentError>(())
//! ```

mod io;
mod pointer;
mod stream;

use aes_gcm::aead::Nonce;
use aes_gcm::{Aes256Gcm, KeyInit};
use hkdf::Hkdf;
use sha2::Sha256;
use thiserror::Error;

use crate::codec::DecodeError;
use crate::secret::Secret32;
pub use io::{decrypt_stream, encrypt_stream};
pub use pointer::{AttachmentPointer, PendingPointer};
pub use stream::{Decryptor, Encryptor};

/// Version byte of the encrypted blob header.
pub const BLOB_VERSION: u8 = 1;
/// Version byte of an encoded [`AttachmentPointer`].
pub const POINTER_VERSION: u8 = 1;
/// Plaintext bytes in every chunk but the last (64 KiB).
pub const CHUNK_LEN: usize = 64 * 1024;
/// AES-GCM tag bytes after each chunk's ciphertext.
pub const TAG_LEN: usize = 16;
/// Bytes of a full chunk on the wire: ciphertext and tag.
pub const SEALED_CHUNK_LEN: usize = CHUNK_LEN + TAG_LEN;
/// Random bytes at the start of every chunk nonce.
pub const NONCE_PREFIX_LEN: usize = 7;
/// Bytes of the key commitment.
pub const COMMITMENT_LEN: usize = 32;
/// Bytes of the blob header: version, nonce prefix, commitment.
pub const HEADER_LEN: usize = 1 + NONCE_PREFIX_LEN + COMMITMENT_LEN;
/// The most bytes an [`Encryptor`] or [`Decryptor`] ever holds between calls.
pub const MAX_BUFFERED_LEN: usize = SEALED_CHUNK_LEN;
/// Plaintext cap of an [`AttachmentKind::Image`]: 5 MiB.
pub const MAX_IMAGE_LEN: u64 = 5 * 1024 * 1024;
/// Plaintext cap of an [`AttachmentKind::File`]: 50 MiB.
pub const MAX_FILE_LEN: u64 = 50 * 1024 * 1024;
/// Longest media type, in bytes (RFC 6838 caps type and subtype names at 127).
pub const MAX_MEDIA_TYPE_LEN: usize = 127;
/// Longest server blob id, in bytes.
pub const MAX_BLOB_ID_LEN: usize = 64;

/// HKDF info deriving the AES-256-GCM key from an attachment key.
const KEY_INFO: &[u8] = b"hush.v1.attachment.key";
/// HKDF info deriving the key commitment from an attachment key.
const COMMITMENT_INFO: &[u8] = b"hush.v1.attachment.commitment";

/// Why an attachment could not be encrypted, decrypted or decoded.
///
/// A chunk that fails to authenticate is the one opaque
/// [`AuthenticationFailed`](Self::AuthenticationFailed), whatever was changed.
/// After any error an [`Encryptor`] or [`Decryptor`] refuses further input
/// with [`Poisoned`](Self::Poisoned).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AttachmentError {
    /// A pointer or blob header is malformed.
    #[error("malformed attachment: {0}")]
    Decode(#[from] DecodeError),
    /// The declared plaintext size is above the cap of its kind.
    #[error("{len} bytes exceed the {max}-byte cap of this attachment kind")]
    TooLarge {
        /// The declared plaintext size.
        len: u64,
        /// The cap of the declared kind.
        max: u64,
    },
    /// The media type is empty, too long or not printable ASCII.
    #[error("invalid media type")]
    InvalidMediaType,
    /// The blob id is empty or longer than [`MAX_BLOB_ID_LEN`].
    #[error("invalid blob id")]
    InvalidBlobId,
    /// The encryptor was given more or fewer plaintext bytes than declared.
    #[error("{actual} plaintext bytes, but {declared} were declared")]
    LengthMismatch {
        /// The declared plaintext size.
        declared: u64,
        /// The bytes given (for an overrun: the total including the refused input).
        actual: u64,
    },
    /// The key does not match the commitment of the pointer or of the blob.
    #[error("attachment key does not match its commitment")]
    CommitmentMismatch,
    /// A chunk failed to authenticate: the blob was altered, reordered or
    /// truncated inside a chunk, or made under another key.
    #[error("attachment failed to authenticate")]
    AuthenticationFailed,
    /// The blob ended before its last chunk.
    #[error("attachment is truncated")]
    Truncated,
    /// The blob continues after its last chunk.
    #[error("attachment is longer than its declared size")]
    TrailingData,
    /// An [`Encryptor`] or [`Decryptor`] method was called out of order: a
    /// method of the in-place form on a stream begun with `update`, or the
    /// other way round, or a chunk opened in place before the blob header
    /// (or the header given twice).
    #[error("attachment stream methods called out of order")]
    OutOfOrder,
    /// An earlier error ended this stream.
    #[error("attachment stream already failed")]
    Poisoned,
    /// Reading the input or writing the output failed.
    #[error("attachment I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// What an attachment is, which decides its size cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum AttachmentKind {
    /// A picture shown inline: at most [`MAX_IMAGE_LEN`] bytes of plaintext.
    Image,
    /// Any other file: at most [`MAX_FILE_LEN`] bytes of plaintext.
    File,
}

impl AttachmentKind {
    /// The largest plaintext size of this kind.
    #[must_use]
    pub const fn max_plaintext_len(self) -> u64 {
        match self {
            Self::Image => MAX_IMAGE_LEN,
            Self::File => MAX_FILE_LEN,
        }
    }

    /// The largest blob size of this kind: what a server accepts at most for
    /// an upload declared as this kind.
    #[must_use]
    pub const fn max_ciphertext_len(self) -> u64 {
        match ciphertext_len(self.max_plaintext_len()) {
            Some(n) => n,
            None => u64::MAX,
        }
    }

    /// Refuses a declared plaintext size above this kind's cap.
    fn check_len(self, len: u64) -> Result<(), AttachmentError> {
        let max = self.max_plaintext_len();
        if len > max {
            return Err(AttachmentError::TooLarge { len, max });
        }
        Ok(())
    }

    fn tag(self) -> u8 {
        match self {
            Self::Image => 1,
            Self::File => 2,
        }
    }

    fn from_tag(tag: u8) -> Result<Self, DecodeError> {
        match tag {
            1 => Ok(Self::Image),
            2 => Ok(Self::File),
            other => Err(DecodeError::UnknownTag(other)),
        }
    }
}

/// The number of chunks a plaintext of `plaintext_len` bytes is cut into:
/// `max(1, ⌈plaintext_len / CHUNK_LEN⌉)`.
#[must_use]
pub const fn chunk_count(plaintext_len: u64) -> u64 {
    if plaintext_len == 0 {
        1
    } else {
        plaintext_len.div_ceil(CHUNK_LEN as u64)
    }
}

/// The exact size of the blob that encrypts `plaintext_len` bytes:
/// `HEADER_LEN + plaintext_len + TAG_LEN · chunk_count(plaintext_len)`.
/// `None` only if that overflows a `u64`.
#[must_use]
pub const fn ciphertext_len(plaintext_len: u64) -> Option<u64> {
    let Some(tags) = chunk_count(plaintext_len).checked_mul(TAG_LEN as u64) else {
        return None;
    };
    let Some(body) = plaintext_len.checked_add(tags) else {
        return None;
    };
    body.checked_add(HEADER_LEN as u64)
}

/// The AES key and the commitment derived from one attachment key.
struct KeySchedule {
    cipher: Aes256Gcm,
    commitment: [u8; COMMITMENT_LEN],
}

impl KeySchedule {
    fn derive(key: &Secret32) -> Self {
        let hk = Hkdf::<Sha256>::new(None, key.as_bytes());
        let mut aes_key = Secret32::zero();
        let mut commitment = [0u8; COMMITMENT_LEN];
        // 32 bytes is a valid HKDF-SHA256 output length: neither call can fail.
        let _ = hk.expand(KEY_INFO, aes_key.as_mut());
        let _ = hk.expand(COMMITMENT_INFO, &mut commitment);
        Self {
            cipher: Aes256Gcm::new(aes_key.as_bytes().into()),
            commitment,
        }
    }
}

/// The commitment to an attachment key.
fn commitment_of(key: &Secret32) -> [u8; COMMITMENT_LEN] {
    KeySchedule::derive(key).commitment
}

/// `prefix (7) || index (u32 BE) || last (u8)`.
fn chunk_nonce(prefix: &[u8; NONCE_PREFIX_LEN], index: u32, last: bool) -> Nonce<Aes256Gcm> {
    let mut nonce = [0u8; 12];
    nonce[..NONCE_PREFIX_LEN].copy_from_slice(prefix);
    nonce[NONCE_PREFIX_LEN..NONCE_PREFIX_LEN + 4].copy_from_slice(&index.to_be_bytes());
    nonce[11] = u8::from(last);
    Nonce::<Aes256Gcm>::from(nonce)
}

#[cfg(test)]
mod tests {
    use sha2::Digest;

    use super::*;

    #[test]
    fn layout_constants_add_up() {
        assert_eq!(HEADER_LEN, 40);
        assert_eq!(SEALED_CHUNK_LEN, 65_552);
        assert_eq!(NONCE_PREFIX_LEN + 4 + 1, 12);
    }

    #[test]
    fn ciphertext_len_counts_one_tag_per_chunk() {
        let c = CHUNK_LEN as u64;
        let h = HEADER_LEN as u64;
        let t = TAG_LEN as u64;
        assert_eq!(ciphertext_len(0), Some(h + t));
        assert_eq!(ciphertext_len(1), Some(h + 1 + t));
        assert_eq!(ciphertext_len(c - 1), Some(h + c - 1 + t));
        assert_eq!(ciphertext_len(c), Some(h + c + t));
        assert_eq!(ciphertext_len(c + 1), Some(h + c + 1 + 2 * t));
        assert_eq!(ciphertext_len(3 * c), Some(h + 3 * c + 3 * t));
        assert_eq!(ciphertext_len(u64::MAX), None);
        assert_eq!(chunk_count(MAX_FILE_LEN), 800);
        assert_eq!(
            AttachmentKind::File.max_ciphertext_len(),
            h + MAX_FILE_LEN + 800 * t
        );
        assert_eq!(
            AttachmentKind::Image.max_ciphertext_len(),
            h + MAX_IMAGE_LEN + 80 * t
        );
    }

    #[test]
    fn nonce_layout() {
        let n = chunk_nonce(&[1, 2, 3, 4, 5, 6, 7], 0x0a0b_0c0d, true);
        assert_eq!(
            n.as_slice(),
            &[1, 2, 3, 4, 5, 6, 7, 0x0a, 0x0b, 0x0c, 0x0d, 1]
        );
        let n = chunk_nonce(&[9; 7], 2, false);
        assert_eq!(n.as_slice(), &[9, 9, 9, 9, 9, 9, 9, 0, 0, 0, 2, 0]);
    }

    #[test]
    fn kind_tags_round_trip() {
        for kind in [AttachmentKind::Image, AttachmentKind::File] {
            assert_eq!(AttachmentKind::from_tag(kind.tag()), Ok(kind));
        }
        assert_eq!(AttachmentKind::from_tag(0), Err(DecodeError::UnknownTag(0)));
        assert_eq!(AttachmentKind::from_tag(3), Err(DecodeError::UnknownTag(3)));
    }

    /// Computed independently of this crate (Python `hmac`/`hashlib`, RFC 5869):
    /// the commitment to the key `00 01 02 … 1f`.
    #[test]
    fn commitment_known_answer() {
        let key = Secret32::new(std::array::from_fn(|i| i as u8));
        assert_eq!(hex::encode(commitment_of(&key)), COMMITMENT_KAT);
    }

    /// Blobs computed independently of this crate (Python `hmac`/`hashlib`
    /// and `cryptography`'s AESGCM, following `docs/protocol-attachment.md`)
    /// for the key `00 01 02 … 1f` and the nonce prefix `a0 a1 … a6`.
    #[test]
    fn blob_known_answers() {
        let seal = |plaintext: &[u8]| {
            let key = Secret32::new(std::array::from_fn(|i| i as u8));
            let prefix = [0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6];
            let len = plaintext.len() as u64;
            let mut enc =
                Encryptor::with_key(key, prefix, AttachmentKind::File, "a/b", len).unwrap();
            let mut blob = Vec::new();
            enc.update(plaintext, &mut blob).unwrap();
            enc.finish(&mut blob).unwrap();
            blob
        };
        assert_eq!(hex::encode(seal(&[])), EMPTY_BLOB_KAT);
        // Two chunks: 65,536 bytes and 5 bytes of `i mod 251`.
        let plaintext: Vec<u8> = (0..CHUNK_LEN + 5).map(|i| (i % 251) as u8).collect();
        let blob = seal(&plaintext);
        assert_eq!(blob.len(), 65_613);
        assert_eq!(
            hex::encode(Sha256::digest(&blob)),
            TWO_CHUNK_BLOB_SHA256_KAT
        );
    }

    const EMPTY_BLOB_KAT: &str = concat!(
        "01a0a1a2a3a4a5a6",
        "c08f4e80f60a90dc5015e7b5012515b7af3b839e1a5dcefb57a8c5e1a64d2414",
        "ca50866805c1ad4169f502b2209b2b40",
    );
    const TWO_CHUNK_BLOB_SHA256_KAT: &str =
        "1fa21d38d69ece61b03d2d024bf7ef95857bde2d9b2d84ac3c70a3aaca257ca1";

    const COMMITMENT_KAT: &str = "c08f4e80f60a90dc5015e7b5012515b7af3b839e1a5dcefb57a8c5e1a64d2414";
}
