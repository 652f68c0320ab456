//! The joining side of onboarding (`tiersync join`): generate the node's
//! keys here, dial the parent with the deployment CA pinned by the token,
//! call `Join`, check what comes back, and write the node's files and
//! config. The protocol is described in [`super::join`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use tiersync_proto::types::{DivisionCode, Tier};
use tiersync_proto::wire::{self, join_client::JoinClient};
use tonic::Response;
use tracing::{info, warn};

use super::join::*;

/// Where a joined node's files go, and how it listens.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// Directory for `tiersync.toml`, `pki/` and `data/`; must not already
    /// hold a node.
    pub dir: PathBuf,
    pub listen_peer: Option<String>,
    pub listen_api: String,
    pub listen_admin: String,
    /// How long to keep retrying while the parent or the city is
    /// unreachable.
    pub retry_for: Duration,
}

/// Joins the parent at `parent_addr` with `token` (see the module doc) and
/// writes a working node into `options.dir`. Returns the config file's path.
pub async fn join(
    parent_addr: &str,
    token: &JoinToken,
    options: &JoinOptions,
) -> Result<PathBuf, JoinError> {
    use backon::{ExponentialBuilder, Retryable};

    let parent = token.code.parent().ok_or_else(|| JoinError::CityJoins {
        code: token.code.clone(),
    })?;
    let files = NodeFiles::new(&options.dir);
    files.refuse_existing()?;
    crate::identity::tls::install_crypto_provider();
    let (csr_pem, key_pem) = crate::identity::pki::certificate_request(&token.code)?;
    let origin_key = tiersync_trust::SigningKey::generate();
    let origin_key_pem = origin_key
        .to_pkcs8_pem()
        .map_err(|e| JoinError::BadAnswer(format!("cannot encode the new signing key: {e}")))?;
    let origin_public_key_pem = origin_key.verifying_key().to_public_key_pem();
    let client_config = crate::identity::tls::join_client_config(token.ca_fingerprint)?;

    let attempt = || async {
        let channel =
            crate::identity::transport::connect(parent_addr, &parent, client_config.clone())
                .await?;
        JoinClient::new(channel)
            .join(wire::JoinRequest {
                code: token.code.to_string(),
                secret: token.secret.to_vec(),
                csr_pem: csr_pem.clone(),
                origin_public_key_pem: origin_public_key_pem.clone(),
            })
            .await
            .map(Response::into_inner)
            .map_err(JoinError::Refused)
    };
    let retryable = |e: &JoinError| match e {
        JoinError::Tls(_) => true,
        JoinError::Refused(s) => s.code() == tonic::Code::Unavailable,
        _ => false,
    };
    let answer = attempt
        .retry(
            ExponentialBuilder::default()
                .with_jitter()
                .with_max_delay(Duration::from_secs(10))
                .with_total_delay(Some(options.retry_for)),
        )
        .when(retryable)
        .notify(|e, wait| warn!(error = %e, retry_in = ?wait, "join attempt failed; retrying"))
        .await?;

    let links = check_answer(&answer, token, &parent, &key_pem, &origin_key_pem)?;
    files.write(
        &answer,
        &key_pem,
        &origin_key_pem,
        &config_text(token, &parent, parent_addr, options, !links.is_empty()),
    )?;
    info!(node = %token.code, %parent, config = %files.config.display(), "joined");
    Ok(files.config)
}

/// Checks the parent's answer to a join: trust nothing in it that does not
/// check out. The CA must be the one the token names, the parent the one
/// dialled, the TLS certificate one for the joining code and `key_pem`, the
/// deployment secret well-formed, and the origin certificate issued by the
/// trust root (or a later root its chain leads to) for the joining code and
/// `origin_key_pem`. Returns the root chain to keep.
pub(crate) fn check_answer(
    answer: &wire::JoinResponse,
    token: &JoinToken,
    parent: &DivisionCode,
    key_pem: &str,
    origin_key_pem: &str,
) -> Result<Vec<wire::RootLink>, JoinError> {
    let fingerprint = crate::identity::tls::ca_fingerprint(&answer.ca_pem)?;
    if fingerprint != token.ca_fingerprint {
        return Err(JoinError::BadAnswer(
            "the CA certificate is not the one the token names".into(),
        ));
    }
    if answer.parent != parent.as_str() {
        return Err(JoinError::BadAnswer(format!(
            "it names parent `{}`, not `{parent}`",
            answer.parent
        )));
    }
    let material =
        crate::identity::tls::TlsMaterial::from_pem(&answer.ca_pem, &answer.cert_pem, key_pem)?;
    if material.own_code() != &token.code {
        return Err(JoinError::BadAnswer(format!(
            "the certificate is for `{}`, not `{}`",
            material.own_code(),
            token.code
        )));
    }
    tiersync_proto::types::DigestKey::from_hex(&answer.deployment_key)
        .map_err(|e| JoinError::BadAnswer(format!("deployment secret: {e}")))?;
    let root =
        crate::identity::origin::TrustRoot::from_pem(&answer.trust_root_pem, "the trust root")
            .map_err(|e| JoinError::BadAnswer(e.to_string()))?;
    let links = answer.trust_chain.clone().unwrap_or_default().links;
    let later =
        crate::identity::keyring::follow_chain(&root, &links).map_err(JoinError::BadAnswer)?;
    crate::identity::origin::Identity::load(
        &root,
        &later,
        &token.code,
        origin_key_pem,
        &answer.origin_cert_pem,
        "the origin",
    )
    .map_err(|e| JoinError::BadAnswer(e.to_string()))?;
    Ok(links)
}

