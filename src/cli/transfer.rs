//! `diskc push IMAGE REMOTE` and `diskc pull IMAGE REMOTE`: an image copied between the
//! local store and a remote one (`s3://BUCKET[/PREFIX]`, `file:///PATH`), moving only what
//! the other side lacks.

use clap::Args;
use serde_json::json;
use tokio::runtime::Handle;

use diskc::error::{Error, ResultExt};
use diskc::store::{Remote, TransferProgress};

use super::progress::{bytes_bar, ProgressMode, Shown};
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
    /// How progress shows on stderr: a bar on a terminal (tty), lines (plain), or nothing.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto, value_name = "MODE")]
    pub progress: ProgressMode,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    #[command(flatten)]
    pub transfer: TransferArgs,
    /// Fetch the chunks the image's first boot read (its boot profile) first, in one batch.
    #[arg(long)]
    pub boot_first: bool,
}

pub fn push(args: TransferArgs, global: &GlobalArgs, rt: &Handle) -> Result<u8, Error> {
    run(args, global, rt, "push", false)
}

pub fn pull(args: PullArgs, global: &GlobalArgs, rt: &Handle) -> Result<u8, Error> {
    run(args.transfer, global, rt, "pull", args.boot_first)
}

fn run(
    args: TransferArgs,
    global: &GlobalArgs,
    rt: &Handle,
    verb: &str,
    boot_first: bool,
) -> Result<u8, Error> {
    // Push reads this store and must not create one; pull fills it.
    let store = if verb == "push" { args.store.open_existing(rt)? } else { args.store.open(rt)? };
    let remote = Remote::open(&args.remote, rt)?;
    let shown = if global.json { Shown::Quiet } else { args.progress.shown(global) };
    let bar = (shown == Shown::Tty).then(|| bytes_bar(verb));
    let progress = |p: TransferProgress| match (&bar, shown) {
        (Some(bar), _) => {
            bar.set_length(p.total);
            bar.set_position(p.done);
        }
        (None, Shown::Plain) => eprintln!("{verb}: {} of {} KiB of chunks", p.done >> 10, p.total >> 10),
        (None, _) => {}
    };
    let done = if verb == "push" {
        store.push(&args.image, &remote, &progress)
    } else {
        store.pull_image(&args.image, &remote, boot_first, &progress)
    }
    .with_context(|| {
        format!("cannot {verb} {} {} {}", args.image, if verb == "push" { "to" } else { "from" }, args.remote)
    });
    if let Some(bar) = bar {
        bar.finish();
    }
    let done = done?;
    if global.json {
        super::output::json(
            verb,
            json!({
                "id": done.id,
                "transferred_bytes": done.transferred_bytes,
                "chunks": done.chunks,
                "boot_first_chunks": done.boot_first_chunks,
            }),
        );
    } else {
        if shown != Shown::Quiet {
            eprintln!("{verb}: {} chunks, {} bytes transferred", done.chunks, done.transferred_bytes);
        }
        super::output::line(done.id);
    }
    Ok(0)
}
