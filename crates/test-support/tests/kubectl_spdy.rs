//! The real `kubectl` (Go: client-go's SPDY executor and port-forwarder on moby/spdystream)
//! against the test kubelet's SPDY/3.1 endpoints.
//!
//! kubectl needs an API server, so a small stand-in runs here: HTTPS on 127.0.0.1, a Running
//! pod for `GET .../pods/<pod>`, the discovery documents kubectl asks for, and the pod's
//! `exec`/`attach`/`portforward` subresources proxied to the kubelet the way kube-apiserver
//! does for SPDY: the request is rewritten to the kubelet path, the upgrade is forwarded, the
//! kubelet's response head is relayed and then the bytes are copied untouched both ways.
//! The websocket transports are switched off (`KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`,
//! `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`), so every byte kubectl sends is SPDY.
//!
//! Without a kubectl binary (`KUBECTL`, else `kubectl` on `PATH`) the tests print why and
//! pass. Every `kubectl.1.NN` found beside it in `/usr/lib/google-cloud-sdk/bin` also runs the
//! basic exec.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use anyhow::Result;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use test_support::{ContainerSpec, TestKubelet, TestPki, echo_server};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream},
    process::Command,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Generous bound on one kubectl run.
const WAIT: Duration = Duration::from_secs(60);

type Body = BoxBody<Bytes, Infallible>;

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

fn body(status: StatusCode, content_type: &str, data: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(data.into()).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap(),
    );
    resp
}

fn json(value: serde_json::Value) -> Response<Body> {
    body(StatusCode::OK, "application/json", value.to_string())
}

fn pod_json(ns: &str, pod: &str, containers: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod, "namespace": ns, "uid": "0b6c6a1e-test-pod"},
        "spec": {
            "nodeName": "edge-1",
            "containers": containers.iter().map(|c| serde_json::json!({"name": c, "image": "test", "stdin": true})).collect::<Vec<_>>(),
        },
        "status": {
            "phase": "Running",
            "containerStatuses": containers.iter().map(|c| serde_json::json!({
                "name": c, "ready": true, "restartCount": 0, "image": "test", "imageID": "",
                "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
            })).collect::<Vec<_>>(),
        }
    })
}

/// The kubelet path and query kube-apiserver builds for a pod subresource request.
fn kubelet_target(ns: &str, pod: &str, sub: &str, query: &str, containers: &[&str]) -> String {
    let mut container = containers[0].to_owned();
    let mut out = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let on = v == "true" || v == "1";
        match k {
            // Values stay percent-encoded: they are copied, not interpreted.
            "command" => out.push(format!("command={v}")),
            "container" => container = v.to_owned(),
            "stdin" if on => out.push("input=1".to_owned()),
            "stdout" if on => out.push("output=1".to_owned()),
            "stderr" if on => out.push("error=1".to_owned()),
            "tty" if on => out.push("tty=1".to_owned()),
            "ports" => out.push(format!("port={v}")),
            _ => {}
        }
    }
    let path = match sub {
        "exec" => format!("/exec/{ns}/{pod}/{container}"),
        "attach" => format!("/attach/{ns}/{pod}/{container}"),
        _ => format!("/portForward/{ns}/{pod}"),
    };
    if out.is_empty() {
        path
    } else {
        format!("{path}?{}", out.join("&"))
    }
}

