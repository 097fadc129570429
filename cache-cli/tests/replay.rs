//! A hit's logs read like the run's: stdout and stderr interleaved as the command wrote
//! them, when both go to one place (a CI log, `2>&1`), byte for byte.

mod support;

use std::fs;
use std::process::Stdio;
use support::Fixture;

/// Runs the step with stdout and stderr both appended to `log` (as `2>&1` does), and
/// returns what that run wrote there.
fn run_into_one_log(f: &Fixture, log: &str, script: &str) -> (i32, String) {
    let path = f.root.join(log);
    let file = fs::File::create(&path).unwrap();
    let status = f
        .cmd()
        .args(["run", "-o", "out.txt", "--", "sh", "-c", script])
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .status()
        .unwrap();
    (
        status.code().unwrap_or(-1),
        fs::read_to_string(&path).unwrap(),
    )
}

#[test]
fn a_hit_replays_stdout_and_stderr_interleaved_as_written() {
    let f = Fixture::new();
    // Pauses between writes, so the run's own log is interleaved for certain.
    let script = "touch out.txt; echo ran >> ../counter; \
                  echo 'out 1'; sleep 0.1; echo 'err 1' >&2; sleep 0.1; \
                  echo 'out 2'; sleep 0.1; echo 'err 2' >&2; sleep 0.1; echo 'out 3'";
    let (code, miss) = run_into_one_log(&f, "miss.log", script);
    assert_eq!(code, 0);
    assert_eq!(miss, "out 1\nerr 1\nout 2\nerr 2\nout 3\n");
    let (code, hit) = run_into_one_log(&f, "hit.log", script);
    assert_eq!(code, 0);
    assert_eq!(f.runs(), 1, "the second run is a hit");
    assert_eq!(hit, miss, "the hit's log reads like the run's");
}
