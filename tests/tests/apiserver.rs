//! Requests that reach cloudstream the way kube-apiserver sends them: through the test API
//! server (`test_support::apiserver`), with the `Host` kube-apiserver really sets — the
//! client's own (`localhost:<port>`, a name no node has) for SPDY upgrades and tunnelled
//! port-forward. cloudstream must find the node from the pod, through its pod watch.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http::StatusCode;
use test_support::apiserver::TestPod;
use test_support::client::{UpgradeError, body_bytes, exec_ws, http_get};
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
