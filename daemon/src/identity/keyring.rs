//! The origin keys this node knows and the trust list it holds: every
//! record arriving from a peer is checked against them
//! ([`Keyring::verify`]), with a bounded cache of batch signatures already
//! verified. Keys are learned from `NodeKey` records (each a root-issued
//! origin certificate); the trust list comes only from the trust root (or a
//! later root its chain of endorsements leads to).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, RwLock};

use prost::Message;
use tiersync_proto::types::DivisionCode;
use tiersync_proto::wire;
use tiersync_trust::cert::Certificate;
use tiersync_trust::{Item, RecordProof, Verifier, VerifyingKey};

use super::origin::{TrustRoot, root_message, signed_bytes, trust_list_message};

/// Start of the refusal reason for a record whose owner's key is unknown
/// here; such records are replayed when the key arrives.
pub const UNKNOWN_SIGNER: &str = "no signing key known for origin";

/// Why a record's owner signature could not be checked or did not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unverifiable {
    /// The owner's key has not arrived here yet.
    UnknownSigner { owner: String },
    /// The proof or signature is wrong, or the owner is revoked.
    Invalid(String),
}

impl std::fmt::Display for Unverifiable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unverifiable::UnknownSigner { owner } => write!(f, "{UNKNOWN_SIGNER} `{owner}` yet"),
            Unverifiable::Invalid(reason) => f.write_str(reason),
        }
    }
}
/// Origin batches whose signature stays verified in memory.
const VERIFIED_BATCHES: usize = 16_384;

/// The origin keys this node knows, by node code, and the cache of batch
/// signatures already verified.
pub struct Keyring {
    root: TrustRoot,
    /// Shared, so checking a batch takes a reference per record, not a copy.
    keys: RwLock<HashMap<String, Vec<Arc<VerifyingKey>>>>,
    verifier: Verifier,
    /// The newest trust list adopted.
    trust: RwLock<Option<wire::TrustListBody>>,
    /// Roots trusted beside the first (`root`): the chain of the list held,
    /// and the successor it announces.
    later_roots: RwLock<Vec<TrustRoot>>,
    /// The chain of the list held, as it came.
    chain: RwLock<Vec<wire::RootLink>>,
}

/// The roots `links` lead to from `first`, each endorsed by the one before.
pub fn follow_chain(first: &TrustRoot, links: &[wire::RootLink]) -> Result<Vec<TrustRoot>, String> {
    let mut signer = first.clone();
    let mut roots = Vec::with_capacity(links.len());
    for (i, link) in links.iter().enumerate() {
        let endorsement = tiersync_trust::Signature::from_der(&link.endorsement)
            .map_err(|e| format!("trust root {} of the chain: endorsement: {e}", i + 2))?;
        signer
            .key
            .verify(&root_message(&link.certificate), &endorsement)
            .map_err(|e| {
                format!(
                    "trust root {} of the chain is not endorsed by the root before it: {e}",
                    i + 2
                )
            })?;
        signer = TrustRoot::from_der(&link.certificate, "a root of the chain")
            .map_err(|e| e.to_string())?;
        roots.push(signer.clone());
    }
    Ok(roots)
}

/// A trust list whose signature checked out, with the roots it vouches for.
#[derive(Clone)]
pub struct CheckedTrustList {
    pub body: wire::TrustListBody,
    pub(super) chain: Vec<wire::RootLink>,
    pub(super) roots: Vec<TrustRoot>,
}

impl std::fmt::Debug for CheckedTrustList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedTrustList")
            .field("body", &self.body)
            .field("later_roots", &self.roots.len())
            .finish()
    }
}

impl Keyring {
    pub fn new(root: TrustRoot) -> Keyring {
        Keyring {
            root,
            keys: RwLock::new(HashMap::new()),
            verifier: Verifier::new(NonZeroUsize::new(VERIFIED_BATCHES).expect("non-zero")),
            trust: RwLock::new(None),
            later_roots: RwLock::new(Vec::new()),
            chain: RwLock::new(Vec::new()),
        }
    }

