//! `cargo xtask drill ...`: reliability drills (being written).

pub fn run(_args: &[String]) -> Result<(), String> {
    Err("drills are being written".into())
}
