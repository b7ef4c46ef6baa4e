//! Shared by the comparison fuzz targets: one input split at its first NUL into the legacy and
//! candidate bodies of two responses with the same headers, and the checks every comparison
//! must pass.
use cutover::diff::{Captured, Comparator};
use cutover::normalize::{RuleSet, Rules};
use std::sync::Arc;

/// The built-in rules, then `text` (a rules file).
pub fn rules_with(text: &str) -> Rules {
    Rules::compile(&[
        Arc::new(RuleSet::builtin().expect("builtin rules")),
        Arc::new(RuleSet::parse(text, "fuzz").expect("rules")),
    ])
}

/// Never panics, a body equals itself, and the fast walks give the full comparison's report.
pub fn check(rules: &Rules, data: &[u8], headers: &[(http::HeaderName, &'static str)]) {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (left, right) = (&data[..split], data.get(split + 1..).unwrap_or(&[]));
    let mut h = http::HeaderMap::new();
    for (name, value) in headers {
        h.insert(name.clone(), http::HeaderValue::from_static(value));
    }
    let l = Captured { status: 200, headers: h.clone(), body: bytes::Bytes::copy_from_slice(left) };
    let r = Captured { status: 200, headers: h, body: bytes::Bytes::copy_from_slice(right) };
    let started = std::time::Instant::now();
    let (walked, full) = (rules.compare(&l, &r), rules.compare_exhaustive(&l, &r));
    // A line diff that runs past its deadline settles for a coarser answer, at whatever point
    // the clock says: the two agree only when neither ran that long (on a loaded machine an
    // instrumented build can, for inputs that pass when run again).
    if started.elapsed() < cutover::diff::DIFF_DEADLINE {
        assert_eq!(walked, full, "the walk and the full comparison agree");
    }
    assert!(rules.compare(&l, &l).is_match(), "a body equals itself");
}
