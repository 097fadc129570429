//! The command line, as clap parses it. Flag names are the contract of issue 5.

use crate::location::RawLocation;
use cache_core::{CachePolicy, RelPath};
use clap::{ArgAction, Args, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;

const AFTER_HELP: &str = "\
Environment:
  TASKCACHE_CACHE           default for --cache
  TASKCACHE_REMOTE          default for --remote
  TASKCACHE_REMOTE_HEADERS  headers for a grpc(s):// remote, NAME:VALUE,... (secret)
  TASKCACHE_REMOTE_CA       PEM file of the CA a grpcs:// remote's certificate chains to
  TASKCACHE_REMOTE_CERT     client certificate (PEM file) for mutual TLS
  TASKCACHE_REMOTE_KEY      client private key (PEM file) for mutual TLS
  TASKCACHE_REMOTE_TIMEOUT  per-call deadline of a grpc(s):// remote, seconds (default: --cache-timeout)
  TASKCACHE_POLICY          default for --policy
  TASKCACHE_CACHE_TIMEOUT   default for --cache-timeout
  TASKCACHE_LOG             tracing filter for diagnostics, e.g. debug
  TASKCACHE_TOUCH_INTERVAL  object stores: rewrite an entry's used/ marker at most this
                            often (default and longest 1d; shorter for tests and drills)
  TASKCACHE_SIGNING_KEY     sign what is stored (a secret; see `taskcache keygen`)
  TASKCACHE_TRUSTED_KEYS    use only entries signed by these public keys
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION,
  AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, AWS_ALLOW_HTTP
                            s3:// credentials and endpoint, as the AWS tools read them
                            (an endpoint is http(s)://host[:port] alone, no credentials)
  AWS_EC2_METADATA_DISABLED=true  never ask the instance metadata service for credentials
Never passed to the command (its output is stored and shared): TASKCACHE_SIGNING_KEY,
TASKCACHE_REMOTE_HEADERS, TASKCACHE_REMOTE_KEY. Everything else is, AWS_* included.

Exit codes: the command's own (128+N if killed by signal N); on a hit, the cached one.
2 for bad usage; 126/127 when the command cannot be started.";

const KEY_AFTER_HELP: &str = "\
`key` takes the same flags as `run`, so one command line serves both. Only -i, -o, -e
and -C change the key; --id (and --cache, where the id's manifest is) change what
--explain and -v say about it. It never runs the command and never writes to the cache.";

/// taskcache: put any CI step behind a cache of its outputs and logs.
#[derive(Debug, Parser)]
#[command(name = "taskcache", version, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    /// Say more on stderr (also accepted after the subcommand, whose --help says what
    /// -v and -vv show there).
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run COMMAND through the cache: on a hit restore its outputs and replay its logs
    /// and exit code without running it; on a miss run it and store the result.
    #[command(
        after_help = AFTER_HELP,
        override_usage = "taskcache run [OPTIONS] -- <COMMAND>..."
    )]
    Run(RunArgs),
    /// Print the task digest (the cache key); with --explain, everything that went into it.
    #[command(
        after_help = KEY_AFTER_HELP,
        override_usage = "taskcache key [OPTIONS] [--explain] -- <COMMAND>..."
    )]
    Key(KeyArgs),
    /// Show entries, blobs, bytes, hits and misses of the local cache (of an object
    /// store: entries, blobs, packs and bytes, by listing within --cache-timeout; exit 3 when
    /// the listing stopped early and the counts are partial).
    #[command(override_usage = "taskcache stats [OPTIONS] [--json]")]
    Stats(StatsArgs),
    /// Evict least recently used entries until the local cache is under --max-size. On
    /// an object store (s3://, gs://, az://): remove entries not used for --unused-for
    /// (and, with --max-size, least recently used ones until the rest fits), then the
    /// packs and blobs no entry references; exit 3 if it stopped early (nothing was
    /// swept).
    // The usage is spelled out: clap's own lists an option set from the environment
    // (TASKCACHE_CACHE) as if it were required.
    #[command(
        override_usage = "taskcache gc [OPTIONS] --max-size <SIZE>\n       taskcache gc --cache <s3://...> --unused-for <DURATION> [--max-size <SIZE>] [OPTIONS]"
    )]
    Gc(GcArgs),
    /// Re-hash every stored blob and check every entry; report and remove corrupt ones.
    /// Exit 0: nothing was wrong; 1: damage was found and removed; 2: bad usage (no
    /// cache there); 3: the cache could not be checked (unreadable, or not this
    /// version's): nothing was removed.
    #[command(override_usage = "taskcache verify [OPTIONS]")]
    Verify(VerifyArgs),
    /// Make a key pair for signed entries: the signing key (a secret, for trusted
    /// writers such as main-branch CI) and the public key every reader trusts.
    Keygen,
}

