//! `convert`: an image from any source through the stages — source → layers → flatten →
//! ext4 → store and/or output directory. A conversion the store already holds is answered
//! from the store without reading a layer.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio::runtime::Handle;

use super::cache_key::cache_key;
use super::incremental::{laid_layers, restore_saved, Restored, ToSave};
use super::rootfs::{digest_file, ext4_options, format_uuid, fs_time, write_rootfs};
use super::staging::{check_outdir, write_manifest, Staging};
use super::{ConvertPlan, HostKernel, PipelineError, Progress, Timings};
use crate::boot::{self, KernelSource, STORE_INITRD, STORE_KERNEL};
use crate::digest::FileDigest;
use crate::error::{Error, ResultExt};
use crate::ext4;
use crate::layer;
use crate::manifest::{
    BootPart, ImageConfig, ImageDescription, RootfsInfo, SourceInfo, FORMAT_VERSION, ROOTFS_FILE,
};
use crate::source;
use crate::store::{chain_ids, ImageId, ImageRecord, LaidLayer, Store, StoreError, Stored};
use crate::tree::FsTree;

/// The result of a conversion.
#[derive(Clone, Debug)]
pub struct Converted {
    pub manifest: ImageDescription,
    pub outdir: Option<PathBuf>,
    /// The store answered without reading a layer.
    pub cache_hit: bool,
    /// How many of the image's lowest layers were restored from the store's saved layers
    /// instead of being read (an incremental conversion).
    pub layers_reused: usize,
    /// Bytes of the rootfs the store took from an image it held (made with the same lower
    /// layers) without reading them.
    pub store_reused_bytes: u64,
    /// For an image in the Docker daemon: how its layers were read, and why.
    pub daemon_layers: Option<source::DaemonLayers>,
    pub timings: Timings,
}

/// Converts the plan's source into a root filesystem with its manifest and boot files, in
/// the plan's outdir and/or store. Blocks; the daemon source runs its async part on `rt`.
pub fn convert(
    plan: &ConvertPlan,
    rt: &Handle,
    progress: &mut dyn FnMut(Progress),
) -> Result<Converted, Error> {
    plan.output.check()?;
    run(plan, rt, progress).with_context(|| format!("converting {}", plan.input))
}

