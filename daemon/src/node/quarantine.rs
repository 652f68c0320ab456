//! The quarantine: records refused on arrival wait here with their reason,
//! and are replayed through the same checks as on arrival, by an operator
//! (`tiersync quarantine replay`) or when the key of a signer that was not
//! known yet arrives.

use std::collections::BTreeSet;

use tiersync_proto::types::DivisionCode;
use tracing::{info, warn};

use super::{Node, NodeError};
use crate::route::Toward;
use crate::store::{ApplyBatch, Encoded, QuarantineRow, RefusalCause, StoreError};

/// What replaying a quarantined record did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayOutcome {
    pub applied: bool,
    /// Why not, when not applied.
    pub reason: String,
}

impl Node {
    /// Replays quarantined records that were refused because their owner's
    /// key was unknown, now that keys of `owners` arrived.
    pub(crate) async fn replay_unknown_signers(
        &self,
        owners: &BTreeSet<String>,
    ) -> Result<(), StoreError> {
        let waiting: Vec<u64> = self
            .store
            .quarantine_list(10_000)
            .await?
            .into_iter()
            .filter(|q| owners.contains(&q.origin) && q.cause == RefusalCause::UnknownSigner)
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
        if let Err(rejected) = self.check_incoming(&encoded.record, &peer, from) {
            return Ok(refuse(rejected.to_string()));
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

    /// Records refused on arrival and not yet resolved, oldest first.
    pub async fn quarantine_list(&self, limit: u32) -> Result<Vec<QuarantineRow>, StoreError> {
        self.store.quarantine_list(limit).await
    }

    /// How many records wait in the quarantine.
    pub async fn quarantined_count(&self) -> Result<u64, StoreError> {
        self.store.quarantine_count().await
    }
}
