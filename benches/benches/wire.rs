//! The byte-moving parts of Hush: client frames encoded to and decoded from
//! the wire, and 50 MiB attachments encrypted and decrypted through the
//! streaming helpers and the in-place chunk API beside raw AES-256-GCM (the
//! `aes-gcm` crate Hush builds on) over the same bytes, in the same run.
//!
//! `cargo bench -p hush-benches --bench wire`; the numbers and how to read
//! them are in `docs/performance.md`.
//!
//! Frames carry placeholder session messages of the exact length a real one
//! has for the stated content (tag byte, ratchet header, padded content, AEAD
//! tag): encoding and decoding copy those bytes and never look inside them.
//!
//! The raw AES-GCM rows use the attachment format's 64 KiB chunks, nonces
//! and 40-byte associated data, except "one call", which seals all 50 MiB
//! under one nonce (the format cannot: it would need the whole file in
//! memory). "in place" rows do the least work that encrypts the bytes: no
//! copies at all. "read-seal-write" / "read-open-write" rows add the two
//! copies any `Read` to `Write` stream makes, as Hush's helpers do: each
//! chunk is read into a buffer, sealed or opened there and written out.
//! "hush, in place" rows are Hush's in-place form
//! (`Encryptor::seal_chunk_in_place`, `Decryptor::open_chunk_in_place`) over
//! the same 64 KiB chunks: the counterpart of the raw chunked in-place rows.

#![allow(
    clippy::expect_used,
    reason = "benchmark setup: any failure is a bug to stop on"
)]

use std::hint::black_box;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use aes_gcm::aead::{Nonce, Tag};
use aes_gcm::{AeadInOut, Aes256Gcm, KeyInit};
use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use hush::attachment::{
    AttachmentKind, AttachmentPointer, CHUNK_LEN, Decryptor, Encryptor, HEADER_LEN, MAX_FILE_LEN,
    PendingPointer, SEALED_CHUNK_LEN, TAG_LEN, decrypt_stream, encrypt_stream,
};
use hush::keys::{DeviceAddress, DeviceId, UserId};
use hush::ratchet;
use hush::session::SessionMessage;
use hush::wire::envelope::{Envelope, MAX_CONTENT_LEN};
use hush::wire::frame::{FrameDecoder, encode_frame};
use hush::wire::padding::padded_len;
use hush::wire::protocol::{self, ClientFrame, MAX_FRAME_LEN, Request, UploadId};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

/// Pieces the incremental decoder is fed in, as a socket read might return.
const PIECE: usize = 4 * 1024;

/// The attachment size of the target, the file cap.
const ATTACHMENT_LEN: usize = MAX_FILE_LEN as usize;

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

// ---------------------------------------------------------------------------
// Frames.

/// A normal session message carrying `content_len` bytes of content: the tag
/// byte, the ratchet header, the padded content and the AEAD tag.
fn session_message(content_len: usize) -> Vec<u8> {
    let len = 1 + ratchet::HEADER_LEN + padded_len(content_len) + ratchet::TAG_LEN;
    let mut message = payload(len);
    if let Some(tag) = message.first_mut() {
        *tag = SessionMessage::TAG_NORMAL;
    }
    message
}

fn send(devices: u32, content_len: usize) -> ClientFrame {
    let sender = DeviceAddress::new(UserId::new("alice").expect("valid user id"), DeviceId(1));
    let envelopes = (1..=devices)
        .map(|device| {
            let envelope = Envelope::new(sender.clone(), session_message(content_len))
                .expect("within the envelope cap");
            (DeviceId(device), envelope)
        })
        .collect();
    ClientFrame {
        id: 17,
        request: Request::Send {
            recipient: UserId::new("bob").expect("valid user id"),
            envelopes,
        },
    }
}

fn upload_chunk() -> ClientFrame {
    ClientFrame {
        id: 18,
        request: Request::UploadChunk {
            upload: UploadId([7; 16]),
            offset: 3 * protocol::CHUNK_LEN as u64,
            data: payload(protocol::CHUNK_LEN),
        },
    }
}

