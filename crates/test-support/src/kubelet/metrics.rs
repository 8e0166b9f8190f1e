//! `/metrics*` and `/stats/summary` bodies.

use std::io::Write as _;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use serde::Serialize as _;

use super::{Body, full};

/// Content type of the Prometheus text exposition format, as the kubelet sends it.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The uncompressed metrics body the test kubelet serves for `path` (`/metrics`,
/// `/metrics/cadvisor`, `/metrics/resource`, `/metrics/probes`), or `None` for another path.
///
/// Bodies are deterministic, LF-terminated and several KiB long. With `long_line = Some(n)` one
/// extra sample line of at least `n` bytes (excluding the newline) is included.
pub fn metrics_text(path: &str, long_line: Option<usize>) -> Option<String> {
    let prefix = match path {
        "/metrics" => "kubelet",
        "/metrics/cadvisor" => "container",
        "/metrics/resource" => "node",
        "/metrics/probes" => "prober",
        _ => return None,
    };
    let mut out = String::new();
    out.push_str(&format!(
        "# HELP {prefix}_requests_total [ALPHA] Number of requests served.\n# TYPE {prefix}_requests_total counter\n"
    ));
    for i in 0..40 {
        out.push_str(&format!(
            "{prefix}_requests_total{{path=\"/api/v1/item-{i}\",code=\"200\"}} {}\n",
            i * 7 + 1
        ));
    }
    out.push_str(&format!(
        "# HELP {prefix}_duration_seconds [ALPHA] Latency histogram.\n# TYPE {prefix}_duration_seconds histogram\n"
    ));
    let mut cumulative = 0;
    for (i, le) in [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
    .iter()
    .enumerate()
    {
        cumulative += i * 3 + 1;
        out.push_str(&format!(
            "{prefix}_duration_seconds_bucket{{operation=\"stream\",le=\"{le}\"}} {cumulative}\n"
        ));
    }
    out.push_str(&format!(
        "{prefix}_duration_seconds_bucket{{operation=\"stream\",le=\"+Inf\"}} {cumulative}\n{prefix}_duration_seconds_sum{{operation=\"stream\"}} 12.5\n{prefix}_duration_seconds_count{{operation=\"stream\"}} {cumulative}\n"
    ));
    if let Some(n) = long_line {
        out.push_str("# HELP tether_test_long_line A single very long sample line.\n");
        out.push_str("# TYPE tether_test_long_line gauge\n");
        out.push_str("tether_test_long_line{value=\"");
        out.extend(std::iter::repeat_n('x', n));
        out.push_str("\"} 1\n");
    }
    Some(out)
}

/// cAdvisor series for `containers` containers, shaped like a real node's `/metrics/cadvisor`
/// (long label sets that repeat, numbers that differ): about 2.3 KB per container.
pub fn cadvisor_series(containers: usize) -> String {
    let mut out = String::new();
    let families = [
        ("container_cpu_usage_seconds_total", "counter"),
        ("container_memory_working_set_bytes", "gauge"),
        ("container_memory_rss", "gauge"),
        ("container_network_receive_bytes_total", "counter"),
        ("container_network_transmit_bytes_total", "counter"),
        ("container_fs_reads_bytes_total", "counter"),
        ("container_fs_writes_bytes_total", "counter"),
        ("container_last_seen", "gauge"),
    ];
    for (family, kind) in families {
        out.push_str(&format!(
            "# HELP {family} cAdvisor series.\n# TYPE {family} {kind}\n"
        ));
        for c in 0..containers as u64 {
            let pod = format!(
                "app-{}-7d9f8c6b5-{:05x}",
                c % 40,
                c * 2_654_435_761 % 0xfffff
            );
            out.push_str(&format!(
                "{family}{{container=\"app\",id=\"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{:08x}_{:04x}.slice/cri-containerd-{:016x}.scope\",image=\"registry.example.com/team/app:1.{}.{}\",name=\"{:016x}\",namespace=\"ns-{}\",pod=\"{pod}\"}} {}.{} 1733280000{:03}\n",
                c * 2_246_822_519 % 0xffff_ffff,
                c % 0xffff,
                c * 0x9e37_79b9_7f4a_7c15 % u64::MAX,
                c % 9,
                c % 17,
                c * 0x85eb_ca6b % u64::MAX,
                c % 12,
                c * 7919 % 100_000,
                c * 31 % 1000,
                c % 1000
            ));
        }
    }
    out
}

pub(super) fn serve(
    path: &str,
    headers: &HeaderMap,
    long_line: Option<usize>,
    cadvisor_containers: usize,
) -> Response<Body> {
    let Some(mut text) = metrics_text(path, long_line) else {
        return full(StatusCode::NOT_FOUND, "404 page not found\n");
    };
    if path == "/metrics/cadvisor" && cadvisor_containers > 0 {
        text.push_str(&cadvisor_series(cadvisor_containers));
    }
    let gzip = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| e.trim().split(';').next() == Some("gzip"));
    let mut resp = if gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        match enc.write_all(text.as_bytes()).and_then(|()| enc.finish()) {
            Ok(bytes) => {
                let mut r = full(StatusCode::OK, Bytes::from(bytes));
                r.headers_mut()
                    .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                r
            }
            Err(e) => return full(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    } else {
        full(StatusCode::OK, text)
    };
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(METRICS_CONTENT_TYPE),
    );
    resp
}

/// The `/stats/summary` body: a small kubelet `Summary` for `node` and `pods`
/// (`(namespace, pod, containers)`), pretty-printed with a one-space indent like go-restful.
pub fn stats_summary_json(node: &str, pods: &[(String, String, Vec<String>)]) -> String {
    let time = "2024-01-01T00:00:00Z";
    let pods: Vec<serde_json::Value> = pods
        .iter()
        .enumerate()
        .map(|(i, (ns, pod, containers))| {
            serde_json::json!({
                "podRef": {"name": pod, "namespace": ns, "uid": format!("00000000-0000-0000-0000-{i:012}")},
                "startTime": time,
                "containers": containers.iter().map(|c| serde_json::json!({
                    "name": c,
                    "startTime": time,
                    "cpu": {"time": time, "usageNanoCores": 1_000_000, "usageCoreNanoSeconds": 5_000_000_000u64},
                    "memory": {"time": time, "workingSetBytes": 10_485_760, "usageBytes": 12_582_912},
                })).collect::<Vec<_>>(),
                "cpu": {"time": time, "usageNanoCores": 1_000_000},
                "memory": {"time": time, "workingSetBytes": 10_485_760},
            })
        })
        .collect();
    let summary = serde_json::json!({
        "node": {
            "nodeName": node,
            "startTime": time,
            "cpu": {"time": time, "usageNanoCores": 123_456_789, "usageCoreNanoSeconds": 987_654_321_000u64},
            "memory": {"time": time, "availableBytes": 1_073_741_824u64, "usageBytes": 536_870_912, "workingSetBytes": 402_653_184},
            "fs": {"time": time, "availableBytes": 10_737_418_240u64, "capacityBytes": 21_474_836_480u64, "usedBytes": 10_737_418_240u64},
        },
        "pods": pods,
    });
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(
        &mut buf,
        serde_json::ser::PrettyFormatter::with_indent(b" "),
    );
    if summary.serialize(&mut ser).is_err() {
        return "{}".to_owned();
    }
    String::from_utf8_lossy(&buf).into_owned()
}
