//! A node: its identity, its store, and the rules every record passes on the
//! way in, whether from the local API or from a peer.
//!
//! - Owner-only writes (一数一源): only the owner changes a record, and its
//!   version rises by exactly one per change. A put for a record owned
//!   elsewhere becomes an [`wire::Amendment`] routed to the owner, which
//!   applies or rejects it and routes an [`wire::AmendmentResult`] back.
//! - Every record from a peer is checked before it is applied: well-formed
//!   envelope, plausible origin for the link it came over, a scope that lets
//!   it be here, and, for kinds this node knows, a payload that decodes and
//!   passes the kind's rules. A record that fails is quarantined with the
//!   reason; the rest of its batch applies.
//! - Kinds this node does not know are relayed without decoding, so a tree
//!   upgraded one node at a time keeps syncing; the local API refuses them.
//! - Reads at any node but the owner mask the fields the schema marks
//!   personal.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use prost::Message;
use tiersync_proto::pb::{civil, gov, service};
use tiersync_proto::types::{
    DigestKey, DivisionCode, Hlc, HlcTimestamp, RecordId, ResidentId, Schemas, Tier,
};
use tiersync_proto::wire;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::SyncTuning;
use crate::metrics::Metrics;
use crate::origin::{
    GroupSigner, Identity, KEY_NODE, KEY_TRUST_LIST, KIND_NODE_KEY, KIND_TRUST_LIST, Keyring,
    TRUST_LIST_VALIDITY, TrustRoot, UNKNOWN_SIGNER,
};
use crate::route::{self, Scope, Toward};
use crate::status::LinkTable;
use crate::store::{
    ApplyBatch, ApplyReport, AuditEvent, AuditNote, Cursor, Encoded, GroupCommit, LocalWrite,
    Refusal, Store, StoreError, Stored,
};

pub const KIND_RESIDENT: &str = "civil.v1.Resident";
pub const KIND_AMENDMENT: &str = "tiersync.v1.Amendment";
pub const KIND_AMENDMENT_RESULT: &str = "tiersync.v1.AmendmentResult";

/// Kinds the node itself writes (amendments and their answers, join tokens,
/// certificate requests and answers): relayed and checked like any
/// canonical kind, but never accepted from the local API's `put`.
pub const INTERNAL_KINDS: &[&str] = &[
    KIND_AMENDMENT,
    KIND_AMENDMENT_RESULT,
    crate::join::KIND_JOIN_TOKEN,
    crate::join::KIND_CERT_REQUEST,
    crate::join::KIND_CERT_ISSUED,
    crate::origin::KIND_NODE_KEY,
    crate::origin::KIND_TRUST_LIST,
];
/// Natural key of a resident: the keyed digest of the ID number.
pub const KEY_ID_DIGEST: &str = "id_digest";
const KEY_TARGET_OWNER: &str = "target_owner";
const KEY_AMENDMENT_ID: &str = "amendment_id";

/// Largest payload a record may carry; documents travel out of band.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// Errors of the local API, each mapped to one gRPC status in `api.rs`.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("unknown kind `{kind}`; this node accepts: {}", known.join(", "))]
    UnknownKind { kind: String, known: Vec<String> },
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("record {0} not found")]
    NotFound(String),
}

/// A put, as the local API received it.
#[derive(Debug, Default, Clone)]
pub struct PutInput {
    pub id: Vec<u8>,
    pub kind: String,
    pub payload: Vec<u8>,
    pub expected_version: u64,
    pub scope: Option<wire::Scope>,
    pub delete: bool,
    pub department: String,
    pub reason: String,
}

/// A batch from a peer that passed [`Node::screen_from_peer`] and
/// [`ScreenedBatch::verify`], ready for [`Node::commit_from_peer`].
#[derive(Debug)]
pub struct PreparedBatch {
    through_seq: u64,
    records: Vec<Encoded>,
    refused: Vec<Refusal>,
    learned: BTreeSet<String>,
    audit: Vec<AuditEvent>,
}

impl PreparedBatch {
    /// Records and refusals it carries.
    pub fn len(&self) -> usize {
        self.records.len() + self.refused.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the batch that came next over the same link, so both are
    /// written in one transaction; the cursor moves to the later one's.
    pub fn absorb(&mut self, next: PreparedBatch) {
        self.through_seq = next.through_seq;
        self.records.extend(next.records);
        self.refused.extend(next.refused);
        self.learned.extend(next.learned);
        self.audit.extend(next.audit);
    }
}

/// A peer's batch after [`Node::screen_from_peer`], waiting for
/// [`ScreenedBatch::verify`].
pub struct ScreenedBatch {
    node: Arc<Node>,
    peer: DivisionCode,
    from: Toward,
    through_seq: u64,
    unverified: Unverified,
    refused: Vec<Refusal>,
    learned: BTreeSet<String>,
    audit: Vec<AuditEvent>,
}

impl std::fmt::Debug for ScreenedBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScreenedBatch")
            .field("peer", &self.peer)
            .field("through_seq", &self.through_seq)
            .field("records", &self.unverified.records.len())
            .field("refused", &self.refused.len())
            .finish_non_exhaustive()
    }
}

impl ScreenedBatch {
    /// The newest clock (`updated_at`) among its records.
    pub fn newest(&self) -> Option<u64> {
        self.unverified
            .records
            .iter()
            .map(|e| e.record.updated_at)
            .max()
    }

    /// Checks every record the screening left (envelope, scope, payload,
    /// then the owners' signatures). CPU work of milliseconds per 1,000
    /// records that depends on no other batch: for a blocking thread, and
    /// several batches may be verified at once.
    pub fn verify(self) -> PreparedBatch {
        let ScreenedBatch {
            node,
            peer,
            from,
            through_seq,
            unverified,
            mut refused,
            learned,
            audit,
        } = self;
        // Key material was checked when it was screened.
        let records = unverified.check(&mut refused, |r| {
            if is_key_material(r) {
                Ok(())
            } else {
                node.check_incoming(r, &peer, from)
            }
        });
        PreparedBatch {
            through_seq,
            records,
            refused,
            learned,
            audit,
        }
    }
}

/// Records whose trust lists and owners' keys were taken in, in arrival
/// order, waiting for their signature checks ([`Unverified::check`]).
struct Unverified {
    records: Vec<Encoded>,
    /// Key material refused while it was taken in, by index in `records`.
    bad_keys: HashMap<usize, String>,
    /// `None` when signatures are not checked (a knob only the link
    /// benchmark turns).
    keyring: Option<Arc<Keyring>>,
}

