//! Departments at this node: the catalogue and the grants as this node holds
//! them, and the [`Access`] a department's call gets under them (the rule
//! itself is [`crate::departments::grant`]). The read path
//! ([`super::read`], `Reader::Department`) then filters, masks and audits by
//! that access.

use prost::Message;
use tiersync_proto::types::DivisionCode;
use tiersync_proto::wire;

use super::{Node, NodeError};
use crate::departments::grant::{self, Access, HeldGrant, Want};
use crate::kinds::{KEY_DEPARTMENT, KIND_DEPARTMENT, KIND_GRANT};

impl Node {
    /// The catalogue entry of department `code` held at this node: live,
    /// and owned by the city (a catalogue entry from anyone else is not
    /// one).
    pub async fn catalogue_entry(&self, code: &str) -> Result<Option<wire::Department>, NodeError> {
        let city = super::city_of(&self.code);
        for stored in self
            .store
            .lookup(KIND_DEPARTMENT, KEY_DEPARTMENT, code)
            .await?
        {
            let r = &stored.record;
            if r.deleted || r.withdrawn || r.owner.as_ref().is_none_or(|o| o.node != city.as_str())
            {
                continue;
            }
            if let Ok(d) = wire::Department::decode(&r.payload[..])
                && d.code == code
            {
                return Ok(Some(d));
            }
        }
        Ok(None)
    }

    /// Every grant of `department` held at this node, whatever its state.
    pub async fn grants_of(&self, department: &str) -> Result<Vec<HeldGrant>, NodeError> {
        Ok(self
            .store
            .lookup(KIND_GRANT, KEY_DEPARTMENT, department)
            .await?
            .into_iter()
            .filter(|s| !s.record.deleted && !s.record.withdrawn)
            .filter_map(|s| {
                let grant = wire::Grant::decode(&s.record.payload[..]).ok()?;
                Some(HeldGrant {
                    owner: s.record.owner_node().to_owned(),
                    id: s.record.id,
                    grant,
                })
            })
            .collect())
    }

    /// The access `department` gets for `want` now, or why not: a
    /// department outside the catalogue, or the grant and what it lacks.
    pub async fn access(&self, department: &str, want: &Want<'_>) -> Result<Access, NodeError> {
        if self.catalogue_entry(department).await?.is_none() {
            return Err(NodeError::Denied(format!(
                "department `{department}` is not in the deployment's catalogue as node {} holds it; the city adds it (a tiersync.v1.Department record)",
                self.code
            )));
        }
        for kind in want.kinds {
            if !self.schemas.is_canonical(kind) {
                return Err(NodeError::UnknownKind {
                    kind: kind.clone(),
                    known: self.schemas.canonical_kinds(),
                });
            }
        }
        let grants = self.grants_of(department).await?;
        grant::decide(&self.code, department, &grants, want, self.clock.now_ms())
            .map_err(NodeError::Denied)
    }

    /// How far `department` has acknowledged subscription `name`.
    pub async fn subscription_acked(&self, department: &str, name: &str) -> Result<u64, NodeError> {
        Ok(self.store.subscription_acked(department, name).await?)
    }

    /// Commits `department`'s cursor of subscription `name` (never back).
    pub async fn subscription_ack(
        &self,
        department: &str,
        name: &str,
        through: u64,
    ) -> Result<u64, NodeError> {
        Ok(self
            .store
            .subscription_ack(department, name, through)
            .await?)
    }

    /// Parses an area a department asks for (`field` names it in errors).
    pub fn parse_area(field: &'static str, area: &str) -> Result<Option<DivisionCode>, NodeError> {
        if area.is_empty() {
            return Ok(None);
        }
        DivisionCode::parse(area)
            .map(Some)
            .map_err(|e| NodeError::Invalid {
                field,
                reason: e.to_string(),
            })
    }
}

/// The owner's division code of a record, or "" if it names none.
trait OwnerNode {
    fn owner_node(&self) -> &str;
}

impl OwnerNode for wire::Record {
    fn owner_node(&self) -> &str {
        self.owner.as_ref().map_or("", |o| o.node.as_str())
    }
}