/// A client frame to wire bytes: the protocol payload, then the length prefix.
fn encode(frame: &ClientFrame) -> Vec<u8> {
    encode_frame(&frame.to_payload(), MAX_FRAME_LEN).expect("within the frame cap")
}

/// Feeds `wire` to `decoder` in pieces of `piece` bytes, asking for a frame
/// after each, as a connection loop does; returns the one payload.
fn unframe(decoder: &mut FrameDecoder, wire: &[u8], piece: usize) -> Vec<u8> {
    let mut payload = None;
    for part in wire.chunks(piece) {
        decoder.push(part).expect("within the frame cap");
        if let Some(p) = decoder.next_frame().expect("well-formed stream") {
            payload = Some(p);
        }
    }
    payload.expect("one whole frame")
}

fn decode(decoder: &mut FrameDecoder, wire: &[u8], piece: usize) -> ClientFrame {
    ClientFrame::from_payload(&unframe(decoder, wire, piece)).expect("a valid client frame")
}

/// Encode and decode of three representative client frames. Throughput is
/// counted in wire bytes (payload and length prefix). One decoder serves all
/// iterations of a row, as one serves a whole connection, so its buffer has
/// reached its working size.
fn frames(c: &mut Criterion) {
    let cases = [
        ("send 1 KiB", send(1, 1024)),
        ("send 6 x 1 MiB", send(6, MAX_CONTENT_LEN)),
        ("upload chunk 64 KiB", upload_chunk()),
    ];
    let mut g = c.benchmark_group("frame");
    for (label, frame) in &cases {
        let wire = encode(frame);
        assert_eq!(
            &decode(&mut FrameDecoder::new(MAX_FRAME_LEN), &wire, PIECE),
            frame
        );
        let payload = frame.to_payload();
        g.throughput(Throughput::Bytes(wire.len() as u64));

        // The whole path between a `ClientFrame` and the bytes on the wire.
        g.bench_function(BenchmarkId::new("encode", label), |b| {
            b.iter(|| encode(black_box(frame)))
        });
        let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
        g.bench_function(BenchmarkId::new("decode, one piece", label), |b| {
            b.iter(|| decode(&mut decoder, black_box(&wire), wire.len()))
        });
        g.bench_function(BenchmarkId::new("decode, 4 KiB pieces", label), |b| {
            b.iter(|| decode(&mut decoder, black_box(&wire), PIECE))
        });

        // The framing layer alone, without postcard.
        g.bench_function(BenchmarkId::new("frame only: encode", label), |b| {
            b.iter(|| encode_frame(black_box(&payload), MAX_FRAME_LEN).expect("within the cap"))
        });
        g.bench_function(
            BenchmarkId::new("frame only: decode, 4 KiB pieces", label),
            |b| b.iter(|| unframe(&mut decoder, black_box(&wire), PIECE)),
        );
    }
    g.finish();
}

// ---------------------------------------------------------------------------
// Attachments.

/// Raw AES-256-GCM laid out like the attachment format: the same chunk size,
/// nonce layout and associated data (a header of the same length), with the
/// tags kept apart so that the data is sealed in place.
struct RawChunked {
    cipher: Aes256Gcm,
    aad: [u8; HEADER_LEN],
    tags: Vec<Tag<Aes256Gcm>>,
}

impl RawChunked {
    fn new() -> Self {
        Self {
            cipher: Aes256Gcm::new(&[0x42; 32].into()),
            aad: [0x5c; HEADER_LEN],
            tags: Vec::with_capacity(ATTACHMENT_LEN.div_ceil(CHUNK_LEN)),
        }
    }

    /// `prefix (7) || index (u32 BE) || last (u8)`.
    fn nonce(index: usize, last: bool) -> Nonce<Aes256Gcm> {
        let mut nonce = [0xa5; 12];
        let index = u32::try_from(index).expect("fewer than 2^32 chunks");
        nonce[7..11].copy_from_slice(&index.to_be_bytes());
        nonce[11] = u8::from(last);
        nonce.into()
    }