impl Unverified {
    /// Keeps the records that pass `screen` (the checks of envelope, scope
    /// and payload) and whose owner's signature verifies; the rest are
    /// refused, a failed signature or key with the record, its origin and
    /// the reason. CPU-bound.
    fn check(
        self,
        refused: &mut Vec<Refusal>,
        screen: impl Fn(&wire::Record) -> Result<(), String>,
    ) -> Vec<Encoded> {
        let Unverified {
            records,
            mut bad_keys,
            keyring,
        } = self;
        let signatures = match &keyring {
            Some(keyring) => keyring.verify(&records.iter().map(|e| &e.record).collect::<Vec<_>>()),
            None => vec![Ok(()); records.len()],
        };
        let mut kept = Vec::with_capacity(records.len());
        for (i, (encoded, signature)) in records.into_iter().zip(signatures).enumerate() {
            let r = &encoded.record;
            let bad_key = bad_keys.remove(&i);
            if bad_key.is_none()
                && let Err(reason) = screen(r)
            {
                refused.push(Refusal::of_encoded(&encoded, reason));
                continue;
            }
            match bad_key.map(Err).unwrap_or(signature) {
                Ok(()) => kept.push(encoded),
                Err(reason) => {
                    let id = RecordId::from_bytes(&r.id)
                        .map(|i| i.to_string())
                        .unwrap_or_else(|_| hex::encode(&r.id));
                    let reason = format!(
                        "record {id} ({}) of origin `{}`: {reason}",
                        r.kind,
                        owner_of(r)
                    );
                    refused.push(Refusal::of_encoded(&encoded, reason));
                }
            }
        }
        kept
    }
}

/// Trust lists and `NodeKey` records: taken in before the records after
/// them are verified.
fn is_key_material(r: &wire::Record) -> bool {
    (r.kind == KIND_TRUST_LIST || r.kind == KIND_NODE_KEY) && !r.deleted
}

fn owner_of(r: &wire::Record) -> String {
    r.owner.as_ref().map(|o| o.node.clone()).unwrap_or_default()
}

/// What replaying a quarantined record did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayOutcome {
    pub applied: bool,
    /// Why not, when not applied.
    pub reason: String,
}

#[derive(Debug)]
pub struct PutOutcome {
    pub stored: Stored,
    pub amendment: bool,
}

pub struct Node {
    pub code: DivisionCode,
    pub name: Option<String>,
    pub store: Arc<dyn Store>,
    pub hlc: Hlc,
    pub schemas: &'static Schemas,
    digest_key: DigestKey,
    pub metrics: Arc<Metrics>,
    pub links: LinkTable,
    pub tuning: SyncTuning,
    head: watch::Sender<u64>,
    /// The deployment CA, at the city node only: it answers certificate
    /// requests routed up from parents whose children join.
    pub issuer: std::sync::OnceLock<Arc<crate::pki::Ca>>,
    /// The trust root's key, at the city only: it issues the origin
    /// certificates of nodes that join.
    root_issuer: std::sync::RwLock<Option<Arc<crate::origin::RootIssuer>>>,
    /// This node's signing key and origin certificate.
    pub identity: Arc<Identity>,
    /// Signs own writes, in groups under load.
    signer: GroupSigner,
    /// Commits own writes, in groups under load.
    writes: GroupCommit,
    /// Every origin key this node has learned, and verified-batch cache.
    pub keyring: Arc<Keyring>,
}

impl Node {
    #[allow(clippy::too_many_arguments)]
    pub async fn new(
        code: DivisionCode,
        name: Option<String>,
        store: Arc<dyn Store>,
        digest_key: DigestKey,
        metrics: Arc<Metrics>,
        tuning: SyncTuning,
        root: TrustRoot,
        identity: Identity,
    ) -> Result<Arc<Node>, StoreError> {
        let identity = Arc::new(identity);
        let writes_to = store.clone();
        let head = store.head_seq().await?;
        metrics.head_seq.set(head as i64);
        Ok(Arc::new(Node {
            code,
            name,
            store,
            hlc: Hlc::new(),
            schemas: Schemas::global(),
            digest_key,
            metrics,
            links: LinkTable::default(),
            tuning,
            head: watch::Sender::new(head),
            issuer: std::sync::OnceLock::new(),
            root_issuer: std::sync::RwLock::new(None),
            signer: GroupSigner::start(identity.clone()),
            writes: GroupCommit::start(writes_to),
            identity,
            keyring: Arc::new(Keyring::new(root)),
        }))
    }

    /// Wakes whoever waits for new changes (link senders, watchers).
    pub fn subscribe_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Publishes changes applied outside a link session (quarantine replay).
    pub fn applied_locally(&self, report: &ApplyReport) {
        self.metrics.records_applied(
            report.applied.iter().map(|(_, r)| r.kind.as_str()),
            self.schemas,
        );
        if let Some((seq, _)) = report.applied.last() {
            self.advance_head(*seq);
        }
    }

    pub(crate) fn advance_head(&self, seq: u64) {
        self.head.send_if_modified(|h| {
            if seq > *h {
                *h = seq;
                true
            } else {
                false
            }
        });
        self.metrics.head_seq.set(*self.head.borrow() as i64);
    }

    /// The keyed digest of a resident ID number, as used for matching.
    pub fn id_digest(&self, id: &ResidentId) -> String {
        self.digest_key.digest(id)
    }

    // === local writes ===

