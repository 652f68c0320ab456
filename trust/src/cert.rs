//! SM2 X.509 certificates: a self-signed authority and certificates it issues, built with
//! `x509-cert` and checked with our own verifier. For the trust-list work to come; the batch
//! signatures of [`crate::batch`] do not need certificates.
//!
//! The two interop traps apply inside certificates too:
//!
//! - the signature in the certificate's BIT STRING is DER `SEQUENCE { r, s }`, what GM/T
//!   0015 and OpenSSL expect (`sm2`'s plain `Signature` would put raw `r || s` there, which
//!   every other verifier refuses), so certificates are signed through a small wrapper whose
//!   signature type is `sm2::dsa::DerSignature`;
//! - the distinguishing ID is [`DIST_ID`](crate::DIST_ID); OpenSSL 3.0 needs
//!   `openssl verify -vfyopt distid:1234567812345678` to check them, and
//!   `-sigopt distid:1234567812345678` to make certificates we accept.
//!
//! The signature algorithm is SM2-with-SM3, OID 1.2.156.10197.1.501, with no parameters.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use sm2::dsa::signature::{self, Keypair, Signer};
use sm2::pkcs8::spki::{
    AlgorithmIdentifier, EncodePublicKey, SignatureAlgorithmIdentifier, SubjectPublicKeyInfo,
    SubjectPublicKeyInfoRef,
};
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::certificate::TbsCertificate;
use x509_cert::der::asn1::AnyRef;
use x509_cert::der::{Decode, DecodePem, Encode, EncodePem, pem::LineEnding};
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier,
};
use x509_cert::ext::{Extension, ToExtension};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Validity;

use crate::hash::Sm3Hasher;
use crate::keys::{KeyError, Signature, SigningKey, VerifyingKey};

/// SM2-with-SM3, the only certificate signature algorithm accepted.
pub const SM2_WITH_SM3_OID: &str = "1.2.156.10197.1.501";

/// Errors making, reading or checking certificates.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    /// A subject that is not an RFC 4514 distinguished name.
    #[error(
        "certificate subject `{subject}` is not a distinguished name such as `CN=5111,O=tiersync`: {reason}"
    )]
    Subject {
        /// The subject given.
        subject: String,
        /// What the parser said.
        reason: String,
    },
    /// Building or encoding failed.
    #[error("cannot build the certificate for `{subject}`: {reason}")]
    Build {
        /// The subject.
        subject: String,
        /// What the builder said.
        reason: String,
    },
    /// Not a certificate.
    #[error("{format} is not an X.509 certificate: {reason}")]
    Decode {
        /// `PEM` or `DER`.
        format: &'static str,
        /// What the decoder said.
        reason: String,
    },
    /// The certificate is signed with another algorithm.
    #[error("certificate `{subject}` is signed with {oid}, not SM2-with-SM3 ({SM2_WITH_SM3_OID})")]
    Algorithm {
        /// The certificate's subject.
        subject: String,
        /// The algorithm it names.
        oid: String,
    },
    /// The public key is not an SM2 key.
    #[error("certificate `{subject}` does not hold an SM2 public key: {source}")]
    PublicKey {
        /// The certificate's subject.
        subject: String,
        /// Why.
        source: KeyError,
    },
    /// The signature is malformed or does not verify.
    #[error("certificate `{subject}`: {source}")]
    Signature {
        /// The certificate's subject.
        subject: String,
        /// Why.
        source: KeyError,
    },
}

/// An X.509 certificate holding an SM2 key and signed with SM2-with-SM3.
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate {
    der: Vec<u8>,
    inner: x509_cert::Certificate,
}

/// What a certificate may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// An authority: signs certificates (basicConstraints CA, keyCertSign and cRLSign).
    Authority,
    /// An end entity: signs data (digitalSignature), never certificates.
    Signer,
}

// === impl Certificate ===

