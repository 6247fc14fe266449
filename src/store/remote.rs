//! A remote store on an object store (`s3://BUCKET[/PREFIX]` for any S3-compatible service,
//! `file:///PATH` for a directory): immutable packs and manifests, small name objects.
//!
//! ```text
//! packs/<name>.pack      a pack, byte for byte as a local store writes it (see `pack`)
//! images/<id>.json.zst   a manifest, as stored locally
//! names/<name>           an image id (name percent-encoded)
//! ```
//!
//! Nothing is ever changed in place: a pack or manifest, once written, keeps its bytes (its
//! name is their digest), and a manifest is written only after every pack it needs. A
//! reader that sees a manifest can therefore fetch everything it references, whatever
//! writers run beside it. Every byte that crosses the wire (object bodies and ranges, not
//! listings) is counted, for `transferred_bytes`.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::runtime::Handle;

use super::StoreError;

/// Ranged reads of one pack in flight at once: enough to hide the round trip on a loopback
/// or LAN endpoint without flooding a small server.
const PARALLEL_REQUESTS: usize = 8;

/// One object as a listing shows it.
#[derive(Clone, Debug)]
pub struct Listed {
    /// The file name (the last part of the key).
    pub name: String,
    pub size: u64,
    /// When the object was written, by the server's clock.
    pub modified: SystemTime,
}

/// An open remote store.
pub struct Remote {
    objects: Arc<dyn ObjectStore>,
    prefix: String,
    url: String,
    rt: Handle,
    transferred: AtomicU64,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish()
    }
}

/// Whether `location` names a remote store (a URL) rather than a directory.
pub fn is_remote(location: &str) -> bool {
    location.starts_with("s3://") || location.starts_with("file://")
}

impl Remote {
    /// Opens `url`: `s3://BUCKET[/PREFIX]`, configured by the AWS_* environment
    /// (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ALLOW_HTTP=true`), or `file:///PATH` (created if absent). Its requests run on `rt`.
    pub fn open(url: &str, rt: &Handle) -> Result<Remote, StoreError> {
        let invalid =
            |reason: &str| StoreError::InvalidRemote { url: url.to_string(), reason: reason.to_string() };
        let failed = |source| StoreError::Remote { url: url.to_string(), source };
        let (objects, prefix): (Arc<dyn ObjectStore>, String) = if let Some(rest) = url.strip_prefix("s3://")
        {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("no bucket: expected s3://BUCKET[/PREFIX]"));
            }
            let s3 = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(failed)?;
            (Arc::new(s3), prefix.trim_matches('/').to_string())
        } else if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(invalid("expected an absolute path: file:///PATH"));
            }
            std::fs::create_dir_all(path).map_err(|source| StoreError::Io { path: path.into(), source })?;
            let local = object_store::local::LocalFileSystem::new_with_prefix(path).map_err(failed)?;
            (Arc::new(local), String::new())
        } else {
            return Err(invalid("expected s3://BUCKET[/PREFIX] or file:///PATH"));
        };
        Ok(Remote { objects, prefix, url: url.to_string(), rt: rt.clone(), transferred: AtomicU64::new(0) })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Bytes that crossed the wire so far.
    pub fn transferred(&self) -> u64 {
        self.transferred.load(Ordering::Relaxed)
    }

    fn key(&self, rel: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(rel)
        } else {
            ObjectPath::from(format!("{}/{rel}", self.prefix))
        }
    }

    fn failed(&self) -> impl Fn(object_store::Error) -> StoreError + '_ {
        move |source| StoreError::Remote { url: self.url.clone(), source }
    }

    fn count(&self, bytes: usize) {
        self.transferred.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// The whole object at `rel`, or none if it does not exist.
    pub fn get(&self, rel: &str) -> Result<Option<Bytes>, StoreError> {
        let key = self.key(rel);
        let got = self.rt.block_on(async {
            match self.objects.get(&key).await {
                Ok(result) => result.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        let got = got.map_err(self.failed())?;
        if let Some(bytes) = &got {
            self.count(bytes.len());
        }
        Ok(got)
    }

    /// Whether an object exists (a HEAD request: no body crosses the wire).
    pub fn exists(&self, rel: &str) -> Result<bool, StoreError> {
        let key = self.key(rel);
        match self.rt.block_on(self.objects.head(&key)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.failed()(e)),
        }
    }

    /// Byte ranges of the object at `rel`, fetched a few at a time, in the order asked.
    pub fn get_ranges(&self, rel: &str, ranges: &[Range<u64>]) -> Result<Vec<Bytes>, StoreError> {
        let key = self.key(rel);
        let got: Vec<Bytes> = self
            .rt
            .block_on(
                futures_util::stream::iter(ranges.iter().cloned())
                    .map(|range| self.objects.get_range(&key, range))
                    .buffered(PARALLEL_REQUESTS)
                    .try_collect(),
            )
            .map_err(self.failed())?;
        self.count(got.iter().map(Bytes::len).sum());
        Ok(got)
    }

    /// One byte range of the object at `rel`.
    pub fn get_range(&self, rel: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let key = self.key(rel);
        let got = self.rt.block_on(self.objects.get_range(&key, range)).map_err(self.failed())?;
        self.count(got.len());
        Ok(got)
    }

    /// Writes an object whole; readers see the old object or the new one, never a part.
    pub fn put(&self, rel: &str, bytes: Bytes) -> Result<(), StoreError> {
        let len = bytes.len();
        let key = self.key(rel);
        self.rt.block_on(self.objects.put(&key, PutPayload::from_bytes(bytes))).map_err(self.failed())?;
        self.count(len);
        Ok(())
    }

    /// Several whole objects, a few requests at a time, in the order asked; `None` for
    /// those that do not exist.
    pub fn get_all(&self, rels: &[String]) -> Result<Vec<Option<Bytes>>, StoreError> {
        let got: Vec<Option<Bytes>> = self
            .rt
            .block_on(
                futures_util::stream::iter(rels.iter().map(|rel| self.key(rel)))
                    .map(|key| async move {
                        match self.objects.get(&key).await {
                            Ok(result) => result.bytes().await.map(Some),
                            Err(object_store::Error::NotFound { .. }) => Ok(None),
                            Err(e) => Err(e),
                        }
                    })
                    .buffered(PARALLEL_REQUESTS)
                    .try_collect(),
            )
            .map_err(self.failed())?;
        self.count(got.iter().flatten().map(Bytes::len).sum());
        Ok(got)
    }

    /// Removes an object; one already gone is not an error.
    pub fn delete(&self, rel: &str) -> Result<(), StoreError> {
        let key = self.key(rel);
        match self.rt.block_on(self.objects.delete(&key)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed()(e)),
        }
    }

    /// The objects under `dir` (one level).
    pub fn list(&self, dir: &str) -> Result<Vec<Listed>, StoreError> {
        let key = self.key(dir);
        let listed =
            self.rt.block_on(self.objects.list(Some(&key)).try_collect::<Vec<_>>()).map_err(self.failed())?;
        Ok(listed
            .into_iter()
            .filter_map(|meta| {
                // object_store percent-encodes what a key part may not hold (our names'
                // own `%` among them): undo that, so a listed name is the name we wrote.
                let name = super::names::decode_name(meta.location.filename()?)?;
                Some(Listed { name, size: meta.size, modified: meta.last_modified.into() })
            })
            .collect())
    }
}