fn run(
    plan: &ConvertPlan,
    rt: &Handle,
    progress: &mut dyn FnMut(Progress),
) -> Result<Converted, PipelineError> {
    let output = &plan.output;
    let started = Instant::now();
    let mut timings = Timings::default();
    if let Some(outdir) = &output.outdir {
        check_outdir(outdir)?;
    }
    let store = output.store.as_ref().map(|location| location.open(rt)).transpose()?;

    let opened = source::open(rt, &plan.source, plan.platform.as_deref(), &plan.registry)?;
    let layers = &opened.resolved().layers;
    let bytes = layers.iter().map(|l| l.size).sum::<Option<u64>>();
    let meter = Arc::new(layer::LayerMeter::new(layers.iter().map(|l| (l.digest, l.size))));
    progress(Progress::Resolved {
        input: plan.input.clone(),
        layers: layers.len(),
        bytes,
        meter: meter.clone(),
    });
    let daemon_layers = opened.daemon_layers();
    timings.resolve = lap(started, &timings);

    let cache_key = cache_key(plan, opened.resolved().config_digest)?;
    if let Some(store) = &store {
        if let Some(id) = store.cache_get(&cache_key)? {
            progress(Progress::CacheHit { id: id.to_string() });
            name_image(store, &id, &output.names)?;
            let manifest = from_store(store, &id, plan)?;
            timings.total = started.elapsed().as_secs_f64();
            return Ok(Converted {
                manifest,
                outdir: output.outdir.clone(),
                cache_hit: true,
                layers_reused: 0,
                store_reused_bytes: 0,
                daemon_layers: None,
                timings,
            });
        }
    }

    let staging = match (&output.outdir, &store) {
        (Some(outdir), _) => Staging::beside(outdir)?,
        (None, Some(store)) => Staging::new(&store.root().join("tmp"), "convert")?,
        (None, None) => unreachable!("OutputPlan::check refuses a plan without a destination"),
    };
    let config = opened.config().clone();
    // The layers spool straight into the image file, and their data stays where it lands.
    let rootfs_path = staging.path.join(ROOTFS_FILE);
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&rootfs_path)
        .map_err(|source| PipelineError::Io { what: "creating", path: rootfs_path.clone(), source })?;
    let spool = layer::SpoolFile::new(file).with_meter(meter);
    // Restored layers stay where the store keeps them: the image file gets their bytes only
    // if it is an output, and then only after the put (see `incremental`).
    let Restored { mut layers, values: restored_values } = match &store {
        Some(store) if opened.reads_layers_apart() => {
            restore_saved(store, opened.resolved(), &config.diff_ids, &spool)?
        }
        _ => Restored::default(),
    };
    let reused = layers.len();
    if let Some(how) = &daemon_layers {
        progress(Progress::DaemonLayers(how.clone()));
    }
    if reused > 0 {
        progress(Progress::LayersReused { layers: reused });
    }
    let (resolved, read) = opened.index_layers(&spool, reused)?;
    let to_save = match &store {
        Some(store) => Some(ToSave::copy(store, &config.diff_ids, reused, &read)?),
        None => None,
    };
    layers.extend(read);
    timings.layers = lap(started, &timings);
    progress(Progress::LayersIndexed { seconds: timings.layers });

    let tree = layer::flatten_layers(&layers)
        .map_err(|source| PipelineError::Flatten { input: plan.input.clone(), source })?;
    progress(Progress::Flattened { entries: tree.arena_len() });
    timings.flatten = lap(started, &timings);
    // The tree holds what it needs of the layers (their spools among it); their entries, as
    // many as the tree's nodes, need not stay for the ext4 writer.
    let spools: Vec<_> = layers.iter().map(|l| l.spool().clone()).collect();
    drop(layers);

    let file = spool.settle(tree.files().map(|f| &f.content)).map_err(|source| PipelineError::Io {
        what: "writing",
        path: rootfs_path.clone(),
        source,
    })?;
    let options = ext4::Options {
        data_in_place: true,
        ..ext4_options(&config.diff_ids, &output.rootfs, fs_time(&tree, output.rootfs.source_date_epoch))
    };
    let summary = write_rootfs(&tree, &options, &file, &plan.input)?;
    let boot = boot_part(output.kernel.as_ref(), &tree, &staging.path, &config.config)?;
    drop(tree); // the spools go with the last reference to them

    // Into a store, the put hashes the rootfs as it reads it: one pass over the data.
    let hashed = match &store {
        Some(_) => None,
        None => Some(digest_file(&rootfs_path)?),
    };
    timings.rootfs = lap(started, &timings);
    progress(Progress::RootfsWritten { bytes: summary.size_bytes, seconds: timings.rootfs });

    let source = SourceInfo {
        reference: plan.input.clone(),
        manifest_digest: resolved.manifest_digest,
        config_digest: resolved.config_digest,
        layers: resolved.layers.iter().map(|l| l.digest).collect(),
        diff_ids: config.diff_ids.clone(),
        platform: config.platform.clone(),
    };
    let uuid = format_uuid(&summary.uuid);
    let (id, digest, store_reused_bytes) = match &store {
        Some(store) => {
            let record = ImageRecord {
                uuid: uuid.clone(),
                rootfs_digest: hashed,
                boot: boot.clone(),
                source: Some(source.clone()),
                config: config.config.clone(),
                build: output.build_inputs.clone(),
            };
            // The image the restored layers were saved with shares their bytes with this one.
            let base = reused
                .checked_sub(1)
                .and_then(|top| store.newest_layer_user(&chain_ids(&config.diff_ids)[top]));
            let laid = laid_layers(&spools[..reused], restored_values);
            let stored = keep(store, &staging.path, record, base.as_ref(), &laid)?;
            if output.outdir.is_some() {
                lay_in(&rootfs_path, &laid)?;
            }
            store.cache_put(&cache_key, &stored.id)?;
            if let Some(to_save) = to_save {
                to_save.save(store, &stored, &spools[reused..]);
            }
            name_image(store, &stored.id, &output.names)?;
            timings.store = lap(started, &timings);
            (Some(stored.id.to_string()), stored.rootfs_digest, stored.reused)
        }
        None => (None, hashed.expect("without a store, the rootfs was hashed above"), 0),
    };
    let manifest = ImageDescription {
        diskc_version: env!("CARGO_PKG_VERSION").to_string(),
        format_version: FORMAT_VERSION,
        id,
        source,
        config: config.config.clone(),
        rootfs: RootfsInfo { file: ROOTFS_FILE.to_string(), digest, size: summary.size_bytes, uuid },
        boot,
    };
    if let Some(outdir) = &output.outdir {
        write_manifest(&staging.path, &manifest)?;
        staging.commit(outdir)?;
    }
    timings.total = started.elapsed().as_secs_f64();
    Ok(Converted {
        manifest,
        outdir: output.outdir.clone(),
        cache_hit: false,
        layers_reused: reused,
        store_reused_bytes,
        daemon_layers,
        timings,
    })
}

