//! Copies of what hyper parsed, in memory of their own. hyper hands out the request line and
//! header values as slices of the connection's read buffer; anything that keeps one while the
//! connection goes on reading keeps the whole buffer, and makes hyper allocate another for its
//! next read (it cannot reclaim a buffer still shared). A request waiting on a slow upstream,
//! or an exchange waiting on a slow candidate, would hold two 8 KB buffers instead of a few
//! hundred bytes.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Uri};

/// The same URI in memory of its own.
pub fn uri(uri: &Uri) -> Uri {
    let text = match (uri.scheme(), uri.path_and_query()) {
        // Origin form (what clients send a proxy): no formatting needed.
        (None, Some(pq)) => Bytes::copy_from_slice(pq.as_str().as_bytes()),
        _ => Bytes::from(uri.to_string()),
    };
    Uri::from_maybe_shared(text).unwrap_or_else(|_| uri.clone())
}

/// Gives the header values bytes of their own, in place: one buffer for all of them, each value
/// a slice of it, rather than an allocation per value.
pub fn headers(headers: &mut HeaderMap) {
    let total: usize = headers.values().map(HeaderValue::len).sum();
    let mut buf = bytes::BytesMut::with_capacity(total);
    for v in headers.values() {
        buf.extend_from_slice(v.as_bytes());
    }
    let mut own = buf.freeze();
    for value in headers.values_mut() {
        let take = value.len().min(own.len());
        let mine = own.split_to(take);
        // The two passes visit the values in the same order; checked, not assumed.
        let detached = if mine.as_ref() == value.as_bytes() {
            HeaderValue::from_maybe_shared(mine)
        } else {
            HeaderValue::from_bytes(value.as_bytes())
        };
        if let Ok(mut v) = detached {
            v.set_sensitive(value.is_sensitive());
            *value = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detached_uri_is_the_same_and_owns_its_bytes() {
        let wire = Bytes::from_static(b"GET /users/7?tab=a%20b HTTP/1.1");
        let parsed = Uri::from_maybe_shared(wire.slice(4..22)).expect("uri");
        let own = uri(&parsed);
        assert_eq!(own, parsed);
        assert_eq!(
            own.path_and_query().map(|p| p.as_str()),
            Some("/users/7?tab=a%20b")
        );
        let wire_range = wire.as_ptr_range();
        let path = own.path().as_ptr();
        assert!(
            !wire_range.contains(&path),
            "the path still points into the read buffer"
        );
        let absolute: Uri = "http://example.test/x?y".parse().expect("uri");
        assert_eq!(uri(&absolute), absolute);
    }

    #[test]
    fn detached_headers_keep_every_value_in_buffers_of_their_own() {
        // As hyper parses them: every value a slice of the connection's read buffer.
        let wire = Bytes::from_static(b"text/htmlabcsecretv1v2");
        let slice =
            |a: usize, b: usize| HeaderValue::from_maybe_shared(wire.slice(a..b)).expect("value");
        let mut h = HeaderMap::new();
        h.insert("content-type", slice(0, 9));
        h.insert("x-a", slice(9, 12));
        let mut secret = slice(12, 18);
        secret.set_sensitive(true);
        h.insert("authorization", secret);
        h.append("x-multi", slice(18, 20));
        h.append("x-multi", slice(20, 22));
        h.insert("x-empty", HeaderValue::from_static(""));
        let before = h.clone();
        headers(&mut h);
        assert_eq!(h, before);
        assert!(h["authorization"].is_sensitive());
        let wire_range = wire.as_ptr_range();
        for v in h.values() {
            assert!(
                v.is_empty() || !wire_range.contains(&v.as_bytes().as_ptr()),
                "{v:?} still points into the read buffer"
            );
        }
        let multi: Vec<_> = h.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["v1", "v2"]);
    }
}
