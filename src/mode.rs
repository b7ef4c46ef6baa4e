//! The three modes a route is in — `legacy` (PHP only), `shadow` (PHP serves, the candidate is
//! mirrored and compared), `candidate` (the Rust handlers serve) — shared by the config, the
//! route table, the counters and the admin API.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// PHP only.
    Legacy,
    /// PHP serves, the candidate is mirrored and compared.
    Shadow,
    /// The candidate serves.
    Candidate,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Legacy, Mode::Shadow, Mode::Candidate];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Legacy => "legacy",
            Mode::Shadow => "shadow",
            Mode::Candidate => "candidate",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(i: u8) -> Mode {
        match i {
            0 => Mode::Legacy,
            2 => Mode::Candidate,
            _ => Mode::Shadow,
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.as_str() == s)
    }
}
