//! The message set between clients and the reference server.
//!
//! Every frame payload is `PROTOCOL_VERSION (u8) || postcard(message)`: a
//! [`ClientFrame`] from a client, a [`ServerFrame`] from the server. Each
//! request carries an id that its response echoes; pushes are unsolicited.
//! See `docs/protocol.md` for the table of all messages.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use super::envelope::{Envelope, MAX_ENVELOPE_LEN};
use crate::codec::DecodeError;
use crate::keys::{
    DeviceAddress, DeviceAuthKey, DeviceAuthKeyPair, DeviceCertificate, DeviceId, IdentityKey,
    IdentityKeyPair, KeyError, OneTimePreKey, PreKeyBundle, SignatureLabel, SignedPqPreKey,
    SignedPreKey, UserId,
};

/// The protocol version byte that starts every frame payload. Version 2
/// carries ML-KEM-1024 prekeys (PQXDH) in bundles, publishes and pushes.
pub const PROTOCOL_VERSION: u8 = 2;
/// Devices per account, at most.
pub const MAX_DEVICES_PER_USER: usize = 6;
/// One-time prekeys per publish request, at most.
pub const MAX_ONE_TIME_PREKEYS_PER_REQUEST: usize = 100;
/// PQ one-time prekeys per publish request, at most (each is
/// [`SignedPqPreKey::ENCODED_LEN`] bytes, so a full request stays far below
/// [`MAX_FRAME_LEN`]).
pub const MAX_PQ_ONE_TIME_PREKEYS_PER_REQUEST: usize = 50;
/// Attachment bytes per upload or download chunk.
pub const CHUNK_LEN: usize = 64 * 1024;
/// Bytes a frame may hold before the connection is authenticated.
pub const MAX_PREAUTH_FRAME_LEN: usize = 16 * 1024;
/// The largest frame: a send to one user's devices, one envelope each
/// (copies for the sender's own other devices go in a separate send).
pub const MAX_FRAME_LEN: usize = MAX_DEVICES_PER_USER * (MAX_ENVELOPE_LEN + 16) + 1024;
/// Longest error message text.
pub const MAX_ERROR_TEXT: usize = 256;
/// Longest push token.
pub const MAX_PUSH_TOKEN_LEN: usize = 4096;
/// Envelope ids per `Ack`, at most.
pub const MAX_ACK_IDS: usize = 1024;
/// Longest sealed link message.
pub const MAX_SEALED_LINK_LEN: usize = 1024;

/// Why a frame payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProtocolDecodeError {
    /// Empty payload, or bytes postcard could not read.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A payload of another protocol version.
    #[error("unsupported protocol version {0}")]
    Version(u8),
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// A fresh random value.
            pub fn random<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
                let mut b = [0u8; $len];
                rng.fill_bytes(&mut b);
                Self(b)
            }
        }
    };
}

id_type!(
    /// A server-assigned envelope id (the dedupe and ack key).
    EnvelopeId,
    16
);
id_type!(
    /// An uploaded attachment blob.
    BlobId,
    16
);
id_type!(
    /// An upload in progress.
    UploadId,
    16
);
id_type!(
    /// Where a device being linked waits for its provisioning message.
    ProvisioningAddress,
    16
);
id_type!(
    /// A single-use permission to link a device to an account.
    LinkToken,
    32
);
id_type!(
    /// A single-use login challenge.
    Nonce,
    32
);

/// A 64-byte Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v: &[u8] = <&[u8]>::deserialize(d)?;
        v.try_into()
            .map(Self)
            .map_err(|_| serde::de::Error::custom("signature must be 64 bytes"))
    }
}

/// The declared kind of an upload, which sets its size cap: the attachment
/// kinds (an image at most 5 MiB of plaintext, a file at most 50 MiB); the
/// server accepts at most
/// [`max_ciphertext_len`](crate::attachment::AttachmentKind::max_ciphertext_len) bytes.
pub type BlobKind = crate::attachment::AttachmentKind;

