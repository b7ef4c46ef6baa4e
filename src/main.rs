//! The `cutover` binary: everything lives in the library; see `cutover --help`.

fn main() -> std::process::ExitCode {
    cutover::cli::main()
}
