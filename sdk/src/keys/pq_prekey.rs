//! Signed ML-KEM-1024 prekeys for PQXDH: one-time and last-resort.
//!
//! The private half is the 64-byte FIPS 203 seed `d || z`; the public half is
//! the 1568-byte encapsulation key, decoded strictly (exact length and the
//! FIPS 203 modulus check).

use ml_kem::array::Array;
use ml_kem::kem::{Decapsulate, Encapsulate, KeyExport};
use ml_kem::{MlKem1024, ml_kem_1024};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroize;

use super::{DeviceAddress, IdentityKey, IdentityKeyPair, KeyError, PreKeyId, SignatureLabel};
use crate::codec::{DecodeError, Reader, Writer};
use crate::secret::Secret32;

/// Length of an ML-KEM-1024 encapsulation key.
pub const KEM_PUBLIC_KEY_LEN: usize = 1568;
/// Length of an ML-KEM-1024 ciphertext.
pub const KEM_CIPHERTEXT_LEN: usize = 1568;

/// The two kinds of signed ML-KEM-1024 prekey.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PqPreKeyKind {
    /// Used by one session, then deleted.
    OneTime,
    /// Reusable, used when the server has no one-time PQ prekey left.
    LastResort,
}

impl PqPreKeyKind {
    fn label(self) -> SignatureLabel {
        match self {
            Self::OneTime => SignatureLabel::PqOneTimePreKey,
            Self::LastResort => SignatureLabel::PqLastResortPreKey,
        }
    }

    fn tag(self) -> u8 {
        match self {
            Self::OneTime => 1,
            Self::LastResort => 2,
        }
    }

    fn from_tag(tag: u8) -> Result<Self, DecodeError> {
        match tag {
            1 => Ok(Self::OneTime),
            2 => Ok(Self::LastResort),
            t => Err(DecodeError::UnknownTag(t)),
        }
    }
}

/// An ML-KEM-1024 encapsulation key that passed the FIPS 203 checks.
#[derive(Clone, PartialEq, Eq)]
pub struct KemPublicKey(Box<[u8; KEM_PUBLIC_KEY_LEN]>);

impl KemPublicKey {
    /// Decodes an encapsulation key strictly: exactly 1568 bytes whose
    /// coefficients are all reduced modulo q (the FIPS 203 modulus check).
    ///
    /// # Errors
    /// [`KeyError::InvalidPublicKey`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let key = parse_encapsulation_key(bytes)?;
        let mut out = Box::new([0u8; KEM_PUBLIC_KEY_LEN]);
        out.copy_from_slice(&key.to_bytes());
        Ok(Self(out))
    }

    /// The encoded key.
    pub fn as_bytes(&self) -> &[u8; KEM_PUBLIC_KEY_LEN] {
        &self.0
    }

    /// Encapsulates a fresh shared secret to this key.
    pub(crate) fn encapsulate<R: rand_core::CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
    ) -> Result<(KemCiphertext, Secret32), KeyError> {
        let key = parse_encapsulation_key(self.0.as_slice())?;
        let (ct, mut ss) = key.encapsulate_with_rng(rng);
        let mut ciphertext = Box::new([0u8; KEM_CIPHERTEXT_LEN]);
        ciphertext.copy_from_slice(ct.as_slice());
        let mut shared = [0u8; 32];
        shared.copy_from_slice(ss.as_slice());
        ss.as_mut_slice().zeroize();
        Ok((KemCiphertext(ciphertext), Secret32::new(shared)))
    }
}

fn parse_encapsulation_key(bytes: &[u8]) -> Result<ml_kem_1024::EncapsulationKey, KeyError> {
    let encoded = Array::try_from(bytes).map_err(|_| KeyError::InvalidPublicKey)?;
    ml_kem_1024::EncapsulationKey::new(&encoded).map_err(|_| KeyError::InvalidPublicKey)
}

impl std::fmt::Debug for KemPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let head: String = self.0[..8].iter().map(|b| format!("{b:02x}")).collect();
        write!(f, "KemPublicKey({head}…)")
    }
}

impl Serialize for KemPublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0.as_slice())
    }
}

impl<'de> Deserialize<'de> for KemPublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: Vec<u8> = super::byte_vec::deserialize(d)?;
        Self::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// An ML-KEM-1024 ciphertext, as carried by a PQXDH initial message.
#[derive(Clone, PartialEq, Eq)]
pub struct KemCiphertext(pub(crate) Box<[u8; KEM_CIPHERTEXT_LEN]>);

