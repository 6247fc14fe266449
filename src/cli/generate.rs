//! `diskc completion SHELL` and `diskc man DIR`: shell completions and manual pages, generated
//! from the same clap definitions that parse the command line, so they cannot drift from it.
//!
//! Install (as `docs/cli.md` says):
//!   diskc completion bash > ~/.local/share/bash-completion/completions/diskc
//!   diskc man ~/.local/share/man/man1

use std::path::PathBuf;

use clap::{Args, CommandFactory, ValueEnum};

use diskc::error::{Error, ResultExt};

use super::{output, Cli, GlobalArgs};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ShellArg {
    Bash,
    Zsh,
    Fish,
}

#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// The shell to complete for.
    pub shell: ShellArg,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// The directory to write diskc.1 and diskc-COMMAND.1 into (created if absent).
    pub dir: PathBuf,
}

/// Writes the completion script to stdout.
pub fn completion(args: CompletionArgs) -> Result<u8, Error> {
    let shell = match args.shell {
        ShellArg::Bash => clap_complete::Shell::Bash,
        ShellArg::Zsh => clap_complete::Shell::Zsh,
        ShellArg::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "diskc", &mut script);
    output::line(String::from_utf8_lossy(&script).trim_end());
    Ok(0)
}

/// Writes one manual page per command into the directory.
pub fn man(args: ManArgs, global: &GlobalArgs) -> Result<u8, Error> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("cannot create {}", args.dir.display()))?;
    let command = Cli::command();
    let mut pages = Vec::new();
    let mut write_page = |name: String, cmd: clap::Command| -> Result<(), Error> {
        let path = args.dir.join(format!("{name}.1"));
        let mut bytes = Vec::new();
        let bin_name = name.replace('-', " ");
        clap_mangen::Man::new(cmd.bin_name(bin_name))
            .title(name.to_uppercase())
            .render(&mut bytes)
            .context("rendering a manual page")?;
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        pages.push(path);
        Ok(())
    };
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(format!("diskc-{}", sub.get_name()), sub.clone())?;
    }
    write_page("diskc".into(), command)?;
    if global.json {
        output::json("man", serde_json::json!({ "pages": pages }));
    } else if !global.quiet {
        output::line(format!("wrote {} manual pages to {}", pages.len(), args.dir.display()));
    }
    Ok(0)
}
