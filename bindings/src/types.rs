//! Records and enums that cross the boundary, and their conversions.

use hush::keys::{DeviceId, UserId};
use hush::wire::content::{Body, Content, MessageId, ReceiptKind};

use crate::HushError;

/// A device: its user and the id the server gave it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, uniffi::Record)]
pub struct DeviceAddress {
    /// The user id.
    pub user: String,
    /// The device id.
    pub device: u32,
}

impl DeviceAddress {
    pub(crate) fn to_sdk(&self) -> Result<hush::keys::DeviceAddress, HushError> {
        Ok(hush::keys::DeviceAddress::new(
            user_id(&self.user)?,
            DeviceId(self.device),
        ))
    }
}

impl From<&hush::keys::DeviceAddress> for DeviceAddress {
    fn from(a: &hush::keys::DeviceAddress) -> Self {
        Self {
            user: a.user.as_str().to_owned(),
            device: a.device.0,
        }
    }
}

pub(crate) fn user_id(user: &str) -> Result<UserId, HushError> {
    UserId::new(user).map_err(|e| HushError::invalid(format!("user id {user:?}: {e}")))
}

pub(crate) fn fixed<const N: usize>(bytes: &[u8], what: &str) -> Result<[u8; N], HushError> {
    bytes.try_into().map_err(|_| {
        HushError::invalid(format!(
            "{what} must be {N} bytes, not {len}",
            len = bytes.len()
        ))
    })
}

/// Something about a contact's trust that the app should show.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum TrustEvent {
    /// A user's account identity was seen for the first time and is trusted
    /// from now on (trust on first use; compare safety numbers to be sure).
    IdentityTrusted {
        /// The user.
        user: String,
        /// The identity (32 bytes).
        identity: Vec<u8>,
    },
    /// A device not seen before, certified by its user's identity.
    DeviceAdded {
        /// The device.
        device: DeviceAddress,
    },
    /// A known device presented a new certificate.
    DeviceChanged {
        /// The device.
        device: DeviceAddress,
    },
    /// A device left its user's device list.
    DeviceRemoved {
        /// The device.
        device: DeviceAddress,
    },
}

impl TrustEvent {
    pub(crate) fn from_sdk(event: hush::Event) -> Option<Self> {
        Some(match event {
            hush::Event::IdentityTrusted { user, identity } => Self::IdentityTrusted {
                user: user.as_str().to_owned(),
                identity: identity.to_bytes().to_vec(),
            },
            hush::Event::DeviceAdded(a) => Self::DeviceAdded {
                device: (&a).into(),
            },
            hush::Event::DeviceChanged(a) => Self::DeviceChanged {
                device: (&a).into(),
            },
            hush::Event::DeviceRemoved(a) => Self::DeviceRemoved {
                device: (&a).into(),
            },
            // A newer SDK event this facade does not know yet.
            _ => return None,
        })
    }

    pub(crate) fn all(events: Vec<hush::Event>) -> Vec<Self> {
        events.into_iter().filter_map(Self::from_sdk).collect()
    }
}

/// A message decrypted by [`crate::Device::decrypt`].
#[derive(Debug, Clone, uniffi::Record)]
pub struct DecryptedMessage {
    /// The plaintext.
    pub plaintext: Vec<u8>,
    /// What else happened (a new identity or device).
    pub events: Vec<TrustEvent>,
}

/// A decrypted message the app has not confirmed yet.
#[derive(Debug, Clone, uniffi::Record)]
pub struct InboxEntry {
    /// The server's envelope id.
    pub envelope_id: Vec<u8>,
    /// The sending device.
    pub sender: DeviceAddress,
    /// The padded message content as the client decrypted it.
    pub plaintext: Vec<u8>,
    /// When it was decrypted (seconds since the Unix epoch).
    pub received_at: u64,
}

/// The safety number of a conversation: the same on both sides exactly when
/// each side holds the other's true identity.
#[derive(Debug, Clone, uniffi::Record)]
pub struct SafetyNumber {
    /// 60 digits.
    pub digits: String,
    /// The digits in 12 groups of 5, to show.
    pub groups: Vec<String>,
    /// The QR code payload to show; the other side scans it.
    pub qr_payload: Vec<u8>,
}

impl From<&hush::fingerprint::SafetyNumber> for SafetyNumber {
    fn from(n: &hush::fingerprint::SafetyNumber) -> Self {
        Self {
            digits: n.digits(),
            groups: n.display_groups(),
            qr_payload: n.qr_payload(),
        }
    }
}

/// What an attachment is, which decides its size cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum AttachmentKind {
    /// A picture shown inline (at most 10 MiB).
    Image,
    /// Any other file (at most 50 MiB).
    File,
}

impl AttachmentKind {
    pub(crate) fn to_sdk(self) -> hush::attachment::AttachmentKind {
        match self {
            Self::Image => hush::attachment::AttachmentKind::Image,
            Self::File => hush::attachment::AttachmentKind::File,
        }
    }

