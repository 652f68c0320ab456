//! Signed origin: every record carries its owner's signature, and every node
//! checks it before applying, so no node on the way (a street between a
//! community and its county, say) can alter, invent or re-scope another
//! node's records unnoticed.
//!
//! - **Keys.** Each node has an SM2 signing key and an *origin certificate*
//!   for it, subject `CN=<code>,O=tiersync origin`, issued by the
//!   deployment's *trust root* (an SM2 authority kept at the city; its
//!   certificate `trust-root.pem` is on every node). A node publishes its
//!   certificates itself as a [`KIND_NODE_KEY`](crate::kinds::KIND_NODE_KEY) record that reaches the
//!   whole deployment, so verifying needs nothing but the trust root:
//!   certificate against the root, record against the certificate.
//! - **What is signed.** [`signed_bytes`]: a versioned, length-prefixed
//!   layout of the envelope (id, kind, owner, version, clock, scope, reach)
//!   and one SM3 *content digest* over `deleted`, the natural keys and the
//!   payload bytes as they are ([`content_digest`]). Never a re-encoded
//!   protobuf. A withdrawal (a scoped tombstone a hop derives when a scope
//!   narrows) drops payload and keys but carries the content digest, so the
//!   owner's proof still covers it; `withdrawn` itself is not signed.
//! - **How.** The owner signs each change with a tiersync-trust batch
//!   signature (one SM2 signature over an SM3 hash tree; a record's proof is
//!   the signature plus its path), and the proof travels in
//!   `Record.proof`, unchanged, whatever batches later hops make.
//! - **Checks on arrival** ([`Keyring::verify`]): the proof decodes, names
//!   the record's owner as signer, was made with one of the owner's
//!   certified keys, its path leads to the signed root, and the SM2
//!   signature verifies (cached per origin batch). A record whose owner's key
//!   is not known yet is refused with [`UNKNOWN_SIGNER`](super::keyring::UNKNOWN_SIGNER) and replayed when
//!   the key arrives.
//!
//! The layouts below are persisted in every proof: never change them; a new
//! layout gets a new tag.

use std::time::Duration;

use prost::Message;
use tiersync_proto::types::DivisionCode;
use tiersync_proto::wire;
use tiersync_trust::cert::{Certificate, Role};
use tiersync_trust::{BatchSigner, SigningKey, VerifyingKey};

/// How long a trust list is current; the city publishes a fresh one when
/// half of that has passed.
pub const TRUST_LIST_VALIDITY: Duration = Duration::from_secs(24 * 60 * 60);
const TRUST_LIST_TAG: &[u8] = b"tiersync.trustlist.v1";
const ROOT_TAG: &[u8] = b"tiersync.root.v1";
/// The trust root's certificate and key files in a `pki/` directory.
pub const TRUST_ROOT_CERT_FILE: &str = "trust-root.pem";
pub const TRUST_ROOT_KEY_FILE: &str = "trust-root.key";

const RECORD_TAG: &[u8] = b"tiersync.record.v1";
const CONTENT_TAG: &[u8] = b"tiersync.content.v1";
const ORIGIN_ORG: &str = "tiersync origin";
/// Origin certificates outlive the records they sign being checked: a
/// record signed years ago must still verify. Compromise is handled by
/// revocation, not by expiry.
pub const ORIGIN_CERT_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 60 * 60);
const ROOT_VALIDITY: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("{what}: {source}")]
    Cert {
        what: String,
        #[source]
        source: tiersync_trust::cert::CertError,
    },
    #[error("{what}: {source}")]
    Key {
        what: String,
        #[source]
        source: tiersync_trust::KeyError,
    },
    #[error("{what} is not an origin certificate of a tiersync node: {reason}")]
    NotOrigin { what: String, reason: String },
    #[error("cannot sign: {0}")]
    Sign(String),
}

// === signed bytes ===

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_scope(out: &mut Vec<u8>, scope: Option<&wire::Scope>) {
    match scope {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            out.extend_from_slice(&s.up_to.to_be_bytes());
            out.extend_from_slice(&(s.down_to.len() as u32).to_be_bytes());
            for d in &s.down_to {
                put(out, d.as_bytes());
            }
            out.extend_from_slice(&(s.departments.len() as u32).to_be_bytes());
            for d in &s.departments {
                put(out, d.as_bytes());
            }
        }
    }
}

