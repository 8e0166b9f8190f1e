//! `cloudstream certs`: writes the certificates a deployment needs as PEM files.
//!
//! How this fits: `main` parses `cloudstream certs …` into [`CertsArgs`] and calls [`run`]. The
//! servers never mint certificates themselves; this subcommand exists so an operator (or the
//! demo) can produce a consistent set in one step and then point `cloudcore.yaml` /
//! `edgecore.yaml` at the files. After writing, [`run`] prints which configuration key takes
//! which file.
//!
//! | file | what | configured as |
//! |---|---|---|
//! | `ca.crt`, `ca.key` | the CA that signs everything below (generated, or `--ca-cert`/`--ca-key` reused; a reused key is never copied) | `tlsTunnelCAFile` (cloud and edge) |
//! | `tunnel.crt`, `tunnel.key` | tunnel server, ECDSA P-256, serverAuth, SANs from `--tunnel-san` | `tlsTunnelCertFile` / `tlsTunnelPrivateKeyFile` (cloud) |
//! | `stream.crt`, `stream.key` | stream server, serverAuth, SANs from `--stream-san` | `tlsStreamCertFile` / `tlsStreamPrivateKeyFile` |
//! | `stream-ca.crt` | the CA kube-apiserver's kubelet client certificate must chain to: our CA, or `--stream-ca-cert` | `tlsStreamCAFile` |
//! | `apiserver-kubelet-client.crt/.key` | a kube-apiserver kubelet client certificate for tests and the demo (only with our own stream CA) | kube-apiserver `--kubelet-client-certificate` / `-key` |
//! | `node-NAME.crt/.key` | one per `--node`: CN `system:node:NAME`, O `system:nodes`, clientAuth | `tlsTunnelCertFile` / `tlsTunnelPrivateKeyFile` (edge) |
//!
//! Every key is ECDSA P-256: stock KubeEdge edges offer only ECDHE-ECDSA suites in TLS 1.2, so
//! the tunnel certificate must be ECDSA, and one key type everywhere keeps things simple. A
//! reused CA may hold any key rustls can load (ECDSA, Ed25519, RSA, in PKCS#8, SEC1 or PKCS#1,
//! so kubeadm's `ca.key` and KubeEdge's `rootCA.key` both work).
//!
//! Existing files are never replaced without `--force` (a file whose content would not change
//! is left alone and is not a conflict); with `--force` each file is written to a temporary
//! name and renamed into place, so a running cloudstream that reloads certificates never sees
//! a half-written file.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SignatureAlgorithm, SigningKey,
};
use rustls::SignatureScheme;
use rustls::pki_types::CertificateDer;
use tunnel_session::tls;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The CN prefix of Kubernetes node certificates (the tunnel takes the node name from it).
const NODE_CN_PREFIX: &str = "system:node:";
/// The organization (group) of Kubernetes node certificates.
const NODES_ORG: &str = "system:nodes";
/// Subject of the kube-apiserver kubelet client certificate, as kubeadm names it.
const APISERVER_CLIENT_CN: &str = "kube-apiserver-kubelet-client";
const APISERVER_CLIENT_ORG: &str = "system:masters";
/// CN of a CA this command generates.
const CA_CN: &str = "tether cloudstream CA";
const SECONDS_PER_DAY: u64 = 86_400;
/// Certificates start this long before "now", so a peer whose clock is a little behind
/// accepts them at once.
const BACKDATE: Duration = Duration::from_secs(3_600);
/// SANs of a server certificate when none are given: enough for a local demo.
const DEFAULT_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Write a CA, server, kube-apiserver client and node certificates as PEM files.
#[derive(Debug, Clone, clap::Args)]
pub struct CertsArgs {
    /// Directory to write into; created if missing.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Sign with this existing CA certificate (PEM) instead of generating a CA. Needs
    /// --ca-key. The certificate is copied to DIR/ca.crt; the key is not copied.
    #[arg(long, value_name = "FILE", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,

    /// Private key of --ca-cert (PEM: PKCS#8, SEC1 or PKCS#1).
    #[arg(long, value_name = "FILE", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,

    /// Subject alternative name of the tunnel server certificate: the name or IP edges dial
    /// (`modules.edgeStream.server`). Repeat for several; IPs become IP SANs.
    /// Default: localhost, 127.0.0.1, ::1.
    #[arg(long = "tunnel-san", value_name = "NAME|IP")]
    pub tunnel_sans: Vec<String>,

    /// Subject alternative name of the stream server certificate. Repeat for several; IPs
    /// become IP SANs. Only checked when kube-apiserver runs with
    /// --kubelet-certificate-authority; then list every edge node's name and address.
    /// Default: localhost, 127.0.0.1, ::1.
    #[arg(long = "stream-san", value_name = "NAME|IP")]
    pub stream_sans: Vec<String>,

    /// The CA that signed kube-apiserver's --kubelet-client-certificate (usually the
    /// cluster CA, /etc/kubernetes/pki/ca.crt). Copied to DIR/stream-ca.crt for
    /// tlsStreamCAFile; no apiserver client certificate is generated. Default: our CA, and
    /// a test client certificate apiserver-kubelet-client.crt signed by it.
    #[arg(long, value_name = "FILE")]
    pub stream_ca_cert: Option<PathBuf>,

    /// Private key of --stream-ca-cert. When given, stream.crt is signed by that CA instead
    /// of ours (needed when kube-apiserver verifies kubelet serving certificates with
    /// --kubelet-certificate-authority set to that CA).
    #[arg(long, value_name = "FILE", requires = "stream_ca_cert")]
    pub stream_ca_key: Option<PathBuf>,

    /// Issue a tunnel client certificate for this edge node (its
    /// `modules.edged.hostnameOverride`). Repeat for several.
    #[arg(long = "node", value_name = "NAME")]
    pub nodes: Vec<String>,

    /// Write only these certificates (comma-separated), e.g. `--only nodes` with --ca-cert /
    /// --ca-key to add nodes later. Default: all of them. The CA is always written (or
    /// copied when reused).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "WHAT")]
    pub only: Vec<Part>,