    /// Checks a trust list record: signed by the deployment's first root,
    /// or by a later root that the chain carried in the list leads to from
    /// the first one, each endorsed by the one before (so a node that slept
    /// through rollovers still follows); the body decodes.
    pub fn check_trust_list(&self, record: &wire::Record) -> Result<CheckedTrustList, String> {
        let list = wire::TrustList::decode(&record.payload[..])
            .map_err(|e| format!("TrustList payload does not decode: {e}"))?;
        if list.algorithm != tiersync_trust::Algorithm::Sm2Sm3.name() {
            return Err(format!(
                "trust list signed with `{}`, not sm2-sm3",
                list.algorithm
            ));
        }
        let mut roots = follow_chain(&self.root, &list.chain)?;
        let signer = roots.last().unwrap_or(&self.root).clone();
        let signature = tiersync_trust::Signature::from_der(&list.signature)
            .map_err(|e| format!("trust list signature: {e}"))?;
        signer
            .key
            .verify(&trust_list_message(&list.body), &signature)
            .map_err(|e| format!("trust list not signed by this deployment's trust root: {e}"))?;
        let body = wire::TrustListBody::decode(list.body.as_slice())
            .map_err(|e| format!("trust list body does not decode: {e}"))?;
        if !body.successor_root.is_empty() {
            roots.push(
                TrustRoot::from_der(&body.successor_root, "the announced successor root")
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok(CheckedTrustList {
            body,
            chain: list.chain,
            roots,
        })
    }

    /// Adopts `list` if it is newer than the list held, trusting the roots
    /// it vouches for; returns whether it was adopted.
    pub fn adopt(&self, list: CheckedTrustList) -> bool {
        let mut held = self.trust.write().expect("trust lock");
        if held
            .as_ref()
            .is_some_and(|h| h.sequence >= list.body.sequence)
        {
            return false;
        }
        *held = Some(list.body);
        *self.later_roots.write().expect("roots lock") = list.roots;
        *self.chain.write().expect("chain lock") = list.chain;
        true
    }

    /// The root chain of the trust list held (empty before any rollover).
    pub fn chain(&self) -> Vec<wire::RootLink> {
        self.chain.read().expect("chain lock").clone()
    }

    /// Checks an origin certificate against every root trusted now.
    fn check_origin(&self, cert: &Certificate) -> Result<(DivisionCode, VerifyingKey), String> {
        match self.root.check_origin(cert) {
            Ok(found) => Ok(found),
            Err(first) => self
                .later_roots
                .read()
                .expect("roots lock")
                .iter()
                .find_map(|r| r.check_origin(cert).ok())
                .ok_or(first),
        }
    }

    /// The trust list held, if any.
    pub fn trust_list(&self) -> Option<wire::TrustListBody> {
        self.trust.read().expect("trust lock").clone()
    }

    /// What the status page and `tiersync status` show.
    pub fn trust_status(&self, now_ms: i64) -> wire::TrustListStatus {
        match self.trust_list() {
            None => wire::TrustListStatus {
                stale: true,
                ..Default::default()
            },
            Some(b) => wire::TrustListStatus {
                sequence: b.sequence,
                issued_at_ms: b.issued_at_ms,
                next_update_ms: b.next_update_ms,
                stale: now_ms >= b.next_update_ms,
                revocations: b.revocations,
            },
        }
    }

    /// The revocation of `code` in the trust list held, if any.
    pub fn revocation(&self, code: &str) -> Option<wire::Revocation> {
        self.trust
            .read()
            .expect("trust lock")
            .as_ref()?
            .revocations
            .iter()
            .filter(|r| r.node == code)
            .min_by_key(|r| r.effective_at_ms)
            .cloned()
    }

    pub fn root(&self) -> &TrustRoot {
        &self.root
    }

    /// Records checked: from the cache (`hits`) or with an SM2 verify.
    pub fn stats(&self) -> tiersync_trust::CacheStats {
        self.verifier.stats()
    }

    pub fn knows(&self, code: &str) -> bool {
        self.keys.read().expect("keyring lock").contains_key(code)
    }

    /// Learns the keys in a `NodeKey` record: each certificate must come
    /// from the trust root and name the record's owner. Safe to call before
    /// the record itself is verified: a root-issued certificate is
    /// authoritative on its own. Returns whether anything new was learned.
    pub fn learn(&self, record: &wire::Record) -> Result<bool, String> {
        let owner = record.owner.as_ref().map(|o| o.node.as_str()).unwrap_or("");
        let node_key = wire::NodeKey::decode(&record.payload[..])
            .map_err(|e| format!("NodeKey payload does not decode: {e}"))?;
        let mut keys = Vec::with_capacity(node_key.certificates.len());
        for (i, der) in node_key.certificates.iter().enumerate() {
            let cert = Certificate::from_der(der).map_err(|e| format!("certificate {i}: {e}"))?;
            let (code, key) = self
                .check_origin(&cert)
                .map_err(|e| format!("certificate {i}: {e}"))?;
            if code.as_str() != owner {
                return Err(format!(
                    "certificate {i} is for node `{code}`, but the record is owned by `{owner}`"
                ));
            }
            keys.push(key);
        }
        let mut map = self.keys.write().expect("keyring lock");
        let entry = map.entry(owner.to_owned()).or_default();
        let before = entry.len();
        for key in keys {
            if !entry.iter().any(|known| **known == key) {
                entry.push(Arc::new(key));
            }
        }
        Ok(entry.len() > before)
    }

    /// Checks the owner's signature on each record; one result per record,
    /// in order. The error names the reason; callers add the record.
    pub fn verify(&self, records: &[&wire::Record]) -> Vec<Result<(), Unverifiable>> {
        struct Prepared {
            proof: RecordProof,
            leaf: Vec<u8>,
            key: Arc<VerifyingKey>,
        }
        let keys = self.keys.read().expect("keyring lock");
        let revocations: HashMap<String, wire::Revocation> = records
            .iter()
            .filter_map(|r| r.owner.as_ref())
            .filter_map(|o| self.revocation(&o.node).map(|rev| (o.node.clone(), rev)))
            .collect();
        // A batch's records arrive together: their proofs' shared fields
        // (and DER signature) are read once per run.
        let mut decoder = tiersync_trust::ProofDecoder::new();
        let prepared: Vec<Result<Prepared, Unverifiable>> = records
            .iter()
            .map(|r| {
                let owner = r.owner.as_ref().map(|o| o.node.as_str()).unwrap_or("");
                if r.proof.is_empty() {
                    return Err(Unverifiable::Invalid(format!(
                        "unsigned: it carries no proof from its owner `{owner}`"
                    )));
                }
                let proof = decoder
                    .decode(&r.proof)
                    .map_err(|e| Unverifiable::Invalid(format!("its proof does not decode: {e}")))?;
                if proof.signer != owner {
                    return Err(Unverifiable::Invalid(format!(
                        "it is signed by `{}`, not by its owner `{owner}`",
                        proof.signer
                    )));
                }
                let Some(known) = keys.get(owner) else {
                    return Err(Unverifiable::UnknownSigner {
                        owner: owner.to_owned(),
                    });
                };
                let key = known
                    .iter()
                    .find(|k| k.key_id() == proof.key_id)
                    .ok_or_else(|| {
                        Unverifiable::Invalid(format!(
                            "it names key {} of `{owner}`, which no origin certificate of `{owner}` certifies",
                            proof.key_id.to_hex()
                        ))
                    })?
                    .clone();
                if let Some(revoked) = revocations.get(owner) {
                    let signed_at = tiersync_proto::types::HlcTimestamp::from_u64(r.updated_at).millis() as i64;
                    if signed_at >= revoked.effective_at_ms {
                        return Err(Unverifiable::Invalid(format!(
                            "origin `{owner}` is revoked ({}) from {} ms since the epoch, and this record was signed at {signed_at}",
                            revoked.reason, revoked.effective_at_ms
                        )));
                    }
                }
                let leaf = signed_bytes(r).map_err(Unverifiable::Invalid)?;
                Ok(Prepared { proof, leaf, key })
            })
            .collect();
        drop(keys);
        let items: Vec<Item<'_>> = prepared
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .map(|p| Item {
                proof: &p.proof,
                leaf: &p.leaf,
                key: &p.key,
            })
            .collect();
        let mut checked = self.verifier.verify_many(&items).into_iter();
        prepared
            .into_iter()
            .map(|p| match p {
                Err(e) => Err(e),
                Ok(_) => checked
                    .next()
                    .expect("one result per item")
                    .map_err(|e| Unverifiable::Invalid(format!("signature: {e}"))),
            })
            .collect()
    }
}
