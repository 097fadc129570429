//! # taskcache: put any CI step behind a cache of its outputs and logs
//!
//! ```text
//! taskcache run [OPTIONS] -- COMMAND [ARGS...]
//! taskcache key [OPTIONS] [--explain] -- COMMAND [ARGS...]
//! taskcache stats [--json] | gc --max-size SIZE | verify
//! ```
//!
//! `run` computes the task digest from the command, the declared variables (`-e`),
//! the contents of the input files (`-i`) and the declared outputs (`-o`). On a hit it
//! restores the outputs, replays stdout and stderr byte for byte and exits with the
//! cached code, without running the command; on a miss it runs the command (stdin
//! inherited, output streamed live and captured) and stores the result.
//!
//! taskcache prints nothing of its own on stdout; on stderr only warnings and errors,
//! unless `-v`. Bad usage exits 2 with a message saying what to do. A cache that fails
//! never fails the step: the command runs uncached and its exit code is kept.
//!
//! Where things are:
//!
//! * [`cli`]: the flags (clap). [`location`]: `--cache`/`--remote` values and
//!   credentials. [`size`]: `10GiB`-style sizes.
//! * [`key`]: what joins the digest. [`explain`]: what went into it, and what changed
//!   since the last entry stored under a task id. [`runner`]: running the command and teeing its
//!   output; [`progress`]: the spinner on a terminal. Declared outputs are collected by
//!   `cache_core::collect_outputs`.
//! * [`run`]: the hit/miss loop and its error policy. [`backend`]: opening the local
//!   cache and a tiered remote. [`admin`]: stats, gc, verify.

mod admin;
mod backend;
mod cli;
mod explain;
mod key;
mod location;
mod logging;
mod progress;
mod run;
mod runner;
mod size;

use clap::Parser;
use std::process::ExitCode;

/// Why taskcache itself (not the command) failed.
#[derive(Debug)]
pub enum Failure {
    /// Bad input: exit code 2.
    Usage(String),
    /// Something else went wrong (e.g. the cache cannot be read for `stats`): exit code 1.
    Fatal(String),
    /// `verify` could not check the cache: exit code 3 (its 1 means "damage removed").
    Unchecked(String),
}

/// For a `run`/`key` usage error on a command line without `--`: the subcommand.
/// Forgetting `--` is the most common mistake, and clap's own message does not say it.
fn missing_dashdash(e: &clap::Error) -> Option<&'static str> {
    use clap::error::ErrorKind;
    if !matches!(
        e.kind(),
        ErrorKind::UnknownArgument | ErrorKind::MissingRequiredArgument
    ) {
        return None;
    }
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.iter().any(|a| a == "--") {
        return None;
    }
    let sub = args
        .iter()
        .find(|a| !a.to_string_lossy().starts_with('-'))?;
    match sub.to_str()? {
        "run" => Some("run"),
        "key" => Some("key"),
        _ => None,
    }
}

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            if let Some(sub) = missing_dashdash(&e) {
                let _ = e.print();
                eprintln!(
                    "\nhint: put `--` before the command: taskcache {sub} [OPTIONS] -- COMMAND [ARGS...]"
                );
                return ExitCode::from(2);
            }
            // Help and version go to stdout with 0; usage errors to stderr with 2.
            e.exit()
        }
    };
    let admin = matches!(
        cli.command,
        cli::Command::Stats(_) | cli::Command::Gc(_) | cli::Command::Verify(_)
    );
    logging::init(cli.verbosity(), admin);
    let result = match &cli.command {
        cli::Command::Run(args) => run::run(&args.task),
        cli::Command::Key(args) => run::key(&args.task, args.explain),
        cli::Command::Stats(args) => admin::stats(args),
        cli::Command::Gc(args) => admin::gc(args),
        cli::Command::Verify(args) => admin::verify(&args.cache),
        cli::Command::Keygen => admin::keygen(),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Failure::Usage(msg)) => {
            eprintln!("taskcache: error: {msg}");
            eprintln!("Run `taskcache --help` (or `taskcache <command> --help`) for usage.");
            ExitCode::from(2)
        }
        Err(Failure::Fatal(msg)) => {
            eprintln!("taskcache: error: {msg}");
            ExitCode::from(1)
        }
        Err(Failure::Unchecked(msg)) => {
            eprintln!("taskcache: error: {msg}");
            ExitCode::from(3)
        }
    }
}
