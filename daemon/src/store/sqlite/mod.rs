//! The embedded SQLite store: one file per node, WAL, migrations embedded in
//! the binary.
//!
//! Writes are serialised through one mutex that also owns the next sequence
//! number, so sequence numbers are assigned and become visible strictly in
//! order; reads use the pool's connections concurrently (WAL).
//! `synchronous = FULL`: an acknowledged batch or local write survives power
//! loss, at the cost of one WAL fsync per transaction (batches amortise it).
//!
//! Every write transaction runs on the writer's own connection (not one of
//! the pool's), `BEGIN IMMEDIATE` to `COMMIT`, and any error inside one
//! closes that connection: closing rolls back whatever the failure left
//! open and releases SQLite's write lock, and the next write opens a fresh
//! connection and re-reads the next seq and the audit chain's head from the
//! file. A failed write therefore never leaves a connection half inside a
//! transaction. (It did: with pooled connections and sqlx's transactions,
//! a `SQLITE_FULL` that rolled a transaction back left sqlx counting one
//! open, so its later "commits" were `RELEASE SAVEPOINT`s inside a
//! transaction that never committed, answered as stored and lost.)

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool};
use tiersync_proto::types::DivisionCode;
use tiersync_proto::wire;
use tokio::sync::Mutex;
use tracing::warn;

mod checkpoint;
mod files;
mod rows;
mod subscriptions;

use checkpoint::{Checkpointer, wal_bytes};
use files::*;
use rows::*;

use super::*;
use crate::store::audit::ChainHead;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Rows per multi-row statement: at most 10 parameters a row, and SQLite
/// allows 32,766. Each statement is a round trip to sqlx's connection
/// thread; 3,000 instead of 500 moved a catch-up 2-4% faster. Statements
/// of a full chunk are kept prepared; the shorter last one of a batch
/// (a different statement each time) is not.
const CHUNK: usize = 3000;

/// Whether a statement over `rows` rows is worth keeping prepared.
fn full(rows: usize) -> bool {
    rows == CHUNK
}

pub struct SqliteStore {
    pool: SqlitePool,
    /// What every connection is opened with; the writer reopens with it.
    options: SqliteConnectOptions,
    /// The store's file, as errors name it.
    shown: String,
    writer: Mutex<Writer>,
    /// The newest committed seq, readable without waiting for a write.
    head: AtomicU64,
    checkpointer: Checkpointer,
    epoch: String,
    /// The exclusive lock on `<store>.lock`, released by [`Store::close`]
    /// (or when the store is dropped, or the process ends).
    lock: std::sync::Mutex<Option<File>>,
    /// Where the store is and whose, for its marker (see [`Marker`]).
    path: PathBuf,
    node: String,
}

