//! The build steps of [`super::App::start_with`] that serve or dial: the
//! peer server, the local API, the admin listener, the parent link and the
//! trust worker. Each binds what it needs when built (so a `:0` port is
//! known before the node is handed back) and runs as a named worker (see
//! [`crate::worker`]) once spawned.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::FutureExt;
use futures::future::BoxFuture;
use prometheus_client::registry::Registry;
use tiersync_proto::pb::tiersync::adapter::v1::adapter_service_server::AdapterServiceServer;
use tiersync_proto::wire::join_server::JoinServer;
use tiersync_proto::wire::local_api_server::LocalApiServer;
use tiersync_proto::wire::sync_server::SyncServer;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::build::JoinMaterial;
use crate::api::LocalApiService;
use crate::config::NodeConfig;
use crate::departments::service::AdapterService;
use crate::identity::join::JoinService;
use crate::identity::tls::TlsMaterial;
use crate::node::Node;
use crate::ops::admin::Admin;
use crate::sync::server::SyncService;
use crate::worker::WorkerHandle;

/// The gRPC services every port carries besides its own: health and
/// reflection, each about that port alone. Reflection (v1, and v1alpha for
/// older grpcurl) lists only the services the port serves, and health
/// reports each of them by name.
pub struct Grpc;

impl Grpc {
    /// The peer port's services.
    pub const PEER: &[&str] = &["tiersync.v1.Sync", "tiersync.v1.Join"];
    /// The local API port's services.
    pub const LOCAL: &[&str] = &["tiersync.v1.LocalApi"];
    /// The adapter port's services.
    pub const ADAPTER: &[&str] = &["tiersync.adapter.v1.AdapterService"];

    /// Health and reflection for a port serving `services`.
    pub async fn for_port(services: &[&str]) -> anyhow::Result<tonic::service::Routes> {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let health_name = "grpc.health.v1.Health";
        let configure = || {
            let mut builder = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tiersync_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .with_service_name(health_name)
                .with_service_name("grpc.reflection.v1.ServerReflection")
                .with_service_name("grpc.reflection.v1alpha.ServerReflection");
            for name in services {
                builder = builder.with_service_name(*name);
            }
            builder
        };
        let v1 = configure().build_v1().context("gRPC reflection v1")?;
        let v1alpha = configure()
            .build_v1alpha()
            .context("gRPC reflection v1alpha")?;
        for name in services {
            health_reporter
                .set_service_status(*name, tonic_health::ServingStatus::Serving)
                .await;
        }
        Ok(tonic::service::Routes::new(health_service)
            .add_service(v1)
            .add_service(v1alpha))
    }
}

/// A listener bound and its server built, not yet running.
pub struct Server {
    /// The worker's name: `peer-server`, `api-server`, `admin`.
    name: &'static str,
    /// What its log line calls it.
    what: &'static str,
    pub addr: SocketAddr,
    serve: BoxFuture<'static, Result<(), String>>,
}

impl Server {
    /// Runs it as worker `name`: `up` while it serves, `stopped` when it
    /// stops, `failed` with the error if serving fails.
    pub fn spawn(self, node: &Node, tasks: &mut JoinSet<()>) -> SocketAddr {
        let worker = node.workers().register(self.name);
        worker.up();
        worker.set_info(format!("listening on {}", self.addr));
        let what = self.what;
        tasks.spawn(self.serve.map(move |served| match served {
            Ok(()) => worker.stopped(),
            Err(error) => {
                warn!(%error, "{what} failed");
                worker.failed(error);
            }
        }));
        info!(addr = %self.addr, "{} up", self.what);
        self.addr
    }
}

/// The peer listener (mutual TLS): links from children, and joins.
pub struct PeerServer;