/// A request from a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// Creates an account with its first device. `signature` is by the account
    /// identity over [`registration_payload`]. Answered by [`Response::Registered`].
    RegisterAccount {
        /// The new user id.
        user: UserId,
        /// The account identity.
        identity: IdentityKey,
        /// The first device's auth key.
        auth_key: DeviceAuthKey,
        /// Proof of the identity key, bound to the server name.
        signature: Signature,
    },
    /// Adds a device to an account with a permission from
    /// [`Request::RequestLinkPermission`]. Answered by [`Response::Registered`].
    RegisterLinkedDevice {
        /// The account.
        user: UserId,
        /// The new device's auth key.
        auth_key: DeviceAuthKey,
        /// The single-use permission.
        permission: LinkToken,
    },
    /// Logs in: `signature` by the device auth key over [`auth_payload`].
    Authenticate {
        /// The device logging in.
        device: DeviceAddress,
        /// The answer to the connection's challenge.
        signature: Signature,
    },
    /// Publishes this device's certificate (after registration, or renewed).
    PublishCertificate {
        /// Signed by the account identity; must name this device.
        certificate: DeviceCertificate,
    },
    /// Publishes prekeys of this device.
    PublishPreKeys {
        /// A new signed prekey.
        signed: Option<SignedPreKey>,
        /// A new last-resort prekey.
        last_resort: Option<SignedPreKey>,
        /// One-time prekeys, at most [`MAX_ONE_TIME_PREKEYS_PER_REQUEST`].
        one_time: Vec<OneTimePreKey>,
        /// A new PQ last-resort prekey (kind [`PqPreKeyKind::LastResort`](crate::keys::PqPreKeyKind::LastResort)).
        pq_last_resort: Option<SignedPqPreKey>,
        /// PQ one-time prekeys (kind [`PqPreKeyKind::OneTime`](crate::keys::PqPreKeyKind::OneTime)),
        /// at most [`MAX_PQ_ONE_TIME_PREKEYS_PER_REQUEST`].
        pq_one_time: Vec<SignedPqPreKey>,
    },
    /// Fetches a bundle for devices of a user (one one-time prekey each).
    FetchBundles {
        /// The user.
        user: UserId,
        /// Only these devices; every device of the user when empty.
        devices: Vec<DeviceId>,
    },
    /// Lists the device certificates of a user.
    ListDevices {
        /// The user.
        user: UserId,
    },
    /// Removes a device of the caller's account.
    RemoveDevice {
        /// The device.
        device: DeviceId,
    },
    /// Deletes the caller's account with all its data.
    DeleteAccount,
    /// Replaces the caller's account identity (a device was lost or stolen).
    /// `signature` is by the new identity over [`registration_payload`] for
    /// this device's auth key. The account's other devices are removed; they
    /// must be linked again.
    ReplaceIdentity {
        /// The new account identity.
        identity: IdentityKey,
        /// Proof of the new identity, bound to the server name.
        signature: Signature,
    },
    /// Sends one envelope to each device of `recipient`.
    Send {
        /// The recipient user (the sender's own user for copies to its other devices).
        recipient: UserId,
        /// One envelope per recipient device.
        envelopes: Vec<(DeviceId, Envelope)>,
    },
    /// Acknowledges delivered envelopes, which the server may then delete.
    Ack {
        /// The envelopes.
        envelopes: Vec<EnvelopeId>,
    },
    /// Asks for a single-use permission to link a new device to this account.
    RequestLinkPermission,
    /// Opens a provisioning channel on an unauthenticated connection.
    OpenProvisioning,
    /// Sends a sealed linking message to a device waiting at `address`.
    SendProvisioning {
        /// The waiting device's address (from its out-of-band code).
        address: ProvisioningAddress,
        /// The sealed linking message.
        sealed: Vec<u8>,
    },
    /// Starts an upload of `size` bytes of ciphertext (the blob).
    UploadBegin {
        /// The declared kind, which sets the cap.
        kind: BlobKind,
        /// Ciphertext bytes that will follow.
        size: u64,
    },
    /// One chunk of an upload, at most [`CHUNK_LEN`] bytes, in order.
    UploadChunk {
        /// The upload.
        upload: UploadId,
        /// Offset of `data` in the blob.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Completes an upload.
    UploadFinish {
        /// The upload.
        upload: UploadId,
    },
    /// Reads up to [`CHUNK_LEN`] bytes of a blob from `offset`.
    Download {
        /// The blob.
        blob: BlobId,
        /// Where to start.
        offset: u64,
    },
    /// Registers the token the push hook uses to wake this device.
    RegisterPushToken {
        /// The platform's token.
        token: String,
    },
    /// Keep-alive.
    Ping,
}

