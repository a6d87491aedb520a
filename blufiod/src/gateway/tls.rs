//! TLS for the HTTPS gateway: where the serving certificate comes from (the owner's PEM files or a
//! self-signed certificate generated once and kept on disk), swapping it at runtime on SIGHUP, the
//! rustls server configuration, and the SHA-256 fingerprint clients pin.
//!
//! This module must never panic on what it reads from disk, never log or return private key
//! material, never regenerate a self-signed certificate over files that exist (clients pin its
//! fingerprint), and never pull in a second crypto provider: everything uses rustls' ring provider.

use std::fmt;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use tracing::info;

/// File name of the self-signed certificate inside [`CertSource::SelfSigned`]'s directory.
pub const SELF_SIGNED_CERT_FILE: &str = "cert.pem";
/// File name of the self-signed certificate's private key inside the same directory.
pub const SELF_SIGNED_KEY_FILE: &str = "key.pem";

/// Validity of a generated certificate. Ten years: the certificate is pinned by fingerprint, so an
/// expiry would only force every client to re-pin; browsers that cap lifetimes do not apply to
/// certificates the user trusts by hand.
const SELF_SIGNED_VALIDITY: time::Duration = time::Duration::days(3650);
/// How far a generated certificate's validity starts in the past, so a client whose clock is a little
/// behind does not reject a certificate generated moments ago.
const SELF_SIGNED_BACKDATE: time::Duration = time::Duration::days(1);
/// Common name of a generated certificate; clients match on the subject alt names, not on this.
const SELF_SIGNED_COMMON_NAME: &str = "blufiod";
/// ALPN protocols offered to clients, most preferred first.
const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Where the certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// PEM files configured by the owner (`gateway.cert_file`, `gateway.key_file`): a chain (leaf
    /// first) and a PKCS#8, SEC1 or PKCS#1 private key.
    Files { cert: PathBuf, key: PathBuf },
    /// A self-signed certificate generated on first start and kept in `dir` (cert.pem; key.pem mode
    /// 0600; the directory is created with mode 0700), reused on later starts. `names` become the
    /// subject alt names (IP addresses as IP SANs, anything else as DNS names); they only matter when
    /// the certificate is generated, so changing them means deleting both files.
    SelfSigned { dir: PathBuf, names: Vec<String> },
}

/// Why the certificate could not be loaded, generated, or served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate file {path}")]
    ReadCert {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot parse certificate file {path}: {reason}")]
    ParseCert { path: PathBuf, reason: String },
    #[error("cannot read private key file {path}")]
    ReadKey {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no private key (PKCS#8, SEC1 or PKCS#1 PEM block) found in {path}")]
    NoPrivateKey { path: PathBuf },
    #[error("cannot parse private key file {path}: {reason}")]
    ParseKey { path: PathBuf, reason: String },
    #[error("private key {key} does not belong to the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error(
        "self-signed certificate in {dir} is unusable; delete {cert_file} and {key_file} there to generate a new one",
        cert_file = SELF_SIGNED_CERT_FILE,
        key_file = SELF_SIGNED_KEY_FILE
    )]
    UnusableSelfSigned {
        dir: PathBuf,
        #[source]
        source: Box<TlsError>,
    },
    #[error(
        "self-signed certificate is incomplete: {present} exists but {missing} does not; \
         delete {present} to generate a new pair"
    )]
    IncompleteSelfSigned { present: PathBuf, missing: PathBuf },
    #[error("cannot use {name:?} as a subject alt name of the self-signed certificate")]
    SelfSignedName {
        name: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot generate the self-signed certificate")]
    Generate {
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot write the self-signed certificate to {path}")]
    WriteSelfSigned {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot build the TLS server configuration")]
    BuildConfig {
        #[source]
        source: rustls::Error,
    },
}

/// The serving certificate, swappable at runtime (SIGHUP) without dropping connections. New
/// handshakes get the current certificate; established connections keep the one they negotiated,
/// since rustls holds its own `Arc` to it for the connection's lifetime.
pub struct ReloadableCert {
    current: RwLock<Current>,
}

impl ReloadableCert {
    /// Loads the certificate from `source`, generating the self-signed one if it does not exist yet.
    pub fn load(source: &CertSource) -> Result<Arc<Self>, TlsError> {
        let current = load_source(source)?;
        Ok(Arc::new(Self {
            current: RwLock::new(current),
        }))
    }

    /// Re-reads `source` (regenerating a self-signed certificate whose files were both deleted). On
    /// error the old certificate keeps being served and the error is returned.
    pub fn reload(&self, source: &CertSource) -> Result<(), TlsError> {
        let new = load_source(source)?;
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if current.fingerprint != new.fingerprint {
            info!(old = %current.fingerprint, new = %new.fingerprint, "TLS certificate replaced");
        }
        *current = new;
        Ok(())
    }

    /// SHA-256 of the serving leaf certificate, in the [`fingerprint_of`] format.
    pub fn fingerprint(&self) -> String {
        self.read().fingerprint.clone()
    }

    /// Whether the serving leaf certificate is valid for `host` (a DNS name or an IP address), by
    /// the same rules a TLS client applies.
    pub fn is_valid_for(&self, host: &str) -> bool {
        let Ok(name) = rustls::pki_types::ServerName::try_from(host) else {
            return false;
        };
        let current = self.read();
        let Some(leaf) = current.key.cert.first() else {
            return false;
        };
        webpki::EndEntityCert::try_from(leaf).is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
    }

    /// When the serving leaf certificate stops being valid (`None` if it cannot be read).
    pub fn not_after(&self) -> Option<std::time::SystemTime> {
        let current = self.read();
        not_after(current.key.cert.first()?).ok()
    }

    fn read(&self) -> RwLockReadGuard<'_, Current> {
        // A poisoned lock can only mean a panic while swapping two fields; both are always valid.
        self.current.read().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for ReloadableCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Deliberately only the fingerprint: the certified key holds the private key.
        f.debug_struct("ReloadableCert")
            .field("fingerprint", &self.read().fingerprint)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.read().key))
    }
}

