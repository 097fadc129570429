//! `cargo xtask bench [local|cli|s3|all]` (`all` is local and cli; s3 needs its server,
//! started by the bench itself).
//!
//! Every figure is printed as a ratio against a reference measured in the same run,
//! with peak RSS, and the medians go in `BENCHMARKS.md` with the machine they ran on.

mod cli;
mod local;
mod local_child;
mod s3;

pub fn run(args: &[String]) -> Result<(), String> {
    match args.first().map_or("all", String::as_str) {
        "local" => local::run(&args[1..]),
        "cli" => cli::run(&args[1..]),
        "s3" => s3::run(&args[1..]),
        "all" => {
            local::run(&[])?;
            cli::run(&[])
        }
        other => Err(format!(
            "unknown benchmark {other:?}: use local, cli, s3 or all"
        )),
    }
}
