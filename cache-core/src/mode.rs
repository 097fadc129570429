//! The executable bit: the one file mode taskcache keeps. A file is executable if any
//! execute bit is set; a restored file gets 0755 or 0644 narrowed by the process umask
//! (read once, when first needed), so a hit is never more widely readable than the
//! files the command itself would have made: under `umask 077`, 0700 and 0600.
//! Elsewhere than Unix there are no modes: nothing is executable and nothing is set.

use std::fs::{Metadata, Permissions};

/// The mode a restored file gets: 0755 or 0644, less the bits the process umask
/// clears.
#[must_use]
pub fn restored_mode(executable: bool) -> u32 {
    let full = if executable { 0o755 } else { 0o644 };
    full & !process_umask()
}

/// The process umask, read once. Linux tells it without changing it
/// (`/proc/self/status`); elsewhere it is read by setting it, which briefly leaves
/// every bit masked (never wider than asked) for files other threads create meanwhile.
#[cfg(unix)]
#[must_use]
pub fn process_umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        umask_from_status().unwrap_or_else(|| {
            use rustix::fs::Mode;
            let old = rustix::process::umask(Mode::from_raw_mode(0o777));
            rustix::process::umask(old);
            old.as_raw_mode() & 0o777
        })
    })
}

/// No umask without Unix modes.
#[cfg(not(unix))]
#[must_use]
pub fn process_umask() -> u32 {
    0
}

#[cfg(unix)]
fn umask_from_status() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(value.trim(), 8).ok().map(|m| m & 0o777)
}

/// Whether a file counts as executable (any execute bit set).
#[cfg(unix)]
#[must_use]
pub fn is_executable(meta: &Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

/// Whether a file counts as executable (never, without Unix modes).
#[cfg(not(unix))]
#[must_use]
pub fn is_executable(_meta: &Metadata) -> bool {
    false
}

/// The permissions of a restored file, `None` where there are no modes.
#[cfg(unix)]
#[must_use]
pub fn restored_permissions(executable: bool) -> Option<Permissions> {
    use std::os::unix::fs::PermissionsExt;
    Some(Permissions::from_mode(restored_mode(executable)))
}

/// The permissions of a restored file, `None` where there are no modes.
#[cfg(not(unix))]
#[must_use]
pub fn restored_permissions(_executable: bool) -> Option<Permissions> {
    None
}