/// A rustls server configuration using `resolver`, offering ALPN `h2` then `http/1.1`, TLS 1.3 and
/// 1.2, with rustls' ring provider and no client certificates.
pub fn server_config(resolver: Arc<ReloadableCert>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::BuildConfig { source })?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(Arc::new(config))
}

/// SHA-256 of a DER certificate as upper-case hex pairs joined by ':', the format browsers and
/// `openssl x509 -fingerprint -sha256` show. blufioctl's pinning uses the same definition.
pub fn fingerprint_of(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The certificate being served and its fingerprint, swapped together.
struct Current {
    key: Arc<CertifiedKey>,
    fingerprint: String,
}

/// The one crypto provider this module uses, independent of what is installed process-wide.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_source(source: &CertSource) -> Result<Current, TlsError> {
    match source {
        CertSource::Files { cert, key } => load_files(cert, key),
        CertSource::SelfSigned { dir, names } => load_self_signed(dir, names),
    }
}

/// Reads a PEM chain and key, and checks that the key belongs to the leaf certificate.
fn load_files(cert_path: &Path, key_path: &Path) -> Result<Current, TlsError> {
    let cert_pem = fs::read(cert_path).map_err(|source| TlsError::ReadCert {
        path: cert_path.to_owned(),
        source,
    })?;
    let parse_cert_error = |reason: String| TlsError::ParseCert {
        path: cert_path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| parse_cert_error(error.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(parse_cert_error("no CERTIFICATE PEM block found".to_owned()));
    };
    let fingerprint = fingerprint_of(leaf);

    let key_pem = fs::read(key_path).map_err(|source| TlsError::ReadKey {
        path: key_path.to_owned(),
        source,
    })?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| match error {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: key_path.to_owned(),
        },
        other => TlsError::ParseKey {
            path: key_path.to_owned(),
            reason: other.to_string(),
        },
    })?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|error| TlsError::ParseKey {
            path: key_path.to_owned(),
            reason: error.to_string(),
        })?;

    let key = CertifiedKey::new(chain, signing_key);
    match key.keys_match() {
        Ok(()) => {}
        // The ring provider exposes the public key of every key type it loads, so this does not
        // happen today; a key whose public half is unknown cannot be checked, as rustls itself does.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch {
                cert: cert_path.to_owned(),
                key: key_path.to_owned(),
            });
        }
        // Anything else means the leaf's DER inside the PEM block is not a usable certificate.
        Err(other) => return Err(parse_cert_error(other.to_string())),
    }
    Ok(Current {
        key: Arc::new(key),
        fingerprint,
    })
}