    /// A put from the local API.
    pub async fn put(&self, input: PutInput) -> Result<PutOutcome, NodeError> {
        if !self.schemas.is_canonical(&input.kind) || INTERNAL_KINDS.contains(&input.kind.as_str())
        {
            let known = self
                .schemas
                .canonical_kinds()
                .into_iter()
                .filter(|k| !INTERNAL_KINDS.contains(&k.as_str()))
                .collect();
            return Err(NodeError::UnknownKind {
                kind: input.kind,
                known,
            });
        }
        if !input.delete {
            self.schemas
                .validate_payload(&input.kind, &input.payload)
                .map_err(|e| NodeError::Invalid {
                    field: "payload",
                    reason: e.to_string(),
                })?;
            if input.payload.len() > MAX_PAYLOAD_BYTES {
                return Err(NodeError::Invalid {
                    field: "payload",
                    reason: format!(
                        "{} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit",
                        input.payload.len()
                    ),
                });
            }
        }
        let existing = if input.id.is_empty() {
            None
        } else {
            RecordId::from_bytes(&input.id).map_err(|e| NodeError::Invalid {
                field: "id",
                reason: e.to_string(),
            })?;
            self.store.get(&input.id).await?
        };
        if let Some(existing) = &existing {
            let owner = owner_code(&existing.record).map_err(|reason| NodeError::Invalid {
                field: "id",
                reason,
            })?;
            if owner != self.code {
                return self.send_amendment(input, existing, owner).await;
            }
            if existing.record.kind != input.kind {
                return Err(NodeError::Invalid {
                    field: "kind",
                    reason: format!(
                        "record is a `{}`, not a `{}`",
                        existing.record.kind, input.kind
                    ),
                });
            }
        }
        let keys = if input.delete {
            Vec::new()
        } else {
            self.natural_keys(&input.kind, &input.payload)?
        };
        let scope = match &input.scope {
            Some(s) => Scope::from_wire(&self.code, Some(s)),
            None => match &existing {
                Some(e) => Scope::from_wire(&self.code, e.record.scope.as_ref()),
                None => Ok(default_scope(&self.code)),
            },
        }
        .map_err(|e| NodeError::Invalid {
            field: "scope",
            reason: e.to_string(),
        })?;
        let reach = match &existing {
            Some(e) => Scope::from_wire(
                &self.code,
                e.record.reach.as_ref().or(e.record.scope.as_ref()),
            )
            .map_err(|e| NodeError::Invalid {
                field: "scope",
                reason: e.to_string(),
            })?
            .union(&scope),
            None => scope.clone(),
        };
        let id = if input.id.is_empty() {
            RecordId::new().as_bytes().to_vec()
        } else {
            input.id
        };
        let payload = if input.delete {
            Vec::new()
        } else {
            input.payload
        };
        let mut record = self.own_record(
            id,
            input.kind,
            input.department,
            &scope,
            &reach,
            payload,
            keys,
        );
        record.deleted = input.delete;
        let audit = AuditNote::write(api_actor(&record), record.deleted);
        let stored = self
            .put_own(record, input.expected_version, true, audit)
            .await?;
        self.metrics
            .record_applied(&stored.record.kind, self.schemas);
        Ok(PutOutcome {
            stored,
            amendment: false,
        })
    }

