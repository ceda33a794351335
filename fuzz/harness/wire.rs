//! Targets for the byte formats between client and server: the frame
//! decoder, the two protocol frame enums, the end-to-end envelope and the
//! padded content inside it.
//!
//! Every decoder must return a value or a typed error for any input. What
//! it returns must survive re-encoding: decoding the re-encoded bytes gives
//! the same value, and re-encoding that gives the same bytes again.

use hush::SessionManager;
use hush::keys::{DeviceAddress, DeviceAuthKeyPair, DeviceCertificate, DeviceId, IdentityKeyPair};
use hush::keys::{OneTimePreKey, UserId};
use hush::store::{MemoryStore, StorageKey};
use hush::wire::content::{Body, Content, MessageId, ReceiptKind};
use hush::wire::envelope::{Envelope, MAX_ENVELOPE_LEN};
use hush::wire::frame::{FrameDecoder, FrameError, LENGTH_PREFIX, encode_frame};
use hush::wire::padding;
use hush::wire::protocol::{
    BlobId, BlobKind, ClientFrame, Delivery, EnvelopeId, ErrorCode, LinkToken, Nonce,
    ProtocolError, ProvisioningAddress, Push, Request, Response, ServerFrame, UploadId, sign_auth,
    sign_registration,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

use super::{NOW, Seed, attachment, fixture};

// ---------------------------------------------------------------------------
// The frame decoder.

/// How `frame_decoder` reads its input:
/// `cap (u16 BE) || flags || cuts || stream`, where the low four bits of
/// `flags` count the cut bytes. The stream is pushed in pieces of the cut
/// lengths, in turn (a cut of 0 pushes nothing); with no cut or only zero
/// cuts, in one piece.
pub(crate) mod frame_input {
    /// Flag: take frames out only after the whole stream was pushed
    /// (otherwise after every push).
    pub(crate) const LAZY: u8 = 0x80;
    /// Mask of the number of cut bytes in the flags.
    pub(crate) const CUTS: u8 = 0x0f;

    /// The input for a cap, the flags' `LAZY` bit, the cuts and the stream.
    pub(crate) fn encode(cap: u16, lazy: bool, cuts: &[u8], stream: &[u8]) -> Vec<u8> {
        assert!(cuts.len() <= usize::from(CUTS), "at most 15 cuts");
        let flags = cuts.len() as u8 | if lazy { LAZY } else { 0 };
        let mut out = cap.to_be_bytes().to_vec();
        out.push(flags);
        out.extend_from_slice(cuts);
        out.extend_from_slice(stream);
        out
    }
}

/// How a byte stream was split into frames.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Split {
    /// The payloads, in order.
    pub(crate) frames: Vec<Vec<u8>>,
    /// Bytes left over (an incomplete frame), or the first error.
    pub(crate) end: Result<usize, FrameError>,
}

/// What the stream means, read directly from the format: length prefix,
/// cap check, payload; an incomplete frame at the end is left over.
fn split_by_reference(stream: &[u8], max: usize) -> Split {
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        let Some((prefix, body)) = rest.split_first_chunk::<LENGTH_PREFIX>() else {
            return Split {
                frames,
                end: Ok(rest.len()),
            };
        };
        let len = u32::from_be_bytes(*prefix);
        if u64::from(len) > max as u64 {
            return Split {
                frames,
                end: Err(FrameError::TooLong {
                    len: u64::from(len),
                    max,
                }),
            };
        }
        let Some((payload, after)) = body.split_at_checked(len as usize) else {
            return Split {
                frames,
                end: Ok(rest.len()),
            };
        };
        frames.push(payload.to_vec());
        rest = after;
    }
}

/// Takes every complete frame out of the decoder.
fn drain(decoder: &mut FrameDecoder, frames: &mut Vec<Vec<u8>>) -> Result<(), FrameError> {
    while let Some(frame) = decoder.next_frame()? {
        assert!(
            frame.len() <= decoder.max(),
            "a frame over the cap came out"
        );
        frames.push(frame);
    }
    Ok(())
}

