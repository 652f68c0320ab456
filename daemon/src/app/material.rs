//! The files a node's config names: its TLS certificate and key with the
//! deployment CA, its SM2 signing key and origin certificate with the trust
//! root (and the chain of later roots), the deployment secret, and at the
//! city the CA's and the trust root's keys. [`load_material`] loads them
//! for a start; [`check_files`] checks them all for `check-config --files`
//! (and before `serve` starts), naming the key of every problem.

use std::path::Path;

use anyhow::Context;
use prost::Message;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tiersync_proto::types::DigestKey;
use tiersync_trust::SigningKey;
use tiersync_trust::cert::Certificate;

use crate::config::{ConfigIssue, NodeConfig};
use crate::identity::origin::{Identity, TrustRoot};
use crate::identity::tls::TlsMaterial;

/// What a node's config points at, loaded and checked.
pub struct Material {
    pub tls: TlsMaterial,
    pub digest_key: DigestKey,
    pub root: TrustRoot,
    pub identity: Identity,
}

/// Loads and checks the files a node's config points at: its TLS material
/// (the certificate must be for this node's code and chain to the CA), its
/// origin identity and the deployment secret. It stops at the first
/// problem; [`check_files`] reports them all.
pub fn load_material(config: &NodeConfig) -> anyhow::Result<Material> {
    let tls = load_tls(config)?;
    let digest_key = load_digest_key(config)?;
    let (root, identity) = load_identity(config)?;
    Ok(Material {
        tls,
        digest_key,
        root,
        identity,
    })
}

fn load_tls(config: &NodeConfig) -> anyhow::Result<TlsMaterial> {
    crate::identity::tls::install_crypto_provider();
    let tls = TlsMaterial::load(&config.tls.ca, &config.tls.cert, &config.tls.key)?;
    if tls.own_code() != &config.code {
        anyhow::bail!(
            "the certificate {} is for node `{}`, but node.code is `{}`; issue one for `{}` with `tiersync pki issue --code {}`",
            config.tls.cert.display(),
            tls.own_code(),
            config.code,
            config.code,
            config.code
        );
    }
    Ok(tls)
}

fn load_digest_key(config: &NodeConfig) -> anyhow::Result<DigestKey> {
    let path = &config.digest_key_file;
    let key_hex = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read deployment.digest_key_file {}", path.display()))?;
    DigestKey::from_hex(key_hex.trim())
        .with_context(|| format!("deployment.digest_key_file {}", path.display()))
}

fn load_identity(config: &NodeConfig) -> anyhow::Result<(TrustRoot, Identity)> {
    let read = |key: &str, path: &Path| {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {key} {}", path.display()))
    };
    let root_what = config.trust.root.display().to_string();
    let root = TrustRoot::from_pem(&read("trust.root", &config.trust.root)?, &root_what)
        .with_context(|| format!("trust.root {root_what}"))?;
    let later = match &config.trust.chain {
        None => Vec::new(),
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read trust.chain {}", path.display()))?;
            let chain = tiersync_proto::wire::RootChain::decode(bytes.as_slice())
                .with_context(|| format!("trust.chain {} is not a root chain", path.display()))?;
            crate::identity::keyring::follow_chain(&root, &chain.links)
                .map_err(|reason| anyhow::anyhow!("trust.chain {}: {reason}", path.display()))?
        }
    };
    let identity = Identity::load(
        &root,
        &later,
        &config.code,
        &read("trust.key", &config.trust.key)?,
        &read("trust.cert", &config.trust.cert)?,
        &format!(
            "trust.key {} / trust.cert {}",
            config.trust.key.display(),
            config.trust.cert.display()
        ),
    )?;
    Ok((root, identity))
}

