//! The command line: `cutover proxy | check | ...` (see the contract). Exit codes: 0 ok, 1 a
//! check failed, 2 usage or runtime error, 64 invalid configuration (nothing is bound).

use crate::config::Config;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

pub const EXIT_OK: u8 = 0;
pub const EXIT_CHECK_FAILED: u8 = 1;
pub const EXIT_RUNTIME: u8 = 2;
pub const EXIT_CONFIG: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "cutover",
    version,
    about = "Shadow a PHP app with its Rust rewrite, compare, and promote routes when they match."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the shadowing proxy and its admin listener.
    Proxy {
        #[arg(long)]
        config: PathBuf,
        /// Draw the dashboard in this process (not built yet).
        #[arg(long)]
        tui: bool,
    },
    /// Validate a config and every rules file it names.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// PHP session tools.
    Session {
        #[command(subcommand)]
        command: SessionCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum SessionCommand {
    /// Print a PHP session blob (a file, or stdin) as {"data": …} in the contract's JSON form.
    Decode {
        #[arg(long, default_value = "php", value_parser = ["php", "php_serialize", "php_binary"])]
        serializer: String,
        /// The blob's file (default: standard input).
        file: Option<PathBuf>,
    },
}

/// `cutover session decode`: the JSON on stdout, errors on stderr (exit 2).
fn session_decode(serializer: &str, file: Option<&std::path::Path>) -> u8 {
    use std::io::Read;
    let mut blob = Vec::new();
    let read = match file {
        Some(f) => std::fs::read(f).map(|b| blob = b),
        None => std::io::stdin().read_to_end(&mut blob).map(|_| ()),
    };
    if let Err(e) = read {
        eprintln!("cutover: cannot read the session: {e}");
        return EXIT_RUNTIME;
    }
    let Some(ser) = crate::session::php::Serializer::parse(serializer) else {
        eprintln!("cutover: unknown serializer {serializer}");
        return EXIT_RUNTIME;
    };
    // PHP allows 4096 nesting levels; the codec recurses per level, so give it room.
    let work = std::thread::Builder::new()
        .stack_size(crate::session::php::STACK_BYTES)
        .spawn(move || {
            crate::session::php::decode_session(&blob, ser, crate::session::php::DEFAULT_MAX_BYTES)
                .and_then(|s| s.to_json())
                .map(|data| serde_json::json!({ "data": data }))
        });
    match work.map(|h| h.join()) {
        Ok(Ok(Ok(v))) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            EXIT_OK
        }
        Ok(Ok(Err(e))) => {
            eprintln!("cutover: the session does not decode: {e}");
            EXIT_RUNTIME
        }
        _ => {
            eprintln!("cutover: the decoder failed");
            EXIT_RUNTIME
        }
    }
}

fn init_logging() -> Option<tracing_appender::non_blocking::WorkerGuard> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go through a non-blocking writer: a slow stderr must not stall the IO threads.
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let ok = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_current_span(false)
        .try_init()
        .is_ok();
    ok.then_some(guard)
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                EXIT_RUNTIME
            } else {
                EXIT_OK
            });
        }
    };
    ExitCode::from(run(cli))
}

pub fn run(cli: Cli) -> u8 {
    match cli.command {
        Command::Session {
            command: SessionCommand::Decode { serializer, file },
        } => session_decode(&serializer, file.as_deref()),
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                println!("{}: ok ({} routes)", config.display(), c.routes.len());
                EXIT_OK
            }
            Err(e) => {
                eprintln!("cutover: invalid configuration: {e}");
                EXIT_CONFIG
            }
        },
        Command::Proxy { config, tui } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("cutover: invalid configuration: {e}");
                    return EXIT_CONFIG;
                }
            };
            if tui {
                eprintln!("cutover: --tui is not available in this build yet; use `cutover tui --admin URL`");
                return EXIT_RUNTIME;
            }
            let _guard = init_logging();
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cutover: cannot start the runtime: {e}");
                    return EXIT_RUNTIME;
                }
            };
            rt.block_on(async move {
                match crate::proxy::start(cfg).await {
                    Ok(running) => {
                        eprintln!(
                            "cutover: proxy on http://{}  admin on http://{}",
                            running.proxy_addr, running.admin_addr
                        );
                        running.until_signal().await;
                        EXIT_OK
                    }
                    Err(e) => {
                        eprintln!("cutover: {e}");
                        EXIT_RUNTIME
                    }
                }
            })
        }
    }
}
