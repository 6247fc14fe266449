//! One face for every source: open it (cheap: manifest and config only), then read its
//! layers. The split is what lets the store answer a cache hit without reading a layer.

use super::daemon::{export_stream, resolve_daemon, DaemonImage};
use super::engine_layers::{self, EngineLayer, LayerTar};
use super::registry::{Registry, RegistryOptions};
use super::{
    open_local, parse_config, platform_matches, read_image_stream, DaemonLayers, LayerDescriptor, LocalImage,
    ParsedConfig, ResolvedImage, SourceError, SourceRef, DEFAULT_PLATFORM,
};
use crate::layer::{self, LayerExpect, LayerIndex, LayerJob, SpoolFile};
use tokio::runtime::Handle;

/// An image whose manifest and config are known and whose layers are not read yet.
pub trait ImageSource: Send {
    fn resolved(&self) -> &ResolvedImage;

    fn config(&self) -> &ParsedConfig;

    /// How a daemon image's layers will be read; `None` for other sources.
    fn daemon_layers(&self) -> Option<DaemonLayers> {
        None
    }

    /// Whether [`ImageSource::index_layers`] can leave out the lowest layers, which the
    /// caller then has from elsewhere (a stream brings every layer whatever is asked).
    fn reads_layers_apart(&self) -> bool {
        true
    }

    /// Reads, verifies and indexes the layers from number `first` up (bottom first; all of
    /// them when `first` is 0), spooling file data into `spool`, each into the slot of its
    /// number. Returns the image as finally resolved (a stream learns its manifest digest
    /// only at its end) and the layers read.
    fn index_layers(
        self: Box<Self>,
        spool: &SpoolFile,
        first: usize,
    ) -> Result<(ResolvedImage, Vec<LayerIndex>), SourceError>;
}

impl ImageSource for LocalImage {
    fn resolved(&self) -> &ResolvedImage {
        &self.resolved
    }

    fn config(&self) -> &ParsedConfig {
        &self.config
    }

    fn index_layers(
        self: Box<Self>,
        spool: &SpoolFile,
        first: usize,
    ) -> Result<(ResolvedImage, Vec<LayerIndex>), SourceError> {
        let layers = LocalImage::index_layers_from(&self, first, spool)?;
        Ok((self.resolved, layers))
    }
}

/// An image in the Docker daemon: inspected now; its layers read from the Engine's own
/// directories when it runs here (`source::engine_layers`), else exported (`docker save`'s
/// stream) and indexed as the stream arrives.
struct DaemonSource {
    rt: Handle,
    image: DaemonImage,
    resolved: ResolvedImage,
    config: ParsedConfig,
    platform: String,
    /// The layers' directories, or why they cannot be read.
    engine: Result<Vec<EngineLayer>, String>,
}

/// `DISKC_DAEMON_LAYERS=save` reads a daemon image through `docker save` even where its
/// layer directories could be read (to compare the two, or to work around a problem).
pub const DAEMON_LAYERS_VAR: &str = "DISKC_DAEMON_LAYERS";

impl DaemonSource {
    fn open(rt: &Handle, name: &str, platform: &str) -> Result<Self, SourceError> {
        let image = resolve_daemon(rt, name)?;
        // Inspect gives no manifest and no raw config; the stream brings both. Until then
        // the layers are known by their diff_ids, and the image by its id (the config digest).
        let resolved = ResolvedImage {
            manifest_digest: None,
            config_digest: image.id,
            config_json: Vec::new(),
            layers: image
                .diff_ids
                .iter()
                .map(|&digest| LayerDescriptor { digest, media_type: String::new(), size: None })
                .collect(),
            platform: image.platform.clone(),
        };
        let config = ParsedConfig {
            config: image.config.clone(),
            diff_ids: image.diff_ids.clone(),
            platform: image.platform.clone(),
        };
        let engine = match std::env::var(DAEMON_LAYERS_VAR).as_deref() {
            Ok("save") => Err(format!("{DAEMON_LAYERS_VAR}=save")),
            _ => match &image.graph_driver {
                Some((driver, data)) => engine_layers::find(driver, data, &image.diff_ids),
                None => Err("the Engine reports no GraphDriver data".into()),
            },
        };
        Ok(DaemonSource { rt: rt.clone(), image, resolved, config, platform: platform.to_string(), engine })
    }
}

impl ImageSource for DaemonSource {
    fn resolved(&self) -> &ResolvedImage {
        &self.resolved
    }

    fn config(&self) -> &ParsedConfig {
        &self.config
    }

    fn daemon_layers(&self) -> Option<DaemonLayers> {
        Some(match &self.engine {
            Ok(_) => DaemonLayers {
                path: "engine-directories".into(),
                reason: "the daemon runs on this host (overlay2) and its layer directories can be read"
                    .into(),
            },
            Err(why) => DaemonLayers { path: "docker-save".into(), reason: why.clone() },
        })
    }

    fn reads_layers_apart(&self) -> bool {
        self.engine.is_ok()
    }

