//! The real `kubectl` through an API server that proxies the way kube-apiserver does
//! (`test_support::apiserver`: SPDY upgrades keep kubectl's `Host`, WebSocket exec is
//! translated to SPDY, port-forward over WebSocket is tunnelled), to cloudstream, to
//! edgestream, to a test kubelet. Every operation runs twice: with kubectl's defaults
//! (WebSocket towards the API server) and with SPDY (`KUBECTL_*_WEBSOCKETS=false`, every kubectl
//! before 1.30 and client-go's SPDY executor). Either way the kubelet leg is SPDY.
//!
//! kubectl is found as `$KUBECTL` or on `PATH`; where it is absent the tests say so and pass
//! without running (the machine image ships one).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Stdio;

use sha2::{Digest, Sha256};
use test_support::apiserver::TestPod;
use test_support::client::echo_server;
use test_support::content::generated_log;
use test_support::kubelet::{ContainerSpec, TestKubelet};
use tether_e2e::{Cluster, PATIENCE, kubectl_binary};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

/// How kubectl talks to the API server.
#[derive(Debug, Clone, Copy)]
enum Transport {
    /// kubectl 1.32's defaults: WebSocket for exec/attach and port-forward.
    WebSocket,
    /// SPDY, as kubectl < 1.30 and client-go's SPDY executor.
    Spdy,
}

impl Transport {
    const BOTH: [Transport; 2] = [Transport::WebSocket, Transport::Spdy];

    fn env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Transport::WebSocket => &[],
            Transport::Spdy => &[
                ("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false"),
                ("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false"),
            ],
        }
    }
}

struct Setup {
    cluster: Cluster,
    kubectl: PathBuf,
    kubelet: TestKubelet,
}

async fn setup() -> Option<Setup> {
    let Some(kubectl) = kubectl_binary() else {
        eprintln!("SKIPPED: kubectl not found ($KUBECTL or PATH); the kubectl tests did not run");
        return None;
    };
    let mut cluster = Cluster::start(&[]).await.unwrap();
    let kubelet = TestKubelet::builder()
        .container(
            "default",
            "web",
            "web",
            ContainerSpec::with_logs(&b"line one\nline two\n"[..]),
        )
        .node_name("edge-1")
        .start()
        .await
        .unwrap();
    cluster
        .add_node("edge-1", "10.0.0.1", kubelet.addr())
        .await
        .unwrap();
    cluster
        .api
        .put_pod(TestPod::running("default", "web", "edge-1", &["web"]));
    Some(Setup {
        cluster,
        kubectl,
        kubelet,
    })
}

/// What one kubectl run printed.
struct Run {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stdout = String::from_utf8_lossy(&self.stdout);
        let cut: String = stdout.chars().take(2000).collect();
        f.debug_struct("Run")
            .field("code", &self.code)
            .field("stdout", &cut)
            .field("stdout_len", &self.stdout.len())
            .field("stderr", &self.stderr)
            .finish()
    }
}

