//! The rules loader on arbitrary text: errors, never panics; what loads compiles.
#![no_main]
use cutover::normalize::{RuleSet, Rules};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(set) = RuleSet::parse(text, "fuzz.toml") {
        let _ = Rules::compile(&[std::sync::Arc::new(set)]);
    }
});
