//! The executable bit: the one file mode taskcache keeps. A file is executable if any
//! execute bit is set; a restored file gets exactly 0755 or 0644, so a cache hit gives
//! the same modes on every machine whatever its umask. Elsewhere than Unix there are
//! no modes: nothing is executable and nothing is set.

use std::fs::{Metadata, Permissions};

/// The mode a restored file gets.
#[must_use]
pub fn restored_mode(executable: bool) -> u32 {
    if executable { 0o755 } else { 0o644 }
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
