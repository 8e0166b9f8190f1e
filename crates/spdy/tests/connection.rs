//! Two SPDY connections talking over a real TCP socket on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use spdy::{Config, Connection, Error, Headers, Role, frame::rst_status};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// Generous bound for events that should happen promptly.
const WAIT: Duration = Duration::from_secs(10);

struct Pair {
    client: Connection,
    server: Connection,
    client_driver: JoinHandle<Result<(), Error>>,
    server_driver: JoinHandle<Result<(), Error>>,
}

async fn pair_with(client_cfg: Config, server_cfg: Config) -> Pair {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client_tcp, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (client, client_driver) = Connection::new(client_tcp.unwrap(), Role::Client, client_cfg);
    let (server, server_driver) = Connection::new(accepted.unwrap().0, Role::Server, server_cfg);
    Pair {
        client,
        server,
        client_driver: tokio::spawn(client_driver),
        server_driver: tokio::spawn(server_driver),
    }
}

async fn pair() -> Pair {
    pair_with(Config::default(), Config::default()).await
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32 % 251) as u8 ^ seed).collect()
}

/// Server side: accept every stream and echo it back until the client's FIN.
fn echo_server(server: Connection) -> JoinHandle<usize> {
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        while let Some(incoming) = server.accept().await {
            tasks.push(tokio::spawn(async move {
                let mut s = incoming.accept();
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    s.write_all(&buf[..n]).await.unwrap();
                }
                s.shutdown().await.unwrap();
            }));
        }
        let n = tasks.len();
        for t in tasks {
            t.await.unwrap();
        }
        n
    })
}

#[tokio::test]
async fn echo_4mib_both_ways_with_half_close() {
    let p = pair().await;
    let echo = echo_server(p.server.clone());
    let s = p
        .client
        .open_stream(Headers::new().with("streamType", "data").with("port", "80"))
        .await
        .unwrap();
    assert_eq!(s.id(), 1);
    assert_eq!(s.headers().get("streamtype"), Some("data"));
    assert_eq!(s.reply_headers(), Some(Headers::new()));
    let (mut r, mut w) = tokio::io::split(s);
    let data = pattern(4 << 20, 7);
    let expected = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
        w
    });
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, r.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert!(got == expected, "echo differs");
    let w = writer.await.unwrap();
    let s = r.unsplit(w);
    assert!(s.peer_finished());
    assert_eq!(s.peer_reset(), None);
    drop(s);
    // Dropping every client handle ends the client driver, which ends the server's.
    drop(p.client);
    tokio::time::timeout(WAIT, p.client_driver)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    tokio::time::timeout(WAIT, p.server_driver)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(p.server.is_closed());
    assert_eq!(echo.await.unwrap(), 1);
}

#[tokio::test]
async fn many_concurrent_streams_keep_their_bytes_apart() {
    let p = pair().await;
    let echo = echo_server(p.server.clone());
    let mut tasks = Vec::new();
    for i in 0..32u8 {
        let client = p.client.clone();
        tasks.push(tokio::spawn(async move {
            let s = client
                .open_stream(Headers::new().with("requestid", i.to_string()))
                .await
                .unwrap();
            assert_eq!(s.id() % 2, 1, "client ids are odd");
            let (mut r, mut w) = tokio::io::split(s);
            let data = pattern(100_000 + usize::from(i) * 1000, i);
            let expected = data.clone();
            let writer = tokio::spawn(async move {
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
            });
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            writer.await.unwrap();
            assert!(got == expected, "stream {i} differs");
        }));
    }
    for t in tasks {
        tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
    }
    p.client.close();
    tokio::time::timeout(WAIT, p.server.closed()).await.unwrap();
    assert_eq!(echo.await.unwrap(), 32);
}

#[tokio::test]
async fn pings_are_echoed_both_ways() {
    let p = pair().await;
    tokio::time::timeout(WAIT, p.client.ping())
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(WAIT, p.server.ping())
        .await
        .unwrap()
        .unwrap();
    p.client.close();
}

