//! `hush-server`: the Hush reference server.
//!
//! With no configuration it runs on `127.0.0.1:7443` with SQLite and blobs
//! under `./hush-data` and a self-signed development certificate
//! (`./hush-data/dev-cert.pem`, which clients pin). See `docs/server.md`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hush_server::blob::{BlobStore, LocalBlobStore};
use hush_server::config::{Config, LogFormat};
use hush_server::push::{PushHook, Webhook};
use hush_server::storage::{AnyStorage, MysqlStorage, SqliteStorage, Storage};

/// The Hush reference server: a TLS 1.3 relay with SQLite or MySQL storage.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (every setting has a default; see docs/server.md).
    #[arg(long, short, env = "HUSH_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Address of the TLS listener [default: 127.0.0.1:7443].
    #[arg(long, env = "HUSH_LISTEN", global = true)]
    listen: Option<std::net::SocketAddr>,
    /// A name clients dial this server by; repeat for several
    /// [default: localhost, 127.0.0.1, ::1].
    #[arg(
        long = "server-name",
        env = "HUSH_SERVER_NAMES",
        value_delimiter = ',',
        global = true
    )]
    server_names: Vec<String>,
    /// Data folder: SQLite database, blobs, development certificate [default: ./hush-data].
    #[arg(long, env = "HUSH_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// `mysql://user:password@host:port/database`; unset for SQLite.
    #[arg(long, env = "HUSH_DATABASE_URL", global = true)]
    database_url: Option<String>,
    /// PEM certificate chain [default: the development certificate].
    #[arg(long, env = "HUSH_TLS_CERT", global = true)]
    tls_cert: Option<PathBuf>,
    /// PEM private key [default: the development key].
    #[arg(long, env = "HUSH_TLS_KEY", global = true)]
    tls_key: Option<PathBuf>,
    /// Admin listener (`/healthz`, `/metrics`); empty to disable [default: 127.0.0.1:7444].
    #[arg(long, env = "HUSH_ADMIN_LISTEN", global = true)]
    admin_listen: Option<String>,
    /// Log format.
    #[arg(long, env = "HUSH_LOG_FORMAT", global = true)]
    log_format: Option<LogFormat>,
    /// Push hook URL (`http://host:port/path`).
    #[arg(long, env = "HUSH_PUSH_WEBHOOK", global = true)]
    push_webhook: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the server (the default).
    Serve,
    /// Applies database migrations and exits.
    Migrate,
    /// Deletes expired messages and blobs and abandoned uploads, and exits.
    Purge,
    /// Writes a self-signed development certificate for the server names.
    GenDevCert {
        /// Overwrite an existing certificate.
        #[arg(long)]
        force: bool,
    },
    /// Deletes an account with all its data and blobs.
    DeleteAccount {
        /// The user id.
        user: String,
    },
}

impl Cli {
    fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if !self.server_names.is_empty() {
            config.server_names.clone_from(&self.server_names);
        }
        if let Some(v) = &self.data_dir {
            config.data_dir.clone_from(v);
        }
        if let Some(v) = &self.database_url {
            config.database_url.clone_from(v);
        }
        if let Some(v) = &self.tls_cert {
            config.tls_cert.clone_from(v);
        }
        if let Some(v) = &self.tls_key {
            config.tls_key.clone_from(v);
        }
        if let Some(v) = &self.admin_listen {
            config.admin_listen.clone_from(v);
        }
        if let Some(v) = self.log_format {
            config.log_format = v;
        }
        if let Some(v) = &self.push_webhook {
            config.push_webhook.clone_from(v);
        }
        config.validate()?;
        Ok(config)
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Opens the configured database and applies missing migrations.
async fn open_storage(config: &Config) -> anyhow::Result<AnyStorage> {
    let storage = if config.database_url.is_empty() {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating {}", config.data_dir.display()))?;
        let path = config.sqlite_path();
        AnyStorage::Sqlite(
            SqliteStorage::open(&path).with_context(|| format!("opening {}", path.display()))?,
        )
    } else {
        AnyStorage::Mysql(
            MysqlStorage::connect(&config.database_url, config.database_pool_size)
                .await
                .context("connecting to MySQL")?,
        )
    };
    let version = storage.migrate().await.context("migrating the database")?;
    tracing::info!(version, "database schema");
    Ok(storage)
}

/// Makes the development certificate on first start when none is configured.
fn ensure_dev_cert(config: &Config, force: bool) -> anyhow::Result<()> {
    let (cert, key) = (config.cert_path(), config.key_path());
    if force || !cert.exists() || !key.exists() {
        hush_server::tls::generate_dev_cert(&config.server_names, &cert, &key)?;
        tracing::info!(certificate = %cert.display(), "wrote a self-signed development certificate; clients pin this file");
    }
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    if config.uses_dev_cert() {
        ensure_dev_cert(&config, false)?;
    }
    let tls = hush_server::tls::server_config(&config.cert_path(), &config.key_path())?;
    let storage = open_storage(&config).await?;
    let blobs = LocalBlobStore::open(&config.blob_dir())?;
    let push: Option<Arc<dyn PushHook>> = if config.push_webhook.is_empty() {
        None
    } else {
        Some(Arc::new(Webhook::new(&config.push_webhook)?))
    };
    let server = hush_server::start(config, storage, blobs, tls, push).await?;
    if let Some(admin) = server.admin_address {
        tracing::info!(%admin, "admin listener (/healthz, /metrics)");
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown(Duration::from_secs(10)).await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.config()?;
    init_logs(config.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Migrate => open_storage(&config).await.map(drop),
        Command::Purge => {
            let storage = open_storage(&config).await?;
            let blobs = LocalBlobStore::open(&config.blob_dir())?;
            let purged = hush_server::server::purge(&config, &storage, &blobs)
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            println!(
                "purged {} envelopes, {} blobs, {} partial uploads, {} link permissions, {} orphaned blob files",
                purged.envelopes,
                purged.blobs,
                purged.partial_uploads,
                purged.link_permissions,
                purged.orphan_blobs
            );
            Ok(())
        }
        Command::GenDevCert { force } => {
            if !config.uses_dev_cert() {
                anyhow::bail!(
                    "a certificate is configured (tls_cert); gen-dev-cert writes only the development one"
                );
            }
            if !force && config.cert_path().exists() {
                anyhow::bail!(
                    "{} exists; pass --force to replace it",
                    config.cert_path().display()
                );
            }
            ensure_dev_cert(&config, true)?;
            println!("{}", config.cert_path().display());
            Ok(())
        }
        Command::DeleteAccount { user } => {
            let user = hush::keys::UserId::new(user)?;
            let storage = open_storage(&config).await?;
            let blobs = LocalBlobStore::open(&config.blob_dir())?;
            if storage.identity(&user).await?.is_none() {
                anyhow::bail!("no account {}", user.as_str());
            }
            let removed = storage.delete_account(&user).await?;
            for blob in &removed {
                blobs.delete(blob).await?;
            }
            println!("deleted {} and {} blobs", user.as_str(), removed.len());
            Ok(())
        }
    }
}
