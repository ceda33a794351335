//! Linking a new device to an account.
//!
//! 1. The new device makes a [`LinkRequest`] (an ephemeral X25519 key that is
//!    never sent to the server on its own), opens a provisioning connection
//!    and receives a provisioning address.
//! 2. It shows a [`LinkCode`] — server name, provisioning address, ephemeral
//!    public key — that travels **out of band** (scanned or typed).
//! 3. An existing device checks that the code names its own server, the user
//!    approves, it obtains a single-use link permission from the server, and
//!    [`seal_link`]s the account identity, the user id and the permission to
//!    the code's key, with the server name and provisioning address bound as
//!    associated data; it sends the sealed bytes to the provisioning address.
//! 4. The new device [`LinkRequest::open`]s them, registers with the
//!    permission, receives its device id and signs its own certificate and
//!    prekeys (by creating its [`SessionManager`](crate::SessionManager)).
//!
//! Because the key in the code never passed through the server, the server
//! can neither read the sealed identity nor substitute a message of its own.
//!
//! ```text
//! sealed = version (1) || sender ephemeral E (32) || nonce (12) || AES-256-GCM(k, nonce, payload, AAD)
//! k      = HKDF-SHA256(salt = none, ikm = X25519(e, code key), info = "hush.v1.link")
//! AAD    = "hush.v1.link" || u8 len(server name) || server name || provisioning address (16)
//!          || code key (32) || E (32)
//! payload = account identity seed (32) || permission (32) || u8 len(user) || user
//! ```
//!
//! ```
//! use hush::keys::{IdentityKeyPair, UserId};
//! use hush::link::{LinkRequest, seal_link};
//! use hush::wire::protocol::{LinkToken, ProvisioningAddress};
//! # use rand_chacha::rand_core::SeedableRng;
//! # let mut rng = rand_chacha::ChaCha20Rng::from_seed([5; 32]);
//! let identity = IdentityKeyPair::generate(&mut rng);
//! let user = UserId::new("alice")?;
//! // The new device.
//! let request = LinkRequest::new(&mut rng);
//! let code = request.code("chat.example.org", ProvisioningAddress([7; 16]))?;
//! let shown = code.to_bytes(); // a QR code
//! // The existing device, after the user approved.
//! let code = hush::link::LinkCode::from_bytes(&shown)?;
//! let permission = LinkToken([1; 32]);
//! let sealed = seal_link(&mut rng, &code, "chat.example.org", &identity, &user, &permission)?;
//! // The new device again.
//! let linked = request.open(&sealed)?;
//! assert_eq!(linked.identity.public_key(), identity.public_key());
//! assert_eq!(linked.user, user);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use aes_gcm::aead::{Aead, Nonce, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use hkdf::Hkdf;
use sha2::Sha256;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::codec::{DecodeError, Reader, Writer};
use crate::keys::{
    IdentityKeyPair, KeyError, UserId, X25519PublicKey, diffie_hellman, generate_x25519,
};
use crate::secret::Secret32;
use crate::wire::protocol::{
    InvalidServerName, LinkToken, ProvisioningAddress, canonical_server_name,
};

/// The version byte of link codes and sealed link messages.
pub const LINK_VERSION: u8 = 1;
const LABEL: &[u8] = b"hush.v1.link";

/// Why linking failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum LinkError {
    /// Malformed code or message.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A key was refused.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The code names another server than the one this device uses.
    #[error("the link code is for another server")]
    WrongServer,
    /// The server name is not valid.
    #[error(transparent)]
    ServerName(#[from] InvalidServerName),
    /// The sealed message was not made for this request (or was altered).
    #[error("the link message does not open")]
    DoesNotOpen,
}

/// The code a new device shows: it travels out of band, never through the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkCode {
    server_name: String,
    address: ProvisioningAddress,
    key: X25519PublicKey,
}

impl LinkCode {
    /// The server the new device is connected to.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// Where the new device waits.
    pub fn address(&self) -> &ProvisioningAddress {
        &self.address
    }

    /// `version || u8 len(server name) || server name || address (16) || key (32)`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64 + self.server_name.len());
        w.u8(LINK_VERSION)
            .bytes_u8(self.server_name.as_bytes())
            .raw(&self.address.0)
            .raw(self.key.as_bytes());
        w.into_vec()
    }

    /// Decodes a scanned or typed code.
    ///
    /// # Errors
    /// Decode errors, an invalid server name or key.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LinkError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != LINK_VERSION {
            return Err(DecodeError::UnsupportedVersion(version).into());
        }
        let name = std::str::from_utf8(r.bytes_u8()?).map_err(|_| InvalidServerName)?;
        let server_name = canonical_server_name(name)?;
        if server_name != name {
            return Err(InvalidServerName.into());
        }
        let address = ProvisioningAddress(r.array()?);
        let key = X25519PublicKey::from_bytes(&r.array()?)?;
        r.finish()?;
        Ok(Self {
            server_name,
            address,
            key,
        })
    }
}

