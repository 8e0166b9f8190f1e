//! Pieces of tether's own configuration format (`apiVersion: tether.io/v1alpha1`) that both
//! binaries share: format detection, deserialization whose errors name the key path and the
//! file, the duration notation, the log settings, the checks that tie the session settings
//! together, and the error type.
//!
//! How this fits: each binary's `settings` module declares its settings with
//! [`crate::settings!`] ([`crate::setting`] layers them) and reads one file, ours or KubeEdge's;
//! this module is the vocabulary they share.
//!
//! Durations in our format are strings with a unit, parsed by `humantime`: `"5s"`, `"250ms"`,
//! `"1m30s"`. A bare number is refused rather than guessed at (seconds? milliseconds?). Keys
//! that keep KubeEdge's names and meaning (`edgeStream.handshakeTimeout`, …) keep KubeEdge's
//! integer seconds.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, Visitor};
use tunnel_session::SessionConfig;
use yaml_serde::Value;

use crate::kubeedge::{self, ConfigError};
use crate::setting::Setting;

/// `apiVersion` of our format.
pub const API_VERSION: &str = "tether.io/v1alpha1";
/// The API group of our format.
const API_GROUP: &str = "tether.io";
/// Default log filter when neither a flag, `RUST_LOG` nor the file sets one.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// Which format a configuration file is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `apiVersion: tether.io/v1alpha1`.
    Tether,
    /// KubeEdge's `cloudcore.yaml` / `edgecore.yaml`.
    KubeEdge,
}

