//! `drill corrupt`: a cache holding a few entries (small files, a log blob, a 20 MiB
//! file) has each of its files in turn flipped in one byte, truncated, zeroed or
//! deleted (entries, blobs, `LAYOUT`, the statistics log). Then, on one copy:
//!
//! * every `taskcache run` of every entry exits 0 with exactly the entry's bytes and
//!   stdout (a miss runs the step; a hit restores it; a wrong byte never lands), or
//!   fails with a clear error (a message, exit 2, nothing written);
//! * afterwards every entry hits again (the runs' stores repaired the cache), unless
//!   the cache refused to open at all (then it must say so, and so must every run).
//!
//! And on another copy `taskcache verify` must remove the damaged blob or entry (and
//! the entries that needed a deleted blob), after which every key is a miss or a
//! byte-identical hit and a second `verify` finds nothing.
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

/// What the runs after a damage found.
enum Ran {
    /// Every key hits again: the runs' stores repaired the cache.
    Repaired,
    /// The cache refused to open, saying why (a damaged `LAYOUT`).
    Refused,
    /// The server kept the damaged blob (it cannot be replaced), and the keys that need
    /// it stayed misses.
    KeptDamaged,
}

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
                let result = apply(backend, name, after.as_deref())
                    .and_then(|()| {
                        runs_then_repaired(tc, backend, scratch.path(), name, after.as_deref())
                    })
                    .and_then(|r| {
                        match r {
                            Ran::Refused => refused += 1,
                            Ran::KeptDamaged => kept_damaged += 1,
                            Ran::Repaired => {}
                        }
                        if !backend.verifies() {
                            return Ok(());
                        }
                        backend.load(&pristine)?;
                        apply(backend, name, after.as_deref())?;
                        verify_removes(tc, backend, name, damage)
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
    out.note = format!(
        "{} objects{of} x {} x {rounds} rounds ({unchanged} no-op damages skipped; \
         {refused} where the cache refused to open, saying why{kept})",
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

/// Every entry run as a step (must give exactly its bytes, or fail clearly), then
/// every entry must hit; on a backend that does not repair damage, an entry may stay a
/// miss only while the damaged object `name` still holds the damaged bytes `after`.
/// Says whether the cache refused to open (clearly): with its
/// `LAYOUT` damaged a directory is no longer known to be a cache, so it is never
/// taken over or rewritten; every run must then say so, as a warning while the step
/// runs uncached, or (with `LAYOUT` gone from a non-empty directory) as a usage error.
fn runs_then_repaired(
    tc: &Tc,
    backend: &dyn Backend,
    scratch: &std::path::Path,
    name: &str,
    after: Option<&[u8]>,
) -> Result<Ran, String> {
    let mut refused = 0;
    for &(i, class) in &ENTRIES {
        let ws = tempfile::tempdir_in(scratch).map_err(|e| e.to_string())?;
        let out = tc
            .run_cmd(backend, ws.path(), i, class)
            .output()
            .map_err(|e| format!("start taskcache: {e}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            if out.stdout != super::workload::stdout(i) {
                return Err(format!("entry {i}: wrong stdout"));
            }
            super::workload::check(ws.path(), i, class)?;
            if stderr.contains("cannot be opened") && stderr.contains("uncached") {
                refused += 1;
            }
        } else if out.status.code() == Some(2)
            && stderr.contains("not a taskcache cache")
            && out.stdout.is_empty()
        {
            // A usage error that names the problem, before anything ran.
            if ws.path().join("out").exists() {
                return Err(format!("entry {i}: refused, but wrote outputs: {stderr}"));
            }
            refused += 1;
        } else {
            return Err(format!(
                "entry {i}: taskcache exited {} ({})",
                out.status,
                stderr.trim()
            ));
        }
    }
    if refused == ENTRIES.len() {
        return Ok(Ran::Refused);
    }
    if refused > 0 {
        return Err(format!(
            "the cache was refused by {refused} of {} runs only",
            ENTRIES.len()
        ));
    }
    let mut ran = Ran::Repaired;
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
            ran = Ran::KeptDamaged;
        }
    }
    Ok(ran)
}

/// `verify` on the damaged cache: the damaged object is gone (with what needed it),
/// every key is a miss or a correct hit, and a second `verify` finds nothing.
fn verify_removes(
    tc: &Tc,
    backend: &dyn Backend,
    name: &str,
    damage: Damage,
) -> Result<(), String> {
    let refusable = !(name.starts_with("blobs/") || name.starts_with("entries/"));
    let v = match tc.verify(backend) {
        Ok(v) => v,
        Err(e) if refusable => {
            // LAYOUT damaged: verify must refuse clearly, not guess.
            return if e.contains("LAYOUT") || e.contains("layout") {
                Ok(())
            } else {
                Err(format!("verify failed without naming the layout: {e}"))
            };
        }
        Err(e) => return Err(e),
    };
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