/// SM3 over `deleted`, the natural keys and the payload, layout
/// `tiersync.content.v1`.
pub fn content_digest(r: &wire::Record) -> [u8; 32] {
    // Fed piece by piece: the same bytes as the layout, without copying
    // the payload (this runs for every record at every hop).
    fn put(h: &mut tiersync_trust::hash::Sm3Hasher, bytes: &[u8]) {
        h.update(&(bytes.len() as u32).to_be_bytes());
        h.update(bytes);
    }
    let mut h = tiersync_trust::hash::Sm3Hasher::new();
    put(&mut h, CONTENT_TAG);
    h.update(&[r.deleted as u8]);
    h.update(&(r.keys.len() as u32).to_be_bytes());
    for k in &r.keys {
        put(&mut h, k.name.as_bytes());
        put(&mut h, k.value.as_bytes());
    }
    put(&mut h, &r.payload);
    h.finalize().0
}

/// The content digest a record's proof covers: carried by a withdrawal,
/// computed from the fields otherwise.
fn covered_content(r: &wire::Record) -> Result<[u8; 32], String> {
    if r.withdrawn {
        r.content_digest.as_slice().try_into().map_err(|_| {
            format!(
                "a withdrawal must carry the 32-byte content digest of what it withdraws, not {} bytes",
                r.content_digest.len()
            )
        })
    } else {
        Ok(content_digest(r))
    }
}

/// The bytes an owner signs for a record, layout `tiersync.record.v1`.
pub fn signed_bytes(r: &wire::Record) -> Result<Vec<u8>, String> {
    let content = covered_content(r)?;
    let owner = r.owner.clone().unwrap_or_default();
    let mut out = Vec::with_capacity(160);
    put(&mut out, RECORD_TAG);
    put(&mut out, &r.id);
    put(&mut out, r.kind.as_bytes());
    put(&mut out, owner.node.as_bytes());
    put(&mut out, owner.department.as_bytes());
    out.extend_from_slice(&r.version.to_be_bytes());
    out.extend_from_slice(&r.updated_at.to_be_bytes());
    put_scope(&mut out, r.scope.as_ref());
    put_scope(&mut out, r.reach.as_ref());
    put(&mut out, &content);
    Ok(out)
}

/// The withdrawal of `record` for a node its scope no longer reaches.
pub fn withdrawal_of(record: wire::Record) -> wire::Record {
    let content_digest = if record.withdrawn {
        record.content_digest.clone()
    } else {
        content_digest(&record).to_vec()
    };
    wire::Record {
        deleted: true,
        withdrawn: true,
        payload: Default::default(),
        keys: Vec::new(),
        content_digest,
        ..record
    }
}

// === certificates ===

fn origin_subject(code: &DivisionCode) -> String {
    format!("CN={code},O={ORIGIN_ORG}")
}

/// The node code an origin certificate names.
pub fn origin_code(cert: &Certificate) -> Result<DivisionCode, String> {
    let subject = cert.subject();
    let mut cn = None;
    let mut org = None;
    for part in subject.split(',') {
        match part.split_once('=') {
            Some(("CN", v)) => cn = Some(v),
            Some(("O", v)) => org = Some(v),
            _ => {}
        }
    }
    if org != Some(ORIGIN_ORG) {
        return Err(format!(
            "subject `{subject}` is not `O={ORIGIN_ORG}`; it is no origin certificate"
        ));
    }
    let cn = cn.ok_or_else(|| format!("subject `{subject}` has no CN"))?;
    DivisionCode::parse(cn).map_err(|e| format!("subject `{subject}`: {e}"))
}

/// A trust root of the deployment: a self-signed SM2 authority.
#[derive(Clone)]
pub struct TrustRoot {
    pub cert: Certificate,
    pub(super) key: VerifyingKey,
}

impl TrustRoot {
    pub fn from_pem(pem: &str, what: &str) -> Result<TrustRoot, OriginError> {
        let cert = Certificate::from_pem(pem).map_err(|source| OriginError::Cert {
            what: what.to_owned(),
            source,
        })?;
        Self::from_cert(cert, what)
    }