/// Why the settings cannot be used. Every message names the file and the key, or the flag.
#[derive(Debug)]
pub enum SettingsError {
    /// The configuration file cannot be read.
    Read {
        /// The configuration file.
        file: PathBuf,
        /// What the OS said.
        error: io::Error,
    },
    /// A key of the file is unknown, has the wrong type or an impossible value.
    Key {
        /// The configuration file.
        file: PathBuf,
        /// Dotted key path, e.g. `session.stallLimit`.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A flag (or its environment variable) has an impossible value.
    Flag {
        /// The flag, e.g. `--dead-after`.
        flag: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// An error of the KubeEdge reader (its message names the key and the file).
    KubeEdge(Box<dyn std::error::Error + Send + Sync>),
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { file, error } => write!(f, "cannot read {}: {error}", file.display()),
            Self::Key { file, key, problem } => {
                write!(f, "{key}: {problem} (in {})", file.display())
            }
            Self::Flag { flag, problem } => write!(f, "{flag}: {problem}"),
            Self::KubeEdge(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for SettingsError {}

impl From<ConfigError> for SettingsError {
    fn from(error: ConfigError) -> Self {
        Self::KubeEdge(Box::new(error))
    }
}

/// Where a merged value came from, so a cross-check can name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// A key of the file.
    Key(String),
    /// A flag or its environment variable.
    Flag(&'static str),
}

impl Origin {
    /// An error about the value from this origin; a default is blamed on `key`.
    pub fn error(&self, file: &Path, key: &str, problem: String) -> SettingsError {
        match self {
            Origin::Flag(flag) => SettingsError::Flag { flag, problem },
            Origin::Key(key) => key_error(file, key, problem),
            Origin::Default => key_error(file, key, problem),
        }
    }

    /// How an operator finds the value: the flag, the key, or "the default".
    pub fn describe(&self) -> String {
        match self {
            Origin::Flag(flag) => (*flag).to_owned(),
            Origin::Key(key) => key.clone(),
            Origin::Default => "the default".to_owned(),
        }
    }
}

/// An error about `key` of `file`.
pub fn key_error(file: &Path, key: &str, problem: String) -> SettingsError {
    SettingsError::Key {
        file: file.to_owned(),
        key: key.to_owned(),
        problem,
    }
}

/// Reads the whole file.
pub fn read(file: &Path) -> Result<String, SettingsError> {
    std::fs::read_to_string(file).map_err(|error| SettingsError::Read {
        file: file.to_owned(),
        error,
    })
}

/// Tells our format from KubeEdge's: `apiVersion: tether.io/v1alpha1` is ours (and `kind` must
/// be `kind`); an `apiVersion` in `kubeedge_group`, or no `apiVersion` but a `modules:`
/// mapping, is KubeEdge's. Anything else is refused, naming `apiVersion`.
pub fn detect(
    text: &str,
    file: &Path,
    kind: &str,
    kubeedge_group: &str,
) -> Result<Format, SettingsError> {
    let root: Value = yaml_serde::from_str(text)
        .map_err(|e| key_error(file, "(top level)", format!("invalid YAML: {e}")))?;
    let expected = || {
        format!(
            "expected apiVersion {API_VERSION} (kind {kind}) or {kubeedge_group}/<version> \
             (KubeEdge)"
        )
    };
    let map = match &root {
        Value::Mapping(map) => map,
        _ => return Err(key_error(file, "(top level)", expected())),
    };
    match map.get("apiVersion") {
        Some(Value::String(v)) if v == API_VERSION => Ok(Format::Tether),
        Some(Value::String(v)) if v.split('/').next() == Some(API_GROUP) => Err(key_error(
            file,
            "apiVersion",
            format!("unsupported version {v:?}; this binary reads {API_VERSION}"),
        )),
        Some(Value::String(v)) if v.split('/').next() == Some(kubeedge_group) => {
            Ok(Format::KubeEdge)
        }
        None | Some(Value::Null) if matches!(map.get("modules"), Some(Value::Mapping(_))) => {
            Ok(Format::KubeEdge)
        }
        None | Some(Value::Null) => Err(key_error(
            file,
            "apiVersion",
            format!("missing: {}; is this the right file?", expected()),
        )),
        Some(other) => Err(key_error(
            file,
            "apiVersion",
            format!("{}, found {other:?}; is this the right file?", expected()),
        )),
    }
}

/// Deserializes our format with `seed` (strict: [`crate::setting`]'s reader refuses unknown
/// keys), with errors naming the dotted key path and the file.
pub fn from_yaml<'de, S: DeserializeSeed<'de>>(
    seed: S,
    text: &'de str,
    file: &Path,
) -> Result<S::Value, SettingsError> {
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(
        yaml_serde::Deserializer::from_str(text),
        &mut track,
    );
    seed.deserialize(de).map_err(|error| {
        let key = match track.path().to_string() {
            p if p == "." => "(top level)".to_owned(),
            p => p,
        };
        let mut problem = error.to_string();
        // yaml_serde starts its message with its own idea of the path (the parent's for an
        // unknown key); the key we report already says where.
        let parent = key.rsplit_once('.').map(|(p, _)| p.to_owned());
        for prefix in std::iter::once(key.clone()).chain(parent) {
            if let Some(rest) = problem.strip_prefix(&format!("{prefix}: ")) {
                problem = rest.to_owned();
                break;
            }
        }
        key_error(file, &key, problem)
    })
}

/// Parses a duration of our format: a number with a unit, e.g. `5s`, `250ms`, `1m30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("expected a duration such as \"5s\", \"250ms\" or \"1m30s\", found {text:?} ({e})")
    })
}

/// clap value parser of duration flags: a duration longer than zero; a bare number is seconds
/// (what `--stall-limit` took before durations had units).
pub fn duration_flag(text: &str) -> Result<Duration, String> {
    let duration = match text.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => parse_duration(text)?,
    };
    if duration.is_zero() {
        return Err("must be longer than zero".to_owned());
    }
    Ok(duration)
}

/// clap value parser of `--stream-window`: at least 1024 bytes.
pub fn window_flag(text: &str) -> Result<u32, String> {
    let window: u32 = text
        .trim()
        .parse()
        .map_err(|_| format!("expected a number of bytes, found {text:?}"))?;
    if window < MIN_STREAM_WINDOW {
        return Err(format!("must be at least {MIN_STREAM_WINDOW} bytes"));
    }
    Ok(window)
}

/// The smallest per-stream window `SessionConfig::validate` accepts.
pub const MIN_STREAM_WINDOW: u32 = 1024;

/// `#[serde(deserialize_with = "duration")]` for `Option<Duration>` keys of our format.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    struct Optional;
    struct Text;
    impl<'de> Visitor<'de> for Optional {
        type Value = Option<Duration>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"5s\" or \"250ms\"")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(Text).map(Some)
        }
    }
    impl Visitor<'_> for Text {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"5s\" or \"250ms\"")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "found the number {v} without a unit; write a duration such as \"{v}s\" or \
                 \"{v}ms\""
            )))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "expected a duration such as \"5s\", found the number {v}"
            )))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "expected a duration such as \"5s\", found the number {v}"
            )))
        }
    }
    d.deserialize_option(Optional)
}

