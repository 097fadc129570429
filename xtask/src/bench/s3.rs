//! `cargo xtask bench s3 [files|real|all] [--reps N] [--steps A,B]`: taskcache against
//! the AWS CLI and the actions/cache method, moving the same data to and from the same
//! S3 server (s3s-fs from `peers up s3s`), in the same run. `files` (generated data):
//!
//! * 1,000 files of 16 KiB, stored and restored: `taskcache run --cache s3://...`
//!   (a miss stores them, a hit after deleting them restores them) against
//!   `aws s3 cp --recursive` up and down.
//! * One 1 GiB file, the same way, with peak RSS of both clients (GNU `time`).
//! * A 10,000-file generated tree against `tar | zstd` and one object (`s3_tree`).
//! * A warm store of both (in process, through `CountingStore`): requests and bytes
//!   sent when every blob is already in the bucket.
//!
//! `real` (`s3_real`): `npm ci`, a cargo build and a Python venv, each against running
//! the step and against `tar | zstd` and one object. `all` (the default) runs both.
//!
//! Rounds alternate which client goes first; each figure is the median of the rounds.

use super::median;
use crate::peers;
use cache_core::{Cache, CacheBackend, CacheEntry, CacheOutput, CachePolicy, Task};
use cache_s3::{CountingStore, S3Options, S3Storage};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

const SMALL_FILES: usize = 1000;
const SMALL_SIZE: usize = 16 << 10;
const BIG_SIZE: u64 = 1 << 30;
const REGION: &str = "us-east-1";

pub(super) struct Server {
    pub(super) endpoint: String,
    pub(super) bucket: String,
    pub(super) data: PathBuf,
}

pub fn run(args: &[String]) -> Result<(), String> {
    let mut reps = 5usize;
    let (mut files, mut real) = (true, true);
    let mut steps = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "files" => real = false,
            "real" => files = false,
            "all" => {}
            "--reps" => reps = super::reps(it.next())?,
            "--steps" => {
                steps = Some(super::s3_real::select(
                    it.next().ok_or("--steps needs a list")?,
                )?);
            }
            other => {
                return Err(format!(
                    "bench s3: unknown argument {other:?} (use [files|real|all] [--reps N] [--steps {}])",
                    super::s3_real::NAMES
                ));
            }
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    crate::run(Command::new(cargo).args(["build", "--release", "-q", "-p", "cache-cli"]))?;
    let target = peers::root()
        .parent()
        .map(Path::to_path_buf)
        .ok_or("no target directory")?;
    let bin = target.join("release/taskcache");
    let aws = peers::moto::install_awscli(&peers::root().join("moto"))?;
    let scratch = target.join("bench-s3");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(scratch.join("home")).map_err(|e| e.to_string())?;
    // The real steps' downloads (before the server starts: they may take minutes).
    let real_steps = if real {
        super::s3_real::prepare(&scratch, &target.join("bench-s3-tools"), steps.as_deref())
    } else {
        Vec::new()
    };
    let vars = peers::up(&["s3s".to_owned()])?;
    let var = |k: &str| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.clone())
            .ok_or(format!("peers up s3s gave no {k}"))
    };
    let server = Server {
        endpoint: var("TASKCACHE_BENCH_S3S_ENDPOINT")?,
        bucket: var("TASKCACHE_BENCH_S3S_BUCKET")?,
        data: peers::root().join("s3s/data"),
    };
    let c = Clients {
        bin: &bin,
        aws: &aws,
        server: &server,
        scratch: &scratch,
    };
    println!("\n{}", super::s3_real::machine_line());
    let mut result = Ok(());
    if real {
        result = super::s3_real::measure(&c, &real_steps, reps);
    }
    if files && result.is_ok() {
        result = measure(&c, reps);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let stopped = peers::down(&["s3s".to_owned()]);
    result.and(stopped)
}

