//! SM2 keys and signatures (GB/T 32918, SM2 with SM3 digests), with the two interop traps
//! closed for good:
//!
//! - **Distinguishing ID.** Every key in this crate uses [`DIST_ID`] (`1234567812345678`, the
//!   default of GB/T 35276 and GM/T 0009, also hard-wired in gmssl and BouncyCastle). There is
//!   no way to choose another: OpenSSL 3.0's command line defaults to an *empty* ID, and a
//!   signature made under one ID never verifies under the other, so a configurable ID would
//!   only be a way to get it wrong.
//! - **Signature encoding.** A [`Signature`] is always DER `SEQUENCE { r INTEGER, s INTEGER }`,
//!   what OpenSSL, gmssl (`asn1=True`) and X.509 carry. The 64-byte raw `r || s` form is refused
//!   with an error that says so. DER is also checked to be canonical (it re-encodes to the same
//!   bytes), so one signature has exactly one byte form.
//!
//! Keys read and write PKCS#8 (`PRIVATE KEY`) and SubjectPublicKeyInfo (`PUBLIC KEY`) PEM byte
//! for byte as OpenSSL 3 writes them for SM2: `id-ecPublicKey` with the curve
//! `1.2.156.10197.1.301`, 64-column base64, LF line ends.
//!
//! Private keys never print their secret: `Debug` on [`SigningKey`] shows the key id only.

use std::fmt;

use sm2::dsa::signature::{Signer as _, Verifier as _};
use sm2::elliptic_curve::Generate as _;
use sm2::elliptic_curve::zeroize::Zeroizing;
use sm2::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};

use crate::Algorithm;
use crate::hash::{Digest, sm3};

/// The SM2 distinguishing ID (user ID) of every signature this crate makes or checks: the
/// GB/T 35276 default. OpenSSL 3.0 needs it spelled out (`-pkeyopt distid:1234567812345678`
/// for `pkeyutl`, `-sigopt`/`-vfyopt` for certificates) because its own default is empty.
pub const DIST_ID: &str = "1234567812345678";

/// Length of the raw `r || s` form that [`Signature::from_der`] refuses.
const RAW_SIGNATURE_LEN: usize = 64;

/// Errors reading keys and signatures, and signature checks.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// A private key could not be read.
    #[error("{format} private key is not a valid SM2 key: {reason}")]
    PrivateKey {
        /// `PKCS#8 PEM` or `PKCS#8 DER`.
        format: &'static str,
        /// What the decoder said.
        reason: String,
    },
    /// A public key could not be read.
    #[error("{format} public key is not a valid SM2 key: {reason}")]
    PublicKey {
        /// `SPKI PEM`, `SPKI DER` or `SEC1`.
        format: &'static str,
        /// What the decoder said.
        reason: String,
    },
    /// A key could not be written.
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// What was being written.
        what: &'static str,
        /// What the encoder said.
        reason: String,
    },
    /// 64 bytes that are not DER: almost surely the raw `r || s` form.
    #[error(
        "signature is {RAW_SIGNATURE_LEN} bytes and not DER: that is the raw r||s form; SM2 \
         signatures here must be DER SEQUENCE{{r, s}} (sm2::dsa::Signature::to_der, gmssl \
         with asn1=True, or what openssl pkeyutl writes)"
    )]
    RawSignature,
    /// Not a DER `SEQUENCE { r, s }` for SM2.
    #[error("signature of {len} bytes is not a DER SEQUENCE{{r, s}} of SM2 scalars")]
    MalformedSignature {
        /// Length of the input.
        len: usize,
    },
    /// DER that decodes but is not the one canonical encoding of its `r` and `s`.
    #[error("signature of {len} bytes is not canonical DER (it re-encodes differently)")]
    NonCanonicalSignature {
        /// Length of the input.
        len: usize,
    },
    /// The signature does not verify.
    #[error(
        "SM2 signature does not verify with key {key_id} (distinguishing ID {DIST_ID}, SM3 \
         digest)"
    )]
    BadSignature {
        /// Id of the key it was checked against.
        key_id: KeyId,
    },
}

/// A short, stable name of a public key: the first 16 bytes of SM3 over its DER
/// SubjectPublicKeyInfo. Lets a verifier pick the key from a trust list; it is bound into every
/// batch signature.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; KeyId::LEN]);

// === impl KeyId ===

impl KeyId {
    /// Length in bytes.
    pub const LEN: usize = 16;

    /// Lowercase hex, 32 digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.to_hex())
    }
}

/// An SM2 private key, always with [`DIST_ID`].
#[derive(Clone)]
pub struct SigningKey {
    inner: sm2::dsa::SigningKey,
    verifying: VerifyingKey,
}

// === impl SigningKey ===

