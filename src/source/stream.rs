//! A `docker save` stream, read once, in order, as it arrives.
//!
//! The Engine writes either the legacy docker-archive (Engine < 25: `<id>/layer.tar`
//! members, then the configs, and `manifest.json` last) or an OCI layout inside the tar
//! (Engine ≥ 25: `blobs/sha256/…`, `index.json`, plus a `manifest.json` that points into
//! `blobs/`). Either way the document that says which member is which layer comes after
//! the layers, and the stream cannot be rewound. So each member is judged by its first
//! bytes: a tar (or gzip, or zstd) stream is indexed as a layer right away — hashed,
//! parsed, its file data spooled — and everything else small is kept as a document. At the
//! end the documents resolve the image, and the indexed layers are matched to it by path
//! and checked against the digests the manifest and config give. The stream is never
//! stored whole; only layer file data reaches the disk, in the spools.

use std::collections::HashMap;
use std::io::{self, Read};

use super::local::{member_link, normalise_member, resolve_docker_archive, resolve_oci, Plan, MAX_DOCUMENT};
use super::{ParsedConfig, ResolvedImage, SourceError};
use crate::digest::Digest;
use crate::layer::tar::{Kind, TarError, TarReader};
use crate::layer::{index_layer, LayerError, LayerExpect, LayerIndex, SpoolFile};

/// An image read from a stream: resolved, and its layers indexed, bottom first.
#[derive(Debug)]
pub struct StreamedImage {
    pub resolved: ResolvedImage,
    pub config: ParsedConfig,
    pub layers: Vec<LayerIndex>,
}

/// The ustar magic at offset 257 of a tar header (POSIX.1-1988 `magic` field, "ustar"
/// for both POSIX and GNU headers).
const USTAR_MAGIC_OFFSET: usize = 257;
const USTAR_MAGIC: &[u8] = b"ustar";
const TAR_BLOCK: usize = 512;

/// Which spool slot each layer of the stream goes to. Slot N is layer N's place, where its
/// data need not move when the spool settles; the manifest that gives every layer's place
/// comes last, but some layers can be placed as they arrive: a blob named by a digest the
/// caller listed, and the legacy layer whose `json` (just before it) names no parent, the
/// bottom one. The others take slots past those places, by arrival, and are moved later.
struct Slots<'a> {
    diff_ids: &'a [Digest],
    taken: Vec<bool>,
    next: u32,
}

impl<'a> Slots<'a> {
    fn new(diff_ids: &'a [Digest]) -> Self {
        Slots { diff_ids, taken: Vec::new(), next: diff_ids.len().max(1) as u32 }
    }

    fn for_layer(&mut self, path: &str, docs: &HashMap<String, Vec<u8>>) -> u32 {
        let named = path
            .strip_prefix("blobs/sha256/")
            .and_then(|hex| self.diff_ids.iter().position(|d| d.hex() == hex));
        let bottom = || {
            let json = docs.get(&format!("{}/json", path.strip_suffix("/layer.tar")?))?;
            let v1: serde_json::Value = serde_json::from_slice(json).ok()?;
            v1.get("parent").is_none().then_some(0)
        };
        match named.or_else(bottom) {
            Some(place) if !self.is_taken(place as u32) => self.take(place as u32),
            _ => {
                while self.is_taken(self.next) {
                    self.next += 1;
                }
                self.take(self.next)
            }
        }
    }

    fn is_taken(&self, slot: u32) -> bool {
        self.taken.get(slot as usize).copied().unwrap_or(false)
    }

    fn take(&mut self, slot: u32) -> u32 {
        if self.taken.len() <= slot as usize {
            self.taken.resize(slot as usize + 1, false);
        }
        self.taken[slot as usize] = true;
        slot
    }
}

/// Whether a member that starts with `head` is a layer blob rather than a JSON document.
fn looks_like_layer(head: &[u8]) -> bool {
    head.starts_with(&[0x1f, 0x8b])
        || head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || (head.len() == TAR_BLOCK
            && (head[USTAR_MAGIC_OFFSET..].starts_with(USTAR_MAGIC) || head.iter().all(|&b| b == 0)))
}

