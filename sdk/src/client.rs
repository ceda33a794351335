//! The sans-IO client of the reference server protocol.
//!
//! [`Client`] owns a [`SessionManager`] and speaks the protocol of
//! [`crate::wire::protocol`] without doing any I/O: the host connects a TLS
//! socket to the server and then, in a loop,
//!
//! 1. after (re)connecting, calls [`Client::handle_connected`];
//! 2. feeds every byte it reads to [`Client::handle_input`];
//! 3. writes out everything [`Client::poll_transmit`] returns;
//! 4. handles every [`ClientEvent`] from [`Client::poll_event`];
//! 5. sleeps until [`Client::poll_timeout`] at most, then calls
//!    [`Client::handle_timeout`].
//!
//! The client logs in when the server's challenge arrives, publishes its
//! certificate and prekeys, replenishes one-time prekeys when the server says
//! they run low, fans each message out to every device of the recipient and a
//! copy to the sender's own other devices, corrects its device list when the
//! server reports missing or extra devices (and retries once), and hands
//! received messages to the app as events. A received message is acknowledged
//! to the server only after the app called [`Client::confirm`]: until then it
//! stays in the store's inbox and in the server's queue, so a crash between
//! the event and the confirmation delivers the same plaintext again.

use std::collections::{BTreeMap, VecDeque};

use thiserror::Error;
use zeroize::Zeroizing;

use crate::attachment::{
    AttachmentError, AttachmentKind, AttachmentPointer, Decryptor, Encryptor, PendingPointer,
};
use crate::keys::{DeviceAddress, DeviceId, UserId};
use crate::manager::{Error, Event, IdentityChange, OutboxRecord, Received, SessionManager};
use crate::store::Store;
use crate::wire::content::{Body, Content, ContentError, MessageId};
use crate::wire::envelope::{Envelope, EnvelopeError};
use crate::wire::frame::{FrameDecoder, FrameError, encode_frame};
use crate::wire::protocol::{
    BlobId, CHUNK_LEN, ClientFrame, Delivery, EnvelopeId, ErrorCode, InvalidServerName,
    MAX_FRAME_LEN, MAX_PQ_ONE_TIME_PREKEYS_PER_REQUEST, ProtocolDecodeError, ProtocolError, Push,
    Request, Response, ServerFrame, UploadId, canonical_server_name, sign_auth,
};

/// Settings of a [`Client`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientConfig {
    /// One-time prekeys published when the server says they run low; PQ
    /// one-time prekeys are published in batches of the same size, at most
    /// [`MAX_PQ_ONE_TIME_PREKEYS_PER_REQUEST`].
    pub one_time_prekey_batch: usize,
    /// Seconds between keep-alive pings.
    pub ping_interval: u64,
    /// How long processed envelope ids are remembered: the server's queue
    /// lifetime (no older envelope can be delivered again).
    pub processed_retention: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            one_time_prekey_batch: 50,
            ping_interval: 30,
            processed_retention: 30 * 24 * 3600,
        }
    }
}

/// Errors that stop the client from handling input.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The byte stream is broken; reconnect.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The server sent a frame this client cannot read; reconnect.
    #[error(transparent)]
    Decode(#[from] ProtocolDecodeError),
    /// The SDK core failed (usually the store).
    #[error(transparent)]
    Sdk(#[from] Error),
    /// The message cannot be encoded.
    #[error(transparent)]
    Content(#[from] ContentError),
    /// An envelope cannot be built.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The server name is not a DNS name or IP literal.
    #[error(transparent)]
    ServerName(#[from] InvalidServerName),
    /// An attachment cannot be encrypted.
    #[error(transparent)]
    Attachment(#[from] AttachmentError),
    /// No such transfer, or it is not ready for this call (wait for
    /// [`ClientEvent::UploadReady`]).
    #[error("transfer not ready")]
    TransferNotReady,
    /// A link code was refused.
    #[error(transparent)]
    Link(#[from] crate::link::LinkError),
    /// A push token longer than the protocol allows.
    #[error("the push token is too long")]
    PushToken,
}

/// Names an attachment upload or download of this client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TransferId(pub u64);

/// Decrypted attachment bytes; `Debug` shows the length only.
#[derive(Clone, PartialEq, Eq)]
pub struct Plaintext(pub Zeroizing<Vec<u8>>);

impl std::fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plaintext(<{} bytes>)", self.0.len())
    }
}

/// What the app learns from the client.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientEvent {
    /// Logged in; queued messages follow, then [`ClientEvent::QueueEmpty`].
    Authenticated,
    /// Every queued message was delivered, and this device's prekeys and
    /// certificate are published: from now on other devices can reach it.
    /// (The server reports its queue drained; the client holds that back
    /// until the server has answered the publications it makes at login.)
    QueueEmpty,
    /// A message. Call [`Client::confirm`] once the app has kept it.
    Message {
        /// The server's id (what [`Client::confirm`] takes).
        envelope_id: EnvelopeId,
        /// The sending device.
        sender: DeviceAddress,
        /// When the server accepted it.
        server_time: u64,
        /// The message.
        content: Content,
    },
    /// The server stored the message for every device of the recipient.
    Sent {
        /// The message.
        message: MessageId,
        /// Who it went to.
        recipient: UserId,
    },
    /// The message could not be sent.
    DeliveryFailed {
        /// The message.
        message: MessageId,
        /// Who it was for.
        recipient: UserId,
        /// Why.
        reason: String,
    },
    /// An identity was trusted, or a device added, changed or removed.
    Trust(Event),
    /// A peer presented another account identity; nothing from or to it is
    /// accepted until the app calls
    /// [`SessionManager::accept_identity_change`].
    IdentityChanged(Box<IdentityChange>),
    /// A device whose certificate does not verify under its user's trusted
    /// identity was refused (a server cannot add a ghost device).
    DeviceRefused(DeviceAddress),
    /// A delivered envelope could not be decrypted and was dropped.
    Undecryptable {
        /// The server's id.
        envelope_id: EnvelopeId,
        /// The claimed sender.
        sender: DeviceAddress,
        /// Why.
        reason: String,
    },
    /// New one-time prekeys were published.
    PreKeysReplenished {
        /// How many one-time prekeys.
        count: usize,
        /// How many PQ one-time prekeys.
        pq_count: usize,
    },
    /// The server refused a request.
    ServerError(ProtocolError),
    /// The server accepted the upload: feed it with [`Client::upload`].
    UploadReady(TransferId),
    /// The upload is stored; send the pointer in a [`Body::Attachment`].
    Uploaded {
        /// The transfer.
        transfer: TransferId,
        /// Where and how to fetch and check the attachment.
        pointer: AttachmentPointer,
    },
    /// Authenticated attachment bytes, in order.
    AttachmentData {
        /// The transfer.
        transfer: TransferId,
        /// The bytes.
        data: Plaintext,
    },
    /// The whole attachment arrived and checked out.
    Downloaded(TransferId),
    /// A permission to link a new device; pass it to [`Client::send_link`].
    LinkPermission(crate::wire::protocol::LinkToken),
    /// The transfer failed; for a download, the bytes given so far must be
    /// discarded.
    TransferFailed {
        /// The transfer.
        transfer: TransferId,
        /// Why.
        reason: String,
    },
}

enum Transfer {
    Upload {
        encryptor: Option<Encryptor>,
        upload: Option<UploadId>,
        sent: u64,
        pointer: Option<PendingPointer>,
    },
    Download {
        decryptor: Option<Decryptor>,
        blob: BlobId,
        expected: u64,
    },
}

enum Pending {
    Authenticate,
    LinkPermission,
    UploadBegin {
        transfer: u64,
    },
    UploadChunk {
        transfer: u64,
    },
    UploadFinish {
        transfer: u64,
    },
    Download {
        transfer: u64,
    },
    PublishPreKeys {
        one_time: usize,
        pq_one_time: usize,
    },
    /// One of the publications made at login.
    LoginPublish,
    ListOwnDevices,
    RemoveDevice {
        device: DeviceId,
    },
    FetchBundles {
        job: u64,
    },
    Send {
        job: u64,
    },
    Quiet,
}

struct SendJob {
    recipient: UserId,
    message: MessageId,
    padded: Zeroizing<Vec<u8>>,
    retried: bool,
}

/// The sans-IO client; see the module documentation for the host's loop.
pub struct Client<S: Store> {
    manager: SessionManager<S>,
    server_name: String,
    config: ClientConfig,
    decoder: FrameDecoder,
    authenticated: bool,
    next_request: u32,
    pending: BTreeMap<u32, Pending>,
    jobs: BTreeMap<u64, SendJob>,
    next_job: u64,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<ClientEvent>,
    next_ping: Option<u64>,
    transfers: BTreeMap<u64, Transfer>,
    next_transfer: u64,
    /// The server reported its queue drained while a publication made at
    /// login was not answered yet.
    queue_empty_held: bool,
}

impl<S: Store> std::fmt::Debug for Client<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("device", self.manager.address())
            .field("server", &self.server_name)
            .field("authenticated", &self.authenticated)
            .finish_non_exhaustive()
    }
}

