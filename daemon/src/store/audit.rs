//! The tamper-evident audit log every node keeps in its store.
//!
//! What is recorded, each entry IN THE SAME TRANSACTION as what it records
//! (so an entry exists exactly when its event committed):
//! - every own write ([`Store::put_local`](crate::store::Store::put_local)): action `put` or `delete`, or
//!   `trust` / `join` for trust lists and join records;
//! - every refusal in [`Store::apply`](crate::store::Store::apply) (validation and stale versions):
//!   action `reject`, actor `peer:<code>`, detail the reason;
//! - every trust list adopted from a peer (action `trust`, in that batch's
//!   transaction);
//! - reads by a department, for the adapters ([`Store::audit_append`](crate::store::Store::audit_append)).
//!
//! Records applied from peers are not entries: the change log already holds
//! them, and a link applies tens of thousands a second.
//!
//! ## The chain (persisted: never change it)
//!
//! Entries are numbered 1, 2, 3, ... without gaps. The hash of an entry is
//! SM3 over
//!
//! ```text
//! lp("tiersync.audit.v1") || u64be(entry) || i64be(at_ms)
//!   || lp(actor) || lp(action) || lp(kind) || lp(record_id) || lp(detail)
//!   || lp(prev_hash)
//! ```
//!
//! where `lp(x)` is the byte length of `x` as a big-endian `u32` followed by
//! the bytes of `x` (strings as UTF-8), and `prev_hash` is the previous
//! entry's hash (32 zero bytes for entry 1). [`verify`] walks the chain and
//! names the first entry that was changed, does not link, or is missing.
//! It cannot see a truncated tail or a chain rewritten from some entry on:
//! that needs the head hash anchored outside the store.

use std::fmt;

use async_trait::async_trait;
use tiersync_trust::hash::Sm3Hasher;

use super::Result;

/// The domain tag at the start of every hashed entry (version 1).
pub const AUDIT_TAG: &str = "tiersync.audit.v1";
/// The `prev_hash` of entry 1.
pub const GENESIS: [u8; 32] = [0; 32];

/// Entries read per page by [`verify`].
const PAGE: u32 = 1000;

/// An event to record; the store numbers, times and chains it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditEvent {
    /// Who: a department, `local-api`, `node`, or `peer:<code>`.
    pub actor: String,
    /// `put`, `delete`, `reject`, `trust`, `join` or `read`.
    pub action: String,
    /// The record kind concerned ('' if none).
    pub kind: String,
    /// The record id as people read it (UUID), '' if none.
    pub record_id: String,
    pub detail: String,
}

/// Who and what for one local write; the store adds the record's kind and
/// id (see [`crate::store::LocalWrite`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditNote {
    pub actor: String,
    pub action: String,
    pub detail: String,
}

impl AuditNote {
    /// `put` (or `delete` for a tombstone) by `actor`.
    pub fn write(actor: impl Into<String>, deleted: bool) -> AuditNote {
        AuditNote {
            actor: actor.into(),
            action: if deleted { "delete" } else { "put" }.into(),
            detail: String::new(),
        }
    }

    /// A write by the node itself that is a trust or join event.
    pub fn event(action: &str, detail: impl Into<String>) -> AuditNote {
        AuditNote {
            actor: "node".into(),
            action: action.into(),
            detail: detail.into(),
        }
    }
}

/// One entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub entry: u64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub kind: String,
    pub record_id: String,
    pub detail: String,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

impl AuditEntry {
    /// The hash its contents and `prev_hash` call for (the module doc).
    pub fn expected_hash(&self) -> [u8; 32] {
        entry_hash(
            self.entry,
            self.at_ms,
            &self.actor,
            &self.action,
            &self.kind,
            &self.record_id,
            &self.detail,
            &self.prev_hash,
        )
    }
}

impl fmt::Display for AuditEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {} {} {}",
            self.entry,
            self.at_ms,
            self.actor,
            self.action,
            if self.kind.is_empty() {
                "-"
            } else {
                &self.kind
            },
            if self.record_id.is_empty() {
                "-"
            } else {
                &self.record_id
            },
            self.detail
        )
    }
}

