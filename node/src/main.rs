//! The `burrow` binary: parses arguments and hands over to the library.
#![forbid(unsafe_code)]

use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;

/// The exit status of a process ended by SIGPIPE, as a shell reports it.
const CLOSED_PIPE: u8 = 128 + 13;

fn main() -> ExitCode {
    // `burrow id | head -1`: once the reader has gone, printing fails, and
    // Rust's `println!` panics. Without unsafe code the SIGPIPE default
    // cannot be restored, so that one panic is turned into the quiet exit
    // a C program would make; any other panic is reported as before.
    let report = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if !stdout_closed(info.payload()) {
            report(info);
        }
    }));
    match panic::catch_unwind(AssertUnwindSafe(burrow_node::cli::main)) {
        Ok(code) => code,
        Err(payload) if stdout_closed(&*payload) => ExitCode::from(CLOSED_PIPE),
        Err(payload) => panic::resume_unwind(payload),
    }
}

/// Whether a panic is `println!` finding its reader gone.
fn stdout_closed(payload: &(dyn std::any::Any + Send)) -> bool {
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("");
    message.starts_with("failed printing to stdout") && message.contains("Broken pipe")
}
