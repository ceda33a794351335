//! The harness of the server's integration tests: a real server over TLS on
//! loopback with either backend, SDK clients driven by `hush_server::net`,
//! and a raw protocol client for the attacks.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses part of the harness"
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hush::SessionManager;
use hush::client::{Client, ClientConfig, ClientEvent};
use hush::keys::{DeviceAddress, DeviceAuthKeyPair, DeviceId, IdentityKeyPair, UserId};
use hush::store::{MemoryStore, StorageKey};
use hush::wire::content::Body;
use hush::wire::frame::{FrameDecoder, encode_frame};
use hush::wire::protocol::{
    ClientFrame, EnvelopeId, MAX_FRAME_LEN, ProtocolError, Push, Request, Response, ServerFrame,
};
use hush_server::RunningServer;
use hush_server::blob::LocalBlobStore;
use hush_server::config::Config;
use hush_server::net::{self, Connection, Driven, fresh_rng, unix_now};
use hush_server::storage::{AnyStorage, MysqlStorage, SqliteStorage, Storage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub const NAME: &str = "localhost";
pub const WAIT: Duration = Duration::from_secs(20);

/// Which storage backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Mysql,
}

/// The MySQL server for tests, or `None` to skip (never under CI).
pub fn mysql_url() -> Option<String> {
    match std::env::var("HUSH_TEST_MYSQL_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "HUSH_TEST_MYSQL_URL is not set: the MySQL tests must run in CI"
            );
            eprintln!("skipped: set HUSH_TEST_MYSQL_URL to run the MySQL tests");
            None
        }
    }
}

/// A fresh database on the test MySQL server; returns its URL.
pub async fn fresh_mysql_database(base: &str) -> String {
    let name = format!("hush_it_{:016x}", rand::random::<u64>());
    let pool = mysql_async::Pool::new(base);
    let mut conn = pool.get_conn().await.expect("MySQL reachable");
    mysql_async::prelude::Queryable::query_drop(&mut conn, format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    drop(conn);
    pool.disconnect().await.ok();
    let (prefix, _) = base.rsplit_once('/').expect("URL with a database");
    format!("{prefix}/{name}")
}

pub async fn drop_mysql_database(url: &str) {
    let (prefix, name) = url.rsplit_once('/').expect("URL with a database");
    let pool = mysql_async::Pool::new(format!("{prefix}/mysql").as_str());
    if let Ok(mut conn) = pool.get_conn().await {
        let _ = mysql_async::prelude::Queryable::query_drop(
            &mut conn,
            format!("DROP DATABASE IF EXISTS {name}"),
        )
        .await;
    }
    pool.disconnect().await.ok();
}

/// A server under test: its folder, configuration and the running server.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub backend: Backend,
    pub running: Option<RunningServer>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub address: String,
    /// The server as a separate process (the crash tests).
    pub child: Option<std::process::Child>,
}

/// Settings for tests: loopback, any free port, the given tweaks.
pub fn test_config(dir: &std::path::Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("address"),
        admin_listen: "127.0.0.1:0".into(),
        data_dir: dir.to_owned(),
        server_names: vec![NAME.into()],
        ..Config::default()
    }
}

