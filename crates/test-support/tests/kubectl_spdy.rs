//! The real `kubectl` (Go: client-go's SPDY executor and port-forwarder on moby/spdystream)
//! against the test kubelet's SPDY/3.1 endpoints.
//!
//! kubectl needs an API server: `test_support::apiserver` serves the pod and discovery and
//! proxies the pod's `exec`/`attach`/`portforward` subresources straight to the kubelet the
//! way kube-apiserver does for SPDY (the upgrade forwarded, the kubelet's answer relayed, then
//! the bytes copied untouched both ways).
//! The websocket transports are switched off (`KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`,
//! `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`), so every byte kubectl sends is SPDY.
//!
//! Without a kubectl binary (`KUBECTL`, else `kubectl` on `PATH`) the tests print why and
//! pass. Every `kubectl.1.NN` found beside it in `/usr/lib/google-cloud-sdk/bin` also runs the
//! basic exec.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::Result;
use test_support::apiserver::{KubeletDial, TestApiServer, TestNode, TestPod};
use test_support::{ContainerSpec, TestKubelet, TestPki, echo_server};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpStream,
    process::Command,
};

/// Generous bound on one kubectl run.
const WAIT: Duration = Duration::from_secs(60);

fn kubectl_binary() -> Option<PathBuf> {
    let candidate = std::env::var_os("KUBECTL").map(PathBuf::from).or_else(|| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("kubectl"))
                .find(|p| p.is_file())
        })
    })?;
    candidate.is_file().then_some(candidate)
}

fn skip(test: &str) -> bool {
    if kubectl_binary().is_none() {
        eprintln!("SKIPPED {test}: no kubectl binary (set KUBECTL or put kubectl on PATH)");
        return true;
    }
    false
}

/// A test API server (`test_support::apiserver`) in front of the kubelet: it relays
/// kubectl's SPDY upgrades to the kubelet untouched, as kube-apiserver does.
struct Apiserver {
    api: TestApiServer,
    dir: tempfile::TempDir,
}

impl Apiserver {
    async fn start(kubelet: SocketAddr, containers: Vec<&'static str>) -> Result<Self> {
        let pki = TestPki::new()?;
        let api = TestApiServer::builder(&pki)
            .kubelet(KubeletDial::Plain(kubelet))
            .start()
            .await?;
        api.put_node(TestNode {
            name: "test-node".into(),
            internal_ip: kubelet.ip(),
            kubelet_port: kubelet.port(),
        });
        api.put_pod(TestPod::running("default", "web", "test-node", &containers));
        let dir = tempfile::tempdir()?;
        api.write_kubeconfig(dir.path())?;
        Ok(Self { api, dir })
    }

    fn kubectl(&self, binary: &Path) -> Command {
        let mut cmd = Command::new(binary);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("KUBECONFIG", self.dir.path().join("kubeconfig"))
            .env("KUBECACHEDIR", self.dir.path().join("cache"))
            .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")
            .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")
            .current_dir(self.dir.path())
            .kill_on_drop(true);
        cmd
    }

    async fn shutdown(self) {
        self.api.shutdown().await;
    }
}

