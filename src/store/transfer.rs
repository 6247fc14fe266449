//! Push and pull: an image (manifest, the chunks the other side lacks, its names) copied
//! between this store and a [`Remote`].
//!
//! Push packs the chunks the remote lacks into new packs, uploads them, then the manifest,
//! then the names: a push killed at any point leaves at worst packs no manifest references.
//! Pull fetches the manifest, then only the byte ranges of remote packs that hold chunks the
//! local store lacks (each checked against its digest), appends them to local packs and
//! writes the manifest last, as a put does. Remote pack indexes are cached under
//! `remote-index/`: a pack's name is the digest of its index, so a cached index is valid
//! for every remote and forever.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;

use bytes::Bytes;
use rayon::prelude::*;

use super::export::{decode_chunk, parse_manifest};
use super::names::encode_name;
use super::pack::{self, PackBuilder, PackEntry, FOOTER_BYTES};
use super::packs::{pack_name, PackWriter};
use super::remote::{Listed, Remote};
use super::{ImageId, Store, StoreError, StoredImage};
use crate::digest::Digest;

/// Frames of one pack closer than this are fetched in one request, gap included: a request
/// costs about as much as this many bytes on a fast link.
const COALESCE_GAP: u64 = 16 << 10;

/// What a push or pull did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Transfer {
    pub id: ImageId,
    /// Bytes that crossed the wire: objects and ranges read or written (not listings).
    pub transferred_bytes: u64,
    /// Chunks copied (the other side lacked them).
    pub chunks: u64,
    /// Of those, the boot profile's, fetched first in one batch (`pull --boot-first`).
    pub boot_first_chunks: u64,
}

/// How far a push or pull has come, in bytes of chunk frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferProgress {
    pub done: u64,
    pub total: u64,
}

/// Where a chunk is in a remote store: pack name and entry.
pub(super) type RemoteChunks = HashMap<Digest, (Digest, PackEntry)>;

/// What [`Store::remote_chunks`] makes of packs gc has condemned (see `remote_gc`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Condemned {
    /// Leave them out: a writer must not rely on a pack gc may remove.
    Skip,
    /// Keep them, after every other pack: a reader may still fetch from them.
    Last,
}

impl Store {
    /// Copies the image `reference` names to `remote`, with its names, sending only the
    /// chunks the remote lacks.
    pub fn push(
        &self,
        reference: &str,
        remote: &Remote,
        progress: &dyn Fn(TransferProgress),
    ) -> Result<Transfer, StoreError> {
        if let Some(upstream) = &self.upstream {
            // From a remote store: through the local one.
            self.local().pull(reference, upstream, &|_| {})?;
            return self.local().push(reference, remote, progress);
        }
        let _lock = self.shared_lock()?;
        self.refresh_packs()?;
        let id = self.resolve(reference)?;
        let manifest_path = self.manifest_path(&id);
        let manifest_bytes = fs::read(&manifest_path).map_err(StoreError::io(&manifest_path))?;
        let manifest = parse_manifest(&id, &manifest_bytes)?;
        let start = remote.transferred();
        let chunks = self.push_image(&id, &manifest, manifest_bytes, remote, progress)?;
        let mut names = self.names_by_id()?.remove(&id).unwrap_or_default();
        if reference.parse::<ImageId>().is_err() && self.names()?.contains_key(reference) {
            names.push(reference.to_string());
        }
        names.sort();
        names.dedup();
        for name in names {
            remote.put(&format!("names/{}", encode_name(&name)), Bytes::from(format!("{id}\n")))?;
        }
        self.push_profile(&id, remote)?;
        Ok(Transfer { id, transferred_bytes: remote.transferred() - start, chunks, boot_first_chunks: 0 })
    }

    /// Sends an image's missing chunks, then its manifest, to `remote`; returns how many
    /// chunks were sent. Chunks found only in condemned packs (see `remote_gc`) count as
    /// missing. Once the manifest is there the remote is listed again: a pack this push
    /// relied on that a concurrent gc condemned or removed meanwhile has its chunks sent
    /// again, so the image is complete whatever gc ran beside it.
    pub(super) fn push_image(
        &self,
        id: &ImageId,
        manifest: &StoredImage,
        manifest_bytes: Vec<u8>,
        remote: &Remote,
        progress: &dyn Fn(TransferProgress),
    ) -> Result<u64, StoreError> {
        let key = manifest_key(id);
        if remote.exists(&key)? {
            return Ok(0);
        }
        let mut sent = self.send_missing(manifest, remote, progress)?;
        // Last: a manifest on the remote means every chunk it names is there.
        remote.put(&key, Bytes::from(manifest_bytes))?;
        sent += self.send_missing(manifest, remote, progress)?;
        Ok(sent)
    }

