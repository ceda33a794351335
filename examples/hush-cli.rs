//! `hush-cli`: a line-oriented, end-to-end encrypted chat client for the
//! Hush reference server.
//!
//! Each device lives in a home folder (`--home`, default `./hush-cli-home`):
//!
//! | file          | what                                                             |
//! |---------------|------------------------------------------------------------------|
//! | `hush.db`     | the SDK's SQLite store: keys, sessions, contacts, inbox (sealed) |
//! | `storage.key` | the 32-byte key that seals the store, mode 0600                  |
//! | `settings`    | server address, server name and pinned certificate               |
//! | `downloads/`  | attachments received                                             |
//!
//! A real app keeps the storage key in the OS keystore (Keychain, Android
//! Keystore, Secret Service), not in a file next to the store.
//!
//! `register USER` creates an account, `link` makes this device another
//! device of an existing account, `chat` reads commands from stdin and
//! prints messages as they arrive; `send`, `send-file`, `listen`, `approve`
//! and `safety` do one thing and exit, for scripts. `hush-cli --help` and
//! `/help` in `chat` list everything; `examples/README.md` walks through a
//! first session.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use hush::SessionManager;
use hush::attachment::{AttachmentKind, AttachmentPointer};
use hush::client::{
    Client, ClientConfig, ClientError, ClientEvent, Registration, RegistrationEvent, TransferId,
};
use hush::fingerprint::SafetyNumber;
use hush::keys::{
    DeviceAddress, DeviceAuthKeyPair, DeviceId, IdentityKey, IdentityKeyPair, UserId,
};
use hush::link::LinkCode;
use hush::store::{SqliteStore, StorageKey, StoreError};
use hush::wire::content::{Body, MessageId, ReceiptKind};
use hush::wire::protocol::EnvelopeId;
use hush_server::net::{self, Driven, NetError, fresh_rng, unix_now};
use rand::rngs::StdRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use zeroize::Zeroizing;

const DEFAULT_SERVER: &str = "127.0.0.1:7443";
const DEFAULT_SERVER_NAME: &str = "localhost";
const DEFAULT_CA: &str = "hush-data/dev-cert.pem";
/// How long to wait for the server to answer a request.
const WAIT: Duration = Duration::from_secs(30);
/// How long `/link` waits for the new device to register.
const LINK_WAIT: Duration = Duration::from_secs(120);
/// Plaintext handed to the client per upload call.
const PIECE: usize = 256 * 1024;

/// A line-oriented Hush chat client for the reference server.
///
/// Start the server first (`cargo run -p hush-server`), then register a
/// user and chat. Every device keeps its state in its own --home folder;
/// `register` and `link` save the server settings there, and later commands
/// use them unless a flag is given.
#[derive(Debug, Parser)]
#[command(
    name = "hush-cli",
    version,
    after_help = "Example:\n  hush-cli --home alice register alice\n  hush-cli --home bob register bob\n  \
                  hush-cli --home alice chat      (then: /msg bob hello)\n  \
                  hush-cli --home bob listen --count 1"
)]
struct Cli {
    /// This device's folder: encrypted store, storage key, settings, downloads.
    #[arg(
        long,
        env = "HUSH_CLI_HOME",
        default_value = "hush-cli-home",
        global = true
    )]
    home: PathBuf,
    /// The server's address [default: 127.0.0.1:7443, or the saved one].
    #[arg(long, value_name = "HOST:PORT", global = true)]
    server: Option<String>,
    /// The name in the server's certificate [default: localhost, or the saved one].
    #[arg(long, value_name = "NAME", global = true)]
    server_name: Option<String>,
    /// The server's certificate (PEM) to pin [default: hush-data/dev-cert.pem,
    /// which `cargo run -p hush-server` writes, or the saved one].
    #[arg(long, value_name = "FILE", global = true)]
    ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Creates the account USER with this device as its first device.
    Register {
        /// The user id to register (no spaces).
        user: String,
    },
    /// Makes this new device a device of an existing account: prints a link
    /// code to approve on a device of that account, then registers.
    Link {
        /// Seconds to wait for the approval.
        #[arg(long, default_value_t = 600, value_name = "SECS")]
        timeout: u64,
    },
    /// Interactive chat: commands on stdin, messages printed as they arrive
    /// (type /help for the commands).
    Chat,
    /// Sends one text message, waits until the server has stored it, exits.
    Send {
        /// The recipient.
        user: String,
        /// The message (the remaining words).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        text: Vec<String>,
    },
    /// Uploads a file (at most 50 MiB), sends it, and exits.
    SendFile {
        /// The recipient.
        user: String,
        /// The file.
        path: PathBuf,
    },
    /// Prints incoming messages; attachments are saved into HOME/downloads.
    Listen {
        /// Exit after this many messages.
        #[arg(long, value_name = "N")]
        count: Option<usize>,
        /// Exit after this many seconds (an error if --count was not reached).
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
    },
    /// Approves a new device of this account by the code `link` printed on it.
    Approve {
        /// The link code.
        code: String,
    },
    /// Prints the safety number to compare with USER (no connection needed).
    Safety {
        /// The contact.
        user: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hush-cli: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let home = Home {
        dir: cli.home.clone(),
    };
    let new = matches!(cli.command, Command::Register { .. } | Command::Link { .. });
    let settings = Settings::resolve(&cli, if new { None } else { home.settings()? });
    match cli.command {
        Command::Register { user } => register(&home, settings, &user).await,
        Command::Link { timeout } => link(&home, settings, Duration::from_secs(timeout)).await,
        Command::Chat => App::connect(&home, &settings, true).await?.chat().await,
        Command::Send { user, text } => {
            let mut app = App::connect(&home, &settings, false).await?;
            app.msg(parse_user(&user)?, text.join(" ")).await?;
            app.finish().await
        }
        Command::SendFile { user, path } => {
            let mut app = App::connect(&home, &settings, false).await?;
            app.send_file(parse_user(&user)?, &path).await?;
            app.finish().await
        }
        Command::Listen { count, timeout } => {
            let app = App::connect(&home, &settings, true).await?;
            app.listen(count, timeout.map(Duration::from_secs)).await
        }
        Command::Approve { code } => {
            let mut app = App::connect(&home, &settings, false).await?;
            app.link(&code).await?;
            app.finish().await
        }
        Command::Safety { user } => {
            let manager = home.open_device()?;
            let user = parse_user(&user)?;
            let number = manager.safety_number(&user)?;
            print_safety(&user, number.as_ref());
            Ok(())
        }
    }
}

/// Where the CLI finds the server.
#[derive(Debug, Clone)]
struct Settings {
    server: String,
    server_name: String,
    ca: PathBuf,
}

