//! The `assistd` binary: arguments in, exit code out. Everything else is in the library.

fn main() -> std::process::ExitCode {
    assistd::cli::main(std::env::args_os().skip(1).collect())
}
