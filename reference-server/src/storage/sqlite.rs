//! The sqlite backend.
pub struct SqliteStorage;