impl Settings {
    /// Flags first, then the saved settings, then the defaults.
    fn resolve(cli: &Cli, saved: Option<Settings>) -> Self {
        let saved = saved.unwrap_or_else(|| Self {
            server: DEFAULT_SERVER.into(),
            server_name: DEFAULT_SERVER_NAME.into(),
            ca: DEFAULT_CA.into(),
        });
        Self {
            server: cli.server.clone().unwrap_or(saved.server),
            server_name: cli.server_name.clone().unwrap_or(saved.server_name),
            ca: cli.ca.clone().unwrap_or(saved.ca),
        }
    }

    /// Reads `key = value` lines; `#` starts a comment.
    fn parse(text: &str) -> anyhow::Result<Self> {
        let mut settings = Self {
            server: DEFAULT_SERVER.into(),
            server_name: DEFAULT_SERVER_NAME.into(),
            ca: DEFAULT_CA.into(),
        };
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                bail!("line {}: expected `key = value`", n + 1);
            };
            let value = value.trim().to_owned();
            match key.trim() {
                "server" => settings.server = value,
                "server-name" => settings.server_name = value,
                "ca" => settings.ca = value.into(),
                other => bail!("line {}: unknown setting {other:?}", n + 1),
            }
        }
        Ok(settings)
    }

    fn to_text(&self) -> anyhow::Result<String> {
        let ca = self
            .ca
            .to_str()
            .context("the certificate's path is not UTF-8")?;
        Ok(format!(
            "# hush-cli settings, written by `register` or `link`.\n\
             # Flags on the command line override them.\n\
             server = {}\nserver-name = {}\nca = {ca}\n",
            self.server, self.server_name
        ))
    }
}

/// The TLS configuration that trusts the pinned certificate only.
fn load_tls(settings: &Settings) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    hush_server::tls::client_config(&settings.ca).with_context(|| {
        format!(
            "cannot use {} as the server's certificate (`cargo run -p hush-server` writes \
             hush-data/dev-cert.pem in the folder it runs in; pass its path with --ca)",
            settings.ca.display()
        )
    })
}

/// A connection failure, with a hint at the usual cause.
fn connect_failed(e: &NetError, settings: &Settings) -> anyhow::Error {
    use std::io::ErrorKind;
    let hint = match e {
        NetError::Io(io)
            if matches!(
                io.kind(),
                ErrorKind::ConnectionRefused | ErrorKind::NotFound | ErrorKind::AddrNotAvailable
            ) =>
        {
            " (is the server running? start it with `cargo run -p hush-server`)"
        }
        NetError::Io(io) if io.kind() == ErrorKind::InvalidData => {
            " (is --ca the certificate of this server, and --server-name a name in it?)"
        }
        _ => "",
    };
    anyhow!(
        "cannot connect to {} as {:?}: {e}{hint}",
        settings.server,
        settings.server_name
    )
}

/// A device's folder.
#[derive(Debug)]
struct Home {
    dir: PathBuf,
}

impl Home {
    fn db(&self) -> PathBuf {
        self.dir.join("hush.db")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("storage.key")
    }

    fn settings_path(&self) -> PathBuf {
        self.dir.join("settings")
    }

    fn downloads(&self) -> PathBuf {
        self.dir.join("downloads")
    }