    /// Packs and uploads the chunks of `manifest` the remote lacks (or keeps only in
    /// condemned packs); returns how many.
    fn send_missing(
        &self,
        manifest: &StoredImage,
        remote: &Remote,
        progress: &dyn Fn(TransferProgress),
    ) -> Result<u64, StoreError> {
        let present = self.remote_chunks(remote, Condemned::Skip)?;
        let mut seen = HashSet::new();
        let missing: Vec<Digest> = manifest
            .chunks()
            .map(|c| c.digest)
            .filter(|d| !present.contains_key(d) && seen.insert(*d))
            .collect();
        let total: u64 = missing.iter().filter_map(|d| self.stored_chunk_len(d)).sum();
        let mut done = 0;
        let mut builder = PackBuilder::new(Vec::new());
        for (i, digest) in missing.iter().enumerate() {
            let frame = self.read_frame(digest)?;
            let raw_len = decode_chunk(digest, &frame)?.len() as u32;
            builder.append(*digest, &frame, raw_len).map_err(StoreError::io(&self.tmp_dir()))?;
            done += frame.len() as u64;
            if builder.frame_bytes() >= pack::PACK_TARGET_BYTES || i + 1 == missing.len() {
                let full = std::mem::replace(&mut builder, PackBuilder::new(Vec::new()));
                self.upload_pack(remote, full)?;
                progress(TransferProgress { done, total });
            }
        }
        Ok(missing.len() as u64)
    }

    /// Copies the image `reference` names in `remote` into this store (and the name, when
    /// `reference` is one), fetching only the chunks this store lacks.
    pub fn pull(
        &self,
        reference: &str,
        remote: &Remote,
        progress: &dyn Fn(TransferProgress),
    ) -> Result<Transfer, StoreError> {
        self.pull_image(reference, remote, false, progress)
    }

    /// [`Store::pull`]; with `boot_first`, the chunks of the image's boot profile (if it has
    /// one) are fetched first, in one batch, so a boot can start before the rest has come.
    /// The profile comes along either way.
    pub fn pull_image(
        &self,
        reference: &str,
        remote: &Remote,
        boot_first: bool,
        progress: &dyn Fn(TransferProgress),
    ) -> Result<Transfer, StoreError> {
        if let Some(upstream) = &self.upstream {
            // Into a remote store: through the local one.
            let pulled = self.local().pull_image(reference, remote, boot_first, progress)?;
            self.local().push(&pulled.id.to_string(), upstream, &|_| {})?;
            return Ok(pulled);
        }
        let start = remote.transferred();
        let (id, name) = resolve_remote(reference, remote)?;
        let (mut chunks, mut boot_first_chunks) = (0, 0);
        {
            let _lock = self.shared_lock()?;
            self.refresh_packs()?;
            let complete = self.image(&id).is_ok_and(|m| m.chunks().all(|c| self.has_chunk(&c.digest)));
            if !complete {
                let key = manifest_key(&id);
                let bytes = remote
                    .get(&key)?
                    .ok_or_else(|| StoreError::NotFound(format!("{reference} in {}", remote.url())))?;
                let manifest = parse_manifest(&id, &bytes)?;
                let profile = self.remote_profile(&id, remote)?;
                let mut seen = HashSet::new();
                let mut missing = |digests: &mut dyn Iterator<Item = Digest>| -> Vec<Digest> {
                    digests.filter(|d| !self.has_chunk(d) && seen.insert(*d)).collect()
                };
                let first = match (&profile, boot_first) {
                    (Some(profile), true) => missing(&mut profile.iter().copied()),
                    _ => Vec::new(),
                };
                let rest = missing(&mut manifest.chunks().map(|c| c.digest));
                if !first.is_empty() || !rest.is_empty() {
                    let located = self.remote_chunks(remote, Condemned::Last)?;
                    for batch in [&first, &rest] {
                        if !batch.is_empty() {
                            chunks += self.fetch_chunks(remote, &located, batch, progress)?;
                        }
                    }
                    boot_first_chunks = first.len() as u64;
                }
                self.sync_packs_dir()?;
                self.write_atomic_durable(&self.manifest_path(&id), &bytes)?;
                if let Some(profile) = profile {
                    self.keep_pulled_profile(&id, &profile)?;
                }
            }
        }
        if let Some(name) = name {
            self.tag(&id.to_string(), &name)?;
        }
        Ok(Transfer { id, transferred_bytes: remote.transferred() - start, chunks, boot_first_chunks })
    }