/// The environment both clients get: the server's keys, endpoint and region, and a
/// HOME of their own (no user configuration).
fn client_env(cmd: &mut Command, server: &Server, scratch: &Path) {
    cmd.env("AWS_ACCESS_KEY_ID", peers::s3s::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", peers::s3s::SECRET_KEY)
        .env("AWS_REGION", REGION)
        .env("AWS_DEFAULT_REGION", REGION)
        .env("AWS_ENDPOINT_URL", &server.endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("HOME", scratch.join("home"))
        .env_remove("TASKCACHE_REMOTE")
        .env_remove("TASKCACHE_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
}

/// `program ARGS... CMD CMD_ARGS...` in `cmd`'s directory with `cmd`'s environment:
/// `cmd` run under a wrapper (GNU `time`, a shell).
pub(super) fn wrap(cmd: &Command, program: &str, args: &[&str]) -> Command {
    let mut wrapped = Command::new(program);
    wrapped
        .args(args)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    wrapped
}

/// Runs `cmd` under GNU `time`; returns wall seconds and peak RSS in MiB.
pub(super) fn timed(cmd: &Command) -> Result<(f64, f64), String> {
    timed_stderr(cmd).map(|(secs, rss, _)| (secs, rss))
}

/// [`timed`], and what `cmd` wrote on stderr.
pub(super) fn timed_stderr(cmd: &Command) -> Result<(f64, f64, String), String> {
    let mut wrapped = wrap(cmd, "/usr/bin/time", &["-f", "%M"]);
    wrapped.stdin(Stdio::null()).stdout(Stdio::null());
    let start = Instant::now();
    let out = wrapped
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    let secs = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "{:?} failed ({}): {stderr}",
            cmd.get_program(),
            out.status
        ));
    }
    let (own, last) = stderr
        .trim_end()
        .rsplit_once('\n')
        .unwrap_or(("", stderr.trim_end()));
    let kib: f64 = last
        .trim()
        .parse()
        .map_err(|_| format!("no peak RSS from GNU time: {stderr}"))?;
    Ok((secs, kib / 1024.0, own.to_owned()))
}

/// Pseudo-random bytes (BLAKE3's output stream), so nothing compresses or dedups.
fn fill(path: &Path, seed: &str, size: u64) -> Result<(), String> {
    use std::io::Write;
    let mut xof = blake3::Hasher::new().update(seed.as_bytes()).finalize_xof();
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).map_err(|e| format!("create {}: {e}", path.display()))?,
    );
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        xof.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        left -= n as u64;
    }
    f.flush().map_err(|e| e.to_string())
}

fn make_data(ws: &Path) -> Result<(), String> {
    let small = ws.join("small");
    std::fs::create_dir_all(&small).map_err(|e| e.to_string())?;
    for i in 0..SMALL_FILES {
        fill(
            &small.join(format!("f{i:04}")),
            &format!("small {i}"),
            SMALL_SIZE as u64,
        )?;
    }
    fill(&ws.join("big.bin"), "big", BIG_SIZE)
}

/// One scenario's samples: (seconds, peak RSS MiB) per round and direction.
#[derive(Default)]
pub(super) struct Samples {
    pub(super) up: Vec<(f64, f64)>,
    pub(super) down: Vec<(f64, f64)>,
}

/// `taskcache run TIERS -o OUTPUT EXTRA -- true` in `ws`: a miss stores what is there,
/// a hit restores it.
pub(super) fn taskcache(
    c: &Clients<'_>,
    ws: &Path,
    tiers: &[String],
    output: &str,
    extra: &[&str],
) -> Command {
    let mut cmd = Command::new(c.bin);
    client_env(&mut cmd, c.server, c.scratch);
    cmd.current_dir(ws)
        .arg("run")
        .args(tiers)
        .args(["-o", output])
        .args(extra)
        .args(["--", "true"]);
    cmd
}

/// `--cache s3://BUCKET/PREFIX`: the bucket alone, no local tier.
pub(super) fn bucket(server: &Server, prefix: &str) -> Vec<String> {
    vec![
        "--cache".to_owned(),
        format!("s3://{}/{prefix}", server.bucket),
    ]
}

pub(super) fn aws_cp(
    aws: &Path,
    server: &Server,
    scratch: &Path,
    from: &str,
    to: &str,
    recursive: bool,
) -> Command {
    let mut c = Command::new(aws);
    client_env(&mut c, server, scratch);
    c.current_dir(scratch).args([
        "--endpoint-url",
        &server.endpoint,
        "s3",
        "cp",
        "--only-show-errors",
    ]);
    if recursive {
        c.arg("--recursive");
    }
    c.args([from, to]);
    c
}

pub(super) fn remove(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    }
    .map_err(|e| format!("remove {}: {e}", path.display()))
}

/// Stores then restores `output` with taskcache, and uploads then downloads it with
/// the AWS CLI; `check` says whether a restored copy is whole.
pub(super) struct Clients<'a> {
    pub(super) bin: &'a Path,
    pub(super) aws: &'a Path,
    pub(super) server: &'a Server,
    pub(super) scratch: &'a Path,
}

