//! Padding of plaintext to size buckets before encryption, so that the server
//! (and anyone watching) learns only a coarse size.
//!
//! The padded length is the Padmé length of `len + 1` (at least
//! [`MIN_PADDED_LEN`]): for `L = len + 1`, `E = floor(log2 L)`,
//! `S = floor(log2 E) + 1`, the low `E - S` bits of `L` are rounded up. This
//! leaks `O(log log L)` bits of the length at an overhead of at most about 12%.
//! The padding itself is one `0x80` byte followed by zero bytes
//! (ISO/IEC 7816-4), so removing it is unambiguous.

use thiserror::Error;

/// The smallest padded size.
pub const MIN_PADDED_LEN: usize = 256;

/// Why padding could not be removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PaddingError {
    /// No `0x80` marker after the trailing zero bytes.
    #[error("malformed padding")]
    Malformed,
}

/// The Padmé length of `l`.
fn padme(l: usize) -> usize {
    if l < 2 {
        return l;
    }
    let e = usize::BITS - 1 - l.leading_zeros(); // floor(log2 l)
    let s = u32::BITS - 1 - e.leading_zeros() + 1; // floor(log2 e) + 1
    let last_bits = e - s;
    let mask = (1usize << last_bits) - 1;
    (l + mask) & !mask
}

/// The size `len` bytes of plaintext occupy once padded.
pub fn padded_len(len: usize) -> usize {
    padme(len.saturating_add(1)).max(MIN_PADDED_LEN)
}

/// Pads `data` to its bucket.
pub fn pad(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(padded_len(data.len()));
    out.extend_from_slice(data);
    out.push(0x80);
    out.resize(padded_len(data.len()), 0);
    out
}

/// Removes the padding.
///
/// # Errors
/// [`PaddingError::Malformed`] if there is no marker.
pub fn unpad(data: &[u8]) -> Result<&[u8], PaddingError> {
    let end = data
        .iter()
        .rposition(|&b| b != 0)
        .ok_or(PaddingError::Malformed)?;
    if data[end] != 0x80 {
        return Err(PaddingError::Malformed);
    }
    Ok(&data[..end])
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn buckets() {
        assert_eq!(padded_len(0), 256);
        assert_eq!(padded_len(255), 256);
        assert_eq!(padded_len(256), 272);
        assert_eq!(padded_len(1 << 20), (1 << 20) + (1 << 15));
        assert!(unpad(&[0, 0]).is_err());
        assert!(unpad(&[1, 0]).is_err());
        assert!(unpad(&[]).is_err());
    }

    proptest! {
        /// Padding round-trips, lands on a bucket, and costs at most 12% past the minimum.
        #[test]
        fn pad_round_trips(data in prop::collection::vec(any::<u8>(), 0..5000)) {
            let padded = pad(&data);
            prop_assert_eq!(padded.len(), padded_len(data.len()));
            prop_assert!(padded.len() > data.len());
            prop_assert!(padded.len() <= MIN_PADDED_LEN.max((data.len() + 1) * 112 / 100 + 1));
            prop_assert_eq!(unpad(&padded).unwrap(), &data[..]);
        }
    }
}
