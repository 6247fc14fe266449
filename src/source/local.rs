//! Local sources: `oci:DIR[:REF]`, `oci-archive:FILE[:REF]` and `docker-archive:FILE[:REF]`.
//!
//! A directory is read in place. An archive is read in place too: one pass over its tar
//! headers (seeking over the data) finds where each member is, and blobs are then read
//! straight from the archive file by offset, so the layers can be read in parallel and the
//! archive is never unpacked. Both forms share the resolution code with the stream reader:
//! an OCI layout goes `index.json` → (index →) manifest → config and layers; a
//! docker-archive goes `manifest.json` → config and layer paths.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

use super::spec::{self, Descriptor, IndexOrManifest, ParsedConfig, REF_NAME_ANNOTATION};
use super::{LayerDescriptor, ResolvedImage, SourceError, SourceRef};
use crate::digest::Digest;
use crate::fileio::RangeReader;
use crate::layer::tar::{Kind, TarEntry, TarReader};
use crate::layer::{self, LayerExpect, LayerIndex, LayerJob, SpoolFile};

/// Small documents (index, manifests, configs) larger than this are refused as corrupt, so a
/// wrong path cannot make us read a layer into memory.
pub(crate) const MAX_DOCUMENT: u64 = 64 * 1024 * 1024;

/// What resolution decided: the image, and where each layer blob is.
pub(crate) struct Plan {
    pub resolved: ResolvedImage,
    pub config: ParsedConfig,
    /// Path of each layer blob in the layout or archive, bottom first.
    pub layer_paths: Vec<String>,
    pub expects: Vec<LayerExpect>,
}

/// Reads the named member as a small document; `None` when there is no such member.
pub(crate) type ReadDoc<'a> = dyn Fn(&str) -> Result<Option<Vec<u8>>, SourceError> + 'a;

fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

fn corrupt(input: &str, problem: String) -> SourceError {
    SourceError::Corrupt { input: input.to_string(), problem }
}

/// A blob by descriptor: present, and the bytes its digest names.
fn read_blob(read: &ReadDoc<'_>, input: &str, desc: &Descriptor, what: &str) -> Result<Vec<u8>, SourceError> {
    let bytes = read(&blob_path(&desc.digest))?.ok_or_else(|| SourceError::MissingBlob {
        input: input.to_string(),
        what: format!("{what} {}", desc.digest),
    })?;
    let actual = Digest::of(&bytes);
    if actual != desc.digest {
        return Err(corrupt(input, format!("{what} blob {} has digest {actual}", desc.digest)));
    }
    Ok(bytes)
}

/// Picks the manifest among an index's entries for `platform`.
fn pick_platform<'d>(
    input: &str,
    manifests: &'d [Descriptor],
    platform: &str,
) -> Result<&'d Descriptor, SourceError> {
    manifests.iter().find(|m| m.platform.as_ref().is_some_and(|p| p.matches(platform))).ok_or_else(|| {
        let offered: Vec<String> =
            manifests.iter().filter_map(|m| m.platform.as_ref().map(|p| p.name())).collect();
        SourceError::NoImage {
            input: input.to_string(),
            problem: format!("no image for platform {platform} (offered: {})", offered.join(", ")),
        }
    })
}

/// Resolves an OCI image layout: `index.json`, the manifest `reference` names (or the only
/// one, or the one for `platform`), through nested indexes, to config and layers.
pub(crate) fn resolve_oci(
    read: &ReadDoc<'_>,
    input: &str,
    reference: Option<&str>,
    platform: &str,
) -> Result<Plan, SourceError> {
    let index_bytes = read("index.json")?.ok_or_else(|| SourceError::NoImage {
        input: input.to_string(),
        problem: "no index.json: not an OCI image layout".into(),
    })?;
    let index = match spec::parse_index_or_manifest(&index_bytes) {
        Ok(IndexOrManifest::Index(i)) => i,
        Ok(IndexOrManifest::Manifest(_)) => {
            return Err(corrupt(input, "index.json is not an image index".into()))
        }
        Err(e) => return Err(corrupt(input, format!("invalid index.json: {e}"))),
    };
    let mut desc = match reference {
        Some(r) => index
            .manifests
            .iter()
            .find(|m| {
                m.annotations.get(REF_NAME_ANNOTATION).is_some_and(|n| n == r) || m.digest.to_string() == r
            })
            .ok_or_else(|| SourceError::NoImage {
                input: input.to_string(),
                problem: format!("no image named {r:?} in index.json"),
            })?,
        None if index.manifests.len() == 1 => &index.manifests[0],
        None if index.manifests.is_empty() => {
            return Err(SourceError::NoImage {
                input: input.to_string(),
                problem: "index.json lists no image".into(),
            })
        }
        None => pick_platform(input, &index.manifests, platform).map_err(|e| match e {
            SourceError::NoImage { input, problem } => SourceError::NoImage {
                problem: format!(
                    "index.json lists {} images, {problem}; name one with :REF",
                    index.manifests.len()
                ),
                input,
            },
            other => other,
        })?,
    }
    .clone();
    // Follow indexes (multi-platform images) down to one manifest.
    for _ in 0..8 {
        let bytes = read_blob(read, input, &desc, "manifest")?;
        match spec::parse_index_or_manifest(&bytes) {
            Ok(IndexOrManifest::Index(inner)) => {
                desc = pick_platform(input, &inner.manifests, platform)?.clone()
            }
            Ok(IndexOrManifest::Manifest(m)) => return plan_from_manifest(read, input, &desc, m),
            Err(e) => return Err(corrupt(input, format!("invalid manifest {}: {e}", desc.digest))),
        }
    }
    Err(corrupt(input, "image indexes nested too deep".into()))
}

