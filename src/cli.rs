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

/// Where the admin API listens by default (`listen.admin`'s default).
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9090";

/// `--admin` values: a URL, or `host:port` (taken as `http://host:port`).
fn admin_arg(s: &str) -> Result<String, std::convert::Infallible> {
    Ok(crate::client::admin_url(s))
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the shadowing proxy and its admin listener until Ctrl-C or SIGTERM (SIGHUP reloads).
    Proxy {
        /// The config file (TOML); relative paths in it resolve against its folder.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Draw the dashboard in this process instead of logging to stderr.
        #[arg(long)]
        tui: bool,
    },
    /// Validate a config and every rules file it names (exit 64 on a mistake, naming file,
    /// line and key).
    Check {
        /// The config file to check.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Also reach every upstream, the session store (and the twin's copy) and the state
        /// store, a line each; exit 1 when one fails.
        #[arg(long)]
        probe: bool,
    },
    /// The dashboard, reading one or more running proxies (several are summed: one fleet).
    Tui {
        /// A proxy's admin API: a URL or host:port; repeat for a fleet.
        #[arg(long = "admin", value_name = "URL", default_value = DEFAULT_ADMIN, value_parser = admin_arg)]
        admins: Vec<String>,
        /// The environment variable holding the admin token (for samples and the p/r keys).
        #[arg(long, value_name = "NAME", default_value = "CUTOVER_ADMIN_TOKEN")]
        token_env: String,
    },
    /// In-process legacy and candidate apps, generated traffic, the proxy and the dashboard.
    Demo {
        /// Print a summary table instead of the dashboard.
        #[arg(long)]
        headless: bool,
        /// Stop after this long (20s, 2m, 500ms, ...); without it, run until q or Ctrl-C.
        #[arg(long, value_name = "DURATION")]
        duration: Option<String>,
    },
    /// Print each route's gate verdict; exit 0 when every named route (default: every
    /// mirrorable route in shadow mode) passes, 1 otherwise, 2 when a proxy cannot be read.
    Gate {
        /// A proxy's admin API: a URL or host:port; repeat to judge a fleet's summed counts.
        #[arg(long = "admin", value_name = "URL", default_value = DEFAULT_ADMIN, value_parser = admin_arg)]
        admins: Vec<String>,
        /// A route pattern as written in the config (repeatable); default: every shadowed route.
        #[arg(long = "route", value_name = "ROUTE")]
        routes: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Flip a route to the candidate (or P% of its sessions); refused (exit 1) while its gate
    /// is closed, unless forced with a reason.
    Promote {
        /// The route's pattern as written in the config, e.g. '/users/{id}'.
        route: String,
        /// A proxy's admin API: a URL or host:port; with several, the fleet's summed counts
        /// are judged.
        #[arg(long = "admin", value_name = "URL", default_value = DEFAULT_ADMIN, value_parser = admin_arg)]
        admins: Vec<String>,
        /// Serve only this share (1-100) of the route's sessions from the candidate, sticky
        /// per session.
        #[arg(long, value_name = "P")]
        percent: Option<u8>,
        /// Promote although the gate is closed (needs --reason; recorded in /api/events).
        #[arg(long, requires = "reason")]
        force: bool,
        /// Why, kept in /api/events.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// The environment variable holding the admin token.
        #[arg(long, value_name = "NAME", default_value = "CUTOVER_ADMIN_TOKEN")]
        token_env: String,
    },
    /// Flip a route back to shadow, on every named proxy.
    Rollback {
        /// The route's pattern as written in the config.
        route: String,
        /// A proxy's admin API: a URL or host:port; repeatable.
        #[arg(long = "admin", value_name = "URL", default_value = DEFAULT_ADMIN, value_parser = admin_arg)]
        admins: Vec<String>,
        /// Why, kept in /api/events.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// The environment variable holding the admin token.
        #[arg(long, value_name = "NAME", default_value = "CUTOVER_ADMIN_TOKEN")]
        token_env: String,
    },
    /// Clear a route's window, noise and samples (after a candidate fix is deployed), on
    /// every named proxy.
    Reset {
        /// The route's pattern as written in the config.
        route: String,
        /// A proxy's admin API: a URL or host:port; repeatable.
        #[arg(long = "admin", value_name = "URL", default_value = DEFAULT_ADMIN, value_parser = admin_arg)]
        admins: Vec<String>,
        /// The environment variable holding the admin token.
        #[arg(long, value_name = "NAME", default_value = "CUTOVER_ADMIN_TOKEN")]
        token_env: String,
    },
    /// Diff two saved responses (raw HTTP responses or bare bodies) with the proxy's engine;
    /// exit 1 when they differ.
    Diff {
        /// A rules file applied after the built-in ones (repeatable, in order).
        #[arg(long = "rules", value_name = "FILE")]
        rules: Vec<PathBuf>,
        /// Leave out the built-in rules (rules/default.toml).
        #[arg(long)]
        no_builtin: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The legacy side's saved response.
        left: PathBuf,
        /// The candidate side's saved response.
        right: PathBuf,
    },
    /// Print a starting cutover.toml made from an nginx config: its location blocks become
    /// routes (legacy where nginx passes to PHP, candidate where it passes elsewhere), its
    /// fastcgi_pass and proxy_pass the upstreams; what to check by hand is listed at the top.
    Init {
        /// The nginx config file (a site file or nginx.conf; includes are not followed).
        #[arg(long, value_name = "FILE")]
        from_nginx: PathBuf,
    },
    /// Replay recorded traffic ([record]) against a candidate build and print a verdict per
    /// route as `cutover gate` does, judged on the recording's own counts (its mismatch share
    /// against [gate] max_mismatch_rate): exit 0 when every route passes, 1 when one fails, 2 on
    /// an error. Session headers are signed with the secret in CUTOVER_SESSION_SECRET.
    Replay {
        /// The candidate's base URL: http://, https:// or http+unix://.
        #[arg(long, value_name = "URL")]
        candidate: String,
        /// The proxy's config: each route's rules, the [session] rules, [gate] thresholds,
        /// body limits and candidate timeouts (default: built-in rules and gate defaults).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// A rules file applied after the config's (or the built-in) rules; repeatable.
        #[arg(long = "rules", value_name = "FILE")]
        rules: Vec<PathBuf>,
        /// Comparisons a route needs before it can pass (default: every recorded exchange of
        /// the route).
        #[arg(long, value_name = "N")]
        min_samples: Option<u64>,
        /// Requests in flight to the candidate at once.
        #[arg(long, value_name = "N", default_value_t = 16)]
        concurrency: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Recording files (JSON lines, or .jsonl.gz).
        #[arg(required = true, value_name = "RECORDING")]
        recordings: Vec<PathBuf>,
    },
    /// PHP session tools.
    Session {
        #[command(subcommand)]
        command: SessionCommand,
    },
}

/// A runtime on every core, with stacks deep enough for PHP session decoding (None, after
/// saying why, when it cannot start).
fn multi_thread_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(cutover_session::php::STACK_BYTES)
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("cutover: cannot start the runtime: {e}");
            None
        }
    }
}