/// What a new device learns from a link message.
#[derive(Debug)]
pub struct LinkedAccount {
    /// The account identity, shared by all of the user's devices.
    pub identity: IdentityKeyPair,
    /// The account's user id.
    pub user: UserId,
    /// The single-use permission to register this device.
    pub permission: LinkToken,
}

/// The new device's side: an ephemeral key pair.
pub struct LinkRequest {
    secret: Secret32,
    public: X25519PublicKey,
}

impl std::fmt::Debug for LinkRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkRequest")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

fn aad(
    server_name: &str,
    address: &ProvisioningAddress,
    code_key: &X25519PublicKey,
    sender: &X25519PublicKey,
) -> Vec<u8> {
    let mut w = Writer::with_capacity(128);
    w.raw(LABEL)
        .bytes_u8(server_name.as_bytes())
        .raw(&address.0)
        .raw(code_key.as_bytes())
        .raw(sender.as_bytes());
    w.into_vec()
}

fn cipher(shared: &Secret32) -> Aes256Gcm {
    let hk = Hkdf::<Sha256>::new(None, shared.as_bytes());
    let mut key = Secret32::zero();
    // 32 bytes is a valid HKDF-SHA256 output length.
    let _ = hk.expand(LABEL, key.as_mut());
    Aes256Gcm::new(key.as_bytes().into())
}

impl LinkRequest {
    /// A fresh request.
    pub fn new<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let (secret, public) = generate_x25519(rng);
        Self { secret, public }
    }

    /// The code to show, once the server gave a provisioning address.
    ///
    /// # Errors
    /// [`LinkError::ServerName`].
    pub fn code(
        &self,
        server_name: &str,
        address: ProvisioningAddress,
    ) -> Result<LinkCode, LinkError> {
        Ok(LinkCode {
            server_name: canonical_server_name(server_name)?,
            address,
            key: self.public,
        })
    }

    /// Opens the sealed link message that arrived at the provisioning address.
    /// The code it was sealed for must be the one made by [`Self::code`]
    /// for this request (the same server name and address).
    ///
    /// # Errors
    /// [`LinkError::DoesNotOpen`] for a message sealed to anything else, or altered.
    pub fn open(&self, sealed: &[u8]) -> Result<LinkedAccount, LinkError> {
        self.open_for(None, sealed)
    }

    /// As [`Self::open`], checking the server name and address of the code shown.
    ///
    /// # Errors
    /// As [`Self::open`].
    pub fn open_code(&self, code: &LinkCode, sealed: &[u8]) -> Result<LinkedAccount, LinkError> {
        self.open_for(Some(code), sealed)
    }

    fn open_for(&self, code: Option<&LinkCode>, sealed: &[u8]) -> Result<LinkedAccount, LinkError> {
        let mut r = Reader::new(sealed);
        let version = r.u8()?;
        if version != LINK_VERSION {
            return Err(DecodeError::UnsupportedVersion(version).into());
        }
        let name = std::str::from_utf8(r.bytes_u8()?)
            .map_err(|_| InvalidServerName)?
            .to_owned();
        let address = ProvisioningAddress(r.array()?);
        let sender = X25519PublicKey::from_bytes(&r.array()?)?;
        let nonce: [u8; 12] = r.array()?;
        let ciphertext = r.rest();
        if let Some(code) = code
            && (code.server_name != name || code.address != address || code.key != self.public)
        {
            return Err(LinkError::DoesNotOpen);
        }
        let shared = diffie_hellman(&self.secret, &sender)?;
        let aad = aad(&name, &address, &self.public, &sender);
        let payload = Zeroizing::new(
            cipher(&shared)
                .decrypt(
                    &Nonce::<Aes256Gcm>::from(nonce),
                    Payload {
                        msg: ciphertext,
                        aad: &aad,
                    },
                )
                .map_err(|_| LinkError::DoesNotOpen)?,
        );
        let mut r = Reader::new(&payload);
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(r.array()?);
        let permission = LinkToken(r.array()?);
        let user = UserId::decode(&mut r)?;
        r.finish()?;
        Ok(LinkedAccount {
            identity: IdentityKeyPair::from_seed_bytes(&seed),
            user,
            permission,
        })
    }
}

