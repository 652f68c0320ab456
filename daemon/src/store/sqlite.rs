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
use std::fs::{File, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool};
use tiersync_proto::types::DivisionCode;
use tiersync_proto::wire;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;
use tracing::warn;

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

/// A file beside the store: `<store file name>.<suffix>`.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    path.with_file_name(name)
}

/// What `<store>.id` says. It is written once a store has been created (and
/// beside a store from before these markers when it is next opened), and
/// says that this node's store exists: from then on a store file that is
/// missing, empty, another store or damaged is refused instead of started
/// as a brand-new empty node.
struct Marker {
    path: PathBuf,
    node: String,
    epoch: String,
}

impl Marker {
    /// The marker beside the store at `path`, if there is one.
    fn read(path: &Path, shown: &str) -> Result<Option<Marker>> {
        let marker = beside(path, "id");
        let text = match std::fs::read_to_string(&marker) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(StoreError::Unusable {
                    store: shown.to_owned(),
                    problem: format!("cannot read {}: {e}", marker.display()),
                });
            }
        };
        let field = |key: &str| {
            text.lines()
                .filter_map(|line| line.split_once('='))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default()
        };
        Ok(Some(Marker {
            node: field("node"),
            epoch: field("epoch"),
            path: marker,
        }))
    }

    /// Writes the marker of the store at `path` (whole or not at all).
    fn write(path: &Path, node: &str, epoch: &str) -> std::io::Result<()> {
        let marker = beside(path, "id");
        let temporary = beside(path, "id.new");
        let mut file = File::create(&temporary)?;
        write!(
            file,
            "# tiersync: this node's store was created beside this file. While this file\n\
             # exists, tiersync refuses to start on a store there that is missing, empty,\n\
             # damaged or another store. Delete it only to start this node on a new,\n\
             # empty store.\n\
             node = {node}\n\
             epoch = {epoch}\n"
        )?;
        file.sync_all()?;
        std::fs::rename(&temporary, &marker)?;
        if let Some(dir) = marker.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// What to do when the store it vouches for is gone.
    fn advice(&self) -> String {
        format!(
            "Restore this node's store from a backup (and run `tiersync new-epoch` before starting it), or, to start this node on a new, empty store, delete {}: the new store gets a new epoch, so the nodes it links with start over with it",
            self.path.display()
        )
    }
}

/// Whether SQLite found the file not a database or damaged
/// (`SQLITE_NOTADB`, `SQLITE_CORRUPT`).
fn is_damage(error: &StoreError) -> bool {
    match error {
        StoreError::Db(sqlx::Error::Database(db)) => db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 11 | 26)),
        _ => false,
    }
}

/// Refuses a store file that is missing or empty although `marker` says
/// the store was created (SQLite would start either as a new database).
fn check_present(path: &Path, shown: &str, marker: &Marker) -> Result<()> {
    let found = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "the file is missing",
        Ok(meta) if meta.len() == 0 => "the file is empty (0 bytes)",
        _ => return Ok(()),
    };
    Err(StoreError::Unusable {
        store: shown.to_owned(),
        problem: format!(
            "{found}, but {} says the store of node `{}` (epoch {}) was created there, so its records are gone from this disk; not starting as a new, empty node. {}",
            marker.path.display(),
            marker.node,
            marker.epoch,
            marker.advice()
        ),
    })
}

/// Takes the exclusive lock that makes a daemon the only one on the store
/// at `path`: an advisory lock (`flock`) on `<store>.lock`, which also
/// holds the holder's pid for the message another gets. SQLite's own
/// locks let two processes share a file, and two daemons of one node then
/// handed out the same sequence numbers.
fn lock_store(path: &Path, shown: &str) -> Result<File> {
    let lock = beside(path, "lock");
    let unusable = |problem: String| StoreError::Unusable {
        store: shown.to_owned(),
        problem,
    };
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .map_err(|e| unusable(format!("cannot open its lock file {}: {e}", lock.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(StoreError::InUse {
                store: shown.to_owned(),
                holder: match text.trim().parse::<u32>() {
                    Ok(pid) => format!(" (pid {pid})"),
                    Err(_) => String::new(),
                },
            });
        }
        Err(TryLockError::Error(e)) => {
            return Err(unusable(format!("cannot lock {}: {e}", lock.display())));
        }
    }
    // Only for the message above: a full disk must not keep a node down.
    let _ = file
        .set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    Ok(file)
}

/// About how much a store writes to its WAL between checkpoints.
const CHECKPOINT_BYTES: u64 = 48 << 20;

/// Copies the WAL into the database file on a connection of its own, once
/// about [`CHECKPOINT_BYTES`] have been committed since the last time.
///
/// With SQLite's automatic checkpoint, the commit that crosses the
/// threshold copies the whole WAL itself, on the one writer every link and
/// local put waits for: measured at 13% of the writer's time in a catch-up.
/// A PASSIVE checkpoint runs beside the writer and the readers. It runs
/// only every ~48 MB of writes, not after every commit: an earlier version
/// that checkpointed 10 ms after each commit made every small commit
/// slower (its fsyncs of the database file competed with the WAL's). The
/// writer's own checkpoint stays as a backstop at 256 MB.
struct Checkpointer {
    /// Bytes committed since the last checkpoint began (an estimate).
    pending: Arc<AtomicU64>,
    wake: Arc<Notify>,
    stop: CancellationToken,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Checkpointer {
    fn start(conn: SqliteConnection) -> Checkpointer {
        let pending = Arc::new(AtomicU64::new(0));
        let wake = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let task = tokio::spawn(checkpoint_loop(
            conn,
            pending.clone(),
            wake.clone(),
            stop.clone(),
        ));
        Checkpointer {
            pending,
            wake,
            stop,
            task: std::sync::Mutex::new(Some(task)),
        }
    }

    /// After a commit of about `bytes`.
    fn committed(&self, bytes: u64) {
        let before = self.pending.fetch_add(bytes, Ordering::Relaxed);
        if before < CHECKPOINT_BYTES && before + bytes >= CHECKPOINT_BYTES {
            self.wake.notify_one();
        }
    }

    async fn shut_down(&self) {
        self.stop.cancel();
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn checkpoint_loop(
    mut conn: SqliteConnection,
    pending: Arc<AtomicU64>,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = wake.notified() => {}
        }
        pending.store(0, Ordering::Relaxed);
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut conn)
            .await
        {
            // The writer's own checkpoint still bounds the WAL.
            warn!(%error, "background WAL checkpoint failed");
        }
    }
    let _ = conn.close().await;
}

/// What committing `records` adds to the WAL, roughly: their bodies and
/// index entries, and the few pages any commit rewrites whole.
fn wal_bytes<'a>(records: impl IntoIterator<Item = &'a wire::Record>) -> u64 {
    const PAGES_PER_COMMIT: u64 = 4 * 8192;
    PAGES_PER_COMMIT
        + records
            .into_iter()
            .map(|r| (r.payload.len() + r.proof.len() + 256) as u64)
            .sum::<u64>()
}