    fn index_layers(
        self: Box<Self>,
        spool: &SpoolFile,
        first: usize,
    ) -> Result<(ResolvedImage, Vec<LayerIndex>), SourceError> {
        if let Ok(layers) = &self.engine {
            let input = format!("docker-daemon:{}", self.image.name);
            // Each layer's tar is put back together exactly; its diff_id proves it.
            let jobs: Vec<LayerJob> = self.image.diff_ids[first..]
                .iter()
                .map(|&diff_id| LayerJob {
                    expect: LayerExpect { digest: None, diff_id: Some(diff_id), media_type: String::new() },
                    size: None,
                })
                .collect();
            let open = |i: usize| -> std::io::Result<Box<dyn std::io::Read + Send>> {
                Ok(Box::new(LayerTar::open(&layers[first + i])?))
            };
            let indexed = layer::index_layers_from(first, &jobs, open, spool)
                .map_err(|source| SourceError::Layer { input, source })?;
            return Ok((self.resolved, indexed));
        }
        assert_eq!(first, 0, "a stream brings every layer");
        // Export by id: exactly the image inspected, even if the name moves meanwhile.
        let stream = export_stream(&self.rt, &self.image.id.to_string())?;
        let input = format!("docker-daemon:{}", self.image.name);
        let streamed = read_image_stream(stream, &input, None, &self.platform, spool, &self.image.diff_ids)?;
        if streamed.resolved.config_digest != self.image.id {
            return Err(SourceError::Corrupt {
                input,
                problem: format!(
                    "the daemon exported config {} for image {}",
                    streamed.resolved.config_digest, self.image.id
                ),
            });
        }
        Ok((streamed.resolved, streamed.layers))
    }
}

/// An image in a registry: manifest and config fetched now, blobs streamed in parallel.
struct RegistrySource {
    registry: Registry,
    resolved: ResolvedImage,
    config: ParsedConfig,
    input: String,
}

impl RegistrySource {
    fn open(
        reference: &super::RegistryRef,
        platform: &str,
        options: &RegistryOptions,
    ) -> Result<Self, SourceError> {
        let input = format!("docker://{reference}");
        let registry = Registry::new(reference.clone(), options)?;
        let resolved = registry.resolve(platform)?;
        let config = parse_config(&resolved.config_json)
            .map_err(|problem| SourceError::Corrupt { input: input.clone(), problem })?;
        if config.diff_ids.len() != resolved.layers.len() {
            return Err(SourceError::Corrupt {
                input,
                problem: format!(
                    "the manifest lists {} layers but the config {} diff_ids",
                    resolved.layers.len(),
                    config.diff_ids.len()
                ),
            });
        }
        Ok(RegistrySource { registry, resolved, config, input })
    }
}

impl ImageSource for RegistrySource {
    fn resolved(&self) -> &ResolvedImage {
        &self.resolved
    }

    fn config(&self) -> &ParsedConfig {
        &self.config
    }

    fn index_layers(
        self: Box<Self>,
        spool: &SpoolFile,
        first: usize,
    ) -> Result<(ResolvedImage, Vec<LayerIndex>), SourceError> {
        let layers = &self.resolved.layers;
        let jobs: Vec<LayerJob> = layers
            .iter()
            .zip(&self.config.diff_ids)
            .skip(first)
            .map(|(desc, &diff_id)| LayerJob {
                expect: LayerExpect {
                    digest: Some(desc.digest),
                    diff_id: Some(diff_id),
                    media_type: desc.media_type.clone(),
                },
                size: desc.size,
            })
            .collect();
        let open = |i: usize| -> std::io::Result<Box<dyn std::io::Read + Send>> {
            Ok(Box::new(self.registry.open_blob(&layers[first + i])?))
        };
        let indexed = layer::index_layers_from(first, &jobs, open, spool)
            .map_err(|source| SourceError::Layer { input: self.input.clone(), source })?;
        Ok((self.resolved, indexed))
    }
}

/// Opens `source`. `platform` (`os/arch[/variant]`) picks among a multi-platform index, and
/// when given, an image of any other platform is an error naming the one it has; `None`
/// takes the host's from an index ([`DEFAULT_PLATFORM`]) and a single image as it is.
/// `registry` says how to reach a registry. The daemon source runs its async part on `rt`,
/// the caller's runtime.
pub fn open(
    rt: &Handle,
    source: &SourceRef,
    platform: Option<&str>,
    registry: &RegistryOptions,
) -> Result<Box<dyn ImageSource>, SourceError> {
    let pick = platform.unwrap_or(DEFAULT_PLATFORM);
    let opened: Box<dyn ImageSource> = match source {
        SourceRef::Oci { .. } | SourceRef::OciArchive { .. } | SourceRef::DockerArchive { .. } => {
            Box::new(open_local(source, pick)?)
        }
        SourceRef::DockerDaemon { name } => Box::new(DaemonSource::open(rt, name, pick)?),
        SourceRef::Registry(reference) => Box::new(RegistrySource::open(reference, pick, registry)?),
    };
    // An index was resolved to `pick` already; a single image is whatever it was built for.
    let have = &opened.resolved().platform;
    match platform {
        Some(wanted) if !platform_matches(have, wanted) => {
            let have =
                if have.trim_matches('/').is_empty() { "no stated platform".into() } else { have.clone() };
            Err(SourceError::WrongPlatform { wanted: wanted.to_string(), have })
        }
        _ => Ok(opened),
    }
}
