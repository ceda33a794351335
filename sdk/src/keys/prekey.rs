//! Signed, last-resort and one-time prekeys, and the bundle a server hands out.

use serde::{Deserialize, Serialize};

use super::{
    DeviceAddress, DeviceCertificate, IdentityKey, IdentityKeyPair, KeyError, SignatureLabel,
    SignedPqPreKey, X25519PublicKey, generate_x25519,
};
use crate::codec::{DecodeError, Reader, Writer};
use crate::secret::Secret32;

/// A prekey id, chosen by the device that owns the prekey.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PreKeyId(pub u32);

/// The two kinds of signed X25519 prekey.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PreKeyKind {
    /// The medium-term signed prekey, used together with a one-time prekey.
    Signed,
    /// The reusable last-resort prekey, used when one-time prekeys have run out.
    LastResort,
}

impl PreKeyKind {
    fn label(self) -> SignatureLabel {
        match self {
            Self::Signed => SignatureLabel::SignedPreKey,
            Self::LastResort => SignatureLabel::LastResortPreKey,
        }
    }
}

/// A signed X25519 prekey: the signature by the account identity covers the
/// device address, the prekey id, its creation time and the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPreKey {
    kind: PreKeyKind,
    id: PreKeyId,
    created_at: u64,
    key: X25519PublicKey,
    #[serde(with = "super::bytes64")]
    signature: [u8; 64],
}

impl SignedPreKey {
    /// Encoded size: kind, id, time, key, signature.
    pub const ENCODED_LEN: usize = 1 + 4 + 8 + 32 + 64;

    fn payload(
        address: &DeviceAddress,
        id: PreKeyId,
        created_at: u64,
        key: &X25519PublicKey,
    ) -> Vec<u8> {
        let mut w = Writer::with_capacity(64 + address.user.as_str().len());
        address.encode(&mut w);
        w.u32(id.0).u64(created_at).raw(key.as_bytes());
        w.into_vec()
    }

    pub(crate) fn sign(
        identity: &IdentityKeyPair,
        address: &DeviceAddress,
        kind: PreKeyKind,
        id: PreKeyId,
        created_at: u64,
        key: X25519PublicKey,
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

    /// Which kind of prekey this is.
    pub fn kind(&self) -> PreKeyKind {
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

    /// The public key.
    pub fn key(&self) -> &X25519PublicKey {
        &self.key
    }

    /// Checks that `identity` signed this prekey for `address`.
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
    /// | 1 | kind: 1 signed, 2 last resort |
    /// | 4 | prekey id |
    /// | 8 | creation time |
    /// | 32 | X25519 public key |
    /// | 64 | signature by the account identity |
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(Self::ENCODED_LEN);
        self.encode(&mut w);
        w.into_vec()
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        let kind = match self.kind {
            PreKeyKind::Signed => 1,
            PreKeyKind::LastResort => 2,
        };
        w.u8(kind)
            .u32(self.id.0)
            .u64(self.created_at)
            .raw(self.key.as_bytes())
            .raw(&self.signature);
    }

    /// Decodes a prekey (the signature is not checked here).
    ///
    /// # Errors
    /// A [`DecodeError`] for malformed input.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let out = Self::decode(&mut r)?;
        r.finish()?;
        Ok(out)
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let kind = match r.u8()? {
            1 => PreKeyKind::Signed,
            2 => PreKeyKind::LastResort,
            t => return Err(DecodeError::UnknownTag(t)),
        };
        let id = PreKeyId(r.u32()?);
        let created_at = r.u64()?;
        let key = X25519PublicKey::from_bytes(&r.array()?).map_err(|_| DecodeError::InvalidKey)?;
        let signature = r.array()?;
        Ok(Self {
            kind,
            id,
            created_at,
            key,
            signature,
        })
    }
}

/// A one-time X25519 prekey: used by exactly one session, then deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneTimePreKey {
    /// The prekey id.
    pub id: PreKeyId,
    /// The public key.
    pub key: X25519PublicKey,
}

/// Everything an initiator needs to start a session with one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreKeyBundle {
    /// The account identity of the device's user.
    pub identity: IdentityKey,
    /// The device certificate, signed by `identity`.
    pub certificate: DeviceCertificate,
    /// The device's current signed prekey.
    pub signed_prekey: SignedPreKey,
    /// The device's current last-resort prekey.
    pub last_resort_prekey: SignedPreKey,
    /// A one-time prekey, when the server had one left.
    pub one_time_prekey: Option<OneTimePreKey>,
    /// The ML-KEM-1024 prekey for PQXDH: a one-time PQ prekey when the server
    /// had one left, else the device's PQ last-resort prekey. `None` only from
    /// a device or server that predates PQXDH; such a bundle is refused unless
    /// the app opted in to the classical fallback.
    pub pq_prekey: Option<SignedPqPreKey>,
}

