//! The tokio transport for the SDK's sans-IO client: a TLS 1.3 connection
//! (tokio-rustls) that moves bytes between the socket and a
//! [`Client`] or a [`Registration`], and turns the client's timers into
//! sleeps. The examples, the load generator and the server's tests use it;
//! an app written with tokio can use it as is.
//!
//! ```no_run
//! # async fn demo(client: hush::client::Client<hush::store::MemoryStore>) -> Result<(), hush_server::net::NetError> {
//! use std::time::Duration;
//! let tls = hush_server::tls::client_config("hush-data/dev-cert.pem".as_ref())?;
//! let mut conn = hush_server::net::Connection::open("127.0.0.1:7443", "localhost", tls, client).await?;
//! while let Some(event) = conn.next_event(Duration::from_secs(5)).await? {
//!     println!("{event:?}");
//! }
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hush::client::{Client, ClientError, ClientEvent, Registration, RegistrationEvent};
use hush::store::Store;
use rand::SeedableRng;
use rand::rngs::StdRng;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::tls::TlsError;

/// Why a connection failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NetError {
    /// The socket failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// TLS configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The client refused the server's bytes or failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// The server refused a registration.
    #[error("refused: {0}")]
    Refused(hush::wire::protocol::ProtocolError),
    /// The server or the link message answered something else than expected.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

/// Unix seconds now: the clock the SDK's client takes.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh random generator for the SDK calls of one connection.
pub fn fresh_rng() -> StdRng {
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    StdRng::from_seed(seed)
}

/// How long [`connect`] waits for the TCP and TLS handshakes.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a TCP connection to `address` (`host:port`) and completes a TLS 1.3
/// handshake for `server_name`, within [`CONNECT_TIMEOUT`].
///
/// # Errors
/// [`NetError`].
pub async fn connect(
    address: &str,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<TlsStream<TcpStream>, NetError> {
    let name = crate::tls::server_name(server_name)?;
    let handshake = async {
        let tcp = TcpStream::connect(address).await?;
        tcp.set_nodelay(true)?;
        tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
    };
    Ok(tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| NetError::Timeout)??)
}

/// Runs a [`Registration`] on `stream` until it produces an event (call it
/// again on the same stream for the next one, e.g. `Linked` after `ShowCode`).
///
/// # Errors
/// [`NetError`]; [`NetError::Timeout`] after `timeout`.
pub async fn register(
    stream: &mut TlsStream<TcpStream>,
    registration: &mut Registration,
    timeout: Duration,
) -> Result<RegistrationEvent, NetError> {
    let work = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            while let Some(bytes) = registration.poll_transmit() {
                stream.write_all(&bytes).await?;
            }
            stream.flush().await?;
            if let Some(event) = registration.poll_event() {
                return Ok(event);
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(NetError::Closed);
            }
            registration.handle_input(&buf[..n])?;
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| NetError::Timeout)?
}

/// Registers a new account whose first device logs in with `auth`;
/// returns the device id the server assigned.
///
/// # Errors
/// [`NetError::Refused`] (e.g. the user id is taken) or a connection error.
pub async fn register_account(
    address: &str,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
    identity: &hush::keys::IdentityKeyPair,
    auth: &hush::keys::DeviceAuthKeyPair,
    user: hush::keys::UserId,
    timeout: Duration,
) -> Result<hush::keys::DeviceId, NetError> {
    let mut stream = connect(address, server_name, tls).await?;
    let mut registration = Registration::new_account(identity, auth, user, server_name)?;
    match register(&mut stream, &mut registration, timeout).await? {
        RegistrationEvent::Registered(device) => Ok(device),
        RegistrationEvent::Refused(e) => Err(NetError::Refused(e)),
        other => Err(NetError::Unexpected(format!("{other:?}"))),
    }
}