impl KemCiphertext {
    /// Takes exactly 1568 bytes (any such string is a ciphertext: ML-KEM
    /// decapsulation never fails, it rejects implicitly).
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] or [`DecodeError::TrailingBytes`] for another length.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        match bytes.len() {
            KEM_CIPHERTEXT_LEN => {
                let mut out = Box::new([0u8; KEM_CIPHERTEXT_LEN]);
                out.copy_from_slice(bytes);
                Ok(Self(out))
            }
            n if n < KEM_CIPHERTEXT_LEN => Err(DecodeError::Truncated),
            n => Err(DecodeError::TrailingBytes(n - KEM_CIPHERTEXT_LEN)),
        }
    }

    /// The encoded ciphertext.
    pub fn as_bytes(&self) -> &[u8; KEM_CIPHERTEXT_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for KemCiphertext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let head: String = self.0[..8].iter().map(|b| format!("{b:02x}")).collect();
        write!(f, "KemCiphertext({head}…)")
    }
}

impl Serialize for KemCiphertext {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0.as_slice())
    }
}

impl<'de> Deserialize<'de> for KemCiphertext {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: Vec<u8> = super::byte_vec::deserialize(d)?;
        Self::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// A signed ML-KEM-1024 prekey: the signature by the account identity covers
/// the device address, the prekey id, its creation time and the key, under
/// the label of its kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPqPreKey {
    kind: PqPreKeyKind,
    id: PreKeyId,
    created_at: u64,
    key: KemPublicKey,
    #[serde(with = "super::bytes64")]
    signature: [u8; 64],
}

impl SignedPqPreKey {
    /// Encoded size: kind, id, time, key, signature.
    pub const ENCODED_LEN: usize = 1 + 4 + 8 + KEM_PUBLIC_KEY_LEN + 64;

    fn payload(
        address: &DeviceAddress,
        id: PreKeyId,
        created_at: u64,
        key: &KemPublicKey,
    ) -> Vec<u8> {
        let mut w = Writer::with_capacity(32 + KEM_PUBLIC_KEY_LEN + address.user.as_str().len());
        address.encode(&mut w);
        w.u32(id.0).u64(created_at).raw(key.as_bytes());
        w.into_vec()
    }

    pub(crate) fn sign(
        identity: &IdentityKeyPair,
        address: &DeviceAddress,
        kind: PqPreKeyKind,
        id: PreKeyId,
        created_at: u64,
        key: KemPublicKey,
    ) -> Self {
        let signature = identity.sign(kind.label(), &Self::payload(address, id, created_at, &key));
        Self {
            kind,
            id,
            created_at,
            key,
            signature,
        }
    }

    /// Which kind of PQ prekey this is.
    pub fn kind(&self) -> PqPreKeyKind {
        self.kind
    }

    /// The prekey id.
    pub fn id(&self) -> PreKeyId {
        self.id
    }

    /// When the prekey was made.
    pub fn created_at(&self) -> u64 {
        self.created_at
    }

    /// The encapsulation key.
    pub fn key(&self) -> &KemPublicKey {
        &self.key
    }

    /// Checks that `identity` signed this prekey for `address` under the
    /// label of its kind.
    ///
    /// # Errors
    /// [`KeyError::BadSignature`].
    pub fn verify(&self, identity: &IdentityKey, address: &DeviceAddress) -> Result<(), KeyError> {
        let payload = Self::payload(address, self.id, self.created_at, &self.key);
        identity.verify(self.kind.label(), &payload, &self.signature)
    }

    /// Encodes the prekey.
    ///
    /// | bytes | field |
    /// |---|---|
    /// | 1 | kind: 1 PQ one-time, 2 PQ last resort |
    /// | 4 | prekey id |
    /// | 8 | creation time |
    /// | 1568 | ML-KEM-1024 encapsulation key |
    /// | 64 | signature by the account identity |
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(Self::ENCODED_LEN);
        w.u8(self.kind.tag())
            .u32(self.id.0)
            .u64(self.created_at)
            .raw(self.key.as_bytes())
            .raw(&self.signature);
        w.into_vec()
    }

    /// Decodes a prekey strictly (the signature is not checked here).
    ///
    /// # Errors
    /// A [`DecodeError`] for malformed input or a key that fails the FIPS 203 checks.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let kind = PqPreKeyKind::from_tag(r.u8()?)?;
        let id = PreKeyId(r.u32()?);
        let created_at = r.u64()?;
        let key = KemPublicKey::from_bytes(r.take(KEM_PUBLIC_KEY_LEN)?)
            .map_err(|_| DecodeError::InvalidKey)?;
        let signature = r.array()?;
        r.finish()?;
        Ok(Self {
            kind,
            id,
            created_at,
            key,
            signature,
        })
    }
}

