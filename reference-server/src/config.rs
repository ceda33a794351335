//! Server settings: a TOML file, overridden by environment variables and
//! flags (see `main.rs`). Every field has a default, so an empty file — or
//! none — gives a server that runs: SQLite and blobs under `./hush-data`, a
//! self-signed development certificate, loopback only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hush::wire::protocol::{MAX_DEVICES_PER_USER, MAX_FRAME_LEN, MAX_PREAUTH_FRAME_LEN};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The port the server listens on by default.
pub const DEFAULT_PORT: u16 = 7443;
/// The port of the admin listener by default.
pub const DEFAULT_ADMIN_PORT: u16 = 7444;

/// Why the settings are unusable.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for these settings.
    #[error("invalid configuration file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("invalid setting {0}")]
    Invalid(String),
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// All settings of the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the TLS listener. Default `127.0.0.1:7443`.
    pub listen: SocketAddr,
    /// The names clients dial this server by (DNS names or IP literals). An
    /// auth or registration signature must name one of them. Default
    /// `["localhost", "127.0.0.1", "::1"]`.
    pub server_names: Vec<String>,
    /// Folder of the SQLite database, the blobs and the development
    /// certificate. Default `./hush-data`.
    pub data_dir: PathBuf,
    /// `mysql://user:password@host:port/database` for MySQL; empty for the
    /// embedded SQLite database `<data_dir>/hush.db`. Default empty.
    pub database_url: String,
    /// MySQL connections at most. Default 10.
    pub database_pool_size: usize,
    /// PEM certificate chain. Default empty: `<data_dir>/dev-cert.pem`, a
    /// self-signed certificate for `server_names` made on first start.
    pub tls_cert: PathBuf,
    /// PEM private key. Default empty: `<data_dir>/dev-key.pem`.
    pub tls_key: PathBuf,
    /// Address of the plain-HTTP admin listener (`/healthz`, `/metrics`);
    /// keep it on loopback. Empty string to disable. Default `127.0.0.1:7444`.
    pub admin_listen: String,
    /// Log format. Default `human`.
    pub log_format: LogFormat,
    /// URL the push hook POSTs to when a message is queued for an offline
    /// device with a push token (`http://host[:port]/path`, a gateway on the
    /// same machine or network). Default empty: no hook.
    pub push_webhook: String,
    /// Seconds a queued envelope or a blob is kept. Default 30 days.
    pub message_ttl: u64,
    /// Seconds between runs of the periodic purge. Default 3600.
    pub purge_interval: u64,
    /// Limits.
    pub limits: Limits,
}