fn round(
    c: &Clients<'_>,
    output: &str,
    tag: &str,
    ours_first: bool,
    ours: &mut Samples,
    theirs: &mut Samples,
) -> Result<(), String> {
    let (aws, server, scratch) = (c.aws, c.server, c.scratch);
    let ws = scratch.join("ws");
    let original = ws.join(output);
    let kept = scratch.join(format!("{output}.orig"));
    let run_ours = |ours: &mut Samples| -> Result<(), String> {
        let prefix = format!("tc-{tag}");
        let ours_cmd = taskcache(c, &ws, &bucket(server, &prefix), output, &[]);
        ours.up.push(timed(&ours_cmd)?);
        // Keep the original aside; the hit must bring it back.
        std::fs::rename(&original, &kept).map_err(|e| e.to_string())?;
        ours.down.push(timed(&ours_cmd)?);
        let same = same_tree(&original, &kept)?;
        remove(&original)?;
        std::fs::rename(&kept, &original).map_err(|e| e.to_string())?;
        remove(&server.data.join(&server.bucket).join(&prefix))?;
        if same {
            Ok(())
        } else {
            Err(format!("taskcache restored a different {output}"))
        }
    };
    let run_theirs = |theirs: &mut Samples| -> Result<(), String> {
        let prefix = format!("aws-{tag}");
        let url = format!("s3://{}/{prefix}/{output}", server.bucket);
        let recursive = original.is_dir();
        let local = original.display().to_string();
        theirs.up.push(timed(&aws_cp(
            aws, server, scratch, &local, &url, recursive,
        ))?);
        let back = scratch.join(format!("{output}.aws"));
        let back_s = back.display().to_string();
        theirs.down.push(timed(&aws_cp(
            aws, server, scratch, &url, &back_s, recursive,
        ))?);
        let same = same_tree(&back, &original)?;
        remove(&back)?;
        remove(&server.data.join(&server.bucket).join(&prefix))?;
        if same {
            Ok(())
        } else {
            Err(format!("the AWS CLI brought back a different {output}"))
        }
    };
    if ours_first {
        run_ours(ours)?;
        run_theirs(theirs)
    } else {
        run_theirs(theirs)?;
        run_ours(ours)
    }
}

/// Whether two files, or two flat directories of files, hold the same bytes.
fn same_tree(a: &Path, b: &Path) -> Result<bool, String> {
    let digest = |p: &Path| -> Result<blake3::Hash, String> {
        let mut h = blake3::Hasher::new();
        h.update_reader(std::fs::File::open(p).map_err(|e| format!("open {}: {e}", p.display()))?)
            .map_err(|e| format!("read {}: {e}", p.display()))?;
        Ok(h.finalize())
    };
    if a.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(a)
            .map_err(|e| e.to_string())?
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        names.sort();
        let count = std::fs::read_dir(b).map_err(|e| e.to_string())?.count();
        if count != names.len() {
            return Ok(false);
        }
        for n in names {
            if digest(&a.join(&n))? != digest(&b.join(&n))? {
                return Ok(false);
            }
        }
        return Ok(true);
    }
    Ok(digest(a)? == digest(b)?)
}

fn measure(c: &Clients<'_>, reps: usize) -> Result<(), String> {
    let (server, scratch) = (c.server, c.scratch);
    let ws = scratch.join("ws");
    eprintln!("xtask: bench s3: writing {SMALL_FILES} x 16 KiB and 1 GiB of data");
    make_data(&ws)?;
    super::s3_tree::make_tree(&ws)?;
    let (mut tree_ours, mut tree_theirs) = (Samples::default(), Samples::default());
    let mut footprint = super::s3_tree::Footprint::default();
    let (mut small_ours, mut small_theirs) = (Samples::default(), Samples::default());
    let (mut big_ours, mut big_theirs) = (Samples::default(), Samples::default());
    let mut load = Vec::new();
    for r in 0..reps {
        eprintln!("xtask: bench s3: round {}/{reps}", r + 1);
        load.push(super::s3_real::load_average());
        let first = r % 2 == 0;
        round(
            c,
            "small",
            &format!("small-{r}"),
            first,
            &mut small_ours,
            &mut small_theirs,
        )?;
        super::s3_tree::round(
            c,
            &format!("tree-{r}"),
            !first,
            &mut tree_ours,
            &mut tree_theirs,
            &mut footprint,
        )?;
        round(
            c,
            "big.bin",
            &format!("big-{r}"),
            !first,
            &mut big_ours,
            &mut big_theirs,
        )?;
    }
    let warm = warm_store(server, &ws)?;
    println!(
        "\n### bench s3 files: {reps} rounds against s3s-fs at {}, load average (1 min) at each round's start: {}\n",
        server.endpoint,
        super::s3_real::list(&load)
    );
    println!(
        "| what | taskcache | AWS CLI | AWS CLI / taskcache | taskcache peak RSS | AWS CLI peak RSS |"
    );
    println!("|---|---|---|---|---|---|");
    rows(
        &[
            ("1,000 x 16 KiB, store", &small_ours.up, &small_theirs.up),
            (
                "1,000 x 16 KiB, restore",
                &small_ours.down,
                &small_theirs.down,
            ),
            ("1 GiB file, store", &big_ours.up, &big_theirs.up),
            ("1 GiB file, restore", &big_ours.down, &big_theirs.down),
        ],
        false,
    );
    super::s3_tree::report(&tree_ours, &tree_theirs, &footprint);
    println!("\n{warm}");
    Ok(())
}