impl PreKeyBundle {
    /// The version byte of [`Self::to_bytes`].
    pub const VERSION: u8 = 1;
    /// The longest encoded bundle [`Self::from_bytes`] reads: the largest
    /// bundle (a 255-byte user id, every prekey, an ML-KEM-1024 key) is about
    /// 2.3 KiB.
    pub const MAX_LEN: usize = 4096;

    /// Encodes the bundle for an app that moves bundles over its own
    /// transport: the version byte, then the bundle as the reference server
    /// protocol carries it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![Self::VERSION];
        // Serializing to a Vec cannot fail: every field has a fixed or
        // length-prefixed encoding.
        if let Ok(body) = postcard::to_allocvec(self) {
            out.extend_from_slice(&body);
        }
        out
    }

    /// Decodes a bundle written by [`Self::to_bytes`]. The signatures are
    /// not checked here: [`crate::SessionManager::start_session`] checks them.
    ///
    /// # Errors
    /// [`DecodeError::TooLong`] over [`Self::MAX_LEN`], or another
    /// [`DecodeError`] for malformed input.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > Self::MAX_LEN {
            return Err(DecodeError::TooLong {
                len: bytes.len(),
                max: Self::MAX_LEN,
            });
        }
        let (&version, body) = bytes.split_first().ok_or(DecodeError::Truncated)?;
        if version != Self::VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let (bundle, rest) =
            postcard::take_from_bytes::<Self>(body).map_err(|_| DecodeError::Truncated)?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes(rest.len()));
        }
        Ok(bundle)
    }

    /// The device this bundle belongs to.
    pub fn address(&self) -> &DeviceAddress {
        self.certificate.address()
    }

    /// Checks every signature in the bundle (the certificate, the signed and
    /// last-resort prekeys, and the PQ prekey under the label of its kind)
    /// under the identity the bundle names.
    ///
    /// # Errors
    /// [`KeyError::BadSignature`] or [`KeyError::WrongDevice`].
    pub fn verify(&self) -> Result<(), KeyError> {
        let address = self.certificate.address();
        self.certificate.verify(&self.identity)?;
        if self.signed_prekey.kind != PreKeyKind::Signed
            || self.last_resort_prekey.kind != PreKeyKind::LastResort
        {
            return Err(KeyError::BadSignature(SignatureLabel::SignedPreKey));
        }
        self.signed_prekey.verify(&self.identity, address)?;
        self.last_resort_prekey.verify(&self.identity, address)?;
        if let Some(pq) = &self.pq_prekey {
            pq.verify(&self.identity, address)?;
        }
        Ok(())
    }
}

/// Rotation and retention of a device's signed and last-resort prekeys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreKeySettings {
    /// How often the signed and last-resort prekeys are replaced (seconds).
    pub rotation_interval: u64,
    /// How long a replaced private key is kept, so that first messages still in
    /// a server queue can be decrypted (seconds).
    pub grace_period: u64,
}

impl PreKeySettings {
    /// Seven days.
    pub const DEFAULT_ROTATION: u64 = 7 * 24 * 3600;
    /// The server's default queue lifetime (30 days) plus one rotation interval.
    pub const DEFAULT_GRACE: u64 = 30 * 24 * 3600 + Self::DEFAULT_ROTATION;
}

impl Default for PreKeySettings {
    fn default() -> Self {
        Self {
            rotation_interval: Self::DEFAULT_ROTATION,
            grace_period: Self::DEFAULT_GRACE,
        }
    }
}

/// A private prekey the device holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PreKeySecret {
    pub(crate) public: SignedPreKey,
    pub(crate) secret: Secret32,
    /// When this key was replaced by a newer one (None while current).
    pub(crate) retired_at: Option<u64>,
}

/// A device's signed and last-resort prekeys, current first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PreKeyState {
    pub(crate) signed: Vec<PreKeySecret>,
    pub(crate) last_resort: Vec<PreKeySecret>,
    pub(crate) next_id: u32,
    pub(crate) settings: PreKeySettings,
}

impl PreKeyState {
    pub(crate) fn new<R: rand_core::CryptoRng + ?Sized>(
        rng: &mut R,
        identity: &IdentityKeyPair,
        address: &DeviceAddress,
        settings: PreKeySettings,
        now: u64,
    ) -> Self {
        let mut state = Self {
            signed: Vec::new(),
            last_resort: Vec::new(),
            next_id: 1,
            settings,
        };
        state.add(rng, identity, address, PreKeyKind::Signed, now);
        state.add(rng, identity, address, PreKeyKind::LastResort, now);
        state
    }

    pub(crate) fn take_id(&mut self) -> PreKeyId {
        let id = PreKeyId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    fn add<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        identity: &IdentityKeyPair,
        address: &DeviceAddress,
        kind: PreKeyKind,
        now: u64,
    ) {
        let id = self.take_id();
        let (secret, public) = generate_x25519(rng);
        let public = SignedPreKey::sign(identity, address, kind, id, now, public);
        let list = match kind {
            PreKeyKind::Signed => &mut self.signed,
            PreKeyKind::LastResort => &mut self.last_resort,
        };
        for old in list.iter_mut() {
            old.retired_at.get_or_insert(now);
        }
        list.insert(
            0,
            PreKeySecret {
                public,
                secret,
                retired_at: None,
            },
        );
    }

