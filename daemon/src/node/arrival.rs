//! Records from peers: every record is checked before it is applied
//! (envelope, origin for the link it came over, scope, payload, its
//! owner's signature), and what fails is quarantined with its reason while
//! the rest of its batch applies. A link's receiver runs the three steps:
//! [`Node::screen_from_peer`] in arrival order (key material taken in),
//! [`ScreenedBatch::verify`] on blocking threads, [`Node::commit_from_peer`]
//! with the cursor in one transaction.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use prost::Message;
use tiersync_proto::pb::{civil, gov, service};
use tiersync_proto::types::{DivisionCode, HlcTimestamp, RecordId, ResidentId};
use tiersync_proto::wire;
use tracing::warn;

use super::trust::trust_list_summary;
use super::{MAX_PAYLOAD_BYTES, Node, owner_code, owner_of};
use crate::identity::keyring::{Keyring, Unverifiable};
use crate::kinds::*;
use crate::route::{self, Scope, Toward};
use crate::store::{
    ApplyBatch, ApplyReport, AuditEvent, Cursor, Encoded, Refusal, RefusalCause, StoreError,
};

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

/// A record the arrival checks refuse: why, as the node acts on it, and
/// the reason as people read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected(pub RefusalCause, pub String);

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
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
        screen: impl Fn(&wire::Record) -> Result<(), Rejected>,
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
                && let Err(Rejected(cause, reason)) = screen(r)
            {
                refused.push(Refusal::of_encoded(&encoded, cause, reason));
                continue;
            }
            let verdict = match (bad_key, signature) {
                (Some(reason), _) => Err((RefusalCause::KeyMaterial, reason)),
                (None, Ok(())) => Ok(()),
                (None, Err(e @ Unverifiable::UnknownSigner { .. })) => {
                    Err((RefusalCause::UnknownSigner, e.to_string()))
                }
                (None, Err(e)) => Err((RefusalCause::Signature, e.to_string())),
            };
            match verdict {
                Ok(()) => kept.push(encoded),
                Err((cause, reason)) => {
                    let id = RecordId::from_bytes(&r.id)
                        .map(|i| i.to_string())
                        .unwrap_or_else(|_| hex::encode(&r.id));
                    let reason = format!(
                        "record {id} ({}) of origin `{}`: {reason}",
                        r.kind,
                        owner_of(r)
                    );
                    refused.push(Refusal::of_encoded(&encoded, cause, reason));
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

impl Node {
    /// Checks one record that arrived from `peer` over a link in direction
    /// `from`. The error is the quarantine reason.
    pub fn check_incoming(
        &self,
        r: &wire::Record,
        peer: &DivisionCode,
        from: Toward,
    ) -> Result<(), Rejected> {
        use RefusalCause::{Envelope, Payload, Route};
        let id = RecordId::from_bytes(&r.id)
            .map_err(|e| Rejected(Envelope, format!("invalid id: {e}")))?;
        let what = |cause: RefusalCause| {
            let kind = if r.kind.is_empty() {
                "no kind"
            } else {
                &r.kind
            };
            move |reason: String| Rejected(cause, format!("record {id} ({kind}): {reason}"))
        };
        if !valid_kind_name(&r.kind) {
            return Err(what(Envelope)(format!(
                "kind `{}` is not a protobuf message name such as `civil.v1.Resident`",
                r.kind
            )));
        }
        let owner = owner_code(r).map_err(what(Envelope))?;
        if r.version == 0 {
            return Err(what(Envelope)("version 0; versions start at 1".into()));
        }
        let scope = Scope::from_wire(&owner, r.scope.as_ref())
            .map_err(|e| what(Envelope)(e.to_string()))?;
        let reach = Scope::from_wire(&owner, r.reach.as_ref().or(r.scope.as_ref()))
            .map_err(|e| what(Envelope)(format!("reach: {e}")))?;
        if !scope.within(&reach) {
            return Err(what(Envelope)("reach does not cover the scope".into()));
        }
        route::check_arrival(&reach, &owner, &self.code, peer, from)
            .map_err(|e| what(Route)(e.to_string()))?;
        if r.withdrawn && !r.deleted {
            return Err(what(Envelope)(
                "a withdrawal must also be a tombstone".into(),
            ));
        }
        if r.deleted && !r.payload.is_empty() {
            return Err(what(Envelope)("a tombstone carries no payload".into()));
        }
        if r.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(what(Envelope)(format!(
                "payload of {} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit",
                r.payload.len()
            )));
        }
        if !r.deleted && self.schemas.is_canonical(&r.kind) {
            self.check_payload(&r.kind, &r.payload)
                .map_err(what(Payload))?;
            crate::departments::check_authority(&owner, &r.kind, &r.payload)
                .map_err(what(Payload))?;
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
    pub(crate) fn check_payload(&self, kind: &str, payload: &[u8]) -> Result<(), String> {
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
            KIND_HOUSEHOLD => drop(decodes::<civil::v1::Household>(kind, payload)?),
            KIND_APPLICATION => drop(decodes::<service::v1::Application>(kind, payload)?),
            KIND_NOTICE => drop(decodes::<gov::v1::Notice>(kind, payload)?),
            KIND_AMENDMENT => drop(decodes::<wire::Amendment>(kind, payload)?),
            KIND_AMENDMENT_RESULT => drop(decodes::<wire::AmendmentResult>(kind, payload)?),
            KIND_CERT_REQUEST => drop(decodes::<wire::CertificateRequest>(kind, payload)?),
            KIND_CERT_ISSUED => drop(decodes::<wire::CertificateIssued>(kind, payload)?),
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
                && let Err(Rejected(cause, reason)) = self.check_incoming(&r.record, peer, from)
            {
                refused.push(Refusal::of_encoded(&r, cause, reason));
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
        self.after_commit(&report.applied).await?;
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
