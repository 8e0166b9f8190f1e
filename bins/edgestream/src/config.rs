//! Settings of `edgestream`, read from the `modules.edgeStream` and `modules.edged` sections
//! of KubeEdge's own `edgecore.yaml`.
//!
//! How this fits: on an edge node that runs (or ran) edgecore, `settings` detects the format,
//! calls [`load_edgecore`] (or builds the same [`EdgeStreamSettings`] from tether's own format)
//! and [`check_readable`] before dialling the cloud. `enable` is read but not required:
//! edgecore's own EdgeStream must be *off* while edgestream runs from the same file, so
//! `enable: true` only earns a warning. The node name (`hostnameOverride`), node IP and the local
//! kubelet (edged) address come from `modules.edged`, exactly as edgecore's own EdgeStream
//! takes them. Only those keys are read; every other module and key is ignored. Defaults are
//! KubeEdge's (`NewDefaultEdgeCoreConfig`). Every error names the key path and the file.
//!
//! The file is read as a generic YAML tree and walked by key path ([`tether_cli::kubeedge`])
//! rather than deserialized into structs: that is what lets each error name the exact key, and
//! what keeps unknown keys harmless.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tether_cli::kubeedge::{self, Doc, describe};
pub use tether_cli::kubeedge::{ConfigError, TlsPaths};

/// The API group of `edgecore.yaml` (`edgecore.config.kubeedge.io/v1alpha2`).
const API_GROUP: &str = "edgecore.config.kubeedge.io";
/// The tunnel section this binary reads.
pub const SECTION: &str = "modules.edgeStream";
/// The kubelet section the node identity and the local kubelet address come from.
const EDGED: &str = "modules.edged";
/// KubeEdge's default `server`.
pub const DEFAULT_SERVER: &str = "127.0.0.1:10004";
/// KubeEdge's default `tlsTunnelCAFile`.
pub const DEFAULT_TUNNEL_CA: &str = "/etc/kubeedge/ca/rootCA.crt";
/// KubeEdge's default `tlsTunnelCertFile`.
pub const DEFAULT_TUNNEL_CERT: &str = "/etc/kubeedge/certs/server.crt";
/// KubeEdge's default `tlsTunnelPrivateKeyFile`.
pub const DEFAULT_TUNNEL_KEY: &str = "/etc/kubeedge/certs/server.key";
/// KubeEdge's default `handshakeTimeout`, in seconds.
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECS: u64 = 30;
/// KubeEdge's default `readDeadline`, in seconds.
pub const DEFAULT_READ_DEADLINE_SECS: u64 = 15;
/// KubeEdge's default `writeDeadline`, in seconds.
pub const DEFAULT_WRITE_DEADLINE_SECS: u64 = 15;
/// KubeEdge's default `tailoredKubeletConfig.readOnlyPort`.
pub const DEFAULT_KUBELET_PORT: u16 = 10350;

/// What `edgestream` needs from `edgecore.yaml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeStreamSettings {
    /// The file these settings were read from, for error messages.
    pub source: PathBuf,
    /// Dotted path of the tunnel section (`modules.edgeStream` in `edgecore.yaml`,
    /// `edgeStream` in tether's format), for error messages.
    pub section: &'static str,
    /// `enable` of the section: `true` means edgecore runs its own EdgeStream from this file
    /// too, which conflicts with edgestream (two tunnels for one node).
    pub module_enabled: bool,
    /// The cloud's tunnel endpoint, `host:port` (`server`, default `127.0.0.1:10004`).
    pub server: String,
    /// TLS files of the tunnel client (`tlsTunnel*File`).
    pub tunnel: TlsPaths,
    /// Limit for the TLS + websocket handshake (`handshakeTimeout`, seconds, default 30).
    pub handshake_timeout: Duration,
    /// `readDeadline` (seconds, default 15); stock edgecore ignores it.
    pub read_deadline: Duration,
    /// `writeDeadline` (seconds, default 15); stock edgecore ignores it.
    pub write_deadline: Duration,
    /// This node's name (`modules.edged.hostnameOverride`, required).
    pub node_name: String,
    /// This node's IP (`modules.edged.nodeIP`), `None` when unset or empty.
    pub node_ip: Option<IpAddr>,
    /// Where the local kubelet (edged) serves its read-only API:
    /// `modules.edged.tailoredKubeletConfig.address` (default 127.0.0.1; an unspecified
    /// address such as 0.0.0.0 is dialled on loopback) and `.readOnlyPort` (default 10350).
    pub kubelet_addr: SocketAddr,
}

