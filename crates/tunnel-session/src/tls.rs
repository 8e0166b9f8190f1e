//! TLS for both ends of the tunnel: PEM loading, rustls configurations, certificate reloading
//! and the node identity carried by a client certificate.
//!
//! How this fits: the binaries read file paths from `cloudcore.yaml` / `edgecore.yaml` and hand
//! them to this module as [`TlsFiles`]. The cloud builds a [`server_config`] for the tunnel
//! listener (edges must present a certificate from the configured CA) and for the stream server
//! (kube-apiserver must present one), and after each handshake asks [`peer_node_name`] which
//! node is on the other end. The edge builds a [`client_config`]. Both sides serve their own
//! certificate through a [`ReloadingCert`], so certificates rotated on disk are used by the next
//! handshake without a restart and without touching established sessions (KubeEdge issue
//! #5788). Every configuration is built with this crate's own ring [`crypto_provider`], so
//! nothing depends on a process-wide default provider being installed.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
    ServerName, UnixTime,
};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::error::{Error, Result};

#[cfg(test)]
mod tests;

/// The CN prefix Kubernetes (and KubeEdge's CloudHub) give node certificates.
const NODE_CN_PREFIX: &str = "system:node:";

/// How often [`ReloadingCert`] looks at its files by default.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The ring crypto provider every configuration of this module is built with.
///
/// The provider is created once and shared; building configurations with it explicitly (rather
/// than through `ServerConfig::builder()`) means an embedder that pulls in a second provider
/// does not make our builders ambiguous at run time.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// Installs the ring provider as the process-wide rustls default.
///
/// Our own builders do not need it; it is for other libraries in the process that call
/// `ClientConfig::builder()` and friends. Calling it again, or after another provider was
/// installed, does nothing.
pub fn install_default_provider() {
    // `Err` only means a default is already installed, which is exactly what we want.
    let _ = CryptoProvider::install_default((*crypto_provider()).clone());
}

/// The three files of one TLS identity: the CA that peers must chain to, and our own
/// certificate chain and private key (all PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA bundle used to verify the peer.
    pub ca: PathBuf,
    /// Our certificate chain, leaf first.
    pub cert: PathBuf,
    /// Our private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

/// Reads a whole PEM file, refusing an unreadable or empty one with an error naming it.
fn read_pem_file(what: &'static str, path: &Path) -> Result<Vec<u8>> {
    let bytes = fs::read(path).map_err(|e| tls_file(what, path, e.to_string()))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(tls_file(what, path, "the file is empty".to_owned()));
    }
    Ok(bytes)
}

fn tls_file(what: &'static str, path: &Path, reason: String) -> Error {
    Error::TlsFile {
        what,
        path: path.to_owned(),
        reason,
    }
}

fn pem_reason(e: &pem::Error, wanted: &str) -> String {
    match e {
        pem::Error::NoItemsFound => format!("no {wanted} PEM block found"),
        other => format!("invalid PEM: {other}"),
    }
}

/// Loads every certificate of a PEM file, in file order.
///
/// Fails with [`Error::TlsFile`] if the file cannot be read, is empty, holds no `CERTIFICATE`
/// block, or holds a block that is not an X.509 certificate.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    const WHAT: &str = "certificate";
    let bytes = read_pem_file(WHAT, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_file(WHAT, path, pem_reason(&e, "CERTIFICATE")))?;
    if certs.is_empty() {
        return Err(tls_file(
            WHAT,
            path,
            "no CERTIFICATE PEM block found".to_owned(),
        ));
    }
    // Parse each one now so a corrupt file is reported by name at start-up rather than as an
    // anonymous handshake failure later.
    for (index, cert) in certs.iter().enumerate() {
        if let Err(e) = x509_parser::parse_x509_certificate(cert) {
            return Err(tls_file(
                WHAT,
                path,
                format!("certificate #{} is not valid X.509: {e}", index + 1),
            ));
        }
    }
    Ok(certs)
}

