//! What `cloudstream` shares with KubeEdge's `cloudcore.yaml`: the section it reads
//! (`modules.cloudStream`), KubeEdge's defaults, the ports and TLS files as one struct, and the
//! check that those files can be read.
//!
//! How this fits: operators replacing KubeEdge's CloudStream keep their existing
//! `cloudcore.yaml`; `settings` declares which of its keys each setting reads (only those;
//! every other module and key of the file is ignored, as real files carry dozens), builds the
//! same [`CloudStreamSettings`] from either format and calls [`check_readable`] before anything
//! listens. `enable` is read but not required: cloudcore's own module must be *off* while
//! cloudstream runs from the same file, so `enable: true` only earns a warning. Defaults are
//! KubeEdge's (`NewDefaultCloudCoreConfig`). Every error names the key path and the file, so a
//! bad deployment is fixed from the first log line.

use std::path::PathBuf;

use tether_cli::kubeedge;
pub use tether_cli::kubeedge::{ConfigError, TlsPaths};

/// The API group of `cloudcore.yaml` (`cloudcore.config.kubeedge.io/v1alpha1` or `/v1alpha2`).
pub const API_GROUP: &str = "cloudcore.config.kubeedge.io";
/// The section this binary reads.
pub const SECTION: &str = "modules.cloudStream";
/// KubeEdge's default `tunnelPort`.
pub const DEFAULT_TUNNEL_PORT: u16 = 10004;
/// KubeEdge's default `streamPort`.
pub const DEFAULT_STREAM_PORT: u16 = 10003;
/// KubeEdge's default `tlsTunnelCAFile`.
pub const DEFAULT_TUNNEL_CA: &str = "/etc/kubeedge/ca/rootCA.crt";
/// KubeEdge's default `tlsTunnelCertFile`.
pub const DEFAULT_TUNNEL_CERT: &str = "/etc/kubeedge/certs/server.crt";
/// KubeEdge's default `tlsTunnelPrivateKeyFile`.
pub const DEFAULT_TUNNEL_KEY: &str = "/etc/kubeedge/certs/server.key";
/// KubeEdge's default `tlsStreamCAFile`.
pub const DEFAULT_STREAM_CA: &str = "/etc/kubeedge/ca/streamCA.crt";
/// KubeEdge's default `tlsStreamCertFile`.
pub const DEFAULT_STREAM_CERT: &str = "/etc/kubeedge/certs/stream.crt";
/// KubeEdge's default `tlsStreamPrivateKeyFile`.
pub const DEFAULT_STREAM_KEY: &str = "/etc/kubeedge/certs/stream.key";
/// KubeEdge's default `kubeAPIConfig.qps` (`constants.DefaultKubeQPS`).
pub const DEFAULT_KUBE_API_QPS: f32 = 100.0;
/// KubeEdge's default `kubeAPIConfig.burst` (`constants.DefaultKubeBurst`).
pub const DEFAULT_KUBE_API_BURST: u32 = 200;

/// The ports and TLS files of `cloudstream`: KubeEdge's `modules.cloudStream` keys, from either
/// format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudStreamSettings {
    /// The file these settings were read from, for error messages.
    pub source: PathBuf,
    /// Dotted path of the section the keys below were read from (`modules.cloudStream` in
    /// `cloudcore.yaml`, `cloudStream` in tether's format), for error messages.
    pub section: &'static str,
    /// `enable` of the section: `true` means cloudcore runs its own CloudStream from this file
    /// too, which conflicts with cloudstream (both want the ports).
    pub module_enabled: bool,
    /// Port of the websocket tunnel listener that edges dial (`tunnelPort`, default 10004).
    pub tunnel_port: u16,
    /// Port of the kubelet-API listener kube-apiserver talks to (`streamPort`, default 10003).
    pub stream_port: u16,
    /// TLS files of the tunnel listener (`tlsTunnel*File`).
    pub tunnel: TlsPaths,
    /// TLS files of the stream listener (`tlsStream*File`).
    pub stream: TlsPaths,
}

/// Checks that every TLS file the settings name can be opened for reading, so a missing
/// certificate is reported with its key before anything listens, e.g.
/// `modules.cloudStream.tlsStreamCertFile: /etc/kubeedge/certs/stream.crt: No such file or
/// directory (os error 2) (in /etc/kubeedge/config/cloudcore.yaml)`.
///
/// Unlike KubeEdge, there is no fallback to CloudHub's certificate when the tunnel files are
/// missing: cloudstream does not share CloudHub's secrets, so they must exist.
pub fn check_readable(settings: &CloudStreamSettings) -> Result<(), ConfigError> {
    let files = [
        ("tlsTunnelCAFile", settings.tunnel.ca.as_path()),
        ("tlsTunnelCertFile", settings.tunnel.cert.as_path()),
        ("tlsTunnelPrivateKeyFile", settings.tunnel.key.as_path()),
        ("tlsStreamCAFile", settings.stream.ca.as_path()),
        ("tlsStreamCertFile", settings.stream.cert.as_path()),
        ("tlsStreamPrivateKeyFile", settings.stream.key.as_path()),
    ];
    kubeedge::check_tls_files(&settings.source, settings.section, &files)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn check_readable_names_the_key_and_the_file() {
        let dir = TempDir::new();
        // Only named in the messages.
        let file = dir.0.join("cloudcore.yaml");
        for name in ["ca.crt", "server.crt", "server.key", "stream.key"] {
            dir.write(name, "-----BEGIN-----\n");
        }
        let d = dir.0.as_path();
        let settings = CloudStreamSettings {
            source: file.clone(),
            section: SECTION,
            module_enabled: true,
            tunnel_port: DEFAULT_TUNNEL_PORT,
            stream_port: DEFAULT_STREAM_PORT,
            tunnel: TlsPaths {
                ca: d.join("ca.crt"),
                cert: d.join("server.crt"),
                key: d.join("server.key"),
            },
            stream: TlsPaths {
                ca: d.join("ca.crt"),
                cert: d.join("stream.crt"),
                key: d.join("stream.key"),
            },
        };
        let err = check_readable(&settings).unwrap_err();
        let message = err.to_string();
        let stream_crt = dir.0.join("stream.crt");
        assert!(
            matches!(&err, ConfigError::TlsFile { key, path, .. }
                if key == "modules.cloudStream.tlsStreamCertFile" && *path == stream_crt),
            "{message}"
        );
        assert!(message.starts_with(&format!(
            "modules.cloudStream.tlsStreamCertFile: {}: ",
            stream_crt.display()
        )));
        assert!(
            message.ends_with(&format!("(in {})", file.display())),
            "{message}"
        );

        dir.write("stream.crt", "-----BEGIN-----\n");
        check_readable(&settings).unwrap();

        // A directory is not a certificate.
        fs::remove_file(&stream_crt).unwrap();
        fs::create_dir(&stream_crt).unwrap();
        let err = check_readable(&settings).unwrap_err();
        assert!(matches!(err, ConfigError::TlsFile { .. }), "{err}");
    }

    /// A directory under the system temp dir, unique per test, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "cloudstream-config-{}-{}",
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
