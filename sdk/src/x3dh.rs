//! X3DH key agreement (Signal's specification), bound to two devices.
//!
//! The initiator verifies the whole [`PreKeyBundle`] before it computes any
//! Diffie-Hellman value. With a one-time prekey it uses the signed prekey `SPK`
//! and the one-time prekey `OPK`; when the server had no one-time prekey left
//! it uses the last-resort prekey `LRK` in place of `SPK` and no `OPK`:
//!
//! ```text
//! DH1 = DH(IK_A, SPK)   DH2 = DH(EK_A, IK_B)   DH3 = DH(EK_A, SPK)   DH4 = DH(EK_A, OPK)
//! SK  = HKDF-SHA256(salt = 0^32, ikm = 0xFF^32 || DH1 || DH2 || DH3 [|| DH4], info = "hush.v1.x3dh")
//! AD  = IK_A || IK_B || address_A || address_B
//! ```
//!
//! **PQXDH** (header version 2, Signal's PQXDH revision 3 with ML-KEM-1024)
//! adds a signed ML-KEM-1024 prekey `PQPK` (one-time if the server had one,
//! else the PQ last-resort prekey). The initiator verifies its signature with
//! every other one, encapsulates to it, `(CT, SS) = ML-KEM-1024.Encaps(PQPK)`,
//! and sends `CT` and the PQ prekey id in the header:
//!
//! ```text
//! SK  = HKDF-SHA256(salt = 0^32, ikm = 0xFF^32 || DH1 || DH2 || DH3 [|| DH4] || SS, info = "hush.v2.pqxdh")
//! ```
//!
//! `IK` are the Ed25519 account identities (their X25519 forms enter the DH),
//! and an address is `len(user) || user || device id`, so a session is bound to
//! the two devices and not only to the two accounts.
//!
//! The responder's side (prekey lookup, one-time consumption, the last-resort
//! replay cache, repeated initial messages) is handled by
//! [`SessionManager`](crate::SessionManager); the functions here are the pure computation.

use hkdf::Hkdf;
use sha2::Sha256;
use thiserror::Error;
use zeroize::Zeroize;

use crate::codec::{DecodeError, Reader, Writer};
use crate::keys::{
    DeviceAddress, DeviceCertificate, IdentityKey, IdentityKeyPair, KEM_CIPHERTEXT_LEN,
    KemCiphertext, KeyError, PqPreKeyKind, PreKeyBundle, PreKeyId, X25519PublicKey, diffie_hellman,
    generate_x25519,
};
use crate::secret::Secret32;

/// The version byte of an X3DH initial header.
pub const X3DH_VERSION: u8 = 1;
/// HKDF info for the X3DH shared secret.
pub const X3DH_INFO: &[u8] = b"hush.v1.x3dh";
/// The version byte of a PQXDH initial header.
pub const PQXDH_VERSION: u8 = 2;
/// HKDF info for the PQXDH shared secret.
pub const PQXDH_INFO: &[u8] = b"hush.v2.pqxdh";

/// Why a key agreement failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum X3dhError {
    /// A key or signature in the bundle or initial message was refused.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The bundle has no PQ prekey and the classical fallback was not allowed.
    #[error("the bundle has no post-quantum prekey")]
    NoPqPreKey,
}

/// Whether a bundle without a PQ prekey may be used with classical X3DH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClassicalFallback {
    /// Refuse it ([`X3dhError::NoPqPreKey`]): the default.
    #[default]
    Refuse,
    /// Use classical X3DH (header version 1) for such a bundle.
    Allow,
}

/// The PQ part of a PQXDH initial message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KemEncapsulation {
    /// The kind of the responder's PQ prekey.
    pub kind: PqPreKeyKind,
    /// Its id.
    pub id: PreKeyId,
    /// The ML-KEM-1024 ciphertext.
    pub ciphertext: KemCiphertext,
}

