//! The relay: accepts TLS connections, runs one task per connection, and
//! holds what the connections share (the registry of connected devices,
//! uploads in progress, limits and metrics).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hush::keys::DeviceAddress;
use hush::wire::protocol::{ProvisioningAddress, UploadId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::blob::BlobStore;
use crate::config::Config;
use crate::limits::{IpLimits, IpRefusal, TokenBucket};
use crate::metrics::{Metrics, Rejection};
use crate::push::PushHook;
use crate::storage::{Storage, StorageError};

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What another task can tell a connection. Each message holds room in the
/// connection's inbox (bytes), given back when it has been handled.
#[derive(Debug)]
pub(crate) enum Control {
    /// An envelope was queued for this connection's device.
    Mail(Box<hush::wire::protocol::Delivery>, OwnedSemaphorePermit),
    /// A frame to send as is (a push).
    Frame(Vec<u8>, OwnedSemaphorePermit),
}

/// How to reach a connection's task.
#[derive(Debug, Clone)]
pub(crate) struct ConnHandle {
    pub(crate) id: u64,
    pub(crate) control: mpsc::Sender<Control>,
    pub(crate) kill: Arc<Notify>,
    /// Set before `kill` fires: the connection acts no further.
    pub(crate) closed: Arc<AtomicBool>,
    pub(crate) inbox: Arc<Semaphore>,
    pub(crate) inbox_size: usize,
}

impl ConnHandle {
    /// Closes the connection (displaced, removed, or the account deleted).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.kill.notify_one();
    }

    fn room(&self, len: usize, metrics: &Metrics) -> Option<OwnedSemaphorePermit> {
        let cost = len.clamp(1, self.inbox_size) as u32;
        match self.inbox.clone().try_acquire_many_owned(cost) {
            Ok(p) => Some(p),
            Err(_) => {
                // The connection reads too slowly: it is closed, and what
                // it misses waits in the queue.
                metrics.reject(Rejection::SlowReader);
                self.close();
                None
            }
        }
    }

    fn tell(&self, message: Control, metrics: &Metrics) {
        if self.control.try_send(message).is_err() {
            metrics.reject(Rejection::SlowReader);
            self.close();
        }
    }

    /// Hands a push frame to the connection.
    pub(crate) fn tell_frame(&self, bytes: Vec<u8>, metrics: &Metrics) {
        if let Some(room) = self.room(bytes.len(), metrics) {
            self.tell(Control::Frame(bytes, room), metrics);
        }
    }

    /// Hands a live envelope to the connection.
    pub(crate) fn tell_mail(&self, delivery: hush::wire::protocol::Delivery, metrics: &Metrics) {
        let len = delivery.envelope.message().len() + 128;
        if let Some(room) = self.room(len, metrics) {
            self.tell(Control::Mail(Box::new(delivery), room), metrics);
        }
    }
}

/// An upload in progress.
#[derive(Debug)]
pub(crate) struct Upload {
    pub(crate) owner: DeviceAddress,
    pub(crate) connection: u64,
    pub(crate) size: u64,
    pub(crate) written: u64,
    /// When a chunk last arrived (or the upload began).
    pub(crate) last_active: Instant,
}

/// Uploads in progress, with counts per user.
#[derive(Debug, Default)]
pub(crate) struct Uploads {
    pub(crate) by_id: HashMap<UploadId, Upload>,
    pub(crate) per_user: HashMap<hush::keys::UserId, usize>,
}

impl Uploads {
    pub(crate) fn remove(&mut self, id: &UploadId) -> Option<Upload> {
        let upload = self.by_id.remove(id)?;
        if let Some(n) = self.per_user.get_mut(&upload.owner.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_user.remove(&upload.owner.user);
            }
        }
        Some(upload)
    }
}

/// Rate limits of one device, kept across its connections.
#[derive(Debug)]
pub(crate) struct DeviceRates {
    pub(crate) sends: TokenBucket,
    pub(crate) fetches: TokenBucket,
    pub(crate) requests: TokenBucket,
}

impl DeviceRates {
    /// Whether every bucket is full again (the entry may be forgotten).
    pub(crate) fn is_full(&self, now: f64) -> bool {
        self.sends.is_full(now) && self.fetches.is_full(now) && self.requests.is_full(now)
    }
}

/// What every connection shares.
pub(crate) struct Shared<S, B> {
    pub(crate) config: Config,
    pub(crate) storage: S,
    pub(crate) blobs: B,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) push: Option<Arc<dyn PushHook>>,
    pub(crate) devices: Mutex<HashMap<DeviceAddress, ConnHandle>>,
    pub(crate) provisioning: Mutex<HashMap<ProvisioningAddress, ConnHandle>>,
    pub(crate) uploads: Mutex<Uploads>,
    pub(crate) rates: Mutex<HashMap<DeviceAddress, DeviceRates>>,
    pub(crate) registrations: Mutex<TokenBucket>,
    pub(crate) ip_limits: IpLimits,
    pub(crate) incoming_budget: Arc<Semaphore>,
    pub(crate) next_conn: AtomicU64,
    pub(crate) started: Instant,
    pub(crate) shutdown: watch::Receiver<bool>,
}

