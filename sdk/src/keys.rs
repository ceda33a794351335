//! Identities and prekeys, following Signal's identity model.
//!
//! * An [`IdentityKeyPair`] is the **account identity**: one Ed25519 key shared by
//!   all devices of a user. Its X25519 form (the birational map from Edwards to
//!   Montgomery form) is the X3DH identity key, and safety numbers are computed
//!   over it.
//! * Each device has a server-assigned [`DeviceId`], its own [`DeviceAuthKeyPair`]
//!   (Ed25519, used to log in to a server) and a [`DeviceCertificate`] signed by
//!   the account identity.
//! * A device publishes a [`SignedPreKey`], a last-resort prekey (also a
//!   [`SignedPreKey`], with another signature label) and batches of
//!   [`OneTimePreKey`]s. Prekey signatures cover the user and device id, so a
//!   server cannot move prekeys from one device to another.
//!
//! Every signature is made over a [`SignatureLabel`]-prefixed encoding, so no
//! signature of one kind can be replayed as another kind.
//!
//! Public keys are decoded strictly: non-canonical encodings and small-order
//! points are refused, signatures are checked with `verify_strict`, and a
//! Diffie-Hellman output of all zeroes is an error.
//!
//! ```
//! use hush::keys::{DeviceAuthKeyPair, DeviceId, IdentityKeyPair, UserId};
//! # let mut rng = rand_chacha::ChaCha20Rng::from_seed([7; 32]);
//! # use rand_chacha::rand_core::SeedableRng;
//! let alice = IdentityKeyPair::generate(&mut rng);
//! let device_key = DeviceAuthKeyPair::generate(&mut rng);
//! let user = UserId::new("alice")?;
//! // The server has assigned device id 1; the device signs its own certificate.
//! let cert = alice.certify_device(&user, DeviceId(1), &device_key.public_key(), 1_700_000_000);
//! assert!(cert.verify(&alice.public_key()).is_ok());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod pq_prekey;
mod prekey;

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use thiserror::Error;
use zeroize::Zeroize;

use crate::codec::{DecodeError, Reader, Writer};
use crate::secret::Secret32;

pub use pq_prekey::{
    KEM_CIPHERTEXT_LEN, KEM_PUBLIC_KEY_LEN, KemCiphertext, KemPublicKey, PqPreKeyKind,
    SignedPqPreKey,
};
pub(crate) use pq_prekey::{KemSeed, PqPreKeySecret, PqPreKeyState};
pub(crate) use prekey::PreKeyState;
pub use prekey::{OneTimePreKey, PreKeyBundle, PreKeyId, PreKeyKind, PreKeySettings, SignedPreKey};

/// Why a key, certificate or signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The bytes are not a canonical encoding of a usable public key
    /// (wrong length, non-canonical, or of small order).
    #[error("invalid public key")]
    InvalidPublicKey,
    /// A signature did not verify under the expected key.
    #[error("bad signature on {0:?}")]
    BadSignature(SignatureLabel),
    /// A Diffie-Hellman output was all zeroes (the peer sent a degenerate key).
    #[error("non-contributory Diffie-Hellman output")]
    NonContributory,
    /// A certificate names another user or device than expected.
    #[error("certificate is for another device")]
    WrongDevice,
    /// A user id is empty, longer than 255 bytes, or contains control characters.
    #[error("invalid user id")]
    InvalidUserId,
}

/// The domain label every Hush signature starts with.
///
/// The signed bytes are `len(label) || label || payload`; see `docs/protocol.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SignatureLabel {
    /// A device certificate, signed by the account identity.
    DeviceCertificate,
    /// A signed (medium-term) X25519 prekey, signed by the account identity.
    SignedPreKey,
    /// A last-resort X25519 prekey, signed by the account identity.
    LastResortPreKey,
    /// A login response to a server's challenge, signed by a device auth key.
    ServerAuth,
    /// Registration of a new account, signed by the account identity.
    Registration,
    /// A PQ one-time ML-KEM-1024 prekey (PQXDH), signed by the account identity.
    PqOneTimePreKey,
    /// A PQ last-resort ML-KEM-1024 prekey (PQXDH), signed by the account identity.
    PqLastResortPreKey,
}