/// After an error the decoder refuses everything.
fn broken(decoder: &mut FrameDecoder, frames: Vec<Vec<u8>>, error: FrameError) -> Split {
    assert_eq!(decoder.push(b""), Err(FrameError::Poisoned));
    assert_eq!(decoder.next_frame(), Err(FrameError::Poisoned));
    Split {
        frames,
        end: Err(error),
    }
}

/// Pushes `stream` into a decoder in pieces of the given lengths (the last
/// piece is whatever remains), taking frames out after every push or, if
/// `lazy`, once at the end.
fn split_by_decoder(
    stream: &[u8],
    max: usize,
    pieces: impl IntoIterator<Item = usize>,
    lazy: bool,
) -> Split {
    let mut decoder = FrameDecoder::new(max);
    let mut frames = Vec::new();
    let mut rest = stream;
    for piece in pieces {
        let (now, later) = rest.split_at(piece.min(rest.len()));
        rest = later;
        if let Err(e) = decoder.push(now) {
            return broken(&mut decoder, frames, e);
        }
        if !lazy {
            if let Err(e) = drain(&mut decoder, &mut frames) {
                return broken(&mut decoder, frames, e);
            }
            // Only an incomplete frame is held: its prefix and less than its payload.
            assert!(
                decoder.buffered() < LENGTH_PREFIX + max,
                "{} bytes buffered under a cap of {max}",
                decoder.buffered()
            );
        }
        if rest.is_empty() {
            break;
        }
    }
    assert!(rest.is_empty(), "the pieces did not cover the stream");
    if let Err(e) = drain(&mut decoder, &mut frames) {
        return broken(&mut decoder, frames, e);
    }
    Split {
        frames,
        end: Ok(decoder.buffered()),
    }
}

/// Feeds a byte stream to [`FrameDecoder`] cut where the input says (see
/// [`frame_input`]), in one piece and one byte at a time: every way must
/// give the frames and the error the format defines, and never panic.
pub(crate) fn frame_decoder(data: &[u8]) {
    let _ = split_frames(data);
}

/// [`frame_decoder`], returning the split all ways agreed on (`None` for an
/// input too short to name a cap and its cuts).
pub(crate) fn split_frames(data: &[u8]) -> Option<Split> {
    let ([hi, lo, flags], rest) = data.split_first_chunk::<3>()?;
    let max = usize::from(u16::from_be_bytes([*hi, *lo]));
    let count = usize::from(flags & frame_input::CUTS);
    let (cuts, stream) = rest.split_at_checked(count)?;
    let expected = split_by_reference(stream, max);

    let whole = [stream.len()];
    let pieces: Vec<usize> = if cuts.iter().all(|&c| c == 0) {
        whole.to_vec()
    } else {
        // Each round of the cuts takes at least one byte, so this is enough.
        let rounds = stream.len() + 1;
        cuts.iter()
            .map(|&c| usize::from(c))
            .cycle()
            .take(rounds * cuts.len())
            .collect()
    };
    let lazy = flags & frame_input::LAZY != 0;
    assert_eq!(
        split_by_decoder(stream, max, pieces, lazy),
        expected,
        "pushed in the input's pieces"
    );
    assert_eq!(
        split_by_decoder(stream, max, whole, false),
        expected,
        "pushed at once"
    );
    assert_eq!(
        split_by_decoder(stream, max, std::iter::repeat_n(1, stream.len()), false),
        expected,
        "pushed byte by byte"
    );
    Some(expected)
}

// ---------------------------------------------------------------------------
// Protocol frames, envelopes, content.

/// An envelope accepted inside a protocol message is accepted on its own.
fn envelope_stands_alone(envelope: &Envelope) {
    let bytes = envelope.to_bytes();
    assert_eq!(
        Envelope::from_bytes(&bytes).as_ref(),
        Ok(envelope),
        "an envelope inside a message does not decode on its own"
    );
}

