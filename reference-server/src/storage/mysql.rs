//! The MySQL backend: a pooled `mysql_async` client for MySQL 8 and MariaDB
//! 10.6+ (InnoDB), for deployments where several relay nodes share one
//! database.
//!
//! Every operation of more than one statement runs in a transaction that is
//! retried when InnoDB picks it as a deadlock victim. Locks are taken in one
//! order (link permission, account, devices, then the rows below a device), and:
//!
//! * [`take_prekeys`](Storage::take_prekeys) locks the lowest free one-time
//!   prekey with `FOR UPDATE SKIP LOCKED` and deletes it in the same
//!   transaction: concurrent takers never wait for each other and never get
//!   the same key;
//! * [`enqueue`](Storage::enqueue) locks the recipient devices' rows before
//!   inserting, so envelopes for one device commit in the order of their
//!   sequence numbers and a reader paging with `seq > after` skips none.
//!
//! Connections run with `sql_mode = STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION`
//! and report matched rather than changed rows (`CLIENT_FOUND_ROWS`).

use std::fmt;

use hush::keys::{
    DeviceAddress, DeviceAuthKey, DeviceCertificate, DeviceId, IdentityKey, OneTimePreKey,
    SignedPqPreKey, SignedPreKey, UserId,
};
use hush::wire::protocol::{BlobId, Delivery, EnvelopeId, LinkToken};
use mysql_async::prelude::{FromValue, Queryable};
use mysql_async::{
    Conn, IsolationLevel, Opts, OptsBuilder, Params, Pool, PoolConstraints, Row, Transaction,
    TxOpts, Value,
};

use super::decode::{self, Table};
use super::{
    AckOutcome, BlobRecord, DeviceRecord, NewEnvelope, QueuedEnvelope, Storage, StorageError,
    TakenPreKeys,
};

/// The embedded migrations, in order: version `i + 1` is `MIGRATIONS[i]`.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/mysql/0001_init.sql"),
    include_str!("migrations/mysql/0002_link_permission_issuer.sql"),
    include_str!("migrations/mysql/0003_pq_prekeys.sql"),
];

/// The advisory lock that keeps two servers from migrating one database at
/// once. Locks are server-wide, so the name includes (a hash of) the
/// database's name; lock names are at most 64 characters.
const MIGRATION_LOCK: &str = "CONCAT('hush-server.migrate.', LEFT(SHA2(DATABASE(), 256), 40))";
/// Seconds to wait for another server's migration.
const MIGRATION_LOCK_WAIT: u32 = 60;

/// How often a transaction chosen as a deadlock victim is run again.
const DEADLOCK_RETRIES: u32 = 3;

/// Rows per multi-row insert of one-time prekeys.
const PREKEY_CHUNK: usize = 100;
/// Ids per statement in `ack`.
const ACK_CHUNK: usize = 256;

/// `ER_DUP_ENTRY`.
const DUPLICATE_KEY: u16 = 1062;
/// `ER_LOCK_DEADLOCK`.
const DEADLOCK: u16 = 1213;

/// Durable state in a MySQL or MariaDB database. Cheap to clone (clones
/// share the pool).
///
/// [`migrate`](Storage::migrate) must run once before anything else.
#[derive(Clone)]
pub struct MysqlStorage {
    pool: Pool,
    pool_size: usize,
}

impl fmt::Debug for MysqlStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlStorage")
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl MysqlStorage {
    /// Connects to the database named by `url`
    /// (`mysql://user:password@host:3306/database`) with a pool of at most
    /// `pool_size` connections (at least one), and checks that one
    /// connection can be made.
    ///
    /// # Errors
    /// [`StorageError::Mysql`] for a malformed URL or a failed connection.
    pub async fn connect(url: &str, pool_size: usize) -> Result<Self, StorageError> {
        let opts = Opts::from_url(url).map_err(mysql_async::Error::from)?;
        let pool_size = pool_size.max(1);
        let constraints = PoolConstraints::new(1, pool_size)
            .ok_or_else(|| StorageError::Task("mysql: invalid pool size".to_owned()))?;
        let pool_opts = opts.pool_opts().clone().with_constraints(constraints);
        let opts = OptsBuilder::from_opts(opts)
            .pool_opts(pool_opts)
            .client_found_rows(true)
            .setup(vec![
                "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'",
            ]);
        let pool = Pool::new(opts);
        drop(pool.get_conn().await?);
        Ok(Self { pool, pool_size })
    }

    /// Closes the pool's connections, waiting for those in use (by this
    /// value and its clones) to come back.
    ///
    /// # Errors
    /// [`StorageError::Mysql`].
    pub async fn disconnect(self) -> Result<(), StorageError> {
        self.pool.disconnect().await?;
        Ok(())
    }

    async fn conn(&self) -> Result<Conn, StorageError> {
        Ok(self.pool.get_conn().await?)
    }

    /// The number a one-row, one-column query gives (a count or a sum).
    async fn scalar(
        &self,
        sql: &str,
        params: impl Into<Params> + Send,
        table: Table,
    ) -> Result<u64, StorageError> {
        let mut row: Row = self
            .conn()
            .await?
            .exec_first(sql, params)
            .await?
            .ok_or(StorageError::Corrupt(table))?;
        take(&mut row, 0, table)
    }
}

