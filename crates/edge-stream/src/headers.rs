//! Header rules shared by the two ways the edge talks to the kubelet.
//!
//! The cloud forwards the apiserver's request headers in the connect descriptor (a Go
//! `http.Header`). The edge replays them: verbatim minus framing headers for upgrades
//! (KubeEdge's exact behaviour), minus hop-by-hop headers for plain requests, and it turns the
//! kubelet's response headers back into a Go-canonical map for the tether/2 open result.
//! Names that are not HTTP tokens and values with control characters are dropped here, so
//! nothing the cloud sends can split a request head.

use std::borrow::Cow;

use http::{HeaderName, HeaderValue};
use stream_proto::{HeaderMap, canonical_header_key};

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the legacy ones Go's reverse proxy removes).
/// They describe one connection, not the request, so they never cross the tunnel.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// True for an RFC 9110 token, the only valid header field name.
pub(crate) fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A forwarded value made safe to write into a request head, as Go's `Header.Write` does
/// (CR and LF become spaces, surrounding whitespace is trimmed), or `None` if it still holds
/// a control character.
pub(crate) fn clean_value(value: &str) -> Option<Cow<'_, str>> {
    const BLANK: [char; 2] = [' ', '\t'];
    let value = if value.contains(['\r', '\n']) {
        Cow::Owned(value.replace(['\r', '\n'], " "))
    } else {
        Cow::Borrowed(value)
    };
    if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
        return None;
    }
    Some(match value {
        Cow::Borrowed(v) => Cow::Borrowed(v.trim_matches(BLANK)),
        Cow::Owned(v) => Cow::Owned(v.trim_matches(BLANK).to_owned()),
    })
}

/// The forwarded headers as valid `(name, value)` pairs, in the map's (sorted) order.
pub(crate) fn forwarded(header: Option<&HeaderMap>) -> impl Iterator<Item = (&str, Cow<'_, str>)> {
    header
        .into_iter()
        .flatten()
        .filter(|(name, _)| is_token(name))
        .flat_map(|(name, values)| {
            values
                .iter()
                .filter_map(move |v| clean_value(v).map(|v| (name.as_str(), v)))
        })
}

/// The names one `Connection` value lists, lower-cased: hop-by-hop for this message only
/// (RFC 9110 §7.6.1).
fn connection_tokens(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The headers of a plain (non-upgrade) request to the kubelet: the forwarded ones without
/// hop-by-hop headers, `Host` and `Content-Length` (the edge sets those itself).
///
/// With `identity_only`, `Accept-Encoding: identity` replaces whatever was forwarded.
pub(crate) fn plain_request_headers(
    header: Option<&HeaderMap>,
    identity_only: bool,
) -> http::HeaderMap {
    let listed: Vec<String> = forwarded(header)
        .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, value)| connection_tokens(&value))
        .collect();
    let mut out = http::HeaderMap::new();
    for (name, value) in forwarded(header) {
        let lower = name.to_ascii_lowercase();
        if HOP_BY_HOP.contains(&lower.as_str())
            || lower == "host"
            || lower == "content-length"
            || listed.contains(&lower)
            || (identity_only && lower == "accept-encoding")
            // Ours, between cloud and edge; the kubelet never sees it.
            || lower.eq_ignore_ascii_case(stream_compress::ACCEPT_HEADER)
        {
            continue;
        }
        // Both conversions succeed for what `forwarded` lets through; skipping keeps this
        // total anyway.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            out.append(name, value);
        }
    }
    if identity_only {
        out.insert(
            http::header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    out
}

/// The kubelet's response headers as a Go `http.Header`: canonical keys, values in order,
/// hop-by-hop headers removed.
pub(crate) fn response_headers(headers: &http::HeaderMap) -> HeaderMap {
    let listed: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(connection_tokens)
        .collect();
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        let name = name.as_str();
        if HOP_BY_HOP.contains(&name) || listed.iter().any(|t| t == name) {
            continue;
        }
        out.entry(canonical_header_key(name))
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &[&str])]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, vs)| {
                (
                    (*k).to_owned(),
                    vs.iter().map(|v| (*v).to_owned()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn values_cannot_split_a_head() {
        assert_eq!(clean_value("  a b\t").as_deref(), Some("a b"));
        assert_eq!(
            clean_value("a\r\nInjected: x").as_deref(),
            Some("a  Injected: x")
        );
        assert_eq!(clean_value("a\0b"), None);
        assert_eq!(clean_value("a\x7fb"), None);
        assert_eq!(clean_value("héllo").as_deref(), Some("héllo"));
    }

    #[test]
    fn plain_requests_lose_hop_by_hop_headers() {
        let header = map(&[
            ("Accept", &["text/plain"]),
            ("Connection", &["keep-alive, X-Secret"]),
            ("Content-Length", &["12"]),
            ("Host", &["evil.example:80"]),
            ("Keep-Alive", &["timeout=5"]),
            ("Te", &["trailers"]),
            ("Transfer-Encoding", &["chunked"]),
            ("Upgrade", &["websocket"]),
            ("X-Secret", &["listed in Connection"]),
            ("X-Forwarded-For", &["10.0.0.1", "10.0.0.2"]),
            ("Bad Name", &["x"]),
            ("X-Nul", &["a\0b"]),
            ("Accept-Encoding", &["gzip"]),
        ]);
        let out = plain_request_headers(Some(&header), false);
        let names: Vec<&str> = out.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["accept", "accept-encoding", "x-forwarded-for"]);
        assert_eq!(out.get_all("x-forwarded-for").iter().count(), 2);
        assert_eq!(out["accept-encoding"], "gzip");

        let out = plain_request_headers(Some(&header), true);
        assert_eq!(
            out.get_all("accept-encoding").iter().collect::<Vec<_>>(),
            ["identity"]
        );
        assert!(plain_request_headers(None, false).is_empty());
    }

    #[test]
    fn responses_get_go_canonical_keys() {
        let mut headers = http::HeaderMap::new();
        headers.append("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-stream-protocol-version", HeaderValue::from_static("v4"));
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        headers.append("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.append("connection", HeaderValue::from_static("close, x-hop"));
        headers.append("x-hop", HeaderValue::from_static("1"));
        headers.append("content-length", HeaderValue::from_static("7"));
        let out = response_headers(&headers);
        assert_eq!(
            out,
            map(&[
                ("Content-Length", &["7"]),
                ("Content-Type", &["text/plain"]),
                ("Set-Cookie", &["a=1", "b=2"]),
                ("X-Stream-Protocol-Version", &["v4"]),
            ])
        );
    }
}