impl TestServer {
    /// Starts a server; `None` when the backend is MySQL and no test
    /// database is configured (outside CI).
    pub async fn start(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Option<Self> {
        let mut server = Self::prepare(backend, tweak).await?;
        server.run().await;
        Some(server)
    }

    /// A server's folder, database and certificate, not started yet.
    pub async fn prepare(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Option<Self> {
        // `RUST_LOG=debug` shows the server's logs with a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = test_config(dir.path());
        if backend == Backend::Mysql {
            config.database_url = fresh_mysql_database(&mysql_url()?).await;
        }
        tweak(&mut config);
        config.validate().expect("valid test config");
        hush_server::tls::generate_dev_cert(
            &config.server_names,
            &config.cert_path(),
            &config.key_path(),
        )
        .expect("dev cert");
        let tls = hush_server::tls::client_config(&config.cert_path()).expect("client config");
        Some(Self {
            dir,
            config,
            backend,
            running: None,
            tls: Some(tls),
            address: String::new(),
            child: None,
        })
    }

    /// Starts the `hush-server` binary instead, on a fixed free port, and
    /// waits until it accepts connections.
    pub async fn spawn_process(backend: Backend) -> Option<Self> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = test_config(dir.path());
        if backend == Backend::Mysql {
            config.database_url = fresh_mysql_database(&mysql_url()?).await;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        config.listen = format!("127.0.0.1:{port}").parse().expect("address");
        let mut server = Self {
            dir,
            address: config.listen.to_string(),
            config,
            backend,
            running: None,
            tls: None,
            child: None,
        };
        server.respawn().await;
        Some(server)
    }

    /// (Re)starts the server process on the same data and port.
    pub async fn respawn(&mut self) {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_hush-server"));
        command
            .arg("--listen")
            .arg(&self.address)
            .arg("--data-dir")
            .arg(&self.config.data_dir)
            .arg("--server-name")
            .arg(NAME)
            .arg("--admin-listen=")
            .arg("serve")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null());
        if !self.config.database_url.is_empty() {
            command.arg("--database-url").arg(&self.config.database_url);
        }
        self.child = Some(command.spawn().expect("server binary"));
        for _ in 0..600 {
            if self.config.cert_path().exists()
                && let Ok(tls) = hush_server::tls::client_config(&self.config.cert_path())
                && net::connect(&self.address, NAME, tls.clone()).await.is_ok()
            {
                self.tls = Some(tls);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server process did not come up");
    }

    /// Kills the server process with SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reaped");
        }
    }

    pub async fn storage(&self) -> AnyStorage {
        let storage = if self.config.database_url.is_empty() {
            AnyStorage::Sqlite(SqliteStorage::open(&self.config.sqlite_path()).expect("sqlite"))
        } else {
            AnyStorage::Mysql(
                MysqlStorage::connect(&self.config.database_url, 4)
                    .await
                    .expect("mysql"),
            )
        };
        storage.migrate().await.expect("migrate");
        storage
    }

    /// (Re)starts the server on the same data, on the same port after the first start.
    pub async fn run(&mut self) {
        let storage = self.storage().await;
        let blobs = LocalBlobStore::open(&self.config.blob_dir()).expect("blobs");
        let tls =
            hush_server::tls::server_config(&self.config.cert_path(), &self.config.key_path())
                .expect("server tls");
        let push: Option<Arc<dyn hush_server::push::PushHook>> =
            if self.config.push_webhook.is_empty() {
                None
            } else {
                Some(Arc::new(
                    hush_server::push::Webhook::new(&self.config.push_webhook).expect("webhook"),
                ))
            };
        let running = hush_server::start(self.config.clone(), storage, blobs, tls, push)
            .await
            .expect("server starts");
        self.address = running.address.to_string();
        self.config.listen = running.address;
        self.running = Some(running);
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown(Duration::from_secs(2)).await;
        }
    }

    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.tls.clone().expect("the certificate is loaded")
    }

    pub fn metrics(&self) -> &hush_server::metrics::Metrics {
        &self.running.as_ref().expect("running").metrics
    }

    pub async fn finish(mut self) {
        self.stop().await;
        self.kill();
        if self.backend == Backend::Mysql {
            drop_mysql_database(&self.config.database_url).await;
        }
    }

    /// Registers a new account over the protocol; returns its first device, logged in.
    pub async fn register(&self, name: &str) -> Device {
        let mut rng = fresh_rng();
        let identity = IdentityKeyPair::generate(&mut rng);
        let auth = DeviceAuthKeyPair::generate(&mut rng);
        let user = UserId::new(name).expect("user id");
        let device = net::register_account(
            &self.address,
            NAME,
            self.tls(),
            &identity,
            &auth,
            user.clone(),
            WAIT,
        )
        .await
        .expect("registration");
        self.device(identity, auth, user, device).await
    }

    /// Creates the client of a registered device and logs it in.
    pub async fn device(
        &self,
        identity: IdentityKeyPair,
        auth: DeviceAuthKeyPair,
        user: UserId,
        device: DeviceId,
    ) -> Device {
        let mut rng = fresh_rng();
        let key = StorageKey::generate(&mut rng);
        let manager = SessionManager::create(
            MemoryStore::new(),
            &key,
            identity,
            auth,
            user,
            device,
            Default::default(),
            &mut rng,
            unix_now(),
        )
        .expect("manager");
        let address = manager.address().clone();
        let client = Client::new(manager, NAME, ClientConfig::default()).expect("client");
        let mut d = Device {
            driven: None,
            address,
            parked: Some(client),
            key,
            events: Vec::new(),
        };
        d.connect(self).await;
        // Published: the one-time prekeys go last, after the certificate and
        // the signed prekeys (the server answers a connection in order).
        d.wait(|e| matches!(e, ClientEvent::PreKeysReplenished { .. }))
            .await;
        d
    }

    /// Links a new device to `existing`'s account over the protocol.
    pub async fn link(&self, existing: &mut Device) -> Device {
        let auth = DeviceAuthKeyPair::generate(&mut fresh_rng());
        let (linked, device) = net::link_device(
            &self.address,
            NAME,
            self.tls(),
            existing.driven(),
            &auth,
            WAIT,
        )
        .await
        .expect("linked");
        self.device(linked.identity, auth, linked.user, device)
            .await
    }

    /// A raw protocol connection (no SDK client).
    pub async fn raw(&self) -> Raw {
        let stream = net::connect(&self.address, NAME, self.tls())
            .await
            .expect("connect");
        let mut raw = Raw {
            stream,
            decoder: FrameDecoder::new(MAX_FRAME_LEN),
            next_id: 1,
            pushes: Vec::new(),
            nonce: None,
            address: None,
        };
        match raw.next_frame().await {
            Some(ServerFrame::Push(Push::Challenge { nonce })) => raw.nonce = Some(nonce),
            other => panic!("no challenge: {other:?}"),
        }
        raw
    }
}

