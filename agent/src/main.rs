//! The `ferry` binary: a thin shell over [`ferry::cli::main`].

fn main() -> std::process::ExitCode {
    ferry::cli::main()
}