    /// Validity of the issued certificates, in days.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub days: u32,

    /// Validity of a generated CA, in days (at least --days).
    #[arg(long, default_value_t = 3_650, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub ca_days: u32,

    /// Replace files that already exist.
    #[arg(long)]
    pub force: bool,
}

/// The groups of certificates `--only` can select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Part {
    /// `tunnel.crt` / `tunnel.key`.
    Tunnel,
    /// `stream.crt` / `stream.key` / `stream-ca.crt`.
    Stream,
    /// `apiserver-kubelet-client.crt` / `.key`.
    ApiserverClient,
    /// `node-NAME.crt` / `.key` for every `--node`.
    Nodes,
}

/// Generates the certificates `args` asks for, writes them, and prints what was written and
/// which configuration keys take the files.
pub fn run(args: &CertsArgs) -> Result<()> {
    run_to(args, &mut io::stdout().lock())
}

fn run_to(args: &CertsArgs, report: &mut impl Write) -> Result<()> {
    let plan = plan(args, SystemTime::now())?;
    create_dir(&args.out)?;
    let dir =
        fs::canonicalize(&args.out).with_context(|| format!("resolving {}", args.out.display()))?;
    let outcomes = write_all(&dir, &plan.files, args.force)?;
    for note in &plan.notes {
        writeln!(report, "note: {note}")?;
    }
    for (file, outcome) in plan.files.iter().zip(&outcomes) {
        let mode = if file.secret { ", mode 0600" } else { "" };
        writeln!(
            report,
            "{outcome} {} ({}{mode})",
            dir.join(&file.name).display(),
            file.about
        )?;
    }
    write_config_hint(report, &dir, &plan)?;
    Ok(())
}

/// One file to write.
#[derive(Debug)]
struct OutFile {
    /// File name inside the output directory.
    name: String,
    contents: Vec<u8>,
    /// A private key: mode 0600.
    secret: bool,
    /// What it is, for the report.
    about: String,
}

/// Everything to write, decided before anything touches the disk.
#[derive(Debug)]
struct Plan {
    files: Vec<OutFile>,
    /// Remarks for the operator (defaults taken, certificates skipped).
    notes: Vec<String>,
    parts: BTreeSet<Part>,
    nodes: Vec<String>,
    apiserver_client: bool,
}

