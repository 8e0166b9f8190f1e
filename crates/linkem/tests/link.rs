//! The link emulator through real sockets on 127.0.0.1: data integrity, backpressure, faults,
//! admission and lifecycle. Every assertion is about an outcome (bytes, errors, counters);
//! timeouts only bound how long an expected event may take.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use linkem::{Admission, Link, LinkConfig, PathConfig, mbit_per_s};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Generous bound for anything that should happen promptly.
const EVENT: Duration = Duration::from_secs(20);

/// Byte `i` of the deterministic stream `seed`: a gap, duplicate or reordering shows up as a
/// mismatch at once.
fn byte_at(seed: u64, i: u64) -> u8 {
    let mixed = (i ^ seed.rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 56) as u8
}

/// Writes `total` bytes of stream `seed` in writes of varying size, then closes the write side.
async fn send_stream<W: AsyncWrite + Unpin>(
    mut w: W,
    seed: u64,
    total: u64,
    progress: Option<Arc<AtomicU64>>,
) -> Result<W> {
    let sizes = [1usize, 100, 1500, 7000, 32 * 1024, 65 * 1024];
    let mut sent = 0u64;
    let mut turn = 0usize;
    while sent < total {
        let len = (sizes[turn % sizes.len()] as u64).min(total - sent);
        turn += 1;
        let chunk: Vec<u8> = (sent..sent + len).map(|i| byte_at(seed, i)).collect();
        w.write_all(&chunk).await?;
        sent += len;
        if let Some(progress) = &progress {
            progress.store(sent, Ordering::Relaxed);
        }
    }
    w.shutdown().await?;
    Ok(w)
}

/// Reads stream `seed` to EOF and checks it is exactly `total` bytes, intact and in order.
async fn expect_stream<R: AsyncRead + Unpin>(mut r: R, seed: u64, total: u64) -> Result<R> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        for (k, byte) in buf[..n].iter().enumerate() {
            let i = got + k as u64;
            ensure!(
                *byte == byte_at(seed, i),
                "byte {i} of stream {seed} is wrong"
            );
        }
        got += n as u64;
        ensure!(got <= total, "stream {seed}: more than {total} bytes");
    }
    ensure!(
        got == total,
        "stream {seed}: {got} of {total} bytes, then EOF"
    );
    Ok(r)
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(EVENT, fut)
        .await
        .with_context(|| format!("timed out: {what}"))
}

async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// A client connected through `link` and the server end the target accepted.
async fn connect_through(link: &Link, server: &TcpListener) -> Result<(TcpStream, TcpStream)> {
    let client = TcpStream::connect(link.addr()).await?;
    let (accepted, _) = within("target accepts", server.accept()).await??;
    Ok((client, accepted))
}

/// Sends a few bytes each way, proving the proxied connection is fully set up.
async fn handshake(client: &mut TcpStream, server: &mut TcpStream) -> Result<()> {
    client.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    within("ping", server.read_exact(&mut buf)).await??;
    ensure!(&buf == b"ping");
    server.write_all(b"pong").await?;
    within("pong", client.read_exact(&mut buf)).await??;
    ensure!(&buf == b"pong");
    Ok(())
}

/// Nothing readable now: no data and no EOF.
fn assert_quiet(stream: &TcpStream, who: &str) {
    let mut buf = [0u8; 64];
    match stream.try_read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok(0) => panic!("{who} saw EOF"),
        Ok(n) => panic!("{who} received {n} bytes"),
        Err(e) => panic!("{who} saw an error: {e}"),
    }
}