fn replay_cmd(args: crate::replay::ReplayArgs, json: bool) -> u8 {
    let Some(rt) = multi_thread_runtime() else {
        return EXIT_RUNTIME;
    };
    match rt.block_on(crate::replay::run(&args)) {
        Ok(report) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print!("{}", crate::replay::render_text(&report));
            }
            if report.passing {
                EXIT_OK
            } else {
                EXIT_CHECK_FAILED
            }
        }
        Err(e) => {
            eprintln!("cutover replay: {e}");
            EXIT_RUNTIME
        }
    }
}

fn init_cmd(path: &std::path::Path) -> u8 {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cutover: cannot read {}: {e}", path.display());
            return EXIT_RUNTIME;
        }
    };
    match crate::init::from_nginx(&text, &path.display().to_string()) {
        Ok(toml) => {
            print!("{toml}");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("cutover: {e}");
            EXIT_CONFIG
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum SessionCommand {
    /// Print a PHP session blob (a file, or stdin) as {"data": …} in cutover's JSON form.
    Decode {
        /// PHP's session.serialize_handler.
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
    let Some(ser) = cutover_session::php::Serializer::parse(serializer) else {
        eprintln!("cutover: unknown serializer {serializer}");
        return EXIT_RUNTIME;
    };
    // PHP allows 4096 nesting levels; the codec recurses per level, so give it room.
    let work = std::thread::Builder::new()
        .stack_size(cutover_session::php::STACK_BYTES)
        .spawn(move || {
            cutover_session::php::decode_session(
                &blob,
                ser,
                cutover_session::php::DEFAULT_MAX_BYTES,
            )
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

fn with_runtime(f: impl std::future::Future<Output = u8>) -> u8 {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("cutover: cannot start the runtime: {e}");
            EXIT_RUNTIME
        }
    }
}

/// Reads every proxy's routes; None (after printing why) when one cannot be read.
async fn read_fleet(
    client: &crate::client::AdminClient,
    admins: &[String],
) -> Option<Vec<crate::api::RoutesView>> {
    let mut views = Vec::new();
    for a in admins {
        match client.routes(a).await {
            Ok(v) => views.push(v),
            Err(e) => {
                eprintln!("cutover: cannot read {a}: {e}");
                return None;
            }
        }
    }
    Some(views)
}

async fn gate_cmd(admins: Vec<String>, routes: Vec<String>, json: bool) -> u8 {
    let client = crate::client::AdminClient::new(None);
    let Some(views) = read_fleet(&client, &admins).await else {
        return EXIT_RUNTIME;
    };
    let (all, t) = crate::client::fleet(&views);
    let chosen: Vec<&crate::api::RouteView> = if routes.is_empty() {
        // A route none of whose requests could be mirrored (POST-only with GET mirrored, say)
        // would hold the gate closed for ever: it is not judged unless named.
        all.iter()
            .filter(|r| r.mode == "shadow" && r.mirrorable)
            .collect()
    } else {
        let mut v = Vec::new();
        for name in &routes {
            match all.iter().find(|r| &r.route == name) {
                Some(r) => v.push(r),
                None => {
                    eprintln!("cutover: no route {name} on {}", admins.join(", "));
                    return EXIT_RUNTIME;
                }
            }
        }
        v
    };
    let verdicts: Vec<(String, crate::gate::Verdict, Option<u64>)> = chosen
        .iter()
        .map(|r| {
            let v = crate::client::judge(r, &t);
            let eta = crate::gate::eta_secs(&v, r.clean_per_sec);
            (r.route.clone(), v, eta)
        })
        .collect();
    let all_pass = verdicts.iter().all(|(_, v, _)| v.passing);
    if json {
        let rows: Vec<serde_json::Value> = verdicts
            .iter()
            .map(|(r, v, eta)| serde_json::json!({ "route": r, "passing": v.passing, "reason": v.reason, "mismatch_rate": v.rate, "mismatch_upper_bound": v.upper_bound, "more_clean_samples": v.more_clean_samples, "eta_secs": eta }))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "passing": all_pass, "proxies": admins.len(), "routes": rows })
            )
            .unwrap_or_default()
        );
    } else {
        for (r, v, eta) in &verdicts {
            let eta = match eta {
                Some(s) if !v.passing => {
                    format!(" (opens in ~{})", crate::tui::draw::short_duration(*s))
                }
                _ => String::new(),
            };
            println!(
                "{:<40} {:<8} {}{eta}",
                r,
                if v.passing { "PASS" } else { "CLOSED" },
                v.reason
            );
        }
        if verdicts.is_empty() {
            println!("no routes to judge");
        }
    }
    if all_pass {
        EXIT_OK
    } else {
        EXIT_CHECK_FAILED
    }
}