/// Checks every file `config` names without stopping at the first problem:
/// each must exist, be readable and hold what it should (PEM certificates,
/// a private key, an SM2 key, a root chain, the hex secret). Then, for the
/// TLS files and for the trust files whose every file passed, that they fit
/// together as a start needs: the certificate is this node's and chains to
/// the CA, the origin certificate is the trust root's for this node's key.
/// Every problem is reported with the key that names the file.
pub fn check_files(config: &NodeConfig) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    let mut check = |key: &str, path: &Path, holds: Holds| -> bool {
        let problem = match std::fs::read(path) {
            Err(e) => format!("cannot read {}: {e}", path.display()),
            Ok(bytes) => match holds.check(&bytes) {
                Ok(()) => return true,
                Err(reason) => format!("{} is not {}: {reason}", path.display(), holds.what()),
            },
        };
        issues.push(ConfigIssue::new(key, problem));
        false
    };
    let tls = &config.tls;
    let tls_files = [
        check("tls.ca", &tls.ca, Holds::Certificates),
        check("tls.cert", &tls.cert, Holds::Certificates),
        check("tls.key", &tls.key, Holds::PrivateKey),
    ];
    if let Some(ca_key) = &tls.ca_key {
        check("tls.ca_key", ca_key, Holds::PrivateKey);
    }
    let trust = &config.trust;
    let trust_files = [
        check("trust.root", &trust.root, Holds::TrustRoot),
        check("trust.key", &trust.key, Holds::Sm2Key),
        check("trust.cert", &trust.cert, Holds::Sm2Certificate),
        trust
            .chain
            .as_ref()
            .is_none_or(|chain| check("trust.chain", chain, Holds::RootChain)),
    ];
    if let Some(root_key) = &trust.root_key {
        check("trust.root_key", root_key, Holds::Sm2Key);
    }
    check(
        "deployment.digest_key_file",
        &config.digest_key_file,
        Holds::DigestKey,
    );
    if tls_files.iter().all(|ok| *ok)
        && let Err(e) = load_tls(config)
    {
        issues.push(ConfigIssue::new("tls", format!("{e:#}")));
    }
    if trust_files.iter().all(|ok| *ok)
        && let Err(e) = load_identity(config)
    {
        issues.push(ConfigIssue::new("trust", format!("{e:#}")));
    }
    issues
}

/// What a file named by a config should hold.
#[derive(Debug, Clone, Copy)]
enum Holds {
    /// One or more PEM X.509 certificates.
    Certificates,
    /// A PEM private key (PKCS#8, SEC1 or PKCS#1).
    PrivateKey,
    /// The trust root: a self-signed SM2 certificate, PEM.
    TrustRoot,
    /// An SM2 origin certificate, PEM.
    Sm2Certificate,
    /// An SM2 private key, PKCS#8 PEM.
    Sm2Key,
    /// A `RootChain` message, as `tiersync join` writes it.
    RootChain,
    /// The deployment secret, hex.
    DigestKey,
}

impl Holds {
    fn what(self) -> &'static str {
        match self {
            Holds::Certificates => "a PEM certificate file",
            Holds::PrivateKey => "a PEM private key",
            Holds::TrustRoot => "a trust root certificate",
            Holds::Sm2Certificate => "an SM2 origin certificate (PEM)",
            Holds::Sm2Key => "an SM2 private key (PKCS#8 PEM)",
            Holds::RootChain => "a root chain",
            Holds::DigestKey => "a deployment secret (hex)",
        }
    }

    fn check(self, bytes: &[u8]) -> Result<(), String> {
        let text = || std::str::from_utf8(bytes).map_err(|_| "it is not text".to_owned());
        match self {
            Holds::Certificates => {
                let ders = CertificateDer::pem_slice_iter(bytes)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                if ders.is_empty() {
                    return Err("it holds no CERTIFICATE block".into());
                }
                for (i, der) in ders.iter().enumerate() {
                    x509_parser::parse_x509_certificate(der)
                        .map_err(|e| format!("certificate {} of {}: {e}", i + 1, ders.len()))?;
                }
                Ok(())
            }
            Holds::PrivateKey => match PrivateKeyDer::from_pem_slice(bytes) {
                Ok(_) => Ok(()),
                Err(rustls::pki_types::pem::Error::NoItemsFound) => {
                    Err("it holds no PRIVATE KEY block".into())
                }
                Err(e) => Err(e.to_string()),
            },
            Holds::TrustRoot => TrustRoot::from_pem(text()?, "it")
                .map(drop)
                .map_err(|e| e.to_string()),
            Holds::Sm2Certificate => Certificate::from_pem(text()?)
                .map(drop)
                .map_err(|e| e.to_string()),
            Holds::Sm2Key => SigningKey::from_pkcs8_pem(text()?)
                .map(drop)
                .map_err(|e| e.to_string()),
            Holds::RootChain => tiersync_proto::wire::RootChain::decode(bytes)
                .map(drop)
                .map_err(|e| e.to_string()),
            Holds::DigestKey => DigestKey::from_hex(text()?.trim())
                .map(drop)
                .map_err(|e| e.to_string()),
        }
    }
}