impl Request {
    /// Checks the limits the types cannot express: one-time and PQ one-time
    /// prekeys per publish, envelopes per send (one per device), chunk sizes, ids per
    /// ack, token and sealed-message lengths. A server calls it on every
    /// request; the client never builds a request that fails it.
    ///
    /// # Errors
    /// A [`ProtocolError`] with [`ErrorCode::TooLarge`] or
    /// [`ErrorCode::BadRequest`].
    pub fn check_limits(&self) -> Result<(), ProtocolError> {
        let too_large = |what: &str, n: usize, max: usize| {
            Err(ProtocolError::new(
                ErrorCode::TooLarge,
                format!("{what}: {n} over {max}"),
            ))
        };
        match self {
            Request::PublishPreKeys { one_time, .. }
                if one_time.len() > MAX_ONE_TIME_PREKEYS_PER_REQUEST =>
            {
                too_large(
                    "one-time prekeys",
                    one_time.len(),
                    MAX_ONE_TIME_PREKEYS_PER_REQUEST,
                )
            }
            Request::PublishPreKeys { pq_one_time, .. }
                if pq_one_time.len() > MAX_PQ_ONE_TIME_PREKEYS_PER_REQUEST =>
            {
                too_large(
                    "PQ one-time prekeys",
                    pq_one_time.len(),
                    MAX_PQ_ONE_TIME_PREKEYS_PER_REQUEST,
                )
            }
            Request::Send { envelopes, .. } => {
                if envelopes.len() > MAX_DEVICES_PER_USER {
                    return too_large("envelopes", envelopes.len(), MAX_DEVICES_PER_USER);
                }
                let mut devices: Vec<DeviceId> = envelopes.iter().map(|(d, _)| *d).collect();
                devices.sort_unstable();
                devices.dedup();
                if devices.len() != envelopes.len() {
                    return Err(ProtocolError::new(
                        ErrorCode::BadRequest,
                        "two envelopes for one device",
                    ));
                }
                Ok(())
            }
            Request::FetchBundles { devices, .. } if devices.len() > MAX_DEVICES_PER_USER => {
                too_large("devices", devices.len(), MAX_DEVICES_PER_USER)
            }
            Request::Ack { envelopes } if envelopes.len() > MAX_ACK_IDS => {
                too_large("acknowledged ids", envelopes.len(), MAX_ACK_IDS)
            }
            Request::UploadChunk { data, .. } if data.len() > CHUNK_LEN => {
                too_large("chunk", data.len(), CHUNK_LEN)
            }
            Request::RegisterPushToken { token } if token.len() > MAX_PUSH_TOKEN_LEN => {
                too_large("push token", token.len(), MAX_PUSH_TOKEN_LEN)
            }
            Request::SendProvisioning { sealed, .. } if sealed.len() > MAX_SEALED_LINK_LEN => {
                too_large("link message", sealed.len(), MAX_SEALED_LINK_LEN)
            }
            _ => Ok(()),
        }
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// Done.
    Ok,
    /// The device id the server assigned.
    Registered {
        /// The device id.
        device: DeviceId,
    },
    /// Logged in.
    Authenticated {
        /// The server's clock.
        server_time: u64,
    },
    /// One bundle per device.
    Bundles(Vec<PreKeyBundle>),
    /// The user's device certificates.
    Devices(Vec<DeviceCertificate>),
    /// Every envelope was stored durably.
    Sent {
        /// Server time of acceptance.
        server_time: u64,
        /// The ids assigned, per device.
        ids: Vec<(DeviceId, EnvelopeId)>,
    },
    /// Nothing was sent: the device list differs from the server's.
    MismatchedDevices {
        /// Devices the sender has no envelope for.
        missing: Vec<DeviceId>,
        /// Envelopes for devices that do not exist (any more).
        extra: Vec<DeviceId>,
    },
    /// A linking permission.
    LinkPermission {
        /// The token.
        token: LinkToken,
        /// When it expires.
        expires_at: u64,
    },
    /// The provisioning address of this connection.
    Provisioning {
        /// The address.
        address: ProvisioningAddress,
    },
    /// An upload was started.
    UploadStarted {
        /// The upload.
        upload: UploadId,
    },
    /// An upload is complete.
    Uploaded {
        /// The blob.
        blob: BlobId,
    },
    /// A chunk of a blob.
    DownloadChunk {
        /// The blob's total size.
        total: u64,
        /// Where `data` starts.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Keep-alive answer.
    Pong,
}

/// Error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Malformed or invalid request.
    BadRequest,
    /// The request needs an authenticated connection, or authentication failed.
    Unauthenticated,
    /// Not allowed for this account or device.
    Forbidden,
    /// No such user, device, blob or upload.
    NotFound,
    /// The user id is taken, or the state conflicts.
    Conflict,
    /// Too many requests.
    RateLimited,
    /// Over a size cap.
    TooLarge,
    /// A per-account or server limit is reached (devices, uploads).
    LimitReached,
    /// A token, permission or challenge has expired or was used.
    Expired,
    /// A protocol version the server does not speak.
    UnsupportedVersion,
    /// The server failed.
    Internal,
}

/// A failed answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Error)]
#[error("{code:?}: {message}")]
pub struct ProtocolError {
    /// The code.
    pub code: ErrorCode,
    /// Human-readable detail (at most [`MAX_ERROR_TEXT`] bytes).
    pub message: String,
}

impl ProtocolError {
    /// An error with a message cut to [`MAX_ERROR_TEXT`] bytes.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_ERROR_TEXT {
            let mut cut = MAX_ERROR_TEXT;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Self { code, message }
    }
}

