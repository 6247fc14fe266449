//! Verification: every chunk and manifest re-hashed, damage reported by the images it hurts.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use rayon::prelude::*;

use super::export::{decode_chunk, parse_manifest};
use super::{ImageId, ImageManifest, Store, StoreError};
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
    /// Every chunk file whose bytes do not decompress to its name, with the problem.
    pub damaged_chunks: BTreeMap<String, String>,
    pub damaged_images: Vec<DamagedImage>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.damaged_chunks.is_empty() && self.damaged_images.is_empty()
    }
}

impl Store {
    /// Re-hashes every chunk and manifest and reports damage by image: which images reference
    /// a damaged or missing chunk, or have a damaged manifest.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let _lock = self.shared_lock()?;
        let mut report = VerifyReport::default();
        let mut manifests: Vec<(ImageId, Result<ImageManifest, String>)> = Vec::new();
        for id in self.ids()? {
            let path = self.manifest_path(&id);
            let bytes = fs::read(&path).map_err(StoreError::io(&path))?;
            let parsed = parse_manifest(&id, &bytes).map_err(|e| e.to_string());
            manifests.push((id, parsed));
        }
        let chunk_files = self.chunk_files()?;
        let damaged: BTreeMap<String, String> = chunk_files
            .par_iter()
            .filter_map(|(path, digest)| {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let Some(digest) = digest else {
                    return Some((name, "not a chunk name".to_string()));
                };
                let problem = match fs::read(path) {
                    Ok(bytes) => decode_chunk(digest, &bytes).err().map(|e| match e {
                        StoreError::CorruptChunk { reason, .. } => reason,
                        other => other.to_string(),
                    }),
                    Err(e) => Some(e.to_string()),
                };
                problem.map(|p| (digest.to_string(), p))
            })
            .collect();
        report.chunks_checked = chunk_files.len() as u64;
        let present: BTreeSet<Digest> = chunk_files.iter().filter_map(|(_, d)| *d).collect();
        let mut names = self.names_by_id()?;
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
                digests.iter().filter(|d| damaged.contains_key(&d.to_string())).copied().collect();
            let missing_chunks: Vec<Digest> =
                digests.iter().filter(|d| !present.contains(d)).copied().collect();
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
        report.damaged_chunks = damaged;
        Ok(report)
    }
}
