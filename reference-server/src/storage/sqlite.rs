//! The SQLite backend: one database file, the embedded default.
//!
//! The file is in WAL mode with `synchronous = FULL`, so a committed
//! transaction survives a power cut. rusqlite is synchronous: every operation
//! runs on tokio's blocking pool. Writes go through one connection behind a
//! mutex, each in a `BEGIN IMMEDIATE` transaction, so writers are serialised
//! (which also makes one-time-prekey consumption atomic); reads use a few
//! read-only connections, which WAL lets run beside the writer.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hush::keys::{
    DeviceAddress, DeviceAuthKey, DeviceCertificate, DeviceId, IdentityKey, OneTimePreKey,
    SignedPqPreKey, SignedPreKey, UserId,
};
use hush::wire::protocol::{BlobId, Delivery, EnvelopeId, LinkToken};
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Row, ToSql, Transaction, TransactionBehavior,
};

use super::decode::{self, Table};
use super::{
    AckOutcome, BlobRecord, DeviceRecord, NewEnvelope, QueuedEnvelope, Storage, StorageError,
    TakenPreKeys,
};

/// The embedded migrations, in order: version `i + 1` is `MIGRATIONS[i]`.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/sqlite/0001_init.sql"),
    include_str!("migrations/sqlite/0002_link_permission_issuer.sql"),
    include_str!("migrations/sqlite/0003_pq_prekeys.sql"),
];

/// How many read-only connections a file database keeps.
const READERS: usize = 4;

/// How long a connection waits for a lock another process holds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Ids per statement in `ack` (well below SQLite's variable limit).
const ACK_CHUNK: usize = 256;

/// Durable state in an SQLite database. Cheap to clone (clones share the
/// connections).
///
/// [`migrate`](Storage::migrate) must run once before anything else.
#[derive(Clone)]
pub struct SqliteStorage {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` for an in-memory database.
    path: Option<PathBuf>,
    writer: Mutex<Connection>,
    /// Empty for an in-memory database: the writer serves reads too.
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

impl fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStorage")
            .field("path", &self.inner.path)
            .field("readers", &self.inner.readers.len())
            .finish_non_exhaustive()
    }
}

impl SqliteStorage {
    /// Opens (creating it if needed) the database file at `path`. This does
    /// blocking file I/O; call it before serving, or from a blocking task.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`] if the file cannot be opened or configured.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        let writer = Connection::open(path)?;
        configure(&writer)?;
        let mode: String =
            writer.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StorageError::Task(format!(
                "sqlite: the database refused WAL mode (journal mode {mode})"
            )));
        }
        let readers = (0..READERS)
            .map(|_| {
                let conn = Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                configure(&conn)?;
                Ok(Mutex::new(conn))
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        Ok(Self::new(Some(path.to_path_buf()), writer, readers))
    }

    /// Opens a private in-memory database (for tests): one connection, gone
    /// when the last clone is dropped.
    ///
    /// # Errors
    /// [`StorageError::Sqlite`].
    pub fn open_in_memory() -> Result<Self, StorageError> {
        let writer = Connection::open_in_memory()?;
        configure(&writer)?;
        Ok(Self::new(None, writer, Vec::new()))
    }

    fn new(path: Option<PathBuf>, writer: Connection, readers: Vec<Mutex<Connection>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(writer),
                readers,
                next_reader: AtomicUsize::new(0),
            }),
        }
    }

    /// Runs `f` on a reader connection, on the blocking pool.
    fn read<T, F>(&self, f: F) -> impl Future<Output = Result<T, StorageError>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StorageError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            let conn = if inner.readers.is_empty() {
                &inner.writer
            } else {
                let i = inner.next_reader.fetch_add(1, Ordering::Relaxed) % inner.readers.len();
                &inner.readers[i]
            };
            let conn = conn.lock().map_err(|_| poisoned())?;
            f(&conn)
        })
    }

    /// Runs `f` in an immediate transaction on the writer connection, on the
    /// blocking pool; commits if `f` succeeds and rolls back otherwise.
    fn write<T, F>(&self, f: F) -> impl Future<Output = Result<T, StorageError>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, StorageError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            let mut conn = inner.writer.lock().map_err(|_| poisoned())?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
    }
}

