//! Request/answer exchanges between two nodes, carried as records.
//!
//! The asker writes a request record addressed point to point to the node
//! that decides it, with a natural key ([`Exchange::addressee_key`]) naming
//! that node. The answerer writes exactly one answer record back, keyed
//! ([`Exchange::answer_key`]) by the request's id in hex. A request already
//! answered is skipped, so answering everything pending at start (after a
//! crash interrupted an answer) is safe. Amendments use it (the owner
//! answers), and so does joining (the city answers certificate requests).

use std::sync::Arc;

use async_trait::async_trait;
use tiersync_proto::types::{DivisionCode, RecordId};
use tiersync_proto::wire;
use tracing::warn;

use super::handlers::KindHandler;
use super::{Node, NodeError, owner_code};
use crate::store::{AuditNote, StoreError};

/// The kinds and keys of one exchange.
#[derive(Debug)]
pub struct Exchange {
    pub request_kind: &'static str,
    /// The request's natural key that names the node to answer it.
    pub addressee_key: &'static str,
    pub answer_kind: &'static str,
    /// The answer's natural key that names the request (its id in hex).
    pub answer_key: &'static str,
}

/// The answer to one request: its payload and the audit entry written with
/// it.
#[derive(Debug)]
pub struct Answered {
    pub payload: Vec<u8>,
    pub audit: AuditNote,
}

/// The deciding side of an exchange.
#[async_trait]
pub trait Answer: Send + Sync + 'static {
    fn exchange(&self) -> &'static Exchange;

    /// Decides one request from `requester`. `None` leaves it unanswered
    /// (it is not this node's to decide).
    async fn answer(
        &self,
        node: &Node,
        requester: &DivisionCode,
        request: &wire::Record,
    ) -> Result<Option<Answered>, NodeError>;
}

impl Node {
    /// Answers every request of `answer`'s exchange addressed to this node
    /// that has no answer yet: among `candidates` (records just applied),
    /// or, with `None`, among all held.
    pub async fn answer_pending(
        &self,
        answer: &dyn Answer,
        candidates: Option<&[wire::Record]>,
    ) -> Result<(), StoreError> {
        let exchange = answer.exchange();
        let pending: Vec<wire::Record> = match candidates {
            Some(records) => records
                .iter()
                .filter(|r| r.kind == exchange.request_kind && !r.deleted)
                .cloned()
                .collect(),
            None => self
                .store
                .lookup(
                    exchange.request_kind,
                    exchange.addressee_key,
                    self.code.as_str(),
                )
                .await?
                .into_iter()
                .map(|s| s.record)
                .collect(),
        };
        for request in pending {
            if !request
                .keys
                .iter()
                .any(|k| k.name == exchange.addressee_key && k.value == self.code.as_str())
            {
                continue;
            }
            let request_id = hex::encode(&request.id);
            let answered = self
                .store
                .lookup(exchange.answer_kind, exchange.answer_key, &request_id)
                .await?;
            if !answered.is_empty() {
                continue;
            }
            let Ok(requester) = owner_code(&request) else {
                continue;
            };
            let decided = match answer.answer(self, &requester, &request).await {
                Ok(Some(decided)) => decided,
                Ok(None) => continue,
                Err(NodeError::Store(e)) => return Err(e),
                Err(error) => {
                    warn!(%requester, kind = exchange.request_kind, %error, "cannot decide a request");
                    continue;
                }
            };
            let put = self
                .put_routed(
                    RecordId::new().as_bytes().to_vec(),
                    exchange.answer_kind,
                    &requester,
                    decided.payload,
                    vec![wire::NaturalKey {
                        name: exchange.answer_key.into(),
                        value: request_id,
                    }],
                    0,
                    decided.audit,
                )
                .await;
            match put {
                Ok(_) => {}
                Err(NodeError::Store(e)) => return Err(e),
                Err(error) => {
                    warn!(%requester, kind = exchange.request_kind, %error, "cannot answer a request")
                }
            }
        }
        Ok(())
    }
}

/// A [`KindHandler`] that answers an exchange's requests as they arrive.
pub struct Routed<A>(pub A);

impl<A: Answer> Routed<A> {
    pub fn handler(answer: A) -> Arc<dyn KindHandler> {
        Arc::new(Routed(answer))
    }
}

#[async_trait]
impl<A: Answer> KindHandler for Routed<A> {
    fn kinds(&self) -> &'static [&'static str] {
        std::slice::from_ref(&self.0.exchange().request_kind)
    }

    async fn arrived(
        &self,
        node: &Node,
        records: Option<&[wire::Record]>,
    ) -> Result<(), StoreError> {
        node.answer_pending(&self.0, records).await
    }
}
