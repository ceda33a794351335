//! Durable server state behind one trait, with two backends.
//!
//! [`Storage`] is everything the relay keeps across restarts: accounts and
//! their devices, link permissions, prekeys, the store-and-forward queue,
//! push tokens and the index of uploaded blobs (the blob bytes live in a
//! [`BlobStore`](crate::blob::BlobStore)). Every method that changes state
//! commits before it returns, so whatever a client was told has been
//! accepted survives a crash of the server.
//!
//! Two backends pass the same conformance suite (`tests/conformance`):
//! [`SqliteStorage`] (the embedded default) and [`MysqlStorage`]
//! (`mysql_async`, pooled; MariaDB 10.6+ and MySQL 8). [`AnyStorage`] picks
//! one at run time.
//!
//! Times are Unix seconds. Keys, certificates and envelopes are stored in the
//! SDK's own byte encodings and decoded again on the way out; a row that no
//! longer decodes is reported as [`StorageError::Corrupt`].

use std::future::Future;

use hush::keys::{
    DeviceAddress, DeviceAuthKey, DeviceCertificate, DeviceId, IdentityKey, OneTimePreKey,
    SignedPqPreKey, SignedPreKey, UserId,
};
use hush::wire::protocol::{BlobId, Delivery, EnvelopeId, LinkToken};
use thiserror::Error;

mod decode;
pub mod mysql;
pub mod sqlite;

pub use mysql::MysqlStorage;
pub use sqlite::SqliteStorage;

/// Why a storage operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StorageError {
    /// An account with this user id exists.
    #[error("the user id is taken")]
    UserTaken,
    /// No account with this user id.
    #[error("no such user")]
    NoSuchUser,
    /// No such device in the account.
    #[error("no such device")]
    NoSuchDevice,
    /// The account has the maximum number of devices.
    #[error("the account has {0} devices, the maximum")]
    DeviceLimit(usize),
    /// The link permission is unknown, used, expired or of another account.
    #[error("the link permission is unknown, used or expired")]
    PermissionInvalid,
    /// A stored row does not decode.
    #[error("corrupt row in {0}")]
    Corrupt(&'static str),
    /// The SQLite backend failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The MySQL backend failed.
    #[error("mysql: {0}")]
    Mysql(#[from] mysql_async::Error),
    /// A blocking task of the backend did not complete.
    #[error("storage task failed: {0}")]
    Task(String),
    /// The database schema is newer than this server knows.
    #[error("database schema version {found} is newer than this server's {known}")]
    SchemaTooNew {
        /// The version in the database.
        found: u32,
        /// The newest version this server knows.
        known: u32,
    },
}

/// A device of an account as the server knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The device id (assigned by the server, never reused within an account).
    pub device: DeviceId,
    /// The key the device logs in with.
    pub auth_key: DeviceAuthKey,
    /// The certificate, once the device has published it.
    pub certificate: Option<DeviceCertificate>,
    /// When the device was registered.
    pub created_at: u64,
}

/// The prekeys handed out for one device: the current signed and last-resort
/// prekeys, the PQ last-resort prekey if the device published one and, while
/// any remain, one one-time prekey and one PQ one-time prekey, which are
/// deleted in the same transaction (no two callers ever receive the same one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenPreKeys {
    /// The signed prekey.
    pub signed: SignedPreKey,
    /// The last-resort prekey.
    pub last_resort: SignedPreKey,
    /// A one-time prekey, consumed by this call.
    pub one_time: Option<OneTimePreKey>,
    /// The PQ last-resort prekey, which the bundle carries when no PQ
    /// one-time prekey is left.
    pub pq_last_resort: Option<SignedPqPreKey>,
    /// A PQ one-time prekey, consumed by this call.
    pub pq_one_time: Option<SignedPqPreKey>,
}

