//! The adapter API (`tiersync.adapter.v1.AdapterService`): a department
//! system's door at a node. Every call is made as the department its
//! verified client certificate names, for this node only; every read asks
//! the node for an [`Access`] under the department's grants and goes
//! through the one read path as `Reader::Department`, which filters, masks
//! and audits. Domain errors become statuses in [`crate::error`].

use std::sync::Arc;

use tiersync_proto::pb::tiersync::adapter::v1::{
    self as adapter, adapter_service_server::AdapterService as AdapterApi,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::grant::{Access, GrantStatus, Want};
use super::subscribe::{self, SubscriptionStream};
use crate::identity::department::{DepartmentId, caller};
use crate::node::{Node, NodeError, PutInput, Reader, Submitted};

pub struct AdapterService {
    node: Arc<Node>,
    cancel: CancellationToken,
}

impl AdapterService {
    pub fn new(node: Arc<Node>, cancel: CancellationToken) -> AdapterService {
        AdapterService { node, cancel }
    }

    /// The calling department: its certificate must name this node.
    fn department<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let id = caller(request).map_err(Status::unauthenticated)?;
        self.at_this_node(&id)?;
        Ok(id.department)
    }

    fn at_this_node(&self, id: &DepartmentId) -> Result<(), Status> {
        if id.node == *self.node.code() {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "this certificate is for department `{}` at node {}; this is node {}",
            id.department,
            id.node,
            self.node.code()
        )))
    }

    /// The access for a read or submission, or the refusal naming the
    /// grant and what it lacks.
    async fn access(
        &self,
        department: &str,
        kinds: &[String],
        purpose: Option<&adapter::Purpose>,
        area: &str,
        submit: bool,
    ) -> Result<Access, Status> {
        let purpose = purpose.cloned().unwrap_or_default();
        let area = Node::parse_area("division_prefix", area)?;
        let want = Want {
            kinds,
            clear_fields: &purpose.clear_fields,
            area: area.as_ref(),
            matter_code: &purpose.matter_code,
            submit,
        };
        Ok(self.node.access(department, &want).await?)
    }
}

#[tonic::async_trait]
impl AdapterApi for AdapterService {
    async fn who_am_i(
        &self,
        request: Request<adapter::WhoAmIRequest>,
    ) -> Result<Response<adapter::WhoAmIResponse>, Status> {
        let department = self.department(&request)?;
        let entry = self
            .node
            .catalogue_entry(&department)
            .await?
            .ok_or_else(|| {
                NodeError::Denied(format!(
                    "department `{department}` is not in the deployment's catalogue as node {} holds it",
                    self.node.code()
                ))
            })?;
        let now = self.node.clock().now_ms();
        let grants = self
            .node
            .grants_of(&department)
            .await?
            .into_iter()
            .filter(|g| g.status(now) == GrantStatus::InEffect)
            .map(|g| adapter::GrantView {
                id: g.id,
                grant: Some(g.grant),
                approved_at_node: g.owner,
            })
            .collect();
        Ok(Response::new(adapter::WhoAmIResponse {
            node: self.node.code().to_string(),
            department,
            department_name: entry.name,
            grants,
        }))
    }

    type SubscribeStream = SubscriptionStream;

    async fn subscribe(
        &self,
        request: Request<adapter::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let department = self.department(&request)?;
        let r = request.into_inner();
        subscribe::check_name(&r.subscription)?;
        if r.kinds.is_empty() {
            return Err(NodeError::Invalid {
                field: "kinds",
                reason: "name the record kinds to receive, e.g. civil.v1.Resident".into(),
            }
            .into());
        }
        // Refused now rather than on the first page.
        self.access(
            &department,
            &r.kinds,
            r.purpose.as_ref(),
            &r.division_prefix,
            false,
        )
        .await?;
        let stream = subscribe::open(self.node.clone(), department, r, self.cancel.clone()).await?;
        Ok(Response::new(stream))
    }

    async fn acknowledge(
        &self,
        request: Request<adapter::AcknowledgeRequest>,
    ) -> Result<Response<adapter::AcknowledgeResponse>, Status> {
        let department = self.department(&request)?;
        let r = request.into_inner();
        subscribe::check_name(&r.subscription)?;
        let acknowledged_through =
            subscribe::acknowledge(&self.node, &department, &r.subscription, r.through_seq).await?;
        Ok(Response::new(adapter::AcknowledgeResponse {
            acknowledged_through,
        }))
    }

    async fn submit(
        &self,
        request: Request<adapter::SubmitRequest>,
    ) -> Result<Response<adapter::SubmitResponse>, Status> {
        let department = self.department(&request)?;
        let r = request.into_inner();
        let kinds = [r.kind.clone()];
        let access = self
            .access(&department, &kinds, r.purpose.as_ref(), "", true)
            .await?;
        let (stored, how) = self
            .node
            .submit(
                &access,
                PutInput {
                    id: r.id,
                    kind: r.kind,
                    payload: r.payload,
                    expected_version: r.expected_version,
                    scope: r.scope,
                    delete: false,
                    department: department.clone(),
                    reason: r.reason,
                },
            )
            .await?;
        let outcome = match how {
            Submitted::Created => adapter::SubmitOutcome::Created,
            Submitted::Updated => adapter::SubmitOutcome::Updated,
            Submitted::Linked => adapter::SubmitOutcome::Linked,
            Submitted::Amendment => adapter::SubmitOutcome::Amendment,
        };
        let record = if how == Submitted::Amendment {
            // The amendment itself: where it went, not what the target
            // holds (that is its owner's to answer).
            let mut envelope = stored.record;
            envelope.payload = Default::default();
            envelope.proof = Default::default();
            Some(envelope)
        } else {
            self.node
                .reads(Reader::Department(access))
                .shown(stored.record)
                .await?
        };
        Ok(Response::new(adapter::SubmitResponse {
            outcome: outcome as i32,
            record,
        }))
    }

    async fn lookup(
        &self,
        request: Request<adapter::LookupRequest>,
    ) -> Result<Response<adapter::LookupResponse>, Status> {
        let department = self.department(&request)?;
        let r = request.into_inner();
        let kinds = [r.kind.clone()];
        let access = self
            .access(&department, &kinds, r.purpose.as_ref(), "", false)
            .await?;
        let (name, value) = self.node.lookup_key(&r.kind, &r.key, &r.value)?;
        let records = self
            .node
            .reads(Reader::Department(access))
            .lookup(&r.kind, &name, &value)
            .await?
            .into_iter()
            .filter(|r| !r.deleted)
            .collect();
        Ok(Response::new(adapter::LookupResponse { records }))
    }

    async fn get(
        &self,
        request: Request<adapter::GetRequest>,
    ) -> Result<Response<adapter::GetResponse>, Status> {
        let department = self.department(&request)?;
        let r = request.into_inner();
        // The grant is chosen for the record's kind: a department may hold
        // several grants for one purpose, each for other kinds. The kind is
        // read here, not shown: what is shown goes through the read path.
        let kinds: Vec<String> = self
            .node
            .reads(Reader::Node)
            .get(&r.id)
            .await?
            .map(|held| held.kind)
            .into_iter()
            .collect();
        let access = self
            .access(&department, &kinds, r.purpose.as_ref(), "", false)
            .await?;
        let record = self
            .node
            .reads(Reader::Department(access))
            .get(&r.id)
            .await?
            .ok_or_else(|| NodeError::NotFound(crate::store::id_text(&r.id)))?;
        Ok(Response::new(adapter::GetResponse {
            record: Some(record),
        }))
    }
}