/// Loads the self-signed pair from `dir`, generating it first when neither file exists.
fn load_self_signed(dir: &Path, names: &[String]) -> Result<Current, TlsError> {
    let cert_path = dir.join(SELF_SIGNED_CERT_FILE);
    let key_path = dir.join(SELF_SIGNED_KEY_FILE);
    let cert_exists = cert_path.try_exists().map_err(|source| TlsError::ReadCert {
        path: cert_path.clone(),
        source,
    })?;
    let key_exists = key_path.try_exists().map_err(|source| TlsError::ReadKey {
        path: key_path.clone(),
        source,
    })?;
    match (cert_exists, key_exists) {
        (true, true) => {}
        (false, false) => generate_self_signed(dir, &cert_path, &key_path, names)?,
        // Never fill in the missing half: a new key means a new fingerprint, which the owner should
        // decide on, and a lone key or certificate may be the owner's mistake worth seeing.
        (true, false) => {
            return Err(TlsError::IncompleteSelfSigned {
                present: cert_path,
                missing: key_path,
            });
        }
        (false, true) => {
            return Err(TlsError::IncompleteSelfSigned {
                present: key_path,
                missing: cert_path,
            });
        }
    }
    load_files(&cert_path, &key_path).map_err(|source| TlsError::UnusableSelfSigned {
        dir: dir.to_owned(),
        source: Box::new(source),
    })
}

/// The `notAfter` of an X.509 certificate in DER: `Certificate` → `tbsCertificate` → (optional
/// `[0]` version, serial, signature algorithm, issuer) → `validity` → its second time.
pub fn not_after(certificate: &[u8]) -> Result<std::time::SystemTime, der::Error> {
    use der::{Decode as _, Reader as _, SliceReader};
    fn time(reader: &mut SliceReader<'_>) -> der::Result<std::time::Duration> {
        match der::Tag::peek(reader)? {
            der::Tag::UtcTime => Ok(der::asn1::UtcTime::decode(reader)?.to_unix_duration()),
            der::Tag::GeneralizedTime => Ok(der::asn1::GeneralizedTime::decode(reader)?.to_unix_duration()),
            tag => Err(tag.unexpected_error(Some(der::Tag::UtcTime)).into()),
        }
    }
    fn skip_rest(reader: &mut SliceReader<'_>) -> der::Result<()> {
        while !reader.is_finished() {
            reader.tlv_bytes()?;
        }
        Ok(())
    }
    let mut outer = SliceReader::new(certificate)?;
    let since_epoch = outer.sequence(|certificate| {
        let since_epoch = certificate.sequence(|tbs| {
            if der::Tag::peek(tbs)?.is_context_specific() {
                tbs.tlv_bytes()?;
            }
            for _serial_signature_issuer in 0..3 {
                tbs.tlv_bytes()?;
            }
            let since_epoch = tbs.sequence(|validity| {
                time(validity)?;
                time(validity)
            })?;
            skip_rest(tbs)?;
            Ok::<_, der::Error>(since_epoch)
        })?;
        skip_rest(certificate)?;
        Ok::<_, der::Error>(since_epoch)
    })?;
    Ok(std::time::UNIX_EPOCH + since_epoch)
}

