//! [`App`]: a whole node built from a [`NodeConfig`] and run until
//! cancelled. The binary and the end-to-end tests both use it, so tests run
//! exactly what production runs.
//!
//! Shutdown: one `CancellationToken` reaches every task. Servers stop
//! accepting, sessions end, tasks get a grace period to drain, then the rest
//! is aborted; the store closes last.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use prost::Message;
use tiersync_proto::types::DigestKey;
use tiersync_proto::wire::join_server::JoinServer;
use tiersync_proto::wire::local_api_server::LocalApiServer;
use tiersync_proto::wire::sync_server::SyncServer;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::api::LocalApiService;
use crate::clock::{SharedClock, SystemClock};
use crate::config::{NodeConfig, Storage};
use crate::identity::join::CertificateIssuer;
use crate::identity::join::JoinService;
use crate::identity::origin::{Identity, TrustRoot};
use crate::identity::tls::TlsMaterial;
use crate::node::Node;
use crate::node::amend::AmendmentAnswer;
use crate::node::routed::Routed;
use crate::ops::admin::Admin;
use crate::ops::metrics::Metrics;
use crate::store::Store;
use crate::store::postgres::{ActiveLease, PgStore, connect_options};
use crate::store::sqlite::SqliteStore;
use crate::sync::server::SyncService;

/// How long tasks get to finish after cancellation before they are aborted.
pub const GRACE: Duration = Duration::from_secs(5);

pub struct App;

