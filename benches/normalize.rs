//! Normalize + compare throughput (the work every mirrored request costs), without IO:
//! equal 1 MB JSON, equal 1 MB HTML, and a pair with a few differences. MB/s is of the legacy
//! body's size. Run: `cargo bench --bench normalize`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cutover::diff::{Captured, Comparator};
use cutover::normalize::{RuleSet, Rules};
use std::hint::black_box;
use std::sync::Arc;

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

fn json_mb(change_every: Option<usize>, etag_salt: u32) -> Vec<u8> {
    let items: Vec<serde_json::Value> = (0..7000)
        .map(|i| {
            let price = if change_every.is_some_and(|n| i % n == 0) { 2.5 } else { 1.25 };
            serde_json::json!({"id": i, "name": format!("item {i}"), "price": price, "tags": ["a", "b", "c"], "meta": {"etag": format!("{:08x}", i as u32 ^ etag_salt)}})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({"items": items, "generated_at": 1700000000}))
        .unwrap_or_default()
}

fn html_mb(change: bool) -> Vec<u8> {
    let mut s = String::from("<!DOCTYPE html><html><head><title>t</title></head><body>\n");
    for i in 0..9000 {
        let text = if change && i == 4500 {
            "changed"
        } else {
            "row"
        };
        s.push_str(&format!("<div class=\"r\" id=\"r{i}\"><span data-x=\"{i}\">{text} {i}</span> <a href=\"/p/{i}\">link</a></div>\n"));
    }
    s.push_str(
        "<form><input type=\"hidden\" name=\"_token\" value=\"abc\"></form></body></html>\n",
    );
    s.into_bytes()
}

fn rules() -> Rules {
    let text = "[json]\nignore = ['/generated_at', '/items/*/meta/etag']\n[html]\nignore_elements = ['input[name=_token]']\nsort_attributes = true\n[text]\nfold_whitespace = true\n";
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
    let json = json_mb(None, 0);
    // Differs only where the rules ignore (every etag): equal after normalization.
    let json_same = json_mb(None, 0x5a5a);
    let json_diff = json_mb(Some(1000), 0);
    let html = html_mb(false);
    let html_diff = html_mb(true);
    let mut g = c.benchmark_group("normalize_compare");
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
        ("html_equal_1mb", "text/html", &html, &html),
        ("html_one_difference_1mb", "text/html", &html, &html_diff),
    ] {
        let (l, cnd) = (captured(ct, a.clone()), captured(ct, b.clone()));
        g.throughput(Throughput::Bytes(a.len() as u64));
        g.bench_function(name, |bench| {
            bench.iter(|| black_box(r.compare(black_box(&l), black_box(&cnd))))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
