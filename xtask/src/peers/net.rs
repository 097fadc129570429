//! Small process and loopback helpers shared by the server modules (no HTTP client
//! dependency: the servers are probed with a raw request).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// Sends one HTTP/1.1 request to 127.0.0.1:`port` and returns the status code.
pub fn http(port: u16, method: &str, path: &str) -> Result<u16, String> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).map_err(|e| e.to_string())?;
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "not an HTTP answer".into())
}

/// Waits until `ready` is true, the process `pid` exits, or `limit` passes.
pub fn wait_until(pid: u32, limit: Duration, ready: impl Fn() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ready() {
            return Ok(());
        }
        if !alive(pid) {
            return Err("the server exited while starting".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("the server did not answer within {limit:?}"))
}

/// Whether process `pid` is running (and not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// Runs `cmd` quietly; on failure returns its output.
pub fn quiet(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not start {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{:?} failed ({}):\n{}{}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Starts `cmd` detached (own process group, output to `log`) and records its pid.
pub fn spawn(cmd: &mut Command, log: &Path, pid_file: &Path) -> Result<u32, String> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("could not start {:?}: {e}", cmd.get_program()))?;
    let pid = child.id();
    std::fs::write(pid_file, pid.to_string()).map_err(|e| e.to_string())?;
    Ok(pid)
}

/// Stops the process in `pid_file` (TERM, then KILL after 5 s) and removes the file.
pub fn stop(pid_file: &Path) {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return;
    };
    let _ = std::fs::remove_file(pid_file);
    let Ok(pid) = text.trim().parse::<u32>() else {
        return;
    };
    if !alive(pid) {
        return;
    }
    let signal = |sig: &str| {
        let _ = Command::new("kill")
            .args([sig, &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    };
    signal("-TERM");
    let start = Instant::now();
    while alive(pid) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        signal("-KILL");
    }
}

/// The pid in `pid_file` if that process still runs.
pub fn running(pid_file: &Path) -> Option<u32> {
    let pid = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    alive(pid).then_some(pid)
}

/// The port of the server an earlier `up` started (its process in `pid_file` runs and
/// answers HTTP `GET /` on the port in `port_file`), else a free port that `start`
/// starts one on.
pub fn running_or_start(
    pid_file: &Path,
    port_file: &Path,
    start: impl FnOnce(u16) -> Result<u32, String>,
) -> Result<u16, String> {
    if let Some(port) = running_on(pid_file, port_file) {
        return Ok(port);
    }
    let port = free_port()?;
    start(port)?;
    Ok(port)
}

fn running_on(pid_file: &Path, port_file: &Path) -> Option<u16> {
    running(pid_file)?;
    let port: u16 = std::fs::read_to_string(port_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    http(port, "GET", "/").is_ok().then_some(port)
}

/// A new venv at `venv` from `python` with `requirement` installed in it, quietly.
pub fn venv_with(python: &Path, venv: &Path, requirement: &str) -> Result<(), String> {
    quiet(
        Command::new(python)
            .args(["-m", "venv", "--clear"])
            .arg(venv),
    )?;
    quiet(Command::new(venv.join("bin/pip")).args([
        "install",
        "-q",
        "--disable-pip-version-check",
        requirement,
    ]))
}