/// An envelope delivered to a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The server's id for it (ack with it).
    pub id: EnvelopeId,
    /// The sending device, as authenticated by the server.
    pub sender: DeviceAddress,
    /// When the server accepted it.
    pub server_time: u64,
    /// The envelope.
    pub envelope: Envelope,
}

/// Messages the server sends on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Push {
    /// Sent once per connection before anything else: the login challenge.
    Challenge {
        /// The single-use nonce.
        nonce: Nonce,
    },
    /// An envelope for this device.
    Deliver(Delivery),
    /// Every queued envelope was delivered; new ones follow live.
    QueueEmpty,
    /// Fewer one-time prekeys, or fewer PQ one-time prekeys, than the
    /// server's threshold remain; both counts are given so the client can
    /// replenish the kind that runs low.
    PreKeysLow {
        /// How many one-time prekeys remain.
        remaining: u32,
        /// How many PQ one-time prekeys remain.
        pq_remaining: u32,
    },
    /// The sealed linking message, on a provisioning connection.
    Provisioning {
        /// The sealed message.
        sealed: Vec<u8>,
    },
    /// Devices of a user this device talks to changed.
    DevicesChanged {
        /// The user.
        user: UserId,
    },
}

/// What a client sends: a request and its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientFrame {
    /// Echoed by the response.
    pub id: u32,
    /// The request.
    pub request: Request,
}

/// What the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ServerFrame {
    /// The answer to request `id`.
    Response {
        /// The request id.
        id: u32,
        /// The outcome.
        result: Result<Response, ProtocolError>,
    },
    /// An unsolicited message.
    Push(Push),
}

fn to_payload<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![PROTOCOL_VERSION];
    // Serialising into a Vec cannot fail for these types.
    if let Ok(body) = postcard::to_allocvec(value) {
        out.extend_from_slice(&body);
    }
    out
}

fn from_payload<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, ProtocolDecodeError> {
    let (&version, body) = payload.split_first().ok_or(DecodeError::Truncated)?;
    if version != PROTOCOL_VERSION {
        return Err(ProtocolDecodeError::Version(version));
    }
    match postcard::take_from_bytes(body) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(DecodeError::TrailingBytes(rest.len()).into()),
        Err(_) => Err(DecodeError::Truncated.into()),
    }
}

impl ClientFrame {
    /// The frame payload.
    pub fn to_payload(&self) -> Vec<u8> {
        to_payload(self)
    }

    /// Decodes a frame payload.
    ///
    /// # Errors
    /// [`ProtocolDecodeError`].
    pub fn from_payload(payload: &[u8]) -> Result<Self, ProtocolDecodeError> {
        from_payload(payload)
    }
}

impl ServerFrame {
    /// The frame payload.
    pub fn to_payload(&self) -> Vec<u8> {
        to_payload(self)
    }

    /// Decodes a frame payload.
    ///
    /// # Errors
    /// [`ProtocolDecodeError`].
    pub fn from_payload(payload: &[u8]) -> Result<Self, ProtocolDecodeError> {
        from_payload(payload)
    }
}

/// Why a server name is not in canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid server name")]
pub struct InvalidServerName;

/// The canonical form of the server name a client dialed: a lowercase ASCII
/// DNS name without a trailing dot, or an IP literal (IPv6 without brackets),
/// and no port.
///
/// # Errors
/// [`InvalidServerName`] for anything else.
pub fn canonical_server_name(name: &str) -> Result<String, InvalidServerName> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    let unbracketed = trimmed
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(trimmed);
    if let Ok(ip) = unbracketed.parse::<std::net::IpAddr>() {
        return Ok(ip.to_string());
    }
    let lower = trimmed.to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if lower.is_empty() || lower.len() > 253 || !lower.split('.').all(label_ok) {
        return Err(InvalidServerName);
    }
    Ok(lower)
}

fn with_server_name(first: &[u8], server_name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(first.len() + 1 + server_name.len());
    out.extend_from_slice(first);
    out.push(server_name.len().min(255) as u8);
    out.extend_from_slice(&server_name.as_bytes()[..server_name.len().min(255)]);
    out
}

/// What a device signs to log in: `nonce || len(server name) || server name`.
pub fn auth_payload(nonce: &Nonce, server_name: &str) -> Vec<u8> {
    with_server_name(&nonce.0, server_name)
}

