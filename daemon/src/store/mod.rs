//! Storage: the one narrow interface between a node and its database.
//!
//! Semantics every engine keeps:
//! - **One row per record**, at the sequence number of its latest change; the
//!   sequence is the node's change log ([`Store::changes_after`]).
//! - **Apply is idempotent and ordered by the owner's version**: a record at a
//!   version already held is a duplicate (no-op); an older one is refused as
//!   stale; a withdrawal supersedes the full record at the same version.
//! - **The cursor commits with the records**: [`Store::apply`] writes the
//!   batch, its refusals and the peer's cursor in one transaction, so a crash
//!   at any instant neither loses nor re-applies anything.
//! - **Sequence numbers become visible in order**: a reader that has seen
//!   `seq = N` will never later see a new change below `N` (writes are
//!   serialised), so a sender's cursor never skips a change.
//!
//! SQLite ([`sqlite::SqliteStore`]) is the embedded default; PostgreSQL
//! ([`postgres::PgStore`]) is for data centres. The decisions both engines
//! make the same way (newest version per id within a batch, duplicate and
//! stale verdicts, sequence numbering, version checks, natural-key hashing,
//! decoding rows) live in this module, so neither engine repeats them; the
//! engines only move rows.

pub mod audit;
mod group;
pub mod postgres;
mod shared;
pub mod sqlite;
mod subscriptions;

pub use group::GroupCommit;
pub(crate) use shared::*;

use async_trait::async_trait;
use bytes::Bytes;
use prost::Message;
use tiersync_proto::types::DivisionCode;
use tiersync_proto::wire;

pub use audit::{AuditEntry, AuditEvent, AuditNote, AuditQuery, AuditSource};
pub use subscriptions::Subscriptions;

/// A record as held by this node.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    /// The direct peer it arrived from; empty for records written here.
    pub via: String,
    pub record: wire::Record,
}

/// A record with the bytes it is stored as. A link's receiver keeps the
/// bytes each record arrived in and a sender forwards the bytes it stored,
/// so no hop encodes a record again.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub record: wire::Record,
    pub body: Bytes,
}

impl Encoded {
    pub fn new(record: wire::Record) -> Encoded {
        let body = record.encode_to_vec().into();
        Encoded { record, body }
    }

    /// Decodes a record as it arrived over a link (its payload and proof
    /// then share the received buffer). The received bytes become its body
    /// unless they hold more than the record's fields (unknown fields, or
    /// a field sent twice): no signature covers those, so the body is then
    /// the record encoded afresh, without them.
    pub fn received(bytes: Bytes) -> std::result::Result<Encoded, prost::DecodeError> {
        let record = wire::Record::decode(bytes.clone())?;
        if record.encoded_len() == bytes.len() {
            Ok(Encoded {
                record,
                body: bytes,
            })
        } else {
            Ok(Encoded::new(record))
        }
    }
}

impl From<wire::Record> for Encoded {
    fn from(record: wire::Record) -> Encoded {
        Encoded::new(record)
    }
}

/// A change as a link's sender reads it: the record's stored bytes.
#[derive(Debug, Clone)]
pub struct StoredBody {
    pub seq: u64,
    pub body: Bytes,
}

/// Why a record was refused on arrival, as the node's rules act on it
/// (the reason text says the rest). Stored with each quarantine row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalCause {
    /// The bytes are not a record at all.
    Undecodable,
    /// The envelope is malformed: id, kind name, owner, version, scope,
    /// tombstone flags, payload size.
    Envelope,
    /// The record may not be here, or may not have come over this link.
    Route,
    /// The payload is not a valid record of its kind.
    Payload,
    /// A trust list or `NodeKey` that does not check out.
    KeyMaterial,
    /// Its owner's key is not known here yet: replayed when it arrives.
    UnknownSigner,
    /// Its proof or signature does not verify, or its owner is revoked.
    Signature,
    /// A version at or below the one held.
    Stale,
    /// A row written before causes were stored, or by a newer build.
    Unknown,
}

impl RefusalCause {
    pub const ALL: [RefusalCause; 9] = [
        RefusalCause::Undecodable,
        RefusalCause::Envelope,
        RefusalCause::Route,
        RefusalCause::Payload,
        RefusalCause::KeyMaterial,
        RefusalCause::UnknownSigner,
        RefusalCause::Signature,
        RefusalCause::Stale,
        RefusalCause::Unknown,
    ];

