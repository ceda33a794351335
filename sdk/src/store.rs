//! The persistence boundary.
//!
//! A [`Store`] is a small transactional key-value store with a fixed set of
//! [`Table`]s. Hush hands it only **sealed** values — versioned postcard
//! encrypted with AES-256-GCM under the app's 32-byte [`StorageKey`], with the
//! table, row key and version bound as associated data — and row keys that are
//! keyed hashes of peer ids. A store therefore never sees a secret or a peer
//! id in the clear, and a value copied to another row fails to open.
//!
//! Every state change of one operation (an encrypt, a decrypt, a new session)
//! is one [`Batch`], and [`Store::apply`] must apply a batch **atomically**:
//! all of it or none of it, also across a crash. That is the whole contract an
//! app-provided store has to honour.
//!
//! Two stores ship: [`MemoryStore`] for tests and [`SqliteStore`] (feature
//! `sqlite`, on by default).

mod memory;
#[cfg(feature = "sqlite")]
mod sqlite;
pub(crate) mod vault;

use std::fmt;

use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop};

pub use memory::MemoryStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

/// The tables of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Table {
    /// Unsealed bookkeeping: the storage-key check value.
    Meta,
    /// This device's account: identity, device keys, signed prekeys.
    Account,
    /// Private one-time prekeys, one row each.
    OneTimePreKeys,
    /// Sessions, one row per peer device.
    Sessions,
    /// Trusted account identities, one row per user.
    Identities,
    /// Known devices, one row per user.
    Devices,
    /// Base keys seen with a last-resort prekey (replay cache).
    LastResortReplay,
    /// Server envelope ids already decrypted.
    Processed,
    /// Decrypted messages the app has not yet confirmed.
    Inbox,
    /// Messages to send that the server has not yet accepted.
    Outbox,
}

impl Table {
    /// Every table, in id order.
    pub const ALL: [Table; 10] = [
        Table::Meta,
        Table::Account,
        Table::OneTimePreKeys,
        Table::Sessions,
        Table::Identities,
        Table::Devices,
        Table::LastResortReplay,
        Table::Processed,
        Table::Inbox,
        Table::Outbox,
    ];

    /// The stable numeric id of the table (used in associated data and on disk).
    pub const fn id(self) -> u8 {
        match self {
            Table::Meta => 0,
            Table::Account => 1,
            Table::OneTimePreKeys => 2,
            Table::Sessions => 3,
            Table::Identities => 4,
            Table::Devices => 5,
            Table::LastResortReplay => 6,
            Table::Processed => 7,
            Table::Inbox => 8,
            Table::Outbox => 9,
        }
    }

    /// The table with this id.
    pub fn from_id(id: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.id() == id)
    }
}

/// One change in a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace a row.
    Put {
        /// The table.
        table: Table,
        /// The row key.
        key: Vec<u8>,
        /// The sealed value.
        value: Vec<u8>,
    },
    /// Remove a row (absent rows are fine).
    Delete {
        /// The table.
        table: Table,
        /// The row key.
        key: Vec<u8>,
    },
}

/// Changes that must be applied all together or not at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(Op::Put { table, key, value });
    }

    /// Adds a delete.
    pub fn delete(&mut self, table: Table, key: Vec<u8>) {
        self.ops.push(Op::Delete { table, key });
    }

    /// The changes, in order (a later change to a row wins).
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Takes the changes.
    pub fn into_ops(self) -> Vec<Op> {
        self.ops
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Errors of the storage layer.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The storage key is not the one this store was created with.
    #[error("wrong storage key")]
    WrongKey,
    /// A value failed to open or decode: corrupted, truncated, or moved to another row.
    #[error("corrupted value in table {0:?}")]
    Corrupted(Table),
    /// A value was written by a newer version of Hush.
    #[error("unsupported record version {0}")]
    UnsupportedVersion(u8),
    /// The store holds no account.
    #[error("the store holds no account")]
    NoAccount,
    /// The store already holds an account.
    #[error("the store already holds an account")]
    AccountExists,
    /// The store is open in another instance (one instance per store).
    #[error("the store is in use by another instance")]
    Locked,
    /// The backend failed (I/O, SQLite, an app-provided store).
    #[error("storage backend: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Rows of one table: `(row key, sealed value)` pairs.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// A transactional key-value store of sealed values.
///
/// Implementations must apply each [`Batch`] atomically and durably: after
/// `apply` returns `Ok`, the whole batch survives a crash; if it returns `Err`
/// or the process dies during the call, none of it is visible afterwards.
///
/// One [`SessionManager`](crate::SessionManager) at a time may use a store:
/// each operation reads, computes and then writes whole rows, so two
/// instances would overwrite each other's changes (and could revive a spent
/// message key). Stores should refuse a second user, as [`SqliteStore`] does.
pub trait Store {
    /// Reads one row.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the backend fails.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Reads every row of a table.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the backend fails.
    fn scan(&self, table: Table) -> Result<Rows, StoreError>;

    /// Applies a batch atomically.
    ///
    /// # Errors
    /// [`StoreError::Backend`]; the store is then unchanged.
    fn apply(&mut self, batch: Batch) -> Result<(), StoreError>;
}

impl<S: Store + ?Sized> Store for &mut S {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).get(table, key)
    }
    fn scan(&self, table: Table) -> Result<Rows, StoreError> {
        (**self).scan(table)
    }
    fn apply(&mut self, batch: Batch) -> Result<(), StoreError> {
        (**self).apply(batch)
    }
}

impl<S: Store + ?Sized> Store for Box<S> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).get(table, key)
    }
    fn scan(&self, table: Table) -> Result<Rows, StoreError> {
        (**self).scan(table)
    }
    fn apply(&mut self, batch: Batch) -> Result<(), StoreError> {
        (**self).apply(batch)
    }
}

/// The app's 32-byte storage key (keep it in the OS keystore).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct StorageKey([u8; 32]);

impl StorageKey {
    /// Wraps key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A fresh random key.
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut k = [0u8; 32];
        rng.fill_bytes(&mut k);
        Self(k)
    }

    /// The key bytes, to store in the OS keystore.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self(_) = self;
        f.write_str("StorageKey(<redacted>)")
    }
}
