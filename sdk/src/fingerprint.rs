//! Safety numbers: what two users compare to know they talk to each other.
//!
//! For each user, a 30-byte fingerprint of the account identity:
//!
//! ```text
//! h = SHA-512(version (u16 BE) || identity (32) || len(user) (u8) || user)
//! repeat ITERATIONS - 1 times: h = SHA-512(h || identity)
//! fingerprint = h[0..30]
//! ```
//!
//! Each 5-byte chunk of a fingerprint, read as a big-endian integer modulo
//! 100000, gives 5 decimal digits: 30 digits per user. The **safety number** is
//! the two 30-digit strings in ascending order, 60 digits, so both users see
//! the same number whoever computes it. The **QR payload** is
//! `version (u8) || own fingerprint || peer fingerprint`; scanning the peer's
//! code succeeds when its two halves are ours crosswise.
//!
//! ```
//! use hush::fingerprint::SafetyNumber;
//! use hush::keys::{IdentityKeyPair, UserId};
//! # use rand_chacha::rand_core::SeedableRng;
//! # let mut rng = rand_chacha::ChaCha20Rng::from_seed([1; 32]);
//! let (alice, bob) = (IdentityKeyPair::generate(&mut rng), IdentityKeyPair::generate(&mut rng));
//! let (a, b) = (UserId::new("alice")?, UserId::new("bob")?);
//! let on_alice = SafetyNumber::new(&a, &alice.public_key(), &b, &bob.public_key());
//! let on_bob = SafetyNumber::new(&b, &bob.public_key(), &a, &alice.public_key());
//! assert_eq!(on_alice.digits(), on_bob.digits());
//! assert!(on_alice.matches_qr(&on_bob.qr_payload())?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use crate::codec::{DecodeError, Reader};
use crate::keys::{IdentityKey, UserId};

/// Version mixed into the fingerprint hash and first byte of the QR payload.
pub const FINGERPRINT_VERSION: u16 = 1;
/// SHA-512 iterations per fingerprint.
pub const ITERATIONS: usize = 5200;
/// Bytes of a fingerprint.
pub const FINGERPRINT_LEN: usize = 30;

/// One user's fingerprint of its account identity.
pub fn fingerprint(user: &UserId, identity: &IdentityKey) -> [u8; FINGERPRINT_LEN] {
    let key = identity.to_bytes();
    let mut h = Sha512::new();
    h.update(FINGERPRINT_VERSION.to_be_bytes());
    h.update(key);
    h.update([user.as_str().len() as u8]);
    h.update(user.as_str().as_bytes());
    let mut digest = h.finalize();
    for _ in 1..ITERATIONS {
        let mut h = Sha512::new();
        h.update(digest);
        h.update(key);
        digest = h.finalize();
    }
    let mut out = [0u8; FINGERPRINT_LEN];
    out.copy_from_slice(&digest[..FINGERPRINT_LEN]);
    out
}

fn digits(fp: &[u8; FINGERPRINT_LEN]) -> String {
    let mut out = String::with_capacity(30);
    for chunk in fp.chunks_exact(5) {
        let mut v = 0u64;
        for &b in chunk {
            v = (v << 8) | u64::from(b);
        }
        out.push_str(&format!("{:05}", v % 100_000));
    }
    out
}

/// The safety number of a conversation between two users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetyNumber {
    local: [u8; FINGERPRINT_LEN],
    remote: [u8; FINGERPRINT_LEN],
}

impl SafetyNumber {
    /// Computes the safety number from our and the peer's account identities.
    pub fn new(
        local_user: &UserId,
        local_identity: &IdentityKey,
        remote_user: &UserId,
        remote_identity: &IdentityKey,
    ) -> Self {
        Self {
            local: fingerprint(local_user, local_identity),
            remote: fingerprint(remote_user, remote_identity),
        }
    }

    /// The 60 digits, the same on both sides.
    pub fn digits(&self) -> String {
        let (a, b) = (digits(&self.local), digits(&self.remote));
        if a <= b { a + &b } else { b + &a }
    }

    /// The digits in 12 groups of 5, for display.
    pub fn display_groups(&self) -> Vec<String> {
        let d = self.digits();
        d.as_bytes()
            .chunks(5)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect()
    }

    /// `version || own fingerprint || peer fingerprint` for a QR code.
    pub fn qr_payload(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 2 * FINGERPRINT_LEN);
        out.push(FINGERPRINT_VERSION as u8);
        out.extend_from_slice(&self.local);
        out.extend_from_slice(&self.remote);
        out
    }

    /// Whether a QR payload scanned from the peer's screen matches.
    ///
    /// # Errors
    /// A [`DecodeError`] if the payload is malformed or of another version.
    pub fn matches_qr(&self, payload: &[u8]) -> Result<bool, DecodeError> {
        let mut r = Reader::new(payload);
        let version = r.u8()?;
        if u16::from(version) != FINGERPRINT_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let theirs: [u8; FINGERPRINT_LEN] = r.array()?;
        let ours: [u8; FINGERPRINT_LEN] = r.array()?;
        r.finish()?;
        Ok(bool::from(
            theirs.ct_eq(&self.remote) & ours.ct_eq(&self.local),
        ))
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_chacha::rand_core::SeedableRng;

    use super::*;
    use crate::keys::IdentityKeyPair;

    #[test]
    fn same_on_both_sides_and_changes_with_the_key() {
        let mut rng = ChaCha20Rng::from_seed([9; 32]);
        let a = IdentityKeyPair::generate(&mut rng).public_key();
        let b = IdentityKeyPair::generate(&mut rng).public_key();
        let c = IdentityKeyPair::generate(&mut rng).public_key();
        let (ua, ub) = (UserId::new("a").unwrap(), UserId::new("b").unwrap());
        let ab = SafetyNumber::new(&ua, &a, &ub, &b);
        let ba = SafetyNumber::new(&ub, &b, &ua, &a);
        assert_eq!(ab.digits(), ba.digits());
        assert_eq!(ab.digits().len(), 60);
        assert!(ab.digits().bytes().all(|d| d.is_ascii_digit()));
        assert_eq!(ab.display_groups().len(), 12);
        let ac = SafetyNumber::new(&ua, &a, &ub, &c);
        assert_ne!(ab.digits(), ac.digits());
        assert!(ab.matches_qr(&ba.qr_payload()).unwrap());
        assert!(
            !ab.matches_qr(&ab.qr_payload()).unwrap(),
            "own code is not the peer's"
        );
        assert!(!ac.matches_qr(&ba.qr_payload()).unwrap());
        assert!(ab.matches_qr(&ba.qr_payload()[..40]).is_err());
    }
}