/// Reads `modules.edgeStream` and `modules.edged` from an `edgecore.yaml`.
///
/// Fails if the file cannot be read or parsed, if a key has the wrong type or an impossible
/// value (naming the key path and the file), or if `modules.edged.hostnameOverride` is missing.
/// `modules.edgeStream.enable` is reported in [`EdgeStreamSettings::module_enabled`], never
/// required (`keadm join` leaves it `false`, which is what edgestream wants). The TLS files are
/// not opened here; see [`check_readable`].
#[cfg_attr(not(test), allow(dead_code))] // `settings` reads the file itself
pub fn load_edgecore(path: &Path) -> Result<EdgeStreamSettings, ConfigError> {
    parse_edgecore(&kubeedge::read(path)?, path)
}

/// [`load_edgecore`] for a file already read.
pub fn parse_edgecore(text: &str, file: &Path) -> Result<EdgeStreamSettings, ConfigError> {
    let doc = Doc::parse(text, file)?;
    doc.check_api_group(API_GROUP)?;
    let module_enabled = doc.bool(&format!("{SECTION}.enable"))?.unwrap_or(false);
    let key = |name: &str| format!("{SECTION}.{name}");
    let path = |name: &str, default: &str| -> Result<PathBuf, ConfigError> {
        Ok(doc
            .path(&key(name))?
            .unwrap_or_else(|| PathBuf::from(default)))
    };
    let seconds = |name: &str, default: u64| -> Result<Duration, ConfigError> {
        Ok(doc
            .seconds(&key(name))?
            .unwrap_or(Duration::from_secs(default)))
    };

    let server_key = key("server");
    let server = match doc.string(&server_key)? {
        None => DEFAULT_SERVER.to_owned(),
        Some(s) => {
            check_host_port(&s).map_err(|problem| doc.invalid(&server_key, problem))?;
            s
        }
    };

    let node_name = node_name(&doc)?;
    let node_ip = node_ip(&doc)?;
    let kubelet_addr = kubelet_addr(&doc)?;

    Ok(EdgeStreamSettings {
        source: file.to_owned(),
        section: SECTION,
        module_enabled,
        server,
        tunnel: TlsPaths {
            ca: path("tlsTunnelCAFile", DEFAULT_TUNNEL_CA)?,
            cert: path("tlsTunnelCertFile", DEFAULT_TUNNEL_CERT)?,
            key: path("tlsTunnelPrivateKeyFile", DEFAULT_TUNNEL_KEY)?,
        },
        handshake_timeout: seconds("handshakeTimeout", DEFAULT_HANDSHAKE_TIMEOUT_SECS)?,
        read_deadline: seconds("readDeadline", DEFAULT_READ_DEADLINE_SECS)?,
        write_deadline: seconds("writeDeadline", DEFAULT_WRITE_DEADLINE_SECS)?,
        node_name,
        node_ip,
        kubelet_addr,
    })
}

/// `modules.edged.hostnameOverride`: required, and a valid Kubernetes node name.
fn node_name(doc: &Doc<'_>) -> Result<String, ConfigError> {
    let name_key = format!("{EDGED}.hostnameOverride");
    let node_name = doc
        .string(&name_key)?
        .filter(|name| !name.is_empty())
        .ok_or_else(|| {
            doc.invalid(
                &name_key,
                "missing or empty; edgestream needs it: it is this node's name, sent to the cloud"
                    .to_owned(),
            )
        })?;
    check_node_name(&node_name).map_err(|problem| doc.invalid(&name_key, problem))?;
    Ok(node_name)
}