impl SigningKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        Self::from_secret(&sm2::SecretKey::generate())
    }

    fn from_secret(secret: &sm2::SecretKey) -> Self {
        // `new` fails only for an ID longer than 8191 bytes; DIST_ID is 16.
        let inner = sm2::dsa::SigningKey::new(DIST_ID, secret).expect("DIST_ID is a valid ID");
        let verifying = VerifyingKey::from_public(secret.public_key());
        Self { inner, verifying }
    }

    fn secret(&self) -> sm2::SecretKey {
        sm2::SecretKey::from_bytes(&self.inner.to_bytes()).expect("a signing key is a valid secret")
    }

    /// Reads a PKCS#8 `PRIVATE KEY` PEM, as `openssl genpkey -algorithm SM2` writes it.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        sm2::SecretKey::from_pkcs8_pem(pem)
            .map(|secret| Self::from_secret(&secret))
            .map_err(|error| KeyError::PrivateKey {
                format: "PKCS#8 PEM",
                reason: error.to_string(),
            })
    }

    /// Reads a PKCS#8 DER private key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        sm2::SecretKey::from_pkcs8_der(der)
            .map(|secret| Self::from_secret(&secret))
            .map_err(|error| KeyError::PrivateKey {
                format: "PKCS#8 DER",
                reason: error.to_string(),
            })
    }

    /// Writes PKCS#8 PEM, byte for byte what `openssl pkey` writes for the same key.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, KeyError> {
        self.secret()
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|error| KeyError::Encode {
                what: "SM2 private key as PKCS#8 PEM",
                reason: error.to_string(),
            })
    }

    /// Writes PKCS#8 DER.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        self.secret()
            .to_pkcs8_der()
            .map(|doc| Zeroizing::new(doc.as_bytes().to_vec()))
            .map_err(|error| KeyError::Encode {
                what: "SM2 private key as PKCS#8 DER",
                reason: error.to_string(),
            })
    }

    /// The public half.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.verifying
    }

    /// The algorithm of this key's signatures.
    pub fn algorithm(&self) -> Algorithm {
        Algorithm::Sm2Sm3
    }

    /// Signs `message` (SM3 over `Z || message`, Z from [`DIST_ID`] and the public key). The
    /// nonce is deterministic (RFC 6979 style), so the same key and message give the same
    /// signature.
    pub fn sign(&self, message: &[u8]) -> Signature {
        let signature: sm2::dsa::Signature = self.inner.sign(message);
        Signature {
            der: signature.to_der().to_vec(),
        }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &Algorithm::Sm2Sm3)
            .field("key_id", &self.verifying.key_id())
            .finish_non_exhaustive()
    }
}

/// An SM2 public key, always with [`DIST_ID`].
#[derive(Clone)]
pub struct VerifyingKey {
    inner: sm2::dsa::VerifyingKey,
    spki_der: Vec<u8>,
    fingerprint: Digest,
}

// === impl VerifyingKey ===

impl VerifyingKey {
    fn from_public(public: sm2::PublicKey) -> Self {
        let spki_der = public
            .to_public_key_der()
            .expect("an SM2 public key encodes as SPKI")
            .into_vec();
        let fingerprint = sm3(&spki_der);
        let inner = sm2::dsa::VerifyingKey::new(DIST_ID, public).expect("DIST_ID is a valid ID");
        Self {
            inner,
            spki_der,
            fingerprint,
        }
    }

    /// Reads a SubjectPublicKeyInfo `PUBLIC KEY` PEM, as `openssl pkey -pubout` writes it.
    pub fn from_public_key_pem(pem: &str) -> Result<Self, KeyError> {
        sm2::PublicKey::from_public_key_pem(pem)
            .map(Self::from_public)
            .map_err(|error| KeyError::PublicKey {
                format: "SPKI PEM",
                reason: error.to_string(),
            })
    }

    /// Reads a DER SubjectPublicKeyInfo.
    pub fn from_public_key_der(der: &[u8]) -> Result<Self, KeyError> {
        sm2::PublicKey::from_public_key_der(der)
            .map(Self::from_public)
            .map_err(|error| KeyError::PublicKey {
                format: "SPKI DER",
                reason: error.to_string(),
            })
    }

    /// Reads a SEC1 point (`04 || x || y`, or compressed).
    pub fn from_sec1_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        sm2::PublicKey::from_sec1_bytes(bytes)
            .map(Self::from_public)
            .map_err(|error| KeyError::PublicKey {
                format: "SEC1",
                reason: error.to_string(),
            })
    }

    /// Writes SPKI PEM, byte for byte what `openssl pkey -pubout` writes.
    pub fn to_public_key_pem(&self) -> String {
        sm2::PublicKey::from(&self.inner)
            .to_public_key_pem(LineEnding::LF)
            .expect("an SM2 public key encodes as SPKI PEM")
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn to_public_key_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The uncompressed SEC1 point, `04 || x || y` (65 bytes). gmssl wants the 128 hex digits
    /// of `x || y`: drop exactly the first byte.
    pub fn to_sec1_uncompressed(&self) -> Vec<u8> {
        sm2::PublicKey::from(&self.inner).to_sec1_bytes().into_vec()
    }

    /// SM3 over the DER SubjectPublicKeyInfo.
    pub fn fingerprint(&self) -> Digest {
        self.fingerprint
    }

    /// The first 16 bytes of [`fingerprint`](Self::fingerprint).
    pub fn key_id(&self) -> KeyId {
        let mut id = [0; KeyId::LEN];
        id.copy_from_slice(&self.fingerprint.0[..KeyId::LEN]);
        KeyId(id)
    }

    /// The algorithm this key verifies.
    pub fn algorithm(&self) -> Algorithm {
        Algorithm::Sm2Sm3
    }

    /// Checks `signature` over `message`.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), KeyError> {
        let parsed = sm2::dsa::Signature::from_der(&signature.der).map_err(|_| {
            KeyError::MalformedSignature {
                len: signature.der.len(),
            }
        })?;
        self.inner
            .verify(message, &parsed)
            .map_err(|_| KeyError::BadSignature {
                key_id: self.key_id(),
            })
    }
}