impl Certificate {
    /// A self-signed authority certificate for `key`, valid from now for `valid_for`.
    pub fn self_signed(
        key: &SigningKey,
        subject: &str,
        valid_for: Duration,
    ) -> Result<Self, CertError> {
        let name = parse_name(subject)?;
        build(
            Profile {
                subject: name.clone(),
                issuer: name,
                role: Role::Authority,
            },
            key.verifying_key(),
            key,
            subject,
            valid_for,
        )
    }

    /// A certificate for `public` under `subject`, issued by this authority with its key.
    pub fn issue(
        &self,
        issuer_key: &SigningKey,
        subject: &str,
        public: &VerifyingKey,
        role: Role,
        valid_for: Duration,
    ) -> Result<Self, CertError> {
        build(
            Profile {
                subject: parse_name(subject)?,
                issuer: self.inner.tbs_certificate().subject().clone(),
                role,
            },
            public,
            issuer_key,
            subject,
            valid_for,
        )
    }

    /// Reads a DER certificate. Only DER is read: bytes the decoder accepts
    /// but that encode back to other bytes (a field written out with its
    /// default value, such as an explicit version 1) are refused, so a
    /// certificate has one byte form, the one its signature and
    /// [`to_der`](Self::to_der) and [`to_pem`](Self::to_pem) all mean.
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        let decode = |reason: String| CertError::Decode {
            format: "DER",
            reason,
        };
        let inner =
            x509_cert::Certificate::from_der(der).map_err(|error| decode(error.to_string()))?;
        let canonical = inner.to_der().map_err(|error| decode(error.to_string()))?;
        if canonical != der {
            let at = canonical
                .iter()
                .zip(der)
                .position(|(a, b)| a != b)
                .unwrap_or(canonical.len().min(der.len()));
            return Err(decode(format!(
                "it is not in DER form: its {} bytes encode back to {} other bytes, differing from byte {at} on (a field written out with its default value?)",
                der.len(),
                canonical.len()
            )));
        }
        Ok(Self {
            der: canonical,
            inner,
        })
    }

    /// Reads a PEM `CERTIFICATE`.
    pub fn from_pem(pem: &str) -> Result<Self, CertError> {
        let inner = x509_cert::Certificate::from_pem(pem).map_err(|error| CertError::Decode {
            format: "PEM",
            reason: error.to_string(),
        })?;
        let der = inner.to_der().map_err(|error| CertError::Decode {
            format: "PEM",
            reason: error.to_string(),
        })?;
        Ok(Self { der, inner })
    }

    /// The DER bytes.
    pub fn to_der(&self) -> &[u8] {
        &self.der
    }

    /// PEM, as OpenSSL writes it.
    pub fn to_pem(&self) -> String {
        self.inner
            .to_pem(LineEnding::LF)
            .expect("a decoded certificate encodes")
    }

    /// The subject, RFC 4514 form.
    pub fn subject(&self) -> String {
        self.inner.tbs_certificate().subject().to_string()
    }

    /// The certified SM2 key.
    pub fn public_key(&self) -> Result<VerifyingKey, CertError> {
        let spki = self
            .inner
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .map_err(|error| CertError::Decode {
                format: "DER",
                reason: error.to_string(),
            })?;
        VerifyingKey::from_public_key_der(&spki).map_err(|source| CertError::PublicKey {
            subject: self.subject(),
            source,
        })
    }

    /// Checks this certificate's signature with its issuer's key: SM2-with-SM3, DER signature,
    /// [`DIST_ID`](crate::DIST_ID). Checks the signature only, not validity dates or the chain's extensions.
    pub fn verify_signature(&self, issuer: &VerifyingKey) -> Result<(), CertError> {
        let algorithm = &self.inner.signature_algorithm().oid;
        if algorithm.to_string() != SM2_WITH_SM3_OID {
            return Err(CertError::Algorithm {
                subject: self.subject(),
                oid: algorithm.to_string(),
            });
        }
        let signed = self
            .inner
            .tbs_certificate()
            .to_der()
            .map_err(|error| CertError::Decode {
                format: "DER",
                reason: error.to_string(),
            })?;
        let sig_error = |source| CertError::Signature {
            subject: self.subject(),
            source,
        };
        let bits = self.inner.signature().raw_bytes();
        let signature = Signature::from_der(bits).map_err(sig_error)?;
        issuer.verify(&signed, &signature).map_err(sig_error)
    }
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("subject", &self.subject())
            .finish_non_exhaustive()
    }
}

