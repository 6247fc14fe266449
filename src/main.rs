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
            let _ = err.print();
            // clap's own exit code for usage errors is 2; ours is 1 (2 means bad input).
            return ExitCode::from(if usage { 1 } else { 0 });
        }
    };
    cli::init_logging(args.global.verbose);
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
            eprintln!("diskc: error: {err}");
            ExitCode::from(err.kind().exit_code())
        }
    }
}
