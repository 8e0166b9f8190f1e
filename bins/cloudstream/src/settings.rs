//! Everything `cloudstream` runs with, from one configuration file and the flags.
//!
//! How this fits: `main` parses [`Flags`], calls [`load`] and gets one typed, validated
//! [`Settings`], from which it builds the library configurations. The file is either tether's
//! own format (`apiVersion: tether.io/v1alpha1`, `kind: CloudStream`; unknown keys are errors)
//! or KubeEdge's `cloudcore.yaml` (read by [`crate::config`]). Precedence: defaults < file <
//! environment variables and flags. Every error names the key and the file, or the flag. The
//! format is documented key by key in `docs/configuration.md`.

use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use stream_server::StreamServerConfig;
use tunnel_session::server::TunnelServerConfig;

use tether_cli::kubeedge::TlsPaths;
use tether_cli::tether_file::{
    self, Deadlines, Format, LogFormat, LogSection, LogSettings, SessionFlags, SessionSection,
    SettingsError, at_least_one, duration, duration_flag, key_error, path_key, path_or, positive,
    window_flag,
};

use crate::config::{self, CloudStreamSettings};

/// `kind` of our format for this binary.
pub const KIND: &str = "CloudStream";
/// Host the listeners bind when only a port is configured (`tunnelPort`, `streamPort`).
pub const DEFAULT_LISTEN_HOST: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// Flags of `cloudstream` (each also read from the environment variable shown by `--help`);
/// they override the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Flags {
    /// Tunnel listener (edges dial it), host:port. Default: all interfaces, `tunnelPort`.
    #[arg(long, env = "CLOUDSTREAM_TUNNEL_ADDR", value_name = "HOST:PORT")]
    pub tunnel_addr: Option<SocketAddr>,
    /// Kubelet-API listener (kube-apiserver dials it), host:port. Default: all interfaces,
    /// `streamPort`.
    #[arg(long, env = "CLOUDSTREAM_STREAM_ADDR", value_name = "HOST:PORT")]
    pub stream_addr: Option<SocketAddr>,
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`), host:port. Default: off.
    #[arg(long, env = "CLOUDSTREAM_ADMIN_ADDR", value_name = "HOST:PORT")]
    pub admin_addr: Option<SocketAddr>,
    /// Per-stream buffer and window, bytes (at least 1024). Default: 1048576.
    #[arg(long, env = "CLOUDSTREAM_STREAM_WINDOW", value_name = "BYTES", value_parser = window_flag)]
    pub stream_window: Option<u32>,
    /// How long a stock-KubeEdge edge may leave one stream's buffer full before that stream
    /// is closed, e.g. 5s (a bare number is seconds). Default: 5s.
    #[arg(long, env = "CLOUDSTREAM_STALL_LIMIT", value_name = "DURATION", value_parser = duration_flag)]
    pub stall_limit: Option<Duration>,
    /// Interval between pings to each edge. Default: 5s.
    #[arg(long, env = "CLOUDSTREAM_PING_INTERVAL", value_name = "DURATION", value_parser = duration_flag)]
    pub ping_interval: Option<Duration>,
    /// Silence after which an edge is dead (longer than the ping interval). Default: 30s.
    #[arg(long, env = "CLOUDSTREAM_DEAD_AFTER", value_name = "DURATION", value_parser = duration_flag)]
    pub dead_after: Option<Duration>,
    /// Deadline of each write to an edge's websocket. Default: 15s.
    #[arg(long, env = "CLOUDSTREAM_WRITE_DEADLINE", value_name = "DURATION", value_parser = duration_flag)]
    pub write_deadline: Option<Duration>,
    /// Log format. Default: text.
    #[arg(long, value_enum, env = "CLOUDSTREAM_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `info,tunnel_session=debug`. Default: `RUST_LOG`, else
    /// `log.level`, else info.
    #[arg(long, env = "CLOUDSTREAM_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// kubeconfig for finding a pod's node through the Kubernetes API (`podResolver`).
    #[cfg(feature = "k8s")]
    #[arg(long, env = "CLOUDSTREAM_POD_KUBECONFIG", value_name = "FILE")]
    pub pod_kubeconfig: Option<PathBuf>,
}

/// Our format for `cloudstream`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CloudStreamFile {
    #[allow(dead_code)] // checked by `tether_file::detect`
    api_version: String,
    kind: String,
    cloud_stream: Option<CloudStreamSection>,
    listen: Option<ListenSection>,
    session: Option<SessionSection>,
    tunnel_server: Option<TunnelServerSection>,
    stream_server: Option<StreamServerSection>,
    pod_resolver: Option<PodResolverSection>,
    log: Option<LogSection>,
}

/// `cloudStream:`: KubeEdge's `modules.cloudStream` keys, same names and meaning.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CloudStreamSection {
    tunnel_port: Option<u16>,
    stream_port: Option<u16>,
    #[serde(rename = "tlsTunnelCAFile")]
    tls_tunnel_ca_file: Option<PathBuf>,
    tls_tunnel_cert_file: Option<PathBuf>,
    tls_tunnel_private_key_file: Option<PathBuf>,
    #[serde(rename = "tlsStreamCAFile")]
    tls_stream_ca_file: Option<PathBuf>,
    tls_stream_cert_file: Option<PathBuf>,
    tls_stream_private_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ListenSection {
    tunnel: Option<SocketAddr>,
    stream: Option<SocketAddr>,
    admin: Option<SocketAddr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TunnelServerSection {
    #[serde(default, deserialize_with = "duration")]
    handshake_timeout: Option<Duration>,
    max_connections: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    drain_grace: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct StreamServerSection {
    #[serde(default, deserialize_with = "duration")]
    handshake_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    response_timeout: Option<Duration>,
    max_connections: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    drain_grace: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PodResolverSection {
    kubeconfig: Option<PathBuf>,
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
    /// Tunnel server and session tunables.
    pub tunnel_server: TunnelServerConfig,
    /// Stream server tunables.
    pub stream_server: StreamServerConfig,
    /// kubeconfig of the pod resolver; `None` turns it off.
    pub pod_kubeconfig: Option<PathBuf>,
    /// Log format and filter.
    pub log: LogSettings,
    /// Things to log once logging is up (e.g. cloudcore's own module is enabled too).
    pub warnings: Vec<String>,
}

/// Reads `file`, merges `flags` over it and validates the result, TLS files included.
pub fn load(file: &Path, flags: &Flags) -> Result<Settings, SettingsError> {
    let text = tether_file::read(file)?;
    let format = tether_file::detect(&text, file, KIND, "cloudcore.config.kubeedge.io")?;
    let settings = match format {
        Format::Tether => from_tether(&text, file, flags)?,
        Format::KubeEdge => from_cloudcore(&text, file, flags)?,
    };
    config::check_readable(&settings.cloud_stream)?;
    if let Some(path) = &settings.pod_kubeconfig {
        tether_file::check_key_file(file, "podResolver.kubeconfig", path)?;
    }
    Ok(settings)
}

fn from_cloudcore(text: &str, file: &Path, flags: &Flags) -> Result<Settings, SettingsError> {
    let cloud_stream = config::parse_cloudcore(text, file)?;
    let mut warnings = Vec::new();
    if cloud_stream.module_enabled {
        warnings.push(format!(
            "{}.enable is true in {}: cloudcore's own CloudStream is enabled too and will \
             conflict with cloudstream (both listen on the stream and tunnel ports); set it to \
             false in cloudcore's configuration",
            config::SECTION,
            file.display()
        ));
    }
    let session =
        tether_file::session_config(file, None, &Deadlines::default(), &session_flags(flags))?;
    Ok(Settings {
        source: file.to_owned(),
        format: Format::KubeEdge,
        tunnel_addr: flags.tunnel_addr.unwrap_or(SocketAddr::new(
            DEFAULT_LISTEN_HOST,
            cloud_stream.tunnel_port,
        )),
        stream_addr: flags.stream_addr.unwrap_or(SocketAddr::new(
            DEFAULT_LISTEN_HOST,
            cloud_stream.stream_port,
        )),
        admin_addr: flags.admin_addr,
        tunnel_server: TunnelServerConfig {
            session,
            ..TunnelServerConfig::default()
        },
        stream_server: StreamServerConfig::default(),
        pod_kubeconfig: flag_kubeconfig(flags),
        log: LogSettings::merge(file, None, flags.log_format, flags.log_level.clone())?,
        cloud_stream,
        warnings,
    })
}

fn from_tether(text: &str, file: &Path, flags: &Flags) -> Result<Settings, SettingsError> {
    let doc = tether_file::from_yaml(PhantomData::<CloudStreamFile>, text, file)?;
    tether_file::check_kind(file, &doc.kind, KIND)?;
    let cs = doc.cloud_stream.unwrap_or_default();
    let listen = doc.listen.unwrap_or_default();
    for (key, port) in [
        ("cloudStream.tunnelPort", cs.tunnel_port),
        ("cloudStream.streamPort", cs.stream_port),
    ] {
        if port == Some(0) {
            return Err(key_error(
                file,
                key,
                "expected a port number from 1 to 65535, found 0".to_owned(),
            ));
        }
    }
    for (key, port_key, addr, port) in [
        (
            "listen.tunnel",
            "cloudStream.tunnelPort",
            listen.tunnel,
            cs.tunnel_port,
        ),
        (
            "listen.stream",
            "cloudStream.streamPort",
            listen.stream,
            cs.stream_port,
        ),
    ] {
        if addr.is_some() && port.is_some() {
            return Err(key_error(
                file,
                key,
                format!("set here and as {port_key}; keep one"),
            ));
        }
    }
    let tls = |key: &str, value: Option<PathBuf>, default: &str| {
        path_or(file, &format!("cloudStream.{key}"), value, default)
    };
    let cloud_stream = CloudStreamSettings {
        source: file.to_owned(),
        section: "cloudStream",
        module_enabled: false,
        tunnel_port: cs.tunnel_port.unwrap_or(config::DEFAULT_TUNNEL_PORT),
        stream_port: cs.stream_port.unwrap_or(config::DEFAULT_STREAM_PORT),
        tunnel: TlsPaths {
            ca: tls(
                "tlsTunnelCAFile",
                cs.tls_tunnel_ca_file,
                config::DEFAULT_TUNNEL_CA,
            )?,
            cert: tls(
                "tlsTunnelCertFile",
                cs.tls_tunnel_cert_file,
                config::DEFAULT_TUNNEL_CERT,
            )?,
            key: tls(
                "tlsTunnelPrivateKeyFile",
                cs.tls_tunnel_private_key_file,
                config::DEFAULT_TUNNEL_KEY,
            )?,
        },
        stream: TlsPaths {
            ca: tls(
                "tlsStreamCAFile",
                cs.tls_stream_ca_file,
                config::DEFAULT_STREAM_CA,
            )?,
            cert: tls(
                "tlsStreamCertFile",
                cs.tls_stream_cert_file,
                config::DEFAULT_STREAM_CERT,
            )?,
            key: tls(
                "tlsStreamPrivateKeyFile",
                cs.tls_stream_private_key_file,
                config::DEFAULT_STREAM_KEY,
            )?,
        },
    };

    let session = tether_file::session_config(
        file,
        doc.session.as_ref(),
        &Deadlines::default(),
        &session_flags(flags),
    )?;
    let ts = doc.tunnel_server.unwrap_or_default();
    positive(file, "tunnelServer.handshakeTimeout", ts.handshake_timeout)?;
    at_least_one(file, "tunnelServer.maxConnections", ts.max_connections)?;
    let ss = doc.stream_server.unwrap_or_default();
    positive(file, "streamServer.handshakeTimeout", ss.handshake_timeout)?;
    positive(file, "streamServer.responseTimeout", ss.response_timeout)?;
    at_least_one(file, "streamServer.maxConnections", ss.max_connections)?;
    let tunnel_defaults = TunnelServerConfig::default();
    let stream_defaults = StreamServerConfig::default();

    let file_kubeconfig = match doc.pod_resolver {
        None => None,
        Some(PodResolverSection { kubeconfig: None }) => {
            return Err(key_error(
                file,
                "podResolver.kubeconfig",
                "missing; the pod resolver needs a kubeconfig (or remove podResolver)".into(),
            ));
        }
        Some(PodResolverSection {
            kubeconfig: Some(path),
        }) => {
            path_key(file, "podResolver.kubeconfig", Some(&path))?;
            if !cfg!(feature = "k8s") {
                return Err(key_error(
                    file,
                    "podResolver",
                    "this cloudstream was built without the `k8s` feature, so it cannot ask \
                     the Kubernetes API; rebuild with `--features k8s` or remove podResolver"
                        .into(),
                ));
            }
            Some(path)
        }
    };

    Ok(Settings {
        source: file.to_owned(),
        format: Format::Tether,
        tunnel_addr: flags
            .tunnel_addr
            .or(listen.tunnel)
            .unwrap_or(SocketAddr::new(
                DEFAULT_LISTEN_HOST,
                cloud_stream.tunnel_port,
            )),
        stream_addr: flags
            .stream_addr
            .or(listen.stream)
            .unwrap_or(SocketAddr::new(
                DEFAULT_LISTEN_HOST,
                cloud_stream.stream_port,
            )),
        admin_addr: flags.admin_addr.or(listen.admin),
        tunnel_server: TunnelServerConfig {
            session,
            handshake_timeout: ts
                .handshake_timeout
                .unwrap_or(tunnel_defaults.handshake_timeout),
            max_connections: ts
                .max_connections
                .unwrap_or(tunnel_defaults.max_connections),
            drain_grace: ts.drain_grace.unwrap_or(tunnel_defaults.drain_grace),
        },
        stream_server: StreamServerConfig {
            handshake_timeout: ss
                .handshake_timeout
                .unwrap_or(stream_defaults.handshake_timeout),
            response_timeout: ss
                .response_timeout
                .unwrap_or(stream_defaults.response_timeout),
            max_connections: ss
                .max_connections
                .unwrap_or(stream_defaults.max_connections),
            drain_grace: ss.drain_grace.unwrap_or(stream_defaults.drain_grace),
        },
        pod_kubeconfig: flag_kubeconfig(flags).or(file_kubeconfig),
        log: LogSettings::merge(
            file,
            doc.log.as_ref(),
            flags.log_format,
            flags.log_level.clone(),
        )?,
        cloud_stream,
        warnings: Vec::new(),
    })
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

#[cfg(feature = "k8s")]
fn flag_kubeconfig(flags: &Flags) -> Option<PathBuf> {
    flags.pod_kubeconfig.clone()
}

#[cfg(not(feature = "k8s"))]
fn flag_kubeconfig(_flags: &Flags) -> Option<PathBuf> {
    None
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
        assert!(settings.pod_kubeconfig.is_none());
    }

    #[test]
    fn defaults_file_and_flags_layer() {
        let dir = pki();
        let file = ours(
            dir.path(),
            "listen:\n  tunnel: 127.0.0.1:0\n  stream: 127.0.0.1:0\n  admin: 127.0.0.1:0\n\
             session:\n  streamWindow: 65536\n  stallLimit: 2s\n\
             tunnelServer:\n  drainGrace: 1s\nstreamServer:\n  responseTimeout: 250ms\n\
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
        assert_eq!(
            settings.stream_server.response_timeout,
            Duration::from_millis(250)
        );
        assert_eq!(settings.log.filter(None), "debug");
        assert_eq!(settings.log.filter(Some("warn".into())), "warn");

        let flags = Flags {
            tunnel_addr: Some("127.0.0.1:1".parse().unwrap()),
            stall_limit: Some(Duration::from_secs(9)),
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
        assert_eq!(settings.log.filter(Some("warn".into())), "error");
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
    fn pod_resolver_needs_the_k8s_feature() {
        let dir = pki();
        write(dir.path(), "kubeconfig", "apiVersion: v1\n");
        let file = ours(
            dir.path(),
            &format!(
                "podResolver:\n  kubeconfig: {}/kubeconfig\n",
                dir.path().display()
            ),
        );
        let result = load(&file, &Flags::default());
        if cfg!(feature = "k8s") {
            assert!(result.unwrap().pod_kubeconfig.is_some());
        } else {
            let message = result.unwrap_err().to_string();
            assert!(message.starts_with("podResolver: "), "{message}");
            assert!(message.contains("k8s"), "{message}");
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
}
