//! Connections for links over mutual TLS: the server-side accept stream fed
//! to tonic ([`tls_incoming`]: one bad or slow client never stalls or ends
//! it) and the client-side dialer ([`connect`]) that verifies the parent it
//! meant to reach. The TLS configurations come from [`super::tls`].

use std::error::Error as _;
use std::io;
use std::sync::Arc;

use futures::Stream;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tiersync_proto::types::DivisionCode;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::{Channel, Endpoint};

use super::tls::*;

/// TLS connections accepted on `listener`, for tonic's
/// `serve_with_incoming_shutdown`. Handshakes run concurrently as separate
/// tasks, each bounded by [`HANDSHAKE_TIMEOUT`]; a failed one is logged and
/// skipped, so the stream ends only when it is dropped. Dropping it closes
/// the listener and aborts handshakes in flight.
///
/// tonic implements `Connected` for `tokio_rustls::server::TlsStream<TcpStream>`
/// (`TlsConnectInfo<TcpConnectInfo>`), so handlers get the peer certificates
/// through `Request::peer_certs` and the address through `remote_addr`.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> impl Stream<Item = Result<tokio_rustls::server::TlsStream<TcpStream>, io::Error>>
+ Send
+ Unpin
+ 'static {
    let incoming = Incoming {
        listener,
        acceptor: TlsAcceptor::from(config),
        handshakes: JoinSet::new(),
        paused_until: None,
    };
    Box::pin(futures::stream::unfold(
        incoming,
        |mut incoming| async move {
            let next = incoming.next().await;
            Some((next, incoming))
        },
    ))
}

struct Incoming {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Option<tokio_rustls::server::TlsStream<TcpStream>>>,
    paused_until: Option<Instant>,
}

impl Incoming {
    async fn next(&mut self) -> Result<tokio_rustls::server::TlsStream<TcpStream>, io::Error> {
        loop {
            let paused_until = self.paused_until;
            tokio::select! {
                accepted = self.listener.accept(), if paused_until.is_none() => match accepted {
                    Ok((tcp, addr)) => self.start_handshake(tcp, addr),
                    // The client gave up between SYN and accept: nothing to report.
                    Err(error) if is_per_connection(&error) => {
                        tracing::debug!(%error, "tcp accept failed");
                    }
                    Err(error) => {
                        tracing::warn!(%error, "tcp accept failed; pausing accepts");
                        self.paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                        return Err(error);
                    }
                },
                () = tokio::time::sleep_until(paused_until.unwrap_or_else(Instant::now)),
                    if paused_until.is_some() =>
                {
                    self.paused_until = None;
                }
                Some(joined) = self.handshakes.join_next() => match joined {
                    Ok(Some(tls)) => return Ok(tls),
                    // Already logged by the handshake task.
                    Ok(None) => {}
                    Err(error) => tracing::warn!(%error, "tls handshake task failed"),
                },
            }
        }
    }

    fn start_handshake(&mut self, tcp: TcpStream, addr: std::net::SocketAddr) {
        // gRPC messages are small and latency-bound; do not let Nagle batch them.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(peer = %addr, %error, "cannot set TCP_NODELAY");
        }
        let acceptor = self.acceptor.clone();
        self.handshakes.spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => Some(tls),
                Ok(Err(error)) => {
                    tracing::warn!(peer = %addr, %error, "tls handshake failed");
                    None
                }
                Err(_elapsed) => {
                    let error = format!("timed out after {}s", HANDSHAKE_TIMEOUT.as_secs());
                    tracing::warn!(peer = %addr, %error, "tls handshake failed");
                    None
                }
            }
        });
    }
}

fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
            | io::ErrorKind::BrokenPipe
    )
}

