//! Everything `edgestream` runs with, from one configuration file and the flags.
//!
//! How this fits: `main` parses [`Flags`], calls [`load`] and gets one typed, validated
//! [`Settings`], from which it builds `edge_stream::EdgeConfig`. The file is either tether's own
//! format (`apiVersion: tether.io/v1alpha1`, `kind: EdgeStream`; unknown keys are errors) or
//! KubeEdge's `edgecore.yaml` (read by [`crate::config`]). Precedence: defaults < file <
//! environment variables and flags. Every error names the key and the file, or the flag. The
//! format is documented key by key in `docs/configuration.md`.

use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_stream::{Backoff, Operations};
use serde::Deserialize;
use tunnel_session::SessionConfig;

use tether_cli::kubeedge::TlsPaths;
use tether_cli::tether_file::{
    self, Deadlines, Format, LogFormat, LogSection, LogSettings, SessionFlags, SessionSection,
    SettingsError, duration, duration_flag, key_error, path_key, path_or, positive, window_flag,
};

use crate::config::{self, EdgeStreamSettings};

/// `kind` of our format for this binary.
pub const KIND: &str = "EdgeStream";

/// A kubelet operation, as `--disable` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OperationArg {
    /// `kubectl logs`.
    Logs,
    /// `kubectl exec`, `kubectl cp`.
    Exec,
    /// `kubectl attach`.
    Attach,
    /// `kubectl port-forward`.
    PortForward,
    /// `/stats`, `/metrics` (`kubectl top`, metrics-server, Prometheus).
    Metrics,
}

