//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`), re-exported as
//! `stream_server::fuzzing`. They live under `relay` because the code they drive is private
//! to it; the tests that replay the corpora run exactly the code libFuzzer runs.
//!
//! No input may make them panic or hang, except through the assertions written here, which
//! state properties of what was accepted.

// A panic is how a fuzz harness reports: the `expect`s here state that a source which is
// always ready never makes a reader wait (else it would hang), never what an input controls.
#![allow(clippy::expect_used)]

use futures_util::FutureExt;
use http::{HeaderMap, StatusCode};
use stream_proto::ConnectRequest;
use tunnel_session::Dialect;
use tunnel_session::fuzzing::{Trickle, serve_http1};

use super::{
    MAX_CHUNKED_ERROR_BODY, MAX_RESPONSE_HEAD, connect_request, copy_headers, read_chunked,
    read_head,
};
use crate::node::{node_of, node_of_host, node_of_proxy_path};
use crate::route::{classify, connect_kind};

/// The most reads one input is split into (see `kubelet_response`).
const MAX_READS: usize = 256;

/// Reads `data` as what the kubelet answered an upgrade (exec, attach, port-forward) through
/// the tunnel: its response head, then, for an error answered chunked, the body. The first
/// byte sets how many bytes each read returns (raised so that no input takes more than
/// [`MAX_READS`] reads), as tunnel DATA messages split the stream.
///
/// A head is accepted only within [`MAX_RESPONSE_HEAD`] (plus the read that crossed it), an
/// error body only within its own bound.
pub fn kubelet_response(data: &[u8]) {
    let Some((&step, answer)) = data.split_first() else {
        return;
    };
    let step = if step == 0 {
        usize::MAX
    } else {
        usize::from(step)
    };
    // `read_head` parses the whole buffer again after every read, so n bytes in reads of s
    // bytes cost n²/s: with inputs up to 20 KB read byte by byte, re-parsing took nine
    // tenths of the run and it fell below 9,000 exec/s. Small heads are still split byte by
    // byte; a large one, there to cross the bound, in at most `MAX_READS` reads.
    let step = step.max(answer.len().div_ceil(MAX_READS));
    let mut io = Trickle::new(answer, step);
    let head = read_head(&mut io)
        .now_or_never()
        .expect("reading a head waited on a source that is always ready");
    let Ok(head) = head else {
        return;
    };
    let consumed = answer.len() - io.remaining() - head.rest.len();
    assert!(
        consumed <= MAX_RESPONSE_HEAD + 4096,
        "accepted a head of {consumed} bytes"
    );
    let mut headers = HeaderMap::new();
    copy_headers(
        head.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
        &mut headers,
    );
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    // The rest of the input is the body, as `upgrade` reads an error answered chunked.
    if let Ok(body) = read_chunked(head.rest, &mut io)
        .now_or_never()
        .expect("reading a chunked body waited on a source that is always ready")
    {
        assert!(
            body.len() <= MAX_CHUNKED_ERROR_BODY,
            "accepted a chunked error body of {} bytes",
            body.len()
        );
    }
}

/// Serves `data` as the bytes kube-apiserver (or anyone reaching the stream port) sent on
/// one connection, through hyper's HTTP/1 server, and runs what the stream server does with
/// each request's head before it opens a stream: which node it names, which kubelet route
/// and connect kind it asks for, and the connect descriptor it would send the edge in
/// either dialect.
///
/// A descriptor must survive its own JSON encoding, and name the route it was built for.
pub fn request(data: &[u8]) {
    serve_http1(data, |req| {
        let _ = node_of(req);
        let _ = node_of_proxy_path(req);
        let _ = node_of_host(req);
        let Ok((op, _pod)) = classify(req.method(), req.uri().path()) else {
            return;
        };
        let _ = connect_kind(op);
        for dialect in [Dialect::KubeEdge, Dialect::Tether2] {
            let descriptor = connect_request(req, op, dialect);
            let json = descriptor.to_json();
            let again = ConnectRequest::from_json(&json);
            assert!(
                matches!(&again, Ok(d) if *d == descriptor),
                "connect descriptor did not round-trip: {descriptor:?} -> {again:?}"
            );
            let _ = descriptor.url.request_uri();
            let _ = descriptor.url.to_go_string();
            // The edge classifies the descriptor's (decoded) path; without escapes it is the
            // path the cloud classified, so the edge must see the same route.
            if !req.uri().path().contains('%') {
                let route = stream_proto::kubelet::classify(&descriptor.url.path);
                assert!(
                    route.is_some_and(|r| r.operation == op),
                    "{} {:?} was classified as {op:?}, its descriptor's path {:?} is not",
                    req.method(),
                    req.uri(),
                    descriptor.url.path
                );
            }
        }
    });
}
