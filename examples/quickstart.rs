//! The Hush quickstart: a reference server on the embedded default (SQLite
//! and blobs in a temporary folder, a self-signed certificate) in this
//! process, and SDK clients talking to it over real TLS 1.3 on loopback.
//!
//! Alice registers and links a second device (her laptop), Bob registers,
//! they exchange end-to-end encrypted messages and Alice sends a file.
//! The transcript shows what each device decrypted.
//!
//! Run it with `cargo run -p hush-examples --bin quickstart`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use hush::SessionManager;
use hush::attachment::{AttachmentKind, AttachmentPointer};
use hush::client::{Client, ClientConfig, ClientEvent};
use hush::keys::{DeviceAuthKeyPair, DeviceId, IdentityKeyPair, UserId};
use hush::store::{MemoryStore, StorageKey};
use hush::wire::content::Body;
use hush_server::blob::LocalBlobStore;
use hush_server::config::Config;
use hush_server::net::{self, Connection, Driven, fresh_rng, unix_now};
use hush_server::storage::{SqliteStorage, Storage};
use sha2::{Digest, Sha256};

const NAME: &str = "localhost";
const WAIT: Duration = Duration::from_secs(30);

/// One device: its name in the transcript and its connection.
struct Peer {
    name: &'static str,
    conn: Driven<MemoryStore>,
    events: Vec<ClientEvent>,
}

impl Peer {
    async fn new(
        name: &'static str,
        server: &Server,
        identity: IdentityKeyPair,
        auth: DeviceAuthKeyPair,
        user: UserId,
        device: DeviceId,
    ) -> anyhow::Result<Self> {
        let mut rng = fresh_rng();
        let manager = SessionManager::create(
            MemoryStore::new(),
            &StorageKey::generate(&mut rng),
            identity,
            auth,
            user,
            device,
            Default::default(),
            &mut rng,
            unix_now(),
        )?;
        let client = Client::new(manager, NAME, ClientConfig::default())?;
        let address = client.manager().address().clone();
        let conn = Connection::open(&server.address, NAME, server.tls.clone(), client)
            .await?
            .spawn();
        let mut peer = Self {
            name,
            conn,
            events: Vec::new(),
        };
        peer.wait(|e| matches!(e, ClientEvent::QueueEmpty)).await?;
        println!(
            "[{name}] logged in as {} device {}",
            address.user.as_str(),
            address.device.0
        );
        Ok(peer)
    }

    async fn wait(&mut self, f: impl Fn(&ClientEvent) -> bool) -> anyhow::Result<ClientEvent> {
        if let Some(at) = self.events.iter().position(&f) {
            return Ok(self.events.remove(at));
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.conn.next_event(left).await {
                Some(e) if f(&e) => return Ok(e),
                Some(e) => self.events.push(e),
                None => bail!("{}: no answer in time", self.name),
            }
        }
    }

    async fn send(&mut self, to: &str, body: Body) -> anyhow::Result<()> {
        let to = UserId::new(to)?;
        let recipient = to.clone();
        let id = self
            .conn
            .call(move |client, rng| client.send(rng, &recipient, body, unix_now()))
            .await??;
        self.wait(|e| matches!(e, ClientEvent::Sent { message, recipient } if *message == id && *recipient == to))
            .await?;
        Ok(())
    }