/// The private seed of an ML-KEM-1024 key pair (`d || z`, FIPS 203), kept as
/// two zeroized halves.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KemSeed {
    d: Secret32,
    z: Secret32,
}

impl std::fmt::Debug for KemSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self { d: _, z: _ } = self;
        f.write_str("KemSeed(<redacted>)")
    }
}

impl KemSeed {
    pub(crate) fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self {
            d: Secret32::random(rng),
            z: Secret32::random(rng),
        }
    }

    fn decapsulation_key(&self) -> ml_kem_1024::DecapsulationKey {
        let mut seed = ml_kem::Seed::default();
        seed[..32].copy_from_slice(self.d.as_bytes());
        seed[32..].copy_from_slice(self.z.as_bytes());
        let key = ml_kem_1024::DecapsulationKey::from_seed(seed);
        seed.as_mut_slice().zeroize();
        key
    }

    /// The encapsulation key of this seed.
    pub(crate) fn public_key(&self) -> KemPublicKey {
        let dk = self.decapsulation_key();
        let mut out = Box::new([0u8; KEM_PUBLIC_KEY_LEN]);
        out.copy_from_slice(&dk.encapsulation_key().to_bytes());
        KemPublicKey(out)
    }

    /// Decapsulates `ciphertext`. ML-KEM never reports failure: a tampered
    /// ciphertext yields an unrelated secret (implicit rejection).
    pub(crate) fn decapsulate(&self, ciphertext: &KemCiphertext) -> Secret32 {
        let dk = self.decapsulation_key();
        let ct = ml_kem::Ciphertext::<MlKem1024>::from(*ciphertext.0);
        let mut ss = dk.decapsulate(&ct);
        let mut shared = [0u8; 32];
        shared.copy_from_slice(ss.as_slice());
        ss.as_mut_slice().zeroize();
        Secret32::new(shared)
    }
}

/// A private PQ prekey the device holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PqPreKeySecret {
    pub(crate) public: SignedPqPreKey,
    pub(crate) seed: KemSeed,
    /// When this key was replaced by a newer one (None while current).
    pub(crate) retired_at: Option<u64>,
}

impl PqPreKeySecret {
    pub(crate) fn generate<R: rand_core::CryptoRng + ?Sized>(
        rng: &mut R,
        identity: &IdentityKeyPair,
        address: &DeviceAddress,
        kind: PqPreKeyKind,
        id: PreKeyId,
        now: u64,
    ) -> Self {
        let seed = KemSeed::generate(rng);
        let public = SignedPqPreKey::sign(identity, address, kind, id, now, seed.public_key());
        Self {
            public,
            seed,
            retired_at: None,
        }
    }
}

/// A device's PQ last-resort prekeys, current first (kept in its own store row
/// so that account records written before PQXDH still read).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct PqPreKeyState {
    pub(crate) last_resort: Vec<PqPreKeySecret>,
}

