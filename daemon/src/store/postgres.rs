//! The PostgreSQL store, for county and city data centres: the same trait,
//! tables and semantics as the SQLite store, migrations embedded
//! (`migrations/postgres/`) and applied at open. No `DATABASE_URL` at build
//! time: every statement is a runtime `sqlx::query`.
//!
//! - **Set-based writes.** A batch is a handful of statements whatever its
//!   size: `UNNEST($1::bytea[], ...)` inserts all its records, index entries
//!   and refusals at once.
//! - **Sequence numbers in order.** Writers are serialised by one in-process
//!   mutex that owns the next sequence number, and only one daemon writes a
//!   node's store at a time ([`ActiveLease`]); each transaction commits
//!   before the next begins, so a reader never sees seq `N` before `N - 1`.
//! - **Fencing.** Opening the store bumps the `fence` counter in `meta` and
//!   remembers the value; every write transaction first reads the row with
//!   `FOR SHARE` and fails with [`StoreError::Fenced`] when another process
//!   opened the store since. The bump waits for in-flight writes of the old
//!   holder (they hold the share lock), so a paused old active can neither
//!   write after a takeover nor hand out sequence numbers the new one also
//!   uses.
//! - **Planner.** Store sessions set `max_parallel_workers_per_gather = 0`:
//!   before autovacuum analysed a freshly loaded table the planner started
//!   parallel workers for single-key lookups (measured p50 3.5 ms instead of
//!   0.2 ms).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Connection, PgPool, Postgres, Row, Transaction};
use tiersync_proto::types::DivisionCode;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::*;
use crate::store::audit::ChainHead;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Whether a `storage.path` names a PostgreSQL database.
pub fn is_postgres_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// The URL with its password replaced by `***`, for errors, logs and the
/// status page.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let masked = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    // a password may also come as a query parameter
    let tail = match tail.split_once('?') {
        None => tail.to_owned(),
        Some((path, query)) => {
            let query = query
                .split('&')
                .map(|part| match part.split_once('=') {
                    Some(("password", _)) => "password=***".to_owned(),
                    _ => part.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("&");
            format!("{path}?{query}")
        }
    };
    format!("{scheme}://{masked}{tail}")
}

/// Parses a `postgres://` URL into connect options (errors name the masked
/// URL).
pub fn connect_options(url: &str) -> Result<PgConnectOptions> {
    PgConnectOptions::from_str(url).map_err(|e| StoreError::BadUrl {
        url: mask_url(url),
        reason: e.to_string(),
    })
}

/// What every store session sets (see the module doc).
fn session_options(options: PgConnectOptions) -> PgConnectOptions {
    options
        .options([("max_parallel_workers_per_gather", "0")])
        .application_name("tiersync")
}

pub struct PgStore {
    pool: PgPool,
    /// The database, as errors name it (no password).
    shown: String,
    writer: Mutex<Writer>,
    /// The newest committed seq, readable without waiting for a write.
    head: AtomicU64,
    epoch: String,
    fence: i64,
}

struct Writer {
    next_seq: u64,
    /// The audit chain's head, advanced only once a transaction commits.
    audit: ChainHead,
    /// A write failed since `next_seq` and `audit` were last known right:
    /// the next write re-reads them ([`PgStore::resync`]). A failed commit
    /// is rolled back by the server (and sqlx rolls back a dropped
    /// transaction before its connection is used again), but a commit whose
    /// answer was lost (connection or server gone) may have committed, and
    /// reusing its seqs would fail every later write.
    stale: bool,
}

impl PgStore {
    /// Opens the store of node `node` (creating its tables if needed) and
    /// takes over writing from any earlier opener (see fencing above).
    pub async fn open(options: PgConnectOptions, node: &DivisionCode) -> Result<PgStore> {
        let shown = format!(
            "postgres://{}@{}:{}/{}",
            options.get_username(),
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("")
        );
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(session_options(options))
            .await?;
        MIGRATOR.run(&pool).await?;

        let mut tx = pool.begin().await?;
        let stored_node: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'node'")
                .fetch_optional(&mut *tx)
                .await?;
        match stored_node {
            Some(stored) if stored != node.as_str() => {
                return Err(StoreError::WrongNode {
                    path: shown,
                    stored,
                    configured: node.to_string(),
                });
            }
            Some(_) => {}
            None => {
                let epoch = hex::encode(rand::random::<[u8; 16]>());
                sqlx::query("INSERT INTO meta (key, value) VALUES ('node', $1), ('epoch', $2)")
                    .bind(node.as_str())
                    .bind(epoch)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        // The bump waits for the share locks of an old holder's in-flight
        // writes, so the head read after it is final.
        let fence: String = sqlx::query_scalar(
            "UPDATE meta SET value = (value::bigint + 1)::text WHERE key = 'fence' RETURNING value",
        )
        .fetch_one(&pool)
        .await?;
        let fence: i64 = fence.parse().unwrap_or_default();
        let epoch: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'epoch'")
            .fetch_one(&pool)
            .await?;
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM records")
            .fetch_one(&pool)
            .await?;
        let last: Option<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT entry, hash FROM audit ORDER BY entry DESC LIMIT 1")
                .fetch_optional(&pool)
                .await?;
        Ok(PgStore {
            pool,
            shown,
            writer: Mutex::new(Writer {
                next_seq: head as u64 + 1,
                audit: ChainHead::after(last),
                stale: false,
            }),
            head: AtomicU64::new(head as u64),
            epoch,
            fence,
        })
    }

    /// Whether the schema `options` select already holds a store.
    pub async fn exists(options: &PgConnectOptions) -> Result<bool> {
        let mut conn = PgConnection::connect_with(options).await?;
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('meta') IS NOT NULL")
            .fetch_one(&mut conn)
            .await?;
        let _ = conn.close().await;
        Ok(exists)
    }

    /// Direct pool access for tests that tamper behind the daemon's back.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Re-reads the next seq, the head and the audit chain's head if a
    /// write failed since they were last known (see [`Writer::stale`]).
    /// Only this process writes (the lease and the fence), and it holds
    /// the writer's lock, so what it reads stays true until its next write.
    async fn resync(&self, writer: &mut Writer) -> Result<()> {
        if !writer.stale {
            return Ok(());
        }
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM records")
            .fetch_one(&self.pool)
            .await?;
        let last: Option<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT entry, hash FROM audit ORDER BY entry DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await?;
        writer.next_seq = head as u64 + 1;
        writer.audit = ChainHead::after(last);
        self.head.store(head as u64, Ordering::Release);
        writer.stale = false;
        Ok(())
    }

    /// The outcome of a write transaction: a failure marks the writer's
    /// state for re-reading, and a full disk becomes [`StoreError::Full`].
    fn settle<T>(&self, writer: &mut Writer, outcome: Result<T>) -> Result<T> {
        outcome.map_err(|error| {
            writer.stale = true;
            match &error {
                // SQLSTATE 53100 disk_full
                StoreError::Db(sqlx::Error::Database(db))
                    if db.code().as_deref() == Some("53100") =>
                {
                    StoreError::Full {
                        store: self.shown.clone(),
                        detail: db.message().to_owned(),
                    }
                }
                _ => error,
            }
        })
    }

    /// Begins a write transaction after checking the fencing token.
    async fn write_tx(&self) -> Result<Transaction<'static, Postgres>> {
        Ok(self.write_tx_held(&[]).await?.0)
    }

    /// Begins a write transaction, checks the fencing token and reads the
    /// versions held of `ids` (id → (version, withdrawn)), in one round
    /// trip.
    async fn write_tx_held(
        &self,
        ids: &[Vec<u8>],
    ) -> Result<(
        Transaction<'static, Postgres>,
        HashMap<Vec<u8>, (u64, bool)>,
    )> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT f.value, r.id, r.version, r.withdrawn \
             FROM (SELECT value FROM meta WHERE key = 'fence' FOR SHARE) f \
             LEFT JOIN records r ON r.id = ANY($1::bytea[])",
        )
        .bind(ids)
        .fetch_all(&mut *tx)
        .await?;
        let held_fence: i64 = match rows.first() {
            Some(row) => row.try_get::<String, _>(0)?.parse().unwrap_or_default(),
            None => -1,
        };
        if held_fence != self.fence {
            return Err(StoreError::Fenced {
                ours: self.fence,
                held: held_fence,
            });
        }
        let mut held = HashMap::with_capacity(rows.len());
        for row in &rows {
            if let Some(id) = row.try_get::<Option<Vec<u8>>, _>(1)? {
                held.insert(
                    id,
                    (row.try_get::<i64, _>(2)? as u64, row.try_get::<bool, _>(3)?),
                );
            }
        }
        Ok((tx, held))
    }
}

