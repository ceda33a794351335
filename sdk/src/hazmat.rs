//! Operations that skip persistence, for benchmarks, test vectors and fuzzing.
//!
//! Nothing here commits state: a [`Session`] advanced with [`encrypt`] and
//! then dropped re-uses message keys the next time. Applications use
//! [`SessionManager`], which commits every change.

use crate::SessionManager;
use crate::keys::PreKeyBundle;
use crate::manager::Error;
use crate::session::{Session, SessionMessage};
use crate::store::Store;

/// Encrypts on a detached session and returns the [`SessionMessage`] bytes.
///
/// # Errors
/// A ratchet error.
pub fn encrypt<R: rand_core::CryptoRng + ?Sized>(
    session: &mut Session,
    rng: &mut R,
    plaintext: &[u8],
) -> Result<Vec<u8>, Error> {
    Ok(session.0.encrypt(rng, plaintext)?.to_bytes())
}

/// Decrypts [`SessionMessage`] bytes on a detached session (the X3DH header of
/// an initial message is not processed: the session must already exist).
///
/// # Errors
/// Decode and ratchet errors; the session is then unchanged.
pub fn decrypt(session: &mut Session, bytes: &[u8], now: u64) -> Result<Vec<u8>, Error> {
    Ok(match SessionMessage::from_bytes(bytes)? {
        SessionMessage::Initial { header, message } => {
            session.0.decrypt(Some(&header), &message, now)?
        }
        SessionMessage::Normal(message) => session.0.decrypt(None, &message, now)?,
    })
}

impl<S: Store> SessionManager<S> {
    /// PQXDH (or X3DH, see [`SessionManager::set_classical_fallback`]) as
    /// initiator without storing anything: verifies the bundle and
    /// returns the new session.
    ///
    /// # Errors
    /// As [`SessionManager::start_session`].
    pub fn dangerous_initiate<R: rand_core::CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        bundle: &PreKeyBundle,
        now: u64,
    ) -> Result<Session, Error> {
        self.initiate_aside(rng, bundle, now).map(Session)
    }

    /// PQXDH or X3DH as responder without storing anything: processes an initial
    /// message (prekey lookup included, one-time prekeys not consumed) and
    /// returns the session and the first plaintext.
    ///
    /// # Errors
    /// As [`SessionManager::decrypt`].
    pub fn dangerous_respond<R: rand_core::CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        bytes: &[u8],
        now: u64,
    ) -> Result<(Session, Vec<u8>), Error> {
        self.respond_aside(rng, bytes, now)
            .map(|(s, p)| (Session(s), p))
    }
}