    pub(crate) fn from_sdk(kind: hush::attachment::AttachmentKind) -> Self {
        match kind {
            hush::attachment::AttachmentKind::Image => Self::Image,
            _ => Self::File,
        }
    }
}

/// What an attachment pointer says, for showing it before downloading.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct AttachmentInfo {
    /// Image or file.
    pub kind: AttachmentKind,
    /// The media type the sender gave.
    pub media_type: String,
    /// The size of the plaintext.
    pub plaintext_len: u64,
    /// The size of the encrypted blob.
    pub ciphertext_len: u64,
}

impl From<&hush::attachment::AttachmentPointer> for AttachmentInfo {
    fn from(p: &hush::attachment::AttachmentPointer) -> Self {
        Self {
            kind: AttachmentKind::from_sdk(p.kind()),
            media_type: p.media_type().to_owned(),
            plaintext_len: p.plaintext_len(),
            ciphertext_len: p.ciphertext_len(),
        }
    }
}

/// What a message says.
#[derive(Debug, Clone, uniffi::Enum)]
pub enum MessageBody {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// An attachment on the server: pass `pointer` to
    /// `Client.begin_download`.
    Attachment {
        /// The pointer, with the key (keep it as secret as the message).
        pointer: Vec<u8>,
        /// What the pointer says.
        info: AttachmentInfo,
        /// An optional caption.
        caption: Option<String>,
    },
    /// Delivery or read receipts.
    Receipt {
        /// Read receipts if true, delivery receipts otherwise.
        read: bool,
        /// The message ids covered.
        message_ids: Vec<Vec<u8>>,
    },
    /// A kind of message this version does not know.
    Unknown,
}

/// A message as the sender wrote it.
#[derive(Debug, Clone, uniffi::Record)]
pub struct MessageContent {
    /// The sender's id of the message (16 bytes; receipts name it).
    pub message_id: Vec<u8>,
    /// The sender's clock when it was written (seconds since the Unix epoch).
    pub sent_at: u64,
    /// What it says.
    pub body: MessageBody,
    /// Set when this is a copy of a message another device of this account
    /// sent: the user it went to.
    pub sync_recipient: Option<String>,
}

impl MessageBody {
    fn from_sdk(body: Body) -> Self {
        match body {
            Body::Text(text) => Self::Text { text },
            Body::Attachment { pointer, caption } => Self::Attachment {
                info: (&pointer).into(),
                pointer: pointer.to_bytes().to_vec(),
                caption,
            },
            Body::Receipt { kind, messages } => Self::Receipt {
                read: matches!(kind, ReceiptKind::Read),
                message_ids: messages.into_iter().map(|m| m.0.to_vec()).collect(),
            },
            _ => Self::Unknown,
        }
    }
}

impl MessageContent {
    pub(crate) fn from_sdk(content: Content) -> Self {
        match content.body {
            Body::SentSync { recipient, content } => Self {
                message_id: content.id.0.to_vec(),
                sent_at: content.sent_at,
                body: MessageBody::from_sdk(content.body),
                sync_recipient: Some(recipient.as_str().to_owned()),
            },
            body => Self {
                message_id: content.id.0.to_vec(),
                sent_at: content.sent_at,
                body: MessageBody::from_sdk(body),
                sync_recipient: None,
            },
        }
    }
}

pub(crate) fn message_id(bytes: &[u8]) -> Result<MessageId, HushError> {
    Ok(MessageId(fixed(bytes, "a message id")?))
}

/// Why the server refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ServerErrorCode {
    /// Malformed or invalid request.
    BadRequest,
    /// Not logged in, or the login failed.
    Unauthenticated,
    /// Not allowed for this account or device.
    Forbidden,
    /// No such user, device, blob or upload.
    NotFound,
    /// The user id is taken, or the state conflicts.
    Conflict,
    /// Too many requests; try later.
    RateLimited,
    /// Over a size cap.
    TooLarge,
    /// An account or server limit is reached.
    LimitReached,
    /// A token, permission or challenge expired or was used.
    Expired,
    /// The server does not speak this protocol version.
    UnsupportedVersion,
    /// The server failed.
    Internal,
}

impl ServerErrorCode {
    pub(crate) fn from_sdk(code: hush::wire::protocol::ErrorCode) -> Self {
        use hush::wire::protocol::ErrorCode as C;
        match code {
            C::BadRequest => Self::BadRequest,
            C::Unauthenticated => Self::Unauthenticated,
            C::Forbidden => Self::Forbidden,
            C::NotFound => Self::NotFound,
            C::Conflict => Self::Conflict,
            C::RateLimited => Self::RateLimited,
            C::TooLarge => Self::TooLarge,
            C::LimitReached => Self::LimitReached,
            C::Expired => Self::Expired,
            C::UnsupportedVersion => Self::UnsupportedVersion,
            _ => Self::Internal,
        }
    }
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn fresh_rng() -> rand::rngs::StdRng {
    use rand::SeedableRng;
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    rand::rngs::StdRng::from_seed(seed)
}