    /// Waits for a message, prints it, confirms it, and returns its body.
    async fn receive(&mut self) -> anyhow::Result<Body> {
        let ClientEvent::Message {
            envelope_id,
            sender,
            content,
            ..
        } = self
            .wait(|e| matches!(e, ClientEvent::Message { .. }))
            .await?
        else {
            bail!("not a message");
        };
        let from = format!("{} device {}", sender.user.as_str(), sender.device.0);
        match &content.body {
            Body::Text(t) => println!("[{}] from {from}: {t}", self.name),
            Body::SentSync { recipient, content } => match &content.body {
                Body::Text(t) => println!(
                    "[{}] copy of what {from} sent to {}: {t}",
                    self.name,
                    recipient.as_str()
                ),
                _ => println!("[{}] copy of an attachment sent by {from}", self.name),
            },
            Body::Attachment { caption, .. } => println!(
                "[{}] from {from}: an attachment ({})",
                self.name,
                caption.as_deref().unwrap_or("no caption")
            ),
            other => println!("[{}] from {from}: {other:?}", self.name),
        }
        self.conn
            .call(move |client, _| client.confirm(&envelope_id))
            .await??;
        Ok(content.body)
    }

    async fn upload(&mut self, data: &[u8]) -> anyhow::Result<AttachmentPointer> {
        let len = data.len() as u64;
        let transfer = self
            .conn
            .call(move |client, rng| {
                client.begin_upload(rng, AttachmentKind::File, "application/octet-stream", len)
            })
            .await??;
        self.wait(|e| matches!(e, ClientEvent::UploadReady(t) if *t == transfer))
            .await?;
        for (i, piece) in data.chunks(1 << 20).enumerate() {
            let piece = piece.to_vec();
            self.conn
                .call(move |client, _| client.upload(transfer, &piece))
                .await??;
            println!(
                "[{}] upload {:>3} %",
                self.name,
                ((i + 1) << 20).min(data.len()) * 100 / data.len()
            );
        }
        self.conn
            .call(move |client, _| client.finish_upload(transfer))
            .await??;
        match self
            .wait(|e| {
                matches!(e, ClientEvent::Uploaded { transfer: t, .. } | ClientEvent::TransferFailed { transfer: t, .. } if *t == transfer)
            })
            .await?
        {
            ClientEvent::Uploaded { pointer, .. } => Ok(pointer),
            other => bail!("upload failed: {other:?}"),
        }
    }

    async fn download(&mut self, pointer: AttachmentPointer) -> anyhow::Result<Vec<u8>> {
        let transfer = self
            .conn
            .call(move |client, _| client.begin_download(&pointer))
            .await??;
        let mut data = Vec::new();
        loop {
            match self
                .wait(|e| {
                    matches!(e, ClientEvent::AttachmentData { transfer: t, .. }
                        | ClientEvent::Downloaded(t)
                        | ClientEvent::TransferFailed { transfer: t, .. } if *t == transfer)
                })
                .await?
            {
                ClientEvent::AttachmentData { data: d, .. } => data.extend_from_slice(&d.0),
                ClientEvent::Downloaded(_) => return Ok(data),
                other => bail!("download failed: {other:?}"),
            }
        }
    }
}