impl SignatureLabel {
    /// The exact label bytes.
    pub const fn as_bytes(self) -> &'static [u8] {
        match self {
            Self::DeviceCertificate => b"hush.v1.device-certificate",
            Self::SignedPreKey => b"hush.v1.signed-prekey",
            Self::LastResortPreKey => b"hush.v1.last-resort-prekey",
            Self::ServerAuth => b"hush.v1.server-auth",
            Self::Registration => b"hush.v1.registration",
            Self::PqOneTimePreKey => b"hush.v1.pq-one-time-prekey",
            Self::PqLastResortPreKey => b"hush.v1.pq-last-resort-prekey",
        }
    }

    /// `len(label) || label || payload`: the bytes actually signed.
    pub(crate) fn message(self, payload: &[u8]) -> Vec<u8> {
        let mut w = Writer::with_capacity(1 + 32 + payload.len());
        w.bytes_u8(self.as_bytes()).raw(payload);
        w.into_vec()
    }
}

/// A user (account) id: 1 to 255 bytes of UTF-8 without control characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    /// The longest user id, in bytes.
    pub const MAX_LEN: usize = 255;

    /// Checks and wraps a user id.
    ///
    /// # Errors
    /// [`KeyError::InvalidUserId`] if it is empty, longer than [`Self::MAX_LEN`]
    /// bytes or contains a control character.
    pub fn new(id: impl Into<String>) -> Result<Self, KeyError> {
        let id = id.into();
        if id.is_empty() || id.len() > Self::MAX_LEN || id.chars().any(char::is_control) {
            return Err(KeyError::InvalidUserId);
        }
        Ok(Self(id))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        w.bytes_u8(self.0.as_bytes());
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let raw = r.bytes_u8()?;
        let s = std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUserId)?;
        Self::new(s).map_err(|_| DecodeError::InvalidUserId)
    }
}

impl TryFrom<String> for UserId {
    type Error = KeyError;
    fn try_from(s: String) -> Result<Self, KeyError> {
        Self::new(s)
    }
}

impl From<UserId> for String {
    fn from(u: UserId) -> Self {
        u.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A device id, assigned by the server when the device registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceId(pub u32);

/// One device of one user: the unit sessions are kept for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceAddress {
    /// The account.
    pub user: UserId,
    /// The device of that account.
    pub device: DeviceId,
}

impl DeviceAddress {
    /// Builds an address.
    pub fn new(user: UserId, device: DeviceId) -> Self {
        Self { user, device }
    }

    /// `len(user) || user || device id (u32)`.
    pub(crate) fn encode(&self, w: &mut Writer) {
        self.user.encode(w);
        w.u32(self.device.0);
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            user: UserId::decode(r)?,
            device: DeviceId(r.u32()?),
        })
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        self.encode(&mut w);
        w.into_vec()
    }
}

impl fmt::Display for DeviceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.user, self.device.0)
    }
}

/// Serde for 64-byte signatures as a byte string, accepting borrowed bytes,
/// owned bytes and sequences, so self-describing formats work too.
pub(crate) mod bytes64 {
    use std::fmt;

    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    struct Bytes64;

    impl<'de> Visitor<'de> for Bytes64 {
        type Value = [u8; 64];

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("64 bytes")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<[u8; 64], E> {
            v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; 64], A::Error> {
            let mut out = [0u8; 64];
            for (i, b) in out.iter_mut().enumerate() {
                *b = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(i, &self))?;
            }
            if seq.next_element::<u8>()?.is_some() {
                return Err(de::Error::invalid_length(65, &self));
            }
            Ok(out)
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        d.deserialize_bytes(Bytes64)
    }
}

/// Deserializes a byte string of any length, from borrowed bytes, owned
/// bytes or a sequence (self-describing formats).
pub(crate) mod byte_vec {
    use std::fmt;

