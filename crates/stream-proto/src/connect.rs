//! The JSON descriptor carried by `LOGS_CONNECT`, `EXEC_CONNECT`, `METRIC_CONNECT` and
//! `ATTACH_CONNECT` (spec §2.8).
//!
//! The cloud sends one per stream: which kubelet URL to call, with which headers and method.
//! Stock KubeEdge writes it with Go's `encoding/json` from its connection structs, so we write
//! byte-identical JSON (a stock edge does not care, but it keeps captures comparable) and read
//! it with Go's decoder rules (a stock cloud built with another Go version orders keys
//! differently).

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use crate::go_json::{self, field_matches};
use crate::go_url::GoUrlSeed;
use crate::{Error, GoUrl, HeaderMap};

/// A KubeEdge connect descriptor.
///
/// Wire form, compact, keys in this order (Go 1.23):
///
/// ```json
/// {"MessID":7,
///  "url":{"Scheme":"http","Opaque":"","User":null,"Host":"127.0.0.1:10350",
///         "Path":"/exec/default/nginx/nginx","RawPath":"","OmitHost":false,"ForceQuery":false,
///         "RawQuery":"command=sh\u0026input=1","Fragment":"","RawFragment":""},
///  "header":{"Connection":["Upgrade"],"Upgrade":["SPDY/3.1"]},
///  "method":"POST"}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectRequest {
    /// `MessID`: must equal the connect id of the message that carries the descriptor; a
    /// stock edge tags every message it sends back with it.
    pub mess_id: u64,
    /// `url`: the kubelet URL to call.
    pub url: GoUrl,
    /// `header`: the apiserver's request headers (`null` when Go's map was nil).
    pub header: Option<HeaderMap>,
    /// `method`: present for exec and attach (`GET` or `POST`), absent for logs and metrics.
    pub method: Option<String>,
}

impl ConnectRequest {
    /// Encodes the descriptor as Go's `json.Marshal` does for KubeEdge's structs: compact,
    /// Go 1.23 field order, header keys sorted, `<`, `>`, `&` escaped as `\u003c`, `\u003e`,
    /// `\u0026`, and `method` omitted when `None`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(384);
        out.extend_from_slice(b"{\"MessID\":");
        out.extend_from_slice(self.mess_id.to_string().as_bytes());
        out.extend_from_slice(b",\"url\":");
        self.url.write_json(&mut out);
        out.extend_from_slice(b",\"header\":");
        match &self.header {
            Some(header) => go_json::write_header_map(&mut out, header),
            None => out.extend_from_slice(b"null"),
        }
        if let Some(method) = &self.method {
            out.extend_from_slice(b",\"method\":");
            go_json::write_string(&mut out, method);
        }
        out.push(b'}');
        out
    }

    /// Decodes a descriptor the way Go's `json.Unmarshal` would into KubeEdge's structs.
    ///
    /// Keys may come in any order and match case-insensitively; unknown keys are ignored;
    /// missing fields keep their defaults; `null` leaves a scalar unchanged and clears `header`
    /// and `User`; a repeated key updates the same field again (objects merge, as in Go).
    /// `null` as the whole document yields the default descriptor, as Go's decoder leaves the
    /// struct untouched.
    ///
    /// Differences from Go, all on input no Go encoder produces: invalid UTF-8 and unpaired
    /// surrogate escapes in strings are rejected instead of replaced with U+FFFD.
    ///
    /// # Errors
    ///
    /// [`Error::Json`] for malformed JSON or a value of the wrong type (for example a negative
    /// or fractional `MessID`).
    pub fn from_json(data: &[u8]) -> Result<ConnectRequest, Error> {
        let mut request = ConnectRequest::default();
        let mut deserializer = serde_json::Deserializer::from_slice(data);
        ConnectRequestSeed(&mut request)
            .deserialize(&mut deserializer)
            .map_err(Error::Json)?;
        deserializer.end().map_err(Error::Json)?;
        Ok(request)
    }
}

/// Go-semantics decoding into an existing descriptor (see [`ConnectRequest::from_json`]).
struct ConnectRequestSeed<'a>(&'a mut ConnectRequest);

