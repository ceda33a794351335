//! The `hush-server` process under load: started on a fresh database with
//! the limits the run needs, watched through `/proc` and `/metrics`, and
//! stopped with SIGTERM at the end.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hush_server::net;
use mysql_async::prelude::Queryable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::proc;

/// The name clients dial the server by.
pub(crate) const NAME: &str = "localhost";

/// How the server is run.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// The `hush-server` binary [default: the one beside this binary].
    #[arg(long, global = true)]
    server_bin: Option<PathBuf>,
    /// A MySQL or MariaDB server, e.g. `mysql://root@127.0.0.1:3306`: the run
    /// gets a fresh database there, dropped at the end. Without it the
    /// server uses its embedded SQLite database.
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// MySQL connections the server keeps [server default: 10].
    #[arg(long, global = true)]
    pool_size: Option<usize>,
}

/// What the run needs the server to allow.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    max_connections: usize,
}

impl Settings {
    /// Room for `n` connections of the load and a few more; never below the
    /// server's default cap.
    pub(crate) fn for_connections(n: usize) -> Self {
        Self {
            max_connections: (n + 100).max(10_000),
        }
    }

    /// The settings the run changes, as TOML. The per-IP limits are raised
    /// because every client comes from 127.0.0.1, the send rate because one
    /// device here sends as much as many users do, and the server-wide
    /// registration rate because a run registers thousands of accounts at
    /// once.
    fn toml(self, pool_size: Option<usize>) -> String {
        let pool = pool_size
            .map(|n| format!("database_pool_size = {n}\n"))
            .unwrap_or_default();
        format!(
            "{pool}[limits]\n\
             max_connections = {}\n\
             preauth_connections_per_ip = 1000000\n\
             new_connections_per_ip_per_sec = 1000000.0\n\
             new_connections_per_ip_burst = 1000000.0\n\
             sends_per_sec = 1000000.0\n\
             sends_burst = 1000000.0\n\
             registrations_per_sec = 1000000.0\n\
             registrations_burst = 1000000.0\n",
            self.max_connections
        )
    }
}

/// A MySQL database made for the run.
struct MysqlDatabase {
    pool: mysql_async::Pool,
    name: String,
    url: String,
}

/// A running `hush-server` process.
pub(crate) struct Server {
    child: Child,
    pid: String,
    /// `127.0.0.1:port` of the TLS listener.
    pub(crate) address: String,
    admin: String,
    /// Trusts the server's development certificate.
    pub(crate) tls: Arc<rustls::ClientConfig>,
    dir: tempfile::TempDir,
    settings: Settings,
    pool_size: Option<usize>,
    mysql: Option<MysqlDatabase>,
    /// The MySQL server's process, when it runs on this machine.
    database_pid: Option<String>,
}

/// CPU time and memory of the server, the database server, this process
/// and the whole machine at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Usage {
    pub(crate) server: proc::Sample,
    pub(crate) database: Option<proc::Sample>,
    pub(crate) client: proc::Sample,
    machine_busy: f64,
}

