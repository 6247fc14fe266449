//! Runs a conversion plan through the stages: source → layers → flatten → ext4 → output.
//! The CLI's `convert` and `build` both end here, so every way in gives the same bytes.
//!
//! The output directory appears whole or not at all: everything is written into a hidden
//! sibling directory that is renamed into place last, and removed if anything fails.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::boot::{self, BootError, KernelSource, STORE_INITRD, STORE_KERNEL};
use crate::digest::{Digest, FileDigest};
use crate::error::{Classify, ErrorClass};
use crate::ext4::{self, SizeSpec};
use crate::layer;
use crate::manifest::{
    BootManifest, ImageConfig, OutputManifest, RootfsInfo, SourceInfo, FORMAT_VERSION, MANIFEST_FILE,
    ROOTFS_FILE,
};
use crate::source::{self, SourceError, SourceRef};
use crate::store::chunking::data_extents;
use crate::store::{ImageId, ImageRecord, Store, StoreError};
use crate::tree::flatten::FlattenError;
use crate::tree::{FsTree, Timestamp};

/// Everything a conversion needs, validated by the caller.
#[derive(Clone, Debug)]
pub struct ConvertPlan {
    pub source: SourceRef,
    /// The source as the user wrote it, for the manifest and messages.
    pub input: String,
    /// `os/arch[/variant]` to pick from a multi-platform index.
    pub platform: String,
    /// Where `rootfs.ext4`, `manifest.json` and the boot files go, if anywhere.
    pub outdir: Option<PathBuf>,
    /// The store to keep the image in (and to answer from, on a cache hit), if any.
    pub store: Option<PathBuf>,
    pub rootfs: RootfsOptions,
    /// The kernel to boot with; without one, the image's own `/boot/vmlinuz-*` if it has
    /// one, else the image gets no boot part.
    pub kernel: Option<HostKernel>,
    /// Build inputs recorded in the store's manifest (Dockerfile, args...), free-form.
    pub build: BTreeMap<String, serde_json::Value>,
    /// Names to give the stored image (`diskc build -t`).
    pub names: Vec<String>,
}

/// A kernel on the host: its bzImage and its `lib/modules/<version>` directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostKernel {
    pub kernel: PathBuf,
    pub modules: PathBuf,
}

/// How the root filesystem is laid out; part of the cache key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RootfsOptions {
    /// `None`: the content plus headroom.
    pub size: Option<u64>,
    pub journal: bool,
}

impl Default for RootfsOptions {
    fn default() -> Self {
        RootfsOptions { size: None, journal: true }
    }
}

/// What the pipeline is doing, for progress displays.
#[derive(Clone, Debug)]
pub enum Progress {
    /// The image is resolved: this many layers, this many bytes to read (when known).
    Resolved { layers: usize, bytes: Option<u64> },
    /// The store already holds this conversion.
    CacheHit { id: String },
    /// All layers are read and indexed.
    LayersIndexed { seconds: f64 },
    /// The merged tree holds this many nodes (flattening keeps only reachable ones).
    Flattened { entries: usize },
    /// The ext4 image is written.
    RootfsWritten { bytes: u64, seconds: f64 },
}

/// The result of a conversion.
#[derive(Clone, Debug)]
pub struct Converted {
    pub manifest: OutputManifest,
    pub outdir: Option<PathBuf>,
    /// The store answered without reading a layer.
    pub cache_hit: bool,
    pub timings: Timings,
}

/// Wall time of each stage.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    pub resolve: f64,
    pub layers: f64,
    pub flatten: f64,
    pub rootfs: f64,
    pub store: f64,
    pub total: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{input}: {source}")]
    Flatten { input: String, source: FlattenError },
    #[error("{input}: {source}")]
    Ext4 { input: String, source: ext4::Ext4Error },
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("output {} exists and is not a diskc output directory; remove it or pick another", .0.display())]
    OutputExists(PathBuf),
    #[error("nowhere to put the image: give an output directory or a store")]
    NoDestination,
}

