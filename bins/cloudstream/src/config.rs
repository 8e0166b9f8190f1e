//! Settings of `cloudstream`, read from the `modules.cloudStream` section of KubeEdge's own
//! `cloudcore.yaml`.
//!
//! How this fits: operators replacing KubeEdge's CloudStream keep their existing
//! `cloudcore.yaml`; `settings` detects the format, calls [`load_cloudcore`] (or builds the same
//! [`CloudStreamSettings`] from tether's own format) and [`check_readable`] before anything
//! listens. `enable` is read but not required: cloudcore's own module must be *off* while
//! cloudstream runs from the same file, so `enable: true` only earns a warning. Only the keys
//! CloudStream uses are read; every other module and key of the file is ignored, as real files
//! carry dozens. Defaults are KubeEdge's (`NewDefaultCloudCoreConfig`). Every error names the
//! key path and the file, so a bad deployment is fixed from the first log line.
//!
//! The file is read as a generic YAML tree and walked by key path ([`tether_cli::kubeedge`])
//! rather than deserialized into structs: that is what lets each error name the exact key, and
//! what keeps unknown keys harmless.

use std::path::{Path, PathBuf};

use tether_cli::kubeedge::{self, Doc};
pub use tether_cli::kubeedge::{ConfigError, TlsPaths};

/// The API group of `cloudcore.yaml` (`cloudcore.config.kubeedge.io/v1alpha1` or `/v1alpha2`).
const API_GROUP: &str = "cloudcore.config.kubeedge.io";
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

/// What `cloudstream` needs from `cloudcore.yaml`.
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

/// Reads `modules.cloudStream` from a `cloudcore.yaml`.
///
/// Fails if the file cannot be read or parsed, or if a key has the wrong type (naming the key
/// path and the file). `enable` is reported in [`CloudStreamSettings::module_enabled`], never
/// required: an absent section means KubeEdge's defaults. The TLS files are not opened here;
/// see [`check_readable`].
#[cfg_attr(not(test), allow(dead_code))] // `settings` reads the file itself
pub fn load_cloudcore(path: &Path) -> Result<CloudStreamSettings, ConfigError> {
    parse_cloudcore(&kubeedge::read(path)?, path)
}

