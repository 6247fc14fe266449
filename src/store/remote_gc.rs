//! gc and verify of a remote store. A remote has no lock: any number of machines push to it
//! while gc runs, so gc never changes an object in place and removes a pack in two steps.
//!
//! 1. A pack older than the grace period that no image needs is *condemned*: an empty marker
//!    `condemned/<name>.pack` is written beside it. A mostly dead pack (less than
//!    [`REWRITE_BELOW_LIVE`] of its bytes live) has its live chunks copied into a new pack
//!    first. Packs younger than the grace period are spared: a push may be under way that
//!    uploaded them and has not yet written its manifest.
//! 2. A later gc removes a condemned pack (then its marker) once the marker is older than the
//!    grace period, unless an image written since needs one of its chunks: then the marker
//!    goes and the pack stays (rescued).
//!
//! Writers skip condemned packs: a push treats their chunks as missing, and once its manifest
//! is written it lists the remote again and sends anew any chunk whose pack was condemned or
//! removed meanwhile. gc lists markers, then packs, then names, then manifests; a pack it
//! removes had its marker listed before any manifest it read, so a push that relied on that
//! pack either saw the marker (after its manifest) or wrote its manifest before gc listed
//! manifests, and gc then sees the chunks as live. Run one gc per remote at a time.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rayon::prelude::*;

use super::export::{decode_chunk, parse_manifest};
use super::gc::REWRITE_BELOW_LIVE;
use super::names::decode_name;
use super::pack::{self, PackBuilder, PackEntry, ENTRY_BYTES, FOOTER_BYTES};
use super::packs::pack_name;
use super::remote::Remote;
use super::transfer::{fetch_frames, manifest_key, pack_key, CONDEMNED_DIR};
use super::verify::judge_images;
use super::{GcReport, ImageId, Store, StoreError, StoredImage, VerifyReport};
use crate::digest::Digest;

/// How long gc of a remote spares what is new, and waits between condemning a pack and
/// removing it: longer than any push takes, with room for clock skew between machines.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60 * 60);

/// What gc does with one remote pack.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PackState {
    /// Younger than the grace period.
    Young,
    Old,
    /// Condemned at this time.
    Condemned(SystemTime),
}

impl Store {
    /// [`Store::gc`], sparing on a remote store what is younger than `grace` (a local store
    /// has its lock and needs no grace).
    pub fn gc_with_grace(&self, grace: Duration) -> Result<GcReport, StoreError> {
        match &self.upstream {
            Some(remote) => self.gc_remote(remote, grace),
            None => self.gc(),
        }
    }

    /// gc of the upstream, as the module doc describes.
    pub(super) fn gc_remote(&self, remote: &Remote, grace: Duration) -> Result<GcReport, StoreError> {
        let now = SystemTime::now();
        let aged = |t: SystemTime| now.duration_since(t).is_ok_and(|age| age >= grace);
        let mut report = GcReport::default();
        // The order of these listings is what makes gc safe beside pushes (module doc).
        let markers: HashMap<Digest, SystemTime> = remote
            .list(CONDEMNED_DIR)?
            .into_iter()
            .filter_map(|l| pack_name(&l.name).map(|n| (n, l.modified)))
            .collect();
        let packs = remote.list("packs")?;
        let names = remote.list("names")?;
        let caches = remote.list("cache")?;
        let images = remote.list("images")?;
        let mut ids = HashSet::new();
        let mut live: HashSet<Digest> = HashSet::new();
        for listed in &images {
            let Some(id) = listed.name.strip_suffix(".json.zst").and_then(|h| h.parse::<ImageId>().ok())
            else {
                continue;
            };
            // A manifest that cannot be read stops gc: its chunks would look dead.
            match self.upstream_manifest(remote, &id) {
                Ok(bytes) => live.extend(parse_manifest(&id, &bytes)?.chunks().map(|c| c.digest)),
                Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            }
            ids.insert(id);
        }

        let mut packs: Vec<_> = self
            .remote_pack_indexes(remote, &packs)?
            .into_iter()
            .zip(packs.iter().filter(|l| pack_name(&l.name).is_some()))
            .map(|((name, entries), listed)| {
                let state = match markers.get(&name) {
                    Some(at) => PackState::Condemned(*at),
                    None if aged(listed.modified) => PackState::Old,
                    None => PackState::Young,
                };
                (state, name, entries, listed.size)
            })
            .collect();
        // Young packs claim their chunks first, condemned ones last: a chunk is kept once.
        packs.sort_by_key(|(state, name, _, _)| (*state, *name));
        let mut kept: HashSet<Digest> = HashSet::new();
        let mut rewrite = PackBuilder::new(Vec::new());
        let mut rewritten = Vec::new();
        for (state, name, entries, size) in packs {
            let needed: Vec<PackEntry> = entries
                .iter()
                .filter(|e| live.contains(&e.digest) && !kept.contains(&e.digest))
                .copied()
                .collect();
            kept.extend(needed.iter().map(|e| e.digest));
            report.chunks_kept += needed.len() as u64;
            let frame_bytes = size.saturating_sub((FOOTER_BYTES + entries.len() * ENTRY_BYTES) as u64);
            let needed_bytes: u64 = needed.iter().map(|e| u64::from(e.stored_len)).sum();
            match state {
                PackState::Young => report.packs_spared += 1,
                PackState::Condemned(_) if !needed.is_empty() => {
                    remote.delete(&marker_key(&name))?;
                    report.packs_rescued += 1;
                }
                PackState::Condemned(at) if aged(at) => {
                    remote.delete(&pack_key(&name))?;
                    remote.delete(&marker_key(&name))?;
                    report.packs_removed += 1;
                    report.chunks_removed += entries.len() as u64;
                    report.bytes_freed += size;
                }
                PackState::Condemned(_) => {}
                PackState::Old if needed_bytes as f64 >= REWRITE_BELOW_LIVE * frame_bytes.max(1) as f64 => {}
                PackState::Old => {
                    for (digest, frame) in fetch_frames(remote, &name, needed.clone())? {
                        let raw_len = needed.iter().find(|e| e.digest == digest).map_or(0, |e| e.raw_len);
                        rewrite.append(digest, &frame, raw_len).map_err(StoreError::io(&self.tmp_dir()))?;
                    }
                    if rewrite.frame_bytes() >= pack::PACK_TARGET_BYTES {
                        let full = std::mem::replace(&mut rewrite, PackBuilder::new(Vec::new()));
                        self.upload_pack(remote, full)?;
                        report.packs_written += 1;
                    }
                    rewritten.push(name);
                }
            }
        }
        if rewrite.frame_bytes() > 0 {
            self.upload_pack(remote, rewrite)?;
            report.packs_written += 1;
        }
        // Condemned only once the copies of their live chunks are uploaded.
        for name in rewritten {
            remote.put(&marker_key(&name), Bytes::new())?;
            report.packs_condemned += 1;
        }

        // Names and cache entries of removed images, once old enough not to be a push's.
        for (dir, listed) in [("names", names), ("cache", caches)] {
            let keys: Vec<String> = listed.iter().map(|l| format!("{dir}/{}", l.name)).collect();
            for ((listed, key), text) in listed.iter().zip(&keys).zip(remote.get_all(&keys)?) {
                let target = text.and_then(|t| String::from_utf8_lossy(&t).trim().parse::<ImageId>().ok());
                let valid_name = dir == "cache" || decode_name(&listed.name).is_some();
                if aged(listed.modified) && !(valid_name && target.is_some_and(|id| ids.contains(&id))) {
                    remote.delete(key)?;
                    report.stale_entries_removed += 1;
                }
            }
        }
        Ok(report)
    }