/// Limits; each is enforced and has a test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Open connections at most. Default 10,000.
    pub max_connections: usize,
    /// Bytes of incoming frames buffered across all connections; when spent,
    /// reads pause. Default 512 MiB.
    pub incoming_buffer_bytes: usize,
    /// Connections per IP address that have not authenticated. Default 10.
    pub preauth_connections_per_ip: usize,
    /// New connections per IP address per second (token bucket rate).
    /// Default 5.
    pub new_connections_per_ip_per_sec: f64,
    /// Burst of new connections per IP address. Default 20.
    pub new_connections_per_ip_burst: f64,
    /// Largest frame of an authenticated connection, in bytes. Default and
    /// maximum: the protocol's `MAX_FRAME_LEN`.
    pub max_frame_len: usize,
    /// Largest frame before authentication. Default and maximum: the
    /// protocol's `MAX_PREAUTH_FRAME_LEN`.
    pub max_preauth_frame_len: usize,
    /// Seconds for the TLS handshake. Default 10.
    pub tls_handshake_timeout: u64,
    /// Seconds from connect to authentication (or registration). Default 30.
    pub auth_timeout: u64,
    /// Seconds a device being linked may wait for its link message. Default 600.
    pub provisioning_timeout: u64,
    /// Seconds without a frame from the client before the connection is
    /// closed (clients ping every 30 s). Default 90.
    pub idle_timeout: u64,
    /// Frames queued for a connection by other connections (live messages,
    /// pushes) at most; past it the connection is closed. Default 512.
    pub outbound_queue_frames: usize,
    /// Bytes queued for one connection at most, in each of its two queues
    /// (frames for the socket; pushes from other connections). A connection
    /// whose pushes do not fit is closed (its envelopes stay queued); its own
    /// answers wait for room. Default 8 MiB.
    pub outbound_queue_bytes: usize,
    /// Sends per device per second (token bucket rate). Default 20.
    pub sends_per_sec: f64,
    /// Burst of sends per device. Default 100.
    pub sends_burst: f64,
    /// Bundle fetches per device per second. Default 5.
    pub prekey_fetches_per_sec: f64,
    /// Burst of bundle fetches per device. Default 50.
    pub prekey_fetches_burst: f64,
    /// New accounts and linked devices per second, server-wide (token bucket
    /// rate). Default 10.
    pub registrations_per_sec: f64,
    /// Burst of registrations. Default 100.
    pub registrations_burst: f64,
    /// Other requests per device per second (publishing keys and
    /// certificates, link permissions, push tokens, uploads, downloads,
    /// device changes). Default 200.
    pub requests_per_sec: f64,
    /// Burst of other requests per device. Default 1,000.
    pub requests_burst: f64,
    /// One-time prekeys a device may have on the server at most. Default 1,000.
    pub max_one_time_prekeys: u64,
    /// Devices per account at most (at most the protocol's 6). Default 6.
    pub max_devices: usize,
    /// Concurrent uploads per user. Default 5.
    pub uploads_per_user: usize,
    /// Concurrent uploads in all. Default 1,000.
    pub uploads_global: usize,
    /// Attachment bytes one user may keep on the server: finished blobs not
    /// yet purged (they live `message_ttl`) plus the declared size of the
    /// user's uploads in progress. An upload that would pass it is refused
    /// (`LimitReached`). Default 2 GiB.
    pub blob_bytes_per_user: u64,
    /// One-time prekeys left below which a device is told to publish more.
    /// Default 10.
    pub prekeys_low_threshold: u64,
    /// Seconds a link permission is valid. Default 600.
    pub link_permission_ttl: u64,
    /// Seconds a partial upload may stay idle before it is removed. Default 3600.
    pub upload_idle_timeout: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            server_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            data_dir: PathBuf::from("hush-data"),
            database_url: String::new(),
            database_pool_size: 10,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            admin_listen: format!("127.0.0.1:{DEFAULT_ADMIN_PORT}"),
            log_format: LogFormat::Human,
            push_webhook: String::new(),
            message_ttl: 30 * 24 * 3600,
            purge_interval: 3600,
            limits: Limits::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            incoming_buffer_bytes: 512 << 20,
            preauth_connections_per_ip: 10,
            new_connections_per_ip_per_sec: 5.0,
            new_connections_per_ip_burst: 20.0,
            max_frame_len: MAX_FRAME_LEN,
            max_preauth_frame_len: MAX_PREAUTH_FRAME_LEN,
            tls_handshake_timeout: 10,
            auth_timeout: 30,
            provisioning_timeout: 600,
            idle_timeout: 90,
            outbound_queue_frames: 512,
            outbound_queue_bytes: 8 << 20,
            sends_per_sec: 20.0,
            sends_burst: 100.0,
            prekey_fetches_per_sec: 5.0,
            prekey_fetches_burst: 50.0,
            registrations_per_sec: 10.0,
            registrations_burst: 100.0,
            requests_per_sec: 200.0,
            requests_burst: 1000.0,
            max_one_time_prekeys: 1000,
            max_devices: MAX_DEVICES_PER_USER,
            uploads_per_user: 5,
            uploads_global: 1000,
            blob_bytes_per_user: 2 << 30,
            prekeys_low_threshold: 10,
            link_permission_ttl: 600,
            upload_idle_timeout: 3600,
        }
    }
}

