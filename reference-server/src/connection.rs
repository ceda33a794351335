//! One connection: its task, its state machine and the request handlers.
//!
//! A connection starts unauthenticated with a single-use challenge. Before
//! it authenticates it may register an account or a linked device, or wait
//! as a device being linked (provisioning); everything else needs
//! authentication. Frames are read under the pre-auth size cap until then,
//! and under the full cap after.
//!
//! Outgoing frames go through a bounded queue to a writer task. The
//! connection's own responses wait for room in it (so a slow reader slows
//! only itself); pushes from other connections arrive through a bounded
//! control queue, and a connection whose control queue overflows is closed.

use std::collections::{HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hush::keys::{DeviceAddress, DeviceId, PqPreKeyKind, PreKeyBundle, PreKeyKind};
use hush::wire::frame::{FrameDecoder, encode_frame};
use hush::wire::protocol::{
    BlobId, CHUNK_LEN, ClientFrame, Delivery, EnvelopeId, ErrorCode, LinkToken, MAX_FRAME_LEN,
    Nonce, ProtocolError, ProvisioningAddress, Push, Request, Response, ServerFrame, UploadId,
    verify_auth, verify_registration,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

use crate::blob::BlobStore;
use crate::limits::TokenBucket;
use crate::metrics::Rejection;
use crate::server::{ConnHandle, Control, DeviceRates, Shared, Upload, lock, unix_now};
use crate::storage::{BlobRecord, NewEnvelope, Storage, StorageError};

type Reply = Result<Response, ProtocolError>;

fn refuse(code: ErrorCode, message: &str) -> Reply {
    Err(ProtocolError::new(code, message))
}

fn internal(e: &StorageError) -> ProtocolError {
    match e {
        // The device or account went away meanwhile (removed or deleted by
        // another connection): not a server fault.
        StorageError::NoSuchDevice | StorageError::NoSuchUser => {
            ProtocolError::new(ErrorCode::NotFound, "the device or account is gone")
        }
        _ => {
            tracing::error!(error = %e, "storage failed");
            ProtocolError::new(ErrorCode::Internal, "storage failed")
        }
    }
}

fn encode(frame: &ServerFrame) -> Option<Vec<u8>> {
    match encode_frame(&frame.to_payload(), MAX_FRAME_LEN) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            tracing::error!(error = %e, "outgoing frame over the cap");
            None
        }
    }
}

/// Which of a device's token buckets a request draws on.
#[derive(Debug, Clone, Copy)]
enum RateKind {
    Send,
    Fetch,
    Other,
}

/// Work to do after a response has been queued.
#[derive(Debug)]
enum After {
    /// Close the connection.
    Close,
}

/// Incoming bytes a connection may buffer without drawing on the shared
/// budget: small requests (pings, acks) always get through.
const FREE_INCOMING: usize = 64 * 1024;

/// Envelopes fetched per step of delivering the queue.
const DRAIN_PAGE: usize = 8;

/// A frame for the writer and the outbound room it takes up, given back
/// when it has been written.
type Outgoing = (Vec<u8>, OwnedSemaphorePermit);

struct Conn<S, B> {
    shared: Arc<Shared<S, B>>,
    id: u64,
    ip: IpAddr,
    handle: ConnHandle,
    out: mpsc::UnboundedSender<Outgoing>,
    /// Bytes the writer may hold for this connection.
    room: Arc<Semaphore>,
    room_size: usize,
    decoder: FrameDecoder,
    nonce: Option<Nonce>,
    device: Option<DeviceAddress>,
    provisioning: Option<ProvisioningAddress>,
    counted_preauth: bool,
    registered: bool,
    /// Bytes buffered by the decoder, and how many of them draw on the
    /// shared incoming budget (those beyond [`FREE_INCOMING`]).
    held: usize,
    held_shared: usize,
    /// Since when the decoder holds an unfinished frame.
    partial_since: Option<Instant>,
    /// Delivering the queue: the position reached, and envelopes fetched
    /// but not yet sent for want of outbound room.
    draining: Option<u64>,
    stash: VecDeque<Delivery>,
    /// Envelopes delivered from the queue, so a live copy is not sent twice.
    drained: HashSet<EnvelopeId>,
    after: Vec<After>,
}

/// Serves one TLS connection until it closes.
pub(crate) async fn serve<S, B, T>(shared: Arc<Shared<S, B>>, stream: T, ip: IpAddr)
where
    S: Storage,
    B: BlobStore,
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let limits = &shared.config.limits;
    let (reader, writer) = tokio::io::split(stream);
    let (out, out_rx) = mpsc::unbounded_channel();
    let (control, control_rx) = mpsc::channel(limits.outbound_queue_frames);
    let kill = Arc::new(Notify::new());
    let closed = Arc::new(AtomicBool::new(false));
    let write_timeout = Duration::from_secs(limits.idle_timeout);
    let writer_task = tokio::spawn(write_loop(
        writer,
        out_rx,
        kill.clone(),
        closed.clone(),
        write_timeout,
    ));
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let nonce = Nonce::random(&mut rand::rng());
    let room_size = limits.outbound_queue_bytes;
    let mut conn = Conn {
        handle: ConnHandle {
            id,
            control,
            kill: kill.clone(),
            closed,
            inbox: Arc::new(Semaphore::new(room_size)),
            inbox_size: room_size,
        },
        decoder: FrameDecoder::new(limits.max_preauth_frame_len),
        shared,
        id,
        ip,
        out,
        room: Arc::new(Semaphore::new(room_size)),
        room_size,
        nonce: Some(nonce),
        device: None,
        provisioning: None,
        counted_preauth: true,
        registered: false,
        held: 0,
        held_shared: 0,
        partial_since: None,
        draining: None,
        stash: VecDeque::new(),
        drained: HashSet::new(),
        after: Vec::new(),
    };
    if conn.push(Push::Challenge { nonce }).await {
        conn.run(reader, control_rx).await;
    }
    conn.cleanup().await;
    drop(conn);
    // The writer finishes what is queued (graceful close), frame by frame
    // under the write timeout.
    let _ = writer_task.await;
}