/// Decodes a client frame payload; one that decodes must re-encode to a
/// payload that decodes to the same frame and re-encodes to itself, and
/// that is refused with a byte more.
pub(crate) fn client_frame(data: &[u8]) {
    let Ok(frame) = ClientFrame::from_payload(data) else {
        return;
    };
    let payload = frame.to_payload();
    let again = ClientFrame::from_payload(&payload).expect("a re-encoded client frame decodes");
    assert_eq!(again, frame, "a client frame changed through re-encoding");
    assert_eq!(
        again.to_payload(),
        payload,
        "client frame encoding is unstable"
    );
    let mut longer = payload;
    longer.push(0);
    assert!(
        ClientFrame::from_payload(&longer).is_err(),
        "a client frame with a trailing byte decoded"
    );
    if let Request::Send { envelopes, .. } = &frame.request {
        for (_, envelope) in envelopes {
            envelope_stands_alone(envelope);
        }
    }
}

/// As [`client_frame`], for what the server sends.
pub(crate) fn server_frame(data: &[u8]) {
    let Ok(frame) = ServerFrame::from_payload(data) else {
        return;
    };
    let payload = frame.to_payload();
    let again = ServerFrame::from_payload(&payload).expect("a re-encoded server frame decodes");
    assert_eq!(again, frame, "a server frame changed through re-encoding");
    assert_eq!(
        again.to_payload(),
        payload,
        "server frame encoding is unstable"
    );
    let mut longer = payload;
    longer.push(0);
    assert!(
        ServerFrame::from_payload(&longer).is_err(),
        "a server frame with a trailing byte decoded"
    );
    if let ServerFrame::Push(Push::Deliver(delivery)) = &frame {
        envelope_stands_alone(&delivery.envelope);
    }
}

/// Decodes an envelope; one that decodes must be within its cap, survive
/// re-encoding, and be what [`Envelope::new`] makes of its sender and message.
pub(crate) fn envelope(data: &[u8]) {
    let Ok(envelope) = Envelope::from_bytes(data) else {
        return;
    };
    let bytes = envelope.to_bytes();
    assert!(bytes.len() <= MAX_ENVELOPE_LEN, "an envelope over its cap");
    assert_eq!(
        Envelope::from_bytes(&bytes).as_ref(),
        Ok(&envelope),
        "an envelope changed through re-encoding"
    );
    assert_eq!(
        Envelope::new(envelope.sender().clone(), envelope.message().to_vec()).as_ref(),
        Ok(&envelope),
        "a decoded envelope is not what Envelope::new makes"
    );
}

/// Unpads and decodes content; content that decodes must encode again (to
/// a padded size that is a bucket) and decode to the same content. An
/// attachment pointer in it must be one the decryptor accepts.
pub(crate) fn content(data: &[u8]) {
    let Ok(content) = Content::from_padded(data) else {
        return;
    };
    let padded = content.to_padded().expect("decoded content encodes");
    let unpadded = padding::unpad(&padded).expect("fresh padding is removable");
    assert_eq!(
        padded.len(),
        padding::padded_len(unpadded.len()),
        "content padded off its bucket"
    );
    let again = Content::from_padded(&padded).expect("re-encoded content decodes");
    assert_eq!(again, content, "content changed through re-encoding");
    assert_eq!(
        &again.to_padded().expect("decoded content encodes")[..],
        &padded[..],
        "content encoding is unstable"
    );
    let inner = match &content.body {
        Body::SentSync { content, .. } => &content.body,
        body => body,
    };
    if let Body::Attachment { pointer, .. } = inner {
        attachment::pointer_is_usable(pointer);
    }
}

// ---------------------------------------------------------------------------
// Seeds: a valid encoding of every variant, built from the public API, then
// truncations and bit flips of some of them.

/// The server name the seeds sign for.
const SERVER: &str = "chat.example.org";

/// Keys, certificates and prekeys of a device "dora", and envelopes between
/// the fixture's devices.
struct Material {
    user: UserId,
    address: DeviceAddress,
    identity: IdentityKeyPair,
    auth: DeviceAuthKeyPair,
    certificate: DeviceCertificate,
    bundle: hush::PreKeyBundle,
    one_time: Vec<OneTimePreKey>,
    pq_one_time: Vec<hush::keys::SignedPqPreKey>,
    initial: Envelope,
    normal: Envelope,
}

