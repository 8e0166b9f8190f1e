//! Measures what each [`Preset`] delivers: bulk throughput in each direction and the one-way
//! latency of a 64-byte write over an idle link. This is how to check the emulator itself
//! (timer precision, quantum size, hidden kernel buffers) before trusting a benchmark run
//! through it.
//!
//! ```text
//! cargo run --release -p linkem --example measure
//! ```
//!
//! Throughput is one connection's bytes over the time from the first to the last byte at the
//! receiver, so the propagation delay does not count against it. One-way latency is the time
//! from a 64-byte write to its arrival, measured in one process with one clock. Loaded latency
//! is the same for the writes of the bulk transfer: delay plus every queue on the way (the
//! link's and the kernel buffers of both hops).

use std::time::Duration;

use anyhow::Result;
use linkem::{Link, LinkConfig, Preset};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;

/// Seconds of bulk transfer per preset and direction.
const BULK_SECONDS: u64 = 4;
/// Latency samples per preset.
const SAMPLES: usize = 30;

#[tokio::main]
async fn main() -> Result<()> {
    println!(
        "{:<15} {:>12} {:>10} {:>10} {:>10} {:>12} {:>12} {:>12}",
        "preset",
        "rate Mbit/s",
        "up %",
        "down %",
        "delay ms",
        "1-way min",
        "1-way p50",
        "1-way max"
    );
    for preset in Preset::ALL {
        let config = preset.config();
        let server = TcpListener::bind("127.0.0.1:0").await?;
        let link = Link::start(server.local_addr()?, config)?;
        let rate = config.up.rate as f64;

        let (mut client, mut accepted) = connect(&link, &server).await?;
        let bytes = config.up.rate * BULK_SECONDS;
        let up = bulk(&mut client, &mut accepted, bytes).await?;
        let down = bulk(&mut accepted, &mut client, bytes).await?;
        let mut one_way = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            one_way.push(one_way_latency(&mut client, &mut accepted).await?);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The same upload from a sender that keeps its own kernel buffer small: what remains
        // is the link's queue (64 KiB / rate) plus the delay.
        let small = TcpSocket::new_v4()?;
        small.set_send_buffer_size(16 * 1024)?;
        let mut small = small.connect(link.addr()).await?;
        let (mut small_accepted, _) = server.accept().await?;
        let lean = bulk(&mut small, &mut small_accepted, bytes / 2).await?;
        one_way.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{:<15} {:>12.1} {:>9.1}% {:>9.1}% {:>10.1} {:>12.2} {:>12.2} {:>12.2}",
            preset.name(),
            rate * 8.0 / 1e6,
            100.0 * up.rate / rate,
            100.0 * down.rate / rate,
            ms(config.up.delay),
            ms(one_way[0]),
            ms(one_way[SAMPLES / 2]),
            ms(one_way[SAMPLES - 1]),
        );
        let stats = link.stats();
        println!(
            "{:<15} loaded 1-way p50 up/down {:.1} / {:.1} ms, up with a 16 KiB SO_SNDBUF {:.1} ms \
             (link queue alone {:.1} ms); peak queue {} / {} B (limit {}), peak in flight {} / {} B",
            "",
            ms(up.loaded_latency),
            ms(down.loaded_latency),
            ms(lean.loaded_latency),
            ms(config.up.delay) + config.up.queue as f64 / rate * 1000.0,
            stats.up.peak_queued,
            stats.down.peak_queued,
            config.up.queue,
            stats.up.peak_in_flight,
            stats.down.peak_in_flight
        );
        link.shutdown().await;
    }
    unlimited_overhead().await
}

async fn connect(link: &Link, server: &TcpListener) -> Result<(TcpStream, TcpStream)> {
    let client = TcpStream::connect(link.addr()).await?;
    let (accepted, _) = server.accept().await?;
    client.set_nodelay(true)?;
    accepted.set_nodelay(true)?;
    Ok((client, accepted))
}

/// What one bulk transfer showed.
struct Bulk {
    /// Bytes per second at the receiver, first to last byte.
    rate: f64,
    /// Median time from a write returning to its last byte arriving, in the second half of
    /// the transfer: queueing (the link's queue and every kernel buffer) plus the delay.
    loaded_latency: Duration,
}

/// Sends `bytes` from `tx` to `rx` in 16 KiB writes.
async fn bulk(tx: &mut TcpStream, rx: &mut TcpStream, bytes: u64) -> Result<Bulk> {
    let chunk = vec![0x5au8; 16 * 1024];
    let send = async {
        let mut sent = 0;
        let mut written = Vec::new();
        while sent < bytes {
            let n = chunk.len().min(usize::try_from(bytes - sent)?);
            tx.write_all(&chunk[..n]).await?;
            sent += n as u64;
            written.push((sent, Instant::now()));
        }
        anyhow::Ok(written)
    };
    let receive = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0u64;
        let mut arrived = Vec::new();
        while got < bytes {
            let n = rx.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "EOF during bulk transfer");
            got += n as u64;
            arrived.push((got, Instant::now()));
        }
        Ok(arrived)
    };
    let (written, arrived) = tokio::try_join!(send, receive)?;
    let (Some(&(first_chunk, start)), Some(&(_, end))) = (arrived.first(), arrived.last()) else {
        anyhow::bail!("nothing received");
    };
    let rate = (bytes - first_chunk) as f64 / (end - start).as_secs_f64();
    let mut latencies: Vec<Duration> = written
        .iter()
        .filter(|(offset, _)| *offset > bytes / 2)
        .filter_map(|&(offset, at)| {
            let i = arrived.partition_point(|&(got, _)| got < offset);
            arrived.get(i).map(|&(_, when)| when - at)
        })
        .collect();
    latencies.sort();
    let loaded_latency = latencies
        .get(latencies.len() / 2)
        .copied()
        .unwrap_or_default();
    Ok(Bulk {
        rate,
        loaded_latency,
    })
}

async fn one_way_latency(tx: &mut TcpStream, rx: &mut TcpStream) -> Result<Duration> {
    let packet = [7u8; 64];
    let mut buf = [0u8; 64];
    let sent = Instant::now();
    tx.write_all(&packet).await?;
    rx.read_exact(&mut buf).await?;
    Ok(sent.elapsed())
}

/// The proxy's own cost with no shaping: throughput and one-way latency over loopback.
async fn unlimited_overhead() -> Result<()> {
    let server = TcpListener::bind("127.0.0.1:0").await?;
    let link = Link::start(server.local_addr()?, LinkConfig::unlimited())?;
    let (mut client, mut accepted) = connect(&link, &server).await?;
    let rate = bulk(&mut client, &mut accepted, 1 << 30).await?.rate;
    let mut one_way = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        one_way.push(one_way_latency(&mut client, &mut accepted).await?);
    }
    one_way.sort();
    println!(
        "unlimited link: {:.0} Mbit/s, one-way p50 {:?}",
        rate * 8.0 / 1e6,
        one_way[SAMPLES / 2]
    );
    link.shutdown().await;
    Ok(())
}
