//! The PHP value codec against the real PHP interpreter: values from `serialize()` and
//! sessions from `session_encode()` under each serializer decode, re-encode byte-identically,
//! and give the contract's JSON form; plus property tests of the round trip.

mod common;

use base64::Engine;
use cutover_session::php::{self, Key, Serializer, Value};
use proptest::prelude::*;
use serde_json::json;
use std::collections::HashMap;

struct Fixture {
    kind: String,
    serializer: String,
    bytes: Vec<u8>,
    json: Option<serde_json::Value>,
}

fn fixtures() -> HashMap<String, Fixture> {
    let php = common::require_tool("php", "apt-get install php-cli");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/php-values.php");
    let out = std::process::Command::new(php)
        .arg(script)
        .output()
        .expect("php runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "php warned: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut map = HashMap::new();
    for line in String::from_utf8(out.stdout).expect("utf8").lines() {
        let row: serde_json::Value = serde_json::from_str(line).expect("json row");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(row["b64"].as_str().expect("b64"))
            .expect("base64");
        let json = row["json"]
            .as_str()
            .and_then(|j| serde_json::from_str(j).ok());
        map.insert(
            row["name"].as_str().expect("name").to_string(),
            Fixture {
                kind: row["kind"].as_str().expect("kind").to_string(),
                serializer: row["serializer"].as_str().expect("serializer").to_string(),
                bytes,
                json,
            },
        );
    }
    assert!(map.len() >= 25, "only {} fixtures", map.len());
    map
}

#[test]
fn every_php_fixture_round_trips_byte_identically() {
    for (name, f) in fixtures() {
        let again = if f.kind == "value" {
            let v = php::unserialize(&f.bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            php::serialize(&v)
        } else {
            let ser = Serializer::parse(&f.serializer).expect("serializer");
            let s = php::decode_session(&f.bytes, ser, php::DEFAULT_MAX_BYTES)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            s.encode().expect("encode")
        };
        assert_eq!(
            String::from_utf8_lossy(&again),
            String::from_utf8_lossy(&f.bytes),
            "{name} re-encodes differently"
        );
        assert_eq!(again, f.bytes, "{name}");
    }
}

fn value_json(bytes: &[u8]) -> serde_json::Value {
    // A single value in the JSON form: wrap it as a one-variable session.
    let mut blob = b"v|".to_vec();
    blob.extend_from_slice(bytes);
    let s = php::decode_session(&blob, Serializer::Php, php::DEFAULT_MAX_BYTES).expect("decodes");
    s.to_json().expect("json")["v"].clone()
}

#[test]
fn json_form_agrees_with_php_json_encode() {
    let f = fixtures();
    // Plain values: PHP's json_encode makes the same lists and objects the contract does.
    for name in [
        "null",
        "true",
        "false",
        "int",
        "int_min",
        "int_max",
        "floats",
        "utf8",
        "list",
        "map",
        "sparse",
        "numeric_keys",
        "nested",
    ] {
        let fx = &f[name];
        assert_eq!(
            value_json(&fx.bytes),
            fx.json.clone().expect("php json"),
            "{name}"
        );
    }
    assert_eq!(
        value_json(&f["specials"].bytes),
        json!(["NAN", "INF", "-INF"])
    );
    assert_eq!(
        value_json(&f["binary"].bytes),
        json!({"$bytes": base64::engine::general_purpose::STANDARD.encode(b"\x00\xff\xfe\"quoted\";|bar")})
    );
    assert_eq!(
        value_json(&f["object"].bytes),
        json!({"$class": "User", "$props": {"id": 7, "friend": null}, "$protected": {"role": "admin"}, "$private": {"User": {"secret": "s\u{0}cr\u{c3}\u{ab}t"}}})
    );
    let child = value_json(&f["child"].bytes);
    assert_eq!(
        child["$private"],
        json!({"Child": {"secret": "child"}, "User": {"secret": "s\u{0}cr\u{c3}\u{ab}t"}})
    );
    assert_eq!(child["$props"]["extra"], json!([1.5, -0.0]));
    assert_eq!(
        value_json(&f["enum"].bytes),
        json!({"$enum": "Suit", "case": "Hearts"})
    );
    assert_eq!(
        value_json(&f["array_object"].bytes)["$class"],
        "ArrayObject"
    );
    assert_eq!(
        value_json(&f["stdclass"].bytes),
        json!({"$class": "stdClass", "$props": {"x": 1, "y": [true]}})
    );
    // References resolve to the same value, and a self-reference is tagged, not expanded.
    let refs = value_json(&f["refs"].bytes);
    assert_eq!(refs["a"], json!([1, 2]));
    assert_eq!(refs["b"], json!([1, 2]));
    assert_eq!(refs["o1"]["$props"]["friend"], json!({"$recursion": 5}));
    assert_eq!(refs["o2"]["$class"], "User");
    assert_eq!(refs["o2"]["$props"]["id"], 7);
}

#[test]
fn sessions_of_every_serializer_decode_the_same() {
    let f = fixtures();
    let mut forms = Vec::new();
    for name in ["session_php", "session_php_binary", "session_php_serialize"] {
        let fx = &f[name];
        let s = php::decode_session(
            &fx.bytes,
            Serializer::parse(&fx.serializer).expect("ser"),
            php::DEFAULT_MAX_BYTES,
        )
        .expect(name);
        assert_eq!(s.get("user_id").and_then(Value::as_i64), Some(42), "{name}");
        assert_eq!(
            s.get("name").and_then(Value::as_str),
            Some("Ad\u{e9} | pipe"),
            "{name}"
        );
        // ref_b is a PHP reference (R:) to ref_a; obj_b an object handle (r:) to obj_a.
        assert_eq!(s.get("ref_b"), s.get("ref_a"), "{name}");
        let j = s.to_json().expect("json");
        assert_eq!(j["ref_b"], json!([1, 2]), "{name}");
        assert_eq!(j["obj_b"]["$class"], "User", "{name}");
        assert_eq!(j["cart"]["items"][0]["price"], json!(9.99));
        assert_eq!(j["bin"], json!({"$bytes": "/wA="}));
        forms.push(j);
    }
    // Slot numbers differ by one in php_serialize (its outer array takes slot 1): compare the
    // rest exactly.
    fn without_slots(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                if m.contains_key("$recursion") {
                    m.insert("$recursion".into(), json!("*"));
                }
                m.values_mut().for_each(without_slots);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(without_slots),
            _ => {}
        }
    }
    assert_eq!(
        forms[0]["obj_a"]["$props"]["friend"],
        json!({"$recursion": 24})
    );
    assert_eq!(
        forms[2]["obj_a"]["$props"]["friend"],
        json!({"$recursion": 25})
    );
    forms.iter_mut().for_each(without_slots);
    assert_eq!(forms[0], forms[1]);
    assert_eq!(forms[0], forms[2]);
}

#[test]
fn cli_session_decode_prints_only_the_json() {
    let f = fixtures();
    let dir = std::env::temp_dir().join(format!("cutover-decode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("sess");
    std::fs::write(&path, &f["session_php_serialize"].bytes).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["session", "decode", "--serializer", "php_serialize"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is exactly one JSON document");
    assert_eq!(v["data"]["user_id"], 42);
    // From stdin, and a broken blob is an error on stderr with the byte offset.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["session", "decode"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"a|i:1;b|s:9:\"short\";")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at byte 10"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-z|;:\"{}]{0,12}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..12),
    ]
}

fn arb_key() -> impl Strategy<Value = Key> {
    prop_oneof![
        any::<i64>().prop_map(Key::Int),
        // Strings that PHP would keep as strings (a canonical integer string becomes an int key).
        "[a-z_][a-z0-9_]{0,8}".prop_map(|s| Key::Str(s.into_bytes())),
    ]
}

fn dedup(entries: Vec<(Key, Value)>) -> Vec<(Key, Value)> {
    let mut out: Vec<(Key, Value)> = Vec::new();
    for (k, v) in entries {
        if !out.iter().any(|(ok, _)| *ok == k) {
            out.push((k, v));
        }
    }
    out
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<f64>().prop_map(Value::Float),
        arb_bytes().prop_map(Value::Str),
        ("[A-Z][a-z]{0,6}", "[A-Z][a-z]{0,6}").prop_map(|(c, k)| Value::Enum {
            class: c.into_bytes(),
            case: k.into_bytes()
        }),
        ("[A-Z][a-z]{0,6}", arb_bytes()).prop_map(|(c, d)| Value::Custom {
            class: c.into_bytes(),
            data: d
        }),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec((arb_key(), inner.clone()), 0..6)
                .prop_map(|e| Value::Array(dedup(e))),
            (
                "[A-Z][a-z]{0,6}",
                proptest::collection::vec((arb_key(), inner), 0..4)
            )
                .prop_map(|(c, e)| Value::Object {
                    class: c.into_bytes(),
                    props: dedup(e)
                }),
        ]
    })
}

