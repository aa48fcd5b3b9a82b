//! Shared helpers for the end-to-end tests: the `burrow` binary as a real
//! process, third-party tools (required in CI, skipped loudly elsewhere),
//! and a real nginx serving the same files for side-by-side comparisons.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use burrow_obfs::RelayLine;

pub mod doh;
pub mod node;
pub mod origin;

/// Set (to anything) in CI: a missing third-party tool fails the test.
pub const REQUIRE_TOOLS_ENV: &str = "BURROW_REQUIRE_TOOLS";

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Path to the `burrow` binary, built once per test process if needed.
pub fn burrow_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args(["build", "--quiet", "-p", "burrow-node", "--bin", "burrow"])
            .current_dir(workspace());
        // cargo test sets CARGO_MANIFEST_DIR and friends for the test; some
        // build scripts (ring) track them, so passing them on would rebuild
        // half the workspace here and again on the next `cargo test`.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR" {
                build.env_remove(&key);
            }
        }
        let status = build
            .status()
            .expect("run cargo build for the burrow binary");
        assert!(status.success(), "building the burrow binary failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target"));
        let bin = target.join("debug").join("burrow");
        assert!(bin.exists(), "{} missing after build", bin.display());
        bin
    })
    .clone()
}

/// Whether `tool` is installed. Without it: a failure when
/// `BURROW_REQUIRE_TOOLS` is set (CI), else a loud skip (returns false).
pub fn have_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        if std::env::var_os(REQUIRE_TOOLS_ENV).is_some() {
            panic!("{tool} is required ({REQUIRE_TOOLS_ENV} is set) but not installed; .ci/run installs it");
        }
        eprintln!("SKIPPED: {tool} is not installed; install it (see .ci/run) to run this test");
    }
    found
}

/// Whether a Python module can be imported (same rules as [`have_tool`]).
pub fn have_python_module(module: &str) -> bool {
    let found = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        if std::env::var_os(REQUIRE_TOOLS_ENV).is_some() {
            panic!("python3 module {module} is required ({REQUIRE_TOOLS_ENV} is set); .ci/run installs it");
        }
        eprintln!("SKIPPED: python3 module {module} is not installed (pip install {module})");
    }
    found
}

/// One HTTP/3 request through aioquic (`tests/tools/h3get.py`), an
/// independent QUIC stack: `url` is fetched from 127.0.0.1:`port`,
/// verifying against `cafile`; `extra` are the script's options
/// (`--method`, `--timeout`…). Returns the head (status line and headers)
/// and the body.
pub fn h3_get(url: &str, port: u16, cafile: &Path, extra: &[&str]) -> (String, Vec<u8>) {
    let (ok, out, err) = run(Command::new("python3")
        .arg(workspace().join("tests/tools/h3get.py"))
        .arg(url)
        .args(["--connect", &format!("127.0.0.1:{port}"), "--cafile"])
        .arg(cafile)
        .args(extra));
    assert!(ok, "aioquic {url}: {err}");
    let sep = out
        .windows(2)
        .position(|w| w == b"\n\n")
        .expect("a blank line after the head");
    let head = String::from_utf8_lossy(&out[..sep]).into_owned();
    (head, out[sep + 2..].to_vec())
}

/// A `burrow relay` process; killed on drop.
#[derive(Debug)]
pub struct RelayProc {
    pub child: Child,
    pub line: RelayLine,
    pub data_dir: tempfile::TempDir,
    stderr: PathBuf,
}

impl RelayProc {
    /// Starts `burrow relay` on 127.0.0.1 (a free port) with a fresh data
    /// directory and (unless `extra` names `--cert`) a self-signed
    /// certificate for `example.org`, plus `extra` arguments; waits for the
    /// relay line on stdout.
    pub fn start(extra: &[&str]) -> RelayProc {
        let data_dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(data_dir, extra)
    }

