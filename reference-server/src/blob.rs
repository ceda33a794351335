//! Attachment blobs: the bytes of uploaded ciphertext, behind [`BlobStore`].
//!
//! An upload is written to a partial file, appended to in order, and made
//! visible under its blob id only when it is complete (synced, then renamed).
//! Partial uploads that stay idle are removed by
//! [`purge_partial`](BlobStore::purge_partial), which also runs at start-up.
//! The index of finished blobs (owner, size, age) is in the
//! [`Storage`](crate::storage::Storage); a blob file the index lost (a crash
//! between the file and its index row, either way) is removed by age with
//! [`purge_older`](BlobStore::purge_older).

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use hush::wire::protocol::{BlobId, UploadId};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Where uploaded blobs are kept.
pub trait BlobStore: Send + Sync + 'static {
    /// Creates an empty partial upload.
    fn begin(&self, upload: &UploadId) -> impl Future<Output = io::Result<()>> + Send;

    /// Appends bytes to a partial upload.
    fn append(&self, upload: &UploadId, data: &[u8])
    -> impl Future<Output = io::Result<()>> + Send;

    /// Makes a partial upload durable and visible as `blob`.
    fn commit(
        &self,
        upload: &UploadId,
        blob: &BlobId,
    ) -> impl Future<Output = io::Result<()>> + Send;

    /// Drops a partial upload.
    fn abort(&self, upload: &UploadId) -> impl Future<Output = io::Result<()>> + Send;

    /// Up to `max` bytes of a blob from `offset`, with the blob's total size;
    /// `None` if there is no such blob.
    fn read(
        &self,
        blob: &BlobId,
        offset: u64,
        max: usize,
    ) -> impl Future<Output = io::Result<Option<(u64, Vec<u8>)>>> + Send;

    /// Deletes a blob (no error if it is gone already).
    fn delete(&self, blob: &BlobId) -> impl Future<Output = io::Result<()>> + Send;

    /// Removes partial uploads not written to for `idle`; returns how many.
    fn purge_partial(&self, idle: Duration) -> impl Future<Output = io::Result<u64>> + Send;

    /// Removes finished blobs last written more than `age` ago, whether the
    /// index knows them or not; returns how many.
    fn purge_older(&self, age: Duration) -> impl Future<Output = io::Result<u64>> + Send;
}

/// Blobs as files in a local folder: `blobs/<id>` and `partial/<id>`.
#[derive(Debug, Clone)]
pub struct LocalBlobStore {
    blobs: PathBuf,
    partial: PathBuf,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl LocalBlobStore {
    /// Opens (and creates) the store in `dir`.
    ///
    /// # Errors
    /// An I/O error creating the folders.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let store = Self {
            blobs: dir.join("blobs"),
            partial: dir.join("partial"),
        };
        std::fs::create_dir_all(&store.blobs)?;
        std::fs::create_dir_all(&store.partial)?;
        Ok(store)
    }

    fn blob_path(&self, blob: &BlobId) -> PathBuf {
        self.blobs.join(hex(&blob.0))
    }

    fn partial_path(&self, upload: &UploadId) -> PathBuf {
        self.partial.join(hex(&upload.0))
    }
}

fn ignore_missing(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

impl BlobStore for LocalBlobStore {
    async fn begin(&self, upload: &UploadId) -> io::Result<()> {
        tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.partial_path(upload))
            .await
            .map(drop)
    }

    async fn append(&self, upload: &UploadId, data: &[u8]) -> io::Result<()> {
        let mut file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(self.partial_path(upload))
            .await?;
        file.write_all(data).await?;
        file.flush().await
    }

    async fn commit(&self, upload: &UploadId, blob: &BlobId) -> io::Result<()> {
        let from = self.partial_path(upload);
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&from)
            .await?;
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&from, self.blob_path(blob)).await?;
        // The rename itself is made durable by syncing the folder.
        let dir = tokio::fs::File::open(&self.blobs).await?;
        dir.sync_all().await
    }

    async fn abort(&self, upload: &UploadId) -> io::Result<()> {
        ignore_missing(tokio::fs::remove_file(self.partial_path(upload)).await)
    }

    async fn read(
        &self,
        blob: &BlobId,
        offset: u64,
        max: usize,
    ) -> io::Result<Option<(u64, Vec<u8>)>> {
        let mut file = match tokio::fs::File::open(self.blob_path(blob)).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let total = file.metadata().await?.len();
        let start = offset.min(total);
        let len = usize::try_from(total - start)
            .unwrap_or(usize::MAX)
            .min(max);
        file.seek(io::SeekFrom::Start(start)).await?;
        let mut data = vec![0u8; len];
        file.read_exact(&mut data).await?;
        Ok(Some((total, data)))
    }

    async fn delete(&self, blob: &BlobId) -> io::Result<()> {
        ignore_missing(tokio::fs::remove_file(self.blob_path(blob)).await)
    }

    async fn purge_partial(&self, idle: Duration) -> io::Result<u64> {
        remove_older(&self.partial, idle).await
    }

    async fn purge_older(&self, age: Duration) -> io::Result<u64> {
        remove_older(&self.blobs, age).await
    }
}