    use serde::Deserializer;
    use serde::de::{self, SeqAccess, Visitor};

    /// Larger than any key or ciphertext Hush decodes this way.
    const MAX: usize = 4096;

    struct Bytes;

    impl<'de> Visitor<'de> for Bytes {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            if v.len() > MAX {
                return Err(E::invalid_length(v.len(), &self));
            }
            Ok(v.to_vec())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::new();
            while let Some(b) = seq.next_element::<u8>()? {
                if out.len() == MAX {
                    return Err(de::Error::invalid_length(MAX + 1, &self));
                }
                out.push(b);
            }
            Ok(out)
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_bytes(Bytes)
    }
}

/// Decodes an Ed25519 public key strictly: canonical and not of small order.
fn strict_ed25519(bytes: &[u8; 32]) -> Result<VerifyingKey, KeyError> {
    let key = VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::InvalidPublicKey)?;
    // `from_bytes` accepts some non-canonical y coordinates; a round trip does not.
    if key.to_bytes() != *bytes || key.is_weak() {
        return Err(KeyError::InvalidPublicKey);
    }
    Ok(key)
}

fn verify(
    key: &VerifyingKey,
    label: SignatureLabel,
    payload: &[u8],
    signature: &[u8; 64],
) -> Result<(), KeyError> {
    let sig = Signature::from_bytes(signature);
    key.verify_strict(&label.message(payload), &sig)
        .map_err(|_| KeyError::BadSignature(label))
}

/// The public half of an account identity.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IdentityKey(VerifyingKey);

impl IdentityKey {
    /// Decodes an identity key strictly.
    ///
    /// # Errors
    /// [`KeyError::InvalidPublicKey`] for a non-canonical or small-order point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        strict_ed25519(bytes).map(Self)
    }

    /// The 32-byte Ed25519 encoding.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The X25519 form of this identity (the Montgomery u-coordinate).
    pub fn to_x25519(&self) -> X25519PublicKey {
        X25519PublicKey(self.0.to_montgomery().to_bytes())
    }

    /// Checks a signature made by this identity.
    ///
    /// # Errors
    /// [`KeyError::BadSignature`] if it does not verify.
    pub fn verify(
        &self,
        label: SignatureLabel,
        payload: &[u8],
        signature: &[u8; 64],
    ) -> Result<(), KeyError> {
        verify(&self.0, label, payload, signature)
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityKey({})", hex32(&self.to_bytes()))
    }
}

impl Serialize for IdentityKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_bytes().serialize(s)
    }
}

impl<'de> Deserialize<'de> for IdentityKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <[u8; 32]>::deserialize(d)?;
        Self::from_bytes(&raw).map_err(serde::de::Error::custom)
    }
}

fn hex32(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The account identity: an Ed25519 signing key shared by all of a user's devices.
pub struct IdentityKeyPair {
    signing: SigningKey,
}

impl IdentityKeyPair {
    /// Makes a new account identity.
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let seed = Secret32::random(rng);
        Self {
            signing: SigningKey::from_bytes(seed.as_bytes()),
        }
    }

    /// Restores an identity from its 32-byte seed.
    pub(crate) fn from_seed(seed: &Secret32) -> Self {
        Self::from_seed_bytes(seed.as_bytes())
    }

    pub(crate) fn seed(&self) -> Secret32 {
        Secret32::new(self.signing.to_bytes())
    }

    /// Restores an account identity from the seed [`Self::to_seed_bytes`]
    /// exported (a backup, or another device of the account).
    pub fn from_seed_bytes(seed: &[u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// The 32-byte seed, for a backup kept as carefully as the storage key.
    /// It is wiped when the returned value is dropped.
    pub fn to_seed_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.signing.to_bytes())
    }

    /// The public identity key.
    pub fn public_key(&self) -> IdentityKey {
        IdentityKey(self.signing.verifying_key())
    }

    /// The X25519 secret matching [`IdentityKey::to_x25519`].
    pub(crate) fn x25519_secret(&self) -> Secret32 {
        let mut scalar = self.signing.to_scalar_bytes();
        let out = Secret32::new(scalar);
        scalar.zeroize();
        out
    }

    pub(crate) fn sign(&self, label: SignatureLabel, payload: &[u8]) -> [u8; 64] {
        self.signing.sign(&label.message(payload)).to_bytes()
    }

    /// Signs the certificate of one of this account's devices.
    pub fn certify_device(
        &self,
        user: &UserId,
        device: DeviceId,
        auth_key: &DeviceAuthKey,
        created_at: u64,
    ) -> DeviceCertificate {
        let mut cert = DeviceCertificate {
            address: DeviceAddress::new(user.clone(), device),
            auth_key: *auth_key,
            created_at,
            signature: [0; 64],
        };
        cert.signature = self.sign(SignatureLabel::DeviceCertificate, &cert.signed_payload());
        cert
    }
}

