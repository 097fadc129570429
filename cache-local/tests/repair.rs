//! A used cache whose `LAYOUT` was lost or damaged is repaired by the next writer or
//! `verify`, and keeps serving what it holds; a newer version's `LAYOUT`, and any
//! directory that is not unmistakably a cache, are still refused. (Found by
//! `cargo xtask drill corrupt`: one flipped bit in `LAYOUT` made every later run
//! uncached for good.)

use cache_core::{CacheBackend, CacheEntry, CacheOutput, CachePolicy, DigestAlgorithm, Task};
use cache_local::{LAYOUT_FILE, LocalOptions, LocalStorage, check_cache_dir};
use std::path::Path;

const GOOD: &[u8] = b"taskcache-local-layout 1\n";

fn task() -> Task {
    Task::new("t", ["true"])
}

fn key(n: u64) -> String {
    DigestAlgorithm::Blake3
        .digest(format!("key {n}").as_bytes())
        .to_string()
}

/// A cache holding two entries (so it has `blobs/blake3`, `entries/blake3`, `stats/`).
fn used_cache(rt: &tokio::runtime::Runtime, dir: &Path) {
    let cache = cache_local::open(dir, LocalOptions::default()).unwrap();
    rt.block_on(async {
        for n in 0..2 {
            let entry = CacheEntry {
                stdout: Some(b"log".to_vec()),
                outputs: vec![CacheOutput::bytes(
                    "out",
                    vec![u8::try_from(n).unwrap(); 100],
                    false,
                )],
                ..CacheEntry::default()
            };
            cache
                .store(&task(), &key(n), &entry, CachePolicy::Normal)
                .await
                .unwrap();
        }
    });
}

fn serves_both(rt: &tokio::runtime::Runtime, dir: &Path) -> bool {
    let cache = cache_local::open(dir, LocalOptions::default()).unwrap();
    rt.block_on(async {
        for n in 0..2 {
            let c = cache
                .check(&task(), &key(n), CachePolicy::Normal)
                .await
                .unwrap();
            if !c.hit {
                return false;
            }
        }
        true
    })
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Every damage of `LAYOUT` the corruption drill makes, and more: each bit flipped,
/// each truncation, zeroed, emptied, deleted. Each is repaired (the next open writes
/// `LAYOUT` again and the entries are still served), except a flip that makes it read
/// as a newer layout version, which is refused naming the version, untouched.
#[test]
fn every_damage_to_layout_is_repaired_or_refused_as_a_newer_version() {
    let rt = rt();
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    used_cache(&rt, &pristine);
    assert_eq!(std::fs::read(pristine.join(LAYOUT_FILE)).unwrap(), GOOD);

    let mut damages: Vec<(String, Option<Vec<u8>>)> = Vec::new();
    for byte in 0..GOOD.len() {
        for bit in 0..8 {
            let mut b = GOOD.to_vec();
            b[byte] ^= 1 << bit;
            damages.push((format!("bit {bit} of byte {byte} flipped"), Some(b)));
        }
    }
    for len in 0..GOOD.len() - 1 {
        damages.push((format!("truncated to {len}"), Some(GOOD[..len].to_vec())));
    }
    damages.push(("zeroed".into(), Some(vec![0; GOOD.len()])));
    damages.push(("deleted".into(), None));

    let (mut repaired, mut newer) = (0, 0);
    for (n, (what, bytes)) in damages.iter().enumerate() {
        let dir = tmp.path().join(format!("c{n}"));
        copy(&pristine, &dir);
        let layout = dir.join(LAYOUT_FILE);
        match bytes {
            Some(b) => std::fs::write(&layout, b).unwrap(),
            None => std::fs::remove_file(&layout).unwrap(),
        }
        let newer_version = bytes.as_deref().and_then(|b| {
            let s = std::str::from_utf8(b).ok()?;
            let v: u32 = s
                .trim()
                .strip_prefix("taskcache-local-layout")?
                .trim()
                .parse()
                .ok()?;
            (v > 1).then_some(v)
        });
        if let Some(v) = newer_version {
            let msg = LocalStorage::open(&dir, LocalOptions::default())
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains(&format!("layout version {v}")),
                "{what}: {msg}"
            );
            assert_eq!(&std::fs::read(&layout).unwrap(), bytes.as_ref().unwrap());
            newer += 1;
        } else {
            // Housekeeping (verify, gc, stats) may open it too.
            check_cache_dir(&dir, false).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(serves_both(&rt, &dir), "{what}: an entry was lost");
            assert_eq!(std::fs::read(&layout).unwrap(), GOOD, "{what}");
            repaired += 1;
        }
    }
    // 200 flips, 24 truncations, zeroed, deleted; the digit 1 flips to 3, 5 and 9.
    assert_eq!((repaired, newer), (223, 3));
}

/// Only a directory that is unmistakably a used cache is repaired: with anything else
/// beside the layout, or without a store's algorithm directories, a damaged or missing
/// `LAYOUT` is refused and nothing is written.
#[test]
fn a_directory_that_is_not_unmistakably_a_cache_is_not_repaired() {
    type Change = fn(&Path);
    let cases: [(&str, Change); 5] = [
        ("a file of someone else's", |d| {
            std::fs::write(d.join("notes.txt"), b"x").unwrap();
        }),
        ("a file in blobs/", |d| {
            std::fs::write(d.join("blobs/x"), b"x").unwrap();
        }),
        ("a foreign directory in entries/", |d| {
            std::fs::create_dir(d.join("entries/md5")).unwrap();
        }),
        ("no algorithm directory (never stored into)", |d| {
            std::fs::remove_dir_all(d.join("blobs/blake3")).unwrap();
            std::fs::remove_dir_all(d.join("entries/blake3")).unwrap();
            std::fs::write(d.join("tmp/report.pdf"), b"x").unwrap();
        }),
        ("blobs/ is a link", |d| {
            std::fs::rename(d.join("blobs"), d.join("../elsewhere")).unwrap();
            std::os::unix::fs::symlink(d.join("../elsewhere"), d.join("blobs")).unwrap();
        }),
    ];
    let rt = rt();
    for (what, change) in cases {
        for layout in [Some(&b"garbage"[..]), None] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("cache");
            used_cache(&rt, &dir);
            change(&dir);
            let path = dir.join(LAYOUT_FILE);
            match layout {
                Some(b) => std::fs::write(&path, b).unwrap(),
                None => std::fs::remove_file(&path).unwrap(),
            }
            assert!(
                LocalStorage::open(&dir, LocalOptions::default()).is_err(),
                "{what}, LAYOUT {layout:?}: taken over"
            );
            assert_eq!(std::fs::read(&path).ok().as_deref(), layout, "{what}");
        }
    }
}

fn copy(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}