    pub fn start_in(data_dir: tempfile::TempDir, extra: &[&str]) -> RelayProc {
        Self::start_at(data_dir, "127.0.0.1:0", extra)
    }

    /// Like [`RelayProc::start_in`] on a given address (a restart on the
    /// same port keeps the relay line).
    pub fn start_at(data_dir: tempfile::TempDir, listen: &str, extra: &[&str]) -> RelayProc {
        let mut args = vec!["--listen", listen];
        if !extra.contains(&"--cert") {
            args.extend(["--self-signed", "example.org"]);
        }
        args.extend_from_slice(extra);
        Self::spawn(data_dir, &args)
    }

    /// `burrow relay --behind-proxy BACKEND EXTRA…`: no TLS of its own.
    pub fn start_behind_proxy(backend: &str, extra: &[&str]) -> RelayProc {
        let mut args = vec!["--behind-proxy", backend];
        args.extend_from_slice(extra);
        Self::spawn(tempfile::tempdir().expect("tempdir"), &args)
    }

    /// A relay behind a web server at `domain`:`public_port` that passes it
    /// `path` and serves `site` itself, with the web server's self-signed
    /// `cert` pinned in the line.
    pub fn start_behind_web_server(
        backend: &str,
        domain: &str,
        public_port: u16,
        path: &str,
        cert: &Path,
        site: &Path,
    ) -> RelayProc {
        let port = public_port.to_string();
        let cert = cert.to_str().expect("utf-8 path");
        let site = site.to_str().expect("utf-8 path");
        Self::start_behind_proxy(
            backend,
            &[
                "--domain",
                domain,
                "--public-port",
                &port,
                "--path",
                path,
                "--pin-cert",
                cert,
                "--site",
                site,
            ],
        )
    }

    /// `burrow relay --data-dir DIR ARGS…`; waits for the relay line.
    fn spawn(data_dir: tempfile::TempDir, args: &[&str]) -> RelayProc {
        let stderr = data_dir.path().join("relay.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr)
            .expect("log file");
        let mut cmd = Command::new(burrow_bin());
        cmd.args(["relay", "--data-dir"]).arg(data_dir.path());
        let mut child = cmd
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn burrow relay");
        let stdout = child.stdout.take().expect("stdout");
        let mut first = String::new();
        let read = BufReader::new(stdout).read_line(&mut first);
        if read.is_err() || first.trim().is_empty() {
            let _ = child.kill();
            let log = std::fs::read_to_string(&stderr).unwrap_or_default();
            panic!("burrow relay did not print its line; log:\n{log}");
        }
        let line: RelayLine = first.trim().parse().expect("relay prints a valid line");
        RelayProc {
            child,
            line,
            data_dir,
            stderr,
        }
    }

    /// The line `burrow relay address --ip 127.0.0.1` prints for this
    /// relay (behind a proxy: the web server's name and port).
    pub fn address_line(&self) -> RelayLine {
        let (ok, out, err) = run(Command::new(burrow_bin())
            .args(["relay", "address", "--ip", "127.0.0.1", "--data-dir"])
            .arg(self.data_dir.path()));
        assert!(ok, "relay address: {err}");
        String::from_utf8_lossy(&out)
            .trim()
            .parse()
            .expect("a valid line")
    }

    pub fn port(&self) -> u16 {
        self.line.port
    }

    /// `https://127.0.0.1:PORT` with `--resolve`-style host for curl.
    pub fn url(&self, path: &str) -> String {
        format!("https://example.org:{}{}", self.port(), path)
    }

    /// curl's `--resolve` argument pinning example.org to the relay.
    pub fn resolve_arg(&self) -> String {
        format!("example.org:{}:127.0.0.1", self.port())
    }

    /// The self-signed certificate, for curl's `--cacert`.
    pub fn cert_path(&self) -> PathBuf {
        self.data_dir.path().join("relay").join("self-signed.crt")
    }

    /// Stops the relay (SIGKILL) and hands back its data directory.
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let placeholder = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.data_dir, placeholder)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real nginx serving `root` over TLS + HTTP/2 on a free loopback port,
/// configured as the "nginx" profile assumes; stopped on drop.
#[derive(Debug)]
pub struct Nginx {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl Nginx {
    pub fn start(root: &Path, cert: &Path, key: &Path) -> Nginx {
        Self::start_with(cert, key, &format!("root {};", root.display()))
    }