fn plan_from_manifest(
    read: &ReadDoc<'_>,
    input: &str,
    desc: &Descriptor,
    manifest: spec::Manifest,
) -> Result<Plan, SourceError> {
    let config_json = read_blob(read, input, &manifest.config, "config")?;
    let config = spec::parse_config(&config_json)
        .map_err(|p| corrupt(input, format!("config {}: {p}", manifest.config.digest)))?;
    if config.diff_ids.len() != manifest.layers.len() {
        return Err(corrupt(
            input,
            format!(
                "the manifest lists {} layers, its config {}",
                manifest.layers.len(),
                config.diff_ids.len()
            ),
        ));
    }
    let expects = manifest
        .layers
        .iter()
        .zip(&config.diff_ids)
        .map(|(l, d)| LayerExpect {
            digest: Some(l.digest),
            diff_id: Some(*d),
            media_type: l.media_type.clone(),
        })
        .collect();
    Ok(Plan {
        resolved: ResolvedImage {
            manifest_digest: Some(desc.digest),
            config_digest: manifest.config.digest,
            config_json,
            layers: manifest
                .layers
                .iter()
                .map(|l| LayerDescriptor { digest: l.digest, media_type: l.media_type.clone(), size: l.size })
                .collect(),
            platform: config.platform.clone(),
        },
        layer_paths: manifest.layers.iter().map(|l| blob_path(&l.digest)).collect(),
        expects,
        config,
    })
}

/// The digest a member's path states: `<hex>.json`, `blobs/sha256/<hex>`, `<hex>/layer.tar`
/// does not count (a v1 id, not a digest).
fn digest_in_path(path: &str) -> Option<Digest> {
    let name = path.strip_prefix("blobs/sha256/").or_else(|| path.strip_suffix(".json"))?;
    format!("sha256:{name}").parse().ok()
}

/// Resolves a `docker save` archive through its `manifest.json`; `reference` picks the
/// image by one of its tags (`name` means `name:latest`).
pub(crate) fn resolve_docker_archive(
    read: &ReadDoc<'_>,
    input: &str,
    reference: Option<&str>,
) -> Result<Plan, SourceError> {
    let bytes = read("manifest.json")?.ok_or_else(|| SourceError::NoImage {
        input: input.to_string(),
        problem: "no manifest.json: not a docker-archive".into(),
    })?;
    let images = spec::parse_archive_manifest(&bytes)
        .map_err(|e| corrupt(input, format!("invalid manifest.json: {e}")))?;
    let image = match reference {
        Some(r) => {
            let with_tag = if r.rsplit('/').next().is_some_and(|last| last.contains(':')) {
                r.to_string()
            } else {
                format!("{r}:latest")
            };
            images.iter().find(|i| i.repo_tags.contains(&with_tag)).ok_or_else(|| SourceError::NoImage {
                input: input.to_string(),
                problem: format!("no image tagged {with_tag} in manifest.json"),
            })?
        }
        None => match images.as_slice() {
            [one] => one,
            [] => {
                return Err(SourceError::NoImage {
                    input: input.to_string(),
                    problem: "manifest.json lists no image".into(),
                })
            }
            _ => {
                return Err(SourceError::NoImage {
                    input: input.to_string(),
                    problem: format!("manifest.json lists {} images; name one with :REF", images.len()),
                })
            }
        },
    };
    let config_json = read(&image.config)?.ok_or_else(|| SourceError::MissingBlob {
        input: input.to_string(),
        what: format!("config {}", image.config),
    })?;
    let config_digest = Digest::of(&config_json);
    if let Some(stated) = digest_in_path(&image.config) {
        if stated != config_digest {
            return Err(corrupt(input, format!("config {} has digest {config_digest}", image.config)));
        }
    }
    let config = spec::parse_config(&config_json)
        .map_err(|p| corrupt(input, format!("config {}: {p}", image.config)))?;
    if config.diff_ids.len() != image.layers.len() {
        return Err(corrupt(
            input,
            format!(
                "manifest.json lists {} layers, the config {}",
                image.layers.len(),
                config.diff_ids.len()
            ),
        ));
    }
    // A legacy layer.tar is the uncompressed layer: its digest is its diff_id.
    let layers = image
        .layers
        .iter()
        .zip(&config.diff_ids)
        .map(|(path, diff_id)| LayerDescriptor {
            digest: digest_in_path(path).unwrap_or(*diff_id),
            media_type: String::new(),
            size: None,
        })
        .collect();
    let expects = image
        .layers
        .iter()
        .zip(&config.diff_ids)
        .map(|(path, diff_id)| LayerExpect {
            digest: digest_in_path(path),
            diff_id: Some(*diff_id),
            media_type: String::new(),
        })
        .collect();
    Ok(Plan {
        resolved: ResolvedImage {
            manifest_digest: None,
            config_digest,
            config_json,
            layers,
            platform: config.platform.clone(),
        },
        layer_paths: image.layers.clone(),
        expects,
        config,
    })
}

