//! `drill corrupt`: a cache holding a few entries (small files, a log blob, a 20 MiB
//! file) has each of its files in turn flipped in one byte, truncated, zeroed or
//! deleted (entries, blobs, `LAYOUT`, the statistics log). Then, on one copy:
//!
//! * every `taskcache run` of every entry exits 0 with exactly the entry's bytes and
//!   stdout (a miss runs the step; a hit restores it; a wrong byte never lands), or
//!   fails with a clear error (a message, exit 2, nothing written);
//! * afterwards every entry hits again (the runs' stores repaired the cache; a damaged
//!   or deleted `LAYOUT` is written again), unless the damaged `LAYOUT` reads as a
//!   newer layout version: then every run must say so and run the step uncached.
//!
//! And on another copy `taskcache verify` must remove the damaged blob or entry (and
//! the entries that needed a deleted blob) or repair `LAYOUT` (exit 3, naming the
//! version, for a newer one), after which every key is a miss or a byte-identical hit
//! and a second `verify` finds nothing.
//!
//! The same runs against the objects of an S3 bucket (`entries/...`, `blobs/...`) and
//! the blob files of a BuildGrid CAS. Those have no `verify`. A REAPI server has no
//! delete, and BuildGrid never replaces a blob it has, so a blob damaged in place
//! stays damaged there: the entries that need it must then stay misses (checked: the
//! object still holds the damaged bytes), never a wrong byte. In the CI-sized drill
//! those backends damage 8 objects chosen at random.

use super::taskcache::{Backend, Checked, Tc, keep_evidence};
use super::workload::Class;
use super::{Outcome, Rng};
use std::time::Instant;

const ENTRIES: [(u64, Class); 4] = [
    (0, Class::Small),
    (1, Class::Small),
    (2, Class::Medium),
    (5, Class::Small),
];

/// Objects the CI-sized drill damages on a remote backend.
const SAMPLE_OBJECTS: usize = 8;

#[derive(Debug, Clone, Copy)]
enum Damage {
    Flip,
    Truncate,
    Zero,
    Delete,
}

/// `sample`: one damage per file, chosen at random (the CI-sized drill), instead of all four.
pub fn run(
    tc: &Tc,
    backend: &mut dyn Backend,
    rounds: u32,
    sample: bool,
    rng: &mut Rng,
) -> Result<Outcome, String> {
    let started = Instant::now();
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    backend.fresh()?;
    for &(i, class) in &ENTRIES {
        let ws = tempfile::tempdir_in(scratch.path()).map_err(|e| e.to_string())?;
        tc.run_step(backend, ws.path(), i, class)?;
    }
    let pristine = scratch.path().join("pristine");
    backend.save(&pristine)?;
    let mut objects = backend.objects()?;
    let all_objects = objects.len();
    if sample && backend.name() != "local" {
        while objects.len() > SAMPLE_OBJECTS {
            objects.remove(usize::try_from(rng.range(0, objects.len() as u64)).unwrap_or(0));
        }
    }
    let mut out = Outcome::default();
    let (mut unchanged, mut refused, mut kept_damaged) = (0u32, 0u32, 0u32);
    for round in 0..rounds {
        for name in &objects {
            let all = [Damage::Flip, Damage::Truncate, Damage::Zero, Damage::Delete];
            let damages = if sample {
                vec![all[usize::try_from(rng.range(0, 4)).unwrap_or(0)]]
            } else {
                all.to_vec()
            };
            for damage in damages {
                backend.load(&pristine)?;
                let before = backend.read_object(name)?;
                let Some(after) = damaged(&before, damage, rng) else {
                    // Nothing to damage (an empty blob cannot be flipped or truncated).
                    unchanged += 1;
                    continue;
                };
                let what = format!("{name} {damage:?} (round {round})");
                out.trials += 1;
                let newer = name == LAYOUT && after.as_deref().is_some_and(reads_as_newer);
                let result = apply(backend, name, after.as_deref())
                    .and_then(|()| {
                        let bad = after.as_deref();
                        runs_then_repaired(tc, backend, scratch.path(), name, newer, bad)
                    })
                    .and_then(|kept| {
                        refused += u32::from(newer);
                        kept_damaged += u32::from(kept);
                        if !backend.verifies() {
                            return Ok(());
                        }
                        backend.load(&pristine)?;
                        apply(backend, name, after.as_deref())?;
                        verify_removes(tc, backend, name, damage, newer)
                    });
                if let Err(e) = result {
                    out.failures += 1;
                    eprintln!("drill corrupt: {what}: FAILURE: {e}");
                    keep_evidence(
                        backend,
                        &format!("corrupt-{}-{damage:?}-{round}", name.replace('/', "_")),
                    );
                }
            }
        }
    }
    let kept = if backend.repairs_damage() {
        String::new()
    } else {
        format!("; {kept_damaged} where the server kept the damaged blob and its entries missed")
    };
    let of = if objects.len() == all_objects {
        String::new()
    } else {
        format!(" (of {all_objects})")
    };
    let layout = if backend.name() == "local" {
        format!(
            "; {refused} where a damaged LAYOUT read as a newer version and was refused, saying so"
        )
    } else {
        String::new()
    };
    out.note = format!(
        "{} objects{of} x {} x {rounds} rounds ({unchanged} no-op damages skipped{layout}{kept})",
        objects.len(),
        if sample {
            "1 random damage"
        } else {
            "4 damages"
        }
    );
    out.time = started.elapsed();
    Ok(out)
}

