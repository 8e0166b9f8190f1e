//! Tests for PEM loading, identities and real mTLS handshakes over loopback TCP.
//!
//! Certificates are minted with rcgen per test and written to a private temporary directory.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;

/// An RSA-2048 key in PKCS#8 (ring cannot generate RSA keys, so this one was made with openssl).
const RSA_PKCS8_PEM: &str = include_str!("rsa2048.pk8.pem");

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A directory under the system temp dir, unique per test, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!(
            "tunnel-session-tls-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
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

/// A test certificate authority.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Self {
            issuer: Issuer::new(params, key),
            pem: cert.pem(),
        }
    }

    /// A leaf for `localhost` / `127.0.0.1`, usable as server and client, signed by this CA.
    /// `cn: None` leaves the subject without a common name.
    fn leaf(&self, cn: Option<&str>, key: &KeyPair, serial: u64) -> rcgen::Certificate {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "tether tests");
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.serial_number = Some(SerialNumber::from(serial));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.signed_by(key, &self.issuer).unwrap()
    }

    /// Writes `<name>.crt`, `<name>.key` (PKCS#8) and `ca.crt` into `dir`.
    fn issue_files(&self, dir: &TempDir, name: &str, cn: &str, serial: u64) -> TlsFiles {
        let key = KeyPair::generate().unwrap();
        let cert = self.leaf(Some(cn), &key, serial);
        TlsFiles {
            ca: dir.write(&format!("{name}-ca.crt"), &self.pem),
            cert: dir.write(&format!("{name}.crt"), cert.pem()),
            key: dir.write(&format!("{name}.key"), key.serialize_pem()),
        }
    }
}

/// Rewrites the cert and key files of `files` with a new leaf of `ca`.
fn rotate(ca: &Ca, files: &TlsFiles, cn: &str, serial: u64) {
    let key = KeyPair::generate().unwrap();
    let cert = ca.leaf(Some(cn), &key, serial);
    fs::write(&files.key, key.serialize_pem()).unwrap();
    fs::write(&files.cert, cert.pem()).unwrap();
}

// --- minimal DER and PEM helpers, enough to re-encode rcgen's PKCS#8 keys as SEC1 / PKCS#1 ---

/// Splits one DER TLV off the front of `input`: (tag, content, rest).
fn der_tlv(input: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = input[0];
    let (len, header) = match input[1] {
        short if short < 0x80 => (usize::from(short), 2),
        long => {
            let n = usize::from(long & 0x7f);
            let len = input[2..2 + n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, 2 + n)
        }
    };
    (tag, &input[header..header + len], &input[header + len..])
}

fn der_encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

/// The `privateKey` OCTET STRING of a PKCS#8 `PrivateKeyInfo`: SEC1 `ECPrivateKey` for EC
/// keys, PKCS#1 `RSAPrivateKey` for RSA keys.
fn pkcs8_inner(pkcs8: &[u8]) -> Vec<u8> {
    let (tag, info, _) = der_tlv(pkcs8);
    assert_eq!(tag, 0x30);
    let (_, _version, rest) = der_tlv(info);
    let (_, _algorithm, rest) = der_tlv(rest);
    let (tag, private_key, _) = der_tlv(rest);
    assert_eq!(tag, 0x04);
    private_key.to_vec()
}

/// SEC1 DER the way Go's `x509.MarshalECPrivateKey` (and so KubeEdge) writes it: with the
/// `[0]` named-curve parameters, which ring omits inside PKCS#8.
fn sec1_with_curve(p256_pkcs8: &[u8]) -> Vec<u8> {
    let ec_private_key = pkcs8_inner(p256_pkcs8);
    let (_, fields, _) = der_tlv(&ec_private_key);
    let (_, version, rest) = der_tlv(fields);
    let (_, private_key, rest) = der_tlv(rest);
    let (tag, public_key, _) = der_tlv(rest);
    assert_eq!(tag, 0xa1, "ring's ECPrivateKey carries the public key");
    let prime256v1 = der_encode(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]);
    let mut content = der_encode(0x02, version);
    content.extend(der_encode(0x04, private_key));
    content.extend(der_encode(0xa0, &prime256v1));
    content.extend(der_encode(0xa1, public_key));
    der_encode(0x30, &content)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize]));
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

// ---------------------------------------------------------------------------------------------
// Loading

