//! The deployment's private PKI: one self-signed CA per deployment (a city
//! and everything below it) and one certificate per node.
//!
//! Invariants:
//! - A node certificate names exactly one node, twice: as the URI SAN
//!   `tiersync://node/<code>` (what servers read to learn who called) and as
//!   the DNS SAN `<code>.node.tiersync` (what clients verify, through the
//!   ordinary TLS server-name check, to know they reached the parent they
//!   dialled). The CN repeats the code for humans only.
//! - Node certificates are ECDSA P-256 with EKU serverAuth + clientAuth,
//!   because every non-leaf node is both a server (for its children) and a
//!   client (of its parent).
//! - A CA only issues certificates for codes inside its city; its city is
//!   recorded in its CN (`tiersync deployment CA <city>`), so a loaded CA
//!   knows it without extra configuration.
//! - Private keys and the deployment secret are written with mode 0600, and
//!   an existing CA key or deployment secret is never overwritten: replacing
//!   either silently would cut every node off, or change every ID digest.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rand::TryRngCore;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tiersync_proto::types::{DivisionCode, Tier};

/// File names inside a PKI directory.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
pub const DEPLOYMENT_KEY_FILE: &str = "deployment.key";

/// Prefix of the URI SAN that carries a node's code.
pub const NODE_URI_PREFIX: &str = "tiersync://node/";
/// Suffix of the DNS SAN that carries a node's code.
pub const NODE_DNS_SUFFIX: &str = ".node.tiersync";

const CA_CN_PREFIX: &str = "tiersync deployment CA ";

/// Certificates start this long before they are issued, so that a node whose
/// clock runs a little behind the issuer's still accepts a fresh certificate.
const BACKDATE: Duration = Duration::from_secs(60 * 60);

const SECS_PER_DAY: u64 = 24 * 60 * 60;

/// The URI SAN naming `code`.
pub fn node_uri(code: &DivisionCode) -> String {
    format!("{NODE_URI_PREFIX}{code}")
}

