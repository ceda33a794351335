//! The incremental encryptor and decryptor of the chunked blob format.

use std::fmt;

use aes_gcm::{AeadInOut, Tag};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use super::pointer::{AttachmentPointer, PendingPointer, check_media_type};
use super::{
    AttachmentError, AttachmentKind, BLOB_VERSION, CHUNK_LEN, COMMITMENT_LEN, HEADER_LEN,
    KeySchedule, NONCE_PREFIX_LEN, SEALED_CHUNK_LEN, TAG_LEN, chunk_count, chunk_nonce,
};
use crate::codec::{DecodeError, Reader, Writer};
use crate::secret::Secret32;

/// Encrypts one attachment incrementally, in constant memory.
///
/// An encryptor is driven in one of two forms, fixed by the first call:
///
/// * **Streaming**: call [`update`](Self::update) with the plaintext in pieces
///   of any size, in order, then [`finish`](Self::finish) once. Both append
///   blob bytes to the given output; the header comes first. The encryptor
///   holds at most one chunk of plaintext
///   ([`buffered_len`](Self::buffered_len)), zeroized when dropped.
/// * **In place**, for a caller that holds the plaintext in a writable buffer:
///   the blob is [`header`](Self::header), then for each chunk the
///   [`next_chunk_len`](Self::next_chunk_len) plaintext bytes encrypted by
///   [`seal_chunk_in_place`](Self::seal_chunk_in_place) where they lie,
///   followed by the tag it returns; [`finish_in_place`](Self::finish_in_place)
///   ends the stream. Nothing is copied or buffered.
///
/// Either way exactly the declared number of plaintext bytes must be given,
/// and any error ends the stream: every later call fails with
/// [`AttachmentError::Poisoned`]. Calling a method of the other form fails
/// with [`AttachmentError::OutOfOrder`].
///
/// ```
/// use hush::attachment::{AttachmentKind, Decryptor, Encryptor, HEADER_LEN, TAG_LEN};
/// # use rand_chacha::rand_core::SeedableRng;
/// # let mut rng = rand_chacha::ChaCha20Rng::from_seed([4; 32]);
/// // Alice encrypts a file she holds in memory, chunk by chunk where it lies,
/// // keeping the tags apart.
/// let file = vec![0x42u8; 150_000];
/// let mut data = file.clone();
/// let mut enc = Encryptor::new(&mut rng, AttachmentKind::File, "text/plain", data.len() as u64)?;
/// let mut tags = Vec::new();
/// let mut rest = &mut data[..];
/// while let Some(n) = enc.next_chunk_len() {
///     let (chunk, tail) = rest.split_at_mut(n);
///     tags.push(enc.seal_chunk_in_place(chunk)?);
///     rest = tail;
/// }
/// // The blob she uploads: the header, then each chunk followed by its tag.
/// let mut blob = enc.header().to_vec();
/// let mut start = 0;
/// for tag in &tags {
///     let end = (start + hush::attachment::CHUNK_LEN).min(data.len());
///     blob.extend_from_slice(&data[start..end]);
///     blob.extend_from_slice(tag);
///     start = end;
/// }
/// let pending = enc.finish_in_place()?;
/// assert_eq!(blob.len() as u64, pending.ciphertext_len());
/// let pointer = pending.into_pointer(b"blob-1".to_vec())?;
///
/// // Bob opens the downloaded blob where it lies.
/// let mut dec = Decryptor::new(&pointer)?;
/// let (header, mut sealed) = blob
///     .split_first_chunk_mut::<HEADER_LEN>()
///     .ok_or(hush::attachment::AttachmentError::Truncated)?;
/// dec.open_header(header)?;
/// let mut received = Vec::new();
/// while let Some(n) = dec.next_sealed_len() {
///     let (chunk, tail) = sealed.split_at_mut(n);
///     let len = dec.open_chunk_in_place(chunk)?;
///     // `chunk[..len]` is plaintext; here it is collected to compare.
///     received.extend_from_slice(&chunk[..len]);
///     assert_eq!(chunk.len(), len + TAG_LEN);
///     sealed = tail;
/// }
/// dec.finish()?;
/// assert_eq!(received, file);
/// # Ok::<(), hush::attachment::AttachmentError>(())
/// ```
pub struct Encryptor {
    key: Secret32,
    schedule: KeySchedule,
    header: [u8; HEADER_LEN],
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    kind: AttachmentKind,
    media_type: String,
    declared: u64,
    absorbed: u64,
    chunks: u32,
    next_chunk: u32,
    header_written: bool,
    buf: Zeroizing<Vec<u8>>,
    form: Form,
    poisoned: bool,
}

impl fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encryptor")
            .field("kind", &self.kind)
            .field("declared", &self.declared)
            .field("absorbed", &self.absorbed)
            .finish_non_exhaustive()
    }
}

impl Encryptor {
    /// Starts encrypting an attachment of `plaintext_len` bytes under a fresh
    /// random key and nonce prefix.
    ///
    /// # Errors
    /// [`AttachmentError::TooLarge`] if `plaintext_len` is above the cap of
    /// `kind`; [`AttachmentError::InvalidMediaType`] if `media_type` is empty,
    /// longer than [`MAX_MEDIA_TYPE_LEN`](super::MAX_MEDIA_TYPE_LEN) or not
    /// printable ASCII.
    pub fn new<R: rand_core::CryptoRng + ?Sized>(
        rng: &mut R,
        kind: AttachmentKind,
        media_type: &str,
        plaintext_len: u64,
    ) -> Result<Self, AttachmentError> {
        let key = Secret32::random(rng);
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        rng.fill_bytes(&mut nonce_prefix);
        Self::with_key(key, nonce_prefix, kind, media_type, plaintext_len)
    }

    /// The deterministic core of [`new`](Self::new), for known-answer tests.
    pub(super) fn with_key(
        key: Secret32,
        nonce_prefix: [u8; NONCE_PREFIX_LEN],
        kind: AttachmentKind,
        media_type: &str,
        plaintext_len: u64,
    ) -> Result<Self, AttachmentError> {
        check_media_type(media_type)?;
        kind.check_len(plaintext_len)?;
        let chunks =
            u32::try_from(chunk_count(plaintext_len)).map_err(|_| AttachmentError::TooLarge {
                len: plaintext_len,
                max: kind.max_plaintext_len(),
            })?;
        let schedule = KeySchedule::derive(&key);
        let header = encode_header(&nonce_prefix, &schedule.commitment);
        let mut buf = Zeroizing::new(Vec::new());
        buf.reserve_exact(CHUNK_LEN);
        Ok(Self {
            key,
            schedule,
            header,
            nonce_prefix,
            kind,
            media_type: media_type.to_owned(),
            declared: plaintext_len,
            absorbed: 0,
            chunks,
            next_chunk: 0,
            header_written: false,
            buf,
            form: Form::Unchosen,
            poisoned: false,
        })
    }

    /// The exact size of the blob this encryptor produces.
    #[must_use]
    pub fn ciphertext_len(&self) -> u64 {
        super::ciphertext_len(self.declared).unwrap_or(u64::MAX)
    }

    /// Plaintext bytes held back until a chunk is complete: at most
    /// [`CHUNK_LEN`], whatever the size of the attachment.
    #[must_use]
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// Encrypts the next piece of plaintext, appending to `out` the header
    /// (on the first call) and every chunk this piece completes. The last
    /// chunk is written by [`finish`](Self::finish).
    ///
    /// # Errors
    /// [`AttachmentError::LengthMismatch`] if the plaintext so far would exceed
    /// the declared size; [`AttachmentError::OutOfOrder`] if the stream was
    /// begun in place; [`AttachmentError::Poisoned`] after an earlier error.
    /// Any error leaves `out` as it was and ends the stream.
    pub fn update(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        self.step(Form::Streaming, |enc| enc.absorb(plaintext, out))
    }

