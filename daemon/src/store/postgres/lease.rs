//! The active lease of a PostgreSQL-backed node: which of its daemons (the
//! active one and its standbys) may write the store, and how a standby
//! tells a hung active daemon from a live one.
//!
//! - **The lock.** A session-level advisory lock, keyed by (schema, node
//!   code), held on a dedicated connection: exactly one process holds it,
//!   and it ends with that session (the process died, or the network to the
//!   database broke).
//! - **The lease row.** A paused or wedged process keeps its session, and
//!   so the lock. So the holder also keeps a row of `active_lease` with an
//!   expiry (the database's clock) that it pushes forward every
//!   [`LeaseTiming::renew`] through the store's writer
//!   ([`PgStore::renew_lease`]): same mutex, a transaction that checks the
//!   fence. A daemon whose writer is wedged, or that is paused, stops
//!   renewing.
//! - **Takeover.** A standby polls every [`LEASE_POLL`]. Once the row has
//!   expired it ends every session of the holder (each carries the holder's
//!   id as its `application_name`), which releases the lock and rolls back
//!   any open transaction, takes the lock and claims the row; opening the
//!   store then bumps the fence. A hang costs at most the expiry plus one
//!   poll.
//! - **Writes check it.** Every write transaction of a leased store reads
//!   the row with the fence and refuses ([`StoreError::LeaseLost`]) when it
//!   has expired or names another holder, so an old active whose session
//!   somehow survived cannot write.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Row as _};
use tiersync_proto::types::DivisionCode;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::*;

/// How often a standby polls the lock and the lease row, and the active
/// checks its lock's connection.
pub const LEASE_POLL: Duration = Duration::from_millis(500);

/// How often the active daemon renews its lease, and how long a renewal
/// lasts (`storage.lease_renew_ms`, `storage.lease_expiry_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    pub renew: Duration,
    pub expiry: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        LeaseTiming {
            renew: Duration::from_secs(1),
            expiry: Duration::from_secs(10),
        }
    }
}

/// What this daemon last saw of its node's lease: its own renewals while
/// active, the holder's row while standing by. `/metrics` reads it.
#[derive(Debug, Clone, Default)]
pub struct LeaseView(Arc<Mutex<Option<Seen>>>);

#[derive(Debug, Clone)]
struct Seen {
    holder: String,
    renewed: Instant,
    expiry: Duration,
}

impl LeaseView {
    /// Records a sighting: `holder` renewed `age` ago, for `expiry`.
    pub fn saw(&self, holder: &str, age: Duration, expiry: Duration) {
        let now = Instant::now();
        let seen = Seen {
            holder: holder.to_owned(),
            renewed: now.checked_sub(age).unwrap_or(now),
            expiry,
        };
        *self.0.lock().expect("lease view") = Some(seen);
    }

    fn seen(&self) -> Option<Seen> {
        self.0.lock().expect("lease view").clone()
    }

    /// Time since the lease was last renewed, as last seen.
    pub fn age(&self) -> Option<Duration> {
        self.seen().map(|s| s.renewed.elapsed())
    }

    /// How long a renewal lasts, as the holder wrote it.
    pub fn expiry(&self) -> Option<Duration> {
        self.seen().map(|s| s.expiry)
    }

    /// The holder's id (its sessions' `application_name`).
    pub fn holder(&self) -> Option<String> {
        self.seen().map(|s| s.holder)
    }
}

/// The lease row as the status page shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LeaseStatus {
    /// The holder's id (its sessions' `application_name`).
    pub holder: String,
    /// The holder's host and process id.
    pub host: String,
    pub fence: i64,
    /// Seconds since the holder last renewed (database clock).
    pub age_seconds: f64,
    pub expiry_seconds: f64,
    pub expired: bool,
    /// Whether this daemon is the holder.
    pub this_daemon: bool,
}

/// The right to be a node's active daemon (see the module doc).
/// [`ActiveLease::lost`] fires when this process's lock connection fails or
/// a renewal finds the lease taken, after which it must stop: another
/// process may be active already (and the fence keeps this one from
/// writing meanwhile).
pub struct ActiveLease {
    holder: String,
    timing: LeaseTiming,
    view: LeaseView,
    lost: CancellationToken,
    stop: CancellationToken,
}

