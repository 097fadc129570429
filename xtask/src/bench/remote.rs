//! `cargo xtask bench remote [--reps N]`: `cache-remote` against BuildGrid's own
//! client (`bgd cas upload-dir` / `download-dir`) on the same server, in the same run.
//!
//! The server is a BuildGrid of the bench's own (`target/peers/buildgrid-bench`), with
//! gRPC's receive limit raised to 16 MiB: `bgd` packs batches by data alone and would
//! overrun 4 MiB. Each of our runs is a child process (this program, release build,
//! `bench remote --child ...`) reporting its time, peak RSS, calls and blob bytes sent.
//! Every run stores fresh content (a cold server for both sides).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const FILES: usize = 1000;
const BIG: usize = 64 << 20;

use super::{Report, median};

pub fn run(args: &[String]) -> Result<(), String> {
    if args.first().map(String::as_str) == Some("--child") {
        return child(&args[1..]);
    }
    let mut reps = 3usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--reps" => reps = super::reps(it.next())?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    crate::run(crate::cargo().args(["build", "--release", "--quiet", "-p", "xtask"]))?;
    let target = crate::target_dir();
    let venv = crate::peers::buildgrid::install(&crate::peers::root().join("buildgrid"))?;
    let server_dir = crate::peers::root().join("buildgrid-bench");
    std::fs::create_dir_all(&server_dir).map_err(|e| e.to_string())?;
    let vars = crate::peers::buildgrid::start(
        &server_dir,
        &venv,
        &crate::peers::buildgrid::Options {
            max_recv: Some(16 << 20),
            ..Default::default()
        },
    )?;
    let url = vars
        .iter()
        .find(|(k, _)| *k == "TASKCACHE_TEST_REAPI")
        .map(|(_, v)| v.clone())
        .ok_or("no server URL")?;
    let b = Bench {
        exe: target.join("release/xtask"),
        bgd: venv.join("bin/bgd"),
        dir: target.join("bench-remote"),
        url,
        reps,
    };
    let r = b.all();
    let stopped = crate::peers::buildgrid::down(&server_dir);
    r?;
    stopped
}

struct Bench {
    exe: PathBuf,
    bgd: PathBuf,
    dir: PathBuf,
    url: String,
    reps: usize,
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 bench paths")
}