async fn expect_reset(stream: &mut TcpStream, who: &str) -> Result<()> {
    let mut buf = [0u8; 64];
    loop {
        match within(who, stream.read(&mut buf)).await? {
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => bail!("{who}: expected a reset, got {e}"),
            Ok(0) => bail!("{who}: expected a reset, got EOF"),
            // Bytes already delivered before the reset may still be read first.
            Ok(_) => {}
        }
    }
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

#[tokio::test]
async fn bytes_arrive_intact_both_ways_through_a_slow_link() -> Result<()> {
    let server = listener().await;
    let queue = 16 * 1024;
    let config = LinkConfig::symmetric(mbit_per_s(64), Duration::from_millis(20)).with_queue(queue);
    let link = Link::start(server.local_addr()?, config)?;
    let (client, accepted) = connect_through(&link, &server).await?;

    let total = 4 << 20;
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = accepted.into_split();
    let (up_sent, down_sent, up_got, down_got) = within("transfer", async {
        tokio::join!(
            send_stream(client_w, 1, total, None),
            send_stream(server_w, 2, total, None),
            expect_stream(server_r, 1, total),
            expect_stream(client_r, 2, total),
        )
    })
    .await?;
    up_sent?;
    down_sent?;
    up_got?;
    down_got?;

    // Both FINs were delivered, so the link closes the connection cleanly.
    let stats = link.wait_stats(EVENT, |s| s.open == 0).await?;
    assert_eq!(stats.up.forwarded, total);
    assert_eq!(stats.down.forwarded, total);
    assert_eq!((stats.up.dropped, stats.down.dropped), (0, 0));
    assert_eq!(stats.resets, 0);
    assert!(stats.up.peak_queued <= queue, "{stats:?}");
    assert!(stats.down.peak_queued <= queue, "{stats:?}");
    assert_eq!((stats.up.queued, stats.up.in_flight), (0, 0));
    link.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_receiver_that_does_not_read_holds_the_sender_back() -> Result<()> {
    // Small endpoint buffers so the kernel cannot absorb the transfer either.
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(16 * 1024)?;
    socket.bind("127.0.0.1:0".parse()?)?;
    let server = socket.listen(16)?;
    let queue = 64 * 1024;
    let path = PathConfig {
        rate: mbit_per_s(80),
        delay: Duration::from_millis(10),
        queue,
    };
    let link = Link::start(
        server.local_addr()?,
        LinkConfig {
            up: path,
            down: path,
        },
    )?;
    let client = TcpSocket::new_v4()?;
    client.set_send_buffer_size(16 * 1024)?;
    let client = client.connect(link.addr()).await?;
    let (accepted, _) = within("target accepts", server.accept()).await??;

    let total = 16u64 << 20;
    let progress = Arc::new(AtomicU64::new(0));
    let sender = tokio::spawn(send_stream(client, 7, total, Some(Arc::clone(&progress))));

    // The receiver reads nothing: the wire fills, then the queue.
    link.wait_stats(EVENT, |s| s.up.queued == queue).await?;
    // Deliberately give the sender time to push on, which it must not be able to do.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = link.stats();
    let sent = progress.load(Ordering::Relaxed);
    assert!(stats.up.peak_queued <= queue, "{stats:?}");
    assert!(stats.up.peak_in_flight <= path.max_in_flight(), "{stats:?}");
    // What the sender got rid of sits in the link or in small kernel buffers, nowhere else.
    let held = stats.up.forwarded + (stats.up.queued + stats.up.in_flight) as u64;
    assert!(
        sent <= held + (512 << 10),
        "sent {sent}, link holds {held}: {stats:?}"
    );
    assert!(sent < total / 4, "sender was not held back: sent {sent}");
    assert!(!sender.is_finished());

    // Once the receiver reads, everything arrives.
    within("drain", expect_stream(accepted, 7, total)).await??;
    within("sender ends", sender).await???;
    let stats = link.stats();
    assert_eq!(stats.up.forwarded, total);
    assert!(stats.up.peak_queued <= queue, "{stats:?}");
    Ok(())
}

#[tokio::test]
async fn a_blackhole_keeps_both_sides_connected_and_delivers_nothing() -> Result<()> {
    let server = listener().await;
    let config = LinkConfig::symmetric(mbit_per_s(100), Duration::from_millis(10));
    let link = Link::start(server.local_addr()?, config)?;
    let (mut client, mut accepted) = connect_through(&link, &server).await?;
    handshake(&mut client, &mut accepted).await?;

    link.blackhole();
    client.write_all(&[1u8; 10_000]).await?;
    accepted.write_all(&[2u8; 20_000]).await?;
    let stats = link
        .wait_stats(EVENT, |s| {
            s.up.dropped == 10_000 && s.down.dropped == 20_000
        })
        .await?;
    assert_eq!((stats.up.forwarded, stats.down.forwarded), (4, 4));
    assert_eq!((stats.open, stats.resets), (1, 0));
    assert_quiet(&client, "client");
    assert_quiet(&accepted, "server");

    // After the outage the same connection carries new bytes, and only those.
    link.restore();
    handshake(&mut client, &mut accepted).await?;
    let stats = link.stats();
    assert_eq!((stats.up.forwarded, stats.down.forwarded), (8, 8));
    Ok(())
}

#[tokio::test]
async fn a_blackhole_loses_what_is_queued_and_on_the_wire() -> Result<()> {
    let server = listener().await;
    // 2 Mbit/s with 200 ms one way: 100 KB take 400 ms to serialise, 50 KB are on the wire.
    let path = PathConfig {
        rate: mbit_per_s(2),
        delay: Duration::from_millis(200),
        queue: 128 * 1024,
    };
    let link = Link::start(
        server.local_addr()?,
        LinkConfig {
            up: path,
            down: path,
        },
    )?;
    let (mut client, mut accepted) = connect_through(&link, &server).await?;
    let total = 100_000u64;
    let (client_r, client_w) = client.into_split();
    let client_w = send_stream(client_w, 5, total, None).await?;
    link.wait_stats(EVENT, |s| s.up.queued > 0 && s.up.in_flight > 0)
        .await?;

    link.blackhole();
    // No link task runs between these two calls (single-threaded test runtime).
    let at_blackhole = link.stats();
    let stats = link
        .wait_stats(EVENT, |s| s.up.forwarded + s.up.dropped == total)
        .await?;
    assert_eq!(stats.up.forwarded, at_blackhole.up.forwarded, "{stats:?}");
    assert!(
        stats.up.dropped > at_blackhole.up.in_flight as u64,
        "{stats:?}"
    );
    assert_eq!((stats.up.queued, stats.up.in_flight), (0, 0));

    // What was delivered before the outage is an intact prefix; the FIN sent before the
    // blackhole is lost with the bytes ahead of it, so the server sees no EOF.
    let mut prefix = vec![0u8; usize::try_from(stats.up.forwarded)?];
    within("prefix", accepted.read_exact(&mut prefix)).await??;
    assert!(
        prefix
            .iter()
            .enumerate()
            .all(|(i, b)| *b == byte_at(5, i as u64))
    );
    assert_quiet(&accepted, "server");

    link.restore();
    accepted.write_all(b"still here").await?;
    client = client_r.reunite(client_w)?;
    let mut buf = [0u8; 10];
    within("reply after restore", client.read_exact(&mut buf)).await??;
    assert_eq!(&buf, b"still here");
    assert_quiet(&accepted, "server");
    Ok(())
}

#[tokio::test]
async fn reset_gives_both_sides_an_error_and_spares_later_connections() -> Result<()> {
    let server = listener().await;
    let config = LinkConfig::symmetric(mbit_per_s(20), Duration::from_millis(40));
    let link = Link::start(server.local_addr()?, config)?;
    let (mut client, mut accepted) = connect_through(&link, &server).await?;
    handshake(&mut client, &mut accepted).await?;
    // Bytes still queued or on the wire are discarded by the reset.
    client.write_all(&[0u8; 100_000]).await?;

    link.reset();
    expect_reset(&mut client, "client").await?;
    expect_reset(&mut accepted, "server").await?;
    let stats = link.wait_stats(EVENT, |s| s.open == 0).await?;
    assert_eq!(stats.resets, 1);
    assert_eq!((stats.up.queued, stats.up.in_flight), (0, 0));

    let (mut client, mut accepted) = connect_through(&link, &server).await?;
    handshake(&mut client, &mut accepted).await?;
    Ok(())
}

#[tokio::test]
async fn a_reset_from_one_side_reaches_the_other() -> Result<()> {
    let server = listener().await;
    let config = LinkConfig::symmetric(mbit_per_s(20), Duration::from_millis(20));
    let link = Link::start(server.local_addr()?, config)?;
    let (mut client, mut accepted) = connect_through(&link, &server).await?;
    handshake(&mut client, &mut accepted).await?;

    client.set_zero_linger()?;
    drop(client);
    expect_reset(&mut accepted, "server").await?;
    link.wait_stats(EVENT, |s| s.open == 0).await?;
    Ok(())
}

#[tokio::test]
async fn a_pause_loses_nothing() -> Result<()> {
    let server = listener().await;
    let queue = 16 * 1024;
    let config = LinkConfig::symmetric(mbit_per_s(32), Duration::from_millis(10)).with_queue(queue);
    let link = Link::start(server.local_addr()?, config)?;
    let (mut client, mut accepted) = connect_through(&link, &server).await?;
    handshake(&mut client, &mut accepted).await?;

    link.pause();
    let total = 1 << 20;
    let sender = tokio::spawn(send_stream(client, 3, total, None));
    link.wait_stats(EVENT, |s| s.up.queued == queue).await?;
    // Deliberately stay paused for many times the delay: a running link would deliver.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = link.stats();
    assert_eq!(stats.up.forwarded, 4, "nothing is delivered while paused");
    assert_eq!(stats.up.queued, queue);
    assert_quiet(&accepted, "server");

    link.resume();
    within("transfer after resume", expect_stream(accepted, 3, total)).await??;
    within("sender ends", sender).await???;
    let stats = link.stats();
    assert_eq!(stats.up.forwarded, 4 + total);
    assert_eq!(stats.up.dropped, 0);
    Ok(())
}

#[tokio::test]
async fn a_new_config_applies_to_bytes_already_queued() -> Result<()> {
    let server = listener().await;
    // 64 KiB at 4 KB/s would take 16 s; at the new rate it takes a moment.
    let crawl = PathConfig {
        rate: 4_000,
        delay: Duration::from_millis(50),
        queue: 128 * 1024,
    };
    let link = Link::start(
        server.local_addr()?,
        LinkConfig {
            up: crawl,
            down: crawl,
        },
    )?;
    let (client, accepted) = connect_through(&link, &server).await?;
    let total = 64 * 1024;
    let sender = tokio::spawn(send_stream(client, 4, total, None));
    link.wait_stats(EVENT, |s| s.up.queued > 32 * 1024).await?;
    link.set_config(LinkConfig::unlimited())?;
    assert_eq!(link.config(), LinkConfig::unlimited());
    tokio::time::timeout(Duration::from_secs(8), expect_stream(accepted, 4, total))
        .await
        .context("the old rate still applies")??;
    within("sender ends", sender).await???;
    assert!(
        link.set_config(LinkConfig::unlimited().with_queue(0))
            .is_err()
    );
    Ok(())
}

#[tokio::test]
async fn admission_resets_or_holds_new_connections() -> Result<()> {
    let server = listener().await;
    let link = Link::start(server.local_addr()?, LinkConfig::unlimited())?;

    link.set_admission(Admission::Reset);
    let mut refused = TcpStream::connect(link.addr()).await?;
    expect_reset(&mut refused, "refused client").await?;

    link.set_admission(Admission::Hold);
    let mut held = TcpStream::connect(link.addr()).await?;
    held.write_all(b"early").await?;
    link.wait_stats(EVENT, |s| s.accepted == 2 && s.open == 1)
        .await?;
    assert_quiet(&held, "held client");

    // Released, the held connection reaches the target with the bytes sent meanwhile.
    link.set_admission(Admission::Forward);
    let (mut accepted, _) = within("target accepts", server.accept()).await??;
    let mut buf = [0u8; 5];
    within("early bytes", accepted.read_exact(&mut buf)).await??;
    assert_eq!(&buf, b"early");
    handshake(&mut held, &mut accepted).await?;
    Ok(())
}

#[tokio::test]
async fn an_unreachable_target_resets_the_client() -> Result<()> {
    // A port nobody listens on: bind, note the port, close.
    let target: SocketAddr = listener().await.local_addr()?;
    let link = Link::start(target, LinkConfig::unlimited())?;
    let mut client = TcpStream::connect(link.addr()).await?;
    expect_reset(&mut client, "client").await?;
    Ok(())
}

#[tokio::test]
async fn shutdown_ends_every_connection_and_task() -> Result<()> {
    let server = listener().await;
    let baseline = alive_tasks();
    let config = LinkConfig::symmetric(mbit_per_s(20), Duration::from_millis(20));
    let link = Link::start(server.local_addr()?, config)?;
    let addr = link.addr();
    let mut pairs = Vec::new();
    for _ in 0..3 {
        let (mut client, mut accepted) = connect_through(&link, &server).await?;
        handshake(&mut client, &mut accepted).await?;
        pairs.push((client, accepted));
    }
    link.set_admission(Admission::Hold);
    let mut held = TcpStream::connect(addr).await?;
    link.wait_stats(EVENT, |s| s.open == 4).await?;
    assert!(alive_tasks() > baseline);

    within("shutdown", link.shutdown()).await?;
    assert_eq!(alive_tasks(), baseline, "the link left tasks behind");
    for (client, accepted) in &mut pairs {
        expect_reset(client, "client").await?;
        expect_reset(accepted, "server").await?;
    }
    expect_reset(&mut held, "held client").await?;
    let refused = TcpStream::connect(addr).await;
    assert_eq!(
        refused.map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionRefused)
    );
    Ok(())
}

#[tokio::test]
async fn dropping_the_link_ends_its_tasks_and_resets_its_connections() -> Result<()> {
    let server = listener().await;
    let baseline = alive_tasks();
    let link = Link::start(server.local_addr()?, LinkConfig::unlimited())?;
    let (mut client, mut accepted) = connect_through(&link, &server).await?;
    handshake(&mut client, &mut accepted).await?;

    drop(link);
    expect_reset(&mut client, "client").await?;
    expect_reset(&mut accepted, "server").await?;
    // Aborted tasks are dropped by the runtime shortly after the abort.
    within("tasks end", async {
        while alive_tasks() != baseline {
            tokio::task::yield_now().await;
        }
    })
    .await?;
    Ok(())
}

#[test]
fn starting_outside_a_runtime_is_an_error() {
    let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
    assert!(matches!(
        Link::start(target, LinkConfig::unlimited()),
        Err(linkem::Error::NoRuntime)
    ));
}
