//! Logs, stats and metrics: one HTTP/1.1 exchange with the kubelet, streamed back.
//!
//! The kubelet's status and headers go to the cloud in the tether/2 open result, and its body
//! follows frame by frame as it arrives: a `follow=true` log line reaches the cloud at once,
//! and nothing buffers a whole body (design decision 5: no forced 200, no line splitting,
//! gzip allowed). If the cloud gives up first, the kubelet connection is dropped at once,
//! which is how a cancelled `kubectl logs -f` frees the kubelet.
//!
//! One connection per request and no pool: streams are long-lived or rare, and a fresh
//! connection keeps each stream's fate independent.

use std::pin::pin;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use stream_proto::{ConnectRequest, OpenResult, ResetCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;
use tunnel_session::{Dialect, Stream};

use crate::error::Error;
use crate::headers::{plain_request_headers, response_headers};
use crate::kubelet::Kubelet;
use crate::route::Refusal;
use crate::serve::{Finish, Tally, cloud_gone, finish, refuse};

/// Largest request body accepted from the cloud. The only plain request with a body is
/// `POST /stats/summary`, whose body is a few bytes of JSON options.
const MAX_REQUEST_BODY: usize = 1 << 20;

/// Once the kubelet connection has ended, how long the request may take to report why. It
/// is told at once when the connection ends; this only bounds the wait should it not be.
const REQUEST_VERDICT: Duration = Duration::from_secs(1);

/// Serves a plain request: send it to the kubelet, answer with its status and headers, copy
/// the body.
pub(crate) async fn serve(
    kubelet: &Kubelet,
    request: &ConnectRequest,
    target: &str,
    mut stream: Stream,
    tally: &mut Tally,
    encoders: Option<&std::sync::Arc<tokio::sync::Semaphore>>,
) -> Result<Finish, Error> {
    let dialect = stream.dialect();
    // The cloud offers to decode a compressed body (tether/2 only; stripped before the
    // kubelet sees it).
    let offered = dialect == Dialect::Tether2
        && request.header.as_ref().is_some_and(|h| {
            h.iter().any(|(k, vs)| {
                k.eq_ignore_ascii_case(stream_compress::ACCEPT_HEADER)
                    && vs.iter().any(|v| v == stream_compress::ENCODING)
            })
        });
    let uri = match Uri::try_from(target) {
        Ok(uri) => uri,
        Err(e) => {
            let refusal = Refusal::new(400, format!("request target {target:?}: {e}"));
            return refuse(&mut stream, tally, refusal).await;
        }
    };
    let method = match request.method.as_deref() {
        Some("POST") => Method::POST,
        _ => Method::GET,
    };
    // Only a tether/2 cloud can send a body: it sends it right after the connect and ends it
    // with FIN. KubeEdge has no half-close, and stock clouds never send one.
    let body = if method == Method::POST && dialect == Dialect::Tether2 {
        match read_body(&mut stream).await {
            Ok(Some(body)) => body,
            Ok(None) => {
                let reason = format!("request body over {MAX_REQUEST_BODY} bytes");
                return refuse(&mut stream, tally, Refusal::new(413, reason)).await;
            }
            Err(e) => {
                debug!(error = %e, "the cloud ended the stream during the request body");
                return Ok(Finish::CloudClosed);
            }
        }
    } else {
        Bytes::new()
    };
    tally.to_kubelet = body.len() as u64;

    let mut kubelet_request = Request::new(Full::new(body));
    *kubelet_request.method_mut() = method;
    *kubelet_request.uri_mut() = uri;
    // A stock cloud drops the response headers (spec 3.4), so a compressed body would reach
    // the client undecodable: with KubeEdge, only identity.
    *kubelet_request.headers_mut() =
        plain_request_headers(request.header.as_ref(), dialect == Dialect::KubeEdge);
    kubelet_request
        .headers_mut()
        .insert(header::HOST, kubelet.host().clone());

    let io = match kubelet.connect().await {
        Ok(io) => io,
        Err(e) => return refuse(&mut stream, tally, Refusal::new(502, e.to_string())).await,
    };
    let kubelet_failed = |source| Error::KubeletHttp {
        addr: kubelet.addr().to_owned(),
        source,
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(io)).await {
        Ok(parts) => parts,
        Err(e) => {
            let reason = kubelet_failed(e).to_string();
            return refuse(&mut stream, tally, Refusal::new(502, reason)).await;
        }
    };
    // The connection is driven right here, next to the request, so it lives exactly as long
    // as this stream and needs no task of its own.
    let mut conn = pin!(conn);
    let mut send = pin!(sender.send_request(kubelet_request));
    let response = tokio::select! {
        r = &mut send => r,
        r = &mut conn => match r {
            Err(e) => Err(e),
            // hyper ends the connection without an error when the response head was bad
            // (not HTTP, too large, cut short) and hands the reason to the request instead;
            // the connection is gone, so the request resolves at once.
            Ok(()) => match tokio::time::timeout(REQUEST_VERDICT, &mut send).await {
                Ok(r) => r,
                Err(_) => {
                    let reason = format!(
                        "kubelet at {} closed the connection without answering",
                        kubelet.addr()
                    );
                    return refuse(&mut stream, tally, Refusal::new(502, reason)).await;
                }
            },
        },
        () = cloud_gone(&mut stream) => return Ok(Finish::CloudClosed),
    };
    let response = match response {
        Ok(response) => response,
        Err(e) => {
            let reason = kubelet_failed(e).to_string();
            return refuse(&mut stream, tally, Refusal::new(502, reason)).await;
        }
    };

    let (parts, mut body) = response.into_parts();
    let status = parts.status.as_u16();
    tally.status = Some(status);
    // Compress when offered, when the kubelet's body is not encoded already, and when an
    // encoder is free (each holds memory); the permit lives as long as the encoder.
    let identity = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let mut encoder = match encoders.filter(|_| offered && identity) {
        Some(slots) => match slots.clone().try_acquire_owned() {
            Ok(permit) => stream_compress::Encoder::new()
                .ok()
                .map(|encoder| (encoder, permit)),
            Err(_) => None,
        },
        None => None,
    };
    let mut headers = response_headers(&parts.headers);
    if encoder.is_some() {
        headers.insert(
            stream_compress::ENCODING_HEADER.to_owned(),
            vec![stream_compress::ENCODING.to_owned()],
        );
    }
    stream
        .send_open_result(OpenResult::Response { status, headers })
        .await?;
    let mut encoded = Vec::new();

    let mut conn_done = false;
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            r = &mut conn, if !conn_done => {
                // The body, fed by the connection, reports how it ended.
                conn_done = true;
                if let Err(e) = r {
                    debug!(error = %e, "kubelet connection ended");
                }
                continue;
            }
            () = cloud_gone(&mut stream) => return Ok(Finish::CloudClosed),
        };
        let frame = match frame {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                let e = kubelet_failed(e);
                // Abort, so the client sees a truncated response rather than a clean end.
                stream.reset(ResetCode::Internal, &e.to_string());
                return Err(e);
            }
        };
        // Trailers have nowhere to go; only data frames are relayed.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let len = data.len() as u64;
        let sent = match encoder.as_mut() {
            Some((encoder, _)) => {
                encoded.clear();
                if let Err(e) = encoder.encode(&data, &mut encoded) {
                    // zstd failed on our side: cut the body so the client sees it incomplete.
                    stream.reset(ResetCode::Internal, &format!("compressing the body: {e}"));
                    return Ok(Finish::CloudClosed);
                }
                stream.write_all(&encoded).await
            }
            // hyper's buffer goes out as the DATA message's, not copied first.
            None => stream.halves().1.write_chunk(data).await,
        };
        if let Err(e) = sent {
            debug!(error = %e, "the cloud stopped taking the response body");
            return Ok(Finish::CloudClosed);
        }
        tally.to_cloud += len;
    }
    finish(&mut stream).await.map_err(Error::Stream)?;
    Ok(Finish::Completed)
}

/// Reads the request body up to the cloud's FIN; `None` if it exceeds [`MAX_REQUEST_BODY`].
async fn read_body(stream: &mut Stream) -> std::io::Result<Option<Bytes>> {
    let mut body = Vec::new();
    let limit = MAX_REQUEST_BODY as u64 + 1;
    let n = (&mut *stream).take(limit).read_to_end(&mut body).await?;
    Ok((n <= MAX_REQUEST_BODY).then(|| Bytes::from(body)))
}