/// Links a new device to the account of `existing` when both run in one
/// process (demos and tests; in an app the code travels out of band: the
/// new device shows it, the existing one scans it). The new device waits
/// for its link message, the existing device asks for a permission and
/// sends the account, and the new device registers with `auth`. Returns the
/// account and the new device's id.
///
/// # Errors
/// [`NetError`].
pub async fn link_device<S: Store + Send + 'static>(
    address: &str,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
    existing: &mut Driven<S>,
    auth: &hush::keys::DeviceAuthKeyPair,
    timeout: Duration,
) -> Result<(hush::link::LinkedAccount, hush::keys::DeviceId), NetError> {
    let mut rng = fresh_rng();
    let mut waiting = connect(address, server_name, tls.clone()).await?;
    let mut provisioning = Registration::provisioning(&mut rng, server_name)?;
    let code = match register(&mut waiting, &mut provisioning, timeout).await? {
        RegistrationEvent::ShowCode(code) => code,
        other => return Err(NetError::Unexpected(format!("{other:?}"))),
    };
    existing
        .call(|client, _| client.request_link_permission())
        .await?;
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let permission = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match existing.next_event(left).await {
            Some(ClientEvent::LinkPermission(token)) => break token,
            Some(ClientEvent::ServerError(e)) => {
                existing.requeue(seen);
                return Err(NetError::Refused(e));
            }
            Some(other) => seen.push(other),
            None => {
                existing.requeue(seen);
                return Err(NetError::Timeout);
            }
        }
    };
    existing.requeue(seen);
    existing
        .call(move |client, rng| client.send_link(rng, &code, &permission))
        .await??;
    let linked = match register(&mut waiting, &mut provisioning, timeout).await? {
        RegistrationEvent::Linked(linked) => *linked,
        other => return Err(NetError::Unexpected(format!("{other:?}"))),
    };
    drop(waiting);
    let mut stream = connect(address, server_name, tls).await?;
    let mut registration = Registration::linked_device(&linked, auth, server_name)?;
    match register(&mut stream, &mut registration, timeout).await? {
        RegistrationEvent::Registered(device) => Ok((linked, device)),
        RegistrationEvent::Refused(e) => Err(NetError::Refused(e)),
        other => Err(NetError::Unexpected(format!("{other:?}"))),
    }
}

/// A logged-in client over TLS: bytes move in both directions at once, so
/// a long upload never blocks the responses that pace it.
pub struct Connection<S: Store> {
    reader: ReadHalf<TlsStream<TcpStream>>,
    writer: WriteHalf<TlsStream<TcpStream>>,
    client: Client<S>,
    rng: StdRng,
    outgoing: Vec<u8>,
    written: usize,
    buf: Vec<u8>,
}

impl<S: Store> std::fmt::Debug for Connection<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("address", self.client.manager().address())
            .field("authenticated", &self.client.is_authenticated())
            .finish_non_exhaustive()
    }
}

impl<S: Store> Connection<S> {
    /// Connects, and lets the client log in once the server's challenge
    /// arrives (the `Authenticated` event follows).
    ///
    /// # Errors
    /// [`NetError`].
    pub async fn open(
        address: &str,
        server_name: &str,
        tls: Arc<rustls::ClientConfig>,
        mut client: Client<S>,
    ) -> Result<Self, NetError> {
        let stream = connect(address, server_name, tls).await?;
        client.handle_connected(unix_now());
        let (reader, writer) = tokio::io::split(stream);
        Ok(Self {
            reader,
            writer,
            client,
            rng: fresh_rng(),
            outgoing: Vec::new(),
            written: 0,
            buf: vec![0u8; 64 * 1024],
        })
    }

    /// The client, to send, confirm, upload or download; the bytes go out
    /// on the next [`next_event`](Self::next_event) or [`flush`](Self::flush).
    pub fn client(&mut self) -> &mut Client<S> {
        &mut self.client
    }

    /// The client and the connection's random generator together.
    pub fn client_and_rng(&mut self) -> (&mut Client<S>, &mut StdRng) {
        (&mut self.client, &mut self.rng)
    }

    /// Closes the connection and returns the client (its state is in its store).
    pub async fn close(mut self) -> Client<S> {
        let _ = self.flush().await;
        let _ = self.writer.shutdown().await;
        self.client
    }

    /// Writes everything the client has to send.
    ///
    /// # Errors
    /// [`NetError::Io`].
    pub async fn flush(&mut self) -> Result<(), NetError> {
        self.collect();
        if self.written < self.outgoing.len() {
            self.writer
                .write_all(&self.outgoing[self.written..])
                .await?;
        }
        self.outgoing.clear();
        self.written = 0;
        self.writer.flush().await?;
        Ok(())
    }

    fn collect(&mut self) {
        while let Some(bytes) = self.client.poll_transmit() {
            self.outgoing.extend_from_slice(&bytes);
        }
    }