fn token_from(env: &str) -> Option<String> {
    std::env::var(env).ok().filter(|t| !t.is_empty())
}

async fn promote_cmd(
    admins: Vec<String>,
    req: crate::client::PromoteRequest,
    token_env: String,
) -> u8 {
    let Some(token) = token_from(&token_env) else {
        eprintln!("cutover: promote needs the admin token in ${token_env}");
        return EXIT_RUNTIME;
    };
    if req.force && req.reason.as_deref().unwrap_or("").trim().is_empty() {
        eprintln!("cutover: --force needs --reason TEXT");
        return EXIT_RUNTIME;
    }
    let client = crate::client::AdminClient::new(Some(token));
    match crate::client::promote(&client, &admins, &req).await {
        Ok(ev) => {
            println!("promoted {}: {}", req.route, ev.reason);
            EXIT_OK
        }
        Err(crate::client::ActionError::Refused(why)) => {
            eprintln!("cutover: refused: {why}");
            EXIT_CHECK_FAILED
        }
        Err(e) => {
            eprintln!("cutover: {e}");
            EXIT_RUNTIME
        }
    }
}

/// `rollback` and `reset` on every named proxy.
async fn route_action_cmd(
    route: String,
    admins: Vec<String>,
    action: crate::client::RouteAction,
    reason: Option<String>,
    token_env: String,
) -> u8 {
    let Some(token) = token_from(&token_env) else {
        eprintln!("cutover: this needs the admin token in ${token_env}");
        return EXIT_RUNTIME;
    };
    let client = crate::client::AdminClient::new(Some(token));
    let mut code = EXIT_OK;
    for (admin, result) in
        crate::client::on_every_proxy(&client, &admins, &route, action, reason.as_deref()).await
    {
        match (result, action) {
            (Ok(_), crate::client::RouteAction::Rollback) => {
                println!("{admin}: {route} is back in shadow mode")
            }
            (Ok(_), crate::client::RouteAction::Reset) => {
                println!("{admin}: {route}'s window, noise and samples are cleared")
            }
            (Err(e), _) => {
                eprintln!("cutover: {e}");
                code = EXIT_RUNTIME;
            }
        }
    }
    code
}

