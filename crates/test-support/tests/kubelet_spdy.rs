//! The test kubelet's exec/attach/port-forward over SPDY/3.1 with the SPDY test clients, and
//! the same scenarios over WebSocket, so both transports are held to one behaviour.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{io::Read as _, time::Duration};

use bytes::Bytes;
use http::{StatusCode, header};
use test_support::{
    ContainerSpec, Event, ExecSession, PortForwardSession, TestKubelet,
    client::{UpgradeError, spdy_upgrade},
    content::{GeneratedVerifier, generated_sha256_hex},
    echo_server, exec_spdy, exec_ws, port_forward_spdy, port_forward_ws,
};
use tokio::{io::AsyncReadExt as _, net::TcpStream};

const WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy)]
enum Transport {
    Ws,
    Spdy,
}

const BOTH: [Transport; 2] = [Transport::Ws, Transport::Spdy];

async fn kubelet() -> TestKubelet {
    TestKubelet::builder()
        .container("default", "web", "app", ContainerSpec::default())
        .container("default", "web", "sidecar", ContainerSpec::default())
        .start()
        .await
        .unwrap()
}

async fn tcp(k: &TestKubelet) -> TcpStream {
    TcpStream::connect(k.addr()).await.unwrap()
}

fn exec_path(cmd: &[&str], extra: &str) -> String {
    let mut q: Vec<String> = cmd
        .iter()
        .map(|c| {
            format!(
                "command={}",
                c.replace('%', "%25")
                    .replace(' ', "%20")
                    .replace('/', "%2F")
                    .replace('|', "%7C")
                    .replace('+', "%2B")
            )
        })
        .collect();
    q.push(extra.to_owned());
    format!("/exec/default/web/app?{}", q.join("&"))
}

async fn exec(t: Transport, k: &TestKubelet, pq: &str) -> ExecSession {
    let r = match t {
        Transport::Ws => exec_ws(tcp(k).await, "kubelet", pq, &[]).await,
        Transport::Spdy => exec_spdy(tcp(k).await, "kubelet", pq, &[]).await,
    };
    r.unwrap_or_else(|e| panic!("{t:?} exec {pq}: {e:#}"))
}

async fn port_forward(t: Transport, k: &TestKubelet, pq: &str) -> PortForwardSession {
    match t {
        Transport::Ws => port_forward_ws(tcp(k).await, "kubelet", pq).await,
        Transport::Spdy => port_forward_spdy(tcp(k).await, "kubelet", pq, &[]).await,
    }
    .unwrap()
}

#[tokio::test]
async fn cat_round_trip_4mib_on_both_transports() {
    let k = kubelet().await;
    for t in BOTH {
        let s = exec(t, &k, &exec_path(&["cat"], "input=1&output=1&error=1")).await;
        let expected_protocol = match t {
            Transport::Ws => "v5.channel.k8s.io",
            Transport::Spdy => "v4.channel.k8s.io",
        };
        assert_eq!(s.protocol(), Some(expected_protocol));
        let (mut w, r) = s.split();
        let data: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            w.send_stdin(&data).await.unwrap();
            w.close_stdin().await.unwrap();
            w
        });
        let out = tokio::time::timeout(WAIT, r.collect())
            .await
            .unwrap()
            .unwrap();
        writer.await.unwrap();
        assert_eq!(out.stdout.len(), expected.len(), "{t:?}");
        assert!(out.stdout == expected, "{t:?}: stdout differs");
        assert_eq!(
            out.status,
            serde_json::json!({"metadata": {}, "status": "Success"}),
            "{t:?}"
        );
        assert_eq!(out.exit_code(), Some(0));
    }
    tokio::time::timeout(WAIT, k.wait_idle()).await.unwrap();
    k.shutdown().await;
}