/// Generates an ECDSA P-256 certificate (the key type every TLS client supports) and writes the key
/// (0600) before the certificate (0644), each atomically, so a crash never leaves a torn file.
fn generate_self_signed(dir: &Path, cert_path: &Path, key_path: &Path, names: &[String]) -> Result<(), TlsError> {
    let mut subject_alt_names = Vec::new();
    let mut seen = Vec::new();
    for name in names.iter().filter(|name| !name.is_empty()) {
        if seen.contains(&name) {
            continue;
        }
        seen.push(name);
        let san = match name.parse::<IpAddr>() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => rcgen::SanType::DnsName(name.as_str().try_into().map_err(|source| TlsError::SelfSignedName {
                name: name.clone(),
                source,
            })?),
        };
        subject_alt_names.push(san);
    }

    let mut params = rcgen::CertificateParams::default();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - SELF_SIGNED_BACKDATE;
    params.not_after = now + SELF_SIGNED_VALIDITY;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, SELF_SIGNED_COMMON_NAME);
    params.subject_alt_names = subject_alt_names;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key_pair =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| TlsError::Generate { source })?;
    let cert = params
        .self_signed(&key_pair)
        .map_err(|source| TlsError::Generate { source })?;

    let existed = dir.exists();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        // The process umask can only narrow the mode, but it is process-wide and the control
        // socket's bind narrows it briefly: a new directory is set to 0700 explicitly.
        .and_then(|()| {
            if existed {
                Ok(())
            } else {
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            }
        })
        .map_err(|source| TlsError::WriteSelfSigned {
            path: dir.to_owned(),
            source,
        })?;
    write_atomically(key_path, key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_atomically(cert_path, cert.pem().as_bytes(), 0o644)?;
    // Make both renames durable before the fingerprint is shown to anyone who might pin it.
    fs::File::open(dir)
        .and_then(|directory| directory.sync_all())
        .map_err(|source| TlsError::WriteSelfSigned {
            path: dir.to_owned(),
            source,
        })?;
    info!(
        dir = %dir.display(),
        fingerprint = %fingerprint_of(cert.der()),
        "generated a self-signed TLS certificate"
    );
    Ok(())
}