impl Cli {
    /// How many `-v` were given, before and after the subcommand.
    pub fn verbosity(&self) -> u8 {
        let sub = match &self.command {
            Command::Run(a) => a.verbose,
            Command::Key(a) => a.verbose,
            Command::Stats(a) => a.verbose,
            Command::Gc(a) => a.verbose,
            Command::Verify(a) => a.verbose,
            Command::Keygen => 0,
        };
        self.verbose.saturating_add(sub)
    }
}

/// Where the (local) cache is.
#[derive(Debug, Args)]
pub struct CacheArgs {
    /// Where the cache lives: a directory or file:// URL, or an object store
    /// (s3://bucket/prefix, gs://, az://) [default: $TASKCACHE_CACHE, else
    /// $XDG_CACHE_HOME/taskcache, else ~/.cache/taskcache].
    #[arg(
        long,
        value_name = "URL|PATH",
        env = "TASKCACHE_CACHE",
        hide_env_values = true,
        value_parser = RawLocation::from_arg
    )]
    pub cache: Option<RawLocation>,
}

/// `taskcache run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The task.
    #[command(flatten)]
    pub task: TaskArgs,
    /// -v: one line on stderr saying whether it was a hit (and the time saved) or a miss
    /// (and whether the result was stored), plus which inputs changed since the last
    /// entry stored under --id; -vv: also everything that went into the key (input
    /// digests, variable names, arguments) and debug logs.
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,
}

/// `taskcache key`.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// The task.
    #[command(flatten)]
    pub task: TaskArgs,
    /// Print everything that went into the key instead of the key alone: every input
    /// file with its digest, the names (never the values) of the declared variables,
    /// the arguments, outputs, key format and platform (OS, CPU), then the key; with
    /// --id, also what changed since the last entry stored under that id.
    #[arg(long)]
    pub explain: bool,
    /// -v: on stderr, which inputs changed since the last entry stored under --id;
    /// -vv: also debug logs (and everything that went into the key).
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,
}

/// How long a housekeeping command may wait for an object store.
#[derive(Debug, Args)]
pub struct AdminTimeout {
    /// Longest this command may wait for an object store, over all its requests: stats
    /// on s3://, gs:// or az:// lists within it, and if the listing is not done by then
    /// prints the counts it reached, says they are partial and exits 3; gc on one does
    /// all its listings, reads and deletions within it, and stops before deleting any
    /// pack or blob when it runs out (exit 3). A local cache directory is not bounded by
    /// it. E.g. 30s, 5m.
    #[arg(
        long,
        value_name = "DURATION",
        env = "TASKCACHE_CACHE_TIMEOUT",
        hide_env_values = true,
        default_value = "10s",
        value_parser = parse_duration
    )]
    pub cache_timeout: std::time::Duration,
}

/// `taskcache verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The cache.
    #[command(flatten)]
    pub cache: CacheArgs,
    /// The object store deadline.
    #[command(flatten)]
    pub timeout: AdminTimeout,
    /// -v: notes of the local cache on stderr (stale temporary files of crashed writers
    /// it removed); -vv: debug logs.
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,
}

