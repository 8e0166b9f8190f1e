//! Requests that reach cloudstream the way kube-apiserver sends them: through the test API
//! server (`test_support::apiserver`), with the `Host` kube-apiserver really sets — the
//! client's own (`localhost:<port>`, a name no node has) for SPDY upgrades and tunnelled
//! port-forward. cloudstream must find the node from the pod, through its pod watch.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http::StatusCode;
use test_support::apiserver::TestPod;
use test_support::client::{
    UpgradeError, body_bytes, echo_server, exec_spdy, exec_ws, http_get, port_forward_spdy,
};
use test_support::kubelet::{ContainerSpec, TestKubelet};
use tether_e2e::{Cluster, PATIENCE};

struct Setup {
    cluster: Cluster,
    kubelet_1: TestKubelet,
    kubelet_2: TestKubelet,
}

/// Two nodes: `web` runs on edge-1, `db` on edge-2.
async fn setup() -> Setup {
    let mut cluster = Cluster::start(&[]).await.unwrap();
    let kubelet_1 = TestKubelet::builder()
        .container(
            "default",
            "web",
            "web",
            ContainerSpec::with_logs(&b"hello from web\n"[..]),
        )
        .node_name("edge-1")
        .start()
        .await
        .unwrap();
    let kubelet_2 = TestKubelet::builder()
        .container(
            "default",
            "db",
            "db",
            ContainerSpec::with_logs(&b"hello from db\n"[..]),
        )
        .node_name("edge-2")
        .start()
        .await
        .unwrap();
    cluster
        .add_node("edge-1", "10.0.0.1", kubelet_1.addr())
        .await
        .unwrap();
    cluster
        .add_node("edge-2", "10.0.0.2", kubelet_2.addr())
        .await
        .unwrap();
    cluster
        .api
        .put_pod(TestPod::running("default", "web", "edge-1", &["web"]));
    cluster
        .api
        .put_pod(TestPod::running("default", "db", "edge-2", &["db"]));
    Setup {
        cluster,
        kubelet_1,
        kubelet_2,
    }
}

impl Setup {
    /// `GET path` on the API server.
    async fn api_get(&self, path: &str) -> (StatusCode, Bytes) {
        let io = self.cluster.connect_api().await.unwrap();
        let resp = http_get(io, &self.cluster.api_host(), path, &[])
            .await
            .unwrap();
        let status = resp.status();
        (status, body_bytes(resp.into_body()).await.unwrap())
    }
}

#[tokio::test]
async fn logs_and_node_proxy_through_the_api_server() {
    let s = setup().await;
    let (status, body) = s.api_get("/api/v1/namespaces/default/pods/web/log").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(&body[..], b"hello from web\n");
    let (status, body) = s.api_get("/api/v1/namespaces/default/pods/db/log").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(&body[..], b"hello from db\n");

    let (status, body) = s.api_get("/api/v1/nodes/edge-2/proxy/stats/summary").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let summary: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(summary["node"]["nodeName"], "edge-2");
    assert_eq!(s.kubelet_2.request_count("/stats/summary"), 1);
    assert_eq!(s.kubelet_1.request_count("/stats/summary"), 0);
}

#[tokio::test]
async fn a_host_that_names_no_node_is_routed_by_the_pod() {
    let s = setup().await;
    let c = &s.cluster;
    // What kube-apiserver sends for SPDY exec: the kubelet path, the client's Host.
    let io = c.world.connect_stream(&c.cloud).await.unwrap();
    let session = exec_ws(
        io,
        &c.api_host(),
        "/exec/default/db/db?command=echo&command=routed&output=1",
        &[],
    )
    .await
    .expect("the pod's node is found although Host names no node");
    let out = tokio::time::timeout(PATIENCE, session.collect())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.stdout, b"routed\n");
    assert_eq!(s.kubelet_2.request_count("/exec/default/db/db"), 1);

    // A Host naming another connected node does not override the pod's node.
    let io = c.world.connect_stream(&c.cloud).await.unwrap();
    let resp = http_get(io, "10.0.0.1:10351", "/containerLogs/default/db/db", &[])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        &body_bytes(resp.into_body()).await.unwrap()[..],
        b"hello from db\n"
    );
    assert_eq!(s.kubelet_1.request_count("/containerLogs"), 0);

    // An unknown pod: kube-apiserver's words, 404.
    let io = c.world.connect_stream(&c.cloud).await.unwrap();
    let err = exec_ws(
        io,
        &c.api_host(),
        "/exec/default/nope/c?command=true&output=1",
        &[],
    )
    .await
    .expect_err("no such pod");
    let err = err.downcast_ref::<UpgradeError>().expect("an HTTP answer");
    assert_eq!(err.status, StatusCode::NOT_FOUND);
    assert_eq!(
        String::from_utf8_lossy(&err.body).trim(),
        "pods \"nope\" not found"
    );

    // A pod on a node that is not connected.
    c.api
        .put_pod(TestPod::running("default", "lost", "edge-9", &["c"]));
    let io = c.world.connect_stream(&c.cloud).await.unwrap();
    let resp = http_get(io, &c.api_host(), "/containerLogs/default/lost/c", &[])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = body_bytes(resp.into_body()).await.unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("edge-9") && text.contains("default/lost"),
        "{text}"
    );
}

