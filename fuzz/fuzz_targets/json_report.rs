//! The JSON comparison on two arbitrary bodies under rules with no unordered arrays, where the
//! lockstep walk lists the differences itself (pointers ignored under wildcards, floats within
//! a tolerance, the built-in time folding): never panics, a body always equals itself, and the
//! walk's report, unified diff included, is exactly the tree comparison's.
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
});
