//! [`App`]: a whole node built from a [`NodeConfig`] and run until
//! cancelled. The binary and the end-to-end tests both use it, so tests run
//! exactly what production runs.
//!
//! [`App::start_with`] is a short sequence of build steps, each building
//! one subsystem and registering its metrics: the store and the node
//! ([`build`]), then what serves or dials ([`serve`]: the peer server, the
//! local API, the admin listener, the parent link, the trust worker), each
//! a named worker operators can read (see [`crate::worker`]). The files a
//! config names are loaded, or only checked, in [`material`]; what the
//! command line does with a node's store without running it is in
//! [`offline`].
//!
//! Shutdown: one `CancellationToken` reaches every task. Servers stop
//! accepting, sessions end, tasks get a grace period to drain, then the rest
//! is aborted; the store closes last.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::clock::{SharedClock, SystemClock};
use crate::config::NodeConfig;
use crate::node::Node;
use crate::store::postgres::ActiveLease;

mod build;
mod material;
mod offline;
mod serve;

use build::JoinMaterial;
pub use material::{Material, check_files, load_material};
pub use offline::{new_epoch, open_audit_log};
use serve::{AdapterPort, AdminServer, LocalApi, ParentLink, PeerServer, TrustWorker};

/// How long tasks get to finish after cancellation before they are aborted.
pub const GRACE: Duration = Duration::from_secs(5);

pub struct App;

/// A node that is running.
pub struct RunningNode {
    pub node: Arc<Node>,
    pub peer_addr: Option<SocketAddr>,
    pub api_addr: Option<SocketAddr>,
    /// The adapter port, if this node has one (`listen.adapter`).
    pub adapter_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub registry: Arc<Registry>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    /// Held while this daemon is the active one of a PostgreSQL-backed node.
    lease: Option<ActiveLease>,
}

impl App {
    /// Builds every part of a node from its config and starts it. Listeners
    /// bind before this returns, so a `:0` port is known to the caller.
    pub async fn start(config: NodeConfig) -> anyhow::Result<RunningNode> {
        App::start_with(config, SystemClock::shared()).await
    }

    /// [`App::start`] with the clock the node's time rules read (tests move
    /// a [`crate::clock::ManualClock`] by hand).
    pub async fn start_with(config: NodeConfig, clock: SharedClock) -> anyhow::Result<RunningNode> {
        let Material {
            tls,
            digest_key,
            root,
            identity,
        } = load_material(&config)?;
        let join = JoinMaterial::read(&config)?;
        let admin_listener = build::bind_admin(&config).await?;
        let (store, lease) = build::open_store(&config, admin_listener.as_ref()).await?;
        let mut registry = Registry::default();
        let node = build::build_node(
            &config,
            store,
            digest_key,
            root,
            identity,
            clock,
            &mut registry,
        )
        .await?;
        if let Some(lease) = &lease {
            crate::ops::metrics::register_lease(&mut registry, lease.view());
        }
        let registry = Arc::new(registry);

        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let peer = PeerServer::build(&config, &node, &tls, &join, &cancel).await?;
        let api = LocalApi::build(&config, &node, &join, &cancel).await?;
        let adapter = AdapterPort::build(&config, &node, &tls, &cancel).await?;
        let admin = AdminServer::build(admin_listener, &node, &registry, &cancel)?;
        let parent = ParentLink::build(&config, &node, &tls, &cancel)?;
        let peer_addr = peer.map(|s| s.spawn(&node, &mut tasks));
        let api_addr = api.map(|s| s.spawn(&node, &mut tasks));
        let adapter_addr = adapter.map(|s| s.spawn(&node, &mut tasks));
        let admin_addr = admin.map(|s| s.spawn(&node, &mut tasks));
        if let Some(link) = parent {
            tasks.spawn(link);
        }
        tasks.spawn(TrustWorker::build(&node, &cancel));

        info!(node = %node.code(), tier = %node.code().tier(), storage = %config.storage, "node started");
        Ok(RunningNode {
            node,
            peer_addr,
            api_addr,
            adapter_addr,
            admin_addr,
            registry,
            cancel,
            tasks,
            lease,
        })
    }
}

impl RunningNode {
    /// A token that stops this node when cancelled.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Runs until the token is cancelled, then shuts down. Fails (after
    /// shutting down) when the node loses its active lease: another daemon
    /// may be active now, so this one must stop; restarted, it comes back
    /// as the standby.
    pub async fn wait(self) -> anyhow::Result<()> {
        let lost = self.lease.as_ref().map(|l| l.lost());
        let lease_lost = async {
            match &lost {
                Some(lost) => lost.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.cancel.cancelled() => {
                self.shutdown().await;
                Ok(())
            }
            _ = lease_lost => {
                let code = self.node.code().clone();
                error!(node = %code, "lost the active lease; stopping so the standby can take over");
                self.shutdown().await;
                anyhow::bail!(
                    "node `{code}` lost its active lease (its session to PostgreSQL ended, or a standby took the lease over after it expired); another daemon may be active now, so this one stopped; restart it to stand by"
                )
            }
        }
    }

    /// Stops the node abruptly, as a crash would: its tasks are aborted at
    /// once, nothing drains, the store is not closed cleanly. Tests use it.
    pub async fn kill(mut self) {
        self.tasks.abort_all();
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
        // A crash leaves nothing holding the store (nor its lock, which a
        // restart takes): wait for what lets go of it once the node is gone.
        let store = self.node.store_release();
        drop(self);
        for _ in 0..500 {
            if store.released() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Stops accepting, drains within [`GRACE`], aborts the rest, closes the
    /// store last.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        let drained = tokio::time::timeout(GRACE, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(node = %self.node.code(), "tasks did not drain within the grace period; aborting them");
            self.tasks.shutdown().await;
        }
        self.node.close().await;
        // released last: a standby must not open the store before we closed it
        drop(self.lease.take());
        info!(node = %self.node.code(), "node stopped");
    }
}