struct Run {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

async fn run(mut cmd: Command, stdin: &[u8]) -> Run {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawning kubectl");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = tokio::spawn(async move {
        let _ = input.write_all(&data).await;
        drop(input);
    });
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("kubectl did not finish")
        .unwrap();
    writer.await.unwrap();
    Run {
        code: out.status.code(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn setup() -> (TestKubelet, Apiserver) {
    let kubelet = TestKubelet::builder()
        .container("default", "web", "app", ContainerSpec::default())
        .container("default", "web", "sidecar", ContainerSpec::default())
        .start()
        .await
        .unwrap();
    let api = Apiserver::start(kubelet.addr(), vec!["app", "sidecar"])
        .await
        .unwrap();
    (kubelet, api)
}

fn args(cmd: &mut Command, a: &[&str]) {
    cmd.args(a);
}

#[tokio::test]
async fn kubectl_exec_over_spdy() {
    if skip("kubectl_exec_over_spdy") {
        return;
    }
    let kubectl = kubectl_binary().unwrap();
    let (kubelet, api) = setup().await;

    // stdin → stdout through `cat`, stdin closed by kubectl at EOF (FIN on the stdin stream).
    let mut cmd = api.kubectl(&kubectl);
    args(&mut cmd, &["exec", "-i", "web", "-c", "app", "--", "cat"]);
    let r = run(cmd, b"hello spdy\n").await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.stdout, b"hello spdy\n");

    // The exit code travels in the v4 status on the error stream.
    let mut cmd = api.kubectl(&kubectl);
    args(
        &mut cmd,
        &["exec", "web", "-c", "app", "--", "sh", "-c", "exit 3"],
    );
    let r = run(cmd, b"").await;
    assert_eq!(r.code, Some(3), "{}", r.stderr);

    // stderr stays apart from stdout.
    let mut cmd = api.kubectl(&kubectl);
    args(
        &mut cmd,
        &["exec", "web", "-c", "sidecar", "--", "stderr", "oops"],
    );
    let r = run(cmd, b"").await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_str()),
        (&b""[..], "oops\n")
    );

    // A multi-MiB upload, hashed by the "container".
    let data: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 251) as u8).collect();
    let mut cmd = api.kubectl(&kubectl);
    args(
        &mut cmd,
        &["exec", "-i", "web", "-c", "app", "--", "sha256sum"],
    );
    let r = run(cmd, &data).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(
        String::from_utf8(r.stdout).unwrap(),
        format!(
            "{}  {}\n",
            test_support::content::sha256_hex(&data),
            data.len()
        )
    );

    // A multi-MiB download.
    let mut cmd = api.kubectl(&kubectl);
    args(
        &mut cmd,
        &["exec", "web", "-c", "app", "--", "yes-bytes", "5000000"],
    );
    let r = run(cmd, b"").await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout == test_support::content::generated_log(5_000_000));

    // An unknown binary is an error status, reported by kubectl.
    let mut cmd = api.kubectl(&kubectl);
    args(
        &mut cmd,
        &["exec", "web", "-c", "app", "--", "no-such-binary"],
    );
    let r = run(cmd, b"").await;
    assert_ne!(r.code, Some(0));
    assert!(
        r.stderr.contains("executable file not found"),
        "{}",
        r.stderr
    );

    // Attach: the "main process" echoes stdin until kubectl closes it.
    let mut cmd = api.kubectl(&kubectl);
    args(&mut cmd, &["attach", "-i", "web", "-c", "app"]);
    let r = run(cmd, b"attached\n").await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.stdout, b"attached\n");
    assert_eq!(kubelet.request_count("/attach/default/web/app"), 1);

    // Every request kubectl made reached the kubelet as SPDY/3.1.
    let execs: Vec<_> = kubelet
        .requests()
        .into_iter()
        .filter(|r| r.path_and_query.starts_with("/exec/"))
        .collect();
    assert_eq!(execs.len(), 6);
    for r in &execs {
        assert_eq!(r.headers[http::header::UPGRADE], "SPDY/3.1");
        assert!(
            r.headers
                .get_all("x-stream-protocol-version")
                .iter()
                .any(|v| v == "v4.channel.k8s.io")
        );
    }
    api.shutdown().await;
    kubelet.shutdown().await;
}

#[tokio::test]
async fn kubectl_cp_round_trip_over_spdy() {
    if skip("kubectl_cp_round_trip_over_spdy") {
        return;
    }
    let kubectl = kubectl_binary().unwrap();
    let (kubelet, api) = setup().await;
    let local = api.dir.path().join("upload.bin");
    let data: Vec<u8> = (0..(3u32 << 20) + 17)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&local, &data).unwrap();

    // Upload: `test -d`, then `tar -xmf - -C /tmp` with the archive on stdin.
    let mut cmd = api.kubectl(&kubectl);
    args(
        &mut cmd,
        &[
            "cp",
            local.to_str().unwrap(),
            "web:/tmp/copied.bin",
            "-c",
            "app",
        ],
    );
    let r = run(cmd, b"").await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        kubelet
            .file("default", "web", "app", "/tmp/copied.bin")
            .unwrap()
            == data,
        "the container holds the uploaded bytes"
    );

    // Into a directory: kubectl keeps the file name.
    let mut cmd = api.kubectl(&kubectl);
    args(
        &mut cmd,
        &["cp", local.to_str().unwrap(), "web:/tmp", "-c", "app"],
    );
    let r = run(cmd, b"").await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        kubelet
            .file("default", "web", "app", "/tmp/upload.bin")
            .is_some()
    );

    // Download: `tar cf - /tmp/copied.bin`, unpacked by kubectl.
    let back = api.dir.path().join("downloaded.bin");
    let mut cmd = api.kubectl(&kubectl);
    args(
        &mut cmd,
        &[
            "cp",
            "web:/tmp/copied.bin",
            back.to_str().unwrap(),
            "-c",
            "app",
        ],
    );
    let r = run(cmd, b"").await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        std::fs::read(&back).unwrap() == data,
        "byte-identical round trip"
    );

    // With --retries kubectl asks for `sh -c "tar cf - PATH | tail -c+N"`.
    let back2 = api.dir.path().join("downloaded2.bin");
    let mut cmd = api.kubectl(&kubectl);
    args(
        &mut cmd,
        &[
            "cp",
            "--retries=3",
            "web:/tmp/copied.bin",
            back2.to_str().unwrap(),
            "-c",
            "app",
        ],
    );
    let r = run(cmd, b"").await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(std::fs::read(&back2).unwrap() == data);

    // The argv forms kubectl sent, as the kubelet received them.
    let commands: Vec<String> = kubelet
        .requests()
        .iter()
        .filter(|r| r.path_and_query.starts_with("/exec/"))
        .map(|r| r.path_and_query.clone())
        .collect();
    let sent = |needle: &str| commands.iter().any(|c| c.contains(needle));
    assert!(
        sent("command=test&command=-d&command=%2Ftmp%2Fcopied.bin"),
        "{commands:#?}"
    );
    assert!(
        sent("command=tar&command=-xmf&command=-&command=-C&command=%2Ftmp"),
        "{commands:#?}"
    );
    assert!(
        sent("command=tar&command=cf&command=-&command=%2Ftmp%2Fcopied.bin"),
        "{commands:#?}"
    );
    assert!(sent("tail+-c%2B"), "{commands:#?}");
    api.shutdown().await;
    kubelet.shutdown().await;
}

