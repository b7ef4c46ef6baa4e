//! PHP-FPM's bytes as cutover reads them: any byte stream, fed in arbitrary pieces, gives
//! records or a protocol error, never a panic; a CGI head parses or is refused; parameter
//! blocks decode or are refused, and what encodes decodes back.
#![no_main]

use cutover::upstream::fastcgi::{
    decode_params, encode_params, head_end, parse_cgi_head, RecordReader,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(1, |b| usize::from(*b).max(1));
    let mut reader = RecordReader::default();
    'feed: for piece in data.chunks(split) {
        reader.feed(piece);
        loop {
            match reader.next_record() {
                Ok(Some(rec)) => {
                    assert!(rec.content.len() <= 65_535);
                }
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
    if let Ok(Some(end)) = head_end(data) {
        let _ = parse_cgi_head(&data[..end]);
    }
    let _ = parse_cgi_head(data);
    if let Some(pairs) = decode_params(data) {
        let again = decode_params(&encode_params(&pairs)).expect("what encodes decodes");
        assert_eq!(again.len(), pairs.len());
    }
});