/// Removes the files of `dir` last modified `age` ago or earlier.
async fn remove_older(dir: &Path, age: Duration) -> io::Result<u64> {
    let cutoff = SystemTime::now()
        .checked_sub(age)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut removed = 0;
    let mut entries = tokio::fs::read_dir(dir).await?;
    while let Some(entry) = entries.next_entry().await? {
        let metadata = match entry.metadata().await {
            Ok(m) => m,
            // Removed meanwhile (an abort, a delete).
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if metadata.is_file() && metadata.modified()? <= cutoff {
            ignore_missing(tokio::fs::remove_file(entry.path()).await)?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[tokio::test]
    async fn uploads_become_visible_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::open(dir.path()).unwrap();
        let (upload, blob) = (UploadId([1; 16]), BlobId([2; 16]));
        store.begin(&upload).await.unwrap();
        assert!(store.begin(&upload).await.is_err(), "ids are single use");
        store.append(&upload, b"hello ").await.unwrap();
        store.append(&upload, b"world").await.unwrap();
        assert_eq!(store.read(&blob, 0, 100).await.unwrap(), None);
        store.commit(&upload, &blob).await.unwrap();
        assert_eq!(
            store.read(&blob, 0, 100).await.unwrap(),
            Some((11, b"hello world".to_vec()))
        );
        assert_eq!(
            store.read(&blob, 6, 3).await.unwrap(),
            Some((11, b"wor".to_vec()))
        );
        assert_eq!(store.read(&blob, 99, 3).await.unwrap(), Some((11, vec![])));
        store.delete(&blob).await.unwrap();
        store.delete(&blob).await.unwrap();
        assert_eq!(store.read(&blob, 0, 1).await.unwrap(), None);
    }

    #[tokio::test]
    async fn idle_partial_uploads_are_purged() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::open(dir.path()).unwrap();
        store.begin(&UploadId([3; 16])).await.unwrap();
        assert_eq!(
            store
                .purge_partial(Duration::from_secs(3600))
                .await
                .unwrap(),
            0
        );
        assert_eq!(store.purge_partial(Duration::ZERO).await.unwrap(), 1);
        assert!(store.append(&UploadId([3; 16]), b"x").await.is_err());
    }

    #[tokio::test]
    async fn blobs_are_purged_by_the_age_of_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::open(dir.path()).unwrap();
        let (old, new) = (BlobId([4; 16]), BlobId([5; 16]));
        for (n, blob) in [(6u8, &old), (7, &new)] {
            store.begin(&UploadId([n; 16])).await.unwrap();
            store.append(&UploadId([n; 16]), b"data").await.unwrap();
            store.commit(&UploadId([n; 16]), blob).await.unwrap();
        }
        store.begin(&UploadId([8; 16])).await.unwrap();
        let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
        for path in [
            store.blob_path(&old),
            store.partial_path(&UploadId([8; 16])),
        ] {
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(two_hours_ago)
                .unwrap();
        }
        let hour = Duration::from_secs(3600);
        assert_eq!(store.purge_older(hour).await.unwrap(), 1);
        assert_eq!(store.read(&old, 0, 4).await.unwrap(), None);
        assert!(store.read(&new, 0, 4).await.unwrap().is_some());
        // Partial uploads are not blobs: only purge_partial takes them.
        assert_eq!(store.purge_older(hour).await.unwrap(), 0);
        assert_eq!(store.purge_partial(hour).await.unwrap(), 1);
    }
}
