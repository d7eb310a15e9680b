//! The `emgate` binary: all the work is in the library.

/// mimalloc rather than glibc's malloc: the request path allocates a few
/// small buffers per request and HTTP/2 a task per stream; see Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    emgate::cli::main()
}
