//! cutover: move a live PHP application to new Rust handlers one route at a time, and prove
//! each route is right before it flips.
//!
//! The modules follow a request's path: [`config`] → [`route`] → [`proxy`] (server, upstream
//! clients, bodies, hop-by-hop headers) → [`mirror`] (sampling, bounded dispatch, the exchange)
//! → [`session`] (PHP value codec, stores, the signed header) → [`normalize`] (rules) →
//! [`diff`] → [`stats`] (windows, Prometheus) → [`gate`] → [`admin`] (HTTP API) → [`cli`].
//!
//! The pure core — the session codec, rules, diff and gate verdict — uses no sockets or tokio.

pub mod admin;
pub mod cli;
pub mod client;
pub mod config;
pub mod control;
pub mod demo;
pub mod diff;
pub mod gate;
pub mod mirror;
pub mod noise;
pub mod normalize;
pub mod proxy;
pub mod route;
pub mod samples;
pub mod session;
pub mod state;
pub mod stats;
pub mod tui;
