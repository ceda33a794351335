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
    DeviceAddress, DeviceCertificate, IdentityKey, IdentityKeyPair, KeyError, PreKeyBundle,
    PreKeyId, X25519PublicKey, diffie_hellman, generate_x25519,
};
use crate::secret::Secret32;

/// The version byte of an X3DH initial header.
pub const X3DH_VERSION: u8 = 1;
/// HKDF info for the X3DH shared secret.
pub const X3DH_INFO: &[u8] = b"hush.v1.x3dh";

/// Why a key agreement failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum X3dhError {
    /// A key or signature in the bundle or initial message was refused.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Which of the responder's prekeys an initial message used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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
    /// | 1 | version = 1 |
    /// | var | initiator device certificate |
    /// | 32 | initiator account identity (Ed25519) |
    /// | 32 | base key `EK_A` (X25519) |
    /// | 1 | prekey choice: 1 one-time, 2 last resort |
    /// | 8 or 4 | signed id and one-time id, or last-resort id |
    /// | 8 | session creation time |
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(256);
        self.encode(&mut w);
        w.into_vec()
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        w.u8(X3DH_VERSION);
        self.certificate.encode(w);
        w.raw(&self.identity.to_bytes())
            .raw(self.base_key.as_bytes());
        match self.prekeys {
            PreKeyChoice::OneTime { signed, one_time } => {
                w.u8(1).u32(signed.0).u32(one_time.0);
            }
            PreKeyChoice::LastResort(id) => {
                w.u8(2).u32(id.0);
            }
        }
        w.u64(self.created_at);
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let version = r.u8()?;
        if version != X3DH_VERSION {
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

fn kdf(dhs: &[&Secret32]) -> Secret32 {
    let mut ikm = Vec::with_capacity(32 * (dhs.len() + 1));
    ikm.extend_from_slice(&[0xff; 32]);
    for dh in dhs {
        ikm.extend_from_slice(dh.as_bytes());
    }
    let hk = Hkdf::<Sha256>::new(Some(&[0u8; 32]), &ikm);
    let mut out = Secret32::zero();
    // 32 bytes is always a valid HKDF-SHA256 output length.
    let _ = hk.expand(X3DH_INFO, out.as_mut());
    ikm.zeroize();
    out
}

/// The initiator's side. `bundle` must already be checked against the identity
/// the initiator trusts for its user; every signature in it is verified here
/// before any Diffie-Hellman value is computed.
///
/// Returns the header to send, the agreement, and the responder's first ratchet
/// key (the prekey the session was agreed on).
pub(crate) fn initiate<R: rand_core::CryptoRng + ?Sized>(
    rng: &mut R,
    identity: &IdentityKeyPair,
    certificate: &DeviceCertificate,
    bundle: &PreKeyBundle,
    now: u64,
) -> Result<(InitialHeader, Agreement, X25519PublicKey), X3dhError> {
    bundle.verify()?;
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
    let shared_secret = match one_time {
        Some(otk) => kdf(&[&dh1, &dh2, &dh3, &diffie_hellman(&ek_secret, otk)?]),
        None => kdf(&[&dh1, &dh2, &dh3]),
    };
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

/// The responder's side, given the private prekeys `header` names. The
/// initiator's certificate must already be checked against the trusted identity.
pub(crate) fn respond(
    identity: &IdentityKeyPair,
    own_address: &DeviceAddress,
    header: &InitialHeader,
    medium: &Secret32,
    one_time: Option<&Secret32>,
) -> Result<Agreement, X3dhError> {
    let dh1 = diffie_hellman(medium, &header.identity.to_x25519())?;
    let dh2 = diffie_hellman(&identity.x25519_secret(), &header.base_key)?;
    let dh3 = diffie_hellman(medium, &header.base_key)?;
    let shared_secret = match one_time {
        Some(otk) => kdf(&[&dh1, &dh2, &dh3, &diffie_hellman(otk, &header.base_key)?]),
        None => kdf(&[&dh1, &dh2, &dh3]),
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
        DeviceAuthKeyPair, DeviceId, OneTimePreKey, PreKeyKind, PreKeySettings, PreKeyState, UserId,
    };

    struct Party {
        identity: IdentityKeyPair,
        cert: DeviceCertificate,
        prekeys: PreKeyState,
        one_time: (Secret32, X25519PublicKey),
    }

    fn party(rng: &mut ChaCha20Rng, name: &str) -> Party {
        let identity = IdentityKeyPair::generate(rng);
        let auth = DeviceAuthKeyPair::generate(rng);
        let user = UserId::new(name).unwrap();
        let cert = identity.certify_device(&user, DeviceId(1), &auth.public_key(), 0);
        let prekeys =
            PreKeyState::new(rng, &identity, cert.address(), PreKeySettings::default(), 0);
        let one_time = generate_x25519(rng);
        Party {
            identity,
            cert,
            prekeys,
            one_time,
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
        }
    }

    #[test]
    fn both_sides_agree_with_and_without_a_one_time_prekey() {
        let mut rng = ChaCha20Rng::from_seed([4; 32]);
        let alice = party(&mut rng, "alice");
        let bob = party(&mut rng, "bob");
        for with_one_time in [true, false] {
            let b = bundle(&bob, with_one_time);
            let (header, a, ratchet_key) =
                initiate(&mut rng, &alice.identity, &alice.cert, &b, 5).unwrap();
            let header = {
                let bytes = header.to_bytes();
                let mut r = Reader::new(&bytes);
                let h = InitialHeader::decode(&mut r).unwrap();
                r.finish().unwrap();
                h
            };
            let (medium, otk) = match header.prekeys {
                PreKeyChoice::OneTime { signed, one_time } => {
                    assert_eq!(one_time, PreKeyId(77));
                    let k = bob.prekeys.find(PreKeyKind::Signed, signed).unwrap();
                    (k, Some(&bob.one_time.0))
                }
                PreKeyChoice::LastResort(id) => {
                    (bob.prekeys.find(PreKeyKind::LastResort, id).unwrap(), None)
                }
            };
            assert_eq!(&ratchet_key, medium.public.key());
            let b_side = respond(
                &bob.identity,
                bob.cert.address(),
                &header,
                &medium.secret,
                otk,
            )
            .unwrap();
            assert_eq!(a.shared_secret, b_side.shared_secret);
            assert_eq!(a.associated_data, b_side.associated_data);
        }
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
            initiate(&mut rng, &alice.identity, &alice.cert, &b, 0),
            Err(X3dhError::Key(KeyError::BadSignature(_)))
        ));
        // Certificate of another identity.
        let mut b = bundle(&bob, true);
        b.certificate = mallory.cert.clone();
        assert!(initiate(&mut rng, &alice.identity, &alice.cert, &b, 0).is_err());
        // Last-resort key swapped into the signed slot.
        let mut b = bundle(&bob, true);
        b.signed_prekey = b.last_resort_prekey.clone();
        assert!(initiate(&mut rng, &alice.identity, &alice.cert, &b, 0).is_err());
    }
}
