//! Creating a cache: a first writer killed before `LAYOUT` existed, and writers that
//! start on one new directory at once, leave a directory every later writer can use
//! (found by `cargo xtask drill crash`: after such a kill every run was refused).

use cache_local::{LocalOptions, check_cache_dir};
use std::path::Path;

/// What `Layout::open` has created when it is killed just before writing `LAYOUT`.
fn skeleton(dir: &Path) {
    for d in ["blobs", "entries", "tmp", "stats"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    // The layout file's temporary, written but not yet linked into place.
    std::fs::write(dir.join("tmp/wA1b2C3d4E5"), b"taskcache-local-layout 1\n").unwrap();
}

#[test]
fn a_layout_left_unfinished_by_a_killed_writer_is_finished_by_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    skeleton(&dir);
    check_cache_dir(&dir, true).expect("an unfinished layout is ours to finish");
    cache_local::open(&dir, LocalOptions::default()).expect("open");
    assert!(dir.join("LAYOUT").is_file());
    // Only a cache with LAYOUT is used for housekeeping.
    let partial = tmp.path().join("partial");
    std::fs::create_dir_all(partial.join("blobs")).unwrap();
    assert!(check_cache_dir(&partial, false).is_err());
    check_cache_dir(&partial, true).expect("some of the layout directories");
}

#[test]
fn anything_else_in_a_directory_without_layout_is_still_refused() {
    type Add = fn(&Path) -> std::io::Result<()>;
    let cases: [(&str, Add); 5] = [
        ("a file of someone else's", |d| {
            std::fs::write(d.join("notes.txt"), b"x")
        }),
        ("a file in blobs/", |d| {
            std::fs::write(d.join("blobs/x"), b"x")
        }),
        ("a file in entries/", |d| {
            std::fs::write(d.join("entries/x"), b"x")
        }),
        ("a foreign name in tmp/", |d| {
            std::fs::write(d.join("tmp/report.pdf"), b"x")
        }),
        ("a directory in tmp/", |d| {
            std::fs::create_dir(d.join("tmp/wA1b2C3d4E6"))
        }),
    ];
    for (what, add) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        skeleton(&dir);
        add(&dir).unwrap();
        assert!(check_cache_dir(&dir, true).is_err(), "{what}: taken over");
        assert!(
            cache_local::open(&dir, LocalOptions::default()).is_err(),
            "{what}: opened"
        );
        assert!(!dir.join("LAYOUT").exists(), "{what}: LAYOUT written");
    }
    // A link in place of a layout directory is not ours either.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(tmp.path(), dir.join("blobs")).unwrap();
    assert!(check_cache_dir(&dir, true).is_err(), "a link: taken over");
}

#[test]
fn writers_starting_on_one_new_directory_at_once_all_open_it() {
    for round in 0..20 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        let barrier = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        cache_local::open(&dir, LocalOptions::default()).map(drop)
                    })
                })
                .collect();
            for h in handles {
                h.join()
                    .unwrap()
                    .unwrap_or_else(|e| panic!("round {round}: a writer was refused: {e}"));
            }
        });
        assert!(dir.join("LAYOUT").is_file());
    }
}