fn material() -> Material {
    let fx = fixture();
    let mut rng = ChaCha20Rng::from_seed([0x3b; 32]);
    let identity_seed = [0x1d; 32];
    let auth_seed = [0x2e; 32];
    let user = UserId::new("dora").expect("valid user id");
    let mut dora = SessionManager::create(
        MemoryStore::new(),
        &StorageKey::from_bytes([0x4f; 32]),
        IdentityKeyPair::from_seed_bytes(&identity_seed),
        DeviceAuthKeyPair::from_seed_bytes(&auth_seed),
        user.clone(),
        DeviceId(2),
        Default::default(),
        &mut rng,
        NOW,
    )
    .expect("create device");
    let one_time = dora
        .generate_one_time_prekeys(&mut rng, 2)
        .expect("one-time prekeys");
    let pq_one_time = dora
        .generate_pq_one_time_prekeys(&mut rng, 1, NOW)
        .expect("PQ one-time prekeys");
    let bundle = hush::PreKeyBundle {
        one_time_prekey: one_time.first().copied(),
        ..dora.bundle().expect("bundle")
    };
    let m = &fx.messages;
    Material {
        address: dora.address().clone(),
        user,
        identity: IdentityKeyPair::from_seed_bytes(&identity_seed),
        auth: DeviceAuthKeyPair::from_seed_bytes(&auth_seed),
        certificate: dora.certificate().clone(),
        bundle,
        one_time,
        pq_one_time,
        initial: Envelope::new(fx.alice.clone(), m.alice_initial.clone())
            .expect("an initial message"),
        normal: Envelope::new(fx.alice.clone(), m.alice_next.clone()).expect("a normal message"),
    }
}

/// One client frame of every request variant, named, in the order of the
/// variants (the frame ids are their positions, all below 128).
pub(crate) fn client_frames() -> Vec<(&'static str, ClientFrame)> {
    let m = material();
    let alice = UserId::new("alice").expect("valid user id");
    let requests = vec![
        (
            "register-account",
            Request::RegisterAccount {
                user: m.user.clone(),
                identity: m.identity.public_key(),
                auth_key: m.auth.public_key(),
                signature: sign_registration(&m.identity, &m.user, &m.auth.public_key(), SERVER),
            },
        ),
        (
            "register-linked-device",
            Request::RegisterLinkedDevice {
                user: m.user.clone(),
                auth_key: m.auth.public_key(),
                permission: LinkToken([0x4c; 32]),
            },
        ),
        (
            "authenticate",
            Request::Authenticate {
                device: m.address.clone(),
                signature: sign_auth(&m.auth, &Nonce([0x6e; 32]), SERVER),
            },
        ),
        (
            "publish-certificate",
            Request::PublishCertificate {
                certificate: m.certificate.clone(),
            },
        ),
        (
            "publish-prekeys",
            Request::PublishPreKeys {
                signed: Some(m.bundle.signed_prekey.clone()),
                last_resort: Some(m.bundle.last_resort_prekey.clone()),
                one_time: m.one_time.clone(),
                pq_last_resort: m.bundle.pq_prekey.clone(),
                pq_one_time: m.pq_one_time.clone(),
            },
        ),
        (
            "fetch-bundles",
            Request::FetchBundles {
                user: alice.clone(),
                devices: vec![DeviceId(1), DeviceId(2)],
            },
        ),
        (
            "replace-identity",
            Request::ReplaceIdentity {
                identity: m.identity.public_key(),
                signature: sign_registration(&m.identity, &m.user, &m.auth.public_key(), SERVER),
            },
        ),
        ("list-devices", Request::ListDevices { user: alice }),
        (
            "remove-device",
            Request::RemoveDevice {
                device: DeviceId(3),
            },
        ),
        ("delete-account", Request::DeleteAccount),
        (
            "send",
            Request::Send {
                recipient: UserId::new("bob").expect("valid user id"),
                envelopes: vec![(DeviceId(1), m.initial.clone()), (DeviceId(2), m.normal)],
            },
        ),
        (
            "ack",
            Request::Ack {
                envelopes: vec![EnvelopeId([0x01; 16]), EnvelopeId([0x02; 16])],
            },
        ),
        ("request-link-permission", Request::RequestLinkPermission),
        ("open-provisioning", Request::OpenProvisioning),
        (
            "send-provisioning",
            Request::SendProvisioning {
                address: ProvisioningAddress([0x50; 16]),
                sealed: (0..80).collect(),
            },
        ),
        (
            "upload-begin",
            Request::UploadBegin {
                kind: BlobKind::File,
                size: 1 << 20,
            },
        ),
        (
            "upload-chunk",
            Request::UploadChunk {
                upload: UploadId([0x55; 16]),
                offset: 65_536,
                data: (0..100u8).map(|i| i.wrapping_mul(37)).collect(),
            },
        ),
        (
            "upload-finish",
            Request::UploadFinish {
                upload: UploadId([0x55; 16]),
            },
        ),
        (
            "download",
            Request::Download {
                blob: BlobId([0x42; 16]),
                offset: 0,
            },
        ),
        (
            "register-push-token",
            Request::RegisterPushToken {
                token: "push-token-1".into(),
            },
        ),
        ("ping", Request::Ping),
    ];
    let mut frames: Vec<_> = requests
        .into_iter()
        .enumerate()
        .map(|(id, (name, request))| {
            (
                name,
                ClientFrame {
                    id: id as u32,
                    request,
                },
            )
        })
        .collect();
    // Not a variant of its own: the same request with nothing in it, and an image upload.
    frames.push((
        "publish-prekeys-empty",
        ClientFrame {
            id: 4,
            request: Request::PublishPreKeys {
                signed: None,
                last_resort: None,
                one_time: Vec::new(),
                pq_last_resort: None,
                pq_one_time: Vec::new(),
            },
        },
    ));
    frames.push((
        "upload-begin-image",
        ClientFrame {
            id: 14,
            request: Request::UploadBegin {
                kind: BlobKind::Image,
                size: 300,
            },
        },
    ));
    frames
}

