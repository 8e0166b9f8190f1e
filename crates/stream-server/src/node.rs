//! Which node a kubelet request is for.
//!
//! kube-apiserver and metrics-server address "the kubelet" by the node's address, so the
//! `Host` header (or the HTTP/2 authority) names the node by name or IP. Requests through the
//! apiserver's node proxy carry the node name in `X-Forwarded-Uri`
//! (`/api/v1/nodes/<node>/proxy/…`), which wins. Unlike KubeEdge, IPv6 literals work.

use http::Request;

/// Header the apiserver's proxy sets to the original request path.
pub const FORWARDED_URI_HEADER: &str = "x-forwarded-uri";

/// The node a request names, as text (a node name or an IP literal without brackets): the
/// node proxy path if there is one, else the host.
pub fn node_of<B>(req: &Request<B>) -> Option<String> {
    node_of_proxy_path(req).or_else(|| node_of_host(req))
}

/// The node named by the apiserver's node proxy path in `X-Forwarded-Uri`
/// (`/api/v1/nodes/<node>/proxy/…`), if the request came that way.
pub fn node_of_proxy_path<B>(req: &Request<B>) -> Option<String> {
    req.headers()
        .get(FORWARDED_URI_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(node_from_proxy_path)
}

/// The host the request was sent to (HTTP/2 authority or `Host`), without the port.
pub fn node_of_host<B>(req: &Request<B>) -> Option<String> {
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })?;
    let host = host.rsplit_once('@').map_or(host.as_str(), |(_, h)| h);
    strip_port(host).map(str::to_owned)
}

/// `/api/v1/nodes/<node>[:port]/proxy/…` → `<node>`.
fn node_from_proxy_path(uri: &str) -> Option<String> {
    let path = uri.split(['?', '#']).next()?;
    let mut parts = path.trim_start_matches('/').split('/');
    if parts.next()? != "api" || parts.next()? != "v1" || parts.next()? != "nodes" {
        return None;
    }
    let node = parts.next()?;
    if parts.next()? != "proxy" {
        return None;
    }
    // `nodes/<name>:<port>/proxy` picks a port; the node is the name.
    let node = strip_port(node)?;
    (!node.is_empty()).then(|| node.to_owned())
}

/// Removes `:port` from `host:port`, `[v6]:port` and `[v6]`; a bare IPv6 literal stays whole.
fn strip_port(host: &str) -> Option<&str> {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map(|(ip, _)| ip);
    }
    match host.matches(':').count() {
        0 => Some(host),
        1 => host.split_once(':').map(|(h, _)| h),
        _ => Some(host), // IPv6 without brackets or port
    }
    .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: &str, forwarded: Option<&str>) -> Request<()> {
        let mut b = Request::get("/metrics").header("host", host);
        if let Some(f) = forwarded {
            b = b.header(FORWARDED_URI_HEADER, f);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn host_forms() {
        assert_eq!(
            node_of(&req("edge-1:10351", None)).as_deref(),
            Some("edge-1")
        );
        assert_eq!(node_of(&req("edge-1", None)).as_deref(), Some("edge-1"));
        assert_eq!(
            node_of(&req("10.0.0.7:10250", None)).as_deref(),
            Some("10.0.0.7")
        );
        assert_eq!(
            node_of(&req("[fd00::7]:10250", None)).as_deref(),
            Some("fd00::7")
        );
        assert_eq!(node_of(&req("[fd00::7]", None)).as_deref(), Some("fd00::7"));
        assert_eq!(node_of(&req("fd00::7", None)).as_deref(), Some("fd00::7"));
    }

    #[test]
    fn node_proxy_path_wins() {
        let r = req(
            "10.0.0.7:10250",
            Some("/api/v1/nodes/edge-2/proxy/metrics/cadvisor"),
        );
        assert_eq!(node_of(&r).as_deref(), Some("edge-2"));
        let r = req(
            "x",
            Some("/api/v1/nodes/edge-2:10250/proxy/stats/summary?only_cpu_and_memory=true"),
        );
        assert_eq!(node_of(&r).as_deref(), Some("edge-2"));
        let r = req("edge-9", Some("/api/v1/namespaces/x/pods/y/proxy/metrics"));
        assert_eq!(node_of(&r).as_deref(), Some("edge-9"));
    }
}