    /// A new version of a record this node owns, before the store assigns its
    /// version: the one place owner-created envelopes are made.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn own_record(
        &self,
        id: Vec<u8>,
        kind: String,
        department: String,
        scope: &Scope,
        reach: &Scope,
        payload: Vec<u8>,
        keys: Vec<wire::NaturalKey>,
    ) -> wire::Record {
        wire::Record {
            id,
            kind,
            owner: Some(wire::Owner {
                node: self.code.to_string(),
                department,
            }),
            version: 0,
            updated_at: self.hlc.now().as_u64(),
            scope: Some(scope.to_wire()),
            deleted: false,
            payload: payload.into(),
            keys,
            reach: Some(reach.to_wire()),
            withdrawn: false,
            proof: Default::default(),
            content_digest: Vec::new(),
        }
    }

    /// Writes a record this node owns: the version it will have is fixed
    /// by `expected_version` (the store refuses any other), so it is signed
    /// first and stored with its proof. Every write of an own record goes
    /// through here.
    pub(crate) async fn put_own(
        &self,
        mut record: wire::Record,
        expected_version: u64,
        unique_keys: bool,
        audit: AuditNote,
    ) -> Result<Stored, NodeError> {
        record.version = expected_version + 1;
        let record = self
            .signer
            .sign(record)
            .await
            .map_err(|e| NodeError::Invalid {
                field: "record",
                reason: e.to_string(),
            })?;
        let stored = self
            .writes
            .put(LocalWrite {
                record,
                expected_version,
                unique_keys,
                audit,
            })
            .await?;
        self.advance_head(stored.seq);
        Ok(stored)
    }

    /// Natural keys the node derives from a payload: for a resident, the
    /// keyed digest of a valid ID number (the raw number never leaves the
    /// record's personal field).
    fn natural_keys(&self, kind: &str, payload: &[u8]) -> Result<Vec<wire::NaturalKey>, NodeError> {
        if kind != KIND_RESIDENT {
            return Ok(Vec::new());
        }
        let resident = civil::v1::Resident::decode(payload).map_err(|e| NodeError::Invalid {
            field: "payload",
            reason: e.to_string(),
        })?;
        if resident.id_number.is_empty() {
            return Err(NodeError::Invalid {
                field: "id_number",
                reason: "a resident needs an ID number (GB 11643)".into(),
            });
        }
        let id = ResidentId::parse(&resident.id_number).map_err(|e| NodeError::Invalid {
            field: "id_number",
            reason: e.to_string(),
        })?;
        Ok(vec![wire::NaturalKey {
            name: KEY_ID_DIGEST.into(),
            value: self.id_digest(&id),
        }])
    }

    async fn send_amendment(
        &self,
        input: PutInput,
        target: &Stored,
        owner: DivisionCode,
    ) -> Result<PutOutcome, NodeError> {
        let scope =
            route::point_to_point(&self.code, &owner).ok_or_else(|| NodeError::Invalid {
                field: "id",
                reason: format!("owner `{owner}` is not in this deployment"),
            })?;
        let amendment = wire::Amendment {
            target_id: target.record.id.clone(),
            target_kind: target.record.kind.clone(),
            target_owner: owner.to_string(),
            base_version: if input.expected_version == 0 {
                target.record.version
            } else {
                input.expected_version
            },
            payload: input.payload,
            delete: input.delete,
            reason: input.reason,
        };
        let keys = vec![wire::NaturalKey {
            name: KEY_TARGET_OWNER.into(),
            value: owner.to_string(),
        }];
        let record = self.own_record(
            RecordId::new().as_bytes().to_vec(),
            KIND_AMENDMENT.into(),
            input.department,
            &scope,
            &scope,
            amendment.encode_to_vec(),
            keys,
        );
        let audit = AuditNote::write(api_actor(&record), false);
        let stored = self.put_own(record, 0, false, audit).await?;
        info!(target = %RecordId::from_bytes(&target.record.id).map(|i| i.to_string()).unwrap_or_default(), %owner, "amendment routed to owner");
        Ok(PutOutcome {
            stored,
            amendment: true,
        })
    }

    /// Applies every amendment addressed to this node that has no answer
    /// yet. Runs after each applied batch and once at start, so an amendment
    /// whose processing a crash interrupted is answered on restart.
    pub async fn process_amendments(
        &self,
        candidates: Option<&[wire::Record]>,
    ) -> Result<(), StoreError> {
        let pending: Vec<wire::Record> = match candidates {
            Some(records) => records
                .iter()
                .filter(|r| r.kind == KIND_AMENDMENT && !r.deleted)
                .cloned()
                .collect(),
            None => self
                .store
                .lookup(KIND_AMENDMENT, KEY_TARGET_OWNER, self.code.as_str())
                .await?
                .into_iter()
                .map(|s| s.record)
                .collect(),
        };
        for record in pending {
            let Ok(amendment) = wire::Amendment::decode(&record.payload[..]) else {
                continue;
            };
            if amendment.target_owner != self.code.as_str() {
                continue;
            }
            let answered = self
                .store
                .lookup(
                    KIND_AMENDMENT_RESULT,
                    KEY_AMENDMENT_ID,
                    &hex::encode(&record.id),
                )
                .await?;
            if !answered.is_empty() {
                continue;
            }
            let requester = match owner_code(&record) {
                Ok(c) => c,
                Err(_) => continue,
            };
            let outcome = self.apply_amendment(&amendment).await;
            let (accepted, new_version, reason) = match outcome {
                Ok(v) => (true, v, String::new()),
                Err(e) => (false, 0, e.to_string()),
            };
            info!(%requester, accepted, %reason, "amendment answered");
            let Some(scope) = route::point_to_point(&self.code, &requester) else {
                continue;
            };
            let result = wire::AmendmentResult {
                amendment_id: record.id.clone(),
                target_id: amendment.target_id.clone(),
                accepted,
                new_version,
                reason,
            };
            let keys = vec![wire::NaturalKey {
                name: KEY_AMENDMENT_ID.into(),
                value: hex::encode(&record.id),
            }];
            let answer = self.own_record(
                RecordId::new().as_bytes().to_vec(),
                KIND_AMENDMENT_RESULT.into(),
                String::new(),
                &scope,
                &scope,
                result.encode_to_vec(),
                keys,
            );
            match self
                .put_own(answer, 0, false, AuditNote::write("node", false))
                .await
            {
                Ok(_) => {}
                Err(NodeError::Store(e)) => return Err(e),
                Err(e) => warn!(%requester, error = %e, "cannot answer an amendment"),
            }
        }
        Ok(())
    }

    async fn apply_amendment(&self, amendment: &wire::Amendment) -> Result<u64, NodeError> {
        let target = self
            .store
            .get(&amendment.target_id)
            .await?
            .ok_or_else(|| NodeError::NotFound(hex::encode(&amendment.target_id)))?;
        if target.record.version != amendment.base_version {
            return Err(NodeError::Invalid {
                field: "base_version",
                reason: format!(
                    "the record moved on to version {} since version {} the amendment was based on",
                    target.record.version, amendment.base_version
                ),
            });
        }
        let outcome = self
            .put(PutInput {
                id: amendment.target_id.clone(),
                kind: target.record.kind.clone(),
                payload: amendment.payload.clone(),
                expected_version: target.record.version,
                scope: None,
                delete: amendment.delete,
                department: target
                    .record
                    .owner
                    .as_ref()
                    .map(|o| o.department.clone())
                    .unwrap_or_default(),
                reason: String::new(),
            })
            .await?;
        Ok(outcome.stored.record.version)
    }

    // === records from peers ===

    /// Checks one record that arrived from `peer` over a link in direction
    /// `from`. The error is the quarantine reason.
    pub fn check_incoming(
        &self,
        r: &wire::Record,
        peer: &DivisionCode,
        from: Toward,
    ) -> Result<(), String> {
        let id = RecordId::from_bytes(&r.id).map_err(|e| format!("invalid id: {e}"))?;
        let what = |reason: String| {
            format!(
                "record {id} ({}): {reason}",
                if r.kind.is_empty() {
                    "no kind"
                } else {
                    &r.kind
                }
            )
        };
        if !valid_kind_name(&r.kind) {
            return Err(what(format!(
                "kind `{}` is not a protobuf message name such as `civil.v1.Resident`",
                r.kind
            )));
        }
        let owner = owner_code(r).map_err(&what)?;
        if r.version == 0 {
            return Err(what("version 0; versions start at 1".into()));
        }
        let scope = Scope::from_wire(&owner, r.scope.as_ref()).map_err(|e| what(e.to_string()))?;
        let reach = Scope::from_wire(&owner, r.reach.as_ref().or(r.scope.as_ref()))
            .map_err(|e| what(format!("reach: {e}")))?;
        if !scope.within(&reach) {
            return Err(what("reach does not cover the scope".into()));
        }
        route::check_arrival(&reach, &owner, &self.code, peer, from)
            .map_err(|e| what(e.to_string()))?;
        if r.withdrawn && !r.deleted {
            return Err(what("a withdrawal must also be a tombstone".into()));
        }
        if r.deleted && !r.payload.is_empty() {
            return Err(what("a tombstone carries no payload".into()));
        }
        if r.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(what(format!(
                "payload of {} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit",
                r.payload.len()
            )));
        }
        if !r.deleted && self.schemas.is_canonical(&r.kind) {
            self.check_payload(&r.kind, &r.payload).map_err(what)?;
        }
        if let Err(e) = self.hlc.observe(HlcTimestamp::from_u64(r.updated_at)) {
            warn!(record = %id, %owner, error = %e, "record clock ahead of ours; not adopted");
        }
        Ok(())
    }

    /// Checks the payload of a canonical kind. Kinds with generated structs
    /// decode through them (several times faster than the reflective
    /// decoder, and this runs for every record of every batch); the rest
    /// through the schema.
    fn check_payload(&self, kind: &str, payload: &[u8]) -> Result<(), String> {
        fn decodes<M: Message + Default>(kind: &str, payload: &[u8]) -> Result<M, String> {
            M::decode(payload).map_err(|e| format!("payload is not a valid `{kind}`: {e}"))
        }
        match kind {
            KIND_RESIDENT => {
                let resident: civil::v1::Resident = decodes(kind, payload)?;
                if !resident.id_number.is_empty() {
                    ResidentId::parse(&resident.id_number)
                        .map_err(|e| format!("id_number: {e}"))?;
                }
            }
            "civil.v1.Household" => drop(decodes::<civil::v1::Household>(kind, payload)?),
            "service.v1.Application" => drop(decodes::<service::v1::Application>(kind, payload)?),
            "gov.v1.Notice" => drop(decodes::<gov::v1::Notice>(kind, payload)?),
            KIND_AMENDMENT => drop(decodes::<wire::Amendment>(kind, payload)?),
            KIND_AMENDMENT_RESULT => drop(decodes::<wire::AmendmentResult>(kind, payload)?),
            crate::join::KIND_CERT_REQUEST => {
                drop(decodes::<wire::CertificateRequest>(kind, payload)?)
            }
            crate::join::KIND_CERT_ISSUED => {
                drop(decodes::<wire::CertificateIssued>(kind, payload)?)
            }
            _ => self
                .schemas
                .validate_payload(kind, payload)
                .map_err(|e| e.to_string())?,
        }
        Ok(())
    }

    /// The checks of a peer's batch that must run in arrival order: the
    /// trust lists and owners' keys it carries are checked and taken in (a
    /// node's first batch brings its key, and a revocation applies to the
    /// records after it), and keys of owners not known yet are read from
    /// the store. The rest, [`ScreenedBatch::verify`], is CPU work that
    /// depends on no other batch, so a link's receiver checks several
    /// batches at once.
    pub async fn screen_from_peer(
        self: &Arc<Self>,
        peer: &DivisionCode,
        from: Toward,
        batch: wire::Batch,
    ) -> Result<ScreenedBatch, StoreError> {
        // Key material is checked here, before it is taken in; everything
        // else is checked with the signatures.
        let mut refused = Vec::new();
        let mut records = Vec::with_capacity(batch.records.len());
        for (i, bytes) in batch.records.into_iter().enumerate() {
            let r = match Encoded::received(bytes.clone()) {
                Ok(r) => r,
                Err(e) => {
                    refused.push(Refusal::undecodable(
                        &bytes,
                        format!(
                            "record {i} of the batch through seq {} is not a tiersync.v1.Record: {e}",
                            batch.through_seq
                        ),
                    ));
                    continue;
                }
            };
            if is_key_material(&r.record)
                && let Err(reason) = self.check_incoming(&r.record, peer, from)
            {
                refused.push(Refusal::of_encoded(&r, reason));
                continue;
            }
            records.push(r);
        }
        let mut learned = BTreeSet::new();
        let mut audit = Vec::new();
        let unverified = self
            .take_in_origins(records, &mut learned, &mut audit)
            .await?;
        Ok(ScreenedBatch {
            node: self.clone(),
            peer: peer.clone(),
            from,
            through_seq: batch.through_seq,
            unverified,
            refused,
            learned,
            audit,
        })
    }

    /// Writes a prepared batch with the cursor in one transaction, then
    /// does what applied records call for (amendments, certificate
    /// requests, records waiting for a key that just arrived).
    pub async fn commit_from_peer(
        &self,
        peer: &DivisionCode,
        peer_epoch: &str,
        prepared: PreparedBatch,
    ) -> Result<ApplyReport, StoreError> {
        let PreparedBatch {
            through_seq,
            records,
            refused,
            learned,
            audit,
        } = prepared;
        let report = self
            .store
            .apply(ApplyBatch {
                via: peer.to_string(),
                cursor: Some((
                    peer.clone(),
                    Cursor {
                        applied_through: through_seq,
                        peer_epoch: peer_epoch.to_owned(),
                    },
                )),
                records,
                refused,
                audit,
            })
            .await?;
        for refusal in &report.refused {
            warn!(peer = %peer, kind = %refusal.kind, origin = %refusal.origin, reason = %refusal.reason, "record rejected");
            self.metrics.record_rejected(&refusal.kind, self.schemas);
        }
        self.metrics.records_applied(
            report.applied.iter().map(|(_, r)| r.kind.as_str()),
            self.schemas,
        );
        if let Some((seq, _)) = report.applied.last() {
            self.advance_head(*seq);
        }
        if report.applied.iter().any(|(_, r)| r.kind == KIND_AMENDMENT) {
            let applied: Vec<wire::Record> =
                report.applied.iter().map(|(_, r)| r.clone()).collect();
            self.process_amendments(Some(&applied)).await?;
        }
        if report
            .applied
            .iter()
            .any(|(_, r)| r.kind == crate::join::KIND_CERT_REQUEST)
        {
            let applied: Vec<wire::Record> =
                report.applied.iter().map(|(_, r)| r.clone()).collect();
            crate::join::issue_pending(self, Some(&applied)).await?;
        }
        if !learned.is_empty() {
            self.replay_unknown_signers(&learned).await?;
        }
        Ok(report)
    }

    // === signed origin ===

    /// Keeps the records whose owner's signature verifies; the rest are
    /// refused with the record, its origin and the reason. Keys in
    /// `NodeKey` records of the batch are learned first (a node's first
    /// batch brings its key), then keys of owners not known yet are read from
    /// the store. `learned` gets the owners whose keys were new.
    pub(crate) async fn verify_origins(
        &self,
        records: Vec<Encoded>,
        refused: &mut Vec<Refusal>,
        learned: &mut BTreeSet<String>,
        audit: &mut Vec<AuditEvent>,
    ) -> Result<Vec<Encoded>, StoreError> {
        let unverified = self.take_in_origins(records, learned, audit).await?;
        // Hashing a batch is milliseconds of CPU: on the blocking pool.
        let (kept, failed) = tokio::task::spawn_blocking(move || {
            let mut failed = Vec::new();
            // The caller has checked the rest.
            let kept = unverified.check(&mut failed, |_| Ok(()));
            (kept, failed)
        })
        .await
        .expect("signature checks do not panic");
        refused.extend(failed);
        Ok(kept)
    }

    /// The in-order half of [`Node::verify_origins`]: trust lists and
    /// `NodeKey` records of the batch are checked and taken in, and keys of
    /// owners not known yet are read from the store. Nothing is hashed yet.
    async fn take_in_origins(
        &self,
        records: Vec<Encoded>,
        learned: &mut BTreeSet<String>,
        audit: &mut Vec<AuditEvent>,
    ) -> Result<Unverified, StoreError> {
        let keyring = self.tuning.verify_origin.then(|| self.keyring.clone());
        let mut bad_keys: HashMap<usize, String> = HashMap::new();
        if keyring.is_none() || records.is_empty() {
            return Ok(Unverified {
                records,
                bad_keys,
                keyring,
            });
        }
        // Trust lists first: a revocation applies to the records after it.
        for (i, r) in records.iter().map(|e| &e.record).enumerate() {
            if r.kind == KIND_TRUST_LIST && !r.deleted {
                match self.keyring.check_trust_list(r) {
                    Err(reason) => {
                        bad_keys.insert(i, reason);
                    }
                    Ok(checked) => {
                        let held = self.keyring.trust_list().map_or(0, |b| b.sequence);
                        if checked.body.sequence < held {
                            bad_keys.insert(
                                i,
                                format!(
                                    "trust list sequence {} is older than the {held} held here",
                                    checked.body.sequence
                                ),
                            );
                        } else {
                            let summary = trust_list_summary(&checked.body);
                            if self.adopt_trust_list(checked) {
                                // audited in the batch's transaction
                                audit.push(AuditEvent {
                                    actor: "node".into(),
                                    action: "trust".into(),
                                    kind: r.kind.clone(),
                                    record_id: crate::store::id_text(&r.id),
                                    detail: format!("adopted {summary} of `{}`", owner_of(r)),
                                });
                            }
                        }
                    }
                }
            }
        }
        for (i, r) in records.iter().map(|e| &e.record).enumerate() {
            if r.kind == KIND_NODE_KEY && !r.deleted {
                match self.keyring.learn(r) {
                    Ok(true) => {
                        learned.insert(owner_of(r));
                    }
                    Ok(false) => {}
                    Err(reason) => {
                        bad_keys.insert(i, reason);
                    }
                }
            }
        }
        let unknown: BTreeSet<String> = records
            .iter()
            .map(|e| owner_of(&e.record))
            .filter(|o| !self.keyring.knows(o))
            .collect();
        for owner in unknown {
            for held in self.store.lookup(KIND_NODE_KEY, KEY_NODE, &owner).await? {
                if let Err(reason) = self.keyring.learn(&held.record) {
                    warn!(%owner, %reason, "stored NodeKey record unusable");
                }
            }
        }
        Ok(Unverified {
            records,
            bad_keys,
            keyring,
        })
    }

    /// Publishes this node's origin certificate as its `NodeKey` record (to
    /// the whole deployment) unless the record already lists it; earlier
    /// certificates stay listed so older records still verify.
    pub async fn publish_own_key(&self) -> Result<(), NodeError> {
        let held = self
            .store
            .lookup(KIND_NODE_KEY, KEY_NODE, self.code.as_str())
            .await?
            .into_iter()
            .find(|s| owner_code(&s.record).as_ref() == Ok(&self.code));
        let mut node_key = match &held {
            Some(s) => wire::NodeKey::decode(&s.record.payload[..]).unwrap_or_default(),
            None => wire::NodeKey::default(),
        };
        let mine = self.identity.cert_der().to_vec();
        if !node_key.certificates.contains(&mine) {
            node_key.certificates.push(mine);
            let stored = self
                .put_everywhere(
                    held.as_ref(),
                    KIND_NODE_KEY,
                    node_key.encode_to_vec(),
                    KEY_NODE,
                    AuditNote::write("node", false),
                )
                .await?;
            info!(
                certificates = node_key.certificates.len(),
                "origin key published"
            );
            let _ = self.keyring.learn(&stored.record);
        } else if let Some(s) = &held {
            let _ = self.keyring.learn(&s.record);
        }
        Ok(())
    }

    /// Why `peer` may no longer link to this node, if the trust list held
    /// revokes it as of now.
    pub fn revoked_now(&self, peer: &DivisionCode) -> Option<String> {
        let revocation = self.keyring.revocation(peer.as_str())?;
        (crate::status::now_ms() >= revocation.effective_at_ms).then(|| {
            format!(
                "node `{peer}` is revoked in trust list {} ({}, from {} ms since the epoch)",
                self.keyring.trust_list().map_or(0, |b| b.sequence),
                revocation.reason,
                revocation.effective_at_ms
            )
        })
    }

    /// Adopts `body` if it is newer than the list held; returns whether it
    /// was.
    fn adopt_trust_list(&self, list: crate::origin::CheckedTrustList) -> bool {
        let (sequence, revoked) = (list.body.sequence, list.body.revocations.len());
        let adopted = self.keyring.adopt(list);
        if adopted {
            info!(sequence, revoked, "trust list adopted");
            self.refresh_trust_metrics();
        }
        adopted
    }

    /// Sets the trust list gauges (staleness moves with the clock, so this
    /// also runs periodically).
    pub fn refresh_trust_metrics(&self) {
        let status = self.keyring.trust_status(crate::status::now_ms());
        self.metrics.trust_list_sequence.set(status.sequence as i64);
        self.metrics.trust_list_stale.set(status.stale as i64);
        self.metrics
            .trust_list_next_update
            .set(status.next_update_ms / 1000);
    }

    /// Adopts the trust list held in the store (at start).
    pub async fn load_trust_list(&self) -> Result<(), StoreError> {
        let city = city_of(&self.code);
        for held in self
            .store
            .lookup(KIND_TRUST_LIST, KEY_TRUST_LIST, city.as_str())
            .await?
        {
            match self.keyring.check_trust_list(&held.record) {
                Ok(list) => {
                    self.adopt_trust_list(list);
                }
                Err(reason) => warn!(%reason, "stored trust list unusable"),
            }
        }
        self.refresh_trust_metrics();
        Ok(())
    }

    /// At the city: publishes a new trust list (the next sequence, valid
    /// for [`TRUST_LIST_VALIDITY`]) with `revoke` added.
    pub async fn publish_trust_list(
        &self,
        revoke: Option<wire::Revocation>,
    ) -> Result<wire::TrustListBody, NodeError> {
        let issuer = self.current_root_issuer()?;
        self.publish_list(&issuer, revoke, Vec::new()).await
    }

    /// At the city: rolls the trust root over. A successor root with a fresh
    /// key (written to `key_out`, which must not exist) is announced in a
    /// list the current root signs, then takes over: the next list is signed
    /// by it and carries the chain of endorsements back to the first root,
    /// and origin certificates are issued by it from now on. The operator
    /// points trust.root_key at `key_out` before the next restart.
    pub async fn rollover_root(
        &self,
        key_out: &std::path::Path,
    ) -> Result<wire::TrustListBody, NodeError> {
        let current = self.current_root_issuer()?;
        let (next, key_pem) = current
            .successor(&self.code)
            .map_err(|e| NodeError::Invalid {
                field: "trust",
                reason: e.to_string(),
            })?;
        crate::pki::write_new_private(key_out, &key_pem).map_err(|e| NodeError::Invalid {
            field: "key_out",
            reason: format!("cannot write {}: {e}", key_out.display()),
        })?;
        self.publish_list(&current, None, next.cert_der().to_vec())
            .await?;
        let next = Arc::new(next);
        *self.root_issuer.write().expect("root issuer lock") = Some(next.clone());
        let body = self.publish_list(&next, None, Vec::new()).await?;
        info!(key = %key_out.display(), "trust root rolled over; point trust.root_key at the new key");
        Ok(body)
    }

    /// The trust root this node issues with, if it is the city.
    pub fn root_issuer(&self) -> Option<Arc<crate::origin::RootIssuer>> {
        self.root_issuer.read().expect("root issuer lock").clone()
    }

    pub fn set_root_issuer(&self, issuer: crate::origin::RootIssuer) {
        *self.root_issuer.write().expect("root issuer lock") = Some(Arc::new(issuer));
    }

    fn current_root_issuer(&self) -> Result<Arc<crate::origin::RootIssuer>, NodeError> {
        self.root_issuer().ok_or_else(|| NodeError::Invalid {
            field: "trust",
            reason: format!(
                "node `{}` holds no trust root key (trust.root_key, the city only), so it cannot publish trust lists",
                self.code
            ),
        })
    }

    /// Signs and publishes the next trust list with `issuer`.
    async fn publish_list(
        &self,
        issuer: &crate::origin::RootIssuer,
        revoke: Option<wire::Revocation>,
        successor_root: Vec<u8>,
    ) -> Result<wire::TrustListBody, NodeError> {
        let held = self
            .store
            .lookup(KIND_TRUST_LIST, KEY_TRUST_LIST, self.code.as_str())
            .await?
            .into_iter()
            .next();
        let previous = match &held {
            Some(s) => self
                .keyring
                .check_trust_list(&s.record)
                .ok()
                .map(|c| c.body),
            None => None,
        };
        let now = crate::status::now_ms();
        let mut revocations = previous
            .as_ref()
            .map(|b| b.revocations.clone())
            .unwrap_or_default();
        if let Some(r) = revoke {
            DivisionCode::parse(&r.node).map_err(|e| NodeError::Invalid {
                field: "node",
                reason: e.to_string(),
            })?;
            if r.node == self.code.as_str() {
                return Err(NodeError::Invalid {
                    field: "node",
                    reason: "the city cannot revoke itself".into(),
                });
            }
            if r.reason.is_empty() {
                return Err(NodeError::Invalid {
                    field: "reason",
                    reason: "say why, e.g. keyCompromise or cessationOfOperation".into(),
                });
            }
            revocations.push(wire::Revocation {
                effective_at_ms: if r.effective_at_ms == 0 {
                    now
                } else {
                    r.effective_at_ms
                },
                revoked_at_ms: now,
                ..r
            });
        }
        let body = wire::TrustListBody {
            sequence: previous.as_ref().map_or(0, |b| b.sequence) + 1,
            issued_at_ms: now,
            next_update_ms: now + TRUST_LIST_VALIDITY.as_millis() as i64,
            revocations,
            successor_root,
        };
        let list = issuer.sign_trust_list(&body);
        let audit = AuditNote::event("trust", format!("published {}", trust_list_summary(&body)));
        let stored = self
            .put_everywhere(
                held.as_ref(),
                KIND_TRUST_LIST,
                list.encode_to_vec(),
                KEY_TRUST_LIST,
                audit,
            )
            .await?;
        info!(
            sequence = body.sequence,
            revoked = body.revocations.len(),
            "trust list published"
        );
        let checked = self
            .keyring
            .check_trust_list(&stored.record)
            .map_err(|reason| NodeError::Invalid {
                field: "trust",
                reason: format!("the list just signed does not check out: {reason}"),
            })?;
        self.adopt_trust_list(checked);
        Ok(body)
    }

    /// Writes this node's one record of `kind` (found by the natural key
    /// `key_name` = this node's code) for the whole deployment: a new version
    /// of `held`, or a new record.
    async fn put_everywhere(
        &self,
        held: Option<&Stored>,
        kind: &str,
        payload: Vec<u8>,
        key_name: &str,
        audit: AuditNote,
    ) -> Result<Stored, NodeError> {
        let everywhere = Scope {
            up_to: Some(Tier::City),
            down_to: vec![city_of(&self.code)],
            departments: Vec::new(),
        };
        let (id, expected) = match held {
            Some(s) => (s.record.id.clone(), s.record.version),
            None => (RecordId::new().as_bytes().to_vec(), 0),
        };
        let record = self.own_record(
            id,
            kind.into(),
            String::new(),
            &everywhere,
            &everywhere,
            payload,
            vec![wire::NaturalKey {
                name: key_name.into(),
                value: self.code.to_string(),
            }],
        );
        self.put_own(record, expected, false, audit).await
    }

    /// Replays quarantined records that were refused because their owner's
    /// key was unknown, now that keys of `owners` arrived.
    async fn replay_unknown_signers(&self, owners: &BTreeSet<String>) -> Result<(), StoreError> {
        let waiting: Vec<u64> = self
            .store
            .quarantine_list(10_000)
            .await?
            .into_iter()
            .filter(|q| owners.contains(&q.origin) && q.reason.contains(UNKNOWN_SIGNER))
            .map(|q| q.qid)
            .collect();
        for qid in waiting {
            match self.replay_quarantined(qid).await {
                Ok(outcome) if outcome.applied => info!(
                    qid,
                    "quarantined record applied once its signer's key arrived"
                ),
                Ok(outcome) => {
                    info!(qid, reason = %outcome.reason, "quarantined record still refused")
                }
                Err(NodeError::Store(e)) => return Err(e),
                Err(e) => warn!(qid, error = %e, "replay failed"),
            }
        }
        Ok(())
    }

    /// Re-checks a quarantined record (scope, origin, signature) and applies
    /// it if it now passes; closes the entry if it applied or a newer version
    /// is held.
    pub async fn replay_quarantined(&self, qid: u64) -> Result<ReplayOutcome, NodeError> {
        let row = self
            .store
            .quarantine_get(qid)
            .await?
            .ok_or_else(|| NodeError::NotFound(format!("quarantine entry {qid}")))?;
        let refuse = |reason: String| ReplayOutcome {
            applied: false,
            reason,
        };
        let encoded = match Encoded::received(row.body.into()) {
            Ok(r) => r,
            Err(e) => return Ok(refuse(format!("quarantined body does not decode: {e}"))),
        };
        let peer = match DivisionCode::parse(&row.peer) {
            Ok(p) => p,
            Err(e) => return Ok(refuse(format!("quarantine entry {qid} has no peer: {e}"))),
        };
        let from = if self.code.parent().as_ref() == Some(&peer) {
            Toward::Parent
        } else {
            Toward::Child
        };
        if let Err(reason) = self.check_incoming(&encoded.record, &peer, from) {
            return Ok(refuse(reason));
        }
        let mut refused = Vec::new();
        let mut learned = BTreeSet::new();
        let mut audit = Vec::new();
        let mut records = self
            .verify_origins(vec![encoded], &mut refused, &mut learned, &mut audit)
            .await?;
        if let Some(refusal) = refused.pop() {
            return Ok(refuse(refusal.reason));
        }
        let encoded = records.pop().expect("one record in, one out");
        let record = &encoded.record;
        if let Some(held) = self.store.get(&record.id).await?
            && (held.record.version, held.record.withdrawn) >= (record.version, record.withdrawn)
        {
            self.store.quarantine_resolve(qid).await?;
            self.metrics.quarantined.dec();
            return Ok(refuse(format!(
                "superseded: version {} is already held; entry closed",
                held.record.version
            )));
        }
        let report = self
            .store
            .apply(ApplyBatch {
                via: row.peer.clone(),
                cursor: None,
                records: vec![encoded],
                refused: vec![],
                audit,
            })
            .await?;
        if let Some(refusal) = report.refused.first() {
            return Ok(refuse(refusal.reason.clone()));
        }
        self.store.quarantine_resolve(qid).await?;
        self.metrics.quarantined.dec();
        self.applied_locally(&report);
        Ok(ReplayOutcome {
            applied: true,
            reason: String::new(),
        })
    }

    // === reads ===

    /// Records that `department` read a record (for the adapters), in the
    /// audit log's own transaction.
    pub async fn audit_read(
        &self,
        department: &str,
        kind: &str,
        record_id: &[u8],
        purpose: &str,
    ) -> Result<crate::audit::AuditEntry, NodeError> {
        if department.is_empty() {
            return Err(NodeError::Invalid {
                field: "department",
                reason: "a read is audited under the department that made it; name it".into(),
            });
        }
        Ok(self
            .store
            .audit_append(AuditEvent {
                actor: department.to_owned(),
                action: "read".into(),
                kind: kind.to_owned(),
                record_id: if record_id.is_empty() {
                    String::new()
                } else {
                    crate::store::id_text(record_id)
                },
                detail: purpose.to_owned(),
            })
            .await?)
    }

    /// A record as a local reader may see it: masked unless this node owns it.
    pub fn for_reader(&self, mut record: wire::Record) -> wire::Record {
        let owned_here = record
            .owner
            .as_ref()
            .is_some_and(|o| o.node == self.code.as_str());
        if !owned_here && record.kind == KIND_AMENDMENT && !record.payload.is_empty() {
            // An amendment carries a whole encoded target record: mask that
            // by the target's kind.
            record.payload = match wire::Amendment::decode(&record.payload[..]) {
                Ok(mut a) => {
                    if !a.payload.is_empty() {
                        a.payload = self
                            .schemas
                            .mask(&a.target_kind, &a.payload)
                            .unwrap_or_default();
                    }
                    a.encode_to_vec().into()
                }
                Err(_) => Default::default(),
            };
            return record;
        }
        if !owned_here && !record.payload.is_empty() && self.schemas.is_canonical(&record.kind) {
            match self.schemas.mask(&record.kind, &record.payload) {
                Ok(masked) => record.payload = masked.into(),
                // Never hand out what could not be masked.
                Err(_) => record.payload = Default::default(),
            }
        }
        record
    }
}