fn plan(args: &CertsArgs, now: SystemTime) -> Result<Plan> {
    let mut notes = Vec::new();
    let explicit = !args.only.is_empty();
    let parts: BTreeSet<Part> = if explicit {
        args.only.iter().copied().collect()
    } else {
        [
            Part::Tunnel,
            Part::Stream,
            Part::ApiserverClient,
            Part::Nodes,
        ]
        .into()
    };

    let mut nodes = Vec::new();
    for name in &args.nodes {
        check_node_name(name).with_context(|| format!("--node {name:?}"))?;
        if !nodes.contains(name) {
            nodes.push(name.clone());
        }
    }
    if explicit && parts.contains(&Part::Nodes) {
        ensure!(
            !nodes.is_empty(),
            "--only nodes needs at least one --node NAME"
        );
    }
    if !parts.contains(&Part::Nodes) {
        ensure!(
            nodes.is_empty(),
            "--node was given but --only does not include nodes"
        );
    }
    if args.stream_ca_cert.is_some() {
        ensure!(
            parts.contains(&Part::Stream),
            "--stream-ca-cert only affects the stream certificates; add stream to --only"
        );
        ensure!(
            !(explicit && parts.contains(&Part::ApiserverClient)),
            "apiserver-client is only generated with our own stream CA; drop it from --only \
             or drop --stream-ca-cert"
        );
    }
    let apiserver_client = parts.contains(&Part::ApiserverClient) && args.stream_ca_cert.is_none();
    if parts.contains(&Part::ApiserverClient) && !apiserver_client {
        notes.push(
            "no apiserver-kubelet-client certificate: --stream-ca-cert is given, so \
             kube-apiserver's own --kubelet-client-certificate (signed by that CA) is used"
                .to_owned(),
        );
    }
    let tunnel_sans = sans(&args.tunnel_sans, "--tunnel-san")?;
    let stream_sans = sans(&args.stream_sans, "--stream-san")?;
    if parts.contains(&Part::Tunnel) && args.tunnel_sans.is_empty() {
        notes.push(
            "no --tunnel-san given: tunnel.crt is valid for localhost, 127.0.0.1 and ::1 only; \
             edges that verify the cloud and dial another name or address will refuse it"
                .to_owned(),
        );
    }
    if parts.contains(&Part::Stream) && args.stream_sans.is_empty() {
        notes.push(
            "no --stream-san given: stream.crt is valid for localhost, 127.0.0.1 and ::1 only \
             (enough unless kube-apiserver runs with --kubelet-certificate-authority)"
                .to_owned(),
        );
    }

    let not_before = now.checked_sub(BACKDATE).unwrap_or(UNIX_EPOCH);
    let not_after = now + days(args.days);
    let mut files = Vec::new();

    // The CA: generated, or loaded and its certificate copied.
    let ca = match (&args.ca_cert, &args.ca_key) {
        (Some(cert), Some(key)) => {
            let ca = LoadedCa::load(cert, key)?;
            if let Some(ca_end) = ca.not_after
                && ca_end < not_after
            {
                notes.push(format!(
                    "the CA in {} expires before the certificates issued now (after {} of \
                     their {} days); they stop verifying when it does",
                    cert.display(),
                    describe_days(ca_end.duration_since(now).unwrap_or_default()),
                    args.days
                ));
            }
            files.push(OutFile {
                name: "ca.crt".into(),
                contents: ca.cert_pem,
                secret: false,
                about: format!("CA certificate, copied from {}", cert.display()),
            });
            ca.issuer
        }
        (None, None) => {
            ensure!(
                args.ca_days >= args.days,
                "--ca-days ({}) must be at least --days ({}): certificates stop verifying \
                 when their CA expires",
                args.ca_days,
                args.days
            );
            let ca_not_after = now + days(args.ca_days);
            let key = KeyPair::generate().context("generating the CA key")?;
            let mut params = CertificateParams::default();
            params.not_before = not_before.into();
            params.not_after = ca_not_after.into();
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.distinguished_name = subject(CA_CN, None);
            let cert = params.self_signed(&key).context("signing the CA")?;
            files.push(OutFile {
                name: "ca.crt".into(),
                contents: cert.pem().into_bytes(),
                secret: false,
                about: format!("CA certificate, CN {CA_CN:?}, until {}", date(ca_not_after)),
            });
            files.push(OutFile {
                name: "ca.key".into(),
                contents: key.serialize_pem().into_bytes(),
                secret: true,
                about: "CA private key".into(),
            });
            Issuer::new(params, CaKey::Generated(Box::new(key)))
        }
        // clap's `requires` makes these impossible from the command line.
        _ => bail!("--ca-cert and --ca-key go together"),
    };

    let leaf = Leaf {
        not_before,
        not_after,
    };
    if parts.contains(&Part::Tunnel) {
        let (cert, key) = leaf.issue(
            "cloudstream tunnel",
            None,
            &tunnel_sans,
            ExtendedKeyUsagePurpose::ServerAuth,
            &ca,
        )?;
        let about = format!("tunnel server, SANs {}", tunnel_sans.join(", "));
        push_pair(&mut files, "tunnel", cert, key, &about, not_after);
    }
    if parts.contains(&Part::Stream) {
        let stream_ca = match (&args.stream_ca_cert, &args.stream_ca_key) {
            (Some(cert), key) => {
                // The same check cloudstream makes at start-up: usable as trust anchors.
                tls::load_ca(cert)
                    .with_context(|| format!("--stream-ca-cert {}", cert.display()))?;
                let pem = fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
                let signer = match key {
                    Some(key) => Some(LoadedCa::load(cert, key)?.issuer),
                    None => None,
                };
                Some((cert, pem, signer))
            }
            (None, _) => None,
        };
        let (stream_ca_pem, stream_ca_about) = match &stream_ca {
            Some((path, pem, _)) => (
                pem.clone(),
                format!("stream client CA, copied from {}", path.display()),
            ),
            None => (
                files[0].contents.clone(),
                "stream client CA: the same as ca.crt".to_owned(),
            ),
        };
        files.push(OutFile {
            name: "stream-ca.crt".into(),
            contents: stream_ca_pem,
            secret: false,
            about: stream_ca_about,
        });
        let issuer = match &stream_ca {
            Some((_, _, Some(issuer))) => issuer,
            _ => &ca,
        };
        let (cert, key) = leaf.issue(
            "cloudstream stream",
            None,
            &stream_sans,
            ExtendedKeyUsagePurpose::ServerAuth,
            issuer,
        )?;
        let signer = match &stream_ca {
            Some((path, _, Some(_))) => format!(", signed by {}", path.display()),
            _ => String::new(),
        };
        let about = format!("stream server, SANs {}{signer}", stream_sans.join(", "));
        push_pair(&mut files, "stream", cert, key, &about, not_after);
    }
    if apiserver_client {
        let (cert, key) = leaf.issue(
            APISERVER_CLIENT_CN,
            Some(APISERVER_CLIENT_ORG),
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            &ca,
        )?;
        let about = format!(
            "kube-apiserver kubelet client, CN {APISERVER_CLIENT_CN}, O {APISERVER_CLIENT_ORG}"
        );
        push_pair(
            &mut files,
            "apiserver-kubelet-client",
            cert,
            key,
            &about,
            not_after,
        );
    }
    for node in &nodes {
        let cn = format!("{NODE_CN_PREFIX}{node}");
        let (cert, key) = leaf.issue(
            &cn,
            Some(NODES_ORG),
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            &ca,
        )?;
        let about = format!("node {node}, CN {cn}, O {NODES_ORG}");
        push_pair(
            &mut files,
            &format!("node-{node}"),
            cert,
            key,
            &about,
            not_after,
        );
    }

    Ok(Plan {
        files,
        notes,
        parts,
        nodes,
        apiserver_client,
    })
}

fn push_pair(
    files: &mut Vec<OutFile>,
    stem: &str,
    cert: rcgen::Certificate,
    key: KeyPair,
    about: &str,
    not_after: SystemTime,
) {
    files.push(OutFile {
        name: format!("{stem}.crt"),
        contents: cert.pem().into_bytes(),
        secret: false,
        about: format!("{about}, until {}", date(not_after)),
    });
    files.push(OutFile {
        name: format!("{stem}.key"),
        contents: key.serialize_pem().into_bytes(),
        secret: true,
        about: format!("key of {stem}.crt"),
    });
}

/// Validity shared by every leaf certificate of one run.
struct Leaf {
    not_before: SystemTime,
    not_after: SystemTime,
}

impl Leaf {
    /// A fresh P-256 key and a certificate for it signed by `issuer`.
    fn issue(
        &self,
        common_name: &str,
        organization: Option<&str>,
        sans: &[String],
        usage: ExtendedKeyUsagePurpose,
        issuer: &Issuer<'_, CaKey>,
    ) -> Result<(rcgen::Certificate, KeyPair)> {
        let key = KeyPair::generate().context("generating a key")?;
        let mut params = CertificateParams::default();
        params.not_before = self.not_before.into();
        params.not_after = self.not_after.into();
        params.distinguished_name = subject(common_name, organization);
        params.subject_alt_names = sans.iter().map(|s| san(s)).collect::<Result<_>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        // The serial number is left to rcgen: derived from the (fresh) public key, so unique.
        let cert = params
            .signed_by(&key, issuer)
            .with_context(|| format!("signing the certificate for {common_name}"))?;
        Ok((cert, key))
    }
}