/// `modules.edged.nodeIP`: optional; empty means "not set" (edgecore then detects it).
fn node_ip(doc: &Doc<'_>) -> Result<Option<IpAddr>, ConfigError> {
    let key = format!("{EDGED}.nodeIP");
    match doc.string(&key)? {
        Some(s) if !s.trim().is_empty() => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| doc.invalid(&key, format!("expected an IP address, found {s:?}"))),
        _ => Ok(None),
    }
}

/// Where edged's read-only kubelet API listens: `tailoredKubeletConfig.address` and
/// `.readOnlyPort`.
fn kubelet_addr(doc: &Doc<'_>) -> Result<SocketAddr, ConfigError> {
    let address_key = format!("{EDGED}.tailoredKubeletConfig.address");
    let kubelet_ip = match doc.string(&address_key)? {
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(s) if s.trim().is_empty() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(s) => s.trim().parse::<IpAddr>().map_err(|_| {
            doc.invalid(&address_key, format!("expected an IP address, found {s:?}"))
        })?,
    };
    // edged listening on all interfaces is reached on loopback.
    let kubelet_ip = match kubelet_ip {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let port_key = format!("{EDGED}.tailoredKubeletConfig.readOnlyPort");
    let kubelet_port = match doc.get(&port_key)? {
        None => DEFAULT_KUBELET_PORT,
        Some(value) => match value.as_u64().and_then(|n| u16::try_from(n).ok()) {
            Some(0) => {
                return Err(doc.invalid(
                    &port_key,
                    "is 0, which turns off edged's read-only API that edgestream forwards to"
                        .to_owned(),
                ));
            }
            Some(port) => port,
            None => {
                return Err(doc.invalid(
                    &port_key,
                    format!(
                        "expected a port number from 1 to 65535, found {}",
                        describe(value)
                    ),
                ));
            }
        },
    };
    Ok(SocketAddr::new(kubelet_ip, kubelet_port))
}

/// Accepts `host:port` and `[v6]:port` with a port from 1 to 65535.
pub fn check_host_port(value: &str) -> Result<(), String> {
    let wrong =
        || format!("expected host:port (e.g. cloudcore.example.com:10004), found {value:?}");
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (host, port) = rest.split_once("]:").ok_or_else(wrong)?;
        host.parse::<Ipv6Addr>().map_err(|_| wrong())?;
        (host, port)
    } else {
        let (host, port) = value.rsplit_once(':').ok_or_else(wrong)?;
        if host.contains(':') {
            return Err(format!(
                "{}; write an IPv6 address in brackets, e.g. [fd00::1]:10004",
                wrong()
            ));
        }
        (host, port)
    };
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(wrong());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(wrong()),
    }
}

/// Kubernetes node names are DNS-1123 subdomains; anything else cannot be registered, so it is
/// refused here instead of surfacing as a mysterious tunnel refusal.
pub fn check_node_name(name: &str) -> Result<(), String> {
    if kubeedge::is_node_name(name) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid node name (lower-case letters, digits, '-' and '.', \
             starting and ending with a letter or digit)"
        ))
    }
}

