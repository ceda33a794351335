//! The attachment target: arbitrary bytes decrypted as the blob of a known
//! pointer, or decoded as a pointer.
//!
//! A decryptor may release only plaintext it authenticated, in order: what
//! it wrote is always a prefix of the attachment, all of it only when
//! `finish` succeeds, and only for the one blob the pointer was made for. It
//! must say the same however the blob was cut, hold less than one sealed
//! chunk, and refuse everything after an error.

use std::sync::OnceLock;

use hush::attachment::{
    AttachmentError, AttachmentKind, AttachmentPointer, CHUNK_LEN, Decryptor, Encryptor,
    HEADER_LEN, MAX_BUFFERED_LEN, SEALED_CHUNK_LEN, ciphertext_len,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

use super::Seed;
use super::wire::flip;

/// One encrypted attachment of the fixture.
#[derive(Debug)]
pub(crate) struct Sample {
    /// The encoded pointer.
    pub(crate) pointer: Vec<u8>,
    /// The plaintext.
    pub(crate) plaintext: Vec<u8>,
    /// The blob the pointer was made for.
    pub(crate) blob: Vec<u8>,
}

/// Kind, media type and plaintext size of each sample: empty, inside one
/// chunk, exactly one chunk, and three chunks with a short last one.
const SAMPLES: [(AttachmentKind, &str, usize); 4] = [
    (AttachmentKind::Image, "image/png", 0),
    (AttachmentKind::Image, "image/jpeg", 1_000),
    (AttachmentKind::File, "application/pdf", CHUNK_LEN),
    (AttachmentKind::File, "application/zip", 2 * CHUNK_LEN + 3),
];

fn build() -> Vec<Sample> {
    let mut rng = ChaCha20Rng::from_seed([0xa7; 32]);
    SAMPLES
        .iter()
        .enumerate()
        .map(|(index, &(kind, media_type, len))| {
            let plaintext: Vec<u8> = (0..len).map(|i| (i * 31 + index) as u8).collect();
            let mut enc = Encryptor::new(&mut rng, kind, media_type, len as u64)
                .expect("a sample within its cap");
            let mut blob = Vec::new();
            // Uneven pieces, so the encryptor's own buffering is used too.
            for piece in plaintext.chunks(10_007) {
                enc.update(piece, &mut blob).expect("encrypt");
            }
            let pointer = enc
                .finish(&mut blob)
                .expect("finish")
                .into_pointer(format!("blob-{index}").into_bytes())
                .expect("a valid blob id");
            Sample {
                pointer: pointer.to_bytes().to_vec(),
                plaintext,
                blob,
            }
        })
        .collect()
}

/// The samples, built on first use.
pub(crate) fn samples() -> &'static [Sample] {
    static SAMPLES: OnceLock<Vec<Sample>> = OnceLock::new();
    SAMPLES.get_or_init(build)
}

/// The pointer of sample `index`, decoded afresh (pointers are not `Clone`).
pub(crate) fn pointer(index: usize) -> AttachmentPointer {
    AttachmentPointer::from_bytes(&samples()[index].pointer).expect("a sample pointer decodes")
}

/// How `attachment_decrypt` reads its input. The first byte is either
/// [`POINTER`], and the rest is decoded as a pointer; or it names a sample
/// (low two bits), [`SPLICE`], and a piece size ([`PIECES`], bits 3 to 6).
/// With `SPLICE` the next three bytes (u24 BE) say how many bytes of the
/// sample's real blob come first, before the rest of the input; without it
/// the rest of the input is the blob.
pub(crate) mod input {
    use hush::attachment::{HEADER_LEN, SEALED_CHUNK_LEN};

    /// The rest of the input is an encoded pointer.
    pub(crate) const POINTER: u8 = 0x80;
    /// The blob starts with a prefix of the sample's real blob.
    pub(crate) const SPLICE: u8 = 0x04;
    /// Bytes per `update` call (0: the whole blob in one call).
    pub(crate) const PIECES: [usize; 16] = [
        0,
        1,
        2,
        3,
        16,
        HEADER_LEN - 1,
        HEADER_LEN,
        HEADER_LEN + 1,
        HEADER_LEN + 16,
        HEADER_LEN + 17,
        1_000,
        4_096,
        SEALED_CHUNK_LEN - 1,
        SEALED_CHUNK_LEN,
        SEALED_CHUNK_LEN + 1,
        HEADER_LEN + SEALED_CHUNK_LEN,
    ];

    /// The first byte for a sample, a piece size index and `SPLICE`.
    pub(crate) fn selector(sample: usize, piece: usize, splice: bool) -> u8 {
        assert!(sample < 4 && piece < PIECES.len(), "out of range");
        sample as u8 | (piece as u8) << 3 | if splice { SPLICE } else { 0 }
    }

