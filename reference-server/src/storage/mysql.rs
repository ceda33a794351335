//! The mysql backend.
pub struct MysqlStorage;