#[tokio::test]
async fn refused_and_reset_streams() {
    let p = pair().await;
    let server = p.server.clone();
    let acceptor = tokio::spawn(async move {
        // First stream: refused. Second: accepted, one message, then reset.
        server.accept().await.unwrap().reject();
        let mut s = server.accept().await.unwrap().accept();
        s.write_all(b"before reset").await.unwrap();
        s.reset();
        let mut buf = [0u8; 8];
        // A local reset ends local reads too.
        assert_eq!(s.read(&mut buf).await.unwrap(), 0);
        assert!(s.write_all(b"x").await.is_err());
    });
    match p.client.open_stream(Headers::new().with("a", "1")).await {
        Err(Error::StreamReset(status)) => assert_eq!(status, rst_status::REFUSED_STREAM),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let mut s = p
        .client
        .open_stream(Headers::new().with("a", "2"))
        .await
        .unwrap();
    assert_eq!(s.id(), 3);
    let mut got = Vec::new();
    // A peer reset ends reads with EOF after the data sent before it, like spdystream.
    tokio::time::timeout(WAIT, s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"before reset");
    assert_eq!(s.peer_reset(), Some(rst_status::CANCEL));
    let err = s.write_all(b"after").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    acceptor.await.unwrap();
    // The connection itself is fine.
    p.client.ping().await.unwrap();
}

#[tokio::test]
async fn close_resets_streams_and_ends_both_drivers() {
    let p = pair().await;
    let server = p.server.clone();
    let srv = tokio::spawn(async move {
        let mut s = server.accept().await.unwrap().accept();
        s.write_all(b"last words").await.unwrap();
        // Like the kubelet at the end of an exec: reset everything, GOAWAY, close.
        server.close();
        server.closed().await;
        // A stream of a closed connection fails writes.
        assert!(s.write_all(b"x").await.is_err());
    });
    let mut s = p.client.open_stream(Headers::new()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"last words");
    assert_eq!(s.peer_reset(), Some(rst_status::CANCEL));
    tokio::time::timeout(WAIT, p.client.closed()).await.unwrap();
    assert!(matches!(
        p.client.open_stream(Headers::new()).await,
        Err(Error::ConnectionClosed | Error::GoingAway)
    ));
    srv.await.unwrap();
    p.client_driver.await.unwrap().unwrap();
    p.server_driver.await.unwrap().unwrap();
}

#[tokio::test]
async fn open_times_out_without_a_reply() {
    let cfg = Config {
        reply_timeout: Duration::from_millis(200),
        ..Config::default()
    };
    let p = pair_with(cfg, Config::default()).await;
    // The server never calls accept(): the SYN_STREAM waits in its backlog.
    match p.client.open_stream(Headers::new()).await {
        Err(Error::Timeout(what)) => assert_eq!(what, "SYN_REPLY"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // The abandoned stream was reset; the server sees a stream that is already over.
    let incoming = tokio::time::timeout(WAIT, p.server.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(incoming.id(), 1);
    let mut s = incoming.accept();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.peer_reset(), Some(rst_status::CANCEL));
}

#[tokio::test]
async fn a_slow_reader_pauses_the_connection_without_losing_data() {
    let small = Config {
        stream_read_buffer: 16 * 1024,
        write_buffer: 64 * 1024,
        max_write_frame: 8 * 1024,
        ..Config::default()
    };
    let p = pair_with(small.clone(), small).await;
    let server = p.server.clone();
    let total = 2 << 20;
    let reader = tokio::spawn(async move {
        let mut s = server.accept().await.unwrap().accept();
        let mut hasher_len = 0usize;
        let mut expected = pattern(total, 3).into_iter();
        let mut buf = [0u8; 1000];
        loop {
            // Read small pieces and yield between them, far slower than the writer.
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            for b in &buf[..n] {
                assert_eq!(Some(*b), expected.next());
            }
            hasher_len += n;
            tokio::task::yield_now().await;
        }
        hasher_len
    });
    let mut s = p.client.open_stream(Headers::new()).await.unwrap();
    s.write_all(&pattern(total, 3)).await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, reader).await.unwrap().unwrap(),
        total
    );
}

#[tokio::test]
async fn goaway_lets_open_streams_finish_then_ends() {
    let p = pair().await;
    let echo = echo_server(p.server.clone());
    let s = p.client.open_stream(Headers::new()).await.unwrap();
    p.client.goaway();
    // No new streams after GOAWAY.
    assert!(matches!(
        p.client.open_stream(Headers::new()).await,
        Err(Error::GoingAway)
    ));
    // The open stream still works to the end.
    let (mut r, mut w) = tokio::io::split(s);
    w.write_all(b"still here").await.unwrap();
    w.shutdown().await.unwrap();
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"still here");
    // Both ends were done with the only stream: the connection ends by itself.
    tokio::time::timeout(WAIT, p.client.closed()).await.unwrap();
    tokio::time::timeout(WAIT, p.server.closed()).await.unwrap();
    drop(r.unsplit(w));
    assert_eq!(echo.await.unwrap(), 1);
}

