//! An in-memory [`Store`], for tests and ephemeral use.

use std::collections::BTreeMap;

use super::{Batch, Op, Rows, Store, StoreError, Table};

/// A [`Store`] in a `BTreeMap`. Cloning it snapshots the whole store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStore {
    rows: BTreeMap<(Table, Vec<u8>), Vec<u8>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of rows in all tables.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Mutable access to raw rows, for tests that corrupt or move values.
    pub fn rows_mut(&mut self) -> &mut BTreeMap<(Table, Vec<u8>), Vec<u8>> {
        &mut self.rows
    }
}

impl Store for MemoryStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.rows.get(&(table, key.to_vec())).cloned())
    }

    fn scan(&self, table: Table) -> Result<Rows, StoreError> {
        Ok(self
            .rows
            .range((table, Vec::new())..)
            .take_while(|((t, _), _)| *t == table)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn apply(&mut self, batch: Batch) -> Result<(), StoreError> {
        for op in batch.into_ops() {
            match op {
                Op::Put { table, key, value } => {
                    self.rows.insert((table, key), value);
                }
                Op::Delete { table, key } => {
                    self.rows.remove(&(table, key));
                }
            }
        }
        Ok(())
    }
}
