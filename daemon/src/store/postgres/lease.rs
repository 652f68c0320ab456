//! The active lease of a PostgreSQL-backed node: which of its daemons (the
//! active one and its standbys) may write the store.

use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tiersync_proto::types::DivisionCode;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::*;

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