    /// An input for a sample with `prefix` bytes of its real blob, then `rest`.
    pub(crate) fn spliced(sample: usize, piece: usize, prefix: usize, rest: &[u8]) -> Vec<u8> {
        let [_, a, b, c] = u32::try_from(prefix).expect("a u24").to_be_bytes();
        [&[selector(sample, piece, true), a, b, c][..], rest].concat()
    }
}

/// What a decryption released and how it ended.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    released: Vec<u8>,
    /// `finish`'s result, or the first error of `update` (as its `Debug`:
    /// the error is not `PartialEq`).
    end: Result<(), String>,
}

/// Decrypts `blob` under `pointer`, `piece` bytes per `update` (0: at once).
fn decrypt(pointer: &AttachmentPointer, blob: &[u8], piece: usize) -> Outcome {
    let mut dec = Decryptor::new(pointer).expect("a sample pointer is accepted");
    let mut released = Vec::new();
    let pieces: Vec<&[u8]> = if piece == 0 || blob.is_empty() {
        vec![blob]
    } else {
        blob.chunks(piece).collect()
    };
    for part in pieces {
        if let Err(e) = dec.update(part, &mut released) {
            assert!(
                dec.buffered_len() <= MAX_BUFFERED_LEN,
                "over the buffer bound"
            );
            let before = released.len();
            assert!(matches!(
                dec.update(b"", &mut released),
                Err(AttachmentError::Poisoned)
            ));
            assert_eq!(
                released.len(),
                before,
                "a poisoned decryptor released bytes"
            );
            assert!(matches!(dec.finish(), Err(AttachmentError::Poisoned)));
            return Outcome {
                released,
                end: Err(format!("{e:?}")),
            };
        }
        assert!(
            dec.buffered_len() < MAX_BUFFERED_LEN,
            "{} bytes buffered",
            dec.buffered_len()
        );
    }
    Outcome {
        released,
        end: dec.finish().map_err(|e| format!("{e:?}")),
    }
}

/// Decodes a pointer; one that decodes re-encodes to the same bytes, is
/// within its cap, and is accepted by the decryptor. Returns whether it decoded.
fn decode_pointer(bytes: &[u8]) -> bool {
    let Ok(pointer) = AttachmentPointer::from_bytes(bytes) else {
        return false;
    };
    assert_eq!(
        &pointer.to_bytes()[..],
        bytes,
        "pointer encoding is not canonical"
    );
    pointer_is_usable(&pointer);
    true
}

/// A pointer Hush accepted is within its kind's cap and opens a decryptor,
/// which expects the pointer's blob size.
pub(crate) fn pointer_is_usable(pointer: &AttachmentPointer) {
    assert!(pointer.plaintext_len() <= pointer.kind().max_plaintext_len());
    assert_eq!(
        Some(pointer.ciphertext_len()),
        ciphertext_len(pointer.plaintext_len())
    );
    let dec = Decryptor::new(pointer).expect("a decoded pointer opens a decryptor");
    assert!(matches!(dec.finish(), Err(AttachmentError::Truncated)));
}

/// Decrypts the input as a sample's blob (or decodes it as a pointer, see
/// [`input`]) in the input's pieces and at once.
pub(crate) fn attachment_decrypt(data: &[u8]) {
    let _ = accepted(data);
}

/// [`attachment_decrypt`], returning whether the blob decrypted completely
/// or the pointer decoded (`None` for an input too short to say which).
pub(crate) fn accepted(data: &[u8]) -> Option<bool> {
    let (&first, rest) = data.split_first()?;
    if first & input::POINTER != 0 {
        return Some(decode_pointer(rest));
    }
    let index = usize::from(first & 0x03);
    let piece = input::PIECES[usize::from((first >> 3) & 0x0f)];
    let sample = &samples()[index];
    let blob = if first & input::SPLICE != 0 {
        let ([a, b, c], rest) = rest.split_first_chunk::<3>()?;
        let prefix = u32::from_be_bytes([0, *a, *b, *c]) as usize;
        let prefix = &sample.blob[..prefix.min(sample.blob.len())];
        [prefix, rest].concat()
    } else {
        rest.to_vec()
    };
    let pointer = pointer(index);

    let outcome = decrypt(&pointer, &blob, piece);
    assert!(
        sample.plaintext.starts_with(&outcome.released),
        "released bytes that are not the attachment's start"
    );
    assert!(
        outcome.released.len().is_multiple_of(CHUNK_LEN)
            || outcome.released.len() == sample.plaintext.len(),
        "released part of a chunk"
    );
    if outcome.end.is_ok() {
        assert_eq!(outcome.released, sample.plaintext, "finished short");
        assert_eq!(blob, sample.blob, "another blob decrypted");
    }
    assert_eq!(
        decrypt(&pointer, &blob, 0),
        outcome,
        "the cuts changed the outcome"
    );
    Some(outcome.end.is_ok())
}

