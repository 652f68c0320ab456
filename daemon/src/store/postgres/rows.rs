//! The statements a PostgreSQL write transaction runs: records, natural
//! keys, quarantine rows and audit entries, each set-based (`UNNEST`).

use sqlx::{Postgres, Row, Transaction};

use super::*;

/// Writes records (new or changed) at their sequence numbers, removes the
/// index entries `stale_keys` of the versions they replace, adds theirs, and
/// stores the peer's cursor: one statement (data-modifying CTEs), so a batch
/// costs one round trip here whatever its size.
pub(super) async fn write_records(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[(u64, Encoded)],
    via: &str,
    stale_keys: &[(i64, i64)],
    cursor: Option<&(DivisionCode, Cursor)>,
) -> Result<()> {
    let n = rows.len();
    let (mut seq, mut id, mut kind, mut owner) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut version, mut updated, mut deleted, mut withdrawn, mut body) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (s, encoded) in rows {
        let r = &encoded.record;
        seq.push(*s as i64);
        id.push(r.id.clone());
        kind.push(r.kind.clone());
        owner.push(r.owner.as_ref().map(|o| o.node.clone()).unwrap_or_default());
        version.push(r.version as i64);
        updated.push(r.updated_at as i64);
        deleted.push(r.deleted);
        withdrawn.push(r.withdrawn);
        body.push(&encoded.body[..]);
    }
    let (stale_hashes, stale_seqs): (Vec<i64>, Vec<i64>) = stale_keys.iter().copied().unzip();
    let (hashes, key_seqs): (Vec<i64>, Vec<i64>) = rows
        .iter()
        .flat_map(|(seq, r)| index_entries(*seq, &r.record))
        .unzip();
    sqlx::query(
        "WITH stale AS ( \
           DELETE FROM natural_keys k USING UNNEST($11::int8[], $12::int8[]) AS s(h, q) \
           WHERE k.key_hash = s.h AND k.record_seq = s.q), \
         rec AS ( \
           INSERT INTO records (seq, id, kind, owner, version, updated_at, deleted, withdrawn, via, body) \
           SELECT s, i, k, o, v, u, d, w, $10, b FROM UNNEST($1::int8[], $2::bytea[], $3::text[], \
             $4::text[], $5::int8[], $6::int8[], $7::bool[], $8::bool[], $9::bytea[]) \
             AS t(s, i, k, o, v, u, d, w, b) \
           ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, kind = excluded.kind, \
             owner = excluded.owner, version = excluded.version, updated_at = excluded.updated_at, \
             deleted = excluded.deleted, withdrawn = excluded.withdrawn, via = excluded.via, \
             body = excluded.body), \
         keys AS ( \
           INSERT INTO natural_keys (key_hash, record_seq) \
           SELECT * FROM UNNEST($13::int8[], $14::int8[]) ON CONFLICT DO NOTHING), \
         cur AS ( \
           INSERT INTO cursors (peer, applied_through, peer_epoch, updated_at_ms) \
           SELECT $15, $16, $17, $18 WHERE $15::text IS NOT NULL \
           ON CONFLICT (peer) DO UPDATE SET applied_through = excluded.applied_through, \
             peer_epoch = excluded.peer_epoch, updated_at_ms = excluded.updated_at_ms) \
         SELECT 1",
    )
    .bind(seq)
    .bind(id)
    .bind(kind)
    .bind(owner)
    .bind(version)
    .bind(updated)
    .bind(deleted)
    .bind(withdrawn)
    .bind(body)
    .bind(via)
    .bind(stale_hashes)
    .bind(stale_seqs)
    .bind(hashes)
    .bind(key_seqs)
    .bind(cursor.map(|(peer, _)| peer.as_str().to_owned()))
    .bind(cursor.map(|(_, c)| c.applied_through as i64))
    .bind(cursor.map(|(_, c)| c.peer_epoch.clone()))
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The index entries of the stored versions of `ids` (about to be replaced).
pub(super) async fn stored_keys(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[Vec<u8>],
) -> Result<Vec<(i64, i64)>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let rows = sqlx::query("SELECT seq, body FROM records WHERE id = ANY($1::bytea[])")
        .bind(ids)
        .fetch_all(&mut **tx)
        .await?;
    let mut out = Vec::new();
    for row in rows {
        let seq: i64 = row.try_get(0)?;
        let old = decode(seq, row.try_get(1)?)?;
        out.extend(
            old.keys
                .iter()
                .map(|k| (key_hash(&old.kind, &k.name, &k.value), seq)),
        );
    }
    Ok(out)
}

