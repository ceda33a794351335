//! [`SessionManager`]: one device's account, prekeys, trusted identities and
//! sessions over a [`Store`].
//!
//! Every operation reads what it needs from the store, computes the new state
//! aside, and hands all of its changes to the store as **one** [`Batch`]. An
//! encrypt commits the advanced ratchet before it returns the ciphertext; a
//! decrypt commits only a message that authenticated, together with the
//! consumed one-time prekey or the last-resort replay entry, the trusted
//! identity, the new device and (for [`SessionManager::receive`]) the inbox
//! copy and the processed envelope id.
//!
//! ```
//! use hush::keys::{DeviceAuthKeyPair, DeviceId, IdentityKeyPair, UserId};
//! use hush::store::{MemoryStore, StorageKey};
//! use hush::{PreKeyBundle, SessionManager};
//! # use rand_chacha::rand_core::SeedableRng;
//! # let mut rng = rand_chacha::ChaCha20Rng::from_seed([3; 32]);
//! let now = 1_700_000_000;
//! let mut device = |name: &str, rng: &mut rand_chacha::ChaCha20Rng| {
//!     SessionManager::create(
//!         MemoryStore::new(),
//!         &StorageKey::generate(rng),
//!         IdentityKeyPair::generate(rng),
//!         DeviceAuthKeyPair::generate(rng),
//!         UserId::new(name).unwrap(),
//!         DeviceId(1),
//!         Default::default(),
//!         rng,
//!         now,
//!     )
//! };
//! let mut alice = device("alice", &mut rng)?;
//! let mut bob = device("bob", &mut rng)?;
//!
//! // Bob publishes prekeys; the server hands Alice a bundle.
//! let one_time = bob.generate_one_time_prekeys(&mut rng, 1)?;
//! let bundle = PreKeyBundle { one_time_prekey: Some(one_time[0]), ..bob.bundle()? };
//! alice.start_session(&mut rng, &bundle, now)?;
//!
//! let wire = alice.encrypt(&mut rng, bob.address(), b"hi Bob", now)?;
//! let got = bob.decrypt(&mut rng, alice.address(), &wire, now)?;
//! assert_eq!(got.plaintext, b"hi Bob");
//! let reply = bob.encrypt(&mut rng, alice.address(), b"hi Alice", now)?;
//! assert_eq!(alice.decrypt(&mut rng, bob.address(), &reply, now)?.plaintext, b"hi Alice");
//! # Ok::<(), hush::Error>(())
//! ```

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::Zeroize;

use crate::codec::DecodeError;
use crate::fingerprint::SafetyNumber;
use sha2::{Digest, Sha256};

use crate::keys::{
    DeviceAddress, DeviceAuthKeyPair, DeviceCertificate, DeviceId, IdentityKey, IdentityKeyPair,
    KemCiphertext, KemSeed, KeyError, OneTimePreKey, PqPreKeyKind, PqPreKeySecret, PqPreKeyState,
    PreKeyBundle, PreKeyId, PreKeyKind, PreKeySettings, PreKeyState, SignedPqPreKey, UserId,
    X25519PublicKey, generate_x25519,
};
use crate::ratchet::RatchetError;
use crate::secret::Secret32;
use crate::session::{PeerSessions, Session, SessionMessage, SessionState};
use crate::store::vault::{CHECK_ROW, Vault};
use crate::store::{Batch, StorageKey, Store, StoreError, Table};
use crate::x3dh::{self, ClassicalFallback, InitialHeader, PreKeyChoice, X3dhError};

/// One-time prekeys generated per call, at most (the server's upload cap).
pub const MAX_ONE_TIME_PREKEYS_PER_BATCH: usize = 100;

/// Errors of [`SessionManager`] operations. On any error, nothing was stored.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// Malformed input.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A key or signature was refused.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Key agreement failed for a reason other than a refused key.
    #[error(transparent)]
    X3dh(X3dhError),
    /// A ratchet message failed.
    #[error(transparent)]
    Ratchet(#[from] RatchetError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// There is no session with this device; fetch its bundle and start one.
    #[error("no session with {0}")]
    NoSession(DeviceAddress),
    /// The peer's account identity differs from the one trusted for the user.
    /// Nothing is accepted until the app calls
    /// [`SessionManager::accept_identity_change`].
    #[error("the identity of {} changed", .0.user)]
    IdentityChanged(Box<IdentityChange>),
    /// The device certificate does not verify under the user's trusted identity.
    #[error("device {0} is not certified by its account identity")]
    UntrustedDevice(DeviceAddress),
    /// The message names another sending device than the one it came from.
    #[error("message sender does not match its certificate")]
    SenderMismatch,
    /// The initial message names a signed prekey this device does not hold.
    #[error("unknown signed prekey {0:?}")]
    UnknownSignedPreKey(PreKeyId),
    /// The one-time prekey is unknown or was already used.
    #[error("unknown or already used one-time prekey {0:?}")]
    UnknownOneTimePreKey(PreKeyId),
    /// The last-resort prekey is unknown or past its grace period.
    #[error("unknown last-resort prekey {0:?}")]
    UnknownLastResortPreKey(PreKeyId),
    /// The PQ one-time prekey is unknown or was already used.
    #[error("unknown or already used PQ one-time prekey {0:?}")]
    UnknownPqOneTimePreKey(PreKeyId),
    /// The PQ last-resort prekey is unknown or past its grace period.
    #[error("unknown PQ last-resort prekey {0:?}")]
    UnknownPqLastResortPreKey(PreKeyId),
    /// An initial message on a last-resort prekey was replayed.
    #[error("replayed initial message")]
    ReplayedInitialMessage,
    /// Too many one-time prekeys requested at once.
    #[error("at most {max} one-time prekeys per batch")]
    TooManyPreKeys {
        /// The cap.
        max: usize,
    },
}

impl From<X3dhError> for Error {
    fn from(e: X3dhError) -> Self {
        match e {
            X3dhError::Key(k) => Error::Key(k),
            #[allow(
                unreachable_patterns,
                reason = "X3dhError is non_exhaustive and will grow"
            )]
            other => Error::X3dh(other),
        }
    }
}

