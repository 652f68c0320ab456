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

mod lease;
mod rows;
#[cfg(any(test, feature = "testkit"))]
pub mod scratch;
mod subscriptions;

use lease::LeaseBinding;
pub use lease::{ActiveLease, LEASE_POLL, LeaseStatus, LeaseTiming, LeaseView};
use rows::*;

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

/// What every store session sets (see the module doc); the active
/// daemon's sessions are named by its lease holder id.
fn session_options(options: PgConnectOptions) -> PgConnectOptions {
    let name = options
        .get_application_name()
        .unwrap_or("tiersync")
        .to_owned();
    options
        .options([("max_parallel_workers_per_gather", "0")])
        .application_name(&name)
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
    /// The lease its writes are made under ([`PgStore::open_leased`]).
    lease: Option<LeaseBinding>,
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
            lease: None,
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
        // `live`: whether our lease row is unexpired (NULL when the row
        // names another holder, or the store is not leased)
        let (node, holder) = LeaseBinding::key(&self.lease);
        let rows = sqlx::query(
            "SELECT f.value, l.live, r.id, r.version, r.withdrawn \
             FROM (SELECT value FROM meta WHERE key = 'fence' FOR SHARE) f \
             LEFT JOIN (SELECT expires_at > clock_timestamp() AS live FROM active_lease \
                        WHERE node = $2 AND holder = $3) l ON true \
             LEFT JOIN records r ON r.id = ANY($1::bytea[])",
        )
        .bind(ids)
        .bind(node)
        .bind(holder)
        .fetch_all(&mut *tx)
        .await?;
        let (held_fence, live): (i64, Option<bool>) = match rows.first() {
            Some(row) => (
                row.try_get::<String, _>(0)?.parse().unwrap_or_default(),
                row.try_get(1)?,
            ),
            None => (-1, None),
        };
        // a refused transaction is rolled back now, not when its
        // connection is next used: it holds the fence row's share lock
        if held_fence != self.fence {
            let _ = tx.rollback().await;
            return Err(StoreError::Fenced {
                ours: self.fence,
                held: held_fence,
            });
        }
        if let Some(holder) = holder
            && live != Some(true)
        {
            let _ = tx.rollback().await;
            return Err(StoreError::LeaseLost {
                holder: holder.to_owned(),
                detail: match live {
                    Some(_) => "it expired before this daemon renewed it".into(),
                    None => "the lease row names another holder".into(),
                },
            });
        }
        let mut held = HashMap::with_capacity(rows.len());
        for row in &rows {
            if let Some(id) = row.try_get::<Option<Vec<u8>>, _>(2)? {
                held.insert(
                    id,
                    (row.try_get::<i64, _>(3)? as u64, row.try_get::<bool, _>(4)?),
                );
            }
        }
        Ok((tx, held))
    }
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

    async fn audit_append_many(&self, events: Vec<AuditEvent>) -> Result<Vec<AuditEntry>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut writer = self.writer.lock().await;
        self.resync(&mut writer).await?;
        let (entries, audit_head) = writer.audit.chain(events, now_ms());
        let outcome = async {
            let mut tx = self.write_tx().await?;
            insert_audit(&mut tx, &entries).await?;
            Ok(tx.commit().await?)
        }
        .await;
        self.settle(&mut writer, outcome)?;
        writer.audit = audit_head;
        Ok(entries)
    }

    async fn quarantine_list(&self, limit: u32) -> Result<Vec<QuarantineRow>> {
        let rows = sqlx::query(
            "SELECT qid, peer, record_id, kind, origin, reason, body, at_ms, cause FROM quarantine \
             WHERE NOT resolved ORDER BY qid LIMIT $1",
        )
        .bind(if limit == 0 { 100 } else { limit } as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(quarantine_row).collect()
    }

    async fn quarantine_get(&self, qid: u64) -> Result<Option<QuarantineRow>> {
        let row = sqlx::query(
            "SELECT qid, peer, record_id, kind, origin, reason, body, at_ms, cause FROM quarantine \
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

    async fn lease(&self) -> Result<Option<LeaseStatus>> {
        self.lease_status().await
    }

    async fn close(&self) {
        self.pool.close().await;
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