/// [`load_cloudcore`] for a file already read.
pub fn parse_cloudcore(text: &str, file: &Path) -> Result<CloudStreamSettings, ConfigError> {
    let doc = Doc::parse(text, file)?;
    doc.check_api_group(API_GROUP)?;
    let module_enabled = doc.bool(&format!("{SECTION}.enable"))?.unwrap_or(false);
    let path = |name: &str, default: &str| -> Result<PathBuf, ConfigError> {
        Ok(doc
            .path(&format!("{SECTION}.{name}"))?
            .unwrap_or_else(|| PathBuf::from(default)))
    };
    Ok(CloudStreamSettings {
        source: file.to_owned(),
        section: SECTION,
        module_enabled,
        tunnel_port: doc
            .port(&format!("{SECTION}.tunnelPort"))?
            .unwrap_or(DEFAULT_TUNNEL_PORT),
        stream_port: doc
            .port(&format!("{SECTION}.streamPort"))?
            .unwrap_or(DEFAULT_STREAM_PORT),
        tunnel: TlsPaths {
            ca: path("tlsTunnelCAFile", DEFAULT_TUNNEL_CA)?,
            cert: path("tlsTunnelCertFile", DEFAULT_TUNNEL_CERT)?,
            key: path("tlsTunnelPrivateKeyFile", DEFAULT_TUNNEL_KEY)?,
        },
        stream: TlsPaths {
            ca: path("tlsStreamCAFile", DEFAULT_STREAM_CA)?,
            cert: path("tlsStreamCertFile", DEFAULT_STREAM_CERT)?,
            key: path("tlsStreamPrivateKeyFile", DEFAULT_STREAM_KEY)?,
        },
    })
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

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    fn parse(yaml: &str) -> Result<CloudStreamSettings, ConfigError> {
        parse_cloudcore(yaml, Path::new("/etc/kubeedge/config/cloudcore.yaml"))
    }

    /// Asserts an `Invalid` error about `key` whose message names the key and the file.
    fn assert_invalid(result: Result<CloudStreamSettings, ConfigError>, key: &str) {
        let err = result.expect_err("expected an error");
        let message = err.to_string();
        assert!(
            matches!(&err, ConfigError::Invalid { key: k, .. } if k == key),
            "{message}"
        );
        assert!(message.contains(key), "{message}");
        assert!(
            message.contains("/etc/kubeedge/config/cloudcore.yaml"),
            "{message}"
        );
    }

    #[test]
    fn keadm_style_cloudcore_yaml_parses() {
        let file = fixture("cloudcore.yaml");
        let settings = load_cloudcore(&file).unwrap();
        assert_eq!(
            settings,
            CloudStreamSettings {
                source: file,
                section: SECTION,
                module_enabled: true,
                tunnel_port: 10004,
                stream_port: 10003,
                tunnel: TlsPaths {
                    ca: "/etc/kubeedge/ca/rootCA.crt".into(),
                    cert: "/etc/kubeedge/certs/server.crt".into(),
                    key: "/etc/kubeedge/certs/server.key".into(),
                },
                stream: TlsPaths {
                    ca: "/etc/kubeedge/ca/streamCA.crt".into(),
                    cert: "/etc/kubeedge/certs/stream.crt".into(),
                    key: "/etc/kubeedge/certs/stream.key".into(),
                },
            }
        );
    }

    #[test]
    fn helm_style_cloudcore_yaml_parses() {
        let settings = load_cloudcore(&fixture("cloudcore-helm.yaml")).unwrap();
        assert_eq!(settings.tunnel_port, 10004);
        assert_eq!(settings.stream_port, 10003);
        assert_eq!(
            settings.stream.cert,
            PathBuf::from("/etc/kubeedge/certs/stream.crt")
        );
    }

    #[test]
    fn defaults_apply_to_absent_and_null_keys() {
        let settings = parse(
            "modules:\n  cloudStream:\n    enable: true\n    tunnelPort:\n    tlsStreamCertFile: ~\n",
        )
        .unwrap();
        assert_eq!(settings.tunnel_port, 10004);
        assert_eq!(settings.stream_port, 10003);
        assert_eq!(
            settings.tunnel.ca,
            PathBuf::from("/etc/kubeedge/ca/rootCA.crt")
        );
        assert_eq!(
            settings.tunnel.key,
            PathBuf::from("/etc/kubeedge/certs/server.key")
        );
        assert_eq!(
            settings.stream.cert,
            PathBuf::from("/etc/kubeedge/certs/stream.crt")
        );
    }

    #[test]
    fn explicit_values_win() {
        let settings = parse(
            "apiVersion: cloudcore.config.kubeedge.io/v1alpha2\n\
             modules:\n  cloudStream:\n    enable: true\n    tunnelPort: 20004\n    streamPort: 20003\n\
             \x20   tlsTunnelCAFile: /pki/ca.crt\n    tlsStreamPrivateKeyFile: /pki/stream.key\n",
        )
        .unwrap();
        assert_eq!(settings.tunnel_port, 20004);
        assert_eq!(settings.stream_port, 20003);
        assert_eq!(settings.tunnel.ca, PathBuf::from("/pki/ca.crt"));
        assert_eq!(settings.stream.key, PathBuf::from("/pki/stream.key"));
    }

    #[test]
    fn enable_is_read_but_not_required() {
        for yaml in [
            "modules:\n  cloudStream:\n    enable: false\n",
            "modules:\n  cloudStream:\n    tunnelPort: 10004\n",
            "modules:\n  cloudHub:\n    enable: true\n",
            "kind: CloudCore\n",
            "",
        ] {
            let settings = parse(yaml).unwrap();
            assert!(!settings.module_enabled, "{yaml:?}");
            assert_eq!(settings.tunnel_port, DEFAULT_TUNNEL_PORT, "{yaml:?}");
            assert_eq!(settings.stream_port, DEFAULT_STREAM_PORT, "{yaml:?}");
        }
        let enabled = parse("modules:\n  cloudStream:\n    enable: true\n").unwrap();
        assert!(enabled.module_enabled);
    }

    #[test]
    fn wrong_types_name_the_key_path_and_the_file() {
        let enabled = "modules:\n  cloudStream:\n    enable: true\n";
        for (extra, key) in [
            (
                "    tunnelPort: \"abc\"\n",
                "modules.cloudStream.tunnelPort",
            ),
            ("    tunnelPort: 70000\n", "modules.cloudStream.tunnelPort"),
            ("    tunnelPort: -1\n", "modules.cloudStream.tunnelPort"),
            ("    tunnelPort: 0\n", "modules.cloudStream.tunnelPort"),
            (
                "    streamPort: 10003.5\n",
                "modules.cloudStream.streamPort",
            ),
            ("    streamPort: [1]\n", "modules.cloudStream.streamPort"),
            (
                "    tlsStreamCertFile: 42\n",
                "modules.cloudStream.tlsStreamCertFile",
            ),
            (
                "    tlsTunnelCAFile: \"\"\n",
                "modules.cloudStream.tlsTunnelCAFile",
            ),
            (
                "    tlsTunnelPrivateKeyFile: {a: b}\n",
                "modules.cloudStream.tlsTunnelPrivateKeyFile",
            ),
        ] {
            assert_invalid(parse(&format!("{enabled}{extra}")), key);
        }
        assert_invalid(
            parse("modules:\n  cloudStream:\n    enable: \"yes please\"\n"),
            "modules.cloudStream.enable",
        );
        assert_invalid(
            parse("modules:\n  cloudStream: true\n"),
            "modules.cloudStream",
        );
        assert_invalid(parse("modules: [a, b]\n"), "modules");
        assert_invalid(parse("- just\n- a list\n"), "(top level)");
    }

    #[test]
    fn another_components_file_is_refused() {
        assert_invalid(
            parse(
                "apiVersion: edgecore.config.kubeedge.io/v1alpha2\n\
                 modules:\n  cloudStream:\n    enable: true\n",
            ),
            "apiVersion",
        );
    }

    #[test]
    fn unreadable_or_invalid_files_name_the_file() {
        let dir = TempDir::new();
        let missing = dir.0.join("missing.yaml");
        let err = load_cloudcore(&missing).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );

        let broken = dir.write(
            "broken.yaml",
            "modules:\n  cloudStream: [\n    enable: true\n",
        );
        let err = load_cloudcore(&broken).unwrap_err();
        assert!(matches!(err, ConfigError::Yaml { .. }));
        assert!(
            err.to_string().contains(&broken.display().to_string()),
            "{err}"
        );

        let tabs = dir.write("tabs.yaml", "modules:\n\tcloudStream:\n\t\tenable: true\n");
        let err = load_cloudcore(&tabs).unwrap_err();
        assert!(
            err.to_string().contains(&tabs.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn check_readable_names_the_key_and_the_file() {
        let dir = TempDir::new();
        let file = dir.write(
            "cloudcore.yaml",
            format!(
                "modules:\n  cloudStream:\n    enable: true\n\
                 \x20   tlsTunnelCAFile: {d}/ca.crt\n    tlsTunnelCertFile: {d}/server.crt\n\
                 \x20   tlsTunnelPrivateKeyFile: {d}/server.key\n    tlsStreamCAFile: {d}/ca.crt\n\
                 \x20   tlsStreamCertFile: {d}/stream.crt\n    tlsStreamPrivateKeyFile: {d}/stream.key\n",
                d = dir.0.display()
            ),
        );
        for name in ["ca.crt", "server.crt", "server.key", "stream.key"] {
            dir.write(name, "-----BEGIN-----\n");
        }
        let settings = load_cloudcore(&file).unwrap();
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
