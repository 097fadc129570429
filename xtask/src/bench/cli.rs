//! `cargo xtask bench cli` (being written).

pub fn run(_args: &[String]) -> Result<(), String> {
    Err("the cli benchmarks are being written".into())
}