    /// The next event, moving bytes and firing timers until one comes;
    /// `None` if none came within `wait`.
    ///
    /// # Errors
    /// [`NetError`]: the connection is unusable; open a new one with the
    /// client from [`close`](Self::close).
    pub async fn next_event(&mut self, wait: Duration) -> Result<Option<ClientEvent>, NetError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(event) = self.client.poll_event() {
                return Ok(Some(event));
            }
            self.collect();
            let timer = self.client.poll_timeout().map(|at| {
                let now = unix_now();
                tokio::time::Instant::now() + Duration::from_secs(at.saturating_sub(now))
            });
            let pending = self.written < self.outgoing.len();
            tokio::select! {
                written = self.writer.write(&self.outgoing[self.written..]), if pending => {
                    self.written += written?;
                    if self.written == self.outgoing.len() {
                        self.outgoing.clear();
                        self.written = 0;
                        self.writer.flush().await?;
                    }
                }
                read = self.reader.read(&mut self.buf) => {
                    let n = read?;
                    if n == 0 {
                        return Err(NetError::Closed);
                    }
                    self.client.handle_input(&mut self.rng, &self.buf[..n], unix_now())?;
                }
                () = sleep_until_opt(timer) => {
                    self.client.handle_timeout(&mut self.rng, unix_now())?;
                }
                () = tokio::time::sleep_until(deadline) => return Ok(None),
            }
        }
    }

    /// Waits for an event that `wanted` accepts, keeping the others in
    /// `seen`; `None` if none came within `wait`.
    ///
    /// # Errors
    /// [`NetError`].
    pub async fn wait_for(
        &mut self,
        wait: Duration,
        seen: &mut Vec<ClientEvent>,
        wanted: impl Fn(&ClientEvent) -> bool,
    ) -> Result<Option<ClientEvent>, NetError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await? {
                Some(e) if wanted(&e) => return Ok(Some(e)),
                Some(e) => seen.push(e),
                None => return Ok(None),
            }
        }
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Work for a [`Driven`] connection's task: runs with the client and the
/// connection's random generator.
type Call<S> = Box<dyn FnOnce(&mut Client<S>, &mut StdRng) + Send>;

/// A [`Connection`] driven by its own task, as an app runs it: bytes move
/// and timers fire all the time, events arrive on a channel, and the app's
/// calls into the client run on the task between reads.
pub struct Driven<S: Store> {
    calls: tokio::sync::mpsc::UnboundedSender<Call<S>>,
    events: tokio::sync::mpsc::UnboundedReceiver<ClientEvent>,
    requeued: std::collections::VecDeque<ClientEvent>,
    task: tokio::task::JoinHandle<(Client<S>, Option<NetError>)>,
}

impl<S: Store> std::fmt::Debug for Driven<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driven").finish_non_exhaustive()
    }
}

impl<S: Store + Send + 'static> Connection<S> {
    /// Moves the connection onto a task of its own.
    pub fn spawn(mut self) -> Driven<S> {
        let (calls, mut call_rx) = tokio::sync::mpsc::unbounded_channel::<Call<S>>();
        let (event_tx, events) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let failure = loop {
                tokio::select! {
                    call = call_rx.recv() => match call {
                        Some(call) => {
                            call(&mut self.client, &mut self.rng);
                            if let Err(e) = self.flush().await {
                                break Some(e);
                            }
                        }
                        None => break None,
                    },
                    event = self.next_event(Duration::from_secs(3600)) => match event {
                        // A dropped receiver just means nobody listens.
                        Ok(Some(event)) => drop(event_tx.send(event)),
                        Ok(None) => {}
                        Err(e) => break Some(e),
                    },
                }
            };
            match failure {
                None => (self.close().await, None),
                Some(e) => (self.client, Some(e)),
            }
        });
        Driven {
            calls,
            events,
            requeued: std::collections::VecDeque::new(),
            task,
        }
    }
}

impl<S: Store + Send + 'static> Driven<S> {
    /// Runs `f` with the client on the connection's task and returns its
    /// result; the bytes it queues are sent at once.
    ///
    /// # Errors
    /// [`NetError::Closed`] if the connection's task has ended.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client<S>, &mut StdRng) -> T + Send + 'static,
    ) -> Result<T, NetError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let call: Call<S> = Box::new(move |client, rng| {
            let _ = tx.send(f(client, rng));
        });
        self.calls.send(call).map_err(|_| NetError::Closed)?;
        rx.await.map_err(|_| NetError::Closed)
    }

    /// The next event; `None` when none came within `wait` or the
    /// connection has ended.
    pub async fn next_event(&mut self, wait: Duration) -> Option<ClientEvent> {
        if let Some(event) = self.requeued.pop_front() {
            return Some(event);
        }
        tokio::time::timeout(wait, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Puts events back, to be returned by the next calls of
    /// [`next_event`](Self::next_event) before any new one.
    pub fn requeue(&mut self, events: Vec<ClientEvent>) {
        for e in events.into_iter().rev() {
            self.requeued.push_front(e);
        }
    }

    /// Whether the connection's task has ended (closed or failed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the task, closes the connection and returns the client (its
    /// state is in its store) with the error that ended the connection
    /// before, if one did.
    ///
    /// # Errors
    /// [`NetError::Io`] if the task panicked; the client is lost then.
    pub async fn close(self) -> Result<(Client<S>, Option<NetError>), NetError> {
        drop(self.calls);
        self.task
            .await
            .map_err(|e| NetError::Io(std::io::Error::other(e)))
    }
}