/// The DNS SAN (and TLS server name) naming `code`.
pub fn node_dns_name(code: &DivisionCode) -> String {
    format!("{code}{NODE_DNS_SUFFIX}")
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot create directory {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "refusing to overwrite the existing CA key {}: every node certificate of the deployment hangs off it; remove it by hand if you really mean to start a new deployment",
        path.display()
    )]
    CaKeyExists { path: PathBuf },
    #[error(
        "refusing to overwrite the existing deployment secret {}: replacing it would change every ID-number digest; remove it by hand if you really mean to",
        path.display()
    )]
    SecretExists { path: PathBuf },
    #[error("cannot generate random bytes for {}: {detail}", path.display())]
    Random { path: PathBuf, detail: String },
    #[error("a deployment CA belongs to a city (4-digit code), not to the {tier} `{code}`")]
    NotCity { code: DivisionCode, tier: Tier },
    #[error(
        "`{code}` is outside this CA's deployment (city `{city}`); it cannot be issued a certificate"
    )]
    OutsideDeployment {
        code: DivisionCode,
        city: DivisionCode,
    },
    #[error("invalid validity for the certificate of `{subject}`: {reason}")]
    Validity { subject: String, reason: String },
    #[error("cannot generate the certificate of `{subject}`: {source}")]
    Generate {
        subject: String,
        source: rcgen::Error,
    },
    #[error("{what} holds no usable certificate: {detail}")]
    BadCert { what: String, detail: String },
    #[error("{what} is not a tiersync deployment CA: {detail}")]
    NotCa { what: String, detail: String },
    #[error("{what} holds no usable private key: {source}")]
    BadKey { what: String, source: rcgen::Error },
    #[error(transparent)]
    Origin(#[from] crate::identity::origin::OriginError),
    #[error("the certificate request for `{subject}` is unusable: {detail}")]
    BadRequest { subject: String, detail: String },
    #[error("the private key in {key} does not belong to the certificate in {cert}")]
    KeyMismatch { cert: String, key: String },
}

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertifiedKey {
    // The key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A deployment CA: its certificate, its key, and the city it serves.
pub struct Ca {
    city: DivisionCode,
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("city", &self.city)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A fresh self-signed CA for the deployment rooted at `city`.
    pub fn generate(city: &DivisionCode, validity_days: u32) -> Result<Ca, PkiError> {
        if city.tier() != Tier::City {
            return Err(PkiError::NotCity {
                code: city.clone(),
                tier: city.tier(),
            });
        }
        let subject = format!("{CA_CN_PREFIX}{city}");
        let now = SystemTime::now();
        let (not_before, not_after) = validity_window(&subject, now, validity_days)?;

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, &subject);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "tiersync");
        // Path length 0: the CA signs node certificates only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        params.not_before = not_before.into();
        params.not_after = not_after.into();

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| {
            PkiError::Generate {
                subject: subject.clone(),
                source,
            }
        })?;
        let cert = params
            .self_signed(&key)
            .map_err(|source| PkiError::Generate {
                subject: subject.clone(),
                source,
            })?;
        Ok(Ca {
            city: city.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA of a PKI directory (`ca.pem`, `ca.key`).
    pub fn load_dir(dir: &Path) -> Result<Ca, PkiError> {
        let ca_cert_path = dir.join(CA_CERT_FILE);
        let ca_key_path = dir.join(CA_KEY_FILE);
        let read = |path: &Path| {
            fs::read_to_string(path).map_err(|source| PkiError::Read {
                path: path.to_owned(),
                source,
            })
        };
        Ca::load_described(
            &read(&ca_cert_path)?,
            &ca_cert_path.display().to_string(),
            &read(&ca_key_path)?,
            &ca_key_path.display().to_string(),
        )
    }

    /// A CA from its PEM certificate and key; checks that the certificate is
    /// a tiersync deployment CA and that the key is its key.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        Self::load_described(
            cert_pem,
            "the CA certificate PEM",
            key_pem,
            "the CA key PEM",
        )
    }

    /// [`Ca::load`] with error messages naming where the PEM came from.
    fn load_described(
        cert_pem: &str,
        cert_what: &str,
        key_pem: &str,
        key_what: &str,
    ) -> Result<Ca, PkiError> {
        let der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| PkiError::BadCert {
                what: cert_what.to_owned(),
                detail: e.to_string(),
            })?;
        let (_, x509) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| PkiError::BadCert {
                what: cert_what.to_owned(),
                detail: e.to_string(),
            })?;
        if !x509.is_ca() {
            return Err(PkiError::NotCa {
                what: cert_what.to_owned(),
                detail: "basic constraints do not say CA:TRUE".to_owned(),
            });
        }
        let cn = x509
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default();
        let city = cn
            .strip_prefix(CA_CN_PREFIX)
            .and_then(|code| DivisionCode::parse_for_tier(code, Tier::City).ok())
            .ok_or_else(|| PkiError::NotCa {
                what: cert_what.to_owned(),
                detail: format!("its CN `{cn}` is not `{CA_CN_PREFIX}<city code>`"),
            })?;

        let key = KeyPair::from_pem(key_pem).map_err(|source| PkiError::BadKey {
            what: key_what.to_owned(),
            source,
        })?;
        // rcgen would happily sign with any key; a mismatched key would mint
        // certificates that no node can verify, so catch it here.
        if rcgen::PublicKeyData::subject_public_key_info(&key) != x509.public_key().raw {
            return Err(PkiError::KeyMismatch {
                cert: cert_what.to_owned(),
                key: key_what.to_owned(),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|e| PkiError::BadCert {
            what: cert_what.to_owned(),
            detail: e.to_string(),
        })?;
        Ok(Ca {
            city,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    /// The city whose deployment this CA serves.
    pub fn city(&self) -> &DivisionCode {
        &self.city
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A node certificate for `code`, valid from now for `validity_days`.
    pub fn issue_node(
        &self,
        code: &DivisionCode,
        validity_days: u32,
    ) -> Result<CertifiedKey, PkiError> {
        let (not_before, not_after) =
            validity_window(code.as_str(), SystemTime::now(), validity_days)?;
        self.issue_node_between(code, not_before, not_after)
    }

    /// A node certificate for `code` valid exactly from `not_before` to
    /// `not_after` (tests use it to mint expired certificates).
    pub fn issue_node_between(
        &self,
        code: &DivisionCode,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<CertifiedKey, PkiError> {
        if !self.city.contains(code) {
            return Err(PkiError::OutsideDeployment {
                code: code.clone(),
                city: self.city.clone(),
            });
        }
        if not_after <= not_before {
            return Err(PkiError::Validity {
                subject: code.to_string(),
                reason: "not_after is not later than not_before".to_owned(),
            });
        }
        let params = node_params(code, not_before, not_after)?;
        self.issue_with(code.as_str(), params)
    }

    /// A node certificate for `code` over the public key of a PKCS#10
    /// request (PEM) that the node made with a key it generated and keeps.
    /// The request's signature is checked (proof that the requester holds
    /// the key); the names in it are ignored: the certificate's names come
    /// from `code` alone, exactly as [`Ca::issue_node`] writes them.
    pub fn issue_for_request(
        &self,
        code: &DivisionCode,
        csr_pem: &str,
        validity_days: u32,
    ) -> Result<String, PkiError> {
        if !self.city.contains(code) {
            return Err(PkiError::OutsideDeployment {
                code: code.clone(),
                city: self.city.clone(),
            });
        }
        let request = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            PkiError::BadRequest {
                subject: code.to_string(),
                detail: e.to_string(),
            }
        })?;
        if request.public_key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(PkiError::BadRequest {
                subject: code.to_string(),
                detail: "the key is not ECDSA P-256, the one kind node certificates use".into(),
            });
        }
        let (not_before, not_after) =
            validity_window(code.as_str(), SystemTime::now(), validity_days)?;
        let params = node_params(code, not_before, not_after)?;
        let cert = params
            .signed_by(&request.public_key, &self.issuer)
            .map_err(|source| PkiError::Generate {
                subject: code.to_string(),
                source,
            })?;
        Ok(cert.pem())
    }
}

impl Ca {
    /// Signs `params` for a fresh ECDSA P-256 key (a node's certificate, or
    /// a department system's, see [`super::department`]); `subject` names
    /// it in errors.
    pub(crate) fn issue_with(
        &self,
        subject: &str,
        params: CertificateParams,
    ) -> Result<CertifiedKey, PkiError> {
        let generate = |source| PkiError::Generate {
            subject: subject.to_owned(),
            source,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A fresh ECDSA P-256 key for node `code` and a PKCS#10 request for it, both
/// PEM: what `tiersync join` sends to the parent. The key never leaves the
/// machine that generated it.
pub fn certificate_request(code: &DivisionCode) -> Result<(String, String), PkiError> {
    let generate = |source| PkiError::Generate {
        subject: code.to_string(),
        source,
    };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, code.as_str());
    let csr = params.serialize_request(&key).map_err(generate)?;
    Ok((csr.pem().map_err(generate)?, key.serialize_pem()))
}

/// The parameters of a node certificate for `code` (see the module doc).
fn node_params(
    code: &DivisionCode,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, PkiError> {
    let generate = |source| PkiError::Generate {
        subject: code.to_string(),
        source,
    };
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, code.as_str());
    params.subject_alt_names = vec![
        SanType::URI(Ia5String::try_from(node_uri(code)).map_err(generate)?),
        SanType::DnsName(Ia5String::try_from(node_dns_name(code)).map_err(generate)?),
    ];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    Ok(params)
}

/// Creates `dir` and a new deployment in it: `ca.pem`, `ca.key` (0600) and
/// `deployment.key` (0600, 32 random bytes as hex: the deployment-wide HMAC
/// secret for ID-number digests). Refuses if `ca.key` or `deployment.key`
/// already exists, before writing anything.
pub fn init_dir(dir: &Path, city: &DivisionCode) -> Result<(), PkiError> {
    /// Ten years: rotating a deployment CA means re-issuing every node, so it
    /// is not something to schedule often.
    const CA_VALIDITY_DAYS: u32 = 3650;

    fs::create_dir_all(dir).map_err(|source| PkiError::CreateDir {
        path: dir.to_owned(),
        source,
    })?;
    let ca_key_path = dir.join(CA_KEY_FILE);
    let secret_path = dir.join(DEPLOYMENT_KEY_FILE);
    if ca_key_path.exists() {
        return Err(PkiError::CaKeyExists { path: ca_key_path });
    }
    if secret_path.exists() {
        return Err(PkiError::SecretExists { path: secret_path });
    }

    let ca = Ca::generate(city, CA_VALIDITY_DAYS)?;
    let mut secret = [0u8; 32];
    // Straight from the OS: this secret lives as long as the deployment.
    rand::rngs::OsRng
        .try_fill_bytes(&mut secret)
        .map_err(|e| PkiError::Random {
            path: secret_path.clone(),
            detail: e.to_string(),
        })?;

    // `create_new` makes the refusal above race-free: if another process
    // created the key in between, this fails instead of overwriting it.
    write_new_private(&ca_key_path, ca.key_pem()).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            PkiError::CaKeyExists {
                path: ca_key_path.clone(),
            }
        } else {
            PkiError::Write {
                path: ca_key_path.clone(),
                source,
            }
        }
    })?;
    write_new_private(&secret_path, &format!("{}\n", hex::encode(secret))).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            PkiError::SecretExists {
                path: secret_path.clone(),
            }
        } else {
            PkiError::Write {
                path: secret_path.clone(),
                source,
            }
        }
    })?;
    let ca_cert_path = dir.join(CA_CERT_FILE);
    fs::write(&ca_cert_path, ca.cert_pem()).map_err(|source| PkiError::Write {
        path: ca_cert_path,
        source,
    })?;

    // The trust root signs the origin certificates nodes sign records with.
    let (root_key, root_cert) = crate::identity::origin::generate_root(city)?;
    let root_key_path = dir.join(crate::identity::origin::TRUST_ROOT_KEY_FILE);
    write_new_private(&root_key_path, &root_key).map_err(|source| PkiError::Write {
        path: root_key_path,
        source,
    })?;
    let root_cert_path = dir.join(crate::identity::origin::TRUST_ROOT_CERT_FILE);
    fs::write(&root_cert_path, root_cert).map_err(|source| PkiError::Write {
        path: root_cert_path,
        source,
    })?;
    Ok(())
}

