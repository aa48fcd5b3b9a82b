//! The runtimes the `burrow` commands run on.
//!
//! A user's node runs on one thread. Its work is a chain of small
//! hand-offs (the daemon's driver, libp2p's connection tasks, the
//! carriers' connection tasks), and on one thread each hand-off is a push
//! onto a local queue; with a worker per core, many of them wake another
//! thread through the kernel instead, which on a loaded two-core machine
//! cost more than the work itself (bench/README.md, "Messages on one
//! thread"). A node's throughput needs stay well within one core.
//!
//! A relay serves many users at once and runs a worker per core; so does
//! the demo, which holds a relay and two users in one process.

use std::io;

use tokio::runtime::{Builder, Runtime};

/// A user's node, or any command that talks to one.
pub fn node() -> io::Result<Runtime> {
    Builder::new_current_thread().enable_all().build()
}

/// A relay (and the demo).
pub fn relay() -> io::Result<Runtime> {
    Builder::new_multi_thread().enable_all().build()
}
