//! Interop with peers that speak only KubeEdge, emulated with an independent websocket
//! implementation (tokio-tungstenite) over real mutual TLS: what a stock edgecore sends our
//! cloud, and what a stock cloudcore sends our edge, byte for byte.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use stream_proto::{ConnectId, ConnectRequest, GoUrl, Message, MessageType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_util::sync::CancellationToken;
use tunnel_session::client::{DialConfig, dial};
use tunnel_session::server::{TunnelServer, TunnelServerConfig};
use tunnel_session::tls::{self, TlsFiles};
use tunnel_session::{
    ConnectKind, Dialect, NodeIdentity, NodeKey, Registry, SessionConfig, SessionDirectory,
};

struct Pki {
    _dir: tempfile::TempDir,
    server: TlsFiles,
    edge: TlsFiles,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let pki = test_support::pki::TestPki::new().unwrap();
    let ca = pki.write_ca(dir.path()).unwrap();
    let server = pki.server(&["127.0.0.1"]).unwrap();
    let (cert, key) = pki.write_pem_files(dir.path(), "server", &server).unwrap();
    let node = pki.node("edge-1").unwrap();
    let (ncert, nkey) = pki.write_pem_files(dir.path(), "edge-1", &node).unwrap();
    Pki {
        server: TlsFiles {
            ca: ca.clone(),
            cert,
            key,
        },
        edge: TlsFiles {
            ca,
            cert: ncert,
            key: nkey,
        },
        _dir: dir,
    }
}

fn encode(id: u64, kind: MessageType, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Message::new(ConnectId(id), kind, Bytes::copy_from_slice(data)).encode(&mut out);
    out
}

/// A text frame carrying arbitrary bytes, as gorilla/websocket sends them.
fn text_frame(payload: Vec<u8>, fin: bool, first: bool) -> WsMessage {
    let opcode = if first {
        OpCode::Data(Data::Text)
    } else {
        OpCode::Data(Data::Continue)
    };
    WsMessage::Frame(Frame::message(payload, opcode, fin))
}

#[tokio::test]
async fn a_stock_edge_is_served_in_the_kubeedge_dialect_with_non_utf8_text_frames() {
    let pki = pki();
    let registry = Arc::new(Registry::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = TunnelServer::new(
        tls::server_config(&pki.server, &[b"http/1.1"]).unwrap(),
        registry.clone(),
        TunnelServerConfig::default(),
    );
    let serving = tokio::spawn(server.serve(listener, shutdown.clone()));

    // The stock edge: gorilla-like client, header names in Go's canonical form, no offer.
    let client_tls = tls::client_config(&pki.edge, true).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls_stream = tokio_rustls::TlsConnector::from(client_tls)
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let mut req = format!("wss://{addr}/v1/kubeedge/connect")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sessionhostnameoverride", "edge-1".parse().unwrap());
    req.headers_mut()
        .insert("Sessioninternalip", "10.1.2.3".parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::client_async(req, tls_stream)
        .await
        .unwrap();
    assert!(response.headers().get("x-tether-protocol").is_none());

    // The session is registered under the name and the IP.
    let session = loop {
        if let Some(s) = registry.find(NodeKey::parse("10.1.2.3")) {
            break s;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(session.dialect(), Dialect::KubeEdge);
    let request = ConnectRequest {
        mess_id: 0,
        url: GoUrl::from_request_target(
            "http",
            "127.0.0.1:10350",
            "/containerLogs/ns/p/c?follow=true",
        )
        .unwrap(),
        header: None,
        method: None,
    };
    let mut stream = session.open(ConnectKind::Logs, request).await.unwrap();

    // The edge receives LOGS_CONNECT in a TEXT frame, with the JSON stock edges decode.
    let msg = ws.next().await.unwrap().unwrap();
    let WsMessage::Text(text) = msg else {
        panic!("expected a text frame, got {msg:?}")
    };
    let decoded = Message::decode(Bytes::copy_from_slice(text.as_bytes())).unwrap();
    assert_eq!(decoded.kind, MessageType::LogsConnect);
    let req = ConnectRequest::from_json(&decoded.data).unwrap();
    assert_eq!(req.mess_id, decoded.connect_id.0);
    assert_eq!(req.url.request_uri(), "/containerLogs/ns/p/c?follow=true");
    let id = decoded.connect_id.0;

    // Data that is not UTF-8, in one TEXT frame and in a fragmented TEXT message.
    let binary: Vec<u8> = (0..=255u8).rev().collect();
    ws.send(text_frame(
        encode(id, MessageType::Data, &binary),
        true,
        true,
    ))
    .await
    .unwrap();
    let whole = encode(id, MessageType::Data, &[0xff, 0xfe, 0xc3, 0x28, 0x80]);
    ws.send(text_frame(whole[..3].to_vec(), false, true))
        .await
        .unwrap();
    ws.send(text_frame(whole[3..].to_vec(), true, false))
        .await
        .unwrap();
    ws.send(text_frame(
        encode(id, MessageType::RemoveConnect, b""),
        true,
        true,
    ))
    .await
    .unwrap();

    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    let mut expected = binary.clone();
    expected.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28, 0x80]);
    assert_eq!(got, expected);

    // The cloud never answers the edge's REMOVE with another one; dropping sends nothing.
    drop(stream);
    // A ping from the stock edge is answered.
    ws.send(WsMessage::Ping(Bytes::from_static(b"ping you")))
        .await
        .unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pong, WsMessage::Pong(Bytes::from_static(b"ping you")));

    // A BINARY-only or undecodable message is a protocol error that ends the session cleanly.
    ws.send(WsMessage::Binary(Bytes::from_static(&[0x80])))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), session.closed())
        .await
        .unwrap();
    assert!(registry.find(NodeKey::Name("edge-1")).is_none());
    shutdown.cancel();
    serving.await.unwrap().unwrap();
}