    fn seal(&mut self, data: &mut [u8]) {
        self.tags.clear();
        let count = data.len().div_ceil(CHUNK_LEN);
        for (i, chunk) in data.chunks_mut(CHUNK_LEN).enumerate() {
            let nonce = Self::nonce(i, i + 1 == count);
            let tag = self
                .cipher
                .encrypt_inout_detached(&nonce, &self.aad, chunk.into())
                .expect("a 64 KiB chunk");
            self.tags.push(tag);
        }
    }

    fn open(&self, data: &mut [u8]) {
        let count = data.len().div_ceil(CHUNK_LEN);
        for ((i, chunk), tag) in data.chunks_mut(CHUNK_LEN).enumerate().zip(&self.tags) {
            let nonce = Self::nonce(i, i + 1 == count);
            self.cipher
                .decrypt_inout_detached(&nonce, &self.aad, chunk.into(), tag)
                .expect("authentic chunk");
        }
    }

    /// Seals `len` bytes from `reader` to `writer`, each chunk read into
    /// `buf`, sealed there and written out followed by its tag.
    fn seal_stream(
        &self,
        len: usize,
        mut reader: impl Read,
        mut writer: impl Write,
        buf: &mut [u8],
    ) {
        let count = len.div_ceil(CHUNK_LEN);
        for i in 0..count {
            let n = CHUNK_LEN.min(len - i * CHUNK_LEN);
            let (data, tag_out) = buf.split_at_mut(n);
            reader.read_exact(data).expect("read");
            let tag = self
                .cipher
                .encrypt_inout_detached(&Self::nonce(i, i + 1 == count), &self.aad, data.into())
                .expect("a 64 KiB chunk");
            tag_out[..TAG_LEN].copy_from_slice(&tag);
            writer.write_all(&buf[..n + TAG_LEN]).expect("write");
        }
    }

    /// Opens what [`seal_stream`](Self::seal_stream) wrote, each sealed
    /// chunk read into `buf`, opened there and its plaintext written out.
    fn open_stream(
        &self,
        len: usize,
        mut reader: impl Read,
        mut writer: impl Write,
        buf: &mut [u8],
    ) {
        let count = len.div_ceil(CHUNK_LEN);
        for i in 0..count {
            let n = CHUNK_LEN.min(len - i * CHUNK_LEN);
            let sealed = &mut buf[..n + TAG_LEN];
            reader.read_exact(sealed).expect("read");
            let (data, tag) = sealed.split_at_mut(n);
            let tag = Tag::<Aes256Gcm>::try_from(&*tag).expect("16 bytes");
            self.cipher
                .decrypt_inout_detached(
                    &Self::nonce(i, i + 1 == count),
                    &self.aad,
                    data.into(),
                    &tag,
                )
                .expect("authentic chunk");
            writer.write_all(&buf[..n]).expect("write");
        }
    }
}

/// Raw AES-256-GCM over the whole buffer under one nonce.
struct RawOneCall {
    cipher: Aes256Gcm,
    nonce: Nonce<Aes256Gcm>,
    tag: Tag<Aes256Gcm>,
}

impl RawOneCall {
    fn new() -> Self {
        Self {
            cipher: Aes256Gcm::new(&[0x42; 32].into()),
            nonce: [0xa5; 12].into(),
            tag: Tag::<Aes256Gcm>::default(),
        }
    }

    fn seal(&mut self, data: &mut [u8]) {
        self.tag = self
            .cipher
            .encrypt_inout_detached(&self.nonce, &[], data.into())
            .expect("under the GCM limit");
    }

    fn open(&self, data: &mut [u8]) {
        self.cipher
            .decrypt_inout_detached(&self.nonce, &[], data.into(), &self.tag)
            .expect("authentic");
    }
}

