//! Onboarding: a new node joins its parent with one command on each side.
//!
//! 1. The parent's operator runs `tiersync pki join-token --code CHILD`
//!    (local API [`Node::create_join_token`]): a random 16-byte secret whose
//!    SHA-256 is kept in a `tiersync.v1.JoinToken` record that never leaves
//!    the parent, valid for one direct child code until it expires. The
//!    token text also names the deployment CA by its SHA-256, so the new node
//!    trusts nothing it did not get from the parent's operator.
//! 2. The new node runs `tiersync join --parent ADDR --token T`
//!    ([`super::joining::join`]):
//!    it generates its key locally, dials the parent over TLS with the CA
//!    pinned ([`crate::identity::tls::join_client_config`]), and calls the `Join` RPC
//!    ([`JoinService`]) with the secret and a certificate request.
//! 3. The parent checks the token (issued here, for this code, unused,
//!    unexpired) and routes a `tiersync.v1.CertificateRequest` record up to
//!    the city, the one node with the CA key. The city ([`CertificateIssuer`])
//!    issues a certificate only for a direct child of the record's owner
//!    (whose origin every hop has verified) and routes a
//!    `tiersync.v1.CertificateIssued` record back.
//! 4. The parent marks the token used, with a compare-and-set on the token
//!    record's version, so of two joins racing on one token only one gets a
//!    certificate; then it answers with the certificate, the CA and the
//!    deployment secret. The new node checks all three, writes its files and
//!    config, and starts syncing.
//!
//! If the city is unreachable, the parent answers `unavailable` after
//! [`ISSUE_WAIT`]; the token stays valid, and `join` retries.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use sha2::{Digest, Sha256};
use tiersync_proto::types::{DivisionCode, RecordId};
use tiersync_proto::wire;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::kinds::*;
use crate::node::routed::{Answer, Answered, Exchange};
use crate::node::{Node, NodeError, Reader, city_of};
use crate::route::{NotAChild, admit_child};
use crate::store::StoreError;
use crate::store::audit::AuditNote;

/// Token lifetime when the operator names none.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest token lifetime: a join token is a credential, not a standing key.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// How long the parent waits for the city's answer within one `Join` call.
pub const ISSUE_WAIT: Duration = Duration::from_secs(30);
/// Validity of certificates issued through a join, as `pki issue` defaults.
pub const CERT_VALIDITY_DAYS: u32 = 825;

const TOKEN_PREFIX: &str = "tsj1";
/// Where `join` keeps the root chain when its origin certificate comes
/// from a rolled-over root.
pub(super) const TRUST_CHAIN_FILE: &str = "trust-chain.bin";
const SECRET_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "invalid join token: {reason} (a token looks like `tsj1.<code>.<32 hex digits>.<64 hex digits>`)"
    )]
    BadToken { reason: String },
    #[error(
        "`{code}` is a city and has no parent to join; a city is set up with `tiersync pki init`"
    )]
    CityJoins { code: DivisionCode },
    #[error("refusing to overwrite {}: this directory already holds a node; join into an empty directory", path.display())]
    Exists { path: PathBuf },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pki(#[from] crate::identity::pki::PkiError),
    #[error(transparent)]
    Tls(#[from] crate::identity::tls::TlsError),
    #[error("the parent refused the join: {}", .0.message())]
    Refused(Status),
    #[error("the parent's answer is unusable: {0}")]
    BadAnswer(String),
}

/// Why the parent's `Join` RPC refuses, each mapped to one status in
/// [`crate::error`].
#[derive(Debug, thiserror::Error)]
pub enum JoinRefusal {
    #[error("{field}: {reason}")]
    BadRequest { field: &'static str, reason: String },
    #[error(transparent)]
    NotAChild(#[from] NotAChild),
    #[error(
        "unknown join token: node `{node}` issued no token with this secret; ask its operator for one (`tiersync pki join-token --code {code}`)"
    )]
    UnknownToken {
        node: DivisionCode,
        code: DivisionCode,
    },
    #[error("this join token was issued for node `{issued_for}`, not `{code}`")]
    WrongCode {
        issued_for: String,
        code: DivisionCode,
    },
    #[error(
        "this join token was already used (at {at_ms} ms since the epoch); a token joins one node once: ask for a new one"
    )]
    TokenUsed { at_ms: i64 },
    #[error("this join token expired at {at_ms} ms since the epoch; ask for a new one")]
    TokenExpired { at_ms: i64 },
    #[error("this join token was used by another join at the same moment; ask for a new one")]
    TokenRace,
    #[error("the city `{city}` refused to issue the certificate: {reason}")]
    CityRefused { city: DivisionCode, reason: String },
    #[error(
        "the city `{city}` holds the deployment CA and has not answered within {secs} s (is the path to it up?); the token stays valid: run `tiersync join` again"
    )]
    CityUnreachable { city: DivisionCode, secs: u64 },
    #[error("the node is shutting down")]
    ShuttingDown,
    /// A record this node stored does not decode.
    #[error("{0}")]
    Corrupt(String),
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// A join token as handed from the parent's operator to the new node's.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub code: DivisionCode,
    pub secret: [u8; SECRET_LEN],
    pub ca_fingerprint: [u8; 32],
}