proptest! {
    #[test]
    fn serialize_then_unserialize_is_identity(v in arb_value()) {
        let bytes = php::serialize(&v);
        let back = php::unserialize(&bytes).map_err(|e| TestCaseError::fail(format!("{e} in {}", String::from_utf8_lossy(&bytes))))?;
        // Compare through bytes: NaN is not equal to itself as a value.
        prop_assert_eq!(php::serialize(&back), bytes);
    }

    #[test]
    fn sessions_round_trip(vars in proptest::collection::vec(("[a-z_]{1,10}", arb_value()), 0..5), which in 0..3usize) {
        let serializer = [Serializer::Php, Serializer::PhpBinary, Serializer::PhpSerialize][which];
        let mut s = php::Session::new(serializer);
        for (k, v) in vars {
            s.set(&k, v);
        }
        let bytes = s.encode().expect("encode");
        let back = php::decode_session(&bytes, serializer, php::DEFAULT_MAX_BYTES).expect("decode");
        prop_assert_eq!(back.encode().expect("encode"), bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        for ser in [Serializer::Php, Serializer::PhpBinary, Serializer::PhpSerialize] {
            if let Ok(s) = php::decode_session(&bytes, ser, 1 << 20) {
                let _ = s.to_json();
            }
        }
    }
}