/// A saved response: a raw HTTP response (`HTTP/1.1 200 OK` …) or a bare body.
pub fn read_saved_response(bytes: &[u8]) -> crate::diff::Captured {
    if bytes.starts_with(b"HTTP/") {
        let head_end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| (p, 4))
            .or_else(|| bytes.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2)));
        if let Some((end, sep)) = head_end {
            let head = String::from_utf8_lossy(&bytes[..end]);
            let mut lines = head.lines();
            let status = lines
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|s| s.parse().ok())
                .unwrap_or(200);
            let mut headers = http::HeaderMap::new();
            for l in lines {
                if let Some((k, v)) = l.split_once(':') {
                    if let (Ok(k), Ok(v)) = (
                        http::HeaderName::from_bytes(k.trim().as_bytes()),
                        http::HeaderValue::from_str(v.trim()),
                    ) {
                        headers.append(k, v);
                    }
                }
            }
            let mut body = bytes[end + sep..].to_vec();
            let chunked = headers
                .get(http::header::TRANSFER_ENCODING)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("chunked"));
            if chunked {
                body = dechunk(&body);
            }
            return crate::diff::Captured {
                status,
                headers,
                body: bytes::Bytes::from(body),
            };
        }
    }
    crate::diff::Captured {
        status: 200,
        headers: http::HeaderMap::new(),
        body: bytes::Bytes::copy_from_slice(bytes),
    }
}

fn dechunk(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let Some(eol) = b[pos..].windows(2).position(|w| w == b"\r\n") else {
            break;
        };
        let size = std::str::from_utf8(&b[pos..pos + eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else { break };
        pos += eol + 2;
        if size == 0 || pos + size > b.len() {
            break;
        }
        out.extend_from_slice(&b[pos..pos + size]);
        pos += size + 2;
    }
    out
}

fn diff_cmd(
    rules: &[PathBuf],
    no_builtin: bool,
    json: bool,
    left: &std::path::Path,
    right: &std::path::Path,
) -> u8 {
    use crate::diff::Comparator;
    let mut sets = Vec::new();
    if !no_builtin {
        match crate::normalize::RuleSet::builtin() {
            Ok(s) => sets.push(std::sync::Arc::new(s)),
            Err(e) => {
                eprintln!("cutover: {e}");
                return EXIT_CONFIG;
            }
        }
    }
    for r in rules {
        match crate::normalize::RuleSet::load(r) {
            Ok(s) => sets.push(std::sync::Arc::new(s)),
            Err(e) => {
                eprintln!("cutover: invalid rules: {e}");
                return EXIT_CONFIG;
            }
        }
    }
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let (l, r) = match (read(left), read(right)) {
        (Ok(l), Ok(r)) => (l, r),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("cutover: {e}");
            return EXIT_RUNTIME;
        }
    };
    let decode = |c: crate::diff::Captured| crate::normalize::decode::decoded(c, 256 << 20);
    let (l, r) = match (
        decode(read_saved_response(&l)),
        decode(read_saved_response(&r)),
    ) {
        (Ok(l), Ok(r)) => (l, r),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("cutover: {e}");
            return EXIT_RUNTIME;
        }
    };
    let report = crate::normalize::Rules::compile(&sets).compare(&l, &r);
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "equal": report.is_match(), "differences": report.differences, "unified_diff": report.unified })).unwrap_or_default());
    } else if report.is_match() {
        println!("equal after normalization");
    } else {
        println!("{} difference(s):", report.differences.len());
        for d in &report.differences {
            println!(
                "  {:<8} {}  legacy: {}  candidate: {}",
                d.kind.as_str(),
                d.path,
                d.legacy.as_deref().unwrap_or("-"),
                d.candidate.as_deref().unwrap_or("-")
            );
        }
        if !report.unified.is_empty() {
            println!("\n{}", report.unified);
        }
    }
    if report.is_match() {
        EXIT_OK
    } else {
        EXIT_CHECK_FAILED
    }
}