    pub fn from_der(der: &[u8], what: &str) -> Result<TrustRoot, OriginError> {
        let cert = Certificate::from_der(der).map_err(|source| OriginError::Cert {
            what: what.to_owned(),
            source,
        })?;
        Self::from_cert(cert, what)
    }

    fn from_cert(cert: Certificate, what: &str) -> Result<TrustRoot, OriginError> {
        let key = cert.public_key().map_err(|source| OriginError::Cert {
            what: what.to_owned(),
            source,
        })?;
        cert.verify_signature(&key)
            .map_err(|source| OriginError::Cert {
                what: format!("{what} (not self-signed by its own key)"),
                source,
            })?;
        Ok(TrustRoot { cert, key })
    }

    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Checks that `cert` is an origin certificate this root issued and
    /// returns the code it names with its key.
    pub fn check_origin(&self, cert: &Certificate) -> Result<(DivisionCode, VerifyingKey), String> {
        cert.verify_signature(&self.key)
            .map_err(|e| format!("not issued by this deployment's trust root: {e}"))?;
        let code = origin_code(cert)?;
        let key = cert.public_key().map_err(|e| e.to_string())?;
        Ok((code, key))
    }
}

/// A new trust root: key PEM (PKCS#8) and self-signed certificate PEM.
pub fn generate_root(city: &DivisionCode) -> Result<(String, String), OriginError> {
    let key = SigningKey::generate();
    let subject = format!("CN=tiersync trust root {city},O=tiersync");
    let cert = Certificate::self_signed(&key, &subject, ROOT_VALIDITY).map_err(|source| {
        OriginError::Cert {
            what: "the new trust root".into(),
            source,
        }
    })?;
    let key_pem = key.to_pkcs8_pem().map_err(|source| OriginError::Key {
        what: "the new trust root key".into(),
        source,
    })?;
    Ok((key_pem.to_string(), cert.to_pem()))
}

/// The trust root's certificate and signing key, where origin
/// certificates are issued (the city, and `tiersync pki issue`).
pub struct RootIssuer {
    cert: Certificate,
    key: SigningKey,
    /// The roots since the deployment's first, each endorsed by the one
    /// before; empty while the first root is the current one.
    chain: Vec<wire::RootLink>,
}

pub(super) fn root_message(certificate: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(certificate.len() + 24);
    put(&mut out, ROOT_TAG);
    put(&mut out, certificate);
    out
}

impl RootIssuer {
    pub fn from_pem(cert_pem: &str, key_pem: &str, what: &str) -> Result<RootIssuer, OriginError> {
        let root = TrustRoot::from_pem(cert_pem, what)?;
        let key = SigningKey::from_pkcs8_pem(key_pem).map_err(|source| OriginError::Key {
            what: format!("{what} key"),
            source,
        })?;
        if key.verifying_key() != root.verifying_key() {
            return Err(OriginError::NotOrigin {
                what: format!("{what} key"),
                reason: "it is not the key of the trust root certificate".into(),
            });
        }
        Ok(RootIssuer {
            cert: root.cert,
            key,
            chain: Vec::new(),
        })
    }

    /// The issuer for `key_pem`, which is either the deployment's first root
    /// (`first_pem`) or one of the later roots in `chain` (the chain of the
    /// trust list held): how the city resumes after a rollover.
    pub fn resume(
        first_pem: &str,
        key_pem: &str,
        chain: &[wire::RootLink],
        what: &str,
    ) -> Result<RootIssuer, OriginError> {
        let key = SigningKey::from_pkcs8_pem(key_pem).map_err(|source| OriginError::Key {
            what: format!("{what} key"),
            source,
        })?;
        let first = TrustRoot::from_pem(first_pem, what)?;
        if key.verifying_key() == first.verifying_key() {
            return Ok(RootIssuer {
                cert: first.cert,
                key,
                chain: Vec::new(),
            });
        }
        for (i, link) in chain.iter().enumerate() {
            let root = TrustRoot::from_der(&link.certificate, "a root of the trust list chain")?;
            if key.verifying_key() == root.verifying_key() {
                return Ok(RootIssuer {
                    cert: root.cert,
                    key,
                    chain: chain[..=i].to_vec(),
                });
            }
        }
        Err(OriginError::NotOrigin {
            what: format!("{what} key"),
            reason: "it is the key of neither the first trust root nor any later root in the trust list held"
                .into(),
        })
    }