impl Config {
    /// Reads a TOML file; missing fields take their defaults.
    ///
    /// # Errors
    /// [`ConfigError::Read`] or [`ConfigError::Parse`].
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// The SQLite database file.
    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join("hush.db")
    }

    /// The attachment folder: `blobs/` (finished) and `partial/` (uploads
    /// in progress) inside it.
    pub fn blob_dir(&self) -> PathBuf {
        self.data_dir.join("attachments")
    }

    /// The certificate file in use (the configured one, or the development one).
    pub fn cert_path(&self) -> PathBuf {
        if self.tls_cert.as_os_str().is_empty() {
            self.data_dir.join("dev-cert.pem")
        } else {
            self.tls_cert.clone()
        }
    }

    /// The private key file in use.
    pub fn key_path(&self) -> PathBuf {
        if self.tls_key.as_os_str().is_empty() {
            self.data_dir.join("dev-key.pem")
        } else {
            self.tls_key.clone()
        }
    }

    /// Whether the certificate is the self-signed development one.
    pub fn uses_dev_cert(&self) -> bool {
        self.tls_cert.as_os_str().is_empty()
    }

    /// Checks ranges and puts the server names in canonical form.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the setting.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        let bad = |what: &str| Err(ConfigError::Invalid(what.to_owned()));
        let mut names = Vec::new();
        for name in &self.server_names {
            match hush::wire::protocol::canonical_server_name(name) {
                Ok(n) => names.push(n),
                Err(_) => return bad(&format!("server_names: {name:?}")),
            }
        }
        if names.is_empty() {
            return bad("server_names: at least one");
        }
        self.server_names = names;
        let l = &self.limits;
        if l.max_frame_len == 0 || l.max_frame_len > MAX_FRAME_LEN {
            return bad("limits.max_frame_len");
        }
        if l.max_preauth_frame_len == 0 || l.max_preauth_frame_len > MAX_PREAUTH_FRAME_LEN {
            return bad("limits.max_preauth_frame_len");
        }
        if l.outbound_queue_bytes < (2 << 20) || l.outbound_queue_bytes > u32::MAX as usize {
            return bad("limits.outbound_queue_bytes: from 2 MiB to 4 GiB");
        }
        for (name, secs) in [
            ("tls_handshake_timeout", l.tls_handshake_timeout),
            ("auth_timeout", l.auth_timeout),
            ("provisioning_timeout", l.provisioning_timeout),
            ("idle_timeout", l.idle_timeout),
            ("link_permission_ttl", l.link_permission_ttl),
            ("upload_idle_timeout", l.upload_idle_timeout),
        ] {
            if secs == 0 || secs > 366 * 24 * 3600 {
                return bad(&format!("limits.{name}: from 1 second to a year"));
            }
        }
        if self.message_ttl == 0
            || self.message_ttl > 100 * 366 * 24 * 3600
            || self.purge_interval == 0
        {
            return bad("message_ttl and purge_interval: at least 1 second");
        }
        if l.incoming_buffer_bytes < 2 * l.max_frame_len
            || l.incoming_buffer_bytes > u32::MAX as usize
        {
            return bad("limits.incoming_buffer_bytes: at least twice max_frame_len");
        }
        if l.max_devices == 0 || l.max_devices > MAX_DEVICES_PER_USER {
            return bad("limits.max_devices");
        }
        for (name, rate, burst) in [
            ("sends", l.sends_per_sec, l.sends_burst),
            (
                "prekey_fetches",
                l.prekey_fetches_per_sec,
                l.prekey_fetches_burst,
            ),
            (
                "new_connections_per_ip",
                l.new_connections_per_ip_per_sec,
                l.new_connections_per_ip_burst,
            ),
        ] {
            if !(rate > 0.0 && rate.is_finite() && burst >= 1.0 && burst.is_finite()) {
                return bad(&format!("limits.{name}: rate > 0 and burst >= 1"));
            }
        }
        if l.max_connections == 0
            || l.preauth_connections_per_ip == 0
            || l.outbound_queue_frames == 0
            || l.uploads_per_user == 0
            || l.uploads_global == 0
        {
            return bad("limits: counts must be at least 1");
        }
        if self.database_pool_size == 0 {
            return bad("database_pool_size");
        }
        if !self.push_webhook.is_empty() && crate::push::Webhook::new(&self.push_webhook).is_err() {
            return bad("push_webhook: an http://host[:port]/path URL");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn an_empty_file_gives_the_defaults_and_they_validate() {
        let mut c: Config = toml::from_str("").unwrap();
        assert_eq!(c, Config::default());
        c.validate().unwrap();
        assert_eq!(c.sqlite_path(), PathBuf::from("hush-data/hush.db"));
        assert!(c.uses_dev_cert());
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        assert!(toml::from_str::<Config>("lissen = \"x\"").is_err());
        let mut c: Config = toml::from_str("[limits]\nmax_devices = 7").unwrap();
        assert!(c.validate().is_err());
        let mut c: Config = toml::from_str("server_names = [\"Chat.Example.org\"]").unwrap();
        c.validate().unwrap();
        assert_eq!(c.server_names, ["chat.example.org"]);
        let mut c: Config = toml::from_str("server_names = [\"host:443\"]").unwrap();
        assert!(c.validate().is_err());
    }
}