fn init_logging() -> Option<tracing_appender::non_blocking::WorkerGuard> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go through a non-blocking writer: a slow stderr must not stall the IO threads.
    // 16k lines in the queue (the default, 128k, is 4 MB allocated up front); past that,
    // lines are dropped rather than blocking a worker.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(16 * 1024)
        .lossy(true)
        .finish(std::io::stderr());
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
        Command::Gate {
            admins,
            routes,
            json,
        } => with_runtime(gate_cmd(admins, routes, json)),
        Command::Tui { admins, token_env } => with_runtime(async move {
            match crate::tui::run(admins, token_from(&token_env), None).await {
                Ok(()) => EXIT_OK,
                Err(e) => {
                    eprintln!("cutover: terminal: {e}");
                    EXIT_RUNTIME
                }
            }
        }),
        Command::Demo { headless, duration } => {
            let duration = match duration.as_deref().map(crate::demo::parse_duration) {
                None => None,
                Some(Ok(d)) => Some(d),
                Some(Err(e)) => {
                    eprintln!("cutover: --duration: {e}");
                    return EXIT_RUNTIME;
                }
            };
            // The demo signs session headers with a secret of its own, set before any thread starts.
            let secret: String = (0..32).map(|_| fastrand::alphanumeric()).collect();
            std::env::set_var("CUTOVER_DEMO_SESSION_SECRET", secret);
            let Some(rt) = multi_thread_runtime() else {
                return EXIT_RUNTIME;
            };
            let code = rt.block_on(async move {
                match crate::demo::run(headless, duration).await {
                    Ok(()) => EXIT_OK,
                    Err(e) => {
                        eprintln!("cutover demo: {e}");
                        EXIT_RUNTIME
                    }
                }
            });
            // Mirrors still in flight are not waited for.
            rt.shutdown_timeout(std::time::Duration::from_millis(200));
            code
        }
        Command::Promote {
            route,
            admins,
            percent,
            force,
            reason,
            token_env,
        } => with_runtime(promote_cmd(
            admins,
            crate::client::PromoteRequest {
                route,
                percent,
                force,
                reason,
            },
            token_env,
        )),
        Command::Rollback {
            route,
            admins,
            reason,
            token_env,
        } => with_runtime(route_action_cmd(
            route,
            admins,
            crate::client::RouteAction::Rollback,
            reason,
            token_env,
        )),
        Command::Reset {
            route,
            admins,
            token_env,
        } => with_runtime(route_action_cmd(
            route,
            admins,
            crate::client::RouteAction::Reset,
            None,
            token_env,
        )),
        Command::Init { from_nginx } => init_cmd(&from_nginx),
        Command::Replay {
            candidate,
            config,
            rules,
            min_samples,
            concurrency,
            json,
            recordings,
        } => replay_cmd(
            crate::replay::ReplayArgs {
                candidate,
                config,
                rules,
                min_samples,
                concurrency,
                recordings,
            },
            json,
        ),
        Command::Diff {
            rules,
            no_builtin,
            json,
            left,
            right,
        } => diff_cmd(&rules, no_builtin, json, &left, &right),
        Command::Session {
            command: SessionCommand::Decode { serializer, file },
        } => session_decode(&serializer, file.as_deref()),
        Command::Check { config, probe } => match Config::load(&config) {
            Ok(c) => {
                println!("{}: ok ({} routes)", config.display(), c.routes.len());
                if !probe {
                    return EXIT_OK;
                }
                with_runtime(async move {
                    let findings = crate::probe::probe(&c, crate::probe::Reach::Request).await;
                    for f in &findings {
                        println!("{f}");
                    }
                    if findings.iter().all(crate::probe::Finding::ok) {
                        EXIT_OK
                    } else {
                        EXIT_CHECK_FAILED
                    }
                })
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
            // With --tui the dashboard owns the terminal: no log lines on it.
            let _guard = if tui { None } else { init_logging() };
            // Requests run on the proxy's own worker threads (one per core); this runtime only
            // carries the admin API, the state poller and auto-rollback.
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
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
                match crate::runtime::start(cfg).await {
                    Ok(running) if tui => {
                        let admin = format!("http://{}", running.admin_addr);
                        let token = running.app.admin_token();
                        let result = crate::tui::run(vec![admin], token, None).await;
                        running.shutdown().await;
                        match result {
                            Ok(()) => EXIT_OK,
                            Err(e) => {
                                eprintln!("cutover: terminal: {e}");
                                EXIT_RUNTIME
                            }
                        }
                    }
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
