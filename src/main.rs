//! The `cutover` binary: everything lives in the library; see `cutover --help`.

// mimalloc: every proxied request allocates and frees buffers of a few KiB across threads
// (bodies read on an IO worker, compared on another); glibc's malloc spends a measurable share
// of the proxy's CPU consolidating and unlinking those chunks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cutover::cli::main()
}