#[tokio::test]
async fn our_edge_speaks_kubeedge_to_a_stock_cloud() {
    let pki = pki();
    let server_tls = tls::server_config(&pki.server, &[b"http/1.1"]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The stock cloud: accepts the websocket, checks the headers, confirms nothing.
    let cloud = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls_stream = tokio_rustls::TlsAcceptor::from(server_tls)
            .accept(tcp)
            .await
            .unwrap();
        let mut seen = None;
        let mut ws = tokio_tungstenite::accept_hdr_async(
            tls_stream,
            |req: &tungstenite::handshake::server::Request, resp| {
                seen = Some((
                    req.headers().get("sessionhostnameoverride").cloned(),
                    req.headers().get("x-tether-protocol").cloned(),
                ));
                Ok(resp)
            },
        )
        .await
        .unwrap();
        let (host, offer) = seen.unwrap();
        assert_eq!(host.unwrap(), "edge-1");
        assert_eq!(offer.unwrap(), "tether/2");
        // The captured LOGS_CONNECT of the vectors file, id 1.
        let json = br#"{"MessID":1,"url":{"Scheme":"http","Opaque":"","User":null,"Host":"127.0.0.1:10350","Path":"/containerLogs/default/big/app","Fragment":"","RawQuery":"tailLines=2\u0026timestamps=true","RawPath":"","RawFragment":"","ForceQuery":false,"OmitHost":false},"header":{"Accept-Encoding":["gzip"],"User-Agent":["client-go/test"]}}"#;
        ws.send(text_frame(
            encode(1, MessageType::LogsConnect, json),
            true,
            true,
        ))
        .await
        .unwrap();
        // Collect DATA until the edge's REMOVE; every frame must be TEXT.
        let mut body = Vec::new();
        loop {
            match ws.next().await.unwrap().unwrap() {
                WsMessage::Text(t) => {
                    let m = Message::decode(Bytes::copy_from_slice(t.as_bytes())).unwrap();
                    assert_eq!(m.connect_id, ConnectId(1));
                    match m.kind {
                        MessageType::Data => body.extend_from_slice(&m.data),
                        MessageType::RemoveConnect => break,
                        other => panic!("a stock cloud must never see {other}"),
                    }
                }
                WsMessage::Ping(_) | WsMessage::Pong(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        body
    });

    let config = DialConfig {
        server: addr.to_string(),
        tls: tls::client_config(&pki.edge, true).unwrap(),
        node: NodeIdentity {
            name: "edge-1".into(),
            ip: Some("10.1.2.3".parse().unwrap()),
        },
        handshake_timeout: Duration::from_secs(10),
        session: SessionConfig::default(),
        offer_tether2: true,
    };
    let (session, mut incoming, driver) = dial(&config).await.unwrap();
    assert_eq!(session.dialect(), Dialect::KubeEdge);
    let driving = tokio::spawn(driver.run());
    let accepted = incoming.accept().await.unwrap();
    assert_eq!(
        accepted.request.url.request_uri(),
        "/containerLogs/default/big/app?tailLines=2&timestamps=true"
    );
    assert_eq!(accepted.stream.kind(), ConnectKind::Logs);
    let mut stream = accepted.stream;
    stream.write_all(b"line 1\nline 2\n").await.unwrap();
    stream.shutdown().await.unwrap();
    let body = tokio::time::timeout(Duration::from_secs(10), cloud)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body, b"line 1\nline 2\n");
    session.close("done");
    let _ = driving.await.unwrap();
}
