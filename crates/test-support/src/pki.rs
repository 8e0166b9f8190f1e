//! In-memory test PKI: a CA plus server, client and node identities, and rustls configs.
//!
//! All keys are ECDSA P-256 (rcgen's default `PKCS_ECDSA_P256_SHA256`), certificates are valid
//! from 1975 to 4096 (rcgen defaults), and nothing is installed process-wide: every rustls
//! config is built with an explicit ring [`CryptoProvider`].

use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, Result, bail, ensure};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::{
    ClientConfig, RootCertStore, ServerConfig, crypto::CryptoProvider, server::WebPkiClientVerifier,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};

/// The ring crypto provider used by every config built here.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate and its private key, in PEM and DER form.
#[derive(Debug)]
pub struct Identity {
    /// The leaf certificate in PEM (`CERTIFICATE`).
    pub cert_pem: String,
    /// The private key in PKCS#8 PEM (`PRIVATE KEY`).
    pub key_pem: String,
    /// The certificate chain in DER, leaf first (the CA is not included).
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key (PKCS#8).
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// How [`TestPki::write_pem_files_as`] encodes the private key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFormat {
    /// PKCS#8 DER under a `PRIVATE KEY` label (the normal form).
    Pkcs8,
    /// SEC1 (RFC 5915) DER under an `EC PRIVATE KEY` label (what `openssl ec` writes).
    Sec1,
    /// SEC1 DER under a `PRIVATE KEY` label. KubeEdge's certutil writes EC keys this way, so a
    /// loader must not trust the label alone.
    Sec1UnderPrivateKeyLabel,
}

impl Identity {
    /// The private key as SEC1 (RFC 5915 `ECPrivateKey`) DER.
    ///
    /// rcgen/ring only emit PKCS#8. A PKCS#8 `PrivateKeyInfo` for an EC key is
    /// `SEQUENCE { INTEGER 0, SEQUENCE { OID ecPublicKey, OID curve }, OCTET STRING ecPrivateKey }`,
    /// and ring's inner `ECPrivateKey` is `SEQUENCE { INTEGER 1, OCTET STRING d, [1] publicKey }`
    /// without the optional `[0] parameters`. We parse that structure with a minimal DER reader
    /// and re-emit the `ECPrivateKey` with `[0] { curve OID }` inserted, because standalone SEC1
    /// keys (OpenSSL, Go's `x509.MarshalECPrivateKey`) carry the curve and Go's parser needs it.
    pub fn sec1_key_der(&self) -> Result<Vec<u8>> {
        let PrivateKeyDer::Pkcs8(pkcs8) = &self.key else {
            bail!("identity key is not PKCS#8");
        };
        pkcs8_ec_to_sec1(pkcs8.secret_pkcs8_der())
    }

    /// The private key as SEC1 PEM (`-----BEGIN EC PRIVATE KEY-----`).
    pub fn sec1_key_pem(&self) -> Result<String> {
        Ok(pem_encode("EC PRIVATE KEY", &self.sec1_key_der()?))
    }

    /// SEC1 DER under a `-----BEGIN PRIVATE KEY-----` label, the mislabelled form KubeEdge writes.
    pub fn sec1_key_pem_under_private_key_label(&self) -> Result<String> {
        Ok(pem_encode("PRIVATE KEY", &self.sec1_key_der()?))
    }

    /// The private key as rustls' SEC1 variant.
    pub fn sec1_key(&self) -> Result<PrivateKeyDer<'static>> {
        Ok(PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(
            self.sec1_key_der()?,
        )))
    }

    /// The key PEM in the requested format.
    pub fn key_pem_as(&self, format: KeyFormat) -> Result<String> {
        match format {
            KeyFormat::Pkcs8 => Ok(self.key_pem.clone()),
            KeyFormat::Sec1 => self.sec1_key_pem(),
            KeyFormat::Sec1UnderPrivateKeyLabel => self.sec1_key_pem_under_private_key_label(),
        }
    }
}

/// A test certificate authority.
pub struct TestPki {
    ca_cert: Certificate,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki").finish_non_exhaustive()
    }
}

