//! The JSON comparison on two arbitrary bodies under rules with no unordered arrays, where the
//! lockstep walk lists the differences itself (pointers ignored under wildcards, floats within
//! a tolerance, the built-in time folding): never panics, a body always equals itself, and the
//! walk's report, unified diff included, is exactly the tree comparison's; the unified diff
//! made from the pretty texts' window, at small margins, is the whole texts'.
#![no_main]
#[path = "common/mod.rs"]
mod common;
use cutover::normalize::Rules;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| {
        common::rules_with("[json]\nignore = ['/a/*/b', '/x', '/*/0']\nfloat_absolute = 1e-9\nfloat_relative = 1e-6\n")
    })
}

fuzz_target!(|data: &[u8]| {
    // A fixed Date: epoch folding is around it, the same for both comparisons.
    common::check(rules(), data, &[
        (http::header::CONTENT_TYPE, "application/json"),
        (http::header::DATE, "Tue, 14 Nov 2023 22:13:20 GMT"),
    ]);
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (a, b) = (&data[..split], data.get(split + 1..).unwrap_or(&[]));
    let now = 1_700_000_000.0;
    if let Some(whole) = rules().json_unified(a, b, now, usize::MAX) {
        for margin in [0, 1, 8, 40] {
            // The window may print (skipping the shared end) what the whole texts refuse.
            if let Some(windowed) = rules().json_unified(a, b, now, margin) {
                assert_eq!(windowed, whole, "margin {margin}");
            }
        }
    }
});
