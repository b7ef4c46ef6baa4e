//! The PHP session decoder on arbitrary bytes, under each serializer: it must never panic, and
//! whatever decodes must re-encode to bytes that decode to the same thing.
#![no_main]
use cutover_session::php::{decode_session, Serializer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for ser in [Serializer::Php, Serializer::PhpBinary, Serializer::PhpSerialize] {
        let Ok(s) = decode_session(data, ser, 1 << 20) else { continue };
        let _ = s.to_json();
        let Ok(bytes) = s.encode() else { continue };
        let again = decode_session(&bytes, ser, 1 << 22).expect("what we encode decodes");
        assert_eq!(again.encode().expect("encodes"), bytes, "encoding is stable");
    }
});
