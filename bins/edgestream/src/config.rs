//! What `edgestream` shares with KubeEdge's `edgecore.yaml`: the sections it reads
//! (`modules.edgeStream`, `modules.edged`), KubeEdge's defaults and the readers of edged's keys,
//! the tunnel's settings as one struct, the checks of a host:port and a node name, and the check
//! that the tunnel's TLS files can be read.
//!
//! How this fits: on an edge node that runs (or ran) edgecore, `settings` declares which keys of
//! `edgecore.yaml` each setting reads (only those; every other module and key is ignored),
//! builds the same [`EdgeStreamSettings`] from either format and calls [`check_readable`]
//! before dialling the cloud. `enable` is read but not required: edgecore's own EdgeStream must
//! be *off* while edgestream runs from the same file, so `enable: true` only earns a warning.
//! The node name (`hostnameOverride`), node IP and the local kubelet (edged) address come from
//! `modules.edged`, exactly as edgecore's own EdgeStream takes them. Defaults are KubeEdge's
//! (`NewDefaultEdgeCoreConfig`). Every error names the key path and the file.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tether_cli::kubeedge::{self, Doc, describe};
pub use tether_cli::kubeedge::{ConfigError, TlsPaths};

/// The API group of `edgecore.yaml` (`edgecore.config.kubeedge.io/v1alpha2`).
pub const API_GROUP: &str = "edgecore.config.kubeedge.io";
/// The tunnel section this binary reads.
pub const SECTION: &str = "modules.edgeStream";
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

/// The tunnel settings of `edgestream`: KubeEdge's `modules.edgeStream` keys and the node's
/// identity and kubelet from `modules.edged`, from either format.
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

/// Reads `modules.edged.tailoredKubeletConfig.address`: an IP address; empty means "not set"
/// (edged's default, 127.0.0.1).
pub fn kubelet_ip(doc: &Doc<'_>, key: &str) -> Result<Option<IpAddr>, ConfigError> {
    match doc.string(key)? {
        None => Ok(None),
        Some(s) if s.trim().is_empty() => Ok(None),
        Some(s) => s
            .trim()
            .parse::<IpAddr>()
            .map(Some)
            .map_err(|_| doc.invalid(key, format!("expected an IP address, found {s:?}"))),
    }
}

/// Reads `modules.edged.tailoredKubeletConfig.readOnlyPort`: a port number, 0 included, so that
/// [`read_only_port`] can say what 0 means.
pub fn kubelet_port(doc: &Doc<'_>, key: &str) -> Result<Option<u16>, ConfigError> {
    match doc.get(key)? {
        None => Ok(None),
        Some(value) => match value.as_u64().and_then(|n| u16::try_from(n).ok()) {
            Some(port) => Ok(Some(port)),
            None => Err(doc.invalid(
                key,
                format!(
                    "expected a port number from 1 to 65535, found {}",
                    describe(value)
                ),
            )),
        },
    }
}

/// edged's read-only port: 0 turns its read-only API off, which edgestream cannot do without.
pub fn read_only_port(port: &u16) -> Result<(), String> {
    match port {
        0 => Err(
            "is 0, which turns off edged's read-only API that edgestream forwards to".to_owned(),
        ),
        _ => Ok(()),
    }
}

/// Where edged's read-only kubelet API is dialled: its address (default 127.0.0.1; an
/// unspecified address such as 0.0.0.0 is dialled on loopback) and read-only port.
pub fn edged_kubelet(ip: Option<IpAddr>, port: u16) -> SocketAddr {
    let ip = match ip {
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(IpAddr::V4(ip)) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(IpAddr::V6(ip)) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        Some(ip) => ip,
    };
    SocketAddr::new(ip, port)
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

/// [`check_node_name`] for a name that is set: an empty one is reported as missing where it is
/// used.
pub fn check_node_name_if_set(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Ok(())
    } else {
        check_node_name(name)
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
    use std::path::Path;

    use super::*;

    #[test]
    fn edged_is_dialled_on_loopback_when_it_listens_everywhere() {
        assert_eq!(
            edged_kubelet(None, DEFAULT_KUBELET_PORT),
            "127.0.0.1:10350".parse().unwrap()
        );
        assert_eq!(
            edged_kubelet(Some("0.0.0.0".parse().unwrap()), 1),
            "127.0.0.1:1".parse().unwrap()
        );
        assert_eq!(
            edged_kubelet(Some("::".parse().unwrap()), 1),
            "[::1]:1".parse().unwrap()
        );
        assert_eq!(
            edged_kubelet(Some("10.0.0.5".parse().unwrap()), 1),
            "10.0.0.5:1".parse().unwrap()
        );
    }

    #[test]
    fn edged_readers_name_the_key_and_the_file() {
        let file = Path::new("/etc/kubeedge/config/edgecore.yaml");
        let doc = Doc::parse(
            "a:\n  ip: \" \"\n  v6: \"fd00::1\"\n  bad: localhost\n  zero: 0\n  big: 70000\n\
             \x20 text: \"10350\"\n",
            file,
        )
        .unwrap();
        assert_eq!(kubelet_ip(&doc, "a.ip").unwrap(), None);
        assert_eq!(kubelet_ip(&doc, "a.none").unwrap(), None);
        assert_eq!(
            kubelet_ip(&doc, "a.v6").unwrap(),
            Some("fd00::1".parse().unwrap())
        );
        let message = kubelet_ip(&doc, "a.bad").unwrap_err().to_string();
        assert_eq!(
            message,
            format!(
                "a.bad: expected an IP address, found \"localhost\" (in {})",
                file.display()
            )
        );
        assert_eq!(kubelet_port(&doc, "a.zero").unwrap(), Some(0));
        assert!(read_only_port(&0).is_err());
        read_only_port(&10350).unwrap();
        for key in ["a.big", "a.text"] {
            let message = kubelet_port(&doc, key).unwrap_err().to_string();
            assert!(
                message.starts_with(&format!("{key}: expected a port number")),
                "{message}"
            );
        }
        check_node_name_if_set("").unwrap();
        check_node_name_if_set("edge-1").unwrap();
        assert!(check_node_name_if_set("Edge-1").is_err());
    }

    #[test]
    fn check_readable_names_the_key_and_the_file() {
        let dir = TempDir::new();
        // Only named in the messages.
        let file = dir.0.join("edgecore.yaml");
        dir.write("node.crt", "-----BEGIN-----\n");
        let d = dir.0.as_path();
        let settings = EdgeStreamSettings {
            source: file.clone(),
            section: SECTION,
            module_enabled: true,
            server: DEFAULT_SERVER.to_owned(),
            tunnel: TlsPaths {
                ca: d.join("ca.crt"),
                cert: d.join("node.crt"),
                key: d.join("node.key"),
            },
            handshake_timeout: Duration::from_secs(DEFAULT_HANDSHAKE_TIMEOUT_SECS),
            read_deadline: Duration::from_secs(DEFAULT_READ_DEADLINE_SECS),
            write_deadline: Duration::from_secs(DEFAULT_WRITE_DEADLINE_SECS),
            node_name: "e1".to_owned(),
            node_ip: None,
            kubelet_addr: edged_kubelet(None, DEFAULT_KUBELET_PORT),
        };

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
