//! `std::io` helpers: a whole attachment from a reader to a writer, one chunk
//! at a time. The SDK core stays free of I/O; these only drive an
//! [`Encryptor`] or [`Decryptor`] over whatever the host hands in.

use std::io::{ErrorKind, Read, Write};

use zeroize::Zeroizing;

use super::{
    AttachmentError, AttachmentKind, AttachmentPointer, Decryptor, Encryptor, HEADER_LEN,
    PendingPointer, SEALED_CHUNK_LEN, TAG_LEN,
};

/// Encrypts exactly `plaintext_len` bytes read from `reader` under a fresh
/// key, writing the blob to `writer`. Memory use is one buffer of a header
/// and one sealed chunk, whatever the size: each chunk is read into it,
/// encrypted where it lies and written out from it.
///
/// # Errors
/// As [`Encryptor::new`]; [`AttachmentError::LengthMismatch`] if `reader`
/// holds more or fewer bytes than declared; [`AttachmentError::Io`] if reading
/// or writing fails. On error, what was written is no attachment (the last
/// chunk is written only once the reader is known to end with it).
pub fn encrypt_stream<G, R, W>(
    rng: &mut G,
    kind: AttachmentKind,
    media_type: &str,
    plaintext_len: u64,
    mut reader: R,
    mut writer: W,
) -> Result<PendingPointer, AttachmentError>
where
    G: rand_core::CryptoRng + ?Sized,
    R: Read,
    W: Write,
{
    let mut encryptor = Encryptor::new(rng, kind, media_type, plaintext_len)?;
    let mut buf = Zeroizing::new(vec![0u8; HEADER_LEN + SEALED_CHUNK_LEN]);
    // The header goes out with the first chunk.
    buf[..HEADER_LEN].copy_from_slice(encryptor.header());
    let mut start = HEADER_LEN;
    while let Some(len) = encryptor.next_chunk_len() {
        let end = start + len;
        let n = read_full(&mut reader, &mut buf[start..end])?;
        // A short read means the input ended early: refused as a mismatch.
        let tag = encryptor.seal_chunk_in_place(&mut buf[start..start + n])?;
        buf[end..end + TAG_LEN].copy_from_slice(&tag);
        if encryptor.next_chunk_len().is_none() {
            let extra = extra_bytes(&mut reader)?;
            if extra > 0 {
                return Err(AttachmentError::LengthMismatch {
                    declared: plaintext_len,
                    actual: plaintext_len.saturating_add(extra),
                });
            }
        }
        writer.write_all(&buf[..end + TAG_LEN])?;
        start = 0;
    }
    let pending = encryptor.finish_in_place()?;
    writer.flush()?;
    Ok(pending)
}

/// Decrypts the blob read from `reader` with `pointer`, writing the plaintext
/// to `writer` one authenticated chunk at a time, and returns the number of
/// plaintext bytes written. Memory use is one buffer of one sealed chunk,
/// whatever the size: each chunk is read into it, verified and decrypted
/// where it lies and written out from it.
///
/// The plaintext is the attachment only if this returns `Ok`: on any error
/// (a tampered chunk, a blob cut short) the caller must discard what was
/// written, which is a prefix of authentic chunks at most.
///
/// # Errors
/// As [`Decryptor::new`], [`Decryptor::open_header`],
/// [`Decryptor::open_chunk_in_place`] and [`Decryptor::finish`];
/// [`AttachmentError::Io`] if reading or writing fails.
pub fn decrypt_stream<R, W>(
    pointer: &AttachmentPointer,
    mut reader: R,
    mut writer: W,
) -> Result<u64, AttachmentError>
where
    R: Read,
    W: Write,
{
    let mut decryptor = Decryptor::new(pointer)?;
    let mut header = [0u8; HEADER_LEN];
    if read_full(&mut reader, &mut header)? < HEADER_LEN {
        return Err(AttachmentError::Truncated);
    }
    decryptor.open_header(&header)?;
    let mut buf = Zeroizing::new(vec![0u8; SEALED_CHUNK_LEN]);
    let mut written = 0u64;
    while let Some(want) = decryptor.next_sealed_len() {
        let n = read_full(&mut reader, &mut buf[..want])?;
        if n < want {
            return Err(AttachmentError::Truncated);
        }
        let len = decryptor.open_chunk_in_place(&mut buf[..want])?;
        if decryptor.next_sealed_len().is_none() && extra_bytes(&mut reader)? > 0 {
            return Err(AttachmentError::TrailingData);
        }
        writer.write_all(&buf[..len])?;
        written = written.saturating_add(u64::try_from(len).unwrap_or(u64::MAX));
    }
    decryptor.finish()?;
    writer.flush()?;
    Ok(written)
}

