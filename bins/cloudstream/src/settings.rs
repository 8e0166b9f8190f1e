//! Everything `cloudstream` runs with, from one configuration file and the flags.
//!
//! How this fits: `main` parses [`Flags`], calls [`load`] and gets one typed, validated
//! [`Settings`], from which it builds the library configurations. The file is either tether's
//! own format (`apiVersion: tether.io/v1alpha1`, `kind: CloudStream`; unknown keys are errors)
//! or KubeEdge's `cloudcore.yaml`, of which only the keys declared with a KubeEdge path are read
//! (KubeEdge's defaults are in [`crate::config`]). Each setting is declared once, below: its key
//! in each format, its flag and environment variable, its default and its check; precedence:
//! defaults < file < environment variables and flags. Every error names the key and the file, or
//! the flag. The format is documented key by key in `docs/configuration.md`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use stream_server::StreamServerConfig;
use tunnel_session::SessionConfig;
use tunnel_session::config as session;
use tunnel_session::server::TunnelServerConfig;

use tether_cli::check;
use tether_cli::kubeedge::{Doc, TlsPaths};
use tether_cli::setting::{Setting, Source};
use tether_cli::tether_file::{
    self, Format, LogFormat, LogSettings, SettingsError, duration, duration_flag, key_error,
    window_flag,
};

use crate::config::{self, CloudStreamSettings};

/// `kind` of our format for this binary.
pub const KIND: &str = "CloudStream";
/// Host the listeners bind when only a port is configured (`tunnelPort`, `streamPort`).
pub const DEFAULT_LISTEN_HOST: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