#[test]
fn pem_encoder_round_trips_through_pki_types() {
    for len in [1usize, 2, 3, 4, 5, 100] {
        let der: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let pem = pem_encode("CERTIFICATE", &der);
        let parsed = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(parsed.as_ref(), der.as_slice());
    }
}

#[test]
fn every_supported_key_encoding_loads_and_matches_its_certificate() {
    let dir = TempDir::new();
    let ca = Ca::new("test CA");

    let ec_key = KeyPair::generate().unwrap();
    let ec_cert = dir.write("ec.crt", ca.leaf(Some("ec"), &ec_key, 1).pem());
    let rsa_key =
        KeyPair::from_pkcs8_pem_and_sign_algo(RSA_PKCS8_PEM, &rcgen::PKCS_RSA_SHA256).unwrap();
    let rsa_cert = dir.write("rsa.crt", ca.leaf(Some("rsa"), &rsa_key, 2).pem());

    let ec_pkcs8 = ec_key.serialize_der();
    let sec1 = sec1_with_curve(&ec_pkcs8);
    let cases = [
        ("pkcs8-ec", ec_key.serialize_pem(), &ec_cert, "Pkcs8"),
        (
            "sec1",
            pem_encode("EC PRIVATE KEY", &sec1),
            &ec_cert,
            "Sec1",
        ),
        (
            // ring's own SEC1 form, without the curve parameters
            "sec1-no-params",
            pem_encode("EC PRIVATE KEY", &pkcs8_inner(&ec_pkcs8)),
            &ec_cert,
            "Sec1",
        ),
        // What KubeEdge's CloudHub writes: SEC1 DER under a PKCS#8 label.
        (
            "sec1-as-pkcs8",
            pem_encode("PRIVATE KEY", &sec1),
            &ec_cert,
            "Sec1",
        ),
        ("pkcs8-rsa", RSA_PKCS8_PEM.to_owned(), &rsa_cert, "Pkcs8"),
        (
            "pkcs1",
            pem_encode("RSA PRIVATE KEY", &pkcs8_inner(&rsa_key.serialize_der())),
            &rsa_cert,
            "Pkcs1",
        ),
    ];
    for (name, pem, cert, variant) in cases {
        let key_path = dir.write(&format!("{name}.key"), pem);
        let key = load_private_key(&key_path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let actual = match key {
            PrivateKeyDer::Pkcs8(_) => "Pkcs8",
            PrivateKeyDer::Sec1(_) => "Sec1",
            PrivateKeyDer::Pkcs1(_) => "Pkcs1",
            _ => "other",
        };
        assert_eq!(actual, variant, "{name}");
        ReloadingCert::new(cert.clone(), key_path).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// Asserts that `result` is a `TlsFile` error about `path` whose message names the file.
fn assert_names_file<T: fmt::Debug>(result: Result<T>, what: &str, path: &Path) {
    match result {
        Err(e @ Error::TlsFile { .. }) => {
            let message = e.to_string();
            let Error::TlsFile {
                what: w, path: p, ..
            } = e
            else {
                unreachable!()
            };
            assert_eq!(w, what);
            assert_eq!(p, path);
            assert!(
                message.contains(&path.display().to_string()),
                "{message:?} does not name {}",
                path.display()
            );
        }
        other => panic!(
            "expected a TlsFile error about {}, got {other:?}",
            path.display()
        ),
    }
}

#[test]
fn missing_empty_and_garbage_files_are_errors_naming_the_file() {
    let dir = TempDir::new();
    let ca = Ca::new("test CA");
    let key = KeyPair::generate().unwrap();
    let cert = ca.leaf(Some("x"), &key, 1);
    let bad = [
        dir.0.join("missing.pem"),
        dir.write("empty.pem", ""),
        dir.write("blank.pem", "\n  \n"),
        dir.write("garbage.pem", "this is not PEM at all\n"),
        dir.write("binary.pem", [0u8, 159, 146, 150, 255, 10, 13]),
        dir.write(
            "bad-base64.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        ),
        dir.write(
            "bad-der.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n\
             -----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ),
    ];
    for path in &bad {
        assert_names_file(load_certs(path), "certificate", path);
        assert_names_file(load_private_key(path), "private key", path);
        assert_names_file(load_ca(path), "CA bundle", path);
    }

    // The wrong kind of PEM block is also an error, not an empty result.
    let key_only = dir.write("key-only.pem", key.serialize_pem());
    let cert_only = dir.write("cert-only.pem", cert.pem());
    assert_names_file(load_certs(&key_only), "certificate", &key_only);
    assert_names_file(load_ca(&key_only), "CA bundle", &key_only);
    assert_names_file(load_private_key(&cert_only), "private key", &cert_only);

    // A key that does not belong to the certificate names the key file.
    let other_key = dir.write("other.key", KeyPair::generate().unwrap().serialize_pem());
    assert_names_file(
        ReloadingCert::new(cert_only.clone(), other_key.clone()),
        "private key",
        &other_key,
    );
    // And configuration builders report the file too.
    let files = TlsFiles {
        ca: dir.write("ca.crt", &ca.pem),
        cert: cert_only,
        key: dir.0.join("missing.key"),
    };
    assert_names_file(server_config(&files, &[]), "private key", &files.key);
    assert_names_file(client_config(&files, false), "private key", &files.key);
}

#[test]
fn ca_bundle_keeps_every_certificate() {
    let dir = TempDir::new();
    let bundle = format!(
        "{}{}{}",
        Ca::new("one").pem,
        Ca::new("two").pem,
        Ca::new("three").pem
    );
    let path = dir.write("bundle.crt", bundle);
    assert_eq!(load_certs(&path).unwrap().len(), 3);
    assert_eq!(load_ca(&path).unwrap().len(), 3);
}

// ---------------------------------------------------------------------------------------------
// Identity

fn cert_with_cn(cn: Option<&str>) -> CertificateDer<'static> {
    let key = KeyPair::generate().unwrap();
    Ca::new("test CA").leaf(cn, &key, 7).der().clone()
}

#[test]
fn node_name_comes_from_the_common_name() {
    assert_eq!(
        node_name_from_certificate(&cert_with_cn(Some("system:node:edge-1"))).unwrap(),
        "edge-1"
    );
    assert_eq!(
        node_name_from_certificate(&cert_with_cn(Some("plain-cn"))).unwrap(),
        "plain-cn"
    );
}

#[test]
fn node_name_needs_a_usable_common_name() {
    for cert in [
        cert_with_cn(None),
        cert_with_cn(Some("system:node:")),
        CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]),
    ] {
        match node_name_from_certificate(&cert) {
            Err(Error::PeerCertificate(_)) => {}
            other => panic!("expected PeerCertificate error, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Handshakes

/// What the server saw for one accepted connection: the peer's node name, or the error.
type Accepted = std::result::Result<String, String>;

/// A TLS echo server on 127.0.0.1:0 that reports every handshake on a channel.
async fn start_echo_server(
    config: Arc<ServerConfig>,
) -> (SocketAddr, mpsc::UnboundedReceiver<Accepted>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(config);
    let (report, reports) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let report = report.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(mut tls) => {
                        let name = peer_node_name(tls.get_ref().1).map_err(|e| e.to_string());
                        let _ = report.send(name);
                        let mut buf = [0u8; 1024];
                        while let Ok(n @ 1..) = tls.read(&mut buf).await {
                            if tls.write_all(&buf[..n]).await.is_err() || tls.flush().await.is_err()
                            {
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = report.send(Err(e.to_string()));
                    }
                }
            });
        }
    });
    (addr, reports)
}

type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(config: Arc<ClientConfig>, addr: SocketAddr) -> io::Result<ClientStream> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").map_err(io::Error::other)?;
    TlsConnector::from(config).connect(name, tcp).await
}

/// Sends a message and expects it back.
async fn echo(stream: &mut ClientStream, message: &[u8]) -> io::Result<()> {
    stream.write_all(message).await?;
    stream.flush().await?;
    let mut back = vec![0u8; message.len()];
    stream.read_exact(&mut back).await?;
    assert_eq!(back, message);
    Ok(())
}

/// Connects and echoes once; the error of whichever step failed.
async fn connect_and_echo(config: Arc<ClientConfig>, addr: SocketAddr) -> io::Result<ClientStream> {
    let mut stream = connect(config, addr).await?;
    echo(&mut stream, b"ping").await?;
    Ok(stream)
}

fn server_cn(stream: &ClientStream) -> String {
    let certs = stream.get_ref().1.peer_certificates().unwrap();
    node_name_from_certificate(&certs[0]).unwrap()
}

struct Pki {
    dir: TempDir,
    ca: Ca,
    server: TlsFiles,
    client: TlsFiles,
}

fn pki() -> Pki {
    let dir = TempDir::new();
    let ca = Ca::new("tether test CA");
    let server = ca.issue_files(&dir, "server", "cloudstream", 1);
    let client = ca.issue_files(&dir, "client", "system:node:edge-1", 2);
    Pki {
        dir,
        ca,
        server,
        client,
    }
}

#[tokio::test]
async fn mutual_tls_handshake_identifies_the_node() {
    let pki = pki();
    let (addr, mut accepted) =
        start_echo_server(server_config(&pki.server, &[b"http/1.1"]).unwrap()).await;

    let stream = connect_and_echo(client_config(&pki.client, true).unwrap(), addr)
        .await
        .unwrap();
    assert_eq!(accepted.recv().await.unwrap().unwrap(), "edge-1");
    assert_eq!(server_cn(&stream), "cloudstream");
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let pki = pki();
    let (addr, mut accepted) =
        start_echo_server(server_config(&pki.server, &[b"http/1.1"]).unwrap()).await;

    let intruder = Ca::new("someone else's CA").issue_files(&pki.dir, "intruder", "edge-x", 3);
    // The intruder still trusts the real CA, so only the server can refuse.
    let files = TlsFiles {
        ca: pki.server.ca.clone(),
        ..intruder
    };
    // With TLS 1.3 the client may finish its handshake before the server has looked at the
    // certificate; the refusal then surfaces on the first read. Either way the echo fails.
    let result = connect_and_echo(client_config(&files, true).unwrap(), addr).await;
    assert!(
        result.is_err(),
        "an unknown client certificate was accepted"
    );
    assert!(accepted.recv().await.unwrap().is_err());
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let pki = pki();
    let (addr, mut accepted) =
        start_echo_server(server_config(&pki.server, &[b"http/1.1"]).unwrap()).await;

    let anonymous = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(load_ca(&pki.server.ca).unwrap())
        .with_no_client_auth();
    let result = connect_and_echo(Arc::new(anonymous), addr).await;
    assert!(
        result.is_err(),
        "a client without a certificate was accepted"
    );
    assert!(accepted.recv().await.unwrap().is_err());
}

#[tokio::test]
async fn server_verification_is_on_unless_disabled() {
    let pki = pki();
    // A cloud whose certificate comes from a CA the edge does not know (e.g. KubeEdge's
    // CloudHub CA while the edge was given another one); it still trusts the edge's CA.
    let foreign = Ca::new("unknown cloud CA").issue_files(&pki.dir, "foreign", "cloudcore", 4);
    let server_files = TlsFiles {
        ca: pki.server.ca.clone(),
        ..foreign
    };
    let (addr, mut accepted) =
        start_echo_server(server_config(&server_files, &[b"http/1.1"]).unwrap()).await;

    let verifying = connect_and_echo(client_config(&pki.client, true).unwrap(), addr).await;
    assert!(
        verifying.is_err(),
        "an unknown server certificate was trusted"
    );
    assert!(accepted.recv().await.unwrap().is_err());

    // Without verification the CA file is not even read.
    let skipping = TlsFiles {
        ca: pki.dir.0.join("does-not-exist.crt"),
        ..pki.client.clone()
    };
    let stream = connect_and_echo(client_config(&skipping, false).unwrap(), addr)
        .await
        .unwrap();
    assert_eq!(server_cn(&stream), "cloudcore");
    assert_eq!(accepted.recv().await.unwrap().unwrap(), "edge-1");
}

#[tokio::test]
async fn alpn_is_offered_in_order() {
    let pki = pki();
    let (addr, _accepted) =
        start_echo_server(server_config(&pki.server, &[b"h2", b"http/1.1"]).unwrap()).await;
    let mut config = (*client_config(&pki.client, true).unwrap()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec(), b"h2".to_vec()];
    let stream = connect_and_echo(Arc::new(config), addr).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
}

// ---------------------------------------------------------------------------------------------
// Reloading

#[tokio::test]
async fn rotated_server_certificate_is_served_to_new_handshakes_only() {
    let pki = pki();
    let resolver = ReloadingCert::with_check_interval(
        pki.server.cert.clone(),
        pki.server.key.clone(),
        Duration::ZERO,
    )
    .unwrap();
    let config =
        build_server_config(&pki.server.ca, Arc::clone(&resolver), &[b"http/1.1"]).unwrap();
    let (addr, mut accepted) = start_echo_server(config).await;
    let client = client_config(&pki.client, true).unwrap();

    let mut before = connect_and_echo(Arc::clone(&client), addr).await.unwrap();
    assert_eq!(server_cn(&before), "cloudstream");
    accepted.recv().await.unwrap().unwrap();

    rotate(&pki.ca, &pki.server, "cloudstream-rotated", 100);

    let mut after = connect_and_echo(Arc::clone(&client), addr).await.unwrap();
    assert_eq!(server_cn(&after), "cloudstream-rotated");
    let serial = |s: &ClientStream| {
        let certs = s.get_ref().1.peer_certificates().unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&certs[0]).unwrap();
        parsed.raw_serial().to_vec()
    };
    assert_eq!(serial(&after), [100]);
    assert_eq!(serial(&before), [1]);
    assert_eq!(
        node_name_from_certificate(&resolver.current().cert[0]).unwrap(),
        "cloudstream-rotated"
    );

    // The connection made before the rotation is untouched.
    echo(&mut before, b"still here").await.unwrap();
    echo(&mut after, b"me too").await.unwrap();
}

