//! Go's `net/url.URL`, as KubeEdge puts it in a connect descriptor.
//!
//! The cloud builds the URL from the apiserver's request and the edge turns it back into a
//! request line with `URL.String()`. Both steps go through Go's escaping rules (`shouldEscape`,
//! `setPath`, `EscapedPath`), and a Rust peer has to reproduce them byte for byte or the kubelet
//! sees a different path than a stock peer would send. This module holds those rules; they are
//! a transcription of Go 1.23's `net/url`, not a general URL library.

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use crate::Error;
use crate::go_json::{self, field_matches};

/// Go's `*url.Userinfo` as it appears in JSON.
///
/// `Userinfo` has only unexported fields, so Go encodes a non-nil one as `{}` and no user name
/// or password ever crosses the wire; all that survives is whether it was present. KubeEdge's
/// cloud always sends `null`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct GoUserinfo;

/// Go's `url.URL`, field for field (Go 1.23).
///
/// The JSON form is the object Go's encoder writes, see [`ConnectRequest`](crate::ConnectRequest).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GoUrl {
    /// `Scheme`: `http` in every descriptor the cloud sends.
    pub scheme: String,
    /// `Opaque`: encoded opaque data (never set by KubeEdge).
    pub opaque: String,
    /// `User`: see [`GoUserinfo`].
    pub user: Option<GoUserinfo>,
    /// `Host`: `host` or `host:port`; `127.0.0.1:10350` in every descriptor the cloud sends.
    pub host: String,
    /// `Path`: the decoded path.
    pub path: String,
    /// `RawPath`: the encoded path, set only when it differs from Go's default encoding of
    /// `Path` (for example when it contains `%2F`).
    pub raw_path: String,
    /// `OmitHost`: do not emit an empty host (`scheme:/path`).
    pub omit_host: bool,
    /// `ForceQuery`: append `?` even when `RawQuery` is empty.
    pub force_query: bool,
    /// `RawQuery`: the encoded query without the `?`, exactly as received.
    pub raw_query: String,
    /// `Fragment`: the decoded fragment.
    pub fragment: String,
    /// `RawFragment`: the encoded fragment, when it differs from Go's default encoding.
    pub raw_fragment: String,
}

impl GoUrl {
    /// Builds the URL object the way KubeEdge's cloud does from a received origin-form request
    /// target (`/path?query`), then sets the scheme and host the cloud overwrites.
    ///
    /// Like Go's `url.ParseRequestURI` followed by `setPath`: `path` is the percent-decoded
    /// path, `raw_path` the original only when it differs from Go's escaping of `path`,
    /// `raw_query` the query exactly as received, and a lone trailing `?` sets `force_query`.
    /// `#` has no special meaning in a request target and stays in the path or query.
    ///
    /// A path that decodes to invalid UTF-8 (`/%ff`) gets one U+FFFD per invalid byte in
    /// `path`, which is exactly what Go's JSON encoder puts on the wire for it, while
    /// `raw_path` keeps the original escapes.
    ///
    /// # Errors
    ///
    /// [`Error::ControlCharacter`] for ASCII control bytes, [`Error::InvalidRequestTarget`]
    /// when the target does not start with `/` (absolute-form and `*` are for the caller to
    /// reduce to a path first), [`Error::InvalidEscape`] for a malformed `%` escape in the path.
    pub fn from_request_target(scheme: &str, host: &str, target: &str) -> Result<GoUrl, Error> {
        if target.bytes().any(|b| b < b' ' || b == 0x7f) {
            return Err(Error::ControlCharacter);
        }
        // Go: a single trailing '?' means ForceQuery; otherwise the first '?' starts the query.
        let (path, raw_query, force_query) = match target.strip_suffix('?') {
            Some(path) if !path.contains('?') => (path, "", true),
            _ => match target.split_once('?') {
                Some((path, query)) => (path, query, false),
                None => (target, "", false),
            },
        };
        if !path.starts_with('/') {
            return Err(Error::InvalidRequestTarget);
        }
        let decoded = unescape(path)?;
        // Go's setPath compares the escaping of the decoded bytes, not of their lossy text.
        let raw_path = if escape(&decoded, Mode::Path) == path {
            String::new()
        } else {
            path.to_owned()
        };
        Ok(GoUrl {
            scheme: scheme.to_owned(),
            host: host.to_owned(),
            path: go_lossy_utf8(&decoded),
            raw_path,
            force_query,
            raw_query: raw_query.to_owned(),
            ..GoUrl::default()
        })
    }