/// One `read`, retried when interrupted; 0 at the end of the input.
fn read_some<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<usize, AttachmentError> {
    loop {
        match reader.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read,
/// fewer than `buf.len()` only at the end of the input.
fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<usize, AttachmentError> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|rest| !rest.is_empty()) {
        match read_some(reader, rest)? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Whether `reader` holds anything more: 0 at its end, else the bytes of one
/// read of at most one byte.
fn extra_bytes<R: Read>(reader: &mut R) -> Result<u64, AttachmentError> {
    let mut probe = Zeroizing::new([0u8; 1]);
    let n = read_some(reader, &mut probe[..])?;
    Ok(u64::try_from(n).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use std::io::{self, Cursor};

    use rand_chacha::ChaCha20Rng;
    use rand_chacha::rand_core::SeedableRng;

    use super::*;
    use crate::attachment::{CHUNK_LEN, MAX_BUFFERED_LEN, MAX_FILE_LEN};

    const MIB: u64 = 1024 * 1024;

    /// A long non-repeating-per-chunk byte stream, cheap to produce and check:
    /// byte `p` is `table[p mod 65_521]`.
    struct Pattern(Vec<u8>);

    impl Pattern {
        const PERIOD: u64 = 65_521;

        fn new(seed: u8) -> Self {
            Self(
                (0..Self::PERIOD)
                    .map(|i| (i as u8).wrapping_mul(97) ^ (i >> 9) as u8 ^ seed)
                    .collect(),
            )
        }

        fn fill(&self, mut pos: u64, buf: &mut [u8]) {
            let mut done = 0;
            while done < buf.len() {
                let at = (pos % Self::PERIOD) as usize;
                let n = (self.0.len() - at).min(buf.len() - done);
                buf[done..done + n].copy_from_slice(&self.0[at..at + n]);
                done += n;
                pos += n as u64;
            }
        }

        fn bytes(&self, len: u64) -> Vec<u8> {
            let mut out = vec![0; len as usize];
            self.fill(0, &mut out);
            out
        }
    }

    /// Reads `len` pattern bytes without holding them.
    struct PatternReader<'a> {
        pattern: &'a Pattern,
        pos: u64,
        len: u64,
    }

    impl Read for PatternReader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = (self.len - self.pos).min(buf.len() as u64) as usize;
            self.pattern.fill(self.pos, &mut buf[..n]);
            self.pos += n as u64;
            Ok(n)
        }
    }

    /// Checks that what is written is the pattern, keeping nothing but a count
    /// and the largest single write.
    struct CheckingWriter<'a> {
        pattern: &'a Pattern,
        pos: u64,
        largest_write: usize,
        scratch: Vec<u8>,
    }

    impl<'a> CheckingWriter<'a> {
        fn new(pattern: &'a Pattern) -> Self {
            Self {
                pattern,
                pos: 0,
                largest_write: 0,
                scratch: Vec::new(),
            }
        }
    }

    impl Write for CheckingWriter<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.scratch.resize(buf.len(), 0);
            self.pattern.fill(self.pos, &mut self.scratch);
            assert!(
                self.scratch == buf,
                "plaintext differs near byte {}",
                self.pos
            );
            self.pos += buf.len() as u64;
            self.largest_write = self.largest_write.max(buf.len());
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Produces a blob on demand from an encryptor fed with the pattern.
    struct EncryptingReader<'a> {
        encryptor: Option<Encryptor>,
        pattern: &'a Pattern,
        fed: u64,
        len: u64,
        pending: Vec<u8>,
        served: usize,
        largest_buffered: usize,
    }

    impl Read for EncryptingReader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            // Feed the encryptor until it has produced something (a piece may
            // complete no chunk) or it is finished.
            while self.served == self.pending.len() && self.encryptor.is_some() {
                self.pending.clear();
                self.served = 0;
                // Odd piece sizes, so chunks straddle pieces.
                let piece = (self.len - self.fed).min(50_000);
                if let Some(enc) = self.encryptor.as_mut() {
                    let mut plaintext = vec![0; piece as usize];
                    self.pattern.fill(self.fed, &mut plaintext);
                    enc.update(&plaintext, &mut self.pending)
                        .map_err(io::Error::other)?;
                    self.largest_buffered = self.largest_buffered.max(enc.buffered_len());
                    self.fed += piece;
                }
                if self.fed == self.len
                    && let Some(enc) = self.encryptor.take()
                {
                    enc.finish(&mut self.pending).map_err(io::Error::other)?;
                }
            }
            let n = (self.pending.len() - self.served).min(buf.len());
            buf[..n].copy_from_slice(&self.pending[self.served..self.served + n]);
            self.served += n;
            Ok(n)
        }
    }

    /// Decrypts what is written to it, recording the decryptor's buffer.
    struct DecryptingWriter<'a> {
        decryptor: Option<Decryptor>,
        out: Vec<u8>,
        sink: CheckingWriter<'a>,
        largest_buffered: usize,
        largest_write: usize,
    }

    impl Write for DecryptingWriter<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let dec = self
                .decryptor
                .as_mut()
                .ok_or_else(|| io::Error::other("finished"))?;
            dec.update(buf, &mut self.out).map_err(io::Error::other)?;
            self.largest_buffered = self.largest_buffered.max(dec.buffered_len());
            self.largest_write = self.largest_write.max(buf.len());
            self.sink.write_all(&self.out)?;
            self.out.clear();
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn twenty_mib_round_trip_through_read_and_write() {
        let len = 20 * MIB;
        let plaintext = Pattern::new(1).bytes(len);
        let mut rng = ChaCha20Rng::from_seed([1; 32]);
        let mut blob = Vec::new();
        let pending = encrypt_stream(
            &mut rng,
            AttachmentKind::File,
            "video/mp4",
            len,
            Cursor::new(&plaintext),
            &mut blob,
        )
        .unwrap();
        assert_eq!(blob.len() as u64, pending.ciphertext_len());
        let pointer = pending.into_pointer(b"blob-1".to_vec()).unwrap();
        let mut out = Vec::new();
        let written = decrypt_stream(&pointer, Cursor::new(&blob), &mut out).unwrap();
        assert_eq!(written, len);
        assert!(out == plaintext);
    }

    /// A long blob through `decrypt_stream`: the blob is produced on demand
    /// and the plaintext checked on arrival, so neither exists whole; the
    /// helper writes one chunk at a time and the encryptor never holds more
    /// than one. The bounds do not depend on the length; 8 MiB (128 chunks)
    /// keeps the unoptimised test build quick, the 50 MiB case is below.
    #[test]
    fn decrypting_a_long_blob_takes_constant_memory() {
        const LEN: u64 = 8 * MIB;
        let pattern = Pattern::new(2);
        let mut rng = ChaCha20Rng::from_seed([2; 32]);
        let encryptor =
            Encryptor::new(&mut rng, AttachmentKind::File, "application/zip", LEN).unwrap();
        let pointer = encryptor.pointer_in_advance();
        let mut reader = EncryptingReader {
            encryptor: Some(encryptor),
            pattern: &pattern,
            fed: 0,
            len: LEN,
            pending: Vec::new(),
            served: 0,
            largest_buffered: 0,
        };
        let mut writer = CheckingWriter::new(&pattern);
        let written = decrypt_stream(&pointer, &mut reader, &mut writer).unwrap();
        assert_eq!(written, LEN);
        assert_eq!(writer.pos, LEN);
        assert!(
            writer.largest_write <= CHUNK_LEN,
            "{}",
            writer.largest_write
        );
        assert!(reader.largest_buffered <= CHUNK_LEN);
        assert!(reader.encryptor.is_none());
    }

    /// 50 MiB through `encrypt_stream` into a decryptor: the decryptor's buffer
    /// stays below one sealed chunk and the helper writes at most a header and
    /// one chunk at a time.
    #[test]
    fn encrypting_fifty_mib_takes_constant_memory() {
        let pattern = Pattern::new(3);
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        // The same seed gives the same key: the decryptor can be ready first.
        let pointer = Encryptor::new(
            &mut rng.clone(),
            AttachmentKind::File,
            "application/zip",
            MAX_FILE_LEN,
        )
        .unwrap()
        .pointer_in_advance();
        let mut writer = DecryptingWriter {
            decryptor: Some(Decryptor::new(&pointer).unwrap()),
            out: Vec::new(),
            sink: CheckingWriter::new(&pattern),
            largest_buffered: 0,
            largest_write: 0,
        };
        let reader = PatternReader {
            pattern: &pattern,
            pos: 0,
            len: MAX_FILE_LEN,
        };
        let pending = encrypt_stream(
            &mut rng,
            AttachmentKind::File,
            "application/zip",
            MAX_FILE_LEN,
            reader,
            &mut writer,
        )
        .unwrap();
        assert_eq!(pending.commitment(), pointer.commitment());
        writer.decryptor.take().unwrap().finish().unwrap();
        assert_eq!(writer.sink.pos, MAX_FILE_LEN);
        assert!(writer.largest_buffered < MAX_BUFFERED_LEN);
        assert!(writer.largest_write <= HEADER_LEN + SEALED_CHUNK_LEN);
        assert!(writer.sink.largest_write <= CHUNK_LEN);
    }

    fn small_blob(len: u64) -> (AttachmentPointer, Vec<u8>, Vec<u8>) {
        let plaintext = Pattern::new(4).bytes(len);
        let mut rng = ChaCha20Rng::from_seed([4; 32]);
        let mut blob = Vec::new();
        let pending = encrypt_stream(
            &mut rng,
            AttachmentKind::Image,
            "image/webp",
            len,
            &plaintext[..],
            &mut blob,
        )
        .unwrap();
        (pending.into_pointer(vec![1]).unwrap(), plaintext, blob)
    }

    /// The helper's in-place chunks make the blob `Encryptor::update` and
    /// `finish` make from the same random values.
    #[test]
    fn encrypt_stream_writes_the_blob_the_encryptor_writes() {
        let c = CHUNK_LEN as u64;
        for len in [0, 1, c - 1, c, c + 1, 3 * c + 17] {
            let plaintext = Pattern::new(7).bytes(len);
            let mut rng = ChaCha20Rng::from_seed([7; 32]);
            let mut enc =
                Encryptor::new(&mut rng.clone(), AttachmentKind::File, "a/b", len).unwrap();
            let mut expected = Vec::new();
            enc.update(&plaintext, &mut expected).unwrap();
            enc.finish(&mut expected).unwrap();
            let mut blob = Vec::new();
            let reader = Stuttering {
                data: &plaintext,
                calls: 0,
            };
            encrypt_stream(
                &mut rng,
                AttachmentKind::File,
                "a/b",
                len,
                reader,
                &mut blob,
            )
            .unwrap();
            assert!(blob == expected, "len {len}");
        }
    }

    #[test]
    fn a_reader_with_more_or_fewer_bytes_than_declared_is_refused() {
        let mut rng = ChaCha20Rng::from_seed([5; 32]);
        let data = [7u8; 1000];
        for (declared, given) in [(999, 1000), (1000, 999), (0, 1)] {
            let result = encrypt_stream(
                &mut rng,
                AttachmentKind::File,
                "text/plain",
                declared,
                &data[..given as usize],
                io::sink(),
            );
            assert!(
                matches!(result, Err(AttachmentError::LengthMismatch { .. })),
                "{declared} {given}: {result:?}"
            );
        }
    }

    #[test]
    fn decrypt_stream_refuses_damaged_blobs() {
        let (pointer, _, blob) = small_blob(CHUNK_LEN as u64 * 2 + 9);
        let refused = |bad: &[u8]| {
            let mut out = Vec::new();
            let err = decrypt_stream(&pointer, bad, &mut out).unwrap_err();
            assert!(out.len() <= 2 * CHUNK_LEN);
            err
        };
        assert!(matches!(
            refused(&blob[..blob.len() - 9 - TAG_LEN]),
            AttachmentError::Truncated
        ));
        assert!(matches!(
            refused(&blob[..HEADER_LEN + SEALED_CHUNK_LEN]),
            AttachmentError::Truncated
        ));
        assert!(matches!(
            refused(&[&blob[..], &[0]].concat()),
            AttachmentError::TrailingData
        ));
        let mut flipped = blob.clone();
        flipped[HEADER_LEN + SEALED_CHUNK_LEN + 5] ^= 4;
        assert!(matches!(
            refused(&flipped),
            AttachmentError::AuthenticationFailed
        ));
    }

    /// Reads of one to seven bytes, with an `Interrupted` before every other one.
    struct Stuttering<'a> {
        data: &'a [u8],
        calls: usize,
    }

    impl Read for Stuttering<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(2) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = (self.calls % 7 + 1).min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn short_and_interrupted_reads_are_handled() {
        let (pointer, plaintext, blob) = small_blob(3000);
        let mut out = Vec::new();
        let reader = Stuttering {
            data: &blob,
            calls: 0,
        };
        assert_eq!(decrypt_stream(&pointer, reader, &mut out).unwrap(), 3000);
        assert_eq!(out, plaintext);
        let mut rng = ChaCha20Rng::from_seed([4; 32]);
        let mut again = Vec::new();
        let reader = Stuttering {
            data: &plaintext,
            calls: 0,
        };
        encrypt_stream(
            &mut rng,
            AttachmentKind::Image,
            "image/webp",
            3000,
            reader,
            &mut again,
        )
        .unwrap();
        assert_eq!(again, blob);
    }

    struct Broken;

    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("disk gone"))
        }
    }

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("disk gone"))
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn io_errors_are_reported() {
        let (pointer, _, blob) = small_blob(10);
        assert!(matches!(
            decrypt_stream(&pointer, Broken, io::sink()),
            Err(AttachmentError::Io(_))
        ));
        assert!(matches!(
            decrypt_stream(&pointer, &blob[..], Broken),
            Err(AttachmentError::Io(_))
        ));
        let mut rng = ChaCha20Rng::from_seed([6; 32]);
        assert!(matches!(
            encrypt_stream(&mut rng, AttachmentKind::File, "a/b", 1, Broken, io::sink()),
            Err(AttachmentError::Io(_))
        ));
    }
}