/// `yaml` of a setting whose value in our format is KubeEdge's whole number of seconds
/// (`edgeStream.handshakeTimeout`, …): an unsigned integer, no unit.
pub fn whole_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Ok(Option::<u64>::deserialize(d)?.map(Duration::from_secs))
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Log settings after merging: format, and the filter from the flag, the file and the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// Output format.
    pub format: LogFormat,
    /// `--log-level` (or its environment variable).
    pub flag_level: Option<String>,
    /// `log.level` of the file.
    pub file_level: Option<String>,
}

impl LogSettings {
    /// The log settings from the layered `log.format` and `log.level` (whose filters the
    /// setting's check accepted). The level is kept apart by origin because `RUST_LOG` sits
    /// between the flag and the file.
    pub fn new(format: LogFormat, level: &Setting<Option<String>>) -> LogSettings {
        let (flag_level, file_level) = match level.origin {
            Origin::Flag(_) => (level.value.clone(), None),
            _ => (None, level.value.clone()),
        };
        LogSettings {
            format,
            flag_level,
            file_level,
        }
    }

    /// The filter to use: `--log-level`, else `RUST_LOG` (passed in by
    /// [`crate::process::init_tracing`]), else
    /// `log.level`, else [`DEFAULT_LOG_LEVEL`].
    pub fn filter(&self, rust_log: Option<String>) -> String {
        self.flag_level
            .clone()
            .or(rust_log.filter(|s| !s.trim().is_empty()))
            .or(self.file_level.clone())
            .unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned())
    }
}

/// Checks what ties the session settings together once each passed its own check: the
/// dead-peer deadline must be longer than the ping interval (the error names where each came
/// from, `dead_after` being blamed on `session.deadAfter` when it is the default), then the
/// library's own word, [`SessionConfig::validate`].
pub fn check_session(
    file: &Path,
    config: &SessionConfig,
    dead_after: &Origin,
    ping_interval: &Origin,
) -> Result<(), SettingsError> {
    if config.dead_after <= config.ping_interval {
        return Err(dead_after.error(
            file,
            "session.deadAfter",
            format!(
                "the dead-peer deadline ({}) must be longer than the ping interval ({}, from {})",
                humantime::format_duration(config.dead_after),
                humantime::format_duration(config.ping_interval),
                ping_interval.describe()
            ),
        ));
    }
    // The checks of single keys should make this pass; it stays as the library's own word.
    config
        .validate()
        .map_err(|problem| key_error(file, "session", problem))
}

/// Refuses a file of our format for the other binary: `kind` must be `expected`.
pub fn check_kind(file: &Path, kind: &str, expected: &str) -> Result<(), SettingsError> {
    if kind != expected {
        return Err(key_error(
            file,
            "kind",
            format!("expected {expected}, found {kind:?}; is this the right file?"),
        ));
    }
    Ok(())
}