    /// Go's `URL.EscapedPath()`: `raw_path` when it is a valid encoding of `path`, otherwise
    /// `path` escaped with Go's path rules (`*` is left alone).
    pub fn escaped_path(&self) -> String {
        if let Some(raw) = preferred_raw(&self.raw_path, &self.path, Mode::Path) {
            return raw.to_owned();
        }
        if self.path == "*" {
            return "*".to_owned();
        }
        escape(self.path.as_bytes(), Mode::Path)
    }

    /// Go's `URL.EscapedFragment()`.
    fn escaped_fragment(&self) -> String {
        match preferred_raw(&self.raw_fragment, &self.fragment, Mode::Fragment) {
            Some(raw) => raw.to_owned(),
            None => escape(self.fragment.as_bytes(), Mode::Fragment),
        }
    }

    /// Go's `URL.RequestURI()`: the opaque part or the escaped path (`/` when empty), then
    /// `?` and the raw query when the query is non-empty or `force_query` is set.
    pub fn request_uri(&self) -> String {
        let mut out = if self.opaque.is_empty() {
            let path = self.escaped_path();
            if path.is_empty() {
                "/".to_owned()
            } else {
                path
            }
        } else if self.opaque.starts_with("//") {
            format!("{}:{}", self.scheme, self.opaque)
        } else {
            self.opaque.clone()
        };
        if self.force_query || !self.raw_query.is_empty() {
            out.push('?');
            out.push_str(&self.raw_query);
        }
        out
    }

    /// Go's `URL.String()`, exactly; a stock edge builds its kubelet request from this.
    pub fn to_go_string(&self) -> String {
        let mut out = String::new();
        if !self.scheme.is_empty() {
            out.push_str(&self.scheme);
            out.push(':');
        }
        if self.opaque.is_empty() {
            if !self.scheme.is_empty() || !self.host.is_empty() || self.user.is_some() {
                let omit = self.omit_host && self.host.is_empty() && self.user.is_none();
                if !omit {
                    if !self.host.is_empty() || !self.path.is_empty() || self.user.is_some() {
                        out.push_str("//");
                    }
                    if self.user.is_some() {
                        // An empty Userinfo prints as "" (see GoUserinfo).
                        out.push('@');
                    }
                    if !self.host.is_empty() {
                        out.push_str(&escape(self.host.as_bytes(), Mode::Host));
                    }
                }
            }
            let path = self.escaped_path();
            if !path.is_empty() && !path.starts_with('/') && !self.host.is_empty() {
                out.push('/');
            }
            if out.is_empty() {
                // RFC 3986 §4.2: a first segment with a colon would read as a scheme.
                let first_segment = path.split('/').next().unwrap_or_default();
                if first_segment.contains(':') {
                    out.push_str("./");
                }
            }
            out.push_str(&path);
        } else {
            out.push_str(&self.opaque);
        }
        if self.force_query || !self.raw_query.is_empty() {
            out.push('?');
            out.push_str(&self.raw_query);
        }
        if !self.fragment.is_empty() {
            out.push('#');
            out.push_str(&self.escaped_fragment());
        }
        out
    }