impl<S, B> Shared<S, B> {
    /// Seconds since start, for token buckets.
    pub(crate) fn clock(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// Locks a mutex, recovering the data of a poisoned one (no task panics
/// while holding these locks; recovering keeps the server up if one did).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<S: Storage, B: BlobStore> Shared<S, B> {
    /// Times a storage call for the metrics.
    pub(crate) async fn timed<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        let start = Instant::now();
        let out = call.await;
        self.metrics.storage_latency(start.elapsed().as_secs_f64());
        out
    }
}

/// A running server: its addresses, metrics and shutdown switch.
pub struct RunningServer {
    /// The TLS listener's address.
    pub address: SocketAddr,
    /// The admin listener's address, if enabled.
    pub admin_address: Option<SocketAddr>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer")
            .field("address", &self.address)
            .field("admin_address", &self.admin_address)
            .finish_non_exhaustive()
    }
}

impl RunningServer {
    /// Stops accepting, lets connections finish their in-flight writes, and
    /// waits for them (at most `grace`).
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(grace + Duration::from_secs(1), self.task).await;
    }

    /// Waits until the server stops (after [`shutdown`](Self::shutdown) from
    /// a clone of the switch, or a fatal error).
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// A handle that stops the server when set to `true`.
    pub fn shutdown_switch(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The storage failed at start-up.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Starts the server: binds the listeners, spawns the accept loop, the
/// periodic purge and the metrics refresh, and returns at once.
///
/// # Errors
/// [`StartError`].
pub async fn start<S: Storage, B: BlobStore>(
    config: Config,
    storage: S,
    blobs: B,
    tls: Arc<rustls::ServerConfig>,
    push: Option<Arc<dyn PushHook>>,
) -> Result<RunningServer, StartError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            address: config.listen.to_string(),
            source,
        })?;
    let address = listener.local_addr().map_err(|source| StartError::Bind {
        address: config.listen.to_string(),
        source,
    })?;
    let admin = if config.admin_listen.is_empty() {
        None
    } else {
        let l = TcpListener::bind(&config.admin_listen)
            .await
            .map_err(|source| StartError::Bind {
                address: config.admin_listen.clone(),
                source,
            })?;
        Some(l)
    };
    let admin_address = admin.as_ref().and_then(|l| l.local_addr().ok());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let metrics = Arc::new(Metrics::default());
    let limits = &config.limits;
    let registrations = TokenBucket::new(
        limits.registrations_per_sec,
        limits.registrations_burst,
        0.0,
    );
    let shared = Arc::new(Shared {
        ip_limits: IpLimits::new(
            limits.preauth_connections_per_ip,
            limits.new_connections_per_ip_per_sec,
            limits.new_connections_per_ip_burst,
        ),
        incoming_budget: Arc::new(Semaphore::new(limits.incoming_buffer_bytes)),
        config,
        storage,
        blobs,
        metrics: metrics.clone(),
        push,
        devices: Mutex::default(),
        provisioning: Mutex::default(),
        uploads: Mutex::default(),
        rates: Mutex::default(),
        registrations: Mutex::new(registrations),
        next_conn: AtomicU64::new(1),
        started: Instant::now(),
        shutdown: shutdown_rx,
    });
    // Leftovers of a previous run: partial uploads cannot be resumed.
    if let Err(e) = shared.blobs.purge_partial(Duration::ZERO).await {
        tracing::warn!(error = %e, "cannot clean partial uploads");
    }
    if let Some(admin) = admin {
        tokio::spawn(admin_loop(admin, shared.clone()));
    }
    tokio::spawn(housekeeping(shared.clone()));
    let task = tokio::spawn(accept_loop(listener, shared, tls));
    tracing::info!(%address, "listening");
    Ok(RunningServer {
        address,
        admin_address,
        metrics,
        shutdown: shutdown_tx,
        task,
    })
}

async fn accept_loop<S: Storage, B: BlobStore>(
    listener: TcpListener,
    shared: Arc<Shared<S, B>>,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(shared.config.limits.max_connections));
    let mut tasks = JoinSet::new();
    let mut shutdown = shared.shutdown.clone();
    loop {
        while tasks.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared.metrics.reject(Rejection::Connections);
            drop(stream);
            continue;
        };
        let ip = canonical_ip(peer.ip());
        match shared.ip_limits.admit(ip, shared.clock()) {
            Ok(()) => {}
            Err(why) => {
                shared.metrics.reject(match why {
                    IpRefusal::PreAuthCap => Rejection::PreAuthPerIp,
                    IpRefusal::Rate => Rejection::ConnectionRate,
                });
                drop(stream);
                continue;
            }
        }
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        tasks.spawn(async move {
            shared.metrics.connections.fetch_add(1, Ordering::Relaxed);
            handshake_and_serve(shared.clone(), acceptor, stream, ip).await;
            shared.metrics.connections.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    while tasks.try_join_next().is_some() {}
    tracing::info!(open = tasks.len(), "shutting down: draining connections");
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        tasks.abort_all();
    }
}