struct Server {
    address: String,
    tls: Arc<rustls::ClientConfig>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "quickstart: a Hush server on the embedded default in this process, and three devices\n\
             talking to it over TLS.\n\n\
             Options:\n  \
             --connect HOST:PORT  use a running hush-server instead (e.g. 127.0.0.1:7443)\n  \
             --ca FILE            its certificate to pin [default: hush-data/dev-cert.pem]\n\n\
             The server name is always \"{NAME}\" (what the development certificate names)."
        );
        return Ok(());
    }
    let mut running = None;
    let dir = std::env::temp_dir().join(format!("hush-quickstart-{}", std::process::id()));
    let (server, alice_name, bob_name) = match flag("--connect") {
        Some(address) => {
            // A server started by `cargo run -p hush-server`: fresh user
            // names, since the accounts of an earlier run are still there.
            let ca = flag("--ca").unwrap_or_else(|| "hush-data/dev-cert.pem".into());
            let tls = hush_server::tls::client_config(ca.as_ref())
                .with_context(|| format!("pinning {ca} (start the server first)"))?;
            println!("server: {address} (TLS 1.3), pinned certificate {ca}");
            let tag = format!("{:04x}", rand_tag());
            let server = Server { address, tls };
            (server, format!("alice-{tag}"), format!("bob-{tag}"))
        }
        None => {
            // The server, in this process, on the embedded default.
            let mut config = Config {
                data_dir: dir.clone(),
                listen: "127.0.0.1:0".parse()?,
                admin_listen: String::new(),
                server_names: vec![NAME.into()],
                ..Config::default()
            };
            config.validate()?;
            std::fs::create_dir_all(&dir)?;
            hush_server::tls::generate_dev_cert(
                &config.server_names,
                &config.cert_path(),
                &config.key_path(),
            )?;
            let storage = SqliteStorage::open(&config.sqlite_path())?;
            storage.migrate().await?;
            let blobs = LocalBlobStore::open(&config.blob_dir())?;
            let server_tls =
                hush_server::tls::server_config(&config.cert_path(), &config.key_path())?;
            let started =
                hush_server::start(config.clone(), storage, blobs, server_tls, None).await?;
            let server = Server {
                address: started.address.to_string(),
                tls: hush_server::tls::client_config(&config.cert_path())?,
            };
            println!(
                "server: {} (TLS 1.3, SQLite in {}), pinned certificate {}",
                server.address,
                dir.display(),
                config.cert_path().display()
            );
            running = Some(started);
            (server, "alice".to_owned(), "bob".to_owned())
        }
    };

    let mut rng = fresh_rng();
    let mut register = async |name: &'static str, user: &str| -> anyhow::Result<Peer> {
        let identity = IdentityKeyPair::generate(&mut rng);
        let auth = DeviceAuthKeyPair::generate(&mut rng);
        let user = UserId::new(user)?;
        let device = net::register_account(
            &server.address,
            NAME,
            server.tls.clone(),
            &identity,
            &auth,
            user.clone(),
            WAIT,
        )
        .await?;
        Peer::new(name, &server, identity, auth, user, device).await
    };
    let mut alice = register("alice phone", &alice_name).await?;
    let mut bob = register("bob", &bob_name).await?;

    let auth = DeviceAuthKeyPair::generate(&mut fresh_rng());
    let (linked, device) = net::link_device(
        &server.address,
        NAME,
        server.tls.clone(),
        &mut alice.conn,
        &auth,
        WAIT,
    )
    .await?;
    let mut laptop = Peer::new(
        "alice laptop",
        &server,
        linked.identity,
        auth,
        linked.user,
        device,
    )
    .await?;

    alice
        .send(
            &bob_name,
            Body::Text("Hi Bob, this is end-to-end encrypted.".into()),
        )
        .await?;
    bob.receive().await?;
    laptop.receive().await?;
    bob.send(
        &alice_name,
        Body::Text("Hi Alice! Both of your devices get this.".into()),
    )
    .await?;
    alice.receive().await?;
    laptop.receive().await?;

    let file: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 + i / 4099) as u8).collect();
    let pointer = laptop.upload(&file).await?;
    laptop
        .send(
            &bob_name,
            Body::Attachment {
                pointer,
                caption: Some("3 MiB of test data".into()),
            },
        )
        .await?;
    let Body::Attachment { pointer, .. } = bob.receive().await? else {
        bail!("expected an attachment");
    };
    alice.receive().await?;
    let received = bob.download(pointer).await?;
    let same = Sha256::digest(&received) == Sha256::digest(&file);
    println!(
        "[bob] downloaded {} bytes; SHA-256 {} the sent file",
        received.len(),
        if same { "matches" } else { "DOES NOT match" }
    );
    if !same {
        bail!("the attachment did not survive the trip");
    }

    if let Some(running) = running {
        running.shutdown(Duration::from_secs(2)).await;
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!("done: 3 devices, 2 users, every byte end-to-end encrypted");
    Ok(())
}

/// A tag for user names that do not collide with an earlier run's (not a secret).
fn rand_tag() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos ^ std::process::id()) as u16
}
