//! The parts of Go's `encoding/json` that the wire depends on.
//!
//! KubeEdge's connect descriptors are written by Go's encoder and read by Go's decoder. To be
//! byte-identical on output we write JSON by hand with Go's string escaping; to accept what any
//! Go peer sends we match object keys the way Go does (exact, else case-insensitive). Only the
//! connect-descriptor code uses the key matching; the tether/2 payloads are ours and strict.

/// Appends `s` as a JSON string exactly as Go's `json.Marshal` does (HTML-safe escaping on).
///
/// Go escapes `<`, `>` and `&` as `\u003c`, `\u003e`, `\u0026`; the line and paragraph
/// separators U+2028/U+2029 as `\u2028`/`\u2029`; `\b`, `\f`, `\n`, `\r`, `\t` with their short
/// forms (Go 1.22 and later); other control bytes as `\u00XX` with lowercase hex. DEL and all
/// other characters are written raw.
pub(crate) fn write_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, ch) in s.char_indices() {
        let escape: Option<&[u8]> = match ch {
            '"' => Some(b"\\\""),
            '\\' => Some(b"\\\\"),
            '\u{8}' => Some(b"\\b"),
            '\u{c}' => Some(b"\\f"),
            '\n' => Some(b"\\n"),
            '\r' => Some(b"\\r"),
            '\t' => Some(b"\\t"),
            '\u{2028}' => Some(b"\\u2028"),
            '\u{2029}' => Some(b"\\u2029"),
            c if c < ' ' || c == '<' || c == '>' || c == '&' => None,
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        match escape {
            Some(seq) => out.extend_from_slice(seq),
            None => {
                // Only ASCII reaches this arm, so the char is a single byte.
                let b = ch as u8;
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
        start = i + ch.len_utf8();
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends a `map[string][]string` (an `http.Header`) the way Go encodes it: keys in byte
/// order (a `BTreeMap<String, _>` already iterates that way), values as string arrays.
pub(crate) fn write_header_map(out: &mut Vec<u8>, map: &crate::HeaderMap) {
    out.push(b'{');
    for (i, (key, values)) in map.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(out, key);
        out.extend_from_slice(b":[");
        for (j, value) in values.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            write_string(out, value);
        }
        out.push(b']');
    }
    out.push(b'}');
}

/// Whether a JSON object key selects the struct field `name`, by Go's rule.
///
/// Go tries an exact match first, then compares both names folded to upper case rune by rune
/// (`encoding/json`'s `foldName`). All our field names are ASCII and distinct after folding, so
/// the exact-first step never changes which field wins and a single folded comparison suffices.
/// Folding is per rune with a single-rune upper-case mapping, so `ſ` (U+017F) matches `S` and
/// `ı` (U+0131) matches `I`, as in Go.
pub(crate) fn field_matches(key: &str, name: &str) -> bool {
    let mut key_chars = key.chars();
    for expected in name.bytes() {
        let Some(c) = key_chars.next() else {
            return false;
        };
        if fold(c) != char::from(expected.to_ascii_uppercase()) {
            return false;
        }
    }
    key_chars.next().is_none()
}

/// Go's `unicode.ToUpper` for one rune, as far as it can matter when comparing against ASCII.
fn fold(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_uppercase();
    }
    let mut upper = c.to_uppercase();
    match (upper.next(), upper.next()) {
        (Some(u), None) => u,
        // Multi-rune expansions (e.g. `ß` → `SS`) have no single-rune mapping; Go keeps the rune.
        _ => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(s: &str) -> String {
        let mut out = Vec::new();
        write_string(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escapes_like_go() {
        assert_eq!(string("a&b=c"), r#""a\u0026b=c""#);
        assert_eq!(string("<x>"), r#""\u003cx\u003e""#);
        assert_eq!(string("q\"\\"), r#""q\"\\""#);
        assert_eq!(string("\n\r\t\u{8}\u{c}"), r#""\n\r\t\b\f""#);
        assert_eq!(string("\u{0}\u{1f}"), r#""\u0000\u001f""#);
        assert_eq!(string("\u{7f}é✓"), "\"\u{7f}é✓\"");
        assert_eq!(string("a\u{2028}b\u{2029}"), r#""a\u2028b\u2029""#);
        assert_eq!(string(""), r#""""#);
    }

    #[test]
    fn escaped_output_is_valid_json() {
        let nasty = "<&>\"\\\u{0}\u{1}\u{8}\u{c}\u{1b}\u{7f}\u{2028}é😀";
        let json = string(nasty);
        let back: String = serde_json::from_str(&json).unwrap();
        assert_eq!(back, nasty);
    }

    #[test]
    fn field_matching_is_go_case_insensitive() {
        assert!(field_matches("MessID", "MessID"));
        assert!(field_matches("messid", "MessID"));
        assert!(field_matches("MESSID", "MessID"));
        assert!(field_matches("ſcheme", "Scheme"));
        assert!(!field_matches("MessI", "MessID"));
        assert!(!field_matches("MessIDs", "MessID"));
        assert!(!field_matches("Mess_ID", "MessID"));
        assert!(!field_matches("", "url"));
    }
}