fn subject(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

/// The SAN list of a server certificate: the given ones, checked, or the local defaults.
fn sans(given: &[String], flag: &str) -> Result<Vec<String>> {
    if given.is_empty() {
        return Ok(DEFAULT_SANS.iter().map(|s| (*s).to_owned()).collect());
    }
    let mut out: Vec<String> = Vec::new();
    for value in given {
        san(value).with_context(|| format!("{flag} {value:?}"))?;
        if !out.contains(value) {
            out.push(value.clone());
        }
    }
    Ok(out)
}

/// An IP (bare or in brackets) becomes an IP SAN, anything else a DNS SAN.
fn san(value: &str) -> Result<SanType> {
    let unbracketed = value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or(value);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let labels = value.strip_prefix("*.").unwrap_or(value);
    let valid = !labels.is_empty()
        && labels.len() <= 253
        && labels.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    ensure!(
        valid,
        "not an IP address or a DNS name (letters, digits, '-' and '.', optionally \"*.\" first)"
    );
    Ok(SanType::DnsName(value.to_ascii_lowercase().try_into()?))
}

/// Kubernetes node names are DNS-1123 subdomains; the name also becomes part of a file name,
/// so nothing else may pass.
fn check_node_name(name: &str) -> Result<()> {
    ensure!(
        tether_cli::kubeedge::is_node_name(name),
        "not a valid node name (lower-case letters, digits, '-' and '.', starting and ending \
         with a letter or digit)"
    );
    Ok(())
}

fn days(n: u32) -> Duration {
    Duration::from_secs(u64::from(n) * SECONDS_PER_DAY)
}

fn describe_days(d: Duration) -> String {
    format!("{} days", d.as_secs() / SECONDS_PER_DAY)
}

/// `YYYY-MM-DD` (UTC) for the report.
fn date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    // Days since 1970-01-01 to a civil date (Howard Hinnant's `civil_from_days`).
    let z = secs / SECONDS_PER_DAY + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// A signing key for rcgen: one we generated, or a CA key from disk loaded through rustls
/// (which, unlike rcgen with ring, reads SEC1 and PKCS#1 as well as PKCS#8).
enum CaKey {
    Generated(Box<KeyPair>),
    Loaded(LoadedKey),
}

struct LoadedKey {
    signer: Box<dyn rustls::sign::Signer>,
    /// The subjectPublicKey bits of the key's SubjectPublicKeyInfo.
    public_key: Vec<u8>,
    algorithm: &'static SignatureAlgorithm,
}

impl PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        match self {
            Self::Generated(key) => key.der_bytes(),
            Self::Loaded(key) => &key.public_key,
        }
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        match self {
            Self::Generated(key) => PublicKeyData::algorithm(key.as_ref()),
            Self::Loaded(key) => key.algorithm,
        }
    }
}

impl SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        match self {
            Self::Generated(key) => key.sign(msg),
            Self::Loaded(key) => key
                .signer
                .sign(msg)
                .map_err(|_| rcgen::Error::RemoteKeyError),
        }
    }
}

/// An existing CA read from disk.
struct LoadedCa {
    issuer: Issuer<'static, CaKey>,
    /// The certificate file as it is, copied to the output directory.
    cert_pem: Vec<u8>,
    not_after: Option<SystemTime>,
}

impl LoadedCa {
    fn load(cert_path: &Path, key_path: &Path) -> Result<Self> {
        let certs = tls::load_certs(cert_path)?;
        let cert_der: &CertificateDer<'static> = &certs[0];
        let (_, cert) = X509Certificate::from_der(cert_der)
            .map_err(|e| anyhow!("{}: not valid X.509: {e}", cert_path.display()))?;
        ensure!(
            cert.is_ca(),
            "{}: not a CA certificate (basicConstraints CA:TRUE is missing)",
            cert_path.display()
        );
        if let Ok(Some(usage)) = cert.key_usage() {
            ensure!(
                usage.value.key_cert_sign(),
                "{}: the key usage does not allow signing certificates (keyCertSign)",
                cert_path.display()
            );
        }
        let not_after = u64::try_from(cert.validity().not_after.timestamp())
            .ok()
            .map(|s| UNIX_EPOCH + Duration::from_secs(s));

        let key = load_key(key_path)?;
        ensure!(
            key.public_key == cert.public_key().subject_public_key.data.as_ref(),
            "{} is not the key of {}",
            key_path.display(),
            cert_path.display()
        );
        let issuer = Issuer::from_ca_cert_der(cert_der, CaKey::Loaded(key))
            .with_context(|| format!("using {} as the issuer", cert_path.display()))?;
        let cert_pem =
            fs::read(cert_path).with_context(|| format!("reading {}", cert_path.display()))?;
        Ok(Self {
            issuer,
            cert_pem,
            not_after,
        })
    }
}

fn load_key(path: &Path) -> Result<LoadedKey> {
    let der = tls::load_private_key(path)?;
    let key = tls::crypto_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| anyhow!("{}: not a usable private key: {e}", path.display()))?;
    let spki = key
        .public_key()
        .ok_or_else(|| anyhow!("{}: cannot derive the public key", path.display()))?;
    let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki)
        .map_err(|e| anyhow!("{}: bad public key: {e}", path.display()))?;
    let public_key = info.subject_public_key.data.to_vec();
    let candidates: [(SignatureScheme, &'static SignatureAlgorithm); 4] = [
        (
            SignatureScheme::ECDSA_NISTP256_SHA256,
            &rcgen::PKCS_ECDSA_P256_SHA256,
        ),
        (
            SignatureScheme::ECDSA_NISTP384_SHA384,
            &rcgen::PKCS_ECDSA_P384_SHA384,
        ),
        (SignatureScheme::ED25519, &rcgen::PKCS_ED25519),
        (SignatureScheme::RSA_PKCS1_SHA256, &rcgen::PKCS_RSA_SHA256),
    ];
    for (scheme, algorithm) in candidates {
        if let Some(signer) = key.choose_scheme(&[scheme]) {
            return Ok(LoadedKey {
                signer,
                public_key,
                algorithm,
            });
        }
    }
    bail!(
        "{}: key type not supported for signing (use ECDSA P-256/P-384, Ed25519 or RSA)",
        path.display()
    )
}

fn create_dir(dir: &Path) -> Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o755);
    builder
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Wrote,
    Replaced,
    Unchanged,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Wrote => "wrote",
            Self::Replaced => "replaced",
            Self::Unchanged => "unchanged",
        })
    }
}