fn parse_name(subject: &str) -> Result<Name, CertError> {
    Name::from_str(subject).map_err(|error| CertError::Subject {
        subject: subject.to_owned(),
        reason: error.to_string(),
    })
}

fn build(
    profile: Profile,
    public: &VerifyingKey,
    issuer_key: &SigningKey,
    subject: &str,
    valid_for: Duration,
) -> Result<Certificate, CertError> {
    let fail = |reason: String| CertError::Build {
        subject: subject.to_owned(),
        reason,
    };
    let spki = SubjectPublicKeyInfo::from_der(public.to_public_key_der())
        .map_err(|error| fail(error.to_string()))?;
    let validity = Validity::from_now(valid_for).map_err(|error| fail(error.to_string()))?;
    let builder = CertificateBuilder::new(profile, serial_number(public), validity, spki)
        .map_err(|error| fail(error.to_string()))?;
    let inner = builder
        .build::<_, sm2::dsa::DerSignature>(&DerSigner(issuer_key))
        .map_err(|error| fail(error.to_string()))?;
    let der = inner.to_der().map_err(|error| fail(error.to_string()))?;
    Ok(Certificate { der, inner })
}

/// 16 bytes, positive, unique enough per key and moment (RFC 5280 asks only that an issuer
/// never reuse one).
fn serial_number(public: &VerifyingKey) -> SerialNumber {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut hasher = Sm3Hasher::new();
    hasher
        .update(public.to_public_key_der())
        .update(&now.to_be_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hasher.finalize().0[..16]);
    // Positive and no leading zero byte, so DER keeps all 16 bytes.
    bytes[0] = (bytes[0] & 0x3f) | 0x40;
    SerialNumber::new(&bytes).expect("16 bytes is a valid serial number")
}

/// Subject, issuer and extensions of one certificate.
struct Profile {
    subject: Name,
    issuer: Name,
    role: Role,
}

impl BuilderProfile for Profile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        spk: SubjectPublicKeyInfoRef<'_>,
        issuer_spk: SubjectPublicKeyInfoRef<'_>,
        tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        let mut extensions: Vec<Extension> = Vec::new();
        let ski = SubjectKeyIdentifier::try_from(spk)?;
        let aki = SubjectKeyIdentifier::try_from(issuer_spk)?;
        extensions.push(
            AuthorityKeyIdentifier {
                key_identifier: Some(aki.0),
                ..Default::default()
            }
            .to_extension(tbs.subject(), &extensions)?,
        );
        extensions.push(ski.to_extension(tbs.subject(), &extensions)?);
        let (ca, usage) = match self.role {
            Role::Authority => (true, KeyUsages::KeyCertSign | KeyUsages::CRLSign),
            Role::Signer => (false, KeyUsages::DigitalSignature.into()),
        };
        extensions.push(
            BasicConstraints {
                ca,
                path_len_constraint: None,
            }
            .to_extension(tbs.subject(), &extensions)?,
        );
        extensions.push(KeyUsage(usage).to_extension(tbs.subject(), &extensions)?);
        Ok(extensions)
    }
}

/// Signs certificates with DER `SEQUENCE { r, s }` signatures, where `sm2`'s own signing key
/// would emit raw `r || s` into the BIT STRING.
struct DerSigner<'a>(&'a SigningKey);