/// The files a joined node writes.
struct NodeFiles {
    config: PathBuf,
    pki: PathBuf,
    data: PathBuf,
}

impl NodeFiles {
    fn new(dir: &Path) -> NodeFiles {
        NodeFiles {
            config: dir.join("tiersync.toml"),
            pki: dir.join("pki"),
            data: dir.join("data"),
        }
    }

    fn refuse_existing(&self) -> Result<(), JoinError> {
        for path in [
            self.config.clone(),
            self.pki.join("node.key"),
            self.pki.join("node.sm2.key"),
            self.data.join("node.db"),
        ] {
            if std::fs::symlink_metadata(&path).is_ok() {
                return Err(JoinError::Exists { path });
            }
        }
        Ok(())
    }

    fn write(
        &self,
        answer: &wire::JoinResponse,
        key_pem: &str,
        origin_key_pem: &str,
        config: &str,
    ) -> Result<(), JoinError> {
        let write = |path: PathBuf, text: &str, private: bool| -> Result<(), JoinError> {
            let result = if private {
                crate::identity::pki::write_new_private(&path, text)
            } else {
                std::fs::write(&path, text)
            };
            result.map_err(|source| JoinError::Write { path, source })
        };
        for dir in [&self.pki, &self.data] {
            std::fs::create_dir_all(dir).map_err(|source| JoinError::Write {
                path: dir.clone(),
                source,
            })?;
        }
        write(self.pki.join("node.key"), key_pem, true)?;
        write(self.pki.join("node.pem"), &answer.cert_pem, false)?;
        write(self.pki.join("ca.pem"), &answer.ca_pem, false)?;
        write(self.pki.join("node.sm2.key"), origin_key_pem, true)?;
        write(
            self.pki.join("node.sm2.pem"),
            &answer.origin_cert_pem,
            false,
        )?;
        write(
            self.pki.join(crate::identity::origin::TRUST_ROOT_CERT_FILE),
            &answer.trust_root_pem,
            false,
        )?;
        if let Some(chain) = answer.trust_chain.as_ref().filter(|c| !c.links.is_empty()) {
            let path = self.pki.join(TRUST_CHAIN_FILE);
            std::fs::write(&path, prost::Message::encode_to_vec(chain))
                .map_err(|source| JoinError::Write { path, source })?;
        }
        write(
            self.pki.join("deployment.key"),
            &format!("{}\n", answer.deployment_key),
            true,
        )?;
        write(self.config.clone(), config, false)
    }
}

fn config_text(
    token: &JoinToken,
    parent: &DivisionCode,
    parent_addr: &str,
    options: &JoinOptions,
    with_chain: bool,
) -> String {
    let tier = token.code.tier();
    let chain = if with_chain {
        format!("chain = \"pki/{TRUST_CHAIN_FILE}\"\n")
    } else {
        String::new()
    };
    let peer = match (&options.listen_peer, tier) {
        (Some(addr), _) => format!("peer = \"{addr}\"\n"),
        (None, Tier::Community) => String::new(),
        (None, _) => "peer = \"0.0.0.0:7400\"\n".to_owned(),
    };
    format!(
        "# Written by `tiersync join` for node {code}, child of {parent}.\n\
         # Relative paths resolve against this file's directory.\n\
         version = 1\n\n\
         [node]\ncode = \"{code}\"\n\n\
         [storage]\npath = \"data/node.db\"\n\n\
         [listen]\n{peer}api = \"{api}\"\nadmin = \"{admin}\"\n\n\
         [parent]\ncode = \"{parent}\"\naddress = \"{parent_addr}\"\n\n\
         [tls]\nca = \"pki/ca.pem\"\ncert = \"pki/node.pem\"\nkey = \"pki/node.key\"\n\n\
         [trust]\nroot = \"pki/trust-root.pem\"\nkey = \"pki/node.sm2.key\"\ncert = \"pki/node.sm2.pem\"\n{chain}\n\
         [deployment]\ndigest_key_file = \"pki/deployment.key\"\n",
        code = token.code,
        api = options.listen_api,
        admin = options.listen_admin,
    )
}