/// Flags of `edgestream` (each also read from the environment variable shown by `--help`);
/// they override the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Flags {
    /// The cloud's tunnel endpoint, host:port (`edgeStream.server`).
    #[arg(long, env = "EDGESTREAM_SERVER", value_name = "HOST:PORT")]
    pub server: Option<String>,
    /// The kubelet to serve streams from, host:port. Default: edged, 127.0.0.1:10350.
    #[arg(long, env = "EDGESTREAM_KUBELET_ADDR", value_name = "HOST:PORT")]
    pub kubelet_addr: Option<String>,
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`), host:port. Default: off.
    #[arg(long, env = "EDGESTREAM_ADMIN_ADDR", value_name = "HOST:PORT")]
    pub admin_addr: Option<SocketAddr>,
    /// Accept any cloud certificate (stock edgecore's behaviour); logged as a warning.
    /// `--insecure-skip-verify=false` overrides a file that sets it.
    #[arg(long, env = "EDGESTREAM_INSECURE_SKIP_VERIFY", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_name = "BOOL",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure_skip_verify: Option<bool>,
    /// Speak only the KubeEdge dialect, even to a tether cloud.
    #[arg(long, env = "EDGESTREAM_KUBEEDGE_ONLY", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_name = "BOOL",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub kubeedge_only: Option<bool>,
    /// Operations to refuse with 403 (comma-separated or repeated), on top of the file's
    /// `operations`.
    #[arg(
        long = "disable",
        value_enum,
        env = "EDGESTREAM_DISABLE",
        value_delimiter = ','
    )]
    pub disable: Vec<OperationArg>,
    /// Per-stream buffer and window, bytes (at least 1024). Default: 1048576.
    #[arg(long, env = "EDGESTREAM_STREAM_WINDOW", value_name = "BYTES", value_parser = window_flag)]
    pub stream_window: Option<u32>,
    /// How long a stock-KubeEdge cloud may leave one stream's buffer full before that stream
    /// is closed, e.g. 5s (a bare number is seconds). Default: 5s.
    #[arg(long, env = "EDGESTREAM_STALL_LIMIT", value_name = "DURATION", value_parser = duration_flag)]
    pub stall_limit: Option<Duration>,
    /// Interval between pings to the cloud. Default: 5s.
    #[arg(long, env = "EDGESTREAM_PING_INTERVAL", value_name = "DURATION", value_parser = duration_flag)]
    pub ping_interval: Option<Duration>,
    /// Silence after which the cloud is dead and redialled (longer than the ping interval).
    /// Default: `readDeadline` (15s) in edgecore.yaml, 30s in tether's format.
    #[arg(long, env = "EDGESTREAM_DEAD_AFTER", value_name = "DURATION", value_parser = duration_flag)]
    pub dead_after: Option<Duration>,
    /// Deadline of each write to the tunnel. Default: `writeDeadline`, 15s.
    #[arg(long, env = "EDGESTREAM_WRITE_DEADLINE", value_name = "DURATION", value_parser = duration_flag)]
    pub write_deadline: Option<Duration>,
    /// Ceiling of the first reconnect wait. Default: 1s.
    #[arg(long, env = "EDGESTREAM_BACKOFF_INITIAL", value_name = "DURATION", value_parser = duration_flag)]
    pub backoff_initial: Option<Duration>,
    /// Cap on the reconnect wait. Default: 30s.
    #[arg(long, env = "EDGESTREAM_BACKOFF_MAX", value_name = "DURATION", value_parser = duration_flag)]
    pub backoff_max: Option<Duration>,
    /// Log format. Default: text.
    #[arg(long, value_enum, env = "EDGESTREAM_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `info,edge_stream=debug`. Default: `RUST_LOG`, else
    /// `log.level`, else info.
    #[arg(long, env = "EDGESTREAM_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
}

/// Our format for `edgestream`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EdgeStreamFile {
    #[allow(dead_code)] // checked by `tether_file::detect`
    api_version: String,
    kind: String,
    edge_stream: Option<EdgeStreamSection>,
    edged: Option<EdgedSection>,
    kubelet: Option<KubeletSection>,
    listen: Option<ListenSection>,
    session: Option<SessionSection>,
    operations: Option<OperationsSection>,
    backoff: Option<BackoffSection>,
    insecure_skip_verify: Option<bool>,
    kubeedge_only: Option<bool>,
    #[serde(default, deserialize_with = "duration")]
    drain_grace: Option<Duration>,
    log: Option<LogSection>,
}

/// `edgeStream:`: KubeEdge's `modules.edgeStream` keys, same names, meaning and units
/// (integer seconds).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EdgeStreamSection {
    server: Option<String>,
    #[serde(rename = "tlsTunnelCAFile")]
    tls_tunnel_ca_file: Option<PathBuf>,
    tls_tunnel_cert_file: Option<PathBuf>,
    tls_tunnel_private_key_file: Option<PathBuf>,
    handshake_timeout: Option<u64>,
    read_deadline: Option<u64>,
    write_deadline: Option<u64>,
}

/// `edged:`: KubeEdge's `modules.edged` keys edgestream uses.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EdgedSection {
    hostname_override: Option<String>,
    #[serde(rename = "nodeIP")]
    node_ip: Option<String>,
    tailored_kubelet_config: Option<TailoredKubeletConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TailoredKubeletConfig {
    address: Option<IpAddr>,
    read_only_port: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KubeletSection {
    address: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    connect_timeout: Option<Duration>,
    tls: Option<KubeletTlsSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KubeletTlsSection {
    #[serde(rename = "caFile")]
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    private_key_file: Option<PathBuf>,
    server_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ListenSection {
    admin: Option<SocketAddr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OperationsSection {
    logs: Option<bool>,
    exec: Option<bool>,
    attach: Option<bool>,
    port_forward: Option<bool>,
    metrics: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BackoffSection {
    #[serde(default, deserialize_with = "duration")]
    initial: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    max: Option<Duration>,
    multiplier: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    reset_after: Option<Duration>,
}

/// HTTPS towards a stock kubelet (10250): files as configured, checked readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletTls {
    /// CA the kubelet's serving certificate must chain to.
    pub ca: PathBuf,
    /// Client certificate and key presented to the kubelet, if any.
    pub client: Option<(PathBuf, PathBuf)>,
    /// Name to verify in the kubelet's certificate.
    pub server_name: String,
}

/// Everything `edgestream` runs with, merged and validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The configuration file.
    pub source: PathBuf,
    /// Its format.
    pub format: Format,
    /// Cloud address, tunnel TLS files, handshake timeout, node identity (KubeEdge's keys,
    /// whichever format they came from). `server` already has `--server` applied.
    pub edge_stream: EdgeStreamSettings,
    /// The kubelet to serve from, host:port.
    pub kubelet_addr: String,
    /// HTTPS towards the kubelet; `None` is plain HTTP (edged).
    pub kubelet_tls: Option<KubeletTls>,
    /// TCP connect (plus TLS) limit towards the kubelet.
    pub kubelet_connect_timeout: Duration,
    /// Where the admin listener binds; `None` turns it off.
    pub admin_addr: Option<SocketAddr>,
    /// Session tunables.
    pub session: SessionConfig,
    /// Per-operation switches.
    pub operations: Operations,
    /// Reconnect pacing.
    pub backoff: Backoff,
    /// Skip verifying the cloud's certificate.
    pub insecure_skip_verify: bool,
    /// Do not offer tether/2.
    pub kubeedge_only: bool,
    /// Time in-flight streams get on shutdown.
    pub drain_grace: Duration,
    /// Log format and filter.
    pub log: LogSettings,
    /// Things to log once logging is up (e.g. edgecore's own module is enabled too).
    pub warnings: Vec<String>,
}

/// Reads `file`, merges `flags` over it and validates the result, TLS files included.
pub fn load(file: &Path, flags: &Flags) -> Result<Settings, SettingsError> {
    let text = tether_file::read(file)?;
    let format = tether_file::detect(&text, file, KIND, "edgecore.config.kubeedge.io")?;
    let mut settings = match format {
        Format::Tether => from_tether(&text, file, flags)?,
        Format::KubeEdge => from_edgecore(&text, file, flags)?,
    };
    if let Some(server) = &flags.server {
        config::check_host_port(server).map_err(|problem| SettingsError::Flag {
            flag: "--server",
            problem,
        })?;
        settings.edge_stream.server = server.clone();
    }
    if let Some(addr) = &flags.kubelet_addr {
        config::check_host_port(addr).map_err(|problem| SettingsError::Flag {
            flag: "--kubelet-addr",
            problem,
        })?;
        settings.kubelet_addr = addr.clone();
    }
    config::check_readable(&settings.edge_stream, !settings.insecure_skip_verify)?;
    if let Some(tls) = &settings.kubelet_tls {
        let mut files = vec![("kubelet.tls.caFile", &tls.ca)];
        if let Some((cert, key)) = &tls.client {
            files.push(("kubelet.tls.certFile", cert));
            files.push(("kubelet.tls.privateKeyFile", key));
        }
        for (key, path) in files {
            tether_file::check_key_file(file, key, path)?;
        }
    }
    Ok(settings)
}

fn from_edgecore(text: &str, file: &Path, flags: &Flags) -> Result<Settings, SettingsError> {
    let edge_stream = config::parse_edgecore(text, file)?;
    let mut warnings = Vec::new();
    if edge_stream.module_enabled {
        warnings.push(format!(
            "{}.enable is true in {}: edgecore's own EdgeStream is enabled too and will \
             conflict with edgestream (two tunnels for one node keep replacing each other); set \
             it to false and restart edgecore",
            config::SECTION,
            file.display()
        ));
    }
    // KubeEdge's readDeadline and writeDeadline (unused by stock edgecore) become the
    // dead-peer deadline and the per-write deadline.
    let deadlines = Deadlines {
        dead_after: Some((
            edge_stream.read_deadline,
            format!("{}.readDeadline", config::SECTION),
        )),
        write_deadline: Some((
            edge_stream.write_deadline,
            format!("{}.writeDeadline", config::SECTION),
        )),
    };
    let session = tether_file::session_config(file, None, &deadlines, &session_flags(flags))?;
    let backoff = backoff(file, None, flags)?;
    let mut operations = Operations::default();
    disable(&mut operations, &flags.disable);
    Ok(Settings {
        source: file.to_owned(),
        format: Format::KubeEdge,
        kubelet_addr: edge_stream.kubelet_addr.to_string(),
        kubelet_tls: None,
        kubelet_connect_timeout: edge_stream::DEFAULT_KUBELET_CONNECT_TIMEOUT,
        admin_addr: flags.admin_addr,
        session,
        operations,
        backoff,
        insecure_skip_verify: flags.insecure_skip_verify.unwrap_or(false),
        kubeedge_only: flags.kubeedge_only.unwrap_or(false),
        drain_grace: edge_stream::DEFAULT_DRAIN_GRACE,
        log: LogSettings::merge(file, None, flags.log_format, flags.log_level.clone())?,
        edge_stream,
        warnings,
    })
}

fn from_tether(text: &str, file: &Path, flags: &Flags) -> Result<Settings, SettingsError> {
    let doc = tether_file::from_yaml(PhantomData::<EdgeStreamFile>, text, file)?;
    tether_file::check_kind(file, &doc.kind, KIND)?;
    let es = doc.edge_stream.unwrap_or_default();
    let edged = doc.edged.unwrap_or_default();
    let kubelet = doc.kubelet.unwrap_or_default();

    let server = es
        .server
        .unwrap_or_else(|| config::DEFAULT_SERVER.to_owned());
    config::check_host_port(&server).map_err(|p| key_error(file, "edgeStream.server", p))?;
    let seconds = |key: &str, value: Option<u64>, default: u64| match value {
        Some(0) => Err(key_error(
            file,
            &format!("edgeStream.{key}"),
            "expected a whole number of seconds (at least 1), found 0".into(),
        )),
        v => Ok(Duration::from_secs(v.unwrap_or(default))),
    };
    let handshake_timeout = seconds(
        "handshakeTimeout",
        es.handshake_timeout,
        config::DEFAULT_HANDSHAKE_TIMEOUT_SECS,
    )?;
    let read_deadline = seconds(
        "readDeadline",
        es.read_deadline,
        config::DEFAULT_READ_DEADLINE_SECS,
    )?;
    let write_deadline = seconds(
        "writeDeadline",
        es.write_deadline,
        config::DEFAULT_WRITE_DEADLINE_SECS,
    )?;
    let tls = |key: &str, value: Option<PathBuf>, default: &str| {
        path_or(file, &format!("edgeStream.{key}"), value, default)
    };

    let node_name = edged
        .hostname_override
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            key_error(
                file,
                "edged.hostnameOverride",
                "missing or empty; edgestream needs it: it is this node's name, sent to the cloud"
                    .into(),
            )
        })?;
    config::check_node_name(&node_name)
        .map_err(|p| key_error(file, "edged.hostnameOverride", p))?;
    let node_ip = match edged.node_ip.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) => Some(s.parse::<IpAddr>().map_err(|_| {
            key_error(
                file,
                "edged.nodeIP",
                format!("expected an IP address, found {s:?}"),
            )
        })?),
    };
    let tailored = edged.tailored_kubelet_config;
    let edged_kubelet = match &tailored {
        None => None,
        Some(t) => {
            if t.read_only_port == Some(0) {
                return Err(key_error(
                    file,
                    "edged.tailoredKubeletConfig.readOnlyPort",
                    "is 0, which turns off edged's read-only API that edgestream forwards to"
                        .into(),
                ));
            }
            let ip = match t.address {
                None => IpAddr::V4(Ipv4Addr::LOCALHOST),
                Some(IpAddr::V4(ip)) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                Some(IpAddr::V6(ip)) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                Some(ip) => ip,
            };
            Some(SocketAddr::new(
                ip,
                t.read_only_port.unwrap_or(config::DEFAULT_KUBELET_PORT),
            ))
        }
    };
    let default_kubelet = SocketAddr::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        config::DEFAULT_KUBELET_PORT,
    );
    let kubelet_addr = match (&kubelet.address, edged_kubelet) {
        (Some(_), Some(_)) => {
            return Err(key_error(
                file,
                "kubelet.address",
                "set here and as edged.tailoredKubeletConfig; keep one".into(),
            ));
        }
        (Some(addr), None) => {
            config::check_host_port(addr).map_err(|p| key_error(file, "kubelet.address", p))?;
            addr.clone()
        }
        (None, Some(addr)) => addr.to_string(),
        (None, None) => default_kubelet.to_string(),
    };
    positive(file, "kubelet.connectTimeout", kubelet.connect_timeout)?;
    let kubelet_tls = match kubelet.tls {
        None => None,
        Some(t) => {
            let ca = t.ca_file.ok_or_else(|| {
                key_error(
                    file,
                    "kubelet.tls.caFile",
                    "missing; HTTPS to the kubelet needs the CA of its serving certificate".into(),
                )
            })?;
            path_key(file, "kubelet.tls.caFile", Some(&ca))?;
            let client = match (t.cert_file, t.private_key_file) {
                (Some(cert), Some(key)) => {
                    path_key(file, "kubelet.tls.certFile", Some(&cert))?;
                    path_key(file, "kubelet.tls.privateKeyFile", Some(&key))?;
                    Some((cert, key))
                }
                (None, None) => None,
                (Some(_), None) => {
                    return Err(key_error(
                        file,
                        "kubelet.tls.privateKeyFile",
                        "missing; certFile needs its key".into(),
                    ));
                }
                (None, Some(_)) => {
                    return Err(key_error(
                        file,
                        "kubelet.tls.certFile",
                        "missing; privateKeyFile needs its certificate".into(),
                    ));
                }
            };
            let host = kubelet_addr
                .rsplit_once(':')
                .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
                .unwrap_or_default();
            let server_name = t.server_name.unwrap_or_else(|| host.to_owned());
            rustls::pki_types::ServerName::try_from(server_name.clone()).map_err(|e| {
                key_error(
                    file,
                    "kubelet.tls.serverName",
                    format!("{server_name:?} is not a DNS name or IP address: {e}"),
                )
            })?;
            Some(KubeletTls {
                ca,
                client,
                server_name,
            })
        }
    };

    let file_deadlines = Deadlines {
        dead_after: es
            .read_deadline
            .map(|_| (read_deadline, "edgeStream.readDeadline".to_owned())),
        write_deadline: es
            .write_deadline
            .map(|_| (write_deadline, "edgeStream.writeDeadline".to_owned())),
    };
    let session = tether_file::session_config(
        file,
        doc.session.as_ref(),
        &file_deadlines,
        &session_flags(flags),
    )?;
    let backoff = backoff(file, doc.backoff.as_ref(), flags)?;
    let ops = doc.operations.unwrap_or_default();
    let mut operations = Operations {
        logs: ops.logs.unwrap_or(true),
        exec: ops.exec.unwrap_or(true),
        attach: ops.attach.unwrap_or(true),
        port_forward: ops.port_forward.unwrap_or(true),
        metrics: ops.metrics.unwrap_or(true),
    };
    disable(&mut operations, &flags.disable);

    let edge_stream = EdgeStreamSettings {
        source: file.to_owned(),
        section: "edgeStream",
        module_enabled: false,
        server,
        tunnel: TlsPaths {
            ca: tls(
                "tlsTunnelCAFile",
                es.tls_tunnel_ca_file,
                config::DEFAULT_TUNNEL_CA,
            )?,
            cert: tls(
                "tlsTunnelCertFile",
                es.tls_tunnel_cert_file,
                config::DEFAULT_TUNNEL_CERT,
            )?,
            key: tls(
                "tlsTunnelPrivateKeyFile",
                es.tls_tunnel_private_key_file,
                config::DEFAULT_TUNNEL_KEY,
            )?,
        },
        handshake_timeout,
        read_deadline,
        write_deadline,
        node_name,
        node_ip,
        kubelet_addr: kubelet_addr.parse().unwrap_or(default_kubelet),
    };
    Ok(Settings {
        source: file.to_owned(),
        format: Format::Tether,
        kubelet_addr,
        kubelet_tls,
        kubelet_connect_timeout: kubelet
            .connect_timeout
            .unwrap_or(edge_stream::DEFAULT_KUBELET_CONNECT_TIMEOUT),
        admin_addr: flags.admin_addr.or(doc.listen.unwrap_or_default().admin),
        session,
        operations,
        backoff,
        insecure_skip_verify: flags
            .insecure_skip_verify
            .or(doc.insecure_skip_verify)
            .unwrap_or(false),
        kubeedge_only: flags.kubeedge_only.or(doc.kubeedge_only).unwrap_or(false),
        drain_grace: doc.drain_grace.unwrap_or(edge_stream::DEFAULT_DRAIN_GRACE),
        log: LogSettings::merge(
            file,
            doc.log.as_ref(),
            flags.log_format,
            flags.log_level.clone(),
        )?,
        edge_stream,
        warnings: Vec::new(),
    })
}

/// Reconnect pacing: defaults, then `backoff:`, then the flags; checked key by key.
fn backoff(
    file: &Path,
    section: Option<&BackoffSection>,
    flags: &Flags,
) -> Result<Backoff, SettingsError> {
    let defaults = Backoff::default();
    let (initial, max, multiplier, reset_after) = match section {
        Some(s) => (s.initial, s.max, s.multiplier, s.reset_after),
        None => (None, None, None, None),
    };
    for (key, value) in [
        ("backoff.initial", initial),
        ("backoff.max", max),
        ("backoff.resetAfter", reset_after),
    ] {
        positive(file, key, value)?;
    }
    if multiplier == Some(0) {
        return Err(key_error(
            file,
            "backoff.multiplier",
            "must be at least 1".into(),
        ));
    }
    let backoff = Backoff {
        initial: flags
            .backoff_initial
            .or(initial)
            .unwrap_or(defaults.initial),
        max: flags.backoff_max.or(max).unwrap_or(defaults.max),
        multiplier: multiplier.unwrap_or(defaults.multiplier),
        reset_after: reset_after.unwrap_or(defaults.reset_after),
    };
    if backoff.max < backoff.initial {
        let max_origin = tether_file::Origin::of(
            flags.backoff_max.is_some(),
            "--backoff-max",
            max.is_some(),
            "backoff.max",
        );
        let initial_origin = tether_file::Origin::of(
            flags.backoff_initial.is_some(),
            "--backoff-initial",
            initial.is_some(),
            "backoff.initial",
        );
        return Err(max_origin.error(
            file,
            "backoff.max",
            format!(
                "the cap ({}) is below the first wait ({}, from {})",
                humantime::format_duration(backoff.max),
                humantime::format_duration(backoff.initial),
                initial_origin.describe()
            ),
        ));
    }
    Ok(backoff)
}

fn disable(operations: &mut Operations, disabled: &[OperationArg]) {
    for op in disabled {
        match op {
            OperationArg::Logs => operations.logs = false,
            OperationArg::Exec => operations.exec = false,
            OperationArg::Attach => operations.attach = false,
            OperationArg::PortForward => operations.port_forward = false,
            OperationArg::Metrics => operations.metrics = false,
        }
    }
}

fn session_flags(flags: &Flags) -> SessionFlags {
    SessionFlags {
        stream_window: flags.stream_window,
        stall_limit: flags.stall_limit,
        ping_interval: flags.ping_interval,
        dead_after: flags.dead_after,
        write_deadline: flags.write_deadline,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn pki() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for name in ["ca.crt", "node.crt", "node.key"] {
            write(dir.path(), name, "-----BEGIN-----\n");
        }
        dir
    }

    fn ours(dir: &Path, extra: &str) -> PathBuf {
        let d = dir.display();
        write(
            dir,
            "edgestream.yaml",
            &format!(
                "apiVersion: tether.io/v1alpha1\nkind: EdgeStream\nedgeStream:\n\
                 \x20 server: 127.0.0.1:10004\n  tlsTunnelCAFile: {d}/ca.crt\n\
                 \x20 tlsTunnelCertFile: {d}/node.crt\n  tlsTunnelPrivateKeyFile: {d}/node.key\n\
                 edged:\n  hostnameOverride: edge-1\n{extra}"
            ),
        )
    }

    #[test]
    fn shipped_example_parses_and_validates() {
        let example =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config/edgestream.yaml");
        let text = std::fs::read_to_string(&example).unwrap();
        assert_eq!(
            tether_file::detect(&text, &example, KIND, "edgecore.config.kubeedge.io").unwrap(),
            Format::Tether
        );
        let settings = from_tether(&text, &example, &Flags::default()).unwrap();
        assert_eq!(settings.edge_stream.node_name, "edge-1");
        assert_eq!(settings.kubelet_addr, "127.0.0.1:10350");
        assert!(!settings.operations.exec);
        assert!(settings.operations.logs);
        assert_eq!(
            settings.admin_addr,
            Some("127.0.0.1:10006".parse().unwrap())
        );
    }

    #[test]
    fn defaults_file_and_flags_layer() {
        let dir = pki();
        let file = ours(
            dir.path(),
            "kubelet:\n  address: 127.0.0.1:10250\n  connectTimeout: 500ms\n\
             session:\n  pingInterval: 1s\n  deadAfter: 4s\n\
             operations:\n  exec: false\nbackoff:\n  initial: 100ms\n  max: 2s\n\
             kubeedgeOnly: true\ndrainGrace: 1s\n",
        );
        let settings = load(&file, &Flags::default()).unwrap();
        assert_eq!(settings.kubelet_addr, "127.0.0.1:10250");
        assert_eq!(settings.kubelet_connect_timeout, Duration::from_millis(500));
        assert_eq!(settings.session.dead_after, Duration::from_secs(4));
        assert!(!settings.operations.exec);
        assert_eq!(settings.backoff.initial, Duration::from_millis(100));
        assert!(settings.kubeedge_only);
        assert_eq!(settings.drain_grace, Duration::from_secs(1));

        let flags = Flags {
            kubeedge_only: Some(false),
            disable: vec![OperationArg::Logs],
            backoff_max: Some(Duration::from_secs(9)),
            server: Some("cloud.example:443".into()),
            ..Flags::default()
        };
        let settings = load(&file, &flags).unwrap();
        assert!(!settings.kubeedge_only);
        assert!(!settings.operations.logs && !settings.operations.exec);
        assert_eq!(settings.backoff.max, Duration::from_secs(9));
        assert_eq!(settings.edge_stream.server, "cloud.example:443");

        let flags = Flags {
            backoff_initial: Some(Duration::from_secs(5)),
            ..Flags::default()
        };
        let message = load(&file, &flags).unwrap_err().to_string();
        assert!(message.starts_with("backoff.max: "), "{message}");
        assert!(message.contains("--backoff-initial"), "{message}");
    }

    #[test]
    fn errors_name_the_key_and_the_file() {
        let dir = pki();
        for (extra, key) in [
            ("bogus: 1\n", "bogus"),
            ("operations:\n  shell: true\n", "operations.shell"),
            ("kubelet:\n  address: localhost\n", "kubelet.address"),
            (
                "kubelet:\n  tls:\n    certFile: /x\n    caFile: /y\n",
                "kubelet.tls.privateKeyFile",
            ),
            (
                "kubelet:\n  tls:\n    caFile: /nonexistent/ca.crt\n",
                "kubelet.tls.caFile",
            ),
            ("backoff:\n  initial: 0s\n", "backoff.initial"),
            ("insecureSkipVerify: maybe\n", "insecureSkipVerify"),
        ] {
            let file = ours(dir.path(), extra);
            let result = load(&file, &Flags::default());
            let message = result.unwrap_err().to_string();
            assert!(
                message.starts_with(&format!("{key}: ")),
                "{extra:?}: {message}"
            );
            assert!(
                message.contains(&file.display().to_string()),
                "{extra:?}: {message}"
            );
        }
        // deadAfter and KubeEdge's readDeadline are one setting: set one.
        let file = ours(dir.path(), "session:\n  deadAfter: 20s\n");
        let text = std::fs::read_to_string(&file)
            .unwrap()
            .replace("edgeStream:\n", "edgeStream:\n  readDeadline: 10\n");
        std::fs::write(&file, text).unwrap();
        let message = load(&file, &Flags::default()).unwrap_err().to_string();
        assert!(message.starts_with("session.deadAfter: "), "{message}");
        assert!(message.contains("edgeStream.readDeadline"), "{message}");

        let file = write(
            dir.path(),
            "noname.yaml",
            "apiVersion: tether.io/v1alpha1\nkind: EdgeStream\n",
        );
        let message = load(&file, &Flags::default()).unwrap_err().to_string();
        assert!(message.starts_with("edged.hostnameOverride: "), "{message}");
    }

    #[test]
    fn edgecore_yaml_still_works_and_enable_only_warns() {
        let dir = pki();
        let d = dir.path().display();
        let body = |enable: &str| {
            format!(
                "apiVersion: edgecore.config.kubeedge.io/v1alpha2\nmodules:\n  edgeStream:\n\
                 \x20   enable: {enable}\n    tlsTunnelCAFile: {d}/ca.crt\n\
                 \x20   tlsTunnelCertFile: {d}/node.crt\n    tlsTunnelPrivateKeyFile: {d}/node.key\n\
                 \x20 edged:\n    hostnameOverride: edge-1\n"
            )
        };
        let off = write(dir.path(), "off.yaml", &body("false"));
        let settings = load(&off, &Flags::default()).unwrap();
        assert_eq!(settings.format, Format::KubeEdge);
        assert!(settings.warnings.is_empty());
        assert_eq!(settings.session.dead_after, Duration::from_secs(15));
        let on = write(dir.path(), "on.yaml", &body("true"));
        let settings = load(&on, &Flags::default()).unwrap();
        assert_eq!(settings.warnings.len(), 1);
        assert!(settings.warnings[0].contains("modules.edgeStream.enable"));
    }
}