impl fmt::Debug for IdentityKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKeyPair")
            .field("public", &self.public_key())
            .finish_non_exhaustive()
    }
}

/// The public key a device logs in to a server with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DeviceAuthKey(VerifyingKey);

impl DeviceAuthKey {
    /// Decodes a device auth key strictly.
    ///
    /// # Errors
    /// [`KeyError::InvalidPublicKey`] for a non-canonical or small-order point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        strict_ed25519(bytes).map(Self)
    }

    /// The 32-byte Ed25519 encoding.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Checks a signature made with this key.
    ///
    /// # Errors
    /// [`KeyError::BadSignature`] if it does not verify.
    pub fn verify(
        &self,
        label: SignatureLabel,
        payload: &[u8],
        signature: &[u8; 64],
    ) -> Result<(), KeyError> {
        verify(&self.0, label, payload, signature)
    }
}

impl Serialize for DeviceAuthKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_bytes().serialize(s)
    }
}

impl<'de> Deserialize<'de> for DeviceAuthKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <[u8; 32]>::deserialize(d)?;
        Self::from_bytes(&raw).map_err(serde::de::Error::custom)
    }
}

/// A device's own Ed25519 key, used to answer a server's login challenge.
pub struct DeviceAuthKeyPair {
    signing: SigningKey,
}

impl DeviceAuthKeyPair {
    /// Makes a new device auth key.
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let seed = Secret32::random(rng);
        Self {
            signing: SigningKey::from_bytes(seed.as_bytes()),
        }
    }

    pub(crate) fn from_seed(seed: &Secret32) -> Self {
        Self::from_seed_bytes(seed.as_bytes())
    }

    pub(crate) fn seed(&self) -> Secret32 {
        Secret32::new(self.signing.to_bytes())
    }

    /// Restores a device auth key from the seed [`Self::to_seed_bytes`] exported.
    pub fn from_seed_bytes(seed: &[u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// The 32-byte seed (to keep the key an app registered with before it
    /// creates its store). It is wiped when the returned value is dropped.
    pub fn to_seed_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.signing.to_bytes())
    }

    /// The public key.
    pub fn public_key(&self) -> DeviceAuthKey {
        DeviceAuthKey(self.signing.verifying_key())
    }

    /// Signs `payload` under `label`.
    pub fn sign(&self, label: SignatureLabel, payload: &[u8]) -> [u8; 64] {
        self.signing.sign(&label.message(payload)).to_bytes()
    }
}

impl fmt::Debug for DeviceAuthKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceAuthKeyPair")
            .field("public", &self.public_key())
            .finish_non_exhaustive()
    }
}

/// A device's certificate: (user, device id, device auth key, creation time),
/// signed by the account identity.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DeviceCertificate {
    address: DeviceAddress,
    auth_key: DeviceAuthKey,
    created_at: u64,
    signature: [u8; 64],
}

impl DeviceCertificate {
    /// Encoded size without the user id.
    const FIXED_LEN: usize = 1 + 1 + 4 + 32 + 8 + 64;
    const VERSION: u8 = 1;

