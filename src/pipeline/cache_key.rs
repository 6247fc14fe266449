//! What decides a conversion's result, as one key: the store answers a conversion it has
//! done before from this key alone, without reading a layer.

use std::fs;

use super::{ConvertPlan, PipelineError};
use crate::digest::Digest;
use crate::manifest::FORMAT_VERSION;

/// The image (its config digest names its layers too), diskc's formats, the options, the
/// kernel, the initrd's makings (the guest init and its modules) and the build inputs.
pub(super) fn cache_key(plan: &ConvertPlan, config_digest: Digest) -> Result<String, PipelineError> {
    let output = &plan.output;
    let kernel = match &output.kernel {
        Some(k) => {
            let bytes = fs::read(&k.kernel).map_err(|source| PipelineError::Io {
                what: "reading",
                path: k.kernel.clone(),
                source,
            })?;
            serde_json::json!({ "kernel": Digest::of(&bytes), "modules": k.modules })
        }
        None => serde_json::Value::Null,
    };
    let key = serde_json::json!({
        "diskc": env!("CARGO_PKG_VERSION"),
        "format": FORMAT_VERSION,
        "config": config_digest,
        "rootfs": output.rootfs,
        "kernel": kernel,
        // Without diskc-init no initrd is made, and nothing depends on it.
        "initrd": crate::boot::initrd_key().ok(),
        "build": output.build_inputs,
    });
    Ok(Digest::of(key.to_string().as_bytes()).to_string())
}