    /// A successor root with a fresh key, endorsed by this one; returns it
    /// with its key as PKCS#8 PEM (for the operator to keep).
    pub fn successor(&self, city: &DivisionCode) -> Result<(RootIssuer, String), OriginError> {
        let key = SigningKey::generate();
        let generation = self.chain.len() + 2;
        let subject = format!("CN=tiersync trust root {city} {generation},O=tiersync");
        let cert = Certificate::self_signed(&key, &subject, ROOT_VALIDITY).map_err(|source| {
            OriginError::Cert {
                what: "the successor trust root".into(),
                source,
            }
        })?;
        let key_pem = key.to_pkcs8_pem().map_err(|source| OriginError::Key {
            what: "the successor trust root key".into(),
            source,
        })?;
        let link = wire::RootLink {
            certificate: cert.to_der().to_vec(),
            endorsement: self
                .key
                .sign(&root_message(cert.to_der()))
                .as_der()
                .to_vec(),
        };
        let mut chain = self.chain.clone();
        chain.push(link);
        Ok((RootIssuer { cert, key, chain }, key_pem.to_string()))
    }

    /// This root's certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        self.cert.to_der()
    }

    /// Signs a trust list body.
    pub fn sign_trust_list(&self, body: &wire::TrustListBody) -> wire::TrustList {
        let body = body.encode_to_vec();
        let signature = self.key.sign(&trust_list_message(&body));
        wire::TrustList {
            body,
            signature: signature.as_der().to_vec(),
            algorithm: tiersync_trust::Algorithm::Sm2Sm3.name().into(),
            chain: self.chain.clone(),
        }
    }

    /// An origin certificate (PEM) for `code` over `public`.
    pub fn issue(&self, code: &DivisionCode, public: &VerifyingKey) -> Result<String, OriginError> {
        self.cert
            .issue(
                &self.key,
                &origin_subject(code),
                public,
                Role::Signer,
                ORIGIN_CERT_VALIDITY,
            )
            .map(|c| c.to_pem())
            .map_err(|source| OriginError::Cert {
                what: format!("the origin certificate of `{code}`"),
                source,
            })
    }
}

/// What the trust root signs for a trust list: a domain tag and the body.
pub(super) fn trust_list_message(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 32);
    put(&mut out, TRUST_LIST_TAG);
    put(&mut out, body);
    out
}

// === signing ===

/// This node's signing identity.
pub struct Identity {
    signer: BatchSigner,
    cert: Certificate,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("signer", &self.signer.signer())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads and checks this node's key and origin certificate: issued by
    /// `root`, naming `code`, certifying this very key.
    pub fn load(
        root: &TrustRoot,
        later: &[TrustRoot],
        code: &DivisionCode,
        key_pem: &str,
        cert_pem: &str,
        what: &str,
    ) -> Result<Identity, OriginError> {
        let key = SigningKey::from_pkcs8_pem(key_pem).map_err(|source| OriginError::Key {
            what: format!("{what} key"),
            source,
        })?;
        let cert = Certificate::from_pem(cert_pem).map_err(|source| OriginError::Cert {
            what: format!("{what} certificate"),
            source,
        })?;
        let not_origin = |reason: String| OriginError::NotOrigin {
            what: format!("{what} certificate"),
            reason,
        };
        let (named, certified) = match root.check_origin(&cert) {
            Ok(found) => found,
            Err(first) => later
                .iter()
                .find_map(|r| r.check_origin(&cert).ok())
                .ok_or(first)
                .map_err(not_origin)?,
        };
        if &named != code {
            return Err(not_origin(format!(
                "it is for node `{named}`, but this node is `{code}`"
            )));
        }
        if &certified != key.verifying_key() {
            return Err(not_origin(
                "it certifies another key than the one given".into(),
            ));
        }
        let signer = BatchSigner::new(code.to_string(), key)
            .map_err(|e| OriginError::Sign(e.to_string()))?;
        Ok(Identity { signer, cert })
    }