/// Which of the responder's prekeys an initial message used. The first two
/// are classical X3DH (header version 1), the last two PQXDH (version 2).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PreKeyChoice {
    /// The signed prekey together with a one-time prekey (four DH values).
    OneTime {
        /// The signed prekey id.
        signed: PreKeyId,
        /// The one-time prekey id.
        one_time: PreKeyId,
    },
    /// The last-resort prekey alone (three DH values).
    LastResort(PreKeyId),
    /// PQXDH with the signed and a one-time prekey (four DH values).
    PqOneTime {
        /// The signed prekey id.
        signed: PreKeyId,
        /// The one-time prekey id.
        one_time: PreKeyId,
        /// The PQ prekey and KEM ciphertext.
        kem: Box<KemEncapsulation>,
    },
    /// PQXDH with the last-resort prekey (three DH values).
    PqLastResort {
        /// The last-resort prekey id.
        last_resort: PreKeyId,
        /// The PQ prekey and KEM ciphertext.
        kem: Box<KemEncapsulation>,
    },
}

impl PreKeyChoice {
    /// The classical part alone ([`Self::OneTime`] or [`Self::LastResort`]).
    pub fn classical(&self) -> PreKeyChoice {
        match self {
            Self::OneTime { signed, one_time }
            | Self::PqOneTime {
                signed, one_time, ..
            } => Self::OneTime {
                signed: *signed,
                one_time: *one_time,
            },
            Self::LastResort(id)
            | Self::PqLastResort {
                last_resort: id, ..
            } => Self::LastResort(*id),
        }
    }

    /// The PQ part, for PQXDH.
    pub fn kem(&self) -> Option<&KemEncapsulation> {
        match self {
            Self::OneTime { .. } | Self::LastResort(_) => None,
            Self::PqOneTime { kem, .. } | Self::PqLastResort { kem, .. } => Some(kem),
        }
    }

    fn with_kem(self, kem: Option<KemEncapsulation>) -> Self {
        match (self, kem) {
            (Self::OneTime { signed, one_time }, Some(kem)) => Self::PqOneTime {
                signed,
                one_time,
                kem: Box::new(kem),
            },
            (Self::LastResort(last_resort), Some(kem)) => Self::PqLastResort {
                last_resort,
                kem: Box::new(kem),
            },
            (other, _) => other,
        }
    }
}

/// The X3DH part of an initial (prekey) message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InitialHeader {
    /// The initiator's account identity.
    pub identity: IdentityKey,
    /// The initiator's device certificate (names the initiating device).
    pub certificate: DeviceCertificate,
    /// The initiator's ephemeral key `EK_A`.
    pub base_key: X25519PublicKey,
    /// The responder prekeys used.
    pub prekeys: PreKeyChoice,
    /// When the initiator created the session (informational).
    pub created_at: u64,
}

impl InitialHeader {
    /// Encodes the header.
    ///
    /// | bytes | field |
    /// |---|---|
    /// | 1 | version: 1 X3DH, 2 PQXDH |
    /// | var | initiator device certificate |
    /// | 32 | initiator account identity (Ed25519) |
    /// | 32 | base key `EK_A` (X25519) |
    /// | 1 | prekey choice: 1 one-time, 2 last resort |
    /// | 8 or 4 | signed id and one-time id, or last-resort id |
    /// | 8 | session creation time |
    /// | 1 | version 2 only: PQ prekey kind: 1 one-time, 2 last resort |
    /// | 4 | version 2 only: PQ prekey id |
    /// | 1568 | version 2 only: ML-KEM-1024 ciphertext |
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(256);
        self.encode(&mut w);
        w.into_vec()
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        let kem = self.prekeys.kem();
        w.u8(if kem.is_some() {
            PQXDH_VERSION
        } else {
            X3DH_VERSION
        });
        self.certificate.encode(w);
        w.raw(&self.identity.to_bytes())
            .raw(self.base_key.as_bytes());
        match &self.prekeys {
            PreKeyChoice::OneTime { signed, one_time }
            | PreKeyChoice::PqOneTime {
                signed, one_time, ..
            } => {
                w.u8(1).u32(signed.0).u32(one_time.0);
            }
            PreKeyChoice::LastResort(id)
            | PreKeyChoice::PqLastResort {
                last_resort: id, ..
            } => {
                w.u8(2).u32(id.0);
            }
        }
        w.u64(self.created_at);
        if let Some(kem) = kem {
            let kind = match kem.kind {
                PqPreKeyKind::OneTime => 1,
                PqPreKeyKind::LastResort => 2,
            };
            w.u8(kind).u32(kem.id.0).raw(kem.ciphertext.as_bytes());
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let version = r.u8()?;
        if version != X3DH_VERSION && version != PQXDH_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let certificate = DeviceCertificate::decode(r)?;
        let identity = IdentityKey::from_bytes(&r.array()?).map_err(|_| DecodeError::InvalidKey)?;
        let base_key =
            X25519PublicKey::from_bytes(&r.array()?).map_err(|_| DecodeError::InvalidKey)?;
        let prekeys = match r.u8()? {
            1 => PreKeyChoice::OneTime {
                signed: PreKeyId(r.u32()?),
                one_time: PreKeyId(r.u32()?),
            },
            2 => PreKeyChoice::LastResort(PreKeyId(r.u32()?)),
            t => return Err(DecodeError::UnknownTag(t)),
        };
        let created_at = r.u64()?;
        let kem = if version == PQXDH_VERSION {
            let kind = match r.u8()? {
                1 => PqPreKeyKind::OneTime,
                2 => PqPreKeyKind::LastResort,
                t => return Err(DecodeError::UnknownTag(t)),
            };
            let id = PreKeyId(r.u32()?);
            let ciphertext = KemCiphertext::from_bytes(r.take(KEM_CIPHERTEXT_LEN)?)?;
            Some(KemEncapsulation {
                kind,
                id,
                ciphertext,
            })
        } else {
            None
        };
        let prekeys = prekeys.with_kem(kem);
        Ok(Self {
            identity,
            certificate,
            base_key,
            prekeys,
            created_at,
        })
    }
}

