//! `diskc store migrate`: the store's own upkeep, apart from the commands over its images.

use clap::{Args, Subcommand};
use serde_json::json;

use diskc::error::{Error, UsageError};
use diskc::store::StoreLocation;
use tokio::runtime::Handle;

use super::store::StoreArgs;
use super::GlobalArgs;

#[derive(Args, Debug)]
pub struct StoreAdminArgs {
    #[command(subcommand)]
    pub command: StoreAdminCommand,
}

#[derive(Subcommand, Debug)]
pub enum StoreAdminCommand {
    /// Move a format-2 store's chunk files (chunks/) into pack files. Optional: chunk files
    /// are read as they are, but packs are faster to write, keep and push.
    Migrate(MigrateArgs),
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn run(args: StoreAdminArgs, global: &GlobalArgs, rt: &Handle) -> Result<u8, Error> {
    let StoreAdminCommand::Migrate(args) = args.command;
    if let StoreLocation::Remote(url) = args.store.location() {
        return Err(UsageError(format!(
            "--store {url}: store migrate upgrades a local store directory; a remote store holds packs only"
        ))
        .into());
    }
    let store = args.store.open_existing(rt)?;
    let report = store.migrate()?;
    if global.json {
        super::output::json("store migrate", json!({ "report": report }));
    } else if report.chunks_moved == 0 && report.chunks_damaged == 0 {
        super::output::line(format_args!(
            "{}: no chunk files to migrate: the store keeps its chunks in packs",
            store.root().display()
        ));
    } else {
        super::output::line(format_args!(
            "{}: moved {} chunk files into {} packs",
            store.root().display(),
            report.chunks_moved,
            report.packs_written
        ));
    }
    if report.chunks_damaged > 0 {
        eprintln!(
            "{} damaged chunk files were left in chunks/: `diskc verify` names the images they hurt",
            report.chunks_damaged
        );
        return Ok(2);
    }
    Ok(0)
}
