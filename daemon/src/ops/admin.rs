//! The admin HTTP listener. Every endpoint reads the same node state:
//!
//! | path       | what |
//! |------------|------|
//! | `/metrics` | Prometheus text format (OpenMetrics) |
//! | `/healthz` | 200 while the process serves requests (liveness) |
//! | `/readyz`  | 200 once the store answers; 503 otherwise (readiness) |
//! | `/`        | the status page: this node, its links, lag, errors, workers |
//! | `/status.json` | the same as JSON, for scripts |
//!
//! A standby daemon (see `store::postgres::ActiveLease`) serves the same
//! listener before it becomes active ([`serve_standby`]): `/healthz` 200,
//! `/readyz` 503 saying `standby: ...`, `/metrics` with `tiersync_standby 1`
//! and the active daemon's lease age.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::node::Node;

type Body = http_body_util::Full<Bytes>;

pub struct Admin {
    pub node: Arc<Node>,
    pub registry: Arc<Registry>,
}

impl Admin {
    pub async fn serve(self: Arc<Self>, listener: TcpListener, cancel: CancellationToken) {
        loop {
            let (stream, peer) = tokio::select! {
                _ = cancel.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(error) => {
                        warn!(%error, "admin accept failed");
                        continue;
                    }
                },
            };
            let admin = self.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(req).await) }
                });
                let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    r = conn.serve_connection(TokioIo::new(stream), service) => {
                        if let Err(error) = r {
                            debug!(%peer, %error, "admin connection ended");
                        }
                    }
                }
            });
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        match req.uri().path() {
            "/metrics" => {
                let mut text = String::new();
                match prometheus_client::encoding::text::encode(&mut text, &self.registry) {
                    Ok(()) => respond(
                        StatusCode::OK,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        text,
                    ),
                    Err(e) => respond(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        e.to_string(),
                    ),
                }
            }
            "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
            "/readyz" => match self.node.head_seq().await {
                Ok(_) => respond(StatusCode::OK, "text/plain", "ready\n".into()),
                Err(e) => respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("store: {e}\n"),
                ),
            },
            "/status.json" => match crate::ops::status::report(&self.node).await {
                Ok(r) => respond(StatusCode::OK, "application/json", r.to_json()),
                Err(e) => respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", e.to_string()),
            },
            "/" => match crate::ops::status::report(&self.node).await {
                Ok(r) => respond(StatusCode::OK, "text/html; charset=utf-8", r.to_html()),
                Err(e) => respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", e.to_string()),
            },
            _ => respond(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: try /, /metrics, /healthz, /readyz, /status.json\n".into(),
            ),
        }
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// Binds the admin listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the admin listener of a standby daemon until the caller drops
/// this future (it became active). `why` is the `/readyz` answer; `lease`
/// follows the active daemon's lease for `/metrics`.
pub async fn serve_standby(
    listener: &TcpListener,
    why: String,
    lease: crate::store::postgres::LeaseView,
) -> Infallible {
    let mut registry = Registry::default();
    crate::ops::metrics::register_standby(&mut registry, true);
    crate::ops::metrics::register_lease(&mut registry, lease);
    let registry = Arc::new(registry);
    let why = Arc::new(why);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(error) => {
                warn!(%error, "admin accept failed");
                continue;
            }
        };
        let registry = registry.clone();
        let why = why.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let registry = registry.clone();
                let why = why.clone();
                async move {
                    Ok::<_, Infallible>(match req.uri().path() {
                        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
                        "/metrics" => {
                            let mut text = String::new();
                            let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
                            respond(
                                StatusCode::OK,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                text,
                            )
                        }
                        _ => respond(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "text/plain",
                            format!("standby: {why}\n"),
                        ),
                    })
                }
            });
            let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(error) = conn.serve_connection(TokioIo::new(stream), service).await {
                debug!(%peer, %error, "admin connection ended");
            }
        });
    }
}