impl std::fmt::Debug for JoinToken {
    // The secret is a credential: keep it out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("code", &self.code)
            .field("ca_fingerprint", &hex::encode(self.ca_fingerprint))
            .finish_non_exhaustive()
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}.{}.{}.{}",
            self.code,
            hex::encode(self.secret),
            hex::encode(self.ca_fingerprint)
        )
    }
}

impl JoinToken {
    pub fn parse(text: &str) -> Result<JoinToken, JoinError> {
        let bad = |reason: String| JoinError::BadToken { reason };
        let parts: Vec<&str> = text.trim().split('.').collect();
        let [prefix, code, secret, ca] = parts.as_slice() else {
            return Err(bad(format!(
                "it has {} dot-separated parts, not 4",
                parts.len()
            )));
        };
        if *prefix != TOKEN_PREFIX {
            return Err(bad(format!(
                "it starts with `{prefix}`, not `{TOKEN_PREFIX}`"
            )));
        }
        let code = DivisionCode::parse(code).map_err(|e| bad(format!("division code: {e}")))?;
        let hex_part = |what: &str, s: &str, len: usize| -> Result<Vec<u8>, JoinError> {
            let bytes = hex::decode(s).map_err(|e| bad(format!("{what} is not hex: {e}")))?;
            if bytes.len() != len {
                return Err(bad(format!(
                    "{what} has {} hex digits, not {}",
                    s.len(),
                    len * 2
                )));
            }
            Ok(bytes)
        };
        let secret = hex_part("the secret", secret, SECRET_LEN)?;
        let ca = hex_part("the CA fingerprint", ca, 32)?;
        Ok(JoinToken {
            code,
            secret: secret.try_into().expect("length checked"),
            ca_fingerprint: ca.try_into().expect("length checked"),
        })
    }
}

fn secret_digest(secret: &[u8]) -> Vec<u8> {
    Sha256::digest(secret).to_vec()
}

// === the parent side ===