impl SqliteStore {
    /// Opens (creating if needed) the store of node `node` at `path`;
    /// refuses while another process (or another open store in this one)
    /// has it open.
    pub async fn open(path: &Path, node: &DivisionCode) -> Result<SqliteStore> {
        let shown = path.display().to_string();
        let lock = lock_store(path, &shown)?;
        let marker = Marker::read(path, &shown)?;
        if let Some(marker) = &marker {
            check_present(path, &shown, marker)?;
        }
        let existed = std::fs::metadata(path).is_ok_and(|m| m.len() > 0);
        let damaged = |problem: String| StoreError::Unusable {
            store: shown.clone(),
            problem: format!(
                "it is damaged ({problem}); not starting on it. Restore this node's store from a backup (and run `tiersync new-epoch` before starting it), or move the file aside and delete {} to start this node on a new, empty store",
                beside(path, "id").display()
            ),
        };
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // A link sender reads pages of 1,000 rows: with sqlx's default
            // of 50 buffered rows its worker thread stopped and woke the
            // reader every 50, measured as a third of a page's time.
            .row_buffer_size(1024)
            .pragma("cache_size", "-65536")
            // Checkpoints run in the background (`Checkpointer`); a
            // committing writer checkpoints itself only as a backstop, once
            // the WAL holds 32,768 pages (256 MB; 128 MB in a store made
            // with 4 KB pages).
            .pragma("wal_autocheckpoint", "32768")
            // After a burst, the WAL file is cut back to 64 MB when it
            // restarts.
            .pragma("journal_size_limit", "67108864")
            // New stores only (a store's page size is fixed once it is in
            // WAL mode). Every page a commit touches is a WAL frame, written
            // with two syscalls and checksummed: with 8 KB pages instead of
            // 4 KB a catch-up ran at 55-59,000 records/s instead of
            // 46-50,000 (four interleaved runs each). 16 KB pages added
            // another 3% but doubled what each small commit writes, and
            // three hops at 1,000 puts/s then had a p99 of 50-100 ms
            // instead of 30-50.
            .page_size(8192)
            // Readers (link senders, watchers) map the file instead of
            // copying every page through read(2) into each connection's
            // cache: measured as the largest cost of a catch-up.
            .pragma("mmap_size", "1073741824");
        // The writer's connection first: it checks the file before anything
        // else reads or writes it.
        let mut conn = match options.connect().await {
            Ok(conn) => conn,
            Err(e) => {
                let e = StoreError::from(e);
                return Err(if existed && is_damage(&e) {
                    damaged(e.to_string())
                } else {
                    e
                });
            }
        };
        // A quick integrity check at every start (page structure, not index
        // contents): flipped bytes in a page otherwise surface only later,
        // as reads failing with "malformed".
        let check: Vec<String> = match sqlx::query_scalar("PRAGMA quick_check(5)")
            .fetch_all(&mut conn)
            .await
            .map_err(StoreError::from)
        {
            Ok(check) => check,
            Err(e) if is_damage(&e) => vec![e.to_string()],
            Err(e) => return Err(e),
        };
        if check != ["ok"] {
            return Err(damaged(format!("PRAGMA quick_check: {}", check.join("; "))));
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&pool).await?;
        let checkpointer = Checkpointer::start(options.connect().await?);

        begin(&mut conn).await?;
        let stored_node: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'node'")
                .fetch_optional(&mut conn)
                .await?;
        match stored_node {
            Some(stored) if stored != node.as_str() => {
                return Err(StoreError::WrongNode {
                    path: path.display().to_string(),
                    stored,
                    configured: node.to_string(),
                });
            }
            Some(_) => {}
            None => {
                if let Some(marker) = &marker {
                    return Err(StoreError::Unusable {
                        store: shown,
                        problem: format!(
                            "the file holds no store (a new, empty database), but {} says the store of node `{}` (epoch {}) was created there; not starting as a new, empty node. {}",
                            marker.path.display(),
                            marker.node,
                            marker.epoch,
                            marker.advice()
                        ),
                    });
                }
                let epoch = hex::encode(rand::random::<[u8; 16]>());
                sqlx::query("INSERT INTO meta (key, value) VALUES ('node', ?1), ('epoch', ?2)")
                    .bind(node.as_str())
                    .bind(epoch)
                    .execute(&mut conn)
                    .await?;
            }
        }
        let epoch: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'epoch'")
            .fetch_one(&mut conn)
            .await?;
        if let Some(marker) = &marker
            && marker.epoch != epoch
        {
            return Err(StoreError::Unusable {
                store: shown,
                problem: format!(
                    "it is the store of epoch {epoch}, but {} says the store created there has epoch {}: this file is not the store this node last ran on (replaced, or restored from a backup older than a `tiersync new-epoch`?). Put this node's own store back; or, to run on this file, delete {} and run `tiersync new-epoch` before starting",
                    marker.path.display(),
                    marker.epoch,
                    marker.path.display()
                ),
            });
        }
        let (head, last) = committed_state(&mut conn).await?;
        commit(&mut conn).await?;
        if marker.is_none()
            && let Err(error) = Marker::write(path, node.as_str(), &epoch)
        {
            // Not fatal (the disk may be full): the next start writes it.
            warn!(store = %shown, %error, "cannot write the store's marker");
        }
        Ok(SqliteStore {
            pool,
            options,
            shown,
            writer: Mutex::new(Writer {
                conn: Some(conn),
                closed: false,
                next_seq: head + 1,
                audit: ChainHead::after(last),
            }),
            head: AtomicU64::new(head),
            checkpointer,
            epoch,
            lock: std::sync::Mutex::new(Some(lock)),
            path: path.to_owned(),
            node: node.to_string(),
        })
    }