/// Per-connection settings.
fn configure(conn: &Connection) -> Result<(), StorageError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(())
}

async fn blocking<T, F>(f: F) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::Task(e.to_string()))?
}

fn poisoned() -> StorageError {
    StorageError::Task("sqlite: a connection's lock is poisoned".to_owned())
}

/// A `u64` for an INTEGER column; values past `i64::MAX` (hundreds of
/// billions of years as a time) are stored as `i64::MAX`.
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// An INTEGER column back to `u64`.
fn uint(value: i64, table: Table) -> Result<u64, StorageError> {
    u64::try_from(value).map_err(|_| StorageError::Corrupt(table))
}

/// `?, ?, …` with `n` placeholders.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

fn device_exists(tx: &Transaction<'_>, address: &DeviceAddress) -> Result<bool, StorageError> {
    Ok(tx
        .prepare_cached("SELECT 1 FROM devices WHERE user_id = ?1 AND device_id = ?2")?
        .query_row((address.user.as_str(), address.device.0), |_| Ok(()))
        .optional()?
        .is_some())
}

/// A device's signed and last-resort prekey columns.
type PreKeyColumns = (Option<Vec<u8>>, Option<Vec<u8>>);

const DEVICE_COLUMNS: &str = "device_id, auth_key, certificate, created_at";

fn device_record(row: &Row<'_>) -> Result<DeviceRecord, StorageError> {
    const T: Table = "devices";
    let device: i64 = row.get(0)?;
    let auth_key: Vec<u8> = row.get(1)?;
    let certificate: Option<Vec<u8>> = row.get(2)?;
    Ok(DeviceRecord {
        device: decode::device_id(device, T)?,
        auth_key: decode::auth_key(&auth_key, T)?,
        certificate: decode::certificate(certificate.as_deref(), T)?,
        created_at: uint(row.get(3)?, T)?,
    })
}

fn queued_envelope(row: &Row<'_>) -> Result<QueuedEnvelope, StorageError> {
    const T: Table = "queue";
    let seq: i64 = row.get(0)?;
    let id: Vec<u8> = row.get(1)?;
    let sender_user: String = row.get(2)?;
    let sender_device: i64 = row.get(3)?;
    let envelope: Vec<u8> = row.get(5)?;
    Ok(QueuedEnvelope {
        seq: uint(seq, T)?,
        delivery: Delivery {
            id: decode::envelope_id(&id, T)?,
            sender: decode::address(sender_user.into_bytes(), sender_device, T)?,
            server_time: uint(row.get(4)?, T)?,
            envelope: decode::envelope(&envelope, T)?,
        },
    })
}

fn blob_record(row: &Row<'_>) -> Result<BlobRecord, StorageError> {
    const T: Table = "blobs";
    let blob: Vec<u8> = row.get(0)?;
    let owner_user: String = row.get(1)?;
    let owner_device: i64 = row.get(2)?;
    Ok(BlobRecord {
        blob: decode::blob_id(&blob, T)?,
        owner: decode::address(owner_user.into_bytes(), owner_device, T)?,
        size: uint(row.get(3)?, T)?,
        created_at: uint(row.get(4)?, T)?,
    })
}

/// The current schema version (0 for an empty database).
fn schema_version(tx: &Transaction<'_>) -> Result<u32, StorageError> {
    let version: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        (),
        |row| row.get(0),
    )?;
    u32::try_from(version).map_err(|_| StorageError::Corrupt("schema_version"))
}

