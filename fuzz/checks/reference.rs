//! Image references and digests, the one parser of the SOURCE argument: any string either
//! parses or fails with a message naming it; what parses is normalised, so writing it out
//! and parsing it again gives the same reference.

use std::path::Path;

use diskc::digest::Digest;
use diskc::source::{RegistryTag, SourceRef};

pub fn check(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else { return };
    if let Ok(digest) = input.parse::<Digest>() {
        assert_eq!(digest.to_string(), input, "a digest prints as it was written");
    }
    let parsed = match input.parse::<SourceRef>() {
        Ok(parsed) => parsed,
        Err(e) => {
            assert!(e.to_string().contains(&format!("{input:?}")), "the error names the input: {e}");
            return;
        }
    };
    let again = match &parsed {
        SourceRef::Registry(r) => {
            if let RegistryTag::Tag(t) = &r.reference {
                assert!(!t.is_empty() && !t.contains(['/', '@', ':']), "tag {t:?}");
            }
            format!("docker://{r}")
        }
        SourceRef::DockerDaemon { name } => format!("docker-daemon:{name}"),
        SourceRef::Oci { dir, reference } => local("oci", dir, reference),
        SourceRef::OciArchive { file, reference } => local("oci-archive", file, reference),
        SourceRef::DockerArchive { file, reference } => local("docker-archive", file, reference),
    };
    assert_eq!(again.parse::<SourceRef>().as_ref(), Ok(&parsed), "{input:?} normalised to {again:?}");
}

fn local(transport: &str, path: &Path, reference: &Option<String>) -> String {
    let path = path.to_str().expect("parsed from a str");
    match reference {
        Some(r) => format!("{transport}:{path}:{r}"),
        None => format!("{transport}:{path}"),
    }
}