impl TakenPreKeys {
    /// The PQ prekey for the bundle: the PQ one-time prekey, or else the PQ
    /// last-resort prekey.
    pub fn pq_prekey(&self) -> Option<&SignedPqPreKey> {
        self.pq_one_time.as_ref().or(self.pq_last_resort.as_ref())
    }
}

/// An envelope to queue for one recipient device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEnvelope {
    /// The recipient device.
    pub recipient: DeviceAddress,
    /// What is delivered: id, authenticated sender, server time, envelope.
    pub delivery: Delivery,
}

/// A queued envelope and its position in its recipient's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEnvelope {
    /// Position in the queue: increases with every envelope queued; the order
    /// of delivery.
    pub seq: u64,
    /// What is delivered.
    pub delivery: Delivery,
}

/// What an acknowledgement removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AckOutcome {
    /// Envelopes of the acknowledging device that were deleted.
    pub removed: u64,
    /// Ids that exist in another device's queue (left untouched).
    pub foreign: u64,
}

/// An uploaded blob as the index knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRecord {
    /// The blob.
    pub blob: BlobId,
    /// The device that uploaded it.
    pub owner: DeviceAddress,
    /// Its size in bytes.
    pub size: u64,
    /// When the upload completed.
    pub created_at: u64,
}

/// Durable server state. See the [module docs](self).
///
/// Every method is one transaction: it either happens completely or not at
/// all, and it is committed before the returned future completes.
pub trait Storage: Send + Sync + 'static {
    /// Applies the embedded migrations that the database does not have yet;
    /// returns the schema version now in place.
    fn migrate(&self) -> impl Future<Output = Result<u32, StorageError>> + Send;

    /// Creates an account with its first device, which gets device id 1.
    ///
    /// # Errors
    /// [`StorageError::UserTaken`].
    fn create_account(
        &self,
        user: &UserId,
        identity: &IdentityKey,
        auth_key: &DeviceAuthKey,
        now: u64,
    ) -> impl Future<Output = Result<DeviceId, StorageError>> + Send;

    /// The account identity of `user`, if the account exists.
    fn identity(
        &self,
        user: &UserId,
    ) -> impl Future<Output = Result<Option<IdentityKey>, StorageError>> + Send;

    /// Stores a single-use permission to link a device to the account of
    /// `issuer`, the device that asked for it. The permission is revoked
    /// with that device (removed, or its account's identity replaced).
    ///
    /// # Errors
    /// [`StorageError::NoSuchDevice`] if the issuer does not exist (any more).
    fn add_link_permission(
        &self,
        issuer: &DeviceAddress,
        token: &LinkToken,
        expires_at: u64,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Consumes a link permission of `user` and registers a new device with
    /// `auth_key` under the next unused device id, in one transaction.
    /// A permission works once, and only while `now < expires_at`.
    ///
    /// # Errors
    /// [`StorageError::PermissionInvalid`], [`StorageError::DeviceLimit`]
    /// (the permission is not consumed then).
    fn add_linked_device(
        &self,
        user: &UserId,
        token: &LinkToken,
        auth_key: &DeviceAuthKey,
        max_devices: usize,
        now: u64,
    ) -> impl Future<Output = Result<DeviceId, StorageError>> + Send;

    /// One device.
    fn device(
        &self,
        address: &DeviceAddress,
    ) -> impl Future<Output = Result<Option<DeviceRecord>, StorageError>> + Send;

    /// Every device of `user`, by device id; empty for an unknown user.
    fn devices(
        &self,
        user: &UserId,
    ) -> impl Future<Output = Result<Vec<DeviceRecord>, StorageError>> + Send;

    /// Stores the device's certificate (the caller has verified it).
    ///
    /// # Errors
    /// [`StorageError::NoSuchDevice`].
    fn set_certificate(
        &self,
        address: &DeviceAddress,
        certificate: &DeviceCertificate,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Removes a device with its prekeys, queue and push token; returns
    /// whether it existed.
    fn remove_device(
        &self,
        address: &DeviceAddress,
    ) -> impl Future<Output = Result<bool, StorageError>> + Send;

    /// Sets a new account identity and removes every device of the account
    /// but `keep` (with their prekeys, queues and push tokens); returns the
    /// removed device ids. `keep`'s certificate and prekeys are cleared too:
    /// they were signed by the old identity. Pending link permissions are
    /// revoked (a removed device may have issued them).
    ///
    /// # Errors
    /// [`StorageError::NoSuchDevice`].
    fn replace_identity(
        &self,
        keep: &DeviceAddress,
        identity: &IdentityKey,
    ) -> impl Future<Output = Result<Vec<DeviceId>, StorageError>> + Send;

    /// Deletes an account with every row that belongs to it; returns the
    /// blobs its devices uploaded, whose index rows are deleted too (the
    /// caller deletes their bytes).
    fn delete_account(
        &self,
        user: &UserId,
    ) -> impl Future<Output = Result<Vec<BlobId>, StorageError>> + Send;

    /// Publishes prekeys of a device: replaces the signed and the last-resort
    /// prekey when given, and adds the one-time prekeys (an id the device
    /// already has is ignored). The caller has verified the signatures.
    ///
    /// # Errors
    /// [`StorageError::NoSuchDevice`].
    fn publish_prekeys(
        &self,
        address: &DeviceAddress,
        signed: Option<&SignedPreKey>,
        last_resort: Option<&SignedPreKey>,
        one_time: &[OneTimePreKey],
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Publishes PQ prekeys of a device: replaces the PQ last-resort prekey
    /// when given, and adds the PQ one-time prekeys (an id the device already
    /// has is ignored). The caller has verified their kinds and signatures.
    ///
    /// # Errors
    /// [`StorageError::NoSuchDevice`].
    fn publish_pq_prekeys(
        &self,
        address: &DeviceAddress,
        last_resort: Option<&SignedPqPreKey>,
        one_time: &[SignedPqPreKey],
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// The device's prekeys for one new session, consuming one one-time
    /// prekey and one PQ one-time prekey atomically, lowest id first (see
    /// [`TakenPreKeys`]). `None` if the device does not exist or has not
    /// published a signed and a last-resort prekey.
    fn take_prekeys(
        &self,
        address: &DeviceAddress,
    ) -> impl Future<Output = Result<Option<TakenPreKeys>, StorageError>> + Send;

    /// How many one-time prekeys the device has left.
    fn one_time_prekey_count(
        &self,
        address: &DeviceAddress,
    ) -> impl Future<Output = Result<u64, StorageError>> + Send;

    /// How many PQ one-time prekeys the device has left.
    fn pq_one_time_prekey_count(
        &self,
        address: &DeviceAddress,
    ) -> impl Future<Output = Result<u64, StorageError>> + Send;

    /// Queues envelopes, all or none, each after everything already queued
    /// for its recipient.
    ///
    /// # Errors
    /// [`StorageError::NoSuchDevice`] if a recipient does not exist (a device
    /// removed since the caller checked the device list); nothing is queued
    /// then.
    fn enqueue(
        &self,
        envelopes: &[NewEnvelope],
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Up to `limit` envelopes queued for `recipient` with `seq > after`, in
    /// queue order.
    fn queued(
        &self,
        recipient: &DeviceAddress,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<QueuedEnvelope>, StorageError>> + Send;

    /// Deletes the listed envelopes from `recipient`'s queue; ids in another
    /// device's queue are counted in [`AckOutcome::foreign`] and kept.
    fn ack(
        &self,
        recipient: &DeviceAddress,
        ids: &[EnvelopeId],
    ) -> impl Future<Output = Result<AckOutcome, StorageError>> + Send;

    /// Envelopes queued in all, for the metrics.
    fn queue_depth(&self) -> impl Future<Output = Result<u64, StorageError>> + Send;

    /// Deletes envelopes accepted before `before` (the queue's TTL); returns
    /// how many.
    fn purge_envelopes(
        &self,
        before: u64,
    ) -> impl Future<Output = Result<u64, StorageError>> + Send;

    /// Deletes link permissions that expired at or before `now` (a spent
    /// link also removes its account's expired ones; this catches accounts
    /// that never link again); returns how many.
    fn purge_link_permissions(
        &self,
        now: u64,
    ) -> impl Future<Output = Result<u64, StorageError>> + Send;

    /// Sets or clears the device's push token.
    ///
    /// # Errors
    /// [`StorageError::NoSuchDevice`].
    fn set_push_token(
        &self,
        address: &DeviceAddress,
        token: Option<&str>,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// The device's push token.
    fn push_token(
        &self,
        address: &DeviceAddress,
    ) -> impl Future<Output = Result<Option<String>, StorageError>> + Send;

    /// Records a completed upload.
    fn add_blob(&self, blob: &BlobRecord) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// One blob's index row.
    fn blob(
        &self,
        blob: &BlobId,
    ) -> impl Future<Output = Result<Option<BlobRecord>, StorageError>> + Send;

    /// The bytes of every blob in the index that a device of `user` uploaded.
    fn blob_bytes(&self, user: &UserId) -> impl Future<Output = Result<u64, StorageError>> + Send;

    /// Deletes the index rows of blobs created before `before`; returns their
    /// ids (the caller deletes their bytes).
    fn purge_blobs(
        &self,
        before: u64,
    ) -> impl Future<Output = Result<Vec<BlobId>, StorageError>> + Send;
}

/// One of the two backends, chosen at run time (by configuration).
#[derive(Debug, Clone)]
pub enum AnyStorage {
    /// An SQLite database file.
    Sqlite(SqliteStorage),
    /// A MySQL or MariaDB database.
    Mysql(MysqlStorage),
}

impl From<SqliteStorage> for AnyStorage {
    fn from(storage: SqliteStorage) -> Self {
        Self::Sqlite(storage)
    }
}

impl From<MysqlStorage> for AnyStorage {
    fn from(storage: MysqlStorage) -> Self {
        Self::Mysql(storage)
    }
}

/// Forwards one [`Storage`] method to the backend in use.
macro_rules! delegate {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self {
            AnyStorage::Sqlite(s) => s.$method($($arg),*).await,
            AnyStorage::Mysql(s) => s.$method($($arg),*).await,
        }
    };
}

impl Storage for AnyStorage {
    async fn migrate(&self) -> Result<u32, StorageError> {
        delegate!(self.migrate())
    }

    async fn create_account(
        &self,
        user: &UserId,
        identity: &IdentityKey,
        auth_key: &DeviceAuthKey,
        now: u64,
    ) -> Result<DeviceId, StorageError> {
        delegate!(self.create_account(user, identity, auth_key, now))
    }

    async fn identity(&self, user: &UserId) -> Result<Option<IdentityKey>, StorageError> {
        delegate!(self.identity(user))
    }

    async fn add_link_permission(
        &self,
        issuer: &DeviceAddress,
        token: &LinkToken,
        expires_at: u64,
    ) -> Result<(), StorageError> {
        delegate!(self.add_link_permission(issuer, token, expires_at))
    }

    async fn add_linked_device(
        &self,
        user: &UserId,
        token: &LinkToken,
        auth_key: &DeviceAuthKey,
        max_devices: usize,
        now: u64,
    ) -> Result<DeviceId, StorageError> {
        delegate!(self.add_linked_device(user, token, auth_key, max_devices, now))
    }

    async fn device(&self, address: &DeviceAddress) -> Result<Option<DeviceRecord>, StorageError> {
        delegate!(self.device(address))
    }

    async fn devices(&self, user: &UserId) -> Result<Vec<DeviceRecord>, StorageError> {
        delegate!(self.devices(user))
    }

    async fn set_certificate(
        &self,
        address: &DeviceAddress,
        certificate: &DeviceCertificate,
    ) -> Result<(), StorageError> {
        delegate!(self.set_certificate(address, certificate))
    }

    async fn remove_device(&self, address: &DeviceAddress) -> Result<bool, StorageError> {
        delegate!(self.remove_device(address))
    }

    async fn replace_identity(
        &self,
        keep: &DeviceAddress,
        identity: &IdentityKey,
    ) -> Result<Vec<DeviceId>, StorageError> {
        delegate!(self.replace_identity(keep, identity))
    }

    async fn delete_account(&self, user: &UserId) -> Result<Vec<BlobId>, StorageError> {
        delegate!(self.delete_account(user))
    }

    async fn publish_prekeys(
        &self,
        address: &DeviceAddress,
        signed: Option<&SignedPreKey>,
        last_resort: Option<&SignedPreKey>,
        one_time: &[OneTimePreKey],
    ) -> Result<(), StorageError> {
        delegate!(self.publish_prekeys(address, signed, last_resort, one_time))
    }

    async fn publish_pq_prekeys(
        &self,
        address: &DeviceAddress,
        last_resort: Option<&SignedPqPreKey>,
        one_time: &[SignedPqPreKey],
    ) -> Result<(), StorageError> {
        delegate!(self.publish_pq_prekeys(address, last_resort, one_time))
    }

    async fn take_prekeys(
        &self,
        address: &DeviceAddress,
    ) -> Result<Option<TakenPreKeys>, StorageError> {
        delegate!(self.take_prekeys(address))
    }

    async fn pq_one_time_prekey_count(&self, address: &DeviceAddress) -> Result<u64, StorageError> {
        delegate!(self.pq_one_time_prekey_count(address))
    }

    async fn one_time_prekey_count(&self, address: &DeviceAddress) -> Result<u64, StorageError> {
        delegate!(self.one_time_prekey_count(address))
    }

    async fn enqueue(&self, envelopes: &[NewEnvelope]) -> Result<(), StorageError> {
        delegate!(self.enqueue(envelopes))
    }

    async fn queued(
        &self,
        recipient: &DeviceAddress,
        after: u64,
        limit: usize,
    ) -> Result<Vec<QueuedEnvelope>, StorageError> {
        delegate!(self.queued(recipient, after, limit))
    }

    async fn ack(
        &self,
        recipient: &DeviceAddress,
        ids: &[EnvelopeId],
    ) -> Result<AckOutcome, StorageError> {
        delegate!(self.ack(recipient, ids))
    }

    async fn queue_depth(&self) -> Result<u64, StorageError> {
        delegate!(self.queue_depth())
    }

    async fn purge_envelopes(&self, before: u64) -> Result<u64, StorageError> {
        delegate!(self.purge_envelopes(before))
    }

    async fn purge_link_permissions(&self, now: u64) -> Result<u64, StorageError> {
        delegate!(self.purge_link_permissions(now))
    }

    async fn set_push_token(
        &self,
        address: &DeviceAddress,
        token: Option<&str>,
    ) -> Result<(), StorageError> {
        delegate!(self.set_push_token(address, token))
    }

    async fn push_token(&self, address: &DeviceAddress) -> Result<Option<String>, StorageError> {
        delegate!(self.push_token(address))
    }

    async fn add_blob(&self, blob: &BlobRecord) -> Result<(), StorageError> {
        delegate!(self.add_blob(blob))
    }

    async fn blob(&self, blob: &BlobId) -> Result<Option<BlobRecord>, StorageError> {
        delegate!(self.blob(blob))
    }

    async fn blob_bytes(&self, user: &UserId) -> Result<u64, StorageError> {
        delegate!(self.blob_bytes(user))
    }

    async fn purge_blobs(&self, before: u64) -> Result<Vec<BlobId>, StorageError> {
        delegate!(self.purge_blobs(before))
    }
}