    fn settings(&self) -> anyhow::Result<Option<Settings>> {
        let path = self.settings_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => Settings::parse(&text)
                .map(Some)
                .with_context(|| path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Saves the settings, with the certificate's path made absolute so
    /// later commands work from any folder.
    fn save_settings(&self, settings: &Settings) -> anyhow::Result<()> {
        let saved = Settings {
            ca: std::path::absolute(&settings.ca)?,
            ..settings.clone()
        };
        let path = self.settings_path();
        std::fs::write(&path, saved.to_text()?)
            .with_context(|| format!("writing {}", path.display()))
    }

    fn open_store(&self) -> anyhow::Result<SqliteStore> {
        SqliteStore::open(self.db()).map_err(|e| match e {
            StoreError::Locked => anyhow!(
                "another hush-cli is using {} (one process per device at a time)",
                self.dir.display()
            ),
            e => anyhow!(e).context(format!("opening {}", self.db().display())),
        })
    }

    /// The device kept in this folder.
    fn open_device(&self) -> anyhow::Result<SessionManager<SqliteStore>> {
        if !self.db().exists() {
            bail!(
                "there is no Hush device in {}: run `hush-cli register USER` or `hush-cli link` \
                 first, or pass --home",
                self.dir.display()
            );
        }
        let key = read_key(&self.key())?;
        SessionManager::open(self.open_store()?, &key).map_err(|e| match e {
            hush::Error::Store(StoreError::NoAccount) => anyhow!(
                "{} holds no device: its registration did not finish; run register or link again",
                self.dir.display()
            ),
            hush::Error::Store(StoreError::WrongKey) => anyhow!(
                "{} does not open the store in {}",
                self.key().display(),
                self.dir.display()
            ),
            e => anyhow!(e).context(format!("opening the device in {}", self.dir.display())),
        })
    }

    /// An empty store and its key for a new device; refuses a folder that
    /// already holds one.
    fn prepare_new(&self) -> anyhow::Result<(SqliteStore, StorageKey)> {
        create_private_dir(&self.dir)?;
        let key = if self.key().exists() {
            read_key(&self.key())?
        } else if self.db().exists() {
            bail!(
                "{} holds a store but no storage key; choose another --home",
                self.dir.display()
            );
        } else {
            write_new_key(&self.key())?
        };
        match SessionManager::open(self.open_store()?, &key) {
            Ok(manager) => bail!(
                "{} already holds the device {}; choose another --home",
                self.dir.display(),
                show(manager.address())
            ),
            Err(hush::Error::Store(StoreError::NoAccount)) => {}
            Err(e) => {
                return Err(anyhow!(e).context(format!("opening {}", self.db().display())));
            }
        }
        Ok((self.open_store()?, key))
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Makes a storage key and writes it, readable by the owner only.
fn write_new_key(path: &Path) -> anyhow::Result<StorageKey> {
    let key = StorageKey::generate(&mut fresh_rng());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(key.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(key)
}

fn read_key(path: &Path) -> anyhow::Result<StorageKey> {
    let bytes = Zeroizing::new(
        std::fs::read(path)
            .with_context(|| format!("reading the storage key {}", path.display()))?,
    );
    let mut key = Zeroizing::new([0u8; 32]);
    if bytes.len() != key.len() {
        bail!("{} is not a storage key (32 bytes)", path.display());
    }
    key.copy_from_slice(&bytes);
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path)
        && std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077 != 0
    {
        eprintln!(
            "WARNING: other users may read {0}; run `chmod 600 {0}`",
            path.display()
        );
    }
    Ok(StorageKey::from_bytes(*key))
}

fn parse_user(text: &str) -> anyhow::Result<UserId> {
    UserId::new(text)
        .map_err(|_| anyhow!("{text:?} is not a user id (1 to 255 bytes, no control characters)"))
}

/// `user/device`, as messages are labelled.
fn show(address: &DeviceAddress) -> String {
    format!("{}/{}", name(&address.user), address.device.0)
}

/// A user id from the network, made safe for a terminal (user ids may hold
/// bidirectional overrides).
fn name(user: &UserId) -> String {
    printable(user.as_str())
}

/// Text from the network made safe for a terminal: control characters
/// (escape sequences could rewrite the screen) and bidirectional overrides
/// (they could reorder what is shown) become U+FFFD; continuation lines are
/// indented so they cannot pose as a line of their own.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\n    "),
            '\t' => out.push('\t'),
            c if c.is_control() || is_bidi_control(c) => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A file name for a received attachment from its caption: the last path
/// component, without control characters or leading dots.
fn file_name(caption: Option<&str>) -> String {
    let last = caption
        .unwrap_or_default()
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or_default();
    let name: String = last
        .chars()
        .filter(|&c| !c.is_control() && !is_bidi_control(c) && c != ':')
        .take(120)
        .collect();
    let name = name.trim().trim_start_matches('.').trim();
    if name.is_empty() {
        "attachment".into()
    } else {
        name.into()
    }
}

/// Creates `name` in `dir`, or `name (1)`, `name (2)`... if it exists.
async fn create_unique(dir: &Path, name: &str) -> anyhow::Result<(PathBuf, tokio::fs::File)> {
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => name.split_at(i),
        _ => (name, ""),
    };
    for n in 0..1000 {
        let candidate = if n == 0 {
            name.to_owned()
        } else {
            format!("{stem} ({n}){ext}")
        };
        let path = dir.join(candidate);
        match tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
        {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }
    bail!("too many files named {name:?} in {}", dir.display())
}

fn size(n: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;
    if n < KIB {
        format!("{n} B")
    } else if n < MIB {
        format!("{:.1} KiB", n as f64 / KIB as f64)
    } else {
        format!("{:.1} MiB", n as f64 / MIB as f64)
    }
}

fn print_safety(user: &UserId, number: Option<&SafetyNumber>) {
    match number {
        Some(number) => {
            println!(
                "safety number with {user}: {}",
                number.display_groups().join(" ")
            );
            println!(
                "  {user} sees the same 60 digits if no one is in between: compare them in \
                 person or on a call"
            );
        }
        None => println!(
            "no identity of {user} is trusted yet: /add {user} (or wait for a message from {user})"
        ),
    }
}

/// Registers a new account with this device as its first.
async fn register(home: &Home, settings: Settings, user: &str) -> anyhow::Result<()> {
    let user = parse_user(user)?;
    if user.as_str().chars().any(char::is_whitespace) {
        bail!("hush-cli takes user ids without spaces (commands split on them)");
    }
    let tls = load_tls(&settings)?;
    let (store, key) = home.prepare_new()?;
    let mut rng = fresh_rng();
    let identity = IdentityKeyPair::generate(&mut rng);
    let auth = DeviceAuthKeyPair::generate(&mut rng);
    let device = net::register_account(
        &settings.server,
        &settings.server_name,
        tls,
        &identity,
        &auth,
        user.clone(),
        WAIT,
    )
    .await
    .map_err(|e| match e {
        NetError::Refused(e) => anyhow!("the server refused to register {user}: {e}"),
        e => connect_failed(&e, &settings),
    })?;
    SessionManager::create(
        store,
        &key,
        identity,
        auth,
        user.clone(),
        device,
        Default::default(),
        &mut rng,
        unix_now(),
    )?;
    home.save_settings(&settings)?;
    first_login(home, &settings).await?;
    println!(
        "registered {user}: this is device {user}/{} (state in {})",
        device.0,
        home.dir.display()
    );
    Ok(())
}

/// Links this new device to an existing account.
async fn link(home: &Home, settings: Settings, timeout: Duration) -> anyhow::Result<()> {
    let tls = load_tls(&settings)?;
    let (store, key) = home.prepare_new()?;
    let mut rng = fresh_rng();
    let mut waiting = net::connect(&settings.server, &settings.server_name, tls.clone())
        .await
        .map_err(|e| connect_failed(&e, &settings))?;
    let mut provisioning = Registration::provisioning(&mut rng, &settings.server_name)?;
    let code = match net::register(&mut waiting, &mut provisioning, WAIT).await? {
        RegistrationEvent::ShowCode(code) => hex::encode(code.to_bytes()),
        RegistrationEvent::Refused(e) => bail!("the server refused to wait for a link: {e}"),
        other => bail!("unexpected answer from the server: {other:?}"),
    };
    println!("To link this device, approve the code below on a device of your account:");
    println!("type /link CODE in its `hush-cli chat`, or run `hush-cli approve CODE` there.");
    println!("link code: {code}");
    println!("waiting up to {} s for the approval...", timeout.as_secs());
    let linked = match net::register(&mut waiting, &mut provisioning, timeout).await {
        Ok(RegistrationEvent::Linked(linked)) => *linked,
        Ok(RegistrationEvent::LinkRefused(e)) => {
            bail!("the account sent to this device does not open ({e}); was the code copied whole?")
        }
        Ok(RegistrationEvent::Refused(e)) => bail!("the server refused: {e}"),
        Ok(other) => bail!("unexpected answer from the server: {other:?}"),
        Err(NetError::Timeout) => bail!("no device approved the code within {timeout:?}"),
        Err(NetError::Closed) => {
            bail!("the server stopped waiting for the approval (it waits 10 minutes by default)")
        }
        Err(e) => return Err(e.into()),
    };
    drop(waiting);
    let auth = DeviceAuthKeyPair::generate(&mut rng);
    let mut stream = net::connect(&settings.server, &settings.server_name, tls)
        .await
        .map_err(|e| connect_failed(&e, &settings))?;
    let mut registration = Registration::linked_device(&linked, &auth, &settings.server_name)?;
    let device = match net::register(&mut stream, &mut registration, WAIT).await? {
        RegistrationEvent::Registered(device) => device,
        RegistrationEvent::Refused(e) => bail!("the server refused to add this device: {e}"),
        other => bail!("unexpected answer from the server: {other:?}"),
    };
    drop(stream);
    let user = linked.user.clone();
    SessionManager::create(
        store,
        &key,
        linked.identity,
        auth,
        user.clone(),
        device,
        Default::default(),
        &mut rng,
        unix_now(),
    )?;
    home.save_settings(&settings)?;
    first_login(home, &settings).await?;
    println!(
        "linked: this is device {user}/{} (state in {})",
        device.0,
        home.dir.display()
    );
    Ok(())
}

/// Logs a new device in once: it publishes its certificate and prekeys, so
/// others can reach it before it next runs.
async fn first_login(home: &Home, settings: &Settings) -> anyhow::Result<()> {
    let mut app = App::connect(home, settings, false).await?;
    // One-time prekeys follow the server's request right after login; the
    // certificate and signed prekeys went out before them.
    if app
        .wait_opt(WAIT, |e| {
            matches!(e, ClientEvent::PreKeysReplenished { .. })
        })
        .await?
        .is_none()
    {
        eprintln!("note: the server did not ask for one-time prekeys; continuing");
    }
    app.close().await
}

/// An attachment being saved.
#[derive(Debug)]
struct Download {
    file: tokio::fs::File,
    path: PathBuf,
    envelope_id: EnvelopeId,
    /// `from alice/1` or `from alice/2 to bob`.
    label: String,
    name: String,
    size: u64,
}

/// A logged-in device: its connection and what it waits for.
#[derive(Debug)]
struct App {
    /// `None` once the connection is closed or lost.
    conn: Option<Driven<SqliteStore>>,
    me: DeviceAddress,
    identity: IdentityKey,
    settings: Settings,
    tls: Arc<rustls::ClientConfig>,
    downloads_dir: PathBuf,
    downloads: BTreeMap<TransferId, Download>,
    /// Messages sent whose outcome is still to print, with what to print.
    sending: BTreeMap<MessageId, String>,
    /// Changed identities waiting for `/accept`.
    changes: BTreeMap<UserId, IdentityKey>,
    /// Whether incoming messages are shown and confirmed; `send` leaves
    /// them queued for `chat` or `listen`.
    show_messages: bool,
    /// Messages shown.
    shown: usize,
    /// Messages that could not be sent.
    failed: usize,
}

impl App {
    /// Opens the device in `home` and logs it in.
    async fn connect(
        home: &Home,
        settings: &Settings,
        show_messages: bool,
    ) -> anyhow::Result<Self> {
        let manager = home.open_device()?;
        let tls = load_tls(settings)?;
        let me = manager.address().clone();
        let identity = manager.identity_key();
        let client = Client::new(manager, &settings.server_name, ClientConfig::default())
            .with_context(|| format!("{:?} is not a server name", settings.server_name))?;
        let mut app = Self {
            conn: None,
            me,
            identity,
            settings: settings.clone(),
            tls,
            downloads_dir: home.downloads(),
            downloads: BTreeMap::new(),
            sending: BTreeMap::new(),
            changes: BTreeMap::new(),
            show_messages,
            shown: 0,
            failed: 0,
        };
        app.open(client).await?;
        Ok(app)
    }

    /// Connects with `client` and logs it in.
    async fn open(&mut self, client: Client<SqliteStore>) -> anyhow::Result<()> {
        let s = &self.settings;
        let open = net::Connection::open(&s.server, &s.server_name, self.tls.clone(), client);
        self.conn = match tokio::time::timeout(WAIT, open).await {
            Ok(Ok(conn)) => Some(conn.spawn()),
            Ok(Err(e)) => return Err(connect_failed(&e, s)),
            Err(_) => bail!("cannot connect to {}: no answer", s.server),
        };
        let answer = self
            .wait(WAIT, "logging in", |e| {
                matches!(e, ClientEvent::Authenticated | ClientEvent::ServerError(_))
            })
            .await?;
        if let ClientEvent::ServerError(e) = answer {
            bail!(
                "the server refused to log in {}: {e} (was this device removed?)",
                show(&self.me)
            );
        }
        Ok(())
    }

    /// Connects anew, so the server delivers again what it holds.
    /// Attachments still downloading start over.
    async fn reconnect(&mut self) -> anyhow::Result<()> {
        self.settle().await?;
        self.drop_downloads().await;
        let Some(conn) = self.conn.take() else {
            bail!("the connection to the server is closed");
        };
        let (client, _) = conn.close().await?;
        self.open(client).await?;
        self.catch_up().await
    }

    /// Handles what the server queued while this device was away.
    async fn catch_up(&mut self) -> anyhow::Result<()> {
        self.wait_opt(WAIT, |e| matches!(e, ClientEvent::QueueEmpty))
            .await
            .map(drop)
    }

    /// Runs `f` with the client on the connection's task.
    async fn call<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Client<SqliteStore>, &mut StdRng) -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let Some(conn) = &self.conn else {
            bail!("the connection to the server is closed");
        };
        match conn.call(f).await {
            Ok(value) => Ok(value),
            Err(_) => Err(self.lost().await),
        }
    }

    /// The next event, if one comes within `limit`.
    async fn next_event(&mut self, limit: Duration) -> anyhow::Result<Option<ClientEvent>> {
        let Some(conn) = &mut self.conn else {
            bail!("the connection to the server is closed");
        };
        if let Some(event) = conn.next_event(limit).await {
            return Ok(Some(event));
        }
        if conn.is_finished() {
            return Err(self.lost().await);
        }
        Ok(None)
    }

    async fn lost(&mut self) -> anyhow::Error {
        let reason = match self.conn.take() {
            Some(conn) => match conn.close().await {
                Ok((_, Some(e))) => format!(": {e}"),
                _ => String::new(),
            },
            None => String::new(),
        };
        anyhow!("the connection to the server was lost{reason}")
    }

    /// Waits for an event `wanted` accepts, handling the others meanwhile.
    async fn wait(
        &mut self,
        limit: Duration,
        what: &str,
        wanted: impl Fn(&ClientEvent) -> bool,
    ) -> anyhow::Result<ClientEvent> {
        self.wait_opt(limit, wanted)
            .await?
            .ok_or_else(|| anyhow!("no answer from the server in time ({what})"))
    }

    async fn wait_opt(
        &mut self,
        limit: Duration,
        wanted: impl Fn(&ClientEvent) -> bool,
    ) -> anyhow::Result<Option<ClientEvent>> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            match self.next_event(left).await? {
                Some(event) if wanted(&event) => return Ok(Some(event)),
                Some(event) => self.handle(event).await?,
                None => {}
            }
        }
    }

