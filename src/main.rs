//! The `diskc` command: parse arguments, set up logging, run the library, map errors to
//! exit codes. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;

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
    match cli::run(args) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("diskc: error: {}", cli::one_line(&err));
            ExitCode::from(cli::exit_code(&err))
        }
    }
}
