//! The write path of records this node owns: puts from the local API, and
//! the node's own records (amendments, answers, keys, trust lists). Every
//! own write is signed, then committed with whatever else waits
//! ([`crate::store::GroupCommit`]), through [`Node::put_own`].

use prost::Message;
use tiersync_proto::types::{DivisionCode, RecordId, Tier};
use tiersync_proto::wire;

use super::collect::Derived;
use super::{MAX_PAYLOAD_BYTES, Node, NodeError, city_of, default_scope, owner_code};
use crate::kinds::{INTERNAL_KINDS, KIND_GRANT};
use crate::route::{self, Scope};
use crate::store::{AuditNote, LocalWrite, Stored};

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

#[derive(Debug)]
pub struct PutOutcome {
    pub stored: Stored,
    pub amendment: bool,
}

impl Node {
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
            self.check_put_payload(&input.kind, &input.payload)?;
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
            // A deletion is final: every node holding the record has a
            // tombstone, and a revival would look like a new fact with an
            // old id. A new record is the way back.
            if existing.record.deleted {
                return Err(NodeError::Invalid {
                    field: "id",
                    reason: format!(
                        "record {} was deleted at version {}; a deleted record stays deleted: put a new record instead",
                        crate::store::id_text(&existing.record.id),
                        existing.record.version
                    ),
                });
            }
        }
        let derived = if input.delete {
            if input.kind == KIND_GRANT
                && let Some(existing) = &existing
            {
                check_grant_delete(existing)?;
            }
            Derived::default()
        } else {
            self.derive(&input.kind, &input.payload, existing.as_ref())
                .await?
        };
        let scope = match (&derived.scope, &input.scope) {
            (Some(_), Some(_)) => {
                return Err(NodeError::Invalid {
                    field: "scope",
                    reason: format!(
                        "a `{}` travels where its kind's rules say; leave scope unset",
                        input.kind
                    ),
                });
            }
            (Some(ruled), None) => Ok(ruled.clone()),
            (None, Some(s)) => Scope::from_wire(&self.code, Some(s)),
            (None, None) => match &existing {
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
            derived.keys,
        );
        record.deleted = input.delete;
        let audit = AuditNote::write(api_actor(&record), record.deleted);
        let stored = self
            .put_own(record, input.expected_version, derived.unique_keys, audit)
            .await?;
        self.metrics
            .record_applied(&stored.record.kind, self.schemas);
        Ok(PutOutcome {
            stored,
            amendment: false,
        })
    }

    /// A payload a put brings: it decodes as its kind and is not too large.
    pub(crate) fn check_put_payload(&self, kind: &str, payload: &[u8]) -> Result<(), NodeError> {
        self.schemas
            .validate_payload(kind, payload)
            .map_err(|e| NodeError::Invalid {
                field: "payload",
                reason: e.to_string(),
            })?;
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(NodeError::Invalid {
                field: "payload",
                reason: format!(
                    "{} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit",
                    payload.len()
                ),
            });
        }
        Ok(())
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
        let record = self.signer.sign(record).await?;
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

    /// Writes this node's one record of `kind` (found by the natural key
    /// `key_name` = this node's code) for the whole deployment: a new version
    /// of `held`, or a new record.
    pub(crate) async fn put_everywhere(
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

    /// Writes a record of an internal kind owned by this node, addressed to
    /// `to` alone (this node itself for records that stay here).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn put_routed(
        &self,
        id: Vec<u8>,
        kind: &str,
        to: &DivisionCode,
        payload: Vec<u8>,
        keys: Vec<wire::NaturalKey>,
        expected_version: u64,
        audit: AuditNote,
    ) -> Result<Stored, NodeError> {
        let scope = route::point_to_point(&self.code, to).ok_or_else(|| NodeError::Invalid {
            field: "code",
            reason: format!("`{to}` is not in this deployment"),
        })?;
        let record = self.own_record(
            id,
            kind.to_owned(),
            String::new(),
            &scope,
            &scope,
            payload,
            keys,
        );
        self.put_own(record, expected_version, false, audit).await
    }
}

/// A grant is withdrawn, not deleted, once approved: its history stays
/// where it was used. A grant still requested may be deleted.
fn check_grant_delete(existing: &Stored) -> Result<(), NodeError> {
    let held = wire::Grant::decode(&existing.record.payload[..]).unwrap_or_default();
    if held.state() == wire::GrantState::Requested {
        return Ok(());
    }
    Err(NodeError::Invalid {
        field: "delete",
        reason: "a grant that was approved is withdrawn, not deleted (`tiersync grant withdraw`)"
            .into(),
    })
}

/// The audit actor of a write through the local API: the record's
/// department, or `local-api`.
pub(super) fn api_actor(record: &wire::Record) -> String {
    match record.owner.as_ref().map(|o| o.department.as_str()) {
        Some(d) if !d.is_empty() => d.to_owned(),
        _ => "local-api".into(),
    }
}