/// Every error code the protocol defines, in the order of the variants.
pub(crate) const ERROR_CODES: [ErrorCode; 11] = [
    ErrorCode::BadRequest,
    ErrorCode::Unauthenticated,
    ErrorCode::Forbidden,
    ErrorCode::NotFound,
    ErrorCode::Conflict,
    ErrorCode::RateLimited,
    ErrorCode::TooLarge,
    ErrorCode::LimitReached,
    ErrorCode::Expired,
    ErrorCode::UnsupportedVersion,
    ErrorCode::Internal,
];

/// One server frame of every response variant (answering request ids equal
/// to their positions), of every error code, and of every push variant.
pub(crate) fn server_frames() -> Vec<(String, ServerFrame)> {
    let m = material();
    let fx = fixture();
    let responses = vec![
        ("ok", Response::Ok),
        (
            "registered",
            Response::Registered {
                device: DeviceId(2),
            },
        ),
        (
            "authenticated",
            Response::Authenticated {
                server_time: NOW + 5,
            },
        ),
        (
            "bundles",
            Response::Bundles(vec![m.bundle.clone(), fx.carol_bundle.clone()]),
        ),
        (
            "devices",
            Response::Devices(vec![
                m.certificate.clone(),
                fx.carol_bundle.certificate.clone(),
            ]),
        ),
        (
            "sent",
            Response::Sent {
                server_time: NOW,
                ids: vec![
                    (DeviceId(1), EnvelopeId([0x11; 16])),
                    (DeviceId(2), EnvelopeId([0x12; 16])),
                ],
            },
        ),
        (
            "mismatched-devices",
            Response::MismatchedDevices {
                missing: vec![DeviceId(3)],
                extra: vec![DeviceId(1), DeviceId(4)],
            },
        ),
        (
            "link-permission",
            Response::LinkPermission {
                token: LinkToken([0x4c; 32]),
                expires_at: NOW + 600,
            },
        ),
        (
            "provisioning",
            Response::Provisioning {
                address: ProvisioningAddress([0x50; 16]),
            },
        ),
        (
            "upload-started",
            Response::UploadStarted {
                upload: UploadId([0x55; 16]),
            },
        ),
        (
            "uploaded",
            Response::Uploaded {
                blob: BlobId([0x42; 16]),
            },
        ),
        (
            "download-chunk",
            Response::DownloadChunk {
                total: 1_056,
                offset: 1_000,
                data: (0..56).collect(),
            },
        ),
        ("pong", Response::Pong),
    ];
    let pushes = vec![
        (
            "challenge",
            Push::Challenge {
                nonce: Nonce([0x6e; 32]),
            },
        ),
        (
            "deliver",
            Push::Deliver(Delivery {
                id: EnvelopeId([0x13; 16]),
                sender: fx.alice.clone(),
                server_time: NOW,
                envelope: m.initial,
            }),
        ),
        ("queue-empty", Push::QueueEmpty),
        (
            "prekeys-low",
            Push::PreKeysLow {
                remaining: 3,
                pq_remaining: 9,
            },
        ),
        (
            "provisioning",
            Push::Provisioning {
                sealed: (0..80).rev().collect(),
            },
        ),
        (
            "devices-changed",
            Push::DevicesChanged {
                user: UserId::new("alice").expect("valid user id"),
            },
        ),
    ];
    let mut out = Vec::new();
    for (id, (name, response)) in responses.into_iter().enumerate() {
        let frame = ServerFrame::Response {
            id: id as u32,
            result: Ok(response),
        };
        out.push((format!("response-{name}"), frame));
    }
    for (id, code) in ERROR_CODES.into_iter().enumerate() {
        let frame = ServerFrame::Response {
            id: id as u32,
            result: Err(ProtocolError::new(code, format!("{code:?}").to_lowercase())),
        };
        out.push((format!("error-{id:02}"), frame));
    }
    for (name, push) in pushes {
        out.push((format!("push-{name}"), ServerFrame::Push(push)));
    }
    out
}

