//! Exec, attach and port-forward: a raw request head, then raw bytes both ways.
//!
//! Exactly what a stock edge does (spec 3.5): write the request head onto a fresh kubelet
//! connection, tell the cloud the stream is raw, and pipe bytes. The kubelet's response head
//! (101, or an error) travels back as the first raw bytes and the cloud parses it; SPDY and
//! WebSocket frames are never looked at here (design decision 5).
//!
//! Closing: with tether/2 each direction ends on its own (FIN ↔ TCP half-close), so a
//! port-forward client that half-closes keeps receiving. KubeEdge's REMOVE_CONNECT closes the
//! whole stream and a stock cloud never answers ours, so there the first direction to end
//! ends both.

use std::fmt::Write as _;
use std::io;

use stream_proto::{ConnectRequest, HeaderMap, OpenResult};
use tokio::io::AsyncWriteExt;
use tunnel_session::pump::{self, PumpError};
use tunnel_session::{Dialect, Stream};

use crate::error::Error;
use crate::headers::forwarded;
use crate::kubelet::{Kubelet, KubeletIo};
use crate::route::Refusal;
use crate::serve::{Finish, Tally, refuse};

/// Go's default `User-Agent`, sent when the apiserver forwarded none (as a stock edge does).
const GO_USER_AGENT: &str = "Go-http-client/1.1";

/// Headers Go's `Request.Write` never copies from the header map: it writes `Host`,
/// `User-Agent` and the framing headers itself.
const NOT_FORWARDED: [&str; 5] = [
    "host",
    "user-agent",
    "content-length",
    "transfer-encoding",
    "trailer",
];

/// Serves an upgrade request: connect, write the head, answer `Raw`, relay.
pub(crate) async fn serve(
    kubelet: &Kubelet,
    request: &ConnectRequest,
    target: &str,
    mut stream: Stream,
    tally: &mut Tally,
) -> Result<Finish, Error> {
    let method = request.method.as_deref().unwrap_or("GET");
    let head = request_head(method, target, kubelet.addr(), request.header.as_ref());
    let mut io = match kubelet.connect().await {
        Ok(io) => io,
        Err(e) => return refuse(&mut stream, tally, Refusal::new(502, e.to_string())).await,
    };
    // A few hundred bytes into a fresh socket; bounded all the same.
    let write_head = async {
        io.write_all(&head).await?;
        io.flush().await
    };
    let written = match tokio::time::timeout(kubelet.connect_timeout(), write_head).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the kubelet does not take the request",
        )),
    };
    if let Err(source) = written {
        let e = Error::KubeletUnreachable {
            addr: kubelet.addr().to_owned(),
            source,
        };
        return refuse(&mut stream, tally, Refusal::new(502, e.to_string())).await;
    }
    stream.send_open_result(OpenResult::Raw).await?;
    relay(stream, io, tally).await
}