/// A node that is running.
pub struct RunningNode {
    pub node: Arc<Node>,
    pub peer_addr: Option<SocketAddr>,
    pub api_addr: Option<SocketAddr>,
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
        // What the join service hands a new child (load_material checked both).
        let ca_pem = std::fs::read_to_string(&config.tls.ca)
            .with_context(|| format!("cannot read tls.ca {}", config.tls.ca.display()))?;
        let deployment_key_hex = std::fs::read_to_string(&config.digest_key_file)
            .with_context(|| {
                format!(
                    "cannot read deployment.digest_key_file {}",
                    config.digest_key_file.display()
                )
            })?
            .trim()
            .to_owned();
        // The admin listener is up first: a standby serves /healthz and
        // /readyz (503, standby) on it while it waits.
        let admin_listener = match config.listen_admin {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot bind listen.admin {addr}"))?,
            ),
            None => None,
        };
        let (store, lease): (Arc<dyn Store>, Option<ActiveLease>) = match &config.storage {
            Storage::Sqlite(path) => {
                if let Some(dir) = path.parent()
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(dir).with_context(|| {
                        format!("cannot create storage directory {}", dir.display())
                    })?;
                }
                let store = SqliteStore::open(path, &config.code)
                    .await
                    .with_context(|| format!("cannot open store {}", path.display()))?;
                (Arc::new(store), None)
            }
            Storage::Postgres(url) => {
                let options = connect_options(url)?;
                let lease = wait_for_lease(&config, options.clone(), admin_listener.as_ref())
                    .await
                    .with_context(|| {
                        format!("cannot take the active lease in {}", config.storage)
                    })?;
                let store = PgStore::open_leased(options, &config.code, &lease)
                    .await
                    .with_context(|| format!("cannot open store {}", config.storage))?;
                let store = Arc::new(store);
                lease.keep(store.clone());
                (store, Some(lease))
            }
        };

        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry));
        crate::ops::metrics::register_standby(&mut registry, false);
        if let Some(lease) = &lease {
            crate::ops::metrics::register_lease(&mut registry, lease.view());
        }
        metrics
            .quarantined
            .set(store.quarantine_count().await? as i64);
        let node = Node::new(
            config.code.clone(),
            config.name.clone(),
            store,
            digest_key,
            metrics,
            config.sync.clone(),
            root,
            identity,
            clock,
        )
        .await?;
        node.publish_own_key().await?;
        // What applied records of certain kinds call for: the owner answers
        // amendments; the node holding the deployment CA (the city) answers
        // certificate requests.
        let mut handlers = vec![Routed::handler(AmendmentAnswer)];
        if let Some(ca_key) = &config.tls.ca_key {
            let read = |path: &std::path::Path| {
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))
            };
            let ca = crate::identity::pki::Ca::load(&read(&config.tls.ca)?, &read(ca_key)?)
                .with_context(|| format!("tls.ca_key {}", ca_key.display()))?;
            handlers.push(Routed::handler(CertificateIssuer::new(ca)));
        }
        // The trust list held first: after a rollover, the city's key is a
        // later root's, found in the list's chain.
        node.load_trust_list().await?;
        if let Some(root_key) = &config.trust.root_key {
            let read = |path: &std::path::Path| {
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))
            };
            let issuer = crate::identity::origin::RootIssuer::resume(
                &read(&config.trust.root)?,
                &read(root_key)?,
                &node.keyring().chain(),
                &config.trust.root.display().to_string(),
            )
            .with_context(|| format!("trust.root_key {}", root_key.display()))?;
            node.set_root_issuer(issuer);
        }
        node.start_handlers(handlers).await?;
        if node.root_issuer().is_some() && node.keyring().trust_list().is_none() {
            node.publish_trust_list(None).await?;
        }
        let registry = Arc::new(registry);

        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tiersync_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("gRPC reflection")?;
        health_reporter
            .set_serving::<SyncServer<SyncService>>()
            .await;
        health_reporter
            .set_serving::<LocalApiServer<LocalApiService>>()
            .await;

        let max = config.sync.max_frame_bytes;
        let mut peer_addr = None;
        if let Some(addr) = config.listen_peer {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot bind listen.peer {addr}"))?;
            peer_addr = Some(listener.local_addr()?);
            let incoming = crate::identity::transport::tls_incoming(listener, tls.server_config()?);
            let sync = SyncServer::new(SyncService::new(node.clone(), cancel.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max);
            let router = tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(20)))
                .http2_keepalive_timeout(Some(Duration::from_secs(20)))
                .initial_stream_window_size(Some(crate::identity::tls::STREAM_WINDOW))
                .initial_connection_window_size(Some(crate::identity::tls::CONNECTION_WINDOW))
                .add_service(health_service.clone())
                .add_service(reflection.clone())
                .add_service(JoinServer::new(JoinService::new(
                    node.clone(),
                    ca_pem.clone(),
                    deployment_key_hex.clone(),
                )))
                .add_service(sync);
            let stop = cancel.clone();
            tasks.spawn(async move {
                if let Err(error) = router
                    .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                    .await
                {
                    warn!(%error, "peer server failed");
                }
            });
            info!(addr = %peer_addr.expect("bound"), "peer listener up (mutual TLS)");
        }

        let mut api_addr = None;
        if let Some(addr) = config.listen_api {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot bind listen.api {addr}"))?;
            api_addr = Some(listener.local_addr()?);
            let api = LocalApiServer::new(LocalApiService::new(
                node.clone(),
                cancel.clone(),
                ca_pem.clone(),
            ))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
            let router = tonic::transport::Server::builder()
                .add_service(health_service.clone())
                .add_service(reflection.clone())
                .add_service(api);
            let stop = cancel.clone();
            tasks.spawn(async move {
                if let Err(error) = router
                    .serve_with_incoming_shutdown(
                        TcpListenerStream::new(listener),
                        stop.cancelled_owned(),
                    )
                    .await
                {
                    warn!(%error, "local API server failed");
                }
            });
            info!(addr = %api_addr.expect("bound"), "local API up");
        }

        let mut admin_addr = None;
        if let Some(listener) = admin_listener {
            admin_addr = Some(listener.local_addr()?);
            let admin = Arc::new(Admin {
                node: node.clone(),
                registry: registry.clone(),
            });
            tasks.spawn(admin.serve(listener, cancel.clone()));
            info!(addr = %admin_addr.expect("bound"), "admin listener up");
        }

        if let Some(parent) = config.parent.clone() {
            let client = tls.client_config()?;
            tasks.spawn(crate::sync::client::parent_link(
                node.clone(),
                parent,
                client,
                cancel.clone(),
            ));
        }

        tasks.spawn(trust_worker(node.clone(), cancel.clone()));

        info!(node = %node.code(), tier = %node.code().tier(), storage = %config.storage, "node started");
        Ok(RunningNode {
            node,
            peer_addr,
            api_addr,
            admin_addr,
            registry,
            cancel,
            tasks,
            lease,
        })
    }
}

