//! Pieces of tether's own configuration format (`apiVersion: tether.io/v1alpha1`) that both
//! binaries share: format detection, strict deserialization whose errors name the key path and
//! the file, the duration notation, the `session:` and `log:` sections, the checks of single
//! keys, and the error type.
//!
//! How this fits: each binary's `settings` module reads one file (ours or KubeEdge's), merges
//! the flags over it and validates the result; this module is the common vocabulary.
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
    /// The origin of a value set by `flag` if `flagged`, else by `key` if `in_file`.
    pub fn of(flagged: bool, flag: &'static str, in_file: bool, key: &str) -> Origin {
        if flagged {
            Origin::Flag(flag)
        } else if in_file {
            Origin::Key(key.to_owned())
        } else {
            Origin::Default
        }
    }

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

/// `log:` of our format.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LogSection {
    /// `text` or `json`.
    pub format: Option<LogFormat>,
    /// A tracing filter, e.g. `info` or `info,tunnel_session=debug`.
    pub level: Option<String>,
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

    /// Merges `--log-format` / `--log-level` over the file's `log:` section, checking the
    /// filters.
    pub fn merge(
        file: &Path,
        section: Option<&LogSection>,
        flag_format: Option<LogFormat>,
        flag_level: Option<String>,
    ) -> Result<LogSettings, SettingsError> {
        let file_level = section.and_then(|s| s.level.clone());
        if let Some(level) = &file_level {
            check_filter(level).map_err(|p| key_error(file, "log.level", p))?;
        }
        if let Some(level) = &flag_level {
            check_filter(level).map_err(|problem| SettingsError::Flag {
                flag: "--log-level",
                problem,
            })?;
        }
        Ok(LogSettings {
            format: flag_format
                .or(section.and_then(|s| s.format))
                .unwrap_or_default(),
            flag_level,
            file_level,
        })
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

fn check_filter(level: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|e| {
            format!("not a log filter ({e}); e.g. \"info\" or \"info,tunnel_session=debug\"")
        })
}

/// `session:` of our format: the tunables of every tunnel session (both ends).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SessionSection {
    /// Per-stream buffer and tether/2 credit window, bytes.
    pub stream_window: Option<u32>,
    /// How long a full stream buffer may pause a stock-KubeEdge session.
    #[serde(default, deserialize_with = "duration")]
    pub stall_limit: Option<Duration>,
    /// Interval between our pings.
    #[serde(default, deserialize_with = "duration")]
    pub ping_interval: Option<Duration>,
    /// Silence after which the peer is dead.
    #[serde(default, deserialize_with = "duration")]
    pub dead_after: Option<Duration>,
    /// Deadline of each websocket write.
    #[serde(default, deserialize_with = "duration")]
    pub write_deadline: Option<Duration>,
    /// Messages queued for the writer task.
    pub write_queue: Option<usize>,
    /// Streams open at once on one session.
    pub max_streams: Option<usize>,
    /// Largest DATA payload per message, bytes.
    pub max_data_chunk: Option<usize>,
    /// Wait for the edge's open result (tether/2).
    #[serde(default, deserialize_with = "duration")]
    pub open_timeout: Option<Duration>,
}

/// The session flags of a binary (each already checked by its clap value parser).
#[derive(Debug, Clone, Default)]
pub struct SessionFlags {
    /// `--stream-window`.
    pub stream_window: Option<u32>,
    /// `--stall-limit`.
    pub stall_limit: Option<Duration>,
    /// `--ping-interval`.
    pub ping_interval: Option<Duration>,
    /// `--dead-after`.
    pub dead_after: Option<Duration>,
    /// `--write-deadline`.
    pub write_deadline: Option<Duration>,
}

/// Where the dead-peer deadline and the write deadline were set, when a binary takes them
/// from elsewhere than `session:` (edgestream: KubeEdge's `readDeadline` / `writeDeadline`).
#[derive(Debug, Clone, Default)]
pub struct Deadlines {
    /// Dead-peer deadline and the key that set it.
    pub dead_after: Option<(Duration, String)>,
    /// Write deadline and the key that set it.
    pub write_deadline: Option<(Duration, String)>,
}