/// The address per-IP limits count by: an IPv4-mapped IPv6 address as the
/// IPv4 address, any other IPv6 address by its /64 (one host usually has a
/// whole /64 to pick addresses from).
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(prefix))
            }
        },
        v4 => v4,
    }
}

async fn handshake_and_serve<S: Storage, B: BlobStore>(
    shared: Arc<Shared<S, B>>,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    ip: IpAddr,
) {
    let timeout = Duration::from_secs(shared.config.limits.tls_handshake_timeout);
    let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            shared.ip_limits.release(ip);
            return;
        }
        Err(_) => {
            shared.metrics.reject(Rejection::HandshakeTimeout);
            shared.ip_limits.release(ip);
            return;
        }
    };
    crate::connection::serve(shared, tls, ip).await;
}

/// Purges expired envelopes, blobs, link permissions and idle partial
/// uploads, and refreshes the queue-depth gauge.
async fn housekeeping<S: Storage, B: BlobStore>(shared: Arc<Shared<S, B>>) {
    let mut shutdown = shared.shutdown.clone();
    let mut last_purge = Instant::now();
    loop {
        // Uploads left idle give their slot back (their partial file goes too).
        let idle = Duration::from_secs(shared.config.limits.upload_idle_timeout);
        let stale: Vec<UploadId> = {
            let mut uploads = lock(&shared.uploads);
            let ids: Vec<UploadId> = uploads
                .by_id
                .iter()
                .filter(|(_, u)| u.last_active.elapsed() >= idle)
                .map(|(id, _)| *id)
                .collect();
            for id in &ids {
                uploads.remove(id);
            }
            ids
        };
        for id in stale {
            let _ = shared.blobs.abort(&id).await;
        }
        if let Ok(depth) = shared.timed(shared.storage.queue_depth()).await {
            shared.metrics.queue_depth.store(depth, Ordering::Relaxed);
        }
        if last_purge.elapsed().as_secs() >= shared.config.purge_interval {
            last_purge = Instant::now();
            if let Err(e) = purge(&shared.config, &shared.storage, &shared.blobs).await {
                tracing::warn!(error = %e, "purge failed");
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            () = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

/// What a purge removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Purged {
    /// Envelopes past the TTL.
    pub envelopes: u64,
    /// Blobs past the TTL.
    pub blobs: u64,
    /// Idle partial uploads.
    pub partial_uploads: u64,
    /// Expired link permissions.
    pub link_permissions: u64,
    /// Blob files the index did not know (left by a crash) and old enough
    /// to have expired.
    pub orphan_blobs: u64,
}

/// Removes envelopes and blobs older than the TTL, idle partial uploads,
/// expired link permissions, and blob files older than the TTL that the index
/// lost.
///
/// # Errors
/// A storage or blob-store error.
pub async fn purge<S: Storage, B: BlobStore>(
    config: &Config,
    storage: &S,
    blobs: &B,
) -> Result<Purged, Box<dyn std::error::Error + Send + Sync>> {
    let now = unix_now();
    let before = now.saturating_sub(config.message_ttl);
    let envelopes = storage.purge_envelopes(before).await?;
    let expired = storage.purge_blobs(before).await?;
    for blob in &expired {
        blobs.delete(blob).await?;
    }
    let partial_uploads = blobs
        .purge_partial(Duration::from_secs(config.limits.upload_idle_timeout))
        .await?;
    let link_permissions = storage.purge_link_permissions(now).await?;
    // A blob's file is last written at most an idle upload's lifetime (the
    // idle timeout, plus up to one purge interval before the purge notices)
    // before its index row: files older than the TTL by that much have no
    // row left, because the index purge above just removed every expired
    // one. What remains was orphaned by a crash between file and row.
    let margin = config
        .limits
        .upload_idle_timeout
        .saturating_add(config.purge_interval);
    let orphan_blobs = blobs
        .purge_older(Duration::from_secs(
            config.message_ttl.saturating_add(margin),
        ))
        .await?;
    let purged = Purged {
        envelopes,
        blobs: expired.len() as u64,
        partial_uploads,
        link_permissions,
        orphan_blobs,
    };
    tracing::info!(?purged, "purged");
    Ok(purged)
}

/// The admin listener: `GET /healthz` and `GET /metrics`, plain HTTP/1.1.
async fn admin_loop<S: Storage, B: BlobStore>(listener: TcpListener, shared: Arc<Shared<S, B>>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let (mut stream, _) = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = match path {
                "/healthz" => match shared.timed(shared.storage.queue_depth()).await {
                    Ok(_) => ("200 OK", "ok\n".to_owned()),
                    Err(e) => ("503 Service Unavailable", format!("storage: {e}\n")),
                },
                "/metrics" => ("200 OK", shared.metrics.render()),
                _ => ("404 Not Found", "not found\n".to_owned()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