    /// A throwaway root and identity, for unit tests of nodes.
    #[cfg(any(test, feature = "testkit"))]
    pub fn generate_for_tests(code: &DivisionCode) -> (TrustRoot, Identity) {
        let (root_key, root_pem) = generate_root(code).expect("root");
        let issuer = RootIssuer::from_pem(&root_pem, &root_key, "test root").expect("issuer");
        let key = SigningKey::generate();
        let cert = issuer.issue(code, key.verifying_key()).expect("cert");
        let root = TrustRoot::from_pem(&root_pem, "test root").expect("root");
        let key_pem = key.to_pkcs8_pem().expect("pem");
        let identity = Identity::load(&root, &[], code, &key_pem, &cert, "test").expect("identity");
        (root, identity)
    }

    pub fn cert_der(&self) -> &[u8] {
        self.cert.to_der()
    }

    /// The key records signed here verify with.
    pub fn verifying_key(&self) -> &VerifyingKey {
        self.signer.verifying_key()
    }

    /// Signs `records` (owned by this node, versions final) with one batch
    /// signature, setting each one's proof.
    pub fn sign(&self, records: &mut [wire::Record]) -> Result<(), OriginError> {
        let leaves = records
            .iter()
            .map(signed_bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(OriginError::Sign)?;
        let batch = self
            .signer
            .sign(&leaves)
            .map_err(|e| OriginError::Sign(e.to_string()))?;
        for (record, proof) in records.iter_mut().zip(batch.proofs()) {
            record.proof = proof
                .to_bytes()
                .map_err(|e| OriginError::Sign(e.to_string()))?
                .into();
        }
        Ok(())
    }
}

/// Signs this node's own writes in groups: a write waits at most
/// [`GroupSigner::LINGER`] for others, and everything queued by then shares
/// one SM2 signature. Under steady load this turns one signature (and one SM2
/// verification at every hop) per record into one per few records, for a
/// few milliseconds of latency; a lone write at an idle node waits the same
/// few milliseconds.
pub struct GroupSigner {
    tx: tokio::sync::mpsc::Sender<SignRequest>,
}

type SignRequest = (
    wire::Record,
    tokio::sync::oneshot::Sender<Result<wire::Record, OriginError>>,
);

impl GroupSigner {
    /// How long a write waits for others to share its signature.
    pub const LINGER: Duration = Duration::from_millis(3);
    /// Most records under one signature.
    pub const MAX_GROUP: usize = 1000;