impl<'de> DeserializeSeed<'de> for ConnectRequestSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for ConnectRequestSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a KubeEdge connect descriptor object")
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
        let request = self.0;
        while let Some(key) = map.next_key::<String>()? {
            if field_matches(&key, "MessID") {
                if let Some(id) = map.next_value::<Option<u64>>()? {
                    request.mess_id = id;
                }
            } else if field_matches(&key, "url") {
                map.next_value_seed(GoUrlSeed(&mut request.url))?;
            } else if field_matches(&key, "header") {
                match map.next_value::<Option<HeaderJson>>()? {
                    // Go decodes into the existing map, so a repeated key adds to it.
                    Some(HeaderJson(entries)) => {
                        request.header.get_or_insert_default().extend(entries);
                    }
                    None => request.header = None,
                }
            } else if field_matches(&key, "method") {
                if let Some(method) = map.next_value::<Option<String>>()? {
                    request.method = Some(method);
                }
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// A Go `http.Header` in JSON: `null` values become empty lists and `null` list elements
/// empty strings, as Go's decoder leaves nil slices and zero strings.
struct HeaderJson(HeaderMap);

impl<'de> de::Deserialize<'de> for HeaderJson {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <std::collections::BTreeMap<String, Option<Vec<Option<String>>>>>::deserialize(
            deserializer,
        )?;
        Ok(HeaderJson(
            raw.into_iter()
                .map(|(key, values)| {
                    let values = values
                        .unwrap_or_default()
                        .into_iter()
                        .map(Option::unwrap_or_default)
                        .collect();
                    (key, values)
                })
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GoUserinfo;

    fn exec_request() -> ConnectRequest {
        let mut header = HeaderMap::new();
        header.insert("Connection".into(), vec!["Upgrade".into()]);
        header.insert("Upgrade".into(), vec!["SPDY/3.1".into()]);
        ConnectRequest {
            mess_id: 7,
            url: GoUrl::from_request_target(
                "http",
                "127.0.0.1:10350",
                "/exec/default/nginx/nginx?command=sh&input=1",
            )
            .unwrap(),
            header: Some(header),
            method: Some("POST".into()),
        }
    }

    #[test]
    fn encodes_go_compact_form() {
        let json = String::from_utf8(exec_request().to_json()).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"MessID":7,"url":{"Scheme":"http","Opaque":"","User":null,"#,
                r#""Host":"127.0.0.1:10350","Path":"/exec/default/nginx/nginx","RawPath":"","#,
                r#""OmitHost":false,"ForceQuery":false,"RawQuery":"command=sh\u0026input=1","#,
                r#""Fragment":"","RawFragment":""},"#,
                r#""header":{"Connection":["Upgrade"],"Upgrade":["SPDY/3.1"]},"method":"POST"}"#
            )
        );
    }

    #[test]
    fn encodes_null_header_user_and_no_method() {
        let request = ConnectRequest {
            mess_id: 1,
            url: GoUrl {
                user: Some(GoUserinfo),
                omit_host: true,
                force_query: true,
                ..GoUrl::default()
            },
            header: None,
            method: None,
        };
        let json = String::from_utf8(request.to_json()).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"MessID":1,"url":{"Scheme":"","Opaque":"","User":{},"Host":"","Path":"","#,
                r#""RawPath":"","OmitHost":true,"ForceQuery":true,"RawQuery":"","Fragment":"","#,
                r#""RawFragment":""},"header":null}"#
            )
        );
        assert_eq!(ConnectRequest::from_json(json.as_bytes()).unwrap(), request);
    }

    #[test]
    fn decodes_any_order_any_case_unknown_keys() {
        let json = br#"{"method":"GET","header":{"A":["1","2"],"B":null,"C":[null]},
            "URL":{"rawquery":"x=1","PATH":"/p","user":{"username":"ignored"},"Extra":[1,{}],
                   "forceQuery":true,"omithost":null},
            "messid":42,"unknown":{"nested":[true]}}"#;
        let request = ConnectRequest::from_json(json).unwrap();
        assert_eq!(request.mess_id, 42);
        assert_eq!(request.url.path, "/p");
        assert_eq!(request.url.raw_query, "x=1");
        assert_eq!(request.url.user, Some(GoUserinfo));
        assert!(request.url.force_query);
        assert!(!request.url.omit_host);
        assert_eq!(request.method.as_deref(), Some("GET"));
        let header = request.header.unwrap();
        assert_eq!(header["A"], ["1", "2"]);
        assert!(header["B"].is_empty());
        assert_eq!(header["C"], [""]);
    }

    #[test]
    fn decodes_like_go_for_nulls_and_repeats() {
        // null leaves scalars alone; a repeated object merges; a later null header clears it.
        let json = br#"{"MessID":5,"MessID":null,"url":{"Path":"/a"},"url":{"Host":"h"},
            "url":null,"method":null,"header":{"A":["1"]},"header":{"B":["2"]}}"#;
        let request = ConnectRequest::from_json(json).unwrap();
        assert_eq!(request.mess_id, 5);
        assert_eq!(request.url.path, "/a");
        assert_eq!(request.url.host, "h");
        assert_eq!(request.method, None);
        let header = request.header.unwrap();
        assert_eq!(header.len(), 2);

        let cleared = ConnectRequest::from_json(br#"{"header":{"A":[]},"header":null}"#).unwrap();
        assert_eq!(cleared.header, None);

        assert_eq!(
            ConnectRequest::from_json(b" null ").unwrap(),
            ConnectRequest::default()
        );
        assert_eq!(
            ConnectRequest::from_json(b"{}").unwrap(),
            ConnectRequest::default()
        );
    }

    #[test]
    fn rejects_wrong_types_and_garbage() {
        for json in [
            &b""[..],
            b"[]",
            b"\"x\"",
            b"{",
            br#"{"MessID":-1}"#,
            br#"{"MessID":1.5}"#,
            br#"{"MessID":1e2}"#,
            br#"{"MessID":18446744073709551616}"#,
            br#"{"MessID":"1"}"#,
            br#"{"url":"http://x"}"#,
            br#"{"url":{"User":"me"}}"#,
            br#"{"url":{"ForceQuery":"true"}}"#,
            br#"{"header":{"A":"1"}}"#,
            br#"{"method":1}"#,
            b"{} {}",
        ] {
            let result = ConnectRequest::from_json(json);
            assert!(
                matches!(result, Err(Error::Json(_))),
                "{}: {result:?}",
                String::from_utf8_lossy(json)
            );
        }
    }

    #[test]
    fn round_trips() {
        let request = exec_request();
        assert_eq!(
            ConnectRequest::from_json(&request.to_json()).unwrap(),
            request
        );
    }
}