    /// The device this certificate is for.
    pub fn address(&self) -> &DeviceAddress {
        &self.address
    }

    /// The device's auth key.
    pub fn auth_key(&self) -> &DeviceAuthKey {
        &self.auth_key
    }

    /// When the certificate was made (seconds since the Unix epoch).
    pub fn created_at(&self) -> u64 {
        self.created_at
    }

    fn signed_payload(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(Self::FIXED_LEN + self.address.user.as_str().len());
        self.address.encode(&mut w);
        w.raw(&self.auth_key.to_bytes()).u64(self.created_at);
        w.into_vec()
    }

    /// Checks the signature under `identity`.
    ///
    /// # Errors
    /// [`KeyError::BadSignature`] if the account identity did not sign it.
    pub fn verify(&self, identity: &IdentityKey) -> Result<(), KeyError> {
        identity.verify(
            SignatureLabel::DeviceCertificate,
            &self.signed_payload(),
            &self.signature,
        )
    }

    /// Checks the signature and that the certificate is for `expected`.
    ///
    /// # Errors
    /// [`KeyError::WrongDevice`] or [`KeyError::BadSignature`].
    pub fn verify_for(
        &self,
        identity: &IdentityKey,
        expected: &DeviceAddress,
    ) -> Result<(), KeyError> {
        if &self.address != expected {
            return Err(KeyError::WrongDevice);
        }
        self.verify(identity)
    }

    /// Encodes the certificate.
    ///
    /// | bytes | field |
    /// |---|---|
    /// | 1 | version = 1 |
    /// | 1 + n | user id (length, UTF-8) |
    /// | 4 | device id |
    /// | 32 | device auth key (Ed25519) |
    /// | 8 | creation time |
    /// | 64 | signature by the account identity |
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(Self::FIXED_LEN + self.address.user.as_str().len());
        self.encode(&mut w);
        w.into_vec()
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        w.u8(Self::VERSION);
        self.address.encode(w);
        w.raw(&self.auth_key.to_bytes())
            .u64(self.created_at)
            .raw(&self.signature);
    }

    /// Decodes a certificate (the signature is not checked here).
    ///
    /// # Errors
    /// A [`DecodeError`] for malformed input.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let cert = Self::decode(&mut r)?;
        r.finish()?;
        Ok(cert)
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let version = r.u8()?;
        if version != Self::VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let address = DeviceAddress::decode(r)?;
        let auth_key =
            DeviceAuthKey::from_bytes(&r.array()?).map_err(|_| DecodeError::InvalidKey)?;
        let created_at = r.u64()?;
        let signature = r.array()?;
        Ok(Self {
            address,
            auth_key,
            created_at,
            signature,
        })
    }
}

impl Serialize for DeviceCertificate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&self.to_bytes(), s)
    }
}

impl<'de> Deserialize<'de> for DeviceCertificate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Vec::<u8>::deserialize(d)?;
        Self::from_bytes(&raw).map_err(serde::de::Error::custom)
    }
}

/// An X25519 public key that passed strict decoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "[u8; 32]", into = "[u8; 32]")]
pub struct X25519PublicKey([u8; 32]);

impl X25519PublicKey {
    /// Decodes an X25519 public key strictly: the u-coordinate must be reduced
    /// (below 2^255 - 19) and the point must not be of small order.
    ///
    /// # Errors
    /// [`KeyError::InvalidPublicKey`].
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        if !is_canonical_u(bytes) {
            return Err(KeyError::InvalidPublicKey);
        }
        // The canonical u-coordinates of every point of small order on the
        // curve or its twist: 0, 1, p - 1 and the two points of order 8.
        let small = SMALL_ORDER_U
            .iter()
            .fold(subtle::Choice::from(0), |acc, u| acc | u.ct_eq(bytes));
        if bool::from(small) {
            return Err(KeyError::InvalidPublicKey);
        }
        Ok(Self(*bytes))
    }

    /// The 32-byte encoding.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// The 32-byte encoding, borrowed.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub(crate) fn from_secret(secret: &Secret32) -> Self {
        let s = x25519_dalek::StaticSecret::from(*secret.as_bytes());
        Self(x25519_dalek::PublicKey::from(&s).to_bytes())
    }
}