impl TestPki {
    /// Creates a fresh self-signed CA (`CN=tether-test-ca`).
    pub fn new() -> Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "tether-test-ca");
        params.distinguished_name = dn;
        let ca_cert = params.self_signed(&key)?;
        Ok(Self {
            ca_cert,
            issuer: Issuer::new(params, key),
        })
    }

    /// A server identity (serverAuth EKU). Entries that parse as IP addresses (`127.0.0.1`,
    /// `::1`) become IP SANs, the rest DNS SANs; the CN is the first entry.
    pub fn server(&self, sans: &[&str]) -> Result<Identity> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        for san in sans {
            params.subject_alt_names.push(match san.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*san).try_into()?),
            });
        }
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            sans.first().copied().unwrap_or("server"),
        );
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        self.leaf(params)
    }

    /// A client identity (clientAuth EKU) with the given CN and optional O.
    pub fn client(&self, common_name: &str, organization: Option<&str>) -> Result<Identity> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        if let Some(org) = organization {
            dn.push(DnType::OrganizationName, org);
        }
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        self.leaf(params)
    }

    /// A node identity: `client("system:node:<node>", Some("system:nodes"))`.
    pub fn node(&self, node: &str) -> Result<Identity> {
        self.client(&format!("system:node:{node}"), Some("system:nodes"))
    }

    fn leaf(&self, params: CertificateParams) -> Result<Identity> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }

    /// The CA certificate in PEM.
    pub fn ca_pem(&self) -> String {
        self.ca_cert.pem()
    }

    /// The CA certificate in DER.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca_cert.der().clone()
    }

    /// A root store holding only this CA.
    pub fn root_store(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        // Adding our own freshly minted CA cannot fail in practice; ignore the count result.
        let _ = roots.add_parsable_certificates([self.ca_der()]);
        roots
    }

    /// Writes `<dir>/<name>.crt` and `<dir>/<name>.key` (PKCS#8) and returns their paths.
    pub fn write_pem_files(
        &self,
        dir: &Path,
        name: &str,
        identity: &Identity,
    ) -> Result<(PathBuf, PathBuf)> {
        self.write_pem_files_as(dir, name, identity, KeyFormat::Pkcs8)
    }

    /// Like [`write_pem_files`](Self::write_pem_files) with a chosen key encoding.
    pub fn write_pem_files_as(
        &self,
        dir: &Path,
        name: &str,
        identity: &Identity,
        format: KeyFormat,
    ) -> Result<(PathBuf, PathBuf)> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        fs::write(&cert, &identity.cert_pem)
            .with_context(|| format!("writing {}", cert.display()))?;
        fs::write(&key, identity.key_pem_as(format)?)
            .with_context(|| format!("writing {}", key.display()))?;
        Ok((cert, key))
    }

    /// Writes `<dir>/ca.crt` and returns its path.
    pub fn write_ca(&self, dir: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("ca.crt");
        fs::write(&path, self.ca_pem()).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// A client config trusting this CA, presenting `client` if given. ALPN is left empty.
    pub fn client_config(&self, client: Option<&Identity>) -> Result<Arc<ClientConfig>> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.root_store());
        let config = match client {
            Some(id) => builder.with_client_auth_cert(id.chain.clone(), id.key.clone_key())?,
            None => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }
}

/// A server config presenting `identity`; when `client_ca` is given, a client certificate
/// issued by that CA is required. ALPN is left empty (callers may clone and set it).
pub fn server_config(
    identity: &Identity,
    client_ca: Option<&TestPki>,
) -> Result<Arc<ServerConfig>> {
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(ca.root_store()), provider())
                    .build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(builder.with_single_cert(
        identity.chain.clone(),
        identity.key.clone_key(),
    )?))
}

/// PEM-encodes `der` under `label` with 64-column base64 lines.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        b64.push(ALPHABET[(n >> 18) as usize & 63]);
        b64.push(ALPHABET[(n >> 12) as usize & 63]);
        b64.push(if chunk.len() > 1 {
            ALPHABET[(n >> 6) as usize & 63]
        } else {
            b'='
        });
        b64.push(if chunk.len() > 2 {
            ALPHABET[n as usize & 63]
        } else {
            b'='
        });
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// One DER TLV: (tag, whole encoding, contents).
struct Tlv<'a> {
    tag: u8,
    raw: &'a [u8],
    contents: &'a [u8],
}

/// Reads one TLV (single-byte tags, definite lengths) from the front of `input`.
fn read_tlv<'a>(input: &mut &'a [u8]) -> Result<Tlv<'a>> {
    let data = *input;
    ensure!(data.len() >= 2, "truncated DER");
    let tag = data[0];
    let (len, hdr) = if data[1] < 0x80 {
        (usize::from(data[1]), 2)
    } else {
        let n = usize::from(data[1] & 0x7f);
        ensure!(
            (1..=4).contains(&n) && data.len() >= 2 + n,
            "bad DER length"
        );
        let len = data[2..2 + n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, 2 + n)
    };
    ensure!(data.len() >= hdr + len, "truncated DER value");
    *input = &data[hdr + len..];
    Ok(Tlv {
        tag,
        raw: &data[..hdr + len],
        contents: &data[hdr..hdr + len],
    })
}

fn der_wrap(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = contents.len();
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
    out.extend_from_slice(contents);
    out
}

