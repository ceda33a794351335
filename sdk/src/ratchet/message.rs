//! The ratchet message: a fixed-size header followed by the AES-GCM ciphertext.

use crate::codec::{DecodeError, Reader, Writer};
use crate::keys::X25519PublicKey;

/// The version byte of a ratchet message.
pub const RATCHET_VERSION: u8 = 1;
/// Header size in bytes.
pub const HEADER_LEN: usize = 1 + 32 + 4 + 4 + 12;
/// AES-GCM tag size in bytes.
pub const TAG_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) ratchet_key: X25519PublicKey,
    pub(crate) previous_length: u32,
    pub(crate) index: u32,
    pub(crate) nonce: [u8; 12],
}

impl Header {
    /// | bytes | field |
    /// |---|---|
    /// | 1 | version = 1 |
    /// | 32 | sender's ratchet public key (X25519) |
    /// | 4 | length of the sender's previous sending chain (PN) |
    /// | 4 | message number in the current chain (N) |
    /// | 12 | AES-GCM nonce (random) |
    pub(crate) fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut w = Writer::with_capacity(HEADER_LEN);
        w.u8(RATCHET_VERSION)
            .raw(self.ratchet_key.as_bytes())
            .u32(self.previous_length)
            .u32(self.index)
            .raw(&self.nonce);
        let mut out = [0u8; HEADER_LEN];
        out.copy_from_slice(&w.into_vec());
        out
    }
}

/// A parsed message borrowing its input.
#[derive(Debug)]
pub(crate) struct Message<'a> {
    pub(crate) header: Header,
    pub(crate) header_bytes: &'a [u8],
    pub(crate) ciphertext: &'a [u8],
}

impl<'a> Message<'a> {
    pub(crate) fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return Err(DecodeError::Truncated);
        }
        let (header_bytes, ciphertext) = bytes.split_at(HEADER_LEN);
        let mut r = Reader::new(header_bytes);
        let version = r.u8()?;
        if version != RATCHET_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let ratchet_key =
            X25519PublicKey::from_bytes(&r.array()?).map_err(|_| DecodeError::InvalidKey)?;
        let previous_length = r.u32()?;
        let index = r.u32()?;
        let nonce = r.array()?;
        r.finish()?;
        Ok(Self {
            header: Header {
                ratchet_key,
                previous_length,
                index,
                nonce,
            },
            header_bytes,
            ciphertext,
        })
    }
}