/// The scope a record gets when the writer names none: shared up to the city,
/// down to nobody.
/// The audit actor of a write through the local API: the record's
/// department, or `local-api`.
fn api_actor(record: &wire::Record) -> String {
    match record.owner.as_ref().map(|o| o.department.as_str()) {
        Some(d) if !d.is_empty() => d.to_owned(),
        _ => "local-api".into(),
    }
}

/// A trust list as an audit detail: its sequence and revocations.
fn trust_list_summary(body: &wire::TrustListBody) -> String {
    let revoked = if body.revocations.is_empty() {
        "none".to_owned()
    } else {
        body.revocations
            .iter()
            .map(|r| format!("{} ({})", r.node, r.reason))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "trust list sequence {}; revocations: {revoked}",
        body.sequence
    )
}

fn default_scope(_owner: &DivisionCode) -> Scope {
    Scope::up_to(tiersync_proto::types::Tier::City)
}

/// The city a code belongs to: its root ancestor.
pub(crate) fn city_of(code: &DivisionCode) -> DivisionCode {
    let mut c = code.clone();
    while let Some(p) = c.parent() {
        c = p;
    }
    c
}

pub(crate) fn owner_code(r: &wire::Record) -> Result<DivisionCode, String> {
    let owner = r.owner.as_ref().ok_or("no owner")?;
    DivisionCode::parse(&owner.node).map_err(|e| format!("owner: {e}"))
}