const TRY_LOCK: &str =
    "SELECT pg_try_advisory_lock(hashtextextended(current_schema() || '/tiersync/' || $1, 0))";

/// A fresh holder id: short enough for an `application_name` (63 bytes).
fn new_holder() -> String {
    format!("tiersync-{}", hex::encode(rand::random::<[u8; 6]>()))
}

fn this_host() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".into());
    format!("{host} pid {}", std::process::id())
}

/// What one poll found.
enum Attempt {
    Held(PgConnection),
    Taken,
}

/// The lease row as a standby reads it.
struct LeaseRow {
    holder: String,
    host: String,
    age: f64,
    expiry: f64,
    expired: bool,
}

impl ActiveLease {
    /// Waits until this process holds the lease of `node`, taking it over
    /// once its holder's row has expired. `standing_by` is called once,
    /// when the lease is found taken; `view` follows the holder meanwhile.
    pub async fn acquire(
        options: PgConnectOptions,
        node: &DivisionCode,
        timing: LeaseTiming,
        view: &LeaseView,
        cancel: &CancellationToken,
        mut standing_by: impl FnMut(),
    ) -> Result<Option<ActiveLease>> {
        let holder = new_holder();
        let options = options.application_name(&holder);
        let mut told = false;
        loop {
            if cancel.is_cancelled() {
                return Ok(None);
            }
            match Self::attempt(&options, node, &holder, timing, view).await {
                Ok(Attempt::Held(conn)) => {
                    info!(node = %node, %holder, "holding the active lease");
                    return Ok(Some(Self::held(conn, holder, timing, view.clone())));
                }
                Ok(Attempt::Taken) => {
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

    /// Takes the lock of `node` if no daemon holds it; `None` otherwise.
    /// Claims no lease row and never takes over: for maintenance with the
    /// node's daemons stopped.
    pub async fn try_acquire(
        options: PgConnectOptions,
        node: &DivisionCode,
    ) -> Result<Option<ActiveLease>> {
        let holder = new_holder();
        let options = options.application_name(&holder);
        let mut conn = PgConnection::connect_with(&options).await?;
        if try_lock(&mut conn, node).await? {
            Ok(Some(Self::held(
                conn,
                holder,
                LeaseTiming::default(),
                LeaseView::default(),
            )))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    fn held(conn: PgConnection, holder: String, timing: LeaseTiming, view: LeaseView) -> Self {
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        tokio::spawn(hold(conn, lost.clone(), stop.clone()));
        ActiveLease {
            holder,
            timing,
            view,
            lost,
            stop,
        }
    }

    async fn attempt(
        options: &PgConnectOptions,
        node: &DivisionCode,
        holder: &str,
        timing: LeaseTiming,
        view: &LeaseView,
    ) -> Result<Attempt> {
        let mut conn = PgConnection::connect_with(options).await?;
        if try_lock(&mut conn, node).await? {
            claim(&mut conn, node, holder, timing).await?;
            return Ok(Attempt::Held(conn));
        }
        let Some(row) = read_row(&mut conn, node).await? else {
            let _ = conn.close().await;
            return Ok(Attempt::Taken);
        };
        view.saw(
            &row.holder,
            Duration::from_secs_f64(row.age.max(0.0)),
            Duration::from_secs_f64(row.expiry.max(0.0)),
        );
        if row.expired {
            warn!(
                node = %node, holder = %row.holder, host = %row.host,
                "the active daemon has not renewed its lease for {:.1} s (expiry {:.1} s): ending its sessions and taking over",
                row.age, row.expiry
            );
            let ended = terminate(&mut conn, node, &row.holder).await?;
            info!(node = %node, sessions = ended, "ended the old holder's sessions");
            // the lock is free once the ended backend has exited
            for _ in 0..40 {
                if try_lock(&mut conn, node).await? {
                    claim(&mut conn, node, holder, timing).await?;
                    return Ok(Attempt::Held(conn));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let _ = conn.close().await;
        Ok(Attempt::Taken)
    }

    /// This daemon's holder id: the `application_name` of its sessions.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    pub fn timing(&self) -> LeaseTiming {
        self.timing
    }

    /// What `/metrics` shows of the lease.
    pub fn view(&self) -> LeaseView {
        self.view.clone()
    }

    /// Fires when the lease is lost.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Starts renewing the lease through `store`'s writer (opened with
    /// [`PgStore::open_leased`]) every [`LeaseTiming::renew`], until this
    /// is dropped or a renewal finds the lease taken ([`Self::lost`]).
    pub fn keep(&self, store: Arc<PgStore>) {
        tokio::spawn(renew(
            store,
            self.holder.clone(),
            self.timing,
            self.view.clone(),
            self.lost.clone(),
            self.stop.clone(),
        ));
    }
}

impl Drop for ActiveLease {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn try_lock(conn: &mut PgConnection, node: &DivisionCode) -> Result<bool> {
    Ok(sqlx::query_scalar(TRY_LOCK)
        .bind(node.as_str())
        .fetch_one(conn)
        .await?)
}

/// Writes this daemon into the lease row (just after taking the lock, so
/// a standby never judges a new holder by the old one's row). The table
/// comes with the store's migrations, run here first.
async fn claim(
    conn: &mut PgConnection,
    node: &DivisionCode,
    holder: &str,
    timing: LeaseTiming,
) -> Result<()> {
    // `run_direct`: `run` on a connection makes this future not `Send`
    // ("`Acquire` is not general enough"), and a standby's wait is spawned
    MIGRATOR.run_direct(None, &mut *conn, false).await?;
    sqlx::query(
        "INSERT INTO active_lease (node, holder, host, fence, backend_pid, renewed_at, expires_at) \
         VALUES ($1, $2, $3, COALESCE((SELECT value::bigint FROM meta WHERE key = 'fence'), 0), \
                 pg_backend_pid(), clock_timestamp(), clock_timestamp() + $4 * interval '1 second') \
         ON CONFLICT (node) DO UPDATE SET holder = EXCLUDED.holder, host = EXCLUDED.host, \
           fence = EXCLUDED.fence, backend_pid = EXCLUDED.backend_pid, \
           renewed_at = EXCLUDED.renewed_at, expires_at = EXCLUDED.expires_at",
    )
    .bind(node.as_str())
    .bind(holder)
    .bind(this_host())
    .bind(timing.expiry.as_secs_f64())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn read_row(conn: &mut PgConnection, node: &DivisionCode) -> Result<Option<LeaseRow>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('active_lease') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(None);
    }
    let row = sqlx::query(
        "SELECT holder, host, EXTRACT(EPOCH FROM clock_timestamp() - renewed_at)::float8, \
         EXTRACT(EPOCH FROM expires_at - renewed_at)::float8, expires_at < clock_timestamp() \
         FROM active_lease WHERE node = $1",
    )
    .bind(node.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| {
        Ok(LeaseRow {
            holder: r.try_get(0)?,
            host: r.try_get(1)?,
            age: r.try_get(2)?,
            expiry: r.try_get(3)?,
            expired: r.try_get(4)?,
        })
    })
    .transpose()
}

/// Ends every session of `holder` if its lease of `node` has still expired
/// (checked in the same statement, so a holder that renewed meanwhile, or a
/// new holder another standby wrote, is left alone). Returns how many.
async fn terminate(conn: &mut PgConnection, node: &DivisionCode, holder: &str) -> Result<usize> {
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a \
         JOIN active_lease l ON a.application_name = l.holder \
         WHERE l.node = $1 AND l.holder = $2 AND l.expires_at < clock_timestamp() \
         AND a.pid <> pg_backend_pid()",
    )
    .bind(node.as_str())
    .bind(holder)
    .fetch_all(&mut *conn)
    .await?;
    Ok(ended.into_iter().filter(|e| *e).count())
}

/// Keeps the lock's connection alive and checked; closing it releases the
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

/// Renews the lease every `timing.renew` through the store's writer. A
/// renewal that finds the lease taken (another holder in the row, or the
/// fence moved) fires `lost`; other failures are retried, and the row
/// expires by itself if they go on.
async fn renew(
    store: Arc<PgStore>,
    holder: String,
    timing: LeaseTiming,
    view: LeaseView,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(timing.renew) => {}
        }
        if store.pool.is_closed() {
            return;
        }
        match tokio::time::timeout(timing.expiry, store.renew_lease()).await {
            Ok(Ok(())) => view.saw(&holder, Duration::ZERO, timing.expiry),
            Ok(Err(error @ (StoreError::Fenced { .. } | StoreError::LeaseLost { .. }))) => {
                error!(%error, "renewing the active lease found it taken");
                lost.cancel();
                return;
            }
            Ok(Err(error)) => warn!(%error, "cannot renew the active lease; retrying"),
            Err(_) => warn!(
                "renewing the active lease took longer than its expiry ({:?}); retrying",
                timing.expiry
            ),
        }
    }
}

/// Which lease a store opened by its active daemon writes under.
pub(super) struct LeaseBinding {
    node: String,
    holder: String,
    expiry: Duration,
}

impl LeaseBinding {
    /// The node and holder the write check compares with (`None`s: not
    /// leased).
    pub(super) fn key(binding: &Option<LeaseBinding>) -> (Option<&str>, Option<&str>) {
        match binding {
            Some(b) => (Some(b.node.as_str()), Some(b.holder.as_str())),
            None => (None, None),
        }
    }
}

impl PgStore {
    /// [`PgStore::open`] by the holder of `lease`: every session carries
    /// the holder's id (so a standby can end them), every write checks the
    /// lease row, and the row gets the new fence at once.
    pub async fn open_leased(
        options: PgConnectOptions,
        node: &DivisionCode,
        lease: &ActiveLease,
    ) -> Result<PgStore> {
        let mut store = PgStore::open(options.application_name(&lease.holder), node).await?;
        store.lease = Some(LeaseBinding {
            node: node.to_string(),
            holder: lease.holder.clone(),
            expiry: lease.timing.expiry,
        });
        store.renew_lease().await?;
        lease
            .view
            .saw(&lease.holder, Duration::ZERO, lease.timing.expiry);
        Ok(store)
    }

    /// Pushes the lease row's expiry forward, in a write transaction under
    /// the writer's lock that checks the fence: a daemon whose writes are
    /// stuck stops renewing. Fails with [`StoreError::LeaseLost`] when the
    /// row names another holder. A store opened without a lease has none
    /// to renew.
    pub async fn renew_lease(&self) -> Result<()> {
        let Some(binding) = &self.lease else {
            return Ok(());
        };
        let _writer = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        let fence: String =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'fence' FOR SHARE")
                .fetch_one(&mut *tx)
                .await?;
        let held = fence.parse().unwrap_or_default();
        if held != self.fence {
            let _ = tx.rollback().await;
            return Err(StoreError::Fenced {
                ours: self.fence,
                held,
            });
        }
        let renewed = sqlx::query(
            "UPDATE active_lease SET fence = $3, renewed_at = clock_timestamp(), \
             expires_at = clock_timestamp() + $4 * interval '1 second' \
             WHERE node = $1 AND holder = $2",
        )
        .bind(&binding.node)
        .bind(&binding.holder)
        .bind(self.fence)
        .bind(binding.expiry.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        if renewed.rows_affected() == 0 {
            let _ = tx.rollback().await;
            return Err(StoreError::LeaseLost {
                holder: binding.holder.clone(),
                detail: "the lease row names another holder".into(),
            });
        }
        tx.commit().await?;
        Ok(())
    }

    /// Test support: holds the writer's lock for `how_long`, as a write
    /// stuck on a disk would.
    #[cfg(test)]
    pub(crate) async fn wedge_writer_for(&self, how_long: Duration) {
        let _writer = self.writer.lock().await;
        tokio::time::sleep(how_long).await;
    }

    /// The node's lease row, for the status page.
    pub(super) async fn lease_status(&self) -> Result<Option<LeaseStatus>> {
        let Some(binding) = &self.lease else {
            return Ok(None);
        };
        let row = sqlx::query(
            "SELECT holder, host, fence, EXTRACT(EPOCH FROM clock_timestamp() - renewed_at)::float8, \
             EXTRACT(EPOCH FROM expires_at - renewed_at)::float8, expires_at < clock_timestamp() \
             FROM active_lease WHERE node = $1",
        )
        .bind(&binding.node)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let holder: String = r.try_get(0)?;
            Ok(LeaseStatus {
                this_daemon: holder == binding.holder,
                holder,
                host: r.try_get(1)?,
                fence: r.try_get(2)?,
                age_seconds: r.try_get(3)?,
                expiry_seconds: r.try_get(4)?,
                expired: r.try_get(5)?,
            })
        })
        .transpose()
    }
}
