//! After a hit, tools that compare modification times see an up-to-date tree: a real
//! `cargo build --offline` is a no-op, a real `make` rebuilds nothing, and npm's hidden
//! lockfile is not older than any package directory. (Each failed while a restore left
//! every file with the time of its own write.)

#![cfg(unix)]

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;
use support::{Fixture, exec};

/// What cargo needs to find its toolchain under the fixture's hermetic environment.
fn with_toolchain(c: &mut Command) -> &mut Command {
    let home = std::env::var_os("HOME").unwrap_or_default();
    let under_home = |d: &str| Path::new(&home).join(d).into_os_string();
    c.env(
        "CARGO_HOME",
        std::env::var_os("CARGO_HOME").unwrap_or_else(|| under_home(".cargo")),
    )
    .env(
        "RUSTUP_HOME",
        std::env::var_os("RUSTUP_HOME").unwrap_or_else(|| under_home(".rustup")),
    );
    if let Some(t) = std::env::var_os("RUSTUP_TOOLCHAIN") {
        c.env("RUSTUP_TOOLCHAIN", t);
    }
    c
}

/// Runs a step through taskcache twice around deleting `output`: a miss, then a hit.
fn miss_then_hit(f: &Fixture, opts: &[&str], output: &str, command: &[&str]) {
    let run = |verbose: bool| {
        let mut c = f.cmd();
        with_toolchain(&mut c).arg("run").args(opts);
        if verbose {
            c.arg("-v");
        }
        c.arg("--").args(command);
        exec(c)
    };
    let miss = run(false);
    assert_eq!(miss.code, 0, "{miss:?}");
    fs::remove_dir_all(f.ws.join(output)).unwrap();
    let hit = run(true);
    assert_eq!(hit.code, 0, "{hit:?}");
    assert!(
        hit.stderr.contains("hit "),
        "the second run is a hit: {hit:?}"
    );
}

#[test]
fn cargo_sees_a_restored_target_as_fresh() {
    let f = Fixture::new();
    // A chain of crates, each depending on the next one, so that a dependency's files
    // sort after its dependents' and a restore in path order writes them later: without
    // one time for the whole tree, cargo sees every dependency as rebuilt after the
    // crates that use it.
    let crates: Vec<String> = (0..12).map(|i| format!("k{i:02}")).collect();
    let members: Vec<String> = crates.iter().map(|c| format!("\"{c}\"")).collect();
    f.write(
        "Cargo.toml",
        &format!(
            "[workspace]\nmembers = [{}]\nresolver = \"2\"\n",
            members.join(", ")
        ),
    );
    for (i, name) in crates.iter().enumerate() {
        let next = Some(i + 1).filter(|n| *n < crates.len());
        let (deps, body) = match next {
            None => (String::new(), "pub fn v() -> u32 { 1 }\n".to_owned()),
            Some(p) => (
                format!("{0} = {{ path = \"../{0}\" }}\n", crates[p]),
                format!("pub fn v() -> u32 {{ {}::v() + 1 }}\n", crates[p]),
            ),
        };
        f.write(
            &format!("{name}/Cargo.toml"),
            &format!(
                "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n{deps}"
            ),
        );
        f.write(&format!("{name}/src/lib.rs"), &body);
    }
    miss_then_hit(
        &f,
        &["-i", "Cargo.toml", "-i", "k*/**", "-o", "target"],
        "target",
        &["cargo", "build", "--offline", "--quiet"],
    );
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(&f.ws)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", f.root.join("home"));
    let out = with_toolchain(&mut cargo)
        .args(["build", "--offline", "-v"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    for krate in &crates {
        assert!(
            log.contains(&format!("Fresh {krate} ")),
            "{krate} is not Fresh:\n{log}"
        );
    }
    assert!(
        !log.contains("Compiling") && !log.contains("Dirty"),
        "cargo rebuilt after a hit:\n{log}"
    );
}

#[test]
fn make_rebuilds_nothing_after_a_hit() {
    let f = Fixture::new();
    // `out/a.txt` is made from `out/z.txt`: restored in path order, the prerequisite
    // would be written after its target and look newer.
    f.write(
        "Makefile",
        "out/a.txt: out/z.txt\n\tcat out/z.txt out/z.txt > out/a.txt\n\n\
         out/z.txt: in.txt\n\tmkdir -p out && cp in.txt out/z.txt\n",
    );
    f.write("in.txt", "input\n");
    miss_then_hit(
        &f,
        &["-i", "Makefile", "-i", "in.txt", "-o", "out"],
        "out",
        &["make"],
    );
    let q = Command::new("make")
        .arg("-q")
        .current_dir(&f.ws)
        .status()
        .unwrap();
    assert!(q.success(), "make would rebuild after a hit (make -q: {q})");
}

#[test]
fn npms_hidden_lockfile_is_not_older_than_any_package() {
    let f = Fixture::new();
    // What `npm ci` leaves: packages, then the hidden lockfile, which npm uses only if
    // no package directory is newer than it.
    // Enough files that a restore spans several ticks of the filesystem's clock.
    let script = "mkdir -p node_modules/zlib/lib node_modules/ansi && \
                  for i in $(seq 1 2000); do echo $i > node_modules/zlib/lib/f$i.js; done && \
                  echo a > node_modules/ansi/index.js && \
                  sleep 0.05 && echo '{}' > node_modules/.package-lock.json";
    miss_then_hit(
        &f,
        &["-o", "node_modules"],
        "node_modules",
        &["sh", "-c", script],
    );
    let nm = f.ws.join("node_modules");
    let lock = fs::metadata(nm.join(".package-lock.json"))
        .unwrap()
        .modified()
        .unwrap();
    for dir in ["ansi", "zlib", "zlib/lib", "."] {
        let t = fs::metadata(nm.join(dir)).unwrap().modified().unwrap();
        assert!(
            t <= lock,
            "node_modules/{dir} is newer than the hidden lockfile"
        );
    }
}
