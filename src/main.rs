//! The `emgate` binary: all the work is in the library.

fn main() -> std::process::ExitCode {
    emgate::cli::main()
}