/// Forwards an upgrade to the kubelet and, on 101, copies bytes both ways.
async fn proxy_upgrade(
    kubelet: SocketAddr,
    target: String,
    mut req: Request<Incoming>,
    tracker: TaskTracker,
) -> Response<Body> {
    let result: Result<Response<Body>> = async {
        let tcp = TcpStream::connect(kubelet).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tracker.spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let mut up = Request::builder()
            .method(req.method())
            .uri(&target)
            .header(header::HOST, kubelet.to_string());
        for (name, value) in req.headers() {
            let n = name.as_str();
            if n.eq_ignore_ascii_case("connection")
                || n.eq_ignore_ascii_case("upgrade")
                || n.to_ascii_lowercase().starts_with("x-stream-protocol")
            {
                up = up.header(name, value);
            }
        }
        let resp = send.send_request(up.body(Full::new(Bytes::new()))?).await?;
        let (parts, kubelet_body) = resp.into_parts();
        if parts.status != StatusCode::SWITCHING_PROTOCOLS {
            let data = kubelet_body.collect().await?.to_bytes();
            let mut out = Response::new(Full::new(data).boxed());
            *out.status_mut() = parts.status;
            *out.headers_mut() = parts.headers;
            return Ok(out);
        }
        let kubelet_side = hyper::upgrade::on(Response::from_parts(parts.clone(), kubelet_body));
        let client_side = hyper::upgrade::on(&mut req);
        tracker.spawn(async move {
            let (Ok(k), Ok(c)) = (kubelet_side.await, client_side.await) else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(k), &mut TokioIo::new(c)).await;
        });
        let mut out = Response::new(Full::new(Bytes::new()).boxed());
        *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *out.headers_mut() = parts.headers;
        Ok(out)
    }
    .await;
    result.unwrap_or_else(|e| {
        body(
            StatusCode::BAD_GATEWAY,
            "text/plain",
            format!("proxy error: {e:#}"),
        )
    })
}

async fn apiserver_handle(
    kubelet: SocketAddr,
    containers: Arc<Vec<&'static str>>,
    tracker: TaskTracker,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    Ok(match segs.as_slice() {
        ["api"] => json(serde_json::json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:443"}]
        })),
        ["apis"] => {
            json(serde_json::json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}))
        }
        ["api", "v1"] => json(serde_json::json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
            "resources": [
                {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
                 "verbs": ["get", "list"], "shortNames": ["po"]},
                {"name": "pods/attach", "singularName": "", "namespaced": true, "kind": "PodAttachOptions", "verbs": ["create", "get"]},
                {"name": "pods/exec", "singularName": "", "namespaced": true, "kind": "PodExecOptions", "verbs": ["create", "get"]},
                {"name": "pods/portforward", "singularName": "", "namespaced": true, "kind": "PodPortForwardOptions", "verbs": ["create", "get"]}
            ]
        })),
        ["api", "v1", "namespaces", ns, "pods", pod] => json(pod_json(ns, pod, &containers)),
        [
            "api",
            "v1",
            "namespaces",
            ns,
            "pods",
            pod,
            sub @ ("exec" | "attach" | "portforward"),
        ] => {
            let target = kubelet_target(ns, pod, sub, &query, &containers);
            proxy_upgrade(kubelet, target, req, tracker).await
        }
        _ => body(
            StatusCode::NOT_FOUND,
            "application/json",
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": format!("{path} not found"), "reason": "NotFound", "code": 404})
            .to_string(),
        ),
    })
}

/// A minimal HTTPS API server in front of one kubelet, plus the kubeconfig kubectl needs.
struct Apiserver {
    dir: tempfile::TempDir,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Apiserver {
    async fn start(kubelet: SocketAddr, containers: Vec<&'static str>) -> Result<Self> {
        let pki = TestPki::new()?;
        let identity = pki.server(&["127.0.0.1", "localhost"])?;
        let mut cfg = (*test_support::pki::server_config(&identity, None)?).clone();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let dir = tempfile::tempdir()?;
        let ca = pki.write_ca(dir.path())?;
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://{addr}\n    certificate-authority: {}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\ncurrent-context: test\nusers:\n- name: test\n  user:\n    token: test-token\n",
            ca.display()
        );
        std::fs::write(dir.path().join("kubeconfig"), kubeconfig)?;
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let containers = Arc::new(containers);
        let (c, t) = (cancel.clone(), tracker.clone());
        tracker.spawn(async move {
            loop {
                let tcp = tokio::select! {
                    r = listener.accept() => match r { Ok((tcp, _)) => tcp, Err(_) => continue },
                    () = c.cancelled() => return,
                };
                let (acceptor, containers, t2, c2) =
                    (acceptor.clone(), containers.clone(), t.clone(), c.clone());
                t.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        apiserver_handle(kubelet, containers.clone(), t2.clone(), req)
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .with_upgrades();
                    tokio::select! {
                        _ = conn => {}
                        () = c2.cancelled() => {}
                    }
                });
            }
        });
        Ok(Self {
            dir,
            cancel,
            tracker,
        })
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
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
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
        assert_eq!(r.headers[header::UPGRADE], "SPDY/3.1");
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