/// Keeps the trust list gauges current (staleness moves with the clock)
/// and, at the city, publishes a fresh list once half of the current one's
/// validity has passed, so nodes never see it go stale while the city runs.
async fn trust_worker(node: Arc<Node>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if node.root_issuer().is_some()
            && let Some(list) = node.keyring().trust_list()
        {
            let half = (list.next_update_ms - list.issued_at_ms) / 2;
            if node.clock().now_ms() >= list.issued_at_ms + half
                && let Err(error) = node.publish_trust_list(None).await
            {
                tracing::error!(%error, "cannot publish a fresh trust list");
            }
        }
        node.refresh_trust_metrics();
    }
}

/// Waits until this daemon holds its node's active lease, serving the
/// standby admin endpoints meanwhile. Binds nothing else: a standby takes no
/// children and dials no parent.
async fn wait_for_lease(
    config: &NodeConfig,
    options: sqlx::postgres::PgConnectOptions,
    admin: Option<&TcpListener>,
) -> anyhow::Result<ActiveLease> {
    let why = format!(
        "another daemon holds the active lease of node `{}` in {}; this one takes over when it stops",
        config.code, config.storage
    );
    let never = CancellationToken::new();
    let view = crate::store::postgres::LeaseView::default();
    let acquire = ActiveLease::acquire(options, &config.code, config.lease, &view, &never, || {
        info!(node = %config.code, storage = %config.storage, "standing by: another daemon of this node is active");
    });
    let lease = match admin {
        Some(listener) => tokio::select! {
            lease = acquire => lease?,
            never = crate::ops::admin::serve_standby(listener, why, view.clone()) => match never {},
        },
        None => acquire.await?,
    };
    lease.context("lease wait cancelled")
}

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

/// Loads and checks the files a node's config points at: its TLS material
/// (the certificate must be for this node's code and chain to the CA) and
/// the deployment secret. `check-config` runs this too, so `ExecStartPre`
/// catches what `serve` would fail on.
pub fn load_material(config: &NodeConfig) -> anyhow::Result<Material> {
    crate::identity::tls::install_crypto_provider();
    let tls = TlsMaterial::load(&config.tls.ca, &config.tls.cert, &config.tls.key)?;
    if tls.own_code() != &config.code {
        anyhow::bail!(
            "the certificate {} is for node `{}`, but node.code is `{}`; issue one for `{}` with `tiersync pki issue --code {}`",
            config.tls.cert.display(),
            tls.own_code(),
            config.code,
            config.code,
            config.code
        );
    }
    let key_hex = std::fs::read_to_string(&config.digest_key_file).with_context(|| {
        format!(
            "cannot read deployment.digest_key_file {}",
            config.digest_key_file.display()
        )
    })?;
    let digest_key = DigestKey::from_hex(key_hex.trim()).with_context(|| {
        format!(
            "deployment.digest_key_file {}",
            config.digest_key_file.display()
        )
    })?;
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {key} {}", path.display()))
    };
    let root_what = config.trust.root.display().to_string();
    let root = TrustRoot::from_pem(&read("trust.root", &config.trust.root)?, &root_what)
        .with_context(|| format!("trust.root {root_what}"))?;
    let later = match &config.trust.chain {
        None => Vec::new(),
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read trust.chain {}", path.display()))?;
            let chain = tiersync_proto::wire::RootChain::decode(bytes.as_slice())
                .with_context(|| format!("trust.chain {} is not a root chain", path.display()))?;
            crate::identity::keyring::follow_chain(&root, &chain.links)
                .map_err(|reason| anyhow::anyhow!("trust.chain {}: {reason}", path.display()))?
        }
    };
    let identity = Identity::load(
        &root,
        &later,
        &config.code,
        &read("trust.key", &config.trust.key)?,
        &read("trust.cert", &config.trust.cert)?,
        &format!(
            "trust.key {} / trust.cert {}",
            config.trust.key.display(),
            config.trust.cert.display()
        ),
    )?;
    Ok(Material {
        tls,
        digest_key,
        root,
        identity,
    })
}

/// What a node's config points at, loaded and checked.
pub struct Material {
    pub tls: TlsMaterial,
    pub digest_key: DigestKey,
    pub root: TrustRoot,
    pub identity: Identity,
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