    /// Appends the JSON object Go's encoder writes for a `url.URL` (Go 1.23 field order).
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        let strings = |out: &mut Vec<u8>, key: &str, value: &str| {
            out.extend_from_slice(key.as_bytes());
            go_json::write_string(out, value);
        };
        let bool_str = |v: bool| if v { "true" } else { "false" };
        strings(out, "{\"Scheme\":", &self.scheme);
        strings(out, ",\"Opaque\":", &self.opaque);
        out.extend_from_slice(match self.user {
            Some(GoUserinfo) => b",\"User\":{}",
            None => b",\"User\":null",
        });
        strings(out, ",\"Host\":", &self.host);
        strings(out, ",\"Path\":", &self.path);
        strings(out, ",\"RawPath\":", &self.raw_path);
        out.extend_from_slice(b",\"OmitHost\":");
        out.extend_from_slice(bool_str(self.omit_host).as_bytes());
        out.extend_from_slice(b",\"ForceQuery\":");
        out.extend_from_slice(bool_str(self.force_query).as_bytes());
        strings(out, ",\"RawQuery\":", &self.raw_query);
        strings(out, ",\"Fragment\":", &self.fragment);
        strings(out, ",\"RawFragment\":", &self.raw_fragment);
        out.push(b'}');
    }
}

/// Decodes a JSON `url` object into an existing [`GoUrl`], with Go's semantics: keys match
/// case-insensitively, unknown keys are skipped, `null` leaves a field unchanged (or clears
/// `User`), and a repeated `url` key updates the same struct rather than replacing it.
pub(crate) struct GoUrlSeed<'a>(pub(crate) &'a mut GoUrl);

impl<'de> DeserializeSeed<'de> for GoUrlSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        // `deserialize_option` lets a top-level `null` through as "leave unchanged".
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for GoUrlSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a Go url.URL object or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let url = self.0;
        while let Some(key) = map.next_key::<String>()? {
            let string_field = [
                ("Scheme", &mut url.scheme),
                ("Opaque", &mut url.opaque),
                ("Host", &mut url.host),
                ("Path", &mut url.path),
                ("RawPath", &mut url.raw_path),
                ("RawQuery", &mut url.raw_query),
                ("Fragment", &mut url.fragment),
                ("RawFragment", &mut url.raw_fragment),
            ]
            .into_iter()
            .find(|(name, _)| field_matches(&key, name));
            if let Some((_, field)) = string_field {
                if let Some(value) = map.next_value::<Option<String>>()? {
                    *field = value;
                }
            } else if field_matches(&key, "OmitHost") {
                if let Some(value) = map.next_value::<Option<bool>>()? {
                    url.omit_host = value;
                }
            } else if field_matches(&key, "ForceQuery") {
                if let Some(value) = map.next_value::<Option<bool>>()? {
                    url.force_query = value;
                }
            } else if field_matches(&key, "User") {
                url.user = map
                    .next_value::<Option<UserinfoJson>>()?
                    .map(|_| GoUserinfo);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// Any JSON object, contents ignored: what Go's decoder accepts for `*url.Userinfo`, whose
/// fields are all unexported.
struct UserinfoJson;

impl<'de> de::Deserialize<'de> for UserinfoJson {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = UserinfoJson;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a Go url.Userinfo object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UserinfoJson, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(UserinfoJson)
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// Which of Go's `encoding` modes an escape runs in; only the ones URL.String() uses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Path,
    Host,
    Fragment,
}

/// Go's `shouldEscape` for the modes we need.
fn should_escape(c: u8, mode: Mode) -> bool {
    if c.is_ascii_alphanumeric() {
        return false;
    }
    if mode == Mode::Host
        && matches!(
            c,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'['
                | b']'
                | b'<'
                | b'>'
                | b'"'
        )
    {
        return false;
    }
    match c {
        b'-' | b'_' | b'.' | b'~' => false,
        b'$' | b'&' | b'+' | b',' | b'/' | b':' | b';' | b'=' | b'?' | b'@' => match mode {
            Mode::Path => c == b'?',
            Mode::Fragment => false,
            // Go's host mode falls through to "escape everything else" for these.
            Mode::Host => true,
        },
        b'!' | b'(' | b')' | b'*' if mode == Mode::Fragment => false,
        _ => true,
    }
}

/// Go's `escape` (never in query-component mode, so no `+` for space). Works on bytes because
/// a decoded path may hold bytes that are not UTF-8.
fn escape(s: &[u8], mode: Mode) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for &c in s {
        if should_escape(c, mode) {
            out.push('%');
            out.push(char::from(HEX[usize::from(c >> 4)]));
            out.push(char::from(HEX[usize::from(c & 0xf)]));
        } else {
            out.push(char::from(c));
        }
    }
    out
}

/// Go's `unescape` in path or fragment mode: `%XX` becomes a byte, `+` stays `+`.
fn unescape(s: &str) -> Result<Vec<u8>, Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_value);
            let lo = bytes.get(i + 2).copied().and_then(hex_value);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(Error::InvalidEscape);
            };
            out.push((hi << 4) | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Go's `validEncoded`: only characters that may appear unescaped, or `%`.
fn valid_encoded(s: &str, mode: Mode) -> bool {
    s.bytes().all(|c| {
        matches!(
            c,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'['
                | b']'
                | b'%'
        ) || !should_escape(c, mode)
    })
}

/// The raw form of a field when Go would prefer it: non-empty, validly encoded, and decoding
/// to exactly the decoded field.
fn preferred_raw<'a>(raw: &'a str, decoded: &str, mode: Mode) -> Option<&'a str> {
    if raw.is_empty() || !valid_encoded(raw, mode) {
        return None;
    }
    match unescape(raw) {
        Ok(bytes) if bytes == decoded.as_bytes() => Some(raw),
        _ => None,
    }
}

