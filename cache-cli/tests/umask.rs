//! A hit is no wider than a run: restored files get the cached executable bit narrowed
//! by the process umask, so a step that makes private files under `umask 077` gets
//! private files on a hit too, never 0644 or 0755.

#![cfg(unix)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use support::{Fixture, exec};

const STEP: &str = "echo ran >> ../counter; mkdir -p out; echo secret > out/key; \
                    printf '#!/bin/sh\\n' > out/tool; chmod u+x out/tool";

/// `taskcache run -o out -- sh -c STEP` under `umask 077`.
fn run_private(f: &Fixture) -> support::Out {
    let mut c = Command::new("sh");
    c.current_dir(&f.ws)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", f.root.join("home"))
        .env("TASKCACHE_CACHE", &f.cache)
        .arg("-c")
        .arg("umask 077 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_taskcache"))
        .args(["run", "-o", "out", "--", "sh", "-c", STEP]);
    exec(c)
}

fn mode(f: &Fixture, rel: &str) -> u32 {
    std::fs::metadata(f.ws.join(rel))
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn a_hit_under_umask_077_restores_private_files() {
    let f = Fixture::new();
    let o = run_private(&f);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!((mode(&f, "out/key"), mode(&f, "out/tool")), (0o600, 0o700));

    std::fs::remove_dir_all(f.ws.join("out")).unwrap();
    let o = run_private(&f);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(f.runs(), 1, "the second run is a hit: {o:?}");
    assert_eq!(
        (mode(&f, "out"), mode(&f, "out/key"), mode(&f, "out/tool")),
        (0o700, 0o600, 0o700),
        "a hit made the outputs readable by others"
    );

    // Outputs already in place with the narrowed modes are kept as they are.
    let o = run_private(&f);
    assert_eq!((o.code, f.runs()), (0, 1), "{o:?}");
    assert_eq!((mode(&f, "out/key"), mode(&f, "out/tool")), (0o600, 0o700));
}