#[tokio::test]
async fn kubectl_port_forward_over_spdy() {
    if skip("kubectl_port_forward_over_spdy") {
        return;
    }
    let kubectl = kubectl_binary().unwrap();
    let (kubelet, api) = setup().await;
    let (echo, echo_guard) = echo_server().await.unwrap();
    let mut cmd = api.kubectl(&kubectl);
    args(
        &mut cmd,
        &[
            "port-forward",
            "pod/web",
            &format!(":{}", echo.port()),
            "--address",
            "127.0.0.1",
        ],
    );
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // "Forwarding from 127.0.0.1:41234 -> 38000"
    let local_port: u16 = tokio::time::timeout(WAIT, async {
        loop {
            let line = lines.next_line().await.unwrap().expect("kubectl exited");
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                return rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        }
    })
    .await
    .unwrap();
    for round in 0..3u8 {
        // Each local connection is a new pair of streams (requestID 0, 1, 2).
        let mut conn = TcpStream::connect(("127.0.0.1", local_port)).await.unwrap();
        let payload: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 249) as u8 ^ round).collect();
        let (mut r, mut w) = conn.split();
        let mut got = Vec::new();
        let (wr, rr) = tokio::join!(
            async {
                w.write_all(&payload).await?;
                w.shutdown().await
            },
            tokio::time::timeout(WAIT, r.read_to_end(&mut got))
        );
        wr.unwrap();
        rr.unwrap().unwrap();
        assert!(
            got == payload,
            "round {round}: echo differs ({} bytes)",
            got.len()
        );
    }
    child.kill().await.unwrap();
    let pf: Vec<_> = kubelet
        .requests()
        .into_iter()
        .filter(|r| r.path_and_query.starts_with("/portForward/"))
        .collect();
    assert_eq!(pf.len(), 1);
    assert_eq!(
        pf[0].headers["x-stream-protocol-version"],
        "portforward.k8s.io"
    );
    api.shutdown().await;
    echo_guard.shutdown().await;
    kubelet.shutdown().await;
}

#[tokio::test]
async fn every_kubectl_version_execs_over_spdy() {
    let dir = Path::new("/usr/lib/google-cloud-sdk/bin");
    let mut binaries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("kubectl.1."))
                })
                .collect()
        })
        .unwrap_or_default();
    binaries.sort();
    if binaries.is_empty() {
        eprintln!(
            "SKIPPED every_kubectl_version_execs_over_spdy: no {}/kubectl.1.* binaries",
            dir.display()
        );
        return;
    }
    let (kubelet, api) = setup().await;
    for kubectl in &binaries {
        let mut cmd = api.kubectl(kubectl);
        args(&mut cmd, &["exec", "-i", "web", "-c", "app", "--", "cat"]);
        let r = run(cmd, b"version check\n").await;
        assert_eq!(r.code, Some(0), "{}: {}", kubectl.display(), r.stderr);
        assert_eq!(r.stdout, b"version check\n", "{}", kubectl.display());
        let mut cmd = api.kubectl(kubectl);
        args(&mut cmd, &["exec", "web", "-c", "app", "--", "exit", "7"]);
        let r = run(cmd, b"").await;
        assert_eq!(r.code, Some(7), "{}: {}", kubectl.display(), r.stderr);
        eprintln!("ok: {}", kubectl.display());
    }
    api.shutdown().await;
    kubelet.shutdown().await;
}