/// Writes every file, or none if one exists with other content and `force` is off.
fn write_all(dir: &Path, files: &[OutFile], force: bool) -> Result<Vec<Outcome>> {
    let mut outcomes = Vec::with_capacity(files.len());
    let mut conflicts = Vec::new();
    for file in files {
        let path = dir.join(&file.name);
        let outcome = match fs::read(&path) {
            Ok(existing) if existing == file.contents => Outcome::Unchanged,
            Ok(_) => {
                conflicts.push(path.display().to_string());
                Outcome::Replaced
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Outcome::Wrote,
            Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
        };
        outcomes.push(outcome);
    }
    if !force && !conflicts.is_empty() {
        bail!(
            "refusing to overwrite existing files (nothing was written; --force replaces \
             them): {}",
            conflicts.join(", ")
        );
    }
    for (file, outcome) in files.iter().zip(&outcomes) {
        let path = dir.join(&file.name);
        let result = match outcome {
            Outcome::Unchanged => Ok(()),
            Outcome::Wrote => write_new(&path, &file.contents, file.secret),
            Outcome::Replaced => replace(dir, &path, &file.contents, file.secret),
        };
        result.with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(outcomes)
}

fn open_new(path: &Path, secret: bool) -> io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, if secret { 0o600 } else { 0o644 });
    #[cfg(not(unix))]
    let _ = secret;
    options.open(path)
}

