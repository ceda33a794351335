//! The sans-IO protocol client of the reference server.

use std::sync::Arc;

use hush::client::{ClientEvent as SdkEvent, TransferId};
use hush::wire::content::{Body, ReceiptKind};
use hush::wire::protocol::{EnvelopeId, LinkToken};
use rand::rngs::StdRng;

use crate::device::{Mode, Shared, link_code, lock};
use crate::types::{
    AttachmentInfo, AttachmentKind, DeviceAddress, MessageContent, ServerErrorCode, TrustEvent,
    fixed, message_id, unix_now, user_id,
};
use crate::{Device, HushError};

type SdkClient = hush::client::Client<crate::storage::DeviceStore>;

/// What the client reports; read them with [`Client::poll_event`] after
/// every input.
#[derive(Debug, uniffi::Enum)]
pub enum ClientEvent {
    /// Logged in; queued messages follow, then `QueueEmpty`.
    Authenticated,
    /// Every message the server held was delivered.
    QueueEmpty,
    /// A message. Keep it, then call [`Client::confirm`] with its envelope
    /// id: until then the server keeps it and delivers it again after a
    /// reconnect.
    Message {
        /// The server's id (what `confirm` takes).
        envelope_id: Vec<u8>,
        /// The sending device.
        sender: DeviceAddress,
        /// When the server accepted it (seconds since the Unix epoch).
        server_time: u64,
        /// The message.
        content: MessageContent,
    },
    /// The server stored the message for every device of the recipient.
    Sent {
        /// The message id `send_text` returned.
        message_id: Vec<u8>,
        /// The recipient.
        recipient: String,
    },
    /// The message could not be sent.
    DeliveryFailed {
        /// The message id.
        message_id: Vec<u8>,
        /// The recipient.
        recipient: String,
        /// Why.
        reason: String,
    },
    /// An identity was trusted, or a device added, changed or removed.
    Trust {
        /// What changed.
        event: TrustEvent,
    },
    /// A contact presented another account identity: warn the user. Nothing
    /// from or to them is accepted until `Device.accept_identity_change`.
    IdentityChanged {
        /// The contact.
        user: String,
        /// The identity trusted so far.
        trusted: Vec<u8>,
        /// The identity now presented.
        received: Vec<u8>,
    },
    /// A device not certified by its user's identity was refused.
    DeviceRefused {
        /// The device.
        device: DeviceAddress,
    },
    /// A delivered envelope could not be decrypted and was dropped.
    Undecryptable {
        /// The server's id.
        envelope_id: Vec<u8>,
        /// The claimed sender.
        sender: DeviceAddress,
        /// Why.
        reason: String,
    },
    /// New one-time prekeys were published.
    PreKeysReplenished {
        /// Classical one-time prekeys.
        count: u32,
        /// Post-quantum one-time prekeys.
        pq_count: u32,
    },
    /// The server refused a request.
    ServerError {
        /// The code.
        code: ServerErrorCode,
        /// The server's detail.
        reason: String,
    },
    /// The server accepted the upload: feed it with [`Client::upload`].
    UploadReady {
        /// The transfer.
        transfer: u64,
    },
    /// The upload is stored; send `pointer` with [`Client::send_attachment`].
    Uploaded {
        /// The transfer.
        transfer: u64,
        /// The pointer (with the key: as secret as a message).
        pointer: Vec<u8>,
        /// What it says.
        info: AttachmentInfo,
    },
    /// Authenticated attachment bytes, in order.
    AttachmentData {
        /// The transfer.
        transfer: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The whole attachment arrived and checked out.
    Downloaded {
        /// The transfer.
        transfer: u64,
    },
    /// The transfer failed; discard what a download gave so far.
    TransferFailed {
        /// The transfer.
        transfer: u64,
        /// Why.
        reason: String,
    },
    /// A permission to link a new device: pass it to [`Client::send_link`].
    LinkPermission {
        /// The permission.
        permission: Vec<u8>,
    },
}

fn convert(event: SdkEvent) -> ClientEvent {
    match event {
        SdkEvent::Authenticated => ClientEvent::Authenticated,
        SdkEvent::QueueEmpty => ClientEvent::QueueEmpty,
        SdkEvent::Message {
            envelope_id,
            sender,
            server_time,
            content,
        } => ClientEvent::Message {
            envelope_id: envelope_id.0.to_vec(),
            sender: (&sender).into(),
            server_time,
            content: MessageContent::from_sdk(content),
        },
        SdkEvent::Sent { message, recipient } => ClientEvent::Sent {
            message_id: message.0.to_vec(),
            recipient: recipient.as_str().to_owned(),
        },
        SdkEvent::DeliveryFailed {
            message,
            recipient,
            reason,
        } => ClientEvent::DeliveryFailed {
            message_id: message.0.to_vec(),
            recipient: recipient.as_str().to_owned(),
            reason,
        },
        SdkEvent::Trust(event) => match TrustEvent::from_sdk(event) {
            Some(event) => ClientEvent::Trust { event },
            None => ClientEvent::ServerError {
                code: ServerErrorCode::Internal,
                reason: "a trust event this version does not know".into(),
            },
        },
        SdkEvent::IdentityChanged(change) => ClientEvent::IdentityChanged {
            user: change.user.as_str().to_owned(),
            trusted: change.trusted.to_bytes().to_vec(),
            received: change.received.to_bytes().to_vec(),
        },
        SdkEvent::DeviceRefused(device) => ClientEvent::DeviceRefused {
            device: (&device).into(),
        },
        SdkEvent::Undecryptable {
            envelope_id,
            sender,
            reason,
        } => ClientEvent::Undecryptable {
            envelope_id: envelope_id.0.to_vec(),
            sender: (&sender).into(),
            reason,
        },
        SdkEvent::PreKeysReplenished { count, pq_count } => ClientEvent::PreKeysReplenished {
            count: u32::try_from(count).unwrap_or(u32::MAX),
            pq_count: u32::try_from(pq_count).unwrap_or(u32::MAX),
        },
        SdkEvent::ServerError(e) => ClientEvent::ServerError {
            code: ServerErrorCode::from_sdk(e.code),
            reason: e.message,
        },
        SdkEvent::UploadReady(t) => ClientEvent::UploadReady { transfer: t.0 },
        SdkEvent::Uploaded { transfer, pointer } => ClientEvent::Uploaded {
            transfer: transfer.0,
            info: (&pointer).into(),
            pointer: pointer.to_bytes().to_vec(),
        },
        SdkEvent::AttachmentData { transfer, data } => ClientEvent::AttachmentData {
            transfer: transfer.0,
            data: data.0.to_vec(),
        },
        SdkEvent::Downloaded(t) => ClientEvent::Downloaded { transfer: t.0 },
        SdkEvent::LinkPermission(token) => ClientEvent::LinkPermission {
            permission: token.0.to_vec(),
        },
        SdkEvent::TransferFailed { transfer, reason } => ClientEvent::TransferFailed {
            transfer: transfer.0,
            reason,
        },
        other => ClientEvent::ServerError {
            code: ServerErrorCode::Internal,
            reason: format!("an event this version does not know: {other:?}"),
        },
    }
}

/// The sans-IO client of the reference server protocol, for one device.
/// The host (the connection helper of each language, or the app) owns a
/// TLS connection and, in a loop:
///
/// 1. after (re)connecting, calls [`Self::handle_connected`];
/// 2. passes every byte it reads to [`Self::handle_input`];
/// 3. writes out [`Self::take_transmit`];
/// 4. handles every [`Self::poll_event`];
/// 5. wakes after [`Self::timeout_millis`] at most and calls
///    [`Self::handle_timeout`].
///
/// Every call is thread-safe; hold no lock of your own across them.
#[derive(uniffi::Object)]
pub struct Client {
    shared: Shared,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Client")
    }
}