    /// Fetches `missing` chunks from the remote's packs, by coalesced byte ranges, checks
    /// each and appends them to local packs. Returns how many were fetched.
    pub(super) fn fetch_chunks(
        &self,
        remote: &Remote,
        located: &RemoteChunks,
        missing: &[Digest],
        progress: &dyn Fn(TransferProgress),
    ) -> Result<u64, StoreError> {
        let mut by_pack: BTreeMap<Digest, Vec<PackEntry>> = BTreeMap::new();
        for digest in missing {
            let (pack, entry) = located.get(digest).ok_or(StoreError::MissingChunk(*digest))?;
            by_pack.entry(*pack).or_default().push(*entry);
        }
        let total: u64 = by_pack.values().flatten().map(|e| u64::from(e.stored_len)).sum();
        let mut done = 0;
        let mut writer = PackWriter::new(self);
        for (pack, entries) in by_pack {
            let frames = fetch_frames(remote, &pack, entries)?;
            let checked: Vec<u32> = frames
                .par_iter()
                .map(|(digest, frame)| decode_chunk(digest, frame).map(|data| data.len() as u32))
                .collect::<Result<_, _>>()?;
            for ((digest, frame), raw_len) in frames.iter().zip(checked) {
                writer.append(*digest, frame, raw_len)?;
                done += frame.len() as u64;
            }
            progress(TransferProgress { done, total });
        }
        writer.seal()?;
        Ok(missing.len() as u64)
    }

    /// Every chunk in the remote's packs, with where it is. Indexes come from the local
    /// cache when present, else from two ranged reads of the pack (footer, index).
    pub(super) fn remote_chunks(
        &self,
        remote: &Remote,
        condemned: Condemned,
    ) -> Result<RemoteChunks, StoreError> {
        // Markers first: a pack condemned after this listing is seen by the caller's next
        // look (push looks again after its manifest).
        let marked: HashSet<Digest> =
            remote.list(CONDEMNED_DIR)?.iter().filter_map(|l| pack_name(&l.name)).collect();
        let mut packs = remote.list("packs")?;
        packs.retain(|l| {
            condemned == Condemned::Last || pack_name(&l.name).is_some_and(|n| !marked.contains(&n))
        });
        // Condemned packs last, so that a chunk is served from a pack that stays.
        packs.sort_by_key(|l| pack_name(&l.name).is_some_and(|n| marked.contains(&n)));
        let mut out = RemoteChunks::new();
        for (name, entries) in self.remote_pack_indexes(remote, &packs)? {
            for entry in entries {
                out.entry(entry.digest).or_insert((name, entry));
            }
        }
        Ok(out)
    }

    /// The index of each listed pack (from the local cache, else fetched and cached).
    pub(super) fn remote_pack_indexes(
        &self,
        remote: &Remote,
        packs: &[Listed],
    ) -> Result<Vec<(Digest, Vec<PackEntry>)>, StoreError> {
        let cache = self.root.join("remote-index");
        fs::create_dir_all(&cache).map_err(StoreError::io(&cache))?;
        let mut out = Vec::new();
        for listed in packs {
            let size = listed.size;
            let Some(name) = pack_name(&listed.name) else { continue };
            let cached = cache.join(format!("{}.idx", name.hex()));
            let entries = match fs::read(&cached).ok().and_then(|tail| parse_tail(&tail, size, &name)) {
                Some(entries) => entries,
                None => {
                    let damaged = |reason: String| StoreError::CorruptChunk { digest: name, reason };
                    let footer_at = size
                        .checked_sub(FOOTER_BYTES as u64)
                        .ok_or_else(|| damaged("remote pack is too short".into()))?;
                    let footer = remote.get_range(&pack_key(&name), footer_at..size)?;
                    let parsed = pack::parse_footer(&footer, size)
                        .map_err(|e| damaged(format!("remote pack: {e}")))?;
                    let index = if parsed.entries == 0 {
                        Bytes::new()
                    } else {
                        remote.get_range(&pack_key(&name), parsed.index_offset..footer_at)?
                    };
                    let mut tail = index.to_vec();
                    tail.extend_from_slice(&footer);
                    let entries = parse_tail(&tail, size, &name)
                        .ok_or_else(|| damaged("remote pack index does not match its name".into()))?;
                    self.write_atomic_durable(&cached, &tail)?;
                    entries
                }
            };
            out.push((name, entries));
        }
        Ok(out)
    }

