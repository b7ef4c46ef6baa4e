//! cutover: move a live PHP application to new Rust handlers one route at a time, and prove
//! each route is right before it flips.
//!
//! The modules are layers, each using only those below it:
//!
//! - [`cli`] — the commands ([`init`] writes a first config from nginx's); [`demo`] — the
//!   one-command first run; [`tui`] — the dashboard,
//!   which sees proxies only through [`client`], the admin API's client.
//! - [`runtime`] — start-up and shutdown: listeners, worker threads, signals, control loops.
//! - [`admin`] — the admin HTTP API (wire types in [`api`]); [`control`] — promote, rollback,
//!   reset, reload, state polling, auto-rollback.
//! - [`proxy`] — a request's path: route, serve from PHP (or the candidate), hand off to
//!   the mirror; [`app`] — the shared state it reads.
//! - [`mirror`] — off the client's path: the bounded dispatcher and the exchange (candidate,
//!   twin, capture, comparison, counting, samples).
//! - [`session`] — the proxy's side of the PHP session (resolution, stores); the codec, the
//!   signed header and the store layouts are the `cutover-session` crate's.
//! - [`route`] — patterns, labels, the route table; [`upstream`] — addresses, the pool,
//!   bodies, forwarded headers; [`fleet`] — the shared state store; [`access`] — the access log.
//! - [`stats`] — counters, windows, Prometheus; [`samples`] — redacted mismatch samples;
//!   [`record`] — recordings of exchanges for replay; [`noise`] — noise learned from a twin; [`normalize`] — rules and content decoding;
//!   [`diff`] — the comparison; [`gate`] — the verdict; [`config`] and [`located`] — the
//!   config file and its located errors; [`mode`] — a route's mode; [`aws`] — the AWS SDK config.
//!
//! The pure core — rules, diff, noise and the gate verdict here, the session codec in
//! `cutover-session` — uses no sockets or tokio.

pub mod access;
pub mod admin;
pub mod api;
pub mod app;
pub mod aws;
pub mod cli;
pub mod client;
pub mod config;
pub mod control;
pub mod cookies;
pub mod demo;
pub mod diff;
pub mod fleet;
pub mod gate;
pub mod init;
pub mod located;
pub mod mirror;
pub mod mode;
pub mod noise;
pub mod normalize;
pub mod probe;
pub mod proxy;
pub mod record;
pub mod replay;
pub mod route;
pub mod runtime;
pub mod samples;
pub mod session;
pub mod stats;
pub mod tui;
pub mod upstream;
