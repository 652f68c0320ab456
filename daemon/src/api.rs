//! The local gRPC API of a node (`tiersync.v1.LocalApi`): put, get, list,
//! lookup and watch records, status, and the quarantine. It listens on its
//! own port, separate from the peer port, and is meant for loopback: the
//! CLI and adapters on the same host use it.
//!
//! Domain errors become a `tonic::Status` in exactly one place,
//! [`crate::error`].

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tiersync_proto::types::RecordId;
use tiersync_proto::wire::{self, local_api_server::LocalApi};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::error::{status_of, store_status};
use crate::node::{Node, NodeError, PutInput, Reader};
use crate::store::ListQuery;

pub struct LocalApiService {
    node: Arc<Node>,
    cancel: CancellationToken,
    /// The deployment CA, whose fingerprint join tokens carry.
    ca_pem: String,
}

impl LocalApiService {
    pub fn new(node: Arc<Node>, cancel: CancellationToken, ca_pem: String) -> LocalApiService {
        LocalApiService {
            node,
            cancel,
            ca_pem,
        }
    }
}

type ChangeStream = Pin<Box<dyn Stream<Item = Result<wire::Change, Status>> + Send>>;

#[tonic::async_trait]
impl LocalApi for LocalApiService {
    async fn put(
        &self,
        request: Request<wire::PutRequest>,
    ) -> Result<Response<wire::PutResponse>, Status> {
        let r = request.into_inner();
        let outcome = self
            .node
            .put(PutInput {
                id: r.id,
                kind: r.kind,
                payload: r.payload,
                expected_version: r.expected_version,
                scope: r.scope,
                delete: r.delete,
                department: r.department,
                reason: r.reason,
            })
            .await
            .map_err(status_of)?;
        Ok(Response::new(wire::PutResponse {
            record: Some(
                self.node
                    .reads(Reader::Operator)
                    .show(outcome.stored.record),
            ),
            amendment: outcome.amendment,
        }))
    }