impl Usage {
    /// Lines for the report: each party's CPU share since `earlier`,
    /// including what other processes used meanwhile (noise).
    pub(crate) fn cpu_since(&self, earlier: &Self, wall: Duration) -> Vec<(String, String)> {
        let share = |now: &proc::Sample, then: &proc::Sample| now.cpu_share_since(then, wall);
        let server = share(&self.server, &earlier.server);
        let client = share(&self.client, &earlier.client);
        let database = match (&self.database, &earlier.database) {
            (Some(now), Some(then)) => Some(share(now, then)),
            _ => None,
        };
        let machine = (self.machine_busy - earlier.machine_busy) / wall.as_secs_f64().max(1e-9);
        let other = machine - server - client - database.unwrap_or(0.0);
        let pct = |x: f64| format!("{:.1} % of one core", 100.0 * x);
        let mut lines = vec![
            ("CPU: hush-server".to_owned(), pct(server)),
            ("CPU: hush-load (the clients)".to_owned(), pct(client)),
        ];
        if let Some(d) = database {
            lines.push(("CPU: the MySQL server".to_owned(), pct(d)));
        }
        lines.push((
            "CPU: other processes (noise)".to_owned(),
            format!(
                "{} (the machine has {} cores)",
                pct(other.max(0.0)),
                std::thread::available_parallelism().map_or(0, usize::from)
            ),
        ));
        lines
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("pid", &self.pid)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Starts the server on a fresh database and waits until it accepts
    /// TLS connections.
    pub(crate) async fn start(options: &Options, settings: Settings) -> anyhow::Result<Self> {
        let binary = match &options.server_bin {
            Some(b) => b.clone(),
            None => std::env::current_exe()
                .context("locating this binary")?
                .with_file_name("hush-server"),
        };
        anyhow::ensure!(
            binary.exists(),
            "no server binary at {} (build it: cargo build --release -p hush-server, or pass --server-bin)",
            binary.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("hush-load-")
            .tempdir()
            .context("temporary folder")?;
        let mysql = match &options.database_url {
            Some(url) => Some(MysqlDatabase::create(url).await?),
            None => None,
        };
        let (address, admin) = (free_address()?, free_address()?);
        let config = dir.path().join("load.toml");
        std::fs::write(&config, settings.toml(options.pool_size))
            .context("writing the configuration")?;
        let mut command = Command::new(&binary);
        command
            .arg("--config")
            .arg(&config)
            .args(["--listen", &address])
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--server-name", NAME, "--admin-listen", &admin])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if let Some(db) = &mysql {
            command.args(["--database-url", &db.url]);
        }
        command.arg("serve");
        let mut child = command.spawn().context("starting hush-server")?;
        let tls = match wait_ready(&mut child, &dir.path().join("dev-cert.pem"), &address).await {
            Ok(tls) => tls,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        Ok(Self {
            pid: child.id().to_string(),
            child,
            address,
            admin,
            tls,
            dir,
            settings,
            pool_size: options.pool_size,
            database_pid: mysql
                .as_ref()
                .and_then(|_| proc::pid_of(&["mariadbd", "mysqld"])),
            mysql,
        })
    }

    /// The command line, without the temporary folder's location.
    pub(crate) fn command(&self) -> String {
        let db = self
            .mysql
            .as_ref()
            .map(|db| format!(" --database-url {}", db.url))
            .unwrap_or_default();
        format!(
            "hush-server --config <tmp>/load.toml --listen {} --data-dir <tmp> --server-name {NAME} --admin-listen {}{db} serve",
            self.address, self.admin
        )
    }

    /// The settings that differ from the server's defaults.
    pub(crate) fn settings_text(&self) -> String {
        self.settings.toml(self.pool_size)
    }

    /// Which database, for the report.
    pub(crate) async fn storage_kind(&self) -> String {
        match &self.mysql {
            None => "SQLite, embedded (WAL, synchronous = FULL)".into(),
            Some(db) => {
                let version: Option<String> = match db.pool.get_conn().await {
                    Ok(mut c) => c.query_first("SELECT VERSION()").await.ok().flatten(),
                    Err(_) => None,
                };
                format!(
                    "MySQL protocol, server {}, on the same machine; pool of {} connections",
                    version.unwrap_or_else(|| "?".into()),
                    self.pool_size.unwrap_or(10)
                )
            }
        }
    }

    /// The server's memory and CPU time now.
    pub(crate) fn sample(&self) -> anyhow::Result<proc::Sample> {
        proc::sample(&self.pid)
    }

    /// CPU time and memory of everything involved, now.
    pub(crate) fn usage(&self) -> anyhow::Result<Usage> {
        Ok(Usage {
            server: self.sample()?,
            database: self
                .database_pid
                .as_deref()
                .and_then(|pid| proc::sample(pid).ok()),
            client: proc::sample("self")?,
            machine_busy: proc::machine_busy_secs()?,
        })
    }

    /// `/metrics`, as series name → value.
    pub(crate) async fn metrics(&self) -> anyhow::Result<Metrics> {
        let mut stream = tokio::net::TcpStream::connect(&self.admin)
            .await
            .context("admin listener")?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        let (_, body) = text
            .split_once("\r\n\r\n")
            .context("no body in the /metrics answer")?;
        Ok(Metrics(
            body.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.rsplit_once(' '))
                .filter_map(|(name, v)| Some((name.to_owned(), v.parse().ok()?)))
                .collect(),
        ))
    }

    /// Bytes the database holds: SQLite pages in use (free pages left out,
    /// the write-ahead log's committed pages in); for MySQL, data and index
    /// lengths after `ANALYZE TABLE` (InnoDB's estimate, in 16 KiB pages).
    pub(crate) async fn stored_bytes(&self) -> anyhow::Result<u64> {
        match &self.mysql {
            None => {
                let path = self.dir.path().join("hush.db");
                tokio::task::spawn_blocking(move || sqlite_bytes(&path)).await?
            }
            Some(db) => db.stored_bytes().await,
        }
    }

    /// Envelopes in the server's queue (stored, not yet acknowledged).
    pub(crate) async fn queued_envelopes(&self) -> anyhow::Result<u64> {
        match &self.mysql {
            None => {
                let path = self.dir.path().join("hush.db");
                tokio::task::spawn_blocking(move || {
                    let n: i64 =
                        open_sqlite(&path)?
                            .query_row("SELECT COUNT(*) FROM queue", [], |row| row.get(0))?;
                    Ok(n as u64)
                })
                .await?
            }
            Some(db) => {
                let mut conn = db.pool.get_conn().await?;
                let n: Option<u64> = conn
                    .query_first(format!("SELECT COUNT(*) FROM `{}`.queue", db.name))
                    .await?;
                Ok(n.unwrap_or(0))
            }
        }
    }

    /// Waits until the queue is empty (every message acknowledged), at most
    /// `limit`; how long it took, or `None`.
    pub(crate) async fn until_queue_empty(
        &self,
        limit: Duration,
    ) -> anyhow::Result<Option<Duration>> {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if self.queued_envelopes().await? == 0 {
                return Ok(Some(start.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(None)
    }

    /// Stops the server with SIGTERM (it drains its connections), and drops
    /// the MySQL database.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid])
            .status()
            .context("kill -TERM")?;
        let mut exited = false;
        for _ in 0..300 {
            if self.child.try_wait()?.is_some() {
                exited = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !exited {
            eprintln!("hush-server did not stop within 30 s of SIGTERM; killing it");
            self.child.kill()?;
            self.child.wait()?;
        }
        if let Some(db) = self.mysql.take() {
            db.drop_database().await?;
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // After an error: never leave a server behind.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The server's counters and gauges.
#[derive(Debug, Default)]
pub(crate) struct Metrics(HashMap<String, f64>);

impl Metrics {
    pub(crate) fn value(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    /// Limits that refused something, with counts: `name n, …`.
    pub(crate) fn rejections(&self) -> String {
        let mut hits: Vec<String> = self
            .0
            .iter()
            .filter(|(k, v)| k.starts_with("hush_rejections_total") && **v > 0.0)
            .map(|(k, v)| format!("{} {v}", k.trim_start_matches("hush_rejections_total")))
            .collect();
        hits.sort();
        if hits.is_empty() {
            "none".into()
        } else {
            hits.join(", ")
        }
    }

    /// Storage calls and their mean latency since `earlier`.
    pub(crate) fn storage_calls_since(&self, earlier: &Self) -> (f64, f64) {
        let count =
            self.value("hush_storage_seconds_count") - earlier.value("hush_storage_seconds_count");
        let sum =
            self.value("hush_storage_seconds_sum") - earlier.value("hush_storage_seconds_sum");
        (count, if count > 0.0 { sum / count } else { 0.0 })
    }
}

fn free_address() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.to_string())
}

/// Waits until the server accepts TLS connections with its development
/// certificate, and returns a client configuration that trusts it.
async fn wait_ready(
    child: &mut Child,
    cert: &Path,
    address: &str,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    for _ in 0..1200 {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("hush-server exited at start: {status}");
        }
        if cert.exists()
            && let Ok(tls) = hush_server::tls::client_config(cert)
            && net::connect(address, NAME, tls.clone()).await.is_ok()
        {
            return Ok(tls);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("hush-server did not come up within a minute")
}

fn open_sqlite(path: &Path) -> anyhow::Result<rusqlite::Connection> {
    rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .context("opening the server's database read-only")
}

fn sqlite_bytes(path: &Path) -> anyhow::Result<u64> {
    let conn = open_sqlite(path)?;
    let pragma = |name: &str| -> anyhow::Result<u64> {
        Ok(conn.pragma_query_value(None, name, |row| row.get::<_, i64>(0))? as u64)
    };
    Ok(pragma("page_size")? * (pragma("page_count")? - pragma("freelist_count")?))
}

impl MysqlDatabase {
    async fn create(url: &str) -> anyhow::Result<Self> {
        let server = server_url(url);
        let pool = mysql_async::Pool::new(server);
        let name = format!("hush_load_{:016x}", rand::random::<u64>());
        let mut conn = pool
            .get_conn()
            .await
            .with_context(|| format!("connecting to {server}"))?;
        conn.query_drop(format!("CREATE DATABASE {name}"))
            .await
            .context("creating the database")?;
        Ok(Self {
            url: format!("{server}/{name}"),
            pool,
            name,
        })
    }

    async fn stored_bytes(&self) -> anyhow::Result<u64> {
        let mut conn = self.pool.get_conn().await?;
        let tables: Vec<String> = conn
            .exec(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = ?",
                (&self.name,),
            )
            .await?;
        for table in &tables {
            conn.query_drop(format!("ANALYZE TABLE `{}`.`{table}`", self.name))
                .await?;
        }
        let bytes: Option<Option<u64>> = conn
            .exec_first(
                "SELECT CAST(SUM(data_length + index_length) AS UNSIGNED)
                 FROM information_schema.tables WHERE table_schema = ?",
                (&self.name,),
            )
            .await?;
        Ok(bytes.flatten().unwrap_or(0))
    }

    async fn drop_database(self) -> anyhow::Result<()> {
        let mut conn = self.pool.get_conn().await?;
        conn.query_drop(format!("DROP DATABASE IF EXISTS {}", self.name))
            .await
            .context("dropping the database")?;
        drop(conn);
        self.pool.disconnect().await?;
        Ok(())
    }
}

/// `mysql://user@host:port` without a database path.
fn server_url(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}