/// Loads the first private key of a PEM file.
///
/// Accepts `PRIVATE KEY` (PKCS#8), `EC PRIVATE KEY` (SEC1) and `RSA PRIVATE KEY` (PKCS#1)
/// blocks, and also a SEC1 key under a `PRIVATE KEY` label, which is what KubeEdge's CloudHub
/// writes for the certificate it generates. The key must be usable by the crypto provider
/// (ECDSA P-256/P-384, Ed25519 or RSA ≥ 2048 bits); anything else is an [`Error::TlsFile`]
/// naming the file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    const WHAT: &str = "private key";
    let bytes = read_pem_file(WHAT, path)?;
    let labelled = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        tls_file(
            WHAT,
            path,
            pem_reason(&e, "PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY"),
        )
    })?;

    // The PEM label is only a claim about the encoding. Go's `tls.X509KeyPair` ignores it and
    // tries PKCS#1, PKCS#8 and SEC1 in turn, and KubeEdge relies on that: CloudHub re-wraps
    // SEC1 `ECPrivateKey` DER under a `PRIVATE KEY` label. So we ask the provider to load the
    // key as labelled and, if it refuses, retry the same DER as each other encoding. The
    // provider is the judge because it is what will sign with the key; a structural ASN.1 check
    // would accept keys (other curves, short RSA) the handshake could not use anyway.
    let key_provider = crypto_provider().key_provider;
    let first_error = match key_provider.load_private_key(labelled.clone_key()) {
        Ok(_) => return Ok(labelled),
        Err(e) => e,
    };
    let der = labelled.secret_der().to_vec();
    let alternatives: [PrivateKeyDer<'static>; 3] = [
        PrivatePkcs8KeyDer::from(der.clone()).into(),
        PrivateSec1KeyDer::from(der.clone()).into(),
        PrivatePkcs1KeyDer::from(der).into(),
    ];
    for candidate in alternatives {
        if std::mem::discriminant(&candidate) == std::mem::discriminant(&labelled) {
            continue;
        }
        if key_provider.load_private_key(candidate.clone_key()).is_ok() {
            return Ok(candidate);
        }
    }
    Err(tls_file(
        WHAT,
        path,
        format!("not a usable private key: {first_error}"),
    ))
}

/// Loads a CA bundle into a root store: every certificate in the file becomes a trust anchor.
///
/// Certificates webpki cannot use as anchors are skipped with a warning; if none is usable the
/// result is an [`Error::TlsFile`] naming the file.
pub fn load_ca(path: &Path) -> Result<Arc<RootCertStore>> {
    let certs = load_certs(path).map_err(|e| match e {
        Error::TlsFile { path, reason, .. } => Error::TlsFile {
            what: "CA bundle",
            path,
            reason,
        },
        other => other,
    })?;
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certs);
    if ignored > 0 {
        tracing::warn!(
            path = %path.display(),
            ignored,
            "some certificates of the CA bundle cannot be used as trust anchors"
        );
    }
    if added == 0 {
        return Err(tls_file(
            "CA bundle",
            path,
            "no certificate in the file is usable as a trust anchor".to_owned(),
        ));
    }
    Ok(Arc::new(roots))
}