/// Filters for paging through entries; empty strings and `None` match all.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Entries numbered above this.
    pub after: u64,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub kind: String,
    pub actor: String,
    pub action: String,
    /// 0 means 100; at most 10,000.
    pub limit: u32,
}

impl AuditQuery {
    pub(crate) fn limit(&self) -> i64 {
        if self.limit == 0 {
            100
        } else {
            self.limit.min(10_000) as i64
        }
    }
}

/// Where entries can be read from: a store, or a read-only connection to
/// one (`tiersync audit` while the daemon runs).
#[async_trait]
pub trait AuditSource: Send + Sync {
    /// Entries matching `query`, in entry order.
    async fn audit_list(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>>;
}

fn lp(h: &mut Sm3Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u32).to_be_bytes());
    h.update(bytes);
}

/// The hash of an entry (the encoding in the module doc).
#[allow(clippy::too_many_arguments)]
pub fn entry_hash(
    entry: u64,
    at_ms: i64,
    actor: &str,
    action: &str,
    kind: &str,
    record_id: &str,
    detail: &str,
    prev_hash: &[u8],
) -> [u8; 32] {
    let mut h = Sm3Hasher::new();
    lp(&mut h, AUDIT_TAG.as_bytes());
    h.update(&entry.to_be_bytes());
    h.update(&at_ms.to_be_bytes());
    for field in [actor, action, kind, record_id, detail] {
        lp(&mut h, field.as_bytes());
    }
    lp(&mut h, prev_hash);
    h.finalize().0
}

/// The head of a chain: the next entry number and the hash to link to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChainHead {
    pub next: u64,
    pub prev: [u8; 32],
}

impl Default for ChainHead {
    fn default() -> Self {
        ChainHead {
            next: 1,
            prev: GENESIS,
        }
    }
}

impl ChainHead {
    /// The head after the last stored entry `(entry, hash)`, if any.
    pub(crate) fn after(last: Option<(i64, Vec<u8>)>) -> ChainHead {
        match last {
            None => ChainHead::default(),
            Some((entry, hash)) => ChainHead {
                next: entry as u64 + 1,
                prev: hash.as_slice().try_into().unwrap_or(GENESIS),
            },
        }
    }

    /// Numbers and chains `events` from this head; returns the entries and
    /// the head to keep once they commit.
    pub(crate) fn chain(self, events: Vec<AuditEvent>, at_ms: i64) -> (Vec<AuditEntry>, ChainHead) {
        let mut head = self;
        let entries = events
            .into_iter()
            .map(|e| {
                let hash = entry_hash(
                    head.next,
                    at_ms,
                    &e.actor,
                    &e.action,
                    &e.kind,
                    &e.record_id,
                    &e.detail,
                    &head.prev,
                );
                let entry = AuditEntry {
                    entry: head.next,
                    at_ms,
                    actor: e.actor,
                    action: e.action,
                    kind: e.kind,
                    record_id: e.record_id,
                    detail: e.detail,
                    prev_hash: head.prev.to_vec(),
                    hash: hash.to_vec(),
                };
                head = ChainHead {
                    next: head.next + 1,
                    prev: hash,
                };
                entry
            })
            .collect();
        (entries, head)
    }
}

/// The first break [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    #[error("entry {entry} was changed (its hash does not match its contents)")]
    Changed { entry: u64 },
    #[error("entry {entry} does not link to entry {previous}")]
    Unlinked { entry: u64, previous: u64 },
    #[error("entry {missing} is missing ({previous} is followed by {next})")]
    Missing {
        missing: u64,
        previous: u64,
        next: u64,
    },
    #[error("entry 1 is missing (the log starts at entry {first})")]
    MissingStart { first: u64 },
}

/// The outcome of walking a whole chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every entry matches its contents and links to the one before.
    Intact {
        entries: u64,
        head: Vec<u8>,
    },
    Broken(ChainBreak),
}