impl Setup {
    fn command(&self, args: &[&str], transport: Transport) -> Command {
        let home = self.cluster.world.path("kubectl-home");
        let mut cmd = Command::new(&self.kubectl);
        cmd.arg("--kubeconfig")
            .arg(&self.cluster.kubeconfig)
            .arg("--cache-dir")
            .arg(home.join("cache"))
            .args(args)
            .env("HOME", &home)
            .env_remove("KUBECONFIG")
            .envs(transport.env().iter().copied())
            .kill_on_drop(true)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    async fn run(&self, args: &[&str], stdin: Option<&[u8]>, transport: Transport) -> Run {
        let mut cmd = self.command(args, transport);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().expect("kubectl starts");
        let feed = async {
            if let Some(input) = stdin {
                let mut pipe = child.stdin.take().unwrap();
                pipe.write_all(input).await.unwrap();
                drop(pipe);
            }
        };
        feed.await;
        let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
            .await
            .expect("kubectl finishes")
            .unwrap();
        Run {
            code: out.status.code(),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Every kubelet request the edge made so far was SPDY, whatever kubectl used.
    fn assert_kubelet_saw_only_spdy(&self) {
        for r in self.kubelet.requests() {
            if r.headers.contains_key("upgrade") {
                assert_eq!(
                    r.headers["upgrade"].to_str().unwrap().to_ascii_lowercase(),
                    "spdy/3.1",
                    "{} reached the kubelet as {:?}",
                    r.path_and_query,
                    r.headers["upgrade"]
                );
            }
        }
    }
}

#[tokio::test]
async fn kubectl_logs_and_raw_metrics() {
    let Some(s) = setup().await else { return };
    let ws = Transport::WebSocket;

    let run = s.run(&["logs", "web"], None, ws).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout, b"line one\nline two\n");

    let run = s.run(&["logs", "web", "--tail=1"], None, ws).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout, b"line two\n");

    // logs -f: the lines so far, then a line appended later, while kubectl waits.
    let mut child = s.command(&["logs", "-f", "web"], ws).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || {
        tokio::time::timeout(PATIENCE, out.next_line())
            .await
            .expect("a line in time")
            .unwrap()
    };
    assert_eq!(next().await.as_deref(), Some("line one"));
    assert_eq!(next().await.as_deref(), Some("line two"));
    s.kubelet
        .append_log("default", "web", "web", &b"line three\n"[..])
        .unwrap();
    assert_eq!(next().await.as_deref(), Some("line three"));
    child.kill().await.unwrap();
    tokio::time::timeout(PATIENCE, s.kubelet.wait_idle())
        .await
        .expect("the kubelet is freed when kubectl logs -f goes away");

    let run = s
        .run(
            &[
                "get",
                "--raw",
                "/api/v1/nodes/edge-1/proxy/metrics/cadvisor",
            ],
            None,
            ws,
        )
        .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let direct = test_support::client::http_get(
        TcpStream::connect(s.kubelet.addr()).await.unwrap(),
        "127.0.0.1",
        "/metrics/cadvisor",
        &[],
    )
    .await
    .unwrap();
    let direct = test_support::client::body_bytes(direct.into_body())
        .await
        .unwrap();
    assert_eq!(run.stdout, direct, "the kubelet's bytes, unchanged");
}

#[tokio::test]
async fn kubectl_exec_attach_and_exit_codes() {
    let Some(s) = setup().await else { return };
    for t in Transport::BOTH {
        let run = s
            .run(
                &["exec", "-i", "web", "--", "cat"],
                Some(b"through the tunnel\n"),
                t,
            )
            .await;
        assert_eq!(run.code, Some(0), "{t:?} {run:?}");
        assert_eq!(run.stdout, b"through the tunnel\n", "{t:?}");

        let run = s
            .run(&["exec", "web", "--", "sh", "-c", "exit 3"], None, t)
            .await;
        assert_eq!(run.code, Some(3), "{t:?} {run:?}");

        let run = s
            .run(&["exec", "web", "--", "sh", "-c", "stderr oops"], None, t)
            .await;
        assert_eq!(run.code, Some(0), "{t:?} {run:?}");
        assert!(run.stdout.is_empty(), "{t:?} {run:?}");
        assert!(run.stderr.contains("oops"), "{t:?} {run:?}");

        let run = s
            .run(&["attach", "-i", "web"], Some(b"to the main process\n"), t)
            .await;
        assert_eq!(run.code, Some(0), "{t:?} {run:?}");
        assert!(
            String::from_utf8_lossy(&run.stdout).contains("to the main process"),
            "{t:?} {run:?}"
        );
    }
    s.assert_kubelet_saw_only_spdy();
}

#[tokio::test]
async fn kubectl_cp_both_ways() {
    let Some(s) = setup().await else { return };
    let dir = s.cluster.world.path("cp");
    std::fs::create_dir_all(&dir).unwrap();
    let content = generated_log(5_000_000);
    let local = dir.join("upload.bin");
    std::fs::write(&local, &content).unwrap();
    for (i, t) in Transport::BOTH.into_iter().enumerate() {
        let remote = format!("/tmp/upload-{i}.bin");
        let run = s
            .run(
                &["cp", local.to_str().unwrap(), &format!("web:{remote}")],
                None,
                t,
            )
            .await;
        assert_eq!(run.code, Some(0), "{t:?} {run:?}");
        let stored = s
            .kubelet
            .file("default", "web", "web", &remote)
            .expect("the file arrived in the container");
        assert_eq!(
            Sha256::digest(&stored),
            Sha256::digest(&content),
            "{t:?}: upload intact"
        );

        let back = dir.join(format!("download-{i}.bin"));
        let run = s
            .run(
                &["cp", &format!("web:{remote}"), back.to_str().unwrap()],
                None,
                t,
            )
            .await;
        assert_eq!(run.code, Some(0), "{t:?} {run:?}");
        let got = std::fs::read(&back).unwrap();
        assert_eq!(got.len(), content.len(), "{t:?}");
        assert!(got == content, "{t:?}: download intact");
    }
    s.assert_kubelet_saw_only_spdy();
}

#[tokio::test]
async fn kubectl_port_forward() {
    let Some(s) = setup().await else { return };
    let (echo, echo_guard) = echo_server().await.unwrap();
    for t in Transport::BOTH {
        let target = format!(":{}", echo.port());
        let mut child = s
            .command(
                &["port-forward", "pod/web", &target, "--address", "127.0.0.1"],
                t,
            )
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // "Forwarding from 127.0.0.1:41234 -> 38000"
        let local_port: u16 = tokio::time::timeout(PATIENCE, async {
            loop {
                let line = lines.next_line().await.unwrap().expect("kubectl exited");
                if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                    return rest.split_whitespace().next().unwrap().parse().unwrap();
                }
            }
        })
        .await
        .unwrap();
        for round in 0..2u8 {
            let mut conn = TcpStream::connect(("127.0.0.1", local_port)).await.unwrap();
            let payload: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8 ^ round).collect();
            let (mut r, mut w) = conn.split();
            let mut got = Vec::new();
            let (wr, rr) = tokio::join!(
                async {
                    w.write_all(&payload).await?;
                    w.shutdown().await
                },
                tokio::time::timeout(PATIENCE, r.read_to_end(&mut got))
            );
            wr.unwrap();
            rr.expect("echo in time").unwrap();
            assert!(
                got == payload,
                "{t:?} round {round}: {} bytes back",
                got.len()
            );
        }
        child.kill().await.unwrap();
    }
    echo_guard.shutdown().await;
    s.assert_kubelet_saw_only_spdy();
}