/// Creates `path`, failing if it appeared since the check.
fn write_new(path: &Path, contents: &[u8], secret: bool) -> io::Result<()> {
    let mut file = open_new(path, secret)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Writes a temporary file beside `path` and renames it over `path`, so readers see the old
/// file or the new one, never a mix.
fn replace(dir: &Path, path: &Path, contents: &[u8], secret: bool) -> io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let written = write_new(&tmp, contents, secret).and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Prints which `cloudcore.yaml` / `edgecore.yaml` key takes which file.
fn write_config_hint(out: &mut impl Write, dir: &Path, plan: &Plan) -> io::Result<()> {
    let p = |name: &str| dir.join(name).display().to_string();
    writeln!(out)?;
    if plan.parts.contains(&Part::Tunnel) || plan.parts.contains(&Part::Stream) {
        writeln!(out, "cloudcore.yaml, modules.cloudStream:")?;
        if plan.parts.contains(&Part::Tunnel) {
            writeln!(out, "  tlsTunnelCAFile: {}", p("ca.crt"))?;
            writeln!(out, "  tlsTunnelCertFile: {}", p("tunnel.crt"))?;
            writeln!(out, "  tlsTunnelPrivateKeyFile: {}", p("tunnel.key"))?;
        }
        if plan.parts.contains(&Part::Stream) {
            writeln!(out, "  tlsStreamCAFile: {}", p("stream-ca.crt"))?;
            writeln!(out, "  tlsStreamCertFile: {}", p("stream.crt"))?;
            writeln!(out, "  tlsStreamPrivateKeyFile: {}", p("stream.key"))?;
        }
    }
    if plan.apiserver_client {
        writeln!(
            out,
            "kube-apiserver (tests and demos only; it is in system:masters):"
        )?;
        writeln!(
            out,
            "  --kubelet-client-certificate={}",
            p("apiserver-kubelet-client.crt")
        )?;
        writeln!(
            out,
            "  --kubelet-client-key={}",
            p("apiserver-kubelet-client.key")
        )?;
    }
    for node in &plan.nodes {
        writeln!(
            out,
            "edgecore.yaml of node {node} (modules.edged.hostnameOverride: {node}), \
             modules.edgeStream (copy the files to the node):"
        )?;
        writeln!(out, "  tlsTunnelCAFile: {}", p("ca.crt"))?;
        writeln!(
            out,
            "  tlsTunnelCertFile: {}",
            p(&format!("node-{node}.crt"))
        )?;
        writeln!(
            out,
            "  tlsTunnelPrivateKeyFile: {}",
            p(&format!("node-{node}.key"))
        )?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::Arc;

    use clap::Parser;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ServerConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tunnel_session::tls::TlsFiles;
    use x509_parser::extensions::GeneralName;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        certs: CertsArgs,
    }

    fn parse(out: &Path, extra: &[&str]) -> CertsArgs {
        let mut argv = vec!["certs".to_owned(), "--out".to_owned()];
        argv.push(out.display().to_string());
        argv.extend(extra.iter().map(|s| (*s).to_owned()));
        Cli::try_parse_from(argv).unwrap().certs
    }

    /// Runs the command, returning its report.
    fn certs(out: &Path, extra: &[&str]) -> Result<String> {
        let mut report = Vec::new();
        run_to(&parse(out, extra), &mut report)?;
        Ok(String::from_utf8(report).unwrap())
    }

    /// The standard set used by most tests.
    fn standard(out: &Path) -> String {
        certs(
            out,
            &[
                "--tunnel-san",
                "cloud.example.com",
                "--tunnel-san",
                "127.0.0.1",
                "--tunnel-san",
                "[fd00::1]",
                "--stream-san",
                "edge-1",
                "--stream-san",
                "192.0.2.7",
                "--node",
                "edge-1",
                "--node",
                "edge-2.zone-a",
            ],
        )
        .unwrap()
    }

    fn cert_der(path: &Path) -> CertificateDer<'static> {
        let mut certs = CertificateDer::pem_file_iter(path)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        assert_eq!(certs.len(), 1, "{}", path.display());
        certs.remove(0)
    }

    fn with_cert<T>(path: &Path, f: impl FnOnce(&X509Certificate<'_>) -> T) -> T {
        let der = cert_der(path);
        let (rest, cert) = X509Certificate::from_der(&der).unwrap();
        assert!(rest.is_empty());
        f(&cert)
    }

    fn names(cert: &X509Certificate<'_>) -> (Vec<String>, Vec<String>) {
        let cn = cert
            .subject()
            .iter_common_name()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        let org = cert
            .subject()
            .iter_organization()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        (cn, org)
    }

    fn sans_of(cert: &X509Certificate<'_>) -> Vec<String> {
        let Some(ext) = cert.subject_alternative_name().unwrap() else {
            return Vec::new();
        };
        ext.value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::DNSName(dns) => format!("dns:{dns}"),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => format!("ip:{}", IpAddr::from(<[u8; 4]>::try_from(*ip).unwrap())),
                    _ => format!("ip:{}", IpAddr::from(<[u8; 16]>::try_from(*ip).unwrap())),
                },
                other => format!("other:{other:?}"),
            })
            .collect()
    }

    fn eku(cert: &X509Certificate<'_>) -> (bool, bool) {
        let ext = cert.extended_key_usage().unwrap().unwrap();
        (ext.value.server_auth, ext.value.client_auth)
    }

    #[test]
    fn writes_every_file_with_the_right_subjects_and_sans() {
        let dir = tempfile::tempdir().unwrap();
        let report = standard(dir.path());
        let d = dir.path();

        let expected = [
            "ca.crt",
            "ca.key",
            "tunnel.crt",
            "tunnel.key",
            "stream-ca.crt",
            "stream.crt",
            "stream.key",
            "apiserver-kubelet-client.crt",
            "apiserver-kubelet-client.key",
            "node-edge-1.crt",
            "node-edge-1.key",
            "node-edge-2.zone-a.crt",
            "node-edge-2.zone-a.key",
        ];
        let mut present: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        present.sort();
        let mut wanted: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
        wanted.sort();
        assert_eq!(present, wanted);
        for name in expected {
            assert!(
                report.contains(&format!("wrote {}", d.join(name).display())),
                "{report}"
            );
        }
        // The report tells where each file goes.
        assert!(report.contains(&format!(
            "tlsStreamCAFile: {}",
            d.join("stream-ca.crt").display()
        )));
        assert!(report.contains("hostnameOverride: edge-1"), "{report}");

        with_cert(&d.join("ca.crt"), |ca| {
            assert!(ca.is_ca());
            assert_eq!(names(ca).0, [CA_CN]);
        });
        // The stream client CA is our CA by default.
        assert_eq!(
            fs::read(d.join("ca.crt")).unwrap(),
            fs::read(d.join("stream-ca.crt")).unwrap()
        );

        with_cert(&d.join("tunnel.crt"), |cert| {
            assert!(!cert.is_ca());
            assert_eq!(
                sans_of(cert),
                ["dns:cloud.example.com", "ip:127.0.0.1", "ip:fd00::1"]
            );
            assert_eq!(eku(cert), (true, false));
            // ECDSA P-256: what stock KubeEdge TLS 1.2 clients can use.
            let alg = &cert.public_key().algorithm;
            assert_eq!(
                alg.algorithm,
                x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
            );
            let curve = alg.parameters.as_ref().unwrap().as_oid().unwrap();
            assert_eq!(curve, x509_parser::oid_registry::OID_EC_P256);
        });
        with_cert(&d.join("stream.crt"), |cert| {
            assert_eq!(sans_of(cert), ["dns:edge-1", "ip:192.0.2.7"]);
            assert_eq!(eku(cert), (true, false));
        });
        with_cert(&d.join("apiserver-kubelet-client.crt"), |cert| {
            assert_eq!(
                names(cert),
                (
                    vec![APISERVER_CLIENT_CN.to_owned()],
                    vec![APISERVER_CLIENT_ORG.to_owned()]
                )
            );
            assert_eq!(eku(cert), (false, true));
        });
        for node in ["edge-1", "edge-2.zone-a"] {
            let path = d.join(format!("node-{node}.crt"));
            with_cert(&path, |cert| {
                assert_eq!(
                    names(cert),
                    (
                        vec![format!("system:node:{node}")],
                        vec!["system:nodes".to_owned()]
                    )
                );
                assert_eq!(eku(cert), (false, true));
                assert!(sans_of(cert).is_empty());
                // The tunnel server derives exactly this node name.
                assert_eq!(
                    tls::node_name_from_certificate(&cert_der(&path)).unwrap(),
                    node
                );
                let validity =
                    cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
                assert_eq!(validity, 365 * 86_400 + 3_600);
            });
        }
    }

    #[test]
    fn keys_are_private_and_load() {
        let dir = tempfile::tempdir().unwrap();
        standard(dir.path());
        for entry in fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            #[cfg(unix)]
            let mode = {
                use std::os::unix::fs::PermissionsExt;
                fs::metadata(&path).unwrap().permissions().mode() & 0o777
            };
            if name.ends_with(".key") {
                #[cfg(unix)]
                assert_eq!(mode, 0o600, "{name}");
                let key = tls::load_private_key(&path).unwrap();
                assert!(matches!(key, PrivateKeyDer::Pkcs8(_)), "{name}");
                PrivateKeyDer::from_pem_file(&path).unwrap();
                // Each key belongs to its certificate.
                let cert = path.with_extension("crt");
                tunnel_session::tls::ReloadingCert::new(cert, path.clone()).unwrap();
            } else {
                #[cfg(unix)]
                assert_eq!(
                    mode & 0o077,
                    mode & 0o044,
                    "{name}: only read bits for others"
                );
                tls::load_certs(&path).unwrap();
            }
        }
    }

    /// Accepts one TLS connection and completes a one-byte exchange both ways, so both
    /// handshakes (including the server's check of the client certificate) are finished.
    /// Returns the node name the server derives from the client certificate.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        server_name: &str,
    ) -> Result<(String, rustls::ProtocolVersion, rustls::CipherSuite)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accept = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = tokio_rustls::TlsAcceptor::from(server).accept(tcp).await?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await?;
            tls.write_all(&byte).await?;
            tls.flush().await?;
            let node = tls::peer_node_name(tls.get_ref().1)?;
            anyhow::Ok(node)
        });
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(server_name.to_owned())?;
        let connected = async {
            let mut tls = tokio_rustls::TlsConnector::from(client)
                .connect(name, tcp)
                .await?;
            tls.write_all(b"x").await?;
            tls.flush().await?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await?;
            let conn = tls.get_ref().1;
            anyhow::Ok((
                conn.protocol_version().unwrap(),
                conn.negotiated_cipher_suite().unwrap().suite(),
            ))
        }
        .await;
        let served = accept.await?;
        let (version, suite) = connected?;
        Ok((served?, version, suite))
    }

    fn files(dir: &Path, ca: &str, stem: &str) -> TlsFiles {
        TlsFiles {
            ca: dir.join(ca),
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        }
    }

    #[tokio::test]
    async fn node_certificate_passes_the_tunnel_handshake() {
        let dir = tempfile::tempdir().unwrap();
        standard(dir.path());
        let d = dir.path();
        let server = tls::server_config(&files(d, "ca.crt", "tunnel"), &[b"http/1.1"]).unwrap();
        for (node, name) in [
            ("edge-1", "127.0.0.1"),
            ("edge-2.zone-a", "cloud.example.com"),
        ] {
            let client =
                tls::client_config(&files(d, "ca.crt", &format!("node-{node}")), true).unwrap();
            let (seen, _, _) = handshake(server.clone(), client, name).await.unwrap();
            assert_eq!(seen, node);
        }
        // A name that is not among the SANs is refused by a verifying edge.
        let client = tls::client_config(&files(d, "ca.crt", "node-edge-1"), true).unwrap();
        assert!(
            handshake(server, client, "elsewhere.example.com")
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn tunnel_certificate_serves_a_stock_kubeedge_tls12_client() {
        let dir = tempfile::tempdir().unwrap();
        standard(dir.path());
        let d = dir.path();
        let server = tls::server_config(&files(d, "ca.crt", "tunnel"), &[b"http/1.1"]).unwrap();
        // What a stock edgecore offers in TLS 1.2: only ECDHE-ECDSA-AES128-GCM-SHA256.
        let mut provider = rustls::crypto::ring::default_provider();
        provider
            .cipher_suites
            .retain(|s| s.suite() == rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256);
        let client = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(tls::load_ca(&d.join("ca.crt")).unwrap())
            .with_client_auth_cert(
                tls::load_certs(&d.join("node-edge-1.crt")).unwrap(),
                tls::load_private_key(&d.join("node-edge-1.key")).unwrap(),
            )
            .unwrap();
        let (node, version, suite) = handshake(server, Arc::new(client), "cloud.example.com")
            .await
            .unwrap();
        assert_eq!(node, "edge-1");
        assert_eq!(version, rustls::ProtocolVersion::TLSv1_2);
        assert_eq!(
            suite,
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        );
    }

    #[tokio::test]
    async fn apiserver_client_passes_the_stream_server() {
        let dir = tempfile::tempdir().unwrap();
        standard(dir.path());
        let d = dir.path();
        let server =
            tls::server_config(&files(d, "stream-ca.crt", "stream"), &[b"h2", b"http/1.1"])
                .unwrap();
        let client =
            tls::client_config(&files(d, "ca.crt", "apiserver-kubelet-client"), true).unwrap();
        let (name, _, _) = handshake(server, client, "192.0.2.7").await.unwrap();
        assert_eq!(name, APISERVER_CLIENT_CN);
    }

    #[test]
    fn existing_files_are_not_overwritten_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        certs(d, &["--node", "edge-1"]).unwrap();
        let before = fs::read(d.join("ca.key")).unwrap();

        // Another node next to an existing set: refused, nothing written.
        let err = certs(d, &["--node", "edge-1", "--node", "edge-2"]).unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("--force"), "{message}");
        assert!(
            message.contains(&d.join("ca.key").display().to_string()),
            "{message}"
        );
        assert!(!d.join("node-edge-2.crt").exists());
        assert_eq!(fs::read(d.join("ca.key")).unwrap(), before);

        // --force replaces everything, keys stay private, no temporary files are left.
        let report = certs(d, &["--node", "edge-1", "--force"]).unwrap();
        assert!(
            report.contains(&format!("replaced {}", d.join("ca.key").display())),
            "{report}"
        );
        assert_ne!(fs::read(d.join("ca.key")).unwrap(), before);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(d.join("ca.key")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(
            fs::read_dir(d).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.'))
        );
    }

    #[tokio::test]
    async fn reused_ca_issues_more_nodes() {
        let first = tempfile::tempdir().unwrap();
        standard(first.path());
        let ca_crt = first.path().join("ca.crt");
        let ca_key = first.path().join("ca.key");

        // The CA key as SEC1, the way KubeEdge and OpenSSL write EC keys.
        let sec1_key = first.path().join("ca-sec1.key");
        let pkcs8 = match PrivateKeyDer::from_pem_file(&ca_key).unwrap() {
            PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
            other => panic!("{other:?}"),
        };
        fs::write(&sec1_key, pem("EC PRIVATE KEY", &pkcs8_inner_key(&pkcs8))).unwrap();
        assert!(matches!(
            tls::load_private_key(&sec1_key).unwrap(),
            PrivateKeyDer::Sec1(_)
        ));

        for key in [&ca_key, &sec1_key] {
            let more = tempfile::tempdir().unwrap();
            let ca = ca_crt.display().to_string();
            let k = key.display().to_string();
            let report = certs(
                more.path(),
                &[
                    "--ca-cert",
                    &ca,
                    "--ca-key",
                    &k,
                    "--only",
                    "nodes",
                    "--node",
                    "edge-3",
                ],
            )
            .unwrap();
            assert!(!report.contains("tlsStreamCAFile"), "{report}");
            let mut written: Vec<String> = fs::read_dir(more.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            written.sort();
            assert_eq!(written, ["ca.crt", "node-edge-3.crt", "node-edge-3.key"]);
            assert_eq!(
                fs::read(more.path().join("ca.crt")).unwrap(),
                fs::read(&ca_crt).unwrap()
            );

            // The new node is accepted by the tunnel server of the first run.
            let server =
                tls::server_config(&files(first.path(), "ca.crt", "tunnel"), &[b"http/1.1"])
                    .unwrap();
            let client =
                tls::client_config(&files(more.path(), "ca.crt", "node-edge-3"), true).unwrap();
            let (node, _, _) = handshake(server, client, "127.0.0.1").await.unwrap();
            assert_eq!(node, "edge-3");
        }

        // Re-running into the CA's own directory leaves ca.crt alone (same content).
        let ca = ca_crt.display().to_string();
        let k = ca_key.display().to_string();
        let report = certs(
            first.path(),
            &[
                "--ca-cert",
                &ca,
                "--ca-key",
                &k,
                "--only",
                "nodes",
                "--node",
                "edge-4",
            ],
        )
        .unwrap();
        assert!(
            report.contains(&format!("unchanged {}", ca_crt.display())),
            "{report}"
        );
        assert!(first.path().join("node-edge-4.crt").exists());

        // A key that is not the CA's is refused.
        let other = tempfile::tempdir().unwrap();
        let wrong = first.path().join("tunnel.key").display().to_string();
        let err = certs(other.path(), &["--ca-cert", &ca, "--ca-key", &wrong]).unwrap_err();
        assert!(format!("{err:#}").contains("is not the key of"), "{err:#}");
        // A leaf is not a CA.
        let leaf = first.path().join("tunnel.crt").display().to_string();
        let err = certs(other.path(), &["--ca-cert", &leaf, "--ca-key", &wrong]).unwrap_err();
        assert!(
            format!("{err:#}").contains("not a CA certificate"),
            "{err:#}"
        );
    }

    #[test]
    fn separate_stream_ca_signs_the_stream_certificate() {
        let cluster = tempfile::tempdir().unwrap();
        certs(cluster.path(), &["--only", "tunnel"]).unwrap();
        let cluster_ca = cluster.path().join("ca.crt").display().to_string();
        let cluster_key = cluster.path().join("ca.key").display().to_string();

        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let report = certs(
            d,
            &[
                "--stream-ca-cert",
                &cluster_ca,
                "--stream-ca-key",
                &cluster_key,
                "--node",
                "edge-1",
            ],
        )
        .unwrap();
        assert!(
            report.contains("no apiserver-kubelet-client certificate"),
            "{report}"
        );
        assert!(!d.join("apiserver-kubelet-client.crt").exists());
        assert_eq!(
            fs::read(d.join("stream-ca.crt")).unwrap(),
            fs::read(cluster.path().join("ca.crt")).unwrap()
        );
        let issuer = |path: &Path| with_cert(path, |c| c.issuer().to_string());
        let cluster_subject =
            with_cert(&cluster.path().join("ca.crt"), |c| c.subject().to_string());
        assert_eq!(issuer(&d.join("stream.crt")), cluster_subject);
        // Our own CA (generated here) still signs the tunnel and node certificates.
        let ours = with_cert(&d.join("ca.crt"), |c| c.subject().to_string());
        assert_eq!(issuer(&d.join("tunnel.crt")), ours);
        assert_eq!(issuer(&d.join("node-edge-1.crt")), ours);

        // Asking for the test client with a foreign stream CA is a contradiction.
        let other = tempfile::tempdir().unwrap();
        let err = certs(
            other.path(),
            &[
                "--stream-ca-cert",
                &cluster_ca,
                "--only",
                "stream,apiserver-client",
            ],
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("apiserver-client"), "{err:#}");
    }

    #[test]
    fn bad_input_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        for (extra, needle) in [
            (&["--node", "../etc"][..], "--node"),
            (&["--node", "Edge-1"][..], "--node"),
            (&["--node", "edge_1"][..], "--node"),
            (&["--tunnel-san", "a b"][..], "--tunnel-san"),
            (&["--stream-san", ""][..], "--stream-san"),
            (&["--only", "nodes"][..], "at least one --node"),
            (&["--only", "tunnel", "--node", "edge-1"][..], "--only"),
            (&["--days", "400", "--ca-days", "300"][..], "--ca-days"),
        ] {
            let err = certs(&out, extra).unwrap_err();
            assert!(format!("{err:#}").contains(needle), "{extra:?}: {err:#}");
            assert!(!out.exists(), "{extra:?}");
        }
        // clap: a CA certificate without its key, and impossible validity.
        for argv in [
            &["certs", "--out", "x", "--ca-cert", "ca.crt"][..],
            &["certs", "--out", "x", "--stream-ca-key", "k"][..],
            &["certs", "--out", "x", "--days", "0"][..],
            &["certs", "--out", "x", "--only", "everything"][..],
        ] {
            assert!(Cli::try_parse_from(argv).is_err(), "{argv:?}");
        }
    }

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(date(UNIX_EPOCH), "1970-01-01");
        assert_eq!(
            date(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29"
        );
        assert_eq!(
            date(UNIX_EPOCH + Duration::from_secs(4_102_444_799)),
            "2099-12-31"
        );
    }

    // --- minimal DER and PEM helpers for the SEC1 test ---

    /// One DER TLV: (tag, content, rest). Short and long length forms.
    fn tlv(input: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = input[0];
        let (len, header) = match input[1] {
            n if n < 0x80 => (usize::from(n), 2),
            n => {
                let count = usize::from(n & 0x7f);
                let len = input[2..2 + count]
                    .iter()
                    .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
                (len, 2 + count)
            }
        };
        (tag, &input[header..header + len], &input[header + len..])
    }

    /// The `privateKey` OCTET STRING of a PKCS#8 `PrivateKeyInfo`: for EC keys, the SEC1
    /// `ECPrivateKey`.
    fn pkcs8_inner_key(pkcs8: &[u8]) -> Vec<u8> {
        let (tag, body, _) = tlv(pkcs8);
        assert_eq!(tag, 0x30);
        let (_, _, rest) = tlv(body); // version
        let (_, _, rest) = tlv(rest); // algorithm
        let (tag, key, _) = tlv(rest);
        assert_eq!(tag, 0x04);
        key.to_vec()
    }

    fn pem(label: &str, der: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut b64 = String::new();
        for chunk in der.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..4 {
                if i <= chunk.len() {
                    b64.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
                } else {
                    b64.push('=');
                }
            }
        }
        let mut out = format!("-----BEGIN {label}-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }
}
