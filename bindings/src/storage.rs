//! Where a device keeps its state: the SDK's SQLite store, memory, or a
//! store the app provides through [`AppStorage`].

use std::sync::Arc;

use hush::store::{Batch, MemoryStore, Op, Rows, SqliteStore, Store, StoreError, Table};

use crate::HushError;

/// A row of a table, as [`AppStorage::scan`] returns it.
#[derive(Debug, Clone, uniffi::Record)]
pub struct StoredRow {
    /// The row key.
    pub key: Vec<u8>,
    /// The sealed value.
    pub value: Vec<u8>,
}

/// One change of a batch given to [`AppStorage::apply`].
#[derive(Debug, Clone, uniffi::Enum)]
pub enum StoreOp {
    /// Insert or replace the row `(table, key)`.
    Put {
        /// The table id (0 to 9; keep it as an opaque number).
        table: u8,
        /// The row key.
        key: Vec<u8>,
        /// The value: sealed by the SDK (AES-256-GCM under the storage key),
        /// except for the one bookkeeping row of table 0.
        value: Vec<u8>,
    },
    /// Remove the row `(table, key)`; an absent row is fine.
    Delete {
        /// The table id.
        table: u8,
        /// The row key.
        key: Vec<u8>,
    },
}

/// Storage the app provides, for apps that keep everything in their own
/// database. It is a key-value map from `(table, key)` to a value; the SDK
/// seals every value before it gets here.
///
/// The contract, which the SDK's safety depends on:
/// - [`Self::apply`] applies the whole batch or nothing (one transaction),
///   and is durable when it returns: a crash after it returned must not lose
///   the batch, and a crash during it must leave none of it. A batch that
///   was only partly applied can make the device reuse a one-time key or
///   lose a session.
/// - [`Self::get`] and [`Self::scan`] see every batch applied before.
/// - One device's storage is used by one `Device` at a time.
///
/// Raise `HushError.Storage` (or any exception) to fail a call; the SDK
/// then keeps nothing of the operation that caused it.
#[uniffi::export(with_foreign)]
pub trait AppStorage: Send + Sync {
    /// The value of the row, or none.
    fn get(&self, table: u8, key: Vec<u8>) -> Result<Option<Vec<u8>>, HushError>;
    /// Every row of the table, in any order.
    fn scan(&self, table: u8) -> Result<Vec<StoredRow>, HushError>;
    /// Applies every change of the batch, in order, atomically and durably.
    fn apply(&self, batch: Vec<StoreOp>) -> Result<(), HushError>;
}

/// The stores a [`crate::Device`] can run on.
pub(crate) enum DeviceStore {
    Sqlite(SqliteStore),
    Memory(MemoryStore),
    App(Arc<dyn AppStorage>),
}

impl std::fmt::Debug for DeviceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceStore::Sqlite(_) => "DeviceStore::Sqlite",
            DeviceStore::Memory(_) => "DeviceStore::Memory",
            DeviceStore::App(_) => "DeviceStore::App",
        })
    }
}

fn backend(e: HushError) -> StoreError {
    StoreError::Backend(Box::new(e))
}

impl Store for DeviceStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            DeviceStore::Sqlite(s) => s.get(table, key),
            DeviceStore::Memory(s) => s.get(table, key),
            DeviceStore::App(app) => app.get(table.id(), key.to_vec()).map_err(backend),
        }
    }

    fn scan(&self, table: Table) -> Result<Rows, StoreError> {
        match self {
            DeviceStore::Sqlite(s) => s.scan(table),
            DeviceStore::Memory(s) => s.scan(table),
            DeviceStore::App(app) => Ok(app
                .scan(table.id())
                .map_err(backend)?
                .into_iter()
                .map(|row| (row.key, row.value))
                .collect()),
        }
    }

    fn apply(&mut self, batch: Batch) -> Result<(), StoreError> {
        match self {
            DeviceStore::Sqlite(s) => s.apply(batch),
            DeviceStore::Memory(s) => s.apply(batch),
            DeviceStore::App(app) => {
                if batch.is_empty() {
                    return Ok(());
                }
                let ops = batch
                    .into_ops()
                    .into_iter()
                    .map(|op| match op {
                        Op::Put { table, key, value } => StoreOp::Put {
                            table: table.id(),
                            key,
                            value,
                        },
                        Op::Delete { table, key } => StoreOp::Delete {
                            table: table.id(),
                            key,
                        },
                    })
                    .collect();
                app.apply(ops).map_err(backend)
            }
        }
    }
}