    /// Replaces keys older than the rotation interval and drops retired keys
    /// past their grace period. Returns the ids of dropped last-resort keys.
    pub(crate) fn rotate<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        identity: &IdentityKeyPair,
        address: &DeviceAddress,
        now: u64,
    ) -> (bool, Vec<PreKeyId>) {
        let mut rotated = false;
        for kind in [PreKeyKind::Signed, PreKeyKind::LastResort] {
            let current = match kind {
                PreKeyKind::Signed => self.signed.first(),
                PreKeyKind::LastResort => self.last_resort.first(),
            };
            let due = current.is_none_or(|k| {
                now.saturating_sub(k.public.created_at) >= self.settings.rotation_interval
            });
            if due {
                self.add(rng, identity, address, kind, now);
                rotated = true;
            }
        }
        let grace = self.settings.grace_period;
        let expired =
            |k: &PreKeySecret| k.retired_at.is_some_and(|t| now.saturating_sub(t) > grace);
        self.signed.retain(|k| !expired(k));
        let dropped = self
            .last_resort
            .iter()
            .filter(|k| expired(k))
            .map(|k| k.public.id)
            .collect();
        self.last_resort.retain(|k| !expired(k));
        (rotated, dropped)
    }

    pub(crate) fn find(&self, kind: PreKeyKind, id: PreKeyId) -> Option<&PreKeySecret> {
        let list = match kind {
            PreKeyKind::Signed => &self.signed,
            PreKeyKind::LastResort => &self.last_resort,
        };
        list.iter().find(|k| k.public.id == id)
    }

    pub(crate) fn current(&self, kind: PreKeyKind) -> Option<&SignedPreKey> {
        match kind {
            PreKeyKind::Signed => self.signed.first(),
            PreKeyKind::LastResort => self.last_resort.first(),
        }
        .map(|k| &k.public)
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_chacha::rand_core::SeedableRng;

    use super::*;
    use crate::keys::{DeviceId, UserId};

    #[test]
    fn prekey_signature_is_bound_to_the_device() {
        let mut rng = ChaCha20Rng::from_seed([2; 32]);
        let id = IdentityKeyPair::generate(&mut rng);
        let a = DeviceAddress::new(UserId::new("bob").unwrap(), DeviceId(1));
        let b = DeviceAddress::new(UserId::new("bob").unwrap(), DeviceId(2));
        let state = PreKeyState::new(&mut rng, &id, &a, PreKeySettings::default(), 100);
        let spk = state.current(PreKeyKind::Signed).unwrap();
        assert!(spk.verify(&id.public_key(), &a).is_ok());
        assert!(spk.verify(&id.public_key(), &b).is_err());
        let round = SignedPreKey::from_bytes(&spk.to_bytes()).unwrap();
        assert_eq!(&round, spk);
    }

    #[test]
    fn prekeys_round_trip_through_a_self_describing_format() {
        let mut rng = ChaCha20Rng::from_seed([4; 32]);
        let id = IdentityKeyPair::generate(&mut rng);
        let a = DeviceAddress::new(UserId::new("bob").unwrap(), DeviceId(1));
        let state = PreKeyState::new(&mut rng, &id, &a, PreKeySettings::default(), 100);
        let spk = state.current(PreKeyKind::Signed).unwrap();
        let json = serde_json::to_string(spk).unwrap();
        let back: SignedPreKey = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, spk);
        let pc: SignedPreKey = postcard::from_bytes(&postcard::to_allocvec(spk).unwrap()).unwrap();
        assert_eq!(&pc, spk);
    }

    #[test]
    fn rotation_keeps_old_keys_for_the_grace_period() {
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        let id = IdentityKeyPair::generate(&mut rng);
        let a = DeviceAddress::new(UserId::new("bob").unwrap(), DeviceId(1));
        let settings = PreKeySettings {
            rotation_interval: 10,
            grace_period: 100,
        };
        let mut state = PreKeyState::new(&mut rng, &id, &a, settings, 0);
        let first = state.current(PreKeyKind::LastResort).unwrap().id();
        assert!(!state.rotate(&mut rng, &id, &a, 5).0);
        assert!(state.rotate(&mut rng, &id, &a, 10).0);
        assert_ne!(state.current(PreKeyKind::LastResort).unwrap().id(), first);
        assert!(state.find(PreKeyKind::LastResort, first).is_some());
        // Retired at 10; still there at 110, gone after.
        let _ = state.rotate(&mut rng, &id, &a, 110);
        assert!(state.find(PreKeyKind::LastResort, first).is_some());
        let (_, dropped) = state.rotate(&mut rng, &id, &a, 111);
        assert_eq!(dropped, vec![first]);
        assert!(state.find(PreKeyKind::LastResort, first).is_none());
    }
}
