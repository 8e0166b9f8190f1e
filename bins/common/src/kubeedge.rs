//! Reading KubeEdge's own configuration files (`cloudcore.yaml`, `edgecore.yaml`) by dotted key
//! path: the error type, a YAML document with typed look-ups, and the TLS file checks.
//!
//! How this fits: each binary's `config` module knows which section and keys it needs and
//! their KubeEdge defaults; it parses the file into a [`Doc`] and asks for each key by its
//! dotted path (`modules.cloudStream.tunnelPort`). The file is read as a generic YAML tree and
//! walked rather than deserialized into structs: that is what lets each error name the exact
//! key, and what keeps the dozens of keys of other modules harmless.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tunnel_session::tls::TlsFiles;
use yaml_serde::Value;

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

/// The three TLS files of one end of the tunnel (or of the stream listener), as configured:
/// plain data, not yet read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// CA the peer's certificate must chain to: edges' and kube-apiserver's client
    /// certificates for cloudstream; the cloud's certificate for edgestream, which reads it only
    /// when it verifies the cloud (stock edgecore never does).
    pub ca: PathBuf,
    /// Our certificate chain (PEM); on an edge, the node certificate EdgeHub obtained from
    /// CloudHub.
    pub cert: PathBuf,
    /// Our private key (PEM).
    pub key: PathBuf,
}

impl TlsPaths {
    /// The same files as `tunnel-session` takes them.
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

/// Reads the whole configuration file.
pub fn read(file: &Path) -> Result<String, ConfigError> {
    fs::read_to_string(file).map_err(|error| ConfigError::Read {
        file: file.to_owned(),
        error,
    })
}

/// Opens a file for reading (and refuses a directory, which `open` alone would accept).
pub fn check_file(path: &Path) -> io::Result<()> {
    let file = fs::File::open(path)?;
    if file.metadata()?.is_dir() {
        return Err(io::Error::other("is a directory, not a file"));
    }
    Ok(())
}

/// Checks that every TLS file can be opened for reading, in order; the first that cannot is
/// reported as [`ConfigError::TlsFile`] under the key `{section}.{name}` of `source`.
pub fn check_tls_files(
    source: &Path,
    section: &str,
    files: &[(&str, &Path)],
) -> Result<(), ConfigError> {
    for &(name, path) in files {
        check_file(path).map_err(|error| ConfigError::TlsFile {
            file: source.to_owned(),
            key: format!("{section}.{name}"),
            path: path.to_owned(),
            error,
        })?;
    }
    Ok(())
}

/// Whether `name` can be a Kubernetes node name: a DNS-1123 subdomain (lower-case letters,
/// digits, `-` and `.`, labels of 1 to 63 characters that start and end with a letter or digit,
/// 253 characters at most).
pub fn is_node_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A parsed YAML document and the file it came from, with typed look-ups by dotted key path.
///
/// Every look-up returns `Ok(None)` when the key or one of its parents is absent or null (so
/// the caller applies KubeEdge's default), and a [`ConfigError::Invalid`] naming the key and
/// the file when the value has the wrong type or is out of range.
#[derive(Debug)]
pub struct Doc<'a> {
    root: Value,
    file: &'a Path,
}