    /// The name stored in the quarantine table.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCause::Undecodable => "undecodable",
            RefusalCause::Envelope => "envelope",
            RefusalCause::Route => "route",
            RefusalCause::Payload => "payload",
            RefusalCause::KeyMaterial => "key-material",
            RefusalCause::UnknownSigner => "unknown-signer",
            RefusalCause::Signature => "signature",
            RefusalCause::Stale => "stale",
            RefusalCause::Unknown => "unknown",
        }
    }

    /// The cause a stored name stands for (`Unknown` for any other).
    pub fn from_stored(name: &str) -> RefusalCause {
        RefusalCause::ALL
            .into_iter()
            .find(|c| c.as_str() == name)
            .unwrap_or(RefusalCause::Unknown)
    }
}

impl std::fmt::Display for RefusalCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record refused on arrival, to be quarantined with its reason.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub record_id: Vec<u8>,
    pub kind: String,
    pub origin: String,
    pub cause: RefusalCause,
    pub reason: String,
    /// The record as received (encoded), so it can be replayed.
    pub body: Vec<u8>,
}

impl Refusal {
    pub fn of(record: &wire::Record, cause: RefusalCause, reason: impl Into<String>) -> Refusal {
        Refusal {
            body: prost::Message::encode_to_vec(record),
            ..Refusal::of_fields(record, cause, reason)
        }
    }

    /// [`Refusal::of`] a record that arrived encoded, keeping its bytes.
    pub fn of_encoded(
        encoded: &Encoded,
        cause: RefusalCause,
        reason: impl Into<String>,
    ) -> Refusal {
        Refusal {
            body: encoded.body.to_vec(),
            ..Refusal::of_fields(&encoded.record, cause, reason)
        }
    }

    /// Bytes that do not decode as a record at all.
    pub fn undecodable(bytes: &[u8], reason: impl Into<String>) -> Refusal {
        Refusal {
            record_id: Vec::new(),
            kind: String::new(),
            origin: String::new(),
            cause: RefusalCause::Undecodable,
            reason: reason.into(),
            body: bytes.to_vec(),
        }
    }

    fn of_fields(record: &wire::Record, cause: RefusalCause, reason: impl Into<String>) -> Refusal {
        Refusal {
            record_id: record.id.clone(),
            kind: record.kind.clone(),
            origin: record
                .owner
                .as_ref()
                .map(|o| o.node.clone())
                .unwrap_or_default(),
            cause,
            reason: reason.into(),
            body: Vec::new(),
        }
    }
}

/// The receiver's cursor into one peer's change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub applied_through: u64,
    pub peer_epoch: String,
}

/// One batch to apply atomically.
#[derive(Debug, Default)]
pub struct ApplyBatch {
    /// Peer the batch came from (empty for local writes).
    pub via: String,
    /// Cursor to store in the same transaction.
    pub cursor: Option<(DivisionCode, Cursor)>,
    /// Validated records.
    pub records: Vec<Encoded>,
    /// Records refused by validation, quarantined in the same transaction.
    pub refused: Vec<Refusal>,
    /// Events that have no write of their own (a trust list adopted from
    /// this batch), audited in its transaction. Refusals are audited by the
    /// store itself.
    pub audit: Vec<AuditEvent>,
}

#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Records applied, with the local sequence number each took.
    pub applied: Vec<(u64, wire::Record)>,
    /// Records already held at that version.
    pub duplicates: usize,
    /// Everything quarantined: validation refusals plus stale versions.
    pub refused: Vec<Refusal>,
}

/// A write made by the owner itself through the local API.
#[derive(Debug, Clone)]
pub struct LocalWrite {
    /// The record with everything but `version` filled in.
    pub record: wire::Record,
    /// 0 to create; otherwise the version the writer last saw.
    pub expected_version: u64,
    /// Natural keys that must not already belong to another live record of
    /// the same kind (collect once: the same fact is linked, not duplicated).
    pub unique_keys: bool,
    /// Who wrote it and why, audited in the same transaction (the store
    /// adds the record's kind and id).
    pub audit: AuditNote,
}

#[derive(Debug, Default, Clone)]
pub struct ListQuery {
    pub kind: String,
    pub owner_prefix: String,
    pub include_deleted: bool,
    pub after_id: Vec<u8>,
    pub limit: u32,
}

pub use crate::route::Owners;

/// One page of the change log for a link's sender.
#[derive(Debug, Default)]
pub struct LinkPage {
    /// The admitted changes, oldest first.
    pub changes: Vec<StoredBody>,
    /// How far the log was read: every change up to here that the filter
    /// left out is passed, not pending (at least the last change's seq).
    pub through: u64,
    /// Whether `through` is the committed head: nothing more to read now.
    pub caught_up: bool,
}