/// The boot part: the given kernel, else the image's own, else none. Writes the kernel and
/// the initrd into `dir`.
fn boot_part<C: crate::tree::Content>(
    kernel: Option<&HostKernel>,
    tree: &FsTree<C>,
    dir: &Path,
    config: &ImageConfig,
) -> Result<Option<BootPart>, PipelineError> {
    let kernel = match kernel {
        Some(k) => KernelSource::from_host(&k.kernel, &k.modules)?,
        None => match KernelSource::from_tree(tree)? {
            Some(own) => own,
            None => return Ok(None),
        },
    };
    Ok(Some(boot::prepare(dir, &kernel, config)?))
}

/// Puts the staged rootfs and boot files (as `record.boot` names them) in the store, taking
/// what it can from image `base`.
fn keep(
    store: &Store,
    staged: &Path,
    record: ImageRecord,
    base: Option<&ImageId>,
    laid: &[LaidLayer],
) -> Result<Stored, StoreError> {
    let rootfs = staged.join(ROOTFS_FILE);
    let boot_files: Vec<(&str, PathBuf)> = match &record.boot {
        Some(b) => {
            vec![(STORE_KERNEL, staged.join(&b.kernel.file)), (STORE_INITRD, staged.join(&b.initrd.file))]
        }
        None => Vec::new(),
    };
    let boot_files: Vec<(&str, &Path)> = boot_files.iter().map(|(n, p)| (*n, p.as_path())).collect();
    store.put_image_like(&rootfs, &boot_files, record, base, laid, &|_| {})
}

/// Copies the layers `laid` by reference into the image file at `path`, which then holds
/// every byte of the image.
fn lay_in(path: &Path, laid: &[LaidLayer]) -> Result<(), PipelineError> {
    let io_error = |source| PipelineError::Io { what: "writing", path: path.to_path_buf(), source };
    let file = fs::OpenOptions::new().write(true).open(path).map_err(io_error)?;
    for layer in laid {
        layer.copy_into(&file).map_err(io_error)?;
    }
    Ok(())
}

fn name_image(store: &Store, id: &ImageId, names: &[String]) -> Result<(), StoreError> {
    for name in names {
        store.tag(&id.to_string(), name)?;
    }
    Ok(())
}

/// Writes the stored image `id` to `outdir` as a conversion would (rootfs, manifest.json, boot
/// files), naming its source `input`: for an image that came from elsewhere (a pull).
pub fn export_outdir(
    store: &Path,
    id: &ImageId,
    input: &str,
    outdir: &Path,
) -> Result<ImageDescription, Error> {
    let plan = ConvertPlan {
        source: source::SourceRef::DockerDaemon { name: id.to_string() },
        input: input.to_string(),
        platform: None,
        registry: Default::default(),
        output: super::OutputPlan { outdir: Some(outdir.to_path_buf()), ..Default::default() },
    };
    let run = || -> Result<ImageDescription, PipelineError> {
        check_outdir(outdir)?;
        from_store(&Store::open(store)?, id, &plan)
    };
    run().with_context(|| format!("writing {} to {}", id.short(), outdir.display()))
}

/// A cache hit: the stored image's manifest, and its files in the outdir when asked for.
fn from_store(store: &Store, id: &ImageId, plan: &ConvertPlan) -> Result<ImageDescription, PipelineError> {
    let stored = store.image(id)?;
    let mut manifest = ImageDescription {
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
    if let Some(outdir) = &plan.output.outdir {
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