async fn write_loop<W: AsyncWrite + Unpin>(
    writer: W,
    mut frames: mpsc::UnboundedReceiver<Outgoing>,
    kill: Arc<Notify>,
    closed: Arc<AtomicBool>,
    timeout: Duration,
) {
    let mut writer = tokio::io::BufWriter::new(writer);
    let fail = || {
        closed.store(true, Ordering::Relaxed);
        kill.notify_one();
    };
    while let Some((frame, room)) = frames.recv().await {
        // Each frame, and each flush, within the timeout: a reader that
        // keeps reading is never cut off by a long queue.
        if !matches!(
            tokio::time::timeout(timeout, writer.write_all(&frame)).await,
            Ok(Ok(()))
        ) {
            fail();
            return;
        }
        drop(room);
        if frames.is_empty()
            && !matches!(
                tokio::time::timeout(timeout, writer.flush()).await,
                Ok(Ok(()))
            )
        {
            fail();
            return;
        }
    }
    let _ = tokio::time::timeout(timeout, writer.shutdown()).await;
}

impl<S: Storage, B: BlobStore> Conn<S, B> {
    /// Queues encoded bytes for the writer once there is room; false if the
    /// connection is closing.
    async fn send_bytes(&mut self, bytes: Vec<u8>) -> bool {
        let cost = bytes.len().clamp(1, self.room_size) as u32;
        let kill = self.handle.kill.clone();
        let room = tokio::select! {
            permit = self.room.clone().acquire_many_owned(cost) => match permit {
                Ok(p) => p,
                Err(_) => return false,
            },
            () = kill.notified() => return false,
        };
        self.out.send((bytes, room)).is_ok()
    }

    async fn send(&mut self, frame: &ServerFrame) -> bool {
        match encode(frame) {
            Some(bytes) => self.send_bytes(bytes).await,
            None => true,
        }
    }

    async fn push(&mut self, push: Push) -> bool {
        self.send(&ServerFrame::Push(push)).await
    }