impl Node {
    /// Issues a join token for `child`, a direct child of this node, valid
    /// for `ttl` (see the module doc). `ca_pem` is this deployment's CA.
    pub async fn create_join_token(
        &self,
        child: &str,
        ttl: Duration,
        ca_pem: &str,
    ) -> Result<(JoinToken, i64), NodeError> {
        let code = DivisionCode::parse(child).map_err(|e| NodeError::Invalid {
            field: "code",
            reason: e.to_string(),
        })?;
        admit_child(self.code(), &code).map_err(|e| NodeError::Invalid {
            field: "code",
            reason: e.to_string(),
        })?;
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(NodeError::Invalid {
                field: "ttl",
                reason: format!(
                    "{} s is not between 1 s and {} s (30 days)",
                    ttl.as_secs(),
                    MAX_TOKEN_TTL.as_secs()
                ),
            });
        }
        let ca_fingerprint =
            crate::identity::tls::ca_fingerprint(ca_pem).map_err(|e| NodeError::Invalid {
                field: "ca",
                reason: e.to_string(),
            })?;
        let secret: [u8; SECRET_LEN] = rand::random();
        let now = self.clock().now_ms();
        let expires_at_ms = now + ttl.as_millis() as i64;
        let token = wire::JoinToken {
            code: code.to_string(),
            secret_digest: secret_digest(&secret),
            issued_at_ms: now,
            expires_at_ms,
            used_at_ms: 0,
            request_id: Vec::new(),
        };
        self.put_routed(
            RecordId::new().as_bytes().to_vec(),
            KIND_JOIN_TOKEN,
            self.code(),
            token.encode_to_vec(),
            vec![key(KEY_TOKEN_DIGEST, hex::encode(&token.secret_digest))],
            0,
            AuditNote::event(
                "join",
                format!("join token issued for `{code}`, expires at {expires_at_ms} ms"),
            ),
        )
        .await?;
        info!(child = %code, expires_at_ms, "join token issued");
        Ok((
            JoinToken {
                code,
                secret,
                ca_fingerprint,
            },
            expires_at_ms,
        ))
    }
}

fn key(name: &str, value: String) -> wire::NaturalKey {
    wire::NaturalKey {
        name: name.into(),
        value,
    }
}

/// The `Join` service on a parent's peer port.
pub struct JoinService {
    node: Arc<Node>,
    ca_pem: String,
    deployment_key_hex: String,
    wait: Duration,
}

impl JoinService {
    pub fn new(node: Arc<Node>, ca_pem: String, deployment_key_hex: String) -> JoinService {
        JoinService {
            node,
            ca_pem,
            deployment_key_hex,
            wait: ISSUE_WAIT,
        }
    }

    /// Checks the token and returns it with its record's version.
    async fn check_token(
        &self,
        code: &DivisionCode,
        secret: &[u8],
    ) -> Result<(wire::Record, wire::JoinToken), JoinRefusal> {
        let digest = hex::encode(secret_digest(secret));
        let found = self
            .node
            .reads(Reader::Node)
            .lookup(KIND_JOIN_TOKEN, KEY_TOKEN_DIGEST, &digest)
            .await?;
        let Some(stored) = found.into_iter().next() else {
            return Err(JoinRefusal::UnknownToken {
                node: self.node.code().clone(),
                code: code.clone(),
            });
        };
        let token = wire::JoinToken::decode(&stored.payload[..]).map_err(|e| {
            JoinRefusal::Corrupt(format!("the stored join token does not decode: {e}"))
        })?;
        if token.code != code.as_str() {
            return Err(JoinRefusal::WrongCode {
                issued_for: token.code,
                code: code.clone(),
            });
        }
        if token.used_at_ms != 0 {
            return Err(JoinRefusal::TokenUsed {
                at_ms: token.used_at_ms,
            });
        }
        if self.node.clock().now_ms() >= token.expires_at_ms {
            return Err(JoinRefusal::TokenExpired {
                at_ms: token.expires_at_ms,
            });
        }
        Ok((stored, token))
    }

