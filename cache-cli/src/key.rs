//! The task digest `taskcache run` and `taskcache key` compute.
//!
//! The CLI describes a run as a [`cache_core::Task`] ([`TaskSpec::to_task`]) and keys
//! it with [`cache_core::TaskKeyBuilder::from_task`], adding nothing: the same task
//! gets the same key from the library and from the command (the rule is in
//! `cache_core`'s `key` module docs, and `tests/cli.rs` checks it against the binary).
//! The key covers:
//!
//! * the command and its arguments, in order, exactly as given (no shell: `shell` is
//!   false; a `sh -c '...'` command has its script as an argument);
//! * each `-e NAME` that is set: the name and the variable's current value (an unset
//!   variable is absent, which is distinct from empty); no other variable joins the key;
//! * each `-i GLOB`: the pattern and the contents and executable bits of the files it
//!   matches; a symlink with its text and its target (a file's content, or a directory
//!   inside the workspace walked under the link's path); a FIFO, socket or device by its
//!   kind only, never opened;
//! * each `-o PATH`: the output's normalized name (its content is what is cached);
//! * `--allow-absolute-symlinks`, when given (such a task has keys of its own);
//! * the key format version and the platform (operating system and CPU architecture),
//!   which the library adds by default: a shared remote never hands a Linux binary to
//!   a macOS job.
//!
//! Arguments and values that are not UTF-8 join the key as `"\0"` followed by the hex
//! of their bytes: a real argument or variable can never contain a NUL byte, so the two
//! forms cannot collide.

use cache_core::{
    BackendResult, Digest, DigestAlgorithm, InputFile, KEY_FORMAT_VERSION, OutputType, RelPath,
    Task, TaskKeyBuilder, TaskOutput,
};
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::path::Path;

/// What a task is, as far as the key is concerned.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// Command and arguments.
    pub command: Vec<OsString>,
    /// Declared environment variable names.
    pub env: Vec<String>,
    /// Input globs.
    pub inputs: Vec<String>,
    /// Declared outputs.
    pub outputs: Vec<RelPath>,
    /// Symlink outputs may have absolute targets (`--allow-absolute-symlinks`).
    pub absolute_symlinks: bool,
}

impl TaskSpec {
    /// The task as `cache-core` describes it, with variables read through `var`:
    /// arguments and values in their key form ([`key_text`]), declared variables that
    /// are set, inputs, outputs. Its id does not join the key.
    pub fn to_task(&self, id: &str, var: impl Fn(&str) -> Option<OsString>) -> Task {
        let mut task = Task::new(id, self.command.iter().map(|a| key_text(a)));
        task.shell = false;
        task.env = self
            .env
            .iter()
            .filter_map(|n| var(n).map(|v| (n.clone(), key_text(&v))))
            .collect();
        task.inputs.clone_from(&self.inputs);
        task.outputs = self
            .outputs
            .iter()
            .map(|o| TaskOutput {
                path: o.to_string(),
                kind: OutputType::Cas,
            })
            .collect();
        task.allow_absolute_symlinks = self.absolute_symlinks;
        task
    }
}

/// An argument or value as it joins the key (see the module docs).
pub fn key_text(s: &OsStr) -> String {
    if let Some(utf8) = s.to_str() {
        return utf8.to_owned();
    }
    let mut out = String::from("\0");
    for b in os_bytes(s) {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(unix)]
fn os_bytes(s: &OsStr) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    s.as_bytes().to_vec()
}

#[cfg(not(unix))]
fn os_bytes(s: &OsStr) -> Vec<u8> {
    s.to_string_lossy().into_owned().into_bytes()
}

/// The library's key builder for `spec`, with variables read through `var`:
/// [`TaskKeyBuilder::from_task`] of [`TaskSpec::to_task`], nothing added.
pub fn key_builder(spec: &TaskSpec, var: impl Fn(&str) -> Option<OsString>) -> TaskKeyBuilder {
    TaskKeyBuilder::from_task(&spec.to_task("", var), DigestAlgorithm::Blake3)
}

/// Computes the task digest, reading inputs under `workspace` and variables through
/// `var` (blocking). Also returns the input files that joined the key, by path.
pub fn task_key(
    spec: &TaskSpec,
    workspace: &Path,
    var: impl Fn(&str) -> Option<OsString>,
) -> BackendResult<(Digest, BTreeMap<String, InputFile>)> {
    key_builder(spec, var).build_with_inputs(workspace)
}

/// The key's format version and platform, for people (`key --explain`, manifests):
/// `taskcache-key/2, platform linux/x86_64`.
pub fn format_and_platform(builder: &TaskKeyBuilder) -> String {
    let platform = builder
        .key_platform()
        .map_or_else(|| "none (portable)".to_owned(), ToString::to_string);
    format!("taskcache-key/{KEY_FORMAT_VERSION}, platform {platform}")
}

