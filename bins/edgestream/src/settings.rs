//! Everything `edgestream` runs with, from one configuration file and the flags.
//!
//! How this fits: `main` parses [`Flags`], calls [`load`] and gets one typed, validated
//! [`Settings`], from which it builds `edge_stream::EdgeConfig`. The file is either tether's own
//! format (`apiVersion: tether.io/v1alpha1`, `kind: EdgeStream`; unknown keys are errors) or
//! KubeEdge's `edgecore.yaml`, of which only the keys declared with a KubeEdge path are read
//! (KubeEdge's defaults and readers are in [`crate::config`]). Each setting is declared once,
//! below: its key in each format, its flag and environment variable, its default and its check;
//! precedence: defaults < file < environment variables and flags. Every error names the key and
//! the file, or the flag. The format is documented key by key in `docs/configuration.md`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_stream::{Backoff, Operations};
use tunnel_session::SessionConfig;
use tunnel_session::config as session;

use tether_cli::check;
use tether_cli::kubeedge::{Doc, TlsPaths};
use tether_cli::setting::{Setting, Source};
use tether_cli::tether_file::{
    self, Format, LogFormat, LogSettings, Origin, SettingsError, duration, duration_flag,
    key_error, whole_seconds, window_flag,
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

tether_cli::settings! {
    /// Flags of `edgestream` (each also read from the environment variable shown by `--help`);
    /// they override the file.
    pub struct Flags {
        /// The kubelet to serve streams from, host:port. Default: edged, 127.0.0.1:10350.
        #[arg(long, env = "EDGESTREAM_KUBELET_ADDR", value_name = "HOST:PORT")]
        pub kubelet_addr: Option<String>,
        /// Operations to refuse with 403 (comma-separated or repeated), on top of the file's
        /// `operations`.
        #[arg(
            long = "disable",
            value_enum,
            env = "EDGESTREAM_DISABLE",
            value_delimiter = ','
        )]
        pub disable: Vec<OperationArg>,
    }
    /// Every setting of `edgestream`, layered and checked one by one.
    pub struct Values;
    /// The keys of our format for `edgestream`.
    struct FileValues;

    // `edgeStream:` in our format, `modules.edgeStream` of edgecore.yaml (whole seconds in
    // both, as KubeEdge has them).
    /// The cloud's tunnel endpoint, host:port (`edgeStream.server`).
    server: String {
        key: "edgeStream.server",
        kubeedge: "modules.edgeStream.server" => Doc::string,
        flag: ("server", env = "EDGESTREAM_SERVER", value_name = "HOST:PORT"),
        default: config::DEFAULT_SERVER.to_owned(),
        check: config::check_host_port,
    }
    /// CA the cloud's certificate must chain to (read unless `insecureSkipVerify`).
    tls_tunnel_ca_file: PathBuf {
        key: "edgeStream.tlsTunnelCAFile",
        kubeedge: "modules.edgeStream.tlsTunnelCAFile" => Doc::path,
        default: PathBuf::from(config::DEFAULT_TUNNEL_CA),
        check: check::file_path,
    }
    /// The node certificate.
    tls_tunnel_cert_file: PathBuf {
        key: "edgeStream.tlsTunnelCertFile",
        kubeedge: "modules.edgeStream.tlsTunnelCertFile" => Doc::path,
        default: PathBuf::from(config::DEFAULT_TUNNEL_CERT),
        check: check::file_path,
    }
    /// Its key.
    tls_tunnel_private_key_file: PathBuf {
        key: "edgeStream.tlsTunnelPrivateKeyFile",
        kubeedge: "modules.edgeStream.tlsTunnelPrivateKeyFile" => Doc::path,
        default: PathBuf::from(config::DEFAULT_TUNNEL_KEY),
        check: check::file_path,
    }
    /// TCP + TLS + upgrade towards the cloud.
    handshake_timeout: Duration {
        key: "edgeStream.handshakeTimeout",
        yaml: whole_seconds,
        kubeedge: "modules.edgeStream.handshakeTimeout" => Doc::seconds,
        default: Duration::from_secs(config::DEFAULT_HANDSHAKE_TIMEOUT_SECS),
        check: check::whole_seconds,
    }
    /// Dead-peer deadline: `session.deadAfter` in other words (edgecore.yaml: always, 15 by
    /// default; our format: only when set).
    edge_read_deadline: Duration {
        key: "edgeStream.readDeadline",
        yaml: whole_seconds,
        kubeedge: "modules.edgeStream.readDeadline" => Doc::seconds,
        default: Duration::from_secs(config::DEFAULT_READ_DEADLINE_SECS),
        check: check::whole_seconds,
    }
    /// Per-write deadline: `session.writeDeadline` in other words (as `readDeadline`).
    edge_write_deadline: Duration {
        key: "edgeStream.writeDeadline",
        yaml: whole_seconds,
        kubeedge: "modules.edgeStream.writeDeadline" => Doc::seconds,
        default: Duration::from_secs(config::DEFAULT_WRITE_DEADLINE_SECS),
        check: check::whole_seconds,
    }

    // `edged:` in our format, `modules.edged` of edgecore.yaml.
    /// This node's name, sent to the cloud (required).
    node_name: String {
        key: "edged.hostnameOverride",
        kubeedge: "modules.edged.hostnameOverride" => Doc::string,
        check: config::check_node_name_if_set,
    }
    /// This node's IP, sent to the cloud; empty is unset.
    node_ip: String {
        key: "edged.nodeIP",
        kubeedge: "modules.edged.nodeIP" => Doc::string,
        check: check::ip_or_empty,
    }
    /// edged's address (default 127.0.0.1; 0.0.0.0 / :: are dialled on loopback).
    kubelet_ip: IpAddr {
        key: "edged.tailoredKubeletConfig.address",
        kubeedge: "modules.edged.tailoredKubeletConfig.address" => config::kubelet_ip,
    }
    /// edged's read-only port.
    kubelet_port: u16 {
        key: "edged.tailoredKubeletConfig.readOnlyPort",
        kubeedge: "modules.edged.tailoredKubeletConfig.readOnlyPort" => config::kubelet_port,
        default: config::DEFAULT_KUBELET_PORT,
        check: config::read_only_port,
    }

    // `kubelet:`
    /// The kubelet every stream is served from, host:port (instead of edged's).
    kubelet_address: String {
        key: "kubelet.address",
        check: config::check_host_port,
    }
    /// TCP connect plus TLS to the kubelet.
    kubelet_connect_timeout: Duration {
        key: "kubelet.connectTimeout",
        yaml: duration,
        default: edge_stream::DEFAULT_KUBELET_CONNECT_TIMEOUT,
        check: check::positive,
    }
    /// HTTPS to a stock kubelet: the CA of its serving certificate (required with `tls`).
    kubelet_ca_file: PathBuf {
        key: "kubelet.tls.caFile",
        check: check::file_path,
    }
    /// Client certificate presented to the kubelet (with its key).
    kubelet_cert_file: PathBuf {
        key: "kubelet.tls.certFile",
        check: check::file_path,
    }
    /// Its key.
    kubelet_private_key_file: PathBuf {
        key: "kubelet.tls.privateKeyFile",
        check: check::file_path,
    }
    /// Name to verify in the kubelet's certificate. Default: the host of the kubelet address.
    kubelet_server_name: String {
        key: "kubelet.tls.serverName",
    }

    // `listen:`
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`), host:port. Default: off.
    admin_addr: SocketAddr {
        key: "listen.admin",
        flag: ("admin-addr", env = "EDGESTREAM_ADMIN_ADDR", value_name = "HOST:PORT"),
    }

    // `session:`
    /// Per-stream buffer and window, bytes (at least 1024). Default: 1048576.
    stream_window: u32 {
        key: "session.streamWindow",
        flag: ("stream-window", env = "EDGESTREAM_STREAM_WINDOW", value_name = "BYTES",
               value_parser = window_flag),
        default: session::DEFAULT_STREAM_WINDOW,
        check: check::stream_window,
    }
    /// How long a stock-KubeEdge cloud may leave one stream's buffer full before that stream
    /// is closed, e.g. 5s (a bare number is seconds). Default: 5s.
    stall_limit: Duration {
        key: "session.stallLimit",
        yaml: duration,
        flag: ("stall-limit", env = "EDGESTREAM_STALL_LIMIT", value_name = "DURATION",
               value_parser = duration_flag),
        default: session::DEFAULT_STALL_LIMIT,
        check: check::positive,
    }
    /// Interval between pings to the cloud. Default: 5s.
    ping_interval: Duration {
        key: "session.pingInterval",
        yaml: duration,
        flag: ("ping-interval", env = "EDGESTREAM_PING_INTERVAL", value_name = "DURATION",
               value_parser = duration_flag),
        default: session::DEFAULT_PING_INTERVAL,
        check: check::positive,
    }
    /// Silence after which the cloud is dead and redialled (longer than the ping interval).
    /// Default: `readDeadline` (15s) in edgecore.yaml, 30s in tether's format.
    dead_after: Duration {
        key: "session.deadAfter",
        yaml: duration,
        flag: ("dead-after", env = "EDGESTREAM_DEAD_AFTER", value_name = "DURATION",
               value_parser = duration_flag),
        default: session::DEFAULT_DEAD_AFTER,
        check: check::positive,
    }
    /// Deadline of each write to the tunnel. Default: `writeDeadline`, 15s.
    write_deadline: Duration {
        key: "session.writeDeadline",
        yaml: duration,
        flag: ("write-deadline", env = "EDGESTREAM_WRITE_DEADLINE", value_name = "DURATION",
               value_parser = duration_flag),
        default: session::DEFAULT_WRITE_DEADLINE,
        check: check::positive,
    }
    /// Messages queued for the writer task.
    write_queue: usize {
        key: "session.writeQueue",
        default: session::DEFAULT_WRITE_QUEUE,
        check: check::at_least_one,
    }
    /// Streams open at once on the session.
    max_streams: usize {
        key: "session.maxStreams",
        default: session::DEFAULT_MAX_STREAMS,
        check: check::at_least_one,
    }
    /// Largest DATA payload per message, bytes.
    max_data_chunk: usize {
        key: "session.maxDataChunk",
        default: session::DEFAULT_MAX_DATA_CHUNK,
        check: check::data_chunk,
    }
    /// Compress logs/stats/metrics bodies when the cloud offers to decode them (tether/2).
    /// Default: true.
    compress_bodies: bool {
        key: "session.compressBodies",
        flag: ("compress-bodies", env = "EDGESTREAM_COMPRESS_BODIES", num_args = 0..=1,
               require_equals = true, default_missing_value = "true", value_name = "BOOL",
               value_parser = clap::builder::BoolishValueParser::new()),
        default: true,
    }
    /// Largest receive window one stream grows to on a long, fast link (tether/2), bytes; at
    /// least `streamWindow`, which it equals to keep windows fixed. Default: 16 MiB.
    max_stream_window: u32 {
        key: "session.maxStreamWindow",
        default: session::DEFAULT_MAX_STREAM_WINDOW,
        check: check::stream_window,
    }
    /// Bytes of receive windows above `streamWindow` all streams of one session may hold
    /// (tether/2). Default: 64 MiB.
    session_window_budget: u64 {
        key: "session.sessionWindowBudget",
        default: session::DEFAULT_SESSION_WINDOW_BUDGET,
    }
    /// Bytes the kernel may keep unsent on the tunnel socket (`TCP_NOTSENT_LOWAT`); 0 leaves
    /// the kernel's default. Default: 16384.
    unsent_limit: u32 {
        key: "session.unsentLimit",
        default: session::DEFAULT_UNSENT_LIMIT,
    }
    /// Wait for an open result (tether/2).
    open_timeout: Duration {
        key: "session.openTimeout",
        yaml: duration,
        default: session::DEFAULT_OPEN_TIMEOUT,
        check: check::positive,
    }

    // `operations:`: what the cloud may ask this node's kubelet for.
    /// `kubectl logs`.
    logs: bool {
        key: "operations.logs",
        default: true,
    }
    /// `kubectl exec`, `kubectl cp`.
    exec: bool {
        key: "operations.exec",
        default: true,
    }
    /// `kubectl attach`.
    attach: bool {
        key: "operations.attach",
        default: true,
    }
    /// `kubectl port-forward`.
    port_forward: bool {
        key: "operations.portForward",
        default: true,
    }
    /// `/stats`, `/metrics`.
    metrics: bool {
        key: "operations.metrics",
        default: true,
    }

    // `backoff:`
    /// Ceiling of the first reconnect wait. Default: 1s.
    backoff_initial: Duration {
        key: "backoff.initial",
        yaml: duration,
        flag: ("backoff-initial", env = "EDGESTREAM_BACKOFF_INITIAL", value_name = "DURATION",
               value_parser = duration_flag),
        default: Backoff::default().initial,
        check: check::positive,
    }
    /// Cap on the reconnect wait. Default: 30s.
    backoff_max: Duration {
        key: "backoff.max",
        yaml: duration,
        flag: ("backoff-max", env = "EDGESTREAM_BACKOFF_MAX", value_name = "DURATION",
               value_parser = duration_flag),
        default: Backoff::default().max,
        check: check::positive,
    }
    /// Growth of the wait per failed attempt.
    backoff_multiplier: u32 {
        key: "backoff.multiplier",
        default: Backoff::default().multiplier,
        check: check::at_least_one,
    }
    /// A session up this long resets the backoff.
    backoff_reset_after: Duration {
        key: "backoff.resetAfter",
        yaml: duration,
        default: Backoff::default().reset_after,
        check: check::positive,
    }

    // Top level.
    /// Accept any cloud certificate (stock edgecore's behaviour); logged as a warning.
    /// `--insecure-skip-verify=false` overrides a file that sets it.
    insecure_skip_verify: bool {
        key: "insecureSkipVerify",
        flag: ("insecure-skip-verify", env = "EDGESTREAM_INSECURE_SKIP_VERIFY", num_args = 0..=1,
               require_equals = true, default_missing_value = "true", value_name = "BOOL",
               value_parser = clap::builder::BoolishValueParser::new()),
        default: false,
    }
    /// Speak only the KubeEdge dialect, even to a tether cloud.
    kubeedge_only: bool {
        key: "kubeedgeOnly",
        flag: ("kubeedge-only", env = "EDGESTREAM_KUBEEDGE_ONLY", num_args = 0..=1,
               require_equals = true, default_missing_value = "true", value_name = "BOOL",
               value_parser = clap::builder::BoolishValueParser::new()),
        default: false,
    }
    /// On shutdown, how long open streams may run (0 cuts them at once).
    drain_grace: Duration {
        key: "drainGrace",
        yaml: duration,
        default: edge_stream::DEFAULT_DRAIN_GRACE,
    }

    // `log:`
    /// Log format. Default: text.
    log_format: LogFormat {
        key: "log.format",
        flag: ("log-format", value_enum, env = "EDGESTREAM_LOG_FORMAT"),
        default: LogFormat::default(),
    }
    /// Log filter, e.g. `info` or `info,edge_stream=debug`. Default: `RUST_LOG`, else
    /// `log.level`, else info.
    log_level: String {
        key: "log.level",
        flag: ("log-level", env = "EDGESTREAM_LOG_LEVEL", value_name = "FILTER"),
        check: check::log_filter,
    }
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
    /// Compress plain bodies when the cloud offers to decode them.
    pub compress_bodies: bool,
    /// Log format and filter.
    pub log: LogSettings,
    /// Things to log once logging is up (e.g. edgecore's own module is enabled too).
    pub warnings: Vec<String>,
}

/// Reads `file`, merges `flags` over it and validates the result, TLS files included.
pub fn load(file: &Path, flags: &Flags) -> Result<Settings, SettingsError> {
    let text = tether_file::read(file)?;
    let format = tether_file::detect(&text, file, KIND, config::API_GROUP)?;
    let mut settings = match format {
        Format::Tether => from_tether(&text, file, flags)?,
        Format::KubeEdge => from_edgecore(&text, file, flags)?,
    };
    // It replaces the kubelet address however that was configured (`kubelet.address`, edged's
    // keys or the default), once the rest is settled.
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
    settings(&Source::kubeedge(text, file, config::API_GROUP)?, flags)
}

fn from_tether(text: &str, file: &Path, flags: &Flags) -> Result<Settings, SettingsError> {
    settings(&Source::tether(text, file, KIND)?, flags)
}

/// The settings from either format: the declared ones layered, then what ties them together.
fn settings(source: &Source<'_, FileValues>, flags: &Flags) -> Result<Settings, SettingsError> {
    let file = source.file();
    let kubeedge = source.format() == Format::KubeEdge;
    // `enable` exists only in edgecore.yaml, where it may not be what we want: warn only.
    let module_enabled = match source.kubeedge_doc() {
        Some(doc) => doc
            .bool(&format!("{}.enable", config::SECTION))?
            .unwrap_or(false),
        None => false,
    };
    let v = Values::resolve(source, flags)?;
    let mut warnings = Vec::new();
    if module_enabled {
        warnings.push(format!(
            "{}.enable is true in {}: edgecore's own EdgeStream is enabled too and will \
             conflict with edgestream (two tunnels for one node keep replacing each other); set \
             it to false and restart edgecore",
            config::SECTION,
            file.display()
        ));
    }

    let node_name = v
        .node_name
        .value
        .clone()
        .filter(|name| !name.is_empty())
        .ok_or_else(|| {
            v.node_name.error(
                file,
                "missing or empty; edgestream needs it: it is this node's name, sent to the cloud"
                    .to_owned(),
            )
        })?;
    // Checked: blank or an address.
    let node_ip = v
        .node_ip
        .value
        .as_deref()
        .and_then(|ip| ip.trim().parse().ok());

    // The kubelet: `kubelet.address`, or edged's (its keys, or their defaults).
    let edged_kubelet = config::edged_kubelet(v.kubelet_ip.value, v.kubelet_port.value);
    if v.kubelet_address.in_file && source.has_section("edged.tailoredKubeletConfig") {
        return Err(key_error(
            file,
            v.kubelet_address.key,
            "set here and as edged.tailoredKubeletConfig; keep one".into(),
        ));
    }
    let kubelet_addr = match &v.kubelet_address.value {
        Some(addr) => addr.clone(),
        None => edged_kubelet.to_string(),
    };
    let kubelet_tls = if source.has_section("kubelet.tls") {
        Some(kubelet_tls(file, &v, &kubelet_addr)?)
    } else {
        None
    };

    // KubeEdge's readDeadline and writeDeadline (unused by stock edgecore) are the dead-peer
    // deadline and the per-write deadline: always in edgecore.yaml, where they have defaults;
    // in our format when set, and then not also in `session:`.
    let deadline = |session: &Setting<Duration>,
                    edge: &Setting<Duration>|
     -> Result<(Duration, Origin), SettingsError> {
        let applies = kubeedge || edge.in_file;
        if applies && session.in_file {
            return Err(key_error(
                file,
                session.key,
                format!("set here and as {}; keep one", edge.key),
            ));
        }
        Ok(match session.origin {
            Origin::Default if applies => (edge.value, Origin::Key(edge.key.to_owned())),
            _ => (session.value, session.origin.clone()),
        })
    };
    let (dead_after, dead_after_origin) = deadline(&v.dead_after, &v.edge_read_deadline)?;
    let (write_deadline, _) = deadline(&v.write_deadline, &v.edge_write_deadline)?;
    let session = SessionConfig {
        stream_window: v.stream_window.value,
        stall_limit: v.stall_limit.value,
        ping_interval: v.ping_interval.value,
        dead_after,
        write_deadline,
        write_queue: v.write_queue.value,
        max_streams: v.max_streams.value,
        max_data_chunk: v.max_data_chunk.value,
        max_stream_window: v.max_stream_window.value,
        session_window_budget: v.session_window_budget.value,
        unsent_limit: v.unsent_limit.value,
        open_timeout: v.open_timeout.value,
    };
    tether_file::check_session(file, &session, &dead_after_origin, &v.ping_interval.origin)?;

    let backoff = Backoff {
        initial: v.backoff_initial.value,
        max: v.backoff_max.value,
        multiplier: v.backoff_multiplier.value,
        reset_after: v.backoff_reset_after.value,
    };
    if backoff.max < backoff.initial {
        return Err(v.backoff_max.error(
            file,
            format!(
                "the cap ({}) is below the first wait ({}, from {})",
                humantime::format_duration(backoff.max),
                humantime::format_duration(backoff.initial),
                v.backoff_initial.origin.describe()
            ),
        ));
    }
    let mut operations = Operations {
        logs: v.logs.value,
        exec: v.exec.value,
        attach: v.attach.value,
        port_forward: v.port_forward.value,
        metrics: v.metrics.value,
    };
    disable(&mut operations, &flags.disable);

    let edge_stream = EdgeStreamSettings {
        source: file.to_owned(),
        section: if kubeedge {
            config::SECTION
        } else {
            "edgeStream"
        },
        module_enabled,
        server: v.server.value,
        tunnel: TlsPaths {
            ca: v.tls_tunnel_ca_file.value,
            cert: v.tls_tunnel_cert_file.value,
            key: v.tls_tunnel_private_key_file.value,
        },
        handshake_timeout: v.handshake_timeout.value,
        read_deadline: v.edge_read_deadline.value,
        write_deadline: v.edge_write_deadline.value,
        node_name,
        node_ip,
        kubelet_addr: kubelet_addr.parse().unwrap_or(edged_kubelet),
    };
    Ok(Settings {
        source: file.to_owned(),
        format: source.format(),
        kubelet_addr,
        kubelet_tls,
        kubelet_connect_timeout: v.kubelet_connect_timeout.value,
        admin_addr: v.admin_addr.value,
        session,
        operations,
        backoff,
        insecure_skip_verify: v.insecure_skip_verify.value,
        kubeedge_only: v.kubeedge_only.value,
        drain_grace: v.drain_grace.value,
        compress_bodies: v.compress_bodies.value,
        log: LogSettings::new(v.log_format.value, &v.log_level),
        edge_stream,
        warnings,
    })
}

/// `kubelet.tls`, present: the CA is required, the client certificate and key come together,
/// and the name to verify defaults to the host of `kubelet_addr`.
fn kubelet_tls(file: &Path, v: &Values, kubelet_addr: &str) -> Result<KubeletTls, SettingsError> {
    let ca = v.kubelet_ca_file.value.clone().ok_or_else(|| {
        v.kubelet_ca_file.error(
            file,
            "missing; HTTPS to the kubelet needs the CA of its serving certificate".into(),
        )
    })?;
    let (cert, key) = (&v.kubelet_cert_file, &v.kubelet_private_key_file);
    let client = match (&cert.value, &key.value) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None) => None,
        (Some(_), None) => {
            return Err(key.error(file, "missing; certFile needs its key".into()));
        }
        (None, Some(_)) => {
            return Err(cert.error(file, "missing; privateKeyFile needs its certificate".into()));
        }
    };
    let host = kubelet_addr
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or_default();
    let server_name = v
        .kubelet_server_name
        .value
        .clone()
        .unwrap_or_else(|| host.to_owned());
    rustls::pki_types::ServerName::try_from(server_name.clone()).map_err(|e| {
        key_error(
            file,
            v.kubelet_server_name.key,
            format!("{server_name:?} is not a DNS name or IP address: {e}"),
        )
    })?;
    Ok(KubeletTls {
        ca,
        client,
        server_name,
    })
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

    // edgecore.yaml: the `modules.edgeStream` and `modules.edged` keys, nothing else.

    const FILE: &str = "/etc/kubeedge/config/edgecore.yaml";

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    /// A minimal enabled file with `extra` appended under `modules:`.
    fn parse_with(edge_stream: &str, edged: &str) -> Result<EdgeStreamSettings, SettingsError> {
        let yaml = format!(
            "apiVersion: edgecore.config.kubeedge.io/v1alpha2\nkind: EdgeCore\nmodules:\n\
             \x20 edgeStream:\n    enable: true\n{edge_stream}\
             \x20 edged:\n    enable: true\n{edged}"
        );
        parse_edgecore(&yaml, Path::new(FILE))
    }

    /// The tunnel settings from an `edgecore.yaml`, without opening the files it names.
    fn parse_edgecore(text: &str, file: &Path) -> Result<EdgeStreamSettings, SettingsError> {
        from_edgecore(text, file, &Flags::default()).map(|s| s.edge_stream)
    }

    fn load_edgecore(file: &Path) -> Result<EdgeStreamSettings, SettingsError> {
        parse_edgecore(&tether_file::read(file)?, file)
    }

    fn parse_edged(edged: &str) -> Result<EdgeStreamSettings, SettingsError> {
        parse_with("", edged)
    }

    const NAME: &str = "    hostnameOverride: edge-1\n";

    /// Asserts an error about `key` whose message names the key and the file.
    fn assert_invalid(result: Result<EdgeStreamSettings, SettingsError>, key: &str) {
        let message = result.expect_err("expected an error").to_string();
        assert!(message.starts_with(&format!("{key}: ")), "{message}");
        assert!(message.ends_with(&format!("(in {FILE})")), "{message}");
    }

    #[test]
    fn keadm_style_edgecore_yaml_parses() {
        let file = fixture("edgecore.yaml");
        let settings = load_edgecore(&file).unwrap();
        assert_eq!(
            settings,
            EdgeStreamSettings {
                source: file,
                section: config::SECTION,
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
        assert_eq!(without_section.server, config::DEFAULT_SERVER);
    }

    #[test]
    fn edgecore_defaults_apply_to_absent_keys() {
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
    fn edgecore_explicit_values_win() {
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
    fn edgecore_hostname_override_is_required() {
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
    fn edgecore_bad_values_name_the_key_path_and_the_file() {
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
        let dir = pki();
        let missing = dir.path().join("missing.yaml");
        let err = load(&missing, &Flags::default()).unwrap_err();
        assert!(matches!(err, SettingsError::Read { .. }));
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
        let broken = write(
            dir.path(),
            "broken.yaml",
            "modules:\n  edgeStream: {enable: true\n",
        );
        let err = load(&broken, &Flags::default()).unwrap_err();
        assert!(
            err.to_string().contains(&broken.display().to_string()),
            "{err}"
        );
    }
}