/// An SDK client of one device, driven by its own task, with the events
/// it has seen and not yet consumed.
pub struct Device {
    driven: Option<Driven<MemoryStore>>,
    parked: Option<Client<MemoryStore>>,
    pub address: DeviceAddress,
    pub key: StorageKey,
    pub events: Vec<ClientEvent>,
}

impl Device {
    pub fn driven(&mut self) -> &mut Driven<MemoryStore> {
        self.driven.as_mut().expect("connected")
    }

    pub fn address(&self) -> DeviceAddress {
        self.address.clone()
    }

    /// Runs `f` with the client on its task.
    pub async fn call<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Client<MemoryStore>, &mut rand::rngs::StdRng) -> T + Send + 'static,
    ) -> T {
        self.driven().call(f).await.expect("connection")
    }

    /// Connects and waits for the login and the end of the queue.
    pub async fn connect(&mut self, server: &TestServer) {
        let client = self.parked.take().expect("disconnected");
        let conn = Connection::open(&server.address, NAME, server.tls(), client)
            .await
            .expect("connect");
        self.driven = Some(conn.spawn());
        self.wait(|e| matches!(e, ClientEvent::QueueEmpty)).await;
    }

    pub async fn disconnect(&mut self) {
        if let Some(driven) = self.driven.take() {
            let (client, _) = driven.close().await.expect("the client back");
            self.parked = Some(client);
        }
    }

    /// Waits for an event `f` accepts; the others stay in `events`.
    pub async fn wait(&mut self, f: impl Fn(&ClientEvent) -> bool) -> ClientEvent {
        if let Some(at) = self.events.iter().position(&f) {
            return self.events.remove(at);
        }
        let trace = std::env::var_os("HUSH_TEST_EVENTS").is_some();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self.driven().next_event(left).await;
            if trace {
                eprintln!(
                    "EVENT {}/{}: {event:?}",
                    self.address.user.as_str(),
                    self.address.device.0
                );
            }
            match event {
                Some(e) if f(&e) => return e,
                Some(e) => self.events.push(e),
                None => panic!("no such event in time; saw {:?}", self.events),
            }
        }
    }

    /// Collects events for a while.
    pub async fn pump(&mut self, time: Duration) {
        let deadline = tokio::time::Instant::now() + time;
        while let Some(e) = {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.driven().next_event(left).await
        } {
            self.events.push(e);
        }
    }

    /// Collects events until the connection fails or `time` passes, and
    /// keeps the client for a later connection.
    pub async fn drain_until_closed(&mut self, time: Duration) {
        let deadline = tokio::time::Instant::now() + time;
        while !self.driven().is_finished() && tokio::time::Instant::now() < deadline {
            self.pump(Duration::from_millis(50)).await;
        }
        self.pump(Duration::from_millis(50)).await;
    }

    pub async fn send_text(&mut self, to: &str, text: &str) -> hush::wire::content::MessageId {
        let to = UserId::new(to).expect("user");
        let text = text.to_owned();
        self.call(move |client, rng| client.send_text(rng, &to, &text, unix_now()))
            .await
            .expect("send")
    }

    /// Sends and waits until the server stored it for every device of `to`.
    pub async fn send_and_wait(&mut self, to: &str, text: &str) {
        let id = self.send_text(to, text).await;
        let to = UserId::new(to).expect("user");
        self.wait(|e| matches!(e, ClientEvent::Sent { message, recipient } if *message == id && *recipient == to))
            .await;
    }

    /// Waits for a text message (confirming it) and returns its text.
    pub async fn receive_text(&mut self) -> String {
        let event = self
            .wait(|e| matches!(e, ClientEvent::Message { .. }))
            .await;
        let ClientEvent::Message {
            envelope_id,
            content,
            ..
        } = event
        else {
            unreachable!()
        };
        self.call(move |client, _| client.confirm(&envelope_id))
            .await
            .expect("confirm");
        text_of(&content.body)
    }

    /// Receives `n` texts.
    pub async fn receive_texts(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.receive_text().await);
        }
        out
    }
}