impl PeerServer {
    pub async fn build(
        config: &NodeConfig,
        node: &Arc<Node>,
        tls: &TlsMaterial,
        join: &JoinMaterial,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Option<Server>> {
        let Some(addr) = config.listen_peer else {
            return Ok(None);
        };
        let max = config.sync.max_frame_bytes;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind listen.peer {addr}"))?;
        let addr = listener.local_addr()?;
        let incoming = crate::identity::transport::tls_incoming(listener, tls.server_config()?);
        let sync = SyncServer::new(SyncService::new(node.clone(), cancel.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .initial_stream_window_size(Some(crate::identity::tls::STREAM_WINDOW))
            .initial_connection_window_size(Some(crate::identity::tls::CONNECTION_WINDOW))
            .add_routes(Grpc::for_port(Grpc::PEER).await?)
            .add_service(JoinServer::new(JoinService::new(
                node.clone(),
                join.ca_pem.clone(),
                join.deployment_key_hex.clone(),
            )))
            .add_service(sync);
        let stop = cancel.clone();
        Ok(Some(Server {
            name: "peer-server",
            what: "peer listener (mutual TLS)",
            addr,
            serve: async move {
                router
                    .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                    .await
                    .map_err(|e| e.to_string())
            }
            .boxed(),
        }))
    }
}

/// The local gRPC API (plain, for adapters and the CLI on this host).
pub struct LocalApi;

impl LocalApi {
    pub async fn build(
        config: &NodeConfig,
        node: &Arc<Node>,
        join: &JoinMaterial,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Option<Server>> {
        let Some(addr) = config.listen_api else {
            return Ok(None);
        };
        let max = config.sync.max_frame_bytes;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind listen.api {addr}"))?;
        let addr = listener.local_addr()?;
        let api = LocalApiServer::new(LocalApiService::new(
            node.clone(),
            cancel.clone(),
            join.ca_pem.clone(),
        ))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
        let router = tonic::transport::Server::builder()
            .add_routes(Grpc::for_port(Grpc::LOCAL).await?)
            .add_service(api);
        let stop = cancel.clone();
        Ok(Some(Server {
            name: "api-server",
            what: "local API",
            addr,
            serve: async move {
                router
                    .serve_with_incoming_shutdown(
                        TcpListenerStream::new(listener),
                        stop.cancelled_owned(),
                    )
                    .await
                    .map_err(|e| e.to_string())
            }
            .boxed(),
        }))
    }
}

/// The adapter port (mutual TLS): department systems, each calling as the
/// department its certificate names.
pub struct AdapterPort;

impl AdapterPort {
    pub async fn build(
        config: &NodeConfig,
        node: &Arc<Node>,
        tls: &TlsMaterial,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Option<Server>> {
        let Some(addr) = config.listen_adapter else {
            return Ok(None);
        };
        let max = config.sync.max_frame_bytes;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind listen.adapter {addr}"))?;
        let addr = listener.local_addr()?;
        let incoming = crate::identity::transport::tls_incoming(listener, tls.server_config()?);
        let service = AdapterServiceServer::new(AdapterService::new(node.clone(), cancel.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .add_routes(Grpc::for_port(Grpc::ADAPTER).await?)
            .add_service(service);
        let stop = cancel.clone();
        Ok(Some(Server {
            name: "adapter-server",
            what: "adapter port (mutual TLS, departments)",
            addr,
            serve: async move {
                router
                    .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                    .await
                    .map_err(|e| e.to_string())
            }
            .boxed(),
        }))
    }
}

/// The admin listener (bound first, see `build::bind_admin`): metrics,
/// health, the status page.
pub struct AdminServer;

impl AdminServer {
    pub fn build(
        listener: Option<TcpListener>,
        node: &Arc<Node>,
        registry: &Arc<Registry>,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Option<Server>> {
        let Some(listener) = listener else {
            return Ok(None);
        };
        let addr = listener.local_addr()?;
        let admin = Arc::new(Admin {
            node: node.clone(),
            registry: registry.clone(),
        });
        Ok(Some(Server {
            name: "admin",
            what: "admin listener",
            addr,
            serve: admin.serve(listener, cancel.clone()).map(Ok).boxed(),
        }))
    }
}

/// The link to this node's parent, if it has one (worker `parent-link`).
pub struct ParentLink;

impl ParentLink {
    pub fn build(
        config: &NodeConfig,
        node: &Arc<Node>,
        tls: &TlsMaterial,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Option<BoxFuture<'static, ()>>> {
        let Some(parent) = config.parent.clone() else {
            return Ok(None);
        };
        Ok(Some(
            crate::sync::client::parent_link(
                node.clone(),
                parent,
                tls.client_config()?,
                cancel.clone(),
            )
            .boxed(),
        ))
    }
}

/// Keeps the trust list gauges current (staleness moves with the clock)
/// and, at the city, publishes a fresh list once half of the current one's
/// validity has passed, so nodes never see it go stale while the city runs.
/// Worker `trust`: busy each tick, an error when a publication fails.
pub struct TrustWorker;

impl TrustWorker {
    pub fn build(node: &Arc<Node>, cancel: &CancellationToken) -> BoxFuture<'static, ()> {
        let worker = node.workers().register("trust");
        trust_worker(node.clone(), cancel.clone(), worker).boxed()
    }
}

async fn trust_worker(node: Arc<Node>, cancel: CancellationToken, worker: WorkerHandle) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                worker.stopped();
                return;
            }
            _ = tick.tick() => {}
        }
        worker.busy();
        if node.root_issuer().is_some()
            && let Some(list) = node.keyring().trust_list()
        {
            let half = (list.next_update_ms - list.issued_at_ms) / 2;
            if node.clock().now_ms() >= list.issued_at_ms + half
                && let Err(e) = node.publish_trust_list(None).await
            {
                error!(error = %e, "cannot publish a fresh trust list");
                worker.error(format!("cannot publish a fresh trust list: {e}"));
            }
        }
        node.refresh_trust_metrics();
        worker.idle();
    }
}
