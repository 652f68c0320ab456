//! The decisions both engines make the same way: the newest version per id
//! within a batch, duplicate and stale verdicts, sequence numbering,
//! version checks, natural-key hashing, decoding rows, staging grouped own
//! writes. The engines only move rows.

use std::collections::HashMap;

use bytes::Bytes;
use prost::Message;
use tiersync_proto::wire;

use super::*;

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A record id as people read it: the UUID, or hex for anything else.
pub(crate) fn id_text(id: &[u8]) -> String {
    match uuid::Uuid::from_slice(id) {
        Ok(u) => u.to_string(),
        Err(_) => hex::encode(id),
    }
}

/// The index hash of a natural key: the first 8 bytes of
/// SHA-256(kind NUL name NUL value). Persisted by both engines: never change
/// it.
pub(crate) fn key_hash(kind: &str, name: &str, value: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    h.update([0]);
    h.update(name.as_bytes());
    h.update([0]);
    h.update(value.as_bytes());
    let digest = h.finalize();
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Whether `r` really carries the natural key (the index holds only a hash,
/// so every hit is checked on the record itself).
pub(crate) fn has_key(r: &wire::Record, kind: &str, name: &str, value: &str) -> bool {
    r.kind == kind && r.keys.iter().any(|k| k.name == name && k.value == value)
}

/// The index entries (hash, seq) of a record stored at `seq`; none for a
/// deleted record, which no lookup may find.
pub(crate) fn index_entries(seq: u64, r: &wire::Record) -> impl Iterator<Item = (i64, i64)> + '_ {
    r.keys
        .iter()
        .filter(move |_| !r.deleted)
        .map(move |k| (key_hash(&r.kind, &k.name, &k.value), seq as i64))
}

/// Decodes a stored row `(seq, via, body)`, the shape every read selects.
pub(crate) fn stored_row<R>(row: &R) -> Result<Stored>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let seq: i64 = row.try_get(0)?;
    let via: String = row.try_get(1)?;
    let body: Vec<u8> = row.try_get(2)?;
    Ok(Stored {
        seq: seq as u64,
        via,
        record: decode(seq, body)?,
    })
}

/// Reads a row `(seq, body)` for a link's sender.
pub(crate) fn stored_body<R>(row: &R) -> Result<StoredBody>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let seq: i64 = row.try_get(0)?;
    let body: Vec<u8> = row.try_get(1)?;
    Ok(StoredBody {
        seq: seq as u64,
        body: body.into(),
    })
}

/// Decodes a quarantine row `(qid, peer, record_id, kind, origin, reason,
/// body, at_ms, cause)`.
pub(crate) fn quarantine_row<R>(r: &R) -> Result<QuarantineRow>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(QuarantineRow {
        qid: r.try_get::<i64, _>(0)? as u64,
        peer: r.try_get(1)?,
        record_id: r.try_get::<Option<Vec<u8>>, _>(2)?.unwrap_or_default(),
        kind: r.try_get(3)?,
        origin: r.try_get(4)?,
        reason: r.try_get(5)?,
        body: r.try_get(6)?,
        at_ms: r.try_get(7)?,
        cause: RefusalCause::from_stored(&r.try_get::<String, _>(8)?),
    })
}

/// Decodes a stored body; the record's payload and proof stay in its
/// buffer rather than being copied out.
pub(crate) fn decode(seq: i64, body: Vec<u8>) -> Result<wire::Record> {
    wire::Record::decode(Bytes::from(body)).map_err(|source| StoreError::Corrupt {
        seq: seq as u64,
        source,
    })
}

/// Keeps, per id, the newest version in a batch (first-seen order of ids);
/// a copy no newer than one already seen counts as a duplicate.
pub(crate) fn newest_per_id(records: Vec<Encoded>, report: &mut ApplyReport) -> Vec<Encoded> {
    // Which copy to keep for each id, in first-seen order, decided over
    // borrowed ids (this runs for every record a link applies).
    let picks: Vec<usize> = {
        let mut at: HashMap<&[u8], usize> = HashMap::with_capacity(records.len());
        let mut picks: Vec<usize> = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            match at.get(r.record.id.as_slice()) {
                None => {
                    at.insert(&r.record.id, picks.len());
                    picks.push(i);
                }
                Some(&p) => {
                    let kept = &records[picks[p]].record;
                    if version_key(r.record.version, r.record.withdrawn)
                        > version_key(kept.version, kept.withdrawn)
                    {
                        picks[p] = i;
                    } else {
                        report.duplicates += 1;
                    }
                }
            }
        }
        picks
    };
    if picks.len() == records.len() {
        return records;
    }
    let mut slots: Vec<Option<Encoded>> = records.into_iter().map(Some).collect();
    picks
        .into_iter()
        .map(|i| slots[i].take().expect("each copy is picked once"))
        .collect()
}

/// What an apply writes, decided against the versions already held.
#[derive(Debug, Default)]
pub(crate) struct ApplyPlan {
    /// Records to write, each at the sequence number it takes.
    pub writes: Vec<(u64, Encoded)>,
    /// Ids among `writes` that replace a stored version (whose index
    /// entries must go).
    pub replaced: Vec<Vec<u8>>,
    /// The next free sequence number once the plan is committed.
    pub next_seq: u64,
}