/// Encrypts `data` with Hush's in-place form under a fresh key: each chunk
/// sealed where it lies, the tags kept apart in `tags` (as [`RawChunked`]
/// does). The header is [`Encryptor::header`], not copied anywhere.
fn hush_seal_in_place(
    rng: &mut ChaCha20Rng,
    data: &mut [u8],
    tags: &mut Vec<[u8; TAG_LEN]>,
) -> PendingPointer {
    let len = data.len() as u64;
    let mut enc =
        Encryptor::new(rng, AttachmentKind::File, MEDIA_TYPE, len).expect("within the cap");
    tags.clear();
    let mut rest = data;
    while let Some(n) = enc.next_chunk_len() {
        let (chunk, tail) = rest.split_at_mut(n);
        tags.push(enc.seal_chunk_in_place(chunk).expect("the next chunk"));
        rest = tail;
    }
    enc.finish_in_place().expect("every chunk sealed")
}

/// Decrypts the blob `pointer` refers to with Hush's in-place form: each
/// sealed chunk opened where it lies, its plaintext left at its start.
fn hush_open_in_place(pointer: &AttachmentPointer, blob: &mut [u8]) {
    let mut dec = Decryptor::new(pointer).expect("a valid pointer");
    let (header, mut rest) = blob
        .split_first_chunk_mut::<HEADER_LEN>()
        .expect("a whole header");
    dec.open_header(header).expect("the blob's header");
    while let Some(n) = dec.next_sealed_len() {
        let (chunk, tail) = rest.split_at_mut(n);
        dec.open_chunk_in_place(chunk).expect("an authentic chunk");
        rest = tail;
    }
    dec.finish().expect("the whole blob");
}

/// Times `open` on a fresh copy of `sealed` in every iteration; the copy is
/// not timed.
fn time_open(iters: u64, sealed: &[u8], work: &mut [u8], open: impl Fn(&mut [u8])) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        work.copy_from_slice(sealed);
        let start = Instant::now();
        open(black_box(&mut *work));
        total += start.elapsed();
    }
    total
}

/// A group for the 50 MiB rows: tens of milliseconds per iteration, so few
/// samples with the same iteration count each.
fn attachment_group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Bytes(ATTACHMENT_LEN as u64));
    g
}

const MEDIA_TYPE: &str = "application/octet-stream";

/// 50 MiB through [`encrypt_stream`] from a slice into a vector whose
/// capacity is kept between iterations, beside raw AES-GCM from the same
/// slice into the same vector, and in place, Hush's in-place form included.
/// Throughput is counted in plaintext bytes in every row.
fn attachment_encrypt(c: &mut Criterion) {
    let plaintext = payload(ATTACHMENT_LEN);
    let len = ATTACHMENT_LEN as u64;
    let mut rng = ChaCha20Rng::from_seed([9; 32]);
    let mut g = attachment_group(c, "attachment encrypt 50 MiB");

    let mut blob =
        Vec::with_capacity(hush::attachment::ciphertext_len(len).expect("small") as usize);
    g.bench_function("hush encrypt_stream", |b| {
        b.iter(|| {
            blob.clear();
            encrypt_stream(
                &mut rng,
                AttachmentKind::File,
                MEDIA_TYPE,
                len,
                black_box(&plaintext[..]),
                &mut blob,
            )
            .expect("encrypt")
        })
    });

    let mut chunked = RawChunked::new();
    let mut buf = vec![0u8; SEALED_CHUNK_LEN];
    g.bench_function("aes-gcm, 64 KiB chunks, read-seal-write", |b| {
        b.iter(|| {
            blob.clear();
            chunked.seal_stream(
                ATTACHMENT_LEN,
                black_box(&plaintext[..]),
                &mut blob,
                &mut buf,
            )
        })
    });

    // Sealing in place again and again seals ciphertext; the cost is the same.
    let mut work = plaintext.clone();
    let mut tags = Vec::with_capacity(ATTACHMENT_LEN.div_ceil(CHUNK_LEN));
    g.bench_function("hush, in place", |b| {
        b.iter(|| hush_seal_in_place(&mut rng, black_box(&mut work), &mut tags))
    });
    g.bench_function("aes-gcm, 64 KiB chunks, in place", |b| {
        b.iter(|| chunked.seal(black_box(&mut work)))
    });
    let mut one_call = RawOneCall::new();
    g.bench_function("aes-gcm, one call, in place", |b| {
        b.iter(|| one_call.seal(black_box(&mut work)))
    });
    g.finish();
}