/// Builds a server configuration that requires a client certificate chaining to `files.ca`.
///
/// Our certificate comes from `files.cert` / `files.key` through a [`ReloadingCert`], so
/// replaced files are served by new handshakes. TLS 1.2 and 1.3 are enabled; `alpn` lists the
/// protocols to offer in preference order (e.g. `[b"h2", b"http/1.1"]` for the stream server,
/// `[b"http/1.1"]` for the tunnel). Session resumption is off, so every connection is
/// verified with a full handshake and served the current certificate.
pub fn server_config(files: &TlsFiles, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>> {
    let cert = ReloadingCert::new(files.cert.clone(), files.key.clone())?;
    build_server_config(&files.ca, cert, alpn)
}

fn build_server_config(
    ca: &Path,
    cert: Arc<ReloadingCert>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>> {
    let provider = crypto_provider();
    let roots = load_ca(ca)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(&provider))
        .build()
        .map_err(|e| tls_file("CA bundle", ca, e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // No session resumption: a resumed session skips both the certificate resolver and the
    // client verifier, so a rotated certificate (ours or the peer's) would not take effect and
    // the identity would be the one proven by an older handshake. Go peers (stock edgecores,
    // kube-apiserver) do not resume by default anyway, and a tunnel lives long enough that one
    // full handshake per connection costs nothing.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Builds a client configuration that presents `files.cert` / `files.key`.
///
/// The certificate is served through a [`ReloadingCert`]. With `verify_server` the server must
/// chain to `files.ca` and match the name dialled. Without it (what stock KubeEdge edges do,
/// `InsecureSkipVerify`) any server certificate is accepted, `files.ca` is not read, and a
/// warning is logged once here; handshake signatures are still checked, so the server must
/// hold the key of the certificate it sends. ALPN is left empty: the tunnel speaks HTTP/1.1.
/// Session resumption is off, so every connection presents the current certificate.
pub fn client_config(files: &TlsFiles, verify_server: bool) -> Result<Arc<ClientConfig>> {
    let cert = ReloadingCert::new(files.cert.clone(), files.key.clone())?;
    build_client_config(files, cert, verify_server)
}

fn build_client_config(
    files: &TlsFiles,
    cert: Arc<ReloadingCert>,
    verify_server: bool,
) -> Result<Arc<ClientConfig>> {
    let provider = crypto_provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = if verify_server {
        builder.with_root_certificates(load_ca(&files.ca)?)
    } else {
        tracing::warn!(
            "the cloud's TLS certificate is NOT verified (server verification disabled); \
             anyone who can intercept the connection can impersonate the cloud"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert {
                algorithms: provider.signature_verification_algorithms,
            }))
    };
    let mut config = builder.with_client_cert_resolver(cert);
    // Every connection makes a full handshake, so the certificates in use right now (ours after
    // a rotation, the server's) are the ones presented and verified; see `build_server_config`.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// A server verifier that trusts any certificate but still checks that the server proves
/// possession of the certificate's key, so the handshake itself stays sound.
#[derive(Debug)]
struct AcceptAnyServerCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What we remember about a file to notice that it was replaced: modification time, length
/// and (on Unix) inode. Mtime alone is too coarse on some file systems and a rename into place
/// (Kubernetes secret volumes swap a symlink) may keep both mtime and size; the inode changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    /// `None` when the file cannot be stat'ed (for example mid-rotation); that is a state too,
    /// so a file that disappears and comes back is noticed.
    fn of(path: &Path) -> Option<Self> {
        let meta = fs::metadata(path).ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Some(Self {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode,
        })
    }
}

/// Stamps of the certificate file and the key file, in that order.
type Stamps = (Option<FileStamp>, Option<FileStamp>);

struct ReloadState {
    current: Arc<CertifiedKey>,
    /// The stamps the last load attempt (successful or not) saw. A reload is tried only when
    /// the files differ from this, so a broken file is reported once, not on every check.
    seen: Stamps,
    last_check: Instant,
}

/// Our own certificate and key, re-read from disk when the files change.
///
/// Used as both the server certificate resolver and the client certificate resolver. On a
/// handshake, if at least the check interval passed since the last look, both files are
/// stat'ed; if either changed (mtime, length or inode) they are loaded again. A failed reload
/// (half-written files, a key that does not match) keeps the previous certificate and logs a
/// warning; connections that already finished their handshake are never affected.
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    check_interval: Duration,
    // A std lock is right here: it is held only for a comparison or, once per interval, for
    // reading two small files, and never across an await (rustls resolvers are synchronous).
    state: RwLock<ReloadState>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("check_interval", &self.check_interval)
            .finish_non_exhaustive()
    }
}

impl ReloadingCert {
    /// Loads `cert` and `key` now (failing with an error naming the bad file) and checks them
    /// for changes at most every [`DEFAULT_CHECK_INTERVAL`].
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<Arc<Self>> {
        Self::with_check_interval(cert, key, DEFAULT_CHECK_INTERVAL)
    }

    /// Like [`ReloadingCert::new`] with another check interval. `Duration::ZERO` looks at the
    /// files on every handshake, which tests use to observe a rotation without sleeping.
    pub fn with_check_interval(
        cert: PathBuf,
        key: PathBuf,
        check_interval: Duration,
    ) -> Result<Arc<Self>> {
        // Stamp before reading: a change racing with the load is then seen by the next check.
        let seen = (FileStamp::of(&cert), FileStamp::of(&key));
        let current = Arc::new(load_certified_key(&cert, &key)?);
        Ok(Arc::new(Self {
            cert_path: cert,
            key_path: key,
            check_interval,
            state: RwLock::new(ReloadState {
                current,
                seen,
                last_check: Instant::now(),
            }),
        }))
    }

    /// The certificate and key currently served, without looking at the files.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(&state.current)
    }

    /// The current certificate, after reloading it if the interval passed and the files changed.
    fn checked(&self) -> Arc<CertifiedKey> {
        {
            let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
            if state.last_check.elapsed() < self.check_interval {
                return Arc::clone(&state.current);
            }
        }
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        // Another handshake may have done the check while we waited for the write lock.
        if state.last_check.elapsed() < self.check_interval {
            return Arc::clone(&state.current);
        }
        state.last_check = Instant::now();
        let stamps = (
            FileStamp::of(&self.cert_path),
            FileStamp::of(&self.key_path),
        );
        if stamps == state.seen {
            return Arc::clone(&state.current);
        }
        state.seen = stamps;
        match load_certified_key(&self.cert_path, &self.key_path) {
            Ok(key) => {
                tracing::info!(
                    cert = %self.cert_path.display(),
                    key = %self.key_path.display(),
                    "reloaded the TLS certificate; new handshakes use it"
                );
                state.current = Arc::new(key);
            }
            Err(e) => tracing::warn!(
                error = %e,
                "the TLS certificate files changed but could not be loaded; \
                 keeping the previous certificate"
            ),
        }
        Arc::clone(&state.current)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.checked())
    }
}