    /// verify of the upstream: every manifest, and every pack fetched whole and each of its
    /// chunks re-hashed; damage reported by the images it hurts.
    pub(super) fn verify_remote(&self, remote: &Remote) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        let mut manifests: Vec<(ImageId, Result<StoredImage, String>)> = Vec::new();
        for id in self.upstream_ids(remote)? {
            // Fetched afresh: a cached copy would hide damage on the remote.
            let Some(bytes) = remote.get(&manifest_key(&id))? else { continue };
            manifests.push((id, parse_manifest(&id, &bytes).map_err(|e| e.to_string())));
        }
        let mut present: HashSet<Digest> = HashSet::new();
        let mut bad: HashSet<String> = HashSet::new();
        for listed in remote.list("packs")? {
            let Some(name) = pack_name(&listed.name) else { continue };
            let Some(bytes) = remote.get(&pack_key(&name))? else { continue };
            let entries = match parse_whole_pack(&bytes, &name) {
                Ok(entries) => entries,
                Err(problem) => {
                    report.damaged_chunks.insert(format!("pack:{}", listed.name), problem);
                    continue;
                }
            };
            report.chunks_checked += entries.len() as u64;
            let problems: Vec<(Digest, String)> = entries
                .par_iter()
                .filter_map(|e| {
                    let frame = &bytes[e.offset as usize..][..e.stored_len as usize];
                    decode_chunk(&e.digest, frame).err().map(|err| (e.digest, err.to_string()))
                })
                .collect();
            present.extend(entries.iter().map(|e| e.digest));
            for (digest, problem) in problems {
                bad.insert(digest.to_string());
                report.damaged_chunks.insert(digest.to_string(), problem);
            }
        }
        let mut names = std::collections::BTreeMap::<ImageId, Vec<String>>::new();
        for (name, id) in self.upstream_names(remote)? {
            names.entry(id).or_default().push(name);
        }
        judge_images(&mut report, manifests, &present, &bad, names);
        Ok(report)
    }
}

fn marker_key(name: &Digest) -> String {
    format!("{CONDEMNED_DIR}/{}.pack", name.hex())
}

/// A whole pack's entries, its footer and index checked against its name.
fn parse_whole_pack(bytes: &[u8], name: &Digest) -> Result<Vec<PackEntry>, String> {
    let len = bytes.len() as u64;
    let footer_at = bytes.len().checked_sub(FOOTER_BYTES).ok_or("too short to be a pack")?;
    let footer = pack::parse_footer(&bytes[footer_at..], len).map_err(|e| e.to_string())?;
    if footer.name != *name {
        return Err("its index does not hash to its name".into());
    }
    let index = &bytes[footer.index_offset as usize..footer_at];
    pack::parse_index(index, &footer).map_err(|e| e.to_string())
}