/// Most sequence numbers one [`Store::link_page`] scans, so a filter that
/// leaves out nearly everything still answers in bounded time.
pub const LINK_SCAN_SPAN: u64 = 65_536;

#[derive(Debug, Clone)]
pub struct QuarantineRow {
    pub qid: u64,
    pub peer: String,
    pub record_id: Vec<u8>,
    pub kind: String,
    pub origin: String,
    pub cause: RefusalCause,
    pub reason: String,
    pub body: Vec<u8>,
    pub at_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("cannot apply schema migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored record at seq {seq} does not decode: {source}")]
    Corrupt {
        seq: u64,
        #[source]
        source: prost::DecodeError,
    },
    #[error(
        "the store at {path} belongs to node `{stored}`, but this node is `{configured}`; point storage.path at this node's own file"
    )]
    WrongNode {
        path: String,
        stored: String,
        configured: String,
    },
    #[error(
        "record {id} already exists at version {current}; to change it pass expected_version = {current}"
    )]
    AlreadyExists { id: String, current: u64 },
    #[error("record {id} does not exist here; create it with expected_version = 0")]
    NotFound { id: String },
    #[error(
        "record {id} is at version {current}, not the expected version {expected}; re-read it and retry"
    )]
    VersionConflict {
        id: String,
        current: u64,
        expected: u64,
    },
    #[error(
        "a live {kind} with the same {key} already exists: record {existing}; change that record instead of collecting the fact again"
    )]
    DuplicateKey {
        kind: String,
        key: String,
        existing: String,
    },
    #[error(
        "another daemon took over this node's PostgreSQL store (fencing token {held}, ours {ours}); this process is no longer the active one and stops writing"
    )]
    Fenced { ours: i64, held: i64 },
    #[error(
        "this daemon ({holder}) no longer holds its node's active lease: {detail}; a standby may be active now, so this one stops writing"
    )]
    LeaseLost { holder: String, detail: String },
    #[error("storage.path `{url}` is not a usable PostgreSQL URL: {reason}")]
    BadUrl { url: String, reason: String },
    /// The transaction this write shared with others failed.
    #[error("the write's transaction failed: {reason}")]
    Shared { reason: String },
    /// The disk (or the database server's disk) has no room for the write.
    /// Nothing of the write was stored; reads go on, and writes succeed
    /// again by themselves once there is room.
    #[error(
        "store {store} is full ({detail}): the write was not stored; free space on its disk and writes resume by themselves"
    )]
    Full { store: String, detail: String },
    #[error(
        "store {store} is in use by another tiersync process{holder}; stop that daemon first (two daemons on one store would hand out the same sequence numbers), or point storage.path at this node's own store"
    )]
    InUse { store: String, holder: String },
    /// A store this node cannot (or must not) open as it is.
    #[error("refusing to open store {store}: {problem}")]
    Unusable { store: String, problem: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// A write refused on its own merits (version, existence, natural key),
    /// as opposed to a failure of the store.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            StoreError::AlreadyExists { .. }
                | StoreError::NotFound { .. }
                | StoreError::VersionConflict { .. }
                | StoreError::DuplicateKey { .. }
        )
    }

    /// The same error for another write that shared the failed
    /// transaction: store failures keep their kind where it matters to the
    /// caller (fencing) and their message otherwise.
    pub fn for_another_write(&self) -> StoreError {
        match self {
            StoreError::Fenced { ours, held } => StoreError::Fenced {
                ours: *ours,
                held: *held,
            },
            StoreError::LeaseLost { holder, detail } => StoreError::LeaseLost {
                holder: holder.clone(),
                detail: detail.clone(),
            },
            StoreError::Full { store, detail } => StoreError::Full {
                store: store.clone(),
                detail: detail.clone(),
            },
            other => StoreError::Shared {
                reason: other.to_string(),
            },
        }
    }
}