/// A peer presented another account identity than the trusted one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityChange {
    /// The user.
    pub user: UserId,
    /// The identity trusted so far.
    pub trusted: IdentityKey,
    /// The identity now presented.
    pub received: IdentityKey,
}

/// Something the app should know about, reported by an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A user's account identity was seen for the first time and is now trusted.
    IdentityTrusted {
        /// The user.
        user: UserId,
        /// The identity.
        identity: IdentityKey,
    },
    /// A device not seen before, certified by its user's trusted identity.
    DeviceAdded(DeviceAddress),
    /// A known device presented a new certificate (a new device auth key),
    /// certified by its user's trusted identity.
    DeviceChanged(DeviceAddress),
    /// A device is gone from its user's device list; its sessions were dropped.
    DeviceRemoved(DeviceAddress),
}

/// A decrypted message. Its `Debug` output shows the plaintext's length only.
#[derive(Clone, PartialEq, Eq)]
pub struct Decrypted {
    /// The plaintext.
    pub plaintext: Vec<u8>,
    /// What else happened.
    pub events: Vec<Event>,
}

/// A message kept in the inbox until the app confirms it. Its `Debug` output
/// shows the plaintext's length only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxMessage {
    /// The server's envelope id.
    pub envelope_id: Vec<u8>,
    /// The sending device.
    pub sender: DeviceAddress,
    /// The plaintext.
    pub plaintext: Vec<u8>,
    /// When it was decrypted.
    pub received_at: u64,
}

impl std::fmt::Debug for Decrypted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decrypted")
            .field("plaintext_len", &self.plaintext.len())
            .field("events", &self.events)
            .finish()
    }
}

impl std::fmt::Debug for InboxMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxMessage")
            .field("envelope_id", &self.envelope_id)
            .field("sender", &self.sender)
            .field("plaintext_len", &self.plaintext.len())
            .field("received_at", &self.received_at)
            .finish()
    }
}

/// What [`SessionManager::receive`] made of an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Newly decrypted and kept in the inbox.
    New {
        /// The message.
        message: InboxMessage,
        /// What else happened.
        events: Vec<Event>,
    },
    /// Already decrypted earlier and still unconfirmed: here is the inbox copy.
    Unconfirmed(InboxMessage),
    /// Already decrypted and confirmed: acknowledge it to the server again.
    AlreadyConfirmed,
}

#[derive(Serialize, Deserialize)]
struct AccountRecord {
    identity_seed: Secret32,
    auth_seed: Secret32,
    certificate: DeviceCertificate,
    prekeys: PreKeyState,
}

#[derive(Serialize, Deserialize)]
struct OneTimeRecord {
    id: PreKeyId,
    secret: Secret32,
}

#[derive(Serialize, Deserialize)]
struct PqOneTimeRecord {
    id: PreKeyId,
    seed: KemSeed,
}

#[derive(Serialize, Deserialize)]
struct IdentityRecord {
    user: UserId,
    identity: IdentityKey,
    first_seen: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct DevicesRecord {
    devices: Vec<DeviceCertificate>,
}

#[derive(Serialize, Deserialize)]
struct ReplayRecord {
    last_resort: PreKeyId,
    base_key: X25519PublicKey,
}

#[derive(Serialize, Deserialize)]
struct ProcessedRecord {
    at: u64,
}

/// A message the client was asked to send and the server has not accepted
/// yet (one per recipient user: the copy for this account's other devices
/// is its own record), kept so that a crash or restart does not lose it.
#[derive(Serialize, Deserialize)]
pub(crate) struct OutboxRecord {
    /// Queuing order, unique in the store; also the row's key.
    pub(crate) order: u64,
    pub(crate) recipient: UserId,
    pub(crate) message: [u8; 16],
    /// The padded content, encrypted anew for each attempt.
    pub(crate) padded: Vec<u8>,
}

impl Drop for OutboxRecord {
    fn drop(&mut self) {
        self.padded.zeroize();
    }
}

const ACCOUNT_ROW: &[u8] = b"account";
/// The PQ last-resort prekeys, in their own row of [`Table::Account`] so that
/// account records written before PQXDH read unchanged.
const PQ_PREKEYS_ROW: &[u8] = b"pq-prekeys";

/// One device's end-to-end state over a [`Store`].
pub struct SessionManager<S: Store> {
    store: S,
    vault: Vault,
    identity: IdentityKeyPair,
    auth: DeviceAuthKeyPair,
    certificate: DeviceCertificate,
    prekeys: PreKeyState,
    pq_prekeys: PqPreKeyState,
    fallback: ClassicalFallback,
}

impl<S: Store> std::fmt::Debug for SessionManager<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionManager")
            .field("address", self.certificate.address())
            .finish_non_exhaustive()
    }
}

/// The changes of one operation, sealed as they are added.
struct Changes<'v, R: rand_core::CryptoRng + ?Sized> {
    vault: &'v Vault,
    rng: &'v mut R,
    batch: Batch,
}

impl<R: rand_core::CryptoRng + ?Sized> Changes<'_, R> {
    fn put<T: Serialize>(&mut self, table: Table, id: &[u8], value: &T) -> Result<(), Error> {
        let row = self.vault.row_key(table, id);
        let sealed = self.vault.seal(self.rng, table, &row, value)?;
        self.batch.put(table, row, sealed);
        Ok(())
    }

    fn delete(&mut self, table: Table, id: &[u8]) {
        let row = self.vault.row_key(table, id);
        self.batch.delete(table, row);
    }
}

/// The replay-cache id of a base key used with a last-resort prekey.
fn replay_id(last_resort: PreKeyId, base_key: &X25519PublicKey) -> Vec<u8> {
    let mut id = last_resort.0.to_be_bytes().to_vec();
    id.extend_from_slice(base_key.as_bytes());
    id
}

