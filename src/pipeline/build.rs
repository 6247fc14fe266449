//! `build`: a Dockerfile built by BuildKit in the Docker daemon, then converted, by id, like
//! `convert docker-daemon:` — exactly the image just built, even if its tag moves meanwhile.

use std::collections::BTreeMap;

use tokio::runtime::Handle;

use super::{convert, ConvertPlan, Converted, OutputPlan, Progress};
use crate::build::{build_image, BuildPlan};
use crate::error::{Error, ResultExt};
use crate::source::SourceRef;

/// The result of a build: the daemon's image and its conversion.
#[derive(Clone, Debug)]
pub struct Built {
    /// The image id in the Docker daemon (`sha256:…`).
    pub image_id: String,
    /// The tags the daemon gave it.
    pub tags: Vec<String>,
    pub converted: Converted,
}

/// Builds `plan` in the Docker daemon, then converts the image into `output`. The stored image
/// gets the build's tags as names (unless nothing is stored), and records the build inputs.
pub fn build(
    plan: &BuildPlan,
    output: &OutputPlan,
    rt: &Handle,
    progress: &mut dyn FnMut(Progress),
) -> Result<Built, Error> {
    let mut output = output.clone();
    output.build_inputs.extend(build_inputs(plan));
    output.check()?;
    let built = build_image(rt, plan, &mut |event| progress(Progress::Build(event)))
        .with_context(|| format!("building {}", plan.context.display()))?;
    progress(Progress::Built { image_id: built.image_id.clone(), tags: built.tags.clone() });
    if output.store.is_some() {
        output.names.extend(built.tags.iter().cloned());
    }
    let convert_plan = ConvertPlan {
        source: SourceRef::DockerDaemon { name: built.image_id.clone() },
        // The manifest names the image by its first tag.
        input: format!("docker-daemon:{}", built.tags.first().unwrap_or(&built.image_id)),
        // What BuildKit built for, when it was told.
        platform: plan.platform.clone(),
        registry: Default::default(),
        output,
    };
    let converted = convert(&convert_plan, rt, progress)?;
    Ok(Built { image_id: built.image_id, tags: built.tags, converted })
}

/// What the store records of the build: the inputs that shaped the image besides its
/// context (which the image id already covers).
fn build_inputs(plan: &BuildPlan) -> BTreeMap<String, serde_json::Value> {
    let mut inputs = BTreeMap::new();
    inputs.insert("build_args".into(), serde_json::json!(plan.build_args));
    inputs.insert("labels".into(), serde_json::json!(plan.labels));
    inputs.insert("target".into(), serde_json::json!(plan.target));
    inputs.insert("builder".into(), serde_json::json!(format!("{:?}", plan.builder).to_lowercase()));
    inputs
}
