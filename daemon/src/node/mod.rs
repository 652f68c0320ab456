//! A node: its identity, its store, and the rules every record passes on the
//! way in, whether from the local API or from a peer. Nothing outside this
//! folder touches the record store: every write goes through [`write`] (own
//! records) or [`arrival`] (records from peers), and every read through
//! [`read`], the one read path.
//!
//! - Owner-only writes (一数一源): only the owner changes a record, and its
//!   version rises by exactly one per change. A put for a record owned
//!   elsewhere becomes an [`wire::Amendment`] routed to the owner, which
//!   applies or rejects it and routes an [`wire::AmendmentResult`] back
//!   ([`amend`], over the request/answer helper of [`routed`]).
//! - Every record from a peer is checked before it is applied ([`arrival`]):
//!   well-formed envelope, plausible origin for the link it came over, a
//!   scope that lets it be here, its owner's signature, and, for kinds this
//!   node knows, a payload that decodes and passes the kind's rules. A
//!   record that fails is quarantined with the reason ([`quarantine`]); the
//!   rest of its batch applies.
//! - Kinds whose arrival calls for work (amendments, certificate requests)
//!   are handled by the [`handlers::KindHandler`]s the app registers, after
//!   the records commit.
//! - Kinds this node does not know are relayed without decoding, so a tree
//!   upgraded one node at a time keeps syncing; the local API refuses them.
//! - Reads at any node but the owner mask the fields the schema marks
//!   personal ([`read`]); a department reads under one of its grants
//!   ([`access`]): its kinds, area and purpose, the personal fields it names
//!   in clear, and an audit entry for every record shown.
//! - The city's trust list and this node's published key: [`trust`].

pub mod access;
pub mod amend;
pub mod arrival;
pub mod collect;
pub mod handlers;
pub mod quarantine;
pub mod read;
pub mod routed;
pub mod trust;
pub mod write;

use std::sync::{Arc, OnceLock, RwLock};

use tiersync_proto::types::{DigestKey, DivisionCode, Hlc, ResidentId, Schemas};
use tiersync_proto::wire;
use tokio::sync::watch;

use crate::clock::{Clock, SharedClock};
use crate::config::SyncTuning;
use crate::identity::keyring::Keyring;
use crate::identity::origin::{GroupSigner, Identity, RootIssuer, TrustRoot};
use crate::ops::metrics::Metrics;
use crate::route::Scope;
use crate::store::{ApplyReport, GroupCommit, Store, StoreError};
use crate::sync::links::LinkTable;
use crate::worker::Workers;

pub use arrival::{PreparedBatch, ScreenedBatch};
pub use collect::Submitted;
pub use handlers::KindHandler;
pub use quarantine::ReplayOutcome;
pub use read::{Audited, Reader, Reads};
pub use write::{PutInput, PutOutcome};

/// Largest payload a record may carry; documents travel out of band.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// Errors of the node's rules, each mapped to one gRPC status in
/// [`crate::error`].
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("unknown kind `{kind}`; this node accepts: {}", known.join(", "))]
    UnknownKind { kind: String, known: Vec<String> },
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// This node could not sign its own write (its key is unusable).
    #[error("cannot sign: {0}")]
    Signing(#[from] crate::identity::origin::OriginError),
    #[error("record {0} not found")]
    NotFound(String),
    /// A department asked for what its grants do not allow; says which
    /// grant and what it lacks.
    #[error("{0}")]
    Denied(String),
}

pub struct Node {
    code: DivisionCode,
    name: Option<String>,
    store: Arc<dyn Store>,
    hlc: Hlc,
    schemas: &'static Schemas,
    digest_key: DigestKey,
    metrics: Arc<Metrics>,
    links: LinkTable,
    tuning: SyncTuning,
    head: watch::Sender<u64>,
    /// The trust root's key, at the city only: it issues the origin
    /// certificates of nodes that join.
    root_issuer: RwLock<Option<Arc<RootIssuer>>>,
    /// This node's signing key and origin certificate.
    identity: Arc<Identity>,
    /// Signs own writes, in groups under load.
    signer: GroupSigner,
    /// Commits own writes, in groups under load.
    writes: GroupCommit,
    /// Every origin key this node has learned, and verified-batch cache.
    keyring: Arc<Keyring>,
    /// What applied records of certain kinds call for (set once at build).
    handlers: OnceLock<Vec<Arc<dyn KindHandler>>>,
    /// Time for the rules that depend on it (expiry, freshness, stalls).
    clock: SharedClock,
    /// The node's named long-running loops, as operators see them.
    workers: Workers,
}