    /// Waits until every message sent has reached the server, then closes.
    async fn finish(mut self) -> anyhow::Result<()> {
        self.settle().await?;
        let failed = self.failed;
        self.close().await?;
        if failed > 0 {
            bail!("{failed} message(s) could not be sent");
        }
        Ok(())
    }

    /// Waits until every message sent has reached the server, so that each
    /// outcome is shown before the program exits (a send still pending would
    /// wait in the store's outbox for the next run).
    async fn settle(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            // The client drops a send before its outcome reaches this task:
            // both must be done.
            let pending = self.call(|client, _| client.has_pending_sends()).await?;
            if !pending && self.sending.is_empty() {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("gave up waiting for the server to take the messages on their way");
            }
            // The copies for this user's other devices report no event: poll.
            if let Some(event) = self.next_event(left.min(Duration::from_millis(50))).await? {
                self.handle(event).await?;
            }
        }
    }

    /// Closes the connection. Attachments still downloading are dropped;
    /// their messages stay unconfirmed and come again next time.
    async fn close(mut self) -> anyhow::Result<()> {
        self.drop_downloads().await;
        match self.conn.take() {
            Some(conn) => match conn.close().await {
                Ok((_, None)) => Ok(()),
                Ok((_, Some(e))) => Err(anyhow!("the connection to the server failed: {e}")),
                Err(e) => Err(e.into()),
            },
            None => Ok(()),
        }
    }

    /// The interactive loop.
    async fn chat(mut self) -> anyhow::Result<()> {
        self.catch_up().await?;
        println!(
            "connected to {} as {}; /help lists the commands, /quit leaves",
            self.settings.server,
            show(&self.me)
        );
        let mut lines = stdin_lines();
        loop {
            tokio::select! {
                line = lines.recv() => {
                    // End of input: as /quit.
                    let Some(line) = line else { break };
                    match self.command(&line).await {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(e) if self.conn.is_some() => eprintln!("error: {e:#}"),
                        Err(e) => return Err(e),
                    }
                }
                event = self.next_event(Duration::from_secs(3600)) => {
                    if let Some(event) = event? {
                        self.handle(event).await?;
                    }
                }
            }
        }
        self.finish().await
    }

    /// Prints messages until `count` were shown or `timeout` passed.
    async fn listen(
        mut self,
        count: Option<usize>,
        timeout: Option<Duration>,
    ) -> anyhow::Result<()> {
        let deadline = timeout.map(|t| Instant::now() + t);
        while count.is_none_or(|n| self.shown < n) {
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                break;
            }
            if let Some(event) = self.next_event(left).await? {
                self.handle(event).await?;
            }
        }
        let shown = self.shown;
        self.close().await?;
        match count {
            Some(n) if shown < n => bail!("timed out after {shown} of {n} messages"),
            _ => Ok(()),
        }
    }

    /// Runs one line of `chat`; false to leave.
    async fn command(&mut self, line: &str) -> anyhow::Result<bool> {
        let line = line.trim();
        if line.is_empty() {
            return Ok(true);
        }
        let Some(line) = line.strip_prefix('/') else {
            bail!(
                "not a command; to send a message type /msg USER TEXT (/help lists the commands)"
            );
        };
        let (command, rest) = word(line);
        let (first, tail) = word(rest);
        match (command, first, tail) {
            ("help", _, _) => println!("{HELP}"),
            ("quit" | "exit", _, _) => return Ok(false),
            ("add", user, "") if !user.is_empty() => self.add(parse_user(user)?).await?,
            ("msg", user, text) if !user.is_empty() && !text.is_empty() => {
                self.msg(parse_user(user)?, text.to_owned()).await?;
            }
            ("send-file", user, path) if !user.is_empty() && !path.is_empty() => {
                let path = path.trim_matches('"');
                self.send_file(parse_user(user)?, Path::new(path)).await?;
            }
            ("safety", user, "") if !user.is_empty() => self.safety(parse_user(user)?).await?,
            ("accept", user, "") if !user.is_empty() => self.accept(parse_user(user)?).await?,
            ("link", code, "") if !code.is_empty() => self.link(code).await?,
            ("devices", user, "") => {
                let user = if user.is_empty() {
                    self.me.user.clone()
                } else {
                    parse_user(user)?
                };
                self.devices(user).await?;
            }
            ("remove-device", id, "") if !id.is_empty() => self.remove_device(id).await?,
            (
                "add" | "msg" | "send-file" | "safety" | "accept" | "link" | "devices"
                | "remove-device",
                _,
                _,
            ) => bail!("usage: {}", usage(command)),
            (other, _, _) => bail!("unknown command /{other} (/help lists the commands)"),
        }
        Ok(true)
    }

    /// Refuses to write to a user whose identity changed until the user
    /// accepted the change.
    fn check_identity(&self, user: &UserId) -> anyhow::Result<()> {
        if self.changes.contains_key(user) {
            bail!(
                "{user}'s identity changed: compare the new safety number (/safety {user}), \
                 then /accept {user}"
            );
        }
        Ok(())
    }

    /// Sends a text; its outcome prints when the server answers.
    async fn msg(&mut self, user: UserId, text: String) -> anyhow::Result<()> {
        self.check_identity(&user)?;
        let to = user.clone();
        let id = self
            .call(move |client, rng| client.send_text(rng, &to, &text, unix_now()))
            .await??;
        // A note to self goes to this user's other devices only and reports no `Sent`.
        if user != self.me.user {
            self.sending.insert(id, format!("sent to {user}"));
        }
        Ok(())
    }

    /// Fetches a contact's devices and trusts its identity on first use.
    /// The protocol has no separate request for it: an empty delivery
    /// receipt starts the sessions, and apps show nothing for it.
    async fn add(&mut self, user: UserId) -> anyhow::Result<()> {
        if user == self.me.user {
            bail!("that is you; /devices lists your devices");
        }
        self.check_identity(&user)?;
        let to = user.clone();
        let hello = Body::Receipt {
            kind: ReceiptKind::Delivered,
            messages: Vec::new(),
        };
        let id = self
            .call(move |client, rng| client.send(rng, &to, hello, unix_now()))
            .await??;
        let answer = self
            .wait(WAIT, "adding a contact", |e| {
                matches!(e, ClientEvent::Sent { message, .. }
                    | ClientEvent::DeliveryFailed { message, .. } if *message == id)
            })
            .await?;
        if let ClientEvent::DeliveryFailed { reason, .. } = answer {
            bail!("cannot add {user}: {reason}");
        }
        let u = user.clone();
        let (devices, number) = self
            .call(move |client, _| {
                let m = client.manager();
                Ok::<_, hush::Error>((m.known_devices(&u)?.len(), m.safety_number(&u)?))
            })
            .await??;
        println!("added {user} ({devices} device(s))");
        print_safety(&user, number.as_ref());
        Ok(())
    }

    async fn safety(&mut self, user: UserId) -> anyhow::Result<()> {
        if let Some(received) = self.changes.get(&user) {
            let new = SafetyNumber::new(&self.me.user, &self.identity, &user, received);
            println!(
                "{user}'s identity CHANGED; the new safety number would be: {}",
                new.display_groups().join(" ")
            );
            println!("  compare it with {user}, then /accept {user}");
            return Ok(());
        }
        let u = user.clone();
        let number = self
            .call(move |client, _| client.manager().safety_number(&u))
            .await??;
        print_safety(&user, number.as_ref());
        Ok(())
    }

    async fn accept(&mut self, user: UserId) -> anyhow::Result<()> {
        let Some(identity) = self.changes.remove(&user) else {
            bail!("no identity change of {user} is waiting");
        };
        let u = user.clone();
        self.call(move |client, rng| {
            client
                .manager_mut()
                .accept_identity_change(rng, &u, &identity, unix_now())
        })
        .await??;
        println!("{user}'s new identity is trusted; fetching what the server held...");
        self.reconnect().await
    }

    /// Approves a new device: asks the server for a permission, seals the
    /// account to the code, and waits for the device to register.
    async fn link(&mut self, code: &str) -> anyhow::Result<()> {
        let bytes = hex::decode(code.trim())
            .map_err(|_| anyhow!("not a link code: paste the hex text `hush-cli link` printed"))?;
        let code =
            LinkCode::from_bytes(&bytes).map_err(|e| anyhow!("not a valid link code: {e}"))?;
        self.call(|client, _| client.request_link_permission())
            .await?;
        let permission = match self
            .wait(WAIT, "asking for a link permission", |e| {
                matches!(
                    e,
                    ClientEvent::LinkPermission(_) | ClientEvent::ServerError(_)
                )
            })
            .await?
        {
            ClientEvent::LinkPermission(permission) => permission,
            ClientEvent::ServerError(e) => bail!("the server refused to link a device: {e}"),
            other => bail!("unexpected event {other:?}"),
        };
        let server = code.server_name().to_owned();
        self.call(move |client, rng| client.send_link(rng, &code, &permission))
            .await?
            .map_err(|e| match e {
                ClientError::Link(hush::link::LinkError::WrongServer) => anyhow!(
                    "the code is for the server {server:?}; this device uses another name for \
                     its server"
                ),
                e => e.into(),
            })?;
        println!("sent the account to the new device; waiting for it to register...");
        let me = self.me.user.clone();
        match self
            .wait(LINK_WAIT, "waiting for the new device", |e| {
                matches!(e, ClientEvent::Trust(hush::Event::DeviceAdded(a)) if a.user == me)
                    || matches!(e, ClientEvent::ServerError(_))
            })
            .await?
        {
            ClientEvent::Trust(hush::Event::DeviceAdded(device)) => {
                println!("linked {}", show(&device));
            }
            ClientEvent::ServerError(e) => bail!("the server refused the link: {e}"),
            other => bail!("unexpected event {other:?}"),
        }
        Ok(())
    }

    async fn devices(&mut self, user: UserId) -> anyhow::Result<()> {
        let u = user.clone();
        let known = self
            .call(move |client, _| client.manager().known_devices(&u))
            .await??;
        if user == self.me.user {
            println!("{} (this device)", show(&self.me));
        } else if known.is_empty() {
            println!("no devices of {user} known yet: /add {user}");
        }
        for certificate in known {
            println!("{}", show(certificate.address()));
        }
        Ok(())
    }

    async fn remove_device(&mut self, id: &str) -> anyhow::Result<()> {
        let id: u32 = id
            .parse()
            .map_err(|_| anyhow!("{id:?} is not a device number (see /devices)"))?;
        if id == self.me.device.0 {
            bail!("this is the device you are using; it cannot remove itself");
        }
        let address = DeviceAddress::new(self.me.user.clone(), DeviceId(id));
        let gone = address.clone();
        let known = self
            .call(move |client, _| {
                let known = client.manager().known_devices(&gone.user)?;
                if known.iter().any(|c| c.address() == &gone) {
                    client.remove_device(gone.device);
                    return Ok(true);
                }
                Ok::<_, hush::Error>(false)
            })
            .await??;
        if !known {
            bail!(
                "{} is not one of your devices (see /devices)",
                show(&address)
            );
        }
        let wanted = address.clone();
        match self
            .wait(WAIT, "removing a device", |e| {
                matches!(e, ClientEvent::Trust(hush::Event::DeviceRemoved(a)) if *a == wanted)
                    || matches!(e, ClientEvent::ServerError(_))
            })
            .await?
        {
            ClientEvent::ServerError(e) => bail!("the server refused: {e}"),
            _ => println!("removed {}", show(&address)),
        }
        Ok(())
    }

    /// Uploads a file with a progress bar, then sends the attachment.
    async fn send_file(&mut self, user: UserId, path: &Path) -> anyhow::Result<()> {
        self.check_identity(&user)?;
        let mut file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("cannot open {}", path.display()))?;
        let meta = file.metadata().await?;
        if !meta.is_file() {
            bail!("{} is not a file", path.display());
        }
        let len = meta.len();
        let max = AttachmentKind::File.max_plaintext_len();
        if len > max {
            bail!(
                "{} has {}; a file may have at most {}",
                path.display(),
                size(len),
                size(max)
            );
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        let transfer = self
            .call(move |client, rng| {
                client.begin_upload(rng, AttachmentKind::File, "application/octet-stream", len)
            })
            .await??;
        let ready = self
            .wait(WAIT, "starting the upload", |e| {
                matches!(e, ClientEvent::UploadReady(t)
                    | ClientEvent::TransferFailed { transfer: t, .. } if *t == transfer)
            })
            .await?;
        if let ClientEvent::TransferFailed { reason, .. } = ready {
            bail!("the server refused the upload: {reason}");
        }
        let mut progress = Progress::new(format!("{name} to {user}"), len);
        let mut sent = 0u64;
        let mut buf = vec![0u8; PIECE];
        while sent < len {
            let want = PIECE.min(usize::try_from(len - sent).unwrap_or(PIECE));
            let n = file.read(&mut buf[..want]).await?;
            if n == 0 {
                bail!("{} got shorter while it was sent", path.display());
            }
            let piece = buf[..n].to_vec();
            if let Err(e) = self
                .call(move |client, _| client.upload(transfer, &piece))
                .await?
            {
                return Err(self.upload_failed(transfer, e).await);
            }
            sent += n as u64;
            progress.update(sent);
        }
        if let Err(e) = self
            .call(move |client, _| client.finish_upload(transfer))
            .await?
        {
            return Err(self.upload_failed(transfer, e).await);
        }
        progress.finish();
        let pointer = match self
            .wait(WAIT, "finishing the upload", |e| {
                matches!(e, ClientEvent::Uploaded { transfer: t, .. }
                    | ClientEvent::TransferFailed { transfer: t, .. } if *t == transfer)
            })
            .await?
        {
            ClientEvent::Uploaded { pointer, .. } => pointer,
            ClientEvent::TransferFailed { reason, .. } => bail!("the upload failed: {reason}"),
            other => bail!("unexpected event {other:?}"),
        };
        let to = user.clone();
        let sent = format!("sent {name:?} to {user}");
        let body = Body::Attachment {
            pointer,
            caption: Some(name),
        };
        let id = self
            .call(move |client, rng| client.send(rng, &to, body, unix_now()))
            .await??;
        self.sending.insert(id, sent);
        Ok(())
    }

    /// The reason an upload failed: the server's, if it gave one.
    async fn upload_failed(&mut self, transfer: TransferId, e: ClientError) -> anyhow::Error {
        eprintln!();
        match self
            .wait_opt(
                Duration::from_secs(1),
                |e| matches!(e, ClientEvent::TransferFailed { transfer: t, .. } if *t == transfer),
            )
            .await
        {
            Ok(Some(ClientEvent::TransferFailed { reason, .. })) => {
                anyhow!("the upload failed: {reason}")
            }
            _ => anyhow!("the upload failed: {e}"),
        }
    }

    /// Handles an event nobody waits for.
    async fn handle(&mut self, event: ClientEvent) -> anyhow::Result<()> {
        match event {
            ClientEvent::Message {
                envelope_id,
                sender,
                content,
                ..
            } => self.message(envelope_id, &sender, content.body).await?,
            ClientEvent::Sent { message, .. } => {
                if let Some(sent) = self.sending.remove(&message) {
                    println!("{sent}");
                }
            }
            ClientEvent::DeliveryFailed {
                message,
                recipient,
                reason,
            } => {
                self.sending.remove(&message);
                self.failed += 1;
                if recipient == self.me.user {
                    println!("ERROR: the copy for your other devices was not sent: {reason}");
                } else {
                    println!("ERROR: the message to {recipient} was not sent: {reason}");
                }
            }
            ClientEvent::Trust(event) => self.trust(event),
            ClientEvent::IdentityChanged(change) => {
                let hush::IdentityChange { user, received, .. } = *change;
                if self.changes.get(&user) != Some(&received) {
                    let new = SafetyNumber::new(&self.me.user, &self.identity, &user, &received);
                    let who = name(&user);
                    println!(
                        "WARNING: {who}'s identity key CHANGED. Someone may be posing as {who}, \
                         or {who} set up the account anew. Nothing from or to {who} is \
                         accepted until you compare the new safety number with {who} and type \
                         /accept {who}."
                    );
                    println!(
                        "WARNING: new safety number with {who}: {}",
                        new.display_groups().join(" ")
                    );
                    self.changes.insert(user, received);
                }
            }
            ClientEvent::DeviceRefused(device) => println!(
                "WARNING: device {} was refused: its certificate is not signed by {}'s identity",
                show(&device),
                name(&device.user)
            ),
            ClientEvent::Undecryptable { sender, reason, .. } => println!(
                "WARNING: a message from {} could not be decrypted and was dropped ({reason})",
                show(&sender)
            ),
            ClientEvent::ServerError(e) => println!("ERROR: the server refused a request: {e}"),
            ClientEvent::AttachmentData { transfer, data } => {
                if let Some(download) = self.downloads.get_mut(&transfer)
                    && let Err(e) = download.file.write_all(&data.0).await
                {
                    let path = download.path.display().to_string();
                    self.drop_download(transfer).await;
                    println!("ERROR: cannot write {path}: {e}");
                }
            }
            ClientEvent::Downloaded(transfer) => self.downloaded(transfer).await?,
            ClientEvent::TransferFailed { transfer, reason } => {
                if let Some(download) = self.drop_download(transfer).await {
                    println!(
                        "WARNING: [{}] the file {:?} could not be downloaded: {reason}",
                        download.label, download.name
                    );
                    self.confirm(download.envelope_id).await?;
                }
            }
            // Logins, upload steps and link permissions are awaited where
            // they were asked for; prekeys replenish on their own.
            _ => {}
        }
        Ok(())
    }

    async fn message(
        &mut self,
        envelope_id: EnvelopeId,
        sender: &DeviceAddress,
        body: Body,
    ) -> anyhow::Result<()> {
        if !self.show_messages {
            // Left unconfirmed: `chat` or `listen` shows it.
            return Ok(());
        }
        let from = show(sender);
        match body {
            Body::Text(text) => {
                println!("[from {from}] {}", printable(&text));
                self.shown += 1;
            }
            Body::Attachment { pointer, caption } => {
                let label = format!("from {from}");
                return self.download(envelope_id, label, pointer, caption).await;
            }
            Body::SentSync { recipient, content } => match content.body {
                Body::Text(text) => {
                    println!("[from {from} to {}] {}", name(&recipient), printable(&text));
                    self.shown += 1;
                }
                Body::Attachment { pointer, caption } => {
                    let label = format!("from {from} to {}", name(&recipient));
                    return self.download(envelope_id, label, pointer, caption).await;
                }
                // Receipts (and `/add`'s empty one) show nothing.
                _ => {}
            },
            Body::Receipt { .. } => {}
            _ => println!("[from {from}] (a kind of message this client cannot show)"),
        }
        self.confirm(envelope_id).await
    }

    /// The app has kept the message: it leaves the inbox and the server.
    async fn confirm(&mut self, envelope_id: EnvelopeId) -> anyhow::Result<()> {
        self.call(move |client, _| client.confirm(&envelope_id))
            .await?
            .context("keeping a message")
    }

    fn trust(&self, event: hush::Event) {
        match event {
            hush::Event::IdentityTrusted { user, .. } if user != self.me.user => {
                let who = name(&user);
                println!(
                    "[{who}'s identity is trusted on first use; compare safety numbers: /safety {who}]"
                );
            }
            hush::Event::DeviceAdded(device) => println!("[new device {}]", show(&device)),
            hush::Event::DeviceChanged(device) => {
                println!("[device {} has a new key]", show(&device));
            }
            hush::Event::DeviceRemoved(device) => println!("[device {} is gone]", show(&device)),
            _ => {}
        }
    }

    /// Starts saving an attachment into the downloads folder.
    async fn download(
        &mut self,
        envelope_id: EnvelopeId,
        label: String,
        pointer: AttachmentPointer,
        caption: Option<String>,
    ) -> anyhow::Result<()> {
        if self
            .downloads
            .values()
            .any(|d| d.envelope_id == envelope_id)
        {
            return Ok(());
        }
        let name = file_name(caption.as_deref());
        let size = pointer.plaintext_len();
        tokio::fs::create_dir_all(&self.downloads_dir)
            .await
            .with_context(|| format!("creating {}", self.downloads_dir.display()))?;
        let (path, file) = create_unique(&self.downloads_dir, &name).await?;
        match self
            .call(move |client, _| client.begin_download(&pointer))
            .await?
        {
            Ok(transfer) => {
                if size > 1 << 20 {
                    println!("[{label}] receiving {name:?} ({})...", self::size(size));
                }
                self.downloads.insert(
                    transfer,
                    Download {
                        file,
                        path,
                        envelope_id,
                        label,
                        name,
                        size,
                    },
                );
            }
            Err(e) => {
                drop(file);
                let _ = tokio::fs::remove_file(&path).await;
                println!("WARNING: [{label}] the file {name:?} cannot be fetched: {e}");
                self.confirm(envelope_id).await?;
            }
        }
        Ok(())
    }

    async fn downloaded(&mut self, transfer: TransferId) -> anyhow::Result<()> {
        let Some(mut download) = self.downloads.remove(&transfer) else {
            return Ok(());
        };
        let saved = async {
            download.file.flush().await?;
            download.file.sync_all().await
        };
        if let Err(e) = saved.await {
            let _ = tokio::fs::remove_file(&download.path).await;
            println!("ERROR: cannot write {}: {e}", download.path.display());
            return Ok(());
        }
        println!(
            "[{}] file {:?} ({}) saved to {}",
            download.label,
            download.name,
            size(download.size),
            download.path.display()
        );
        self.shown += 1;
        self.confirm(download.envelope_id).await
    }

    /// Forgets the downloads in flight; their messages stay unconfirmed
    /// and come again.
    async fn drop_downloads(&mut self) {
        for (_, download) in std::mem::take(&mut self.downloads) {
            drop(download.file);
            let _ = tokio::fs::remove_file(&download.path).await;
        }
    }

    /// Forgets a download and deletes its partial file.
    async fn drop_download(&mut self, transfer: TransferId) -> Option<Download> {
        let download = self.downloads.remove(&transfer)?;
        let _ = tokio::fs::remove_file(&download.path).await;
        Some(download)
    }
}