/// The envelopes of the seeds: both kinds, from three senders.
pub(crate) fn envelopes() -> Vec<(&'static str, Envelope)> {
    let fx = fixture();
    let m = &fx.messages;
    let bob = DeviceAddress::new(UserId::new("bob").expect("valid user id"), DeviceId(1));
    vec![
        (
            "alice-initial",
            Envelope::new(fx.alice.clone(), m.alice_initial.clone()).expect("envelope"),
        ),
        (
            "alice-next",
            Envelope::new(fx.alice.clone(), m.alice_next.clone()).expect("envelope"),
        ),
        (
            "carol-initial",
            Envelope::new(fx.carol.clone(), m.carol_initial.clone()).expect("envelope"),
        ),
        (
            "bob-reply",
            Envelope::new(bob, m.bob_reply.clone()).expect("envelope"),
        ),
    ]
}

/// Content of every body variant (`sent_at` below 128, so the body's tag is
/// byte [`CONTENT_BODY_TAG_AT`] of the padded encoding).
pub(crate) fn contents() -> Vec<(&'static str, Content)> {
    let id = MessageId([0x1c; 16]);
    let other = MessageId([0x2c; 16]);
    let bob = UserId::new("bob").expect("valid user id");
    let content = |sent_at, body| Content { id, sent_at, body };
    vec![
        ("text", content(1, Body::Text("hello Bob".into()))),
        (
            "attachment",
            content(
                2,
                Body::Attachment {
                    pointer: attachment::pointer(1),
                    caption: Some("a picture".into()),
                },
            ),
        ),
        (
            "receipt",
            content(
                3,
                Body::Receipt {
                    kind: ReceiptKind::Read,
                    messages: vec![id, other, MessageId([0x3c; 16])],
                },
            ),
        ),
        (
            "sent-sync",
            content(
                4,
                Body::SentSync {
                    recipient: bob.clone(),
                    content: Box::new(content(4, Body::Text("hello Bob".into()))),
                },
            ),
        ),
        ("text-empty", content(5, Body::Text(String::new()))),
        (
            "text-unicode",
            content(6, Body::Text("grüße, Bob 👋".into())),
        ),
        (
            "attachment-no-caption",
            content(
                7,
                Body::Attachment {
                    pointer: attachment::pointer(2),
                    caption: None,
                },
            ),
        ),
        (
            "receipt-delivered",
            content(
                8,
                Body::Receipt {
                    kind: ReceiptKind::Delivered,
                    messages: vec![other],
                },
            ),
        ),
        (
            "receipt-empty",
            content(
                9,
                Body::Receipt {
                    kind: ReceiptKind::Read,
                    messages: Vec::new(),
                },
            ),
        ),
        (
            "sent-sync-attachment",
            content(
                10,
                Body::SentSync {
                    recipient: bob,
                    content: Box::new(content(
                        10,
                        Body::Attachment {
                            pointer: attachment::pointer(0),
                            caption: None,
                        },
                    )),
                },
            ),
        ),
    ]
}

