//! An image's layers read where the Docker Engine keeps them, instead of through `docker
//! save`, which on Engine 20.10 re-creates every layer tar on the Engine's disk and sends
//! nothing until all are done.
//!
//! The Engine keeps, per layer, the files (overlay2: `<root>/overlay2/<cache-id>/diff`, the
//! directories `docker image inspect` reports as GraphDriver data) and the layer's tar-split
//! (`<root>/image/overlay2/layerdb/sha256/<chain id>/tar-split.json.gz`): every byte of the
//! layer's tar but the file contents, in order. `docker save` puts the two back together;
//! so does [`LayerTar`], into exactly the tar the layer was made from. Its sha256 must be the
//! layer's diff_id, which the layer reader checks as for any source: the image comes out as
//! through `docker save`, or the conversion fails.
//!
//! This works only when the daemon runs on this host, with the overlay2 driver, and the
//! Engine's directories can be read (as root). [`find`] checks that and says why not, and
//! the caller reads the `docker save` stream instead.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use crate::digest::Digest;
use crate::store::chain_ids;

/// Where one layer's parts are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineLayer {
    /// The layer's files.
    pub diff_dir: PathBuf,
    /// Its tar-split (gzip, JSON lines).
    pub tar_split: PathBuf,
}

/// The layers of an image (bottom first) in the Engine's directories, from the GraphDriver
/// data `docker image inspect` gives (`driver`, `data`). `Err` says why they cannot be read
/// so: the caller falls back to `docker save` and tells the user why.
pub fn find(
    driver: &str,
    data: &std::collections::BTreeMap<String, String>,
    diff_ids: &[Digest],
) -> Result<Vec<EngineLayer>, String> {
    if driver != "overlay2" {
        return Err(format!("the Engine's storage driver is {driver:?}, not overlay2"));
    }
    let upper = data.get("UpperDir").ok_or("the Engine reports no UpperDir")?;
    // LowerDir lists the layers below the top one, top first.
    let mut dirs: Vec<PathBuf> = data
        .get("LowerDir")
        .map(|l| l.split(':').filter(|d| !d.is_empty()).map(PathBuf::from).collect())
        .unwrap_or_default();
    dirs.reverse();
    dirs.push(PathBuf::from(upper));
    if dirs.len() != diff_ids.len() {
        return Err(format!(
            "the Engine reports {} layer directories for {} layers",
            dirs.len(),
            diff_ids.len()
        ));
    }
    // <root>/overlay2/<cache-id>/diff
    let root = Path::new(upper)
        .ancestors()
        .nth(3)
        .filter(|_| Path::new(upper).ends_with("diff"))
        .ok_or_else(|| format!("UpperDir {upper} is not <root>/overlay2/<id>/diff"))?;
    let layerdb = root.join("image/overlay2/layerdb/sha256");
    let mut layers = Vec::with_capacity(dirs.len());
    for (dir, chain) in dirs.into_iter().zip(chain_ids(diff_ids)) {
        let db = layerdb.join(chain.hex());
        let cache_id = fs::read_to_string(db.join("cache-id"))
            .map_err(|e| format!("cannot read the Engine's layer database at {}: {e}", db.display()))?;
        let named = dir.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str());
        if named != Some(cache_id.trim()) {
            return Err(format!(
                "layer {chain}: the Engine's directory {} is not its cache id",
                dir.display()
            ));
        }
        let tar_split = db.join("tar-split.json.gz");
        let readable =
            |p: &Path| File::open(p).map(drop).map_err(|e| format!("cannot read {}: {e}", p.display()));
        readable(&tar_split)?;
        fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        layers.push(EngineLayer { diff_dir: dir, tar_split });
    }
    Ok(layers)
}

/// One line of a tar-split: raw bytes of the tar (a segment), or a file whose `size` bytes
/// come from the layer's directory (github.com/vbatts/tar-split, `tar/storage`).
#[derive(Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    name_raw: Option<String>,
    #[serde(default)]
    size: i64,
    #[serde(default)]
    payload: Option<String>,
}

/// `storage.FileType` and `storage.SegmentType`.
const FILE: u8 = 1;
const SEGMENT: u8 = 2;

/// A layer's tar, put back together from its tar-split and its directory as it is read.
pub struct LayerTar {
    lines: io::Lines<BufReader<flate2::read::GzDecoder<File>>>,
    diff_dir: PathBuf,
    segment: VecDeque<u8>,
    file: Option<io::Take<File>>,
}

impl LayerTar {
    pub fn open(layer: &EngineLayer) -> io::Result<LayerTar> {
        let gz = flate2::read::GzDecoder::new(File::open(&layer.tar_split)?);
        Ok(LayerTar {
            lines: BufReader::new(gz).lines(),
            diff_dir: layer.diff_dir.clone(),
            segment: VecDeque::new(),
            file: None,
        })
    }

    /// Moves to the next line; false at the end.
    fn next_line(&mut self) -> io::Result<bool> {
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, format!("tar-split: {what}"));
        let Some(text) = self.lines.next().transpose()? else { return Ok(false) };
        let line: Line = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let b64 =
            |s: &str| base64::engine::general_purpose::STANDARD.decode(s).map_err(|e| bad(e.to_string()));
        match line.kind {
            SEGMENT => self.segment.extend(b64(line.payload.as_deref().unwrap_or(""))?),
            FILE if line.size > 0 => {
                let name = match (&line.name_raw, &line.name) {
                    (Some(raw), _) => b64(raw)?,
                    (None, Some(name)) => name.clone().into_bytes(),
                    (None, None) => return Err(bad("a file without a name".into())),
                };
                let path = confined(&self.diff_dir, &name)
                    .ok_or_else(|| bad("a file name outside the layer".into()))?;
                let file = File::open(&path)?;
                let size = line.size as u64;
                if file.metadata()?.len() != size {
                    return Err(bad(format!("{} is not {size} bytes long", path.display())));
                }
                self.file = Some(file.take(size));
            }
            FILE => {}
            other => return Err(bad(format!("an entry of unknown type {other}"))),
        }
        Ok(true)
    }
}

impl Read for LayerTar {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.segment.is_empty() {
                return self.segment.read(buf);
            }
            if let Some(file) = &mut self.file {
                let n = file.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                self.file = None;
            }
            if !self.next_line()? {
                return Ok(0);
            }
        }
    }
}

/// `name` under `dir`, refused if it would climb out of it.
fn confined(dir: &Path, name: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let relative = Path::new(std::ffi::OsStr::from_bytes(name));
    let mut out = dir.to_path_buf();
    for c in relative.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_the_layer() {
        let dir = Path::new("/d");
        assert_eq!(confined(dir, b"./a/b"), Some(PathBuf::from("/d/a/b")));
        assert_eq!(confined(dir, b"/a"), Some(PathBuf::from("/d/a")));
        assert_eq!(confined(dir, b"a/../../etc"), None);
    }
}