#[tokio::test]
async fn without_the_api_cached_pods_and_host_still_route() {
    let s = setup().await;
    let c = &s.cluster;
    // Known: answered from the watch, or by a GET whose answer the running watch keeps.
    let io = c.world.connect_stream(&c.cloud).await.unwrap();
    let resp = http_get(io, &c.api_host(), "/containerLogs/default/db/db", &[])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    c.api.set_unavailable(true);
    c.api
        .put_pod(TestPod::running("default", "new", "edge-1", &["web"]));

    // A pod the cloud already knows still routes.
    let io = c.world.connect_stream(&c.cloud).await.unwrap();
    let resp = http_get(io, &c.api_host(), "/containerLogs/default/db/db", &[])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // An unknown pod with a useless Host: 503 naming both reasons.
    let io = c.world.connect_stream(&c.cloud).await.unwrap();
    let resp = http_get(io, &c.api_host(), "/containerLogs/default/new/web", &[])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = body_bytes(resp.into_body()).await.unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("cannot find the node of pod default/new")
            && text.contains("503")
            && text.contains("Host header (localhost)"),
        "{text}"
    );

    // The same pod with a Host that names its node: the Host is used.
    let io = c.world.connect_stream(&c.cloud).await.unwrap();
    let resp = http_get(io, "10.0.0.1:10351", "/containerLogs/default/new/web", &[])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND, "the kubelet answers");
    assert_eq!(
        &body_bytes(resp.into_body()).await.unwrap()[..],
        b"pod \"new\" does not exist"
    );
}

#[tokio::test]
async fn spdy_and_websocket_upgrades_through_the_api_server() {
    let s = setup().await;
    let c = &s.cluster;
    let host = c.api_host();
    let exec = "/api/v1/namespaces/default/pods/db/exec?command=cat&stdin=true&stdout=true";

    // SPDY: kube-apiserver relays the bytes with kubectl's own Host.
    let mut session = exec_spdy(c.connect_api().await.unwrap(), &host, exec, &[])
        .await
        .expect("SPDY exec through the API server");
    session.send_stdin(b"spdy stdin\n").await.unwrap();
    session.close_stdin().await.unwrap();
    let out = tokio::time::timeout(PATIENCE, session.collect())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.stdout, b"spdy stdin\n");
    assert_eq!(out.exit_code(), Some(0));

    // WebSocket: translated to SPDY towards the kubelet.
    let mut session = exec_ws(c.connect_api().await.unwrap(), &host, exec, &[])
        .await
        .expect("WebSocket exec through the API server");
    assert_eq!(session.protocol(), Some("v5.channel.k8s.io"));
    session.send_stdin(b"ws stdin\n").await.unwrap();
    session.close_stdin().await.unwrap();
    let out = tokio::time::timeout(PATIENCE, session.collect())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.stdout, b"ws stdin\n");
    assert_eq!(out.exit_code(), Some(0));

    // Exit codes survive the translation.
    let session = exec_ws(
        c.connect_api().await.unwrap(),
        &host,
        "/api/v1/namespaces/default/pods/db/exec?command=sh&command=-c&command=exit%204&stdout=true",
        &[],
    )
    .await
    .unwrap();
    let out = tokio::time::timeout(PATIENCE, session.collect())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.exit_code(), Some(4));

    // SPDY port-forward with kubectl's Host.
    let (echo, echo_guard) = echo_server().await.unwrap();
    let path = format!(
        "/api/v1/namespaces/default/pods/web/portforward?ports={}",
        echo.port()
    );
    let mut pf = port_forward_spdy(c.connect_api().await.unwrap(), &host, &path, &[])
        .await
        .expect("SPDY port-forward through the API server");
    pf.write(b"ping through the tunnel").await.unwrap();
    let mut got = Vec::new();
    while got.len() < 23 {
        let chunk = tokio::time::timeout(PATIENCE, pf.read())
            .await
            .unwrap()
            .unwrap()
            .expect("echo");
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, b"ping through the tunnel");
    pf.close().await.unwrap();
    echo_guard.shutdown().await;

    // Every upgrade reached a kubelet as SPDY.
    for r in s
        .kubelet_1
        .requests()
        .into_iter()
        .chain(s.kubelet_2.requests())
    {
        if let Some(up) = r.headers.get("upgrade") {
            assert_eq!(up, "SPDY/3.1", "{}", r.path_and_query);
        }
    }
}