/// Checks one own write against `held` (id → version held, including the
/// writes staged before it) and the transaction, and writes it at `seq`; a
/// refusal writes nothing.
pub(super) async fn stage_local(
    tx: &mut Transaction<'_, Postgres>,
    held: &mut HashMap<Vec<u8>, (u64, bool)>,
    seq: u64,
    write: LocalWrite,
) -> Result<(Stored, AuditEvent)> {
    let mut record = write.record;
    let current = held.get(&record.id).map(|&(v, _)| v);
    record.version = check_expected(&record.id, current, write.expected_version)?;
    if write.unique_keys && !record.deleted && !record.keys.is_empty() {
        let hashes: Vec<i64> = record
            .keys
            .iter()
            .map(|k| key_hash(&record.kind, &k.name, &k.value))
            .collect();
        let rows = sqlx::query(
            "SELECT r.seq, r.via, r.body FROM natural_keys k JOIN records r ON r.seq = k.record_seq \
             WHERE k.key_hash = ANY($1::int8[]) AND r.id <> $2 AND NOT r.deleted",
        )
        .bind(hashes)
        .bind(&record.id)
        .fetch_all(&mut **tx)
        .await?;
        let candidates = rows.iter().map(stored_row).collect::<Result<Vec<_>>>()?;
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
    let event = write_event(write.audit, &record);
    held.insert(record.id.clone(), (record.version, record.withdrawn));
    let rows = [(seq, Encoded::new(record))];
    write_records(tx, &rows, "", &stale_keys, None).await?;
    let [(_, Encoded { record, .. })] = rows;
    Ok((
        Stored {
            seq,
            via: String::new(),
            record,
        },
        event,
    ))
}

/// Appends chained audit entries in one statement (none: no round trip).
pub(super) async fn insert_audit(
    tx: &mut Transaction<'_, Postgres>,
    entries: &[AuditEntry],
) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&AuditEntry) -> String| entries.iter().map(f).collect::<Vec<String>>();
    sqlx::query(
        "INSERT INTO audit (entry, at_ms, actor, action, kind, record_id, detail, prev_hash, hash) \
         SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::text[], $4::text[], $5::text[], \
           $6::text[], $7::text[], $8::bytea[], $9::bytea[])",
    )
    .bind(entries.iter().map(|e| e.entry as i64).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.at_ms).collect::<Vec<_>>())
    .bind(col(|e| e.actor.clone()))
    .bind(col(|e| e.action.clone()))
    .bind(col(|e| e.kind.clone()))
    .bind(col(|e| e.record_id.clone()))
    .bind(col(|e| e.detail.clone()))
    .bind(
        entries
            .iter()
            .map(|e| e.prev_hash.clone())
            .collect::<Vec<_>>(),
    )
    .bind(entries.iter().map(|e| e.hash.clone()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(super) async fn quarantine(
    tx: &mut Transaction<'_, Postgres>,
    peer: &str,
    refused: &[Refusal],
) -> Result<()> {
    if refused.is_empty() {
        return Ok(());
    }
    let ids: Vec<Vec<u8>> = refused.iter().map(|r| r.record_id.clone()).collect();
    let kinds: Vec<String> = refused.iter().map(|r| r.kind.clone()).collect();
    let origins: Vec<String> = refused.iter().map(|r| r.origin.clone()).collect();
    let reasons: Vec<String> = refused.iter().map(|r| r.reason.clone()).collect();
    let bodies: Vec<Vec<u8>> = refused.iter().map(|r| r.body.clone()).collect();
    let causes: Vec<&str> = refused.iter().map(|r| r.cause.as_str()).collect();
    sqlx::query(
        "INSERT INTO quarantine (peer, record_id, kind, origin, reason, body, at_ms, cause) \
         SELECT $1, i, k, o, r, b, $7, c FROM UNNEST($2::bytea[], $3::text[], $4::text[], $5::text[], $6::bytea[], $8::text[]) \
         AS t(i, k, o, r, b, c)",
    )
    .bind(peer)
    .bind(ids)
    .bind(kinds)
    .bind(origins)
    .bind(reasons)
    .bind(bodies)
    .bind(now_ms())
    .bind(causes)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