#[tokio::test]
async fn statuses_stderr_and_commands_on_both_transports() {
    let k = kubelet().await;
    for t in BOTH {
        let run = |cmd: Vec<&'static str>, q: &'static str| {
            let k = &k;
            async move {
                tokio::time::timeout(WAIT, exec(t, k, &exec_path(&cmd, q)).await.collect())
                    .await
                    .unwrap()
                    .unwrap()
            }
        };
        let out = run(vec!["sh", "-c", "exit 3"], "output=1&error=1").await;
        assert_eq!(out.exit_code(), Some(3), "{t:?}");
        assert_eq!(out.status["reason"], "NonZeroExitCode");
        assert_eq!(
            out.status["message"],
            "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
        );
        let out = run(vec!["stderr", "oops"], "output=1&error=1").await;
        assert_eq!(
            (&out.stdout[..], &out.stderr[..]),
            (&b""[..], &b"oops\n"[..]),
            "{t:?}"
        );
        // With a tty there is no stderr stream: stderr goes to stdout.
        let out = run(vec!["stderr", "oops"], "output=1&error=1&tty=1").await;
        assert_eq!(
            (&out.stdout[..], &out.stderr[..]),
            (&b"oops\n"[..], &b""[..]),
            "{t:?}"
        );
        let out = run(vec!["echo", "hello", "world"], "output=1").await;
        assert_eq!(out.stdout, b"hello world\n");
        let out = run(vec!["head", "-c", "10"], "output=1").await;
        assert_eq!(out.stdout, b"0000000000");
        let out = run(vec!["no-such-binary"], "output=1").await;
        assert_eq!(out.status["reason"], "InternalError", "{t:?}");
        assert_eq!(out.exit_code(), None);
    }
    k.shutdown().await;
}

#[tokio::test]
async fn eight_mib_each_way_with_sha256() {
    let k = kubelet().await;
    let total: u64 = 8 << 20;
    for t in BOTH {
        // Down: the kubelet generates, the client verifies every byte.
        let s = exec(
            t,
            &k,
            &exec_path(&["yes-bytes", &total.to_string()], "output=1"),
        )
        .await;
        let (_w, mut r) = s.split();
        let mut v = GeneratedVerifier::new();
        while let Some(ev) = tokio::time::timeout(WAIT, r.next()).await.unwrap().unwrap() {
            match ev {
                Event::Stdout(d) => v.update(&d),
                Event::Status(s) => assert_eq!(s["status"], "Success"),
                Event::Stderr(e) => panic!("stderr: {e:?}"),
            }
        }
        v.finish(total).unwrap();

        // Up: the client sends, the kubelet hashes.
        let s = exec(t, &k, &exec_path(&["sha256sum"], "input=1&output=1")).await;
        let (mut w, r) = s.split();
        let writer = tokio::spawn(async move {
            let mut pos = 0;
            while pos < total {
                let n = (total - pos).min(1 << 20);
                w.send_stdin(&test_support::content::generated_bytes(pos, n as usize))
                    .await
                    .unwrap();
                pos += n;
            }
            w.close_stdin().await.unwrap();
            w
        });
        let out = tokio::time::timeout(WAIT, r.collect())
            .await
            .unwrap()
            .unwrap();
        writer.await.unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("{}  {total}\n", generated_sha256_hex(total)),
            "{t:?}"
        );
    }
    k.shutdown().await;
}

#[tokio::test]
async fn tty_resize_and_attach_on_both_transports() {
    let k = kubelet().await;
    for t in BOTH {
        let mut s = exec(t, &k, &exec_path(&["tty-size"], "input=1&output=1&tty=1")).await;
        s.resize(80, 24).await.unwrap();
        assert_eq!(
            s.next().await.unwrap(),
            Some(Event::Stdout(Bytes::from_static(b"80x24\n"))),
            "{t:?}"
        );
        s.resize(120, 40).await.unwrap();
        assert_eq!(
            s.next().await.unwrap(),
            Some(Event::Stdout(Bytes::from_static(b"120x40\n")))
        );
        s.close_stdin().await.unwrap();
        assert_eq!(s.collect().await.unwrap().exit_code(), Some(0));

        let mut a = exec(t, &k, "/attach/default/web/app?input=1&output=1&tty=1").await;
        a.send_stdin(b"hi\n").await.unwrap();
        assert_eq!(
            a.next().await.unwrap(),
            Some(Event::Stdout(Bytes::from_static(b"hi\n"))),
            "{t:?}"
        );
        a.resize(10, 5).await.unwrap();
        assert_eq!(
            a.next().await.unwrap(),
            Some(Event::Stdout(Bytes::from_static(b"10x5\n")))
        );
        a.close_stdin().await.unwrap();
        assert_eq!(a.collect().await.unwrap().exit_code(), Some(0));
    }
    assert_eq!(k.request_count("/attach/"), 2);
    k.shutdown().await;
}

/// Builds a tar archive holding one regular file, as kubectl's `makeTar` does.
fn tar_with(name: &str, data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, data).unwrap();
    b.into_inner().unwrap()
}