impl<'a> Doc<'a> {
    /// Parses `text`, read from `file`, honouring `<<: *anchor` merge keys; the top level must
    /// be a mapping (or empty).
    pub fn parse(text: &str, file: &'a Path) -> Result<Self, ConfigError> {
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

    /// A [`ConfigError::Invalid`] about `key` of this file.
    pub fn invalid(&self, key: &str, problem: String) -> ConfigError {
        invalid(self.file, key, problem)
    }

    /// The value at `key` (dotted path); `None` when it or a parent is absent or null.
    pub fn get(&self, key: &str) -> Result<Option<&Value>, ConfigError> {
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

    /// `true` or `false`.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(key)? {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.invalid(
                key,
                format!("expected true or false, found {}", describe(other)),
            )),
        }
    }

    /// A string.
    pub fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.get(key)? {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => {
                Err(self.invalid(key, format!("expected a string, found {}", describe(other))))
            }
        }
    }

    /// A port number from 1 to 65535.
    pub fn port(&self, key: &str) -> Result<Option<u16>, ConfigError> {
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

    /// A whole number of seconds, at least 1 (KubeEdge's timeouts are plain integers).
    pub fn seconds(&self, key: &str) -> Result<Option<Duration>, ConfigError> {
        match self.get(key)? {
            None => Ok(None),
            Some(value) => match value.as_u64() {
                Some(secs) if secs > 0 => Ok(Some(Duration::from_secs(secs))),
                _ => Err(self.invalid(
                    key,
                    format!(
                        "expected a whole number of seconds (at least 1), found {}",
                        describe(value)
                    ),
                )),
            },
        }
    }

    /// A file path: a non-empty string.
    pub fn path(&self, key: &str) -> Result<Option<PathBuf>, ConfigError> {
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

    /// A file path where an empty string means "not set", as KubeEdge's `kubeAPIConfig.kubeConfig`
    /// (empty: the in-cluster configuration).
    pub fn optional_path(&self, key: &str) -> Result<Option<PathBuf>, ConfigError> {
        match self.get(key)? {
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            _ => self.path(key),
        }
    }

    /// A string where an empty one means "not set", as KubeEdge's `kubeAPIConfig.master`.
    pub fn optional_string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        Ok(self.string(key)?.filter(|s| !s.trim().is_empty()))
    }

    /// A number, whole or not (Go's `float32`, e.g. `kubeAPIConfig.qps`).
    pub fn f32(&self, key: &str) -> Result<Option<f32>, ConfigError> {
        match self.get(key)? {
            None => Ok(None),
            // f32 is what the setting holds (Go's float32); the precision lost is immaterial.
            Some(value) => match value.as_f64() {
                Some(n) if n.is_finite() => Ok(Some(n as f32)),
                _ => {
                    Err(self.invalid(key, format!("expected a number, found {}", describe(value))))
                }
            },
        }
    }

    /// A whole number from 0 to 4294967295 (e.g. `kubeAPIConfig.burst`).
    pub fn u32(&self, key: &str) -> Result<Option<u32>, ConfigError> {
        match self.get(key)? {
            None => Ok(None),
            Some(value) => match value.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) => Ok(Some(n)),
                None => Err(self.invalid(
                    key,
                    format!(
                        "expected a whole number from 0 to {}, found {}",
                        u32::MAX,
                        describe(value)
                    ),
                )),
            },
        }
    }

    /// Refuses a file of another KubeEdge component (an `edgecore.yaml` passed by mistake would
    /// otherwise just look "disabled"). A file without `apiVersion` is accepted.
    pub fn check_api_group(&self, group: &str) -> Result<(), ConfigError> {
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
pub fn describe(value: &Value) -> String {
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
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const FILE: &str = "/etc/kubeedge/config/x.yaml";

    fn doc(text: &str) -> Doc<'static> {
        Doc::parse(text, Path::new(FILE)).unwrap()
    }

    fn invalid_key(result: Result<impl fmt::Debug, ConfigError>) -> String {
        match result.unwrap_err() {
            ConfigError::Invalid { key, file, .. } => {
                assert_eq!(file, Path::new(FILE));
                key
            }
            other => panic!("expected Invalid, got {other}"),
        }
    }

    #[test]
    fn absent_and_null_keys_are_none_and_merge_keys_apply() {
        let d = doc("base: &b\n  port: 7\nmodules:\n  a:\n    <<: *b\n    off: ~\n");
        assert_eq!(d.port("modules.a.port").unwrap(), Some(7));
        assert_eq!(d.port("modules.a.off").unwrap(), None);
        assert_eq!(d.bool("modules.b.enable").unwrap(), None);
        assert_eq!(doc("").string("x.y").unwrap(), None);
    }

    #[test]
    fn errors_name_the_deepest_key_walked() {
        let d = doc("modules: [a]\nx:\n  port: 0\n  secs: 1.5\n  path: \"\"\n");
        assert_eq!(invalid_key(d.get("modules.cloudStream.enable")), "modules");
        assert_eq!(invalid_key(d.port("x.port")), "x.port");
        assert_eq!(invalid_key(d.seconds("x.secs")), "x.secs");
        assert_eq!(invalid_key(d.path("x.path")), "x.path");
        assert_eq!(
            invalid_key(Doc::parse("- a\n", Path::new(FILE))),
            "(top level)"
        );
        let message = d.invalid("x.port", "bad".to_owned()).to_string();
        assert_eq!(message, format!("x.port: bad (in {FILE})"));
    }

    #[test]
    fn kube_api_keys_read_as_cloudcore_reads_them() {
        let d = doc(
            "kubeAPIConfig:\n  kubeConfig: \"\"\n  master: \" \"\n  qps: 100\n  burst: 200\n\
             x:\n  kubeConfig: /root/.kube/config\n  master: https://10.0.0.1:6443\n  qps: 2.5\n\
             \x20 burst: -1\n  nan: .nan\n",
        );
        assert_eq!(d.optional_path("kubeAPIConfig.kubeConfig").unwrap(), None);
        assert_eq!(d.optional_string("kubeAPIConfig.master").unwrap(), None);
        assert_eq!(d.f32("kubeAPIConfig.qps").unwrap(), Some(100.0));
        assert_eq!(d.u32("kubeAPIConfig.burst").unwrap(), Some(200));
        assert_eq!(
            d.optional_path("x.kubeConfig").unwrap(),
            Some(PathBuf::from("/root/.kube/config"))
        );
        assert_eq!(
            d.optional_string("x.master").unwrap().as_deref(),
            Some("https://10.0.0.1:6443")
        );
        assert_eq!(d.f32("x.qps").unwrap(), Some(2.5));
        assert_eq!(invalid_key(d.u32("x.burst")), "x.burst");
        assert_eq!(invalid_key(d.f32("x.nan")), "x.nan");
        assert_eq!(invalid_key(d.f32("x.master")), "x.master");
        assert_eq!(invalid_key(d.optional_path("x.qps")), "x.qps");
        assert_eq!(d.u32("absent.burst").unwrap(), None);
    }

    #[test]
    fn node_names_are_dns_subdomains() {
        for good in ["edge-1", "edge-2.zone-a", "1"] {
            assert!(is_node_name(good), "{good}");
        }
        for bad in [
            "", "Edge-1", "edge_1", "-edge", "edge-", "edge..1", "edge 1",
        ] {
            assert!(!is_node_name(bad), "{bad}");
        }
        assert!(!is_node_name(&"a".repeat(64)));
    }

    #[test]
    fn tls_files_are_checked_in_order_and_named_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let present = dir.path().join("ca.crt");
        fs::write(&present, "-----BEGIN-----\n").unwrap();
        let missing = dir.path().join("node.crt");
        let source = Path::new(FILE);
        let files = [
            ("caFile", present.as_path()),
            ("certFile", missing.as_path()),
        ];
        let err = check_tls_files(source, "section", &files).unwrap_err();
        assert!(
            matches!(&err, ConfigError::TlsFile { key, path, .. }
                if key == "section.certFile" && *path == missing),
            "{err}"
        );
        assert!(err.to_string().ends_with(&format!("(in {FILE})")), "{err}");
        // A directory is not a certificate.
        fs::create_dir(&missing).unwrap();
        assert!(check_tls_files(source, "section", &files).is_err());
        check_tls_files(source, "section", &files[..1]).unwrap();
    }
}