    /// Uploads a pack built in memory and remembers its index, so the next push or pull
    /// does not fetch it back.
    pub(super) fn upload_pack(
        &self,
        remote: &Remote,
        builder: PackBuilder<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let (bytes, name, _) = builder.finish().map_err(StoreError::io(&self.tmp_dir()))?;
        let index_at = bytes.len() - FOOTER_BYTES;
        let footer =
            pack::parse_footer(&bytes[index_at..], bytes.len() as u64).expect("a pack just built parses");
        let tail = bytes[footer.index_offset as usize..].to_vec();
        remote.put(&pack_key(&name), Bytes::from(bytes))?;
        let cache = self.root.join("remote-index");
        fs::create_dir_all(&cache).map_err(StoreError::io(&cache))?;
        self.write_atomic_durable(&cache.join(format!("{}.idx", name.hex())), &tail)
    }
}

/// The frames of `entries` of one remote pack, fetched as byte ranges (neighbours closer
/// than [`COALESCE_GAP`] in one request), unchecked, in offset order.
pub(super) fn fetch_frames(
    remote: &Remote,
    pack: &Digest,
    mut entries: Vec<PackEntry>,
) -> Result<Vec<(Digest, Bytes)>, StoreError> {
    entries.sort_by_key(|e| e.offset);
    let mut ranges: Vec<std::ops::Range<u64>> = Vec::new();
    for e in &entries {
        let end = e.offset + u64::from(e.stored_len);
        match ranges.last_mut() {
            Some(last) if e.offset <= last.end + COALESCE_GAP => last.end = last.end.max(end),
            _ => ranges.push(e.offset..end),
        }
    }
    let fetched = remote.get_ranges(&pack_key(pack), &ranges)?;
    let frame_of = |e: &PackEntry| -> Bytes {
        let i = ranges.partition_point(|r| r.end <= e.offset);
        let from = (e.offset - ranges[i].start) as usize;
        fetched[i].slice(from..from + e.stored_len as usize)
    };
    Ok(entries.iter().map(|e| (e.digest, frame_of(e))).collect())
}

/// A pack's tail (index, then footer) checked against the pack's size and name.
fn parse_tail(tail: &[u8], pack_len: u64, name: &Digest) -> Option<Vec<PackEntry>> {
    let footer_at = tail.len().checked_sub(FOOTER_BYTES)?;
    let footer = pack::parse_footer(&tail[footer_at..], pack_len).ok()?;
    if footer.name != *name {
        return None;
    }
    pack::parse_index(&tail[..footer_at], &footer).ok()
}

/// Where gc marks a pack it means to remove: `condemned/<name>.pack`, an empty object.
pub(super) const CONDEMNED_DIR: &str = "condemned";

pub(super) fn manifest_key(id: &ImageId) -> String {
    format!("images/{id}.json.zst")
}

pub(super) fn pack_key(name: &Digest) -> String {
    format!("packs/{}.pack", name.hex())
}

/// The image `reference` names in the remote: a full id, a name, or an unambiguous id
/// prefix. Returns the name too when it was one.
pub(super) fn resolve_remote(
    reference: &str,
    remote: &Remote,
) -> Result<(ImageId, Option<String>), StoreError> {
    if let Ok(id) = reference.parse::<ImageId>() {
        return Ok((id, None));
    }
    // Names as the local store keeps them: `app` means `app:latest`; a name stored before
    // that rule is still found as it was written.
    let tagged = crate::source::reference::with_default_tag(reference);
    for name in [tagged.as_str(), reference] {
        if let Some(text) = remote.get(&format!("names/{}", encode_name(name)))? {
            let id = String::from_utf8_lossy(&text).trim().parse::<ImageId>().map_err(|e| {
                StoreError::CorruptManifest { id: name.to_string(), reason: format!("remote name holds {e}") }
            })?;
            return Ok((id, Some(name.to_string())));
        }
    }
    let prefix = reference.strip_prefix("sha256:").unwrap_or(reference);
    let not_found = || StoreError::NotFound(format!("{reference} in {}", remote.url()));
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_found());
    }
    let matches: Vec<ImageId> = remote
        .list("images")?
        .into_iter()
        .filter_map(|l| l.name.strip_suffix(".json.zst").and_then(|hex| hex.parse().ok()))
        .filter(|id: &ImageId| id.hex().starts_with(prefix))
        .collect();
    match matches.as_slice() {
        [] => Err(not_found()),
        [id] => Ok((*id, None)),
        many => Err(StoreError::Ambiguous {
            prefix: reference.to_string(),
            candidates: many.iter().map(|id| id.short()).collect(),
        }),
    }
}