/// The first input file that is also a declared output (or lies inside one). Such a
/// key changes whenever the output does, so the task would rarely hit.
pub fn input_inside_output<'a>(
    inputs: &'a BTreeMap<String, InputFile>,
    outputs: &'a [RelPath],
) -> Option<(&'a str, &'a RelPath)> {
    inputs.keys().find_map(|path| {
        outputs
            .iter()
            .find(|o| {
                path == o.as_str()
                    || path
                        .strip_prefix(o.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
            .map(|o| (path.as_str(), o))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn spec() -> TaskSpec {
        TaskSpec {
            command: vec!["cc".into(), "-O2".into(), "main.c".into()],
            env: vec!["CC".into()],
            inputs: vec!["*.c".into()],
            outputs: vec![RelPath::parse("a.out").unwrap()],
            absolute_symlinks: false,
        }
    }

    fn key_with(spec: &TaskSpec, dir: &Path, vars: &[(&str, &str)]) -> String {
        let m: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(*v)))
            .collect();
        task_key(spec, dir, |k| m.get(k).cloned())
            .unwrap()
            .0
            .to_string()
    }

    #[test]
    fn every_declared_part_changes_the_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("main.c"), "int main(){}").unwrap();
        let base = key_with(&spec(), dir.path(), &[("CC", "gcc")]);
        assert!(base.starts_with("blake3:"));
        assert_eq!(base, key_with(&spec(), dir.path(), &[("CC", "gcc")]));
        // Undeclared variables do not matter.
        assert_eq!(
            base,
            key_with(
                &spec(),
                dir.path(),
                &[("CC", "gcc"), ("HOME", "/elsewhere")]
            )
        );
        let mut keys = vec![base.clone()];
        keys.push(key_with(&spec(), dir.path(), &[("CC", "clang")]));
        keys.push(key_with(&spec(), dir.path(), &[("CC", "")]));
        keys.push(key_with(&spec(), dir.path(), &[]));
        let mut s = spec();
        s.command.push("-g".into());
        keys.push(key_with(&s, dir.path(), &[("CC", "gcc")]));
        let mut s = spec();
        s.outputs.push(RelPath::parse("b.out").unwrap());
        keys.push(key_with(&s, dir.path(), &[("CC", "gcc")]));
        std::fs::write(dir.path().join("main.c"), "int main(){ }").unwrap();
        keys.push(key_with(&spec(), dir.path(), &[("CC", "gcc")]));
        let unique: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len(), "{keys:#?}");
    }

    #[test]
    fn inputs_inside_outputs_are_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dist/js")).unwrap();
        std::fs::write(dir.path().join("dist/js/app.js"), "x").unwrap();
        std::fs::write(dir.path().join("distribution.txt"), "x").unwrap();
        let spec = |inputs: &[&str], outputs: &[&str]| TaskSpec {
            command: vec!["build".into()],
            env: Vec::new(),
            inputs: inputs.iter().map(|s| (*s).to_owned()).collect(),
            outputs: outputs.iter().map(|o| RelPath::parse(o).unwrap()).collect(),
            absolute_symlinks: false,
        };
        let check = |s: &TaskSpec| {
            let (_, inputs) = task_key(s, dir.path(), |_| None).unwrap();
            input_inside_output(&inputs, &s.outputs).map(|(i, o)| (i.to_owned(), o.to_string()))
        };
        assert_eq!(
            check(&spec(&["**/*"], &["dist"])),
            Some(("dist/js/app.js".to_owned(), "dist".to_owned()))
        );
        assert_eq!(
            check(&spec(&["distribution.txt"], &["distribution.txt"])),
            Some(("distribution.txt".to_owned(), "distribution.txt".to_owned()))
        );
        assert_eq!(check(&spec(&["distribution.txt"], &["dist"])), None);
    }

    /// One description, one key: the library's `from_task` over the CLI's task, with
    /// nothing added, is the CLI's key.
    #[test]
    fn the_key_is_the_librarys_key_of_the_same_task() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("main.c"), "int main(){}").unwrap();
        let var = |k: &str| (k == "CC").then(|| OsString::from("gcc"));
        let task = spec().to_task("any id", var);
        assert_eq!(task.env.get("CC").map(String::as_str), Some("gcc"));
        let library = TaskKeyBuilder::from_task(&task, DigestAlgorithm::Blake3)
            .build(dir.path())
            .unwrap();
        assert_eq!(task_key(&spec(), dir.path(), var).unwrap().0, library);
    }

    #[test]
    fn unmatched_input_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(task_key(&spec(), dir.path(), |_| None).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_values_are_distinct() {
        use std::os::unix::ffi::OsStrExt;
        let a = key_text(OsStr::from_bytes(b"\xff"));
        let b = key_text(OsStr::from_bytes(b"\xfe"));
        assert_ne!(a, b);
        assert_eq!(a, "\0ff");
        assert_ne!(key_text(OsStr::new("ff")), a);
    }

    #[test]
    fn the_format_line_names_the_version_and_platform() {
        let line = format_and_platform(&key_builder(&spec(), |_| None));
        assert!(line.starts_with(&format!("taskcache-key/{KEY_FORMAT_VERSION}, ")));
        assert!(line.ends_with(&format!(" {}", cache_core::Platform::current())));
        let portable = format_and_platform(&key_builder(&spec(), |_| None).portable());
        assert!(portable.ends_with("none (portable)"), "{portable}");
    }
}