    async fn get(
        &self,
        request: Request<wire::GetRequest>,
    ) -> Result<Response<wire::GetResponse>, Status> {
        let id = request.into_inner().id;
        let rid = RecordId::from_bytes(&id)
            .map_err(|e| Status::invalid_argument(format!("invalid id: {e}")))?;
        let record = self
            .node
            .reads(Reader::Operator)
            .get(&id)
            .await
            .map_err(status_of)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "record {rid} is not held at node `{}`",
                    self.node.code()
                ))
            })?;
        Ok(Response::new(wire::GetResponse {
            record: Some(record),
        }))
    }

    async fn list(
        &self,
        request: Request<wire::ListRequest>,
    ) -> Result<Response<wire::ListResponse>, Status> {
        let r = request.into_inner();
        let records = self
            .node
            .reads(Reader::Operator)
            .list(&ListQuery {
                kind: r.kind,
                owner_prefix: r.owner_prefix,
                include_deleted: r.include_deleted,
                after_id: r.after_id,
                limit: r.limit,
            })
            .await
            .map_err(status_of)?;
        Ok(Response::new(wire::ListResponse { records }))
    }

    type WatchStream = ChangeStream;

    async fn watch(
        &self,
        request: Request<wire::WatchRequest>,
    ) -> Result<Response<ChangeStream>, Status> {
        let r = request.into_inner();
        let node = self.node.clone();
        let cancel = self.cancel.clone();
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            let mut head = node.subscribe_head();
            let mut after = r.after_seq;
            loop {
                let changes = match node.reads(Reader::Operator).changes_after(after, 500).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(status_of(e))).await;
                        return;
                    }
                };
                if changes.is_empty() {
                    head.borrow_and_update();
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tx.closed() => return,
                        changed = head.changed() => if changed.is_err() { return },
                    }
                    continue;
                }
                for (seq, record) in changes {
                    after = seq;
                    if !r.kind.is_empty() && record.kind != r.kind {
                        continue;
                    }
                    let item = wire::Change {
                        seq,
                        record: Some(record),
                    };
                    if tx.send(Ok(item)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lookup(
        &self,
        request: Request<wire::LookupRequest>,
    ) -> Result<Response<wire::ListResponse>, Status> {
        let r = request.into_inner();
        let (name, value) = self
            .node
            .lookup_key(&r.kind, &r.key, &r.value)
            .map_err(status_of)?;
        let records = self
            .node
            .reads(Reader::Operator)
            .lookup(&r.kind, &name, &value)
            .await
            .map_err(status_of)?;
        Ok(Response::new(wire::ListResponse { records }))
    }

    async fn status(
        &self,
        _request: Request<wire::StatusRequest>,
    ) -> Result<Response<wire::StatusResponse>, Status> {
        let node = &self.node;
        Ok(Response::new(wire::StatusResponse {
            node: node.code().to_string(),
            name: node.name().unwrap_or_default().to_owned(),
            tier: node.code().tier().to_string(),
            head_seq: node.head_seq().await.map_err(store_status)?,
            records: node.record_count().await.map_err(store_status)?,
            quarantined: node.quarantined_count().await.map_err(store_status)?,
            links: node
                .links()
                .snapshot()
                .iter()
                .map(|l| l.to_wire())
                .collect(),
            trust: Some(node.keyring().trust_status(node.clock().now_ms())),
            workers: node
                .workers()
                .snapshot()
                .iter()
                .map(crate::ops::status::worker_to_wire)
                .collect(),
        }))
    }

    async fn list_quarantine(
        &self,
        request: Request<wire::ListQuarantineRequest>,
    ) -> Result<Response<wire::ListQuarantineResponse>, Status> {
        let rows = self
            .node
            .quarantine_list(request.into_inner().limit)
            .await
            .map_err(store_status)?;
        Ok(Response::new(wire::ListQuarantineResponse {
            entries: rows
                .into_iter()
                .map(|q| wire::QuarantineEntry {
                    qid: q.qid,
                    peer: q.peer,
                    record_id: q.record_id,
                    kind: q.kind,
                    origin: q.origin,
                    reason: q.reason,
                    at_ms: q.at_ms,
                })
                .collect(),
        }))
    }

    /// Re-runs a quarantined record through the checks (after a fix such as
    /// an upgrade that knows its kind); on success it is applied and leaves
    /// the quarantine.
    async fn create_join_token(
        &self,
        request: Request<wire::CreateJoinTokenRequest>,
    ) -> Result<Response<wire::CreateJoinTokenResponse>, Status> {
        let req = request.into_inner();
        let ttl = match req.ttl_seconds {
            0 => crate::identity::join::DEFAULT_TOKEN_TTL,
            s => std::time::Duration::from_secs(s),
        };
        let (token, expires_at_ms) = self
            .node
            .create_join_token(&req.code, ttl, &self.ca_pem)
            .await
            .map_err(status_of)?;
        Ok(Response::new(wire::CreateJoinTokenResponse {
            token: token.to_string(),
            expires_at_ms,
        }))
    }

    async fn revoke(
        &self,
        request: Request<wire::RevokeRequest>,
    ) -> Result<Response<wire::TrustListStatus>, Status> {
        let req = request.into_inner();
        self.node
            .publish_trust_list(Some(wire::Revocation {
                node: req.node,
                reason: req.reason,
                effective_at_ms: req.effective_at_ms,
                revoked_at_ms: 0,
            }))
            .await
            .map_err(status_of)?;
        Ok(Response::new(
            self.node.keyring().trust_status(self.node.clock().now_ms()),
        ))
    }

    async fn rollover_root(
        &self,
        request: Request<wire::RolloverRootRequest>,
    ) -> Result<Response<wire::TrustListStatus>, Status> {
        let key_out = request.into_inner().key_out;
        if key_out.is_empty() {
            return Err(Status::invalid_argument(
                "key_out: name the file the new root key is written to",
            ));
        }
        self.node
            .rollover_root(std::path::Path::new(&key_out))
            .await
            .map_err(status_of)?;
        Ok(Response::new(
            self.node.keyring().trust_status(self.node.clock().now_ms()),
        ))
    }

    async fn trust_status(
        &self,
        _request: Request<wire::TrustStatusRequest>,
    ) -> Result<Response<wire::TrustListStatus>, Status> {
        Ok(Response::new(
            self.node.keyring().trust_status(self.node.clock().now_ms()),
        ))
    }

    async fn replay_quarantine(
        &self,
        request: Request<wire::ReplayQuarantineRequest>,
    ) -> Result<Response<wire::ReplayQuarantineResponse>, Status> {
        let qid = request.into_inner().qid;
        let outcome = self
            .node
            .replay_quarantined(qid)
            .await
            .map_err(|e| match e {
                NodeError::NotFound(_) => {
                    Status::not_found(format!("no open quarantine entry {qid}"))
                }
                e => status_of(e),
            })?;
        Ok(Response::new(wire::ReplayQuarantineResponse {
            applied: outcome.applied,
            reason: outcome.reason,
        }))
    }
}