impl ResolvesClientCert for ReloadingCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.checked())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Loads a certificate chain and its key and checks that they belong together.
fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey> {
    let chain = load_certs(cert)?;
    let private_key = load_private_key(key)?;
    CertifiedKey::from_der(chain, private_key, &crypto_provider()).map_err(|e| {
        tls_file(
            "private key",
            key,
            format!("does not match the certificate in {}: {e}", cert.display()),
        )
    })
}

/// The node name a certificate speaks for: the subject CN without a leading `system:node:`
/// (how Kubernetes and KubeEdge name node certificates), or the whole CN otherwise.
///
/// Fails with [`Error::PeerCertificate`] if the certificate does not parse, has no CN or
/// several, or the name is empty.
pub fn node_name_from_certificate(cert: &CertificateDer<'_>) -> Result<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| Error::PeerCertificate(format!("not a valid X.509 certificate: {e}")))?;
    let subject = parsed.subject();
    let mut common_names = subject.iter_common_name();
    let Some(cn) = common_names.next() else {
        return Err(Error::PeerCertificate(format!(
            "subject \"{subject}\" has no common name (CN)"
        )));
    };
    // Go keeps the last CN, other stacks the first; refuse rather than pick one.
    if common_names.next().is_some() {
        return Err(Error::PeerCertificate(format!(
            "subject \"{subject}\" has more than one common name (CN)"
        )));
    }
    let cn = cn
        .as_str()
        .map_err(|e| Error::PeerCertificate(format!("subject CN is not a string: {e}")))?;
    let name = cn.strip_prefix(NODE_CN_PREFIX).unwrap_or(cn);
    if name.is_empty() {
        return Err(Error::PeerCertificate(format!(
            "subject CN \"{cn}\" names no node"
        )));
    }
    Ok(name.to_owned())
}

/// The node name of the peer of a finished handshake, from its leaf certificate.
///
/// Pass the connection (`tls_stream.get_ref().1` derefs to [`rustls::CommonState`]).
pub fn peer_node_name(conn: &rustls::CommonState) -> Result<String> {
    let leaf = conn
        .peer_certificates()
        .and_then(<[CertificateDer<'static>]>::first)
        .ok_or_else(|| Error::PeerCertificate("the peer presented no certificate".to_owned()))?;
    node_name_from_certificate(leaf)
}
