//! Normalize + compare throughput (the work every mirrored request costs), without IO:
//! equal 1 MB JSON, HTML and text bodies, byte-identical and equal only after the rules (a
//! token, a time), and pairs with real differences. MB/s is of the legacy
//! body's size. Run: `cargo bench --bench normalize`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cutover::diff::{Captured, Comparator};
use cutover::normalize::{RuleSet, Rules};
use std::hint::black_box;
use std::sync::Arc;

// The allocator the cutover binary runs with, so the numbers are the proxy's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn captured(ct: &'static str, body: Vec<u8>) -> Captured {
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ct),
    );
    Captured {
        status: 200,
        headers: h,
        body: Bytes::from(body),
    }
}

/// 7,000 items; the price changed in those `changed` picks.
fn json_mb(changed: impl Fn(usize) -> bool, etag_salt: u32) -> Vec<u8> {
    let items: Vec<serde_json::Value> = (0..7000)
        .map(|i| {
            let price = if changed(i) { 2.5 } else { 1.25 };
            serde_json::json!({"id": i, "name": format!("item {i}"), "price": price, "tags": ["a", "b", "c"], "meta": {"etag": format!("{:08x}", i as u32 ^ etag_salt)}})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({"items": items, "generated_at": 1700000000}))
        .unwrap_or_default()
}

fn html_mb(change: bool) -> Vec<u8> {
    html_page(change, "abc", "2026-11-28 10:00:00")
}

/// The page with its own CSRF token and generation time, as two renderings of one page differ.
fn html_page(change: bool, token: &str, generated: &str) -> Vec<u8> {
    let mut s = format!("<!DOCTYPE html><html><head><title>t</title></head><body>\n<p class=\"generated\">Generated {generated}</p>\n");
    for i in 0..9000 {
        let text = if change && i == 4500 {
            "changed"
        } else {
            "row"
        };
        s.push_str(&format!("<div class=\"r\" id=\"r{i}\"><span data-x=\"{i}\">{text} {i}</span> <a href=\"/p/{i}\">link</a></div>\n"));
    }
    s.push_str(&format!(
        "<form><input type=\"hidden\" name=\"_token\" value=\"{token}\"></form></body></html>\n"
    ));
    s.into_bytes()
}

fn rules() -> Rules {
    let text = "[json]\nignore = ['/generated_at', '/items/*/meta/etag', '/request_id']\n[html]\nignore_elements = ['input[name=_token]']\nsort_attributes = true\n[text]\nfold_whitespace = true\n";
    let mut sets = vec![Arc::new(
        RuleSet::builtin().unwrap_or_else(|e| panic!("{e}")),
    )];
    sets.push(Arc::new(
        RuleSet::parse(text, "bench").unwrap_or_else(|e| panic!("{e}")),
    ));
    Rules::compile(&sets)
}

fn bench(c: &mut Criterion) {
    let r = rules();
    let json = json_mb(|_| false, 0);
    // Differs only where the rules ignore (every etag): equal after normalization.
    let json_same = json_mb(|_| false, 0x5a5a);
    let json_diff = json_mb(|i| i % 1000 == 0, 0);
    let json_one = json_mb(|i| i == 3500, 0);
    let html = html_mb(false);
    let html_diff = html_mb(true);
    // Another rendering: its own token and time, equal after the rules.
    let html_noisy = html_page(false, "f00dfeed", "2026-11-28 10:00:07");
    let text = html
        .iter()
        .map(|&b| if b == b'<' || b == b'>' { b' ' } else { b })
        .collect::<Vec<u8>>();
    let text_noisy = String::from_utf8_lossy(&text)
        .replace("2026-11-28 10:00:00", "2026-11-28 10:00:07")
        .into_bytes();
    // A 20 KB API answer, as scripts/bench-noisy's: its own request id and time per rendering.
    // Times within a day of now, which the built-in rules fold (the bodies have no `Date`).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64().floor());
    let api = |id: &str, at: f64| {
        let items: Vec<serde_json::Value> = (0..240)
            .map(|i| serde_json::json!({"id": i, "name": format!("item {i}"), "price": i as f64 * 1.25, "tags": ["a", "b"], "url": format!("/items/{i}")}))
            .collect();
        serde_json::to_vec(&serde_json::json!({"request_id": id, "generated": at, "items": items}))
            .unwrap_or_default()
    };
    let api_a = api("3f1c9a7e5b2d4c6e8a0b1c2d3e4f5a6b", now + 0.123);
    let api_b = api("9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d", now + 0.456);
    // scripts/bench-noisy's 20 KB page: a CSRF token (a meta element and a form field) and a
    // millisecond time, removed by its rules file.
    let page = |token: &str, at: &str| {
        let rows: String = (0..150)
            .map(|i| format!("<tr class=\"row\" id=\"r{i}\"><td><a href=\"/items/{i}\">Item {i}</a></td><td class=\"price\">{:.2}</td><td><span class=\"tag\">a</span> <span class=\"tag\">b</span></td></tr>\n", f64::from(i) * 1.25))
            .collect();
        format!("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Items</title><meta name=\"csrf-token\" content=\"{token}\"></head><body>\n<h1>Items</h1>\n<table>\n{rows}</table>\n<form method=\"post\" action=\"/items\"><input type=\"hidden\" name=\"_token\" value=\"{token}\"><button>Save</button></form>\n<footer>Generated at {at}</footer>\n</body></html>\n").into_bytes()
    };
    let page_a = page("3f1c9a7e5b2d4c6e8a0b1c2d3e4f5a6b", "1764000000.123");
    let page_b = page("9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d", "1764000001.456");
    let noisy_rules = {
        let text = "[html]\nignore_elements = ['input[name=_token]', 'meta[name=csrf-token]']\n[[text.replace]]\npattern = '\\{epoch\\}\\.[0-9]{3}\\b'\nreplace = '{msec}'\n";
        let sets = vec![
            Arc::new(RuleSet::builtin().unwrap_or_else(|e| panic!("{e}"))),
            Arc::new(RuleSet::parse(text, "noisy").unwrap_or_else(|e| panic!("{e}"))),
        ];
        Rules::compile(&sets)
    };
    let mut g = c.benchmark_group("normalize_compare");
    {
        let (l, cnd) = (
            captured("text/html", page_a.clone()),
            captured("text/html", page_b),
        );
        assert!(
            noisy_rules.compare(&l, &cnd).is_match(),
            "equal after the rules"
        );
        g.throughput(Throughput::Bytes(page_a.len() as u64));
        g.bench_function("html_equal_after_rules_20kb", |bench| {
            bench.iter(|| black_box(noisy_rules.compare(black_box(&l), black_box(&cnd))))
        });
    }
    g.sample_size(20);
    for (name, ct, a, b) in [
        ("json_equal_1mb", "application/json", &json, &json),
        (
            "json_equal_after_rules_1mb",
            "application/json",
            &json,
            &json_same,
        ),
        (
            "json_few_differences_1mb",
            "application/json",
            &json,
            &json_diff,
        ),
        (
            "json_one_difference_1mb",
            "application/json",
            &json,
            &json_one,
        ),
        (
            "json_equal_after_rules_20kb",
            "application/json",
            &api_a,
            &api_b,
        ),
        ("html_equal_1mb", "text/html", &html, &html),
        (
            "html_equal_after_rules_1mb",
            "text/html",
            &html,
            &html_noisy,
        ),
        ("html_one_difference_1mb", "text/html", &html, &html_diff),
        (
            "text_equal_after_rules_1mb",
            "text/plain",
            &text,
            &text_noisy,
        ),
    ] {
        let (l, cnd) = (captured(ct, a.clone()), captured(ct, b.clone()));
        g.throughput(Throughput::Bytes(a.len() as u64));
        g.bench_function(name, |bench| {
            bench.iter(|| black_box(r.compare(black_box(&l), black_box(&cnd))))
        });
    }
    // The floor of any validating walk: serde_json checking one 20 KB body and keeping nothing.
    g.throughput(Throughput::Bytes(api_a.len() as u64));
    g.bench_function("json_serde_scan_only_20kb", |bench| {
        bench.iter(|| {
            black_box(serde_json::from_slice::<serde::de::IgnoredAny>(black_box(&api_a)).is_ok())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