    /// The writer's connection, taken out of `writer` for one transaction:
    /// the one the last write left, or (after a failure) a new one, with
    /// the next seq, the head and the audit chain's head re-read from what
    /// the file holds. A commit that failed may in rare IO cases have
    /// committed all the same; what is in memory follows the file.
    async fn writer_conn(&self, writer: &mut Writer) -> Result<SqliteConnection> {
        if let Some(conn) = writer.conn.take() {
            return Ok(conn);
        }
        if writer.closed {
            return Err(sqlx::Error::PoolClosed.into());
        }
        let mut conn = self.options.connect().await?;
        let (head, last) = committed_state(&mut conn).await?;
        writer.next_seq = head + 1;
        writer.audit = ChainHead::after(last);
        self.head.store(head, Ordering::Release);
        Ok(conn)
    }

    /// Ends a write on the writer's connection: gives it back to `writer`
    /// if the write succeeded (its transaction committed or rolled back);
    /// otherwise closes it, which rolls back whatever the failure left open
    /// and releases the write lock, and returns the error, a full disk as
    /// [`StoreError::Full`].
    async fn settle<T>(
        &self,
        writer: &mut Writer,
        conn: SqliteConnection,
        outcome: Result<T>,
    ) -> Result<T> {
        match outcome {
            Ok(value) => {
                writer.conn = Some(conn);
                Ok(value)
            }
            Err(error) => {
                if let Err(close) = conn.close().await {
                    warn!(store = %self.shown, error = %close, "closing the writer's connection after a failed write");
                }
                Err(match is_full(&error) {
                    Some(detail) => StoreError::Full {
                        store: self.shown.clone(),
                        detail,
                    },
                    None => error,
                })
            }
        }
    }