/// Text as Go's JSON encoder writes a byte string: each byte that is not part of valid UTF-8
/// becomes one U+FFFD (`from_utf8_lossy` would merge some runs of bad bytes into one).
fn go_lossy_utf8(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for _ in chunk.invalid() {
            out.push(char::REPLACEMENT_CHARACTER);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(path: &str, raw_path: &str) -> GoUrl {
        GoUrl {
            scheme: "http".into(),
            host: "127.0.0.1:10350".into(),
            path: path.into(),
            raw_path: raw_path.into(),
            ..GoUrl::default()
        }
    }

    /// Expected values are what Go 1.23's net/url returns for the same struct.
    #[test]
    fn escaped_path_request_uri_and_string() {
        struct Case {
            url: GoUrl,
            escaped_path: &'static str,
            request_uri: &'static str,
            string: &'static str,
        }
        let cases = [
            Case {
                url: url("/containerLogs/default/big/app", ""),
                escaped_path: "/containerLogs/default/big/app",
                request_uri: "/containerLogs/default/big/app",
                string: "http://127.0.0.1:10350/containerLogs/default/big/app",
            },
            // Space is escaped; the path sub-delims and ':' '@' are not.
            Case {
                url: url("/a b/$&+,;=:@x", ""),
                escaped_path: "/a%20b/$&+,;=:@x",
                request_uri: "/a%20b/$&+,;=:@x",
                string: "http://127.0.0.1:10350/a%20b/$&+,;=:@x",
            },
            // '?' and '#' and '%' in a path are escaped.
            Case {
                url: url("/a?b#c%d", ""),
                escaped_path: "/a%3Fb%23c%25d",
                request_uri: "/a%3Fb%23c%25d",
                string: "http://127.0.0.1:10350/a%3Fb%23c%25d",
            },
            // %2F in RawPath is kept: it is a valid encoding of Path.
            Case {
                url: url("/exec/ns/pod/a/b", "/exec/ns/pod/a%2Fb"),
                escaped_path: "/exec/ns/pod/a%2Fb",
                request_uri: "/exec/ns/pod/a%2Fb",
                string: "http://127.0.0.1:10350/exec/ns/pod/a%2Fb",
            },
            // A RawPath that does not decode to Path is ignored.
            Case {
                url: url("/x/y", "/other%2Fy"),
                escaped_path: "/x/y",
                request_uri: "/x/y",
                string: "http://127.0.0.1:10350/x/y",
            },
            // A RawPath with a character that must be escaped is not a valid encoding.
            Case {
                url: url("/a b", "/a b"),
                escaped_path: "/a%20b",
                request_uri: "/a%20b",
                string: "http://127.0.0.1:10350/a%20b",
            },
            // Lower-case escapes in RawPath are kept as written.
            Case {
                url: url("/a/b", "/a%2fb"),
                escaped_path: "/a%2fb",
                request_uri: "/a%2fb",
                string: "http://127.0.0.1:10350/a%2fb",
            },
            // Unicode is escaped byte by byte, upper-case hex.
            Case {
                url: url("/logs/ü✓", ""),
                escaped_path: "/logs/%C3%BC%E2%9C%93",
                request_uri: "/logs/%C3%BC%E2%9C%93",
                string: "http://127.0.0.1:10350/logs/%C3%BC%E2%9C%93",
            },
            // ForceQuery adds a bare '?'.
            Case {
                url: GoUrl {
                    force_query: true,
                    ..url("/metrics", "")
                },
                escaped_path: "/metrics",
                request_uri: "/metrics?",
                string: "http://127.0.0.1:10350/metrics?",
            },
            // Empty path: RequestURI is "/", String has no path at all.
            Case {
                url: GoUrl {
                    raw_query: "a=1".into(),
                    ..url("", "")
                },
                escaped_path: "",
                request_uri: "/?a=1",
                string: "http://127.0.0.1:10350?a=1",
            },
            // A relative path under a host gets a '/'.
            Case {
                url: url("pods", ""),
                escaped_path: "pods",
                request_uri: "pods",
                string: "http://127.0.0.1:10350/pods",
            },
            Case {
                url: GoUrl {
                    path: "*".into(),
                    ..GoUrl::default()
                },
                escaped_path: "*",
                request_uri: "*",
                string: "*",
            },
            // Opaque replaces the authority and path.
            Case {
                url: GoUrl {
                    scheme: "mailto".into(),
                    opaque: "user@example.com".into(),
                    raw_query: "subject=hi".into(),
                    ..GoUrl::default()
                },
                escaped_path: "",
                request_uri: "user@example.com?subject=hi",
                string: "mailto:user@example.com?subject=hi",
            },
            Case {
                url: GoUrl {
                    scheme: "http".into(),
                    opaque: "//host/p".into(),
                    ..GoUrl::default()
                },
                escaped_path: "",
                request_uri: "http://host/p",
                string: "http://host/p",
            },
            // No scheme or host: a colon in the first segment needs "./".
            Case {
                url: GoUrl {
                    path: "a:b/c".into(),
                    ..GoUrl::default()
                },
                escaped_path: "a:b/c",
                request_uri: "a:b/c",
                string: "./a:b/c",
            },
            // A user prints as "@" (Userinfo's fields never travel); host escaping keeps ':' '[' ']'.
            Case {
                url: GoUrl {
                    user: Some(GoUserinfo),
                    host: "[::1]:10250".into(),
                    ..url("/pods", "")
                },
                escaped_path: "/pods",
                request_uri: "/pods",
                string: "http://@[::1]:10250/pods",
            },
            Case {
                url: GoUrl {
                    host: "ho st%".into(),
                    ..url("/", "")
                },
                escaped_path: "/",
                request_uri: "/",
                string: "http://ho%20st%25/",
            },
            // OmitHost with an empty host drops the "//".
            Case {
                url: GoUrl {
                    omit_host: true,
                    host: String::new(),
                    ..url("/p", "")
                },
                escaped_path: "/p",
                request_uri: "/p",
                string: "http:/p",
            },
            // Scheme only, empty host and path, no OmitHost: nothing after "http:".
            Case {
                url: GoUrl {
                    scheme: "http".into(),
                    ..GoUrl::default()
                },
                escaped_path: "",
                request_uri: "/",
                string: "http:",
            },
            // Fragment escaping allows sub-delims; RawFragment is preferred when consistent.
            Case {
                url: GoUrl {
                    fragment: "a b!(*)/?".into(),
                    ..url("/p", "")
                },
                escaped_path: "/p",
                request_uri: "/p",
                string: "http://127.0.0.1:10350/p#a%20b!(*)/?",
            },
            Case {
                url: GoUrl {
                    fragment: "x/y".into(),
                    raw_fragment: "x%2Fy".into(),
                    ..url("/p", "")
                },
                escaped_path: "/p",
                request_uri: "/p",
                string: "http://127.0.0.1:10350/p#x%2Fy",
            },
        ];
        for case in cases {
            assert_eq!(case.url.escaped_path(), case.escaped_path, "{:?}", case.url);
            assert_eq!(case.url.request_uri(), case.request_uri, "{:?}", case.url);
            assert_eq!(case.url.to_go_string(), case.string, "{:?}", case.url);
        }
    }

    #[test]
    fn from_request_target_follows_go_set_path() {
        let u = GoUrl::from_request_target(
            "http",
            "127.0.0.1:10350",
            "/containerLogs/default/big/app?tailLines=2&timestamps=true",
        )
        .unwrap();
        assert_eq!(u.path, "/containerLogs/default/big/app");
        assert_eq!(u.raw_path, "");
        assert_eq!(u.raw_query, "tailLines=2&timestamps=true");
        assert_eq!(u.scheme, "http");
        assert_eq!(u.host, "127.0.0.1:10350");
        assert!(!u.force_query);
        assert_eq!(
            u.request_uri(),
            "/containerLogs/default/big/app?tailLines=2&timestamps=true"
        );

        let table = [
            // (target, path, raw_path, raw_query, force_query)
            ("/a%2Fb", "/a/b", "/a%2Fb", "", false),
            ("/a%20b", "/a b", "", "", false),
            ("/a%41", "/aA", "/a%41", "", false),
            ("/a+b", "/a+b", "", "", false),
            ("/ü", "/ü", "/ü", "", false),
            ("/%C3%BC", "/ü", "", "", false),
            ("/p?", "/p", "", "", true),
            ("/p?a?", "/p", "", "a?", false),
            ("/p??", "/p", "", "?", false),
            ("/p?q=%zz#frag", "/p", "", "q=%zz#frag", false),
            ("/p#x", "/p#x", "/p#x", "", false),
            ("//double", "//double", "", "", false),
            (
                "/%ff%e2%82",
                "/\u{fffd}\u{fffd}\u{fffd}",
                "/%ff%e2%82",
                "",
                false,
            ),
        ];
        for (target, path, raw_path, raw_query, force_query) in table {
            let u = GoUrl::from_request_target("http", "h", target).unwrap();
            assert_eq!(u.path, path, "{target}");
            assert_eq!(u.raw_path, raw_path, "{target}");
            assert_eq!(u.raw_query, raw_query, "{target}");
            assert_eq!(u.force_query, force_query, "{target}");
        }
    }

    #[test]
    fn from_request_target_round_trips_through_request_uri() {
        for target in [
            "/exec/ns/pod/ctr?command=sh&command=-c&input=1",
            "/a%2Fb/c?x=%2F",
            "/a%20b",
            "/p?",
            "/logs/%C3%BC",
        ] {
            let u = GoUrl::from_request_target("http", "h", target).unwrap();
            assert_eq!(u.request_uri(), target);
        }
    }

    #[test]
    fn from_request_target_errors() {
        for (target, want) in [
            ("", "InvalidRequestTarget"),
            ("*", "InvalidRequestTarget"),
            ("http://h/p", "InvalidRequestTarget"),
            ("?a", "InvalidRequestTarget"),
            ("/a\nb", "ControlCharacter"),
            ("/a\u{7f}", "ControlCharacter"),
            ("/a%", "InvalidEscape"),
            ("/a%4", "InvalidEscape"),
            ("/a%zz", "InvalidEscape"),
        ] {
            let err = GoUrl::from_request_target("http", "h", target).unwrap_err();
            assert!(format!("{err:?}").starts_with(want), "{target:?}: {err:?}");
        }
    }

    #[test]
    fn lossy_utf8_is_per_byte_like_go() {
        assert_eq!(go_lossy_utf8(b"a\xe2\x82b"), "a\u{fffd}\u{fffd}b");
        assert_eq!(go_lossy_utf8(b"\xed\xa0\x80"), "\u{fffd}\u{fffd}\u{fffd}");
        assert_eq!(go_lossy_utf8("ok✓".as_bytes()), "ok✓");
    }
}