impl Client {
    pub(crate) fn wrap(shared: Shared) -> Arc<Self> {
        Arc::new(Self { shared })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut SdkClient, &mut StdRng) -> Result<T, HushError>,
    ) -> Result<T, HushError> {
        let mut inner = lock(&self.shared)?;
        let inner = &mut *inner;
        match &mut inner.mode {
            Mode::Client(client) => f(client, &mut inner.rng),
            Mode::Closed => Err(HushError::AlreadyUsed {
                what: "the device (it was closed)".into(),
            }),
            _ => Err(HushError::AlreadyUsed {
                what: "this client (the device made a newer one)".into(),
            }),
        }
    }

    fn transfer(
        &self,
        f: impl FnOnce(&mut SdkClient) -> Result<(), HushError>,
    ) -> Result<(), HushError> {
        self.with(|c, _| f(c))
    }
}

#[uniffi::export]
impl Client {
    /// The device this client runs (same state).
    pub fn device(&self) -> Arc<Device> {
        Device::from_shared(self.shared.clone())
    }

    /// Whether the server accepted the login on this connection.
    ///
    /// # Errors
    /// [`HushError::AlreadyUsed`], [`HushError::Internal`].
    pub fn is_authenticated(&self) -> Result<bool, HushError> {
        self.with(|c, _| Ok(c.is_authenticated()))
    }

