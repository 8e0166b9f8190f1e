//! The tether/2 `OPEN_RESULT` payload: how the edge opened a stream.
//!
//! A stock edge gives the cloud no signal when a kubelet request fails, so the apiserver's
//! request hangs (spec §2.12). A tether/2 edge answers every connect with exactly one open
//! result before any `DATA`, and the cloud answers the apiserver from it.
//!
//! JSON shapes (compact, keys in this order):
//!
//! ```json
//! {"result":"response","status":200,"headers":{"Content-Type":["text/plain"]}}
//! {"result":"raw"}
//! {"result":"refused","status":403,"reason":"exec is disabled on this node"}
//! ```

use serde::Deserialize;

use crate::{Error, HeaderMap, go_json};

/// How the edge opened a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenResult {
    /// The kubelet answered a plain HTTP request; DATA carries the body (already de-chunked)
    /// and FIN ends it.
    Response {
        /// The kubelet's status code.
        status: u16,
        /// The kubelet's response headers.
        headers: HeaderMap,
    },
    /// A raw upgrade connection to the kubelet is open; DATA carries raw bytes (the kubelet's
    /// own response head first).
    Raw,
    /// The edge refused or could not serve the request; the stream ends.
    Refused {
        /// The HTTP status the cloud should answer with (403, 404, 502 ...).
        status: u16,
        /// Why, for the cloud's error body and logs.
        reason: String,
    },
}

/// The JSON object before validation; ours only, so field names are exact.
#[derive(Deserialize)]
struct OpenResultJson {
    result: String,
    status: Option<u64>,
    headers: Option<HeaderMap>,
    reason: Option<String>,
}

impl OpenResult {
    /// Encodes the payload in the shape documented on this module.
    ///
    /// The status is written as given; [`OpenResult::from_json`] rejects one outside
    /// `100..=599`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            OpenResult::Response { status, headers } => {
                out.extend_from_slice(b"{\"result\":\"response\",\"status\":");
                out.extend_from_slice(status.to_string().as_bytes());
                out.extend_from_slice(b",\"headers\":");
                go_json::write_header_map(&mut out, headers);
                out.push(b'}');
            }
            OpenResult::Raw => out.extend_from_slice(b"{\"result\":\"raw\"}"),
            OpenResult::Refused { status, reason } => {
                out.extend_from_slice(b"{\"result\":\"refused\",\"status\":");
                out.extend_from_slice(status.to_string().as_bytes());
                out.extend_from_slice(b",\"reason\":");
                go_json::write_string(&mut out, reason);
                out.push(b'}');
            }
        }
        out
    }

    /// Decodes an `OPEN_RESULT` payload.
    ///
    /// Unknown keys are ignored so a newer peer can add fields. `headers` defaults to empty and
    /// `reason` to `""`; `status` is required for `response` and `refused`.
    ///
    /// # Errors
    ///
    /// [`Error::Json`] for malformed JSON, wrong types or a missing `result`;
    /// [`Error::UnknownOpenResult`] for another `result` value; [`Error::MissingField`] for a
    /// missing `status`; [`Error::InvalidStatus`] for a status outside `100..=599`.
    pub fn from_json(data: &[u8]) -> Result<OpenResult, Error> {
        let OpenResultJson {
            result,
            status,
            headers,
            reason,
        } = serde_json::from_slice(data).map_err(Error::Json)?;
        match result.as_str() {
            "response" => Ok(OpenResult::Response {
                status: valid_status(status)?,
                headers: headers.unwrap_or_default(),
            }),
            "raw" => Ok(OpenResult::Raw),
            "refused" => Ok(OpenResult::Refused {
                status: valid_status(status)?,
                reason: reason.unwrap_or_default(),
            }),
            _ => Err(Error::UnknownOpenResult),
        }
    }
}

/// A present status in `100..=599`, the range HTTP defines.
fn valid_status(status: Option<u64>) -> Result<u16, Error> {
    let status = status.ok_or(Error::MissingField("status"))?;
    match u16::try_from(status) {
        Ok(status @ 100..=599) => Ok(status),
        _ => Err(Error::InvalidStatus(status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(result: &OpenResult) -> String {
        String::from_utf8(result.to_json()).unwrap()
    }

    #[test]
    fn documented_shapes() {
        let mut headers = HeaderMap::new();
        headers.insert("Content-Type".into(), vec!["text/plain".into()]);
        let cases = [
            (
                OpenResult::Response {
                    status: 200,
                    headers,
                },
                r#"{"result":"response","status":200,"headers":{"Content-Type":["text/plain"]}}"#,
            ),
            (OpenResult::Raw, r#"{"result":"raw"}"#),
            (
                OpenResult::Refused {
                    status: 403,
                    reason: "exec is disabled on this node".into(),
                },
                r#"{"result":"refused","status":403,"reason":"exec is disabled on this node"}"#,
            ),
        ];
        for (result, json) in cases {
            assert_eq!(text(&result), json);
            assert_eq!(OpenResult::from_json(json.as_bytes()).unwrap(), result);
        }
    }

    #[test]
    fn lenient_where_documented() {
        assert_eq!(
            OpenResult::from_json(br#"{"status":204,"result":"response","new":1}"#).unwrap(),
            OpenResult::Response {
                status: 204,
                headers: HeaderMap::new()
            }
        );
        assert_eq!(
            OpenResult::from_json(br#"{"result":"refused","status":502}"#).unwrap(),
            OpenResult::Refused {
                status: 502,
                reason: String::new()
            }
        );
    }

    #[test]
    fn errors() {
        let check = |json: &str, want: &str| {
            let err = OpenResult::from_json(json.as_bytes()).unwrap_err();
            assert!(format!("{err:?}").starts_with(want), "{json}: {err:?}");
        };
        check("", "Json");
        check("{}", "Json");
        check(r#"{"result":1}"#, "Json");
        check(r#"{"result":"response","status":"200"}"#, "Json");
        check(r#"{"result":"response","status":-1}"#, "Json");
        check(r#"{"result":"Response","status":200}"#, "UnknownOpenResult");
        check(r#"{"result":"response"}"#, "MissingField");
        check(r#"{"result":"refused","reason":"x"}"#, "MissingField");
        check(r#"{"result":"response","status":99}"#, "InvalidStatus(99)");
        check(r#"{"result":"refused","status":600}"#, "InvalidStatus(600)");
        check(
            r#"{"result":"refused","status":65736}"#,
            "InvalidStatus(65736)",
        );
    }
}
