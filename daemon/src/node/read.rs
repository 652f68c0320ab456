//! The one read path. Every read of records by anyone but the node's own
//! rules goes through [`Node::reads`], which decides what the reader sees:
//! personal fields (marked in the schema) are masked at every node but the
//! record's owner. Department scope and grants are enforced here too, when
//! departments have an identity of their own.
//!
//! The link's sender reads the change log through [`Node::link_page`]:
//! stored bytes, each decided per record by `route::delivery` before it
//! leaves.

use prost::Message;
use tiersync_proto::types::DivisionCode;
use tiersync_proto::wire;

use super::{Node, NodeError};
use crate::kinds::{KIND_AMENDMENT, natural_keys};
use crate::route::Owners;
use crate::store::audit::{AuditEntry, AuditSource};
use crate::store::{AuditEvent, Cursor, LinkPage, ListQuery, StoreError};

/// Who reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reader {
    /// The node's operator, through the local API on loopback (and the
    /// command line, the demo and tests): records masked unless this node
    /// owns them.
    Operator,
    /// The node's own services (joining): records as they are stored.
    Node,
}

/// Reads of records as one reader may see them.
pub struct Reads<'a> {
    node: &'a Node,
    reader: Reader,
}

impl Node {
    /// Reads as `reader` may see them.
    pub fn reads(&self, reader: Reader) -> Reads<'_> {
        Reads { node: self, reader }
    }

    /// Records that `department` read a record (for the adapters), in the
    /// audit log's own transaction.
    pub async fn audit_read(
        &self,
        department: &str,
        kind: &str,
        record_id: &[u8],
        purpose: &str,
    ) -> Result<AuditEntry, NodeError> {
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

    /// The audit log, for reading and verifying it.
    pub fn audit_log(&self) -> &dyn AuditSource {
        &*self.store
    }

    // === the change log, for the link ===

    /// The store's epoch: a new one after the store is recreated, so peers'
    /// cursors into an older incarnation restart.
    pub fn epoch(&self) -> &str {
        self.store.epoch()
    }

    /// The newest committed change.
    pub async fn head_seq(&self) -> Result<u64, StoreError> {
        self.store.head_seq().await
    }

    /// How far this node has applied `peer`'s log.
    pub async fn cursor(&self, peer: &DivisionCode) -> Result<Option<Cursor>, StoreError> {
        self.store.cursor(peer).await
    }

    /// The next page of the change log for a link's sender (see
    /// [`crate::store::Store::link_page`]).
    pub async fn link_page(
        &self,
        after: u64,
        limit: u32,
        owners: &Owners<'_>,
    ) -> Result<LinkPage, StoreError> {
        self.store.link_page(after, limit, owners).await
    }

    /// Test support: the record store itself, for benchmarks that load a
    /// backlog directly and tests that tamper behind the node's back.
    #[cfg(feature = "testkit")]
    pub fn store_for_tests(&self) -> &std::sync::Arc<dyn crate::store::Store> {
        &self.store
    }

    /// The active lease of this node's store, if it has one (PostgreSQL).
    pub async fn lease(&self) -> Result<Option<crate::store::postgres::LeaseStatus>, StoreError> {
        self.store.lease().await
    }

    /// How many records this node holds, tombstones included.
    pub async fn record_count(&self) -> Result<u64, StoreError> {
        self.store.count().await
    }
}

impl Reads<'_> {
    /// The record `id`, if held here.
    pub async fn get(&self, id: &[u8]) -> Result<Option<wire::Record>, NodeError> {
        Ok(self.node.store.get(id).await?.map(|s| self.show(s.record)))
    }

    /// Records by kind and owner prefix, in id order. An empty kind lists
    /// every kind; a kind this build does not know is an error, not an
    /// empty list.
    pub async fn list(&self, query: &ListQuery) -> Result<Vec<wire::Record>, NodeError> {
        if !query.kind.is_empty() {
            self.known_kind(&query.kind)?;
        }
        Ok(self
            .node
            .store
            .list(query)
            .await?
            .into_iter()
            .map(|s| self.show(s.record))
            .collect())
    }

    /// Live records of `kind` with the natural key `name` = `value`. A kind
    /// this build does not know, or a key its records do not carry, is an
    /// error, not an empty result.
    pub async fn lookup(
        &self,
        kind: &str,
        name: &str,
        value: &str,
    ) -> Result<Vec<wire::Record>, NodeError> {
        self.known_kind(kind)?;
        let keys = natural_keys(kind);
        if !keys.iter().any(|k| k == name) {
            return Err(NodeError::Invalid {
                field: "key",
                reason: if keys.is_empty() {
                    format!("`{kind}` records carry no natural key to look up by")
                } else {
                    format!(
                        "`{kind}` records carry no key `{name}`; look them up by {}",
                        keys.iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
            });
        }
        Ok(self
            .node
            .store
            .lookup(kind, name, value)
            .await?
            .into_iter()
            .map(|s| self.show(s.record))
            .collect())
    }

    /// Changes after `after` in log order, each at its latest version, with
    /// its sequence number.
    pub async fn changes_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, wire::Record)>, NodeError> {
        Ok(self
            .node
            .store
            .changes_after(after, limit)
            .await?
            .into_iter()
            .map(|s| (s.seq, self.show(s.record)))
            .collect())
    }

    fn known_kind(&self, kind: &str) -> Result<(), NodeError> {
        let schemas = self.node.schemas;
        if schemas.is_canonical(kind) {
            return Ok(());
        }
        Err(NodeError::UnknownKind {
            kind: kind.to_owned(),
            known: schemas.canonical_kinds(),
        })
    }

    /// A record as this reader may see it: masked unless this node owns it.
    pub fn show(&self, mut record: wire::Record) -> wire::Record {
        let node = self.node;
        if self.reader == Reader::Node {
            return record;
        }
        let owned_here = record
            .owner
            .as_ref()
            .is_some_and(|o| o.node == node.code.as_str());
        if !owned_here && record.kind == KIND_AMENDMENT && !record.payload.is_empty() {
            // An amendment carries a whole encoded target record: mask that
            // by the target's kind.
            record.payload = match wire::Amendment::decode(&record.payload[..]) {
                Ok(mut a) => {
                    if !a.payload.is_empty() {
                        a.payload = node
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
        if !owned_here && !record.payload.is_empty() && node.schemas.is_canonical(&record.kind) {
            match node.schemas.mask(&record.kind, &record.payload) {
                Ok(masked) => record.payload = masked.into(),
                // Never hand out what could not be masked.
                Err(_) => record.payload = Default::default(),
            }
        }
        record
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tiersync_proto::pb::civil;
    use tiersync_proto::types::DigestKey;

    use super::*;
    use crate::config::SyncTuning;
    use crate::identity::origin::Identity;
    use crate::kinds::KIND_RESIDENT;
    use crate::ops::metrics::Metrics;

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
            crate::clock::SystemClock::shared(),
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
        let seen = node.reads(Reader::Operator).show(record);
        let inner = wire::Amendment::decode(&seen.payload[..]).unwrap();
        let masked = civil::v1::Resident::decode(&inner.payload[..]).unwrap();
        assert_eq!(
            (masked.name.as_str(), masked.id_number.as_str()),
            ("张**", "110105********002X")
        );
    }
}