    /// A new connection is up: forget the old one's state (messages not yet
    /// stored by the server are sent again).
    ///
    /// # Errors
    /// [`HushError::AlreadyUsed`], [`HushError::Internal`].
    pub fn handle_connected(&self) -> Result<(), HushError> {
        self.with(|c, _| {
            c.handle_connected(unix_now());
            Ok(())
        })
    }

    /// Bytes read from the connection.
    ///
    /// # Errors
    /// [`HushError::Protocol`]: close the connection and reconnect;
    /// [`HushError::Storage`].
    pub fn handle_input(&self, data: Vec<u8>) -> Result<(), HushError> {
        self.with(|c, rng| Ok(c.handle_input(rng, &data, unix_now())?))
    }

    /// Everything to write to the connection now, in one buffer (empty when
    /// there is nothing).
    ///
    /// # Errors
    /// [`HushError::AlreadyUsed`], [`HushError::Internal`].
    pub fn take_transmit(&self) -> Result<Vec<u8>, HushError> {
        self.with(|c, _| {
            let mut out = Vec::new();
            while let Some(bytes) = c.poll_transmit() {
                out.extend_from_slice(&bytes);
            }
            Ok(out)
        })
    }

    /// The next event, if any.
    ///
    /// # Errors
    /// [`HushError::AlreadyUsed`], [`HushError::Internal`].
    pub fn poll_event(&self) -> Result<Option<ClientEvent>, HushError> {
        self.with(|c, _| Ok(c.poll_event().map(convert)))
    }

    /// Milliseconds until [`Self::handle_timeout`] is due (0 when it is
    /// due now), or none.
    ///
    /// # Errors
    /// [`HushError::AlreadyUsed`], [`HushError::Internal`].
    pub fn timeout_millis(&self) -> Result<Option<u64>, HushError> {
        self.with(|c, _| {
            Ok(c.poll_timeout()
                .map(|at| at.saturating_sub(unix_now()).saturating_mul(1000)))
        })
    }

    /// Runs what is due (keep-alive pings).
    ///
    /// # Errors
    /// [`HushError::Storage`].
    pub fn handle_timeout(&self) -> Result<(), HushError> {
        self.with(|c, rng| Ok(c.handle_timeout(rng, unix_now())?))
    }

    /// Sends text to every device of `recipient` (and a copy to this
    /// account's other devices). Returns the message id; `Sent` or
    /// `DeliveryFailed` follows.
    ///
    /// # Errors
    /// [`HushError::InvalidArgument`] for a bad user id or a text over the
    /// size cap; [`HushError::Storage`].
    pub fn send_text(&self, recipient: String, text: String) -> Result<Vec<u8>, HushError> {
        let recipient = user_id(&recipient)?;
        self.with(|c, rng| Ok(c.send_text(rng, &recipient, &text, unix_now())?.0.to_vec()))
    }

    /// Sends an uploaded attachment (the pointer from `Uploaded`).
    ///
    /// # Errors
    /// [`HushError::InvalidArgument`], [`HushError::Attachment`] for a
    /// malformed pointer.
    pub fn send_attachment(
        &self,
        recipient: String,
        pointer: Vec<u8>,
        caption: Option<String>,
    ) -> Result<Vec<u8>, HushError> {
        let recipient = user_id(&recipient)?;
        let pointer = hush::attachment::AttachmentPointer::from_bytes(&pointer)?;
        self.with(|c, rng| {
            Ok(c.send(
                rng,
                &recipient,
                Body::Attachment { pointer, caption },
                unix_now(),
            )?
            .0
            .to_vec())
        })
    }

    /// Sends delivery (`read = false`) or read receipts for messages of
    /// `recipient`.
    ///
    /// # Errors
    /// [`HushError::InvalidArgument`] for a bad id or too many ids.
    pub fn send_receipt(
        &self,
        recipient: String,
        read: bool,
        message_ids: Vec<Vec<u8>>,
    ) -> Result<Vec<u8>, HushError> {
        let recipient = user_id(&recipient)?;
        let messages = message_ids
            .iter()
            .map(|m| message_id(m))
            .collect::<Result<Vec<_>, _>>()?;
        let kind = if read {
            ReceiptKind::Read
        } else {
            ReceiptKind::Delivered
        };
        self.with(|c, rng| {
            Ok(c.send(
                rng,
                &recipient,
                Body::Receipt { kind, messages },
                unix_now(),
            )?
            .0
            .to_vec())
        })
    }