    fn deadline(&self, start: Instant, last_input: Instant) -> Instant {
        let l = &self.shared.config.limits;
        let mut deadline = if self.device.is_some() {
            last_input + Duration::from_secs(l.idle_timeout)
        } else if self.provisioning.is_some() {
            start + Duration::from_secs(l.provisioning_timeout)
        } else {
            start + Duration::from_secs(l.auth_timeout)
        };
        // An unfinished frame holds buffer space: it must complete in time.
        if let Some(since) = self.partial_since {
            deadline = deadline.min(since + Duration::from_secs(l.idle_timeout));
        }
        deadline
    }

    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        mut reader: R,
        mut control: mpsc::Receiver<Control>,
    ) {
        let start = Instant::now();
        let mut last_input = start;
        let mut buf = vec![0u8; 16 * 1024];
        let mut shutdown = self.shared.shutdown.clone();
        let kill = self.handle.kill.clone();
        // One maximal delivery's worth of room before each step of the drain.
        let step_room = (hush::wire::envelope::MAX_ENVELOPE_LEN + 1024).min(self.room_size) as u32;
        loop {
            if self.handle.closed.load(Ordering::Relaxed) {
                return;
            }
            let deadline = self.deadline(start, last_input);
            let room = self.room.clone();
            tokio::select! {
                biased;
                () = kill.notified() => return,
                _ = shutdown.changed() => return,
                () = tokio::time::sleep_until(deadline) => {
                    // An unfinished frame left too long counts as idling.
                    self.shared.metrics.reject(if self.device.is_some() {
                        Rejection::IdleTimeout
                    } else {
                        Rejection::AuthTimeout
                    });
                    return;
                }
                message = control.recv() => {
                    let Some(message) = message else { return };
                    if !self.control(message).await {
                        return;
                    }
                }
                permit = room.acquire_many_owned(step_room), if self.draining.is_some() => {
                    drop(permit);
                    if !Box::pin(self.drain_step()).await {
                        return;
                    }
                }
                read = reader.read(&mut buf) => {
                    let n = match read {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    last_input = Instant::now();
                    if !self.take_budget(n, deadline).await {
                        return;
                    }
                    // Boxed: the request handlers' state (about 9 KB) lives
                    // on the heap only while a read is handled, instead of
                    // inside every connection's task, idle or not.
                    if !Box::pin(self.input(&buf[..n])).await {
                        return;
                    }
                }
            }
        }
    }

    /// Accounts for `n` bytes read: beyond the connection's free allowance
    /// they draw on the shared budget, and reading waits (until the
    /// connection's deadline at most) while it is spent. False to close.
    async fn take_budget(&mut self, n: usize, deadline: Instant) -> bool {
        let shared_after = (self.held + n).saturating_sub(FREE_INCOMING);
        let need = shared_after - self.held_shared;
        if need > 0 {
            let budget = self.shared.incoming_budget.clone();
            let kill = self.handle.kill.clone();
            let mut shutdown = self.shared.shutdown.clone();
            let permit = tokio::select! {
                p = budget.acquire_many_owned(need as u32) => p,
                () = kill.notified() => return false,
                _ = shutdown.changed() => return false,
                () = tokio::time::sleep_until(deadline) => {
                    self.shared.metrics.reject(Rejection::IdleTimeout);
                    return false;
                }
            };
            let Ok(permit) = permit else { return false };
            permit.forget();
            self.held_shared += need;
        }
        self.held += n;
        true
    }

    /// Handles bytes read; false to close.
    async fn input(&mut self, bytes: &[u8]) -> bool {
        if self.decoder.push(bytes).is_err() {
            self.shared.metrics.reject(Rejection::FrameSize);
            return false;
        }
        loop {
            // A device removed or displaced meanwhile acts no further, even
            // with frames already read.
            if self.handle.closed.load(Ordering::Relaxed) {
                return false;
            }
            let payload = match self.decoder.next_frame() {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(_) => {
                    self.shared.metrics.reject(Rejection::FrameSize);
                    return false;
                }
            };
            let Ok(frame) = ClientFrame::from_payload(&payload) else {
                tracing::debug!("undecodable frame; closing");
                return false;
            };
            drop(payload);
            tracing::trace!(connection = self.id, request = ?frame.request, "request");
            let result = match frame.request.check_limits() {
                Ok(()) => self.handle(frame.request).await,
                Err(e) => Err(e),
            };
            if let Err(e) = &result {
                tracing::debug!(connection = self.id, code = ?e.code, message = %e.message, "request refused");
            }
            if !self
                .send(&ServerFrame::Response {
                    id: frame.id,
                    result,
                })
                .await
            {
                return false;
            }
            if !self.after.is_empty() {
                return false;
            }
        }
        self.release_budget();
        self.partial_since = match (self.decoder.buffered(), self.partial_since) {
            (0, _) => None,
            (_, Some(since)) => Some(since),
            (_, None) => Some(Instant::now()),
        };
        true
    }

    fn release_budget(&mut self) {
        let keep = self.decoder.buffered();
        self.held = keep;
        let keep_shared = keep.saturating_sub(FREE_INCOMING);
        if self.held_shared > keep_shared {
            self.shared
                .incoming_budget
                .add_permits(self.held_shared - keep_shared);
            self.held_shared = keep_shared;
        }
    }

    /// Handles a message from another task; false to close.
    async fn control(&mut self, message: Control) -> bool {
        match message {
            Control::Frame(bytes, _inbox) => self.send_bytes(bytes).await,
            Control::Mail(delivery, _inbox) => {
                if self.drained.remove(&delivery.id) {
                    return true;
                }
                self.shared
                    .metrics
                    .messages_pushed
                    .fetch_add(1, Ordering::Relaxed);
                self.push(Push::Deliver(*delivery)).await
            }
        }
    }

    /// One step of delivering the queue in order: the stash first, then a
    /// page from storage, as far as the outbound room allows; at the end,
    /// the marker and a prekeys-low push. False to close.
    async fn drain_step(&mut self) -> bool {
        let Some(me) = self.device.clone() else {
            self.draining = None;
            return true;
        };
        if self.stash.is_empty() {
            let after = self.draining.unwrap_or(0);
            let page = match self
                .shared
                .timed(self.shared.storage.queued(&me, after, DRAIN_PAGE))
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    internal(&e);
                    return false;
                }
            };
            if page.is_empty() {
                return self.finish_drain(&me).await;
            }
            for queued in page {
                self.draining = Some(after.max(queued.seq).max(self.draining.unwrap_or(0)));
                self.stash.push_back(queued.delivery);
            }
        }
        while let Some(delivery) = self.stash.pop_front() {
            let Some(bytes) = encode(&ServerFrame::Push(Push::Deliver(delivery.clone()))) else {
                continue;
            };
            let cost = bytes.len().clamp(1, self.room_size) as u32;
            let Ok(room) = self.room.clone().try_acquire_many_owned(cost) else {
                // No room now: the rest waits for the writer.
                self.stash.push_front(delivery);
                return true;
            };
            if self.drained.len() > 100_000 {
                self.drained.clear();
            }
            self.drained.insert(delivery.id);
            if self.out.send((bytes, room)).is_err() {
                return false;
            }
        }
        true
    }

    async fn finish_drain(&mut self, me: &DeviceAddress) -> bool {
        self.draining = None;
        if !self.push(Push::QueueEmpty).await {
            return false;
        }
        let storage = &self.shared.storage;
        let counts = async {
            let classical = self.shared.timed(storage.one_time_prekey_count(me)).await?;
            let pq = self
                .shared
                .timed(storage.pq_one_time_prekey_count(me))
                .await?;
            Ok::<_, StorageError>((classical, pq))
        };
        match counts.await {
            Ok((n, pq)) if n.min(pq) < self.shared.config.limits.prekeys_low_threshold => {
                self.push(Push::PreKeysLow {
                    remaining: n as u32,
                    pq_remaining: pq as u32,
                })
                .await
            }
            Ok(_) => true,
            Err(e) => {
                internal(&e);
                false
            }
        }
    }

    async fn cleanup(&mut self) {
        let shared = self.shared.clone();
        if let Some(me) = &self.device {
            let mut devices = lock(&shared.devices);
            if devices.get(me).is_some_and(|h| h.id == self.id) {
                devices.remove(me);
            }
            shared.metrics.authenticated.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(address) = self.provisioning.take() {
            lock(&shared.provisioning).remove(&address);
        }
        if self.counted_preauth {
            self.counted_preauth = false;
            shared.ip_limits.release(self.ip);
        }
        let abandoned: Vec<UploadId> = {
            let mut uploads = lock(&shared.uploads);
            let ids: Vec<UploadId> = uploads
                .by_id
                .iter()
                .filter(|(_, u)| u.connection == self.id)
                .map(|(id, _)| *id)
                .collect();
            for id in &ids {
                uploads.remove(id);
            }
            ids
        };
        for id in abandoned {
            let _ = shared.blobs.abort(&id).await;
        }
        shared.incoming_budget.add_permits(self.held_shared);
        self.held_shared = 0;
        self.held = 0;
    }

    fn server_names(&self) -> &[String] {
        &self.shared.config.server_names
    }

    fn tell_devices(&self, user: &hush::keys::UserId, devices: &[DeviceId], push: &Push) {
        let Some(bytes) = encode(&ServerFrame::Push(push.clone())) else {
            return;
        };
        let map = lock(&self.shared.devices);
        for d in devices {
            let address = DeviceAddress::new(user.clone(), *d);
            if let Some(handle) = map.get(&address).filter(|h| h.id != self.id) {
                handle.tell_frame(bytes.clone(), &self.shared.metrics);
            }
        }
    }

    fn close_devices(&self, addresses: &[DeviceAddress]) {
        let map = lock(&self.shared.devices);
        for a in addresses {
            if let Some(handle) = map.get(a).filter(|h| h.id != self.id) {
                handle.close();
            }
        }
    }

    fn rate(&self, me: &DeviceAddress, kind: RateKind) -> bool {
        let l = &self.shared.config.limits;
        let now = self.shared.clock();
        let mut rates = lock(&self.shared.rates);
        if rates.len() > 100_000 {
            // Forget devices whose buckets are full again: nothing is lost.
            rates.retain(|_, r| !r.is_full(now));
        }
        let r = rates.entry(me.clone()).or_insert_with(|| DeviceRates {
            sends: TokenBucket::new(l.sends_per_sec, l.sends_burst, now),
            fetches: TokenBucket::new(l.prekey_fetches_per_sec, l.prekey_fetches_burst, now),
            requests: TokenBucket::new(l.requests_per_sec, l.requests_burst, now),
        });
        match kind {
            RateKind::Send => r.sends.try_take(now),
            RateKind::Fetch => r.fetches.try_take(now),
            RateKind::Other => r.requests.try_take(now),
        }
    }

    async fn handle(&mut self, request: Request) -> Reply {
        match request {
            Request::Ping => Ok(Response::Pong),
            Request::Authenticate { device, signature } => {
                self.authenticate(device, signature).await
            }
            Request::RegisterAccount {
                user,
                identity,
                auth_key,
                signature,
            } => {
                self.may_register()?;
                let signed = self.server_names().iter().any(|n| {
                    verify_registration(&identity, &user, &auth_key, n, &signature).is_ok()
                });
                if !signed {
                    return refuse(ErrorCode::Unauthenticated, "bad registration signature");
                }
                match self
                    .shared
                    .timed(self.shared.storage.create_account(
                        &user,
                        &identity,
                        &auth_key,
                        unix_now(),
                    ))
                    .await
                {
                    Ok(device) => {
                        tracing::info!(user = user.as_str(), "account registered");
                        Ok(Response::Registered { device })
                    }
                    Err(StorageError::UserTaken) => refuse(ErrorCode::Conflict, "user id taken"),
                    Err(e) => Err(internal(&e)),
                }
            }
            Request::RegisterLinkedDevice {
                user,
                auth_key,
                permission,
            } => {
                self.may_register()?;
                self.register_linked(user, auth_key, permission).await
            }
            Request::OpenProvisioning => {
                if self.device.is_some() || self.provisioning.is_some() {
                    return refuse(ErrorCode::BadRequest, "not on this connection");
                }
                let address = ProvisioningAddress::random(&mut rand::rng());
                lock(&self.shared.provisioning).insert(address, self.handle.clone());
                self.provisioning = Some(address);
                Ok(Response::Provisioning { address })
            }
            other => {
                let Some(me) = self.device.clone() else {
                    return refuse(ErrorCode::Unauthenticated, "log in first");
                };
                self.handle_authenticated(me, other).await
            }
        }
    }

    /// One registration per connection, not after login, and within the
    /// server-wide rate of new accounts and devices.
    fn may_register(&mut self) -> Result<(), ProtocolError> {
        if self.device.is_some() || self.registered {
            return Err(ProtocolError::new(
                ErrorCode::BadRequest,
                "one registration per connection, before login",
            ));
        }
        self.registered = true;
        let now = self.shared.clock();
        if !lock(&self.shared.registrations).try_take(now) {
            self.shared.metrics.reject(Rejection::RegistrationRate);
            return Err(ProtocolError::new(
                ErrorCode::RateLimited,
                "too many registrations; try again later",
            ));
        }
        Ok(())
    }

    async fn authenticate(
        &mut self,
        device: DeviceAddress,
        signature: hush::wire::protocol::Signature,
    ) -> Reply {
        if self.device.is_some() {
            return refuse(ErrorCode::BadRequest, "already logged in");
        }
        // The challenge works once, whatever the outcome.
        let Some(nonce) = self.nonce.take() else {
            return refuse(ErrorCode::Expired, "the challenge was used; reconnect");
        };
        let record = match self.shared.timed(self.shared.storage.device(&device)).await {
            Ok(Some(r)) => r,
            Ok(None) => return refuse(ErrorCode::Unauthenticated, "unknown device"),
            Err(e) => return Err(internal(&e)),
        };
        let signed = self
            .server_names()
            .iter()
            .any(|n| verify_auth(&record.auth_key, &nonce, n, &signature).is_ok());
        if !signed {
            return refuse(ErrorCode::Unauthenticated, "bad signature");
        }
        if let Some(address) = self.provisioning.take() {
            lock(&self.shared.provisioning).remove(&address);
        }
        if self.counted_preauth {
            self.counted_preauth = false;
            self.shared.ip_limits.release(self.ip);
        }
        self.decoder
            .set_max(self.shared.config.limits.max_frame_len);
        self.shared
            .metrics
            .authenticated
            .fetch_add(1, Ordering::Relaxed);
        let displaced = lock(&self.shared.devices).insert(device.clone(), self.handle.clone());
        if let Some(old) = displaced {
            old.close();
        }
        // A removal that committed between the lookup and the registration
        // above could not close this connection: look again.
        match self.shared.storage.device(&device).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                self.device = Some(device);
                self.handle.close();
                return refuse(ErrorCode::Unauthenticated, "unknown device");
            }
            Err(e) => {
                self.device = Some(device);
                self.handle.close();
                return Err(internal(&e));
            }
        }
        tracing::debug!(
            user = device.user.as_str(),
            device = device.device.0,
            "logged in"
        );
        self.device = Some(device);
        self.draining = Some(0);
        Ok(Response::Authenticated {
            server_time: unix_now(),
        })
    }

    async fn register_linked(
        &mut self,
        user: hush::keys::UserId,
        auth_key: hush::keys::DeviceAuthKey,
        permission: LinkToken,
    ) -> Reply {
        let max = self.shared.config.limits.max_devices;
        let added = self
            .shared
            .timed(self.shared.storage.add_linked_device(
                &user,
                &permission,
                &auth_key,
                max,
                unix_now(),
            ))
            .await;
        match added {
            Ok(device) => {
                let others = match self.shared.storage.devices(&user).await {
                    Ok(d) => d.into_iter().map(|r| r.device).collect::<Vec<_>>(),
                    Err(e) => return Err(internal(&e)),
                };
                self.tell_devices(&user, &others, &Push::DevicesChanged { user: user.clone() });
                Ok(Response::Registered { device })
            }
            Err(StorageError::PermissionInvalid | StorageError::NoSuchUser) => refuse(
                ErrorCode::Expired,
                "the link permission is unknown, used or expired",
            ),
            Err(StorageError::DeviceLimit(n)) => refuse(
                ErrorCode::LimitReached,
                &format!("the account has {n} devices"),
            ),
            Err(e) => Err(internal(&e)),
        }
    }

    async fn handle_authenticated(&mut self, me: DeviceAddress, request: Request) -> Reply {
        let shared = self.shared.clone();
        let storage = &shared.storage;
        let own_bucket = matches!(
            request,
            Request::Send { .. } | Request::FetchBundles { .. } | Request::Ack { .. }
        );
        if !own_bucket && !self.rate(&me, RateKind::Other) {
            shared.metrics.reject(Rejection::RequestRate);
            return refuse(ErrorCode::RateLimited, "too many requests");
        }
        match request {
            Request::PublishCertificate { certificate } => {
                let identity = match shared.timed(storage.identity(&me.user)).await {
                    Ok(Some(i)) => i,
                    Ok(None) => return refuse(ErrorCode::NotFound, "no such account"),
                    Err(e) => return Err(internal(&e)),
                };
                let record = match storage.device(&me).await {
                    Ok(Some(r)) => r,
                    Ok(None) => return refuse(ErrorCode::NotFound, "no such device"),
                    Err(e) => return Err(internal(&e)),
                };
                if certificate.verify_for(&identity, &me).is_err()
                    || certificate.auth_key() != &record.auth_key
                {
                    return refuse(
                        ErrorCode::BadRequest,
                        "the certificate does not verify for this device",
                    );
                }
                if let Err(e) = shared
                    .timed(storage.set_certificate(&me, &certificate))
                    .await
                {
                    return Err(internal(&e));
                }
                let others = match storage.devices(&me.user).await {
                    Ok(d) => d.into_iter().map(|r| r.device).collect::<Vec<_>>(),
                    Err(e) => return Err(internal(&e)),
                };
                self.tell_devices(
                    &me.user,
                    &others,
                    &Push::DevicesChanged {
                        user: me.user.clone(),
                    },
                );
                Ok(Response::Ok)
            }
            Request::PublishPreKeys {
                signed,
                last_resort,
                one_time,
                pq_last_resort,
                pq_one_time,
            } => {
                let identity = match shared.timed(storage.identity(&me.user)).await {
                    Ok(Some(i)) => i,
                    Ok(None) => return refuse(ErrorCode::NotFound, "no such account"),
                    Err(e) => return Err(internal(&e)),
                };
                for (key, kind) in [
                    (&signed, PreKeyKind::Signed),
                    (&last_resort, PreKeyKind::LastResort),
                ] {
                    if let Some(key) = key
                        && (key.kind() != kind || key.verify(&identity, &me).is_err())
                    {
                        return refuse(ErrorCode::BadRequest, "a prekey signature does not verify");
                    }
                }
                let pq_kinds = pq_last_resort
                    .iter()
                    .map(|k| (k, PqPreKeyKind::LastResort))
                    .chain(pq_one_time.iter().map(|k| (k, PqPreKeyKind::OneTime)));
                for (key, kind) in pq_kinds {
                    if key.kind() != kind || key.verify(&identity, &me).is_err() {
                        return refuse(
                            ErrorCode::BadRequest,
                            "a PQ prekey signature does not verify",
                        );
                    }
                }
                let max = shared.config.limits.max_one_time_prekeys;
                if !one_time.is_empty() {
                    let have = match storage.one_time_prekey_count(&me).await {
                        Ok(n) => n,
                        Err(e) => return Err(internal(&e)),
                    };
                    if have + one_time.len() as u64 > max {
                        return refuse(
                            ErrorCode::LimitReached,
                            "the device has the most one-time prekeys the server keeps",
                        );
                    }
                }
                if !pq_one_time.is_empty() {
                    let have = match storage.pq_one_time_prekey_count(&me).await {
                        Ok(n) => n,
                        Err(e) => return Err(internal(&e)),
                    };
                    if have + pq_one_time.len() as u64 > max {
                        return refuse(
                            ErrorCode::LimitReached,
                            "the device has the most PQ one-time prekeys the server keeps",
                        );
                    }
                }
                if let Err(e) = shared
                    .timed(storage.publish_prekeys(
                        &me,
                        signed.as_ref(),
                        last_resort.as_ref(),
                        &one_time,
                    ))
                    .await
                {
                    return Err(internal(&e));
                }
                // A second transaction: if it fails, the classical part stays
                // published and the client gets an error; publishing the
                // same request again is harmless (repeated ids are ignored).
                if pq_last_resort.is_none() && pq_one_time.is_empty() {
                    return Ok(Response::Ok);
                }
                match shared
                    .timed(storage.publish_pq_prekeys(&me, pq_last_resort.as_ref(), &pq_one_time))
                    .await
                {
                    Ok(()) => Ok(Response::Ok),
                    Err(e) => Err(internal(&e)),
                }
            }
            Request::FetchBundles { user, devices } => {
                if !self.rate(&me, RateKind::Fetch) {
                    shared.metrics.reject(Rejection::FetchRate);
                    return refuse(ErrorCode::RateLimited, "too many bundle fetches");
                }
                self.fetch_bundles(user, devices).await
            }
            Request::ListDevices { user } => match shared.timed(storage.devices(&user)).await {
                Ok(d) => Ok(Response::Devices(
                    d.into_iter().filter_map(|r| r.certificate).collect(),
                )),
                Err(e) => Err(internal(&e)),
            },
            Request::Send {
                recipient,
                envelopes,
            } => {
                if !self.rate(&me, RateKind::Send) {
                    shared.metrics.reject(Rejection::SendRate);
                    return refuse(ErrorCode::RateLimited, "too many sends");
                }
                self.send_envelopes(me, recipient, envelopes).await
            }
            Request::Ack { envelopes } => match shared.timed(storage.ack(&me, &envelopes)).await {
                Ok(outcome) if outcome.foreign > 0 => {
                    refuse(ErrorCode::Forbidden, "envelopes of another device")
                }
                Ok(_) => Ok(Response::Ok),
                Err(e) => Err(internal(&e)),
            },
            Request::RequestLinkPermission => {
                let token = LinkToken::random(&mut rand::rng());
                let expires_at = unix_now() + shared.config.limits.link_permission_ttl;
                match shared
                    .timed(storage.add_link_permission(&me, &token, expires_at))
                    .await
                {
                    Ok(()) => Ok(Response::LinkPermission { token, expires_at }),
                    Err(e) => Err(internal(&e)),
                }
            }
            Request::SendProvisioning { address, sealed } => {
                let handle = lock(&shared.provisioning).get(&address).cloned();
                let Some(handle) = handle else {
                    return refuse(ErrorCode::NotFound, "no device waits at this address");
                };
                let Some(bytes) = encode(&ServerFrame::Push(Push::Provisioning { sealed })) else {
                    return refuse(ErrorCode::TooLarge, "link message");
                };
                handle.tell_frame(bytes, &shared.metrics);
                Ok(Response::Ok)
            }
            Request::RemoveDevice { device } => {
                if device == me.device {
                    return refuse(
                        ErrorCode::BadRequest,
                        "a device cannot remove itself; delete the account",
                    );
                }
                let gone = DeviceAddress::new(me.user.clone(), device);
                match shared.timed(storage.remove_device(&gone)).await {
                    Ok(true) => {}
                    Ok(false) => return refuse(ErrorCode::NotFound, "no such device"),
                    Err(e) => return Err(internal(&e)),
                }
                self.close_devices(&[gone]);
                let others = match storage.devices(&me.user).await {
                    Ok(d) => d.into_iter().map(|r| r.device).collect::<Vec<_>>(),
                    Err(e) => return Err(internal(&e)),
                };
                self.tell_devices(
                    &me.user,
                    &others,
                    &Push::DevicesChanged {
                        user: me.user.clone(),
                    },
                );
                Ok(Response::Ok)
            }
            Request::DeleteAccount => {
                let devices = match storage.devices(&me.user).await {
                    Ok(d) => d,
                    Err(e) => return Err(internal(&e)),
                };
                let blobs = match shared.timed(storage.delete_account(&me.user)).await {
                    Ok(b) => b,
                    Err(e) => return Err(internal(&e)),
                };
                for blob in &blobs {
                    let _ = shared.blobs.delete(blob).await;
                }
                let addresses: Vec<DeviceAddress> = devices
                    .iter()
                    .map(|r| DeviceAddress::new(me.user.clone(), r.device))
                    .collect();
                self.close_devices(&addresses);
                tracing::info!(user = me.user.as_str(), "account deleted");
                self.after.push(After::Close);
                Ok(Response::Ok)
            }
            Request::ReplaceIdentity {
                identity,
                signature,
            } => {
                let record = match storage.device(&me).await {
                    Ok(Some(r)) => r,
                    Ok(None) => return refuse(ErrorCode::NotFound, "no such device"),
                    Err(e) => return Err(internal(&e)),
                };
                let signed = self.server_names().iter().any(|n| {
                    verify_registration(&identity, &me.user, &record.auth_key, n, &signature)
                        .is_ok()
                });
                if !signed {
                    return refuse(ErrorCode::Unauthenticated, "bad signature");
                }
                let removed = match shared.timed(storage.replace_identity(&me, &identity)).await {
                    Ok(r) => r,
                    Err(e) => return Err(internal(&e)),
                };
                let addresses: Vec<DeviceAddress> = removed
                    .into_iter()
                    .map(|d| DeviceAddress::new(me.user.clone(), d))
                    .collect();
                self.close_devices(&addresses);
                Ok(Response::Ok)
            }
            Request::UploadBegin { kind, size } => self.upload_begin(me, kind, size).await,
            Request::UploadChunk {
                upload,
                offset,
                data,
            } => self.upload_chunk(me, upload, offset, data).await,
            Request::UploadFinish { upload } => self.upload_finish(me, upload).await,
            Request::Download { blob, offset } => {
                match shared.timed(storage.blob(&blob)).await {
                    Ok(Some(_)) => {}
                    Ok(None) => return refuse(ErrorCode::NotFound, "no such blob"),
                    Err(e) => return Err(internal(&e)),
                }
                match shared.blobs.read(&blob, offset, CHUNK_LEN).await {
                    Ok(Some((total, data))) => Ok(Response::DownloadChunk {
                        total,
                        offset,
                        data,
                    }),
                    Ok(None) => refuse(ErrorCode::NotFound, "no such blob"),
                    Err(e) => {
                        tracing::error!(error = %e, "blob read failed");
                        refuse(ErrorCode::Internal, "blob read failed")
                    }
                }
            }
            Request::RegisterPushToken { token } => {
                let token = (!token.is_empty()).then_some(token.as_str());
                match shared.timed(storage.set_push_token(&me, token)).await {
                    Ok(()) => Ok(Response::Ok),
                    Err(e) => Err(internal(&e)),
                }
            }
            Request::RegisterAccount { .. }
            | Request::RegisterLinkedDevice { .. }
            | Request::OpenProvisioning
            | Request::Authenticate { .. }
            | Request::Ping => refuse(ErrorCode::BadRequest, "not on this connection"),
            _ => refuse(ErrorCode::BadRequest, "unknown request"),
        }
    }

    async fn fetch_bundles(&mut self, user: hush::keys::UserId, wanted: Vec<DeviceId>) -> Reply {
        let shared = self.shared.clone();
        let storage = &shared.storage;
        let identity = match shared.timed(storage.identity(&user)).await {
            Ok(Some(i)) => i,
            Ok(None) => return refuse(ErrorCode::NotFound, "no such user"),
            Err(e) => return Err(internal(&e)),
        };
        let devices = match storage.devices(&user).await {
            Ok(d) => d,
            Err(e) => return Err(internal(&e)),
        };
        let mut bundles = Vec::new();
        let threshold = shared.config.limits.prekeys_low_threshold;
        for record in devices {
            let Some(certificate) = record.certificate else {
                continue;
            };
            if !wanted.is_empty() && !wanted.contains(&record.device) {
                continue;
            }
            let address = DeviceAddress::new(user.clone(), record.device);
            let taken = match shared.timed(storage.take_prekeys(&address)).await {
                Ok(Some(t)) => t,
                Ok(None) => continue,
                Err(e) => return Err(internal(&e)),
            };
            if taken.one_time.is_some() || taken.pq_one_time.is_some() {
                let counts = async {
                    let classical = storage.one_time_prekey_count(&address).await?;
                    let pq = storage.pq_one_time_prekey_count(&address).await?;
                    Ok::<_, StorageError>((classical, pq))
                };
                match counts.await {
                    // Told once, as either count crosses the threshold.
                    Ok((left, pq_left))
                        if (taken.one_time.is_some() && left + 1 == threshold)
                            || (taken.pq_one_time.is_some() && pq_left + 1 == threshold) =>
                    {
                        let push = Push::PreKeysLow {
                            remaining: left as u32,
                            pq_remaining: pq_left as u32,
                        };
                        self.tell_devices(&user, &[record.device], &push);
                    }
                    Ok(_) => {}
                    Err(e) => return Err(internal(&e)),
                }
            }
            // The PQ one-time prekey while one is left, else the PQ last resort.
            let pq_prekey = taken.pq_prekey().cloned();
            bundles.push(PreKeyBundle {
                identity,
                certificate,
                signed_prekey: taken.signed,
                last_resort_prekey: taken.last_resort,
                one_time_prekey: taken.one_time,
                pq_prekey,
            });
        }
        Ok(Response::Bundles(bundles))
    }

    async fn send_envelopes(
        &mut self,
        me: DeviceAddress,
        recipient: hush::keys::UserId,
        envelopes: Vec<(DeviceId, hush::wire::envelope::Envelope)>,
    ) -> Reply {
        let shared = self.shared.clone();
        let storage = &shared.storage;
        let devices = match shared.timed(storage.devices(&recipient)).await {
            Ok(d) if d.is_empty() => return refuse(ErrorCode::NotFound, "no such user"),
            Ok(d) => d,
            Err(e) => return Err(internal(&e)),
        };
        let expected: Vec<DeviceId> = devices
            .iter()
            .filter(|r| r.certificate.is_some())
            .map(|r| r.device)
            .filter(|d| !(recipient == me.user && *d == me.device))
            .collect();
        let given: Vec<DeviceId> = envelopes.iter().map(|(d, _)| *d).collect();
        let missing: Vec<DeviceId> = expected
            .iter()
            .copied()
            .filter(|d| !given.contains(d))
            .collect();
        let extra: Vec<DeviceId> = given
            .iter()
            .copied()
            .filter(|d| !expected.contains(d))
            .collect();
        if !missing.is_empty() || !extra.is_empty() {
            return Ok(Response::MismatchedDevices { missing, extra });
        }
        if envelopes.iter().any(|(_, e)| e.sender() != &me) {
            return refuse(ErrorCode::Forbidden, "an envelope names another sender");
        }
        let server_time = unix_now();
        if envelopes.is_empty() {
            // Nothing to store: the sender's own devices were all known.
            return Ok(Response::Sent {
                server_time,
                ids: Vec::new(),
            });
        }
        let queued: Vec<NewEnvelope> = {
            let mut rng = rand::rng();
            envelopes
                .into_iter()
                .map(|(device, envelope)| NewEnvelope {
                    recipient: DeviceAddress::new(recipient.clone(), device),
                    delivery: Delivery {
                        id: EnvelopeId::random(&mut rng),
                        sender: me.clone(),
                        server_time,
                        envelope,
                    },
                })
                .collect()
        };
        match shared.timed(storage.enqueue(&queued)).await {
            Ok(()) => {}
            // A device was removed between the check and the commit.
            Err(StorageError::NoSuchDevice) => {
                return refuse(ErrorCode::Conflict, "the device list changed; send again");
            }
            Err(e) => return Err(internal(&e)),
        }
        shared
            .metrics
            .messages_relayed
            .fetch_add(queued.len() as u64, Ordering::Relaxed);
        let ids = queued
            .iter()
            .map(|q| (q.recipient.device, q.delivery.id))
            .collect();
        let mut offline = Vec::new();
        {
            let map = lock(&shared.devices);
            for q in queued {
                match map.get(&q.recipient) {
                    Some(handle) => handle.tell_mail(q.delivery, &shared.metrics),
                    None => offline.push(q.recipient),
                }
            }
        }
        if let Some(hook) = &shared.push {
            for device in offline {
                if let Ok(Some(token)) = storage.push_token(&device).await {
                    shared
                        .metrics
                        .push_hook_calls
                        .fetch_add(1, Ordering::Relaxed);
                    hook.notify(&device, &token);
                }
            }
        }
        Ok(Response::Sent { server_time, ids })
    }

    async fn upload_begin(
        &mut self,
        me: DeviceAddress,
        kind: hush::wire::protocol::BlobKind,
        size: u64,
    ) -> Reply {
        let shared = self.shared.clone();
        if size > kind.max_ciphertext_len() {
            shared.metrics.reject(Rejection::Upload);
            return refuse(ErrorCode::TooLarge, "over the cap of its kind");
        }
        let l = &shared.config.limits;
        let stored = match shared.timed(shared.storage.blob_bytes(&me.user)).await {
            Ok(bytes) => bytes,
            Err(e) => return Err(internal(&e)),
        };
        let upload = UploadId::random(&mut rand::rng());
        {
            let mut uploads = lock(&shared.uploads);
            let mine = uploads.per_user.get(&me.user).copied().unwrap_or(0);
            if mine >= l.uploads_per_user || uploads.by_id.len() >= l.uploads_global {
                shared.metrics.reject(Rejection::Upload);
                return refuse(ErrorCode::LimitReached, "too many uploads in progress");
            }
            // In progress: counted by declared size, under the lock, so that
            // concurrent uploads of one user cannot pass the quota together.
            let in_progress: u64 = uploads
                .by_id
                .values()
                .filter(|u| u.owner.user == me.user)
                .map(|u| u.size)
                .sum();
            if stored.saturating_add(in_progress).saturating_add(size) > l.blob_bytes_per_user {
                shared.metrics.reject(Rejection::Upload);
                return refuse(
                    ErrorCode::LimitReached,
                    "the account's attachment storage is full",
                );
            }
            *uploads.per_user.entry(me.user.clone()).or_insert(0) += 1;
            uploads.by_id.insert(
                upload,
                Upload {
                    owner: me,
                    connection: self.id,
                    size,
                    written: 0,
                    last_active: std::time::Instant::now(),
                },
            );
        }
        if let Err(e) = shared.blobs.begin(&upload).await {
            lock(&shared.uploads).remove(&upload);
            tracing::error!(error = %e, "cannot start an upload");
            return refuse(ErrorCode::Internal, "cannot start the upload");
        }
        Ok(Response::UploadStarted { upload })
    }

    /// Checks that `upload` is the caller's and returns (size, written).
    fn own_upload(
        &self,
        me: &DeviceAddress,
        upload: &UploadId,
    ) -> Result<(u64, u64), ProtocolError> {
        let uploads = lock(&self.shared.uploads);
        match uploads.by_id.get(upload) {
            None => Err(ProtocolError::new(ErrorCode::NotFound, "no such upload")),
            Some(u) if &u.owner != me => Err(ProtocolError::new(
                ErrorCode::Forbidden,
                "the upload of another device",
            )),
            Some(u) => Ok((u.size, u.written)),
        }
    }

    async fn upload_chunk(
        &mut self,
        me: DeviceAddress,
        upload: UploadId,
        offset: u64,
        data: Vec<u8>,
    ) -> Reply {
        let (size, written) = self.own_upload(&me, &upload)?;
        if offset != written || written + data.len() as u64 > size {
            return refuse(
                ErrorCode::BadRequest,
                "chunk out of order or past the declared size",
            );
        }
        if let Err(e) = self.shared.blobs.append(&upload, &data).await {
            tracing::error!(error = %e, "upload write failed");
            return refuse(ErrorCode::Internal, "upload write failed");
        }
        if let Some(u) = lock(&self.shared.uploads).by_id.get_mut(&upload) {
            u.written += data.len() as u64;
            u.last_active = std::time::Instant::now();
        }
        Ok(Response::Ok)
    }

    async fn upload_finish(&mut self, me: DeviceAddress, upload: UploadId) -> Reply {
        let (size, written) = self.own_upload(&me, &upload)?;
        if written != size {
            return refuse(ErrorCode::BadRequest, "the upload is shorter than declared");
        }
        let result = self.commit_upload(me, upload, size).await;
        // Counted as in progress (for the user's quota) until its index row
        // is in, or the upload failed.
        lock(&self.shared.uploads).remove(&upload);
        result
    }

    async fn commit_upload(&mut self, me: DeviceAddress, upload: UploadId, size: u64) -> Reply {
        let shared = self.shared.clone();
        let blob = BlobId::random(&mut rand::rng());
        if let Err(e) = shared.blobs.commit(&upload, &blob).await {
            tracing::error!(error = %e, "upload commit failed");
            let _ = shared.blobs.abort(&upload).await;
            return refuse(ErrorCode::Internal, "upload commit failed");
        }
        let record = BlobRecord {
            blob,
            owner: me,
            size,
            created_at: unix_now(),
        };
        if let Err(e) = shared.timed(shared.storage.add_blob(&record)).await {
            let _ = shared.blobs.delete(&blob).await;
            return Err(internal(&e));
        }
        Ok(Response::Uploaded { blob })
    }
}