    /// Waits until the answer to request `request_id` is held here.
    async fn wait_for_answer(
        &self,
        request_id: &[u8],
        city: &DivisionCode,
    ) -> Result<wire::CertificateIssued, JoinRefusal> {
        let deadline = tokio::time::Instant::now() + self.wait;
        let mut head = self.node.subscribe_head();
        loop {
            head.borrow_and_update();
            let answers = self
                .node
                .reads(Reader::Node)
                .lookup(KIND_CERT_ISSUED, KEY_REQUEST_ID, &hex::encode(request_id))
                .await?;
            if let Some(answer) = answers.into_iter().next() {
                return wire::CertificateIssued::decode(&answer.payload[..]).map_err(|e| {
                    JoinRefusal::Corrupt(format!("the city's answer does not decode: {e}"))
                });
            }
            match tokio::time::timeout_at(deadline, head.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(JoinRefusal::ShuttingDown),
                Err(_) => {
                    return Err(JoinRefusal::CityUnreachable {
                        city: city.clone(),
                        secs: self.wait.as_secs(),
                    });
                }
            }
        }
    }
}

#[tonic::async_trait]
impl wire::join_server::Join for JoinService {
    async fn join(
        &self,
        request: Request<wire::JoinRequest>,
    ) -> Result<Response<wire::JoinResponse>, Status> {
        Ok(Response::new(self.answer(request.into_inner()).await?))
    }
}

impl JoinService {
    /// A join: checks the token, has the city issue the certificates, and
    /// marks the token used.
    async fn answer(&self, req: wire::JoinRequest) -> Result<wire::JoinResponse, JoinRefusal> {
        let bad = |field: &'static str, reason: String| JoinRefusal::BadRequest { field, reason };
        let code = DivisionCode::parse(&req.code).map_err(|e| bad("code", e.to_string()))?;
        admit_child(self.node.code(), &code)?;
        let (token_record, token) = self.check_token(&code, &req.secret).await?;
        // Fail fast on a request the city would refuse anyway.
        rcgen::CertificateSigningRequestParams::from_pem(&req.csr_pem)
            .map_err(|e| bad("csr_pem", format!("not a valid certificate request: {e}")))?;

        let city = city_of(self.node.code());
        let request_id = RecordId::new().as_bytes().to_vec();
        tiersync_trust::VerifyingKey::from_public_key_pem(&req.origin_public_key_pem)
            .map_err(|e| bad("origin_public_key_pem", e.to_string()))?;
        let cert_request = wire::CertificateRequest {
            subject: code.to_string(),
            csr_pem: req.csr_pem,
            origin_public_key_pem: req.origin_public_key_pem,
        };
        let stored = self
            .node
            .put_routed(
                request_id.clone(),
                KIND_CERT_REQUEST,
                &city,
                cert_request.encode_to_vec(),
                vec![key(KEY_ISSUER, city.to_string())],
                0,
                AuditNote::write("node", false),
            )
            .await?;
        info!(child = %code, %city, "certificate request routed to the city");
        // At the city the request is addressed to this node itself: its
        // handler answers it now.
        self.node
            .after_commit(&[(stored.seq, stored.record)])
            .await
            .map_err(NodeError::from)?;

        let answer = self.wait_for_answer(&request_id, &city).await?;
        if !answer.accepted {
            warn!(child = %code, reason = %answer.reason, "the city refused the certificate");
            return Err(JoinRefusal::CityRefused {
                city,
                reason: answer.reason,
            });
        }

        // Single use: written over the version read above, so a second join
        // racing on the same token fails here and gets nothing.
        let used = wire::JoinToken {
            used_at_ms: self.node.clock().now_ms(),
            request_id: request_id.clone(),
            ..token
        };
        match self
            .node
            .put_routed(
                token_record.id.clone(),
                KIND_JOIN_TOKEN,
                self.node.code(),
                used.encode_to_vec(),
                token_record.keys.clone(),
                token_record.version,
                AuditNote::event("join", format!("node `{code}` joined")),
            )
            .await
        {
            Ok(_) => {}
            Err(NodeError::Store(StoreError::VersionConflict { .. })) => {
                return Err(JoinRefusal::TokenRace);
            }
            Err(e) => return Err(e.into()),
        }
        info!(child = %code, "node joined");
        Ok(wire::JoinResponse {
            cert_pem: answer.cert_pem,
            ca_pem: self.ca_pem.clone(),
            deployment_key: self.deployment_key_hex.clone(),
            parent: self.node.code().to_string(),
            origin_cert_pem: answer.origin_cert_pem,
            trust_root_pem: self.node.keyring().root().cert.to_pem(),
            trust_chain: Some(wire::RootChain {
                links: self.node.keyring().chain(),
            }),
        })
    }
}

