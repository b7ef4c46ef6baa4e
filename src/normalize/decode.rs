//! Content decoding before normalization: a body is compared as the client's software would
//! read it, so `Content-Encoding` (gzip, deflate, br) is undone first — with the decoded size
//! capped, so a compressed bomb is an error, not an allocation.

use crate::diff::Captured;
use bytes::Bytes;
use std::io::Read;

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported content-encoding `{0}`")]
    Unsupported(String),
    #[error("{encoding} body does not decode: {why}")]
    Corrupt { encoding: String, why: String },
    #[error("{encoding} body decodes to more than {cap} bytes")]
    TooLarge { encoding: String, cap: usize },
}

/// Whether the body is as sent (no `Content-Encoding`, or `identity`): nothing to decode.
pub fn identity_encoded(c: &Captured) -> bool {
    c.headers
        .get(http::header::CONTENT_ENCODING)
        .is_none_or(|e| e.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"))
}

/// The body decoded from its `Content-Encoding` (gzip, deflate, br), at most `cap` bytes
/// decoded (a compressed bomb is an error, not an allocation).
pub fn decoded(mut c: Captured, cap: usize) -> Result<Captured, DecodeError> {
    let encoding = match c
        .headers
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        Some(e) => e.trim().to_ascii_lowercase(),
        None => return Ok(c),
    };
    if encoding.is_empty() || encoding == "identity" {
        return Ok(c);
    }
    let limit = cap as u64 + 1;
    let mut out = Vec::new();
    let raw: &[u8] = &c.body;
    let result = match encoding.as_str() {
        "gzip" | "x-gzip" => flate2::read::MultiGzDecoder::new(raw)
            .take(limit)
            .read_to_end(&mut out),
        "deflate" => {
            let r = flate2::read::ZlibDecoder::new(raw)
                .take(limit)
                .read_to_end(&mut out);
            if r.is_err() {
                // Some servers send raw deflate without the zlib wrapper.
                out.clear();
                flate2::read::DeflateDecoder::new(raw)
                    .take(limit)
                    .read_to_end(&mut out)
            } else {
                r
            }
        }
        "br" => brotli::Decompressor::new(raw, 4096)
            .take(limit)
            .read_to_end(&mut out),
        other => return Err(DecodeError::Unsupported(other.to_string())),
    };
    result.map_err(|e| DecodeError::Corrupt {
        encoding: encoding.clone(),
        why: e.to_string(),
    })?;
    if out.len() as u64 >= limit {
        return Err(DecodeError::TooLarge { encoding, cap });
    }
    c.body = Bytes::from(out);
    c.headers.remove(http::header::CONTENT_ENCODING);
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};
    use std::io::Write;

    fn cap(encoding: &str, body: Vec<u8>) -> Captured {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CONTENT_ENCODING,
            HeaderValue::from_str(encoding).expect("value"),
        );
        Captured {
            status: 200,
            headers: h,
            body: Bytes::from(body),
        }
    }

    #[test]
    fn decodes_gzip_deflate_br() {
        let text = b"hello hello hello".to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&text).expect("write");
        let gz = gz.finish().expect("finish");
        assert_eq!(
            decoded(cap("gzip", gz), 1000).expect("gzip").body,
            &text[..]
        );
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&text).expect("write");
        assert_eq!(
            decoded(cap("deflate", z.finish().expect("finish")), 1000)
                .expect("deflate")
                .body,
            &text[..]
        );
        let mut br = Vec::new();
        brotli::CompressorWriter::new(&mut br, 4096, 5, 22)
            .write_all(&text)
            .expect("write");
        assert_eq!(decoded(cap("br", br), 1000).expect("br").body, &text[..]);
    }

    #[test]
    fn bombs_are_refused() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![0u8; 1 << 20]).expect("write");
        let e = decoded(cap("gzip", gz.finish().expect("finish")), 1000).expect_err("over the cap");
        assert!(e.to_string().contains("more than 1000 bytes"), "{e}");
        assert!(decoded(cap("gzip", b"not gzip".to_vec()), 1000).is_err());
    }
}
