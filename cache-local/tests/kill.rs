//! A child process stores entries in a loop and is SIGKILLed at random moments; every
//! entry left on disk must read as a hit and restore whole and correct.

mod support;

use std::time::Duration;
use support::drill;

#[test]
fn kill_during_store() {
    // Re-executed as the storing child: never returns.
    drill::child_if_requested();

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let exe = std::env::current_exe().unwrap();
    let mut rng = drill::Rng::from_env_or_time("kill_during_store");
    let mut killed_running = 0;
    let mut entries = 0;
    for _ in 0..6 {
        let mut child = std::process::Command::new(&exe);
        child.args(["--exact", "kill_during_store", "--nocapture"]);
        let start = rng.range(0, 40);
        // Long enough that the first kill finds entries published.
        let delay = Duration::from_millis(rng.range(150, 600));
        let t = drill::trial(child, &dir, start, delay).unwrap_or_else(|e| panic!("{e}"));
        killed_running += u32::from(t.killed_running);
        entries = t.report.entries;
    }
    assert!(
        killed_running > 0,
        "the child was never killed while running"
    );
    // The directory accumulates over the trials: entries must have been checked, or
    // the test proved nothing.
    assert!(
        entries > 0,
        "no entry was on disk to check after six kills; the drill proved nothing"
    );
    eprintln!("kill_during_store: {entries} entries checked after the last kill");
}