/// Builds the session configuration: defaults, then `deadlines`, then the `session:` section
/// (checked key by key), then the flags; then checks the values against each other, naming
/// where each came from.
pub fn session_config(
    file: &Path,
    section: Option<&SessionSection>,
    deadlines: &Deadlines,
    flags: &SessionFlags,
) -> Result<SessionConfig, SettingsError> {
    let s = section.cloned().unwrap_or_default();
    let bad = |key: &str, problem: &str| key_error(file, &format!("session.{key}"), problem.into());
    positive(file, "session.stallLimit", s.stall_limit)?;
    positive(file, "session.pingInterval", s.ping_interval)?;
    positive(file, "session.deadAfter", s.dead_after)?;
    positive(file, "session.writeDeadline", s.write_deadline)?;
    positive(file, "session.openTimeout", s.open_timeout)?;
    if s.stream_window.is_some_and(|w| w < MIN_STREAM_WINDOW) {
        return Err(bad(
            "streamWindow",
            &format!("must be at least {MIN_STREAM_WINDOW} bytes"),
        ));
    }
    at_least_one(file, "session.writeQueue", s.write_queue)?;
    at_least_one(file, "session.maxStreams", s.max_streams)?;
    if s.max_data_chunk
        .is_some_and(|c| c == 0 || c > stream_proto::MAX_DATA_LEN)
    {
        return Err(bad(
            "maxDataChunk",
            &format!("must be from 1 to {} bytes", stream_proto::MAX_DATA_LEN),
        ));
    }
    let conflict = |key: &str, other: &str| {
        key_error(
            file,
            &format!("session.{key}"),
            format!("set here and as {other}; keep one"),
        )
    };
    if let (Some(_), Some((_, other))) = (s.dead_after, &deadlines.dead_after) {
        return Err(conflict("deadAfter", other));
    }
    if let (Some(_), Some((_, other))) = (s.write_deadline, &deadlines.write_deadline) {
        return Err(conflict("writeDeadline", other));
    }

    let defaults = SessionConfig::default();
    let config = SessionConfig {
        stream_window: flags
            .stream_window
            .or(s.stream_window)
            .unwrap_or(defaults.stream_window),
        stall_limit: flags
            .stall_limit
            .or(s.stall_limit)
            .unwrap_or(defaults.stall_limit),
        ping_interval: flags
            .ping_interval
            .or(s.ping_interval)
            .unwrap_or(defaults.ping_interval),
        dead_after: flags
            .dead_after
            .or(s.dead_after)
            .or(deadlines.dead_after.as_ref().map(|(d, _)| *d))
            .unwrap_or(defaults.dead_after),
        write_deadline: flags
            .write_deadline
            .or(s.write_deadline)
            .or(deadlines.write_deadline.as_ref().map(|(d, _)| *d))
            .unwrap_or(defaults.write_deadline),
        write_queue: s.write_queue.unwrap_or(defaults.write_queue),
        max_streams: s.max_streams.unwrap_or(defaults.max_streams),
        max_data_chunk: s.max_data_chunk.unwrap_or(defaults.max_data_chunk),
        open_timeout: s.open_timeout.unwrap_or(defaults.open_timeout),
    };

    if config.dead_after <= config.ping_interval {
        let dead = match &deadlines.dead_after {
            Some((_, key)) if flags.dead_after.is_none() && s.dead_after.is_none() => {
                Origin::Key(key.clone())
            }
            _ => Origin::of(
                flags.dead_after.is_some(),
                "--dead-after",
                s.dead_after.is_some(),
                "session.deadAfter",
            ),
        };
        let ping = Origin::of(
            flags.ping_interval.is_some(),
            "--ping-interval",
            s.ping_interval.is_some(),
            "session.pingInterval",
        );
        return Err(dead.error(
            file,
            "session.deadAfter",
            format!(
                "the dead-peer deadline ({}) must be longer than the ping interval ({}, from {})",
                humantime::format_duration(config.dead_after),
                humantime::format_duration(config.ping_interval),
                ping.describe()
            ),
        ));
    }
    // Everything above should make this pass; it stays as the library's own word.
    config
        .validate()
        .map_err(|problem| key_error(file, "session", problem))?;
    Ok(config)
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

/// A path key of our format: absent is `None`, an empty string is an error.
pub fn path_key(file: &Path, key: &str, value: Option<&PathBuf>) -> Result<(), SettingsError> {
    match value {
        Some(p) if p.as_os_str().is_empty() => Err(key_error(
            file,
            key,
            "expected a file path, found an empty string".to_owned(),
        )),
        _ => Ok(()),
    }
}

/// A path key of our format with KubeEdge's default: [`path_key`], then `default` if absent.
pub fn path_or(
    file: &Path,
    key: &str,
    value: Option<PathBuf>,
    default: &str,
) -> Result<PathBuf, SettingsError> {
    path_key(file, key, value.as_ref())?;
    Ok(value.unwrap_or_else(|| PathBuf::from(default)))
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

/// A duration key of our format that must be longer than zero when set.
pub fn positive(file: &Path, key: &str, value: Option<Duration>) -> Result<(), SettingsError> {
    match value {
        Some(d) if d.is_zero() => Err(key_error(file, key, "must be longer than zero".into())),
        _ => Ok(()),
    }
}

/// A count key of our format that must be at least 1 when set.
pub fn at_least_one(file: &Path, key: &str, value: Option<usize>) -> Result<(), SettingsError> {
    match value {
        Some(0) => Err(key_error(file, key, "must be at least 1".into())),
        _ => Ok(()),
    }
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

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Doc {
        session: Option<SessionSection>,
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
        let doc = parse("session:\n  stallLimit: 250ms\n  deadAfter: 1m30s\n  pingInterval: ~\n")
            .unwrap();
        let s = doc.session.unwrap();
        assert_eq!(s.stall_limit, Some(Duration::from_millis(250)));
        assert_eq!(s.dead_after, Some(Duration::from_secs(90)));
        assert_eq!(s.ping_interval, None);
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
        assert_eq!(
            message(positive(file, "a.b", Some(Duration::ZERO))),
            "a.b: must be longer than zero (in /f.yaml)"
        );
        positive(file, "a.b", None).unwrap();
        assert_eq!(
            message(at_least_one(file, "a.n", Some(0))),
            "a.n: must be at least 1 (in /f.yaml)"
        );
        at_least_one(file, "a.n", Some(1)).unwrap();
        assert_eq!(
            path_or(file, "a.p", None, "/default").unwrap(),
            PathBuf::from("/default")
        );
        assert!(path_or(file, "a.p", Some(PathBuf::new()), "/default").is_err());
        let missing = Path::new("/nonexistent/tether-cli/ca.crt");
        assert!(
            message(check_key_file(file, "a.caFile", missing))
                .starts_with("a.caFile: /nonexistent/tether-cli/ca.crt: ")
        );
    }

    #[test]
    fn session_defaults_file_and_flags_layer() {
        let file = Path::new("/f.yaml");
        let section = SessionSection {
            stall_limit: Some(Duration::from_secs(3)),
            ping_interval: Some(Duration::from_secs(2)),
            ..SessionSection::default()
        };
        let flags = SessionFlags {
            stall_limit: Some(Duration::from_secs(7)),
            ..SessionFlags::default()
        };
        let config = session_config(file, Some(&section), &Deadlines::default(), &flags).unwrap();
        assert_eq!(config.stall_limit, Duration::from_secs(7));
        assert_eq!(config.ping_interval, Duration::from_secs(2));
        assert_eq!(
            config.stream_window,
            tunnel_session::config::DEFAULT_STREAM_WINDOW
        );

        // The cross-check names where the offending value came from.
        let flags = SessionFlags {
            dead_after: Some(Duration::from_secs(1)),
            ..SessionFlags::default()
        };
        let err = session_config(file, Some(&section), &Deadlines::default(), &flags)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--dead-after: "), "{err}");
        assert!(err.contains("session.pingInterval"), "{err}");

        let zero = SessionSection {
            open_timeout: Some(Duration::ZERO),
            ..SessionSection::default()
        };
        let err = session_config(
            file,
            Some(&zero),
            &Deadlines::default(),
            &SessionFlags::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("session.openTimeout: "), "{err}");
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
        use crate::setting::Setting;

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
