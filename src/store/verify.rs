//! Verification: every pack's index and every chunk and manifest re-hashed, damage reported
//! by the images it hurts.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::FileExt;

use rayon::prelude::*;

use super::export::{decode_chunk, parse_manifest};
use super::pack::PackEntry;
use super::packs::read_pack_index;
use super::{ImageId, Store, StoreError, StoredImage};
use crate::digest::Digest;

/// A damaged image found by `verify`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DamagedImage {
    pub id: String,
    pub names: Vec<String>,
    /// The manifest itself does not hash to the id or does not parse.
    pub manifest_damaged: bool,
    pub damaged_chunks: Vec<Digest>,
    pub missing_chunks: Vec<Digest>,
}

/// What `verify` found.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub images_checked: u64,
    pub chunks_checked: u64,
    /// Every stored chunk whose bytes do not decompress to its digest, with the problem;
    /// a pack whose index is unreadable appears as `pack:<file name>`.
    pub damaged_chunks: BTreeMap<String, String>,
    pub damaged_images: Vec<DamagedImage>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.damaged_chunks.is_empty() && self.damaged_images.is_empty()
    }
}

/// Where a chunk to check is: a frame in a pack, or a format-2 chunk file.
enum Place {
    Packed { pack: usize, entry: PackEntry },
    Loose(std::path::PathBuf),
}

impl Store {
    /// Re-hashes every chunk and manifest and reports damage by image: which images reference
    /// a damaged or missing chunk, or have a damaged manifest.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        if let Some(remote) = &self.upstream {
            return self.verify_remote(remote);
        }
        let _lock = self.shared_lock()?;
        let mut report = VerifyReport::default();
        let mut manifests: Vec<(ImageId, Result<StoredImage, String>)> = Vec::new();
        for id in self.ids()? {
            let path = self.manifest_path(&id);
            let bytes = fs::read(&path).map_err(StoreError::io(&path))?;
            let parsed = parse_manifest(&id, &bytes).map_err(|e| e.to_string());
            manifests.push((id, parsed));
        }
        let mut damaged: BTreeMap<String, String> = BTreeMap::new();
        let mut packs = Vec::new();
        let mut places: Vec<(Digest, Place)> = Vec::new();
        for name in self.pack_names()? {
            let path = self.pack_path(&name);
            let file = File::open(&path).map_err(StoreError::io(&path))?;
            match read_pack_index(&file) {
                Ok((footer, entries)) if footer.name == name => {
                    places.extend(
                        entries
                            .into_iter()
                            .map(|entry| (entry.digest, Place::Packed { pack: packs.len(), entry })),
                    );
                    packs.push(file);
                }
                Ok(_) => {
                    damaged.insert(
                        format!("pack:{}.pack", name.hex()),
                        "its index does not hash to its name".into(),
                    );
                }
                Err(e) => {
                    damaged.insert(format!("pack:{}.pack", name.hex()), e.to_string());
                }
            }
        }
        for (path, digest) in self.chunk_files()? {
            match digest {
                Some(digest) => places.push((digest, Place::Loose(path))),
                None => {
                    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    damaged.insert(name, "not a chunk name".into());
                }
            }
        }
        let problems: Vec<(String, String)> = places
            .par_iter()
            .filter_map(|(digest, place)| {
                let bytes = match place {
                    Place::Packed { pack, entry } => {
                        let mut frame = vec![0u8; entry.stored_len as usize];
                        packs[*pack].read_exact_at(&mut frame, entry.offset).map(|()| frame)
                    }
                    Place::Loose(path) => fs::read(path),
                };
                let problem = match bytes {
                    Ok(bytes) => decode_chunk(digest, &bytes).err().map(|e| match e {
                        StoreError::CorruptChunk { reason, .. } => reason,
                        other => other.to_string(),
                    }),
                    Err(e) => Some(e.to_string()),
                };
                problem.map(|p| (digest.to_string(), p))
            })
            .collect();
        let bad: HashSet<String> = problems.iter().map(|(d, _)| d.clone()).collect();
        damaged.extend(problems);
        report.chunks_checked = places.len() as u64;
        // A chunk stored twice with one copy damaged is reported damaged: which copy a reader
        // is served depends on the order it loads packs in.
        let present: HashSet<Digest> = places.iter().map(|(d, _)| *d).collect();
        judge_images(&mut report, manifests, &present, &bad, self.names_by_id()?);
        report.damaged_chunks = damaged;
        Ok(report)
    }
}

/// Adds to `report` every image whose manifest is damaged or that references a chunk that is
/// damaged (`bad`, by digest text) or not `present`.
pub(super) fn judge_images(
    report: &mut VerifyReport,
    manifests: Vec<(ImageId, Result<StoredImage, String>)>,
    present: &HashSet<Digest>,
    bad: &HashSet<String>,
    mut names: BTreeMap<ImageId, Vec<String>>,
) {
    for (id, parsed) in manifests {
        report.images_checked += 1;
        let names = names.remove(&id).unwrap_or_default();
        let manifest = match parsed {
            Ok(manifest) => manifest,
            Err(_) => {
                report.damaged_images.push(DamagedImage {
                    id: id.to_string(),
                    names,
                    manifest_damaged: true,
                    damaged_chunks: Vec::new(),
                    missing_chunks: Vec::new(),
                });
                continue;
            }
        };
        let digests: BTreeSet<Digest> = manifest.chunks().map(|c| c.digest).collect();
        let damaged_chunks: Vec<Digest> =
            digests.iter().filter(|d| bad.contains(&d.to_string())).copied().collect();
        let missing_chunks: Vec<Digest> = digests.iter().filter(|d| !present.contains(d)).copied().collect();
        if !damaged_chunks.is_empty() || !missing_chunks.is_empty() {
            report.damaged_images.push(DamagedImage {
                id: id.to_string(),
                names,
                manifest_damaged: false,
                damaged_chunks,
                missing_chunks,
            });
        }
    }
}