    /// Refuses any call once the stream is poisoned or in the other form, and
    /// poisons it when `f` fails.
    fn step<T>(
        &mut self,
        form: Form,
        f: impl FnOnce(&mut Self) -> Result<T, AttachmentError>,
    ) -> Result<T, AttachmentError> {
        if self.poisoned {
            return Err(AttachmentError::Poisoned);
        }
        let result = self.form.choose(form).and_then(|()| f(self));
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn absorb(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        let given = u64::try_from(plaintext.len()).unwrap_or(u64::MAX);
        let total = self.absorbed.saturating_add(given);
        if total > self.declared {
            return Err(AttachmentError::LengthMismatch {
                declared: self.declared,
                actual: total,
            });
        }
        self.absorbed = total;
        self.write_header(out);
        let mut input = plaintext;
        while !input.is_empty() {
            if self.next_chunk.saturating_add(1) >= self.chunks {
                // The last chunk: the length check above keeps it within one chunk.
                self.buf.extend_from_slice(input);
                break;
            }
            if self.buf.is_empty()
                && let Some((chunk, rest)) = input.split_at_checked(CHUNK_LEN)
            {
                self.seal(self.next_chunk, false, chunk, out)?;
                self.next_chunk = self.next_chunk.saturating_add(1);
                input = rest;
                continue;
            }
            let take = CHUNK_LEN.saturating_sub(self.buf.len()).min(input.len());
            let (head, rest) = input.split_at(take);
            self.buf.extend_from_slice(head);
            input = rest;
            if self.buf.len() == CHUNK_LEN {
                self.seal(self.next_chunk, false, &self.buf, out)?;
                self.buf.clear();
                self.next_chunk = self.next_chunk.saturating_add(1);
            }
        }
        Ok(())
    }

    /// Seals the last chunk, appending it (and the header, if no input came
    /// before) to `out`, and returns the pointer data, which still lacks the
    /// server's blob id.
    ///
    /// # Errors
    /// [`AttachmentError::LengthMismatch`] if fewer bytes than declared were
    /// given; [`AttachmentError::OutOfOrder`] if the stream was begun in place
    /// (end it with [`finish_in_place`](Self::finish_in_place));
    /// [`AttachmentError::Poisoned`] after an earlier error.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<PendingPointer, AttachmentError> {
        if self.poisoned {
            return Err(AttachmentError::Poisoned);
        }
        self.form.choose(Form::Streaming)?;
        if self.absorbed != self.declared {
            return Err(AttachmentError::LengthMismatch {
                declared: self.declared,
                actual: self.absorbed,
            });
        }
        self.write_header(out);
        // `absorb` leaves the last chunk, whole or empty, to be sealed here.
        self.seal(self.next_chunk, true, &self.buf, out)?;
        Ok(self.into_pointer_data())
    }

    /// The blob header: the first [`HEADER_LEN`](super::HEADER_LEN) bytes of
    /// the blob, before the first chunk. [`update`](Self::update) writes it
    /// itself; in place the caller writes it.
    #[must_use]
    pub fn header(&self) -> &[u8; HEADER_LEN] {
        &self.header
    }

    /// The plaintext length [`seal_chunk_in_place`](Self::seal_chunk_in_place)
    /// takes next: [`CHUNK_LEN`](super::CHUNK_LEN), or the rest of the
    /// attachment for the last chunk (0 only for an empty attachment, which is
    /// one empty chunk). `None` once every chunk is sealed, and for a stream
    /// begun with [`update`](Self::update).
    #[must_use]
    pub fn next_chunk_len(&self) -> Option<usize> {
        if self.form == Form::Streaming || self.next_chunk >= self.chunks {
            return None;
        }
        let rest = self.declared.saturating_sub(self.absorbed);
        Some(usize::try_from(rest).map_or(CHUNK_LEN, |rest| rest.min(CHUNK_LEN)))
    }

    /// Encrypts the next chunk where it lies and returns its tag: the
    /// in-place form of [`update`](Self::update), for callers that hold the
    /// plaintext in a writable buffer. `chunk` holds exactly the
    /// [`next_chunk_len`](Self::next_chunk_len) plaintext bytes of the next
    /// chunk and holds its ciphertext on return; on the wire the chunk is that
    /// ciphertext followed by the tag. Call it for every chunk in order, even
    /// the one empty chunk of an empty attachment, then
    /// [`finish_in_place`](Self::finish_in_place). See the
    /// [type docs](Self) for an example.
    ///
    /// # Errors
    /// [`AttachmentError::LengthMismatch`] if `chunk` is not the length of the
    /// next chunk (the input ended early, or every chunk is sealed);
    /// [`AttachmentError::OutOfOrder`] if the stream was begun with `update`;
    /// [`AttachmentError::Poisoned`] after an earlier error. On error `chunk`
    /// is left as it was, and the stream is over.
    pub fn seal_chunk_in_place(
        &mut self,
        chunk: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AttachmentError> {
        self.step(Form::InPlace, |enc| enc.seal_next_in_place(chunk))
    }

    fn seal_next_in_place(&mut self, chunk: &mut [u8]) -> Result<[u8; TAG_LEN], AttachmentError> {
        let given = u64::try_from(chunk.len()).unwrap_or(u64::MAX);
        let total = self.absorbed.saturating_add(given);
        if self.next_chunk_len() != Some(chunk.len()) {
            return Err(AttachmentError::LengthMismatch {
                declared: self.declared,
                actual: total,
            });
        }
        let last = self.next_chunk.saturating_add(1) >= self.chunks;
        let tag = self.encrypt(self.next_chunk, last, chunk)?;
        self.absorbed = total;
        self.next_chunk = self.next_chunk.saturating_add(1);
        Ok(tag.into())
    }

    /// Ends a stream sealed with
    /// [`seal_chunk_in_place`](Self::seal_chunk_in_place) and returns the
    /// pointer data, which still lacks the server's blob id.
    ///
    /// # Errors
    /// [`AttachmentError::LengthMismatch`] if a chunk is still unsealed;
    /// [`AttachmentError::OutOfOrder`] if the stream was begun with
    /// [`update`](Self::update) (end it with [`finish`](Self::finish));
    /// [`AttachmentError::Poisoned`] after an earlier error.
    pub fn finish_in_place(mut self) -> Result<PendingPointer, AttachmentError> {
        if self.poisoned {
            return Err(AttachmentError::Poisoned);
        }
        self.form.choose(Form::InPlace)?;
        if self.next_chunk < self.chunks {
            return Err(AttachmentError::LengthMismatch {
                declared: self.declared,
                actual: self.absorbed,
            });
        }
        Ok(self.into_pointer_data())
    }

    fn into_pointer_data(self) -> PendingPointer {
        let Self {
            key,
            schedule,
            kind,
            media_type,
            declared,
            ..
        } = self;
        PendingPointer::new(key, schedule.commitment, kind, media_type, declared)
    }

    fn write_header(&mut self, out: &mut Vec<u8>) {
        if !self.header_written {
            out.extend_from_slice(&self.header);
            self.header_written = true;
        }
    }

    /// Appends `AES-GCM(plaintext) || tag` for chunk `index` to `out`,
    /// encrypting in place in `out`.
    fn seal(
        &self,
        index: u32,
        last: bool,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), AttachmentError> {
        let start = out.len();
        out.extend_from_slice(plaintext);
        match self.encrypt(index, last, &mut out[start..]) {
            Ok(tag) => {
                out.extend_from_slice(&tag);
                Ok(())
            }
            Err(e) => {
                out[start..].zeroize();
                out.truncate(start);
                Err(e)
            }
        }
    }

    /// Encrypts chunk `index` in place and returns its tag.
    fn encrypt(&self, index: u32, last: bool, data: &mut [u8]) -> Result<Tag, AttachmentError> {
        let nonce = chunk_nonce(&self.nonce_prefix, index, last);
        self.schedule
            .cipher
            .encrypt_inout_detached(&nonce, &self.header, data.into())
            // AES-GCM refuses only inputs beyond 64 GiB; a chunk is 64 KiB.
            .map_err(|_| AttachmentError::TooLarge {
                len: self.declared,
                max: self.kind.max_plaintext_len(),
            })
    }
}

/// `version || nonce prefix || commitment`.
fn encode_header(
    nonce_prefix: &[u8; NONCE_PREFIX_LEN],
    commitment: &[u8; COMMITMENT_LEN],
) -> [u8; HEADER_LEN] {
    let mut w = Writer::with_capacity(HEADER_LEN);
    w.u8(BLOB_VERSION).raw(nonce_prefix).raw(commitment);
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&w.into_vec());
    header
}