/// Where the body's variant tag sits in encoded content: after the version
/// byte, the 16-byte message id and a one-byte `sent_at`.
pub(crate) const CONTENT_BODY_TAG_AT: usize = 1 + 16 + 1;

/// A copy of `bytes` with bit `mask` of byte `at` flipped.
pub(crate) fn flip(bytes: &[u8], at: usize, mask: u8) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[at] ^= mask;
    out
}

/// Truncations and bit flips of one valid encoding.
fn damaged(name: &str, bytes: &[u8], flips: &[usize]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
        out.push((format!("truncated-{name}-{cut}"), bytes[..cut].to_vec()));
    }
    for &at in flips {
        let at = at.min(bytes.len() - 1);
        out.push((format!("flip-{name}-{at}"), flip(bytes, at, 0x01)));
    }
    out.push((format!("trailing-{name}"), [bytes, &[0]].concat()));
    out
}

/// The seeds of `frame_decoder`, `client_frame`, `server_frame`, `envelope`
/// and `content`.
pub(crate) fn seeds() -> Vec<Seed> {
    let mut out = Vec::new();

    let client = client_frames();
    let server = server_frames();
    for (name, frame) in &client {
        out.push(("client_frame", format!("valid-{name}"), frame.to_payload()));
    }
    for (name, frame) in &server {
        out.push(("server_frame", format!("valid-{name}"), frame.to_payload()));
    }
    let payload = |frames: &[(&str, ClientFrame)], name: &str| {
        frames
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| f.to_payload())
            .expect("a named frame")
    };
    for name in ["send", "publish-prekeys", "register-account"] {
        // The version, the id, the tag, inside the first field, near the end.
        let bytes = payload(&client, name);
        for (file, bytes) in damaged(name, &bytes, &[0, 1, 2, 5, 60, bytes.len() - 3]) {
            out.push(("client_frame", file, bytes));
        }
    }
    for name in ["response-bundles", "push-deliver", "error-04"] {
        let bytes = server
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| f.to_payload())
            .expect("a named frame");
        for (file, bytes) in damaged(name, &bytes, &[0, 1, 2, 3, 5, 60, bytes.len() - 3]) {
            out.push(("server_frame", file, bytes));
        }
    }

    for (name, envelope) in envelopes() {
        out.push(("envelope", format!("valid-{name}"), envelope.to_bytes()));
    }
    let bytes = envelopes()[0].1.to_bytes();
    // Version, kind, the user id's length, its first byte, the device, the
    // message's length and tag, inside the message.
    let user_len = bytes[2] as usize;
    let flips = [0, 1, 2, 3, 3 + user_len, 4 + user_len, 6 + user_len, 40];
    for (file, bytes) in damaged("alice-initial", &bytes, &flips) {
        out.push(("envelope", file, bytes));
    }

    for (name, content) in contents() {
        let padded = content.to_padded().expect("seed content encodes");
        out.push(("content", format!("valid-{name}"), padded.to_vec()));
    }
    let contents = contents();
    let sync = contents[3].1.to_padded().expect("seed content encodes");
    let encoded = padding::unpad(&sync).expect("padded").to_vec();
    // A copy of a copy: the sync's head, then the whole sync again as its content.
    let head = CONTENT_BODY_TAG_AT + 1 + 1 + "bob".len();
    let nested = [&encoded[..head], &encoded[1..]].concat();
    out.push(("content", "nested-sent-sync".into(), padding::pad(&nested)));
    // Damage inside the padding (re-padded, so the decoder behind it sees it):
    // the version, the id, `sent_at`, the body tag, the recipient's length, the text.
    for (file, bytes) in damaged("sent-sync", &encoded, &[0, 1, 17, 18, 19, 25, 30]) {
        out.push(("content", file, padding::pad(&bytes)));
    }
    out.push(("content", "unpadded-sent-sync".into(), encoded.clone()));
    let mut no_marker = sync.to_vec();
    no_marker[encoded.len()] = 0;
    out.push(("content", "no-padding-marker".into(), no_marker));

    for (file, bytes) in frame_seeds(&client) {
        out.push(("frame_decoder", file, bytes));
    }
    out
}

