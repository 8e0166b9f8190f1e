//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): both configuration
//! formats through the code every binary reads them with, kept in the crate so the tests that
//! replay the corpora run exactly the code libFuzzer runs.
//!
//! The binaries' own declarations live in binary crates that nothing can link, so the targets
//! read a declaration of their own ([`FuzzValues`]) that uses every reader of KubeEdge's file
//! ([`Doc`]'s typed look-ups), every reader of ours (serde's, [`tether_file::duration`],
//! [`tether_file::whole_seconds`]) and the common checks, nested sections included.
//!
//! No input may make them panic or hang, except through the assertions written here: a value
//! taken from the file must have passed its check.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::check;
use crate::kubeedge::Doc;
use crate::setting::Source;
use crate::tether_file::{self, MIN_STREAM_WINDOW, duration, whole_seconds};

/// `kind` of our format the targets read.
const KIND: &str = "Fuzz";
/// The KubeEdge API group the targets accept.
const KUBEEDGE_GROUP: &str = "fuzzcore.config.kubeedge.io";
/// The path errors name.
const FILE: &str = "/etc/tether/fuzz.yaml";
/// What our format starts with, prepended to half the inputs so the fuzzer reaches the keys
/// without first having to spell the header.
const HEADER: &str = "apiVersion: tether.io/v1alpha1\nkind: Fuzz\n";

crate::settings! {
    /// No flags are set while fuzzing; the layering of flags is tested in `setting`.
    pub struct FuzzFlags {}
    /// The settings the targets read.
    pub struct FuzzValues;
    /// The keys of our format the targets read.
    struct FuzzFile;

    port: u16 {
        key: "server.port",
        kubeedge: "modules.server.port" => Doc::port,
        default: 10350,
        check: check::port,
    }
    wait: Duration {
        key: "server.wait",
        yaml: duration,
        kubeedge: "modules.server.wait" => Doc::seconds,
        default: Duration::from_secs(5),
        check: check::positive,
    }
    deadline: Duration {
        key: "server.deadline",
        yaml: whole_seconds,
        kubeedge: "modules.server.deadline" => Doc::seconds,
        check: check::whole_seconds,
    }
    ca: PathBuf {
        key: "server.tls.caFile",
        kubeedge: "modules.server.tlsCAFile" => Doc::path,
        check: check::file_path,
    }
    key_file: PathBuf {
        key: "server.tls.keyFile",
        kubeedge: "modules.server.tlsKeyFile" => Doc::optional_path,
    }
    name: String {
        key: "node.name",
        kubeedge: "modules.edged.hostnameOverride" => Doc::string,
    }
    ip: String {
        key: "node.ip",
        kubeedge: "modules.edged.nodeIP" => Doc::optional_string,
        check: check::ip_or_empty,
    }
    enable: bool {
        key: "enable",
        kubeedge: "modules.server.enable" => Doc::bool,
        default: false,
    }
    qps: f32 {
        key: "api.qps",
        kubeedge: "kubeAPIConfig.qps" => Doc::f32,
        check: check::greater_than_zero,
    }
    burst: u32 {
        key: "api.burst",
        kubeedge: "kubeAPIConfig.burst" => Doc::u32,
        check: |n: &u32| check::at_least_one(n),
    }
    url: String {
        key: "api.url",
        kubeedge: "kubeAPIConfig.master" => Doc::string,
        check: check::http_url,
    }
    window: u32 {
        key: "session.streamWindow",
        check: check::stream_window,
    }
    chunk: usize {
        key: "session.dataChunk",
        check: check::data_chunk,
    }
    log: String {
        key: "log.level",
        check: check::log_filter,
    }
    admin: SocketAddr {
        key: "listen.admin",
    }
    kubelet_ip: IpAddr {
        key: "kubelet.ip",
    }
}

/// Reads `data` as our format (`apiVersion: tether.io/v1alpha1`), as is and behind the
/// header, through format detection, the strict reader and the layering of every setting.
pub fn tether(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new(FILE);
    for text in [text.to_owned(), format!("{HEADER}{text}")] {
        let _ = tether_file::detect(&text, file, KIND, KUBEEDGE_GROUP);
        if let Ok(source) = Source::<FuzzFile>::tether(&text, file, KIND) {
            let _ = source.has_section("server.tls");
            layer(&source);
        }
    }
}

/// Reads `data` as KubeEdge's `cloudcore.yaml` / `edgecore.yaml`, through format detection,
/// the document's typed look-ups and the layering of every setting.
pub fn kubeedge(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new(FILE);
    let _ = tether_file::detect(text, file, KIND, KUBEEDGE_GROUP);
    let Ok(source) = Source::<FuzzFile>::kubeedge(text, file, KUBEEDGE_GROUP) else {
        return;
    };
    if let Some(doc) = source.kubeedge_doc() {
        // Keys at every depth, including ones the declaration does not have.
        for key in ["modules", "modules.server", "apiVersion", "a.b.c.d.e"] {
            if let Ok(Some(value)) = doc.get(key) {
                let _ = crate::kubeedge::describe(value);
            }
        }
    }
    layer(&source);
}

/// Layers every setting from `source` and checks that what came from the file passed.
fn layer(source: &Source<'_, FuzzFile>) {
    let Ok(v) = FuzzValues::resolve(source, &FuzzFlags::default()) else {
        return;
    };
    assert_ne!(v.port.value, 0, "port 0 was accepted");
    assert!(!v.wait.value.is_zero(), "a zero wait was accepted");
    if let Some(deadline) = v.deadline.value {
        assert!(deadline.as_secs() >= 1, "a deadline under 1 s was accepted");
    }
    if let Some(ca) = &v.ca.value {
        assert!(!ca.as_os_str().is_empty(), "an empty CA path was accepted");
    }
    if let Some(qps) = v.qps.value {
        assert!(qps.is_finite() && qps > 0.0, "qps {qps} was accepted");
    }
    if let Some(burst) = v.burst.value {
        assert_ne!(burst, 0, "burst 0 was accepted");
    }
    if let Some(window) = v.window.value {
        assert!(window >= MIN_STREAM_WINDOW, "window {window} was accepted");
    }
    if let Some(chunk) = v.chunk.value {
        assert!(
            (1..=stream_proto::MAX_DATA_LEN).contains(&chunk),
            "chunk {chunk} was accepted"
        );
    }
    if let Some(url) = &v.url.value {
        assert!(check::http_url(url).is_ok(), "URL {url:?} was accepted");
    }
}