/// `taskcache stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The cache.
    #[command(flatten)]
    pub cache: CacheArgs,
    /// The object store deadline.
    #[command(flatten)]
    pub timeout: AdminTimeout,
    /// -vv: debug logs on stderr (-v adds nothing here: the statistics are the output).
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `taskcache gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// The cache.
    #[command(flatten)]
    pub cache: CacheArgs,
    /// The object store deadline.
    #[command(flatten)]
    pub timeout: AdminTimeout,
    /// -v: notes of the local cache on stderr (what GC removed, stale temporary files of
    /// crashed writers); -vv: debug logs.
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,
    /// Target size, e.g. 10GiB, 500MB, or a number of bytes. Required for a local cache;
    /// optional on an object store (least recently used entries go until the rest fits).
    #[arg(long, value_name = "SIZE", value_parser = crate::size::parse_size)]
    pub max_size: Option<u64>,
    /// Object stores only (required there): remove entries neither stored nor restored
    /// for this long, e.g. 7d (a restore is recorded at most once a day per entry).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub unused_for: Option<std::time::Duration>,
    /// Blobs written or reused within this long are kept even past the size limit: a
    /// store running at the same time may be about to publish the entry that needs
    /// them. `0` when no other writer can be running. E.g. 10m, 90s, 1h.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub grace: std::time::Duration,
}

/// `500ms`, `90s`, `10m`, `1h`, `7d`, or a number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; write e.g. 0, 90s, 10m or 1h"))?;
    let secs = match unit {
        "ms" => return Ok(std::time::Duration::from_millis(n)),
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => {
            return Err(format!(
                "{s:?}: the unit must be ms, s, m, h or d (e.g. 10m)"
            ));
        }
    };
    Ok(std::time::Duration::from_secs(secs))
}

/// Everything that describes a task (`run` and `key`).
#[derive(Debug, Args)]
pub struct TaskArgs {
    /// Input glob, relative to the workspace; the contents of matching files join the key (repeatable).
    #[arg(short = 'i', long = "input", value_name = "GLOB")]
    pub inputs: Vec<String>,

    /// File or directory (relative to the workspace) to cache and restore (repeatable). On a
    /// hit every cached file replaces what is there; files in a directory output that are
    /// not in the cache are left alone.
    #[arg(short = 'o', long = "output", value_name = "PATH", value_parser = parse_output)]
    pub outputs: Vec<RelPath>,

    /// Cache symlink outputs whose target is an absolute path (a Python .venv), as link
    /// text, never followed. Without it such a link is an error; with it the task has
    /// keys of its own.
    #[arg(long)]
    pub allow_absolute_symlinks: bool,

    /// Environment variable whose value joins the key (repeatable); other variables do not.
    #[arg(short = 'e', long = "env", value_name = "NAME", value_parser = parse_env_name)]
    pub env: Vec<String>,

    /// The cache.
    #[command(flatten)]
    pub cache: CacheArgs,

    /// A shared tier behind the local one: a directory or file:// URL, an object store
    /// (s3://bucket/prefix, gs://bucket/prefix, az://container/prefix), or a Bazel Remote
    /// Execution API v2 cache as grpc://host:port/instance or grpcs://host:port/instance
    /// (the port and instance are optional).
    #[arg(
        long,
        value_name = "URL",
        env = "TASKCACHE_REMOTE",
        hide_env_values = true,
        value_parser = RawLocation::from_arg
    )]
    pub remote: Option<RawLocation>,

    /// Header sent to a grpc(s):// remote, e.g. "authorization: Bearer TOKEN" (repeatable;
    /// the value is a secret and never shown).
    #[arg(long = "remote-header", value_name = "NAME:VALUE", value_parser = SecretArg::from_arg)]
    pub remote_headers: Vec<SecretArg>,

    /// normal | readonly | writeonly | disabled.
    #[arg(
        long,
        value_name = "P",
        env = "TASKCACHE_POLICY",
        hide_env_values = true,
        default_value = "normal",
        value_parser = parse_policy
    )]
    pub policy: CachePolicy,

    /// Longest a cache call may take before the command runs uncached: lookups get this
    /// long, transfers this long plus 1 s per 8 MiB. E.g. 500ms, 10s, 1m.
    #[arg(
        long,
        value_name = "DURATION",
        env = "TASKCACHE_CACHE_TIMEOUT",
        hide_env_values = true,
        default_value = "10s",
        value_parser = parse_duration
    )]
    pub cache_timeout: std::time::Duration,

    /// The workspace: inputs and outputs are relative to it, and the command runs in it
    /// [default: the current directory].
    #[arg(short = 'C', long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,

    /// Task name for logs [default: the command line]. With --id, a stored run also
    /// keeps a small manifest of its key's inputs, so a later miss can say what changed.
    #[arg(long, value_name = "NAME")]
    pub id: Option<String>,

    /// Also cache non-zero exits (default: only exit 0 is stored). A command killed by a
    /// signal is never stored.
    #[arg(long)]
    pub cache_failures: bool,

    /// Largest stdout or stderr captured for the cache; a run that prints more is not cached.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = crate::size::parse_size, hide = true)]
    pub max_log_size: u64,

    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// A flag value that is a secret: its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretArg(pub String);

impl SecretArg {
    /// For clap: takes any value (a refusal would make clap echo it).
    #[allow(clippy::unnecessary_wraps)]
    pub fn from_arg(raw: &str) -> Result<SecretArg, std::convert::Infallible> {
        Ok(SecretArg(raw.to_owned()))
    }
}

impl std::fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The header name is not secret; its value is.
        let name = self.0.split_once(':').map_or("?", |(n, _)| n.trim());
        write!(f, "SecretArg({name}:***)")
    }
}

fn parse_output(raw: &str) -> Result<RelPath, String> {
    RelPath::parse(raw).map_err(|e| e.to_string())
}

fn parse_env_name(raw: &str) -> Result<String, String> {
    if raw.is_empty() {
        return Err("give a variable name, e.g. -e CC".into());
    }
    if raw.contains('=') {
        return Err(format!(
            "give the variable name only (-e {}); its current value is read from the environment",
            raw.split('=').next().unwrap_or_default()
        ));
    }
    if raw.contains('\0') {
        return Err("a variable name cannot contain a NUL byte".into());
    }
    Ok(raw.to_owned())
}

fn parse_policy(raw: &str) -> Result<CachePolicy, String> {
    raw.parse()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("taskcache").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// `--help` and the README list exactly the variables the runner withholds.
    #[test]
    fn the_docs_name_every_variable_withheld_from_the_command() {
        let readme = include_str!("../../README.md");
        for (name, text, marker) in [
            ("--help", AFTER_HELP, "Never passed to the command"),
            ("README.md", readme, "never passed to the command"),
        ] {
            let said = text
                .split("\n\n")
                .find(|p| p.contains(marker))
                .unwrap_or_else(|| panic!("{name} does not say what is never passed on"));
            // The sentence from the marker on.
            let said = said.split_once(marker).unwrap().1;
            let said = said.split_once(". ").map_or(said, |s| s.0);
            let named: Vec<&str> = said
                .split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                .filter(|w| w.starts_with("TASKCACHE_"))
                .collect();
            let mut expected = crate::backend::SECRET_VARS.to_vec();
            expected.sort_unstable();
            let mut named = named;
            named.sort_unstable();
            named.dedup();
            assert_eq!(named, expected, "{name}: {said}");
        }
    }

    #[test]
    fn run_with_everything() {
        let cli = parse(&[
            "run",
            "-v",
            "-i",
            "src/**/*.rs",
            "--input",
            "Cargo.lock",
            "-o",
            "./dist/",
            "-e",
            "CC",
            "--cache",
            "/tmp/c",
            "--remote",
            "file:///tmp/r",
            "--policy",
            "readonly",
            "-C",
            "ws",
            "--id",
            "build",
            "--cache-failures",
            "--",
            "make",
            "-j",
            "4",
        ])
        .unwrap();
        assert_eq!(cli.verbosity(), 1);
        let Command::Run(RunArgs { task: t, .. }) = cli.command else {
            panic!("not run")
        };
        assert_eq!(t.inputs, ["src/**/*.rs", "Cargo.lock"]);
        assert_eq!(t.outputs[0].as_str(), "dist");
        assert_eq!(t.env, ["CC"]);
        assert_eq!(
            t.cache.cache.as_ref().map(RawLocation::as_str),
            Some("/tmp/c")
        );
        assert_eq!(
            t.remote.as_ref().map(RawLocation::as_str),
            Some("file:///tmp/r")
        );
        assert_eq!(t.policy, CachePolicy::Readonly);
        assert_eq!(t.workspace, Some(PathBuf::from("ws")));
        assert_eq!(t.id.as_deref(), Some("build"));
        assert!(t.cache_failures);
        assert_eq!(t.max_log_size, 64 << 20);
        assert_eq!(t.command, ["make", "-j", "4"]);
    }

    #[test]
    fn flags_after_dashdash_belong_to_the_command() {
        let cli = parse(&["key", "--", "ls", "-o", "--policy"]).unwrap();
        let Command::Key(KeyArgs { task: t, .. }) = cli.command else {
            panic!("not key")
        };
        assert_eq!(t.command, ["ls", "-o", "--policy"]);
        assert!(t.outputs.is_empty());
    }

    #[test]
    fn bad_usage_is_a_usage_error() {
        for (args, kind) in [
            (
                &["run", "--frobnicate", "--", "true"][..],
                ErrorKind::UnknownArgument,
            ),
            (&["run", "true"][..], ErrorKind::UnknownArgument),
            (&["run"][..], ErrorKind::MissingRequiredArgument),
            (
                &["run", "-o", "../x", "--", "true"][..],
                ErrorKind::ValueValidation,
            ),
            (
                &["run", "-o", "/abs", "--", "true"][..],
                ErrorKind::ValueValidation,
            ),
            (
                &["run", "-e", "A=1", "--", "true"][..],
                ErrorKind::ValueValidation,
            ),
            (
                &["run", "--policy", "sometimes", "--", "true"][..],
                ErrorKind::ValueValidation,
            ),
            (
                &["gc", "--max-size", "lots"][..],
                ErrorKind::ValueValidation,
            ),
            // `gc` without --max-size is refused by gc itself (a bucket needs none).
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.kind(), kind, "{args:?}: {err}");
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn housekeeping_takes_the_cache_timeout() {
        for sub in ["stats", "gc", "verify"] {
            let cli = parse(&[sub, "--cache-timeout", "2s"]).unwrap();
            let timeout = match cli.command {
                Command::Stats(a) => a.timeout,
                Command::Gc(a) => a.timeout,
                Command::Verify(a) => a.timeout,
                _ => panic!("not {sub}"),
            };
            assert_eq!(timeout.cache_timeout, std::time::Duration::from_secs(2));
        }
    }

    #[test]
    fn gc_size() {
        let cli = parse(&["gc", "--max-size", "10GiB"]).unwrap();
        let Command::Gc(g) = cli.command else {
            panic!("not gc")
        };
        assert_eq!(g.max_size, Some(10 << 30));
    }
}