#[tokio::test]
async fn dropping_a_driver_fails_its_streams() {
    let p = pair().await;
    let server = p.server.clone();
    let srv = tokio::spawn(async move { server.accept().await.unwrap().accept() });
    let mut s = p.client.open_stream(Headers::new()).await.unwrap();
    let mut server_stream = srv.await.unwrap();
    p.server_driver.abort();
    // The server's own stream fails at once: the connection ended without FIN or RST.
    let mut buf = [0u8; 4];
    let err = tokio::time::timeout(WAIT, server_stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    assert!(server_stream.write_all(b"x").await.is_err());
    assert!(p.server.accept().await.is_none());
    // The client sees the transport close.
    assert!(
        tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .is_err()
    );
    tokio::time::timeout(WAIT, p.client.closed()).await.unwrap();
}

#[tokio::test]
async fn garbage_from_the_peer_ends_the_driver_with_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (raw, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let mut raw = raw.unwrap();
    let (server, driver) = Connection::server(accepted.unwrap().0, Config::default());
    let driver = tokio::spawn(driver);
    // A control frame of SPDY/2.
    raw.write_all(b"\x80\x02\x00\x01\x00\x00\x00\x00")
        .await
        .unwrap();
    let res = tokio::time::timeout(WAIT, driver).await.unwrap().unwrap();
    assert!(matches!(res, Err(Error::UnsupportedVersion(_))), "{res:?}");
    assert!(server.accept().await.is_none());
    // A data frame claiming more than the limit is refused from its header alone.
    let (raw2, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let mut raw2 = raw2.unwrap();
    let cfg = Config {
        limits: spdy::Limits {
            max_data_payload: 1024,
            ..spdy::Limits::default()
        },
        ..Config::default()
    };
    let (_server, driver) = Connection::server(accepted.unwrap().0, cfg);
    let driver = tokio::spawn(driver);
    raw2.write_all(&[0, 0, 0, 1, 0, 0x10, 0, 0]).await.unwrap();
    let res = tokio::time::timeout(WAIT, driver).await.unwrap().unwrap();
    assert!(matches!(res, Err(Error::FrameTooLarge { .. })), "{res:?}");
}

#[tokio::test]
async fn a_client_refuses_streams_from_the_server() {
    let p = pair().await;
    // A server-initiated stream: client-go never accepts those, nor does this client.
    match p.server.open_stream(Headers::new()).await {
        Err(Error::StreamReset(status)) => assert_eq!(status, rst_status::REFUSED_STREAM),
        other => panic!("{other:?}"),
    }
}