impl Classify for PipelineError {
    fn class(&self) -> ErrorClass {
        match self {
            PipelineError::Source(e) => e.class(),
            PipelineError::Flatten { source, .. } => source.class(),
            PipelineError::Ext4 { source, .. } => source.class(),
            PipelineError::Boot(e) => e.class(),
            PipelineError::Store(e) => e.class(),
            PipelineError::Io { source, .. } => match source.kind() {
                io::ErrorKind::NotFound => ErrorClass::BadInput,
                _ => ErrorClass::Environment,
            },
            PipelineError::OutputExists(_) | PipelineError::NoDestination => ErrorClass::Usage,
        }
    }
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PipelineError + 'a {
    move |source| PipelineError::Io { what, path: path.to_path_buf(), source }
}

/// Converts the plan's source into a root filesystem with its manifest and boot files, in
/// the plan's outdir and/or store. A conversion the store already holds is answered from
/// the store without reading a layer.
pub fn convert(plan: &ConvertPlan, progress: &mut dyn FnMut(Progress)) -> Result<Converted, PipelineError> {
    let started = Instant::now();
    let mut timings = Timings::default();
    if let Some(outdir) = &plan.outdir {
        check_outdir(outdir)?;
    } else if plan.store.is_none() {
        return Err(PipelineError::NoDestination);
    }
    let store = plan.store.as_deref().map(Store::open).transpose()?;

    let opened = source::open(&plan.source, &plan.platform)?;
    let bytes = opened.resolved().layers.iter().map(|l| l.size).sum::<Option<u64>>();
    progress(Progress::Resolved { layers: opened.resolved().layers.len(), bytes });
    timings.resolve = lap(started, &timings);

    let cache_key = cache_key(plan, opened.resolved().config_digest)?;
    if let Some(store) = &store {
        if let Some(id) = store.cache_get(&cache_key)? {
            progress(Progress::CacheHit { id: id.to_string() });
            name_image(store, &id, &plan.names)?;
            let manifest = from_store(store, &id, plan)?;
            timings.total = started.elapsed().as_secs_f64();
            return Ok(Converted { manifest, outdir: plan.outdir.clone(), cache_hit: true, timings });
        }
    }

    let staging = match (&plan.outdir, &store) {
        (Some(outdir), _) => Staging::beside(outdir)?,
        (None, Some(store)) => Staging::new(&store.root().join("tmp"), "convert")?,
        (None, None) => unreachable!("checked above"),
    };
    let config = opened.config().clone();
    // The layers spool straight into the image file, and their data stays where it lands.
    let rootfs_path = staging.path.join(ROOTFS_FILE);
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&rootfs_path)
        .map_err(io_error("creating", &rootfs_path))?;
    let spool = layer::SpoolFile::new(file);
    let (resolved, layers) = opened.index_layers(&spool)?;
    timings.layers = lap(started, &timings);
    progress(Progress::LayersIndexed { seconds: timings.layers });

    let tree = layer::flatten_layers(&layers)
        .map_err(|source| PipelineError::Flatten { input: plan.input.clone(), source })?;
    progress(Progress::Flattened { entries: tree.arena_len() });
    timings.flatten = lap(started, &timings);

    let file = spool.settle(tree.files().map(|f| &f.content)).map_err(io_error("writing", &rootfs_path))?;
    let options =
        ext4::Options { data_in_place: true, ..ext4_options(&config.diff_ids, &plan.rootfs, fs_time(&tree)) };
    let summary = write_rootfs(&tree, &options, &file, &plan.input)?;
    let boot = boot_part(plan.kernel.as_ref(), &tree, &staging.path, &config.config)?;
    drop(tree);
    drop(layers); // the spools go with the last reference to them
    let digest = digest_file(&rootfs_path)?;
    timings.rootfs = lap(started, &timings);
    progress(Progress::RootfsWritten { bytes: summary.size_bytes, seconds: timings.rootfs });

    let mut manifest = OutputManifest {
        diskc_version: env!("CARGO_PKG_VERSION").to_string(),
        format_version: FORMAT_VERSION,
        id: None,
        source: SourceInfo {
            reference: plan.input.clone(),
            manifest_digest: resolved.manifest_digest,
            config_digest: resolved.config_digest,
            layers: resolved.layers.iter().map(|l| l.digest).collect(),
            diff_ids: config.diff_ids.clone(),
            platform: config.platform.clone(),
        },
        config: config.config.clone(),
        rootfs: RootfsInfo {
            file: ROOTFS_FILE.to_string(),
            digest,
            size: summary.size_bytes,
            uuid: format_uuid(&summary.uuid),
        },
        boot,
    };
    if let Some(store) = &store {
        let id = keep(store, &staging.path, &manifest, plan)?;
        store.cache_put(&cache_key, &id)?;
        name_image(store, &id, &plan.names)?;
        manifest.id = Some(id.to_string());
        timings.store = lap(started, &timings);
    }
    if let Some(outdir) = &plan.outdir {
        write_manifest(&staging.path, &manifest)?;
        staging.commit(outdir)?;
    }
    timings.total = started.elapsed().as_secs_f64();
    Ok(Converted { manifest, outdir: plan.outdir.clone(), cache_hit: false, timings })
}

