//! The one read path. Every read of records by anyone but the node's own
//! rules goes through [`Node::reads`], which decides what the reader sees,
//! in this order:
//!
//! 1. sharing scope: a record scoped to departments (`Scope.departments`)
//!    is shown to those departments only (the operator of a node that does
//!    not own it sees that it exists, not its payload);
//! 2. grant: a department reads under one [`Access`] (see
//!    [`super::access`]): its kinds, inside its area;
//! 3. masking: personal fields (marked in the schema) are masked at every
//!    node but the record's owner, except those a department's grant names
//!    in clear;
//! 4. audit: every record shown to a department is written to the audit
//!    log (department, grant, purpose) before the read answers, in one
//!    transaction per read.
//!
//! The link's sender reads the change log through [`Node::link_page`]:
//! stored bytes, each decided per record by `route::delivery` before it
//! leaves.

use prost::Message;
use tiersync_proto::types::DivisionCode;
use tiersync_proto::wire;

use super::{Node, NodeError};
use crate::departments::grant::Access;
use crate::kinds::{KIND_AMENDMENT, natural_keys};
use crate::route::Owners;
use crate::store::audit::AuditSource;
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
    /// A department system through the adapter port, under one grant.
    Department(Access),
}

/// A page of a department's subscription, sealed until the audit entries
/// of the records it shows commit: only [`Audited::commit`] hands it out.
pub struct Audited {
    page: Vec<(u64, wire::Record)>,
    through: u64,
    caught_up: bool,
    events: Vec<AuditEvent>,
    store: std::sync::Arc<dyn crate::store::Store>,
}

impl Audited {
    /// How far the log was read for this page.
    pub fn through(&self) -> u64 {
        self.through
    }

    /// Whether the page reaches the head.
    pub fn caught_up(&self) -> bool {
        self.caught_up
    }