// === the city side ===

/// Certificate requests and the city's answers, as a routed exchange.
pub const CERTIFICATES: Exchange = Exchange {
    request_kind: KIND_CERT_REQUEST,
    addressee_key: KEY_ISSUER,
    answer_kind: KIND_CERT_ISSUED,
    answer_key: KEY_REQUEST_ID,
};

/// The city's side of joining: answers every certificate request addressed
/// to it with the node's TLS and origin certificates, or a refusal. The app
/// registers it as a kind handler at the node that holds the deployment CA.
pub struct CertificateIssuer {
    ca: crate::identity::pki::Ca,
}

impl CertificateIssuer {
    pub fn new(ca: crate::identity::pki::Ca) -> CertificateIssuer {
        CertificateIssuer { ca }
    }
}

#[async_trait::async_trait]
impl Answer for CertificateIssuer {
    fn exchange(&self) -> &'static Exchange {
        &CERTIFICATES
    }

    async fn answer(
        &self,
        node: &Node,
        requester: &DivisionCode,
        record: &wire::Record,
    ) -> Result<Option<Answered>, NodeError> {
        let request = wire::CertificateRequest::decode(&record.payload[..]).ok();
        let outcome = match &request {
            None => Err("the request does not decode".to_owned()),
            Some(request) => decide(&self.ca, node.root_issuer().as_deref(), requester, request),
        };
        let subject = request.map(|r| r.subject).unwrap_or_default();
        let (accepted, (cert_pem, origin_cert_pem), reason) = match outcome {
            Ok(pems) => (true, pems, String::new()),
            Err(reason) => (false, Default::default(), reason),
        };
        if accepted {
            info!(%requester, %subject, "node certificate issued");
        } else {
            warn!(%requester, %subject, %reason, "certificate request refused");
        }
        let audit = AuditNote::event(
            "join",
            if accepted {
                format!("certificate issued for `{subject}` requested by `{requester}`")
            } else {
                format!("certificate for `{subject}` requested by `{requester}` refused: {reason}")
            },
        );
        let answer = wire::CertificateIssued {
            request_id: record.id.clone(),
            subject,
            accepted,
            cert_pem,
            reason,
            origin_cert_pem,
        };
        Ok(Some(Answered {
            payload: answer.encode_to_vec(),
            audit,
        }))
    }
}