/// The boot part: the given kernel, else the image's own, else none. Writes the kernel and
/// the initrd into `dir`.
fn boot_part<C: crate::tree::Content>(
    kernel: Option<&HostKernel>,
    tree: &FsTree<C>,
    dir: &Path,
    config: &ImageConfig,
) -> Result<Option<BootManifest>, PipelineError> {
    let kernel = match kernel {
        Some(k) => KernelSource::from_host(&k.kernel, &k.modules)?,
        None => match KernelSource::from_tree(tree)? {
            Some(own) => own,
            None => return Ok(None),
        },
    };
    Ok(Some(boot::prepare(dir, &kernel, config)?))
}

/// Puts the staged rootfs and boot files in the store, with what the manifest says of them.
fn keep(
    store: &Store,
    staged: &Path,
    manifest: &OutputManifest,
    plan: &ConvertPlan,
) -> Result<ImageId, StoreError> {
    let rootfs = staged.join(ROOTFS_FILE);
    let boot_files: Vec<(&str, PathBuf)> = match &manifest.boot {
        Some(b) => {
            vec![(STORE_KERNEL, staged.join(&b.kernel.file)), (STORE_INITRD, staged.join(&b.initrd.file))]
        }
        None => Vec::new(),
    };
    let boot_files: Vec<(&str, &Path)> = boot_files.iter().map(|(n, p)| (*n, p.as_path())).collect();
    let record = ImageRecord {
        uuid: manifest.rootfs.uuid.clone(),
        rootfs_digest: Some(manifest.rootfs.digest),
        boot: manifest.boot.clone(),
        source: Some(manifest.source.clone()),
        config: manifest.config.clone(),
        build: plan.build.clone(),
    };
    store.put_image(&rootfs, &boot_files, record)
}

fn name_image(store: &Store, id: &ImageId, names: &[String]) -> Result<(), StoreError> {
    for name in names {
        store.tag(&id.to_string(), name)?;
    }
    Ok(())
}

/// What decides a conversion's result: the image (its config digest names its layers too),
/// diskc's formats, the options, the kernel and the build inputs.
fn cache_key(plan: &ConvertPlan, config_digest: Digest) -> Result<String, PipelineError> {
    let kernel = match &plan.kernel {
        Some(k) => {
            let bytes = fs::read(&k.kernel).map_err(io_error("reading", &k.kernel))?;
            serde_json::json!({ "kernel": Digest::of(&bytes), "modules": k.modules })
        }
        None => serde_json::Value::Null,
    };
    let key = serde_json::json!({
        "diskc": env!("CARGO_PKG_VERSION"),
        "format": FORMAT_VERSION,
        "config": config_digest,
        "rootfs": plan.rootfs,
        "kernel": kernel,
        // Without diskc-init no initrd is made, and nothing depends on it.
        "initrd": boot::initrd_key().ok(),
        "build": plan.build,
    });
    Ok(Digest::of(key.to_string().as_bytes()).to_string())
}

