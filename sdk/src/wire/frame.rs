//! Client↔server framing: `u32` big-endian payload length, then the payload.
//!
//! [`FrameDecoder`] accepts input split at any byte (one byte at a time
//! included), checks the declared length against its cap **before** it
//! allocates anything, and never panics. A length over the cap poisons the
//! decoder: the connection is to be closed, since the stream can no longer be
//! trusted to be in step.

use thiserror::Error;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX: usize = 4;

/// Buffer capacity a decoder keeps between frames; a larger buffer, left by
/// a large frame, is freed once that frame has been taken.
const RETAINED_CAPACITY: usize = 64 * 1024;

/// Why the byte stream could not be split into frames.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame declared a payload longer than the cap.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// The declared length.
        len: u64,
        /// The cap.
        max: usize,
    },
    /// An earlier error left the stream out of step.
    #[error("the frame stream is broken by an earlier error")]
    Poisoned,
}

/// Prepends the length prefix to `payload`.
///
/// # Errors
/// [`FrameError::TooLong`] if `payload` exceeds `max`.
pub fn encode_frame(payload: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    if payload.len() > max || u32::try_from(payload.len()).is_err() {
        return Err(FrameError::TooLong {
            len: payload.len() as u64,
            max,
        });
    }
    let mut out = Vec::with_capacity(LENGTH_PREFIX + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// An incremental frame decoder.
///
/// ```
/// use hush::wire::frame::{FrameDecoder, encode_frame};
/// let bytes = [encode_frame(b"hello", 64)?, encode_frame(b"", 64)?].concat();
/// let mut decoder = FrameDecoder::new(64);
/// let mut frames = Vec::new();
/// for byte in bytes {
///     decoder.push(&[byte])?;
///     while let Some(frame) = decoder.next_frame()? {
///         frames.push(frame);
///     }
/// }
/// assert_eq!(frames, vec![b"hello".to_vec(), Vec::new()]);
/// # Ok::<(), hush::wire::frame::FrameError>(())
/// ```
#[derive(Debug)]
pub struct FrameDecoder {
    max: usize,
    /// Bytes received and not yet returned as frames.
    buf: Vec<u8>,
    /// Start of the unconsumed part of `buf`.
    start: usize,
    poisoned: bool,
}

impl FrameDecoder {
    /// A decoder refusing payloads longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            buf: Vec::new(),
            start: 0,
            poisoned: false,
        }
    }

    /// The payload cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Changes the cap for frames not yet returned, e.g. once a connection
    /// has authenticated. A frame already announced over the new cap poisons
    /// the decoder at the next call.
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// Bytes buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Adds received bytes. The buffer never holds more than one frame
    /// beyond what the caller has not yet taken with [`Self::next_frame`].
    ///
    /// # Errors
    /// [`FrameError::Poisoned`] after an earlier error, or
    /// [`FrameError::TooLong`] when the pending frame's declared length is
    /// over the cap (checked before the payload is buffered).
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        if self.poisoned {
            return Err(FrameError::Poisoned);
        }
        if self.start > 0 && self.start == self.buf.len() {
            self.start = 0;
            if self.buf.capacity() > RETAINED_CAPACITY {
                // A large frame is done: give its memory back.
                self.buf = Vec::new();
            } else {
                self.buf.clear();
            }
        }
        self.buf.extend_from_slice(bytes);
        self.check_pending()
    }

    fn check_pending(&mut self) -> Result<(), FrameError> {
        if let Some(len) = self.pending_len()
            && len > self.max
        {
            self.poisoned = true;
            self.buf = Vec::new();
            self.start = 0;
            return Err(FrameError::TooLong {
                len: len as u64,
                max: self.max,
            });
        }
        Ok(())
    }

    fn pending_len(&self) -> Option<usize> {
        let rest = &self.buf[self.start..];
        let prefix: [u8; LENGTH_PREFIX] = rest.get(..LENGTH_PREFIX)?.try_into().ok()?;
        Some(u32::from_be_bytes(prefix) as usize)
    }

    /// The next complete payload, if one has arrived.
    ///
    /// # Errors
    /// [`FrameError::Poisoned`] after an earlier error, or
    /// [`FrameError::TooLong`] for an over-long frame.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if self.poisoned {
            return Err(FrameError::Poisoned);
        }
        self.check_pending()?;
        let Some(len) = self.pending_len() else {
            return Ok(None);
        };
        let body = self.start + LENGTH_PREFIX;
        if self.buf.len() - body < len {
            return Ok(None);
        }
        let frame = self.buf[body..body + len].to_vec();
        self.start = body + len;
        // Reclaim space once the consumed part dominates the buffer.
        if self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn over_long_frames_are_refused_before_buffering_and_poison() {
        let mut d = FrameDecoder::new(16);
        assert_eq!(d.push(&[0, 0, 0]), Ok(()));
        assert_eq!(d.push(&[17]), Err(FrameError::TooLong { len: 17, max: 16 }));
        assert_eq!(d.buffered(), 0);
        assert_eq!(d.push(&[0]), Err(FrameError::Poisoned));
        assert_eq!(d.next_frame(), Err(FrameError::Poisoned));
        let mut d = FrameDecoder::new(16);
        assert_eq!(
            d.push(&[0xff, 0xff, 0xff, 0xff, 1, 2]),
            Err(FrameError::TooLong {
                len: 0xffff_ffff,
                max: 16
            })
        );
        assert!(encode_frame(&[0; 17], 16).is_err());
    }

    proptest! {
        /// However the byte stream is split, the same frames come out, in order.
        #[test]
        fn frames_are_identical_for_any_split(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..12),
            cuts in prop::collection::vec(1usize..64, 1..200),
        ) {
            let stream: Vec<u8> = payloads.iter().flat_map(|p| encode_frame(p, 300).unwrap()).collect();
            let mut d = FrameDecoder::new(300);
            let mut out = Vec::new();
            let mut at = 0;
            let mut cut = cuts.iter().cycle();
            while at < stream.len() {
                let n = (*cut.next().unwrap()).min(stream.len() - at);
                d.push(&stream[at..at + n]).unwrap();
                at += n;
                while let Some(f) = d.next_frame().unwrap() {
                    out.push(f);
                }
            }
            prop_assert_eq!(out, payloads);
            prop_assert_eq!(d.buffered(), 0);
        }

        /// Arbitrary bytes give frames or a typed error, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut d = FrameDecoder::new(64);
            if d.push(&bytes).is_ok() {
                while let Ok(Some(_)) = d.next_frame() {}
            }
        }
    }
}
