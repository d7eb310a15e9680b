//! The `emgate` binary: all the work is in the library.

/// mimalloc rather than glibc's malloc: the request path allocates a few
/// small buffers per request and HTTP/2 a task per stream; see Cargo.toml
/// and [`emgate::allocator`].
#[global_allocator]
static ALLOCATOR: emgate::allocator::Allocator = emgate::allocator::Allocator;

fn main() -> std::process::ExitCode {
    emgate::cli::main()
}