struct Writer {
    /// The connection every write transaction runs on. Taken out for each
    /// transaction and put back only when it ended cleanly: after a failure
    /// (or a cancelled write) it is gone, and the next write opens another
    /// and re-reads `next_seq` and `audit` (see [`SqliteStore::writer_conn`]).
    conn: Option<SqliteConnection>,
    /// Set by [`Store::close`]: no connection is opened any more.
    closed: bool,
    next_seq: u64,
    /// The audit chain's head, advanced only once a transaction commits.
    audit: ChainHead,
}

/// The newest seq and the last audit entry `(entry, hash)` the file holds.
async fn committed_state(conn: &mut SqliteConnection) -> Result<(u64, Option<(i64, Vec<u8>)>)> {
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
async fn begin(conn: &mut SqliteConnection) -> Result<()> {
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    Ok(())
}

/// Commits the transaction [`begin`] started. A plain `COMMIT`: it fails
/// unless that very transaction is still open, so success means committed.
async fn commit(conn: &mut SqliteConnection) -> Result<()> {
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    Ok(())
}

async fn rollback(conn: &mut SqliteConnection) -> Result<()> {
    sqlx::query("ROLLBACK").execute(&mut *conn).await?;
    Ok(())
}

/// Whether SQLite said the disk (or the database's size limit) is full.
fn is_full(error: &StoreError) -> Option<String> {
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

/// Writes records (new or changed) at the given sequence numbers.
/// `stale_keys` are the index entries (hash, old seq) of the versions being
/// replaced, removed first.
async fn write_records(
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
async fn stored_keys(tx: &mut SqliteConnection, ids: &[Vec<u8>]) -> Result<Vec<(i64, i64)>> {
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

async fn quarantine(tx: &mut SqliteConnection, peer: &str, refused: &[Refusal]) -> Result<()> {
    let at = now_ms();
    for chunk in refused.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO quarantine (peer, record_id, kind, origin, reason, body, at_ms) ",
        );
        q.push_values(chunk, |mut b, r| {
            b.push_bind(peer.to_owned())
                .push_bind(r.record_id.clone())
                .push_bind(r.kind.clone())
                .push_bind(r.origin.clone())
                .push_bind(r.reason.clone())
                .push_bind(r.body.clone())
                .push_bind(at);
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
async fn stage_local(
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

async fn insert_audit(tx: &mut SqliteConnection, entries: &[AuditEntry]) -> Result<()> {
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

    async fn audit_append(&self, event: AuditEvent) -> Result<AuditEntry> {
        let mut writer = self.writer.lock().await;
        let mut conn = self.writer_conn(&mut writer).await?;
        let (mut entries, audit_head) = writer.audit.chain(vec![event], now_ms());
        let outcome = async {
            begin(&mut conn).await?;
            insert_audit(&mut conn, &entries).await?;
            commit(&mut conn).await
        }
        .await;
        self.settle(&mut writer, conn, outcome).await?;
        writer.audit = audit_head;
        Ok(entries.remove(0))
    }

    async fn quarantine_list(&self, limit: u32) -> Result<Vec<QuarantineRow>> {
        let rows = sqlx::query(
            "SELECT qid, peer, record_id, kind, origin, reason, body, at_ms FROM quarantine \
             WHERE resolved = 0 ORDER BY qid LIMIT ?1",
        )
        .bind(if limit == 0 { 100 } else { limit } as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(quarantine_row).collect()
    }

    async fn quarantine_get(&self, qid: u64) -> Result<Option<QuarantineRow>> {
        let row = sqlx::query(
            "SELECT qid, peer, record_id, kind, origin, reason, body, at_ms FROM quarantine WHERE qid = ?1 AND resolved = 0",
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
}
