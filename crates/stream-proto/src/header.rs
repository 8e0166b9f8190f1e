//! Go `http.Header` as it travels in a connect descriptor.
//!
//! The stream server copies the apiserver's request headers into the descriptor; the edge
//! replays them against the kubelet. Go keys that map by canonical MIME header key, and Go's
//! JSON encoder writes map keys sorted, which a `BTreeMap` reproduces.

use std::collections::BTreeMap;

/// Go `http.Header`: canonical header key → values in arrival order.
///
/// Iteration (and so JSON output) is in byte order of the keys, as Go's encoder sorts them.
/// Decoded maps keep keys exactly as received, as Go's decoder does; use
/// [`canonical_header_key`] when inserting.
pub type HeaderMap = BTreeMap<String, Vec<String>>;

/// Go's `textproto.CanonicalMIMEHeaderKey`.
///
/// Upper-cases the first letter and every letter after a `-`, lower-cases the rest:
/// `x-stream-protocol-version` → `X-Stream-Protocol-Version`, `sessionhostnameoverride` →
/// `Sessionhostnameoverride`. A key containing anything but RFC 7230 token characters
/// (including a space or non-ASCII) is returned unchanged, as Go does.
pub fn canonical_header_key(name: &str) -> String {
    if !name.bytes().all(is_token_byte) {
        return name.to_owned();
    }
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for b in name.bytes() {
        let c = if upper {
            b.to_ascii_uppercase()
        } else {
            b.to_ascii_lowercase()
        };
        out.push(char::from(c));
        upper = c == b'-';
    }
    out
}

/// RFC 7230 `tchar` (Go's `validHeaderFieldByte`).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalizes_like_go() {
        let table = [
            ("sessionhostnameoverride", "Sessionhostnameoverride"),
            ("x-stream-protocol-version", "X-Stream-Protocol-Version"),
            ("X-STREAM-PROTOCOL-VERSION", "X-Stream-Protocol-Version"),
            ("Sec-WebSocket-Key", "Sec-Websocket-Key"),
            ("content-length", "Content-Length"),
            ("user-agent", "User-Agent"),
            ("-foo--bar-", "-Foo--Bar-"),
            ("a1-2b", "A1-2b"),
            ("x_y", "X_y"),
            ("", ""),
            // Not tokens: unchanged.
            ("foo bar", "foo bar"),
            ("foo:bar", "foo:bar"),
            ("héader", "héader"),
        ];
        for (input, want) in table {
            assert_eq!(canonical_header_key(input), want, "{input:?}");
        }
    }
}