/// Streams of frames holding real client payloads, under a few caps, pushed
/// at once, in odd pieces and lazily; with empty frames, an incomplete
/// frame at the end and an over-long frame.
fn frame_seeds(client: &[(&str, ClientFrame)]) -> Vec<(String, Vec<u8>)> {
    let payloads: Vec<Vec<u8>> = client.iter().map(|(_, f)| f.to_payload()).collect();
    let cap = u16::MAX;
    let frame = |p: &[u8]| encode_frame(p, usize::from(cap)).expect("under the cap");
    let stream: Vec<u8> = payloads.iter().take(6).flat_map(|p| frame(p)).collect();
    let longest = payloads.iter().map(Vec::len).max().unwrap_or(0);
    let mixed = [
        frame(&payloads[8]),
        frame(b""),
        frame(&payloads[9]),
        frame(b""),
    ]
    .concat();
    let mut out = vec![
        (
            "empty".to_string(),
            frame_input::encode(cap, false, &[], b""),
        ),
        (
            "stream-whole".into(),
            frame_input::encode(cap, false, &[], &stream),
        ),
        (
            "stream-bytewise".into(),
            frame_input::encode(cap, false, &[1], &stream),
        ),
        (
            "stream-pieces".into(),
            frame_input::encode(cap, false, &[3, 0, 250, 7, 64], &stream),
        ),
        (
            "stream-lazy".into(),
            frame_input::encode(cap, true, &[5, 200], &stream),
        ),
        (
            "mixed-empty-frames".into(),
            frame_input::encode(cap, false, &[4, 1], &mixed),
        ),
        (
            "stream-incomplete".into(),
            frame_input::encode(cap, false, &[9], &stream[..stream.len() - 3]),
        ),
        (
            "prefix-only".into(),
            frame_input::encode(cap, false, &[2], &stream[..3]),
        ),
    ];
    // The longest payload just fits a cap of its own size, and is one over a cap of one less.
    let biggest = payloads.iter().max_by_key(|p| p.len()).expect("payloads");
    let send = frame(biggest);
    let exact = u16::try_from(biggest.len()).expect("a short payload");
    out.push((
        "cap-exact".into(),
        frame_input::encode(exact, false, &[100], &send),
    ));
    out.push((
        "cap-one-under".into(),
        frame_input::encode(exact - 1, false, &[100], &send),
    ));
    let small = u16::try_from(longest / 2).expect("a short payload");
    out.push((
        "over-cap-after-frames".into(),
        frame_input::encode(
            small,
            false,
            &[13],
            &[frame(b"ab"), frame(biggest)].concat(),
        ),
    ));
    out.push((
        "over-cap-lazy".into(),
        frame_input::encode(small, true, &[13], &[frame(b"ab"), frame(biggest)].concat()),
    ));
    out.push((
        "huge-length".into(),
        frame_input::encode(cap, false, &[1], &[0xff, 0xff, 0xff, 0xff, 1, 2, 3]),
    ));
    out.push((
        "zero-cap".into(),
        frame_input::encode(0, false, &[2], &mixed),
    ));
    out
}
