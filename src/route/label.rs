//! Route labels for paths no `[[route]]` matched: segments that look like ids are folded, so
//! `/orders/8812/items` and `/orders/9921/items` count as one series, `/orders/{n}/items`.
//! Pure, no IO.

/// The label for a path no route matched: segments that look like ids are folded so that
/// `/orders/8812` and `/orders/9921` count as one series.
pub fn template_label(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if i == 0 {
            continue;
        }
        out.push_str(fold_segment(seg));
        if out.len() > 200 {
            out.truncate(200);
            out.push_str("...");
            break;
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn fold_segment(seg: &str) -> &str {
    if seg.is_empty() {
        return seg;
    }
    let b = seg.as_bytes();
    if b.iter().all(u8::is_ascii_digit) {
        return "{n}";
    }
    if is_uuid(b) {
        return "{uuid}";
    }
    if b.len() >= 16 && b.iter().all(u8::is_ascii_hexdigit) {
        return "{hex}";
    }
    // base64-ish tokens: long, from the base64 alphabets, and with both digits and letters
    // (so that long words such as `internationalization` stay as they are).
    if b.len() >= 20
        && b.iter().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'+' | b'=' | b'.' | b'%')
        })
        && b.iter().any(u8::is_ascii_digit)
        && b.iter().any(u8::is_ascii_alphabetic)
    {
        return "{token}";
    }
    if seg.len() > 64 {
        return "{long}";
    }
    seg
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_fold_ids() {
        assert_eq!(template_label("/orders/8812/items"), "/orders/{n}/items");
        assert_eq!(
            template_label("/u/123e4567-e89b-12d3-a456-426614174000"),
            "/u/{uuid}"
        );
        assert_eq!(template_label("/t/0123456789abcdef0123"), "/t/{hex}");
        assert_eq!(template_label("/k/aGVsbG8gd29ybGQgaGVsbG8x"), "/k/{token}");
        assert_eq!(
            template_label("/about/internationalization"),
            "/about/internationalization"
        );
        assert_eq!(template_label("/"), "/");
    }
}