    /// Direct pool access for tests that tamper behind the daemon's back.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// Reads audit entries; also serves `tiersync audit` through a read-only
/// pool while the daemon runs.
#[async_trait]
impl AuditSource for SqlitePool {
    async fn audit_list(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT entry, at_ms, actor, action, kind, record_id, detail, prev_hash, hash FROM audit \
             WHERE entry > ?1 AND (?2 IS NULL OR at_ms >= ?2) AND (?3 IS NULL OR at_ms <= ?3) \
             AND (?4 = '' OR kind = ?4) AND (?5 = '' OR actor = ?5) AND (?6 = '' OR action = ?6) \
             ORDER BY entry LIMIT ?7",
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
impl AuditSource for SqliteStore {
    async fn audit_list(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        self.pool.audit_list(query).await
    }
}

/// Opens the SQLite store at `path` read-only, for reading its audit log
/// while its daemon runs (WAL lets both proceed).
pub async fn open_read_only(path: &Path) -> Result<SqlitePool> {
    let shown = path.display().to_string();
    if let Some(marker) = Marker::read(path, &shown)? {
        check_present(path, &shown, &marker)?;
    }
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .busy_timeout(Duration::from_secs(10));
    Ok(SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?)
}

#[async_trait]
impl Store for SqliteStore {
    fn epoch(&self) -> &str {
        &self.epoch
    }

    async fn head_seq(&self) -> Result<u64> {
        Ok(self.head.load(Ordering::Acquire))
    }

    async fn get(&self, id: &[u8]) -> Result<Option<Stored>> {
        let row = sqlx::query("SELECT seq, via, body FROM records WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(stored_row).transpose()
    }

    async fn lookup(&self, kind: &str, name: &str, value: &str) -> Result<Vec<Stored>> {
        let rows = sqlx::query(
            "SELECT r.seq, r.via, r.body FROM natural_keys k JOIN records r ON r.seq = k.record_seq \
             WHERE k.key_hash = ?1 AND r.deleted = 0 ORDER BY r.id",
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
            "SELECT seq, via, body FROM records WHERE (?1 = '' OR kind = ?1) AND owner LIKE ?2 || '%' \
             AND (?3 OR deleted = 0) AND id > ?4 ORDER BY id LIMIT ?5",
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
            sqlx::query("SELECT seq, via, body FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2")
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
        // The owner test runs on each row the seq range scan visits, before
        // its body is read: records left out cost no read.
        let rows = sqlx::query(
            "SELECT seq, body FROM records WHERE seq > ?1 AND seq <= ?2 \
             AND (substr(owner, 1, length(?3)) = ?3) = ?4 ORDER BY seq LIMIT ?5",
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
        let row = sqlx::query("SELECT applied_through, peer_epoch FROM cursors WHERE peer = ?1")
            .bind(peer.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| Cursor {
            applied_through: r.get::<i64, _>(0) as u64,
            peer_epoch: r.get(1),
        }))
    }

    async fn apply(&self, batch: ApplyBatch) -> Result<ApplyReport> {
        let mut report = ApplyReport {
            refused: batch.refused,
            ..Default::default()
        };
        let incoming = newest_per_id(batch.records, &mut report);

        let mut writer = self.writer.lock().await;
        let mut conn = self.writer_conn(&mut writer).await?;
        let outcome = async {
            begin(&mut conn).await?;
            let mut held: HashMap<Vec<u8>, (u64, bool)> = HashMap::new();
            for chunk in incoming.chunks(CHUNK) {
                let mut q = QueryBuilder::<Sqlite>::new(
                    "SELECT id, version, withdrawn FROM records WHERE id IN (",
                );
                let mut sep = q.separated(", ");
                for r in chunk {
                    sep.push_bind(r.record.id.as_slice());
                }
                q.push(")");
                for row in q
                    .build()
                    .persistent(full(chunk.len()))
                    .fetch_all(&mut conn)
                    .await?
                {
                    held.insert(row.get(0), (row.get::<i64, _>(1) as u64, row.get(2)));
                }
            }
            let plan = plan_apply(incoming, &held, writer.next_seq, &mut report);
            let rows: Vec<(u64, &Encoded)> = plan.writes.iter().map(|(s, r)| (*s, r)).collect();
            let stale_keys = stored_keys(&mut conn, &plan.replaced).await?;
            write_records(&mut conn, &rows, &batch.via, &stale_keys).await?;
            quarantine(&mut conn, &batch.via, &report.refused).await?;
            let events = apply_events(&batch.via, &report.refused, batch.audit);
            let (entries, audit_head) = writer.audit.chain(events, now_ms());
            insert_audit(&mut conn, &entries).await?;
            if let Some((peer, cursor)) = &batch.cursor {
                sqlx::query(
                    "INSERT INTO cursors (peer, applied_through, peer_epoch, updated_at_ms) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (peer) DO UPDATE SET applied_through = excluded.applied_through, \
                     peer_epoch = excluded.peer_epoch, updated_at_ms = excluded.updated_at_ms",
                )
                .bind(peer.as_str())
                .bind(cursor.applied_through as i64)
                .bind(&cursor.peer_epoch)
                .bind(now_ms())
                .execute(&mut conn)
                .await?;
            }
            commit(&mut conn).await?;
            Ok((plan, audit_head))
        }
        .await;
        let (plan, audit_head) = self.settle(&mut writer, conn, outcome).await?;
        self.checkpointer
            .committed(wal_bytes(plan.writes.iter().map(|(_, r)| &r.record)));
        writer.next_seq = plan.next_seq;
        self.head.store(plan.next_seq - 1, Ordering::Release);
        writer.audit = audit_head;
        report.applied = plan
            .writes
            .into_iter()
            .map(|(s, r)| (s, r.record))
            .collect();
        Ok(report)
    }

    async fn put_local_many(&self, writes: Vec<LocalWrite>) -> Result<Vec<Result<Stored>>> {
        let mut writer = self.writer.lock().await;
        let mut conn = self.writer_conn(&mut writer).await?;
        let outcome = async {
            begin(&mut conn).await?;
            let mut staged = StagedWrites::new(writer.next_seq, writes.len());
            for write in writes {
                // Each write sees the ones staged before it in this transaction.
                let outcome = stage_local(&mut conn, staged.next_seq, write).await;
                staged.take(outcome)?;
            }
            if staged.events.is_empty() {
                // every write refused: nothing to commit
                rollback(&mut conn).await?;
                return Ok((staged.outcomes, None));
            }
            let (entries, audit_head) = writer.audit.chain(staged.events, now_ms());
            insert_audit(&mut conn, &entries).await?;
            commit(&mut conn).await?;
            Ok((staged.outcomes, Some((staged.next_seq, audit_head))))
        }
        .await;
        let (outcomes, committed) = self.settle(&mut writer, conn, outcome).await?;
        if let Some((next_seq, audit_head)) = committed {
            self.checkpointer.committed(wal_bytes(
                outcomes
                    .iter()
                    .filter_map(|o| o.as_ref().ok())
                    .map(|s| &s.record),
            ));
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
        let mut conn = self.writer_conn(&mut writer).await?;
        let (entries, audit_head) = writer.audit.chain(events, now_ms());
        let outcome = async {
            begin(&mut conn).await?;
            insert_audit(&mut conn, &entries).await?;
            commit(&mut conn).await
        }
        .await;
        self.settle(&mut writer, conn, outcome).await?;
        writer.audit = audit_head;
        Ok(entries)
    }

    async fn quarantine_list(&self, limit: u32) -> Result<Vec<QuarantineRow>> {
        let rows = sqlx::query(
            "SELECT qid, peer, record_id, kind, origin, reason, body, at_ms, cause FROM quarantine \
             WHERE resolved = 0 ORDER BY qid LIMIT ?1",
        )
        .bind(if limit == 0 { 100 } else { limit } as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(quarantine_row).collect()
    }

    async fn quarantine_get(&self, qid: u64) -> Result<Option<QuarantineRow>> {
        let row = sqlx::query(
            "SELECT qid, peer, record_id, kind, origin, reason, body, at_ms, cause FROM quarantine WHERE qid = ?1 AND resolved = 0",
        )
        .bind(qid as i64)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(quarantine_row).transpose()
    }

    async fn quarantine_resolve(&self, qid: u64) -> Result<()> {
        let mut writer = self.writer.lock().await;
        let mut conn = self.writer_conn(&mut writer).await?;
        let outcome = async {
            begin(&mut conn).await?;
            sqlx::query("UPDATE quarantine SET resolved = 1 WHERE qid = ?1")
                .bind(qid as i64)
                .execute(&mut conn)
                .await?;
            commit(&mut conn).await
        }
        .await;
        self.settle(&mut writer, conn, outcome).await
    }

    async fn quarantine_count(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM quarantine WHERE resolved = 0")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    async fn renew_epoch(&self) -> Result<String> {
        let mut writer = self.writer.lock().await;
        let mut conn = self.writer_conn(&mut writer).await?;
        let epoch = hex::encode(rand::random::<[u8; 16]>());
        let outcome = async {
            begin(&mut conn).await?;
            sqlx::query("UPDATE meta SET value = ?1 WHERE key = 'epoch'")
                .bind(&epoch)
                .execute(&mut conn)
                .await?;
            commit(&mut conn).await
        }
        .await;
        self.settle(&mut writer, conn, outcome).await?;
        let path = &self.path;
        Marker::write(path, &self.node, &epoch).map_err(|e| StoreError::Unusable {
            store: self.shown.clone(),
            problem: format!(
                "its new epoch {epoch} is stored, but {} could not be updated ({e}); delete it before starting the node",
                beside(path, "id").display()
            ),
        })?;
        Ok(epoch)
    }

    async fn close(&self) {
        self.checkpointer.shut_down().await;
        let mut writer = self.writer.lock().await;
        writer.closed = true;
        if let Some(conn) = writer.conn.take() {
            let _ = conn.close().await;
        }
        drop(writer);
        self.pool.close().await;
        // last: another daemon may open the store now
        drop(
            self.lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(),
        );
    }

    fn report_to(&self, workers: &crate::worker::Workers) {
        let handle = workers.register("wal-checkpoint");
        handle.idle();
        let _ = self.checkpointer.worker.set(handle);
    }
}