    /// Writes the page's audit entries, then hands out the page: the
    /// changes shown with their sequence numbers, how far the log was read,
    /// and whether that is the head.
    pub async fn commit(self) -> Result<(Vec<(u64, wire::Record)>, u64, bool), NodeError> {
        if !self.events.is_empty() {
            self.store.audit_append_many(self.events).await?;
        }
        Ok((self.page, self.through, self.caught_up))
    }
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
        let Some(stored) = self.node.store.get(id).await? else {
            return Ok(None);
        };
        if let Reader::Department(access) = &self.reader
            && !access.kinds.contains(&stored.record.kind)
        {
            return Err(NodeError::Denied(format!(
                "record {} is a `{}`, a kind grant {} does not cover",
                crate::store::id_text(id),
                stored.record.kind,
                crate::store::id_text(&access.grant_id)
            )));
        }
        Ok(self.deliver(vec![stored.record]).await?.pop())
    }

    /// Records by kind and owner prefix, in id order. An empty kind lists
    /// every kind; a kind this build does not know is an error, not an
    /// empty list.
    pub async fn list(&self, query: &ListQuery) -> Result<Vec<wire::Record>, NodeError> {
        if !query.kind.is_empty() {
            self.known_kind(&query.kind)?;
        }
        let records = self.node.store.list(query).await?;
        self.deliver(records.into_iter().map(|s| s.record).collect())
            .await
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
        let records = self.node.store.lookup(kind, name, value).await?;
        self.deliver(records.into_iter().map(|s| s.record).collect())
            .await
    }

    /// Changes after `after` in log order, each at its latest version, with
    /// its sequence number.
    pub async fn changes_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, wire::Record)>, NodeError> {
        let changes = self.node.store.changes_after(after, limit).await?;
        let (shown, events) = self.screen_changes(changes);
        if !events.is_empty() {
            self.node.store.audit_append_many(events).await?;
        }
        Ok(shown)
    }

    /// A page of the change log for a department's subscription: the
    /// changes of `kinds` it may read after `after`, and how far the log was
    /// read (through; whether that is the head). Changes it may not read
    /// are passed over, not held back. The page is sealed until its audit
    /// entries commit ([`Audited::commit`]), so a subscription can read the
    /// next page while the last one's entries are written.
    pub async fn subscription_page(
        &self,
        after: u64,
        limit: u32,
        kinds: &[String],
    ) -> Result<Audited, NodeError> {
        let head = self.node.store.head_seq().await?;
        let changes = self.node.store.changes_after(after, limit).await?;
        let full = changes.len() >= limit as usize;
        let last = changes.last().map_or(after, |s| s.seq);
        let (through, caught_up) = if full {
            (last, last >= head)
        } else {
            (last.max(head), true)
        };
        let wanted = changes
            .into_iter()
            .filter(|s| kinds.contains(&s.record.kind))
            .collect();
        let (page, events) = self.screen_changes(wanted);
        Ok(Audited {
            page,
            through,
            caught_up,
            events,
            store: self.node.store.clone(),
        })
    }

    /// One record as this reader is shown it (`None`: not at all), audited
    /// for a department like every read.
    pub async fn shown(&self, record: wire::Record) -> Result<Option<wire::Record>, NodeError> {
        Ok(self.deliver(vec![record]).await?.pop())
    }

    /// What this reader is shown of `records`, in order: for a department,
    /// only what its access admits, masked by its grant, each one audited
    /// (in one transaction, before anything is shown); for the others, each
    /// record as [`Reads::show`] makes it.
    async fn deliver(&self, records: Vec<wire::Record>) -> Result<Vec<wire::Record>, NodeError> {
        let (shown, events) = self.screen(records);
        if !events.is_empty() {
            self.node.store.audit_append_many(events).await?;
        }
        Ok(shown.into_iter().map(|(_, r)| r).collect())
    }

    /// The changes of `changes` this reader may see, as it sees them, with
    /// their sequence numbers, and the audit entries showing them takes.
    fn screen_changes(
        &self,
        changes: Vec<crate::store::Stored>,
    ) -> (Vec<(u64, wire::Record)>, Vec<AuditEvent>) {
        let mut seqs = Vec::with_capacity(changes.len());
        let records = changes
            .into_iter()
            .map(|s| {
                seqs.push(s.seq);
                s.record
            })
            .collect();
        let (shown, events) = self.screen(records);
        // `screen` keeps the order and says how many it passed over.
        let mut seqs = seqs.into_iter();
        let page = shown
            .into_iter()
            .map(|(gap, record)| (seqs.nth(gap).expect("a seq per record"), record))
            .collect();
        (page, events)
    }

    /// The records of `records` this reader may see, as it sees them, each
    /// with its gap from the one before in `records` (for a caller that
    /// keeps a parallel list), and the audit entries showing them takes
    /// (none but for a department).
    fn screen(&self, records: Vec<wire::Record>) -> (Vec<(usize, wire::Record)>, Vec<AuditEvent>) {
        let Reader::Department(access) = &self.reader else {
            return (
                records.into_iter().map(|r| (0, self.show(r))).collect(),
                Vec::new(),
            );
        };
        let mut shown = Vec::with_capacity(records.len());
        let mut skipped = 0;
        for r in records {
            if access.admits(&r) {
                shown.push((skipped, self.show(r)));
                skipped = 0;
            } else {
                skipped += 1;
            }
        }
        let detail = access.audit_detail();
        let events = shown
            .iter()
            .map(|(_, r)| AuditEvent {
                actor: access.department.clone(),
                action: "read".into(),
                kind: r.kind.clone(),
                record_id: crate::store::id_text(&r.id),
                detail: detail.clone(),
            })
            .collect();
        (shown, events)
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

    /// A record as this reader may see it: masked unless this node owns it
    /// (for a department, unless its grant names the field in clear).
    pub fn show(&self, mut record: wire::Record) -> wire::Record {
        let node = self.node;
        if self.reader == Reader::Node {
            return record;
        }
        if let Reader::Department(access) = &self.reader {
            // The owner's proof signs the unmasked payload: of no use to a
            // department, which is shown the masked one.
            record.proof = Default::default();
            if !record.payload.is_empty() {
                record.payload =
                    match node
                        .schemas
                        .mask_except(&record.kind, &record.payload, &access.clear)
                    {
                        Ok(masked) => masked.into(),
                        // Never hand out what could not be masked.
                        Err(_) => Default::default(),
                    };
            }
            return record;
        }
        let owned_here = record
            .owner
            .as_ref()
            .is_some_and(|o| o.node == node.code.as_str());
        let for_departments = record
            .scope
            .as_ref()
            .is_some_and(|s| !s.departments.is_empty());
        if !owned_here && for_departments {
            // Shown to its departments only: the operator sees that it
            // exists and where it travels, not what it says.
            record.payload = Default::default();
            return record;
        }
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