const HELP: &str = "\
/add USER             fetch USER's devices and trust USER's identity (first use)
/msg USER TEXT        send a message
/send-file USER PATH  upload a file (at most 50 MiB) and send it
/safety USER          the safety number to compare with USER
/accept USER          trust USER's new identity after a WARNING (compare first)
/link CODE            approve a new device of your account (`hush-cli link` shows CODE)
/devices [USER]       your devices, or USER's
/remove-device ID     remove another device of your account
/quit                 leave, once messages on their way reached the server (also Ctrl-D)";

fn usage(command: &str) -> &'static str {
    match command {
        "add" => "/add USER",
        "msg" => "/msg USER TEXT",
        "send-file" => "/send-file USER PATH",
        "safety" => "/safety USER",
        "accept" => "/accept USER",
        "link" => "/link CODE",
        "devices" => "/devices [USER]",
        _ => "/remove-device ID",
    }
}

/// The first word of `text` and the rest, both trimmed at the start.
fn word(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.find(char::is_whitespace) {
        Some(i) => (&text[..i], text[i..].trim_start()),
        None => (text, ""),
    }
}

/// Lines from stdin, read on a thread of their own (a blocking read must
/// not hold up the runtime, nor its shutdown).
fn stdin_lines() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut line = Vec::new();
        loop {
            line.clear();
            match stdin.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {
                    if tx
                        .send(String::from_utf8_lossy(&line).into_owned())
                        .is_err()
                    {
                        break;
                    }
                }
                Err(e) => {
                    eprintln!("hush-cli: reading stdin: {e}");
                    break;
                }
            }
        }
    });
    rx
}

