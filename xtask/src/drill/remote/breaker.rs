//! The breaker, seen from `taskcache run`: while the server is frozen or down, a run
//! costs at most one deadline (the first call that meets the silent server trips the
//! breaker, and the run skips the server from then on), not one per call; once the
//! server is back, the next run stores into it and hits from it again.

use super::{Ctx, MARGIN, TIMEOUT};
use crate::drill::Outcome;
use crate::drill::workload::Class;
use std::time::Duration;

/// `--cache-timeout` while the server is frozen or down: long enough beside
/// [`MARGIN`] that two deadlines (10 s) cannot pass for one (5 s + 3 s).
const LONG: Duration = Duration::from_secs(5);

/// Runs while the server is frozen, then down; each is a trial.
pub fn run(ctx: &mut Ctx) -> Result<Outcome, String> {
    let mut out = Outcome::default();
    let kind = ctx.server.kind.as_str();
    let mut notes = Vec::new();
    for (what, freeze) in [("frozen", true), ("down", false)] {
        if freeze {
            ctx.server.freeze();
        } else {
            ctx.server.kill();
        }
        let mut walls = Vec::new();
        ctx.timeout = LONG;
        for _ in 0..2 {
            out.trials += 1;
            let i = ctx.new_entry();
            match ctx.step(i, Class::Small, &format!("server {what}")) {
                Ok(ran) => {
                    let over = ran.wall.saturating_sub(ctx.undisturbed(Class::Small));
                    walls.push(format!("{:.1}s", ran.wall.as_secs_f64()));
                    if ran.failed_calls() > 1 || over > LONG + MARGIN {
                        out.failures += 1;
                        eprintln!(
                            "drill remote: {kind}: breaker: FAILURE: a run with the server \
                             {what} took {:.1?} ({} calls to it failed), more than one \
                             deadline ({LONG:?}, +{MARGIN:?} margin): {}",
                            ran.wall,
                            ran.failed_calls(),
                            ran.stderr.trim()
                        );
                    }
                }
                Err(e) => {
                    out.failures += 1;
                    eprintln!("drill remote: {kind}: breaker: FAILURE: {e}");
                }
            }
        }
        ctx.timeout = TIMEOUT;
        if freeze {
            ctx.server.thaw();
        } else {
            ctx.server.start()?;
        }
        // Back: a run stores through it, and the server alone serves it.
        out.trials += 1;
        let i = ctx.new_entry();
        let recovered = ctx
            .step(i, Class::Small, &format!("after the server was {what}"))
            .and_then(|_| ctx.check(i, Class::Small));
        match recovered {
            Ok(true) => {}
            Ok(false) => {
                out.failures += 1;
                eprintln!(
                    "drill remote: {kind}: breaker: FAILURE: after the server was {what}, \
                     a run did not store into it"
                );
            }
            Err(e) => {
                out.failures += 1;
                eprintln!("drill remote: {kind}: breaker: FAILURE: {e}");
            }
        }
        notes.push(format!("{what}: runs took {}", walls.join(", ")));
    }
    out.note = format!("breaker: {}", notes.join("; "));
    Ok(out)
}
