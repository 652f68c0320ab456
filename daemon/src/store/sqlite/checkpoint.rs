//! The background WAL checkpoint of a SQLite store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use sqlx::{Connection, SqliteConnection};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::*;
use crate::worker::WorkerHandle;

/// About how much a store writes to its WAL between checkpoints.
pub(super) const CHECKPOINT_BYTES: u64 = 48 << 20;

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
pub(super) struct Checkpointer {
    /// Bytes committed since the last checkpoint began (an estimate).
    pub(super) pending: Arc<AtomicU64>,
    pub(super) wake: Arc<Notify>,
    pub(super) stop: CancellationToken,
    pub(super) task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Where the loop reports, once the node has registered it.
    pub(super) worker: Arc<OnceLock<WorkerHandle>>,
}

impl Checkpointer {
    pub(super) fn start(conn: SqliteConnection) -> Checkpointer {
        let pending = Arc::new(AtomicU64::new(0));
        let wake = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let worker = Arc::new(OnceLock::new());
        let task = tokio::spawn(checkpoint_loop(
            conn,
            pending.clone(),
            wake.clone(),
            stop.clone(),
            worker.clone(),
        ));
        Checkpointer {
            pending,
            wake,
            stop,
            task: std::sync::Mutex::new(Some(task)),
            worker,
        }
    }

    /// After a commit of about `bytes`.
    pub(super) fn committed(&self, bytes: u64) {
        let before = self.pending.fetch_add(bytes, Ordering::Relaxed);
        if before < CHECKPOINT_BYTES && before + bytes >= CHECKPOINT_BYTES {
            self.wake.notify_one();
        }
    }

    pub(super) async fn shut_down(&self) {
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

pub(super) async fn checkpoint_loop(
    mut conn: SqliteConnection,
    pending: Arc<AtomicU64>,
    wake: Arc<Notify>,
    stop: CancellationToken,
    worker: Arc<OnceLock<WorkerHandle>>,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = wake.notified() => {}
        }
        pending.store(0, Ordering::Relaxed);
        if let Some(w) = worker.get() {
            w.busy();
        }
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut conn)
            .await
        {
            // The writer's own checkpoint still bounds the WAL.
            warn!(%error, "background WAL checkpoint failed");
            if let Some(w) = worker.get() {
                w.error(&error);
            }
        }
        if let Some(w) = worker.get() {
            w.idle();
        }
    }
    if let Some(w) = worker.get() {
        w.stopped();
    }
    let _ = conn.close().await;
}

/// What committing `records` adds to the WAL, roughly: their bodies and
/// index entries, and the few pages any commit rewrites whole.
pub(super) fn wal_bytes<'a>(records: impl IntoIterator<Item = &'a wire::Record>) -> u64 {
    const PAGES_PER_COMMIT: u64 = 4 * 8192;
    PAGES_PER_COMMIT
        + records
            .into_iter()
            .map(|r| (r.payload.len() + r.proof.len() + 256) as u64)
            .sum::<u64>()
}