/// An upload's progress on stderr: redrawn in place on a terminal, a line
/// per quarter otherwise.
#[derive(Debug)]
struct Progress {
    label: String,
    total: u64,
    shown: Option<u64>,
    terminal: bool,
}

impl Progress {
    fn new(label: String, total: u64) -> Self {
        let mut progress = Self {
            label,
            total,
            shown: None,
            terminal: std::io::stderr().is_terminal(),
        };
        progress.update(0);
        progress
    }

    fn update(&mut self, done: u64) {
        let percent = done
            .saturating_mul(100)
            .checked_div(self.total)
            .unwrap_or(100);
        let step = if self.terminal { 1 } else { 25 };
        if self.shown.is_some_and(|s| s / step == percent / step) {
            return;
        }
        self.shown = Some(percent);
        const WIDTH: u64 = 30;
        let filled = usize::try_from(percent.min(100) * WIDTH / 100).unwrap_or(0);
        let line = format!(
            "{} [{}{}] {percent:>3} % {} of {}",
            self.label,
            "#".repeat(filled),
            "-".repeat(WIDTH as usize - filled),
            size(done),
            size(self.total)
        );
        if self.terminal {
            eprint!("\r{line}");
            let _ = std::io::stderr().flush();
        } else {
            eprintln!("{line}");
        }
    }