/// A gRPC channel to the node `server_code` at `addr` (`host:port` or
/// `https://host:port`), over mutual TLS with `config`. The server must
/// present a certificate for `<server_code>.node.tiersync` naming
/// `server_code`. Fails within [`CONNECT_TIMEOUT`] if nothing answers or the
/// handshake fails. The channel reconnects by itself later, with the same
/// checks.
pub async fn connect(
    addr: &str,
    server_code: &DivisionCode,
    config: Arc<ClientConfig>,
) -> Result<Channel, TlsError> {
    let host_port = parse_addr(addr)?;
    // The URI only feeds HTTP/2 pseudo-headers: TLS is done by our connector,
    // and tonic refuses an `https` URI unless it does TLS itself.
    let endpoint = Endpoint::from_shared(format!("http://{host_port}"))
        .map_err(|e| TlsError::InvalidAddress {
            addr: addr.to_owned(),
            reason: e
                .source()
                .map_or_else(|| e.to_string(), ToString::to_string),
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        // The link to a parent is often idle; a dead one should still be
        // noticed before the next sync needs it.
        .keep_alive_while_idle(true)
        // Batches are up to a few MB: with HTTP/2's default 64 KB window a
        // batch would wait on many window updates.
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW);

    let dialer = Arc::new(Dialer {
        host_port,
        server_name: server_name_for(server_code)?,
        expected: server_code.clone(),
        connector: TlsConnector::from(config),
    });
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let dialer = dialer.clone();
        async move { dialer.dial().await.map(TokioIo::new) }
    });

    match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect_with_connector(connector)).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(TlsError::Connect {
            addr: addr.to_owned(),
            detail: error_chain(&e),
        }),
        Err(_elapsed) => Err(TlsError::Timeout {
            addr: addr.to_owned(),
            timeout: CONNECT_TIMEOUT,
        }),
    }
}

/// `host:port` from `host:port` or `https://host:port[/]`.
pub(super) fn parse_addr(addr: &str) -> Result<String, TlsError> {
    let invalid = |reason: &str| TlsError::InvalidAddress {
        addr: addr.to_owned(),
        reason: reason.to_owned(),
    };
    let host_port = addr.strip_prefix("https://").unwrap_or(addr);
    let host_port = host_port.strip_suffix('/').unwrap_or(host_port);
    if host_port.contains("://") {
        return Err(invalid("expected host:port or https://host:port"));
    }
    if host_port.contains('/') {
        return Err(invalid("a path is not allowed, expected host:port"));
    }
    let (host, port) = host_port
        .rsplit_once(':')
        .ok_or_else(|| invalid("missing :port"))?;
    if host.is_empty() {
        return Err(invalid("missing host"));
    }
    port.parse::<u16>()
        .map_err(|_| invalid("the port is not a number from 0 to 65535"))?;
    Ok(host_port.to_owned())
}

/// Opens TCP + TLS connections to one node, for the channel's connector.
struct Dialer {
    host_port: String,
    server_name: ServerName<'static>,
    expected: DivisionCode,
    connector: TlsConnector,
}

impl Dialer {
    async fn dial(&self) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TlsError> {
        let addr = &self.host_port;
        let attempt = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|source| TlsError::Tcp {
                    addr: addr.clone(),
                    source,
                })?;
            let _ = tcp.set_nodelay(true);
            let tls = self
                .connector
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|source| TlsError::Handshake {
                    addr: addr.clone(),
                    server_name: self.server_name.to_str().into_owned(),
                    source,
                })?;
            // The DNS SAN was verified by the handshake; the URI SAN is what
            // the other side is known by everywhere else, so insist they agree.
            let got = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .map(code_from_cert);
            match got {
                Some(Ok(code)) if code == self.expected => Ok(tls),
                Some(Ok(code)) => Err(TlsError::WrongServer {
                    addr: addr.clone(),
                    expected: self.expected.clone(),
                    got: code.to_string(),
                }),
                Some(Err(e)) => Err(TlsError::WrongServer {
                    addr: addr.clone(),
                    expected: self.expected.clone(),
                    got: format!("<none: {e}>"),
                }),
                None => Err(TlsError::WrongServer {
                    addr: addr.clone(),
                    expected: self.expected.clone(),
                    got: "<no certificate>".to_owned(),
                }),
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_elapsed| {
                Err(TlsError::Timeout {
                    addr: addr.clone(),
                    timeout: CONNECT_TIMEOUT,
                })
            })
    }
}

/// `e` and its sources, joined with ": ", skipping a source whose text the
/// previous message already contains (tonic's wrappers often repeat it).
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut last = out.clone();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !last.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
        source = s.source();
    }
    out
}