impl Signer<sm2::dsa::DerSignature> for DerSigner<'_> {
    fn try_sign(&self, message: &[u8]) -> Result<sm2::dsa::DerSignature, signature::Error> {
        sm2::dsa::DerSignature::try_from(self.0.sign(message).as_der())
    }
}

impl Keypair for DerSigner<'_> {
    type VerifyingKey = SpkiKey;

    fn verifying_key(&self) -> SpkiKey {
        SpkiKey(self.0.verifying_key().to_public_key_der().to_vec())
    }
}

impl SignatureAlgorithmIdentifier for DerSigner<'_> {
    type Params = AnyRef<'static>;

    const SIGNATURE_ALGORITHM_IDENTIFIER: AlgorithmIdentifier<Self::Params> =
        <sm2::dsa::SigningKey as SignatureAlgorithmIdentifier>::SIGNATURE_ALGORITHM_IDENTIFIER;
}

/// The issuer's public key as the builder wants it (for the authority key identifier).
#[derive(Clone)]
struct SpkiKey(Vec<u8>);

impl EncodePublicKey for SpkiKey {
    fn to_public_key_der(&self) -> sm2::pkcs8::spki::Result<sm2::pkcs8::der::Document> {
        Ok(sm2::pkcs8::der::Document::try_from(self.0.as_slice())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn authority_issues_and_we_verify() {
        let ca_key = SigningKey::generate();
        let ca = Certificate::self_signed(&ca_key, "CN=5111,O=tiersync", DAY).unwrap();
        ca.verify_signature(ca_key.verifying_key()).unwrap();
        assert_eq!(&ca.public_key().unwrap(), ca_key.verifying_key());

        let leaf_key = SigningKey::generate();
        let leaf = ca
            .issue(
                &ca_key,
                "CN=511102004001,O=tiersync",
                leaf_key.verifying_key(),
                Role::Signer,
                DAY,
            )
            .unwrap();
        leaf.verify_signature(ca_key.verifying_key()).unwrap();
        assert_eq!(leaf.subject(), "CN=511102004001,O=tiersync");
        let error = leaf.verify_signature(leaf_key.verifying_key()).unwrap_err();
        assert!(
            error.to_string().starts_with(
                "certificate `CN=511102004001,O=tiersync`: SM2 signature does not verify"
            ),
            "{error}"
        );
        let back = Certificate::from_pem(&leaf.to_pem()).unwrap();
        assert_eq!(back, leaf);
        assert_eq!(Certificate::from_der(leaf.to_der()).unwrap(), leaf);
    }

    /// Found by the fuzz target `certificate`: an explicit version 1 (a
    /// DEFAULT field, which DER omits) was read, and the certificate kept
    /// bytes that its PEM and its own encoding did not have.
    #[test]
    fn a_certificate_not_in_der_form_is_refused() {
        let ca_key = SigningKey::generate();
        let ca = Certificate::self_signed(&ca_key, "CN=5111,O=tiersync", DAY).unwrap();
        let mut der = ca.to_der().to_vec();
        let version = der
            .windows(5)
            .position(|w| w == [0xa0, 0x03, 0x02, 0x01, 0x02])
            .expect("a v3 certificate writes its version");
        der[version + 4] = 0x00;
        let error = Certificate::from_der(&der).unwrap_err();
        assert!(
            matches!(error, CertError::Decode { format: "DER", .. }),
            "{error:?}"
        );
        assert!(
            error.to_string().starts_with(&format!(
                "DER is not an X.509 certificate: it is not in DER form: its {} bytes encode back to {} other bytes",
                der.len(),
                der.len() - 5
            )),
            "{error}"
        );
        assert_eq!(Certificate::from_der(ca.to_der()).unwrap(), ca);
    }

    #[test]
    fn bad_subject_is_named() {
        let key = SigningKey::generate();
        let error = Certificate::self_signed(&key, "no equals sign", DAY).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("certificate subject `no equals sign` is not a distinguished name"),
            "{error}"
        );
    }
}