/// A cache hit: the stored image's manifest, and its files in the outdir when asked for.
fn from_store(store: &Store, id: &ImageId, plan: &ConvertPlan) -> Result<OutputManifest, PipelineError> {
    let stored = store.manifest(id)?;
    let mut manifest = OutputManifest {
        diskc_version: env!("CARGO_PKG_VERSION").to_string(),
        format_version: FORMAT_VERSION,
        id: Some(id.to_string()),
        source: stored.source.clone().ok_or_else(|| StoreError::CorruptManifest {
            id: id.to_string(),
            reason: "a cached conversion has no source".into(),
        })?,
        config: stored.config.clone(),
        rootfs: RootfsInfo {
            file: ROOTFS_FILE.to_string(),
            digest: stored.rootfs.digest.unwrap_or(FileDigest::Blake3(blake3::hash(b"").into())),
            size: stored.rootfs.file.size,
            uuid: stored.rootfs.uuid.clone(),
        },
        boot: stored.boot.clone(),
    };
    // The source as named this time; the image is the same.
    manifest.source.reference = plan.input.clone();
    if let Some(outdir) = &plan.outdir {
        let staging = Staging::beside(outdir)?;
        let rootfs = staging.path.join(ROOTFS_FILE);
        store.export_rootfs(id, &rootfs)?;
        if stored.rootfs.digest.is_none() {
            manifest.rootfs.digest = digest_file(&rootfs)?;
        }
        if let Some(boot) = &manifest.boot {
            store.export_file(id, STORE_KERNEL, &staging.path.join(&boot.kernel.file))?;
            store.export_file(id, STORE_INITRD, &staging.path.join(&boot.initrd.file))?;
        }
        write_manifest(&staging.path, &manifest)?;
        staging.commit(outdir)?;
    }
    Ok(manifest)
}

fn lap(started: Instant, timings: &Timings) -> f64 {
    let before = timings.resolve + timings.layers + timings.flatten + timings.rootfs + timings.store;
    started.elapsed().as_secs_f64() - before
}

/// ext4 options for an image: the UUID and hash seed come from the layers' content digests
/// and the options, so the same layers give the same filesystem through any transport.
pub fn ext4_options(diff_ids: &[Digest], rootfs: &RootfsOptions, fs_time: Timestamp) -> ext4::Options {
    let mut seed = Sha256::new();
    seed.update(format!("diskc rootfs v{FORMAT_VERSION}\n"));
    for d in diff_ids {
        seed.update(d.as_bytes());
    }
    seed.update(serde_json::to_vec(rootfs).expect("options serialize"));
    let size = match rootfs.size {
        Some(bytes) => SizeSpec::Bytes(bytes),
        None => ext4::Options::default().size,
    };
    ext4::Options {
        size,
        journal: rootfs.journal,
        seed: seed.finalize().into(),
        fs_time,
        ..Default::default()
    }
}

/// `SOURCE_DATE_EPOCH` when set (and valid), else the newest mtime in the tree: never the clock.
pub fn fs_time<C>(tree: &FsTree<C>) -> Timestamp {
    if let Some(sec) = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|v| v.trim().parse().ok()) {
        return Timestamp::new(sec, 0);
    }
    let newest = tree.walk().into_iter().map(|(_, id)| tree.get(id).meta.mtime).max().unwrap_or_default();
    Timestamp::new(newest.sec.max(0), 0)
}

/// Writes `tree` (made from `input`) as ext4 into `file`; the caller stages the file, so a
/// failure leaves nothing half-written where anyone looks.
pub fn write_rootfs<C: crate::tree::Content>(
    tree: &FsTree<C>,
    options: &ext4::Options,
    file: &File,
    input: &str,
) -> Result<ext4::Summary, PipelineError> {
    let summary = ext4::write_image(tree, options, file)
        .map_err(|source| PipelineError::Ext4 { input: input.to_string(), source })?;
    // Start writing it out now, while it is hashed and stored; `Staging::commit` waits for
    // it (fsync) before the output appears. Starting writeback of gigabytes blocks for a
    // while (the filesystem allocates the delayed blocks), so it happens on a thread.
    if let Ok(file) = file.try_clone() {
        // SAFETY: sync_file_range on a descriptor the thread owns only schedules writeback.
        std::thread::spawn(move || unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE)
        });
    }
    Ok(summary)
}