impl PqPreKeyState {
    /// Adds a new current last-resort key, retiring the others.
    pub(crate) fn add<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        identity: &IdentityKeyPair,
        address: &DeviceAddress,
        id: PreKeyId,
        now: u64,
    ) {
        for old in &mut self.last_resort {
            old.retired_at.get_or_insert(now);
        }
        let key =
            PqPreKeySecret::generate(rng, identity, address, PqPreKeyKind::LastResort, id, now);
        self.last_resort.insert(0, key);
    }

    /// Whether the current key is missing or older than `interval`.
    pub(crate) fn due(&self, now: u64, interval: u64) -> bool {
        self.last_resort
            .first()
            .is_none_or(|k| now.saturating_sub(k.public.created_at) >= interval)
    }

    /// Drops retired keys past `grace`; returns their ids.
    pub(crate) fn expire(&mut self, now: u64, grace: u64) -> Vec<PreKeyId> {
        let expired =
            |k: &PqPreKeySecret| k.retired_at.is_some_and(|t| now.saturating_sub(t) > grace);
        let dropped = self
            .last_resort
            .iter()
            .filter(|k| expired(k))
            .map(|k| k.public.id)
            .collect();
        self.last_resort.retain(|k| !expired(k));
        dropped
    }

    pub(crate) fn find(&self, id: PreKeyId) -> Option<&PqPreKeySecret> {
        self.last_resort.iter().find(|k| k.public.id == id)
    }

    pub(crate) fn current(&self) -> Option<&SignedPqPreKey> {
        self.last_resort.first().map(|k| &k.public)
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_chacha::rand_core::SeedableRng;

    use super::*;
    use crate::keys::{DeviceId, UserId};

    fn sample(kind: PqPreKeyKind) -> (IdentityKeyPair, DeviceAddress, PqPreKeySecret) {
        let mut rng = ChaCha20Rng::from_seed([21; 32]);
        let id = IdentityKeyPair::generate(&mut rng);
        let a = DeviceAddress::new(UserId::new("bob").unwrap(), DeviceId(1));
        let k = PqPreKeySecret::generate(&mut rng, &id, &a, kind, PreKeyId(9), 100);
        (id, a, k)
    }

    #[test]
    fn pq_prekey_signature_is_bound_to_device_kind_and_key() {
        let (id, a, k) = sample(PqPreKeyKind::OneTime);
        let b = DeviceAddress::new(UserId::new("bob").unwrap(), DeviceId(2));
        assert!(k.public.verify(&id.public_key(), &a).is_ok());
        assert!(k.public.verify(&id.public_key(), &b).is_err());
        let mut other_kind = k.public.clone();
        other_kind.kind = PqPreKeyKind::LastResort;
        assert!(other_kind.verify(&id.public_key(), &a).is_err());
        let mut other_id = k.public.clone();
        other_id.id = PreKeyId(10);
        assert!(other_id.verify(&id.public_key(), &a).is_err());
        let round = SignedPqPreKey::from_bytes(&k.public.to_bytes()).unwrap();
        assert_eq!(round, k.public);
        assert_eq!(k.public.to_bytes().len(), SignedPqPreKey::ENCODED_LEN);
        let pc: SignedPqPreKey =
            postcard::from_bytes(&postcard::to_allocvec(&k.public).unwrap()).unwrap();
        assert_eq!(pc, k.public);
        let json: SignedPqPreKey =
            serde_json::from_str(&serde_json::to_string(&k.public).unwrap()).unwrap();
        assert_eq!(json, k.public);
    }

    #[test]
    fn decoding_is_strict() {
        let (_, _, k) = sample(PqPreKeyKind::LastResort);
        let bytes = k.public.to_bytes();
        assert!(SignedPqPreKey::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert!(SignedPqPreKey::from_bytes(&long).is_err());
        let mut bad_kind = bytes.clone();
        bad_kind[0] = 3;
        assert!(SignedPqPreKey::from_bytes(&bad_kind).is_err());
        // Coefficients of 4095 (>= q = 3329) fail the FIPS 203 modulus check.
        let mut unreduced = bytes;
        unreduced[13..13 + 3].copy_from_slice(&[0xff, 0xff, 0xff]);
        assert_eq!(
            SignedPqPreKey::from_bytes(&unreduced),
            Err(DecodeError::InvalidKey)
        );
        assert!(KemPublicKey::from_bytes(&[0u8; KEM_PUBLIC_KEY_LEN - 1]).is_err());
        assert!(KemCiphertext::from_bytes(&[0u8; KEM_CIPHERTEXT_LEN + 1]).is_err());
    }

    #[test]
    fn encapsulation_and_decapsulation_agree_and_tampering_changes_the_secret() {
        let (_, _, k) = sample(PqPreKeyKind::OneTime);
        let mut rng = ChaCha20Rng::from_seed([22; 32]);
        let (ct, ss) = k.public.key().encapsulate(&mut rng).unwrap();
        assert_eq!(k.seed.decapsulate(&ct), ss);
        let mut tampered = ct.clone();
        tampered.0[100] ^= 1;
        assert_ne!(k.seed.decapsulate(&tampered), ss);
    }

    #[test]
    fn debug_prints_no_secret() {
        let (_, _, k) = sample(PqPreKeyKind::OneTime);
        let printed = format!("{k:?}");
        assert!(printed.contains("KemSeed(<redacted>)"), "{printed}");
        for half in [k.seed.d.as_bytes(), k.seed.z.as_bytes()] {
            let hex: String = half[..4].iter().map(|b| format!("{b:02x}")).collect();
            assert!(!printed.contains(&hex), "{printed}");
        }
    }
}