impl<S: Store> Client<S> {
    /// A client for the device in `manager`, talking to `server_name` (the
    /// name the host dials, without a port). Messages left in the store's
    /// outbox by an earlier client are sent again after login.
    ///
    /// # Errors
    /// [`ClientError::ServerName`] for a name that is not a DNS name or IP
    /// literal; [`ClientError::Sdk`] when the outbox cannot be read.
    pub fn new(
        manager: SessionManager<S>,
        server_name: &str,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        let server_name = canonical_server_name(server_name)?;
        let mut jobs = BTreeMap::new();
        for mut record in manager.outbox()? {
            jobs.insert(
                record.order,
                SendJob {
                    recipient: record.recipient.clone(),
                    message: MessageId(record.message),
                    padded: Zeroizing::new(std::mem::take(&mut record.padded)),
                    retried: false,
                },
            );
        }
        let next_job = jobs.keys().next_back().map_or(1, |last| last + 1);
        Ok(Self {
            manager,
            server_name,
            config,
            decoder: FrameDecoder::new(MAX_FRAME_LEN),
            authenticated: false,
            next_request: 1,
            pending: BTreeMap::new(),
            jobs,
            next_job,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            next_ping: None,
            transfers: BTreeMap::new(),
            next_transfer: 1,
            queue_empty_held: false,
        })
    }

    /// The device's state.
    pub fn manager(&self) -> &SessionManager<S> {
        &self.manager
    }

    /// The device's state, to accept an identity change or manage prekeys.
    pub fn manager_mut(&mut self) -> &mut SessionManager<S> {
        &mut self.manager
    }

    /// Gives the device's state back.
    pub fn into_manager(self) -> SessionManager<S> {
        self.manager
    }

    /// Whether the connection is logged in.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// A new connection is up: forget the old one's state. Messages not yet
    /// sent are sent again after login.
    pub fn handle_connected(&mut self, _now: u64) {
        self.decoder = FrameDecoder::new(MAX_FRAME_LEN);
        self.authenticated = false;
        self.pending.clear();
        self.transmit.clear();
        self.next_ping = None;
        self.queue_empty_held = false;
        // Transfers do not survive a connection: report them failed.
        let transfers: Vec<u64> = self.transfers.keys().copied().collect();
        for t in transfers {
            self.fail_transfer(t, "the connection closed");
        }
        for job in self.jobs.values_mut() {
            job.retried = false;
        }
    }