/// The agreed secret and the associated data of a new session.
#[derive(Debug)]
pub(crate) struct Agreement {
    pub(crate) shared_secret: Secret32,
    pub(crate) associated_data: Vec<u8>,
}

/// `IK_A || IK_B || address_A || address_B`.
pub(crate) fn associated_data(
    initiator: (&IdentityKey, &DeviceAddress),
    responder: (&IdentityKey, &DeviceAddress),
) -> Vec<u8> {
    let mut w = Writer::with_capacity(64 + 2 * 40);
    w.raw(&initiator.0.to_bytes()).raw(&responder.0.to_bytes());
    initiator.1.encode(&mut w);
    responder.1.encode(&mut w);
    w.into_vec()
}

/// `HKDF-SHA256(0^32, 0xFF^32 || DH1 || .. || DHn [|| SS])`, with the X3DH
/// info without a KEM secret and the PQXDH info with one.
pub(crate) fn kdf(dhs: &[&Secret32], kem: Option<&Secret32>) -> Secret32 {
    let mut ikm = Vec::with_capacity(32 * (dhs.len() + 2));
    ikm.extend_from_slice(&[0xff; 32]);
    for dh in dhs {
        ikm.extend_from_slice(dh.as_bytes());
    }
    if let Some(ss) = kem {
        ikm.extend_from_slice(ss.as_bytes());
    }
    let info = if kem.is_some() { PQXDH_INFO } else { X3DH_INFO };
    let hk = Hkdf::<Sha256>::new(Some(&[0u8; 32]), &ikm);
    let mut out = Secret32::zero();
    // 32 bytes is always a valid HKDF-SHA256 output length.
    let _ = hk.expand(info, out.as_mut());
    ikm.zeroize();
    out
}

