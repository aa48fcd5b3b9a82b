//! A user's disk fills up while their node runs: what is stored stays, a
//! message that arrives is not confirmed until it is stored (its sender
//! keeps it), commands that would write say the disk is full, and once there
//! is room again everything arrives, once and in order.
//!
//! The disk is a small tmpfs mounted for the test (root only: CI runs as
//! root; elsewhere the test skips loudly).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burrow_tests::node::NodeProc;
use burrow_tests::{free_port, is_root, must, relay_metric, RelayProc, REQUIRE_TOOLS_ENV};

/// A tmpfs of a few MiB, unmounted on drop.
struct SmallDisk {
    mount: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u32) -> Option<SmallDisk> {
        if !is_root() {
            if std::env::var_os(REQUIRE_TOOLS_ENV).is_some() {
                panic!("the full-disk test needs root to mount a tmpfs (CI runs as root)");
            }
            eprintln!("SKIPPED: the full-disk test needs root (it mounts a small tmpfs)");
            return None;
        }
        let mount = tempfile::tempdir().expect("mount point");
        let path = mount.path().to_str().expect("path");
        must(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs", path],
        );
        Some(SmallDisk { mount })
    }

    fn path(&self) -> &Path {
        self.mount.path()
    }

    fn filler(&self) -> PathBuf {
        self.path().join("filler")
    }

    /// Writes until the disk refuses: the next write anyone makes fails.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.filler()).expect("filler");
        let block = [0x5au8; 4096];
        let err = loop {
            if let Err(e) = f.write_all(&block).and_then(|()| f.flush()) {
                break e;
            }
        };
        assert_eq!(err.raw_os_error(), Some(28), "ENOSPC expected: {err}");
        // The last partial block too.
        while f.write(&[0]).is_ok_and(|n| n == 1) {}
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).expect("remove filler");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.mount.path())
            .status();
    }
}

fn wait_until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "{what} did not happen");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_full_disk_loses_nothing_and_says_so() {
    let Some(disk) = SmallDisk::mount(16) else {
        return;
    };
    let metrics = free_port();
    let relay = RelayProc::start(&["--metrics", &format!("127.0.0.1:{metrics}")]);
    let held = || relay_metric(metrics, "burrow_relay_mailbox_messages");
    let carol = NodeProc::init("carol", &relay.line);
    let mut alice = NodeProc::init("alice", &relay.line);
    // Bob lives on the small disk.
    let dir = tempfile::tempdir_in(disk.path()).expect("bob's dir");
    let mut bob = NodeProc::init_in("bob", &relay.line, dir, &[]);
    bob.ok(&["contact", "add", "alice", &alice.address()]);
    alice.ok(&["contact", "add", "bob", &bob.address()]);
    alice.up();
    bob.up();
    let out = alice.ok(&["send", "bob", "before"]);
    assert_eq!(out.trim(), "delivered", "{out}");
    let out = bob.ok(&["send", "alice", "reply before"]);
    assert_eq!(out.trim(), "delivered", "{out}");

    disk.fill();

    // What Bob would write is refused with the reason, and nothing changes.
    let out = bob.run(&["send", "alice", "while full"]);
    assert!(
        !out.ok && out.stderr.contains("disk is full"),
        "send on a full disk: {out:?}"
    );
    let out = bob.run(&["contact", "add", "carol", &carol.address()]);
    assert!(
        !out.ok && out.stderr.contains("disk is full"),
        "contact add on a full disk: {out:?}"
    );
    // What arrives is refused, not confirmed: Alice keeps it and says why.
    for i in 1..=3 {
        let out = alice.ok(&["send", "bob", &format!("while full {i}")]);
        assert!(
            out.contains("bob refused it") && out.contains("disk is full"),
            "{out}"
        );
    }
    let pending: Vec<_> = alice
        .messages("bob")
        .into_iter()
        .filter(|(d, _, s)| d == "out" && s == "pending")
        .map(|(_, t, _)| t)
        .collect();
    assert_eq!(pending, ["while full 1", "while full 2", "while full 3"]);
    // Bob still reads all he had.
    let texts = |m: &[(String, String, String)]| -> Vec<String> {
        m.iter().map(|(d, t, _)| format!("{d} {t}")).collect()
    };
    assert_eq!(
        texts(&bob.messages("alice")),
        ["in before", "out reply before"]
    );
    // Bob goes away: Alice's node leaves what he refused, and one more, in
    // his mailbox at the relay.
    bob.kill();
    assert_eq!(
        bob.messages("alice").len(),
        2,
        "the store opens on a full disk"
    );
    let out = alice.ok(&["send", "bob", "while away"]);
    assert!(out.contains("left in their mailbox"), "{out}");
    wait_until("four messages in Bob's mailbox", || held() == 4.0);
    // He comes back on the still-full disk: what he cannot store stays at
    // the relay, unacknowledged.
    bob.up();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(held(), 4.0, "kept at the relay");
    assert_eq!(bob.messages("alice").len(), 2);

    // Room again: his node fetches the mailbox once more (it asks every 20 s)
    // and everything arrives, once each, in order.
    disk.free();
    let got = bob.wait_messages("alice", "the messages sent while full", |m| {
        m.iter().filter(|(d, _, _)| d == "in").count() >= 5
    });
    assert_eq!(
        texts(&got),
        [
            "in before",
            "out reply before",
            "in while full 1",
            "in while full 2",
            "in while full 3",
            "in while away"
        ]
    );
    wait_until("an empty mailbox", || held() == 0.0);
    alice.wait_messages("bob", "receipts for all", |m| {
        m.iter().all(|(d, _, s)| d == "in" || s == "delivered")
    });
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(bob.messages("alice").len(), 6, "no duplicates");
    let out = bob.ok(&["contact", "add", "carol", &carol.address()]);
    assert!(out.contains("carol"), "{out}");
}