#[tokio::test]
async fn cp_round_trip_through_tar_on_both_transports() {
    let k = kubelet().await;
    for t in BOTH {
        let dest = format!("/tmp/{t:?}/payload.bin");
        let data: Vec<u8> = (0..(2u32 << 20) + 3)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        // kubectl first asks whether the destination is a directory.
        let out = exec(
            t,
            &k,
            &exec_path(&["test", "-d", &dest], "output=1&error=1"),
        )
        .await
        .collect()
        .await
        .unwrap();
        assert_eq!(out.exit_code(), Some(1), "{t:?}: not a directory yet");

        // Upload: the archive names the file relative to -C, and tar creates /tmp/<t>/.
        let archive = tar_with(&format!("{t:?}/payload.bin"), &data);
        let s = exec(
            t,
            &k,
            &exec_path(
                &["tar", "-xmf", "-", "-C", "/tmp"],
                "input=1&output=1&error=1",
            ),
        )
        .await;
        let (mut w, r) = s.split();
        let writer = tokio::spawn(async move {
            w.send_stdin(&archive).await.unwrap();
            w.close_stdin().await.unwrap();
            w
        });
        let out = tokio::time::timeout(WAIT, r.collect())
            .await
            .unwrap()
            .unwrap();
        writer.await.unwrap();
        assert_eq!(
            out.exit_code(),
            Some(0),
            "{t:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(k.file("default", "web", "app", &dest).unwrap() == data);
        let out = exec(
            t,
            &k,
            &exec_path(&["test", "-d", &format!("/tmp/{t:?}")], "output=1"),
        )
        .await
        .collect()
        .await
        .unwrap();
        assert_eq!(out.exit_code(), Some(0));

        // Download: `tar cf - PATH` straight as argv, then through kubectl's --retries pipeline.
        for cmd in [
            vec!["tar", "cf", "-", dest.as_str()],
            vec!["sh", "-c", &format!("tar cf - {dest} | tail -c+1")],
        ] {
            let out = tokio::time::timeout(
                WAIT,
                exec(t, &k, &exec_path(&cmd, "output=1&error=1"))
                    .await
                    .collect(),
            )
            .await
            .unwrap()
            .unwrap();
            assert_eq!(out.exit_code(), Some(0), "{t:?} {cmd:?}");
            assert_eq!(out.stderr, b"tar: Removing leading `/' from member names\n");
            let mut archive = tar::Archive::new(&out.stdout[..]);
            let mut entries = archive.entries().unwrap();
            let mut entry = entries.next().unwrap().unwrap();
            assert_eq!(
                entry.path().unwrap().to_str().unwrap(),
                dest.trim_start_matches('/')
            );
            let mut back = Vec::new();
            entry.read_to_end(&mut back).unwrap();
            assert!(back == data, "{t:?} {cmd:?}: byte-identical round trip");
        }
        // `tail -c+N` resumes at byte N.
        let full = exec(t, &k, &exec_path(&["tar", "cf", "-", &dest], "output=1"))
            .await
            .collect()
            .await
            .unwrap()
            .stdout;
        let tail = exec(
            t,
            &k,
            &exec_path(
                &["sh", "-c", &format!("tar cf - {dest} | tail -c+1001")],
                "output=1",
            ),
        )
        .await
        .collect()
        .await
        .unwrap()
        .stdout;
        assert!(tail[..] == full[1000..]);
    }
    k.shutdown().await;
}

#[tokio::test]
async fn spdy_protocol_versions() {
    let k = kubelet().await;
    let offer = |v: &'static str| [("X-Stream-Protocol-Version", v)];
    // v3 and v2: a failure is plain text on the error stream, success says nothing.
    for v in ["v3.channel.k8s.io", "v2.channel.k8s.io"] {
        let s = exec_spdy(
            tcp(&k).await,
            "kubelet",
            &exec_path(&["exit", "4"], "output=1"),
            &offer(v),
        )
        .await
        .unwrap();
        assert_eq!(s.protocol(), Some(v));
        let out = s.collect().await.unwrap();
        assert_eq!(
            out.status,
            serde_json::Value::String(
                "command terminated with non-zero exit code: error executing command [exit 4], exit code 4".into()
            ),
            "{v}"
        );
        let out = exec_spdy(
            tcp(&k).await,
            "kubelet",
            &exec_path(&["true"], "output=1"),
            &offer(v),
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
        assert_eq!(out.status, serde_json::Value::Null);
    }
    // v2 has no resize stream.
    let mut s = exec_spdy(
        tcp(&k).await,
        "kubelet",
        &exec_path(&["cat"], "input=1&output=1&tty=1"),
        &offer("v2.channel.k8s.io"),
    )
    .await
    .unwrap();
    assert!(s.resize(1, 1).await.is_err());
    s.send_stdin(b"v2 tty\n").await.unwrap();
    s.close_stdin().await.unwrap();
    assert_eq!(s.collect().await.unwrap().stdout, b"v2 tty\n");
    // channel.k8s.io: the kubelet resets the error stream at once, so no status ever arrives.
    let s = exec_spdy(
        tcp(&k).await,
        "kubelet",
        &exec_path(&["echo", "v1"], "output=1"),
        &offer("channel.k8s.io"),
    )
    .await
    .unwrap();
    assert_eq!(s.protocol(), Some("channel.k8s.io"));
    let out = s.collect().await.unwrap();
    assert_eq!(
        (out.stdout.as_slice(), &out.status),
        (&b"v1\n"[..], &serde_json::Value::Null)
    );
    // Comma-separated offers work too; the client's order wins.
    let s = exec_spdy(
        tcp(&k).await,
        "kubelet",
        &exec_path(&["true"], "output=1"),
        &offer("v9.channel.k8s.io, v3.channel.k8s.io, v4.channel.k8s.io"),
    )
    .await
    .unwrap();
    assert_eq!(s.protocol(), Some("v3.channel.k8s.io"));
    k.shutdown().await;
}

#[tokio::test]
async fn spdy_handshake_errors() {
    let k = kubelet().await;
    let upgrade_err = |e: anyhow::Error| e.downcast::<UpgradeError>().unwrap();
    let pq = exec_path(&["cat"], "output=1");
    // No X-Stream-Protocol-Version.
    let e = upgrade_err(
        spdy_upgrade(tcp(&k).await, "kubelet", &pq, &[])
            .await
            .unwrap_err(),
    );
    assert_eq!(e.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        &e.body[..],
        b"unable to upgrade: X-Stream-Protocol-Version is required"
    );
    // No overlap: 403 listing what the kubelet accepts.
    let e = upgrade_err(
        spdy_upgrade(
            tcp(&k).await,
            "kubelet",
            &pq,
            &[("X-Stream-Protocol-Version", "v5.channel.k8s.io")],
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.status, StatusCode::FORBIDDEN);
    let accepted: Vec<_> = e
        .headers
        .get_all("x-accepted-stream-protocol-versions")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        accepted,
        [
            "v4.channel.k8s.io",
            "v3.channel.k8s.io",
            "v2.channel.k8s.io",
            "channel.k8s.io"
        ]
    );
    // Port-forward accepts only portforward.k8s.io.
    let e = upgrade_err(
        port_forward_spdy(
            tcp(&k).await,
            "kubelet",
            "/portForward/default/web?port=1",
            &[("X-Stream-Protocol-Version", "v4.channel.k8s.io")],
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.status, StatusCode::FORBIDDEN);
    assert_eq!(
        e.headers["x-accepted-stream-protocol-versions"],
        "portforward.k8s.io"
    );
    // Unknown pod and container: 404 before any upgrade.
    let e = upgrade_err(
        exec_spdy(
            tcp(&k).await,
            "kubelet",
            "/exec/default/ghost/app?command=cat&output=1",
            &[],
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(
        (e.status, &e.body[..]),
        (StatusCode::NOT_FOUND, &b"pod does not exist"[..])
    );
    // A successful upgrade: the 101 as the kubelet sends it.
    let (resp, conn, driver) = spdy_upgrade(
        tcp(&k).await,
        "kubelet",
        &pq,
        &[("X-Stream-Protocol-Version", "v4.channel.k8s.io")],
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()[header::UPGRADE], "SPDY/3.1");
    assert_eq!(resp.headers()[header::CONNECTION], "Upgrade");
    assert_eq!(
        resp.headers()["x-stream-protocol-version"],
        "v4.channel.k8s.io"
    );
    let driver = tokio::spawn(driver);
    conn.ping().await.unwrap();
    conn.close();
    driver.await.unwrap().unwrap();
    k.shutdown().await;
}

#[tokio::test]
async fn missing_streams_fail_after_the_creation_timeout() {
    let k = TestKubelet::builder()
        .container("default", "web", "app", ContainerSpec::default())
        .stream_creation_timeout(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    // The query promises stdin and stdout, but only the error stream is created.
    let (_, conn, driver) = spdy_upgrade(
        tcp(&k).await,
        "kubelet",
        &exec_path(&["cat"], "input=1&output=1"),
        &[("X-Stream-Protocol-Version", "v4.channel.k8s.io")],
    )
    .await
    .unwrap();
    let driver = tokio::spawn(driver);
    let mut error = conn
        .open_stream(spdy::Headers::new().with("streamType", "error"))
        .await
        .unwrap();
    let mut buf = Vec::new();
    // The kubelet gives up and closes the connection: the client sees the end, not a hang.
    let _ = tokio::time::timeout(WAIT, error.read_to_end(&mut buf))
        .await
        .unwrap();
    tokio::time::timeout(WAIT, conn.closed()).await.unwrap();
    driver.await.unwrap().unwrap();
    tokio::time::timeout(WAIT, k.wait_idle()).await.unwrap();
    k.shutdown().await;
}

#[tokio::test]
async fn port_forward_echo_on_both_transports() {
    let k = kubelet().await;
    let (echo, echo_guard) = echo_server().await.unwrap();
    for t in BOTH {
        let pq = format!("/portForward/default/web?port={}", echo.port());
        let s = port_forward(t, &k, &pq).await;
        let expected_protocol = match t {
            Transport::Ws => "v4.channel.k8s.io",
            Transport::Spdy => "portforward.k8s.io",
        };
        assert_eq!(s.protocol(), Some(expected_protocol));
        let (mut w, mut r) = s.split();
        let total = 3 << 20;
        let writer = tokio::spawn(async move {
            w.write(&test_support::content::generated_log(total))
                .await
                .unwrap();
            w
        });
        let mut v = GeneratedVerifier::new();
        while v.len() < total {
            let chunk = tokio::time::timeout(WAIT, r.read())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            v.update(&chunk);
        }
        v.finish(total).unwrap();
        assert_eq!(r.port(), Some(echo.port()), "{t:?}");
        let mut w = writer.await.unwrap();
        w.close().await.unwrap();
        // The kubelet shuts the target down, the echo server closes, the session ends.
        assert!(
            tokio::time::timeout(WAIT, r.read())
                .await
                .unwrap()
                .unwrap()
                .is_none(),
            "{t:?}"
        );

        // Nothing listening: the error is reported.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = port_forward(
            t,
            &k,
            &format!("/portForward/default/web/uid?port={closed}"),
        )
        .await;
        let err = tokio::time::timeout(WAIT, s.read())
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            err.to_string().contains("port-forward error"),
            "{t:?}: {err}"
        );
        assert!(
            err.to_string()
                .contains(&format!("error forwarding port {closed} to pod web")),
            "{err}"
        );
    }
    // SPDY clients send no ports in the query; the kubelet takes them from the streams.
    let s = port_forward_spdy(
        tcp(&k).await,
        "kubelet",
        &format!("/portForward/default/web?port={}", echo.port()),
        &[],
    )
    .await
    .unwrap();
    drop(s);
    echo_guard.shutdown().await;
    tokio::time::timeout(WAIT, k.wait_idle()).await.unwrap();
    k.shutdown().await;
}

#[tokio::test]
async fn kubelet_notices_spdy_clients_going_away_and_shuts_down_sessions() {
    let k = kubelet().await;
    let mut s = exec(
        Transport::Spdy,
        &k,
        &exec_path(&["cat"], "input=1&output=1"),
    )
    .await;
    s.send_stdin(b"x").await.unwrap();
    assert_eq!(
        s.next().await.unwrap(),
        Some(Event::Stdout(Bytes::from_static(b"x")))
    );
    assert_eq!(k.active_streams().upgrades, 1);
    drop(s);
    tokio::time::timeout(WAIT, k.wait_idle()).await.unwrap();

    let mut s = exec(
        Transport::Spdy,
        &k,
        &exec_path(&["cat"], "input=1&output=1"),
    )
    .await;
    s.send_stdin(b"y").await.unwrap();
    assert_eq!(
        s.next().await.unwrap(),
        Some(Event::Stdout(Bytes::from_static(b"y")))
    );
    tokio::time::timeout(WAIT, k.shutdown()).await.unwrap();
    // The session was torn down with the kubelet.
    assert!(matches!(
        tokio::time::timeout(WAIT, s.next()).await.unwrap(),
        Ok(None) | Err(_)
    ));
}