/// Checks that the file named by `key` of `file` can be opened for reading.
pub fn check_key_file(file: &Path, key: &str, path: &Path) -> Result<(), SettingsError> {
    kubeedge::check_file(path)
        .map_err(|error| key_error(file, key, format!("{}: {error}", path.display())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::marker::PhantomData;

    use super::*;
    use crate::setting::Setting;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Doc {
        session: Option<Section>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Section {
        stream_window: Option<u32>,
        #[serde(default, deserialize_with = "duration")]
        stall_limit: Option<Duration>,
        #[serde(default, deserialize_with = "duration")]
        dead_after: Option<Duration>,
        #[serde(default, deserialize_with = "duration")]
        ping_interval: Option<Duration>,
        #[serde(default, deserialize_with = "whole_seconds")]
        handshake_timeout: Option<Duration>,
    }

    fn parse(text: &str) -> Result<Doc, SettingsError> {
        from_yaml(PhantomData::<Doc>, text, Path::new("/etc/tether/x.yaml"))
    }

    #[test]
    fn errors_name_the_key_path_and_the_file() {
        for (text, key) in [
            ("bogus: 1\n", "bogus"),
            ("session:\n  bogus: 1\n", "session.bogus"),
            ("session:\n  stallLimit: 5\n", "session.stallLimit"),
            ("session:\n  stallLimit: 5x\n", "session.stallLimit"),
            ("session:\n  streamWindow: -1\n", "session.streamWindow"),
            (
                "session:\n  handshakeTimeout: 5s\n",
                "session.handshakeTimeout",
            ),
        ] {
            let err = parse(text).unwrap_err();
            let message = err.to_string();
            assert!(
                matches!(&err, SettingsError::Key { key: k, .. } if k == key),
                "{text:?}: {message}"
            );
            assert!(message.starts_with(&format!("{key}: ")), "{message}");
            assert!(message.ends_with("(in /etc/tether/x.yaml)"), "{message}");
        }
        let message = parse("session:\n  stallLimit: 5\n")
            .unwrap_err()
            .to_string();
        assert!(message.contains("\"5s\""), "{message}");
    }

    #[test]
    fn durations_have_units() {
        let doc = parse(
            "session:\n  stallLimit: 250ms\n  deadAfter: 1m30s\n  pingInterval: ~\n\
             \x20 handshakeTimeout: 30\n",
        )
        .unwrap();
        let s = doc.session.unwrap();
        assert_eq!(s.stall_limit, Some(Duration::from_millis(250)));
        assert_eq!(s.dead_after, Some(Duration::from_secs(90)));
        assert_eq!(s.ping_interval, None);
        assert_eq!(s.handshake_timeout, Some(Duration::from_secs(30)));
        assert_eq!(s.stream_window, None);
        assert_eq!(duration_flag("2").unwrap(), Duration::from_secs(2));
        assert_eq!(duration_flag("2s").unwrap(), Duration::from_secs(2));
        assert!(duration_flag("0s").is_err());
        assert!(window_flag("1023").is_err());
        assert_eq!(window_flag("262144").unwrap(), 262_144);
    }

    #[test]
    fn single_key_checks_name_the_key_and_the_file() {
        let file = Path::new("/f.yaml");
        let message = |r: Result<(), SettingsError>| r.unwrap_err().to_string();
        assert_eq!(
            message(check_kind(file, "EdgeStream", "CloudStream")),
            "kind: expected CloudStream, found \"EdgeStream\"; is this the right file? (in /f.yaml)"
        );
        check_kind(file, "CloudStream", "CloudStream").unwrap();
        let missing = Path::new("/nonexistent/tether-cli/ca.crt");
        assert!(
            message(check_key_file(file, "a.caFile", missing))
                .starts_with("a.caFile: /nonexistent/tether-cli/ca.crt: ")
        );
    }

    #[test]
    fn the_dead_peer_deadline_must_exceed_the_ping_interval() {
        let file = Path::new("/f.yaml");
        let config = SessionConfig {
            ping_interval: Duration::from_secs(2),
            dead_after: Duration::from_secs(1),
            ..SessionConfig::default()
        };
        // The error names where each value came from.
        let err = check_session(
            file,
            &config,
            &Origin::Flag("--dead-after"),
            &Origin::Key("session.pingInterval".into()),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "--dead-after: the dead-peer deadline (1s) must be longer than the ping interval \
             (2s, from session.pingInterval)"
        );
        let err = check_session(file, &config, &Origin::Default, &Origin::Default)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("session.deadAfter: "), "{err}");
        assert!(err.contains("from the default"), "{err}");
        check_session(
            file,
            &SessionConfig::default(),
            &Origin::Default,
            &Origin::Default,
        )
        .unwrap();
    }

    #[test]
    fn the_log_level_keeps_the_flag_apart_from_the_file() {
        let level = |value: &str, origin: Origin| Setting {
            value: Some(value.to_owned()),
            origin,
            key: "log.level",
            in_file: true,
        };
        let from_file = LogSettings::new(
            LogFormat::Json,
            &level("debug", Origin::Key("log.level".into())),
        );
        assert_eq!(from_file.filter(None), "debug");
        assert_eq!(from_file.filter(Some("warn".into())), "warn");
        let from_flag = LogSettings::new(
            LogFormat::Text,
            &level("error", Origin::Flag("--log-level")),
        );
        assert_eq!(from_flag.filter(Some("warn".into())), "error");
        let unset = Setting {
            value: None,
            origin: Origin::Default,
            key: "log.level",
            in_file: false,
        };
        assert_eq!(
            LogSettings::new(LogFormat::Text, &unset).filter(None),
            "info"
        );
    }
}