/// Members of a layout: a directory or an archive file.
trait Members: Send + Sync {
    /// The member's bytes as a stream, and its size; `None` when absent.
    fn open(&self, path: &str) -> io::Result<Option<(Box<dyn Read + Send>, u64)>>;
}

struct DirMembers {
    root: PathBuf,
}

impl Members for DirMembers {
    fn open(&self, path: &str) -> io::Result<Option<(Box<dyn Read + Send>, u64)>> {
        match File::open(self.root.join(path)) {
            Ok(f) => {
                let size = f.metadata()?.len();
                Ok(Some((Box::new(f), size)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A tar file's regular members by normalised path: where their data starts, and their size.
struct ArchiveMembers {
    file: Arc<File>,
    members: HashMap<String, (u64, u64)>,
}

/// `./a/b` and `a/b` are the same member.
pub(crate) fn normalise_member(path: &[u8]) -> String {
    let text = String::from_utf8_lossy(path);
    let parts: Vec<&str> = text.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    parts.join("/")
}

/// The member a symlink or hard-link entry at `path` points to; `None` for other entries.
/// Hard link names are archive paths; symlinks are relative to their directory.
pub(crate) fn member_link(entry: &TarEntry, path: &str) -> Option<String> {
    match entry.kind {
        Kind::HardLink => Some(normalise_member(&entry.link)),
        Kind::Symlink => Some(resolve_member_link(path, &entry.link)),
        _ => None,
    }
}

/// Where a symlink member in directory `dir` points, as a member path.
fn resolve_member_link(from: &str, target: &[u8]) -> String {
    let mut parts: Vec<String> = from.split('/').map(str::to_string).collect();
    parts.pop();
    for p in String::from_utf8_lossy(target).split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other.to_string()),
        }
    }
    parts.join("/")
}

impl ArchiveMembers {
    fn index(file: File) -> Result<Self, crate::layer::tar::TarError> {
        let file = Arc::new(file);
        let mut members = HashMap::new();
        let mut links = Vec::new();
        let mut archive = TarReader::seekable(&*file);
        while let Some(entry) = archive.next_entry()? {
            let path = normalise_member(&entry.path);
            // A sparse member's bytes are not where its data starts: it cannot be a blob.
            if entry.kind == Kind::File && entry.sparse.is_none() {
                members.insert(path, (entry.data_offset, entry.size));
            } else if let Some(to) = member_link(&entry, &path) {
                links.push((path, to));
            }
        }
        for (from, to) in links {
            if let Some(&at) = members.get(&to) {
                members.insert(from, at);
            }
        }
        Ok(ArchiveMembers { file, members })
    }
}

impl Members for ArchiveMembers {
    fn open(&self, path: &str) -> io::Result<Option<(Box<dyn Read + Send>, u64)>> {
        Ok(self.members.get(path).map(|&(start, size)| {
            let r: Box<dyn Read + Send> = Box::new(RangeReader::new(self.file.clone(), start..start + size));
            (r, size)
        }))
    }
}

/// An image from a local layout or archive, resolved, its layers not read yet.
pub struct LocalImage {
    pub resolved: ResolvedImage,
    pub config: ParsedConfig,
    input: String,
    members: Box<dyn Members>,
    layer_paths: Vec<String>,
    expects: Vec<LayerExpect>,
}

/// Opens and resolves `oci:`, `oci-archive:` or `docker-archive:`; `platform` picks among a
/// multi-platform index (`os/arch[/variant]`).
pub fn open_local(source: &SourceRef, platform: &str) -> Result<LocalImage, SourceError> {
    let (path, reference, oci) = match source {
        SourceRef::Oci { dir, reference } => (dir, reference, true),
        SourceRef::OciArchive { file, reference } => (file, reference, true),
        SourceRef::DockerArchive { file, reference } => (file, reference, false),
        other => {
            return Err(SourceError::Invalid(super::InvalidSource {
                input: format!("{other:?}"),
                reason: "not a local source (oci:, oci-archive:, docker-archive:)".into(),
            }));
        }
    };
    let input = path.display().to_string();
    let io_err = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound => SourceError::NotFound { input: input.clone() },
        _ => SourceError::Io { input: input.clone(), path: input.clone(), source },
    };
    let members: Box<dyn Members> = if matches!(source, SourceRef::Oci { .. }) {
        let meta = std::fs::metadata(path).map_err(io_err)?;
        if !meta.is_dir() {
            return Err(SourceError::NoImage {
                input,
                problem: "not a directory (an OCI layout is one)".into(),
            });
        }
        Box::new(DirMembers { root: path.clone() })
    } else {
        let file = File::open(path).map_err(io_err)?;
        Box::new(ArchiveMembers::index(file).map_err(|e| SourceError::Corrupt {
            input: input.clone(),
            problem: format!("not a readable tar archive: {e}"),
        })?)
    };
    let read = |member: &str| read_member(members.as_ref(), &input, member);
    let plan = if oci {
        resolve_oci(&read, &input, reference.as_deref(), platform)?
    } else {
        resolve_docker_archive(&read, &input, reference.as_deref())?
    };
    Ok(LocalImage {
        resolved: plan.resolved,
        config: plan.config,
        input: input.clone(),
        members,
        layer_paths: plan.layer_paths,
        expects: plan.expects,
    })
}

fn read_member(members: &dyn Members, input: &str, member: &str) -> Result<Option<Vec<u8>>, SourceError> {
    let io_err =
        |source: io::Error| SourceError::Io { input: input.to_string(), path: member.to_string(), source };
    let Some((reader, size)) = members.open(member).map_err(io_err)? else { return Ok(None) };
    if size > MAX_DOCUMENT {
        return Err(SourceError::Corrupt {
            input: input.to_string(),
            problem: format!("{member} is {size} bytes, too large for a document"),
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    reader.take(MAX_DOCUMENT).read_to_end(&mut bytes).map_err(io_err)?;
    Ok(Some(bytes))
}

impl LocalImage {
    /// Reads, verifies and indexes every layer, in parallel, spooling into `spool`.
    pub fn index_layers(&self, spool: &SpoolFile) -> Result<Vec<LayerIndex>, SourceError> {
        self.index_layers_from(0, spool)
    }

    /// [`LocalImage::index_layers`] for the layers from number `first` up.
    pub fn index_layers_from(&self, first: usize, spool: &SpoolFile) -> Result<Vec<LayerIndex>, SourceError> {
        let mut jobs = Vec::with_capacity(self.layer_paths.len());
        let layers = self.layer_paths.iter().zip(&self.expects).zip(&self.resolved.layers).skip(first);
        for ((path, expect), desc) in layers {
            let stored = match self.members.open(path) {
                Ok(Some((_, size))) => size,
                Ok(None) => {
                    return Err(SourceError::MissingBlob {
                        input: self.input.clone(),
                        what: format!("layer {path}"),
                    })
                }
                Err(source) => {
                    return Err(SourceError::Io { input: self.input.clone(), path: path.clone(), source })
                }
            };
            // The descriptor's size, when it gives one, is what the blob must be: a blob file
            // that is something else (a device, a pipe) is read no further.
            jobs.push(LayerJob { expect: expect.clone(), size: desc.size.or(Some(stored)) });
        }
        let open = |i: usize| -> io::Result<Box<dyn Read + Send>> {
            let path = &self.layer_paths[first + i];
            match self.members.open(path)? {
                Some((r, _)) => Ok(r),
                None => Err(io::Error::new(io::ErrorKind::NotFound, format!("{path} is gone"))),
            }
        };
        layer::index_layers_from(first, &jobs, open, spool)
            .map_err(|source| SourceError::Layer { input: self.input.clone(), source })
    }
}