/// Which of the two forms of the API a stream is driven in; the first call
/// chooses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Unchosen,
    /// `update` and `finish`.
    Streaming,
    /// The `*_in_place` methods.
    InPlace,
}

impl Form {
    /// Chooses `form` on the first call; refuses the other form after that.
    fn choose(&mut self, form: Self) -> Result<(), AttachmentError> {
        if *self == Self::Unchosen {
            *self = form;
        }
        if *self == form {
            Ok(())
        } else {
            Err(AttachmentError::OutOfOrder)
        }
    }
}

/// Decrypts one attachment incrementally, in constant memory.
///
/// A decryptor is driven in one of two forms, fixed by the first call:
///
/// * **Streaming**: call [`update`](Self::update) with the blob in pieces of
///   any size, in order, then [`finish`](Self::finish) once. Plaintext is
///   appended to the output one whole chunk at a time. The decryptor holds
///   less than one sealed chunk ([`buffered_len`](Self::buffered_len)).
/// * **In place**, for a caller that holds the blob in a writable buffer: give
///   the header to [`open_header`](Self::open_header), then each sealed chunk
///   of [`next_sealed_len`](Self::next_sealed_len) bytes to
///   [`open_chunk_in_place`](Self::open_chunk_in_place), which decrypts it
///   where it lies, then call [`finish`](Self::finish). Nothing is copied or
///   buffered. The [`Encryptor`] docs show a round trip.
///
/// Either way a chunk's plaintext is released only after its tag has
/// verified; nothing of a chunk that fails is ever released. The plaintext is
/// the attachment only once `finish` returns `Ok`: a blob cut short has
/// released authentic chunks but is reported as
/// [`Truncated`](AttachmentError::Truncated) there, so callers must discard
/// what they kept on any error. Any error ends the stream: every later call
/// fails with [`AttachmentError::Poisoned`]. Calling a method of the other
/// form fails with [`AttachmentError::OutOfOrder`].
pub struct Decryptor {
    cipher: aes_gcm::Aes256Gcm,
    commitment: [u8; COMMITMENT_LEN],
    header: [u8; HEADER_LEN],
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    chunks: u32,
    last_sealed_len: usize,
    next_chunk: u32,
    header_read: bool,
    buf: Vec<u8>,
    form: Form,
    poisoned: bool,
}

impl fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decryptor")
            .field("chunks", &self.chunks)
            .field("next_chunk", &self.next_chunk)
            .finish_non_exhaustive()
    }
}

impl Decryptor {
    /// Prepares to decrypt the blob `pointer` refers to.
    ///
    /// # Errors
    /// [`AttachmentError::CommitmentMismatch`] if the pointer's key does not
    /// match its commitment; [`AttachmentError::TooLarge`] if its size is
    /// above the cap of its kind.
    pub fn new(pointer: &AttachmentPointer) -> Result<Self, AttachmentError> {
        let declared = pointer.plaintext_len();
        pointer.kind().check_len(declared)?;
        let too_large = || AttachmentError::TooLarge {
            len: declared,
            max: pointer.kind().max_plaintext_len(),
        };
        let chunks = u32::try_from(chunk_count(declared)).map_err(|_| too_large())?;
        let full = u64::from(chunks.saturating_sub(1)).saturating_mul(CHUNK_LEN as u64);
        let last_plain = usize::try_from(declared.saturating_sub(full)).map_err(|_| too_large())?;
        let schedule = KeySchedule::derive(pointer.key());
        if !bool::from(schedule.commitment.ct_eq(pointer.commitment())) {
            return Err(AttachmentError::CommitmentMismatch);
        }
        Ok(Self {
            cipher: schedule.cipher,
            commitment: schedule.commitment,
            header: [0u8; HEADER_LEN],
            nonce_prefix: [0u8; NONCE_PREFIX_LEN],
            chunks,
            last_sealed_len: last_plain.saturating_add(TAG_LEN),
            next_chunk: 0,
            header_read: false,
            buf: Vec::with_capacity(SEALED_CHUNK_LEN),
            form: Form::Unchosen,
            poisoned: false,
        })
    }

    /// Blob bytes held until a header or chunk is complete: always below
    /// [`MAX_BUFFERED_LEN`](super::MAX_BUFFERED_LEN), whatever the size of the
    /// attachment.
    #[must_use]
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next piece of the blob and appends to `out` the plaintext of
    /// every chunk it completes and that authenticates.
    ///
    /// # Errors
    /// * [`AttachmentError::Decode`] for an unknown blob version;
    /// * [`AttachmentError::CommitmentMismatch`] if the blob header's
    ///   commitment is not that of the key;
    /// * [`AttachmentError::AuthenticationFailed`] if a chunk fails (altered,
    ///   reordered, duplicated, or cut from a longer blob);
    /// * [`AttachmentError::TrailingData`] for bytes after the last chunk;
    /// * [`AttachmentError::OutOfOrder`] if the stream was begun in place;
    /// * [`AttachmentError::Poisoned`] after an earlier error.
    ///
    /// On error `out` has gained only the plaintext of chunks that
    /// authenticated before the failure, and the stream is over.
    pub fn update(&mut self, blob: &[u8], out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        self.step(Form::Streaming, |dec| dec.absorb(blob, out))
    }

