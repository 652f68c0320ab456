//! Amendments: a put for a record another node owns becomes an
//! [`wire::Amendment`] routed to the owner, which applies or refuses it and
//! routes an [`wire::AmendmentResult`] back. The owner's side is a
//! [`Answer`] the app registers as a kind handler.

use async_trait::async_trait;
use prost::Message;
use tiersync_proto::types::{DivisionCode, RecordId};
use tiersync_proto::wire;
use tracing::info;

use super::routed::{Answer, Answered, Exchange};
use super::write::api_actor;
use super::write::{PutInput, PutOutcome};
use super::{Node, NodeError};
use crate::kinds::{KEY_AMENDMENT_ID, KEY_TARGET_OWNER, KIND_AMENDMENT, KIND_AMENDMENT_RESULT};
use crate::route;
use crate::store::{AuditNote, Stored};

/// Amendments and their results, as a routed request/answer exchange.
pub const AMENDMENTS: Exchange = Exchange {
    request_kind: KIND_AMENDMENT,
    addressee_key: KEY_TARGET_OWNER,
    answer_kind: KIND_AMENDMENT_RESULT,
    answer_key: KEY_AMENDMENT_ID,
};

impl Node {
    pub(super) async fn send_amendment(
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
}

/// The owner's side: applies an amendment addressed to this node if its
/// base version is still current, and answers either way. Registered by the
/// app as a kind handler, so it runs after each applied batch and once at
/// start (an amendment whose answer a crash interrupted is answered then).
#[derive(Debug, Default)]
pub struct AmendmentAnswer;

#[async_trait]
impl Answer for AmendmentAnswer {
    fn exchange(&self) -> &'static Exchange {
        &AMENDMENTS
    }

    async fn answer(
        &self,
        node: &Node,
        requester: &DivisionCode,
        request: &wire::Record,
    ) -> Result<Option<Answered>, NodeError> {
        let Ok(amendment) = wire::Amendment::decode(&request.payload[..]) else {
            return Ok(None);
        };
        if amendment.target_owner != node.code.as_str() {
            return Ok(None);
        }
        let (accepted, new_version, reason) = match node.apply_amendment(&amendment).await {
            Ok(v) => (true, v, String::new()),
            Err(e) => (false, 0, e.to_string()),
        };
        info!(%requester, accepted, %reason, "amendment answered");
        let result = wire::AmendmentResult {
            amendment_id: request.id.clone(),
            target_id: amendment.target_id.clone(),
            accepted,
            new_version,
            reason,
        };
        Ok(Some(Answered {
            payload: result.encode_to_vec(),
            audit: AuditNote::write("node", false),
        }))
    }
}
