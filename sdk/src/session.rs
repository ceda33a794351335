//! Sessions with one peer device.
//!
//! A [`Session`] is one Double Ratchet conversation agreed by X3DH. The
//! initiator keeps sending the initial (prekey) form of its messages until the
//! first reply arrives, because until then the responder may not have the session.
//!
//! Per peer device Hush keeps an **active** session plus up to
//! [`MAX_PREVIOUS_SESSIONS`] previous ones, all tried on decrypt.
//!
//! ## Which session is active
//! The active session is the one used to send; decrypting on another session
//! never changes it. It changes only when a session is added:
//!
//! * a session this device initiates becomes active;
//! * a session the peer initiated becomes active, unless the active session
//!   is one this device initiated that is still waiting for its first reply
//!   and has the greater base key (bytewise). That is the case of both devices
//!   initiating at once: each sees the other's initial message while its own
//!   is unanswered, both apply the same comparison to the same two base keys,
//!   and both end up sending on the same session. Messages that crossed on the
//!   other session are still decrypted, without changing the choice.
//!
//! A peer that lost its state (or re-keys) initiates anew after an
//! established session: its session takes over. No clock is involved.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::codec::{DecodeError, Reader, Writer};
use crate::keys::X25519PublicKey;
use crate::ratchet::{Ratchet, RatchetError};
use crate::secret::Secret32;
use crate::x3dh::InitialHeader;

/// Previous sessions kept per peer device besides the active one.
pub const MAX_PREVIOUS_SESSIONS: usize = 4;

/// A message of a session, as it travels between devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionMessage {
    /// The first messages of a session, until the initiator sees a reply.
    Initial {
        /// The X3DH header.
        header: Box<InitialHeader>,
        /// The ratchet message.
        message: Vec<u8>,
    },
    /// Every later message.
    Normal(Vec<u8>),
}

impl SessionMessage {
    /// Tag of an initial message (classical X3DH, version 1).
    pub const TAG_INITIAL: u8 = 0x01;
    /// Tag of a normal message.
    pub const TAG_NORMAL: u8 = 0x02;

    /// Encodes the message.
    ///
    /// | bytes | field |
    /// |---|---|
    /// | 1 | tag: 0x01 initial, 0x02 normal |
    /// | var | initial only: the X3DH [`InitialHeader`] |
    /// | rest | the ratchet message (header, then ciphertext and tag) |
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Self::Initial { header, message } => {
                let mut w = Writer::with_capacity(300 + message.len());
                w.u8(Self::TAG_INITIAL);
                header.encode(&mut w);
                w.raw(message);
                w.into_vec()
            }
            Self::Normal(message) => {
                let mut w = Writer::with_capacity(1 + message.len());
                w.u8(Self::TAG_NORMAL).raw(message);
                w.into_vec()
            }
        }
    }

    /// Decodes a message.
    ///
    /// # Errors
    /// A [`DecodeError`] for malformed input.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        match r.u8()? {
            Self::TAG_INITIAL => {
                let header = Box::new(InitialHeader::decode(&mut r)?);
                Ok(Self::Initial {
                    header,
                    message: r.rest().to_vec(),
                })
            }
            Self::TAG_NORMAL => Ok(Self::Normal(r.rest().to_vec())),
            t => Err(DecodeError::UnknownTag(t)),
        }
    }
}

/// One Double Ratchet session with one peer device, as the app may inspect it.
///
/// It deliberately implements neither `Serialize` nor a `Debug` that shows key
/// material; sessions are persisted only sealed, by the store layer.
#[derive(Clone, PartialEq, Eq)]
pub struct Session(pub(crate) SessionState);

impl Session {
    /// The initiator's base key, which names the session on both sides.
    pub fn base_key(&self) -> &X25519PublicKey {
        &self.0.base_key
    }

    /// When the initiator created the session.
    pub fn created_at(&self) -> u64 {
        self.0.created_at
    }

    /// Whether messages are still sent in the initial form.
    pub fn is_pending(&self) -> bool {
        self.0.pending.is_some()
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("base_key", self.base_key())
            .field("created_at", &self.created_at())
            .field("pending", &self.is_pending())
            .finish_non_exhaustive()
    }
}

/// The persisted state of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionState {
    ratchet: Ratchet,
    associated_data: Vec<u8>,
    base_key: X25519PublicKey,
    created_at: u64,
    /// The initiator's header, repeated on every message until a reply arrives.
    pending: Option<InitialHeader>,
}