/// What the account identity signs to register:
/// `len(user) || user || device auth key || len(server name) || server name`.
pub fn registration_payload(user: &UserId, auth_key: &DeviceAuthKey, server_name: &str) -> Vec<u8> {
    let mut first = Vec::with_capacity(300);
    first.push(user.as_str().len() as u8);
    first.extend_from_slice(user.as_str().as_bytes());
    first.extend_from_slice(&auth_key.to_bytes());
    with_server_name(&first, server_name)
}

/// Answers a login challenge.
pub fn sign_auth(key: &DeviceAuthKeyPair, nonce: &Nonce, server_name: &str) -> Signature {
    Signature(key.sign(
        SignatureLabel::ServerAuth,
        &auth_payload(nonce, server_name),
    ))
}

/// Checks a login answer (server side).
///
/// # Errors
/// [`KeyError::BadSignature`].
pub fn verify_auth(
    key: &DeviceAuthKey,
    nonce: &Nonce,
    server_name: &str,
    signature: &Signature,
) -> Result<(), KeyError> {
    key.verify(
        SignatureLabel::ServerAuth,
        &auth_payload(nonce, server_name),
        &signature.0,
    )
}

/// Signs a registration with the account identity.
pub fn sign_registration(
    identity: &IdentityKeyPair,
    user: &UserId,
    auth_key: &DeviceAuthKey,
    server_name: &str,
) -> Signature {
    Signature(identity.sign(
        SignatureLabel::Registration,
        &registration_payload(user, auth_key, server_name),
    ))
}