/// The city's rule: a node may request certificates for its direct children
/// only (the same rule by which a parent admits a child's link).
/// Returns the TLS certificate and the origin certificate, both PEM.
pub(crate) fn decide(
    ca: &crate::identity::pki::Ca,
    root: Option<&crate::identity::origin::RootIssuer>,
    requester: &DivisionCode,
    request: &wire::CertificateRequest,
) -> Result<(String, String), String> {
    let subject = DivisionCode::parse(&request.subject).map_err(|e| format!("subject: {e}"))?;
    if subject.parent().as_ref() != Some(requester) {
        return Err(format!(
            "node `{requester}` may request certificates only for its direct children, and `{subject}` is not one"
        ));
    }
    let root = root.ok_or(
        "this city has no trust.root_key, so it cannot issue origin certificates; issue them with `tiersync pki issue`",
    )?;
    let origin_key =
        tiersync_trust::VerifyingKey::from_public_key_pem(&request.origin_public_key_pem)
            .map_err(|e| format!("origin public key: {e}"))?;
    let tls = ca
        .issue_for_request(&subject, &request.csr_pem, CERT_VALIDITY_DAYS)
        .map_err(|e| e.to_string())?;
    let origin = root
        .issue(&subject, &origin_key)
        .map_err(|e| e.to_string())?;
    Ok((tls, origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_bad(text: &str, expected: &str) {
        match JoinToken::parse(text) {
            Ok(t) => panic!("`{text}` parsed as {t:?}"),
            Err(e) => assert!(
                e.to_string().contains(expected),
                "`{text}`: error `{e}` does not contain `{expected}`"
            ),
        }
    }

    #[test]
    fn tokens_round_trip_and_bad_ones_say_why() {
        let token = JoinToken {
            code: DivisionCode::parse("511102004001").unwrap(),
            secret: [7; SECRET_LEN],
            ca_fingerprint: [9; 32],
        };
        let text = token.to_string();
        assert_eq!(JoinToken::parse(&text).unwrap(), token);
        assert_eq!(JoinToken::parse(&format!("  {text}\n")).unwrap(), token);
        assert!(
            !format!("{token:?}").contains("0707"),
            "Debug shows the secret"
        );

        let secret = "07".repeat(16);
        let ca = "09".repeat(32);
        check_bad("tsj1.511102004001", "2 dot-separated parts, not 4");
        check_bad(
            &format!("tsj2.511102004001.{secret}.{ca}"),
            "starts with `tsj2`",
        );
        check_bad(&format!("tsj1.51110200400.{secret}.{ca}"), "division code");
        check_bad(
            &format!("tsj1.511102004001.{}.{ca}", "07".repeat(15)),
            "30 hex digits, not 32",
        );
        check_bad(
            &format!("tsj1.511102004001.{secret}.zz{}", &ca[2..]),
            "the CA fingerprint is not hex",
        );
    }

    #[test]
    fn the_city_issues_only_for_a_direct_child_of_the_requester() {
        let c = |s: &str| DivisionCode::parse(s).unwrap();
        let ca = crate::identity::pki::Ca::generate(&c("5111"), 30).unwrap();
        let (csr_pem, _key) =
            crate::identity::pki::certificate_request(&c("511102004001")).unwrap();
        let (root_key, root_pem) = crate::identity::origin::generate_root(&c("5111")).unwrap();
        let root =
            crate::identity::origin::RootIssuer::from_pem(&root_pem, &root_key, "root").unwrap();
        let origin_public_key_pem = tiersync_trust::SigningKey::generate()
            .verifying_key()
            .to_public_key_pem();
        let request = |subject: &str| wire::CertificateRequest {
            subject: subject.into(),
            csr_pem: csr_pem.clone(),
            origin_public_key_pem: origin_public_key_pem.clone(),
        };
        let root = Some(&root);
        let (tls, origin) = decide(&ca, root, &c("511102004"), &request("511102004001")).unwrap();
        assert!(tls.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(origin.starts_with("-----BEGIN CERTIFICATE-----"));
        let error = decide(&ca, None, &c("511102004"), &request("511102004001")).unwrap_err();
        assert!(error.contains("no trust.root_key"), "{error}");
        let error = decide(&ca, root, &c("511102004"), &request("511102006001")).unwrap_err();
        assert_eq!(
            error,
            "node `511102004` may request certificates only for its direct children, and `511102006001` is not one"
        );
        // a grandchild may not skip its parent
        assert!(decide(&ca, root, &c("511102"), &request("511102004001")).is_err());
        let error = decide(
            &ca,
            root,
            &c("511102004"),
            &wire::CertificateRequest {
                subject: "511102004001".into(),
                origin_public_key_pem: origin_public_key_pem.clone(),
                csr_pem:
                    "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
                        .into(),
            },
        )
        .unwrap_err();
        assert!(
            error.contains("certificate request for `511102004001` is unusable"),
            "{error}"
        );
    }

    #[test]
    fn the_city_of_a_code() {
        let c = |s: &str| DivisionCode::parse(s).unwrap();
        assert_eq!(crate::node::city_of(&c("511102004001")), c("5111"));
        assert_eq!(crate::node::city_of(&c("5111")), c("5111"));
    }
}