fn pkcs8_ec_to_sec1(pkcs8: &[u8]) -> Result<Vec<u8>> {
    let mut input = pkcs8;
    let outer = read_tlv(&mut input)?;
    ensure!(outer.tag == 0x30, "PKCS#8: expected SEQUENCE");
    let mut body = outer.contents;
    let version = read_tlv(&mut body)?;
    ensure!(version.tag == 0x02, "PKCS#8: expected version INTEGER");
    let alg = read_tlv(&mut body)?;
    ensure!(alg.tag == 0x30, "PKCS#8: expected AlgorithmIdentifier");
    let mut alg_body = alg.contents;
    let alg_oid = read_tlv(&mut alg_body)?;
    // 1.2.840.10045.2.1 id-ecPublicKey
    ensure!(
        alg_oid.contents == [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01],
        "PKCS#8: not an EC key"
    );
    let curve = read_tlv(&mut alg_body)?;
    ensure!(curve.tag == 0x06, "PKCS#8: expected curve OID");
    let key = read_tlv(&mut body)?;
    ensure!(key.tag == 0x04, "PKCS#8: expected privateKey OCTET STRING");

    let mut ec_input = key.contents;
    let ec = read_tlv(&mut ec_input)?;
    ensure!(ec.tag == 0x30, "ECPrivateKey: expected SEQUENCE");
    let mut ec_body = ec.contents;
    let ec_version = read_tlv(&mut ec_body)?;
    let d = read_tlv(&mut ec_body)?;
    ensure!(
        ec_version.tag == 0x02 && d.tag == 0x04,
        "ECPrivateKey: bad fields"
    );
    let mut params = None;
    let mut public = None;
    while !ec_body.is_empty() {
        let field = read_tlv(&mut ec_body)?;
        match field.tag {
            0xa0 => params = Some(field.raw.to_vec()),
            0xa1 => public = Some(field.raw.to_vec()),
            _ => {}
        }
    }
    let mut contents = Vec::new();
    contents.extend_from_slice(ec_version.raw);
    contents.extend_from_slice(d.raw);
    contents.extend(params.unwrap_or_else(|| der_wrap(0xa0, curve.raw)));
    if let Some(public) = public {
        contents.extend(public);
    }
    Ok(der_wrap(0x30, &contents))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;

    #[test]
    fn identities_and_configs() {
        let pki = TestPki::new().unwrap();
        let server = pki.server(&["localhost", "127.0.0.1", "::1"]).unwrap();
        let node = pki.node("edge-1").unwrap();
        server_config(&server, Some(&pki)).unwrap();
        server_config(&server, None).unwrap();
        pki.client_config(Some(&node)).unwrap();
        pki.client_config(None).unwrap();
        assert!(pki.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(pki.root_store().len(), 1);
        let cert = CertificateDer::from_pem_slice(server.cert_pem.as_bytes()).unwrap();
        assert_eq!(cert, server.chain[0]);
        let cloned = node.clone();
        assert_eq!(cloned.key.secret_der(), node.key.secret_der());
    }

    #[test]
    fn sec1_forms_are_loadable() {
        let pki = TestPki::new().unwrap();
        let id = pki.client("apiserver", None).unwrap();
        let sec1_pem = id.sec1_key_pem().unwrap();
        assert!(sec1_pem.starts_with("-----BEGIN EC PRIVATE KEY-----\n"));
        let parsed = PrivateKeyDer::from_pem_slice(sec1_pem.as_bytes()).unwrap();
        assert!(matches!(parsed, PrivateKeyDer::Sec1(_)));
        // rustls (ring) must accept the SEC1 key for signing.
        provider().key_provider.load_private_key(parsed).unwrap();
        let mislabelled = id.sec1_key_pem_under_private_key_label().unwrap();
        assert!(mislabelled.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let parsed = PrivateKeyDer::from_pem_slice(mislabelled.as_bytes()).unwrap();
        assert_eq!(parsed.secret_der(), id.sec1_key_der().unwrap());
        // Round trip of our PEM encoder against pki-types' decoder on the PKCS#8 form.
        let pkcs8 = pem_encode("PRIVATE KEY", id.key.secret_der());
        assert_eq!(pkcs8, id.key_pem.replace("\r\n", "\n"));
    }

    #[test]
    fn writes_files() {
        let pki = TestPki::new().unwrap();
        let id = pki.server(&["localhost"]).unwrap();
        let dir = std::env::temp_dir().join(format!("tether-pki-{}", std::process::id()));
        let (cert, key) = pki
            .write_pem_files_as(&dir, "srv", &id, KeyFormat::Sec1)
            .unwrap();
        let ca = pki.write_ca(&dir).unwrap();
        assert!(fs::read_to_string(cert).unwrap().contains("CERTIFICATE"));
        assert!(fs::read_to_string(key).unwrap().contains("EC PRIVATE KEY"));
        assert_eq!(fs::read_to_string(ca).unwrap(), pki.ca_pem());
        fs::remove_dir_all(dir).unwrap();
    }
}