impl PartialEq for VerifyingKey {
    fn eq(&self, other: &Self) -> bool {
        self.spki_der == other.spki_der
    }
}

impl Eq for VerifyingKey {}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("algorithm", &Algorithm::Sm2Sm3)
            .field("key_id", &self.key_id())
            .finish_non_exhaustive()
    }
}

/// An SM2 signature in DER `SEQUENCE { r, s }`, canonical.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Signature {
    der: Vec<u8>,
}

// === impl Signature ===

impl Signature {
    /// Reads a DER signature. Refuses the raw 64-byte `r || s` form (with an error that says
    /// so), anything that is not `SEQUENCE { r, s }` with `0 < r, s < n`, and non-canonical DER.
    pub fn from_der(der: &[u8]) -> Result<Self, KeyError> {
        let parsed = match sm2::dsa::Signature::from_der(der) {
            Ok(parsed) => parsed,
            Err(_) if der.len() == RAW_SIGNATURE_LEN => return Err(KeyError::RawSignature),
            Err(_) => return Err(KeyError::MalformedSignature { len: der.len() }),
        };
        if parsed.to_der().as_bytes() != der {
            return Err(KeyError::NonCanonicalSignature { len: der.len() });
        }
        Ok(Self { der: der.to_vec() })
    }

    /// The DER bytes.
    pub fn as_der(&self) -> &[u8] {
        &self.der
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", hex::encode(&self.der))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_round_trip() {
        let key = SigningKey::generate();
        let signature = key.sign(b"message");
        key.verifying_key().verify(b"message", &signature).unwrap();
        assert_eq!(
            key.verifying_key().verify(b"massage", &signature),
            Err(KeyError::BadSignature {
                key_id: key.verifying_key().key_id()
            })
        );
        // Deterministic nonces: the same message signs the same.
        assert_eq!(key.sign(b"message"), signature);
    }

    #[test]
    fn pem_round_trip() {
        let key = SigningKey::generate();
        let pem = key.to_pkcs8_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let back = SigningKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(back.verifying_key(), key.verifying_key());
        let der = key.to_pkcs8_der().unwrap();
        assert_eq!(
            SigningKey::from_pkcs8_der(&der).unwrap().verifying_key(),
            key.verifying_key()
        );
        let public = key.verifying_key().to_public_key_pem();
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert_eq!(
            &VerifyingKey::from_public_key_pem(&public).unwrap(),
            key.verifying_key()
        );
        assert_eq!(
            &VerifyingKey::from_sec1_bytes(&key.verifying_key().to_sec1_uncompressed()).unwrap(),
            key.verifying_key()
        );
    }

    #[test]
    fn debug_hides_the_secret() {
        let key = SigningKey::generate();
        let secret_hex = hex::encode(key.inner.to_bytes());
        let debug = format!("{key:?}");
        assert!(!debug.contains(&secret_hex), "{debug}");
        assert!(
            debug.contains(&key.verifying_key().key_id().to_hex()),
            "{debug}"
        );
    }

    #[test]
    fn raw_signature_is_refused_with_a_hint() {
        let key = SigningKey::generate();
        let der = key.sign(b"m");
        let raw = sm2::dsa::Signature::from_der(der.as_der())
            .unwrap()
            .to_bytes();
        let error = Signature::from_der(&raw).unwrap_err();
        assert_eq!(error, KeyError::RawSignature);
        let message = error.to_string();
        assert!(
            message.contains("raw r||s") && message.contains("DER"),
            "{message}"
        );
    }

    #[test]
    fn malformed_and_non_canonical_signatures_are_refused() {
        assert_eq!(
            Signature::from_der(&[0x30, 0x00]),
            Err(KeyError::MalformedSignature { len: 2 })
        );
        let key = SigningKey::generate();
        let der = key.sign(b"m").as_der().to_vec();
        // The same SEQUENCE with a long-form length byte is BER, not DER.
        let mut ber = vec![0x30, 0x81, der[1]];
        ber.extend_from_slice(&der[2..]);
        assert!(matches!(
            Signature::from_der(&ber),
            Err(KeyError::MalformedSignature { .. } | KeyError::NonCanonicalSignature { .. })
        ));
        assert_eq!(Signature::from_der(&der).unwrap().as_der(), &der[..]);
    }

    #[test]
    fn wrong_curve_key_is_refused_with_the_format() {
        let error = VerifyingKey::from_public_key_der(b"\x30\x03\x02\x01\x00").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("SPKI DER public key is not a valid SM2 key")
        );
    }
}