/// The rootfs digest: BLAKE3 of the file, hashed on every core. Holes hash as the zeros
/// they read as, without reading them. The data is mapped a window at a time, so it is
/// hashed straight from the page cache but never all counted towards this process's memory.
pub fn digest_file(path: &Path) -> Result<FileDigest, PipelineError> {
    const WINDOW: u64 = 64 << 20;
    let hash = || -> io::Result<FileDigest> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut hasher = blake3::Hasher::new();
        let zeros = vec![0u8; WINDOW as usize];
        let mut pos = 0;
        let extents = data_extents(&file, len)?;
        for data in extents.iter().map(Some).chain([None]) {
            let (hole_end, data_end) = data.map_or((len, len), |d| (d.start, d.end));
            while pos < hole_end {
                let n = (hole_end - pos).min(WINDOW);
                hasher.update_rayon(&zeros[..n as usize]);
                pos += n;
            }
            while pos < data_end {
                let n = (data_end - pos).min(WINDOW);
                // SAFETY: the file is diskc's own staged output, which nothing writes while it
                // is hashed.
                let window = unsafe { memmap2::MmapOptions::new().offset(pos).len(n as usize).map(&file)? };
                hasher.update_rayon(&window);
                pos += n;
            }
        }
        Ok(FileDigest::Blake3(hasher.finalize().into()))
    };
    hash().map_err(io_error("reading", path))
}

