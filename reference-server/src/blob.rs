//! Attachment blobs: the bytes of uploaded ciphertext, behind [`BlobStore`].

/// Where uploaded blobs are kept.
pub trait BlobStore: Send + Sync + 'static {}