/// Reads a `docker save` stream (or any docker-archive or OCI-layout tar) from `stream`.
/// `input` names it in errors; `reference` picks an image by tag or ref name when the
/// stream holds several; `platform` picks among a multi-platform index. `diff_ids` are the
/// image's layers, bottom first, when known beforehand (the daemon says): they let a layer
/// named by its digest spool straight into its place.
pub fn read_image_stream<R: Read>(
    stream: R,
    input: &str,
    reference: Option<&str>,
    platform: &str,
    spool: &SpoolFile,
    diff_ids: &[Digest],
) -> Result<StreamedImage, SourceError> {
    let mut slots = Slots::new(diff_ids);
    let mut docs: HashMap<String, Vec<u8>> = HashMap::new();
    let mut layers: HashMap<String, LayerIndex> = HashMap::new();
    let mut links: Vec<(String, String)> = Vec::new();
    let mut archive = TarReader::new(stream);
    while let Some(entry) = archive.next_entry().map_err(|e| tar_error(input, e))? {
        let path = normalise_member(&entry.path);
        if let Some(to) = member_link(&entry, &path) {
            links.push((path, to));
            continue;
        }
        if entry.kind != Kind::File || entry.sparse.is_some() {
            continue;
        }
        let mut data = archive.data();
        let mut head = Vec::with_capacity(TAR_BLOCK);
        (&mut data).take(TAR_BLOCK as u64).read_to_end(&mut head).map_err(|e| stream_error(input, e))?;
        if looks_like_layer(&head) {
            let blob = head.as_slice().chain(data);
            let layer_err = |source| SourceError::Layer { input: format!("{input}: {path}"), source };
            let slot = slots.for_layer(&path, &docs);
            let writer = spool
                .slot(slot)
                .map_err(|source| layer_err(LayerError::Spool { blob: path.clone(), source }))?;
            let blob = spool.meter().reader(slot, blob);
            let index = index_layer(blob, &LayerExpect::default(), 0, writer).map_err(layer_err)?;
            spool.meter().finish(slot);
            layers.insert(path, index);
        } else if entry.size <= MAX_DOCUMENT {
            let mut bytes = head;
            data.read_to_end(&mut bytes).map_err(|e| stream_error(input, e))?;
            docs.insert(path, bytes);
        }
    }
    // Aliases: a member that is a link to another stands for it.
    for (from, to) in links {
        if let Some(bytes) = docs.get(&to).cloned() {
            docs.insert(from, bytes);
        } else if let Some(index) = layers.get(&to).cloned() {
            layers.insert(from, index);
        }
    }
    let read = |member: &str| Ok(docs.get(member).cloned());
    let plan = if docs.contains_key("manifest.json") {
        resolve_docker_archive(&read, input, reference)?
    } else if docs.contains_key("index.json") {
        resolve_oci(&read, input, reference, platform)?
    } else {
        return Err(SourceError::NoImage {
            input: input.to_string(),
            problem: "neither manifest.json nor index.json in the stream: not an image archive".into(),
        });
    };
    let layers = match_layers(input, &plan, layers)?;
    Ok(StreamedImage { resolved: plan.resolved, config: plan.config, layers })
}

/// A failure of the outer tar: its bytes (see [`stream_error`]) or its structure.
fn tar_error(input: &str, e: TarError) -> SourceError {
    match e {
        TarError::Read(source) => stream_error(input, source),
        other => {
            SourceError::Corrupt { input: input.to_string(), problem: format!("broken tar stream: {other}") }
        }
    }
}

/// A read failure of the stream: the stream's own (the daemon, the pipe) or a broken tar.
fn stream_error(input: &str, source: io::Error) -> SourceError {
    match source.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof | io::ErrorKind::Other => {
            SourceError::Corrupt { input: input.to_string(), problem: format!("broken tar stream: {source}") }
        }
        _ => SourceError::Io { input: input.to_string(), path: "the stream".into(), source },
    }
}

/// Puts the indexed layers in the plan's order and checks each against its digests.
fn match_layers(
    input: &str,
    plan: &Plan,
    mut indexed: HashMap<String, LayerIndex>,
) -> Result<Vec<LayerIndex>, SourceError> {
    let mut out: Vec<LayerIndex> = Vec::with_capacity(plan.layer_paths.len());
    for (i, (path, expect)) in plan.layer_paths.iter().zip(&plan.expects).enumerate() {
        let layer_err = |source: LayerError| SourceError::Layer { input: format!("{input}: {path}"), source };
        let index = match indexed.remove(path) {
            Some(index) => index,
            // The same blob listed twice: the second use shares the first's spool.
            None => match plan.layer_paths[..i].iter().position(|p| p == path) {
                Some(first) => out[first].clone(),
                None => {
                    return Err(SourceError::MissingBlob {
                        input: input.to_string(),
                        what: format!("layer {path}"),
                    })
                }
            },
        };
        let blob = path.clone();
        if let Some(expected) = plan.resolved.layers[i].size.filter(|&s| s != index.compressed_size) {
            return Err(SourceError::Corrupt {
                input: input.to_string(),
                problem: format!(
                    "layer {path} is {} bytes, its descriptor gives {expected}",
                    index.compressed_size
                ),
            });
        }
        if let Some(expected) = expect.digest {
            if expected != index.digest {
                return Err(layer_err(LayerError::DigestMismatch { blob, expected, actual: index.digest }));
            }
        }
        if let Some(expected) = expect.diff_id {
            if expected != index.diff_id {
                return Err(layer_err(LayerError::DiffIdMismatch { blob, expected, actual: index.diff_id }));
            }
        }
        out.push(index);
    }
    // Number the spools top down, so a blob listed twice reports its lowest place.
    for (i, index) in out.iter().enumerate().rev() {
        index.set_layer(i as u32);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_that_say_where_they_belong_get_their_own_slot() {
        let ids = [Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c")];
        let mut docs = HashMap::new();
        docs.insert("base/json".to_string(), br#"{"id":"base"}"#.to_vec());
        docs.insert("top/json".to_string(), br#"{"id":"top","parent":"base"}"#.to_vec());
        let mut slots = Slots::new(&ids);
        assert_eq!(slots.for_layer(&format!("blobs/sha256/{}", ids[2].hex()), &docs), 2);
        assert_eq!(slots.for_layer("top/layer.tar", &docs), 3);
        assert_eq!(slots.for_layer("base/layer.tar", &docs), 0);
        // A place already taken, or an unknown blob: the next free slot past the places.
        assert_eq!(slots.for_layer(&format!("blobs/sha256/{}", ids[2].hex()), &docs), 4);
        assert_eq!(slots.for_layer("blobs/sha256/ffff", &docs), 5);
        // Without the image's layers, only the parentless legacy layer is placed.
        let mut slots = Slots::new(&[]);
        assert_eq!(slots.for_layer("top/layer.tar", &docs), 1);
        assert_eq!(slots.for_layer("base/layer.tar", &docs), 0);
        assert_eq!(slots.for_layer("other/layer.tar", &docs), 2);
    }
}
