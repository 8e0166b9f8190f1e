//! The real `kubectl` through an API server that proxies the way kube-apiserver does, to
//! cloudstream, to edgestream, to a test kubelet.
//!
//! kubectl is found as `$KUBECTL` or on `PATH`; where it is absent the tests say so and pass
//! without running (the machine image ships one; CI runs them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Stdio;

use test_support::apiserver::TestPod;
use test_support::kubelet::{ContainerSpec, TestKubelet};
use tether_e2e::{Cluster, PATIENCE, kubectl_binary};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

struct Setup {
    cluster: Cluster,
    kubectl: PathBuf,
    kubelet: TestKubelet,
}

async fn setup() -> Option<Setup> {
    let Some(kubectl) = kubectl_binary() else {
        eprintln!("kubectl not found ($KUBECTL or PATH): skipping the kubectl tests");
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
    fn command(&self, args: &[&str]) -> Command {
        let home = self.cluster.world.path("kubectl-home");
        let mut cmd = Command::new(&self.kubectl);
        cmd.arg("--kubeconfig")
            .arg(&self.cluster.kubeconfig)
            .arg("--cache-dir")
            .arg(home.join("cache"))
            .args(args)
            .env("HOME", &home)
            .env_remove("KUBECONFIG")
            .kill_on_drop(true)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    async fn run(&self, args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &str)]) -> Run {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().expect("kubectl starts");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(input).await.unwrap();
            drop(pipe);
        }
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
}

#[tokio::test]
async fn kubectl_logs_exec_and_raw_metrics() {
    let Some(s) = setup().await else { return };

    let run = s.run(&["logs", "web"], None, &[]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout, b"line one\nline two\n");

    let run = s.run(&["logs", "web", "--tail=1"], None, &[]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout, b"line two\n");

    let run = s
        .run(
            &[
                "get",
                "--raw",
                "/api/v1/nodes/edge-1/proxy/metrics/cadvisor",
            ],
            None,
            &[],
        )
        .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let direct = test_support::client::http_get(
        tokio::net::TcpStream::connect(s.kubelet.addr())
            .await
            .unwrap(),
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

    let run = s
        .run(
            &["exec", "-i", "web", "--", "cat"],
            Some(b"through the tunnel\n"),
            &[],
        )
        .await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout, b"through the tunnel\n");

    let run = s
        .run(&["exec", "web", "--", "sh", "-c", "exit 3"], None, &[])
        .await;
    assert_eq!(run.code, Some(3), "{run:?}");
}