    /// Bytes read from the connection.
    ///
    /// # Errors
    /// [`ClientError::Frame`] or [`ClientError::Decode`] when the stream is
    /// broken (reconnect); [`ClientError::Sdk`] when the store fails.
    pub fn handle_input<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        bytes: &[u8],
        now: u64,
    ) -> Result<(), ClientError> {
        self.decoder.push(bytes)?;
        while let Some(payload) = self.decoder.next_frame()? {
            match ServerFrame::from_payload(&payload)? {
                ServerFrame::Push(push) => self.handle_push(rng, push, now)?,
                ServerFrame::Response { id, result } => {
                    if let Some(pending) = self.pending.remove(&id) {
                        self.handle_response(rng, pending, result, now)?;
                    }
                }
                #[allow(unreachable_patterns, reason = "ServerFrame is non_exhaustive")]
                _ => {}
            }
        }
        Ok(())
    }

    /// The time given by [`Self::poll_timeout`] has come.
    ///
    /// # Errors
    /// [`ClientError::Sdk`] when the store fails.
    pub fn handle_timeout<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        now: u64,
    ) -> Result<(), ClientError> {
        if !self.authenticated || self.next_ping.is_some_and(|t| now < t) {
            return Ok(());
        }
        self.next_ping = Some(now.saturating_add(self.config.ping_interval));
        self.request(Request::Ping, Pending::Quiet);
        if self.manager.rotate_prekeys(rng, now)? {
            self.publish_signed_prekeys(Pending::Quiet)?;
        }
        self.manager
            .purge_processed(now, self.config.processed_retention)?;
        Ok(())
    }

    /// The next bytes to write to the connection.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// The next event for the app.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] wants to be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        self.next_ping
    }

    /// Sends a text message to every device of `recipient`.
    ///
    /// # Errors
    /// As [`Self::send`].
    pub fn send_text<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        recipient: &UserId,
        text: &str,
        now: u64,
    ) -> Result<MessageId, ClientError> {
        self.send(rng, recipient, Body::Text(text.to_owned()), now)
    }

    /// Sends a message to every device of `recipient`, and a copy to this
    /// user's other devices. The outcome comes as [`ClientEvent::Sent`] or
    /// [`ClientEvent::DeliveryFailed`].
    ///
    /// The message (and the copy) is kept in the store's outbox until the
    /// server accepts it or it fails, so that one not yet accepted is sent
    /// again by the next [`Client`] made on the store after a crash or
    /// restart. Sending is at least once: if the process dies after the
    /// server accepted a message but before its answer arrived, the message
    /// goes again, with the same [`MessageId`] (a receiving app can drop the
    /// duplicate by it).
    ///
    /// # Errors
    /// [`ClientError::Content`] if the message is too large; store errors
    /// (then nothing was queued).
    pub fn send<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        recipient: &UserId,
        body: Body,
        now: u64,
    ) -> Result<MessageId, ClientError> {
        let id = MessageId::random(rng);
        let content = Content {
            id,
            sent_at: now,
            body,
        };
        let mut jobs = vec![(recipient.clone(), content.to_padded()?)];
        let own = self.manager.address().user.clone();
        if recipient != &own {
            let sync = Content {
                id,
                sent_at: now,
                body: Body::SentSync {
                    recipient: recipient.clone(),
                    content: Box::new(content),
                },
            };
            jobs.push((own, sync.to_padded()?));
        }
        let first = self.next_job;
        let records: Vec<OutboxRecord> = jobs
            .iter()
            .zip(first..)
            .map(|((recipient, padded), order)| OutboxRecord {
                order,
                recipient: recipient.clone(),
                message: id.0,
                padded: padded.to_vec(),
            })
            .collect();
        self.manager.outbox_add(rng, &records)?;
        for (recipient, padded) in jobs {
            self.add_job(rng, recipient, id, padded, now)?;
        }
        Ok(id)
    }

    /// Whether messages given to [`Self::send`] are still on their way,
    /// including the copies for this user's other devices (which report no
    /// [`ClientEvent::Sent`]). They are kept in the store's outbox, so an app
    /// may exit with sends pending: the next client on the store sends them.
    #[must_use]
    pub fn has_pending_sends(&self) -> bool {
        !self.jobs.is_empty()
    }

    /// The app has kept the message: drop it from the inbox and acknowledge
    /// it to the server.
    ///
    /// # Errors
    /// A store error.
    pub fn confirm(&mut self, envelope_id: &EnvelopeId) -> Result<(), ClientError> {
        self.manager.confirm(&envelope_id.0)?;
        self.request(
            Request::Ack {
                envelopes: vec![*envelope_id],
            },
            Pending::Quiet,
        );
        Ok(())
    }

    /// Starts uploading an attachment of `plaintext_len` bytes. When
    /// [`ClientEvent::UploadReady`] arrives, feed the plaintext with
    /// [`Self::upload`] (in pieces of any size, draining
    /// [`Self::poll_transmit`] in between to keep memory flat), then call
    /// [`Self::finish_upload`].
    ///
    /// # Errors
    /// [`ClientError::Attachment`] for a size over the kind's cap or an
    /// invalid media type.
    pub fn begin_upload<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        kind: AttachmentKind,
        media_type: &str,
        plaintext_len: u64,
    ) -> Result<TransferId, ClientError> {
        let encryptor = Encryptor::new(rng, kind, media_type, plaintext_len)?;
        let size =
            crate::attachment::ciphertext_len(plaintext_len).ok_or(AttachmentError::TooLarge {
                len: plaintext_len,
                max: kind.max_plaintext_len(),
            })?;
        let id = self.next_transfer;
        self.next_transfer += 1;
        self.transfers.insert(
            id,
            Transfer::Upload {
                encryptor: Some(encryptor),
                upload: None,
                sent: 0,
                pointer: None,
            },
        );
        self.request(
            Request::UploadBegin { kind, size },
            Pending::UploadBegin { transfer: id },
        );
        Ok(TransferId(id))
    }

    /// Encrypts and sends the next piece of an upload's plaintext.
    ///
    /// # Errors
    /// [`ClientError::TransferNotReady`] before [`ClientEvent::UploadReady`];
    /// [`ClientError::Attachment`] past the declared size.
    pub fn upload(&mut self, transfer: TransferId, plaintext: &[u8]) -> Result<(), ClientError> {
        let mut blob = Vec::with_capacity(plaintext.len() + 64);
        let Some(Transfer::Upload {
            encryptor: Some(encryptor),
            upload: Some(_),
            ..
        }) = self.transfers.get_mut(&transfer.0)
        else {
            return Err(ClientError::TransferNotReady);
        };
        encryptor.update(plaintext, &mut blob)?;
        self.send_blob(transfer.0, &blob);
        Ok(())
    }

    /// Ends an upload; [`ClientEvent::Uploaded`] follows.
    ///
    /// # Errors
    /// [`ClientError::TransferNotReady`], or [`ClientError::Attachment`] if
    /// less plaintext than declared was given.
    pub fn finish_upload(&mut self, transfer: TransferId) -> Result<(), ClientError> {
        let mut blob = Vec::new();
        let Some(Transfer::Upload {
            encryptor,
            upload: Some(upload),
            pointer,
            ..
        }) = self.transfers.get_mut(&transfer.0)
        else {
            return Err(ClientError::TransferNotReady);
        };
        let upload = *upload;
        let encryptor = encryptor.take().ok_or(ClientError::TransferNotReady)?;
        *pointer = Some(encryptor.finish(&mut blob)?);
        self.send_blob(transfer.0, &blob);
        self.request(
            Request::UploadFinish { upload },
            Pending::UploadFinish {
                transfer: transfer.0,
            },
        );
        Ok(())
    }

    fn send_blob(&mut self, transfer: u64, blob: &[u8]) {
        let Some(Transfer::Upload {
            upload: Some(upload),
            sent,
            ..
        }) = self.transfers.get_mut(&transfer)
        else {
            return;
        };
        let upload = *upload;
        let mut frames = Vec::new();
        for piece in blob.chunks(CHUNK_LEN) {
            frames.push((*sent, piece.to_vec()));
            *sent += piece.len() as u64;
        }
        for (offset, data) in frames {
            self.request(
                Request::UploadChunk {
                    upload,
                    offset,
                    data,
                },
                Pending::UploadChunk { transfer },
            );
        }
    }

    /// Starts downloading and decrypting the attachment `pointer` refers to:
    /// [`ClientEvent::AttachmentData`] events follow, then
    /// [`ClientEvent::Downloaded`] or [`ClientEvent::TransferFailed`].
    ///
    /// # Errors
    /// [`ClientError::Attachment`] for a pointer whose key does not match its
    /// commitment or whose blob id is not one of this server's.
    pub fn begin_download(
        &mut self,
        pointer: &AttachmentPointer,
    ) -> Result<TransferId, ClientError> {
        let decryptor = Decryptor::new(pointer)?;
        let blob = BlobId(
            pointer
                .blob_id()
                .try_into()
                .map_err(|_| AttachmentError::InvalidBlobId)?,
        );
        let id = self.next_transfer;
        self.next_transfer += 1;
        self.transfers.insert(
            id,
            Transfer::Download {
                decryptor: Some(decryptor),
                blob,
                expected: pointer.ciphertext_len(),
            },
        );
        self.request(
            Request::Download { blob, offset: 0 },
            Pending::Download { transfer: id },
        );
        Ok(TransferId(id))
    }

    fn fail_transfer(&mut self, transfer: u64, reason: impl Into<String>) {
        if self.transfers.remove(&transfer).is_some() {
            self.events.push_back(ClientEvent::TransferFailed {
                transfer: TransferId(transfer),
                reason: reason.into(),
            });
        }
    }

    fn handle_transfer(&mut self, pending: &Pending, result: Result<Response, ProtocolError>) {
        match (pending, result) {
            (Pending::UploadBegin { transfer }, Ok(Response::UploadStarted { upload })) => {
                if let Some(Transfer::Upload { upload: slot, .. }) =
                    self.transfers.get_mut(transfer)
                {
                    *slot = Some(upload);
                    self.events
                        .push_back(ClientEvent::UploadReady(TransferId(*transfer)));
                }
            }
            (Pending::UploadChunk { .. }, Ok(_)) => {}
            (Pending::UploadFinish { transfer }, Ok(Response::Uploaded { blob })) => {
                if let Some(Transfer::Upload {
                    pointer: Some(pending),
                    ..
                }) = self.transfers.remove(transfer)
                {
                    match pending.into_pointer(blob.0.to_vec()) {
                        Ok(pointer) => self.events.push_back(ClientEvent::Uploaded {
                            transfer: TransferId(*transfer),
                            pointer,
                        }),
                        Err(e) => self.fail_transfer(*transfer, e.to_string()),
                    }
                }
            }
            (
                Pending::Download { transfer },
                Ok(Response::DownloadChunk {
                    total,
                    offset,
                    data,
                }),
            ) => {
                self.handle_download_chunk(*transfer, total, offset, &data);
            }
            (
                Pending::UploadBegin { transfer }
                | Pending::UploadChunk { transfer }
                | Pending::UploadFinish { transfer }
                | Pending::Download { transfer },
                result,
            ) => {
                let reason = match result {
                    Err(e) => e.to_string(),
                    Ok(r) => format!("unexpected answer {r:?}"),
                };
                self.fail_transfer(*transfer, reason);
            }
            _ => {}
        }
    }

    fn handle_download_chunk(&mut self, transfer: u64, total: u64, offset: u64, data: &[u8]) {
        let Some(Transfer::Download {
            decryptor,
            blob,
            expected,
        }) = self.transfers.get_mut(&transfer)
        else {
            return;
        };
        let (blob, expected) = (*blob, *expected);
        let Some(d) = decryptor.as_mut() else { return };
        if total != expected || data.is_empty() && offset < total {
            self.fail_transfer(transfer, "the blob has another size than the pointer says");
            return;
        }
        let mut out = Zeroizing::new(Vec::with_capacity(data.len()));
        if let Err(e) = d.update(data, &mut out) {
            self.fail_transfer(transfer, e.to_string());
            return;
        }
        if !out.is_empty() {
            self.events.push_back(ClientEvent::AttachmentData {
                transfer: TransferId(transfer),
                data: Plaintext(out),
            });
        }
        let next = offset + data.len() as u64;
        if next < total {
            self.request(
                Request::Download { blob, offset: next },
                Pending::Download { transfer },
            );
            return;
        }
        let finished = decryptor.take().map(Decryptor::finish);
        self.transfers.remove(&transfer);
        match finished {
            Some(Ok(())) => self
                .events
                .push_back(ClientEvent::Downloaded(TransferId(transfer))),
            Some(Err(e)) => self.events.push_back(ClientEvent::TransferFailed {
                transfer: TransferId(transfer),
                reason: e.to_string(),
            }),
            None => {}
        }
    }

    fn add_job<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        recipient: UserId,
        message: MessageId,
        padded: Zeroizing<Vec<u8>>,
        now: u64,
    ) -> Result<(), ClientError> {
        let job = self.next_job;
        self.next_job += 1;
        self.jobs.insert(
            job,
            SendJob {
                recipient,
                message,
                padded,
                retried: false,
            },
        );
        if self.authenticated {
            self.start_job(rng, job, now)?;
        }
        Ok(())
    }

    fn request(&mut self, request: Request, pending: Pending) {
        let id = self.next_request;
        self.next_request = self.next_request.wrapping_add(1).max(1);
        match encode_frame(&ClientFrame { id, request }.to_payload(), MAX_FRAME_LEN) {
            Ok(frame) => {
                self.transmit.push_back(frame);
                self.pending.insert(id, pending);
            }
            Err(e) => self
                .events
                .push_back(ClientEvent::ServerError(ProtocolError::new(
                    ErrorCode::TooLarge,
                    e.to_string(),
                ))),
        }
    }

    fn own_other_devices(&self) -> Result<Vec<DeviceAddress>, ClientError> {
        let own = self.manager.address().clone();
        Ok(self
            .manager
            .known_devices(&own.user)?
            .into_iter()
            .map(|c| c.address().clone())
            .filter(|a| a != &own)
            .collect())
    }

    /// Sends the job to every known device that has a session, or first
    /// fetches bundles for devices without one.
    fn start_job<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        job_id: u64,
        now: u64,
    ) -> Result<(), ClientError> {
        let Some(job) = self.jobs.get(&job_id) else {
            return Ok(());
        };
        let recipient = job.recipient.clone();
        let own = self.manager.address().clone();
        let devices: Vec<DeviceAddress> = if recipient == own.user {
            self.own_other_devices()?
        } else {
            self.manager
                .known_devices(&recipient)?
                .into_iter()
                .map(|c| c.address().clone())
                .collect()
        };
        if devices.is_empty() && recipient == own.user {
            // No other device of ours that we know of: the server, which
            // knows the account's devices, answers an empty send with the
            // devices it misses (one linked a moment ago), or accepts it.
            return self.send_prepared(rng, job_id, now);
        }
        let mut without_session = Vec::new();
        for d in &devices {
            if !self.manager.has_session(d)? {
                without_session.push(d.device);
            }
        }
        if devices.is_empty() || !without_session.is_empty() {
            self.request(
                Request::FetchBundles {
                    user: recipient,
                    devices: without_session,
                },
                Pending::FetchBundles { job: job_id },
            );
            return Ok(());
        }
        self.send_prepared(rng, job_id, now)
    }

    /// Reports the job failed and forgets it (the app decides whether to
    /// send again).
    fn fail_job(&mut self, job_id: u64, reason: impl Into<String>) -> Result<(), ClientError> {
        if let Some(job) = self.jobs.remove(&job_id) {
            self.manager.outbox_remove(job_id)?;
            self.events.push_back(ClientEvent::DeliveryFailed {
                message: job.message,
                recipient: job.recipient,
                reason: reason.into(),
            });
        }
        Ok(())
    }

    fn trust_events(&mut self, events: Vec<Event>) {
        self.events
            .extend(events.into_iter().map(ClientEvent::Trust));
    }

    /// Whether a publication made at login awaits its answer (the answer's
    /// own entry is gone by the time it is handled).
    fn login_publishing(&self) -> bool {
        self.pending
            .values()
            .any(|p| matches!(p, Pending::LoginPublish))
    }

    fn publish_signed_prekeys(&mut self, pending: Pending) -> Result<(), ClientError> {
        let bundle = self.manager.bundle()?;
        self.request(
            Request::PublishPreKeys {
                signed: Some(bundle.signed_prekey),
                last_resort: Some(bundle.last_resort_prekey),
                one_time: Vec::new(),
                // The manager's bundle carries its current PQ last-resort prekey.
                pq_last_resort: bundle.pq_prekey,
                pq_one_time: Vec::new(),
            },
            pending,
        );
        Ok(())
    }

    fn handle_push<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        push: Push,
        now: u64,
    ) -> Result<(), ClientError> {
        match push {
            Push::Challenge { nonce } => {
                let signature =
                    sign_auth(self.manager.device_auth_key(), &nonce, &self.server_name);
                let device = self.manager.address().clone();
                self.request(
                    Request::Authenticate { device, signature },
                    Pending::Authenticate,
                );
            }
            Push::Deliver(delivery) => self.handle_delivery(rng, delivery, now)?,
            Push::QueueEmpty if self.login_publishing() => self.queue_empty_held = true,
            Push::QueueEmpty => self.events.push_back(ClientEvent::QueueEmpty),
            Push::PreKeysLow {
                remaining,
                pq_remaining,
            } => {
                // The kind with fewer keys left is the one the server found
                // low; a kind with less than one batch left is topped up too.
                let batch = self.config.one_time_prekey_batch;
                let pq_batch = batch.min(MAX_PQ_ONE_TIME_PREKEYS_PER_REQUEST);
                let lowest = remaining.min(pq_remaining);
                let below = |left: u32, batch: usize| left == lowest || (left as usize) < batch;
                let one_time = if below(remaining, batch) {
                    self.manager.generate_one_time_prekeys(rng, batch)?
                } else {
                    Vec::new()
                };
                let pq_one_time = if below(pq_remaining, pq_batch) {
                    self.manager
                        .generate_pq_one_time_prekeys(rng, pq_batch, now)?
                } else {
                    Vec::new()
                };
                let pending = Pending::PublishPreKeys {
                    one_time: one_time.len(),
                    pq_one_time: pq_one_time.len(),
                };
                self.request(
                    Request::PublishPreKeys {
                        signed: None,
                        last_resort: None,
                        one_time,
                        pq_last_resort: None,
                        pq_one_time,
                    },
                    pending,
                );
            }
            Push::DevicesChanged { user } if user == self.manager.address().user => {
                self.request(Request::ListDevices { user }, Pending::ListOwnDevices);
            }
            // Linking is handled by the provisioning flow, not by a logged-in client.
            Push::Provisioning { .. } => {}
            #[allow(unreachable_patterns, reason = "Push is non_exhaustive")]
            _ => {}
        }
        Ok(())
    }

    fn handle_delivery<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        delivery: Delivery,
        now: u64,
    ) -> Result<(), ClientError> {
        let Delivery {
            id,
            sender,
            server_time,
            envelope,
        } = delivery;
        let undecryptable = |this: &mut Self, reason: String| {
            this.events.push_back(ClientEvent::Undecryptable {
                envelope_id: id,
                sender: sender.clone(),
                reason,
            });
            this.request(
                Request::Ack {
                    envelopes: vec![id],
                },
                Pending::Quiet,
            );
        };
        if envelope.sender() != &sender {
            undecryptable(
                self,
                "the envelope names another sender than the server".into(),
            );
            return Ok(());
        }
        let message = match self
            .manager
            .receive(rng, &sender, &id.0, envelope.message(), now)
        {
            Ok(Received::New { message, events }) => {
                self.trust_events(events);
                message
            }
            Ok(Received::Unconfirmed(message)) => message,
            Ok(Received::AlreadyConfirmed) => {
                self.request(
                    Request::Ack {
                        envelopes: vec![id],
                    },
                    Pending::Quiet,
                );
                return Ok(());
            }
            // Kept in the server's queue: it decrypts once the user accepts the change.
            Err(Error::IdentityChanged(change)) => {
                self.events.push_back(ClientEvent::IdentityChanged(change));
                return Ok(());
            }
            Err(Error::Store(e)) => return Err(Error::Store(e).into()),
            Err(e) => {
                undecryptable(self, e.to_string());
                return Ok(());
            }
        };
        match Content::from_padded(&message.plaintext) {
            Ok(content) => self.events.push_back(ClientEvent::Message {
                envelope_id: id,
                sender,
                server_time,
                content,
            }),
            Err(e) => {
                self.manager.confirm(&id.0)?;
                undecryptable(self, format!("malformed content: {e}"));
            }
        }
        Ok(())
    }

    fn handle_response<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        pending: Pending,
        result: Result<Response, ProtocolError>,
        now: u64,
    ) -> Result<(), ClientError> {
        if matches!(
            pending,
            Pending::UploadBegin { .. }
                | Pending::UploadChunk { .. }
                | Pending::UploadFinish { .. }
                | Pending::Download { .. }
        ) {
            self.handle_transfer(&pending, result);
            return Ok(());
        }
        match (pending, result) {
            (Pending::Authenticate, Ok(Response::Authenticated { .. })) => {
                self.authenticated = true;
                self.next_ping = Some(now.saturating_add(self.config.ping_interval));
                self.events.push_back(ClientEvent::Authenticated);
                // Prekeys before the certificate: the server lists a device
                // to senders once its certificate is in, and the requests of
                // one connection are handled in order, so a listed device
                // always has a bundle to fetch.
                self.publish_signed_prekeys(Pending::LoginPublish)?;
                let certificate = self.manager.certificate().clone();
                self.request(
                    Request::PublishCertificate { certificate },
                    Pending::LoginPublish,
                );
                let user = self.manager.address().user.clone();
                self.request(Request::ListDevices { user }, Pending::ListOwnDevices);
                let jobs: Vec<u64> = self.jobs.keys().copied().collect();
                for job in jobs {
                    self.start_job(rng, job, now)?;
                }
            }
            (Pending::LoginPublish, result) => {
                if let Err(e) = result {
                    self.events.push_back(ClientEvent::ServerError(e));
                }
                if !self.login_publishing() && std::mem::take(&mut self.queue_empty_held) {
                    self.events.push_back(ClientEvent::QueueEmpty);
                }
            }
            (Pending::LinkPermission, Ok(Response::LinkPermission { token, .. })) => {
                self.events.push_back(ClientEvent::LinkPermission(token));
            }
            (
                Pending::PublishPreKeys {
                    one_time,
                    pq_one_time,
                },
                Ok(_),
            ) if one_time + pq_one_time > 0 => {
                self.events.push_back(ClientEvent::PreKeysReplenished {
                    count: one_time,
                    pq_count: pq_one_time,
                });
            }
            (Pending::ListOwnDevices, Ok(Response::Devices(certificates))) => {
                let own = self.manager.address().clone();
                let listed: Vec<DeviceAddress> =
                    certificates.iter().map(|c| c.address().clone()).collect();
                for certificate in certificates.iter().filter(|c| c.address() != &own) {
                    match self.manager.add_device(rng, certificate) {
                        Ok(events) => self.trust_events(events),
                        Err(Error::UntrustedDevice(a)) => {
                            self.events.push_back(ClientEvent::DeviceRefused(a))
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                for known in self.own_other_devices()? {
                    if !listed.contains(&known)
                        && let Some(event) = self.manager.remove_device(rng, &known)?
                    {
                        self.trust_events(vec![event]);
                    }
                }
            }
            // The server tells the account's other devices, not this one.
            (Pending::RemoveDevice { device }, Ok(_)) => {
                let address = DeviceAddress::new(self.manager.address().user.clone(), device);
                if let Some(event) = self.manager.remove_device(rng, &address)? {
                    self.trust_events(vec![event]);
                }
            }
            (Pending::FetchBundles { job }, Ok(Response::Bundles(bundles))) => {
                let Some(recipient) = self.jobs.get(&job).map(|j| j.recipient.clone()) else {
                    return Ok(());
                };
                let own = self.manager.address().clone();
                for bundle in bundles {
                    let address = bundle.address().clone();
                    if address.user != recipient || address == own {
                        self.events.push_back(ClientEvent::DeviceRefused(address));
                        continue;
                    }
                    match self.manager.start_session(rng, &bundle, now) {
                        Ok(events) => self.trust_events(events),
                        Err(Error::IdentityChanged(change)) => {
                            self.events.push_back(ClientEvent::IdentityChanged(change));
                            self.fail_job(job, "the recipient's identity changed")?;
                            return Ok(());
                        }
                        Err(Error::Store(e)) => return Err(Error::Store(e).into()),
                        Err(_) => self.events.push_back(ClientEvent::DeviceRefused(address)),
                    }
                }
                let has_devices = if recipient == own.user {
                    !self.own_other_devices()?.is_empty()
                } else {
                    !self.manager.known_devices(&recipient)?.is_empty()
                };
                if has_devices {
                    self.send_prepared(rng, job, now)?;
                } else {
                    self.fail_job(job, "the recipient has no usable device")?;
                }
            }
            (Pending::Send { job }, Ok(Response::Sent { .. })) => {
                let Some(j) = self.jobs.remove(&job) else {
                    return Ok(());
                };
                self.manager.outbox_remove(job)?;
                if j.recipient != self.manager.address().user {
                    self.events.push_back(ClientEvent::Sent {
                        message: j.message,
                        recipient: j.recipient,
                    });
                }
            }
            (Pending::Send { job }, Ok(Response::MismatchedDevices { missing, extra })) => {
                let Some(j) = self.jobs.get_mut(&job) else {
                    return Ok(());
                };
                if j.retried {
                    self.fail_job(job, "the device list changed again")?;
                    return Ok(());
                }
                j.retried = true;
                let recipient = j.recipient.clone();
                for device in extra {
                    let address = DeviceAddress::new(recipient.clone(), device);
                    if let Some(event) = self.manager.remove_device(rng, &address)? {
                        self.trust_events(vec![event]);
                    }
                }
                if missing.is_empty() {
                    self.send_prepared(rng, job, now)?;
                } else {
                    self.request(
                        Request::FetchBundles {
                            user: recipient,
                            devices: missing,
                        },
                        Pending::FetchBundles { job },
                    );
                }
            }
            (Pending::Send { job } | Pending::FetchBundles { job }, Err(e)) => {
                self.fail_job(job, e.to_string())?;
            }
            (_, Err(e)) => self.events.push_back(ClientEvent::ServerError(e)),
            _ => {}
        }
        Ok(())
    }

    /// Encrypts the job for every known device (sessions exist or were just
    /// started) and sends it, without fetching again.
    fn send_prepared<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        job_id: u64,
        now: u64,
    ) -> Result<(), ClientError> {
        let Some(job) = self.jobs.get(&job_id) else {
            return Ok(());
        };
        let recipient = job.recipient.clone();
        let padded = job.padded.clone();
        let own = self.manager.address().clone();
        let devices: Vec<DeviceId> = if recipient == own.user {
            self.own_other_devices()?
                .into_iter()
                .map(|a| a.device)
                .collect()
        } else {
            self.manager
                .known_devices(&recipient)?
                .iter()
                .map(|c| c.address().device)
                .collect()
        };
        // Checked before encrypting, so no ratchet advances for nothing.
        if devices.len() > crate::wire::protocol::MAX_DEVICES_PER_USER {
            self.fail_job(
                job_id,
                "the recipient has more devices than an account may have",
            )?;
            return Ok(());
        }
        let mut envelopes = Vec::with_capacity(devices.len());
        for device in devices {
            let address = DeviceAddress::new(recipient.clone(), device);
            // A device refused when its bundle was fetched has no session.
            let message = match self.manager.encrypt(rng, &address, &padded, now) {
                Ok(message) => message,
                Err(Error::NoSession(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            envelopes.push((device, Envelope::new(own.clone(), message)?));
        }
        self.request(
            Request::Send {
                recipient,
                envelopes,
            },
            Pending::Send { job: job_id },
        );
        Ok(())
    }
}

/// What an unauthenticated connection is for.
enum Purpose {
    /// Create an account, or register a linked device: the request to send.
    Register(Box<Request>),
    /// Wait, as a new device, for the sealed link message.
    Provision {
        request: crate::link::LinkRequest,
        code: Option<crate::link::LinkCode>,
    },
}

/// What a [`Registration`] produced.
#[derive(Debug)]
#[non_exhaustive]
pub enum RegistrationEvent {
    /// The server assigned this device id: create the device's
    /// [`SessionManager`] with it (it signs its certificate and prekeys).
    Registered(DeviceId),
    /// Show this code to the user (QR or text); it must reach the existing
    /// device out of band.
    ShowCode(crate::link::LinkCode),
    /// The existing device sent the account: register with its permission.
    Linked(Box<crate::link::LinkedAccount>),
    /// The server refused.
    Refused(ProtocolError),
    /// The link message did not open (it was not sealed to this code).
    LinkRefused(crate::link::LinkError),
}

/// The sans-IO side of an unauthenticated connection: registering the first
/// device of an account, registering a linked device, or waiting as a new
/// device for its link message. Driven like [`Client`]: input bytes in,
/// [`Self::poll_transmit`] and [`Self::poll_event`] out.
pub struct Registration {
    purpose: Purpose,
    server_name: String,
    decoder: FrameDecoder,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<RegistrationEvent>,
    started: bool,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let purpose = match &self.purpose {
            Purpose::Register(r) if matches!(**r, Request::RegisterAccount { .. }) => "new account",
            Purpose::Register(_) => "linked device",
            Purpose::Provision { .. } => "provisioning",
        };
        f.debug_struct("Registration")
            .field("purpose", &purpose)
            .finish_non_exhaustive()
    }
}

impl Registration {
    fn with(purpose: Purpose, server_name: &str) -> Result<Self, ClientError> {
        Ok(Self {
            purpose,
            server_name: canonical_server_name(server_name)?,
            decoder: FrameDecoder::new(crate::wire::protocol::MAX_PREAUTH_FRAME_LEN),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            started: false,
        })
    }

    /// Registers a new account whose first device logs in with `auth`.
    ///
    /// # Errors
    /// [`ClientError::ServerName`].
    pub fn new_account(
        identity: &crate::keys::IdentityKeyPair,
        auth: &crate::keys::DeviceAuthKeyPair,
        user: UserId,
        server_name: &str,
    ) -> Result<Self, ClientError> {
        let name = canonical_server_name(server_name)?;
        let auth_key = auth.public_key();
        let signature = crate::wire::protocol::sign_registration(identity, &user, &auth_key, &name);
        let request = Request::RegisterAccount {
            user,
            identity: identity.public_key(),
            auth_key,
            signature,
        };
        Self::with(Purpose::Register(Box::new(request)), &name)
    }

    /// Registers a device of `linked`'s account with its permission.
    ///
    /// # Errors
    /// [`ClientError::ServerName`].
    pub fn linked_device(
        linked: &crate::link::LinkedAccount,
        auth: &crate::keys::DeviceAuthKeyPair,
        server_name: &str,
    ) -> Result<Self, ClientError> {
        let request = Request::RegisterLinkedDevice {
            user: linked.user.clone(),
            auth_key: auth.public_key(),
            permission: linked.permission,
        };
        Self::with(Purpose::Register(Box::new(request)), server_name)
    }

    /// Waits, as a new device, for an existing device to send the account.
    ///
    /// # Errors
    /// [`ClientError::ServerName`].
    pub fn provisioning<R: rand_core::CryptoRng + ?Sized>(
        rng: &mut R,
        server_name: &str,
    ) -> Result<Self, ClientError> {
        let purpose = Purpose::Provision {
            request: crate::link::LinkRequest::new(rng),
            code: None,
        };
        Self::with(purpose, server_name)
    }

    fn start(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        let request = match &self.purpose {
            Purpose::Register(request) => (**request).clone(),
            Purpose::Provision { .. } => Request::OpenProvisioning,
        };
        if let Ok(frame) = encode_frame(&ClientFrame { id: 1, request }.to_payload(), MAX_FRAME_LEN)
        {
            self.transmit.push_back(frame);
        }
    }

    /// Bytes read from the connection.
    ///
    /// # Errors
    /// [`ClientError::Frame`] or [`ClientError::Decode`]: reconnect.
    pub fn handle_input(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.decoder.push(bytes)?;
        while let Some(payload) = self.decoder.next_frame()? {
            match ServerFrame::from_payload(&payload)? {
                ServerFrame::Push(Push::Challenge { .. }) => self.start(),
                ServerFrame::Push(Push::Provisioning { sealed }) => {
                    if let Purpose::Provision {
                        request,
                        code: Some(code),
                    } = &self.purpose
                    {
                        match request.open_code(code, &sealed) {
                            Ok(linked) => self
                                .events
                                .push_back(RegistrationEvent::Linked(Box::new(linked))),
                            Err(e) => self.events.push_back(RegistrationEvent::LinkRefused(e)),
                        }
                    }
                }
                ServerFrame::Response { result: Err(e), .. } => {
                    self.events.push_back(RegistrationEvent::Refused(e))
                }
                ServerFrame::Response {
                    result: Ok(Response::Registered { device }),
                    ..
                } => self.events.push_back(RegistrationEvent::Registered(device)),
                ServerFrame::Response {
                    result: Ok(Response::Provisioning { address }),
                    ..
                } => {
                    if let Purpose::Provision { request, code } = &mut self.purpose {
                        let shown = request
                            .code(&self.server_name, address)
                            .map_err(|_| InvalidServerName)?;
                        *code = Some(shown.clone());
                        self.events.push_back(RegistrationEvent::ShowCode(shown));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The next bytes to write.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<RegistrationEvent> {
        self.events.pop_front()
    }
}

impl<S: Store> Client<S> {
    /// Asks the server for a single-use permission to link a new device to
    /// this account; [`ClientEvent::LinkPermission`] follows.
    pub fn request_link_permission(&mut self) {
        self.request(Request::RequestLinkPermission, Pending::LinkPermission);
    }

    /// Seals this account to a new device's code (after the user approved)
    /// and sends it to the device's provisioning address. A code naming
    /// another server is refused.
    ///
    /// # Errors
    /// [`ClientError::Link`] for a code of another server.
    pub fn send_link<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        code: &crate::link::LinkCode,
        permission: &crate::wire::protocol::LinkToken,
    ) -> Result<(), ClientError> {
        let sealed = crate::link::seal_link(
            rng,
            code,
            &self.server_name,
            self.manager.identity_key_pair(),
            &self.manager.address().user,
            permission,
        )?;
        self.request(
            Request::SendProvisioning {
                address: *code.address(),
                sealed,
            },
            Pending::Quiet,
        );
        Ok(())
    }

    /// Replaces the account identity (after a device was lost or stolen): the
    /// device re-signs its certificate and prekeys, drops its sessions and
    /// tells the server, which removes the account's other devices. Peers
    /// see an identity change on the next message.
    ///
    /// # Errors
    /// A store error.
    pub fn replace_account_identity<R: rand_core::CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        identity: crate::keys::IdentityKeyPair,
        now: u64,
    ) -> Result<(), ClientError> {
        let signature = crate::wire::protocol::sign_registration(
            &identity,
            &self.manager.address().user,
            &self.manager.device_auth_key().public_key(),
            &self.server_name,
        );
        let public = identity.public_key();
        self.manager.replace_account_identity(rng, identity, now)?;
        self.request(
            Request::ReplaceIdentity {
                identity: public,
                signature,
            },
            Pending::Quiet,
        );
        // Prekeys before the certificate, as at login.
        self.publish_signed_prekeys(Pending::Quiet)?;
        let certificate = self.manager.certificate().clone();
        self.request(Request::PublishCertificate { certificate }, Pending::Quiet);
        Ok(())
    }

    /// Registers the platform's push token, which the server's push hook
    /// uses to wake this device when a message waits for it; an empty token
    /// clears it.
    ///
    /// # Errors
    /// [`ClientError::PushToken`] for a token longer than
    /// [`MAX_PUSH_TOKEN_LEN`](crate::wire::protocol::MAX_PUSH_TOKEN_LEN)
    /// bytes (nothing is sent).
    pub fn register_push_token(&mut self, token: &str) -> Result<(), ClientError> {
        if token.len() > crate::wire::protocol::MAX_PUSH_TOKEN_LEN {
            return Err(ClientError::PushToken);
        }
        self.request(
            Request::RegisterPushToken {
                token: token.to_owned(),
            },
            Pending::Quiet,
        );
        Ok(())
    }

    /// Removes another device of this account from the server; peers drop it
    /// when they next send. Once the server confirms, this device forgets it
    /// too and reports [`Event::DeviceRemoved`]; a refusal comes as
    /// [`ClientEvent::ServerError`].
    pub fn remove_device(&mut self, device: DeviceId) {
        self.request(
            Request::RemoveDevice { device },
            Pending::RemoveDevice { device },
        );
    }
}
