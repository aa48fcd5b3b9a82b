//! The `burrow` binary: parses arguments and hands over to the library.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    burrow_node::cli::main()
}