    /// nginx as a reverse proxy (`proxy_pass` with its defaults) to an
    /// origin on 127.0.0.1:`origin_port`.
    pub fn start_proxy(origin_port: u16, cert: &Path, key: &Path) -> Nginx {
        Self::start_with(
            cert,
            key,
            &format!("location / {{ proxy_pass http://127.0.0.1:{origin_port}; }}"),
        )
    }

    /// nginx with `content` as what its server block serves.
    pub fn start_with(cert: &Path, key: &Path, content: &str) -> Nginx {
        Self::start_on(free_port(), cert, key, content)
    }

    /// Like [`Nginx::start_with`] on a given port.
    pub fn start_on(port: u16, cert: &Path, key: &Path, content: &str) -> Nginx {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("nginx.conf");
        let mime = ["/etc/nginx/mime.types", "/usr/local/nginx/conf/mime.types"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("/etc/nginx/mime.types");
        let d = dir.path().display();
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 events {{}}\nhttp {{\n  include {mime};\n  default_type application/octet-stream;\n  \
                 access_log off;\n  server_tokens off;\n  client_body_temp_path {d}/body;\n  \
                 proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
                 uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
                 server {{\n    listen 127.0.0.1:{port} ssl http2;\n    ssl_certificate {};\n    \
                 ssl_certificate_key {};\n    {content}\n    add_header Alt-Svc 'h3=\":{port}\"; ma=86400';\n  }}\n}}\n",
                cert.display(),
                key.display(),
            ),
        )
        .expect("write nginx.conf");
        let child = Command::new("nginx")
            .args(["-e", &format!("{d}/error.log"), "-c"])
            .arg(&conf)
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        wait_for_port(port);
        Nginx { port, dir, child }
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    /// SIGTERM, not SIGKILL: the master then stops its worker, which would
    /// otherwise outlive it holding the test's output pipes open.
    fn drop(&mut self) {
        let stopped = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// What curl gets from `https://HOST:PORT/PATH` on loopback, trusting the
/// certificate in `cacert`: the response head without `Date` (status line
/// first, one header a line), the body, and curl's stderr (its error when
/// there was no answer: the head is then empty).
pub fn curl_https(
    cacert: &Path,
    host: &str,
    port: u16,
    args: &[&str],
    path: &str,
) -> (String, Vec<u8>, String) {
    let (_, out, err) = run(Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10", "--cacert"])
        .arg(cacert)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(args)
        .arg(format!("https://{host}:{port}{path}")));
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let head: Vec<&str> = head
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("date:"))
        .collect();
    (head.join("\n"), body.as_bytes().to_vec(), err)
}

/// One sample from a relay's metrics endpoint (`--metrics
/// 127.0.0.1:PORT`), read with a plain HTTP/1.0 request.
pub fn relay_metric(port: u16, name: &str) -> f64 {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .expect("request");
    let mut text = String::new();
    conn.read_to_string(&mut text).expect("metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from the metrics: {text}"))
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listens on 127.0.0.1:{port} after 20 s");
}

/// Runs a command that must succeed (set-up of namespaces, NATs…);
/// returns its stdout.
pub fn must(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether this process runs as root (network namespaces need it).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a command, returning (exit success, stdout, stderr).
pub fn run(cmd: &mut Command) -> (bool, Vec<u8>, String) {
    let out = cmd.output().expect("run command");
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The built-in site's files as a directory (for nginx to serve the same).
pub fn builtin_site_dir() -> PathBuf {
    workspace().join("obfs").join("site")
}
