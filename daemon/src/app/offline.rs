//! What the command line does with a node's store without running it: give
//! a restored store a new epoch, open its audit log read-only.

use anyhow::Context;

use crate::config::{NodeConfig, Storage};
use crate::store::Store;
use crate::store::postgres::{ActiveLease, PgStore, connect_options};
use crate::store::sqlite::SqliteStore;

/// Gives the store of a stopped node a new epoch (after a restore from
/// backup) and returns it. On PostgreSQL it takes the node's lease for the
/// duration, so it refuses while a daemon of the node is active.
pub async fn new_epoch(config: &NodeConfig) -> anyhow::Result<String> {
    match &config.storage {
        Storage::Sqlite(path) => {
            if !path.is_file() {
                anyhow::bail!(
                    "there is no store at {}; new-epoch renews an existing store",
                    path.display()
                );
            }
            let store = SqliteStore::open(path, &config.code)
                .await
                .with_context(|| format!("cannot open store {}", path.display()))?;
            let epoch = store.renew_epoch().await;
            store.close().await;
            Ok(epoch?)
        }
        Storage::Postgres(url) => {
            let options = connect_options(url)?;
            let Some(lease) = ActiveLease::try_acquire(options.clone(), &config.code).await? else {
                anyhow::bail!(
                    "a daemon of node `{}` holds the active lease in {}; stop it (and its standby) before giving the store a new epoch",
                    config.code,
                    config.storage
                );
            };
            if !PgStore::exists(&options).await? {
                anyhow::bail!(
                    "there is no store in {}; new-epoch renews an existing store",
                    config.storage
                );
            }
            let store = PgStore::open(options, &config.code)
                .await
                .with_context(|| format!("cannot open store {}", config.storage))?;
            let epoch = store.renew_epoch().await;
            store.close().await;
            drop(lease);
            Ok(epoch?)
        }
    }
}

/// A read-only view of a node's audit log for `tiersync audit`: it works
/// while the daemon runs (SQLite in WAL mode; on PostgreSQL a plain
/// session, without the fencing bump that opening the store would make).
pub async fn open_audit_log(
    config: &NodeConfig,
) -> anyhow::Result<Box<dyn crate::store::AuditSource>> {
    match &config.storage {
        Storage::Sqlite(path) => {
            if !path.is_file() {
                anyhow::bail!("there is no store at {}", path.display());
            }
            let pool = crate::store::sqlite::open_read_only(path)
                .await
                .with_context(|| format!("cannot open store {}", path.display()))?;
            Ok(Box::new(pool))
        }
        Storage::Postgres(url) => {
            let options = connect_options(url)?;
            if !PgStore::exists(&options).await? {
                anyhow::bail!("there is no store in {}", config.storage);
            }
            let pool = crate::store::postgres::open_reader(options)
                .await
                .with_context(|| format!("cannot open store {}", config.storage))?;
            Ok(Box::new(pool))
        }
    }
}