fn valid_kind_name(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= 200
        && kind.contains('.')
        && kind.split('.').all(|part| {
            !part.is_empty()
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !part.starts_with(|c: char| c.is_ascii_digit())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn amendments_are_masked_by_their_target_kind() {
        let dir = tempfile::tempdir().unwrap();
        let code = DivisionCode::parse("5111").unwrap();
        let store = Arc::new(
            crate::store::sqlite::SqliteStore::open(&dir.path().join("n.db"), &code)
                .await
                .unwrap(),
        );
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry));
        let key = DigestKey::from_bytes(&[7; 32]).unwrap();
        let (root, identity) = Identity::generate_for_tests(&code);
        let node = Node::new(
            code,
            None,
            store,
            key,
            metrics,
            SyncTuning::default(),
            root,
            identity,
        )
        .await
        .unwrap();
        let resident = civil::v1::Resident {
            name: "张三丰".into(),
            id_number: "11010519491231002X".into(),
            ..Default::default()
        };
        let amendment = wire::Amendment {
            target_kind: KIND_RESIDENT.into(),
            payload: resident.encode_to_vec(),
            ..Default::default()
        };
        let record = wire::Record {
            kind: KIND_AMENDMENT.into(),
            owner: Some(wire::Owner {
                node: "511102004001".into(),
                department: String::new(),
            }),
            payload: amendment.encode_to_vec().into(),
            ..Default::default()
        };
        let seen = node.for_reader(record);
        let inner = wire::Amendment::decode(&seen.payload[..]).unwrap();
        let masked = civil::v1::Resident::decode(&inner.payload[..]).unwrap();
        assert_eq!(
            (masked.name.as_str(), masked.id_number.as_str()),
            ("张**", "110105********002X")
        );
    }

    #[test]
    fn kind_names() {
        for good in ["civil.v1.Resident", "x.y", "a_b.c1.D"] {
            assert!(valid_kind_name(good), "{good}");
        }
        for bad in [
            "",
            "Resident",
            "civil..Resident",
            "civil.v1.Res ident",
            "1a.b",
            "civil.v1.",
        ] {
            assert!(!valid_kind_name(bad), "{bad}");
        }
    }
}
