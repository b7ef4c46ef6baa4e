//! The JSON normaliser and comparison on two arbitrary bodies under rules that use every JSON
//! rule kind (the built-in time folding too): never panics, a body always equals itself, and
//! the lockstep walk gives exactly the report of the tree comparison.
#![no_main]
use cutover::diff::{Captured, Comparator};
use cutover::normalize::{RuleSet, Rules};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| {
        let text = "[json]\nignore = ['/a/*/b', '/x', '/*/0']\nunordered = ['/list', '/*/items']\nfloat_absolute = 1e-9\nfloat_relative = 1e-6\n";
        Rules::compile(&[
            Arc::new(RuleSet::builtin().expect("builtin rules")),
            Arc::new(RuleSet::parse(text, "fuzz").expect("rules")),
        ])
    })
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (left, right) = (&data[..split], data.get(split + 1..).unwrap_or(&[]));
    let mut h = http::HeaderMap::new();
    h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    // A fixed Date: epoch folding is around it, the same for both comparisons.
    h.insert(http::header::DATE, http::HeaderValue::from_static("Tue, 14 Nov 2023 22:13:20 GMT"));
    let l = Captured { status: 200, headers: h.clone(), body: bytes::Bytes::copy_from_slice(left) };
    let r = Captured { status: 200, headers: h, body: bytes::Bytes::copy_from_slice(right) };
    let fast = rules().compare(&l, &r);
    assert_eq!(fast, rules().compare_exhaustive(&l, &r), "the walk and the trees agree");
    assert!(rules().compare(&l, &l).is_match(), "a body equals itself");
});