/// The existing device's side: seals the account identity, the user id and a
/// link permission to the code's key. `own_server` is the server this device
/// uses; a code naming another server is refused.
///
/// # Errors
/// [`LinkError::WrongServer`], or [`LinkError::ServerName`].
pub fn seal_link<R: rand_core::CryptoRng + ?Sized>(
    rng: &mut R,
    code: &LinkCode,
    own_server: &str,
    identity: &IdentityKeyPair,
    user: &UserId,
    permission: &LinkToken,
) -> Result<Vec<u8>, LinkError> {
    if canonical_server_name(own_server)? != code.server_name {
        return Err(LinkError::WrongServer);
    }
    let (secret, sender) = generate_x25519(rng);
    let shared = diffie_hellman(&secret, &code.key)?;
    let mut payload = Writer::with_capacity(32 + 32 + 256);
    payload
        .raw(identity.to_seed_bytes().as_slice())
        .raw(&permission.0);
    user.encode(&mut payload);
    let payload = Zeroizing::new(payload.into_vec());
    let mut nonce = [0u8; 12];
    rng.fill_bytes(&mut nonce);
    let aad = aad(&code.server_name, &code.address, &code.key, &sender);
    let ciphertext = cipher(&shared)
        .encrypt(
            &Nonce::<Aes256Gcm>::from(nonce),
            Payload {
                msg: &payload,
                aad: &aad,
            },
        )
        .map_err(|_| LinkError::DoesNotOpen)?;
    let mut w = Writer::with_capacity(128 + ciphertext.len());
    w.u8(LINK_VERSION)
        .bytes_u8(code.server_name.as_bytes())
        .raw(&code.address.0)
        .raw(sender.as_bytes())
        .raw(&nonce)
        .raw(&ciphertext);
    Ok(w.into_vec())
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_chacha::rand_core::SeedableRng;

    use super::*;

    fn setup() -> (ChaCha20Rng, IdentityKeyPair, UserId, LinkRequest, LinkCode) {
        let mut rng = ChaCha20Rng::from_seed([8; 32]);
        let identity = IdentityKeyPair::generate(&mut rng);
        let request = LinkRequest::new(&mut rng);
        let code = request
            .code("Chat.Example.org", ProvisioningAddress([3; 16]))
            .unwrap();
        (rng, identity, UserId::new("alice").unwrap(), request, code)
    }

    #[test]
    fn the_new_device_receives_the_identity() {
        let (mut rng, identity, user, request, code) = setup();
        let code = LinkCode::from_bytes(&code.to_bytes()).unwrap();
        assert_eq!(code.server_name(), "chat.example.org");
        let sealed = seal_link(
            &mut rng,
            &code,
            "chat.example.org",
            &identity,
            &user,
            &LinkToken([4; 32]),
        )
        .unwrap();
        let linked = request.open_code(&code, &sealed).unwrap();
        assert_eq!(linked.identity.public_key(), identity.public_key());
        assert_eq!(linked.permission, LinkToken([4; 32]));
        assert_eq!(linked.user, user);
    }

    #[test]
    fn a_code_for_another_server_is_refused() {
        let (mut rng, identity, user, _request, code) = setup();
        assert_eq!(
            seal_link(
                &mut rng,
                &code,
                "evil.example.org",
                &identity,
                &user,
                &LinkToken([0; 32])
            ),
            Err(LinkError::WrongServer)
        );
    }

    /// The server re-seals a link message to a key of its own (it never saw
    /// the code's key): the new device refuses it, and cannot be given an
    /// identity the server chose.
    #[test]
    fn a_message_sealed_by_the_server_does_not_open() {
        let (mut rng, _identity, user, request, code) = setup();
        let server_request = LinkRequest::new(&mut rng);
        let server_code = server_request
            .code("chat.example.org", *code.address())
            .unwrap();
        let fake_identity = IdentityKeyPair::generate(&mut rng);
        let forged = seal_link(
            &mut rng,
            &server_code,
            "chat.example.org",
            &fake_identity,
            &user,
            &LinkToken([9; 32]),
        )
        .unwrap();
        assert_eq!(request.open(&forged).unwrap_err(), LinkError::DoesNotOpen);
    }

    #[test]
    fn every_altered_byte_is_refused() {
        let (mut rng, identity, user, request, code) = setup();
        let sealed = seal_link(
            &mut rng,
            &code,
            "chat.example.org",
            &identity,
            &user,
            &LinkToken([4; 32]),
        )
        .unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x20;
            assert!(request.open_code(&code, &bad).is_err(), "byte {i}");
        }
        assert!(request.open(&sealed[..sealed.len() - 1]).is_err());
    }
}
