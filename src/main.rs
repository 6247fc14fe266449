//! The `diskc` command: parse arguments, set up logging, run the library, map errors to
//! exit codes. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use diskc::error::ErrorKind;

mod cli;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(err) => {
            let usage = err.use_stderr();
            if usage && std::env::args().any(|a| a == "--json") {
                let error = diskc::error::Error::usage(err.render().to_string().trim().to_string());
                eprintln!("{}", cli::output::json_error(&error));
            } else {
                let _ = err.print();
            }
            // clap's own exit code for usage errors is 2; ours is 1 (2 means bad input).
            return ExitCode::from(if usage { 1 } else { 0 });
        }
    };
    let json = args.global.json;
    cli::init_logging(args.global.verbose);
    // `diskc boot` and `diskc serve` handle their own signals, and a worker drains on the first one.
    if !matches!(args.command, cli::Command::Boot(_) | cli::Command::Serve(_) | cli::Command::Worker(_)) {
        remove_unfinished_work_on_signals();
    }
    // The one runtime for the async parts (the Docker daemon); the library runs on it.
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("diskc: error: cannot start the async runtime: {err}");
            return ExitCode::from(ErrorKind::Environment.exit_code());
        }
    };
    match cli::run(args, runtime.handle()) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            if json {
                eprintln!("{}", cli::output::json_error(&err));
            } else {
                eprintln!("diskc: error: {err}");
            }
            ExitCode::from(err.kind().exit_code())
        }
    }
}

/// On SIGINT, SIGTERM or SIGHUP: remove the outputs being written, then exit as a process
/// killed by that signal would (128 + its number). `diskc boot` and `diskc serve` handle their
/// own signals.
fn remove_unfinished_work_on_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else { return };
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            diskc::pipeline::remove_unfinished();
            std::process::exit(128 + signal);
        }
    });
}
