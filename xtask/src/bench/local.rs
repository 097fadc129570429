//! `cargo xtask bench local` (being written).

pub fn run(_args: &[String]) -> Result<(), String> {
    Err("the local benchmarks are being written".into())
}