pub fn text_of(body: &Body) -> String {
    match body {
        Body::Text(t) => t.clone(),
        Body::SentSync { content, .. } => format!("sync:{}", text_of(&content.body)),
        other => format!("{other:?}"),
    }
}

/// A hand-driven protocol connection.
pub struct Raw {
    pub stream: TlsStream<TcpStream>,
    pub decoder: FrameDecoder,
    pub next_id: u32,
    pub pushes: Vec<Push>,
    pub nonce: Option<hush::wire::protocol::Nonce>,
    /// The device logged in on this connection, once it is.
    pub address: Option<DeviceAddress>,
}

impl Raw {
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// The next frame, or `None` when the server closed the connection.
    pub async fn next_frame(&mut self) -> Option<ServerFrame> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(p) = self.decoder.next_frame().expect("frames") {
                return Some(ServerFrame::from_payload(&p).expect("server frame"));
            }
            let n = match tokio::time::timeout(WAIT, self.stream.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                Ok(Err(_)) => 0,
                Err(_) => panic!("no frame in time"),
            };
            if n == 0 {
                return None;
            }
            self.decoder.push(&buf[..n]).expect("frames");
        }
    }

    /// Sends a request and returns its answer (pushes on the way are kept).
    pub async fn request(&mut self, request: Request) -> Result<Response, ProtocolError> {
        let id = self.next_id;
        self.next_id += 1;
        let payload = ClientFrame { id, request }.to_payload();
        self.write(&encode_frame(&payload, MAX_FRAME_LEN).expect("frame"))
            .await
            .expect("write");
        loop {
            match self.next_frame().await.expect("an answer before close") {
                ServerFrame::Response { id: got, result } if got == id => return result,
                ServerFrame::Push(p) => self.pushes.push(p),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Whether the server closed the connection (within the wait).
    pub async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(WAIT, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// Sorted texts, for comparisons that do not depend on arrival order.
pub fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

pub fn data_dir(server: &TestServer) -> PathBuf {
    server.config.data_dir.clone()
}

pub fn envelope_ids(events: &[ClientEvent]) -> Vec<EnvelopeId> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Message { envelope_id, .. } => Some(*envelope_id),
            _ => None,
        })
        .collect()
}
