//! A hit's logs read like the run's: stdout and stderr interleaved as the command wrote
//! them, when both go to one place (a CI log, `2>&1`), byte for byte.

mod support;

use std::fs;
use std::process::Stdio;
use support::Fixture;

/// Runs the step with stdout and stderr both appended to `log` (as `2>&1` does), and
/// returns what that run wrote there.
fn run_into_one_log(f: &Fixture, log: &str, output: &str, script: &str) -> (i32, String) {
    let path = f.root.join(log);
    let file = fs::File::create(&path).unwrap();
    let status = f
        .cmd()
        .args(["run", "-o", output, "--", "sh", "-c", script])
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
    let (code, miss) = run_into_one_log(&f, "miss.log", "out.txt", script);
    assert_eq!(code, 0);
    assert_eq!(miss, "out 1\nerr 1\nout 2\nerr 2\nout 3\n");
    let (code, hit) = run_into_one_log(&f, "hit.log", "out.txt", script);
    assert_eq!(code, 0);
    assert_eq!(f.runs(), 1, "the second run is a hit");
    assert_eq!(hit, miss, "the hit's log reads like the run's");
}

/// A store and a hit that take over a second (when a terminal would show a spinner)
/// write nothing of taskcache's own into a captured log: the command's bytes only.
#[test]
fn long_transfers_leave_no_progress_output_in_a_captured_log() {
    let f = Fixture::new();
    let script = "echo ran >> ../counter; head -c 200000000 /dev/zero > big; echo made";
    for round in 0..2 {
        if round == 1 {
            fs::remove_file(f.ws.join("big")).unwrap();
        }
        let (code, log) = run_into_one_log(&f, &format!("log{round}"), "big", script);
        assert_eq!(code, 0);
        assert_eq!(log, "made\n", "round {round}: only the command's output");
    }
    assert_eq!(f.runs(), 1, "the second round was a hit");
    assert_eq!(fs::metadata(f.ws.join("big")).unwrap().len(), 200_000_000);
}