/// The replay-cache id of a KEM ciphertext used with a PQ last-resort prekey:
/// `"pq" || id || SHA-256(ciphertext)` (never the length of a classical id).
fn pq_replay_id(last_resort: PreKeyId, ciphertext: &KemCiphertext) -> Vec<u8> {
    let mut id = b"pq".to_vec();
    id.extend_from_slice(&last_resort.0.to_be_bytes());
    id.extend_from_slice(&Sha256::digest(ciphertext.as_bytes()));
    id
}

/// The row id of a private PQ one-time prekey: `"pq" || id` (a classical
/// one-time prekey's row id is the 4-byte id alone).
fn pq_one_time_id(id: PreKeyId) -> Vec<u8> {
    let mut row = b"pq".to_vec();
    row.extend_from_slice(&id.0.to_be_bytes());
    row
}

impl<S: Store> SessionManager<S> {
    /// Creates a device in an empty store: `identity` is the account identity
    /// (new for a first device, received through linking otherwise) and
    /// `device` the id the server assigned. The device signs its certificate
    /// and makes its first signed and last-resort prekeys.
    ///
    /// # Errors
    /// [`StoreError::AccountExists`] if the store already holds an account,
    /// or a store error.
    #[allow(
        clippy::too_many_arguments,
        reason = "each argument is a distinct input of device creation"
    )]
    pub fn create<R: rand_core::CryptoRng + ?Sized>(
        store: S,
        storage_key: &StorageKey,
        identity: IdentityKeyPair,
        auth: DeviceAuthKeyPair,
        user: UserId,
        device: DeviceId,
        settings: PreKeySettings,
        rng: &mut R,
        now: u64,
    ) -> Result<Self, Error> {
        if store.get(Table::Meta, CHECK_ROW)?.is_some() {
            return Err(StoreError::AccountExists.into());
        }
        let vault = Vault::new(storage_key);
        let certificate = identity.certify_device(&user, device, &auth.public_key(), now);
        let mut prekeys = PreKeyState::new(rng, &identity, certificate.address(), settings, now);
        let mut pq_prekeys = PqPreKeyState::default();
        let id = prekeys.take_id();
        pq_prekeys.add(rng, &identity, certificate.address(), id, now);
        let mut this = Self {
            store,
            vault,
            identity,
            auth,
            certificate,
            prekeys,
            pq_prekeys,
            fallback: ClassicalFallback::default(),
        };
        let mut changes = this.changes(rng);
        changes
            .batch
            .put(Table::Meta, CHECK_ROW.to_vec(), this.vault.check_value());
        changes.put(Table::Account, ACCOUNT_ROW, &this.account_record())?;
        changes.put(Table::Account, PQ_PREKEYS_ROW, &this.pq_prekeys)?;
        let batch = changes.batch;
        this.store.apply(batch)?;
        Ok(this)
    }

    /// Opens the device kept in `store`.
    ///
    /// # Errors
    /// [`StoreError::NoAccount`] for an empty store, [`StoreError::WrongKey`]
    /// for another storage key, [`StoreError::Corrupted`] for damaged data.
    pub fn open(store: S, storage_key: &StorageKey) -> Result<Self, Error> {
        let vault = Vault::new(storage_key);
        let check = store
            .get(Table::Meta, CHECK_ROW)?
            .ok_or(StoreError::NoAccount)?;
        if !vault.matches_check(&check) {
            return Err(StoreError::WrongKey.into());
        }
        let row = vault.row_key(Table::Account, ACCOUNT_ROW);
        let sealed = store
            .get(Table::Account, &row)?
            .ok_or(StoreError::Corrupted(Table::Account))?;
        let record: AccountRecord = vault.open(Table::Account, &row, &sealed)?;
        // A store written before PQXDH has no PQ prekeys yet; the next
        // `rotate_prekeys` makes the first one.
        let pq_row = vault.row_key(Table::Account, PQ_PREKEYS_ROW);
        let pq_prekeys = match store.get(Table::Account, &pq_row)? {
            Some(sealed) => vault.open(Table::Account, &pq_row, &sealed)?,
            None => PqPreKeyState::default(),
        };
        Ok(Self {
            store,
            vault,
            identity: IdentityKeyPair::from_seed(&record.identity_seed),
            auth: DeviceAuthKeyPair::from_seed(&record.auth_seed),
            certificate: record.certificate,
            prekeys: record.prekeys,
            pq_prekeys,
            fallback: ClassicalFallback::default(),
        })
    }

    /// Whether [`Self::start_session`] may use classical X3DH with a bundle
    /// that has no PQ prekey. The default, [`ClassicalFallback::Refuse`],
    /// refuses such a bundle with [`X3dhError::NoPqPreKey`]. This setting is
    /// not persisted: it is [`ClassicalFallback::Refuse`] after every
    /// [`Self::open`].
    pub fn set_classical_fallback(&mut self, fallback: ClassicalFallback) {
        self.fallback = fallback;
    }

    /// The current classical-fallback setting.
    pub fn classical_fallback(&self) -> ClassicalFallback {
        self.fallback
    }

    /// Gives the store back.
    pub fn into_store(self) -> S {
        self.store
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// An empty set of changes, sealed as they are added.
    fn changes<'a, R: rand_core::CryptoRng + ?Sized>(&'a self, rng: &'a mut R) -> Changes<'a, R> {
        Changes {
            vault: &self.vault,
            rng,
            batch: Batch::new(),
        }
    }

    fn account_record(&self) -> AccountRecord {
        AccountRecord {
            identity_seed: self.identity.seed(),
            auth_seed: self.auth.seed(),
            certificate: self.certificate.clone(),
            prekeys: self.prekeys.clone(),
        }
    }

    fn load<T: DeserializeOwned>(&self, table: Table, id: &[u8]) -> Result<Option<T>, Error> {
        let row = self.vault.row_key(table, id);
        match self.store.get(table, &row)? {
            Some(sealed) => Ok(Some(self.vault.open(table, &row, &sealed)?)),
            None => Ok(None),
        }
    }

    /// This device.
    pub fn address(&self) -> &DeviceAddress {
        self.certificate.address()
    }

    /// The account identity's public key.
    pub fn identity_key(&self) -> IdentityKey {
        self.identity.public_key()
    }

    /// The account identity (to link a new device, which needs it).
    pub fn identity_key_pair(&self) -> &IdentityKeyPair {
        &self.identity
    }

    /// This device's certificate.
    pub fn certificate(&self) -> &DeviceCertificate {
        &self.certificate
    }

    /// The key this device logs in to a server with.
    pub fn device_auth_key(&self) -> &DeviceAuthKeyPair {
        &self.auth
    }

    /// The current signed, last-resort and PQ last-resort prekeys and the
    /// certificate, as a bundle without a one-time prekey (the server adds one
    /// per fetch, and replaces the PQ last-resort prekey by a PQ one-time
    /// prekey while it has one). The PQ prekey is `None` only for a store
    /// written before PQXDH until [`Self::rotate_prekeys`] runs.
    ///
    /// # Errors
    /// [`StoreError::Corrupted`] if the account lacks a current prekey (it
    /// always has one unless its record was damaged).
    pub fn bundle(&self) -> Result<PreKeyBundle, Error> {
        let current = |kind| {
            self.prekeys
                .current(kind)
                .cloned()
                .ok_or(Error::Store(StoreError::Corrupted(Table::Account)))
        };
        Ok(PreKeyBundle {
            identity: self.identity.public_key(),
            certificate: self.certificate.clone(),
            signed_prekey: current(PreKeyKind::Signed)?,
            last_resort_prekey: current(PreKeyKind::LastResort)?,
            one_time_prekey: None,
            pq_prekey: self.pq_prekeys.current().cloned(),
        })
    }

    /// Makes `count` signed ML-KEM-1024 one-time prekeys (at most
    /// [`MAX_ONE_TIME_PREKEYS_PER_BATCH`]), stores their private seeds and
    /// returns the public halves to upload. `now` is their signed creation time.
    ///
    /// # Errors
    /// [`Error::TooManyPreKeys`] or a store error.
    pub fn generate_pq_one_time_prekeys<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        count: usize,
        now: u64,
    ) -> Result<Vec<SignedPqPreKey>, Error> {
        if count > MAX_ONE_TIME_PREKEYS_PER_BATCH {
            return Err(Error::TooManyPreKeys {
                max: MAX_ONE_TIME_PREKEYS_PER_BATCH,
            });
        }
        let mut prekeys = self.prekeys.clone();
        let address = self.address().clone();
        let mut records = Vec::with_capacity(count);
        for _ in 0..count {
            let id = prekeys.take_id();
            records.push(PqPreKeySecret::generate(
                rng,
                &self.identity,
                &address,
                PqPreKeyKind::OneTime,
                id,
                now,
            ));
        }
        let account = AccountRecord {
            prekeys: prekeys.clone(),
            ..self.account_record()
        };
        let mut changes = self.changes(rng);
        for k in &records {
            let record = PqOneTimeRecord {
                id: k.public.id(),
                seed: k.seed.clone(),
            };
            changes.put(Table::OneTimePreKeys, &pq_one_time_id(record.id), &record)?;
        }
        changes.put(Table::Account, ACCOUNT_ROW, &account)?;
        let batch = changes.batch;
        self.store.apply(batch)?;
        self.prekeys = prekeys;
        Ok(records.into_iter().map(|k| k.public).collect())
    }

    /// Makes `count` one-time prekeys (at most [`MAX_ONE_TIME_PREKEYS_PER_BATCH`]),
    /// stores their private halves and returns the public halves to upload.
    ///
    /// # Errors
    /// [`Error::TooManyPreKeys`] or a store error.
    pub fn generate_one_time_prekeys<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        count: usize,
    ) -> Result<Vec<OneTimePreKey>, Error> {
        if count > MAX_ONE_TIME_PREKEYS_PER_BATCH {
            return Err(Error::TooManyPreKeys {
                max: MAX_ONE_TIME_PREKEYS_PER_BATCH,
            });
        }
        let mut prekeys = self.prekeys.clone();
        let mut out = Vec::with_capacity(count);
        let mut records = Vec::with_capacity(count);
        for _ in 0..count {
            let id = prekeys.take_id();
            let (secret, key) = generate_x25519(rng);
            out.push(OneTimePreKey { id, key });
            records.push(OneTimeRecord { id, secret });
        }
        let account = AccountRecord {
            prekeys: prekeys.clone(),
            ..self.account_record()
        };
        let mut changes = self.changes(rng);
        for r in &records {
            changes.put(Table::OneTimePreKeys, &r.id.0.to_be_bytes(), r)?;
        }
        changes.put(Table::Account, ACCOUNT_ROW, &account)?;
        let batch = changes.batch;
        self.store.apply(batch)?;
        self.prekeys = prekeys;
        Ok(out)
    }

    /// Replaces signed and last-resort prekeys older than the rotation
    /// interval, and forgets replaced keys past their grace period (with their
    /// replay-cache entries). Returns whether new keys need uploading.
    ///
    /// # Errors
    /// A store error.
    pub fn rotate_prekeys<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        now: u64,
    ) -> Result<bool, Error> {
        let mut prekeys = self.prekeys.clone();
        let mut pq_prekeys = self.pq_prekeys.clone();
        let address = self.address().clone();
        let (mut rotated, mut dropped) = prekeys.rotate(rng, &self.identity, &address, now);
        // The PQ last-resort prekey follows the same rule.
        if pq_prekeys.due(now, prekeys.settings.rotation_interval) {
            let id = prekeys.take_id();
            pq_prekeys.add(rng, &self.identity, &address, id, now);
            rotated = true;
        }
        dropped.extend(pq_prekeys.expire(now, prekeys.settings.grace_period));
        let account = AccountRecord {
            prekeys: prekeys.clone(),
            ..self.account_record()
        };
        let mut changes = self.changes(rng);
        changes.put(Table::Account, ACCOUNT_ROW, &account)?;
        changes.put(Table::Account, PQ_PREKEYS_ROW, &pq_prekeys)?;
        if !dropped.is_empty() {
            for (row, sealed) in self.store.scan(Table::LastResortReplay)? {
                let rec: ReplayRecord = self.vault.open(Table::LastResortReplay, &row, &sealed)?;
                if dropped.contains(&rec.last_resort) {
                    changes.batch.delete(Table::LastResortReplay, row);
                }
            }
        }
        let batch = changes.batch;
        self.store.apply(batch)?;
        self.prekeys = prekeys;
        self.pq_prekeys = pq_prekeys;
        Ok(rotated)
    }

    /// The identity trusted for `user`, if any.
    ///
    /// # Errors
    /// A store error.
    pub fn trusted_identity(&self, user: &UserId) -> Result<Option<IdentityKey>, Error> {
        if user == &self.address().user {
            return Ok(Some(self.identity.public_key()));
        }
        Ok(self
            .load::<IdentityRecord>(Table::Identities, user.as_str().as_bytes())?
            .map(|r| r.identity))
    }

    /// Checks `identity` for `user` against the trusted one. `Ok(Some)` is a
    /// first sighting to record.
    fn check_identity(
        &self,
        user: &UserId,
        identity: &IdentityKey,
        now: u64,
    ) -> Result<Option<IdentityRecord>, Error> {
        match self.trusted_identity(user)? {
            Some(trusted) if &trusted == identity => Ok(None),
            Some(trusted) => Err(Error::IdentityChanged(Box::new(IdentityChange {
                user: user.clone(),
                trusted,
                received: *identity,
            }))),
            None => Ok(Some(IdentityRecord {
                user: user.clone(),
                identity: *identity,
                first_seen: now,
            })),
        }
    }

    /// Replaces this account's identity, for instance after a device was lost
    /// or stolen (it still holds the old identity). The device's certificate
    /// and signed prekeys are made anew under the new identity, and peers
    /// meet the new identity in the next initial
    /// message and see an identity change (sessions are kept to decrypt what
    /// is still on its way, but the next message to each peer starts a new
    /// session). The server must be told
    /// ([`crate::wire::protocol::Request::ReplaceIdentity`]), and the
    /// account's other devices must be linked again.
    ///
    /// # Errors
    /// A store error; then nothing changed.
    pub fn replace_account_identity<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        identity: IdentityKeyPair,
        now: u64,
    ) -> Result<(), Error> {
        let address = self.address().clone();
        let certificate =
            identity.certify_device(&address.user, address.device, &self.auth.public_key(), now);
        let mut prekeys = PreKeyState::new(rng, &identity, &address, self.prekeys.settings, now);
        let mut pq_prekeys = PqPreKeyState::default();
        let pq_id = prekeys.take_id();
        pq_prekeys.add(rng, &identity, &address, pq_id, now);
        let sessions = self.store.scan(Table::Sessions)?;
        let record = AccountRecord {
            identity_seed: identity.seed(),
            auth_seed: self.auth.seed(),
            certificate: certificate.clone(),
            prekeys: prekeys.clone(),
        };
        let mut marked = Vec::with_capacity(sessions.len());
        for (row, sealed) in sessions {
            let mut peer: PeerSessions = self.vault.open(Table::Sessions, &row, &sealed)?;
            peer.require_new_session();
            marked.push((row, peer));
        }
        let mut changes = self.changes(rng);
        for (row, peer) in &marked {
            let sealed = changes
                .vault
                .seal(changes.rng, Table::Sessions, row, peer)?;
            changes.batch.put(Table::Sessions, row.clone(), sealed);
        }
        // Our own user's devices were certified by the old identity.
        changes.delete(Table::Devices, address.user.as_str().as_bytes());
        changes.put(Table::Account, ACCOUNT_ROW, &record)?;
        changes.put(Table::Account, PQ_PREKEYS_ROW, &pq_prekeys)?;
        let batch = changes.batch;
        self.store.apply(batch)?;
        self.identity = identity;
        self.certificate = certificate;
        self.prekeys = prekeys;
        self.pq_prekeys = pq_prekeys;
        Ok(())
    }

    /// Accepts a changed identity for `user` (after the user was told). Known
    /// devices and sessions of the user are forgotten.
    ///
    /// # Errors
    /// A store error.
    pub fn accept_identity_change<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        user: &UserId,
        identity: &IdentityKey,
        now: u64,
    ) -> Result<(), Error> {
        let devices: DevicesRecord = self
            .load(Table::Devices, user.as_str().as_bytes())?
            .unwrap_or_default();
        let mut changes = self.changes(rng);
        for cert in &devices.devices {
            changes.delete(Table::Sessions, &cert.address().to_bytes());
        }
        changes.delete(Table::Devices, user.as_str().as_bytes());
        let record = IdentityRecord {
            user: user.clone(),
            identity: *identity,
            first_seen: now,
        };
        changes.put(Table::Identities, user.as_str().as_bytes(), &record)?;
        let batch = changes.batch;
        self.store.apply(batch)?;
        Ok(())
    }

    /// The devices known for `user`.
    ///
    /// # Errors
    /// A store error.
    pub fn known_devices(&self, user: &UserId) -> Result<Vec<DeviceCertificate>, Error> {
        Ok(self
            .load::<DevicesRecord>(Table::Devices, user.as_str().as_bytes())?
            .unwrap_or_default()
            .devices)
    }

    /// Records a device whose certificate verifies under the user's identity
    /// (trusted on first use). A device already known is no event.
    ///
    /// The caller has verified `certificate` under the user's identity.
    fn note_device<R: rand_core::CryptoRng + ?Sized>(
        &self,
        changes: &mut Changes<'_, R>,
        certificate: &DeviceCertificate,
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        let address = certificate.address();
        let user = address.user.as_str().as_bytes();
        let mut record: DevicesRecord = self.load(Table::Devices, user)?.unwrap_or_default();
        match record.devices.iter_mut().find(|c| c.address() == address) {
            Some(known) if known == certificate => return Ok(()),
            Some(known) => {
                *known = certificate.clone();
                events.push(Event::DeviceChanged(address.clone()));
            }
            None => {
                record.devices.push(certificate.clone());
                events.push(Event::DeviceAdded(address.clone()));
            }
        }
        changes.put(Table::Devices, user, &record)
    }

    /// Checks a device certificate against the user's trusted identity and
    /// remembers the device. A device that does not verify is refused.
    ///
    /// # Errors
    /// [`Error::UntrustedDevice`] (also when no identity is trusted yet for the
    /// user), or a store error.
    pub fn add_device<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        certificate: &DeviceCertificate,
    ) -> Result<Vec<Event>, Error> {
        let address = certificate.address();
        let identity = self
            .trusted_identity(&address.user)?
            .ok_or_else(|| Error::UntrustedDevice(address.clone()))?;
        let mut events = Vec::new();
        let mut changes = self.changes(rng);
        if certificate.verify(&identity).is_err() {
            return Err(Error::UntrustedDevice(address.clone()));
        }
        self.note_device(&mut changes, certificate, &mut events)?;
        let batch = changes.batch;
        self.store.apply(batch)?;
        Ok(events)
    }

    /// Forgets a device that left its user's device list (the server reported
    /// it as extra, or the user removed it): its certificate and sessions.
    /// Returns [`Event::DeviceRemoved`] if the device was known.
    ///
    /// # Errors
    /// A store error.
    pub fn remove_device<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        device: &DeviceAddress,
    ) -> Result<Option<Event>, Error> {
        let user = device.user.as_str().as_bytes();
        let mut record: DevicesRecord = self.load(Table::Devices, user)?.unwrap_or_default();
        let before = record.devices.len();
        record.devices.retain(|c| c.address() != device);
        let known = record.devices.len() != before;
        let mut changes = self.changes(rng);
        changes.delete(Table::Sessions, &device.to_bytes());
        if known {
            changes.put(Table::Devices, user, &record)?;
        }
        let batch = changes.batch;
        self.store.apply(batch)?;
        Ok(known.then(|| Event::DeviceRemoved(device.clone())))
    }

    /// Whether a message to `peer` can go on an existing session (false with
    /// no session, or after the account identity was replaced).
    ///
    /// # Errors
    /// A store error.
    pub fn has_session(&self, peer: &DeviceAddress) -> Result<bool, Error> {
        Ok(self
            .load::<PeerSessions>(Table::Sessions, &peer.to_bytes())?
            .is_some_and(|s| s.can_send()))
    }

    /// The active session with `peer`, for inspection.
    ///
    /// # Errors
    /// A store error.
    pub fn active_session(&self, peer: &DeviceAddress) -> Result<Option<Session>, Error> {
        Ok(self
            .load::<PeerSessions>(Table::Sessions, &peer.to_bytes())?
            .and_then(|s| s.active().cloned().map(Session)))
    }

    /// Number of sessions (active and previous) kept with `peer`.
    ///
    /// # Errors
    /// A store error.
    pub fn session_count(&self, peer: &DeviceAddress) -> Result<usize, Error> {
        Ok(self
            .load::<PeerSessions>(Table::Sessions, &peer.to_bytes())?
            .map_or(0, |s| s.len()))
    }

    /// Starts a session with the device of `bundle` (PQXDH as initiator, or
    /// classical X3DH for a bundle without a PQ prekey if
    /// [`Self::set_classical_fallback`] allowed it). The bundle's identity
    /// must be the one trusted for its user, or is trusted now if none is;
    /// every signature is verified before any key agreement.
    ///
    /// # Errors
    /// [`Error::IdentityChanged`], [`Error::Key`] for a bad bundle,
    /// [`Error::X3dh`] with [`X3dhError::NoPqPreKey`] for a bundle without a
    /// PQ prekey (unless the fallback is allowed), or a store error.
    pub fn start_session<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        bundle: &PreKeyBundle,
        now: u64,
    ) -> Result<Vec<Event>, Error> {
        let peer = bundle.address().clone();
        // Every signature in the bundle is verified first; only an authentic
        // bundle can report an identity change.
        let session = self.initiate_aside(rng, bundle, now)?;
        let new_identity = self.check_identity(&peer.user, &bundle.identity, now)?;
        let mut sessions: PeerSessions = self
            .load(Table::Sessions, &peer.to_bytes())?
            .unwrap_or_default();
        sessions.insert_initiated(session);

        let mut events = Vec::new();
        let mut changes = self.changes(rng);
        if let Some(record) = new_identity {
            changes.put(Table::Identities, peer.user.as_str().as_bytes(), &record)?;
            events.push(Event::IdentityTrusted {
                user: peer.user.clone(),
                identity: record.identity,
            });
        }
        // The bundle, certificate included, was verified by X3DH.
        self.note_device(&mut changes, &bundle.certificate, &mut events)?;
        changes.put(Table::Sessions, &peer.to_bytes(), &sessions)?;
        let batch = changes.batch;
        self.store.apply(batch)?;
        Ok(events)
    }

    pub(crate) fn initiate_aside<R: rand_core::CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        bundle: &PreKeyBundle,
        now: u64,
    ) -> Result<SessionState, Error> {
        let (header, agreement, remote_ratchet_key) = x3dh::initiate(
            rng,
            &self.identity,
            &self.certificate,
            bundle,
            self.fallback,
            now,
        )?;
        Ok(SessionState::initiator(
            rng,
            header,
            agreement.shared_secret,
            agreement.associated_data,
            remote_ratchet_key,
        )?)
    }

    #[cfg(feature = "hazmat")]
    pub(crate) fn respond_aside<R: rand_core::CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        bytes: &[u8],
        now: u64,
    ) -> Result<(SessionState, Vec<u8>), Error> {
        match SessionMessage::from_bytes(bytes)? {
            SessionMessage::Initial { header, message } => {
                let mut changes = self.changes(rng);
                let mut session = self.respond(&mut changes, &header)?;
                let plaintext = session.decrypt(Some(&header), &message, now)?;
                Ok((session, plaintext))
            }
            SessionMessage::Normal(_) => Err(Error::Decode(DecodeError::UnknownTag(
                SessionMessage::TAG_NORMAL,
            ))),
        }
    }

    /// Encrypts for `peer` on the active session. The advanced state is
    /// committed before the message is returned.
    ///
    /// # Errors
    /// [`Error::NoSession`], a ratchet error, or a store error (then no
    /// message is released).
    pub fn encrypt<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        peer: &DeviceAddress,
        plaintext: &[u8],
        now: u64,
    ) -> Result<Vec<u8>, Error> {
        let id = peer.to_bytes();
        let mut sessions: PeerSessions = self
            .load(Table::Sessions, &id)?
            .ok_or_else(|| Error::NoSession(peer.clone()))?;
        if !sessions.can_send() {
            return Err(Error::NoSession(peer.clone()));
        }
        let session = sessions
            .active_mut()
            .ok_or_else(|| Error::NoSession(peer.clone()))?;
        session.prune(now);
        let message = session.encrypt(rng, plaintext)?;
        let mut changes = self.changes(rng);
        changes.put(Table::Sessions, &id, &sessions)?;
        let batch = changes.batch;
        self.store.apply(batch)?;
        Ok(message.to_bytes())
    }

    /// Decrypts a message from `sender`, committing the state change only if
    /// it authenticates.
    ///
    /// # Errors
    /// Decode, identity, prekey, replay and ratchet errors; on any error the
    /// stored state is unchanged.
    pub fn decrypt<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        sender: &DeviceAddress,
        bytes: &[u8],
        now: u64,
    ) -> Result<Decrypted, Error> {
        let mut changes = self.changes(rng);
        let (plaintext, events) = self.decrypt_aside(&mut changes, sender, bytes, now)?;
        let batch = changes.batch;
        self.store.apply(batch)?;
        Ok(Decrypted { plaintext, events })
    }

    /// Decrypts a server envelope into the inbox: the plaintext, the processed
    /// envelope id and the session change are committed as one batch. An
    /// envelope id already processed is never decrypted again (its key is
    /// spent); its inbox copy is returned while the app has not confirmed it.
    ///
    /// # Errors
    /// As [`Self::decrypt`].
    pub fn receive<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        sender: &DeviceAddress,
        envelope_id: &[u8],
        bytes: &[u8],
        now: u64,
    ) -> Result<Received, Error> {
        if self
            .load::<ProcessedRecord>(Table::Processed, envelope_id)?
            .is_some()
        {
            return Ok(
                match self.load::<InboxMessage>(Table::Inbox, envelope_id)? {
                    Some(message) => Received::Unconfirmed(message),
                    None => Received::AlreadyConfirmed,
                },
            );
        }
        let mut changes = self.changes(rng);
        let (plaintext, events) = self.decrypt_aside(&mut changes, sender, bytes, now)?;
        let message = InboxMessage {
            envelope_id: envelope_id.to_vec(),
            sender: sender.clone(),
            plaintext,
            received_at: now,
        };
        changes.put(Table::Inbox, envelope_id, &message)?;
        changes.put(Table::Processed, envelope_id, &ProcessedRecord { at: now })?;
        let batch = changes.batch;
        self.store.apply(batch)?;
        Ok(Received::New { message, events })
    }

    /// Messages decrypted but not yet confirmed, oldest first.
    ///
    /// # Errors
    /// A store error.
    pub fn inbox(&self) -> Result<Vec<InboxMessage>, Error> {
        let mut out: Vec<InboxMessage> = self.open_all(Table::Inbox)?;
        out.sort_by_key(|m| m.received_at);
        Ok(out)
    }

    /// The app has kept the message: drop the inbox copy (the processed id stays).
    ///
    /// # Errors
    /// A store error.
    pub fn confirm(&mut self, envelope_id: &[u8]) -> Result<(), Error> {
        self.delete_row(Table::Inbox, envelope_id)
    }

    /// Keeps messages to send, in one batch.
    pub(crate) fn outbox_add<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        records: &[OutboxRecord],
    ) -> Result<(), Error> {
        let mut changes = self.changes(rng);
        for record in records {
            changes.put(Table::Outbox, &record.order.to_be_bytes(), record)?;
        }
        let batch = changes.batch;
        self.store.apply(batch)?;
        Ok(())
    }

    /// Forgets a message to send: the server accepted it, or it failed.
    pub(crate) fn outbox_remove(&mut self, order: u64) -> Result<(), Error> {
        self.delete_row(Table::Outbox, &order.to_be_bytes())
    }

    /// The messages to send, in queuing order.
    pub(crate) fn outbox(&self) -> Result<Vec<OutboxRecord>, Error> {
        let mut out: Vec<OutboxRecord> = self.open_all(Table::Outbox)?;
        out.sort_by_key(|r| r.order);
        Ok(out)
    }

    /// Every record of a table, in the store's order.
    fn open_all<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<T>, Error> {
        let mut out = Vec::new();
        for (row, sealed) in self.store.scan(table)? {
            out.push(self.vault.open(table, &row, &sealed)?);
        }
        Ok(out)
    }

    /// Deletes one row, alone in its batch.
    fn delete_row(&mut self, table: Table, id: &[u8]) -> Result<(), Error> {
        let mut batch = Batch::new();
        batch.delete(table, self.vault.row_key(table, id));
        self.store.apply(batch)?;
        Ok(())
    }

    /// Forgets processed envelope ids older than `max_age` seconds (the
    /// server's queue lifetime: no older envelope can be redelivered).
    /// Returns how many were removed.
    ///
    /// # Errors
    /// A store error.
    pub fn purge_processed(&mut self, now: u64, max_age: u64) -> Result<usize, Error> {
        let mut batch = Batch::new();
        for (row, sealed) in self.store.scan(Table::Processed)? {
            let rec: ProcessedRecord = self.vault.open(Table::Processed, &row, &sealed)?;
            if now.saturating_sub(rec.at) > max_age {
                batch.delete(Table::Processed, row);
            }
        }
        let n = batch.ops().len();
        self.store.apply(batch)?;
        Ok(n)
    }

    /// The safety number of the conversation with `user`, or `None` while no
    /// identity is trusted for that user.
    ///
    /// # Errors
    /// A store error.
    pub fn safety_number(&self, user: &UserId) -> Result<Option<SafetyNumber>, Error> {
        Ok(self.trusted_identity(user)?.map(|remote| {
            SafetyNumber::new(
                &self.address().user,
                &self.identity.public_key(),
                user,
                &remote,
            )
        }))
    }

    fn decrypt_aside<R: rand_core::CryptoRng + ?Sized>(
        &self,
        changes: &mut Changes<'_, R>,
        sender: &DeviceAddress,
        bytes: &[u8],
        now: u64,
    ) -> Result<(Vec<u8>, Vec<Event>), Error> {
        let id = sender.to_bytes();
        let mut sessions: PeerSessions = self.load(Table::Sessions, &id)?.unwrap_or_default();
        let mut events = Vec::new();
        let plaintext = match SessionMessage::from_bytes(bytes)? {
            SessionMessage::Normal(message) => {
                if sessions.is_empty() {
                    return Err(Error::NoSession(sender.clone()));
                }
                sessions.decrypt(&message, now)?
            }
            SessionMessage::Initial { header, message } => {
                if header.certificate.address() != sender {
                    return Err(Error::SenderMismatch);
                }
                if header.certificate.verify(&header.identity).is_err() {
                    return Err(Error::UntrustedDevice(sender.clone()));
                }
                // An identity change is reported only for a message that
                // authenticates under the new identity; nothing is stored.
                let (new_identity, change) =
                    match self.check_identity(&sender.user, &header.identity, now) {
                        Ok(new_identity) => (new_identity, None),
                        Err(Error::IdentityChanged(change)) => (None, Some(change)),
                        Err(e) => return Err(e),
                    };
                let plaintext = match sessions.by_base_key_mut(&header.base_key) {
                    // A repeat of an initial message: the session exists already.
                    Some(session) => session.decrypt(Some(&header), &message, now)?,
                    None => {
                        let mut session = self.respond(changes, &header)?;
                        let plaintext = session.decrypt(Some(&header), &message, now)?;
                        sessions.insert_received(session);
                        if let Some(record) = new_identity {
                            changes.put(
                                Table::Identities,
                                sender.user.as_str().as_bytes(),
                                &record,
                            )?;
                            events.push(Event::IdentityTrusted {
                                user: sender.user.clone(),
                                identity: record.identity,
                            });
                        }
                        // The certificate was verified above.
                        self.note_device(changes, &header.certificate, &mut events)?;
                        plaintext
                    }
                };
                if let Some(change) = change {
                    return Err(Error::IdentityChanged(change));
                }
                plaintext
            }
        };
        changes.put(Table::Sessions, &id, &sessions)?;
        Ok((plaintext, events))
    }

    /// Finds the prekeys an initial message names, adds their consumption (or
    /// the replay-cache entry) to `changes`, and makes the responder session.
    fn respond<R: rand_core::CryptoRng + ?Sized>(
        &self,
        changes: &mut Changes<'_, R>,
        header: &InitialHeader,
    ) -> Result<SessionState, Error> {
        let (medium, one_time) = match &header.prekeys {
            PreKeyChoice::OneTime { signed, one_time }
            | PreKeyChoice::PqOneTime {
                signed, one_time, ..
            } => {
                let (signed, one_time) = (*signed, *one_time);
                let medium = self
                    .prekeys
                    .find(PreKeyKind::Signed, signed)
                    .ok_or(Error::UnknownSignedPreKey(signed))?;
                let otk: OneTimeRecord = self
                    .load(Table::OneTimePreKeys, &one_time.0.to_be_bytes())?
                    .ok_or(Error::UnknownOneTimePreKey(one_time))?;
                changes.delete(Table::OneTimePreKeys, &one_time.0.to_be_bytes());
                (medium, Some(otk))
            }
            PreKeyChoice::LastResort(id)
            | PreKeyChoice::PqLastResort {
                last_resort: id, ..
            } => {
                let id = *id;
                let medium = self
                    .prekeys
                    .find(PreKeyKind::LastResort, id)
                    .ok_or(Error::UnknownLastResortPreKey(id))?;
                let replay = replay_id(id, &header.base_key);
                if self
                    .load::<ReplayRecord>(Table::LastResortReplay, &replay)?
                    .is_some()
                {
                    return Err(Error::ReplayedInitialMessage);
                }
                let record = ReplayRecord {
                    last_resort: id,
                    base_key: header.base_key,
                };
                changes.put(Table::LastResortReplay, &replay, &record)?;
                (medium, None)
            }
        };
        let kem_secret = match header.prekeys.kem() {
            None => None,
            Some(kem) => match kem.kind {
                PqPreKeyKind::OneTime => {
                    let row = pq_one_time_id(kem.id);
                    let record: PqOneTimeRecord = self
                        .load(Table::OneTimePreKeys, &row)?
                        .ok_or(Error::UnknownPqOneTimePreKey(kem.id))?;
                    changes.delete(Table::OneTimePreKeys, &row);
                    Some(record.seed.decapsulate(&kem.ciphertext))
                }
                PqPreKeyKind::LastResort => {
                    let key = self
                        .pq_prekeys
                        .find(kem.id)
                        .ok_or(Error::UnknownPqLastResortPreKey(kem.id))?;
                    // Signal's PQXDH asks to refuse a (ciphertext, PQ
                    // last-resort prekey) pair seen before.
                    let replay = pq_replay_id(kem.id, &kem.ciphertext);
                    if self
                        .load::<ReplayRecord>(Table::LastResortReplay, &replay)?
                        .is_some()
                    {
                        return Err(Error::ReplayedInitialMessage);
                    }
                    let record = ReplayRecord {
                        last_resort: kem.id,
                        base_key: header.base_key,
                    };
                    changes.put(Table::LastResortReplay, &replay, &record)?;
                    Some(key.seed.decapsulate(&kem.ciphertext))
                }
            },
        };
        let agreement = x3dh::respond(
            &self.identity,
            self.address(),
            header,
            &medium.secret,
            one_time.as_ref().map(|o| &o.secret),
            kem_secret.as_ref(),
        )?;
        Ok(SessionState::responder(
            header,
            agreement.shared_secret,
            agreement.associated_data,
            medium.secret.clone(),
            *medium.public.key(),
        ))
    }
}