/// Issues `code` a new SM2 signing key and its origin certificate with the
/// trust root in `dir`, writing `<code>.sm2.key` (0600) and `<code>.sm2.pem`.
pub fn issue_origin_into_dir(
    dir: &Path,
    code: &DivisionCode,
) -> Result<(PathBuf, PathBuf), PkiError> {
    let read = |path: &Path| {
        fs::read_to_string(path).map_err(|source| PkiError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_path = dir.join(crate::identity::origin::TRUST_ROOT_CERT_FILE);
    let key_path = dir.join(crate::identity::origin::TRUST_ROOT_KEY_FILE);
    let issuer = crate::identity::origin::RootIssuer::from_pem(
        &read(&cert_path)?,
        &read(&key_path)?,
        &cert_path.display().to_string(),
    )?;
    let key = tiersync_trust::SigningKey::generate();
    let cert = issuer.issue(code, key.verifying_key())?;
    let key_pem =
        key.to_pkcs8_pem()
            .map_err(|source| crate::identity::origin::OriginError::Key {
                what: format!("the signing key of `{code}`"),
                source,
            })?;
    let out_key = dir.join(format!("{code}.sm2.key"));
    let out_cert = dir.join(format!("{code}.sm2.pem"));
    write_private(&out_key, &key_pem).map_err(|source| PkiError::Write {
        path: out_key.clone(),
        source,
    })?;
    fs::write(&out_cert, cert).map_err(|source| PkiError::Write {
        path: out_cert.clone(),
        source,
    })?;
    Ok((out_cert, out_key))
}

/// Issues a certificate for `code` with the CA in `dir`, writing
/// `<code>.pem` and `<code>.key` (0600) there; returns (cert path, key path).
/// Re-issuing replaces the node's previous files (that is how a node
/// certificate is renewed).
pub fn issue_into_dir(
    dir: &Path,
    code: &DivisionCode,
    validity_days: u32,
) -> Result<(PathBuf, PathBuf), PkiError> {
    let issued = Ca::load_dir(dir)?.issue_node(code, validity_days)?;
    write_issued(dir, code.as_str(), &issued)
}

/// Writes `issued` into `dir` as `<stem>.pem` and `<stem>.key` (0600),
/// replacing earlier files of that name; returns their paths.
pub(crate) fn write_issued(
    dir: &Path,
    stem: &str,
    issued: &CertifiedKey,
) -> Result<(PathBuf, PathBuf), PkiError> {
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    write_private(&key_path, &issued.key_pem).map_err(|source| PkiError::Write {
        path: key_path.clone(),
        source,
    })?;
    fs::write(&cert_path, &issued.cert_pem).map_err(|source| PkiError::Write {
        path: cert_path.clone(),
        source,
    })?;
    Ok((cert_path, key_path))
}

/// `now - BACKDATE` to `now + validity_days`.
pub(crate) fn validity_window(
    subject: &str,
    now: SystemTime,
    validity_days: u32,
) -> Result<(SystemTime, SystemTime), PkiError> {
    if validity_days == 0 {
        return Err(PkiError::Validity {
            subject: subject.to_owned(),
            reason: "validity must be at least one day".to_owned(),
        });
    }
    let not_before = now.checked_sub(BACKDATE).unwrap_or(now);
    let not_after = now
        .checked_add(Duration::from_secs(u64::from(validity_days) * SECS_PER_DAY))
        .ok_or_else(|| PkiError::Validity {
            subject: subject.to_owned(),
            reason: format!("{validity_days} days from now is out of range"),
        })?;
    Ok((not_before, not_after))
}

/// A random positive 128-bit serial: serials must be unique per CA, and
/// random ones need no state to stay so.
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // DER integers are signed; keep the top bit clear so the serial is positive.
    bytes[0] &= 0x7f;
    // A leading zero byte would be stripped to a shorter encoding; keep 16 bytes.
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// Writes a secret file that must not exist yet, readable by the owner only.
pub(crate) fn write_new_private(path: &Path, contents: &str) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    restrict_mode(&mut options);
    options.open(path)?.write_all(contents.as_bytes())
}

/// Writes (or replaces) a secret file, readable by the owner only.
fn write_private(path: &Path, contents: &str) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    restrict_mode(&mut options);
    let mut file = options.open(path)?;
    // The mode above only applies to a new file; an older one may be looser.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(contents.as_bytes())
}

