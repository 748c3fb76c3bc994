//! The `ferry` command line, built inside this crate so that integration tests can run it
//! as a process (`env!("CARGO_BIN_EXE_ferry_under_test")`): the same `ferry::cli::main`
//! the real `ferry` binary (`agent/src/main.rs`) runs.

fn main() -> std::process::ExitCode {
    ferry::cli::main()
}