/// The damaged bytes (`None` inside: delete), or `None` if the damage changes nothing.
#[allow(clippy::option_option)]
fn damaged(bytes: &[u8], damage: Damage, rng: &mut Rng) -> Option<Option<Vec<u8>>> {
    let len = bytes.len() as u64;
    let new = match damage {
        Damage::Delete => return Some(None),
        Damage::Flip if len > 0 => {
            let mut b = bytes.to_vec();
            let at = usize::try_from(rng.range(0, len)).unwrap_or(0);
            b[at] ^= 1 << rng.range(0, 8);
            b
        }
        Damage::Truncate if len > 0 => {
            bytes[..usize::try_from(rng.range(0, len)).unwrap_or(0)].to_vec()
        }
        Damage::Zero => vec![0; bytes.len()],
        _ => return None,
    };
    (new != bytes).then_some(Some(new))
}

fn apply(backend: &dyn Backend, name: &str, after: Option<&[u8]>) -> Result<(), String> {
    match after {
        Some(b) => backend.write_object(name, b),
        None => backend.delete_object(name),
    }
}

const LAYOUT: &str = "LAYOUT";

/// The layout version `bytes` declare, read as strictly as cache-local does (the one
/// line, its final newline optional).
fn layout_version(bytes: &[u8]) -> Option<u32> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| {
            s.strip_suffix('\n')
                .unwrap_or(s)
                .strip_prefix("taskcache-local-layout ")
        })
        .filter(|d| {
            let leading_zero = d.starts_with('0') && d.len() > 1;
            !d.is_empty() && !leading_zero && d.bytes().all(|b| b.is_ascii_digit())
        })
        .and_then(|d| d.parse::<u32>().ok())
}

/// Whether damaged `LAYOUT` bytes read as a newer layout version (a flip of the
/// version digit): a newer taskcache's cache, which is never rewritten.
fn reads_as_newer(bytes: &[u8]) -> bool {
    layout_version(bytes).is_some_and(|v| v > 1)
}

/// Whether `LAYOUT` bytes read as this layout version: written again, or damaged in a
/// way that leaves the line as it was (the final newline cut off).
fn reads_as_current(bytes: &[u8]) -> bool {
    layout_version(bytes) == Some(1)
}