pub fn format_uuid(u: &[u8; 16]) -> String {
    let hex = hex::encode(u);
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

fn write_manifest(dir: &Path, manifest: &OutputManifest) -> Result<(), PipelineError> {
    let path = dir.join(MANIFEST_FILE);
    let mut bytes = serde_json::to_vec_pretty(manifest).expect("manifest serializes");
    bytes.push(b'\n');
    fs::write(&path, bytes).map_err(io_error("writing", &path))
}

/// Reads an output directory's manifest.
pub fn read_manifest(outdir: &Path) -> io::Result<OutputManifest> {
    let mut bytes = Vec::new();
    File::open(outdir.join(MANIFEST_FILE))?.read_to_end(&mut bytes)?;
    serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// An existing OUTDIR is replaced only when it is empty or diskc wrote it.
fn check_outdir(outdir: &Path) -> Result<(), PipelineError> {
    match fs::read_dir(outdir) {
        Ok(mut entries) => {
            if entries.next().is_none() || outdir.join(MANIFEST_FILE).is_file() {
                Ok(())
            } else {
                Err(PipelineError::OutputExists(outdir.to_path_buf()))
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            Err(PipelineError::OutputExists(outdir.to_path_buf()))
        }
        Err(e) => Err(PipelineError::Io { what: "reading", path: outdir.to_path_buf(), source: e }),
    }
}

/// A hidden directory beside the output, renamed into place when complete and removed
/// otherwise. Leftovers of killed runs (their pid gone) are swept when the next run starts.
struct Staging {
    path: PathBuf,
    committed: bool,
}

impl Staging {
    /// A staging directory beside `outdir`, to be renamed onto it.
    fn beside(outdir: &Path) -> Result<Self, PipelineError> {
        let parent = match outdir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name =
            outdir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
        Staging::new(&parent, &name)
    }

    /// `parent/.NAME.diskc-tmp-PID`.
    fn new(parent: &Path, name: &str) -> Result<Self, PipelineError> {
        fs::create_dir_all(parent).map_err(io_error("creating", parent))?;
        let prefix = format!(".{name}.diskc-tmp-");
        sweep_stale(parent, &prefix);
        let path = parent.join(format!("{prefix}{}", std::process::id()));
        // Anything under our pid is a leftover of a killed run whose pid we now reuse.
        let _ = fs::remove_dir_all(&path);
        let _ = fs::remove_dir_all(aside(&path));
        fs::create_dir(&path).map_err(io_error("creating", &path))?;
        Ok(Staging { path, committed: false })
    }

    /// Makes the staged files durable and moves the directory to `outdir`, replacing an
    /// older diskc output there.
    fn commit(mut self, outdir: &Path) -> Result<(), PipelineError> {
        for entry in fs::read_dir(&self.path).map_err(io_error("reading", &self.path))? {
            let path = entry.map_err(io_error("reading", &self.path))?.path();
            File::open(&path).and_then(|f| f.sync_all()).map_err(io_error("writing", &path))?;
        }
        let old = aside(&self.path);
        let had_old = match fs::rename(outdir, &old) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => {
                return Err(PipelineError::Io { what: "moving aside", path: outdir.to_path_buf(), source: e })
            }
        };
        fs::rename(&self.path, outdir).map_err(io_error("renaming into", outdir))?;
        if had_old {
            let _ = fs::remove_dir_all(&old);
        }
        if let Some(parent) = outdir.parent().filter(|p| !p.as_os_str().is_empty()) {
            if let Ok(dir) = File::open(parent) {
                let _ = dir.sync_all();
            }
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Where commit moves an older output while the new one takes its place:
/// `.NAME.diskc-tmp-PID.old`, which the sweep of stale staging directories also covers.
fn aside(staging: &Path) -> PathBuf {
    let mut name = staging.as_os_str().to_os_string();
    name.push(".old");
    PathBuf::from(name)
}

fn sweep_stale(parent: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else { continue };
        let pid = rest.split('.').next().and_then(|p| p.parse::<i32>().ok());
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let alive = pid.is_some_and(|p| unsafe { libc::kill(p, 0) } == 0);
        if !alive {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    #[test]
    fn digest_of_sparse_file_equals_digest_of_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        file.set_len(5 << 20).unwrap();
        file.write_all_at(b"hello", 3 << 20).unwrap();
        drop(file);
        let bytes = fs::read(&path).unwrap();
        assert_eq!(digest_file(&path).unwrap(), FileDigest::Blake3(blake3::hash(&bytes).into()));
        assert_eq!(digest_file(&path).unwrap().to_string().len(), "blake3:".len() + 64);
    }

    #[test]
    fn outdir_that_diskc_did_not_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("precious"), b"x").unwrap();
        assert!(matches!(check_outdir(dir.path()), Err(PipelineError::OutputExists(_))));
        fs::write(dir.path().join(MANIFEST_FILE), b"{}").unwrap();
        assert!(check_outdir(dir.path()).is_ok());
    }

    /// Regression: the old output was moved aside to `.NAME.old` (`with_extension` took the
    /// pid for an extension), which no sweep removed; after a run killed between the two
    /// renames, every later commit failed with "Directory not empty".
    #[test]
    fn a_run_killed_between_the_renames_does_not_block_later_commits() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        fs::write(out.join(MANIFEST_FILE), b"{}").unwrap();
        // What a killed run (a pid no process has) leaves: the old output moved aside.
        let leftover = dir.path().join(format!(".out.diskc-tmp-{}.old", i32::MAX));
        fs::rename(&out, &leftover).unwrap();
        for round in 0..2 {
            let staging = Staging::beside(&out).unwrap();
            fs::write(staging.path.join("new"), [round]).unwrap();
            staging.commit(&out).unwrap();
            assert_eq!(fs::read(out.join("new")).unwrap(), [round]);
            let left: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(left.len(), 1, "only the output remains: {left:?}");
        }
    }

    #[test]
    fn staging_is_removed_unless_committed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let staging = Staging::beside(&out).unwrap();
        let staged = staging.path.clone();
        assert!(staged.is_dir());
        drop(staging);
        assert!(!staged.exists());
        let staging = Staging::beside(&out).unwrap();
        fs::write(staging.path.join("x"), b"1").unwrap();
        staging.commit(&out).unwrap();
        assert!(out.join("x").is_file());
    }
}