    fn finish(&mut self) {
        if self.terminal {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn a_received_file_name_stays_in_the_downloads_folder() {
        assert_eq!(
            file_name(Some("../../.ssh/authorized_keys")),
            "authorized_keys"
        );
        assert_eq!(file_name(Some("C:\\Windows\\evil.dll")), "evil.dll");
        assert_eq!(file_name(Some("..")), "attachment");
        assert_eq!(file_name(Some(".bashrc")), "bashrc");
        assert_eq!(file_name(Some("a\u{202e}txt.exe")), "atxt.exe");
        assert_eq!(file_name(None), "attachment");
        assert_eq!(file_name(Some("notes 1.txt")), "notes 1.txt");
    }

    #[test]
    fn text_from_the_network_cannot_drive_the_terminal() {
        assert_eq!(printable("hi\x1b[2J"), "hi\u{fffd}[2J");
        assert_eq!(printable("a\nb"), "a\n    b");
        assert_eq!(printable("x\u{202e}y"), "x\u{fffd}y");
    }

    #[test]
    fn settings_survive_a_round_trip_and_refuse_unknown_keys() {
        let settings = Settings {
            server: "chat.example.org:7443".into(),
            server_name: "chat.example.org".into(),
            ca: "certs/ca.pem".into(),
        };
        let parsed = Settings::parse(&settings.to_text().unwrap()).unwrap();
        assert_eq!(parsed.server, settings.server);
        assert_eq!(parsed.server_name, settings.server_name);
        assert_eq!(parsed.ca, settings.ca);
        assert!(Settings::parse("port = 1\n").is_err());
        assert!(Settings::parse("server\n").is_err());
    }

    #[test]
    fn commands_split_on_the_first_word_only() {
        assert_eq!(word("  msg bob  hi  there "), ("msg", "bob  hi  there "));
        assert_eq!(word("quit"), ("quit", ""));
        assert_eq!(word(""), ("", ""));
    }
}
