//! The writer's state and the statements its transactions run: records,
//! natural keys, quarantine rows and audit entries, in multi-row chunks.

use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::*;
use crate::store::audit::ChainHead;

pub(super) struct Writer {
    /// The connection every write transaction runs on. Taken out for each
    /// transaction and put back only when it ended cleanly: after a failure
    /// (or a cancelled write) it is gone, and the next write opens another
    /// and re-reads `next_seq` and `audit` (see [`SqliteStore::writer_conn`]).
    pub(super) conn: Option<SqliteConnection>,
    /// Set by [`Store::close`]: no connection is opened any more.
    pub(super) closed: bool,
    pub(super) next_seq: u64,
    /// The audit chain's head, advanced only once a transaction commits.
    pub(super) audit: ChainHead,
}

/// The newest seq and the last audit entry `(entry, hash)` the file holds.
pub(super) async fn committed_state(
    conn: &mut SqliteConnection,
) -> Result<(u64, Option<(i64, Vec<u8>)>)> {
    let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM records")
        .fetch_one(&mut *conn)
        .await?;
    let last: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT entry, hash FROM audit ORDER BY entry DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await?;
    Ok((head as u64, last))
}

/// Starts a write transaction, taking SQLite's write lock at once (waiting
/// up to the busy timeout for it) rather than at the first write.
pub(super) async fn begin(conn: &mut SqliteConnection) -> Result<()> {
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    Ok(())
}

/// Commits the transaction [`begin`] started. A plain `COMMIT`: it fails
/// unless that very transaction is still open, so success means committed.
pub(super) async fn commit(conn: &mut SqliteConnection) -> Result<()> {
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    Ok(())
}

pub(super) async fn rollback(conn: &mut SqliteConnection) -> Result<()> {
    sqlx::query("ROLLBACK").execute(&mut *conn).await?;
    Ok(())
}

/// Whether SQLite said the disk (or the database's size limit) is full.
pub(super) fn is_full(error: &StoreError) -> Option<String> {
    match error {
        // SQLITE_FULL (13) has no extended codes of its own
        StoreError::Db(sqlx::Error::Database(db))
            if db
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| c & 0xff == 13) =>
        {
            Some(db.message().to_owned())
        }
        _ => None,
    }
}

/// Writes records (new or changed) at the given sequence numbers.
/// `stale_keys` are the index entries (hash, old seq) of the versions being
/// replaced, removed first.
pub(super) async fn write_records(
    tx: &mut SqliteConnection,
    rows: &[(u64, &Encoded)],
    via: &str,
    stale_keys: &[(i64, i64)],
) -> Result<()> {
    for chunk in stale_keys.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "DELETE FROM natural_keys WHERE (key_hash, record_seq) IN (",
        );
        q.push_values(chunk, |mut b, (hash, seq)| {
            b.push_bind(*hash).push_bind(*seq);
        });
        q.push(")")
            .build()
            .persistent(full(chunk.len()))
            .execute(&mut *tx)
            .await?;
    }
    for chunk in rows.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO records (seq, id, kind, owner, version, updated_at, deleted, withdrawn, via, body) ",
        );
        q.push_values(chunk, |mut b, (seq, encoded)| {
            let r = &encoded.record;
            b.push_bind(*seq as i64)
                .push_bind(r.id.as_slice())
                .push_bind(r.kind.as_str())
                .push_bind(r.owner.as_ref().map_or("", |o| o.node.as_str()))
                .push_bind(r.version as i64)
                .push_bind(r.updated_at as i64)
                .push_bind(r.deleted)
                .push_bind(r.withdrawn)
                .push_bind(via)
                .push_bind(&encoded.body[..]);
        });
        q.push(
            " ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, kind = excluded.kind, owner = excluded.owner, \
             version = excluded.version, updated_at = excluded.updated_at, deleted = excluded.deleted, \
             withdrawn = excluded.withdrawn, via = excluded.via, body = excluded.body",
        );
        q.build()
            .persistent(full(chunk.len()))
            .execute(&mut *tx)
            .await?;
    }
    let keys: Vec<(i64, i64)> = rows
        .iter()
        .flat_map(|(seq, r)| index_entries(*seq, &r.record))
        .collect();
    for chunk in keys.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT OR IGNORE INTO natural_keys (key_hash, record_seq) ",
        );
        q.push_values(chunk, |mut b, (hash, seq)| {
            b.push_bind(*hash).push_bind(*seq);
        });
        q.build()
            .persistent(full(chunk.len()))
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// The natural keys of the stored versions of `ids` (records about to be
/// replaced).
pub(super) async fn stored_keys(
    tx: &mut SqliteConnection,
    ids: &[Vec<u8>],
) -> Result<Vec<(i64, i64)>> {
    let mut out = Vec::new();
    for chunk in ids.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new("SELECT seq, body FROM records WHERE id IN (");
        let mut sep = q.separated(", ");
        for id in chunk {
            sep.push_bind(id.as_slice());
        }
        q.push(")");
        for row in q
            .build()
            .persistent(full(chunk.len()))
            .fetch_all(&mut *tx)
            .await?
        {
            let seq: i64 = row.get(0);
            let old = decode(seq, row.get(1))?;
            out.extend(
                old.keys
                    .iter()
                    .map(|k| (key_hash(&old.kind, &k.name, &k.value), seq)),
            );
        }
    }
    Ok(out)
}