/// The storage interface of a node. See the module doc for the semantics
/// every implementation keeps.
#[async_trait]
pub trait Store: AuditSource + Subscriptions + Send + Sync + 'static {
    /// Random id minted when the store was created; a peer that sees it
    /// change knows this log was recreated.
    fn epoch(&self) -> &str;
    /// The newest sequence number in the change log (0 when empty).
    async fn head_seq(&self) -> Result<u64>;
    async fn get(&self, id: &[u8]) -> Result<Option<Stored>>;
    /// Live records of `kind` with natural key `name = value`.
    async fn lookup(&self, kind: &str, name: &str, value: &str) -> Result<Vec<Stored>>;
    async fn list(&self, query: &ListQuery) -> Result<Vec<Stored>>;
    /// Changes with a sequence number above `after`, oldest first.
    async fn changes_after(&self, after: u64, limit: u32) -> Result<Vec<Stored>>;
    /// Changes in `(after, through]` whose owner `owners` admits, oldest
    /// first, at most `limit`.
    async fn changes_in(
        &self,
        after: u64,
        through: u64,
        limit: u32,
        owners: &Owners<'_>,
    ) -> Result<Vec<StoredBody>>;
    /// The next page of the log after `after` for a link's sender: at most
    /// `limit` changes `owners` admits, read no further than the committed
    /// head (every seq up to it is committed and visible, so the filtered
    /// gaps it passes are final) and [`LINK_SCAN_SPAN`] seqs.
    async fn link_page(&self, after: u64, limit: u32, owners: &Owners<'_>) -> Result<LinkPage> {
        let head = self.head_seq().await?;
        let bound = head.min(after.saturating_add(LINK_SCAN_SPAN));
        if bound <= after {
            return Ok(LinkPage {
                changes: Vec::new(),
                through: after,
                caught_up: true,
            });
        }
        let changes = self.changes_in(after, bound, limit, owners).await?;
        let (through, caught_up) = match changes.last() {
            Some(last) if changes.len() >= limit as usize => (last.seq, last.seq >= head),
            _ => (bound, bound >= head),
        };
        Ok(LinkPage {
            changes,
            through,
            caught_up,
        })
    }
    async fn count(&self) -> Result<u64>;
    async fn cursor(&self, peer: &DivisionCode) -> Result<Option<Cursor>>;
    /// Applies a batch from a peer (see the module doc).
    async fn apply(&self, batch: ApplyBatch) -> Result<ApplyReport>;
    /// Owners' own writes, in order, in one transaction: each is checked
    /// (expected version, unique natural keys) against what is stored and
    /// the writes before it, and gets the next sequence number. A write that
    /// fails its check is refused alone (its own `Err`, nothing of it
    /// written); a failure of the transaction itself is the outer `Err`, and
    /// then none of them is written.
    async fn put_local_many(&self, writes: Vec<LocalWrite>) -> Result<Vec<Result<Stored>>>;
    /// An owner's own write: checks and assigns the version atomically.
    async fn put_local(&self, write: LocalWrite) -> Result<Stored> {
        self.put_local_many(vec![write])
            .await?
            .pop()
            .expect("one outcome per write")
    }
    /// Appends audit entries, in order, in one transaction of their own
    /// (reads by departments: one entry per record shown).
    async fn audit_append_many(&self, events: Vec<AuditEvent>) -> Result<Vec<AuditEntry>>;
    /// Appends one audit entry in its own transaction.
    async fn audit_append(&self, event: AuditEvent) -> Result<AuditEntry> {
        Ok(self
            .audit_append_many(vec![event])
            .await?
            .pop()
            .expect("one entry per event"))
    }
    async fn quarantine_list(&self, limit: u32) -> Result<Vec<QuarantineRow>>;
    async fn quarantine_get(&self, qid: u64) -> Result<Option<QuarantineRow>>;
    async fn quarantine_resolve(&self, qid: u64) -> Result<()>;
    async fn quarantine_count(&self) -> Result<u64>;
    /// Gives the store a new random epoch and returns it: maintenance after a
    /// restore from backup, run with the node stopped. Peers whose cursors
    /// name the old epoch then restart from the beginning of this log
    /// instead of skipping sequence numbers it hands out again. Takes effect
    /// when the store is next opened; callers close it afterwards.
    async fn renew_epoch(&self) -> Result<String>;
    /// The active lease of a node whose daemons share one database (see
    /// [`postgres::ActiveLease`]); `None` where there is none.
    async fn lease(&self) -> Result<Option<postgres::LeaseStatus>> {
        Ok(None)
    }
    /// Flushes and closes; the store is closed last at shutdown.
    async fn close(&self);
    /// Registers the store's own background loops (SQLite's WAL
    /// checkpoint) as named workers, so operators see them with the rest.
    fn report_to(&self, _workers: &crate::worker::Workers) {}
}

/// Ordering of versions held for one id: a withdrawal supersedes the full
/// record at the same version.
pub(crate) fn version_key(version: u64, withdrawn: bool) -> (u64, bool) {
    (version, withdrawn)
}

// === logic both engines share: shared.rs ===

#[cfg(test)]
mod tests;