/// Writes `FILES` files of `size` bytes (and one of `BIG` bytes if `big`) under
/// `dir/tree`, distinct for each `seed`.
fn make_tree(dir: &Path, seed: u64, size: usize, big: bool) -> Result<(), String> {
    let tree = dir.join("tree");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(&tree).map_err(|e| e.to_string())?;
    let fill = |n: u64, len: usize| -> Vec<u8> {
        let mut h = blake3::Hasher::new();
        h.update(&seed.to_le_bytes());
        h.update(&n.to_le_bytes());
        let mut v = vec![0u8; len];
        h.finalize_xof().fill(&mut v);
        v
    };
    for i in 0..FILES {
        std::fs::write(tree.join(format!("f{i:04}")), fill(i as u64, size))
            .map_err(|e| e.to_string())?;
    }
    if big {
        std::fs::write(tree.join("big.bin"), fill(u64::MAX, BIG)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

impl Bench {
    fn child(&self, args: &[&str]) -> Result<Report, String> {
        super::child_report(&self.exe, "remote", args)
    }

    fn bgd(&self, args: &[&str]) -> Result<(f64, String), String> {
        let remote = self.url.replace("grpc://", "http://");
        let t = Instant::now();
        let out = Command::new(&self.bgd)
            .args([args[0], "--remote", &remote])
            .args(&args[1..])
            .output()
            .map_err(|e| format!("run bgd: {e}"))?;
        let secs = t.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || text.contains("Error") {
            return Err(format!("bgd {args:?} failed: {text}"));
        }
        Ok((secs, text))
    }

    /// Ours: store a fresh tree, store it again (warm), restore it into an empty dir.
    fn ours(&self, seed: u64, size: usize, big: bool) -> Result<[Report; 3], String> {
        let ws = self.dir.join(format!("ours-{seed}"));
        make_tree(&ws, seed, size, big)?;
        let key = format!("{seed}-{}", std::process::id());
        let store = self.child(&["store", &self.url, s(&ws), &key])?;
        // The same result stored again (a rerun): every blob and the action are there.
        let warm = self.child(&["store", &self.url, s(&ws), &key])?;
        let out = self.dir.join(format!("ours-out-{seed}"));
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
        let restore = self.child(&["restore", &self.url, s(&out), &key])?;
        let _ = std::fs::remove_dir_all(&ws);
        let _ = std::fs::remove_dir_all(&out);
        Ok([store, warm, restore])
    }

    /// BuildGrid's client moving a fresh tree of the same shape.
    fn reference(&self, seed: u64, size: usize) -> Result<(f64, f64), String> {
        let ws = self.dir.join(format!("bgd-{seed}"));
        make_tree(&ws, seed, size, true)?;
        let (up, text) = self.bgd(&["cas", "upload-dir", s(&ws.join("tree"))])?;
        let tree_path = format!("path=[{}]", s(&ws.join("tree")));
        let digest = text
            .lines()
            .filter(|l| l.contains(&tree_path))
            .find_map(|l| l.split("digest=[").nth(1))
            .and_then(|d| d.split(']').next())
            .ok_or_else(|| format!("no root digest in bgd's output: {text}"))?
            .to_owned();
        let out = self.dir.join(format!("bgd-out-{seed}"));
        let _ = std::fs::remove_dir_all(&out);
        let (down, _) = self.bgd(&["cas", "download-dir", &digest, s(&out)])?;
        let _ = std::fs::remove_dir_all(&ws);
        let _ = std::fs::remove_dir_all(&out);
        Ok((up, down))
    }

    fn all(&self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
        let mut v: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for rep in 0..self.reps {
            let seed = 1000 * (rep as u64 + 1) + u64::from(std::process::id() % 1000);
            // Alternate who goes first, so load on the machine falls on both alike.
            let mut order = [true, false];
            if rep % 2 == 1 {
                order.reverse();
            }
            for ours_turn in order {
                if ours_turn {
                    let [store, warm, restore] = self.ours(seed, 32 << 10, true)?;
                    v.entry("store").or_default().push(store["secs"]);
                    v.entry("store_rss").or_default().push(store["rss_kib"]);
                    v.entry("warm").or_default().push(warm["secs"]);
                    v.entry("warm_bytes").or_default().push(warm["bytes"]);
                    v.entry("restore").or_default().push(restore["secs"]);
                    v.entry("restore_rss").or_default().push(restore["rss_kib"]);
                } else {
                    let (up, down) = self.reference(seed + 7, 32 << 10)?;
                    v.entry("bgd_up").or_default().push(up);
                    v.entry("bgd_down").or_default().push(down);
                }
            }
            let [store, _, restore] = self.ours(seed + 3, 16 << 10, false)?;
            v.entry("small_store").or_default().push(store["secs"]);
            v.entry("small_restore").or_default().push(restore["secs"]);
            v.entry("small_restore_rss")
                .or_default()
                .push(restore["rss_kib"]);
            let hit = self.child(&["hit", &self.url, s(&self.dir), &format!("hit-{seed}")])?;
            v.entry("hit_calls").or_default().push(hit["calls"]);
        }
        self.print(&v);
        Ok(())
    }

    fn print(&self, v: &BTreeMap<&str, Vec<f64>>) {
        let m = |k: &str| median(v.get(k).cloned().unwrap_or_default());
        let mut t = String::new();
        let _ = writeln!(
            t,
            "\n{} runs, medians. Server: BuildGrid on 127.0.0.1 (16 MiB receive limit).\n",
            self.reps
        );
        let _ = writeln!(
            t,
            "| what | taskcache (cache-remote) | bgd | speed-up | peak RSS (ours) |"
        );
        let _ = writeln!(t, "|---|---|---|---|---|");
        let _ = writeln!(
            t,
            "| store 1,000 x 32 KiB + 64 MiB | {:.2} s | {:.2} s | {:.2}x | {:.1} MiB |",
            m("store"),
            m("bgd_up"),
            m("bgd_up") / m("store"),
            m("store_rss") / 1024.0
        );
        let _ = writeln!(
            t,
            "| restore 1,000 x 32 KiB + 64 MiB | {:.2} s | {:.2} s | {:.2}x | {:.1} MiB |",
            m("restore"),
            m("bgd_down"),
            m("bgd_down") / m("restore"),
            m("restore_rss") / 1024.0
        );
        let _ = writeln!(
            t,
            "| warm store (the same result again) | {:.2} s, {} blob bytes sent | | | |",
            m("warm"),
            m("warm_bytes")
        );
        let _ = writeln!(
            t,
            "| store 1,000 x 16 KiB | {:.2} s | (bgd overruns 4 MiB) | | |",
            m("small_store")
        );
        let _ = writeln!(
            t,
            "| restore 1,000 x 16 KiB | {:.2} s | | | {:.1} MiB |",
            m("small_restore"),
            m("small_restore_rss") / 1024.0
        );
        let _ = writeln!(
            t,
            "| calls of a hit (10 x 1 KiB, no directory) | {} | | | |",
            m("hit_calls")
        );
        println!("{t}");
    }
}

// ---- the child side ----

fn peak_rss_kib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(f64::NAN)
}

fn open(url: &str) -> Result<cache_core::Cache<cache_remote::RemoteStorage>, String> {
    let config = cache_remote::RemoteConfig::from_url(url)?;
    let storage = cache_remote::RemoteStorage::open(config).map_err(|e| e.to_string())?;
    Ok(cache_core::Cache::new(storage, |job| {
        tokio::task::spawn_blocking(job);
    }))
}

fn task() -> cache_core::Task {
    cache_core::Task::new("bench-remote", ["bench"])
}

fn key(name: &str) -> String {
    cache_core::DigestAlgorithm::Blake3
        .digest(name.as_bytes())
        .to_string()
}

fn child(args: &[String]) -> Result<(), String> {
    use cache_core::{CacheBackend, CacheEntry, CacheOutput, CachePolicy};
    let [mode, url, dir, name] = args else {
        return Err("child: MODE URL DIR KEY".into());
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let dir = PathBuf::from(dir);
    rt.block_on(async {
        let cache = open(url)?;
        cache
            .storage()
            .capabilities()
            .await
            .map_err(|e| e.to_string())?;
        let t = Instant::now();
        match mode.as_str() {
            "store" => {
                let mut names: Vec<String> = std::fs::read_dir(dir.join("tree"))
                    .map_err(|e| e.to_string())?
                    .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect();
                names.sort();
                let mut outputs = vec![CacheOutput::directory("tree")];
                outputs.extend(names.iter().map(|n| {
                    CacheOutput::file(format!("tree/{n}"), dir.join("tree").join(n), false)
                }));
                let entry = CacheEntry {
                    outputs,
                    ..CacheEntry::default()
                };
                cache
                    .store(&task(), &key(name), &entry, CachePolicy::Normal)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            "restore" => {
                cache
                    .restore_outputs(&task(), &key(name), &dir)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            "hit" => {
                let outputs = (0..10)
                    .map(|i| {
                        CacheOutput::bytes(
                            format!("h{i}"),
                            format!("{name} {i}").repeat(100),
                            false,
                        )
                    })
                    .collect();
                let entry = CacheEntry {
                    outputs,
                    ..CacheEntry::default()
                };
                cache
                    .store(&task(), &key(name), &entry, CachePolicy::Normal)
                    .await
                    .map_err(|e| e.to_string())?;
                let before = cache.storage().stats().calls();
                let ws = dir.join(format!("hit-{name}"));
                std::fs::create_dir_all(&ws).map_err(|e| e.to_string())?;
                let hit = cache
                    .lookup(
                        &task(),
                        &cache_core::Digest::parse(&key(name)).map_err(|e| e.to_string())?,
                        CachePolicy::Normal,
                    )
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("the hit missed")?;
                hit.restore(&ws).await.map_err(|e| e.to_string())?;
                let calls = cache.storage().stats().calls() - before;
                let _ = std::fs::remove_dir_all(&ws);
                println!("RESULT secs=0 calls={calls} rss_kib={}", peak_rss_kib());
                return Ok(());
            }
            other => return Err(format!("unknown child mode {other:?}")),
        }
        let secs = t.elapsed().as_secs_f64();
        let stats = cache.storage().stats();
        println!(
            "RESULT secs={secs} bytes={} calls={} rss_kib={}",
            stats.blob_bytes_sent,
            stats.calls(),
            peak_rss_kib()
        );
        Ok(())
    })
}