pub(super) async fn quarantine(
    tx: &mut SqliteConnection,
    peer: &str,
    refused: &[Refusal],
) -> Result<()> {
    let at = now_ms();
    for chunk in refused.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO quarantine (peer, record_id, kind, origin, reason, body, at_ms, cause) ",
        );
        q.push_values(chunk, |mut b, r| {
            b.push_bind(peer.to_owned())
                .push_bind(r.record_id.clone())
                .push_bind(r.kind.clone())
                .push_bind(r.origin.clone())
                .push_bind(r.reason.clone())
                .push_bind(r.body.clone())
                .push_bind(at)
                .push_bind(r.cause.as_str());
        });
        q.build()
            .persistent(full(chunk.len()))
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Appends chained audit entries.
/// Checks one own write against what `tx` holds (including the writes staged
/// before it) and writes it at `seq`; a refusal writes nothing.
pub(super) async fn stage_local(
    tx: &mut SqliteConnection,
    seq: u64,
    write: LocalWrite,
) -> Result<(Stored, AuditEvent)> {
    let mut record = write.record;
    let current: Option<i64> = sqlx::query_scalar("SELECT version FROM records WHERE id = ?1")
        .bind(&record.id)
        .fetch_optional(&mut *tx)
        .await?;
    record.version = check_expected(
        &record.id,
        current.map(|v| v as u64),
        write.expected_version,
    )?;
    if write.unique_keys && !record.deleted {
        let mut candidates = Vec::new();
        for key in &record.keys {
            let rows = sqlx::query(
                "SELECT r.seq, r.via, r.body FROM natural_keys k JOIN records r ON r.seq = k.record_seq \
                 WHERE k.key_hash = ?1 AND r.id <> ?2 AND r.deleted = 0",
            )
            .bind(key_hash(&record.kind, &key.name, &key.value))
            .bind(&record.id)
            .fetch_all(&mut *tx)
            .await?;
            for row in &rows {
                candidates.push(stored_row(row)?);
            }
        }
        if let Some(error) = duplicate_key(&record, &candidates) {
            return Err(error);
        }
    }
    let replaced = if current.is_some() {
        vec![record.id.clone()]
    } else {
        vec![]
    };
    let stale_keys = stored_keys(tx, &replaced).await?;
    let encoded = Encoded::new(record);
    write_records(tx, &[(seq, &encoded)], "", &stale_keys).await?;
    let record = encoded.record;
    let event = write_event(write.audit, &record);
    Ok((
        Stored {
            seq,
            via: String::new(),
            record,
        },
        event,
    ))
}

pub(super) async fn insert_audit(tx: &mut SqliteConnection, entries: &[AuditEntry]) -> Result<()> {
    for chunk in entries.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO audit (entry, at_ms, actor, action, kind, record_id, detail, prev_hash, hash) ",
        );
        q.push_values(chunk, |mut b, e| {
            b.push_bind(e.entry as i64)
                .push_bind(e.at_ms)
                .push_bind(e.actor.clone())
                .push_bind(e.action.clone())
                .push_bind(e.kind.clone())
                .push_bind(e.record_id.clone())
                .push_bind(e.detail.clone())
                .push_bind(e.prev_hash.clone())
                .push_bind(e.hash.clone());
        });
        q.build()
            .persistent(full(chunk.len()))
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}