/// Writes records (new or changed) at their sequence numbers, removes the
/// index entries `stale_keys` of the versions they replace, adds theirs, and
/// stores the peer's cursor: one statement (data-modifying CTEs), so a batch
/// costs one round trip here whatever its size.
async fn write_records(
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
async fn stored_keys(
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
async fn stage_local(
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
async fn insert_audit(tx: &mut Transaction<'_, Postgres>, entries: &[AuditEntry]) -> Result<()> {
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

/// Reads audit entries; also serves `tiersync audit` through a plain pool
/// (no fencing bump) while the daemon runs.
#[async_trait]
impl AuditSource for PgPool {
    async fn audit_list(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT entry, at_ms, actor, action, kind, record_id, detail, prev_hash, hash FROM audit \
             WHERE entry > $1 AND ($2::int8 IS NULL OR at_ms >= $2) AND ($3::int8 IS NULL OR at_ms <= $3) \
             AND ($4 = '' OR kind = $4) AND ($5 = '' OR actor = $5) AND ($6 = '' OR action = $6) \
             ORDER BY entry LIMIT $7",
        )
        .bind(query.after as i64)
        .bind(query.since_ms)
        .bind(query.until_ms)
        .bind(&query.kind)
        .bind(&query.actor)
        .bind(&query.action)
        .bind(query.limit())
        .fetch_all(self)
        .await?;
        rows.iter().map(audit_row).collect()
    }
}

#[async_trait]
impl AuditSource for PgStore {
    async fn audit_list(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        self.pool.audit_list(query).await
    }
}

/// A pool on a node's PostgreSQL store that only reads: no migrations and
/// no fencing bump, so the active daemon keeps writing.
pub async fn open_reader(options: PgConnectOptions) -> Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(session_options(options))
        .await?)
}

async fn quarantine(
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
    sqlx::query(
        "INSERT INTO quarantine (peer, record_id, kind, origin, reason, body, at_ms) \
         SELECT $1, i, k, o, r, b, $7 FROM UNNEST($2::bytea[], $3::text[], $4::text[], $5::text[], $6::bytea[]) \
         AS t(i, k, o, r, b)",
    )
    .bind(peer)
    .bind(ids)
    .bind(kinds)
    .bind(origins)
    .bind(reasons)
    .bind(bodies)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    fn epoch(&self) -> &str {
        &self.epoch
    }

    async fn head_seq(&self) -> Result<u64> {
        Ok(self.head.load(Ordering::Acquire))
    }

    async fn get(&self, id: &[u8]) -> Result<Option<Stored>> {
        let row = sqlx::query("SELECT seq, via, body FROM records WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(stored_row).transpose()
    }

    async fn lookup(&self, kind: &str, name: &str, value: &str) -> Result<Vec<Stored>> {
        let rows = sqlx::query(
            "SELECT r.seq, r.via, r.body FROM natural_keys k JOIN records r ON r.seq = k.record_seq \
             WHERE k.key_hash = $1 AND NOT r.deleted ORDER BY r.id",
        )
        .bind(key_hash(kind, name, value))
        .fetch_all(&self.pool)
        .await?;
        let mut found = Vec::with_capacity(rows.len());
        for row in &rows {
            let s = stored_row(row)?;
            if has_key(&s.record, kind, name, value) {
                found.push(s);
            }
        }
        Ok(found)
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Stored>> {
        let limit = if query.limit == 0 {
            100
        } else {
            query.limit.min(10_000)
        };
        let rows = sqlx::query(
            "SELECT seq, via, body FROM records WHERE ($1 = '' OR kind = $1) \
             AND starts_with(owner, $2) AND ($3 OR NOT deleted) AND id > $4 ORDER BY id LIMIT $5",
        )
        .bind(&query.kind)
        .bind(&query.owner_prefix)
        .bind(query.include_deleted)
        .bind(&query.after_id)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_row).collect()
    }

    async fn changes_after(&self, after: u64, limit: u32) -> Result<Vec<Stored>> {
        let rows =
            sqlx::query("SELECT seq, via, body FROM records WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(after as i64)
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(stored_row).collect()
    }

    async fn changes_in(
        &self,
        after: u64,
        through: u64,
        limit: u32,
        owners: &Owners<'_>,
    ) -> Result<Vec<StoredBody>> {
        let (code, within) = owners.as_filter();
        let rows = sqlx::query(
            "SELECT seq, body FROM records WHERE seq > $1 AND seq <= $2 \
             AND starts_with(owner, $3) = $4 ORDER BY seq LIMIT $5",
        )
        .bind(after as i64)
        .bind(through as i64)
        .bind(code.as_str())
        .bind(within)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_body).collect()
    }

    async fn count(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM records")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    async fn cursor(&self, peer: &DivisionCode) -> Result<Option<Cursor>> {
        let row = sqlx::query("SELECT applied_through, peer_epoch FROM cursors WHERE peer = $1")
            .bind(peer.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(Cursor {
                applied_through: r.try_get::<i64, _>(0)? as u64,
                peer_epoch: r.try_get(1)?,
            })
        })
        .transpose()
    }

    async fn apply(&self, batch: ApplyBatch) -> Result<ApplyReport> {
        let mut report = ApplyReport {
            refused: batch.refused,
            ..Default::default()
        };
        let incoming = newest_per_id(batch.records, &mut report);
        let ids: Vec<Vec<u8>> = incoming.iter().map(|r| r.record.id.clone()).collect();
        let mut writer = self.writer.lock().await;
        self.resync(&mut writer).await?;
        let outcome = async {
            let (mut tx, held) = self.write_tx_held(&ids).await?;
            let plan = plan_apply(incoming, &held, writer.next_seq, &mut report);
            let stale_keys = stored_keys(&mut tx, &plan.replaced).await?;
            write_records(
                &mut tx,
                &plan.writes,
                &batch.via,
                &stale_keys,
                batch.cursor.as_ref(),
            )
            .await?;
            quarantine(&mut tx, &batch.via, &report.refused).await?;
            let events = apply_events(&batch.via, &report.refused, batch.audit);
            let (entries, audit_head) = writer.audit.chain(events, now_ms());
            insert_audit(&mut tx, &entries).await?;
            tx.commit().await?;
            Ok((plan, audit_head))
        }
        .await;
        let (plan, audit_head) = self.settle(&mut writer, outcome)?;
        writer.next_seq = plan.next_seq;
        self.head.store(plan.next_seq - 1, Ordering::Release);
        writer.audit = audit_head;
        report.applied = plan
            .writes
            .into_iter()
            .map(|(seq, r)| (seq, r.record))
            .collect();
        Ok(report)
    }

    async fn put_local_many(&self, writes: Vec<LocalWrite>) -> Result<Vec<Result<Stored>>> {
        let mut writer = self.writer.lock().await;
        self.resync(&mut writer).await?;
        let ids: Vec<Vec<u8>> = writes.iter().map(|w| w.record.id.clone()).collect();
        let outcome = async {
            let (mut tx, mut held) = self.write_tx_held(&ids).await?;
            let mut staged = StagedWrites::new(writer.next_seq, writes.len());
            for write in writes {
                // `held` and the transaction both include the writes staged
                // before this one.
                let outcome = stage_local(&mut tx, &mut held, staged.next_seq, write).await;
                staged.take(outcome)?;
            }
            if staged.events.is_empty() {
                // every write refused: the dropped transaction rolls back
                return Ok((staged.outcomes, None));
            }
            let (entries, audit_head) = writer.audit.chain(staged.events, now_ms());
            insert_audit(&mut tx, &entries).await?;
            tx.commit().await?;
            Ok((staged.outcomes, Some((staged.next_seq, audit_head))))
        }
        .await;
        let (outcomes, committed) = self.settle(&mut writer, outcome)?;
        if let Some((next_seq, audit_head)) = committed {
            writer.next_seq = next_seq;
            self.head.store(next_seq - 1, Ordering::Release);
            writer.audit = audit_head;
        }
        Ok(outcomes)
    }

    async fn audit_append(&self, event: AuditEvent) -> Result<AuditEntry> {
        let mut writer = self.writer.lock().await;
        self.resync(&mut writer).await?;
        let (mut entries, audit_head) = writer.audit.chain(vec![event], now_ms());
        let outcome = async {
            let mut tx = self.write_tx().await?;
            insert_audit(&mut tx, &entries).await?;
            Ok(tx.commit().await?)
        }
        .await;
        self.settle(&mut writer, outcome)?;
        writer.audit = audit_head;
        Ok(entries.remove(0))
    }

    async fn quarantine_list(&self, limit: u32) -> Result<Vec<QuarantineRow>> {
        let rows = sqlx::query(
            "SELECT qid, peer, record_id, kind, origin, reason, body, at_ms FROM quarantine \
             WHERE NOT resolved ORDER BY qid LIMIT $1",
        )
        .bind(if limit == 0 { 100 } else { limit } as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(quarantine_row).collect()
    }

    async fn quarantine_get(&self, qid: u64) -> Result<Option<QuarantineRow>> {
        let row = sqlx::query(
            "SELECT qid, peer, record_id, kind, origin, reason, body, at_ms FROM quarantine \
             WHERE qid = $1 AND NOT resolved",
        )
        .bind(qid as i64)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(quarantine_row).transpose()
    }

    async fn quarantine_resolve(&self, qid: u64) -> Result<()> {
        let outcome = async {
            let mut tx = self.write_tx().await?;
            sqlx::query("UPDATE quarantine SET resolved = true WHERE qid = $1")
                .bind(qid as i64)
                .execute(&mut *tx)
                .await?;
            Ok(tx.commit().await?)
        }
        .await;
        let mut writer = self.writer.lock().await;
        self.settle(&mut writer, outcome)
    }

    async fn quarantine_count(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM quarantine WHERE NOT resolved")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    async fn renew_epoch(&self) -> Result<String> {
        let mut writer = self.writer.lock().await;
        let epoch = hex::encode(rand::random::<[u8; 16]>());
        let outcome = async {
            let mut tx = self.write_tx().await?;
            sqlx::query("UPDATE meta SET value = $1 WHERE key = 'epoch'")
                .bind(&epoch)
                .execute(&mut *tx)
                .await?;
            Ok(tx.commit().await?)
        }
        .await;
        self.settle(&mut writer, outcome)?;
        Ok(epoch)
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

// === impl ActiveLease ===

/// The right to be a node's active daemon: a session-level advisory lock,
/// keyed by (schema, node code), held on a dedicated connection. Exactly one
/// process holds it; it ends when that connection ends (the process died,
/// or the network to the database broke), and then a standby's next poll
/// takes it. [`ActiveLease::lost`] fires when this process's connection
/// fails, after which it must stop: another process may be active already
/// (and the fence keeps this one from writing meanwhile).
pub struct ActiveLease {
    lost: CancellationToken,
    stop: CancellationToken,
}

/// How often a standby retries the lock, and the active checks its hold.
pub const LEASE_POLL: Duration = Duration::from_millis(500);

const TRY_LOCK: &str =
    "SELECT pg_try_advisory_lock(hashtextextended(current_schema() || '/tiersync/' || $1, 0))";

impl ActiveLease {
    /// Waits until this process holds the lease of `node`. `standing_by`
    /// is called once, when the lease is found taken.
    pub async fn acquire(
        options: PgConnectOptions,
        node: &DivisionCode,
        cancel: &CancellationToken,
        mut standing_by: impl FnMut(),
    ) -> Result<Option<ActiveLease>> {
        let mut told = false;
        loop {
            if cancel.is_cancelled() {
                return Ok(None);
            }
            match Self::try_once(&options, node).await {
                Ok(Some(conn)) => {
                    info!(node = %node, "holding the active lease");
                    return Ok(Some(Self::held(conn)));
                }
                Ok(None) => {
                    if !told {
                        told = true;
                        standing_by();
                    }
                }
                Err(error) => warn!(node = %node, %error, "cannot reach PostgreSQL for the lease"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(None),
                _ = tokio::time::sleep(LEASE_POLL) => {}
            }
        }
    }

    /// Takes the lease of `node` if no daemon holds it; `None` otherwise.
    pub async fn try_acquire(
        options: PgConnectOptions,
        node: &DivisionCode,
    ) -> Result<Option<ActiveLease>> {
        Ok(Self::try_once(&options, node).await?.map(Self::held))
    }

    fn held(conn: PgConnection) -> ActiveLease {
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        tokio::spawn(hold(conn, lost.clone(), stop.clone()));
        ActiveLease { lost, stop }
    }

    async fn try_once(
        options: &PgConnectOptions,
        node: &DivisionCode,
    ) -> Result<Option<PgConnection>> {
        let mut conn =
            PgConnection::connect_with(&options.clone().application_name("tiersync-lease")).await?;
        let got: bool = sqlx::query_scalar(TRY_LOCK)
            .bind(node.as_str())
            .fetch_one(&mut conn)
            .await?;
        if got {
            Ok(Some(conn))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    /// Fires when the lease is lost.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }
}

impl Drop for ActiveLease {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Keeps the lease connection alive and checked; closing it releases the
/// lock.
async fn hold(mut conn: PgConnection, lost: CancellationToken, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = conn.close().await;
                return;
            }
            _ = tokio::time::sleep(LEASE_POLL) => {}
        }
        let check = tokio::time::timeout(
            Duration::from_secs(5),
            sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&mut conn),
        )
        .await;
        match check {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                warn!(%error, "lost the connection that holds the active lease");
                lost.cancel();
                return;
            }
            Err(_) => {
                warn!("the connection that holds the active lease stopped answering");
                lost.cancel();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::mask_url;

    #[test]
    fn urls_are_shown_without_their_password() {
        for (url, shown) in [
            (
                "postgres://tiersync:s3cret@db:5432/county",
                "postgres://tiersync:***@db:5432/county",
            ),
            (
                "postgres://tiersync@db/county?sslmode=disable",
                "postgres://tiersync@db/county?sslmode=disable",
            ),
            (
                "postgresql://u@h/d?password=x&sslmode=require",
                "postgresql://u@h/d?password=***&sslmode=require",
            ),
            ("postgres://u:p@h", "postgres://u:***@h"),
        ] {
            assert_eq!(mask_url(url), shown, "{url}");
        }
    }
}

// === test support ===

/// Scratch schemas for tests, examples and benchmarks that need a real
/// PostgreSQL: each gets its own schema, dropped afterwards.
#[cfg(any(test, feature = "testkit"))]
pub mod scratch {
    use std::str::FromStr;
    use std::time::Duration;

    use sqlx::Connection;
    use sqlx::postgres::{PgConnectOptions, PgConnection};

    /// The server this machine kind runs (trust auth, database `test`);
    /// `TIERSYNC_TEST_PG` overrides it.
    pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

    pub fn base_url() -> String {
        std::env::var("TIERSYNC_TEST_PG").unwrap_or_else(|_| DEFAULT_URL.to_owned())
    }

    /// A fresh schema, dropped (with everything in it) when this is dropped.
    pub struct ScratchSchema {
        base: String,
        name: String,
    }

    impl ScratchSchema {
        /// Creates a schema on the test server; `None`, after printing
        /// `skipping <test>: <reason>`, when no server answers.
        pub async fn create(test: &str) -> Option<ScratchSchema> {
            let base = base_url();
            let connect = async {
                let options = PgConnectOptions::from_str(&base)?;
                PgConnection::connect_with(&options).await
            };
            let mut conn = match tokio::time::timeout(Duration::from_secs(5), connect).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(error)) => {
                    eprintln!(
                        "skipping {test}: no PostgreSQL at {} ({error})",
                        super::mask_url(&base)
                    );
                    return None;
                }
                Err(_) => {
                    eprintln!(
                        "skipping {test}: no PostgreSQL at {} (no answer within 5 s)",
                        super::mask_url(&base)
                    );
                    return None;
                }
            };
            let name = format!("ts_{}", hex::encode(rand::random::<[u8; 6]>()));
            // `name` is ours: ts_ and hex digits
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
                .execute(&mut conn)
                .await
                .expect("create scratch schema");
            let _ = conn.close().await;
            Some(ScratchSchema { base, name })
        }

        pub fn name(&self) -> &str {
            &self.name
        }

        /// A `storage.path` URL that selects this schema.
        pub fn url(&self) -> String {
            let sep = if self.base.contains('?') { '&' } else { '?' };
            format!("{}{sep}options[search_path]={}", self.base, self.name)
        }

        pub fn options(&self) -> PgConnectOptions {
            super::connect_options(&self.url()).expect("scratch URL parses")
        }
    }

    impl Drop for ScratchSchema {
        fn drop(&mut self) {
            let base = self.base.clone();
            let name = self.name.clone();
            // Drop may run inside a runtime, which cannot block on another.
            let _ = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async {
                    let Ok(options) = PgConnectOptions::from_str(&base) else {
                        return;
                    };
                    if let Ok(mut conn) = PgConnection::connect_with(&options).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP SCHEMA IF EXISTS {name} CASCADE"
                        )))
                        .execute(&mut conn)
                        .await;
                        let _ = conn.close().await;
                    }
                });
            })
            .join();
        }
    }
}