impl SessionState {
    pub(crate) fn initiator<R: rand_core::CryptoRng + ?Sized>(
        rng: &mut R,
        header: InitialHeader,
        shared_secret: Secret32,
        associated_data: Vec<u8>,
        remote_ratchet_key: X25519PublicKey,
    ) -> Result<Self, RatchetError> {
        Ok(Self {
            ratchet: Ratchet::initiator(rng, shared_secret, remote_ratchet_key)?,
            associated_data,
            base_key: header.base_key,
            created_at: header.created_at,
            pending: Some(header),
        })
    }

    pub(crate) fn responder(
        header: &InitialHeader,
        shared_secret: Secret32,
        associated_data: Vec<u8>,
        prekey_secret: Secret32,
        prekey_public: X25519PublicKey,
    ) -> Self {
        Self {
            ratchet: Ratchet::responder(shared_secret, prekey_secret, prekey_public),
            associated_data,
            base_key: header.base_key,
            created_at: header.created_at,
            pending: None,
        }
    }

    pub(crate) fn encrypt<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        plaintext: &[u8],
    ) -> Result<SessionMessage, RatchetError> {
        let ad = message_ad(&self.associated_data, self.pending.as_ref());
        let message = self.ratchet.encrypt(rng, &ad, plaintext)?;
        Ok(match &self.pending {
            Some(header) => SessionMessage::Initial {
                header: Box::new(header.clone()),
                message,
            },
            None => SessionMessage::Normal(message),
        })
    }

    /// Drops expired skipped keys.
    pub(crate) fn prune(&mut self, now: u64) {
        self.ratchet.prune(now);
    }

    /// Decrypts a ratchet message (with the X3DH header it came with, for an
    /// initial message); on error nothing changes.
    pub(crate) fn decrypt(
        &mut self,
        initial: Option<&InitialHeader>,
        message: &[u8],
        now: u64,
    ) -> Result<Vec<u8>, RatchetError> {
        let ad = message_ad(&self.associated_data, initial);
        let plaintext = self.ratchet.decrypt(&ad, message, now)?;
        self.pending = None;
        Ok(plaintext)
    }
}

/// The associated data of a message: the session's AD, followed by the
/// encoded X3DH header when the message is in the initial form, so that no
/// byte of an initial message can be altered unnoticed.
fn message_ad<'a>(session_ad: &'a [u8], initial: Option<&InitialHeader>) -> Cow<'a, [u8]> {
    match initial {
        None => Cow::Borrowed(session_ad),
        Some(header) => {
            let mut ad = session_ad.to_vec();
            ad.extend_from_slice(&header.to_bytes());
            Cow::Owned(ad)
        }
    }
}

/// All sessions with one peer device: the active one first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PeerSessions {
    sessions: Vec<SessionState>,
    /// Set when this account's identity was replaced: the sessions still
    /// decrypt, but the next message must start a new session.
    needs_new_session: bool,
}

impl PeerSessions {
    /// Whether a message can be sent on the active session.
    pub(crate) fn can_send(&self) -> bool {
        !self.sessions.is_empty() && !self.needs_new_session
    }

    pub(crate) fn require_new_session(&mut self) {
        self.needs_new_session = true;
    }

    /// Adds a session this device initiated: it becomes active.
    pub(crate) fn insert_initiated(&mut self, session: SessionState) {
        self.needs_new_session = false;
        self.sessions.insert(0, session);
        self.sessions.truncate(1 + MAX_PREVIOUS_SESSIONS);
    }

    /// Adds a session the peer initiated: it becomes active unless the active
    /// session is our own unanswered one with the greater base key.
    pub(crate) fn insert_received(&mut self, session: SessionState) {
        let keep_active = self.sessions.first().is_some_and(|active| {
            active.pending.is_some() && active.base_key.as_bytes() > session.base_key.as_bytes()
        });
        self.sessions.insert(usize::from(keep_active), session);
        self.sessions.truncate(1 + MAX_PREVIOUS_SESSIONS);
    }

    pub(crate) fn active_mut(&mut self) -> Option<&mut SessionState> {
        self.sessions.first_mut()
    }

    pub(crate) fn active(&self) -> Option<&SessionState> {
        self.sessions.first()
    }

    pub(crate) fn by_base_key_mut(
        &mut self,
        base_key: &X25519PublicKey,
    ) -> Option<&mut SessionState> {
        self.sessions.iter_mut().find(|s| &s.base_key == base_key)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Tries every session in order; the first that authenticates the message wins.
    pub(crate) fn decrypt(&mut self, message: &[u8], now: u64) -> Result<Vec<u8>, RatchetError> {
        let mut error = None;
        for session in &mut self.sessions {
            match session.decrypt(None, message, now) {
                Ok(plaintext) => return Ok(plaintext),
                // A session that recognises the message as already received
                // explains the failure better than the others' mismatches.
                Err(e @ RatchetError::DuplicateOrExpired) => error = Some(e),
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        Err(error.unwrap_or(RatchetError::AuthenticationFailed))
    }
}