#[tokio::test]
async fn rotated_client_certificate_is_presented_on_the_next_handshake() {
    let pki = pki();
    let resolver = ReloadingCert::with_check_interval(
        pki.client.cert.clone(),
        pki.client.key.clone(),
        Duration::ZERO,
    )
    .unwrap();
    let client = build_client_config(&pki.client, resolver, true).unwrap();
    let (addr, mut accepted) =
        start_echo_server(server_config(&pki.server, &[b"http/1.1"]).unwrap()).await;

    let mut before = connect_and_echo(Arc::clone(&client), addr).await.unwrap();
    assert_eq!(accepted.recv().await.unwrap().unwrap(), "edge-1");

    rotate(&pki.ca, &pki.client, "system:node:edge-renamed", 200);

    let _after = connect_and_echo(client, addr).await.unwrap();
    assert_eq!(accepted.recv().await.unwrap().unwrap(), "edge-renamed");
    echo(&mut before, b"old session").await.unwrap();
}

#[tokio::test]
async fn broken_replacement_files_keep_the_previous_certificate() {
    let pki = pki();
    let resolver = ReloadingCert::with_check_interval(
        pki.server.cert.clone(),
        pki.server.key.clone(),
        Duration::ZERO,
    )
    .unwrap();
    let config =
        build_server_config(&pki.server.ca, Arc::clone(&resolver), &[b"http/1.1"]).unwrap();
    let (addr, _accepted) = start_echo_server(config).await;
    let client = client_config(&pki.client, true).unwrap();
    let original = resolver.current();

    // Half a rotation: a new key whose certificate has not arrived yet.
    fs::write(
        &pki.server.key,
        KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let stream = connect_and_echo(Arc::clone(&client), addr).await.unwrap();
    assert_eq!(server_cn(&stream), "cloudstream");
    assert!(Arc::ptr_eq(&resolver.current(), &original));

    // Garbage, then a missing file.
    fs::write(&pki.server.cert, "garbage").unwrap();
    connect_and_echo(Arc::clone(&client), addr).await.unwrap();
    fs::remove_file(&pki.server.cert).unwrap();
    connect_and_echo(Arc::clone(&client), addr).await.unwrap();
    assert!(Arc::ptr_eq(&resolver.current(), &original));

    // Completing the rotation is picked up.
    rotate(&pki.ca, &pki.server, "cloudstream-fixed", 300);
    let stream = connect_and_echo(client, addr).await.unwrap();
    assert_eq!(server_cn(&stream), "cloudstream-fixed");
}

#[test]
fn unchanged_files_are_not_reloaded() {
    let pki = pki();
    let resolver = ReloadingCert::with_check_interval(
        pki.server.cert.clone(),
        pki.server.key.clone(),
        Duration::ZERO,
    )
    .unwrap();
    let first = resolver.checked();
    assert!(Arc::ptr_eq(&first, &resolver.checked()));
    assert!(Arc::ptr_eq(&first, &resolver.current()));
}

#[test]
fn installing_the_default_provider_twice_is_harmless() {
    install_default_provider();
    install_default_provider();
    assert!(CryptoProvider::get_default().is_some());
}
