//! A messaging node as real processes: `burrow init`, the commands, and
//! `burrow up` in the background.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use burrow_obfs::RelayLine;

use crate::burrow_bin;

/// The password every test node uses.
pub const PASSWORD: &str = "correct horse battery staple";

/// One user: a data directory, and the daemon when it runs.
#[derive(Debug)]
pub struct NodeProc {
    pub name: String,
    pub dir: tempfile::TempDir,
    daemon: Option<Child>,
}

/// What a command printed.
#[derive(Debug)]
pub struct Out {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl NodeProc {
    /// `burrow init --relay LINE` in a fresh directory.
    pub fn init(name: &str, relay: &RelayLine) -> NodeProc {
        Self::init_with(name, relay, &[])
    }

    /// `burrow init --relay LINE EXTRA…` in a fresh directory.
    pub fn init_with(name: &str, relay: &RelayLine, extra: &[&str]) -> NodeProc {
        Self::init_in(name, relay, tempfile::tempdir().expect("tempdir"), extra)
    }

    /// `burrow init --relay LINE EXTRA…` in `dir` (on a small disk, say).
    pub fn init_in(
        name: &str,
        relay: &RelayLine,
        dir: tempfile::TempDir,
        extra: &[&str],
    ) -> NodeProc {
        let node = NodeProc {
            name: name.into(),
            dir,
            daemon: None,
        };
        let line = relay.to_string();
        let mut args = vec!["init", "--relay", line.as_str()];
        args.extend_from_slice(extra);
        let out = node.run(&args);
        assert!(out.ok, "init {name}: {}", out.stderr);
        node
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("up.log")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(burrow_bin());
        c.args(args)
            .arg("--data-dir")
            .arg(self.dir.path())
            .env("BURROW_PASSWORD", PASSWORD)
            // BURROW_TEST_LOG raises the nodes' log level when debugging a test.
            .env(
                "BURROW_LOG",
                std::env::var("BURROW_TEST_LOG").unwrap_or_else(|_| "info".into()),
            );
        c
    }

    /// Runs `burrow ARGS --data-dir DIR` and waits.
    pub fn run(&self, args: &[&str]) -> Out {
        self.run_env(args, &[])
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let mut c = self.command(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().expect("run burrow");
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts `burrow ARGS --data-dir DIR` in the background, stdout piped.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn burrow")
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.ok,
            "{}: burrow {args:?} failed: {}",
            self.name, out.stderr
        );
        out.stdout
    }

    /// The user's address.
    pub fn address(&self) -> String {
        self.ok(&["id"])
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    }

    /// Starts `burrow up` and waits until it holds its reservation.
    pub fn up(&mut self) {
        self.up_under(&[]);
    }

    /// Like [`NodeProc::up`], with the daemon started under `prefix` (for
    /// instance `ip netns exec NS`): only its network differs, the other
    /// commands reach it through the control socket in the data directory.
    pub fn up_under(&mut self, prefix: &[&str]) {
        self.start_up(prefix, &[]);
    }

    /// Starts `burrow up EXTRA…` (for instance `--listen ADDR`) and waits
    /// until it holds its reservation.
    pub fn up_with(&mut self, extra: &[&str]) {
        self.start_up(&[], extra);
    }

    /// `burrow up EXTRA…` under `prefix` (see [`NodeProc::up_under`]).
    pub fn up_under_with(&mut self, prefix: &[&str], extra: &[&str]) {
        self.start_up(prefix, extra);
    }

    fn start_up(&mut self, prefix: &[&str], extra: &[&str]) {
        assert!(self.daemon.is_none(), "{} is already up", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log");
        let mut args = vec!["up"];
        args.extend_from_slice(extra);
        let plain = self.command(&args);
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(plain.get_program()).args(plain.get_args());
                for (k, v) in plain.get_envs() {
                    match v {
                        Some(v) => c.env(k, v),
                        None => c.env_remove(k),
                    };
                }
                c
            }
            None => plain,
        };
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn burrow up");
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.run(&["id", "--json"]);
            if out.ok && out.stdout.contains("\"online\":true") {
                return;
            }
            if let Some(Ok(Some(status))) = self.daemon.as_mut().map(|c| c.try_wait()) {
                panic!("{}: burrow up exited ({status}): {}", self.name, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not come online: {}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the daemon (SIGKILL: no goodbye).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The inbox as JSON text.
    pub fn inbox_json(&self, with: &str) -> serde_json::Value {
        let text = self.ok(&["inbox", with, "--json"]);
        serde_json::from_str(&text).expect("inbox JSON")
    }

    /// Messages with `with`: (direction, text, state), oldest first.
    pub fn messages(&self, with: &str) -> Vec<(String, String, String)> {
        let v = self.inbox_json(with);
        v["messages"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| {
                        (
                            m["direction"].as_str().unwrap_or_default().to_string(),
                            m["text"].as_str().unwrap_or_default().to_string(),
                            m["state"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until `check` holds for the messages with `with`.
    pub fn wait_messages(
        &self,
        with: &str,
        what: &str,
        check: impl Fn(&[(String, String, String)]) -> bool,
    ) -> Vec<(String, String, String)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let m = self.messages(with);
            if check(&m) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {what} did not happen; messages: {m:#?}\nlog: {}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(150));
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Two users who added each other.
pub fn pair(relay: &RelayLine) -> (NodeProc, NodeProc) {
    pair_with(relay, &[])
}

/// Two users who added each other, each made with `burrow init … EXTRA`.
pub fn pair_with(relay: &RelayLine, extra: &[&str]) -> (NodeProc, NodeProc) {
    let alice = NodeProc::init_with("alice", relay, extra);
    let bob = NodeProc::init_with("bob", relay, extra);
    let (a, b) = (alice.address(), bob.address());
    alice.ok(&["contact", "add", "bob", &b]);
    bob.ok(&["contact", "add", "alice", &a]);
    (alice, bob)
}

/// For each carrier of `relay` on its own, two new users message each
/// other both ways through it; `through` names the way in the texts (and
/// in failures), `diagnose` adds what the web server logged.
pub fn message_over_each_carrier(relay: &RelayLine, through: &str, diagnose: impl Fn() -> String) {
    for carrier in &relay.carriers {
        let mut line = relay.clone();
        line.carriers = vec![*carrier];
        let (mut alice, mut bob) = pair(&line);
        alice.up();
        bob.up();
        let hello = format!("hello bob through {through} over {carrier}");
        let out = alice.ok(&["send", "bob", &hello]);
        assert_eq!(out.trim(), "delivered", "{carrier}: {out}\n{}", diagnose());
        let reply = format!("hi alice over {carrier}");
        let out = bob.ok(&["send", "alice", &reply]);
        assert_eq!(out.trim(), "delivered", "{carrier}: {out}\n{}", diagnose());
        assert!(bob
            .messages("alice")
            .iter()
            .any(|(d, t, _)| d == "in" && t == &hello));
        assert!(alice
            .messages("bob")
            .iter()
            .any(|(d, t, _)| d == "in" && t == &reply));
        alice.kill();
        bob.kill();
    }
}
