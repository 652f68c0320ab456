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
//! SQLite ([`sqlite::SqliteStore`]) is the embedded default; the PostgreSQL
//! store is a second implementation of the same trait.

pub mod sqlite;

use async_trait::async_trait;
use tiersync_proto::types::DivisionCode;
use tiersync_proto::wire;

/// A record as held by this node.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    /// The direct peer it arrived from; empty for records written here.
    pub via: String,
    pub record: wire::Record,
}

/// A record refused on arrival, to be quarantined with its reason.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub record_id: Vec<u8>,
    pub kind: String,
    pub origin: String,
    pub reason: String,
    /// The record as received (encoded), so it can be replayed.
    pub body: Vec<u8>,
}

impl Refusal {
    pub fn of(record: &wire::Record, reason: impl Into<String>) -> Refusal {
        Refusal {
            record_id: record.id.clone(),
            kind: record.kind.clone(),
            origin: record
                .owner
                .as_ref()
                .map(|o| o.node.clone())
                .unwrap_or_default(),
            reason: reason.into(),
            body: prost::Message::encode_to_vec(record),
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
    pub records: Vec<wire::Record>,
    /// Records refused by validation, quarantined in the same transaction.
    pub refused: Vec<Refusal>,
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
}

#[derive(Debug, Default, Clone)]
pub struct ListQuery {
    pub kind: String,
    pub owner_prefix: String,
    pub include_deleted: bool,
    pub after_id: Vec<u8>,
    pub limit: u32,
}

#[derive(Debug, Clone)]
pub struct QuarantineRow {
    pub qid: u64,
    pub peer: String,
    pub record_id: Vec<u8>,
    pub kind: String,
    pub origin: String,
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
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The storage interface of a node. See the module doc for the semantics
/// every implementation keeps.
#[async_trait]
pub trait Store: Send + Sync + 'static {
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
    async fn count(&self) -> Result<u64>;
    async fn cursor(&self, peer: &DivisionCode) -> Result<Option<Cursor>>;
    /// Applies a batch from a peer (see the module doc).
    async fn apply(&self, batch: ApplyBatch) -> Result<ApplyReport>;
    /// An owner's own write: checks and assigns the version atomically.
    async fn put_local(&self, write: LocalWrite) -> Result<Stored>;
    async fn quarantine_list(&self, limit: u32) -> Result<Vec<QuarantineRow>>;
    async fn quarantine_get(&self, qid: u64) -> Result<Option<QuarantineRow>>;
    async fn quarantine_resolve(&self, qid: u64) -> Result<()>;
    async fn quarantine_count(&self) -> Result<u64>;
    /// Flushes and closes; the store is closed last at shutdown.
    async fn close(&self);
}

/// Ordering of versions held for one id: a withdrawal supersedes the full
/// record at the same version.
pub(crate) fn version_key(version: u64, withdrawn: bool) -> (u64, bool) {
    (version, withdrawn)
}

#[cfg(test)]
mod tests;
