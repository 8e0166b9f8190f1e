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
//! The file is read as a generic YAML tree and walked by key path rather than deserialized into
//! structs: that is what lets each error name the exact key, and what keeps unknown keys
//! harmless.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use yaml_serde::Value;

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

/// The three TLS files of one listener, as configured (plain data, not yet read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// CA that peers' client certificates must chain to.
    pub ca: PathBuf,
    /// Our certificate chain (PEM).
    pub cert: PathBuf,
    /// Our private key (PEM).
    pub key: PathBuf,
}

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

/// Why the configuration cannot be used. Every message names the file and, where there is one,
/// the key path.
#[derive(Debug)]
pub enum ConfigError {
    /// The configuration file itself cannot be read.
    Read {
        /// The configuration file.
        file: PathBuf,
        /// What the OS said.
        error: io::Error,
    },
    /// The configuration file is not valid YAML.
    Yaml {
        /// The configuration file.
        file: PathBuf,
        /// The parser's message, with line and column.
        error: yaml_serde::Error,
    },
    /// A key holds a value of the wrong type or out of range.
    Invalid {
        /// The configuration file.
        file: PathBuf,
        /// Dotted key path, e.g. `modules.cloudStream.tunnelPort`.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A TLS file named by the configuration cannot be read.
    TlsFile {
        /// The configuration file.
        file: PathBuf,
        /// Dotted key path of the setting naming the TLS file.
        key: String,
        /// The TLS file.
        path: PathBuf,
        /// What the OS said.
        error: io::Error,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { file, error } => write!(f, "cannot read {}: {error}", file.display()),
            Self::Yaml { file, error } => write!(f, "{}: invalid YAML: {error}", file.display()),
            Self::Invalid { file, key, problem } => {
                write!(f, "{key}: {problem} (in {})", file.display())
            }
            Self::TlsFile {
                file,
                key,
                path,
                error,
            } => write!(
                f,
                "{key}: {}: {error} (in {})",
                path.display(),
                file.display()
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Reads `modules.cloudStream` from a `cloudcore.yaml`.
///
/// Fails if the file cannot be read or parsed, or if a key has the wrong type (naming the key
/// path and the file). `enable` is reported in [`CloudStreamSettings::module_enabled`], never
/// required: an absent section means KubeEdge's defaults. The TLS files are not opened here;
/// see [`check_readable`].
#[cfg_attr(not(test), allow(dead_code))] // `settings` reads the file itself
pub fn load_cloudcore(path: &Path) -> Result<CloudStreamSettings, ConfigError> {
    let text = fs::read_to_string(path).map_err(|error| ConfigError::Read {
        file: path.to_owned(),
        error,
    })?;
    parse_cloudcore(&text, path)
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
        ("tlsTunnelCAFile", &settings.tunnel.ca),
        ("tlsTunnelCertFile", &settings.tunnel.cert),
        ("tlsTunnelPrivateKeyFile", &settings.tunnel.key),
        ("tlsStreamCAFile", &settings.stream.ca),
        ("tlsStreamCertFile", &settings.stream.cert),
        ("tlsStreamPrivateKeyFile", &settings.stream.key),
    ];
    for (name, path) in files {
        check_file(path).map_err(|error| ConfigError::TlsFile {
            file: settings.source.clone(),
            key: format!("{}.{name}", settings.section),
            path: path.clone(),
            error,
        })?;
    }
    Ok(())
}

/// Opens a file for reading (and refuses a directory, which `open` alone would accept).
pub fn check_file(path: &Path) -> io::Result<()> {
    let file = fs::File::open(path)?;
    if file.metadata()?.is_dir() {
        return Err(io::Error::other("is a directory, not a file"));
    }
    Ok(())
}

/// A parsed YAML document and the file it came from, with typed look-ups by dotted key path.
struct Doc<'a> {
    root: Value,
    file: &'a Path,
}

impl<'a> Doc<'a> {
    fn parse(text: &str, file: &'a Path) -> Result<Self, ConfigError> {
        let mut root: Value = yaml_serde::from_str(text).map_err(|error| ConfigError::Yaml {
            file: file.to_owned(),
            error,
        })?;
        // Honour `<<: *anchor` merge keys the way Go's YAML library does.
        root.apply_merge().map_err(|error| ConfigError::Yaml {
            file: file.to_owned(),
            error,
        })?;
        if !matches!(root, Value::Mapping(_) | Value::Null) {
            return Err(self::invalid(
                file,
                "(top level)",
                format!("expected a mapping, found {}", describe(&root)),
            ));
        }
        Ok(Self { root, file })
    }

    fn invalid(&self, key: &str, problem: String) -> ConfigError {
        invalid(self.file, key, problem)
    }

    /// The value at `key` (dotted path); `None` when it or a parent is absent or null.
    fn get(&self, key: &str) -> Result<Option<&Value>, ConfigError> {
        let mut node = &self.root;
        let mut walked = String::new();
        for part in key.split('.') {
            let map = match node {
                Value::Null => return Ok(None),
                Value::Mapping(map) => map,
                other => {
                    let at = if walked.is_empty() {
                        "(top level)"
                    } else {
                        &walked
                    };
                    let problem = format!("expected a mapping, found {}", describe(other));
                    return Err(self.invalid(at, problem));
                }
            };
            if !walked.is_empty() {
                walked.push('.');
            }
            walked.push_str(part);
            match map.get(part) {
                Some(child) => node = child,
                None => return Ok(None),
            }
        }
        Ok(match node {
            Value::Null => None,
            other => Some(other),
        })
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(key)? {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.invalid(
                key,
                format!("expected true or false, found {}", describe(other)),
            )),
        }
    }

    fn port(&self, key: &str) -> Result<Option<u16>, ConfigError> {
        match self.get(key)? {
            None => Ok(None),
            Some(value) => match value.as_u64().and_then(|n| u16::try_from(n).ok()) {
                Some(port) if port > 0 => Ok(Some(port)),
                _ => Err(self.invalid(
                    key,
                    format!(
                        "expected a port number from 1 to 65535, found {}",
                        describe(value)
                    ),
                )),
            },
        }
    }

    fn path(&self, key: &str) -> Result<Option<PathBuf>, ConfigError> {
        match self.get(key)? {
            None => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Err(self.invalid(
                key,
                "expected a file path, found an empty string".to_owned(),
            )),
            Some(Value::String(s)) => Ok(Some(PathBuf::from(s))),
            Some(other) => Err(self.invalid(
                key,
                format!("expected a file path, found {}", describe(other)),
            )),
        }
    }

    /// Refuses a file of another KubeEdge component (an `edgecore.yaml` passed by mistake would
    /// otherwise just look "disabled"). A file without `apiVersion` is accepted.
    fn check_api_group(&self, group: &str) -> Result<(), ConfigError> {
        match self.get("apiVersion")? {
            None => Ok(()),
            Some(Value::String(v)) if v.split('/').next() == Some(group) => Ok(()),
            Some(other) => Err(self.invalid(
                "apiVersion",
                format!(
                    "expected {group}/<version>, found {}; is this the right file?",
                    describe(other)
                ),
            )),
        }
    }
}

fn invalid(file: &Path, key: &str, problem: String) -> ConfigError {
    ConfigError::Invalid {
        file: file.to_owned(),
        key: key.to_owned(),
        problem,
    }
}

/// A value as an operator would recognise it in an error message.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing".to_owned(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("{n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(_) => "a mapping".to_owned(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

#[cfg(test)]
mod tests {
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