/// The initiator's side. `bundle` must already be checked against the identity
/// the initiator trusts for its user; every signature in it is verified here
/// before any Diffie-Hellman value is computed.
///
/// With a PQ prekey in the bundle this is PQXDH; without one it is refused
/// unless `fallback` allows classical X3DH.
///
/// Returns the header to send, the agreement, and the responder's first ratchet
/// key (the prekey the session was agreed on).
pub(crate) fn initiate<R: rand_core::CryptoRng + ?Sized>(
    rng: &mut R,
    identity: &IdentityKeyPair,
    certificate: &DeviceCertificate,
    bundle: &PreKeyBundle,
    fallback: ClassicalFallback,
    now: u64,
) -> Result<(InitialHeader, Agreement, X25519PublicKey), X3dhError> {
    bundle.verify()?;
    if bundle.pq_prekey.is_none() && fallback == ClassicalFallback::Refuse {
        return Err(X3dhError::NoPqPreKey);
    }
    let (medium, choice, one_time) = match &bundle.one_time_prekey {
        Some(otk) => (
            bundle.signed_prekey.key(),
            PreKeyChoice::OneTime {
                signed: bundle.signed_prekey.id(),
                one_time: otk.id,
            },
            Some(&otk.key),
        ),
        None => (
            bundle.last_resort_prekey.key(),
            PreKeyChoice::LastResort(bundle.last_resort_prekey.id()),
            None,
        ),
    };
    let (ek_secret, ek_public) = generate_x25519(rng);
    let dh1 = diffie_hellman(&identity.x25519_secret(), medium)?;
    let dh2 = diffie_hellman(&ek_secret, &bundle.identity.to_x25519())?;
    let dh3 = diffie_hellman(&ek_secret, medium)?;
    let (kem, kem_secret) = match &bundle.pq_prekey {
        Some(pq) => {
            let (ciphertext, ss) = pq.key().encapsulate(rng)?;
            let kem = KemEncapsulation {
                kind: pq.kind(),
                id: pq.id(),
                ciphertext,
            };
            (Some(kem), Some(ss))
        }
        None => (None, None),
    };
    let shared_secret = match one_time {
        Some(otk) => kdf(
            &[&dh1, &dh2, &dh3, &diffie_hellman(&ek_secret, otk)?],
            kem_secret.as_ref(),
        ),
        None => kdf(&[&dh1, &dh2, &dh3], kem_secret.as_ref()),
    };
    let choice = choice.with_kem(kem);
    let own = identity.public_key();
    let associated_data = associated_data(
        (&own, certificate.address()),
        (&bundle.identity, bundle.address()),
    );
    let header = InitialHeader {
        identity: own,
        certificate: certificate.clone(),
        base_key: ek_public,
        prekeys: choice,
        created_at: now,
    };
    Ok((
        header,
        Agreement {
            shared_secret,
            associated_data,
        },
        *medium,
    ))
}