/// 50 MiB through [`decrypt_stream`] from a slice into a vector whose
/// capacity is kept between iterations, beside raw AES-GCM from a slice into
/// the same vector, and in place (on a fresh copy of the ciphertext each
/// time, made outside the timing), Hush's in-place form included. Throughput
/// is counted in plaintext bytes in every row.
fn attachment_decrypt(c: &mut Criterion) {
    let plaintext = payload(ATTACHMENT_LEN);
    let len = ATTACHMENT_LEN as u64;
    let mut rng = ChaCha20Rng::from_seed([10; 32]);
    let mut blob = Vec::new();
    let pointer: AttachmentPointer = encrypt_stream(
        &mut rng,
        AttachmentKind::File,
        MEDIA_TYPE,
        len,
        &plaintext[..],
        &mut blob,
    )
    .expect("encrypt")
    .into_pointer(b"bench-blob".to_vec())
    .expect("valid blob id");
    let mut g = attachment_group(c, "attachment decrypt 50 MiB");
    // Every row is checked once before it is timed.

    let mut out = Vec::with_capacity(ATTACHMENT_LEN);
    decrypt_stream(&pointer, &blob[..], &mut out).expect("decrypt");
    assert!(out == plaintext);
    g.bench_function("hush decrypt_stream", |b| {
        b.iter(|| {
            out.clear();
            decrypt_stream(&pointer, black_box(&blob[..]), &mut out).expect("decrypt")
        })
    });

    let chunked = RawChunked::new();
    let mut buf = vec![0u8; SEALED_CHUNK_LEN];
    let mut raw_blob = Vec::new();
    chunked.seal_stream(ATTACHMENT_LEN, &plaintext[..], &mut raw_blob, &mut buf);
    out.clear();
    chunked.open_stream(ATTACHMENT_LEN, &raw_blob[..], &mut out, &mut buf);
    assert!(out == plaintext);
    g.bench_function("aes-gcm, 64 KiB chunks, read-open-write", |b| {
        b.iter(|| {
            out.clear();
            chunked.open_stream(ATTACHMENT_LEN, black_box(&raw_blob[..]), &mut out, &mut buf)
        })
    });

    let mut blob_work = blob.clone();
    hush_open_in_place(&pointer, &mut blob_work);
    let opened = blob_work[HEADER_LEN..].chunks(SEALED_CHUNK_LEN);
    assert!(
        opened
            .zip(plaintext.chunks(CHUNK_LEN))
            .all(|(sealed, p)| sealed[..p.len()] == *p)
    );
    g.bench_function("hush, in place", |b| {
        b.iter_custom(|iters| {
            time_open(iters, &blob, &mut blob_work, |data| {
                hush_open_in_place(&pointer, data)
            })
        })
    });

    let mut work = plaintext.clone();
    let mut chunked = RawChunked::new();
    chunked.seal(&mut work);
    let sealed = work.clone();
    chunked.open(&mut work);
    assert!(work == plaintext);
    g.bench_function("aes-gcm, 64 KiB chunks, in place", |b| {
        b.iter_custom(|iters| time_open(iters, &sealed, &mut work, |data| chunked.open(data)))
    });

    let mut one_call = RawOneCall::new();
    one_call.seal(&mut work);
    let sealed = work.clone();
    one_call.open(&mut work);
    assert!(work == plaintext);
    g.bench_function("aes-gcm, one call, in place", |b| {
        b.iter_custom(|iters| time_open(iters, &sealed, &mut work, |data| one_call.open(data)))
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
}

criterion_group! {
    name = wire;
    config = config();
    targets = frames, attachment_encrypt, attachment_decrypt
}
criterion_main!(wire);
