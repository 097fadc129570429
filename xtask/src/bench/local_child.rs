//! The child side of `cargo xtask bench local`: each scenario, run in its own process
//! (`bench local --child NAME ...`), reporting its time and its own peak RSS.

use super::{BIG, median, warm_up};
use cache_core::{CacheBackend, CacheEntry, CacheOutput, CachePolicy, DigestAlgorithm, Task};
use cache_local::LocalOptions;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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

fn report(pairs: &[(&str, f64)]) {
    let mut line = String::from("RESULT");
    for (k, v) in pairs {
        let _ = write!(line, " {k}={v}");
    }
    let _ = write!(line, " rss_kib={}", peak_rss_kib());
    println!("{line}");
}

fn task() -> Task {
    Task::new("bench", ["bench"])
}

fn key(name: &str) -> String {
    DigestAlgorithm::Blake3.digest(name.as_bytes()).to_string()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn opts(durable: &str) -> LocalOptions {
    LocalOptions {
        durable: durable == "1",
        max_size: None,
    }
}

fn e(x: impl std::fmt::Display) -> String {
    x.to_string()
}

fn arg(args: &[String], i: usize) -> Result<&str, String> {
    args.get(i)
        .map(String::as_str)
        .ok_or_else(|| format!("bench child: missing argument {i}"))
}

#[allow(clippy::too_many_lines)] // one arm per scenario, each short
pub(super) fn child(args: &[String]) -> Result<(), String> {
    let rt = runtime();
    match arg(args, 0)? {
        "big-store" => {
            let cache = cache_local::open(arg(args, 1)?, opts(arg(args, 3)?)).map_err(e)?;
            let entry = CacheEntry {
                outputs: vec![CacheOutput::file("big", arg(args, 2)?, false)],
                ..CacheEntry::default()
            };
            let t = Instant::now();
            rt.block_on(cache.store(&task(), &key("big"), &entry, CachePolicy::Normal))
                .map_err(e)?;
            report(&[("secs", t.elapsed().as_secs_f64())]);
        }
        "big-restore" | "small-restore" => {
            let name = if arg(args, 0)? == "big-restore" {
                "big"
            } else {
                "small"
            };
            let cache = cache_local::open(arg(args, 1)?, LocalOptions::default()).map_err(e)?;
            let ws = PathBuf::from(arg(args, 2)?);
            std::fs::create_dir_all(&ws).map_err(e)?;
            let t = Instant::now();
            rt.block_on(cache.restore_outputs(&task(), &key(name), &ws))
                .map_err(e)?;
            report(&[("secs", t.elapsed().as_secs_f64())]);
        }
        "small-store" => {
            let cache = cache_local::open(arg(args, 1)?, opts(arg(args, 3)?)).map_err(e)?;
            let src = PathBuf::from(arg(args, 2)?);
            let mut outputs = Vec::new();
            let mut dirs: Vec<_> = std::fs::read_dir(&src)
                .map_err(e)?
                .collect::<Result<_, _>>()
                .map_err(e)?;
            dirs.sort_by_key(std::fs::DirEntry::file_name);
            for d in dirs {
                let dn = d.file_name().to_string_lossy().into_owned();
                outputs.push(CacheOutput::directory(dn.clone()));
                for f in std::fs::read_dir(d.path()).map_err(e)? {
                    let f = f.map_err(e)?;
                    let rel = format!("{dn}/{}", f.file_name().to_string_lossy());
                    outputs.push(CacheOutput::file(rel, f.path(), false));
                }
            }
            let entry = CacheEntry {
                outputs,
                ..CacheEntry::default()
            };
            let t = Instant::now();
            rt.block_on(cache.store(&task(), &key("small"), &entry, CachePolicy::Normal))
                .map_err(e)?;
            report(&[("secs", t.elapsed().as_secs_f64())]);
        }
        "hit-latency" => {
            let iters: usize = arg(args, 2)?.parse().map_err(e)?;
            let dir = PathBuf::from(arg(args, 1)?);
            let cache = cache_local::open(&dir, LocalOptions::default()).map_err(e)?;
            // The workspace on the same filesystem as the cache.
            let ws = tempfile::tempdir_in(dir.parent().unwrap_or(&dir)).map_err(e)?;
            let k = key("latency");
            let entry = CacheEntry {
                stdout: Some(b"compiling...\nfinished\n".to_vec()),
                stderr: Some(b"warning: unused\n".to_vec()),
                outputs: vec![CacheOutput::bytes("out/lib.a", vec![7u8; 1024], false)],
                ..CacheEntry::default()
            };
            // A current-thread runtime, as the taskcache CLI uses (every storage call
            // is still one trip to the blocking pool).
            let rt = if arg(args, 3).is_ok_and(|f| f == "current") {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(e)?
            } else {
                rt
            };
            // Where the output is when the hit starts: `fresh` (not there: a new
            // checkout), `in-place` (the same bytes: restored before), `stale` (other bytes
            // of the same size: replaced through a rename over the old file).
            let setup = arg(args, 4).unwrap_or("fresh");
            let out = ws.path().join("out/lib.a");
            let digest = cache_core::Digest::parse(&k).map_err(e)?;
            let mut samples = rt
                .block_on(async {
                    cache
                        .store(&task(), &k, &entry, CachePolicy::Normal)
                        .await?;
                    let mut samples = Vec::with_capacity(iters);
                    for i in 0..iters + 200 {
                        // Untimed: put the workspace in the state this run measures.
                        match setup {
                            "fresh" => drop(std::fs::remove_file(&out)),
                            "stale" if out.exists() => {
                                std::fs::write(&out, [8u8; 1024]).map_err(|e| {
                                    cache_core::BackendError::io_with_context("write", &out, e)
                                })?;
                            }
                            _ => {}
                        }
                        let t = Instant::now();
                        // A hit as an executor makes it: one lookup, then the hit's
                        // restore and logs.
                        let hit = cache
                            .lookup(&task(), &digest, CachePolicy::Normal)
                            .await?
                            .expect("a hit");
                        let t_check = t.elapsed();
                        hit.restore(ws.path()).await?;
                        let t_restore = t.elapsed();
                        let logs = hit.logs().await?;
                        let el = t.elapsed();
                        assert!(logs.0.is_some());
                        if i >= 200 {
                            // The first 200 warm up.
                            samples.push([
                                el,
                                t_check,
                                t_restore.saturating_sub(t_check),
                                el.saturating_sub(t_restore),
                            ]);
                        }
                    }
                    Ok::<_, cache_core::BackendError>(samples)
                })
                .map_err(e)?;
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            let mut out = Vec::new();
            for (col, name) in ["", "check_", "restore_", "logs_"].iter().enumerate() {
                samples.sort_by_key(|s| s[col]);
                let pct = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)][col];
                out.push((format!("{name}p50_us"), us(pct(50))));
                out.push((format!("{name}p99_us"), us(pct(99))));
            }
            let pairs: Vec<(&str, f64)> = out.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            report(&pairs);
        }
        "dedup" => {
            let dir = PathBuf::from(arg(args, 1)?);
            let cache = cache_local::open(&dir, LocalOptions::default()).map_err(e)?;
            let mut shared = vec![0u8; 10 << 20];
            blake3::Hasher::new()
                .update(b"shared")
                .finalize_xof()
                .fill(&mut shared);
            rt.block_on(async {
                for i in 0..100 {
                    let entry = CacheEntry {
                        stdout: Some(format!("build {i}\n").into_bytes()),
                        outputs: vec![CacheOutput::bytes("dist/app.bin", shared.clone(), true)],
                        ..CacheEntry::default()
                    };
                    cache
                        .store(
                            &task(),
                            &key(&format!("dedup {i}")),
                            &entry,
                            CachePolicy::Normal,
                        )
                        .await?;
                }
                Ok::<_, cache_core::BackendError>(())
            })
            .map_err(e)?;
            let (disk, apparent) = du(&dir);
            #[allow(clippy::cast_precision_loss)]
            report(&[
                ("disk_bytes", disk as f64),
                ("apparent_bytes", apparent as f64),
            ]);
        }
        "cacache" => {
            let dir = PathBuf::from(arg(args, 1)?);
            let n: usize = arg(args, 2)?.parse().map_err(e)?;
            let t = Instant::now();
            rt.block_on(async {
                for i in 0..n {
                    cacache::write(&dir, format!("key-{i}"), small_value(i)).await?;
                }
                for i in 0..n {
                    let v = cacache::read(&dir, format!("key-{i}")).await?;
                    assert_eq!(v, small_value(i));
                }
                Ok::<_, cacache::Error>(())
            })
            .map_err(e)?;
            report(&[("secs", t.elapsed().as_secs_f64())]);
        }
        "kv" => {
            // The same work through taskcache. `log`: the 1 KiB value is the entry's
            // stdout, read back into memory with a lookup + get_log_bytes (like
            // cacache::read). `file`: the value is an output file, and a read is a
            // lookup plus a restore of that file into a workspace.
            let cache = cache_local::open(arg(args, 1)?, opts(arg(args, 3)?)).map_err(e)?;
            let n: usize = arg(args, 2)?.parse().map_err(e)?;
            let as_file = arg(args, 4)? == "file";
            let ws = tempfile::tempdir().map_err(e)?;
            let t = Instant::now();
            rt.block_on(async {
                for i in 0..n {
                    let entry = if as_file {
                        CacheEntry {
                            outputs: vec![CacheOutput::bytes("value", small_value(i), false)],
                            ..CacheEntry::default()
                        }
                    } else {
                        CacheEntry {
                            stdout: Some(small_value(i)),
                            ..CacheEntry::default()
                        }
                    };
                    cache
                        .store(
                            &task(),
                            &key(&format!("key-{i}")),
                            &entry,
                            CachePolicy::Normal,
                        )
                        .await?;
                }
                for i in 0..n {
                    let k = key(&format!("key-{i}"));
                    let digest = cache_core::Digest::parse(&k)?;
                    let hit = cache
                        .lookup(&task(), &digest, CachePolicy::Normal)
                        .await?
                        .expect("a hit");
                    if as_file {
                        hit.restore(ws.path()).await?;
                    } else {
                        let (out, _) = hit.logs().await?;
                        assert_eq!(out.as_deref(), Some(&small_value(i)[..]));
                    }
                }
                Ok::<_, cache_core::BackendError>(())
            })
            .map_err(e)?;
            if as_file {
                assert_eq!(
                    std::fs::read(ws.path().join("value")).map_err(e)?,
                    small_value(n - 1)
                );
            }
            report(&[("secs", t.elapsed().as_secs_f64())]);
        }
        "hops" => {
            // What one trip to tokio's blocking pool costs here (multi-thread runtime
            // with 2 workers, as in the hit-latency scenario), and an inline call.
            let n = 20_000u32;
            let per = |t: Instant| t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
            let t = Instant::now();
            rt.block_on(async {
                for _ in 0..n {
                    tokio::task::spawn_blocking(|| std::hint::black_box(1))
                        .await
                        .ok();
                }
            });
            let spawn_blocking = per(t);
            let t = Instant::now();
            rt.block_on(async {
                for _ in 0..n {
                    tokio::spawn(async { std::hint::black_box(1) }).await.ok();
                }
            });
            let spawn = per(t);
            let t = Instant::now();
            rt.block_on(async {
                tokio::spawn(async move {
                    for _ in 0..n {
                        tokio::task::block_in_place(|| std::hint::black_box(1));
                        tokio::task::yield_now().await;
                    }
                })
                .await
                .ok();
            });
            let block_in_place = per(t);
            let cur = tokio::runtime::Builder::new_current_thread()
                .build()
                .map_err(e)?;
            let t = Instant::now();
            cur.block_on(async {
                for _ in 0..n {
                    tokio::task::spawn_blocking(|| std::hint::black_box(1))
                        .await
                        .ok();
                }
            });
            let spawn_blocking_current = per(t);
            report(&[
                ("spawn_blocking_us", spawn_blocking),
                ("spawn_us", spawn),
                ("block_in_place_us", block_in_place),
                ("spawn_blocking_current_thread_us", spawn_blocking_current),
            ]);
        }
        "inode" => {
            let dir = PathBuf::from(arg(args, 1)?);
            std::fs::create_dir_all(&dir).map_err(e)?;
            let n = 300u32;
            let timed = |f: &mut dyn FnMut(u32) -> std::io::Result<()>| {
                let mut v = Vec::with_capacity(n as usize);
                for i in 0..n {
                    let t = Instant::now();
                    f(i)?;
                    v.push(t.elapsed().as_secs_f64() * 1e6);
                }
                Ok::<_, std::io::Error>(median(v))
            };
            let data = [3u8; 1024];
            let create =
                timed(&mut |i| std::fs::write(dir.join(format!("c{i}")), data)).map_err(e)?;
            let rename = timed(&mut |i| {
                std::fs::rename(dir.join(format!("c{i}")), dir.join(format!("r{i}")))
            })
            .map_err(e)?;
            // What an atomic replace of an existing file costs (ext4 flushes the new
            // file's data on such a rename).
            std::fs::write(dir.join("target"), data).map_err(e)?;
            let replace = timed(&mut |i| {
                let tmp = dir.join(format!("t{i}"));
                std::fs::write(&tmp, data)?;
                std::fs::rename(&tmp, dir.join("target"))
            })
            .map_err(e)?;
            report(&[
                ("create_us", create),
                ("rename_us", rename),
                ("replace_us", replace),
            ]);
        }
        "blake3" => {
            let buf = vec![0x5au8; 1 << 20];
            let t = Instant::now();
            let mut h = blake3::Hasher::new();
            for _ in 0..(BIG >> 20) {
                h.update(&buf);
            }
            let _ = h.finalize();
            let mem = 1.073_741_824 / t.elapsed().as_secs_f64();
            warm_up(Path::new(arg(args, 1)?));
            let mut f = std::fs::File::open(arg(args, 1)?).map_err(e)?;
            let t = Instant::now();
            cache_core::storage::hash_reader(&mut f, DigestAlgorithm::Blake3).map_err(e)?;
            let file = 1.073_741_824 / t.elapsed().as_secs_f64();
            report(&[("mem_gbps", mem), ("file_gbps", file)]);
        }
        other => return Err(format!("unknown bench child {other:?}")),
    }
    Ok(())
}

fn small_value(i: usize) -> Vec<u8> {
    let mut v = vec![0u8; 1024];
    blake3::Hasher::new()
        .update(&i.to_le_bytes())
        .finalize_xof()
        .fill(&mut v);
    v
}

/// Bytes allocated on disk (`st_blocks`) and apparent bytes of everything under `dir`.
fn du(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut disk = 0;
    let mut apparent = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for ent in rd.flatten() {
            let Ok(m) = ent.metadata() else { continue };
            if m.is_dir() {
                stack.push(ent.path());
            }
            disk += m.blocks() * 512;
            apparent += m.len();
        }
    }
    (disk, apparent)
}