/// One table row: what, our samples, theirs.
pub(super) type Row<'a> = (&'a str, &'a Vec<(f64, f64)>, &'a Vec<(f64, f64)>);

/// Table rows: median wall time and largest peak RSS of each side, and their ratio
/// (theirs / ours, or ours / theirs when `ours_over_theirs`).
pub(super) fn rows(rows: &[Row<'_>], ours_over_theirs: bool) {
    for (what, ours, theirs) in rows {
        let (t_ours, t_theirs) = (
            median(ours.iter().map(|s| s.0).collect()),
            median(theirs.iter().map(|s| s.0).collect()),
        );
        let (m_ours, m_theirs) = (
            ours.iter().map(|s| s.1).fold(0.0, f64::max),
            theirs.iter().map(|s| s.1).fold(0.0, f64::max),
        );
        let ratio = if ours_over_theirs {
            t_ours / t_theirs
        } else {
            t_theirs / t_ours
        };
        println!(
            "| {what} | {t_ours:.2} s | {t_theirs:.2} s | {ratio:.2}x | {m_ours:.0} MiB | {m_theirs:.0} MiB |"
        );
    }
}

/// Stores both data sets twice under two keys, counting requests: the second store
/// finds every blob in the bucket and sends only its entry.
fn warm_store(server: &Server, ws: &Path) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let s3 = cache_s3::object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&server.bucket)
            .with_endpoint(&server.endpoint)
            .with_allow_http(true)
            .with_region(REGION)
            .with_access_key_id(peers::s3s::ACCESS_KEY)
            .with_secret_access_key(peers::s3s::SECRET_KEY)
            .build()
            .map_err(|e| e.to_string())?;
        let counting = CountingStore::new(Arc::new(s3));
        let storage = S3Storage::from_store(
            Arc::new(counting.clone()),
            "warm",
            "s3s",
            S3Options::default(),
        );
        let cache = Cache::new(storage.clone(), |job| {
            tokio::task::spawn_blocking(job);
        });
        let mut outputs: Vec<CacheOutput> = (0..SMALL_FILES)
            .map(|i| {
                CacheOutput::file(
                    format!("small/f{i:04}"),
                    ws.join(format!("small/f{i:04}")),
                    false,
                )
            })
            .collect();
        outputs.insert(0, CacheOutput::directory("small"));
        outputs.push(CacheOutput::file("big.bin", ws.join("big.bin"), false));
        let entry = CacheEntry {
            outputs,
            ..CacheEntry::default()
        };
        let task = Task::new("bench", ["true"]);
        let key = |s: &str| {
            cache_core::DigestAlgorithm::Blake3
                .digest(s.as_bytes())
                .to_string()
        };
        let started = Instant::now();
        cache
            .store(&task, &key("cold"), &entry, CachePolicy::Normal)
            .await
            .map_err(|e| e.to_string())?;
        let cold_s = started.elapsed().as_secs_f64();
        let cold = counting.counts();
        let started = Instant::now();
        let warm_key = key("warm");
        cache
            .store(&task, &warm_key, &entry, CachePolicy::Normal)
            .await
            .map_err(|e| e.to_string())?;
        let warm_s = started.elapsed().as_secs_f64();
        let all = counting.counts();
        let entry_bytes = storage
            .raw_entry(&cache_core::Digest::parse(&warm_key).map_err(|e| e.to_string())?)
            .await
            .map_err(|e| e.to_string())?
            .map_or(0, |b| b.len() as u64);
        let warm = cache_s3::RequestCounts {
            puts: all.puts - cold.puts,
            gets: all.gets - cold.gets,
            heads: all.heads - cold.heads,
            lists: all.lists - cold.lists,
            deletes: all.deletes - cold.deletes,
            other: all.other - cold.other,
            bytes_sent: all.bytes_sent - cold.bytes_sent,
            bytes_received: all.bytes_received - cold.bytes_received,
        };
        let _ = std::fs::remove_dir_all(server.data.join(&server.bucket).join("warm"));
        Ok(format!(
            "Warm store of both (1,000 x 16 KiB + 1 GiB, every blob already stored), in process:\n\
             cold store {cold_s:.2} s: {cold}\n\
             warm store {warm_s:.2} s: {warm}\n\
             blob bytes sent by the warm store: {} (the entry is {entry_bytes} bytes)",
            warm.bytes_sent.saturating_sub(entry_bytes)
        ))
    })
}