/// Checks that the tunnel's TLS files can be opened for reading, so a missing certificate is
/// reported with its key before dialling, e.g. `modules.edgeStream.tlsTunnelCertFile:
/// /etc/kubeedge/certs/server.crt: No such file or directory (os error 2) (in
/// /etc/kubeedge/config/edgecore.yaml)`.
///
/// The CA file is checked only with `verify_server`: without it (stock edgecore behaviour) it
/// is never read.
pub fn check_readable(
    settings: &EdgeStreamSettings,
    verify_server: bool,
) -> Result<(), ConfigError> {
    let mut files = vec![
        ("tlsTunnelCertFile", settings.tunnel.cert.as_path()),
        ("tlsTunnelPrivateKeyFile", settings.tunnel.key.as_path()),
    ];
    if verify_server {
        files.insert(0, ("tlsTunnelCAFile", settings.tunnel.ca.as_path()));
    }
    kubeedge::check_tls_files(&settings.source, settings.section, &files)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    const FILE: &str = "/etc/kubeedge/config/edgecore.yaml";

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    /// A minimal enabled file with `extra` appended under `modules:`.
    fn parse_with(edge_stream: &str, edged: &str) -> Result<EdgeStreamSettings, ConfigError> {
        let yaml = format!(
            "apiVersion: edgecore.config.kubeedge.io/v1alpha2\nkind: EdgeCore\nmodules:\n\
             \x20 edgeStream:\n    enable: true\n{edge_stream}\
             \x20 edged:\n    enable: true\n{edged}"
        );
        parse_edgecore(&yaml, Path::new(FILE))
    }

    fn parse_edged(edged: &str) -> Result<EdgeStreamSettings, ConfigError> {
        parse_with("", edged)
    }

    const NAME: &str = "    hostnameOverride: edge-1\n";

    /// Asserts an `Invalid` error about `key` whose message names the key and the file.
    fn assert_invalid(result: Result<EdgeStreamSettings, ConfigError>, key: &str) {
        let err = result.expect_err("expected an error");
        let message = err.to_string();
        assert!(
            matches!(&err, ConfigError::Invalid { key: k, .. } if k == key),
            "{message}"
        );
        assert!(message.contains(key), "{message}");
        assert!(message.contains(FILE), "{message}");
    }

    #[test]
    fn keadm_style_edgecore_yaml_parses() {
        let file = fixture("edgecore.yaml");
        let settings = load_edgecore(&file).unwrap();
        assert_eq!(
            settings,
            EdgeStreamSettings {
                source: file,
                section: SECTION,
                module_enabled: true,
                server: "192.168.33.10:10004".to_owned(),
                tunnel: TlsPaths {
                    ca: "/etc/kubeedge/ca/rootCA.crt".into(),
                    cert: "/etc/kubeedge/certs/server.crt".into(),
                    key: "/etc/kubeedge/certs/server.key".into(),
                },
                handshake_timeout: Duration::from_secs(30),
                read_deadline: Duration::from_secs(15),
                write_deadline: Duration::from_secs(15),
                node_name: "edge-node-01".to_owned(),
                node_ip: Some("192.168.33.21".parse().unwrap()),
                kubelet_addr: "127.0.0.1:10350".parse().unwrap(),
            }
        );
    }

    #[test]
    fn keadm_join_default_with_edge_stream_disabled_is_read() {
        // What edgestream wants: edgecore's own EdgeStream off, the same file read here.
        let file = fixture("edgecore-edgestream-disabled.yaml");
        let settings = load_edgecore(&file).unwrap();
        assert!(!settings.module_enabled);
        let without_section = parse_edgecore(
            "modules:\n  edged:\n    hostnameOverride: edge-1\n",
            Path::new(FILE),
        )
        .unwrap();
        assert!(!without_section.module_enabled);
        assert_eq!(without_section.server, DEFAULT_SERVER);
    }

    #[test]
    fn defaults_apply_to_absent_keys() {
        let settings = parse_edged(NAME).unwrap();
        assert_eq!(settings.server, "127.0.0.1:10004");
        assert_eq!(settings.handshake_timeout, Duration::from_secs(30));
        assert_eq!(settings.read_deadline, Duration::from_secs(15));
        assert_eq!(settings.write_deadline, Duration::from_secs(15));
        assert_eq!(
            settings.tunnel.ca,
            PathBuf::from("/etc/kubeedge/ca/rootCA.crt")
        );
        assert_eq!(
            settings.tunnel.cert,
            PathBuf::from("/etc/kubeedge/certs/server.crt")
        );
        assert_eq!(
            settings.tunnel.key,
            PathBuf::from("/etc/kubeedge/certs/server.key")
        );
        assert_eq!(settings.node_name, "edge-1");
        assert_eq!(settings.node_ip, None);
        assert_eq!(settings.kubelet_addr, "127.0.0.1:10350".parse().unwrap());
    }

    #[test]
    fn explicit_values_win() {
        let settings = parse_with(
            "    server: \"[fd00::10]:20004\"\n    handshakeTimeout: 5\n    readDeadline: 60\n\
             \x20   writeDeadline: 61\n    tlsTunnelCertFile: /pki/node.crt\n",
            "    hostnameOverride: edge-2.zone-a\n    nodeIP: \"fd00::21\"\n\
             \x20   tailoredKubeletConfig:\n      address: 0.0.0.0\n      readOnlyPort: 10360\n",
        )
        .unwrap();
        assert_eq!(settings.server, "[fd00::10]:20004");
        assert_eq!(settings.handshake_timeout, Duration::from_secs(5));
        assert_eq!(settings.read_deadline, Duration::from_secs(60));
        assert_eq!(settings.write_deadline, Duration::from_secs(61));
        assert_eq!(settings.tunnel.cert, PathBuf::from("/pki/node.crt"));
        assert_eq!(settings.node_name, "edge-2.zone-a");
        assert_eq!(settings.node_ip, Some("fd00::21".parse().unwrap()));
        // edged on all interfaces is dialled on loopback.
        assert_eq!(settings.kubelet_addr, "127.0.0.1:10360".parse().unwrap());

        let v6 = parse_edged(
            "    hostnameOverride: edge-3\n    nodeIP: \"\"\n\
             \x20   tailoredKubeletConfig:\n      address: \"::\"\n",
        )
        .unwrap();
        assert_eq!(v6.node_ip, None);
        assert_eq!(v6.kubelet_addr, "[::1]:10350".parse().unwrap());
    }

    #[test]
    fn hostname_override_is_required() {
        for edged in [
            "",
            "    hostnameOverride:\n",
            "    hostnameOverride: \"\"\n",
        ] {
            assert_invalid(parse_edged(edged), "modules.edged.hostnameOverride");
        }
        let no_edged = parse_edgecore(
            "modules:\n  edgeStream:\n    enable: true\n",
            Path::new(FILE),
        );
        assert_invalid(no_edged, "modules.edged.hostnameOverride");
        for bad in ["Edge-1", "edge_1", "-edge", "edge..1", "edge 1"] {
            assert_invalid(
                parse_edged(&format!("    hostnameOverride: \"{bad}\"\n")),
                "modules.edged.hostnameOverride",
            );
        }
        assert_invalid(
            parse_edged("    hostnameOverride: 42\n"),
            "modules.edged.hostnameOverride",
        );
    }

    #[test]
    fn bad_values_name_the_key_path_and_the_file() {
        for (edge_stream, key) in [
            ("    server: 10004\n", "modules.edgeStream.server"),
            ("    server: cloudcore\n", "modules.edgeStream.server"),
            ("    server: \":10004\"\n", "modules.edgeStream.server"),
            ("    server: cloudcore:0\n", "modules.edgeStream.server"),
            ("    server: cloudcore:70000\n", "modules.edgeStream.server"),
            (
                "    server: \"fd00::1:10004\"\n",
                "modules.edgeStream.server",
            ),
            ("    server: \"[fd00::1]\"\n", "modules.edgeStream.server"),
            (
                "    handshakeTimeout: 30s\n",
                "modules.edgeStream.handshakeTimeout",
            ),
            (
                "    handshakeTimeout: 0\n",
                "modules.edgeStream.handshakeTimeout",
            ),
            ("    readDeadline: -5\n", "modules.edgeStream.readDeadline"),
            (
                "    writeDeadline: 1.5\n",
                "modules.edgeStream.writeDeadline",
            ),
            (
                "    tlsTunnelCertFile: [a]\n",
                "modules.edgeStream.tlsTunnelCertFile",
            ),
            (
                "    tlsTunnelPrivateKeyFile: \"\"\n",
                "modules.edgeStream.tlsTunnelPrivateKeyFile",
            ),
            ("    enable: \"true\"\n", "modules.edgeStream.enable"),
        ] {
            // A duplicate `enable` would be a YAML error, so replace the enabled header.
            let result = if edge_stream.contains("enable") {
                parse_edgecore(
                    &format!("modules:\n  edgeStream:\n{edge_stream}"),
                    Path::new(FILE),
                )
            } else {
                parse_with(edge_stream, NAME)
            };
            assert_invalid(result, key);
        }
        for (edged, key) in [
            ("    nodeIP: 10.0.0.300\n", "modules.edged.nodeIP"),
            ("    nodeIP: edge-1.local\n", "modules.edged.nodeIP"),
            (
                "    tailoredKubeletConfig:\n      address: localhost\n",
                "modules.edged.tailoredKubeletConfig.address",
            ),
            (
                "    tailoredKubeletConfig:\n      readOnlyPort: 0\n",
                "modules.edged.tailoredKubeletConfig.readOnlyPort",
            ),
            (
                "    tailoredKubeletConfig:\n      readOnlyPort: \"10350\"\n",
                "modules.edged.tailoredKubeletConfig.readOnlyPort",
            ),
            (
                "    tailoredKubeletConfig: []\n",
                "modules.edged.tailoredKubeletConfig",
            ),
        ] {
            assert_invalid(parse_edged(&format!("{NAME}{edged}")), key);
        }
    }

    #[test]
    fn another_components_file_is_refused() {
        assert_invalid(
            parse_edgecore(
                "apiVersion: cloudcore.config.kubeedge.io/v1alpha1\nmodules:\n  edgeStream:\n    enable: true\n",
                Path::new(FILE),
            ),
            "apiVersion",
        );
    }

    #[test]
    fn unreadable_or_invalid_files_name_the_file() {
        let dir = TempDir::new();
        let missing = dir.0.join("missing.yaml");
        let err = load_edgecore(&missing).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );

        let broken = dir.write("broken.yaml", "modules:\n  edgeStream: {enable: true\n");
        let err = load_edgecore(&broken).unwrap_err();
        assert!(matches!(err, ConfigError::Yaml { .. }));
        assert!(
            err.to_string().contains(&broken.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn check_readable_names_the_key_and_the_file() {
        let dir = TempDir::new();
        let file = dir.write(
            "edgecore.yaml",
            format!(
                "modules:\n  edgeStream:\n    enable: true\n\
                 \x20   tlsTunnelCAFile: {d}/ca.crt\n    tlsTunnelCertFile: {d}/node.crt\n\
                 \x20   tlsTunnelPrivateKeyFile: {d}/node.key\n  edged:\n    hostnameOverride: e1\n",
                d = dir.0.display()
            ),
        );
        dir.write("node.crt", "-----BEGIN-----\n");
        let settings = load_edgecore(&file).unwrap();

        let err = check_readable(&settings, false).unwrap_err();
        let key_path = dir.0.join("node.key");
        assert!(
            matches!(&err, ConfigError::TlsFile { key, path, .. }
                if key == "modules.edgeStream.tlsTunnelPrivateKeyFile" && *path == key_path),
            "{err}"
        );
        let message = err.to_string();
        assert!(message.starts_with(&format!(
            "modules.edgeStream.tlsTunnelPrivateKeyFile: {}: ",
            key_path.display()
        )));
        assert!(
            message.ends_with(&format!("(in {})", file.display())),
            "{message}"
        );

        dir.write("node.key", "-----BEGIN-----\n");
        // Without server verification the CA is never read, so its absence is fine...
        check_readable(&settings, false).unwrap();
        // ...but with it, the CA must be there.
        let err = check_readable(&settings, true).unwrap_err();
        assert!(
            matches!(&err, ConfigError::TlsFile { key, .. } if key == "modules.edgeStream.tlsTunnelCAFile"),
            "{err}"
        );
        dir.write("ca.crt", "-----BEGIN-----\n");
        check_readable(&settings, true).unwrap();
    }

    /// A directory under the system temp dir, unique per test, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "edgestream-config-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
            let path = self.0.join(name);
            fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}