impl Storage for SqliteStorage {
    fn migrate(&self) -> impl Future<Output = Result<u32, StorageError>> + Send {
        self.write(|tx| {
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS schema_version (
                     version    INTEGER NOT NULL PRIMARY KEY,
                     applied_at INTEGER NOT NULL
                 ) STRICT",
            )?;
            let known = u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX);
            let found = schema_version(tx)?;
            if found > known {
                return Err(StorageError::SchemaTooNew { found, known });
            }
            // SQLite's DDL is transactional: all pending migrations commit
            // together with their version rows, or none does.
            for (version, sql) in (1..).zip(MIGRATIONS).skip(found as usize) {
                tx.execute_batch(sql)?;
                tx.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?1, unixepoch())",
                    [version],
                )?;
            }
            Ok(known)
        })
    }

    fn create_account(
        &self,
        user: &UserId,
        identity: &IdentityKey,
        auth_key: &DeviceAuthKey,
        now: u64,
    ) -> impl Future<Output = Result<DeviceId, StorageError>> + Send {
        let (user, identity, auth_key) = (user.clone(), identity.to_bytes(), auth_key.to_bytes());
        self.write(move |tx| {
            let inserted = tx.execute(
                "INSERT INTO accounts (user_id, identity, next_device, created_at)
                 VALUES (?1, ?2, 2, ?3) ON CONFLICT (user_id) DO NOTHING",
                (user.as_str(), identity.as_slice(), int(now)),
            )?;
            if inserted == 0 {
                return Err(StorageError::UserTaken);
            }
            tx.execute(
                "INSERT INTO devices (user_id, device_id, auth_key, created_at)
                 VALUES (?1, 1, ?2, ?3)",
                (user.as_str(), auth_key.as_slice(), int(now)),
            )?;
            Ok(DeviceId(1))
        })
    }

    fn identity(
        &self,
        user: &UserId,
    ) -> impl Future<Output = Result<Option<IdentityKey>, StorageError>> + Send {
        let user = user.clone();
        self.read(move |conn| {
            let bytes: Option<Vec<u8>> = conn
                .prepare_cached("SELECT identity FROM accounts WHERE user_id = ?1")?
                .query_row([user.as_str()], |row| row.get(0))
                .optional()?;
            bytes.map(|b| decode::identity(&b, "accounts")).transpose()
        })
    }

    fn add_link_permission(
        &self,
        issuer: &DeviceAddress,
        token: &LinkToken,
        expires_at: u64,
    ) -> impl Future<Output = Result<(), StorageError>> + Send {
        let (issuer, token) = (issuer.clone(), *token);
        self.write(move |tx| {
            let inserted = tx.execute(
                "INSERT INTO link_permissions (token, user_id, issuer_device, expires_at)
                 SELECT ?1, user_id, device_id, ?4 FROM devices
                 WHERE user_id = ?2 AND device_id = ?3",
                (
                    token.0.as_slice(),
                    issuer.user.as_str(),
                    issuer.device.0,
                    int(expires_at),
                ),
            )?;
            if inserted == 0 {
                return Err(StorageError::NoSuchDevice);
            }
            Ok(())
        })
    }

    fn add_linked_device(
        &self,
        user: &UserId,
        token: &LinkToken,
        auth_key: &DeviceAuthKey,
        max_devices: usize,
        now: u64,
    ) -> impl Future<Output = Result<DeviceId, StorageError>> + Send {
        let (user, token, auth_key) = (user.clone(), *token, auth_key.to_bytes());
        self.write(move |tx| {
            let valid = tx
                .query_row(
                    "SELECT 1 FROM link_permissions
                     WHERE token = ?1 AND user_id = ?2 AND expires_at > ?3",
                    (token.0.as_slice(), user.as_str(), int(now)),
                    |_| Ok(()),
                )
                .optional()?;
            // A permission outlives neither its account nor its expiry, so
            // the account exists whenever the permission is valid.
            let next: Option<i64> = tx
                .query_row(
                    "SELECT next_device FROM accounts WHERE user_id = ?1",
                    [user.as_str()],
                    |row| row.get(0),
                )
                .optional()?;
            let (Some(()), Some(next)) = (valid, next) else {
                return Err(StorageError::PermissionInvalid);
            };
            let count: i64 = tx.query_row(
                "SELECT COUNT(*) FROM devices WHERE user_id = ?1",
                [user.as_str()],
                |row| row.get(0),
            )?;
            if usize::try_from(count).unwrap_or(usize::MAX) >= max_devices {
                return Err(StorageError::DeviceLimit(max_devices));
            }
            let device = decode::device_id(next, "accounts")?;
            tx.execute(
                "UPDATE accounts SET next_device = ?2 WHERE user_id = ?1",
                (user.as_str(), next + 1),
            )?;
            tx.execute(
                "INSERT INTO devices (user_id, device_id, auth_key, created_at)
                 VALUES (?1, ?2, ?3, ?4)",
                (user.as_str(), device.0, auth_key.as_slice(), int(now)),
            )?;
            // The permission is spent; expired ones of the account go too.
            tx.execute(
                "DELETE FROM link_permissions
                 WHERE token = ?1 OR (user_id = ?2 AND expires_at <= ?3)",
                (token.0.as_slice(), user.as_str(), int(now)),
            )?;
            Ok(device)
        })
    }

    fn device(
        &self,
        address: &DeviceAddress,
    ) -> impl Future<Output = Result<Option<DeviceRecord>, StorageError>> + Send {
        let address = address.clone();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = ?1 AND device_id = ?2"
            ))?;
            let mut rows = stmt.query((address.user.as_str(), address.device.0))?;
            rows.next()?.map(device_record).transpose()
        })
    }

    fn devices(
        &self,
        user: &UserId,
    ) -> impl Future<Output = Result<Vec<DeviceRecord>, StorageError>> + Send {
        let user = user.clone();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = ?1 ORDER BY device_id"
            ))?;
            let mut rows = stmt.query([user.as_str()])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(device_record(row)?);
            }
            Ok(out)
        })
    }

    fn set_certificate(
        &self,
        address: &DeviceAddress,
        certificate: &DeviceCertificate,
    ) -> impl Future<Output = Result<(), StorageError>> + Send {
        let (address, certificate) = (address.clone(), certificate.to_bytes());
        self.write(move |tx| {
            let updated = tx.execute(
                "UPDATE devices SET certificate = ?3 WHERE user_id = ?1 AND device_id = ?2",
                (address.user.as_str(), address.device.0, certificate),
            )?;
            if updated == 0 {
                return Err(StorageError::NoSuchDevice);
            }
            Ok(())
        })
    }

    fn remove_device(
        &self,
        address: &DeviceAddress,
    ) -> impl Future<Output = Result<bool, StorageError>> + Send {
        let address = address.clone();
        self.write(move |tx| {
            // Prekeys and queue go with it (foreign keys); the push token is
            // a column of the row.
            let deleted = tx.execute(
                "DELETE FROM devices WHERE user_id = ?1 AND device_id = ?2",
                (address.user.as_str(), address.device.0),
            )?;
            Ok(deleted > 0)
        })
    }

    fn replace_identity(
        &self,
        keep: &DeviceAddress,
        identity: &IdentityKey,
    ) -> impl Future<Output = Result<Vec<DeviceId>, StorageError>> + Send {
        let (keep, identity) = (keep.clone(), identity.to_bytes());
        self.write(move |tx| {
            if !device_exists(tx, &keep)? {
                return Err(StorageError::NoSuchDevice);
            }
            let user = keep.user.as_str();
            let keep_id = keep.device.0;
            tx.execute(
                "UPDATE accounts SET identity = ?2 WHERE user_id = ?1",
                (user, identity.as_slice()),
            )?;
            let removed = {
                let mut stmt = tx.prepare(
                    "SELECT device_id FROM devices
                     WHERE user_id = ?1 AND device_id <> ?2 ORDER BY device_id",
                )?;
                let mut rows = stmt.query((user, keep_id))?;
                let mut removed = Vec::new();
                while let Some(row) = rows.next()? {
                    removed.push(decode::device_id(row.get::<_, i64>(0)?, "devices")?);
                }
                removed
            };
            tx.execute(
                "DELETE FROM devices WHERE user_id = ?1 AND device_id <> ?2",
                (user, keep_id),
            )?;
            tx.execute(
                "UPDATE devices
                 SET certificate = NULL, signed_prekey = NULL, last_resort_prekey = NULL
                 WHERE user_id = ?1 AND device_id = ?2",
                (user, keep_id),
            )?;
            for table in [
                "one_time_prekeys",
                "pq_one_time_prekeys",
                "pq_last_resort_prekeys",
            ] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE user_id = ?1 AND device_id = ?2"),
                    (user, keep_id),
                )?;
            }
            tx.execute("DELETE FROM link_permissions WHERE user_id = ?1", [user])?;
            Ok(removed)
        })
    }

    fn delete_account(
        &self,
        user: &UserId,
    ) -> impl Future<Output = Result<Vec<BlobId>, StorageError>> + Send {
        let user = user.clone();
        self.write(move |tx| {
            let blobs = {
                let mut stmt =
                    tx.prepare("SELECT blob_id FROM blobs WHERE owner_user = ?1 ORDER BY blob_id")?;
                let mut rows = stmt.query([user.as_str()])?;
                let mut blobs = Vec::new();
                while let Some(row) = rows.next()? {
                    blobs.push(decode::blob_id(&row.get::<_, Vec<u8>>(0)?, "blobs")?);
                }
                blobs
            };
            tx.execute("DELETE FROM blobs WHERE owner_user = ?1", [user.as_str()])?;
            // Devices, prekeys, queues and link permissions follow (foreign keys).
            tx.execute("DELETE FROM accounts WHERE user_id = ?1", [user.as_str()])?;
            Ok(blobs)
        })
    }

    fn publish_prekeys(
        &self,
        address: &DeviceAddress,
        signed: Option<&SignedPreKey>,
        last_resort: Option<&SignedPreKey>,
        one_time: &[OneTimePreKey],
    ) -> impl Future<Output = Result<(), StorageError>> + Send {
        let address = address.clone();
        let signed = signed.map(SignedPreKey::to_bytes);
        let last_resort = last_resort.map(SignedPreKey::to_bytes);
        let one_time = one_time.to_vec();
        self.write(move |tx| {
            let user = address.user.as_str();
            let device = address.device.0;
            let updated = tx.execute(
                "UPDATE devices
                 SET signed_prekey = COALESCE(?3, signed_prekey),
                     last_resort_prekey = COALESCE(?4, last_resort_prekey)
                 WHERE user_id = ?1 AND device_id = ?2",
                (user, device, signed, last_resort),
            )?;
            if updated == 0 {
                return Err(StorageError::NoSuchDevice);
            }
            let mut insert = tx.prepare_cached(
                "INSERT INTO one_time_prekeys (user_id, device_id, prekey_id, public_key)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user_id, device_id, prekey_id) DO NOTHING",
            )?;
            for prekey in &one_time {
                insert.execute((user, device, prekey.id.0, prekey.key.as_bytes().as_slice()))?;
            }
            Ok(())
        })
    }

    fn publish_pq_prekeys(
        &self,
        address: &DeviceAddress,
        last_resort: Option<&SignedPqPreKey>,
        one_time: &[SignedPqPreKey],
    ) -> impl Future<Output = Result<(), StorageError>> + Send {
        let address = address.clone();
        let last_resort = last_resort.map(SignedPqPreKey::to_bytes);
        let one_time: Vec<(u32, Vec<u8>)> =
            one_time.iter().map(|k| (k.id().0, k.to_bytes())).collect();
        self.write(move |tx| {
            if !device_exists(tx, &address)? {
                return Err(StorageError::NoSuchDevice);
            }
            let user = address.user.as_str();
            let device = address.device.0;
            if let Some(prekey) = last_resort {
                tx.execute(
                    "INSERT INTO pq_last_resort_prekeys (user_id, device_id, prekey)
                     VALUES (?1, ?2, ?3)
                     ON CONFLICT (user_id, device_id) DO UPDATE SET prekey = excluded.prekey",
                    (user, device, prekey),
                )?;
            }
            let mut insert = tx.prepare_cached(
                "INSERT INTO pq_one_time_prekeys (user_id, device_id, prekey_id, prekey)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user_id, device_id, prekey_id) DO NOTHING",
            )?;
            for (id, prekey) in &one_time {
                insert.execute((user, device, id, prekey))?;
            }
            Ok(())
        })
    }

    fn take_prekeys(
        &self,
        address: &DeviceAddress,
    ) -> impl Future<Output = Result<Option<TakenPreKeys>, StorageError>> + Send {
        let address = address.clone();
        // A write transaction even when nothing is left to consume: the
        // writer lock is what makes the consumption atomic.
        self.write(move |tx| {
            const T: Table = "devices";
            let user = address.user.as_str();
            let device = address.device.0;
            let current: Option<PreKeyColumns> = tx
                .prepare_cached(
                    "SELECT signed_prekey, last_resort_prekey FROM devices
                     WHERE user_id = ?1 AND device_id = ?2",
                )?
                .query_row((user, device), |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            let Some((Some(signed), Some(last_resort))) = current else {
                return Ok(None);
            };
            let one_time: Option<(i64, Vec<u8>)> = tx
                .prepare_cached(
                    "SELECT prekey_id, public_key FROM one_time_prekeys
                     WHERE user_id = ?1 AND device_id = ?2 ORDER BY prekey_id LIMIT 1",
                )?
                .query_row((user, device), |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            let one_time = match one_time {
                Some((id, key)) => {
                    tx.prepare_cached(
                        "DELETE FROM one_time_prekeys
                         WHERE user_id = ?1 AND device_id = ?2 AND prekey_id = ?3",
                    )?
                    .execute((user, device, id))?;
                    Some(decode::one_time_prekey(id, &key, "one_time_prekeys")?)
                }
                None => None,
            };
            let pq_one_time: Option<(i64, Vec<u8>)> = tx
                .prepare_cached(
                    "SELECT prekey_id, prekey FROM pq_one_time_prekeys
                     WHERE user_id = ?1 AND device_id = ?2 ORDER BY prekey_id LIMIT 1",
                )?
                .query_row((user, device), |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            let pq_one_time = match pq_one_time {
                Some((id, prekey)) => {
                    tx.prepare_cached(
                        "DELETE FROM pq_one_time_prekeys
                         WHERE user_id = ?1 AND device_id = ?2 AND prekey_id = ?3",
                    )?
                    .execute((user, device, id))?;
                    Some(decode::pq_prekey(&prekey, "pq_one_time_prekeys")?)
                }
                None => None,
            };
            let pq_last_resort: Option<Vec<u8>> = tx
                .prepare_cached(
                    "SELECT prekey FROM pq_last_resort_prekeys
                     WHERE user_id = ?1 AND device_id = ?2",
                )?
                .query_row((user, device), |row| row.get(0))
                .optional()?;
            Ok(Some(TakenPreKeys {
                signed: decode::signed_prekey(&signed, T)?,
                last_resort: decode::signed_prekey(&last_resort, T)?,
                one_time,
                pq_last_resort: pq_last_resort
                    .map(|b| decode::pq_prekey(&b, "pq_last_resort_prekeys"))
                    .transpose()?,
                pq_one_time,
            }))
        })
    }

    fn one_time_prekey_count(
        &self,
        address: &DeviceAddress,
    ) -> impl Future<Output = Result<u64, StorageError>> + Send {
        let address = address.clone();
        self.read(move |conn| {
            let count: i64 = conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM one_time_prekeys WHERE user_id = ?1 AND device_id = ?2",
                )?
                .query_row((address.user.as_str(), address.device.0), |row| row.get(0))?;
            uint(count, "one_time_prekeys")
        })
    }

    fn pq_one_time_prekey_count(
        &self,
        address: &DeviceAddress,
    ) -> impl Future<Output = Result<u64, StorageError>> + Send {
        let address = address.clone();
        self.read(move |conn| {
            let count: i64 = conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM pq_one_time_prekeys
                     WHERE user_id = ?1 AND device_id = ?2",
                )?
                .query_row((address.user.as_str(), address.device.0), |row| row.get(0))?;
            uint(count, "pq_one_time_prekeys")
        })
    }

    fn enqueue(
        &self,
        envelopes: &[NewEnvelope],
    ) -> impl Future<Output = Result<(), StorageError>> + Send {
        let envelopes = envelopes.to_vec();
        self.write(move |tx| {
            let mut insert = tx.prepare_cached(
                "INSERT INTO queue (envelope_id, recipient_user, recipient_device,
                                    sender_user, sender_device, server_time, envelope)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for NewEnvelope {
                recipient,
                delivery,
            } in &envelopes
            {
                if !device_exists(tx, recipient)? {
                    return Err(StorageError::NoSuchDevice);
                }
                insert.execute((
                    delivery.id.0.as_slice(),
                    recipient.user.as_str(),
                    recipient.device.0,
                    delivery.sender.user.as_str(),
                    delivery.sender.device.0,
                    int(delivery.server_time),
                    delivery.envelope.to_bytes(),
                ))?;
            }
            Ok(())
        })
    }

    fn queued(
        &self,
        recipient: &DeviceAddress,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<QueuedEnvelope>, StorageError>> + Send {
        let recipient = recipient.clone();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, envelope_id, sender_user, sender_device, server_time, envelope
                 FROM queue
                 WHERE recipient_user = ?1 AND recipient_device = ?2 AND seq > ?3
                 ORDER BY seq LIMIT ?4",
            )?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let mut rows = stmt.query((
                recipient.user.as_str(),
                recipient.device.0,
                int(after),
                limit,
            ))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(queued_envelope(row)?);
            }
            Ok(out)
        })
    }

    fn ack(
        &self,
        recipient: &DeviceAddress,
        ids: &[EnvelopeId],
    ) -> impl Future<Output = Result<AckOutcome, StorageError>> + Send {
        let recipient = recipient.clone();
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        self.write(move |tx| {
            let user = recipient.user.as_str();
            let device = recipient.device.0;
            let mut outcome = AckOutcome::default();
            for chunk in ids.chunks(ACK_CHUNK) {
                let marks = placeholders(chunk.len());
                let ids: Vec<&[u8]> = chunk.iter().map(|id| id.0.as_slice()).collect();
                let mut params: Vec<&dyn ToSql> = vec![&user, &device];
                params.extend(ids.iter().map(|id| id as &dyn ToSql));
                let removed = tx.execute(
                    &format!(
                        "DELETE FROM queue WHERE recipient_user = ? AND recipient_device = ?
                         AND envelope_id IN ({marks})"
                    ),
                    params.as_slice(),
                )?;
                // Whatever still matches is in another device's queue.
                let foreign: i64 = tx.query_row(
                    &format!("SELECT COUNT(*) FROM queue WHERE envelope_id IN ({marks})"),
                    &params[2..],
                    |row| row.get(0),
                )?;
                outcome.removed += removed as u64;
                outcome.foreign += uint(foreign, "queue")?;
            }
            Ok(outcome)
        })
    }

    fn queue_depth(&self) -> impl Future<Output = Result<u64, StorageError>> + Send {
        self.read(|conn| {
            let count: i64 = conn.query_row("SELECT COUNT(*) FROM queue", (), |row| row.get(0))?;
            uint(count, "queue")
        })
    }

    fn purge_envelopes(
        &self,
        before: u64,
    ) -> impl Future<Output = Result<u64, StorageError>> + Send {
        self.write(move |tx| {
            let deleted = tx.execute("DELETE FROM queue WHERE server_time < ?1", [int(before)])?;
            Ok(deleted as u64)
        })
    }

    fn purge_link_permissions(
        &self,
        now: u64,
    ) -> impl Future<Output = Result<u64, StorageError>> + Send {
        self.write(move |tx| {
            let deleted = tx.execute(
                "DELETE FROM link_permissions WHERE expires_at <= ?1",
                [int(now)],
            )?;
            Ok(deleted as u64)
        })
    }

    fn set_push_token(
        &self,
        address: &DeviceAddress,
        token: Option<&str>,
    ) -> impl Future<Output = Result<(), StorageError>> + Send {
        let (address, token) = (address.clone(), token.map(str::to_owned));
        self.write(move |tx| {
            let updated = tx.execute(
                "UPDATE devices SET push_token = ?3 WHERE user_id = ?1 AND device_id = ?2",
                (address.user.as_str(), address.device.0, token),
            )?;
            if updated == 0 {
                return Err(StorageError::NoSuchDevice);
            }
            Ok(())
        })
    }

    fn push_token(
        &self,
        address: &DeviceAddress,
    ) -> impl Future<Output = Result<Option<String>, StorageError>> + Send {
        let address = address.clone();
        self.read(move |conn| {
            let token: Option<Option<String>> = conn
                .prepare_cached(
                    "SELECT push_token FROM devices WHERE user_id = ?1 AND device_id = ?2",
                )?
                .query_row((address.user.as_str(), address.device.0), |row| row.get(0))
                .optional()?;
            Ok(token.flatten())
        })
    }

    fn add_blob(&self, blob: &BlobRecord) -> impl Future<Output = Result<(), StorageError>> + Send {
        let blob = blob.clone();
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO blobs (blob_id, owner_user, owner_device, size, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                (
                    blob.blob.0.as_slice(),
                    blob.owner.user.as_str(),
                    blob.owner.device.0,
                    int(blob.size),
                    int(blob.created_at),
                ),
            )?;
            Ok(())
        })
    }

    fn blob(
        &self,
        blob: &BlobId,
    ) -> impl Future<Output = Result<Option<BlobRecord>, StorageError>> + Send {
        let blob = *blob;
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT blob_id, owner_user, owner_device, size, created_at
                 FROM blobs WHERE blob_id = ?1",
            )?;
            let mut rows = stmt.query([blob.0.as_slice()])?;
            rows.next()?.map(blob_record).transpose()
        })
    }

    fn blob_bytes(&self, user: &UserId) -> impl Future<Output = Result<u64, StorageError>> + Send {
        let user = user.clone();
        self.read(move |conn| {
            let bytes: i64 = conn
                .prepare_cached("SELECT COALESCE(SUM(size), 0) FROM blobs WHERE owner_user = ?1")?
                .query_row([user.as_str()], |row| row.get(0))?;
            uint(bytes, "blobs")
        })
    }

    fn purge_blobs(
        &self,
        before: u64,
    ) -> impl Future<Output = Result<Vec<BlobId>, StorageError>> + Send {
        self.write(move |tx| {
            let blobs = {
                let mut stmt = tx.prepare(
                    "SELECT blob_id FROM blobs WHERE created_at < ?1 ORDER BY created_at, blob_id",
                )?;
                let mut rows = stmt.query([int(before)])?;
                let mut blobs = Vec::new();
                while let Some(row) = rows.next()? {
                    blobs.push(decode::blob_id(&row.get::<_, Vec<u8>>(0)?, "blobs")?);
                }
                blobs
            };
            tx.execute("DELETE FROM blobs WHERE created_at < ?1", [int(before)])?;
            Ok(blobs)
        })
    }
}