/// The responder's side, given the private prekeys `header` names and, for
/// PQXDH, the decapsulated KEM secret. The initiator's certificate must
/// already be checked against the trusted identity.
pub(crate) fn respond(
    identity: &IdentityKeyPair,
    own_address: &DeviceAddress,
    header: &InitialHeader,
    medium: &Secret32,
    one_time: Option<&Secret32>,
    kem_secret: Option<&Secret32>,
) -> Result<Agreement, X3dhError> {
    let dh1 = diffie_hellman(medium, &header.identity.to_x25519())?;
    let dh2 = diffie_hellman(&identity.x25519_secret(), &header.base_key)?;
    let dh3 = diffie_hellman(medium, &header.base_key)?;
    let shared_secret = match one_time {
        Some(otk) => kdf(
            &[&dh1, &dh2, &dh3, &diffie_hellman(otk, &header.base_key)?],
            kem_secret,
        ),
        None => kdf(&[&dh1, &dh2, &dh3], kem_secret),
    };
    let own = identity.public_key();
    let associated_data = associated_data(
        (&header.identity, header.certificate.address()),
        (&own, own_address),
    );
    Ok(Agreement {
        shared_secret,
        associated_data,
    })
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_chacha::rand_core::SeedableRng;

    use super::*;
    use crate::keys::{
        DeviceAuthKeyPair, DeviceId, OneTimePreKey, PqPreKeySecret, PreKeyKind, PreKeySettings,
        PreKeyState, UserId,
    };

    struct Party {
        identity: IdentityKeyPair,
        cert: DeviceCertificate,
        prekeys: PreKeyState,
        one_time: (Secret32, X25519PublicKey),
        pq: PqPreKeySecret,
    }

    fn party(rng: &mut ChaCha20Rng, name: &str) -> Party {
        let identity = IdentityKeyPair::generate(rng);
        let auth = DeviceAuthKeyPair::generate(rng);
        let user = UserId::new(name).unwrap();
        let cert = identity.certify_device(&user, DeviceId(1), &auth.public_key(), 0);
        let prekeys =
            PreKeyState::new(rng, &identity, cert.address(), PreKeySettings::default(), 0);
        let one_time = generate_x25519(rng);
        let pq = PqPreKeySecret::generate(
            rng,
            &identity,
            cert.address(),
            PqPreKeyKind::OneTime,
            PreKeyId(88),
            0,
        );
        Party {
            identity,
            cert,
            prekeys,
            one_time,
            pq,
        }
    }

    fn bundle(p: &Party, with_one_time: bool) -> PreKeyBundle {
        PreKeyBundle {
            identity: p.identity.public_key(),
            certificate: p.cert.clone(),
            signed_prekey: p.prekeys.current(PreKeyKind::Signed).unwrap().clone(),
            last_resort_prekey: p.prekeys.current(PreKeyKind::LastResort).unwrap().clone(),
            one_time_prekey: with_one_time.then_some(OneTimePreKey {
                id: PreKeyId(77),
                key: p.one_time.1,
            }),
            pq_prekey: Some(p.pq.public.clone()),
        }
    }

    /// Runs the responder's side on the encoded header, as a device would.
    fn respond_to(bob: &Party, header: &InitialHeader) -> (Agreement, X25519PublicKey) {
        let bytes = header.to_bytes();
        let mut r = Reader::new(&bytes);
        let header = InitialHeader::decode(&mut r).unwrap();
        r.finish().unwrap();
        let (medium, otk) = match header.prekeys.classical() {
            PreKeyChoice::OneTime { signed, one_time } => {
                assert_eq!(one_time, PreKeyId(77));
                let k = bob.prekeys.find(PreKeyKind::Signed, signed).unwrap();
                (k, Some(&bob.one_time.0))
            }
            PreKeyChoice::LastResort(id) => {
                (bob.prekeys.find(PreKeyKind::LastResort, id).unwrap(), None)
            }
            _ => unreachable!(),
        };
        let ss = header.prekeys.kem().map(|kem| {
            assert_eq!(kem.id, bob.pq.public.id());
            bob.pq.seed.decapsulate(&kem.ciphertext)
        });
        let agreement = respond(
            &bob.identity,
            bob.cert.address(),
            &header,
            &medium.secret,
            otk,
            ss.as_ref(),
        )
        .unwrap();
        (agreement, *medium.public.key())
    }

    #[test]
    fn both_sides_agree_with_and_without_a_one_time_prekey() {
        let mut rng = ChaCha20Rng::from_seed([4; 32]);
        let alice = party(&mut rng, "alice");
        let bob = party(&mut rng, "bob");
        for with_one_time in [true, false] {
            for pq in [true, false] {
                let mut b = bundle(&bob, with_one_time);
                if !pq {
                    b.pq_prekey = None;
                }
                let (header, a, ratchet_key) = initiate(
                    &mut rng,
                    &alice.identity,
                    &alice.cert,
                    &b,
                    ClassicalFallback::Allow,
                    5,
                )
                .unwrap();
                assert_eq!(header.prekeys.kem().is_some(), pq);
                let version = if pq { PQXDH_VERSION } else { X3DH_VERSION };
                assert_eq!(header.to_bytes()[0], version);
                let (b_side, medium) = respond_to(&bob, &header);
                assert_eq!(ratchet_key, medium);
                assert_eq!(a.shared_secret, b_side.shared_secret);
                assert_eq!(a.associated_data, b_side.associated_data);
            }
        }
    }

    #[test]
    fn a_bundle_without_a_pq_prekey_is_refused_by_default() {
        let mut rng = ChaCha20Rng::from_seed([6; 32]);
        let alice = party(&mut rng, "alice");
        let bob = party(&mut rng, "bob");
        let mut b = bundle(&bob, true);
        b.pq_prekey = None;
        assert_eq!(
            initiate(
                &mut rng,
                &alice.identity,
                &alice.cert,
                &b,
                ClassicalFallback::default(),
                0
            )
            .err(),
            Some(X3dhError::NoPqPreKey)
        );
    }

    #[test]
    fn a_tampered_kem_ciphertext_gives_another_secret() {
        let mut rng = ChaCha20Rng::from_seed([7; 32]);
        let alice = party(&mut rng, "alice");
        let bob = party(&mut rng, "bob");
        let b = bundle(&bob, true);
        let (mut header, a, _) = initiate(
            &mut rng,
            &alice.identity,
            &alice.cert,
            &b,
            ClassicalFallback::Refuse,
            0,
        )
        .unwrap();
        if let PreKeyChoice::PqOneTime { kem, .. } = &mut header.prekeys {
            kem.ciphertext.0[0] ^= 0x80;
        }
        let (b_side, _) = respond_to(&bob, &header);
        assert_ne!(a.shared_secret, b_side.shared_secret);
    }

    /// Sessions stored before PQXDH hold version 1 headers in postcard: the
    /// classical variants keep their indices, the PQ ones come after them.
    #[test]
    fn the_stored_form_of_classical_prekey_choices_is_unchanged() {
        let one_time = PreKeyChoice::OneTime {
            signed: PreKeyId(3),
            one_time: PreKeyId(4),
        };
        assert_eq!(postcard::to_allocvec(&one_time).unwrap(), [0, 3, 4]);
        let last_resort = PreKeyChoice::LastResort(PreKeyId(5));
        assert_eq!(postcard::to_allocvec(&last_resort).unwrap(), [1, 5]);
        let back: PreKeyChoice = postcard::from_bytes(&[1, 5]).unwrap();
        assert_eq!(back, last_resort);
        assert_eq!(one_time.classical(), one_time);
        assert!(one_time.kem().is_none());
    }

    #[test]
    fn headers_are_decoded_strictly() {
        let mut rng = ChaCha20Rng::from_seed([8; 32]);
        let alice = party(&mut rng, "alice");
        let bob = party(&mut rng, "bob");
        let (header, _, _) = initiate(
            &mut rng,
            &alice.identity,
            &alice.cert,
            &bundle(&bob, false),
            ClassicalFallback::Refuse,
            0,
        )
        .unwrap();
        let bytes = header.to_bytes();
        for cut in [1, 100, KEM_CIPHERTEXT_LEN] {
            let mut r = Reader::new(&bytes[..bytes.len() - cut]);
            assert!(InitialHeader::decode(&mut r).is_err());
        }
        let mut bad_version = bytes.clone();
        bad_version[0] = 3;
        assert!(InitialHeader::decode(&mut Reader::new(&bad_version)).is_err());
        let mut bad_kind = bytes.clone();
        let kind_at = bytes.len() - KEM_CIPHERTEXT_LEN - 5;
        bad_kind[kind_at] = 9;
        assert!(InitialHeader::decode(&mut Reader::new(&bad_kind)).is_err());
    }

    #[test]
    fn a_bad_signature_is_refused_before_any_dh() {
        let mut rng = ChaCha20Rng::from_seed([5; 32]);
        let alice = party(&mut rng, "alice");
        let bob = party(&mut rng, "bob");
        let mallory = party(&mut rng, "bob");
        // Signed prekey of another identity.
        let mut b = bundle(&bob, true);
        b.signed_prekey = mallory.prekeys.current(PreKeyKind::Signed).unwrap().clone();
        assert!(matches!(
            initiate(
                &mut rng,
                &alice.identity,
                &alice.cert,
                &b,
                ClassicalFallback::Refuse,
                0
            ),
            Err(X3dhError::Key(KeyError::BadSignature(_)))
        ));
        // Certificate of another identity.
        let mut b = bundle(&bob, true);
        b.certificate = mallory.cert.clone();
        assert!(
            initiate(
                &mut rng,
                &alice.identity,
                &alice.cert,
                &b,
                ClassicalFallback::Refuse,
                0
            )
            .is_err()
        );
        // PQ prekey of another identity.
        let mut b = bundle(&bob, true);
        b.pq_prekey = Some(mallory.pq.public.clone());
        assert!(matches!(
            initiate(
                &mut rng,
                &alice.identity,
                &alice.cert,
                &b,
                ClassicalFallback::Refuse,
                0
            ),
            Err(X3dhError::Key(KeyError::BadSignature(_)))
        ));
        // Last-resort key swapped into the signed slot.
        let mut b = bundle(&bob, true);
        b.signed_prekey = b.last_resort_prekey.clone();
        assert!(
            initiate(
                &mut rng,
                &alice.identity,
                &alice.cert,
                &b,
                ClassicalFallback::Refuse,
                0
            )
            .is_err()
        );
    }
}
