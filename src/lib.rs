//! diskc compiles a Dockerfile, or any container image, into a bootable VM disk image: an
//! ext4 root filesystem plus a boot manifest, kept in a content-addressed chunk store.
//!
//! The modules follow the pipeline — `build` → `source` → `layer` → `tree` → `ext4` →
//! `store` → `boot` — and `docs/architecture.md` in the repository draws them, their
//! arrows, the data flow of one conversion and the on-disk formats.
//!
//! # Entry points
//!
//! One call per job, each taking a plan and returning a result or an [`Error`], whose
//! [`ErrorKind`] says whether the input, the environment or the plan was at fault. Async
//! work runs on the caller's runtime: the entry points take its [`tokio::runtime::Handle`]
//! and block, so call them from outside the runtime (or from `spawn_blocking`).
//!
//! Make an ext4 image from a directory, as `mkfs.ext4 -d` would, without root:
//!
//! ```no_run
//! use diskc::{mkfs, MkfsPlan, MkfsSource};
//!
//! let plan = MkfsPlan {
//!     source: MkfsSource::Directory("rootfs/".into()),
//!     output: "rootfs.ext4".into(),
//!     size: None,
//!     journal: true,
//!     label: None,
//!     source_date_epoch: None,
//! };
//! let made = mkfs(&plan)?;
//! println!("{} bytes, uuid {}", made.summary.size_bytes, made.uuid);
//! # Ok::<(), diskc::Error>(())
//! ```
//!
//! Convert an image from the Docker daemon into the default store:
//!
//! ```no_run
//! use diskc::{convert, ConvertPlan, OutputPlan};
//!
//! let runtime = tokio::runtime::Runtime::new().expect("a runtime");
//! let plan = ConvertPlan {
//!     source: "docker-daemon:debian:bookworm".parse()?,
//!     input: "docker-daemon:debian:bookworm".into(),
//!     platform: None,
//!     registry: Default::default(),
//!     output: OutputPlan { store: Some(OutputPlan::default_store()), ..Default::default() },
//! };
//! let converted = convert(&plan, runtime.handle(), &mut |_progress| {})?;
//! println!("image {}", converted.manifest.id.unwrap_or_default());
//! # Ok::<(), diskc::Error>(())
//! ```
//!
//! Build a Dockerfile with BuildKit in the Docker daemon, then convert what it built:
//!
//! ```no_run
//! use diskc::build::{BuildPlan, Builder};
//! use diskc::{build, OutputPlan};
//!
//! let runtime = tokio::runtime::Runtime::new().expect("a runtime");
//! let plan = BuildPlan {
//!     context: "examples/hello".into(),
//!     dockerfile: None,
//!     tags: vec!["hello:latest".into()],
//!     build_args: Default::default(),
//!     labels: Default::default(),
//!     target: None,
//!     platform: None,
//!     no_cache: false,
//!     builder: Builder::BuildKit,
//! };
//! let output = OutputPlan { store: Some(OutputPlan::default_store()), ..Default::default() };
//! let built = build(&plan, &output, runtime.handle(), &mut |_progress| {})?;
//! println!("{} as {:?}", built.image_id, built.converted.manifest.id);
//! # Ok::<(), diskc::Error>(())
//! ```

pub mod boot;
pub mod build;
pub mod digest;
pub mod docker;
pub mod error;
pub mod ext4;
pub mod farm;
pub mod fileio;
pub mod layer;
pub mod layout;
pub mod manifest;
pub mod nbd;
pub mod pipeline;
pub mod source;
pub mod store;
pub mod tree;

pub use error::{Error, ErrorKind};
pub use pipeline::{build, convert, mkfs, ConvertPlan, MkfsPlan, MkfsSource, OutputPlan};