fn restrict_mode(options: &mut OpenOptions) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = options;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(s: &str) -> DivisionCode {
        DivisionCode::parse(s).unwrap()
    }

    fn parse(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn node_certificate_names_the_node() {
        let ca = Ca::generate(&code("5111"), 30).unwrap();
        let node = code("511102004");
        let issued = ca.issue_node(&node, 7).unwrap();
        let der = parse(&issued.cert_pem);
        let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();

        let cn: Vec<_> = x509
            .subject()
            .iter_common_name()
            .map(|cn| cn.as_str().unwrap())
            .collect();
        assert_eq!(cn, ["511102004"]);
        let sans: Vec<String> = x509
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|name| name.to_string())
            .collect();
        assert_eq!(
            sans,
            [
                "URI(tiersync://node/511102004)",
                "DNSName(511102004.node.tiersync)"
            ]
        );
        let eku = x509.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!x509.is_ca());
        assert_eq!(
            x509.public_key().algorithm.algorithm,
            x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        );
        // Signed by the CA.
        let ca_der = parse(ca.cert_pem());
        let (_, ca_x509) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        x509.verify_signature(Some(ca_x509.public_key())).unwrap();
        assert!(ca_x509.is_ca());
        assert_eq!(
            ca_x509.subject().to_string(),
            "CN=tiersync deployment CA 5111, O=tiersync"
        );
    }

    #[test]
    fn loaded_ca_issues_like_the_original() {
        let ca = Ca::generate(&code("5111"), 30).unwrap();
        let loaded = Ca::load(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(loaded.city(), &code("5111"));
        let issued = loaded.issue_node(&code("511102"), 1).unwrap();
        let der = parse(&issued.cert_pem);
        let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ca_der = parse(ca.cert_pem());
        let (_, ca_x509) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        x509.verify_signature(Some(ca_x509.public_key())).unwrap();
        assert_eq!(x509.issuer(), ca_x509.subject());
    }

    #[test]
    fn load_rejects_a_foreign_key_and_a_node_certificate() {
        let ca = Ca::generate(&code("5111"), 30).unwrap();
        let other = Ca::generate(&code("5111"), 30).unwrap();
        assert_eq!(
            Ca::load(ca.cert_pem(), other.key_pem())
                .unwrap_err()
                .to_string(),
            "the private key in the CA key PEM does not belong to the certificate in the CA certificate PEM"
        );
        let node = ca.issue_node(&code("511102"), 1).unwrap();
        assert_eq!(
            Ca::load(&node.cert_pem, &node.key_pem)
                .unwrap_err()
                .to_string(),
            "the CA certificate PEM is not a tiersync deployment CA: basic constraints do not say CA:TRUE"
        );
        let err = Ca::load("", ca.key_pem()).unwrap_err().to_string();
        assert!(
            err.starts_with("the CA certificate PEM holds no usable certificate"),
            "{err}"
        );
    }

    #[test]
    fn refuses_codes_outside_the_city_and_non_city_roots() {
        let ca = Ca::generate(&code("5111"), 30).unwrap();
        assert_eq!(
            ca.issue_node(&code("510104"), 1).unwrap_err().to_string(),
            "`510104` is outside this CA's deployment (city `5111`); it cannot be issued a certificate"
        );
        assert_eq!(
            Ca::generate(&code("511102"), 30).unwrap_err().to_string(),
            "a deployment CA belongs to a city (4-digit code), not to the county `511102`"
        );
        let now = SystemTime::now();
        assert_eq!(
            ca.issue_node_between(&code("511102"), now, now)
                .unwrap_err()
                .to_string(),
            "invalid validity for the certificate of `511102`: not_after is not later than not_before"
        );
        assert_eq!(
            ca.issue_node(&code("511102"), 0).unwrap_err().to_string(),
            "invalid validity for the certificate of `511102`: validity must be at least one day"
        );
    }

    #[test]
    fn serials_are_positive_and_distinct() {
        let a = random_serial().to_bytes();
        let b = random_serial().to_bytes();
        assert_eq!(a.len(), 16);
        assert!(a[0] < 0x80 && a[0] != 0);
        assert_ne!(a, b);
    }

    #[test]
    fn init_dir_writes_private_files_and_refuses_twice() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        init_dir(&dir, &code("5111")).unwrap();

        let secret = fs::read_to_string(dir.join(DEPLOYMENT_KEY_FILE)).unwrap();
        assert_eq!(hex::decode(secret.trim()).unwrap().len(), 32);
        let ca = Ca::load(
            &fs::read_to_string(dir.join(CA_CERT_FILE)).unwrap(),
            &fs::read_to_string(dir.join(CA_KEY_FILE)).unwrap(),
        )
        .unwrap();
        assert_eq!(ca.city(), &code("5111"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for file in [CA_KEY_FILE, DEPLOYMENT_KEY_FILE] {
                let mode = fs::metadata(dir.join(file)).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{file}");
            }
        }

        let ca_key_before = fs::read_to_string(dir.join(CA_KEY_FILE)).unwrap();
        let err = init_dir(&dir, &code("5111")).unwrap_err().to_string();
        let expected_path = dir.join(CA_KEY_FILE).display().to_string();
        assert!(
            err.starts_with(&format!(
                "refusing to overwrite the existing CA key {expected_path}:"
            )),
            "{err}"
        );
        assert_eq!(
            fs::read_to_string(dir.join(CA_KEY_FILE)).unwrap(),
            ca_key_before
        );
        assert_eq!(
            fs::read_to_string(dir.join(DEPLOYMENT_KEY_FILE)).unwrap(),
            secret
        );

        // A lone deployment secret is protected too.
        fs::remove_file(dir.join(CA_KEY_FILE)).unwrap();
        let err = init_dir(&dir, &code("5111")).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "refusing to overwrite the existing deployment secret {}:",
                dir.join(DEPLOYMENT_KEY_FILE).display()
            )),
            "{err}"
        );
    }

    #[test]
    fn issue_into_dir_writes_the_node_files() {
        let tmp = tempfile::tempdir().unwrap();
        init_dir(tmp.path(), &code("5111")).unwrap();
        let node = code("511102004001");
        let (cert, key) = issue_into_dir(tmp.path(), &node, 30).unwrap();
        assert_eq!(cert, tmp.path().join("511102004001.pem"));
        assert_eq!(key, tmp.path().join("511102004001.key"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Re-issuing renews in place.
        let first = fs::read_to_string(&cert).unwrap();
        issue_into_dir(tmp.path(), &node, 30).unwrap();
        assert_ne!(fs::read_to_string(&cert).unwrap(), first);
    }

    #[test]
    fn issue_into_dir_names_the_missing_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let err = issue_into_dir(tmp.path(), &code("511102"), 30)
            .unwrap_err()
            .to_string();
        let expected = format!("cannot read {}: ", tmp.path().join(CA_CERT_FILE).display());
        assert!(err.starts_with(&expected), "{err}");
    }
}