    /// Refuses any call once the stream is poisoned or in the other form, and
    /// poisons it when `f` fails.
    fn step<T>(
        &mut self,
        form: Form,
        f: impl FnOnce(&mut Self) -> Result<T, AttachmentError>,
    ) -> Result<T, AttachmentError> {
        if self.poisoned {
            return Err(AttachmentError::Poisoned);
        }
        let result = self.form.choose(form).and_then(|()| f(self));
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn absorb(&mut self, blob: &[u8], out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        let mut input = blob;
        if !self.header_read {
            let take = HEADER_LEN.saturating_sub(self.buf.len()).min(input.len());
            let (head, rest) = input.split_at(take);
            self.buf.extend_from_slice(head);
            input = rest;
            let Ok(header) = <[u8; HEADER_LEN]>::try_from(self.buf.as_slice()) else {
                // Still short of a whole header.
                return Ok(());
            };
            self.read_header(&header)?;
            self.buf.clear();
        }
        while !input.is_empty() {
            if self.next_chunk >= self.chunks {
                return Err(AttachmentError::TrailingData);
            }
            let want = self.sealed_len(self.next_chunk);
            if self.buf.is_empty()
                && let Some((chunk, rest)) = input.split_at_checked(want)
            {
                self.open(chunk, out)?;
                self.next_chunk = self.next_chunk.saturating_add(1);
                input = rest;
                continue;
            }
            let take = want.saturating_sub(self.buf.len()).min(input.len());
            let (head, rest) = input.split_at(take);
            self.buf.extend_from_slice(head);
            input = rest;
            if self.buf.len() == want {
                self.open(&self.buf, out)?;
                self.buf.clear();
                self.next_chunk = self.next_chunk.saturating_add(1);
            }
        }
        Ok(())
    }

    /// Ends the stream, in either form.
    ///
    /// # Errors
    /// [`AttachmentError::Truncated`] if the blob ended before its last chunk
    /// (whatever was released so far is not the attachment);
    /// [`AttachmentError::Poisoned`] after an earlier error.
    pub fn finish(self) -> Result<(), AttachmentError> {
        if self.poisoned {
            return Err(AttachmentError::Poisoned);
        }
        if !self.header_read || self.next_chunk < self.chunks {
            return Err(AttachmentError::Truncated);
        }
        Ok(())
    }

    /// The sealed size of chunk `index`.
    fn sealed_len(&self, index: u32) -> usize {
        if index.saturating_add(1) >= self.chunks {
            self.last_sealed_len
        } else {
            SEALED_CHUNK_LEN
        }
    }

    /// Checks the header's version and commitment and keeps it.
    fn read_header(&mut self, header: &[u8; HEADER_LEN]) -> Result<(), AttachmentError> {
        let mut r = Reader::new(header);
        let version = r.u8()?;
        if version != BLOB_VERSION {
            return Err(DecodeError::UnsupportedVersion(version).into());
        }
        let nonce_prefix = r.array::<NONCE_PREFIX_LEN>()?;
        let commitment = r.array::<COMMITMENT_LEN>()?;
        r.finish()?;
        if !bool::from(commitment.ct_eq(&self.commitment)) {
            return Err(AttachmentError::CommitmentMismatch);
        }
        self.header = *header;
        self.nonce_prefix = nonce_prefix;
        self.header_read = true;
        Ok(())
    }

    /// Verifies and decrypts the next chunk into `out`; on failure `out` is
    /// left as it was.
    fn open(&self, sealed: &[u8], out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        let Some((ciphertext, tag)) = sealed.split_last_chunk::<TAG_LEN>() else {
            return Err(AttachmentError::Truncated);
        };
        let tag = Tag::from(*tag);
        let start = out.len();
        out.extend_from_slice(ciphertext);
        // On failure the bytes at `start..` are still ciphertext (see
        // `decrypt`), and they are removed.
        if let Err(e) = self.decrypt(&mut out[start..], &tag) {
            out.truncate(start);
            return Err(e);
        }
        Ok(())
    }

    /// Starts the in-place form: checks the blob's header, its first
    /// [`HEADER_LEN`](super::HEADER_LEN) bytes, before any chunk is given to
    /// [`open_chunk_in_place`](Self::open_chunk_in_place).
    ///
    /// # Errors
    /// [`AttachmentError::Decode`] for an unknown blob version;
    /// [`AttachmentError::CommitmentMismatch`] if the header's commitment is
    /// not that of the key; [`AttachmentError::OutOfOrder`] if the header was
    /// given already or the stream was begun with [`update`](Self::update);
    /// [`AttachmentError::Poisoned`] after an earlier error. Any error ends
    /// the stream.
    pub fn open_header(&mut self, header: &[u8; HEADER_LEN]) -> Result<(), AttachmentError> {
        self.step(Form::InPlace, |dec| {
            if dec.header_read {
                return Err(AttachmentError::OutOfOrder);
            }
            dec.read_header(header)
        })
    }

    /// Bytes of the next sealed chunk (ciphertext and tag) that
    /// [`open_chunk_in_place`](Self::open_chunk_in_place) takes. `None` once
    /// the last chunk is open, and for a stream begun with
    /// [`update`](Self::update).
    #[must_use]
    pub fn next_sealed_len(&self) -> Option<usize> {
        if self.form == Form::Streaming || self.next_chunk >= self.chunks {
            return None;
        }
        Some(self.sealed_len(self.next_chunk))
    }

    /// Verifies and decrypts the next chunk where it lies: the in-place form
    /// of [`update`](Self::update), for callers that hold the blob in a
    /// writable buffer, after [`open_header`](Self::open_header). `sealed`
    /// holds exactly the next sealed chunk
    /// ([`next_sealed_len`](Self::next_sealed_len) bytes: ciphertext, then
    /// tag). Returns the plaintext length `n`: on return the plaintext is
    /// `sealed[..n]`. See the [`Encryptor`] docs for an example.
    ///
    /// As with `update`, the plaintext is the attachment only once
    /// [`finish`](Self::finish) returns `Ok`.
    ///
    /// # Errors
    /// * [`AttachmentError::Truncated`] if `sealed` is not the length of the
    ///   next chunk (a short read at the end of the blob);
    /// * [`AttachmentError::TrailingData`] after the last chunk;
    /// * [`AttachmentError::AuthenticationFailed`] if the chunk fails;
    /// * [`AttachmentError::OutOfOrder`] before the header, or if the stream
    ///   was begun with `update`;
    /// * [`AttachmentError::Poisoned`] after an earlier error.
    ///
    /// On error nothing in `sealed` has been decrypted, and the stream is
    /// over.
    pub fn open_chunk_in_place(&mut self, sealed: &mut [u8]) -> Result<usize, AttachmentError> {
        self.step(Form::InPlace, |dec| dec.open_next_in_place(sealed))
    }

    fn open_next_in_place(&mut self, sealed: &mut [u8]) -> Result<usize, AttachmentError> {
        if !self.header_read {
            return Err(AttachmentError::OutOfOrder);
        }
        let Some(want) = self.next_sealed_len() else {
            return Err(AttachmentError::TrailingData);
        };
        if sealed.len() != want {
            return Err(AttachmentError::Truncated);
        }
        let Some((ciphertext, tag)) = sealed.split_last_chunk_mut::<TAG_LEN>() else {
            return Err(AttachmentError::Truncated);
        };
        let tag = Tag::from(*tag);
        self.decrypt(ciphertext, &tag)?;
        self.next_chunk = self.next_chunk.saturating_add(1);
        Ok(ciphertext.len())
    }

    /// Verifies and decrypts the next chunk's ciphertext in place. GCM checks
    /// the tag before it decrypts: on failure `ciphertext` is left as it was.
    fn decrypt(&self, ciphertext: &mut [u8], tag: &Tag) -> Result<(), AttachmentError> {
        let last = self.next_chunk.saturating_add(1) >= self.chunks;
        let nonce = chunk_nonce(&self.nonce_prefix, self.next_chunk, last);
        self.cipher
            .decrypt_inout_detached(&nonce, &self.header, ciphertext.into(), tag)
            .map_err(|_| AttachmentError::AuthenticationFailed)
    }
}

#[cfg(test)]
impl Encryptor {
    /// The pointer this encryptor will produce, before any input (tests that
    /// stream through `encrypt_stream` into a decryptor need it up front).
    pub(super) fn pointer_in_advance(&self) -> AttachmentPointer {
        let pending = PendingPointer::new(
            self.key.clone(),
            self.schedule.commitment,
            self.kind,
            self.media_type.clone(),
            self.declared,
        );
        match pending.into_pointer(b"test".to_vec()) {
            Ok(pointer) => pointer,
            Err(e) => panic!("{e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_chacha::rand_core::SeedableRng;

    use super::*;
    use crate::attachment::{MAX_BUFFERED_LEN, MAX_IMAGE_LEN, ciphertext_len};

    const C: usize = CHUNK_LEN;
    const S: usize = SEALED_CHUNK_LEN;
    const H: usize = HEADER_LEN;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 8) as u8 ^ seed)
            .collect()
    }

