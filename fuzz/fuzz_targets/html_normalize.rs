//! The HTML comparison on two arbitrary bodies under rules that use every HTML rule kind and
//! the built-in text replacements: never panics, a body always equals itself, and the
//! side-by-side walk gives exactly the report of the full tokenization.
#![no_main]
#[path = "common/mod.rs"]
mod common;
use cutover::normalize::Rules;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| {
        common::rules_with("[html]\nstrip_comments = true\nsort_attributes = true\nignore_elements = ['input[name=_token]', '#debug', 'div.ad']\nignore_attributes = ['nonce']\n[text]\nfold_whitespace = true\n[[text.replace]]\npattern = 'tok-[0-9a-f]+'\nreplace = 'tok'\n")
    })
}

fuzz_target!(|data: &[u8]| {
    common::check(rules(), data, &[(http::header::CONTENT_TYPE, "text/html; charset=utf-8")]);
});
