//! diskc compiles a Dockerfile, or any container image, into a bootable VM disk image: an
//! ext4 root filesystem plus a boot manifest, kept in a content-addressed chunk store.
//!
//! The modules follow the pipeline (see `DESIGN.md` in the repository):
//! `build` → `source` → `layer` → `tree` → `ext4` → `store` → `boot`.

pub mod boot;
pub mod build;
pub mod digest;
pub mod docker;
pub mod error;
pub mod ext4;
pub mod fileio;
pub mod layer;
pub mod layout;
pub mod manifest;
pub mod pipeline;
pub mod source;
pub mod store;
pub mod tree;