/// The request head exactly as Go's `Request.Write` puts it on the wire for a stock edge:
/// request line, `Host`, `User-Agent`, `Content-Length: 0` for POST, then the forwarded
/// headers in key order, without the ones Go writes itself.
pub(crate) fn request_head(
    method: &str,
    target: &str,
    host: &str,
    header: Option<&HeaderMap>,
) -> Vec<u8> {
    let mut head = String::with_capacity(512);
    // Writing to a String cannot fail.
    let _ = write!(head, "{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
    let user_agent = forwarded(header)
        .find(|(name, _)| name.eq_ignore_ascii_case("user-agent"))
        .map(|(_, value)| value);
    match user_agent.as_deref() {
        // Go omits the line when the forwarded value is empty.
        Some("") => {}
        Some(ua) => {
            let _ = write!(head, "User-Agent: {ua}\r\n");
        }
        None => {
            let _ = write!(head, "User-Agent: {GO_USER_AGENT}\r\n");
        }
    }
    if method == "POST" {
        head.push_str("Content-Length: 0\r\n");
    }
    for (name, value) in forwarded(header) {
        if NOT_FORWARDED.iter().any(|n| name.eq_ignore_ascii_case(n)) {
            continue;
        }
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Relays raw bytes between the stream and the kubelet until the exchange is over.
///
/// Both directions copy without a buffer in between (`tunnel_session::pump`): received data
/// goes to the kubelet in the buffers it arrived in, and what the kubelet sends becomes the
/// DATA messages' buffers.
async fn relay(mut stream: Stream, kubelet: KubeletIo, tally: &mut Tally) -> Result<Finish, Error> {
    let half_close = stream.dialect() == Dialect::Tether2;
    let failure = stream.failure_watch();
    let (mut cloud_rx, mut cloud_tx) = stream.halves();
    let (mut kubelet_rx, mut kubelet_tx) = tokio::io::split(kubelet);
    let up = async {
        pump::from_stream(&mut cloud_rx, &mut kubelet_tx, &mut tally.to_kubelet)
            .await
            .map_err(|e| match e {
                // The cloud reset the stream, or the session died: the client is gone.
                PumpError::Read(_) => None,
                PumpError::Write(source) => Some(Error::Relay {
                    direction: "cloud → kubelet",
                    source,
                }),
            })
    };
    let down = async {
        pump::into_stream(&mut kubelet_rx, &mut cloud_tx, &mut tally.to_cloud)
            .await
            .map_err(|e| match e {
                PumpError::Read(source) => Some(Error::Relay {
                    direction: "kubelet → cloud",
                    source,
                }),
                PumpError::Write(_) => None,
            })
    };
    let copies = async {
        if half_close {
            let mut up = std::pin::pin!(up);
            let mut down = std::pin::pin!(down);
            tokio::select! {
                r = &mut up => match r {
                    // The cloud gave up: nothing more to do in either direction.
                    Err(None) => Err(None),
                    // Upstream is done (FIN passed on), or the kubelet stopped reading (its
                    // process exited): what the kubelet still sends, such as an exit status,
                    // must reach the cloud, so the downstream direction runs to its end.
                    Ok(()) | Err(Some(_)) => down.await,
                },
                r = &mut down => match r {
                    Ok(()) => up.await,
                    Err(e) => Err(e),
                },
            }
        } else {
            tokio::select! {
                r = up => r,
                r = down => r,
            }
        }
    };
    // A stream the cloud reset (or lost with the session) ends the relay even while both
    // copies wait on the kubelet (an exec that neither reads stdin nor prints).
    let result = tokio::select! {
        r = copies => r,
        _ = failure.failed() => Err(None),
    };
    // Dropping the halves closes the kubelet connection; the stream's drop tells the cloud
    // if it does not know yet (a reset, or KubeEdge's REMOVE_CONNECT echo).
    match result {
        Ok(()) => Ok(Finish::Completed),
        Err(None) => Ok(Finish::CloudClosed),
        Err(Some(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pairs: &[(&str, &[&str])]) -> HeaderMap {
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

    fn head(method: &str, header: Option<&HeaderMap>) -> String {
        let bytes = request_head(
            method,
            "/exec/ns/pod/c?command=sh&input=1",
            "127.0.0.1:10350",
            header,
        );
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn head_matches_go_request_write() {
        let forwarded = header(&[
            ("Connection", &["Upgrade"]),
            ("Content-Length", &["99"]),
            ("Host", &["10.0.0.9:10250"]),
            ("Trailer", &["X"]),
            ("Transfer-Encoding", &["chunked"]),
            ("Upgrade", &["SPDY/3.1"]),
            ("User-Agent", &["kubectl/v1.33.0", "second"]),
            (
                "X-Stream-Protocol-Version",
                &["v4.channel.k8s.io", "v3.channel.k8s.io"],
            ),
        ]);
        assert_eq!(
            head("POST", Some(&forwarded)),
            "POST /exec/ns/pod/c?command=sh&input=1 HTTP/1.1\r\n\
             Host: 127.0.0.1:10350\r\n\
             User-Agent: kubectl/v1.33.0\r\n\
             Content-Length: 0\r\n\
             Connection: Upgrade\r\n\
             Upgrade: SPDY/3.1\r\n\
             X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\
             X-Stream-Protocol-Version: v3.channel.k8s.io\r\n\
             \r\n"
        );
    }

    #[test]
    fn head_defaults() {
        assert_eq!(
            head("GET", None),
            "GET /exec/ns/pod/c?command=sh&input=1 HTTP/1.1\r\n\
             Host: 127.0.0.1:10350\r\n\
             User-Agent: Go-http-client/1.1\r\n\
             \r\n"
        );
        let empty_ua = header(&[("User-Agent", &[""])]);
        assert_eq!(
            head("GET", Some(&empty_ua)),
            "GET /exec/ns/pod/c?command=sh&input=1 HTTP/1.1\r\nHost: 127.0.0.1:10350\r\n\r\n"
        );
    }

    #[test]
    fn head_cannot_be_split() {
        let hostile = header(&[
            ("X-A", &["ok\r\nHost: evil"]),
            ("Bad Name", &["x"]),
            ("X-Nul", &["a\0b"]),
            ("host", &["lower-case host is still the host"]),
        ]);
        let text = head("GET", Some(&hostile));
        assert_eq!(text.matches("\r\n").count(), 5, "{text}");
        assert!(text.contains("X-A: ok  Host: evil\r\n"));
        assert!(!text.contains("Bad Name"));
        assert!(!text.contains("X-Nul"));
        assert_eq!(text.matches("Host:").count(), 2);
        assert!(!text.contains("lower-case"));
    }
}
