#![doc = include_str!("../README.md")]
//!
//! ## Modules
//! - [`php`]: PHP's value format (`serialize()`) and the three session serializers, with the
//!   JSON form of the session;
//! - [`header`]: the signed `x-cutover-session` snapshot (sign, verify);
//! - [`write`]: the `x-cutover-session-write` declaration a handler makes in shadow mode;
//! - [`cookie`]: which session id a request carries, by PHP's rules;
//! - [`store`] and, by feature, [`files`] (default), `redis`, `dynamodb`: PHP's session stores,
//!   read and written the way PHP's handlers do.
//!
//! With default features this crate uses no async runtime and no network client.

pub mod cookie;
#[cfg(feature = "dynamodb")]
pub mod dynamodb;
#[cfg(feature = "files")]
pub mod files;
pub mod header;
pub mod php;
#[cfg(feature = "redis")]
pub mod redis;
pub mod store;
pub mod write;

pub use cookie::{cookie_value, session_id, valid_session_id};
pub use header::{verify, HeaderError, Keyring, VerifiedSession, HEADER};
pub use write::{SessionWrite, WRITE_HEADER};