    /// Encrypts `len` pattern bytes in one call: (pointer, plaintext, blob).
    fn seal(len: usize, seed: u8) -> (AttachmentPointer, Vec<u8>, Vec<u8>) {
        let mut rng = ChaCha20Rng::from_seed([seed; 32]);
        let plaintext = pattern(len, seed);
        let mut enc = Encryptor::new(
            &mut rng,
            AttachmentKind::File,
            "application/pdf",
            len as u64,
        )
        .unwrap();
        let mut blob = Vec::new();
        enc.update(&plaintext, &mut blob).unwrap();
        let pending = enc.finish(&mut blob).unwrap();
        let pointer = pending.into_pointer(b"blob".to_vec()).unwrap();
        (pointer, plaintext, blob)
    }

    /// Decrypts in one call; on error also returns what had been released.
    fn open(
        pointer: &AttachmentPointer,
        blob: &[u8],
    ) -> Result<Vec<u8>, (AttachmentError, Vec<u8>)> {
        let mut dec = Decryptor::new(pointer).map_err(|e| (e, Vec::new()))?;
        let mut out = Vec::new();
        if let Err(e) = dec.update(blob, &mut out) {
            return Err((e, out));
        }
        dec.finish().map_err(|e| (e, out.clone()))?;
        Ok(out)
    }

    fn open_err(pointer: &AttachmentPointer, blob: &[u8]) -> AttachmentError {
        open(pointer, blob).unwrap_err().0
    }

    /// The same pointer declaring another plaintext size (a lying sender, or a
    /// test of what the construction catches without the size).
    fn with_len(pointer: &AttachmentPointer, len: u64) -> AttachmentPointer {
        let mut bytes = pointer.to_bytes().to_vec();
        bytes[2..10].copy_from_slice(&len.to_be_bytes());
        AttachmentPointer::from_bytes(&bytes).unwrap()
    }

    fn chunk(blob: &[u8], i: usize) -> &[u8] {
        &blob[H + i * S..(H + (i + 1) * S).min(blob.len())]
    }

    const SIZES: [usize; 7] = [0, 1, C - 1, C, C + 1, 2 * C, 3 * C + 17];

    #[test]
    fn round_trips_at_every_boundary_size() {
        for (i, len) in SIZES.into_iter().enumerate() {
            let (pointer, plaintext, blob) = seal(len, i as u8);
            assert_eq!(
                blob.len() as u64,
                ciphertext_len(len as u64).unwrap(),
                "len {len}"
            );
            assert_eq!(blob.len() as u64, pointer.ciphertext_len());
            assert_eq!(blob[0], BLOB_VERSION);
            assert_eq!(&blob[8..H], pointer.commitment());
            assert_eq!(open(&pointer, &blob).unwrap(), plaintext, "len {len}");
        }
    }

    #[test]
    fn pieces_of_any_size_give_the_same_blob_and_plaintext() {
        let len = 2 * C + 300;
        let plaintext = pattern(len, 9);
        let blob_in = |pieces: &[usize]| {
            let key = Secret32::new([5; 32]);
            let mut enc =
                Encryptor::with_key(key, [6; 7], AttachmentKind::File, "a/b", len as u64).unwrap();
            let (mut blob, mut rest) = (Vec::new(), &plaintext[..]);
            for &p in pieces.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (head, tail) = rest.split_at(p.min(rest.len()));
                enc.update(head, &mut blob).unwrap();
                assert!(enc.buffered_len() <= C);
                rest = tail;
            }
            enc.finish(&mut blob).unwrap();
            blob
        };
        let whole = blob_in(&[len]);
        for pieces in [&[1][..], &[C - 1], &[C], &[C + 1], &[7, 70_000, 3]] {
            assert_eq!(blob_in(pieces), whole, "{pieces:?}");
        }
        let (pointer, _, _) = seal(0, 0);
        // The pointer of another file cannot open it, whatever the pieces.
        assert!(open(&pointer, &whole).is_err());
    }

    /// An encryptor with a fixed key and nonce prefix, for `len` bytes.
    fn fixed_encryptor(len: usize) -> Encryptor {
        Encryptor::with_key(
            Secret32::new([5; 32]),
            [6; 7],
            AttachmentKind::File,
            "a/b",
            len as u64,
        )
        .unwrap()
    }

    /// Seals `plaintext` chunk by chunk in place: (blob, pending pointer).
    fn seal_in_place(mut enc: Encryptor, plaintext: &[u8]) -> (Vec<u8>, PendingPointer) {
        let mut blob = enc.header().to_vec();
        let mut data = plaintext.to_vec();
        let mut rest = &mut data[..];
        while let Some(n) = enc.next_chunk_len() {
            let (chunk, tail) = rest.split_at_mut(n);
            let tag = enc.seal_chunk_in_place(chunk).unwrap();
            blob.extend_from_slice(chunk);
            blob.extend_from_slice(&tag);
            rest = tail;
        }
        assert!(rest.is_empty());
        (blob, enc.finish_in_place().unwrap())
    }

    /// Opens `blob` chunk by chunk in place: the decryptor before `finish`,
    /// and the plaintext released.
    fn open_in_place(pointer: &AttachmentPointer, blob: &[u8]) -> (Decryptor, Vec<u8>) {
        let mut dec = Decryptor::new(pointer).unwrap();
        let mut blob = blob.to_vec();
        let (header, mut sealed) = blob.split_first_chunk_mut::<H>().unwrap();
        dec.open_header(header).unwrap();
        let mut out = Vec::new();
        while let Some(n) = dec.next_sealed_len() {
            if sealed.len() < n {
                break;
            }
            let (chunk, tail) = sealed.split_at_mut(n);
            let m = dec.open_chunk_in_place(chunk).unwrap();
            assert_eq!(m + TAG_LEN, n);
            out.extend_from_slice(&chunk[..m]);
            sealed = tail;
        }
        assert!(sealed.is_empty());
        (dec, out)
    }

    /// Sealing whole chunks in place gives, byte for byte, the blob `update`
    /// and `finish` give under the same key, and opening them in place gives
    /// the plaintext back.
    #[test]
    fn in_place_chunks_match_update_and_finish() {
        for len in [0, 1, C - 1, C, C + 1, 2 * C + 300] {
            let plaintext = pattern(len, 19);
            let mut expected = Vec::new();
            let mut enc = fixed_encryptor(len);
            enc.update(&plaintext, &mut expected).unwrap();
            let pending = enc.finish(&mut expected).unwrap();

            let (blob, in_place) = seal_in_place(fixed_encryptor(len), &plaintext);
            assert_eq!(blob, expected, "len {len}");
            assert_eq!(in_place.commitment(), pending.commitment());
            assert_eq!(in_place.ciphertext_len(), blob.len() as u64);

            let pointer = in_place.into_pointer(b"blob".to_vec()).unwrap();
            let (dec, out) = open_in_place(&pointer, &blob);
            dec.finish().unwrap();
            assert_eq!(out, plaintext, "len {len}");
            // What `update` makes opens in place too, and the other way round.
            assert_eq!(open(&pointer, &blob).unwrap(), plaintext);
        }
    }

