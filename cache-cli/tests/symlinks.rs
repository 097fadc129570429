//! `--allow-absolute-symlinks`: a Python-style `.venv` whose links point at absolute
//! paths is cached only when the step opts in, and restored as link text.

#![cfg(unix)]

mod support;

use std::fs;
use support::Fixture;

const VENV: &str = "echo ran >> ../counter; mkdir -p .venv/bin; \
                    ln -sf /usr/bin/env .venv/bin/python; ln -sf python .venv/bin/python3; \
                    echo made";

#[test]
fn a_venv_with_absolute_links_is_cached_only_with_the_opt_in() {
    let f = Fixture::new();
    // Without the opt-in: the step runs and succeeds, nothing is cached, and the warning
    // says how to opt in.
    let o = f.sh(&["-o", ".venv"], VENV);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(
        o.stderr.contains("absolute") && o.stderr.contains("--allow-absolute-symlinks"),
        "{o:?}"
    );
    fs::remove_dir_all(f.ws.join(".venv")).unwrap();
    assert_eq!(f.sh(&["-o", ".venv"], VENV).code, 0);
    assert_eq!(f.runs(), 2, "nothing was cached without the opt-in");

    // With it: a miss, then a hit that restores the links as they were.
    let opts = ["-o", ".venv", "--allow-absolute-symlinks"];
    assert_eq!(f.sh(&opts, VENV).code, 0);
    fs::remove_dir_all(f.ws.join(".venv")).unwrap();
    let hit = f.sh(&opts, VENV);
    assert_eq!(hit.code, 0, "{hit:?}");
    assert_eq!(hit.stdout_str(), "made\n");
    assert_eq!(f.runs(), 3, "the last run was a hit");
    let link = |p: &str| fs::read_link(f.ws.join(p)).unwrap();
    assert_eq!(link(".venv/bin/python").to_str(), Some("/usr/bin/env"));
    assert_eq!(link(".venv/bin/python3").to_str(), Some("python"));
    // The same step without the flag has its own key: it does not get the links.
    fs::remove_dir_all(f.ws.join(".venv")).unwrap();
    assert_eq!(f.sh(&["-o", ".venv"], VENV).code, 0);
    assert_eq!(f.runs(), 4);
}