    /// Whether messages given to `send_*` are still on their way.
    ///
    /// # Errors
    /// [`HushError::AlreadyUsed`], [`HushError::Internal`].
    pub fn has_pending_sends(&self) -> Result<bool, HushError> {
        self.with(|c, _| Ok(c.has_pending_sends()))
    }

    /// The app has kept the message: the server may drop it.
    ///
    /// # Errors
    /// [`HushError::InvalidArgument`] for a malformed id,
    /// [`HushError::Storage`].
    pub fn confirm(&self, envelope_id: Vec<u8>) -> Result<(), HushError> {
        let id = EnvelopeId(fixed(&envelope_id, "an envelope id")?);
        self.with(|c, _| Ok(c.confirm(&id)?))
    }

    /// Starts an upload of `plaintext_len` bytes; `UploadReady` follows,
    /// then feed the bytes with [`Self::upload`] and call
    /// [`Self::finish_upload`].
    ///
    /// # Errors
    /// [`HushError::Attachment`] over the kind's size cap.
    pub fn begin_upload(
        &self,
        kind: AttachmentKind,
        media_type: String,
        plaintext_len: u64,
    ) -> Result<u64, HushError> {
        self.with(|c, rng| {
            Ok(
                c.begin_upload(rng, kind.to_sdk(), &media_type, plaintext_len)?
                    .0,
            )
        })
    }

    /// The next piece of the upload's plaintext (any size; 256 KiB pieces
    /// keep memory low).
    ///
    /// # Errors
    /// [`HushError::TransferNotReady`] before `UploadReady`,
    /// [`HushError::Attachment`] past the announced length.
    pub fn upload(&self, transfer: u64, data: Vec<u8>) -> Result<(), HushError> {
        let data = zeroize::Zeroizing::new(data);
        self.transfer(|c| Ok(c.upload(TransferId(transfer), &data)?))
    }

    /// Every byte was given: `Uploaded` follows.
    ///
    /// # Errors
    /// [`HushError::TransferNotReady`], [`HushError::Attachment`] if fewer
    /// bytes than announced were given.
    pub fn finish_upload(&self, transfer: u64) -> Result<(), HushError> {
        self.transfer(|c| Ok(c.finish_upload(TransferId(transfer))?))
    }

    /// Downloads an attachment: `AttachmentData` events, then `Downloaded`
    /// (or `TransferFailed`).
    ///
    /// # Errors
    /// [`HushError::Attachment`] for a malformed pointer.
    pub fn begin_download(&self, pointer: Vec<u8>) -> Result<u64, HushError> {
        let pointer = hush::attachment::AttachmentPointer::from_bytes(&pointer)?;
        self.with(|c, _| Ok(c.begin_download(&pointer)?.0))
    }

    /// Asks for a permission to link a new device; `LinkPermission` follows.
    ///
    /// # Errors
    /// [`HushError::AlreadyUsed`], [`HushError::Internal`].
    pub fn request_link_permission(&self) -> Result<(), HushError> {
        self.with(|c, _| {
            c.request_link_permission();
            Ok(())
        })
    }

    /// Sends this account to the new device that shows `code`, with a
    /// permission from `LinkPermission`. Only after the user approved.
    ///
    /// # Errors
    /// [`HushError::Link`] for a code of another server or a damaged one.
    pub fn send_link(&self, code: Vec<u8>, permission: Vec<u8>) -> Result<(), HushError> {
        let code = link_code(&code)?;
        let permission = LinkToken(fixed(&permission, "a link permission")?);
        self.with(|c, rng| Ok(c.send_link(rng, &code, &permission)?))
    }

    /// Registers the platform's push token (empty clears it).
    ///
    /// # Errors
    /// [`HushError::InvalidArgument`] for a token over the protocol's cap.
    pub fn register_push_token(&self, token: String) -> Result<(), HushError> {
        self.with(|c, _| Ok(c.register_push_token(&token)?))
    }

    /// Removes another device of this account.
    ///
    /// # Errors
    /// [`HushError::AlreadyUsed`], [`HushError::Internal`].
    pub fn remove_device(&self, device_id: u32) -> Result<(), HushError> {
        self.with(|c, _| {
            c.remove_device(hush::keys::DeviceId(device_id));
            Ok(())
        })
    }
}