    #[test]
    fn in_place_sealing_refuses_pieces_that_are_not_the_next_chunk() {
        let new = || fixed_encryptor(2 * C);
        // Short: the input ended early. The piece is left as it was and the
        // stream is over.
        let mut enc = new();
        let mut short = [7; 100];
        assert!(matches!(
            enc.seal_chunk_in_place(&mut short),
            Err(AttachmentError::LengthMismatch {
                declared,
                actual: 100
            }) if declared == 2 * C as u64
        ));
        assert_eq!(short, [7; 100]);
        assert!(matches!(
            enc.seal_chunk_in_place(&mut vec![0; C]),
            Err(AttachmentError::Poisoned)
        ));
        assert!(matches!(
            enc.finish_in_place(),
            Err(AttachmentError::Poisoned)
        ));
        // Long.
        let mut enc = new();
        assert!(matches!(
            enc.seal_chunk_in_place(&mut vec![0; C + 1]),
            Err(AttachmentError::LengthMismatch { .. })
        ));
        // Beyond the last chunk, and ending before it.
        let mut enc = new();
        enc.seal_chunk_in_place(&mut vec![0; C]).unwrap();
        enc.seal_chunk_in_place(&mut vec![0; C]).unwrap();
        assert_eq!(enc.next_chunk_len(), None);
        assert!(matches!(
            enc.seal_chunk_in_place(&mut [0; 1]),
            Err(AttachmentError::LengthMismatch { .. })
        ));
        let mut enc = new();
        enc.seal_chunk_in_place(&mut vec![0; C]).unwrap();
        assert!(matches!(
            enc.finish_in_place(),
            Err(AttachmentError::LengthMismatch { .. })
        ));
        // An empty attachment is one empty chunk, which must be sealed too.
        let enc = fixed_encryptor(0);
        assert_eq!(enc.next_chunk_len(), Some(0));
        assert!(matches!(
            enc.finish_in_place(),
            Err(AttachmentError::LengthMismatch { .. })
        ));
    }