impl TryFrom<[u8; 32]> for X25519PublicKey {
    type Error = KeyError;
    fn try_from(b: [u8; 32]) -> Result<Self, KeyError> {
        Self::from_bytes(&b)
    }
}

impl From<X25519PublicKey> for [u8; 32] {
    fn from(k: X25519PublicKey) -> Self {
        k.0
    }
}

impl fmt::Debug for X25519PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "X25519PublicKey({})", hex32(&self.0))
    }
}

/// Canonical encodings of the small-order u-coordinates (the list libsodium
/// and others block): 0, 1, the two points of order 8, and p - 1.
const SMALL_ORDER_U: [[u8; 32]; 5] = [
    [0; 32],
    {
        let mut one = [0u8; 32];
        one[0] = 1;
        one
    },
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ],
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
];

/// `p = 2^255 - 19`, little-endian; a reduced u-coordinate is below it.
fn is_canonical_u(bytes: &[u8; 32]) -> bool {
    if bytes[31] & 0x80 != 0 {
        return false;
    }
    // Values in [p, 2^255) are 0x7f ff .. ff followed by a low byte >= 0xed.
    let top_all_ones = bytes[31] == 0x7f && bytes[1..31].iter().all(|&b| b == 0xff);
    !(top_all_ones && bytes[0] >= 0xed)
}

/// X25519 with a contributory check: an all-zero output is refused.
pub(crate) fn diffie_hellman(
    secret: &Secret32,
    public: &X25519PublicKey,
) -> Result<Secret32, KeyError> {
    let s = x25519_dalek::StaticSecret::from(*secret.as_bytes());
    let shared = s.diffie_hellman(&x25519_dalek::PublicKey::from(public.0));
    if !shared.was_contributory() {
        return Err(KeyError::NonContributory);
    }
    Ok(Secret32::new(shared.to_bytes()))
}