    /// Starts the signing task; it ends when the signer is dropped. It
    /// reports to `worker`: busy while a group lingers and is signed, its
    /// queue the records waiting as of the last group taken or signed, an
    /// error for each group that could not be signed.
    pub fn start(
        identity: std::sync::Arc<Identity>,
        worker: crate::worker::WorkerHandle,
    ) -> GroupSigner {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<SignRequest>(Self::MAX_GROUP * 2);
        worker.set_queue(0);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                worker.busy();
                worker.set_queue(1 + rx.len());
                let mut group = vec![first];
                let deadline = tokio::time::Instant::now() + Self::LINGER;
                while group.len() < Self::MAX_GROUP {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(next)) => group.push(next),
                        Ok(None) | Err(_) => break,
                    }
                }
                let (mut records, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
                let identity = identity.clone();
                // Hashing a large group is more than a moment of CPU.
                let signed = tokio::task::spawn_blocking(move || {
                    identity.sign(&mut records).map(|()| records)
                })
                .await;
                match signed {
                    Ok(Ok(records)) => {
                        for (record, reply) in records.into_iter().zip(replies) {
                            let _ = reply.send(Ok(record));
                        }
                    }
                    Ok(Err(error)) => {
                        let reason = error.to_string();
                        worker.error(&reason);
                        for reply in replies {
                            let _ = reply.send(Err(OriginError::Sign(reason.clone())));
                        }
                    }
                    Err(join) => {
                        worker.error(&join);
                        for reply in replies {
                            let _ = reply.send(Err(OriginError::Sign(join.to_string())));
                        }
                    }
                }
                worker.set_queue(rx.len());
                worker.idle();
            }
            worker.stopped();
        });
        GroupSigner { tx }
    }

    /// `record` with its proof, signed together with whatever else is
    /// being written now.
    pub async fn sign(&self, record: wire::Record) -> Result<wire::Record, OriginError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send((record, reply))
            .await
            .map_err(|_| OriginError::Sign("the signing task has stopped".into()))?;
        answer
            .await
            .map_err(|_| OriginError::Sign("the signing task has stopped".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::keyring::*;
    use crate::kinds::{KIND_NODE_KEY, KIND_TRUST_LIST};

    fn code(s: &str) -> DivisionCode {
        DivisionCode::parse(s).unwrap()
    }

    fn record(owner: &str, payload: &[u8]) -> wire::Record {
        wire::Record {
            id: vec![1; 16],
            kind: "civil.v1.Resident".into(),
            owner: Some(wire::Owner {
                node: owner.into(),
                department: String::new(),
            }),
            version: 1,
            updated_at: 7,
            scope: Some(wire::Scope {
                up_to: 4,
                down_to: vec![],
                departments: vec![],
            }),
            payload: payload.to_vec().into(),
            keys: vec![wire::NaturalKey {
                name: "id_digest".into(),
                value: "ab".into(),
            }],
            ..Default::default()
        }
    }

    fn node_key(owner: &str, identity: &Identity) -> wire::Record {
        let mut r = record(owner, &[]);
        r.kind = KIND_NODE_KEY.into();
        r.payload = wire::NodeKey {
            certificates: vec![identity.cert_der().to_vec()],
        }
        .encode_to_vec()
        .into();
        r
    }

    fn check(keyring: &Keyring, r: &wire::Record, expected: Result<(), &str>) {
        let got = keyring.verify(&[r]).pop().unwrap();
        match (got, expected) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(want)) => assert!(e.to_string().contains(want), "`{e}` lacks `{want}`"),
            (got, want) => panic!("got {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn a_signed_record_verifies_and_any_change_is_refused() {
        let c = code("511102004001");
        let (root, identity) = Identity::generate_for_tests(&c);
        let keyring = Keyring::new(root);
        let mut records = vec![
            record("511102004001", b"one"),
            record("511102004001", b"two"),
        ];
        identity.sign(&mut records).unwrap();

        check(&keyring, &records[0], Err(UNKNOWN_SIGNER));
        assert!(keyring.learn(&node_key("511102004001", &identity)).unwrap());
        assert!(!keyring.learn(&node_key("511102004001", &identity)).unwrap());
        check(&keyring, &records[0], Ok(()));
        check(&keyring, &records[1], Ok(()));

        let mut altered = records[0].clone();
        altered.payload = b"One".to_vec().into();
        check(&keyring, &altered, Err("signature"));
        let mut widened = records[0].clone();
        widened.scope.as_mut().unwrap().down_to.push("5111".into());
        check(&keyring, &widened, Err("signature"));
        let mut bumped = records[0].clone();
        bumped.version = 2;
        check(&keyring, &bumped, Err("signature"));
        let mut rekeyed = records[0].clone();
        rekeyed.keys[0].value = "cd".into();
        check(&keyring, &rekeyed, Err("signature"));
        let mut unsigned = records[0].clone();
        unsigned.proof.clear();
        check(&keyring, &unsigned, Err("unsigned"));
        let mut garbage = records[0].clone();
        garbage.proof = vec![1, 2, 3].into();
        check(&keyring, &garbage, Err("does not decode"));
        // claimed by another owner: the proof names the real signer
        let mut stolen = records[0].clone();
        stolen.owner.as_mut().unwrap().node = "511102004002".into();
        check(&keyring, &stolen, Err("not by its owner `511102004002`"));

        // a withdrawal keeps the proof valid through its content digest
        let withdrawn = withdrawal_of(records[0].clone());
        assert!(withdrawn.payload.is_empty() && withdrawn.keys.is_empty());
        check(&keyring, &withdrawn, Ok(()));
        let mut forged = withdrawn.clone();
        forged.content_digest = vec![0; 32];
        check(&keyring, &forged, Err("signature"));
        forged.content_digest = vec![0; 3];
        check(&keyring, &forged, Err("32-byte content digest"));
    }

    #[test]
    fn keys_are_learned_only_from_the_root_and_for_their_owner() {
        let c = code("511102004001");
        let (root, identity) = Identity::generate_for_tests(&c);
        let keyring = Keyring::new(root);
        // a certificate from another root
        let (_, stranger) = Identity::generate_for_tests(&c);
        let e = keyring
            .learn(&node_key("511102004001", &stranger))
            .unwrap_err();
        assert!(
            e.contains("not issued by this deployment's trust root"),
            "{e}"
        );
        // a genuine certificate published under another owner
        let e = keyring
            .learn(&node_key("511102004002", &identity))
            .unwrap_err();
        assert!(
            e.contains("is for node `511102004001`, but the record is owned by `511102004002`"),
            "{e}"
        );
        assert!(!keyring.knows("511102004002"));
    }

    fn trust_list_record(list: &wire::TrustList) -> wire::Record {
        let mut r = record("5111", &[]);
        r.kind = KIND_TRUST_LIST.into();
        r.payload = list.encode_to_vec().into();
        r
    }

    #[test]
    fn trust_lists_are_checked_adopted_in_order_and_go_stale() {
        let city = code("5111");
        let (root_key, root_pem) = generate_root(&city).unwrap();
        let issuer = RootIssuer::from_pem(&root_pem, &root_key, "root").unwrap();
        let keyring = Keyring::new(TrustRoot::from_pem(&root_pem, "root").unwrap());
        assert!(keyring.trust_status(0).stale, "no list yet is stale");

        let body = |sequence, next_update_ms| wire::TrustListBody {
            sequence,
            issued_at_ms: 1_000,
            next_update_ms,
            revocations: vec![wire::Revocation {
                node: "511102004001".into(),
                reason: "keyCompromise".into(),
                effective_at_ms: 5_000,
                revoked_at_ms: 5_000,
            }],
            successor_root: vec![],
        };
        let list = issuer.sign_trust_list(&body(2, 10_000));
        let checked = keyring.check_trust_list(&trust_list_record(&list)).unwrap();
        assert!(keyring.adopt(checked));
        let older = issuer.sign_trust_list(&body(1, 99_000));
        let older = keyring
            .check_trust_list(&trust_list_record(&older))
            .unwrap();
        assert!(!keyring.adopt(older), "an older sequence is not adopted");
        assert!(!keyring.trust_status(9_999).stale);
        assert!(keyring.trust_status(10_000).stale);
        assert_eq!(
            keyring.revocation("511102004001").unwrap().effective_at_ms,
            5_000
        );
        assert!(keyring.revocation("511102004002").is_none());

        // tampered body, or another root's signature
        let mut tampered = list.clone();
        tampered.body = body(3, 10_000).encode_to_vec();
        let e = keyring
            .check_trust_list(&trust_list_record(&tampered))
            .unwrap_err();
        assert!(
            e.contains("not signed by this deployment's trust root"),
            "{e}"
        );
        let (other_key, other_pem) = generate_root(&city).unwrap();
        let other = RootIssuer::from_pem(&other_pem, &other_key, "other").unwrap();
        let foreign = other.sign_trust_list(&body(4, 10_000));
        let e = keyring
            .check_trust_list(&trust_list_record(&foreign))
            .unwrap_err();
        assert!(
            e.contains("not signed by this deployment's trust root"),
            "{e}"
        );
    }

    #[test]
    fn a_rolled_over_root_is_followed_through_its_endorsement_chain() {
        let city = code("5111");
        let (first_key, first_pem) = generate_root(&city).unwrap();
        let first = RootIssuer::from_pem(&first_pem, &first_key, "first").unwrap();
        let (second, second_key) = first.successor(&city).unwrap();
        let body = |sequence, successor_root| wire::TrustListBody {
            sequence,
            issued_at_ms: 1,
            next_update_ms: i64::MAX,
            revocations: vec![],
            successor_root,
        };
        let fresh = || Keyring::new(TrustRoot::from_pem(&first_pem, "first").unwrap());

        // The current root announces its successor ...
        let announced = first.sign_trust_list(&body(1, second.cert_der().to_vec()));
        let keyring = fresh();
        let checked = keyring
            .check_trust_list(&trust_list_record(&announced))
            .unwrap();
        assert!(keyring.adopt(checked));
        // ... whose origin certificates are trusted from then on.
        let c = code("511102004001");
        let signing = SigningKey::generate();
        let cert = second.issue(&c, signing.verifying_key()).unwrap();
        let identity = Identity::load(
            &TrustRoot::from_der(second.cert_der(), "second").unwrap(),
            &[],
            &c,
            &signing.to_pkcs8_pem().unwrap(),
            &cert,
            "second",
        )
        .unwrap();
        assert!(keyring.learn(&node_key("511102004001", &identity)).unwrap());
        let e = fresh()
            .learn(&node_key("511102004001", &identity))
            .unwrap_err();
        assert!(
            e.contains("not issued by this deployment's trust root"),
            "{e}"
        );

        // The successor signs the next list; a node that slept through the
        // announcement follows the endorsement from the first root.
        let next = second.sign_trust_list(&body(2, vec![]));
        let sleeper = fresh();
        let checked = sleeper.check_trust_list(&trust_list_record(&next)).unwrap();
        assert!(sleeper.adopt(checked));
        assert!(sleeper.learn(&node_key("511102004001", &identity)).unwrap());
        assert_eq!(sleeper.chain().len(), 1);

        // A forged endorsement, or none, is refused.
        let mut forged = next.clone();
        forged.chain[0].endorsement = first.sign_trust_list(&body(9, vec![])).signature;
        let e = fresh()
            .check_trust_list(&trust_list_record(&forged))
            .unwrap_err();
        assert!(e.contains("not endorsed by the root before it"), "{e}");
        let mut unendorsed = next.clone();
        unendorsed.chain.clear();
        let e = fresh()
            .check_trust_list(&trust_list_record(&unendorsed))
            .unwrap_err();
        assert!(
            e.contains("not signed by this deployment's trust root"),
            "{e}"
        );

        // The city resumes with the second key from the chain it holds.
        let resumed =
            RootIssuer::resume(&first_pem, &second_key, &sleeper.chain(), "root").unwrap();
        assert_eq!(resumed.cert_der(), second.cert_der());
        let (stranger, _) = generate_root(&city).unwrap();
        let e = RootIssuer::resume(&first_pem, &stranger, &sleeper.chain(), "root")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("neither the first trust root nor any later root"),
            "{e}"
        );
    }

    #[test]
    fn a_revocation_refuses_records_signed_from_its_effective_time_on() {
        let c = code("511102004001");
        let (root, identity) = Identity::generate_for_tests(&c);
        let keyring = Keyring::new(root);
        keyring.learn(&node_key("511102004001", &identity)).unwrap();
        keyring.adopt(CheckedTrustList {
            body: wire::TrustListBody {
                sequence: 1,
                issued_at_ms: 0,
                next_update_ms: i64::MAX,
                revocations: vec![wire::Revocation {
                    node: "511102004001".into(),
                    reason: "keyCompromise".into(),
                    effective_at_ms: 5_000,
                    revoked_at_ms: 6_000,
                }],
                successor_root: vec![],
            },
            chain: vec![],
            roots: vec![],
        });
        let at = |ms: u64| {
            let mut r = record("511102004001", b"x");
            r.updated_at = tiersync_proto::types::HlcTimestamp::new(ms, 0).as_u64();
            identity.sign(std::slice::from_mut(&mut r)).unwrap();
            r
        };
        check(&keyring, &at(4_999), Ok(()));
        check(
            &keyring,
            &at(5_000),
            Err("is revoked (keyCompromise) from 5000"),
        );
    }

    #[test]
    fn the_signed_layout_is_stable() {
        // Persisted in every proof: a change here breaks every stored record.
        let r = record("511102004001", b"payload");
        let bytes = signed_bytes(&r).unwrap();
        assert_eq!(bytes.len(), 149);
        assert_eq!(&bytes[4..22], RECORD_TAG);
        assert_eq!(
            hex::encode(tiersync_trust::sm3(&bytes).0),
            "bf14d038b824232407532a232f18d99ea4556319c1c0cf94a647142aa28e6fb8"
        );
    }
}
