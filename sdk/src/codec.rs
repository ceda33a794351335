//! The byte codec every Hush format is written with.
//!
//! Integers are big-endian. Variable-length fields carry their length first and
//! the length is checked against the remaining input *before* anything is
//! allocated. Decoders reject trailing bytes.

use thiserror::Error;

/// Why a byte string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before the value did.
    #[error("input is truncated")]
    Truncated,
    /// Bytes were left over after the value.
    #[error("{0} unexpected trailing bytes")]
    TrailingBytes(usize),
    /// The version byte names a format this build does not know.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// A tag byte names no known variant.
    #[error("unknown tag {0}")]
    UnknownTag(u8),
    /// A length field is larger than its cap.
    #[error("length {len} exceeds the limit of {max}")]
    TooLong {
        /// The declared length.
        len: usize,
        /// The cap for this field.
        max: usize,
    },
    /// A key is not a canonical, non-degenerate encoding.
    #[error("invalid public key")]
    InvalidKey,
    /// A user id is empty, too long, or not UTF-8.
    #[error("invalid user id")]
    InvalidUserId,
}

/// Reads a byte string front to back.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A field with a one-byte length prefix.
    pub(crate) fn bytes_u8(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(self.u8()?);
        self.take(len)
    }

    /// Everything that is left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Succeeds only when the whole input was consumed.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.buf.len()))
        }
    }
}

/// Appends encoded fields to a buffer.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
        }
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// A field of at most 255 bytes with a one-byte length prefix.
    /// Callers guarantee the bound (user ids and labels are validated on creation).
    pub(crate) fn bytes_u8(&mut self, v: &[u8]) -> &mut Self {
        let len = u8::try_from(v.len()).unwrap_or(u8::MAX);
        self.buf.push(len);
        self.buf.extend_from_slice(&v[..usize::from(len)]);
        self
    }

    pub(crate) fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_rejects_truncation_and_trailing_bytes() {
        let mut r = Reader::new(&[5, 1, 2]);
        assert_eq!(r.bytes_u8(), Err(DecodeError::Truncated));
        let mut r = Reader::new(&[7, 8]);
        assert_eq!(r.u8(), Ok(7));
        assert_eq!(r.finish(), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn writer_round_trips() {
        let mut w = Writer::default();
        w.u8(1).u32(2).u64(3).bytes_u8(b"abc").raw(b"defg");
        let bytes = w.into_vec();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.u32(), Ok(2));
        assert_eq!(r.u64(), Ok(3));
        assert_eq!(r.bytes_u8(), Ok(&b"abc"[..]));
        assert_eq!(r.rest(), &b"defg"[..]);
        assert_eq!(r.finish(), Ok(()));
    }
}