/// A fresh X25519 key pair.
pub(crate) fn generate_x25519<R: rand_core::CryptoRng + ?Sized>(
    rng: &mut R,
) -> (Secret32, X25519PublicKey) {
    let secret = Secret32::random(rng);
    let public = X25519PublicKey::from_secret(&secret);
    (secret, public)
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_chacha::rand_core::SeedableRng;

    use super::*;

    fn rng() -> ChaCha20Rng {
        ChaCha20Rng::from_seed([1; 32])
    }

    #[test]
    fn identity_x25519_form_matches_the_birational_map() {
        let id = IdentityKeyPair::generate(&mut rng());
        let from_secret = X25519PublicKey::from_secret(&id.x25519_secret());
        assert_eq!(from_secret, id.public_key().to_x25519());
    }

    #[test]
    fn identity_dh_agrees_both_ways() {
        let mut rng = rng();
        let a = IdentityKeyPair::generate(&mut rng);
        let (b_secret, b_public) = generate_x25519(&mut rng);
        let ab = diffie_hellman(&a.x25519_secret(), &b_public).unwrap();
        let ba = diffie_hellman(&b_secret, &a.public_key().to_x25519()).unwrap();
        assert_eq!(ab, ba);
    }

    #[test]
    fn small_order_and_non_canonical_x25519_keys_are_refused() {
        // u = 0 and u = 1 are of small order; p and p + 1 are non-canonical.
        let mut zero = [0u8; 32];
        assert!(X25519PublicKey::from_bytes(&zero).is_err());
        zero[0] = 1;
        assert!(X25519PublicKey::from_bytes(&zero).is_err());
        let mut p = [0xffu8; 32];
        p[31] = 0x7f;
        p[0] = 0xed;
        assert!(X25519PublicKey::from_bytes(&p).is_err());
        let mut high_bit = X25519PublicKey::from_secret(&Secret32::new([9; 32])).to_bytes();
        high_bit[31] |= 0x80;
        assert!(X25519PublicKey::from_bytes(&high_bit).is_err());
        // A point of order 8 (from the well-known list of small-order points).
        let order8 =
            hex::decode("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
                .unwrap();
        let order8: [u8; 32] = order8.try_into().unwrap();
        assert!(X25519PublicKey::from_bytes(&order8).is_err());
        // The list is exactly the small-order points: 8·P is the identity for
        // each, and random keys are not on it.
        for u in SMALL_ORDER_U {
            let eight = curve25519_dalek::scalar::Scalar::from(8u8);
            assert_eq!(
                (curve25519_dalek::montgomery::MontgomeryPoint(u) * eight).to_bytes(),
                [0; 32]
            );
            assert!(X25519PublicKey::from_bytes(&u).is_err());
        }
        // An ordinary key passes.
        let ok = X25519PublicKey::from_secret(&Secret32::new([9; 32]));
        assert!(X25519PublicKey::from_bytes(&ok.to_bytes()).is_ok());
    }

    #[test]
    fn small_order_and_non_canonical_ed25519_keys_are_refused() {
        // The identity point (y = 1) is of small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            IdentityKey::from_bytes(&identity),
            Err(KeyError::InvalidPublicKey)
        );
        // y = p + 1 is a non-canonical encoding of the same point.
        let mut non_canonical = [0xffu8; 32];
        non_canonical[31] = 0x7f;
        non_canonical[0] = 0xee;
        assert_eq!(
            IdentityKey::from_bytes(&non_canonical),
            Err(KeyError::InvalidPublicKey)
        );
        let good = IdentityKeyPair::generate(&mut rng()).public_key();
        assert_eq!(IdentityKey::from_bytes(&good.to_bytes()), Ok(good));
    }

    #[test]
    fn certificates_verify_only_under_their_identity_and_device() {
        let mut rng = rng();
        let id = IdentityKeyPair::generate(&mut rng);
        let other = IdentityKeyPair::generate(&mut rng);
        let auth = DeviceAuthKeyPair::generate(&mut rng);
        let user = UserId::new("alice").unwrap();
        let cert = id.certify_device(&user, DeviceId(3), &auth.public_key(), 10);
        let addr = DeviceAddress::new(user.clone(), DeviceId(3));
        assert!(cert.verify_for(&id.public_key(), &addr).is_ok());
        assert!(cert.verify(&other.public_key()).is_err());
        let elsewhere = DeviceAddress::new(user, DeviceId(4));
        assert_eq!(
            cert.verify_for(&id.public_key(), &elsewhere),
            Err(KeyError::WrongDevice)
        );
        let decoded = DeviceCertificate::from_bytes(&cert.to_bytes()).unwrap();
        assert_eq!(decoded, cert);
        let mut tampered = cert.to_bytes();
        let last = tampered.len() - 70;
        tampered[last] ^= 1;
        let tampered = DeviceCertificate::from_bytes(&tampered).unwrap();
        assert!(tampered.verify(&id.public_key()).is_err());
    }

    #[test]
    fn a_signature_of_one_kind_does_not_verify_as_another() {
        let id = IdentityKeyPair::generate(&mut rng());
        let sig = id.sign(SignatureLabel::SignedPreKey, b"payload");
        let pk = id.public_key();
        assert!(
            pk.verify(SignatureLabel::SignedPreKey, b"payload", &sig)
                .is_ok()
        );
        assert_eq!(
            pk.verify(SignatureLabel::LastResortPreKey, b"payload", &sig),
            Err(KeyError::BadSignature(SignatureLabel::LastResortPreKey))
        );
    }

    #[test]
    fn user_ids_are_validated() {
        assert!(UserId::new("").is_err());
        assert!(UserId::new("a\nb").is_err());
        assert!(UserId::new("x".repeat(256)).is_err());
        assert!(UserId::new("x".repeat(255)).is_ok());
    }
}