/// Checks a registration (server side).
///
/// # Errors
/// [`KeyError::BadSignature`].
pub fn verify_registration(
    identity: &IdentityKey,
    user: &UserId,
    auth_key: &DeviceAuthKey,
    server_name: &str,
    signature: &Signature,
) -> Result<(), KeyError> {
    identity.verify(
        SignatureLabel::Registration,
        &registration_payload(user, auth_key, server_name),
        &signature.0,
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand_chacha::ChaCha20Rng;
    use rand_chacha::rand_core::SeedableRng;

    use super::*;
    use crate::keys::{
        PqPreKeyKind, PqPreKeySecret, PreKeyId, PreKeyKind, PreKeySettings, PreKeyState,
        X25519PublicKey,
    };
    use crate::secret::Secret32;
    use crate::session::SessionMessage;

    struct Sample {
        user: UserId,
        address: DeviceAddress,
        identity: IdentityKeyPair,
        auth: DeviceAuthKeyPair,
        cert: DeviceCertificate,
        signed: SignedPreKey,
        last_resort: SignedPreKey,
        one_time: OneTimePreKey,
        pq_last_resort: SignedPqPreKey,
        pq_one_time: SignedPqPreKey,
        envelope: Envelope,
        bytes: Vec<u8>,
        rng: ChaCha20Rng,
    }

    fn sample(seed: u64) -> Sample {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let user = UserId::new(format!("user-{seed}")).unwrap();
        let address = DeviceAddress::new(user.clone(), DeviceId(seed as u32 % 7));
        let identity = IdentityKeyPair::generate(&mut rng);
        let auth = DeviceAuthKeyPair::generate(&mut rng);
        let cert = identity.certify_device(&user, address.device, &auth.public_key(), seed);
        let prekeys = PreKeyState::new(
            &mut rng,
            &identity,
            &address,
            PreKeySettings::default(),
            seed,
        );
        let one_time = OneTimePreKey {
            id: PreKeyId(seed as u32),
            key: X25519PublicKey::from_secret(&Secret32::random(&mut rng)),
        };
        let pq = |rng: &mut ChaCha20Rng, kind, id| {
            PqPreKeySecret::generate(rng, &identity, &address, kind, PreKeyId(id), seed).public
        };
        let pq_last_resort = pq(&mut rng, PqPreKeyKind::LastResort, 1);
        let pq_one_time = pq(&mut rng, PqPreKeyKind::OneTime, 2);
        let len = (seed % 300) as usize;
        let mut bytes = vec![0u8; len];
        rng.fill_bytes(&mut bytes);
        let mut message = vec![SessionMessage::TAG_NORMAL];
        message.extend_from_slice(&bytes);
        let envelope = Envelope::new(address.clone(), message).unwrap();
        Sample {
            user,
            address,
            identity,
            auth,
            cert,
            signed: prekeys.current(PreKeyKind::Signed).unwrap().clone(),
            last_resort: prekeys.current(PreKeyKind::LastResort).unwrap().clone(),
            one_time,
            pq_last_resort,
            pq_one_time,
            envelope,
            bytes,
            rng,
        }
    }

    fn requests(s: &mut Sample) -> Vec<Request> {
        let sig = sign_auth(&s.auth, &Nonce::random(&mut s.rng), "example.org");
        vec![
            Request::RegisterAccount {
                user: s.user.clone(),
                identity: s.identity.public_key(),
                auth_key: s.auth.public_key(),
                signature: sign_registration(
                    &s.identity,
                    &s.user,
                    &s.auth.public_key(),
                    "example.org",
                ),
            },
            Request::RegisterLinkedDevice {
                user: s.user.clone(),
                auth_key: s.auth.public_key(),
                permission: LinkToken::random(&mut s.rng),
            },
            Request::Authenticate {
                device: s.address.clone(),
                signature: sig,
            },
            Request::PublishCertificate {
                certificate: s.cert.clone(),
            },
            Request::PublishPreKeys {
                signed: Some(s.signed.clone()),
                last_resort: Some(s.last_resort.clone()),
                one_time: vec![s.one_time; (s.bytes.len() % 5) + 1],
                pq_last_resort: Some(s.pq_last_resort.clone()),
                pq_one_time: vec![s.pq_one_time.clone(); (s.bytes.len() % 3) + 1],
            },
            Request::PublishPreKeys {
                signed: None,
                last_resort: None,
                one_time: Vec::new(),
                pq_last_resort: None,
                pq_one_time: Vec::new(),
            },
            // The largest publish the limits allow still fits a frame.
            Request::PublishPreKeys {
                signed: Some(s.signed.clone()),
                last_resort: Some(s.last_resort.clone()),
                one_time: vec![s.one_time; MAX_ONE_TIME_PREKEYS_PER_REQUEST],
                pq_last_resort: Some(s.pq_last_resort.clone()),
                pq_one_time: vec![s.pq_one_time.clone(); MAX_PQ_ONE_TIME_PREKEYS_PER_REQUEST],
            },
            Request::FetchBundles {
                user: s.user.clone(),
                devices: Vec::new(),
            },
            Request::FetchBundles {
                user: s.user.clone(),
                devices: vec![DeviceId(2), DeviceId(5)],
            },
            Request::ListDevices {
                user: s.user.clone(),
            },
            Request::RemoveDevice {
                device: s.address.device,
            },
            Request::DeleteAccount,
            Request::ReplaceIdentity {
                identity: s.identity.public_key(),
                signature: sign_registration(
                    &s.identity,
                    &s.user,
                    &s.auth.public_key(),
                    "x.example",
                ),
            },
            Request::Send {
                recipient: s.user.clone(),
                envelopes: vec![
                    (DeviceId(1), s.envelope.clone()),
                    (DeviceId(2), s.envelope.clone()),
                ],
            },
            Request::Ack {
                envelopes: vec![EnvelopeId::random(&mut s.rng); 3],
            },
            Request::RequestLinkPermission,
            Request::OpenProvisioning,
            Request::SendProvisioning {
                address: ProvisioningAddress::random(&mut s.rng),
                sealed: s.bytes.clone(),
            },
            Request::UploadBegin {
                kind: BlobKind::Image,
                size: s.bytes.len() as u64,
            },
            Request::UploadChunk {
                upload: UploadId::random(&mut s.rng),
                offset: 7,
                data: s.bytes.clone(),
            },
            Request::UploadFinish {
                upload: UploadId::random(&mut s.rng),
            },
            Request::Download {
                blob: BlobId::random(&mut s.rng),
                offset: 1 << 40,
            },
            Request::RegisterPushToken {
                token: "tok".repeat(s.bytes.len() % 9),
            },
            Request::Ping,
        ]
    }

    fn server_frames(s: &mut Sample) -> Vec<ServerFrame> {
        let bundle = PreKeyBundle {
            identity: s.identity.public_key(),
            certificate: s.cert.clone(),
            signed_prekey: s.signed.clone(),
            last_resort_prekey: s.last_resort.clone(),
            one_time_prekey: Some(s.one_time),
            pq_prekey: Some(s.pq_one_time.clone()),
        };
        let responses = vec![
            Ok(Response::Ok),
            Ok(Response::Registered {
                device: DeviceId(4),
            }),
            Ok(Response::Authenticated { server_time: 99 }),
            Ok(Response::Bundles(vec![
                bundle.clone(),
                PreKeyBundle {
                    one_time_prekey: None,
                    pq_prekey: Some(s.pq_last_resort.clone()),
                    ..bundle.clone()
                },
                PreKeyBundle {
                    pq_prekey: None,
                    ..bundle
                },
            ])),
            Ok(Response::Devices(vec![s.cert.clone()])),
            Ok(Response::Sent {
                server_time: 5,
                ids: vec![(DeviceId(1), EnvelopeId::random(&mut s.rng))],
            }),
            Ok(Response::MismatchedDevices {
                missing: vec![DeviceId(2)],
                extra: vec![DeviceId(9)],
            }),
            Ok(Response::LinkPermission {
                token: LinkToken::random(&mut s.rng),
                expires_at: 3,
            }),
            Ok(Response::Provisioning {
                address: ProvisioningAddress::random(&mut s.rng),
            }),
            Ok(Response::UploadStarted {
                upload: UploadId::random(&mut s.rng),
            }),
            Ok(Response::Uploaded {
                blob: BlobId::random(&mut s.rng),
            }),
            Ok(Response::DownloadChunk {
                total: 10,
                offset: 0,
                data: s.bytes.clone(),
            }),
            Ok(Response::Pong),
            Err(ProtocolError::new(ErrorCode::Conflict, "taken")),
            Err(ProtocolError::new(ErrorCode::Internal, "é".repeat(300))),
        ];
        let pushes = vec![
            Push::Challenge {
                nonce: Nonce::random(&mut s.rng),
            },
            Push::Deliver(Delivery {
                id: EnvelopeId::random(&mut s.rng),
                sender: s.address.clone(),
                server_time: 1,
                envelope: s.envelope.clone(),
            }),
            Push::QueueEmpty,
            Push::PreKeysLow {
                remaining: 3,
                pq_remaining: 70,
            },
            Push::Provisioning {
                sealed: s.bytes.clone(),
            },
            Push::DevicesChanged {
                user: s.user.clone(),
            },
        ];
        responses
            .into_iter()
            .enumerate()
            .map(|(i, result)| ServerFrame::Response {
                id: i as u32,
                result,
            })
            .chain(pushes.into_iter().map(ServerFrame::Push))
            .collect()
    }

    proptest! {
        /// Every request, response and push round-trips through its payload encoding.
        #[test]
        fn every_message_round_trips(seed in any::<u64>()) {
            let mut s = sample(seed);
            for (i, request) in requests(&mut s).into_iter().enumerate() {
                let frame = ClientFrame { id: i as u32 ^ seed as u32, request };
                let payload = frame.to_payload();
                prop_assert_eq!(payload[0], PROTOCOL_VERSION);
                prop_assert!(payload.len() <= MAX_FRAME_LEN);
                prop_assert_eq!(ClientFrame::from_payload(&payload).unwrap(), frame);
            }
            for frame in server_frames(&mut s) {
                let payload = frame.to_payload();
                prop_assert_eq!(ServerFrame::from_payload(&payload).unwrap(), frame);
            }
        }

        /// Any byte string decodes to a message or a typed error, never a panic.
        #[test]
        fn arbitrary_payloads_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = ClientFrame::from_payload(&bytes);
            let _ = ServerFrame::from_payload(&bytes);
            let mut versioned = vec![PROTOCOL_VERSION];
            versioned.extend_from_slice(&bytes);
            let _ = ClientFrame::from_payload(&versioned);
            let _ = ServerFrame::from_payload(&versioned);
        }

        /// A valid payload with any byte changed decodes or fails cleanly, and
        /// a truncated or extended one never decodes to the same message.
        #[test]
        fn mutated_payloads_fail_cleanly(seed in any::<u64>(), at in any::<usize>(), x in 1..=255u8) {
            let mut s = sample(seed);
            for request in requests(&mut s) {
                let frame = ClientFrame { id: 1, request };
                let payload = frame.to_payload();
                let mut m = payload.clone();
                let i = at % m.len();
                m[i] ^= x;
                let _ = ClientFrame::from_payload(&m);
                prop_assert!(ClientFrame::from_payload(&payload[..payload.len() - 1]).ok() != Some(frame.clone()));
                let mut longer = payload.clone();
                longer.push(0);
                prop_assert!(ClientFrame::from_payload(&longer).is_err());
            }
        }
    }

    #[test]
    fn envelopes_inside_messages_are_validated() {
        let s = sample(2);
        let frame = ClientFrame {
            id: 1,
            request: Request::Send {
                recipient: s.user.clone(),
                envelopes: vec![(DeviceId(1), s.envelope.clone())],
            },
        };
        let payload = frame.to_payload();
        // The envelope's version byte sits right after the request tag, id, user and device.
        let at = payload
            .iter()
            .position(|&b| b == crate::wire::envelope::ENVELOPE_VERSION)
            .unwrap();
        let mut bad = payload.clone();
        // Flip the kind byte (Normal -> Initial) of the envelope: decoding must fail.
        let kind_at = 1 + 1 + 1 + 1 + s.user.as_str().len() + 1 + 1 + 1;
        assert_eq!(
            bad[kind_at - 1],
            crate::wire::envelope::ENVELOPE_VERSION,
            "layout at {at}"
        );
        bad[kind_at] = 0;
        assert!(ClientFrame::from_payload(&bad).is_err());
        assert_eq!(ClientFrame::from_payload(&payload).unwrap(), frame);
    }

    #[test]
    fn limits_the_types_cannot_express_are_checked() {
        let mut s = sample(3);
        for request in requests(&mut s) {
            assert_eq!(request.check_limits(), Ok(()), "{request:?}");
        }
        let over = [
            Request::PublishPreKeys {
                signed: None,
                last_resort: None,
                one_time: vec![s.one_time; 101],
                pq_last_resort: None,
                pq_one_time: Vec::new(),
            },
            Request::PublishPreKeys {
                signed: None,
                last_resort: None,
                one_time: Vec::new(),
                pq_last_resort: None,
                pq_one_time: vec![s.pq_one_time.clone(); MAX_PQ_ONE_TIME_PREKEYS_PER_REQUEST + 1],
            },
            Request::Send {
                recipient: s.user.clone(),
                envelopes: (0..7).map(|d| (DeviceId(d), s.envelope.clone())).collect(),
            },
            Request::Send {
                recipient: s.user.clone(),
                envelopes: vec![
                    (DeviceId(1), s.envelope.clone()),
                    (DeviceId(1), s.envelope.clone()),
                ],
            },
            Request::FetchBundles {
                user: s.user.clone(),
                devices: vec![DeviceId(1); 7],
            },
            Request::Ack {
                envelopes: vec![EnvelopeId([0; 16]); MAX_ACK_IDS + 1],
            },
            Request::UploadChunk {
                upload: UploadId([0; 16]),
                offset: 0,
                data: vec![0; CHUNK_LEN + 1],
            },
            Request::RegisterPushToken {
                token: "t".repeat(MAX_PUSH_TOKEN_LEN + 1),
            },
            Request::SendProvisioning {
                address: ProvisioningAddress([0; 16]),
                sealed: vec![0; MAX_SEALED_LINK_LEN + 1],
            },
        ];
        for request in over {
            assert!(request.check_limits().is_err(), "{request:?}");
        }
    }

    #[test]
    fn versions_and_signatures_are_checked() {
        let mut s = sample(1);
        let payload = ClientFrame {
            id: 1,
            request: Request::Ping,
        }
        .to_payload();
        for old_or_new in [1, PROTOCOL_VERSION + 1] {
            let mut other = payload.clone();
            other[0] = old_or_new;
            assert_eq!(
                ClientFrame::from_payload(&other),
                Err(ProtocolDecodeError::Version(old_or_new))
            );
        }
        assert!(ClientFrame::from_payload(&[]).is_err());

        let nonce = Nonce::random(&mut s.rng);
        let sig = sign_auth(&s.auth, &nonce, "chat.example.org");
        assert!(verify_auth(&s.auth.public_key(), &nonce, "chat.example.org", &sig).is_ok());
        assert!(verify_auth(&s.auth.public_key(), &nonce, "evil.example.org", &sig).is_err());
        assert!(
            verify_auth(
                &s.auth.public_key(),
                &Nonce::random(&mut s.rng),
                "chat.example.org",
                &sig
            )
            .is_err()
        );
        let reg = sign_registration(&s.identity, &s.user, &s.auth.public_key(), "a.example");
        let id = s.identity.public_key();
        assert!(verify_registration(&id, &s.user, &s.auth.public_key(), "a.example", &reg).is_ok());
        assert!(
            verify_registration(&id, &s.user, &s.auth.public_key(), "b.example", &reg).is_err()
        );
        // A login answer is no registration and vice versa.
        assert!(
            verify_registration(&id, &s.user, &s.auth.public_key(), "a.example", &sig).is_err()
        );
    }

    #[test]
    fn server_names_are_canonical() {
        assert_eq!(
            canonical_server_name("Chat.Example.ORG.").unwrap(),
            "chat.example.org"
        );
        assert_eq!(canonical_server_name("127.0.0.1").unwrap(), "127.0.0.1");
        assert_eq!(canonical_server_name("[::1]").unwrap(), "::1");
        assert_eq!(canonical_server_name("0:0:0:0:0:0:0:1").unwrap(), "::1");
        for bad in ["", "a..b", "host:443", "-a.b", "a b", "ümlaut.de", "a_b.c"] {
            assert!(canonical_server_name(bad).is_err(), "{bad}");
        }
    }
}
