//! `cargo xtask bench [local|cli|all]`.
//!
//! Every figure is printed as a ratio against a reference measured in the same run,
//! with peak RSS, and the medians go in `BENCHMARKS.md` by hand with the machine.

pub fn run(args: &[String]) -> Result<(), String> {
    match args.first().map_or("all", String::as_str) {
        other => Err(format!("unknown benchmark {other:?}: use local, cli or all")),
    }
}
