//! `diskc push IMAGE REMOTE` and `diskc pull IMAGE REMOTE`: an image copied between the
//! local store and a remote one (`s3://BUCKET[/PREFIX]`, `file:///PATH`), moving only what
//! the other side lacks.

use clap::Args;
use serde_json::json;
use tokio::runtime::Handle;

use diskc::error::{Error, ResultExt};
use diskc::store::{Remote, Transfer, TransferProgress};

use super::store::StoreArgs;
use super::GlobalArgs;

#[derive(Args, Debug)]
pub struct TransferArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Image id (an unambiguous prefix will do) or name.
    pub image: String,
    /// The other store: s3://BUCKET[/PREFIX] (configured by AWS_ENDPOINT_URL,
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP) or file:///PATH.
    pub remote: String,
}

pub fn push(args: TransferArgs, global: &GlobalArgs, rt: &Handle) -> Result<u8, Error> {
    run(args, global, rt, "push")
}

pub fn pull(args: TransferArgs, global: &GlobalArgs, rt: &Handle) -> Result<u8, Error> {
    run(args, global, rt, "pull")
}

fn run(args: TransferArgs, global: &GlobalArgs, rt: &Handle, verb: &str) -> Result<u8, Error> {
    // Push reads this store and must not create one; pull fills it.
    let store = if verb == "push" { args.store.open_existing(rt)? } else { args.store.open(rt)? };
    let remote = Remote::open(&args.remote, rt)?;
    let quiet = global.quiet || global.json;
    let progress = |p: TransferProgress| {
        if !quiet {
            eprintln!("{verb}: {} of {} KiB of chunks", p.done >> 10, p.total >> 10);
        }
    };
    let done: Transfer = if verb == "push" {
        store.push(&args.image, &remote, &progress)
    } else {
        store.pull(&args.image, &remote, &progress)
    }
    .with_context(|| {
        format!("cannot {verb} {} {} {}", args.image, if verb == "push" { "to" } else { "from" }, args.remote)
    })?;
    if global.json {
        super::output::json(
            verb,
            json!({ "id": done.id, "transferred_bytes": done.transferred_bytes, "chunks": done.chunks }),
        );
    } else {
        if !global.quiet {
            eprintln!("{verb}: {} chunks, {} bytes transferred", done.chunks, done.transferred_bytes);
        }
        super::output::line(done.id);
    }
    Ok(0)
}