/// Every entry run as a step (must give exactly its bytes), then every entry must hit
/// and a damaged `LAYOUT` must have been written again. When the damaged `LAYOUT`
/// reads as a newer version (`newer`), every run must instead say so and run the step
/// uncached, and `LAYOUT` must be left as it is. On a backend that does not repair
/// damage an entry may stay a miss only while `name` still holds the damaged bytes
/// `after`; returns whether one did.
fn runs_then_repaired(
    tc: &Tc,
    backend: &dyn Backend,
    scratch: &std::path::Path,
    name: &str,
    newer: bool,
    after: Option<&[u8]>,
) -> Result<bool, String> {
    let mut refused = 0;
    for &(i, class) in &ENTRIES {
        let ws = tempfile::tempdir_in(scratch).map_err(|e| e.to_string())?;
        let out = tc
            .run_cmd(backend, ws.path(), i, class)
            .output()
            .map_err(|e| format!("start taskcache: {e}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            if out.stdout != super::workload::stdout(i, class) {
                return Err(format!("entry {i}: wrong stdout"));
            }
            super::workload::check(ws.path(), i, class)?;
            if stderr.contains("cannot be opened") && stderr.contains("uncached") {
                if !stderr.contains("layout version") {
                    return Err(format!("entry {i}: the cache was refused: {stderr}"));
                }
                refused += 1;
            }
        } else {
            return Err(format!(
                "entry {i}: taskcache exited {} ({})",
                out.status,
                stderr.trim()
            ));
        }
    }
    if newer {
        return if refused == ENTRIES.len() {
            Ok(false)
        } else {
            Err(format!(
                "LAYOUT reads as a newer version, but only {refused} of {} runs said so",
                ENTRIES.len()
            ))
        };
    }
    if refused > 0 {
        return Err(format!("the cache was refused by {refused} runs"));
    }
    let mut kept = false;
    for &(i, class) in &ENTRIES {
        if tc.check_entry(backend, i, class)? != Checked::Hit {
            let still_damaged = after.is_some_and(|bytes| {
                backend
                    .read_object(name)
                    .is_ok_and(|now| now.as_slice() == bytes)
            });
            if backend.repairs_damage() || !still_damaged {
                return Err(format!(
                    "entry {i}: still a miss after a run stored it (not repaired)"
                ));
            }
            kept = true;
        }
    }
    if name == LAYOUT && !reads_as_current(&backend.read_object(LAYOUT)?) {
        return Err("LAYOUT was not written again".into());
    }
    Ok(kept)
}

/// `verify` on the damaged cache: the damaged object is gone (with what needed it),
/// every key is a miss or a correct hit, and a second `verify` finds nothing.
fn verify_removes(
    tc: &Tc,
    backend: &dyn Backend,
    name: &str,
    damage: Damage,
    newer: bool,
) -> Result<(), String> {
    if newer {
        // A newer version's cache: verify must say it could not check it (exit 3).
        return match tc.verify(backend) {
            Err(e) if e.contains("exit status: 3") && e.contains("layout version") => Ok(()),
            Err(e) => Err(format!("verify of a newer layout: {e}")),
            Ok(v) => Err(format!("verify checked a newer layout: {v:?}")),
        };
    }
    let v = tc.verify(backend)?;
    if name == LAYOUT && !reads_as_current(&backend.read_object(LAYOUT)?) {
        return Err("verify did not write LAYOUT again".into());
    }
    let gone = !backend.objects()?.iter().any(|o| o == name);
    match (name.split('/').next(), damage) {
        (Some("blobs"), Damage::Delete) if v.incomplete_entries == 0 => {
            return Err(format!(
                "verify kept the entries that need the deleted blob: {v:?}"
            ));
        }
        (Some("blobs"), Damage::Flip | Damage::Truncate | Damage::Zero)
            if v.corrupt_blobs == 0 || !gone =>
        {
            return Err(format!("verify did not remove the damaged blob: {v:?}"));
        }
        (Some("entries"), Damage::Flip | Damage::Truncate | Damage::Zero)
            if v.corrupt_entries == 0 || !gone =>
        {
            return Err(format!("verify did not remove the damaged entry: {v:?}"));
        }
        _ => {}
    }
    for &(i, class) in &ENTRIES {
        tc.check_entry(backend, i, class)?;
    }
    let again = tc.verify(backend)?;
    if again.removed_any() {
        return Err(format!("a second verify still found damage: {again:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD_LAYOUT: &[u8] = b"taskcache-local-layout 1\n";

    #[test]
    fn a_layout_line_without_its_newline_still_reads_as_this_version() {
        // A full drill once truncated LAYOUT by its final newline only: cache-local
        // rightly kept it, and the drill wrongly wanted it rewritten.
        assert!(reads_as_current(GOOD_LAYOUT));
        assert!(reads_as_current(&GOOD_LAYOUT[..GOOD_LAYOUT.len() - 1]));
        for damaged in [
            &GOOD_LAYOUT[..GOOD_LAYOUT.len() - 2],
            b"taskcache-local-layout 01\n".as_slice(),
            b"taskcache-local-layout 3\n".as_slice(),
            b"taskcache-local-layout 1\n\n".as_slice(),
            b"".as_slice(),
        ] {
            assert!(!reads_as_current(damaged), "{damaged:?}");
        }
        assert!(reads_as_newer(b"taskcache-local-layout 3\n"));
        assert!(!reads_as_newer(b"taskcache-local-layout 03\n"));
    }
}