/// Every sample's blob (small ones raw, large ones spliced, which costs four
/// bytes), cut at the header and chunk boundaries, extended, damaged in
/// each field, and pushed in several piece sizes; every sample's pointer and
/// damaged pointers.
pub(crate) fn seeds() -> Vec<Seed> {
    let mut out: Vec<Seed> = Vec::new();
    let mut add = |name: String, bytes: Vec<u8>| out.push(("attachment_decrypt", name, bytes));
    let samples = samples();
    let raw = |sample: usize, piece: usize, blob: &[u8]| {
        [&[input::selector(sample, piece, false)][..], blob].concat()
    };

    for (index, sample) in samples.iter().enumerate() {
        let blob = &sample.blob;
        let len = blob.len();
        add(
            format!("blob-{index}-whole"),
            input::spliced(index, 0, len, b""),
        );
        add(
            format!("blob-{index}-pieces"),
            input::spliced(index, 10, len, b""),
        );
        add(
            format!("blob-{index}-trailing"),
            input::spliced(index, 0, len, &[0]),
        );
        add(
            format!("blob-{index}-cut-last"),
            input::spliced(index, 0, len - 1, b""),
        );
        add(
            format!("blob-{index}-header-only"),
            input::spliced(index, 6, HEADER_LEN, b""),
        );
        add(
            format!("blob-{index}-header-cut"),
            input::spliced(index, 0, HEADER_LEN - 1, b""),
        );
        let mut pointer = sample.pointer.clone();
        add(
            format!("pointer-{index}"),
            [&[input::POINTER][..], &pointer].concat(),
        );
        // A longer blob id: still valid, and the fuzzer learns the length field.
        pointer.push(b'x');
        let at = pointer.len() - 1 - format!("blob-{index}").len() - 1;
        pointer[at] += 1;
        add(
            format!("pointer-{index}-longer-id"),
            [&[input::POINTER][..], &pointer].concat(),
        );
    }

    // The three-chunk sample: cut and continued at its chunk boundaries.
    let big = &samples[3].blob;
    let first_chunk = HEADER_LEN + SEALED_CHUNK_LEN;
    add(
        "blob-3-one-chunk".into(),
        input::spliced(3, 13, first_chunk, b""),
    );
    add(
        "blob-3-two-chunks".into(),
        input::spliced(3, 15, first_chunk + SEALED_CHUNK_LEN, b""),
    );
    add(
        "blob-3-chunk-then-garbage".into(),
        input::spliced(3, 0, first_chunk, &[0x5a; 64]),
    );
    // The start of the second chunk in place of the (19-byte) third.
    add(
        "blob-3-second-chunk-twice".into(),
        input::spliced(
            3,
            0,
            first_chunk + SEALED_CHUNK_LEN,
            &big[first_chunk..first_chunk + 19],
        ),
    );
    // The small samples raw, so the fuzzer mutates real bytes: the version,
    // the nonce prefix, the commitment, the ciphertext, the tag.
    for index in [0, 1] {
        let blob = &samples[index].blob;
        add(format!("raw-{index}"), raw(index, 0, blob));
        add(format!("raw-{index}-bytewise"), raw(index, 1, blob));
        for at in [0, 3, 20, HEADER_LEN, blob.len() / 2, blob.len() - 1] {
            add(
                format!("raw-{index}-flip-{at}"),
                raw(index, 7, &flip(blob, at, 0x10)),
            );
        }
        // One sample's blob under another's pointer.
        add(
            format!("raw-{index}-wrong-pointer"),
            raw(1 - index, 0, blob),
        );
    }
    add("raw-1-truncated".into(), raw(1, 4, &samples[1].blob[..500]));
    add("empty".into(), Vec::new());
    add("no-blob".into(), vec![input::selector(2, 0, false)]);

    // Damaged pointers: version, kind, size (over the image cap), key,
    // commitment, media type length, a non-printable media type, blob id
    // length, and a trailing byte.
    let pointer = &samples[1].pointer;
    let media_len = usize::from(pointer[74]);
    let damaged = [
        ("version", flip(pointer, 0, 0x02)),
        ("kind", flip(pointer, 1, 0x06)),
        ("size", flip(pointer, 4, 0x80)),
        ("key", flip(pointer, 10, 0x01)),
        ("commitment", flip(pointer, 73, 0x01)),
        ("media-len", flip(pointer, 74, 0x01)),
        ("media-type", flip(pointer, 76, 0x80)),
        ("blob-id-len", flip(pointer, 75 + media_len, 0x3f)),
        ("trailing", [&pointer[..], &[0]].concat()),
        ("truncated", pointer[..pointer.len() - 1].to_vec()),
    ];
    for (name, bytes) in damaged {
        add(
            format!("pointer-{name}"),
            [&[input::POINTER][..], &bytes].concat(),
        );
    }
    out
}
