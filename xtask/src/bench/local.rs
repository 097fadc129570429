//! `cargo xtask bench local [--reps N] [--dir PATH]`: the cache-local benchmarks.
//!
//! Every scenario runs in a child process (this program, built in release mode, with
//! `bench local --child ...`), which reports its time and its own peak RSS (`VmHWM`).
//! Each figure is a ratio against a reference measured in the same run on the same
//! filesystem; runs are repeated and medians printed. Markdown tables for
//! `BENCHMARKS.md` are printed at the end.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const SMALL_FILES: usize = 10_000;
const SMALL_SIZE: usize = 4096;

pub fn run(args: &[String]) -> Result<(), String> {
    if args.first().map(String::as_str) == Some("--child") {
        return super::local_child::child(&args[1..]);
    }
    let mut reps = 5usize;
    let mut dir = crate::workspace_root().join("target/bench-local");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--reps" => reps = super::reps(it.next())?,
            "--dir" => dir = PathBuf::from(it.next().ok_or("--dir needs a path")?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    crate::run(crate::cargo().args(["build", "--release", "--quiet", "-p", "xtask"]))?;
    let target = crate::target_dir();
    let b = Bench {
        exe: target.join("release/xtask"),
        dir,
        reps,
    };
    b.all()
}

struct Bench {
    exe: PathBuf,
    dir: PathBuf,
    reps: usize,
}

use super::{BIG, Report, median, warm_up};

/// Per scenario, the values of each run: reference time, our time, our peak RSS (KiB),
/// repeated.
type Runs = BTreeMap<&'static str, Vec<f64>>;

/// A table row from the runs of one [`Bench::pair`] scenario.
fn row(v: &Runs, key: &str, name: &str, target: &str) -> Row {
    let runs = v.get(key).cloned().unwrap_or_default();
    let col = |i: usize| -> Vec<f64> { runs.iter().skip(i).step_by(3).copied().collect() };
    let (reference, ours, rss) = (col(0), col(1), col(2));
    let ratios: Vec<f64> = ours.iter().zip(&reference).map(|(o, r)| o / r).collect();
    let range = (
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    Row {
        name: name.into(),
        ours: median(ours),
        reference: median(reference),
        ratio: median(ratios),
        range,
        unit: "s",
        rss_mib: median(rss) / 1024.0,
        target: target.into(),
    }
}

/// Median of the per-run ratios `v[a][i] / v[b][i]`.
fn rr(runs: &BTreeMap<&str, Vec<f64>>, ours: &str, reference: &str) -> f64 {
    let (Some(ours), Some(reference)) = (runs.get(ours), runs.get(reference)) else {
        return f64::NAN;
    };
    median(ours.iter().zip(reference).map(|(o, r)| o / r).collect())
}

/// Smallest and largest per-run ratio `v[a][i] / v[b][i]`.
fn rr_range(runs: &BTreeMap<&str, Vec<f64>>, ours: &str, reference: &str) -> (f64, f64) {
    let (Some(ours), Some(reference)) = (runs.get(ours), runs.get(reference)) else {
        return (f64::NAN, f64::NAN);
    };
    ours.iter()
        .zip(reference)
        .map(|(o, r)| o / r)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        })
}

fn sh(cmd: &mut Command) -> Result<(), String> {
    let status = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {status}"))
    }
}

fn rm(p: &Path) {
    if p.is_dir() {
        let _ = std::fs::remove_dir_all(p);
    } else {
        let _ = std::fs::remove_file(p);
    }
}

/// Flushes dirty pages and gives the virtual disk a moment for the discards and
/// writeback that deleting the previous run's GiB set off, so each timed run starts
/// from the same state (without the pause, a run right after a 1 GiB delete measured
/// file creation at 1.2 ms instead of 0.04–0.15 ms).
fn sync() {
    let _ = Command::new("sync").status();
    std::thread::sleep(Duration::from_secs(1));
}

fn timed(cmd: &mut Command) -> Result<f64, String> {
    sync();
    let t = Instant::now();
    sh(cmd)?;
    Ok(t.elapsed().as_secs_f64())
}

struct Row {
    name: String,
    ours: f64,
    reference: f64,
    /// Median of the per-run ratios (each run's ours ÷ its own reference).
    ratio: f64,
    /// Smallest and largest per-run ratio.
    range: (f64, f64),
    unit: &'static str,
    rss_mib: f64,
    target: String,
}

