//! End-to-end tests with a workspace that holds what a pull request may put there:
//! symlinks whose targets change, FIFOs, sockets, devices.

#![cfg(unix)]

mod support;

use std::fs;
use std::os::unix::fs::symlink;
use std::time::Duration;
use support::{COUNTING, Fixture, exec_within};

const LIMIT: Duration = Duration::from_secs(30);

fn sh(f: &Fixture, opts: &[&str]) -> support::Out {
    let mut c = f.cmd();
    c.arg("run")
        .args(opts)
        .args(["-o", "out.txt", "--", "sh", "-c", COUNTING]);
    exec_within(c, LIMIT)
}

/// `-i src` with `src` a symlink to a directory, `-i config.json` a symlink to a file:
/// changing the real file must run the command again, not restore stale outputs.
#[test]
fn a_changed_target_of_a_symlinked_input_misses() {
    let f = Fixture::new();
    f.write("real/a.txt", "v1");
    f.write("real/config.json", "{}");
    symlink("real", f.ws.join("src")).unwrap();
    symlink("real/config.json", f.ws.join("config.json")).unwrap();
    let opts = ["-i", "src", "-i", "config.json"];
    assert_eq!(sh(&f, &opts).code, 0);
    assert_eq!(sh(&f, &opts).code, 0);
    assert_eq!(f.runs(), 1, "the second run did not hit");

    f.write("real/a.txt", "v2");
    let o = sh(&f, &opts);
    assert_eq!(
        f.runs(),
        2,
        "a file changed behind `src ->`, yet it hit: {o:?}"
    );
    f.write("real/config.json", "{\"debug\": true}");
    let o = sh(&f, &opts);
    assert_eq!(
        f.runs(),
        3,
        "config.json's target changed, yet it hit: {o:?}"
    );

    // The same through globs.
    let globs = ["-i", "src/*.txt", "-i", "*.json"];
    assert_eq!(sh(&f, &globs).code, 0);
    f.write("real/a.txt", "v3");
    let o = sh(&f, &globs);
    assert_eq!(
        f.runs(),
        5,
        "a glob through `src ->` missed the change: {o:?}"
    );
}

/// A FIFO (a dev tool's pipe) and a socket (a dev server's) under an input pattern:
/// the run neither hangs nor fails; the command runs, a warning names them, and adding
/// or removing one changes the key.
#[test]
fn fifos_sockets_and_devices_under_an_input_pattern_are_keyed_not_opened() {
    let f = Fixture::new();
    f.write("src/main.c", "int main;");
    let fifo = std::process::Command::new("mkfifo")
        .arg(f.ws.join("src/pipe"))
        .status()
        .unwrap();
    assert!(fifo.success());
    let socket = std::os::unix::net::UnixListener::bind(f.ws.join("src/dev.sock")).unwrap();
    symlink("/dev/zero", f.ws.join("src/zero")).unwrap();

    let o = sh(&f, &["-i", "src"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(f.runs(), 1, "{o:?}");
    for name in ["src/pipe", "src/dev.sock", "src/zero"] {
        assert!(o.stderr.contains(name), "no warning about {name}: {o:?}");
    }
    assert_eq!(sh(&f, &["-i", "src"]).code, 0);
    assert_eq!(f.runs(), 1, "the second run did not hit");

    drop(socket);
    fs::remove_file(f.ws.join("src/dev.sock")).unwrap();
    let o = sh(&f, &["-i", "src"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(
        f.runs(),
        2,
        "removing the socket did not change the key: {o:?}"
    );
}