    /// Each form refuses the other's methods once a stream has begun, and
    /// the refusal ends the stream.
    #[test]
    fn the_encryptor_refuses_to_mix_update_and_in_place() {
        let new = || fixed_encryptor(2 * C);
        // `update` first, even of a whole chunk.
        let mut enc = new();
        enc.update(&vec![1; C], &mut Vec::new()).unwrap();
        assert_eq!(enc.next_chunk_len(), None);
        let mut chunk = vec![1; C];
        assert!(matches!(
            enc.seal_chunk_in_place(&mut chunk),
            Err(AttachmentError::OutOfOrder)
        ));
        assert_eq!(chunk, vec![1; C]);
        assert!(matches!(
            enc.update(&[1], &mut Vec::new()),
            Err(AttachmentError::Poisoned)
        ));
        let mut enc = new();
        enc.update(&vec![1; 2 * C], &mut Vec::new()).unwrap();
        assert!(matches!(
            enc.finish_in_place(),
            Err(AttachmentError::OutOfOrder)
        ));
        // In place first.
        let mut enc = new();
        enc.seal_chunk_in_place(&mut vec![1; C]).unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            enc.update(&[1; 10], &mut out),
            Err(AttachmentError::OutOfOrder)
        ));
        assert!(out.is_empty());
        assert!(matches!(
            enc.seal_chunk_in_place(&mut vec![1; C]),
            Err(AttachmentError::Poisoned)
        ));
        let mut enc = new();
        enc.seal_chunk_in_place(&mut vec![1; C]).unwrap();
        enc.seal_chunk_in_place(&mut vec![1; C]).unwrap();
        assert!(matches!(
            enc.finish(&mut out),
            Err(AttachmentError::OutOfOrder)
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn the_decryptor_refuses_to_mix_update_and_in_place() {
        let (pointer, _, blob) = seal(C + 10, 21);
        let header: [u8; H] = blob[..H].try_into().unwrap();
        let first = || blob[H..H + S].to_vec();
        // `update` first.
        let mut dec = Decryptor::new(&pointer).unwrap();
        dec.update(&blob[..H], &mut Vec::new()).unwrap();
        assert_eq!(dec.next_sealed_len(), None);
        assert!(matches!(
            dec.open_chunk_in_place(&mut first()),
            Err(AttachmentError::OutOfOrder)
        ));
        assert!(matches!(
            dec.update(&blob[H..], &mut Vec::new()),
            Err(AttachmentError::Poisoned)
        ));
        assert!(matches!(dec.finish(), Err(AttachmentError::Poisoned)));
        let mut dec = Decryptor::new(&pointer).unwrap();
        dec.update(&[], &mut Vec::new()).unwrap();
        assert!(matches!(
            dec.open_header(&header),
            Err(AttachmentError::OutOfOrder)
        ));
        // In place first.
        let mut dec = Decryptor::new(&pointer).unwrap();
        dec.open_header(&header).unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            dec.update(&blob[H..], &mut out),
            Err(AttachmentError::OutOfOrder)
        ));
        assert!(out.is_empty());
        assert!(matches!(
            dec.open_chunk_in_place(&mut first()),
            Err(AttachmentError::Poisoned)
        ));
        // The header twice, and a chunk before the header.
        let mut dec = Decryptor::new(&pointer).unwrap();
        dec.open_header(&header).unwrap();
        assert!(matches!(
            dec.open_header(&header),
            Err(AttachmentError::OutOfOrder)
        ));
        let mut dec = Decryptor::new(&pointer).unwrap();
        let mut chunk = first();
        assert!(matches!(
            dec.open_chunk_in_place(&mut chunk),
            Err(AttachmentError::OutOfOrder)
        ));
        assert_eq!(chunk, first());
        assert!(matches!(
            dec.open_header(&header),
            Err(AttachmentError::Poisoned)
        ));
    }

    #[test]
    fn in_place_opening_refuses_what_is_not_the_next_authentic_chunk() {
        let (pointer, plaintext, blob) = seal(C + 10, 20);
        let header: [u8; H] = blob[..H].try_into().unwrap();
        let first = || blob[H..H + S].to_vec();
        let started = || {
            let mut dec = Decryptor::new(&pointer).unwrap();
            dec.open_header(&header).unwrap();
            dec
        };
        // A header that is not the blob's.
        let mut dec = Decryptor::new(&pointer).unwrap();
        let mut other = header;
        other[9] ^= 1;
        assert!(matches!(
            dec.open_header(&other),
            Err(AttachmentError::CommitmentMismatch)
        ));
        // A piece of the wrong length.
        let mut dec = started();
        assert!(matches!(
            dec.open_chunk_in_place(&mut first()[..S - 1]),
            Err(AttachmentError::Truncated)
        ));
        assert!(matches!(
            dec.open_chunk_in_place(&mut first()),
            Err(AttachmentError::Poisoned)
        ));
        // A damaged chunk is left as it was: nothing of it is decrypted, and
        // the stream is over.
        for at in [0, 5, S - TAG_LEN, S - 1] {
            let mut dec = started();
            let mut damaged = first();
            damaged[at] ^= 1;
            let before = damaged.clone();
            assert!(matches!(
                dec.open_chunk_in_place(&mut damaged),
                Err(AttachmentError::AuthenticationFailed)
            ));
            assert_eq!(damaged, before);
            assert!(matches!(
                dec.open_chunk_in_place(&mut first()),
                Err(AttachmentError::Poisoned)
            ));
            assert!(matches!(dec.finish(), Err(AttachmentError::Poisoned)));
        }
        // The last chunk presented first is refused by its length.
        let mut dec = started();
        let mut last = blob[H + S..].to_vec();
        assert!(matches!(
            dec.open_chunk_in_place(&mut last),
            Err(AttachmentError::Truncated)
        ));
        // After the last chunk.
        let mut dec = started();
        let mut chunk = first();
        assert_eq!(dec.open_chunk_in_place(&mut chunk).unwrap(), C);
        assert_eq!(chunk[..C], plaintext[..C]);
        let mut last = blob[H + S..].to_vec();
        assert_eq!(dec.open_chunk_in_place(&mut last).unwrap(), 10);
        assert_eq!(last[..10], plaintext[C..]);
        assert_eq!(dec.next_sealed_len(), None);
        assert!(matches!(
            dec.open_chunk_in_place(&mut first()),
            Err(AttachmentError::TrailingData)
        ));
    }

    /// A blob opened in place but cut short has released only authentic
    /// chunks, and `finish` says it is not the attachment.
    #[test]
    fn an_in_place_blob_cut_short_fails_at_finish() {
        let (pointer, plaintext, blob) = seal(3 * C + 17, 22);
        for k in 0..4 {
            let (dec, out) = open_in_place(&pointer, &blob[..H + k * S]);
            assert_eq!(out, plaintext[..k * C]);
            assert!(
                matches!(dec.finish(), Err(AttachmentError::Truncated)),
                "k {k}"
            );
        }
        // Only the header was given, or not even that.
        let dec = Decryptor::new(&pointer).unwrap();
        assert!(matches!(dec.finish(), Err(AttachmentError::Truncated)));
    }

    #[test]
    fn truncation_at_each_chunk_boundary_is_reported_at_finish() {
        let (pointer, plaintext, blob) = seal(3 * C + 17, 1);
        for k in 0..4 {
            let cut = &blob[..H + k * S];
            let mut dec = Decryptor::new(&pointer).unwrap();
            let mut out = Vec::new();
            dec.update(cut, &mut out).unwrap();
            // Only whole authentic chunks were released, and finish says the
            // attachment is incomplete.
            assert_eq!(out, plaintext[..k * C]);
            assert!(
                matches!(dec.finish(), Err(AttachmentError::Truncated)),
                "k {k}"
            );
        }
        for cut in [0, 1, H - 1, H + 1, H + S - 1, blob.len() - 1] {
            let err = open_err(&pointer, &blob[..cut]);
            assert!(
                matches!(err, AttachmentError::Truncated),
                "cut {cut}: {err:?}"
            );
        }
    }

    #[test]
    fn truncation_is_caught_by_the_last_flag_even_if_the_size_lies() {
        // Four chunks cut to three, with a pointer claiming three full chunks:
        // chunk 2 was not sealed as the last one.
        let (pointer, _, blob) = seal(3 * C + 17, 2);
        let liar = with_len(&pointer, 3 * C as u64);
        let err = open_err(&liar, &blob[..H + 3 * S]);
        assert!(
            matches!(err, AttachmentError::AuthenticationFailed),
            "{err:?}"
        );
        // The same for a single full chunk out of two.
        let (pointer, _, blob) = seal(2 * C, 3);
        let liar = with_len(&pointer, C as u64);
        let err = open_err(&liar, &blob[..H + S]);
        assert!(
            matches!(err, AttachmentError::AuthenticationFailed),
            "{err:?}"
        );
    }

    #[test]
    fn extension_is_caught_by_the_last_flag_even_if_the_size_lies() {
        // Two full chunks and a copy of the first appended, with a pointer
        // claiming three: chunk 1 was sealed as the last one.
        let (pointer, _, mut blob) = seal(2 * C, 4);
        let first = chunk(&blob, 0).to_vec();
        blob.extend_from_slice(&first);
        let liar = with_len(&pointer, 3 * C as u64);
        let (err, released) = open(&liar, &blob).unwrap_err();
        assert!(
            matches!(err, AttachmentError::AuthenticationFailed),
            "{err:?}"
        );
        assert_eq!(released.len(), C);
    }

    #[test]
    fn bytes_after_the_last_chunk_are_refused() {
        let (pointer, _, blob) = seal(2 * C + 5, 5);
        let mut appended_chunk = blob.clone();
        appended_chunk.extend_from_slice(chunk(&blob, 0));
        let mut one_byte = blob.clone();
        one_byte.push(0);
        for extended in [appended_chunk, one_byte] {
            let err = open_err(&pointer, &extended);
            assert!(matches!(err, AttachmentError::TrailingData), "{err:?}");
        }
        // Also when the extra bytes arrive in a later call.
        let mut dec = Decryptor::new(&pointer).unwrap();
        let mut out = Vec::new();
        dec.update(&blob, &mut out).unwrap();
        assert!(matches!(
            dec.update(&[0], &mut out),
            Err(AttachmentError::TrailingData)
        ));
    }

    #[test]
    fn swapped_chunks_fail_and_release_nothing_of_them() {
        let (pointer, plaintext, blob) = seal(3 * C + 17, 6);
        let (c0, c1, c2) = (chunk(&blob, 0), chunk(&blob, 1), chunk(&blob, 2));
        let mut swapped = blob[..H].to_vec();
        for part in [c0, c2, c1, chunk(&blob, 3)] {
            swapped.extend_from_slice(part);
        }
        let (err, released) = open(&pointer, &swapped).unwrap_err();
        assert!(
            matches!(err, AttachmentError::AuthenticationFailed),
            "{err:?}"
        );
        assert_eq!(released, plaintext[..C]);
        let mut first_two = blob[..H].to_vec();
        first_two.extend_from_slice(c1);
        first_two.extend_from_slice(c0);
        let (err, released) = open(&pointer, &first_two).unwrap_err();
        assert!(matches!(err, AttachmentError::AuthenticationFailed));
        assert!(released.is_empty());
    }

    #[test]
    fn a_duplicated_chunk_fails() {
        let (pointer, plaintext, blob) = seal(3 * C + 17, 7);
        let mut dup = blob[..H + 2 * S].to_vec();
        dup.extend_from_slice(chunk(&blob, 1));
        dup.extend_from_slice(&blob[H + 2 * S..]);
        let (err, released) = open(&pointer, &dup).unwrap_err();
        assert!(
            matches!(err, AttachmentError::AuthenticationFailed),
            "{err:?}"
        );
        assert_eq!(released, plaintext[..2 * C]);
    }

    #[test]
    fn every_bit_flip_of_a_small_blob_is_detected() {
        let (pointer, _, blob) = seal(100, 8);
        for byte in 0..blob.len() {
            for bit in 0..8 {
                let mut bad = blob.clone();
                bad[byte] ^= 1 << bit;
                let (err, released) = open(&pointer, &bad).unwrap_err();
                assert!(released.is_empty());
                match byte {
                    0 => assert!(matches!(
                        err,
                        AttachmentError::Decode(DecodeError::UnsupportedVersion(_))
                    )),
                    8..H => assert!(matches!(err, AttachmentError::CommitmentMismatch)),
                    _ => assert!(
                        matches!(err, AttachmentError::AuthenticationFailed),
                        "byte {byte}: {err:?}"
                    ),
                }
            }
        }
    }

    #[test]
    fn bit_flips_in_header_body_and_tag_of_a_long_blob_are_detected() {
        let (pointer, plaintext, blob) = seal(3 * C + 17, 9);
        let mut positions = vec![0, 1, 7, 8, H - 1];
        for i in 0..4 {
            let start = H + i * S;
            let end = (start + S).min(blob.len());
            // First and last ciphertext byte, first and last tag byte.
            positions.extend([start, end - TAG_LEN - 1, end - TAG_LEN, end - 1]);
        }
        for pos in positions {
            let mut bad = blob.clone();
            bad[pos] ^= 0x80;
            let (_, released) = open(&pointer, &bad).unwrap_err();
            // Everything before the damaged chunk, and nothing of it.
            let whole_chunks = pos.saturating_sub(H) / S;
            let expect = if pos < H { 0 } else { whole_chunks * C };
            assert_eq!(released, plaintext[..expect], "pos {pos}");
        }
    }

    #[test]
    fn another_key_is_refused_by_the_commitment() {
        let (pointer_a, _, _) = seal(1000, 10);
        let (_, _, blob_b) = seal(1000, 11);
        assert!(matches!(
            open_err(&pointer_a, &blob_b),
            AttachmentError::CommitmentMismatch
        ));
    }

    #[test]
    fn a_pointer_whose_commitment_is_not_its_keys_is_refused() {
        let (pointer, _, blob) = seal(1000, 12);
        // A pointer carrying the blob's commitment but another key.
        let (other, _, _) = seal(1000, 13);
        let commitment = *pointer.commitment();
        let forged = other.with_commitment(commitment);
        assert!(matches!(
            Decryptor::new(&forged),
            Err(AttachmentError::CommitmentMismatch)
        ));
        // A pointer with the right key but a wrong commitment.
        let mut wrong = commitment;
        wrong[31] ^= 1;
        let bad = pointer.with_commitment(wrong);
        assert!(matches!(
            open_err(&bad, &blob),
            AttachmentError::CommitmentMismatch
        ));
    }

    #[test]
    fn a_failed_stream_stays_failed() {
        let (pointer, _, mut blob) = seal(C + 10, 14);
        blob[H + 3] ^= 1;
        let mut dec = Decryptor::new(&pointer).unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            dec.update(&blob[..H + S], &mut out),
            Err(AttachmentError::AuthenticationFailed)
        ));
        assert!(matches!(
            dec.update(&blob[H + S..], &mut out),
            Err(AttachmentError::Poisoned)
        ));
        assert!(matches!(dec.finish(), Err(AttachmentError::Poisoned)));
        assert!(out.is_empty());
    }

    #[test]
    fn the_encryptor_takes_exactly_the_declared_size() {
        let mut rng = ChaCha20Rng::from_seed([15; 32]);
        let mut enc = Encryptor::new(&mut rng, AttachmentKind::File, "a/b", 10).unwrap();
        let mut out = Vec::new();
        enc.update(&[1; 6], &mut out).unwrap();
        let before = out.clone();
        assert!(matches!(
            enc.update(&[1; 5], &mut out),
            Err(AttachmentError::LengthMismatch {
                declared: 10,
                actual: 11
            })
        ));
        assert_eq!(out, before);
        assert!(matches!(
            enc.update(&[1; 4], &mut out),
            Err(AttachmentError::Poisoned)
        ));
        assert!(matches!(
            enc.finish(&mut out),
            Err(AttachmentError::Poisoned)
        ));

        let mut enc = Encryptor::new(&mut rng, AttachmentKind::File, "a/b", 10).unwrap();
        enc.update(&[1; 9], &mut out).unwrap();
        assert!(matches!(
            enc.finish(&mut out),
            Err(AttachmentError::LengthMismatch {
                declared: 10,
                actual: 9
            })
        ));
    }

    #[test]
    fn caps_and_media_types_are_enforced_when_encrypting() {
        let mut rng = ChaCha20Rng::from_seed([16; 32]);
        assert!(
            Encryptor::new(&mut rng, AttachmentKind::Image, "image/png", MAX_IMAGE_LEN).is_ok()
        );
        assert!(matches!(
            Encryptor::new(
                &mut rng,
                AttachmentKind::Image,
                "image/png",
                MAX_IMAGE_LEN + 1
            ),
            Err(AttachmentError::TooLarge { .. })
        ));
        assert!(matches!(
            Encryptor::new(
                &mut rng,
                AttachmentKind::File,
                "x",
                crate::attachment::MAX_FILE_LEN + 1
            ),
            Err(AttachmentError::TooLarge { .. })
        ));
        for bad in ["", "text/plain\n", "bild/\u{e9}", &"a".repeat(128)] {
            assert!(matches!(
                Encryptor::new(&mut rng, AttachmentKind::File, bad, 1),
                Err(AttachmentError::InvalidMediaType)
            ));
        }
    }

    #[test]
    fn the_decryptor_buffers_less_than_one_sealed_chunk() {
        let (pointer, plaintext, blob) = seal(2 * C + 3, 17);
        let mut dec = Decryptor::new(&pointer).unwrap();
        let mut out = Vec::new();
        let mut max_out = 0;
        for b in &blob {
            let mut piece = Vec::new();
            dec.update(std::slice::from_ref(b), &mut piece).unwrap();
            assert!(dec.buffered_len() < MAX_BUFFERED_LEN);
            assert!(dec.buf.capacity() <= MAX_BUFFERED_LEN);
            max_out = max_out.max(piece.len());
            out.extend_from_slice(&piece);
        }
        dec.finish().unwrap();
        assert_eq!(out, plaintext);
        assert_eq!(max_out, C);
    }

    #[test]
    fn debug_prints_no_key_material() {
        let key = Secret32::new([0xab; 32]);
        let enc =
            Encryptor::with_key(key, [0xcd; 7], AttachmentKind::Image, "image/gif", 5).unwrap();
        let printed = format!("{enc:?}");
        assert!(
            !printed.contains("abab") && !printed.contains("171"),
            "{printed}"
        );
        let (pointer, _, _) = seal(5, 18);
        let dec = Decryptor::new(&pointer).unwrap();
        assert!(format!("{dec:?}").starts_with("Decryptor"));
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]

            /// However the blob is split into pieces, the decryptor releases
            /// the same plaintext, and never holds a sealed chunk's worth.
            #[test]
            fn any_split_of_the_blob_gives_the_same_plaintext(
                len in prop_oneof![0..300usize, (C - 40)..(C + 40), (2 * C)..(3 * C + 100)],
                seed in any::<u8>(),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
            ) {
                let (pointer, plaintext, blob) = seal(len, seed);
                let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(blob.len() + 1)).collect();
                cuts.push(0);
                cuts.push(blob.len());
                cuts.sort_unstable();
                let mut dec = Decryptor::new(&pointer).unwrap();
                let mut out = Vec::new();
                for w in cuts.windows(2) {
                    dec.update(&blob[w[0]..w[1]], &mut out).unwrap();
                    prop_assert!(dec.buffered_len() < MAX_BUFFERED_LEN);
                }
                dec.finish().unwrap();
                prop_assert_eq!(out, plaintext);
            }
        }
    }
}