impl Bench {
    fn child(&self, args: &[&str]) -> Result<Report, String> {
        sync();
        super::child_report(&self.exe, "local", args)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn s(p: &Path) -> &str {
        p.to_str().expect("UTF-8 bench paths")
    }

    fn all(&self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
        // Small-file latencies first, before the GiB-sized inputs exist: on this kind of
        // VM the writeback of those slows every file creation for a while after.
        let inode = self.child(&["inode", Self::s(&self.path("inode"))])?;
        rm(&self.path("inode"));
        let latency = self.latency(&self.dir)?;
        let shm = Path::new("/dev/shm");
        let latency_tmpfs = if shm.is_dir() {
            let d = shm.join(format!("taskcache-bench-{}", std::process::id()));
            let r = self.latency(&d);
            rm(&d);
            Some(r?)
        } else {
            None
        };
        eprintln!("bench local: preparing inputs in {}", self.dir.display());
        self.prepare()?;
        let mut rows = Vec::new();
        rows.extend(self.big()?);
        rows.extend(self.small()?);
        let dedup = self.child(&["dedup", Self::s(&self.path("dedup-cache"))])?;
        rm(&self.path("dedup-cache"));
        rows.extend(self.cacache()?);
        let hash = self.child(&["blake3", Self::s(&self.path("big"))])?;
        rm(&self.path("big"));
        rm(&self.path("small-src"));
        let hops = self.child(&["hops"])?;
        self.print(
            &rows,
            &latency,
            latency_tmpfs.as_ref(),
            &dedup,
            &hash,
            &inode,
            &hops,
        );
        Ok(())
    }

    fn prepare(&self) -> Result<(), String> {
        let big = self.path("big");
        if std::fs::metadata(&big).map(|m| m.len()).ok() != Some(BIG as u64) {
            let mut buf = vec![0u8; 1 << 20];
            let mut xof = blake3::Hasher::new().update(b"big").finalize_xof();
            let mut f = std::fs::File::create(&big).map_err(|e| e.to_string())?;
            for _ in 0..(BIG >> 20) {
                xof.fill(&mut buf);
                std::io::Write::write_all(&mut f, &buf).map_err(|e| e.to_string())?;
            }
        }
        let src = self.path("small-src");
        rm(&src);
        for i in 0..SMALL_FILES {
            let d = src.join(format!("d{:03}", i / 100));
            if i % 100 == 0 {
                std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
            }
            let mut b = vec![0u8; SMALL_SIZE];
            blake3::Hasher::new()
                .update(&i.to_le_bytes())
                .finalize_xof()
                .fill(&mut b);
            std::fs::write(d.join(format!("f{i}")), b).map_err(|e| e.to_string())?;
        }
        // Read both once so every run starts with them in the page cache.
        sh(Command::new("cat")
            .arg(&big)
            .stdout(std::process::Stdio::null()))?;
        Ok(())
    }

    /// One measurement pair: the reference command and our child, back to back (each
    /// after `sync`), so slow phases of this shared machine fall on both alike.
    /// `out` is removed before and after each. Each side's input is read just before
    /// it runs (`warm`: the reference's, then ours), so both start from the page
    /// cache: this VM's page cache lets go of data quickly.
    #[allow(clippy::too_many_arguments)]
    fn pair(
        &self,
        v: &mut Runs,
        name: &'static str,
        reference: &mut Command,
        ours: &[&str],
        out: &[&Path],
        warm: [&Path; 2],
    ) -> Result<(), String> {
        let clean = || out.iter().for_each(|p| rm(p));
        // Every other run goes ours-first, so whatever the first of two runs suffers
        // (or enjoys) falls on both sides alike.
        let ours_first = v.get(name).map_or(0, Vec::len) / 3 % 2 == 1;
        let mut reference_secs = None;
        if !ours_first {
            clean();
            warm_up(warm[0]);
            reference_secs = Some(timed(reference)?);
        }
        clean();
        warm_up(warm[1]);
        let s = self.child(ours)?;
        clean();
        let reference_secs = if let Some(t) = reference_secs {
            t
        } else {
            warm_up(warm[0]);
            let t = timed(reference)?;
            clean();
            t
        };
        let runs = v.entry(name).or_default();
        runs.extend([reference_secs, s["secs"], s["rss_kib"]]);
        Ok(())
    }

    fn big(&self) -> Result<Vec<Row>, String> {
        let (big, copy) = (self.path("big"), self.path("big.copy"));
        let (cache, ws) = (self.path("big-cache"), self.path("big-ws"));
        let (c, w) = (Self::s(&cache), Self::s(&ws));
        let mut v = Runs::new();
        for r in 0..self.reps {
            eprintln!("bench local: 1 GiB, run {}/{}", r + 1, self.reps);
            let cp = || {
                let mut c = Command::new("cp");
                c.arg(&big).arg(&copy);
                c
            };
            self.pair(
                &mut v,
                "store",
                &mut cp(),
                &["big-store", c, Self::s(&big), "0"],
                &[&copy, &cache],
                [&big, &big],
            )?;
            self.pair(
                &mut v,
                "store-durable",
                &mut cp(),
                &["big-store", c, Self::s(&big), "1"],
                &[&copy, &cache],
                [&big, &big],
            )?;
            self.child(&["big-store", c, Self::s(&big), "0"])?;
            self.pair(
                &mut v,
                "restore",
                &mut cp(),
                &["big-restore", c, w],
                &[&copy, &ws],
                [&big, &cache],
            )?;
            rm(&cache);
        }
        Ok(vec![
            row(&v, "store", "1 GiB store", "≤ 1.25 × cp, RSS ≤ 64 MiB"),
            row(&v, "restore", "1 GiB restore", "≤ 1.25 × cp, RSS ≤ 64 MiB"),
            row(&v, "store-durable", "1 GiB store, durable", "(measured)"),
        ])
    }

    fn small(&self) -> Result<Vec<Row>, String> {
        let (src, copy) = (self.path("small-src"), self.path("small-copy"));
        let (cache, ws) = (self.path("small-cache"), self.path("small-ws"));
        let (c, w, sr) = (Self::s(&cache), Self::s(&ws), Self::s(&src));
        let mut v = Runs::new();
        for r in 0..self.reps {
            eprintln!("bench local: 10,000 × 4 KiB, run {}/{}", r + 1, self.reps);
            let cp = || {
                let mut c = Command::new("cp");
                c.arg("-r").arg(&src).arg(&copy);
                c
            };
            self.pair(
                &mut v,
                "store",
                &mut cp(),
                &["small-store", c, sr, "0"],
                &[&copy, &cache],
                [&src, &src],
            )?;
            self.pair(
                &mut v,
                "store-durable",
                &mut cp(),
                &["small-store", c, sr, "1"],
                &[&copy, &cache],
                [&src, &src],
            )?;
            self.child(&["small-store", c, sr, "0"])?;
            self.pair(
                &mut v,
                "restore",
                &mut cp(),
                &["small-restore", c, w],
                &[&copy, &ws],
                [&src, &cache],
            )?;
            rm(&cache);
        }
        Ok(vec![
            row(&v, "store", "10,000 × 4 KiB store", "≤ 1.5 × cp -r"),
            row(&v, "restore", "10,000 × 4 KiB restore", "≤ 1.5 × cp -r"),
            row(
                &v,
                "store-durable",
                "10,000 × 4 KiB store, durable",
                "(measured)",
            ),
        ])
    }

    fn latency(&self, base: &Path) -> Result<Report, String> {
        let mut runs: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for r in 0..self.reps {
            eprintln!(
                "bench local: hit latency in {}, run {}/{}",
                base.display(),
                r + 1,
                self.reps
            );
            let cache = base.join("lat-cache");
            rm(&cache);
            std::fs::create_dir_all(base).map_err(|e| e.to_string())?;
            for setup in ["fresh", "in-place", "stale"] {
                let s = self.child(&["hit-latency", Self::s(&cache), "3000", "multi", setup])?;
                for (k, v) in s {
                    runs.entry(format!("{setup}_{k}")).or_default().push(v);
                }
                rm(&cache);
            }
        }
        Ok(runs.into_iter().map(|(k, v)| (k, median(v))).collect())
    }

    fn cacache(&self) -> Result<Vec<Row>, String> {
        let mut v: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        let n = "10000";
        for r in 0..self.reps {
            eprintln!("bench local: vs cacache, run {}/{}", r + 1, self.reps);
            for (name, mode, durable) in [
                ("cacache", "", ""),
                ("ours", "log", "0"),
                ("ours-durable", "log", "1"),
                ("ours-file", "file", "0"),
            ] {
                let d = self.path("kv");
                rm(&d);
                let s = if name == "cacache" {
                    self.child(&["cacache", Self::s(&d), n])?
                } else {
                    self.child(&["kv", Self::s(&d), n, durable, mode])?
                };
                v.entry(name).or_default().push(s["secs"]);
                v.entry(match name {
                    "cacache" => "cacache-rss",
                    "ours" => "ours-rss",
                    "ours-file" => "ours-file-rss",
                    _ => "ours-durable-rss",
                })
                .or_default()
                .push(s["rss_kib"]);
                rm(&d);
            }
        }
        let m = |k: &str| median(v.get(k).cloned().unwrap_or_default());
        Ok(vec![
            Row {
                name: "10,000 small entries write+read".into(),
                ours: m("ours"),
                reference: m("cacache"),
                ratio: rr(&v, "ours", "cacache"),
                range: rr_range(&v, "ours", "cacache"),
                unit: "s",
                rss_mib: m("ours-rss") / 1024.0,
                target: format!(
                    "≥ 2 × cacache throughput (cacache RSS {:.1} MiB)",
                    m("cacache-rss") / 1024.0
                ),
            },
            Row {
                name: "10,000 small entries write+read, value as an output file restored to a workspace".into(),
                ours: m("ours-file"),
                reference: m("cacache"),
                ratio: rr(&v, "ours-file", "cacache"),
                range: rr_range(&v, "ours-file", "cacache"),
                unit: "s",
                rss_mib: m("ours-file-rss") / 1024.0,
                target: "(measured: 3 new files per entry vs cacache's reads into memory)".into(),
            },
            Row {
                name: "10,000 small entries write+read, durable".into(),
                ours: m("ours-durable"),
                reference: m("cacache"),
                ratio: rr(&v, "ours-durable", "cacache"),
                range: rr_range(&v, "ours-durable", "cacache"),
                unit: "s",
                rss_mib: m("ours-durable-rss") / 1024.0,
                target: "(measured; cacache fsyncs)".into(),
            },
        ])
    }

    #[allow(clippy::too_many_arguments)] // one report per benchmark family
    fn print(
        &self,
        rows: &[Row],
        latency: &Report,
        latency_tmpfs: Option<&Report>,
        dedup: &Report,
        hash: &Report,
        inode: &Report,
        hops: &Report,
    ) {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "Medians of {} runs; the ratio is the median of the per-run ratios.\n",
            self.reps
        );
        let _ = writeln!(
            md,
            "| benchmark | taskcache | reference | ratio | ratio range | peak RSS | target |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        for r in rows {
            let _ = writeln!(
                md,
                "| {} | {:.3} {} | {:.3} {} | {:.2} | {:.2}–{:.2} | {:.1} MiB | {} |",
                r.name,
                r.ours,
                r.unit,
                r.reference,
                r.unit,
                r.ratio,
                r.range.0,
                r.range.1,
                r.rss_mib,
                r.target
            );
        }
        let _ = writeln!(
            md,
            "\nHit latency (lookup, then the hit's restore and logs, of one 1 KiB output with two small \
             logs, in-process, multi-thread runtime, 3,000 hits after 200 warm-up; target \
             p50 ≤ 200 µs), by what the workspace holds when the hit starts:\n\n\
             | workspace | p50 | p99 | lookup p50 | restore p50 | logs p50 | peak RSS |\n\
             |---|---|---|---|---|---|---|"
        );
        let mut latency_row = |fs: &str, l: &Report, setup: &str, what: &str| {
            let v = |k: &str| l.get(&format!("{setup}_{k}")).copied().unwrap_or(f64::NAN);
            let _ = writeln!(
                md,
                "| {what} ({fs}) | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.1} MiB |",
                v("p50_us"),
                v("p99_us"),
                v("check_p50_us"),
                v("restore_p50_us"),
                v("logs_p50_us"),
                v("rss_kib") / 1024.0,
            );
        };
        for (setup, what) in [
            ("fresh", "output absent (fresh checkout)"),
            ("in-place", "output already there, same bytes"),
            ("stale", "output there with other bytes"),
        ] {
            latency_row("bench dir", latency, setup, what);
            if let Some(l) = latency_tmpfs {
                latency_row("tmpfs", l, setup, what);
            }
        }
        let _ = writeln!(
            md,
            "\nOne trip to tokio's blocking pool costs {:.0} µs here (a hit makes 2 in \
             turn: the lookup's, and the restore's with the recency update alongside; small logs \
             are in the hit's record).",
            hops["spawn_blocking_us"]
        );
        let _ = writeln!(
            md,
            "\nFile operations in the bench directory (medians): create and write 1 KiB \
             {:.0} µs, rename to a new name {:.0} µs, rename over an existing file {:.0} µs.",
            inode["create_us"], inode["rename_us"], inode["replace_us"]
        );
        let _ = writeln!(
            md,
            "\nDedup: 100 entries sharing one 10 MiB output occupy {:.2} MiB on disk \
             ({:.2} MiB apparent; target ≤ 11 MiB).",
            dedup["disk_bytes"] / f64::from(1 << 20),
            dedup["apparent_bytes"] / f64::from(1 << 20)
        );
        let _ = writeln!(
            md,
            "\nBLAKE3 (one thread): {:.2} GB/s hashing memory, {:.2} GB/s reading + hashing \
             the 1 GiB file from the page cache: the ceiling for a store is 1 GiB ÷ the \
             latter = {:.3} s.",
            hash["mem_gbps"],
            hash["file_gbps"],
            1.073_741_824 / hash["file_gbps"]
        );
        println!("\n{md}");
    }
}

// ---------------------------------------------------------------- child side