/// Runs `$body` (an expression using `$tx`, the open [`Transaction`]) in a
/// transaction started with `$opts`: commits if it returns `Ok`, rolls back
/// otherwise, and runs it again when InnoDB reports a deadlock.
macro_rules! transaction {
    ($self:ident, $opts:expr, |$tx:ident| $body:expr) => {{
        let mut attempt = 0;
        loop {
            let mut $tx = $self.pool.start_transaction($opts).await?;
            let result: Result<_, StorageError> = async { $body }.await;
            match finish($tx, result).await {
                Err(e) if attempt < DEADLOCK_RETRIES && is_server_error(&e, DEADLOCK) => {
                    attempt += 1;
                }
                other => break other,
            }
        }
    }};
}

async fn finish<T>(
    tx: Transaction<'static>,
    result: Result<T, StorageError>,
) -> Result<T, StorageError> {
    match result {
        Ok(value) => {
            tx.commit().await?;
            Ok(value)
        }
        Err(e) => {
            // A failed rollback leaves the connection broken; the pool drops it.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

fn is_server_error(e: &StorageError, code: u16) -> bool {
    matches!(e, StorageError::Mysql(mysql_async::Error::Server(s)) if s.code == code)
}

/// Maps the server error `code` of `result` to `to`.
fn map_server_error<T>(
    result: Result<T, mysql_async::Error>,
    code: u16,
    to: StorageError,
) -> Result<T, StorageError> {
    match result {
        Err(mysql_async::Error::Server(s)) if s.code == code => Err(to),
        other => Ok(other?),
    }
}

fn read_committed() -> TxOpts {
    let mut opts = TxOpts::default();
    opts.with_isolation_level(IsolationLevel::ReadCommitted);
    opts
}

/// Column `index` of `row`, converted; a missing or unconvertible value is
/// corruption of `table`.
fn take<T: FromValue>(row: &mut Row, index: usize, table: Table) -> Result<T, StorageError> {
    row.take_opt(index)
        .ok_or(StorageError::Corrupt(table))?
        .map_err(|_| StorageError::Corrupt(table))
}

fn user_bytes(user: &UserId) -> &[u8] {
    user.as_str().as_bytes()
}

/// `(?, ?, …)` rows of `columns` placeholders each, comma-separated.
fn value_rows(rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

/// The statements of a migration: whole-line `--` comments dropped, the rest
/// split at semicolons.
fn statements(sql: &str) -> Vec<String> {
    let code: Vec<&str> = sql
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect();
    code.join("\n")
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

async fn migrate_locked(conn: &mut Conn) -> Result<u32, StorageError> {
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    INT UNSIGNED    NOT NULL,
             applied_at BIGINT UNSIGNED NOT NULL,
             PRIMARY KEY (version)
         ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4",
    )
    .await?;
    let known = u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX);
    let mut row: Row = conn
        .exec_first("SELECT COALESCE(MAX(version), 0) FROM schema_version", ())
        .await?
        .ok_or(StorageError::Corrupt("schema_version"))?;
    let found: u32 = take(&mut row, 0, "schema_version")?;
    if found > known {
        return Err(StorageError::SchemaTooNew { found, known });
    }
    // DDL commits implicitly in MySQL: each statement is safe to re-run
    // (see the migration files), and the version row comes last.
    for (version, sql) in (1u32..).zip(MIGRATIONS).skip(found as usize) {
        for statement in statements(sql) {
            conn.query_drop(statement).await?;
        }
        conn.exec_drop(
            "INSERT INTO schema_version (version, applied_at) VALUES (?, UNIX_TIMESTAMP())",
            (version,),
        )
        .await?;
    }
    Ok(known)
}

const DEVICE_COLUMNS: &str = "device_id, auth_key, certificate, created_at";

fn device_record(mut row: Row) -> Result<DeviceRecord, StorageError> {
    const T: Table = "devices";
    let device: u32 = take(&mut row, 0, T)?;
    let auth_key: Vec<u8> = take(&mut row, 1, T)?;
    let certificate: Option<Vec<u8>> = take(&mut row, 2, T)?;
    Ok(DeviceRecord {
        device: DeviceId(device),
        auth_key: decode::auth_key(&auth_key, T)?,
        certificate: decode::certificate(certificate.as_deref(), T)?,
        created_at: take(&mut row, 3, T)?,
    })
}

fn queued_envelope(mut row: Row) -> Result<QueuedEnvelope, StorageError> {
    const T: Table = "queue";
    let id: Vec<u8> = take(&mut row, 1, T)?;
    let sender_user: Vec<u8> = take(&mut row, 2, T)?;
    let sender_device: u32 = take(&mut row, 3, T)?;
    let envelope: Vec<u8> = take(&mut row, 5, T)?;
    Ok(QueuedEnvelope {
        seq: take(&mut row, 0, T)?,
        delivery: Delivery {
            id: decode::envelope_id(&id, T)?,
            sender: decode::address(sender_user, sender_device, T)?,
            server_time: take(&mut row, 4, T)?,
            envelope: decode::envelope(&envelope, T)?,
        },
    })
}

fn blob_record(mut row: Row) -> Result<BlobRecord, StorageError> {
    const T: Table = "blobs";
    let blob: Vec<u8> = take(&mut row, 0, T)?;
    let owner_user: Vec<u8> = take(&mut row, 1, T)?;
    let owner_device: u32 = take(&mut row, 2, T)?;
    Ok(BlobRecord {
        blob: decode::blob_id(&blob, T)?,
        owner: decode::address(owner_user, owner_device, T)?,
        size: take(&mut row, 3, T)?,
        created_at: take(&mut row, 4, T)?,
    })
}

fn blob_ids(rows: Vec<Row>) -> Result<Vec<BlobId>, StorageError> {
    rows.into_iter()
        .map(|mut row| {
            let id: Vec<u8> = take(&mut row, 0, "blobs")?;
            decode::blob_id(&id, "blobs")
        })
        .collect()
}

impl Storage for MysqlStorage {
    async fn migrate(&self) -> Result<u32, StorageError> {
        let mut conn = self.conn().await?;
        let locked: Option<Row> = conn
            .exec_first(
                format!("SELECT GET_LOCK({MIGRATION_LOCK}, ?)"),
                (MIGRATION_LOCK_WAIT,),
            )
            .await?;
        let locked: Option<i64> = match locked {
            Some(mut row) => take(&mut row, 0, "schema_version")?,
            None => None,
        };
        if locked != Some(1) {
            return Err(StorageError::Task(
                "mysql: another server's migration holds the lock".to_owned(),
            ));
        }
        let result = migrate_locked(&mut conn).await;
        let released = conn
            .query_drop(format!("SELECT RELEASE_LOCK({MIGRATION_LOCK})"))
            .await;
        let version = result?;
        released?;
        Ok(version)
    }

    async fn create_account(
        &self,
        user: &UserId,
        identity: &IdentityKey,
        auth_key: &DeviceAuthKey,
        now: u64,
    ) -> Result<DeviceId, StorageError> {
        let user = user_bytes(user);
        let (identity, auth_key) = (identity.to_bytes(), auth_key.to_bytes());
        transaction!(self, TxOpts::default(), |tx| {
            let inserted = tx
                .exec_drop(
                    "INSERT INTO accounts (user_id, identity, next_device, created_at)
                     VALUES (?, ?, 2, ?)",
                    (user, identity.as_slice(), now),
                )
                .await;
            map_server_error(inserted, DUPLICATE_KEY, StorageError::UserTaken)?;
            tx.exec_drop(
                "INSERT INTO devices (user_id, device_id, auth_key, created_at)
                 VALUES (?, 1, ?, ?)",
                (user, auth_key.as_slice(), now),
            )
            .await?;
            Ok(DeviceId(1))
        })
    }

    async fn identity(&self, user: &UserId) -> Result<Option<IdentityKey>, StorageError> {
        let row: Option<Row> = self
            .conn()
            .await?
            .exec_first(
                "SELECT identity FROM accounts WHERE user_id = ?",
                (user_bytes(user),),
            )
            .await?;
        row.map(|mut row| {
            let bytes: Vec<u8> = take(&mut row, 0, "accounts")?;
            decode::identity(&bytes, "accounts")
        })
        .transpose()
    }

    async fn add_link_permission(
        &self,
        issuer: &DeviceAddress,
        token: &LinkToken,
        expires_at: u64,
    ) -> Result<(), StorageError> {
        let mut conn = self.conn().await?;
        conn.exec_drop(
            "INSERT INTO link_permissions (token, user_id, issuer_device, expires_at)
             SELECT ?, user_id, device_id, ? FROM devices WHERE user_id = ? AND device_id = ?",
            (
                token.0.as_slice(),
                expires_at,
                user_bytes(&issuer.user),
                issuer.device.0,
            ),
        )
        .await?;
        if conn.affected_rows() == 0 {
            return Err(StorageError::NoSuchDevice);
        }
        Ok(())
    }

    async fn add_linked_device(
        &self,
        user: &UserId,
        token: &LinkToken,
        auth_key: &DeviceAuthKey,
        max_devices: usize,
        now: u64,
    ) -> Result<DeviceId, StorageError> {
        let user = user_bytes(user);
        let auth_key = auth_key.to_bytes();
        transaction!(self, TxOpts::default(), |tx| {
            let valid: Option<Row> = tx
                .exec_first(
                    "SELECT 1 FROM link_permissions
                     WHERE token = ? AND user_id = ? AND expires_at > ? FOR UPDATE",
                    (token.0.as_slice(), user, now),
                )
                .await?;
            // A permission goes with its account, so the account exists
            // whenever the permission is valid.
            let next: Option<Row> = tx
                .exec_first(
                    "SELECT next_device FROM accounts WHERE user_id = ? FOR UPDATE",
                    (user,),
                )
                .await?;
            let (Some(_), Some(mut next)) = (valid, next) else {
                return Err(StorageError::PermissionInvalid);
            };
            let next: u64 = take(&mut next, 0, "accounts")?;
            let mut count: Row = tx
                .exec_first(
                    "SELECT COUNT(*) FROM devices WHERE user_id = ? LOCK IN SHARE MODE",
                    (user,),
                )
                .await?
                .ok_or(StorageError::Corrupt("devices"))?;
            let count: u64 = take(&mut count, 0, "devices")?;
            if usize::try_from(count).unwrap_or(usize::MAX) >= max_devices {
                return Err(StorageError::DeviceLimit(max_devices));
            }
            let device = decode::device_id(next, "accounts")?;
            tx.exec_drop(
                "UPDATE accounts SET next_device = ? WHERE user_id = ?",
                (next + 1, user),
            )
            .await?;
            tx.exec_drop(
                "INSERT INTO devices (user_id, device_id, auth_key, created_at)
                 VALUES (?, ?, ?, ?)",
                (user, device.0, auth_key.as_slice(), now),
            )
            .await?;
            // The permission is spent; expired ones of the account go too.
            tx.exec_drop(
                "DELETE FROM link_permissions WHERE token = ?",
                (token.0.as_slice(),),
            )
            .await?;
            tx.exec_drop(
                "DELETE FROM link_permissions WHERE user_id = ? AND expires_at <= ?",
                (user, now),
            )
            .await?;
            Ok(device)
        })
    }

    async fn device(&self, address: &DeviceAddress) -> Result<Option<DeviceRecord>, StorageError> {
        let row: Option<Row> = self
            .conn()
            .await?
            .exec_first(
                format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = ? AND device_id = ?"),
                (user_bytes(&address.user), address.device.0),
            )
            .await?;
        row.map(device_record).transpose()
    }

    async fn devices(&self, user: &UserId) -> Result<Vec<DeviceRecord>, StorageError> {
        let rows: Vec<Row> = self
            .conn()
            .await?
            .exec(
                format!(
                    "SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = ? ORDER BY device_id"
                ),
                (user_bytes(user),),
            )
            .await?;
        rows.into_iter().map(device_record).collect()
    }

    async fn set_certificate(
        &self,
        address: &DeviceAddress,
        certificate: &DeviceCertificate,
    ) -> Result<(), StorageError> {
        let mut conn = self.conn().await?;
        conn.exec_drop(
            "UPDATE devices SET certificate = ? WHERE user_id = ? AND device_id = ?",
            (
                certificate.to_bytes(),
                user_bytes(&address.user),
                address.device.0,
            ),
        )
        .await?;
        // Matched rows, not changed ones (CLIENT_FOUND_ROWS).
        if conn.affected_rows() == 0 {
            return Err(StorageError::NoSuchDevice);
        }
        Ok(())
    }

    async fn remove_device(&self, address: &DeviceAddress) -> Result<bool, StorageError> {
        let mut conn = self.conn().await?;
        // Prekeys and queue go with it (foreign keys); the push token is
        // a column of the row.
        conn.exec_drop(
            "DELETE FROM devices WHERE user_id = ? AND device_id = ?",
            (user_bytes(&address.user), address.device.0),
        )
        .await?;
        Ok(conn.affected_rows() > 0)
    }

    async fn replace_identity(
        &self,
        keep: &DeviceAddress,
        identity: &IdentityKey,
    ) -> Result<Vec<DeviceId>, StorageError> {
        let user = user_bytes(&keep.user);
        let keep_id = keep.device.0;
        let identity = identity.to_bytes();
        transaction!(self, TxOpts::default(), |tx| {
            let _: Option<Row> = tx
                .exec_first(
                    "SELECT 1 FROM accounts WHERE user_id = ? FOR UPDATE",
                    (user,),
                )
                .await?;
            // Every device row locked in id order, as `enqueue` locks them.
            let devices: Vec<Row> = tx
                .exec(
                    "SELECT device_id FROM devices WHERE user_id = ? ORDER BY device_id FOR UPDATE",
                    (user,),
                )
                .await?;
            let mut removed = devices
                .into_iter()
                .map(|mut row| take(&mut row, 0, "devices").map(DeviceId))
                .collect::<Result<Vec<_>, _>>()?;
            let before = removed.len();
            removed.retain(|d| d.0 != keep_id);
            if removed.len() == before {
                return Err(StorageError::NoSuchDevice);
            }
            tx.exec_drop(
                "UPDATE accounts SET identity = ? WHERE user_id = ?",
                (identity.as_slice(), user),
            )
            .await?;
            tx.exec_drop(
                "DELETE FROM devices WHERE user_id = ? AND device_id <> ?",
                (user, keep_id),
            )
            .await?;
            tx.exec_drop(
                "UPDATE devices
                 SET certificate = NULL, signed_prekey = NULL, last_resort_prekey = NULL
                 WHERE user_id = ? AND device_id = ?",
                (user, keep_id),
            )
            .await?;
            for table in [
                "one_time_prekeys",
                "pq_one_time_prekeys",
                "pq_last_resort_prekeys",
            ] {
                tx.exec_drop(
                    format!("DELETE FROM {table} WHERE user_id = ? AND device_id = ?"),
                    (user, keep_id),
                )
                .await?;
            }
            tx.exec_drop("DELETE FROM link_permissions WHERE user_id = ?", (user,))
                .await?;
            Ok(removed)
        })
    }

    async fn delete_account(&self, user: &UserId) -> Result<Vec<BlobId>, StorageError> {
        let user = user_bytes(user);
        transaction!(self, TxOpts::default(), |tx| {
            let rows: Vec<Row> = tx
                .exec(
                    "SELECT blob_id FROM blobs WHERE owner_user = ? ORDER BY blob_id FOR UPDATE",
                    (user,),
                )
                .await?;
            let blobs = blob_ids(rows)?;
            tx.exec_drop("DELETE FROM blobs WHERE owner_user = ?", (user,))
                .await?;
            // Devices, prekeys, queues and link permissions follow
            // (foreign keys).
            tx.exec_drop("DELETE FROM accounts WHERE user_id = ?", (user,))
                .await?;
            Ok(blobs)
        })
    }

    async fn publish_prekeys(
        &self,
        address: &DeviceAddress,
        signed: Option<&SignedPreKey>,
        last_resort: Option<&SignedPreKey>,
        one_time: &[OneTimePreKey],
    ) -> Result<(), StorageError> {
        let user = user_bytes(&address.user);
        let device = address.device.0;
        let signed = signed.map(SignedPreKey::to_bytes);
        let last_resort = last_resort.map(SignedPreKey::to_bytes);
        transaction!(self, TxOpts::default(), |tx| {
            tx.exec_drop(
                "UPDATE devices
                 SET signed_prekey = COALESCE(?, signed_prekey),
                     last_resort_prekey = COALESCE(?, last_resort_prekey)
                 WHERE user_id = ? AND device_id = ?",
                (signed.clone(), last_resort.clone(), user, device),
            )
            .await?;
            if tx.affected_rows() == 0 {
                return Err(StorageError::NoSuchDevice);
            }
            for chunk in one_time.chunks(PREKEY_CHUNK) {
                let mut params = Vec::with_capacity(chunk.len() * 4);
                for prekey in chunk {
                    params.push(Value::from(user));
                    params.push(Value::from(device));
                    params.push(Value::from(prekey.id.0));
                    params.push(Value::from(prekey.key.as_bytes().as_slice()));
                }
                // An id the device already has keeps its key.
                tx.exec_drop(
                    format!(
                        "INSERT INTO one_time_prekeys (user_id, device_id, prekey_id, public_key)
                         VALUES {} ON DUPLICATE KEY UPDATE prekey_id = prekey_id",
                        value_rows(chunk.len(), 4)
                    ),
                    Params::Positional(params),
                )
                .await?;
            }
            Ok(())
        })
    }

    async fn publish_pq_prekeys(
        &self,
        address: &DeviceAddress,
        last_resort: Option<&SignedPqPreKey>,
        one_time: &[SignedPqPreKey],
    ) -> Result<(), StorageError> {
        let user = user_bytes(&address.user);
        let device = address.device.0;
        let last_resort = last_resort.map(SignedPqPreKey::to_bytes);
        transaction!(self, TxOpts::default(), |tx| {
            let exists: Option<Row> = tx
                .exec_first(
                    "SELECT 1 FROM devices WHERE user_id = ? AND device_id = ? LOCK IN SHARE MODE",
                    (user, device),
                )
                .await?;
            if exists.is_none() {
                return Err(StorageError::NoSuchDevice);
            }
            if let Some(prekey) = &last_resort {
                tx.exec_drop(
                    "INSERT INTO pq_last_resort_prekeys (user_id, device_id, prekey)
                     VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE prekey = VALUES(prekey)",
                    (user, device, prekey.as_slice()),
                )
                .await?;
            }
            for chunk in one_time.chunks(PREKEY_CHUNK) {
                let mut params = Vec::with_capacity(chunk.len() * 4);
                for prekey in chunk {
                    params.push(Value::from(user));
                    params.push(Value::from(device));
                    params.push(Value::from(prekey.id().0));
                    params.push(Value::from(prekey.to_bytes()));
                }
                // An id the device already has keeps its key.
                tx.exec_drop(
                    format!(
                        "INSERT INTO pq_one_time_prekeys (user_id, device_id, prekey_id, prekey)
                         VALUES {} ON DUPLICATE KEY UPDATE prekey_id = prekey_id",
                        value_rows(chunk.len(), 4)
                    ),
                    Params::Positional(params),
                )
                .await?;
            }
            Ok(())
        })
    }

    async fn take_prekeys(
        &self,
        address: &DeviceAddress,
    ) -> Result<Option<TakenPreKeys>, StorageError> {
        const T: Table = "devices";
        let user = user_bytes(&address.user);
        let device = address.device.0;
        transaction!(self, read_committed(), |tx| {
            let current: Option<Row> = tx
                .exec_first(
                    "SELECT signed_prekey, last_resort_prekey FROM devices
                     WHERE user_id = ? AND device_id = ?",
                    (user, device),
                )
                .await?;
            let Some(mut current) = current else {
                return Ok(None);
            };
            let signed: Option<Vec<u8>> = take(&mut current, 0, T)?;
            let last_resort: Option<Vec<u8>> = take(&mut current, 1, T)?;
            let (Some(signed), Some(last_resort)) = (signed, last_resort) else {
                return Ok(None);
            };
            // Rows other takers hold are skipped, not waited for; each
            // locked row is deleted by the transaction that locked it.
            let one_time: Option<Row> = tx
                .exec_first(
                    "SELECT prekey_id, public_key FROM one_time_prekeys
                     WHERE user_id = ? AND device_id = ?
                     ORDER BY prekey_id LIMIT 1 FOR UPDATE SKIP LOCKED",
                    (user, device),
                )
                .await?;
            let one_time = match one_time {
                Some(mut row) => {
                    const P: Table = "one_time_prekeys";
                    let id: u32 = take(&mut row, 0, P)?;
                    let key: Vec<u8> = take(&mut row, 1, P)?;
                    tx.exec_drop(
                        "DELETE FROM one_time_prekeys
                         WHERE user_id = ? AND device_id = ? AND prekey_id = ?",
                        (user, device, id),
                    )
                    .await?;
                    Some(decode::one_time_prekey(id, &key, P)?)
                }
                None => None,
            };
            // The same for the PQ one-time prekeys.
            let pq_one_time: Option<Row> = tx
                .exec_first(
                    "SELECT prekey_id, prekey FROM pq_one_time_prekeys
                     WHERE user_id = ? AND device_id = ?
                     ORDER BY prekey_id LIMIT 1 FOR UPDATE SKIP LOCKED",
                    (user, device),
                )
                .await?;
            let pq_one_time = match pq_one_time {
                Some(mut row) => {
                    const P: Table = "pq_one_time_prekeys";
                    let id: u32 = take(&mut row, 0, P)?;
                    let prekey: Vec<u8> = take(&mut row, 1, P)?;
                    tx.exec_drop(
                        "DELETE FROM pq_one_time_prekeys
                         WHERE user_id = ? AND device_id = ? AND prekey_id = ?",
                        (user, device, id),
                    )
                    .await?;
                    Some(decode::pq_prekey(&prekey, P)?)
                }
                None => None,
            };
            let pq_last_resort: Option<Row> = tx
                .exec_first(
                    "SELECT prekey FROM pq_last_resort_prekeys WHERE user_id = ? AND device_id = ?",
                    (user, device),
                )
                .await?;
            let pq_last_resort = match pq_last_resort {
                Some(mut row) => {
                    const L: Table = "pq_last_resort_prekeys";
                    let prekey: Vec<u8> = take(&mut row, 0, L)?;
                    Some(decode::pq_prekey(&prekey, L)?)
                }
                None => None,
            };
            Ok(Some(TakenPreKeys {
                signed: decode::signed_prekey(&signed, T)?,
                last_resort: decode::signed_prekey(&last_resort, T)?,
                one_time,
                pq_last_resort,
                pq_one_time,
            }))
        })
    }

    async fn one_time_prekey_count(&self, address: &DeviceAddress) -> Result<u64, StorageError> {
        self.scalar(
            "SELECT COUNT(*) FROM one_time_prekeys WHERE user_id = ? AND device_id = ?",
            (user_bytes(&address.user), address.device.0),
            "one_time_prekeys",
        )
        .await
    }

    async fn pq_one_time_prekey_count(&self, address: &DeviceAddress) -> Result<u64, StorageError> {
        self.scalar(
            "SELECT COUNT(*) FROM pq_one_time_prekeys WHERE user_id = ? AND device_id = ?",
            (user_bytes(&address.user), address.device.0),
            "pq_one_time_prekeys",
        )
        .await
    }

    async fn enqueue(&self, envelopes: &[NewEnvelope]) -> Result<(), StorageError> {
        if envelopes.is_empty() {
            return Ok(());
        }
        // Recipients locked in one order, so two batches cannot deadlock.
        let mut recipients: Vec<&DeviceAddress> = envelopes.iter().map(|e| &e.recipient).collect();
        recipients.sort_unstable();
        recipients.dedup();
        let rows: Vec<Vec<u8>> = envelopes
            .iter()
            .map(|e| e.delivery.envelope.to_bytes())
            .collect();
        transaction!(self, TxOpts::default(), |tx| {
            for recipient in &recipients {
                let found: Option<Row> = tx
                    .exec_first(
                        "SELECT 1 FROM devices WHERE user_id = ? AND device_id = ? FOR UPDATE",
                        (user_bytes(&recipient.user), recipient.device.0),
                    )
                    .await?;
                if found.is_none() {
                    return Err(StorageError::NoSuchDevice);
                }
            }
            // One statement per envelope: each may be over a megabyte.
            for (
                NewEnvelope {
                    recipient,
                    delivery,
                },
                envelope,
            ) in envelopes.iter().zip(&rows)
            {
                tx.exec_drop(
                    "INSERT INTO queue (envelope_id, recipient_user, recipient_device,
                                        sender_user, sender_device, server_time, envelope)
                     VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        delivery.id.0.as_slice(),
                        user_bytes(&recipient.user),
                        recipient.device.0,
                        user_bytes(&delivery.sender.user),
                        delivery.sender.device.0,
                        delivery.server_time,
                        envelope.as_slice(),
                    ),
                )
                .await?;
            }
            Ok(())
        })
    }

    async fn queued(
        &self,
        recipient: &DeviceAddress,
        after: u64,
        limit: usize,
    ) -> Result<Vec<QueuedEnvelope>, StorageError> {
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        let rows: Vec<Row> = self
            .conn()
            .await?
            .exec(
                "SELECT seq, envelope_id, sender_user, sender_device, server_time, envelope
                 FROM queue
                 WHERE recipient_user = ? AND recipient_device = ? AND seq > ?
                 ORDER BY seq LIMIT ?",
                (
                    user_bytes(&recipient.user),
                    recipient.device.0,
                    after,
                    limit,
                ),
            )
            .await?;
        rows.into_iter().map(queued_envelope).collect()
    }

    async fn ack(
        &self,
        recipient: &DeviceAddress,
        ids: &[EnvelopeId],
    ) -> Result<AckOutcome, StorageError> {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let user = user_bytes(&recipient.user);
        let device = recipient.device.0;
        transaction!(self, TxOpts::default(), |tx| {
            let mut outcome = AckOutcome::default();
            for chunk in ids.chunks(ACK_CHUNK) {
                let marks = vec!["?"; chunk.len()].join(", ");
                let id_values: Vec<Value> = chunk
                    .iter()
                    .map(|id| Value::from(id.0.as_slice()))
                    .collect();
                let mut params = vec![Value::from(user), Value::from(device)];
                params.extend(id_values.iter().cloned());
                tx.exec_drop(
                    format!(
                        "DELETE FROM queue WHERE recipient_user = ? AND recipient_device = ?
                         AND envelope_id IN ({marks})"
                    ),
                    Params::Positional(params),
                )
                .await?;
                outcome.removed += tx.affected_rows();
                // Whatever still matches is in another device's queue.
                let mut row: Row = tx
                    .exec_first(
                        format!("SELECT COUNT(*) FROM queue WHERE envelope_id IN ({marks})"),
                        Params::Positional(id_values),
                    )
                    .await?
                    .ok_or(StorageError::Corrupt("queue"))?;
                outcome.foreign += take::<u64>(&mut row, 0, "queue")?;
            }
            Ok(outcome)
        })
    }

    async fn queue_depth(&self) -> Result<u64, StorageError> {
        self.scalar("SELECT COUNT(*) FROM queue", (), "queue").await
    }

    async fn purge_envelopes(&self, before: u64) -> Result<u64, StorageError> {
        let mut conn = self.conn().await?;
        conn.exec_drop("DELETE FROM queue WHERE server_time < ?", (before,))
            .await?;
        Ok(conn.affected_rows())
    }

    async fn purge_link_permissions(&self, now: u64) -> Result<u64, StorageError> {
        let mut conn = self.conn().await?;
        conn.exec_drop("DELETE FROM link_permissions WHERE expires_at <= ?", (now,))
            .await?;
        Ok(conn.affected_rows())
    }

    async fn set_push_token(
        &self,
        address: &DeviceAddress,
        token: Option<&str>,
    ) -> Result<(), StorageError> {
        let mut conn = self.conn().await?;
        conn.exec_drop(
            "UPDATE devices SET push_token = ? WHERE user_id = ? AND device_id = ?",
            (
                token.map(str::as_bytes),
                user_bytes(&address.user),
                address.device.0,
            ),
        )
        .await?;
        if conn.affected_rows() == 0 {
            return Err(StorageError::NoSuchDevice);
        }
        Ok(())
    }

    async fn push_token(&self, address: &DeviceAddress) -> Result<Option<String>, StorageError> {
        let row: Option<Row> = self
            .conn()
            .await?
            .exec_first(
                "SELECT push_token FROM devices WHERE user_id = ? AND device_id = ?",
                (user_bytes(&address.user), address.device.0),
            )
            .await?;
        let Some(mut row) = row else {
            return Ok(None);
        };
        let token: Option<Vec<u8>> = take(&mut row, 0, "devices")?;
        token.map(|t| decode::push_token(t, "devices")).transpose()
    }

    async fn add_blob(&self, blob: &BlobRecord) -> Result<(), StorageError> {
        self.conn()
            .await?
            .exec_drop(
                "INSERT INTO blobs (blob_id, owner_user, owner_device, size, created_at)
                 VALUES (?, ?, ?, ?, ?)",
                (
                    blob.blob.0.as_slice(),
                    user_bytes(&blob.owner.user),
                    blob.owner.device.0,
                    blob.size,
                    blob.created_at,
                ),
            )
            .await?;
        Ok(())
    }

    async fn blob(&self, blob: &BlobId) -> Result<Option<BlobRecord>, StorageError> {
        let row: Option<Row> = self
            .conn()
            .await?
            .exec_first(
                "SELECT blob_id, owner_user, owner_device, size, created_at
                 FROM blobs WHERE blob_id = ?",
                (blob.0.as_slice(),),
            )
            .await?;
        row.map(blob_record).transpose()
    }

    async fn blob_bytes(&self, user: &UserId) -> Result<u64, StorageError> {
        self.scalar(
            // SUM gives a DECIMAL; the cast keeps it an integer.
            "SELECT CAST(COALESCE(SUM(size), 0) AS UNSIGNED) FROM blobs WHERE owner_user = ?",
            (user_bytes(user),),
            "blobs",
        )
        .await
    }

    async fn purge_blobs(&self, before: u64) -> Result<Vec<BlobId>, StorageError> {
        transaction!(self, TxOpts::default(), |tx| {
            let rows: Vec<Row> = tx
                .exec(
                    "SELECT blob_id FROM blobs WHERE created_at < ?
                     ORDER BY created_at, blob_id FOR UPDATE",
                    (before,),
                )
                .await?;
            let blobs = blob_ids(rows)?;
            tx.exec_drop("DELETE FROM blobs WHERE created_at < ?", (before,))
                .await?;
            Ok(blobs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_split_into_their_statements() {
        let first = statements(MIGRATIONS[0]);
        assert_eq!(first.len(), 6);
        assert!(
            first
                .iter()
                .all(|s| s.starts_with("CREATE TABLE IF NOT EXISTS"))
        );
        assert!(first.iter().all(|s| !s.contains("--")));
    }

    #[test]
    fn value_rows_repeat_one_row_of_placeholders() {
        assert_eq!(value_rows(2, 3), "(?, ?, ?), (?, ?, ?)");
    }
}