/// Writes `contents` atomically (with the directory fsync) with `mode`.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    crate::util::write_atomically(path, contents, crate::util::FileMode::Exactly(mode)).map_err(|source| {
        TlsError::WriteSelfSigned {
            path: path.to_owned(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn not_after_is_read_from_the_certificate() {
        for days in [-3_i64, 10, 3650] {
            let mut params = rcgen::CertificateParams::new(vec!["example.test".to_owned()]).unwrap();
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::days(400);
            params.not_after = now + time::Duration::days(days);
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let der = params.self_signed(&key).unwrap().der().to_vec();
            let read = super::not_after(&der).unwrap();
            let expected = std::time::UNIX_EPOCH
                + std::time::Duration::from_secs(u64::try_from(params.not_after.unix_timestamp()).unwrap());
            assert_eq!(read, expected, "{days} days");
        }
        assert!(super::not_after(b"not a certificate").is_err());
    }

    use std::net::SocketAddr;

    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector, client::TlsStream};

    use super::*;

    /// A certificate and key made with rcgen, as PEM, plus the certificate's DER.
    struct Made {
        cert_pem: String,
        key_pem: String,
        der: Vec<u8>,
    }

    fn make_cert(alg: &'static rcgen::SignatureAlgorithm) -> Made {
        let key_pair = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let cert = params.self_signed(&key_pair).unwrap();
        Made {
            cert_pem: cert.pem(),
            key_pem: key_pair.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    fn write_files(dir: &Path, cert_pem: &str, key_pem: &str) -> CertSource {
        let cert = dir.join("server.crt");
        let key = dir.join("server.key");
        fs::write(&cert, cert_pem).unwrap();
        fs::write(&key, key_pem).unwrap();
        CertSource::Files { cert, key }
    }

    fn self_signed_source(dir: &Path) -> CertSource {
        CertSource::SelfSigned {
            dir: dir.join("tls"),
            names: vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "localhost".to_owned()],
        }
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// SHA-256 through ring (via rustls' hash provider), independent of the sha2 crate.
    fn ring_sha256_hex(data: &[u8]) -> String {
        let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
        let hash = suite.tls13().unwrap().common.hash_provider.hash(data);
        hash.as_ref().iter().map(|byte| format!("{byte:02x}")).collect()
    }

    #[test]
    fn fingerprint_format_matches_openssl() {
        // SHA-256("abc") from FIPS 180-2, in openssl's notation.
        assert_eq!(
            fingerprint_of(b"abc"),
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }

    #[test]
    fn self_signed_is_generated_once_then_reused() {
        let temp = tempfile::tempdir().unwrap();
        let source = self_signed_source(temp.path());
        let dir = temp.path().join("tls");

        let first = ReloadableCert::load(&source).unwrap();
        assert_eq!(mode_of(&dir), 0o700);
        assert_eq!(mode_of(&dir.join(SELF_SIGNED_KEY_FILE)), 0o600);
        assert_eq!(mode_of(&dir.join(SELF_SIGNED_CERT_FILE)), 0o644);
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 2, "temporary files left behind: {leftovers:?}");

        let fingerprint = first.fingerprint();
        let pairs: Vec<&str> = fingerprint.split(':').collect();
        assert_eq!(pairs.len(), 32, "{fingerprint}");
        assert!(
            pairs
                .iter()
                .all(|pair| pair.len() == 2 && pair.chars().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())),
            "{fingerprint}"
        );
        let pem = fs::read(dir.join(SELF_SIGNED_CERT_FILE)).unwrap();
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        assert_eq!(fingerprint.replace(':', "").to_lowercase(), ring_sha256_hex(&der));

        let key_before = fs::read(dir.join(SELF_SIGNED_KEY_FILE)).unwrap();
        let second = ReloadableCert::load(&source).unwrap();
        assert_eq!(second.fingerprint(), fingerprint);
        assert_eq!(fs::read(dir.join(SELF_SIGNED_KEY_FILE)).unwrap(), key_before);
        assert!(!format!("{second:?}").contains("PRIVATE"));
    }

    #[test]
    fn self_signed_with_one_file_missing_says_which_and_how_to_fix() {
        let temp = tempfile::tempdir().unwrap();
        let source = self_signed_source(temp.path());
        let dir = temp.path().join("tls");
        ReloadableCert::load(&source).unwrap();
        fs::remove_file(dir.join(SELF_SIGNED_KEY_FILE)).unwrap();

        let error = ReloadableCert::load(&source).unwrap_err();
        assert!(
            matches!(&error, TlsError::IncompleteSelfSigned { missing, .. } if *missing == dir.join("key.pem")),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains("key.pem") && message.contains("delete"), "{message}");
        // The lone certificate must not have been replaced.
        assert!(dir.join(SELF_SIGNED_CERT_FILE).exists());
        assert!(!dir.join(SELF_SIGNED_KEY_FILE).exists());
    }

    #[test]
    fn self_signed_garbage_is_an_error_naming_the_file() {
        let temp = tempfile::tempdir().unwrap();
        let source = self_signed_source(temp.path());
        let dir = temp.path().join("tls");
        ReloadableCert::load(&source).unwrap();
        fs::write(dir.join(SELF_SIGNED_CERT_FILE), "not a certificate").unwrap();

        let error = ReloadableCert::load(&source).unwrap_err();
        let TlsError::UnusableSelfSigned { source: cause, .. } = &error else {
            panic!("expected UnusableSelfSigned, got {error:?}");
        };
        assert!(
            matches!(&**cause, TlsError::ParseCert { path, .. } if *path == dir.join("cert.pem")),
            "{cause:?}"
        );
        assert!(error.to_string().contains("delete cert.pem and key.pem"), "{error}");
    }

    #[test]
    fn self_signed_rejects_an_invalid_name() {
        let temp = tempfile::tempdir().unwrap();
        let source = CertSource::SelfSigned {
            dir: temp.path().join("tls"),
            names: vec!["bad\u{e9}name".to_owned()],
        };
        let error = ReloadableCert::load(&source).unwrap_err();
        assert!(
            matches!(&error, TlsError::SelfSignedName { name, .. } if name == "bad\u{e9}name"),
            "{error:?}"
        );
        assert!(!temp.path().join("tls").join(SELF_SIGNED_KEY_FILE).exists());
    }

    #[test]
    fn files_load_with_ecdsa_and_ed25519_keys() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let temp = tempfile::tempdir().unwrap();
            let made = make_cert(alg);
            let source = write_files(temp.path(), &made.cert_pem, &made.key_pem);
            let cert = ReloadableCert::load(&source).unwrap();
            assert_eq!(cert.fingerprint(), fingerprint_of(&made.der));
        }
    }

    #[test]
    fn files_accept_key_and_chain_in_one_file() {
        let temp = tempfile::tempdir().unwrap();
        let made = make_cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        let combined = format!("{}{}", made.key_pem, made.cert_pem);
        let path = temp.path().join("combined.pem");
        fs::write(&path, combined).unwrap();
        let source = CertSource::Files {
            cert: path.clone(),
            key: path,
        };
        assert_eq!(
            ReloadableCert::load(&source).unwrap().fingerprint(),
            fingerprint_of(&made.der)
        );
    }

    #[test]
    fn files_with_a_mismatched_key_are_rejected() {
        let temp = tempfile::tempdir().unwrap();
        let made = make_cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        let other = make_cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        let source = write_files(temp.path(), &made.cert_pem, &other.key_pem);
        let error = ReloadableCert::load(&source).unwrap_err();
        assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error:?}");
        let message = error.to_string();
        assert!(
            message.contains("server.key") && message.contains("server.crt"),
            "{message}"
        );
    }

    #[test]
    fn missing_files_are_named() {
        let temp = tempfile::tempdir().unwrap();
        let made = make_cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        let source = write_files(temp.path(), &made.cert_pem, &made.key_pem);
        let CertSource::Files { cert, key } = &source else {
            unreachable!()
        };

        let missing_cert = CertSource::Files {
            cert: temp.path().join("nope.crt"),
            key: key.clone(),
        };
        let error = ReloadableCert::load(&missing_cert).unwrap_err();
        assert!(matches!(error, TlsError::ReadCert { .. }), "{error:?}");
        assert!(error.to_string().contains("nope.crt"), "{error}");

        let missing_key = CertSource::Files {
            cert: cert.clone(),
            key: temp.path().join("nope.key"),
        };
        let error = ReloadableCert::load(&missing_key).unwrap_err();
        assert!(matches!(error, TlsError::ReadKey { .. }), "{error:?}");
        assert!(error.to_string().contains("nope.key"), "{error}");
    }

    #[test]
    fn garbage_files_are_parse_errors() {
        let temp = tempfile::tempdir().unwrap();
        let made = make_cert(&rcgen::PKCS_ECDSA_P256_SHA256);

        let source = write_files(temp.path(), "garbage\n", &made.key_pem);
        let error = ReloadableCert::load(&source).unwrap_err();
        assert!(
            matches!(&error, TlsError::ParseCert { path, .. } if path.ends_with("server.crt")),
            "{error:?}"
        );

        let broken_pem = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let source = write_files(temp.path(), broken_pem, &made.key_pem);
        let error = ReloadableCert::load(&source).unwrap_err();
        assert!(matches!(error, TlsError::ParseCert { .. }), "{error:?}");

        // Valid base64 that is not a certificate: caught when the key is checked against it.
        let not_x509 = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let source = write_files(temp.path(), not_x509, &made.key_pem);
        let error = ReloadableCert::load(&source).unwrap_err();
        assert!(matches!(error, TlsError::ParseCert { .. }), "{error:?}");

        let source = write_files(temp.path(), &made.cert_pem, "garbage\n");
        let error = ReloadableCert::load(&source).unwrap_err();
        assert!(
            matches!(&error, TlsError::NoPrivateKey { path } if path.ends_with("server.key")),
            "{error:?}"
        );

        let not_a_key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let source = write_files(temp.path(), &made.cert_pem, not_a_key);
        let error = ReloadableCert::load(&source).unwrap_err();
        assert!(matches!(error, TlsError::ParseKey { .. }), "{error:?}");
    }

    #[test]
    fn reload_swaps_the_certificate_and_keeps_it_on_failure() {
        let temp = tempfile::tempdir().unwrap();
        let first = make_cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        let source = write_files(temp.path(), &first.cert_pem, &first.key_pem);
        let cert = ReloadableCert::load(&source).unwrap();
        assert_eq!(cert.fingerprint(), fingerprint_of(&first.der));

        let second = make_cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        write_files(temp.path(), &second.cert_pem, &second.key_pem);
        cert.reload(&source).unwrap();
        assert_eq!(cert.fingerprint(), fingerprint_of(&second.der));

        write_files(temp.path(), "garbage\n", &second.key_pem);
        let error = cert.reload(&source).unwrap_err();
        assert!(matches!(error, TlsError::ParseCert { .. }), "{error:?}");
        assert_eq!(cert.fingerprint(), fingerprint_of(&second.der));
    }

    #[test]
    fn server_config_offers_h2_then_http1() {
        let temp = tempfile::tempdir().unwrap();
        let cert = ReloadableCert::load(&self_signed_source(temp.path())).unwrap();
        let config = server_config(cert).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    /// Accepts TLS connections on 127.0.0.1 and echoes what each client sends.
    async fn start_echo_server(config: Arc<rustls::ServerConfig>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buffer = [0_u8; 256];
                    while let Ok(n_read) = tls.read(&mut buffer).await {
                        if n_read == 0 || tls.write_all(&buffer[..n_read]).await.is_err() {
                            return;
                        }
                        let _ = tls.flush().await;
                    }
                });
            }
        });
        address
    }

    /// A client that trusts exactly `der` and offers h2 and http/1.1.
    fn connector_trusting(der: &[u8]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(der.to_vec())).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TlsConnector::from(Arc::new(config))
    }

    async fn connect(connector: &TlsConnector, address: SocketAddr, name: &str) -> io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(address).await?;
        let server_name = ServerName::try_from(name.to_owned()).unwrap();
        connector.connect(server_name, tcp).await
    }

    async fn echo(stream: &mut TlsStream<TcpStream>, message: &[u8]) -> Vec<u8> {
        stream.write_all(message).await.unwrap();
        stream.flush().await.unwrap();
        let mut reply = vec![0_u8; message.len()];
        stream.read_exact(&mut reply).await.unwrap();
        reply
    }

    fn leaf_of(stream: &TlsStream<TcpStream>) -> Vec<u8> {
        let (_, connection) = stream.get_ref();
        connection.peer_certificates().unwrap()[0].to_vec()
    }

    fn self_signed_der(dir: &Path) -> Vec<u8> {
        let pem = fs::read(dir.join(SELF_SIGNED_CERT_FILE)).unwrap();
        CertificateDer::from_pem_slice(&pem).unwrap().to_vec()
    }

    #[tokio::test]
    async fn handshake_then_reload_serves_the_new_cert_and_keeps_old_connections() {
        let temp = tempfile::tempdir().unwrap();
        let source = self_signed_source(temp.path());
        let dir = temp.path().join("tls");
        let cert = ReloadableCert::load(&source).unwrap();
        let address = start_echo_server(server_config(Arc::clone(&cert)).unwrap()).await;

        // The generated certificate verifies for both its DNS and its IP subject alt name.
        let old_der = self_signed_der(&dir);
        let old_connector = connector_trusting(&old_der);
        let mut first = connect(&old_connector, address, "localhost").await.unwrap();
        assert_eq!(first.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(leaf_of(&first), old_der);
        assert_eq!(echo(&mut first, b"hello").await, b"hello");
        let mut by_ip = connect(&old_connector, address, "127.0.0.1").await.unwrap();
        assert_eq!(echo(&mut by_ip, b"ip").await, b"ip");

        // Deleting both files and reloading generates a new certificate.
        fs::remove_file(dir.join(SELF_SIGNED_CERT_FILE)).unwrap();
        fs::remove_file(dir.join(SELF_SIGNED_KEY_FILE)).unwrap();
        cert.reload(&source).unwrap();
        let new_der = self_signed_der(&dir);
        assert_ne!(new_der, old_der);
        assert_eq!(cert.fingerprint(), fingerprint_of(&new_der));

        let mut second = connect(&connector_trusting(&new_der), address, "localhost")
            .await
            .unwrap();
        assert_eq!(leaf_of(&second), new_der);
        assert_eq!(echo(&mut second, b"new").await, b"new");
        // A new client pinned to the old certificate is now refused, so the swap really happened. (A fresh
        // connector: `old_connector` would resume its earlier session, which skips certificate checks.)
        assert!(
            connect(&connector_trusting(&old_der), address, "localhost")
                .await
                .is_err()
        );

        // The connection made before the reload keeps working with its certificate.
        assert_eq!(echo(&mut first, b"still here").await, b"still here");
        assert_eq!(leaf_of(&first), old_der);
    }

    #[tokio::test]
    async fn http1_only_clients_negotiate_http1() {
        let temp = tempfile::tempdir().unwrap();
        let made = make_cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        let cert = ReloadableCert::load(&write_files(temp.path(), &made.cert_pem, &made.key_pem)).unwrap();
        let address = start_echo_server(server_config(cert).unwrap()).await;

        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(made.der.clone())).unwrap();
        // TLS 1.2 only, to check the server still speaks it.
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = TlsConnector::from(Arc::new(config));
        let mut stream = connect(&connector, address, "localhost").await.unwrap();
        let (_, connection) = stream.get_ref();
        assert_eq!(connection.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(connection.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
        assert_eq!(echo(&mut stream, b"ping").await, b"ping");
    }
}