/// Walks the chain from entry 1 in pages and names the first broken entry.
pub async fn verify<S: AuditSource + ?Sized>(log: &S) -> Result<Verdict> {
    let mut previous: Option<AuditEntry> = None;
    let mut query = AuditQuery {
        limit: PAGE,
        ..Default::default()
    };
    loop {
        let page = log.audit_list(&query).await?;
        let Some(last) = page.last() else { break };
        query.after = last.entry;
        for e in page {
            if let Some(broken) = check(previous.as_ref(), &e) {
                return Ok(Verdict::Broken(broken));
            }
            previous = Some(e);
        }
    }
    Ok(match previous {
        None => Verdict::Intact {
            entries: 0,
            head: GENESIS.to_vec(),
        },
        Some(last) => Verdict::Intact {
            entries: last.entry,
            head: last.hash,
        },
    })
}

/// The break, if any, at `e` given the entry before it.
fn check(previous: Option<&AuditEntry>, e: &AuditEntry) -> Option<ChainBreak> {
    let (expected_number, expected_prev) = match previous {
        None => (1, GENESIS.as_slice()),
        Some(p) => (p.entry + 1, p.hash.as_slice()),
    };
    if e.entry != expected_number {
        return Some(match previous {
            None => ChainBreak::MissingStart { first: e.entry },
            Some(p) => ChainBreak::Missing {
                missing: expected_number,
                previous: p.entry,
                next: e.entry,
            },
        });
    }
    if e.expected_hash().as_slice() != e.hash.as_slice() {
        return Some(ChainBreak::Changed { entry: e.entry });
    }
    if e.prev_hash != expected_prev {
        return Some(ChainBreak::Unlinked {
            entry: e.entry,
            previous: e.entry - 1,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the persisted encoding: a change here breaks every stored chain.
    /// The expected digest was computed independently, with Python's
    /// `hashlib.new("sm3", ...)` over the encoding built by hand from the
    /// module doc.
    #[test]
    fn the_entry_hash_is_pinned() {
        let h = entry_hash(
            1,
            1_764_600_000_000,
            "local-api",
            "put",
            "civil.v1.Resident",
            "0190f5a4-0000-7000-8000-000000000001",
            "",
            &GENESIS,
        );
        assert_eq!(
            hex::encode(h),
            "01b0feef7011b38ea59436440f2ee9b8cc88f877337a24adcdb69230ea164df8"
        );
        // each field is length-prefixed: moving a byte between fields changes it
        let moved = entry_hash(
            1,
            1_764_600_000_000,
            "local-ap",
            "iput",
            "civil.v1.Resident",
            "0190f5a4-0000-7000-8000-000000000001",
            "",
            &GENESIS,
        );
        assert_ne!(h, moved);
    }

    fn chain(n: usize) -> Vec<AuditEntry> {
        let events = (0..n)
            .map(|i| AuditEvent {
                actor: "node".into(),
                action: "put".into(),
                kind: "k".into(),
                record_id: format!("r{i}"),
                detail: String::new(),
            })
            .collect();
        ChainHead::default().chain(events, 7).0
    }

    fn check_all(entries: &[AuditEntry]) -> Option<ChainBreak> {
        let mut previous = None;
        for e in entries {
            if let Some(b) = check(previous, e) {
                return Some(b);
            }
            previous = Some(e);
        }
        None
    }

    #[test]
    fn breaks_are_named() {
        type Case = (
            &'static str,
            Box<dyn Fn(&mut Vec<AuditEntry>)>,
            Option<&'static str>,
        );
        let cases: Vec<Case> = vec![
            ("intact", Box::new(|_| {}), None),
            (
                "edited",
                Box::new(|c| c[2].detail = "x".into()),
                Some("entry 3 was changed (its hash does not match its contents)"),
            ),
            (
                "deleted",
                Box::new(|c| drop(c.remove(2))),
                Some("entry 3 is missing (2 is followed by 4)"),
            ),
            (
                "first deleted",
                Box::new(|c| drop(c.remove(0))),
                Some("entry 1 is missing (the log starts at entry 2)"),
            ),
            (
                "edited and rehashed",
                Box::new(|c| {
                    c[2].detail = "x".into();
                    c[2].hash = c[2].expected_hash().to_vec();
                }),
                Some("entry 4 does not link to entry 3"),
            ),
        ];
        for (name, tamper, expected) in cases {
            let mut c = chain(5);
            tamper(&mut c);
            let got = check_all(&c).map(|b| b.to_string());
            assert_eq!(got.as_deref(), expected, "{name}");
        }
    }
}