impl Node {
    #[allow(clippy::too_many_arguments)]
    pub async fn new(
        code: DivisionCode,
        name: Option<String>,
        store: Arc<dyn Store>,
        digest_key: DigestKey,
        metrics: Arc<Metrics>,
        tuning: SyncTuning,
        root: TrustRoot,
        identity: Identity,
        clock: SharedClock,
    ) -> Result<Arc<Node>, StoreError> {
        let identity = Arc::new(identity);
        let writes_to = store.clone();
        let head = store.head_seq().await?;
        metrics.head_seq.set(head as i64);
        let workers = Workers::new(clock.clone());
        store.report_to(&workers);
        Ok(Arc::new(Node {
            code,
            name,
            store,
            hlc: Hlc::new(),
            schemas: Schemas::global(),
            digest_key,
            metrics,
            links: LinkTable::new(clock.clone()),
            tuning,
            head: watch::Sender::new(head),
            root_issuer: RwLock::new(None),
            signer: GroupSigner::start(identity.clone(), workers.register("group-signer")),
            writes: GroupCommit::start_reporting(writes_to, workers.register("group-commit")),
            identity,
            keyring: Arc::new(Keyring::new(root)),
            handlers: OnceLock::new(),
            clock,
            workers,
        }))
    }

    // === what the node is ===

    /// This node's division code.
    pub fn code(&self) -> &DivisionCode {
        &self.code
    }

    /// Its name from the division data, if configured.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The state of every link, written by the link sessions.
    pub fn links(&self) -> &LinkTable {
        &self.links
    }

    pub fn tuning(&self) -> &SyncTuning {
        &self.tuning
    }

    /// Origin keys and the trust list this node holds.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// This node's signing key and origin certificate.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The clock the node's rules read.
    pub fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    /// The node's named long-running loops (see [`crate::worker`]).
    pub fn workers(&self) -> &Workers {
        &self.workers
    }

    /// The canonical kinds this build knows.
    pub fn schemas(&self) -> &'static Schemas {
        self.schemas
    }

    /// The keyed digest of a resident ID number, as used for matching.
    pub fn id_digest(&self, id: &ResidentId) -> String {
        self.digest_key.digest(id)
    }

    // === the change log ===

    /// Wakes whoever waits for new changes (link senders, watchers).
    pub fn subscribe_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Publishes changes applied outside a link session (quarantine replay).
    pub fn applied_locally(&self, report: &ApplyReport) {
        self.metrics.records_applied(
            report.applied.iter().map(|(_, r)| r.kind.as_str()),
            self.schemas,
        );
        if let Some((seq, _)) = report.applied.last() {
            self.advance_head(*seq);
        }
    }

    pub(crate) fn advance_head(&self, seq: u64) {
        self.head.send_if_modified(|h| {
            if seq > *h {
                *h = seq;
                true
            } else {
                false
            }
        });
        self.metrics.head_seq.set(*self.head.borrow() as i64);
    }

    /// Closes the store, last thing at shutdown.
    pub async fn close(&self) {
        self.store.close().await;
    }

    /// Tells when nothing holds this node's store any more (after a stop
    /// without closing it, as a crash would leave it).
    pub fn store_release(&self) -> StoreRelease {
        StoreRelease(Arc::downgrade(&self.store))
    }
}

/// See [`Node::store_release`].
#[derive(Debug)]
pub struct StoreRelease(std::sync::Weak<dyn Store>);

impl StoreRelease {
    pub fn released(&self) -> bool {
        self.0.strong_count() == 0
    }
}

/// The scope a record gets when the writer names none: shared up to the
/// city, down to nobody.
fn default_scope(_owner: &DivisionCode) -> Scope {
    Scope::up_to(tiersync_proto::types::Tier::City)
}

/// The city a code belongs to: its root ancestor.
pub(crate) fn city_of(code: &DivisionCode) -> DivisionCode {
    let mut c = code.clone();
    while let Some(p) = c.parent() {
        c = p;
    }
    c
}

pub(crate) fn owner_code(r: &wire::Record) -> Result<DivisionCode, String> {
    let owner = r.owner.as_ref().ok_or("no owner")?;
    DivisionCode::parse(&owner.node).map_err(|e| format!("owner: {e}"))
}

/// The owner's code as written in a record, valid or not.
fn owner_of(r: &wire::Record) -> String {
    r.owner.as_ref().map(|o| o.node.clone()).unwrap_or_default()
}