/// Decides each incoming record (one per id, see [`newest_per_id`]) against
/// `held` (id → held version): duplicates are counted, stale versions
/// refused into `report`, the rest numbered from `next_seq` in order.
pub(crate) fn plan_apply(
    incoming: Vec<Encoded>,
    held: &HashMap<Vec<u8>, (u64, bool)>,
    next_seq: u64,
    report: &mut ApplyReport,
) -> ApplyPlan {
    let mut plan = ApplyPlan {
        next_seq,
        ..Default::default()
    };
    for encoded in incoming {
        let r = &encoded.record;
        let new = version_key(r.version, r.withdrawn);
        match held.get(&r.id) {
            Some(&(v, w)) if version_key(v, w) == new => report.duplicates += 1,
            Some(&(v, w)) if version_key(v, w) > new => {
                let reason = format!(
                    "stale version: record {} (owner `{}`) arrived at version {}{} but version {v}{} is already held",
                    id_text(&r.id),
                    r.owner.as_ref().map(|o| o.node.as_str()).unwrap_or(""),
                    r.version,
                    if r.withdrawn { " (withdrawal)" } else { "" },
                    if w { " (withdrawal)" } else { "" },
                );
                report
                    .refused
                    .push(Refusal::of_encoded(&encoded, RefusalCause::Stale, reason));
            }
            found => {
                if found.is_some() {
                    plan.replaced.push(r.id.clone());
                }
                plan.writes.push((plan.next_seq, encoded));
                plan.next_seq += 1;
            }
        }
    }
    plan
}

/// The audit entry of a refusal in a batch from `via`.
pub(crate) fn refusal_event(via: &str, r: &Refusal) -> AuditEvent {
    AuditEvent {
        actor: format!("peer:{via}"),
        action: "reject".into(),
        kind: r.kind.clone(),
        record_id: if r.record_id.is_empty() {
            String::new()
        } else {
            id_text(&r.record_id)
        },
        detail: r.reason.clone(),
    }
}

/// The audit events an apply writes: its refusals, then the batch's own.
pub(crate) fn apply_events(
    via: &str,
    refused: &[Refusal],
    extra: Vec<AuditEvent>,
) -> Vec<AuditEvent> {
    refused
        .iter()
        .map(|r| refusal_event(via, r))
        .chain(extra)
        .collect()
}

/// The audit entry of a local write of `record`.
pub(crate) fn write_event(note: AuditNote, record: &wire::Record) -> AuditEvent {
    AuditEvent {
        actor: note.actor,
        action: note.action,
        kind: record.kind.clone(),
        record_id: id_text(&record.id),
        detail: note.detail,
    }
}

/// Decodes an audit row `(entry, at_ms, actor, action, kind, record_id,
/// detail, prev_hash, hash)`.
pub(crate) fn audit_row<R>(r: &R) -> Result<AuditEntry>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(AuditEntry {
        entry: r.try_get::<i64, _>(0)? as u64,
        at_ms: r.try_get(1)?,
        actor: r.try_get(2)?,
        action: r.try_get(3)?,
        kind: r.try_get(4)?,
        record_id: r.try_get(5)?,
        detail: r.try_get(6)?,
        prev_hash: r.try_get(7)?,
        hash: r.try_get(8)?,
    })
}

/// The outcomes of a group of own writes being staged in one transaction
/// ([`Store::put_local_many`]): each write staged takes the next sequence
/// number; a refusal is kept as that write's outcome; any other error ends
/// the group.
pub(crate) struct StagedWrites {
    pub next_seq: u64,
    pub outcomes: Vec<Result<Stored>>,
    pub events: Vec<AuditEvent>,
}

impl StagedWrites {
    pub fn new(next_seq: u64, writes: usize) -> StagedWrites {
        StagedWrites {
            next_seq,
            outcomes: Vec::with_capacity(writes),
            events: Vec::new(),
        }
    }

    /// Takes one write's staging result; `Err` if the transaction must end.
    pub fn take(&mut self, staged: Result<(Stored, AuditEvent)>) -> Result<()> {
        match staged {
            Ok((stored, event)) => {
                self.next_seq += 1;
                self.events.push(event);
                self.outcomes.push(Ok(stored));
                Ok(())
            }
            Err(refused) if refused.is_refusal() => {
                self.outcomes.push(Err(refused));
                Ok(())
            }
            Err(failed) => Err(failed),
        }
    }
}

/// Checks an owner's write against the version it expects (0 = create) and
/// the version held; returns the version the write takes.
pub(crate) fn check_expected(id: &[u8], current: Option<u64>, expected: u64) -> Result<u64> {
    let id = id_text(id);
    match (current, expected) {
        (Some(current), 0) => Err(StoreError::AlreadyExists { id, current }),
        (None, 0) => Ok(1),
        (None, _) => Err(StoreError::NotFound { id }),
        (Some(current), expected) if current != expected => Err(StoreError::VersionConflict {
            id,
            current,
            expected,
        }),
        (Some(_), expected) => Ok(expected + 1),
    }
}

/// The natural key of `record` that another live record already carries,
/// given the candidates the index returned for its keys.
pub(crate) fn duplicate_key(record: &wire::Record, candidates: &[Stored]) -> Option<StoreError> {
    for key in &record.keys {
        for other in candidates {
            if other.record.id != record.id
                && !other.record.deleted
                && has_key(&other.record, &record.kind, &key.name, &key.value)
            {
                return Some(StoreError::DuplicateKey {
                    kind: record.kind.clone(),
                    key: key.name.clone(),
                    existing: id_text(&other.record.id),
                });
            }
        }
    }
    None
}
