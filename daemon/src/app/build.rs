//! The build steps of [`super::App::start_with`] that come before anything
//! is served: the admin listener, the store (behind the active lease on
//! PostgreSQL), and the node itself with its metrics.

use std::sync::Arc;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tiersync_proto::types::DigestKey;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::clock::SharedClock;
use crate::config::{NodeConfig, Storage};
use crate::identity::join::CertificateIssuer;
use crate::identity::origin::{Identity, RootIssuer, TrustRoot};
use crate::node::Node;
use crate::node::amend::AmendmentAnswer;
use crate::node::routed::Routed;
use crate::ops::metrics::Metrics;
use crate::store::Store;
use crate::store::postgres::{ActiveLease, PgStore, connect_options};
use crate::store::sqlite::SqliteStore;

/// What the join service hands a new child: the deployment CA and the
/// deployment's digest key (`load_material` checked both files).
#[derive(Clone)]
pub struct JoinMaterial {
    pub ca_pem: String,
    pub deployment_key_hex: String,
}

impl JoinMaterial {
    pub fn read(config: &NodeConfig) -> anyhow::Result<JoinMaterial> {
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
        Ok(JoinMaterial {
            ca_pem,
            deployment_key_hex,
        })
    }
}

/// Binds the admin listener, if configured. It is up first: a standby
/// serves /healthz and /readyz (503, standby) on it while it waits.
pub async fn bind_admin(config: &NodeConfig) -> anyhow::Result<Option<TcpListener>> {
    match config.listen_admin {
        Some(addr) => {
            Ok(Some(TcpListener::bind(addr).await.with_context(|| {
                format!("cannot bind listen.admin {addr}")
            })?))
        }
        None => Ok(None),
    }
}

/// Opens the node's store. On PostgreSQL it first waits for the node's
/// active lease (serving the standby endpoints on `admin` meanwhile) and
/// returns it: held while this daemon is the active one.
pub async fn open_store(
    config: &NodeConfig,
    admin: Option<&TcpListener>,
) -> anyhow::Result<(Arc<dyn Store>, Option<ActiveLease>)> {
    match &config.storage {
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
            Ok((Arc::new(store), None))
        }
        Storage::Postgres(url) => {
            let options = connect_options(url)?;
            let lease = wait_for_lease(config, options.clone(), admin)
                .await
                .with_context(|| format!("cannot take the active lease in {}", config.storage))?;
            let store = PgStore::open_leased(options, &config.code, &lease)
                .await
                .with_context(|| format!("cannot open store {}", config.storage))?;
            let store = Arc::new(store);
            lease.keep(store.clone());
            Ok((store, Some(lease)))
        }
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

/// The node: its metrics (registered on `registry`, the workers' families
/// with them), its own key published, the handlers of the kinds it
/// answers, the trust list it holds and, at the city, the root issuer.
#[allow(clippy::too_many_arguments)]
pub async fn build_node(
    config: &NodeConfig,
    store: Arc<dyn Store>,
    digest_key: DigestKey,
    root: TrustRoot,
    identity: Identity,
    clock: SharedClock,
    registry: &mut Registry,
) -> anyhow::Result<Arc<Node>> {
    let metrics = Arc::new(Metrics::register(registry));
    crate::ops::metrics::register_standby(registry, false);
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
    crate::ops::metrics::register_workers(registry, node.workers().clone());
    crate::ops::metrics::register_link_states(registry, node.links().clone());
    node.publish_own_key().await?;
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    };
    // What applied records of certain kinds call for: the owner answers
    // amendments; the node holding the deployment CA (the city) answers
    // certificate requests.
    let mut handlers = vec![Routed::handler(AmendmentAnswer)];
    if let Some(ca_key) = &config.tls.ca_key {
        let ca = crate::identity::pki::Ca::load(&read(&config.tls.ca)?, &read(ca_key)?)
            .with_context(|| format!("tls.ca_key {}", ca_key.display()))?;
        handlers.push(Routed::handler(CertificateIssuer::new(ca)));
    }
    // The trust list held first: after a rollover, the city's key is a
    // later root's, found in the list's chain.
    node.load_trust_list().await?;
    if let Some(root_key) = &config.trust.root_key {
        let issuer = RootIssuer::resume(
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
    Ok(node)
}