tether_cli::settings! {
    /// Flags of `cloudstream` (each also read from the environment variable shown by `--help`);
    /// they override the file.
    pub struct Flags {}
    /// Every setting of `cloudstream`, layered and checked one by one.
    pub struct Values;
    /// The keys of our format for `cloudstream`.
    struct FileValues;

    // `cloudStream:` in our format, `modules.cloudStream` of cloudcore.yaml.
    /// Port of the websocket tunnel listener that edges dial, on all interfaces.
    tunnel_port: u16 {
        key: "cloudStream.tunnelPort",
        kubeedge: "modules.cloudStream.tunnelPort" => Doc::port,
        default: config::DEFAULT_TUNNEL_PORT,
        check: check::port,
    }
    /// Port of the kubelet-API listener kube-apiserver talks to, on all interfaces.
    stream_port: u16 {
        key: "cloudStream.streamPort",
        kubeedge: "modules.cloudStream.streamPort" => Doc::port,
        default: config::DEFAULT_STREAM_PORT,
        check: check::port,
    }
    /// CA the edges' node certificates must chain to.
    tls_tunnel_ca_file: PathBuf {
        key: "cloudStream.tlsTunnelCAFile",
        kubeedge: "modules.cloudStream.tlsTunnelCAFile" => Doc::path,
        default: PathBuf::from(config::DEFAULT_TUNNEL_CA),
        check: check::file_path,
    }
    /// Tunnel server certificate.
    tls_tunnel_cert_file: PathBuf {
        key: "cloudStream.tlsTunnelCertFile",
        kubeedge: "modules.cloudStream.tlsTunnelCertFile" => Doc::path,
        default: PathBuf::from(config::DEFAULT_TUNNEL_CERT),
        check: check::file_path,
    }
    /// Its key.
    tls_tunnel_private_key_file: PathBuf {
        key: "cloudStream.tlsTunnelPrivateKeyFile",
        kubeedge: "modules.cloudStream.tlsTunnelPrivateKeyFile" => Doc::path,
        default: PathBuf::from(config::DEFAULT_TUNNEL_KEY),
        check: check::file_path,
    }
    /// CA kube-apiserver's kubelet client certificate must chain to.
    tls_stream_ca_file: PathBuf {
        key: "cloudStream.tlsStreamCAFile",
        kubeedge: "modules.cloudStream.tlsStreamCAFile" => Doc::path,
        default: PathBuf::from(config::DEFAULT_STREAM_CA),
        check: check::file_path,
    }
    /// Stream server certificate.
    tls_stream_cert_file: PathBuf {
        key: "cloudStream.tlsStreamCertFile",
        kubeedge: "modules.cloudStream.tlsStreamCertFile" => Doc::path,
        default: PathBuf::from(config::DEFAULT_STREAM_CERT),
        check: check::file_path,
    }
    /// Its key.
    tls_stream_private_key_file: PathBuf {
        key: "cloudStream.tlsStreamPrivateKeyFile",
        kubeedge: "modules.cloudStream.tlsStreamPrivateKeyFile" => Doc::path,
        default: PathBuf::from(config::DEFAULT_STREAM_KEY),
        check: check::file_path,
    }

    // `listen:`
    /// Tunnel listener (edges dial it), host:port. Default: all interfaces, `tunnelPort`.
    tunnel_addr: SocketAddr {
        key: "listen.tunnel",
        flag: ("tunnel-addr", env = "CLOUDSTREAM_TUNNEL_ADDR", value_name = "HOST:PORT"),
    }
    /// Kubelet-API listener (kube-apiserver dials it), host:port. Default: all interfaces,
    /// `streamPort`.
    stream_addr: SocketAddr {
        key: "listen.stream",
        flag: ("stream-addr", env = "CLOUDSTREAM_STREAM_ADDR", value_name = "HOST:PORT"),
    }
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`), host:port. Default: off.
    admin_addr: SocketAddr {
        key: "listen.admin",
        flag: ("admin-addr", env = "CLOUDSTREAM_ADMIN_ADDR", value_name = "HOST:PORT"),
    }
    /// Egress proxy listener for kube-apiserver (HTTP CONNECT <node>:<port>, then TLS as on
    /// the stream listener), host:port. Default: off.
    egress_addr: SocketAddr {
        key: "listen.egress",
        flag: ("egress-addr", env = "CLOUDSTREAM_EGRESS_ADDR", value_name = "HOST:PORT"),
    }

    // `ha:` several replicas sharing one node directory in etcd. Off without endpoints.
    /// etcd client URLs (http:// or https://), comma-separated on the command line. Setting
    /// them turns replicas on: sessions are registered in etcd and requests for nodes other
    /// replicas hold are forwarded there. Default: off (one process, in-memory registry).
    etcd_endpoints: Vec<String> {
        key: "ha.etcd.endpoints",
        flag: ("etcd-endpoints", env = "CLOUDSTREAM_ETCD_ENDPOINTS", value_name = "URL[,URL...]",
               value_delimiter = ','),
        check: etcd_endpoints,
    }
    /// CA bundle of etcd's serving certificate (needed with https:// endpoints).
    etcd_ca: PathBuf {
        key: "ha.etcd.caFile",
        flag: ("etcd-ca", env = "CLOUDSTREAM_ETCD_CA", value_name = "FILE"),
        check: check::file_path,
    }
    /// Client certificate for etcd's --client-cert-auth.
    etcd_cert: PathBuf {
        key: "ha.etcd.certFile",
        flag: ("etcd-cert", env = "CLOUDSTREAM_ETCD_CERT", value_name = "FILE"),
        check: check::file_path,
    }
    /// Private key of --etcd-cert.
    etcd_key: PathBuf {
        key: "ha.etcd.keyFile",
        flag: ("etcd-key", env = "CLOUDSTREAM_ETCD_KEY", value_name = "FILE"),
        check: check::file_path,
    }
    /// Key prefix of the directory in etcd (starts and ends with '/'). Default: /tether/v1/.
    etcd_prefix: String {
        key: "ha.etcd.prefix",
        default: directory_etcd::config::DEFAULT_PREFIX.to_owned(),
    }
    /// TTL of this replica's etcd lease: a replica that stops renewing it (killed,
    /// partitioned) loses its claims after this long. Whole seconds. Default: 10s.
    etcd_lease_ttl: Duration {
        key: "ha.etcd.leaseTTL",
        yaml: duration,
        flag: ("etcd-lease-ttl", env = "CLOUDSTREAM_ETCD_LEASE_TTL", value_name = "DURATION",
               value_parser = duration_flag),
        default: directory_etcd::config::DEFAULT_LEASE_TTL,
        check: lease_ttl,
    }
    /// Deadline for connecting to etcd. Default: 5s.
    etcd_dial_timeout: Duration {
        key: "ha.etcd.dialTimeout",
        yaml: duration,
        default: directory_etcd::config::DEFAULT_DIAL_TIMEOUT,
        check: check::positive,
    }
    /// Deadline of each etcd call (at most the lease TTL). Default: 5s, or the lease TTL when
    /// that is shorter.
    etcd_request_timeout: Duration {
        key: "ha.etcd.requestTimeout",
        yaml: duration,
        check: check::positive,
    }
    /// This replica's id, unique among the replicas and stable across restarts (a pod name).
    /// Default: the host name.
    replica_id: String {
        key: "ha.replicaId",
        flag: ("replica-id", env = "CLOUDSTREAM_REPLICA_ID", value_name = "ID"),
        check: replica_id,
    }
    /// Where the other replicas reach this replica's stream listener, host:port (a pod IP and
    /// the stream port). Default: the stream listener's address, if it binds one IP.
    advertise_addr: String {
        key: "ha.advertiseAddr",
        flag: ("advertise-addr", env = "CLOUDSTREAM_ADVERTISE_ADDR", value_name = "HOST:PORT"),
        check: host_port,
    }
    /// This replica's client certificate for forwarding to other replicas: CN
    /// `tether-replica:<id>`, signed by the stream CA (`tlsStreamCAFile`). Required with etcd.
    peer_cert: PathBuf {
        key: "ha.peerCertFile",
        flag: ("peer-cert", env = "CLOUDSTREAM_PEER_CERT", value_name = "FILE"),
        check: check::file_path,
    }
    /// Private key of --peer-cert.
    peer_key: PathBuf {
        key: "ha.peerKeyFile",
        flag: ("peer-key", env = "CLOUDSTREAM_PEER_KEY", value_name = "FILE"),
        check: check::file_path,
    }
    /// CA the other replicas' stream serving certificates chain to. Default: the stream CA
    /// (`tlsStreamCAFile`).
    peer_ca: PathBuf {
        key: "ha.peerCAFile",
        flag: ("peer-ca", env = "CLOUDSTREAM_PEER_CA", value_name = "FILE"),
        check: check::file_path,
    }
    /// Name the other replicas' stream serving certificates are checked against. Default:
    /// the first DNS or IP name of this replica's own stream certificate (replicas share it).
    peer_server_name: String {
        key: "ha.peerServerName",
        flag: ("peer-server-name", env = "CLOUDSTREAM_PEER_SERVER_NAME", value_name = "NAME"),
    }
    /// Bound on dialing another replica (TCP and TLS) to forward a request; a dead replica
    /// costs a 503 after this long. Default: 2s.
    peer_dial_timeout: Duration {
        key: "ha.peerDialTimeout",
        yaml: duration,
        flag: ("peer-dial-timeout", env = "CLOUDSTREAM_PEER_DIAL_TIMEOUT", value_name = "DURATION",
               value_parser = duration_flag),
        default: stream_server::forward::DEFAULT_DIAL_TIMEOUT,
        check: check::positive,
    }

    // `session:`
    /// Per-stream buffer and window, bytes (at least 1024). Default: 1048576.
    stream_window: u32 {
        key: "session.streamWindow",
        flag: ("stream-window", env = "CLOUDSTREAM_STREAM_WINDOW", value_name = "BYTES",
               value_parser = window_flag),
        default: session::DEFAULT_STREAM_WINDOW,
        check: check::stream_window,
    }
    /// How long a stock-KubeEdge edge may leave one stream's buffer full before that stream
    /// is closed, e.g. 5s (a bare number is seconds). Default: 5s.
    stall_limit: Duration {
        key: "session.stallLimit",
        yaml: duration,
        flag: ("stall-limit", env = "CLOUDSTREAM_STALL_LIMIT", value_name = "DURATION",
               value_parser = duration_flag),
        default: session::DEFAULT_STALL_LIMIT,
        check: check::positive,
    }
    /// Interval between pings to each edge. Default: 5s.
    ping_interval: Duration {
        key: "session.pingInterval",
        yaml: duration,
        flag: ("ping-interval", env = "CLOUDSTREAM_PING_INTERVAL", value_name = "DURATION",
               value_parser = duration_flag),
        default: session::DEFAULT_PING_INTERVAL,
        check: check::positive,
    }
    /// Silence after which an edge is dead (longer than the ping interval). Default: 30s.
    dead_after: Duration {
        key: "session.deadAfter",
        yaml: duration,
        flag: ("dead-after", env = "CLOUDSTREAM_DEAD_AFTER", value_name = "DURATION",
               value_parser = duration_flag),
        default: session::DEFAULT_DEAD_AFTER,
        check: check::positive,
    }
    /// Deadline of each write to an edge's websocket. Default: 15s.
    write_deadline: Duration {
        key: "session.writeDeadline",
        yaml: duration,
        flag: ("write-deadline", env = "CLOUDSTREAM_WRITE_DEADLINE", value_name = "DURATION",
               value_parser = duration_flag),
        default: session::DEFAULT_WRITE_DEADLINE,
        check: check::positive,
    }
    /// Messages queued for a session's writer task.
    write_queue: usize {
        key: "session.writeQueue",
        default: session::DEFAULT_WRITE_QUEUE,
        check: check::at_least_one,
    }
    /// Streams open at once on one session.
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
    /// Wait for the edge's open result (tether/2).
    open_timeout: Duration {
        key: "session.openTimeout",
        yaml: duration,
        default: session::DEFAULT_OPEN_TIMEOUT,
        check: check::positive,
    }

    // `tunnelServer:`
    /// TLS handshake plus websocket upgrade of an edge, from when it gets a handshake slot
    /// (the wait for one is bounded by twice this). Default: 10s.
    tunnel_handshake_timeout: Duration {
        key: "tunnelServer.handshakeTimeout",
        yaml: duration,
        flag: ("tunnel-handshake-timeout", env = "CLOUDSTREAM_TUNNEL_HANDSHAKE_TIMEOUT",
               value_name = "DURATION", value_parser = duration_flag),
        default: TunnelServerConfig::default().handshake_timeout,
        check: check::positive,
    }
    /// Tunnel connections open at once, waiting for a handshake, handshaking or serving a
    /// session.
    tunnel_max_connections: usize {
        key: "tunnelServer.maxConnections",
        default: TunnelServerConfig::default().max_connections,
        check: check::at_least_one,
    }
    /// Tunnel handshakes in progress at once; more accepted edges wait their turn, for up to
    /// twice the handshake timeout. Default: 512.
    tunnel_max_handshakes: usize {
        key: "tunnelServer.maxHandshakes",
        flag: ("tunnel-max-handshakes", env = "CLOUDSTREAM_TUNNEL_MAX_HANDSHAKES",
               value_name = "N"),
        default: TunnelServerConfig::default().max_handshakes,
        check: check::at_least_one,
    }
    /// Tunnel connections waiting for or in a handshake at once from one address (IPv4, or
    /// IPv6 /64); more are reset. Default: 64.
    tunnel_max_handshakes_per_source: usize {
        key: "tunnelServer.maxHandshakesPerSource",
        flag: ("tunnel-max-handshakes-per-source",
               env = "CLOUDSTREAM_TUNNEL_MAX_HANDSHAKES_PER_SOURCE", value_name = "N"),
        default: TunnelServerConfig::default().max_handshakes_per_source,
        check: check::at_least_one,
    }
    /// On shutdown, how long open streams may run (0 cuts them at once).
    tunnel_drain_grace: Duration {
        key: "tunnelServer.drainGrace",
        yaml: duration,
        default: TunnelServerConfig::default().drain_grace,
    }

    // `streamServer:`
    /// TLS handshake and request head of a client.
    stream_handshake_timeout: Duration {
        key: "streamServer.handshakeTimeout",
        yaml: duration,
        default: StreamServerConfig::default().handshake_timeout,
        check: check::positive,
    }
    /// Wait for the kubelet's response head through the tunnel.
    stream_response_timeout: Duration {
        key: "streamServer.responseTimeout",
        yaml: duration,
        default: StreamServerConfig::default().response_timeout,
        check: check::positive,
    }
    /// Client connections served at once.
    stream_max_connections: usize {
        key: "streamServer.maxConnections",
        default: StreamServerConfig::default().max_connections,
        check: check::at_least_one,
    }
    /// On shutdown, how long requests may run (0 cuts them at once).
    stream_drain_grace: Duration {
        key: "streamServer.drainGrace",
        yaml: duration,
        default: StreamServerConfig::default().drain_grace,
    }
    /// Compressed logs/stats/metrics bodies from tether/2 edges: `auto` (links whose
    /// shortest round trip is 10 ms or more), `on` or `off`. Default: auto.
    stream_compress_bodies: String {
        key: "streamServer.compressBodies",
        flag: ("compress-bodies", env = "CLOUDSTREAM_COMPRESS_BODIES", value_name = "off|auto|on"),
        default: "auto".to_owned(),
        check: check_compression,
    }

    // `kubeAPIConfig:` in both formats, as cloudcore reads it (its other keys, such as
    // `contentType`, are cloudcore's business).
    /// kubeconfig for the Kubernetes API, which finds a pod's node when a request's Host names
    /// no connected node.
    kubeconfig: PathBuf {
        key: "kubeAPIConfig.kubeConfig",
        kubeedge: "kubeAPIConfig.kubeConfig" => Doc::optional_path,
        flag: ("kubeconfig", env = "CLOUDSTREAM_KUBECONFIG", value_name = "FILE"),
        check: check::file_path,
    }
    /// URL of the Kubernetes API server, e.g. https://10.0.0.1:6443; overrides the kubeconfig's
    /// server.
    kube_api_master: String {
        key: "kubeAPIConfig.master",
        kubeedge: "kubeAPIConfig.master" => Doc::optional_string,
        flag: ("kube-api-master", env = "CLOUDSTREAM_KUBE_API_MASTER", value_name = "URL"),
        check: check::http_url,
    }
    /// Requests per second to the Kubernetes API, sustained. Default: 100.
    kube_api_qps: f32 {
        key: "kubeAPIConfig.qps",
        kubeedge: "kubeAPIConfig.qps" => Doc::f32,
        flag: ("kube-api-qps", env = "CLOUDSTREAM_KUBE_API_QPS", value_name = "QPS"),
        default: config::DEFAULT_KUBE_API_QPS,
        check: check::greater_than_zero,
    }
    /// Requests to the Kubernetes API in a burst above the rate. Default: 200.
    kube_api_burst: u32 {
        key: "kubeAPIConfig.burst",
        kubeedge: "kubeAPIConfig.burst" => Doc::u32,
        flag: ("kube-api-burst", env = "CLOUDSTREAM_KUBE_API_BURST", value_name = "REQUESTS"),
        default: config::DEFAULT_KUBE_API_BURST,
        check: check::at_least_one,
    }

    // `log:`
    /// Log format. Default: text.
    log_format: LogFormat {
        key: "log.format",
        flag: ("log-format", value_enum, env = "CLOUDSTREAM_LOG_FORMAT"),
        default: LogFormat::default(),
    }
    /// Log filter, e.g. `info` or `info,tunnel_session=debug`. Default: `RUST_LOG`, else
    /// `log.level`, else info.
    log_level: String {
        key: "log.level",
        flag: ("log-level", env = "CLOUDSTREAM_LOG_LEVEL", value_name = "FILTER"),
        check: check::log_filter,
    }
}

/// Where and how `cloudstream` reaches the Kubernetes API (to find a pod's node): always
/// present; whether it is used (a kubeconfig, a master URL, or the in-cluster service account)
/// is for `main` to decide.
#[derive(Debug, Clone, PartialEq)]
pub struct KubeApiSettings {
    /// kubeconfig file (`kubeAPIConfig.kubeConfig`, `--kubeconfig`), checked readable.
    pub kubeconfig: Option<PathBuf>,
    /// API server URL (`kubeAPIConfig.master`, `--kube-api-master`), http(s); overrides the
    /// kubeconfig's server.
    pub master: Option<String>,
    /// Sustained requests per second (`kubeAPIConfig.qps`, KubeEdge's default 100).
    pub qps: f32,
    /// Requests in a burst (`kubeAPIConfig.burst`, KubeEdge's default 200).
    pub burst: u32,
}

/// Several replicas sharing one node directory in etcd (`ha:`; on with `--etcd-endpoints`).
#[derive(Debug, Clone)]
pub struct HaSettings {
    /// How the directory reaches etcd (TLS material already read).
    pub directory: directory_etcd::DirectoryConfig,
    /// This replica's id; `None`: the host name, which `main` reads.
    pub replica_id: Option<String>,
    /// How other replicas reach this one; `None`: the stream listener's address.
    pub advertise_addr: Option<String>,
    /// This replica's client certificate and key for forwarding, and the CA the other
    /// replicas' serving certificates chain to.
    pub peer: tunnel_session::tls::TlsFiles,
    /// The name the other replicas' serving certificates are checked against; `None`: the
    /// first name in our own stream certificate.
    pub peer_server_name: Option<String>,
    /// Bound on dialing another replica.
    pub peer_dial_timeout: Duration,
}

/// Everything `cloudstream` runs with, merged and validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The configuration file.
    pub source: PathBuf,
    /// Its format.
    pub format: Format,
    /// Ports and TLS files (KubeEdge's keys, whichever format they came from).
    pub cloud_stream: CloudStreamSettings,
    /// Where the tunnel listener binds.
    pub tunnel_addr: SocketAddr,
    /// Where the stream (kubelet API) listener binds.
    pub stream_addr: SocketAddr,
    /// Where the admin listener binds; `None` turns it off.
    pub admin_addr: Option<SocketAddr>,
    /// Where the egress proxy listener binds; `None` turns it off.
    pub egress_addr: Option<SocketAddr>,
    /// Replicas on etcd; `None`: one process with its in-memory registry.
    pub ha: Option<HaSettings>,
    /// Tunnel server and session tunables.
    pub tunnel_server: TunnelServerConfig,
    /// Stream server tunables.
    pub stream_server: StreamServerConfig,
    /// Access to the Kubernetes API.
    pub kube_api: KubeApiSettings,
    /// Files the settings name besides the TLS files (the kubeconfig), which [`load`] checks
    /// are readable; kept with their origin so the error names the key or the flag.
    pub named_files: Vec<Setting<PathBuf>>,
    /// Log format and filter.
    pub log: LogSettings,
    /// Things to log once logging is up (e.g. cloudcore's own module is enabled too).
    pub warnings: Vec<String>,
}

/// Reads `file`, merges `flags` over it and validates the result, the files it names included.
pub fn load(file: &Path, flags: &Flags) -> Result<Settings, SettingsError> {
    let text = tether_file::read(file)?;
    let format = tether_file::detect(&text, file, KIND, config::API_GROUP)?;
    let settings = match format {
        Format::Tether => from_tether(&text, file, flags)?,
        Format::KubeEdge => from_cloudcore(&text, file, flags)?,
    };
    config::check_readable(&settings.cloud_stream)?;
    for named in &settings.named_files {
        named.check_readable(file)?;
    }
    Ok(settings)
}

fn from_cloudcore(text: &str, file: &Path, flags: &Flags) -> Result<Settings, SettingsError> {
    settings(&Source::kubeedge(text, file, config::API_GROUP)?, flags)
}

fn from_tether(text: &str, file: &Path, flags: &Flags) -> Result<Settings, SettingsError> {
    settings(&Source::tether(text, file, KIND)?, flags)
}

/// The settings from either format: the declared ones layered, then what ties them together.
fn settings(source: &Source<'_, FileValues>, flags: &Flags) -> Result<Settings, SettingsError> {
    let file = source.file();
    // `enable` exists only in cloudcore.yaml, where it may not be what we want: warn only.
    let module_enabled = match source.kubeedge_doc() {
        Some(doc) => doc
            .bool(&format!("{}.enable", config::SECTION))?
            .unwrap_or(false),
        None => false,
    };
    let v = Values::resolve(source, flags)?;
    for (addr, port) in [
        (&v.tunnel_addr, &v.tunnel_port),
        (&v.stream_addr, &v.stream_port),
    ] {
        if addr.in_file && port.in_file {
            return Err(key_error(
                file,
                addr.key,
                format!("set here and as {}; keep one", port.key),
            ));
        }
    }
    let mut warnings = Vec::new();
    if module_enabled {
        warnings.push(format!(
            "{}.enable is true in {}: cloudcore's own CloudStream is enabled too and will \
             conflict with cloudstream (both listen on the stream and tunnel ports); set it to \
             false in cloudcore's configuration",
            config::SECTION,
            file.display()
        ));
    }

    let session = SessionConfig {
        stream_window: v.stream_window.value,
        stall_limit: v.stall_limit.value,
        ping_interval: v.ping_interval.value,
        dead_after: v.dead_after.value,
        write_deadline: v.write_deadline.value,
        write_queue: v.write_queue.value,
        max_streams: v.max_streams.value,
        max_data_chunk: v.max_data_chunk.value,
        max_stream_window: v.max_stream_window.value,
        session_window_budget: v.session_window_budget.value,
        unsent_limit: v.unsent_limit.value,
        open_timeout: v.open_timeout.value,
    };
    tether_file::check_session(
        file,
        &session,
        &v.dead_after.origin,
        &v.ping_interval.origin,
    )?;

    let ha = ha_settings(file, &v, &mut warnings)?;
    let cloud_stream = CloudStreamSettings {
        source: file.to_owned(),
        section: match source.format() {
            Format::Tether => "cloudStream",
            Format::KubeEdge => config::SECTION,
        },
        module_enabled,
        tunnel_port: v.tunnel_port.value,
        stream_port: v.stream_port.value,
        tunnel: TlsPaths {
            ca: v.tls_tunnel_ca_file.value,
            cert: v.tls_tunnel_cert_file.value,
            key: v.tls_tunnel_private_key_file.value,
        },
        stream: TlsPaths {
            ca: v.tls_stream_ca_file.value,
            cert: v.tls_stream_cert_file.value,
            key: v.tls_stream_private_key_file.value,
        },
    };
    Ok(Settings {
        source: file.to_owned(),
        format: source.format(),
        tunnel_addr: v.tunnel_addr.value.unwrap_or(SocketAddr::new(
            DEFAULT_LISTEN_HOST,
            cloud_stream.tunnel_port,
        )),
        stream_addr: v.stream_addr.value.unwrap_or(SocketAddr::new(
            DEFAULT_LISTEN_HOST,
            cloud_stream.stream_port,
        )),
        admin_addr: v.admin_addr.value,
        egress_addr: v.egress_addr.value,
        ha,
        tunnel_server: TunnelServerConfig {
            session,
            handshake_timeout: v.tunnel_handshake_timeout.value,
            max_connections: v.tunnel_max_connections.value,
            max_handshakes: v.tunnel_max_handshakes.value,
            max_handshakes_per_source: v.tunnel_max_handshakes_per_source.value,
            drain_grace: v.tunnel_drain_grace.value,
        },
        stream_server: StreamServerConfig {
            handshake_timeout: v.stream_handshake_timeout.value,
            response_timeout: v.stream_response_timeout.value,
            max_connections: v.stream_max_connections.value,
            drain_grace: v.stream_drain_grace.value,
            // Checked above; `auto` is what an unreadable value would mean anyway.
            compression: v.stream_compress_bodies.value.parse().unwrap_or_default(),
            max_decoders: StreamServerConfig::default().max_decoders,
        },
        kube_api: KubeApiSettings {
            kubeconfig: v.kubeconfig.value.clone(),
            master: v.kube_api_master.value,
            qps: v.kube_api_qps.value,
            burst: v.kube_api_burst.value,
        },
        named_files: v.kubeconfig.present().into_iter().collect(),
        log: LogSettings::new(v.log_format.value, &v.log_level),
        cloud_stream,
        warnings,
    })
}

/// `streamServer.compressBodies`: one of `off`, `auto`, `on`.
fn check_compression(value: &str) -> Result<(), String> {
    value.parse::<stream_server::BodyCompression>().map(|_| ())
}

/// The `ha:` settings, when etcd endpoints are set; the others alone only earn a warning.
fn ha_settings(
    file: &Path,
    v: &Values,
    warnings: &mut Vec<String>,
) -> Result<Option<HaSettings>, SettingsError> {
    let Some(endpoints) = v.etcd_endpoints.value.clone() else {
        let stray: Vec<&str> = [
            v.replica_id.value.is_some().then_some("replica id"),
            v.advertise_addr
                .value
                .is_some()
                .then_some("advertise address"),
            v.peer_cert.value.is_some().then_some("peer certificate"),
            v.etcd_ca.value.is_some().then_some("etcd CA"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !stray.is_empty() {
            warnings.push(format!(
                "{} set without etcd endpoints (--etcd-endpoints, ha.etcd.endpoints): ignored, \
                 this cloudstream runs alone",
                stray.join(", ")
            ));
        }
        return Ok(None);
    };
    let read = |setting: &Setting<Option<PathBuf>>| -> Result<Option<Vec<u8>>, SettingsError> {
        match &setting.value {
            None => Ok(None),
            Some(path) => std::fs::read(path)
                .map(Some)
                .map_err(|e| setting.error(file, format!("{}: {e}", path.display()))),
        }
    };
    let tls = match (read(&v.etcd_ca)?, read(&v.etcd_cert)?, read(&v.etcd_key)?) {
        (None, None, None) => None,
        (Some(ca_pem), cert, key) => {
            let client = match (cert, key) {
                (Some(cert_pem), Some(key_pem)) => {
                    Some(directory_etcd::ClientIdentityPem { cert_pem, key_pem })
                }
                (None, None) => None,
                _ => {
                    return Err(v.etcd_cert.error(
                        file,
                        "the etcd client certificate and key go together (--etcd-cert, --etcd-key)"
                            .into(),
                    ));
                }
            };
            Some(directory_etcd::EtcdTls {
                ca_pem,
                client,
                server_name: None,
            })
        }
        (None, _, _) => {
            return Err(v.etcd_cert.error(
                file,
                "an etcd client certificate needs the etcd CA too (--etcd-ca)".into(),
            ));
        }
    };
    let mut directory = directory_etcd::DirectoryConfig::new(endpoints);
    directory.tls = tls;
    directory.prefix = v.etcd_prefix.value.clone();
    directory.lease_ttl = v.etcd_lease_ttl.value;
    directory.dial_timeout = v.etcd_dial_timeout.value;
    directory.request_timeout = v
        .etcd_request_timeout
        .value
        .unwrap_or(directory_etcd::config::DEFAULT_REQUEST_TIMEOUT.min(directory.lease_ttl));
    directory
        .validate()
        .map_err(|e| v.etcd_endpoints.error(file, e.to_string()))?;
    let (Some(cert), Some(key)) = (v.peer_cert.value.clone(), v.peer_key.value.clone()) else {
        return Err(v.etcd_endpoints.error(
            file,
            "replicas need a peer client certificate and key to forward requests to each other \
             (--peer-cert and --peer-key, or ha.peerCertFile and ha.peerKeyFile)"
                .into(),
        ));
    };
    let ca = v
        .peer_ca
        .value
        .clone()
        .unwrap_or_else(|| v.tls_stream_ca_file.value.clone());
    Ok(Some(HaSettings {
        directory,
        replica_id: v.replica_id.value.clone(),
        advertise_addr: v.advertise_addr.value.clone(),
        peer: tunnel_session::tls::TlsFiles { ca, cert, key },
        peer_server_name: v.peer_server_name.value.clone(),
        peer_dial_timeout: v.peer_dial_timeout.value,
    }))
}

/// etcd URLs: at least one, each http:// or https://.
fn etcd_endpoints(urls: &[String]) -> Result<(), String> {
    if urls.is_empty() {
        return Err("expected at least one etcd URL".into());
    }
    for url in urls {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "etcd URL {url:?} must start with http:// or https://"
            ));
        }
    }
    Ok(())
}

/// etcd grants whole seconds, at least one.
fn lease_ttl(ttl: &Duration) -> Result<(), String> {
    if ttl.as_secs() == 0 || ttl.subsec_nanos() != 0 {
        Err(format!(
            "expected whole seconds, at least 1s, found {ttl:?}"
        ))
    } else {
        Ok(())
    }
}

/// A replica id is one etcd key segment: 1 to 253 bytes, no '/'.
fn replica_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 253 || id.contains('/') {
        Err(format!(
            "replica id {id:?} must be 1 to 253 bytes without '/'"
        ))
    } else {
        Ok(())
    }
}

/// `host:port` or `[v6]:port` with a port from 1 to 65535.
fn host_port(text: &str) -> Result<(), String> {
    let bad = || format!("expected HOST:PORT, found {text:?}");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok(())
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

    /// A directory with the six TLS files (contents do not matter to `load`).
    fn pki() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for name in ["ca.crt", "server.crt", "server.key"] {
            write(dir.path(), name, "-----BEGIN-----\n");
        }
        dir
    }

    fn ours(dir: &Path, extra: &str) -> PathBuf {
        let d = dir.display();
        write(
            dir,
            "cloudstream.yaml",
            &format!(
                "apiVersion: tether.io/v1alpha1\nkind: CloudStream\ncloudStream:\n\
                 \x20 tlsTunnelCAFile: {d}/ca.crt\n  tlsTunnelCertFile: {d}/server.crt\n\
                 \x20 tlsTunnelPrivateKeyFile: {d}/server.key\n  tlsStreamCAFile: {d}/ca.crt\n\
                 \x20 tlsStreamCertFile: {d}/server.crt\n  tlsStreamPrivateKeyFile: {d}/server.key\n\
                 {extra}"
            ),
        )
    }

    #[test]
    fn shipped_example_parses_and_validates() {
        let example =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config/cloudstream.yaml");
        let text = std::fs::read_to_string(&example).unwrap();
        assert_eq!(
            tether_file::detect(&text, &example, KIND, "cloudcore.config.kubeedge.io").unwrap(),
            Format::Tether
        );
        // Everything but the certificate files (which live on a real host).
        let settings = from_tether(&text, &example, &Flags::default()).unwrap();
        assert_eq!(settings.tunnel_addr, "0.0.0.0:10004".parse().unwrap());
        assert_eq!(settings.stream_addr, "0.0.0.0:10003".parse().unwrap());
        assert_eq!(
            settings.admin_addr,
            Some("127.0.0.1:10005".parse().unwrap())
        );
        assert_eq!(settings.log.format, LogFormat::Json);
        assert_eq!(
            settings.kube_api,
            KubeApiSettings {
                kubeconfig: None,
                master: None,
                qps: 100.0,
                burst: 200,
            }
        );
        assert!(settings.named_files.is_empty());
    }

    #[test]
    fn defaults_file_and_flags_layer() {
        let dir = pki();
        let file = ours(
            dir.path(),
            "listen:\n  tunnel: 127.0.0.1:0\n  stream: 127.0.0.1:0\n  admin: 127.0.0.1:0\n\
             session:\n  streamWindow: 65536\n  stallLimit: 2s\n\
             tunnelServer:\n  drainGrace: 1s\n  maxHandshakes: 100\n  maxHandshakesPerSource: 7\n\
             streamServer:\n  responseTimeout: 250ms\n\
             log:\n  level: debug\n",
        );
        let settings = load(&file, &Flags::default()).unwrap();
        assert_eq!(settings.format, Format::Tether);
        assert_eq!(settings.tunnel_addr, "127.0.0.1:0".parse().unwrap());
        assert_eq!(settings.tunnel_server.session.stream_window, 65536);
        assert_eq!(
            settings.tunnel_server.session.stall_limit,
            Duration::from_secs(2)
        );
        assert_eq!(
            settings.tunnel_server.session.dead_after,
            tunnel_session::config::DEFAULT_DEAD_AFTER
        );
        assert_eq!(settings.tunnel_server.drain_grace, Duration::from_secs(1));
        assert_eq!(settings.tunnel_server.max_handshakes, 100);
        assert_eq!(settings.tunnel_server.max_handshakes_per_source, 7);
        assert_eq!(
            settings.tunnel_server.max_connections,
            tunnel_session::server::DEFAULT_MAX_CONNECTIONS
        );
        assert_eq!(
            settings.stream_server.response_timeout,
            Duration::from_millis(250)
        );
        assert_eq!(settings.log.filter(None), "debug");
        assert_eq!(settings.log.filter(Some("warn".into())), "warn");

        let flags = Flags {
            tunnel_addr: Some("127.0.0.1:1".parse().unwrap()),
            stall_limit: Some(Duration::from_secs(9)),
            tunnel_max_handshakes_per_source: Some(9),
            tunnel_handshake_timeout: Some(Duration::from_secs(3)),
            log_level: Some("error".into()),
            ..Flags::default()
        };
        let settings = load(&file, &flags).unwrap();
        assert_eq!(settings.tunnel_addr, "127.0.0.1:1".parse().unwrap());
        assert_eq!(
            settings.tunnel_server.session.stall_limit,
            Duration::from_secs(9)
        );
        assert_eq!(settings.tunnel_server.session.stream_window, 65536);
        assert_eq!(settings.tunnel_server.max_handshakes, 100);
        assert_eq!(settings.tunnel_server.max_handshakes_per_source, 9);
        assert_eq!(
            settings.tunnel_server.handshake_timeout,
            Duration::from_secs(3)
        );
        assert_eq!(settings.log.filter(Some("warn".into())), "error");
    }

    #[test]
    fn ha_is_off_without_endpoints_and_layers_from_file_and_flags() {
        let dir = pki();
        let alone = load(&ours(dir.path(), ""), &Flags::default()).unwrap();
        assert!(alone.ha.is_none());
        assert!(alone.egress_addr.is_none());
        // A stray replica key alone changes nothing but earns a warning.
        let stray = ours(dir.path(), "ha:\n  replicaId: r1\n");
        let settings = load(&stray, &Flags::default()).unwrap();
        assert!(settings.ha.is_none());
        assert!(
            settings.warnings.iter().any(|w| w.contains("replica id")),
            "{:?}",
            settings.warnings
        );

        let d = dir.path().display();
        let file = ours(
            dir.path(),
            &format!(
                "listen:\n  egress: 127.0.0.1:0\n\
                 ha:\n  etcd:\n    endpoints: [http://127.0.0.1:2379]\n    leaseTTL: 3s\n\
                 \x20 replicaId: from-file\n  advertiseAddr: 10.0.0.1:10003\n\
                 \x20 peerCertFile: {d}/server.crt\n  peerKeyFile: {d}/server.key\n"
            ),
        );
        let settings = load(&file, &Flags::default()).unwrap();
        assert_eq!(settings.egress_addr, Some("127.0.0.1:0".parse().unwrap()));
        let ha = settings.ha.unwrap();
        assert_eq!(ha.directory.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(ha.directory.lease_ttl, Duration::from_secs(3));
        // The request timeout defaults to at most the TTL.
        assert_eq!(ha.directory.request_timeout, Duration::from_secs(3));
        assert_eq!(ha.replica_id.as_deref(), Some("from-file"));
        assert_eq!(ha.advertise_addr.as_deref(), Some("10.0.0.1:10003"));
        assert_eq!(ha.peer.ca, dir.path().join("ca.crt"));
        assert_eq!(ha.peer_dial_timeout, Duration::from_secs(2));

        let flags = Flags {
            etcd_endpoints: Some(vec!["http://e1:2379".into(), "http://e2:2379".into()]),
            replica_id: Some("from-flag".into()),
            etcd_lease_ttl: Some(Duration::from_secs(12)),
            ..Flags::default()
        };
        let ha = load(&file, &flags).unwrap().ha.unwrap();
        assert_eq!(ha.directory.endpoints, ["http://e1:2379", "http://e2:2379"]);
        assert_eq!(ha.directory.lease_ttl, Duration::from_secs(12));
        assert_eq!(ha.directory.request_timeout, Duration::from_secs(5));
        assert_eq!(ha.replica_id.as_deref(), Some("from-flag"));
    }

    #[test]
    fn ha_errors_name_what_is_missing() {
        let dir = pki();
        let file = ours(dir.path(), "");
        let flags = Flags {
            etcd_endpoints: Some(vec!["http://127.0.0.1:2379".into()]),
            ..Flags::default()
        };
        let error = load(&file, &flags).unwrap_err().to_string();
        assert!(error.contains("--peer-cert"), "{error}");
        for (flags, needle) in [
            (
                Flags {
                    etcd_endpoints: Some(vec!["127.0.0.1:2379".into()]),
                    ..Flags::default()
                },
                "must start with http://",
            ),
            (
                Flags {
                    etcd_endpoints: Some(vec!["http://e:1".into()]),
                    etcd_lease_ttl: Some(Duration::from_millis(1500)),
                    ..Flags::default()
                },
                "whole seconds",
            ),
            (
                Flags {
                    etcd_endpoints: Some(vec!["http://e:1".into()]),
                    advertise_addr: Some("no-port".into()),
                    ..Flags::default()
                },
                "HOST:PORT",
            ),
            (
                Flags {
                    etcd_endpoints: Some(vec!["http://e:1".into()]),
                    replica_id: Some("a/b".into()),
                    ..Flags::default()
                },
                "without '/'",
            ),
        ] {
            let error = load(&file, &flags).unwrap_err().to_string();
            assert!(error.contains(needle), "{needle}: {error}");
        }
    }

    #[test]
    fn errors_name_the_key_and_the_file() {
        let dir = pki();
        for (extra, key) in [
            ("bogus: 1\n", "bogus"),
            ("cloudStream:\n  enable: true\n", "cloudStream"),
            ("listen:\n  tunnel: nowhere\n", "listen.tunnel"),
            ("session:\n  streamWindow: 10\n", "session.streamWindow"),
            ("session:\n  pingInterval: 1m\n", "session.deadAfter"),
            (
                "tunnelServer:\n  handshakeTimeout: 0s\n",
                "tunnelServer.handshakeTimeout",
            ),
            (
                "streamServer:\n  maxConnections: 0\n",
                "streamServer.maxConnections",
            ),
            (
                "tunnelServer:\n  maxHandshakesPerSource: 0\n",
                "tunnelServer.maxHandshakesPerSource",
            ),
            ("log:\n  format: xml\n", "log.format"),
            ("log:\n  level: \"=[\"\n", "log.level"),
        ] {
            // A second `cloudStream:` would be a duplicate key; test that one on its own.
            let file = if extra.starts_with("cloudStream") {
                write(
                    dir.path(),
                    "dup.yaml",
                    &format!("apiVersion: tether.io/v1alpha1\nkind: CloudStream\n{extra}"),
                )
            } else {
                ours(dir.path(), extra)
            };
            let err = load(&file, &Flags::default()).unwrap_err();
            let message = err.to_string();
            assert!(message.contains(key), "{extra:?}: {message}");
            assert!(
                message.contains(&file.display().to_string()),
                "{extra:?}: {message}"
            );
        }
        // Both spellings of one listener.
        let file = write(
            dir.path(),
            "both.yaml",
            "apiVersion: tether.io/v1alpha1\nkind: CloudStream\ncloudStream:\n  tunnelPort: 1\n\
             listen:\n  tunnel: 127.0.0.1:0\n",
        );
        let message = load(&file, &Flags::default()).unwrap_err().to_string();
        assert!(message.starts_with("listen.tunnel: "), "{message}");
    }

    #[test]
    fn wrong_kind_or_version_is_refused() {
        let dir = pki();
        for (text, key) in [
            ("apiVersion: tether.io/v1alpha1\nkind: EdgeStream\n", "kind"),
            (
                "apiVersion: tether.io/v2\nkind: CloudStream\n",
                "apiVersion",
            ),
            (
                "apiVersion: edgecore.config.kubeedge.io/v1alpha2\nmodules: {}\n",
                "apiVersion",
            ),
            ("kind: CloudCore\n", "apiVersion"),
        ] {
            let file = write(dir.path(), "x.yaml", text);
            let message = load(&file, &Flags::default()).unwrap_err().to_string();
            assert!(
                message.starts_with(&format!("{key}: ")),
                "{text:?}: {message}"
            );
        }
    }

    #[test]
    fn kube_api_defaults_file_and_flags_layer() {
        let dir = pki();
        let kubeconfig = write(dir.path(), "kubeconfig", "apiVersion: v1\n");
        let settings = load(&ours(dir.path(), ""), &Flags::default()).unwrap();
        assert_eq!(
            settings.kube_api,
            KubeApiSettings {
                kubeconfig: None,
                master: None,
                qps: config::DEFAULT_KUBE_API_QPS,
                burst: config::DEFAULT_KUBE_API_BURST,
            }
        );

        let file = ours(
            dir.path(),
            &format!(
                "kubeAPIConfig:\n  kubeConfig: {}\n  master: https://10.0.0.1:6443\n  qps: 5\n\
                 \x20 burst: 10\n",
                kubeconfig.display()
            ),
        );
        let settings = load(&file, &Flags::default()).unwrap();
        assert_eq!(
            settings.kube_api,
            KubeApiSettings {
                kubeconfig: Some(kubeconfig.clone()),
                master: Some("https://10.0.0.1:6443".into()),
                qps: 5.0,
                burst: 10,
            }
        );

        let other = write(dir.path(), "other-kubeconfig", "apiVersion: v1\n");
        let flags = Flags {
            kubeconfig: Some(other.clone()),
            kube_api_master: Some("http://127.0.0.1:8080".into()),
            kube_api_qps: Some(0.5),
            kube_api_burst: Some(1),
            ..Flags::default()
        };
        let settings = load(&file, &flags).unwrap();
        assert_eq!(
            settings.kube_api,
            KubeApiSettings {
                kubeconfig: Some(other),
                master: Some("http://127.0.0.1:8080".into()),
                qps: 0.5,
                burst: 1,
            }
        );
    }

    #[test]
    fn kube_api_errors_name_the_key_and_the_file_or_the_flag() {
        let dir = pki();
        let missing = dir.path().join("missing-kubeconfig");
        for (extra, key) in [
            ("kubeAPIConfig:\n  qps: 0\n", "kubeAPIConfig.qps"),
            ("kubeAPIConfig:\n  qps: -1.5\n", "kubeAPIConfig.qps"),
            ("kubeAPIConfig:\n  burst: 0\n", "kubeAPIConfig.burst"),
            ("kubeAPIConfig:\n  burst: -1\n", "kubeAPIConfig.burst"),
            (
                "kubeAPIConfig:\n  master: 10.0.0.1:6443\n",
                "kubeAPIConfig.master",
            ),
            (
                "kubeAPIConfig:\n  master: ftp://x\n",
                "kubeAPIConfig.master",
            ),
            (
                "kubeAPIConfig:\n  kubeConfig: \"\"\n",
                "kubeAPIConfig.kubeConfig",
            ),
            (
                "kubeAPIConfig:\n  contentType: json\n",
                "kubeAPIConfig.contentType",
            ),
            (
                &format!("kubeAPIConfig:\n  kubeConfig: {}\n", missing.display()),
                "kubeAPIConfig.kubeConfig",
            ),
            (
                &format!("kubeAPIConfig:\n  kubeConfig: {}\n", dir.path().display()),
                "kubeAPIConfig.kubeConfig",
            ),
        ] {
            let file = ours(dir.path(), extra);
            let message = load(&file, &Flags::default()).unwrap_err().to_string();
            assert!(
                message.starts_with(&format!("{key}: ")),
                "{extra:?}: {message}"
            );
            assert!(
                message.ends_with(&format!("(in {})", file.display())),
                "{extra:?}: {message}"
            );
        }
        let message = load(
            &ours(
                dir.path(),
                &format!("kubeAPIConfig:\n  kubeConfig: {}\n", missing.display()),
            ),
            &Flags::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            message.starts_with(&format!(
                "kubeAPIConfig.kubeConfig: {}: ",
                missing.display()
            )),
            "{message}"
        );

        let file = ours(dir.path(), "");
        for (flags, flag) in [
            (
                Flags {
                    kubeconfig: Some(missing.clone()),
                    ..Flags::default()
                },
                "--kubeconfig",
            ),
            (
                Flags {
                    kube_api_master: Some("localhost".into()),
                    ..Flags::default()
                },
                "--kube-api-master",
            ),
            (
                Flags {
                    kube_api_qps: Some(0.0),
                    ..Flags::default()
                },
                "--kube-api-qps",
            ),
            (
                Flags {
                    kube_api_burst: Some(0),
                    ..Flags::default()
                },
                "--kube-api-burst",
            ),
        ] {
            let message = load(&file, &flags).unwrap_err().to_string();
            assert!(message.starts_with(&format!("{flag}: ")), "{message}");
        }
    }

    #[test]
    fn kube_api_is_read_from_cloudcore_yaml_as_cloudcore_reads_it() {
        let dir = pki();
        let d = dir.path().display();
        let kubeconfig = write(dir.path(), "kubeconfig", "apiVersion: v1\n");
        let cloudcore = |kube_api: &str| {
            write(
                dir.path(),
                "cloudcore.yaml",
                &format!(
                    "apiVersion: cloudcore.config.kubeedge.io/v1alpha2\n{kube_api}modules:\n\
                     \x20 cloudStream:\n    tlsTunnelCAFile: {d}/ca.crt\n\
                     \x20   tlsTunnelCertFile: {d}/server.crt\n\
                     \x20   tlsTunnelPrivateKeyFile: {d}/server.key\n\
                     \x20   tlsStreamCAFile: {d}/ca.crt\n    tlsStreamCertFile: {d}/server.crt\n\
                     \x20   tlsStreamPrivateKeyFile: {d}/server.key\n"
                ),
            )
        };
        // What keadm writes: contentType is cloudcore's own, empty strings mean "not set".
        let file = cloudcore(&format!(
            "kubeAPIConfig:\n  burst: 300\n  contentType: application/vnd.kubernetes.protobuf\n\
             \x20 kubeConfig: {}\n  master: \"\"\n  qps: 150.5\n",
            kubeconfig.display()
        ));
        let settings = load(&file, &Flags::default()).unwrap();
        assert_eq!(
            settings.kube_api,
            KubeApiSettings {
                kubeconfig: Some(kubeconfig.clone()),
                master: None,
                qps: 150.5,
                burst: 300,
            }
        );
        let file =
            cloudcore("kubeAPIConfig:\n  kubeConfig: \"\"\n  master: https://10.0.0.1:6443\n");
        let settings = load(&file, &Flags::default()).unwrap();
        assert_eq!(settings.kube_api.kubeconfig, None);
        assert_eq!(
            settings.kube_api.master.as_deref(),
            Some("https://10.0.0.1:6443")
        );
        assert_eq!(settings.kube_api.qps, 100.0);
        assert_eq!(settings.kube_api.burst, 200);
        let flags = Flags {
            kube_api_burst: Some(7),
            ..Flags::default()
        };
        assert_eq!(load(&file, &flags).unwrap().kube_api.burst, 7);

        // cloudcore exits when its kubeconfig cannot be read; so do we.
        let missing = dir.path().join("nope");
        let file = cloudcore(&format!(
            "kubeAPIConfig:\n  kubeConfig: {}\n",
            missing.display()
        ));
        let message = load(&file, &Flags::default()).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!(
                "kubeAPIConfig.kubeConfig: {}: ",
                missing.display()
            )),
            "{message}"
        );
        for (kube_api, key) in [
            ("kubeAPIConfig:\n  qps: fast\n", "kubeAPIConfig.qps"),
            ("kubeAPIConfig:\n  qps: 0\n", "kubeAPIConfig.qps"),
            ("kubeAPIConfig:\n  burst: 1.5\n", "kubeAPIConfig.burst"),
            (
                "kubeAPIConfig:\n  master: localhost:6443\n",
                "kubeAPIConfig.master",
            ),
            (
                "kubeAPIConfig:\n  kubeConfig: [a]\n",
                "kubeAPIConfig.kubeConfig",
            ),
            ("kubeAPIConfig: 5\n", "kubeAPIConfig"),
        ] {
            let file = cloudcore(kube_api);
            let message = load(&file, &Flags::default()).unwrap_err().to_string();
            assert!(
                message.starts_with(&format!("{key}: ")),
                "{kube_api:?}: {message}"
            );
            assert!(message.contains(&file.display().to_string()), "{message}");
        }
    }

    #[test]
    fn cloudcore_yaml_still_works_and_enable_only_warns() {
        let dir = pki();
        let d = dir.path().display();
        let body = |enable: &str| {
            format!(
                "apiVersion: cloudcore.config.kubeedge.io/v1alpha2\nmodules:\n  cloudStream:\n\
                 \x20   enable: {enable}\n    tlsTunnelCAFile: {d}/ca.crt\n\
                 \x20   tlsTunnelCertFile: {d}/server.crt\n    tlsTunnelPrivateKeyFile: {d}/server.key\n\
                 \x20   tlsStreamCAFile: {d}/ca.crt\n    tlsStreamCertFile: {d}/server.crt\n\
                 \x20   tlsStreamPrivateKeyFile: {d}/server.key\n"
            )
        };
        let off = write(dir.path(), "off.yaml", &body("false"));
        let settings = load(&off, &Flags::default()).unwrap();
        assert_eq!(settings.format, Format::KubeEdge);
        assert_eq!(settings.tunnel_addr, "0.0.0.0:10004".parse().unwrap());
        assert!(settings.warnings.is_empty());
        let on = write(dir.path(), "on.yaml", &body("true"));
        let settings = load(&on, &Flags::default()).unwrap();
        assert_eq!(settings.warnings.len(), 1);
        assert!(settings.warnings[0].contains("modules.cloudStream.enable"));
    }

    // cloudcore.yaml: the `modules.cloudStream` keys (and `kubeAPIConfig`), nothing else.

    const CLOUDCORE: &str = "/etc/kubeedge/config/cloudcore.yaml";

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    /// Settings from a `cloudcore.yaml`, without opening the files it names.
    fn cloudcore(text: &str) -> Result<Settings, SettingsError> {
        from_cloudcore(text, Path::new(CLOUDCORE), &Flags::default())
    }

    /// Asserts an error about `key` whose message names the key and the file.
    fn assert_key_error(result: Result<Settings, SettingsError>, key: &str) {
        let message = result.expect_err("expected an error").to_string();
        assert!(message.starts_with(&format!("{key}: ")), "{message}");
        assert!(message.ends_with(&format!("(in {CLOUDCORE})")), "{message}");
    }

    #[test]
    fn keadm_style_cloudcore_yaml_parses() {
        let file = fixture("cloudcore.yaml");
        let text = std::fs::read_to_string(&file).unwrap();
        let settings = from_cloudcore(&text, &file, &Flags::default()).unwrap();
        assert_eq!(
            settings.cloud_stream,
            CloudStreamSettings {
                source: file,
                section: config::SECTION,
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
        assert_eq!(
            settings.kube_api,
            KubeApiSettings {
                kubeconfig: Some("/root/.kube/config".into()),
                master: None,
                qps: 100.0,
                burst: 200,
            }
        );
        // `load` opens it, naming the key.
        assert_eq!(settings.named_files.len(), 1);
        assert_eq!(settings.named_files[0].key, "kubeAPIConfig.kubeConfig");
    }

    #[test]
    fn helm_style_cloudcore_yaml_parses() {
        let file = fixture("cloudcore-helm.yaml");
        let text = std::fs::read_to_string(&file).unwrap();
        let settings = from_cloudcore(&text, &file, &Flags::default()).unwrap();
        assert_eq!(settings.cloud_stream.tunnel_port, 10004);
        assert_eq!(settings.cloud_stream.stream_port, 10003);
        assert_eq!(
            settings.cloud_stream.stream.cert,
            PathBuf::from("/etc/kubeedge/certs/stream.crt")
        );
        // `kubeConfig: ""` and `master: ""`: the in-cluster configuration.
        assert_eq!(settings.kube_api.kubeconfig, None);
        assert_eq!(settings.kube_api.master, None);
        assert!(settings.named_files.is_empty());
    }

    #[test]
    fn cloudcore_defaults_apply_to_absent_and_null_keys() {
        let settings = cloudcore(
            "modules:\n  cloudStream:\n    enable: true\n    tunnelPort:\n    tlsStreamCertFile: ~\n",
        )
        .unwrap();
        let cs = settings.cloud_stream;
        assert_eq!(cs.tunnel_port, 10004);
        assert_eq!(cs.stream_port, 10003);
        assert_eq!(cs.tunnel.ca, PathBuf::from("/etc/kubeedge/ca/rootCA.crt"));
        assert_eq!(
            cs.tunnel.key,
            PathBuf::from("/etc/kubeedge/certs/server.key")
        );
        assert_eq!(
            cs.stream.cert,
            PathBuf::from("/etc/kubeedge/certs/stream.crt")
        );
        assert_eq!(settings.tunnel_addr, "0.0.0.0:10004".parse().unwrap());
    }

    #[test]
    fn cloudcore_explicit_values_win() {
        let settings = cloudcore(
            "apiVersion: cloudcore.config.kubeedge.io/v1alpha2\n\
             modules:\n  cloudStream:\n    enable: true\n    tunnelPort: 20004\n    streamPort: 20003\n\
             \x20   tlsTunnelCAFile: /pki/ca.crt\n    tlsStreamPrivateKeyFile: /pki/stream.key\n",
        )
        .unwrap();
        let cs = &settings.cloud_stream;
        assert_eq!(cs.tunnel_port, 20004);
        assert_eq!(cs.stream_port, 20003);
        assert_eq!(cs.tunnel.ca, PathBuf::from("/pki/ca.crt"));
        assert_eq!(cs.stream.key, PathBuf::from("/pki/stream.key"));
        assert_eq!(settings.stream_addr, "0.0.0.0:20003".parse().unwrap());
    }

    #[test]
    fn cloudcore_enable_is_read_but_not_required() {
        for yaml in [
            "modules:\n  cloudStream:\n    enable: false\n",
            "modules:\n  cloudStream:\n    tunnelPort: 10004\n",
            "modules:\n  cloudHub:\n    enable: true\n",
            "kind: CloudCore\n",
            "",
        ] {
            let settings = cloudcore(yaml).unwrap();
            assert!(!settings.cloud_stream.module_enabled, "{yaml:?}");
            assert!(settings.warnings.is_empty(), "{yaml:?}");
            assert_eq!(
                settings.cloud_stream.tunnel_port,
                config::DEFAULT_TUNNEL_PORT,
                "{yaml:?}"
            );
            assert_eq!(
                settings.cloud_stream.stream_port,
                config::DEFAULT_STREAM_PORT,
                "{yaml:?}"
            );
        }
        let enabled = cloudcore("modules:\n  cloudStream:\n    enable: true\n").unwrap();
        assert!(enabled.cloud_stream.module_enabled);
    }

    #[test]
    fn cloudcore_wrong_types_name_the_key_path_and_the_file() {
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
            assert_key_error(cloudcore(&format!("{enabled}{extra}")), key);
        }
        assert_key_error(
            cloudcore("modules:\n  cloudStream:\n    enable: \"yes please\"\n"),
            "modules.cloudStream.enable",
        );
        assert_key_error(
            cloudcore("modules:\n  cloudStream: true\n"),
            "modules.cloudStream",
        );
        assert_key_error(cloudcore("modules: [a, b]\n"), "modules");
        assert_key_error(cloudcore("- just\n- a list\n"), "(top level)");
        // Another component's file.
        assert_key_error(
            cloudcore(
                "apiVersion: edgecore.config.kubeedge.io/v1alpha2\n\
                 modules:\n  cloudStream:\n    enable: true\n",
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
        for (name, text) in [
            (
                "broken.yaml",
                "modules:\n  cloudStream: [\n    enable: true\n",
            ),
            ("tabs.yaml", "modules:\n\tcloudStream:\n\t\tenable: true\n"),
        ] {
            let file = write(dir.path(), name, text);
            let err = load(&file, &Flags::default()).unwrap_err();
            assert!(
                err.to_string().contains(&file.display().to_string()),
                "{err}"
            );
        }
    }
}
