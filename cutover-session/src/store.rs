//! What every session store answers: the stored bytes, nothing, or an expired session; and how
//! a store fails, as opposed to answering "no session".

use std::time::Duration;

/// What a store holds for a session id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The serializer's bytes.
    Found(Vec<u8>),
    /// Nothing stored under this id.
    Absent,
    /// Stored but past its expiry (DynamoDB's `expires`; Redis and files expire by deletion).
    Expired,
}

/// A store that failed (as opposed to one that answered "no session").
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{store}: {message}")]
    Failed {
        store: &'static str,
        message: String,
    },
    #[error("{store}: PHP still held the session's lock after {waited:?}")]
    Locked {
        store: &'static str,
        waited: Duration,
    },
    #[error("invalid session id")]
    InvalidId,
}

impl StoreError {
    /// The short cause a person reads in a log line or a route's `last_error`.
    pub fn cause(&self) -> String {
        self.to_string()
    }
}
