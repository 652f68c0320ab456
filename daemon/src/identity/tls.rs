//! Mutual TLS between a node and its parent: rustls configurations built from
//! the deployment's PKI (see [`crate::identity::pki`]) and reading a peer's
//! identity; the accept stream and the dialer that use them are in
//! [`super::transport`].
//!
//! Invariants:
//! - TLS 1.3 only, both ways, with ring as the crypto provider; ALPN `h2`.
//! - A client certificate that does not chain to the deployment CA fails the
//!   handshake. A client without one is let through TLS only so that a new
//!   node can call the join RPC with its token; every other service requires
//!   a verified certificate ([`peer_code`]). The caller's identity is the
//!   division code in that certificate's URI SAN, never anything the client
//!   says.
//! - A client verifies the server under the name `<code>.node.tiersync` of
//!   the node it meant to reach, and checks the URI SAN code too, so a child
//!   never talks to a node other than the parent it dialled.
//! - A [`TlsMaterial`] always holds a certificate that matches its key,
//!   chains to its CA and names its node in both SANs; this is checked when
//!   it is loaded, so a misconfigured node fails at startup with the file
//!   named rather than at its first handshake.
//! - One bad or slow client never stalls or ends the accept stream.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};
use tiersync_proto::types::{DivisionCode, DivisionError};

/// HTTP/2 flow-control windows for links (both ends use them).
pub const STREAM_WINDOW: u32 = 8 << 20;
pub const CONNECTION_WINDOW: u32 = 16 << 20;

use crate::identity::pki::{NODE_URI_PREFIX, node_dns_name};

/// How long a TLS handshake may take on the server side before the
/// connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`connect`] may take, TCP and TLS and HTTP/2 together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 PING interval on a channel to a parent.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long a PING may go unanswered before the channel is considered dead.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// After an accept error that is not about one connection (out of file
/// descriptors, say), accepting pauses this long: retrying at once would
/// only spin.
pub(super) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

pub(crate) const ALPN_H2: &[u8] = b"h2";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {kind} file {}: {source}", path.display())]
    Read {
        kind: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{what} is not valid PEM: {detail}")]
    Pem { what: String, detail: String },
    #[error("no certificate found in {what}")]
    NoCertificate { what: String },
    #[error("no private key found in {what}")]
    NoKey { what: String },
    #[error("{what} holds an unusable private key: {detail}")]
    BadKey { what: String, detail: String },
    #[error("the private key in {key} does not match the certificate in {cert}")]
    KeyMismatch { cert: String, key: String },
    #[error("{what} holds an unusable CA certificate: {detail}")]
    BadCa { what: String, detail: String },
    #[error("the certificate in {cert} is not valid under the CA in {ca}: {detail}")]
    NotIssuedByCa {
        cert: String,
        ca: String,
        detail: String,
    },
    #[error("the certificate in {what} does not identify a node: {detail}")]
    NotANodeCert { what: String, detail: String },
    #[error("cannot parse certificate: {detail}")]
    BadCertificate { detail: String },
    #[error("certificate `{subject}` has no `{NODE_URI_PREFIX}<code>` URI SAN")]
    NoNodeCode { subject: String },
    #[error("certificate `{subject}` has the URI SAN `{uri}` but its code is invalid: {source}")]
    BadNodeCode {
        subject: String,
        uri: String,
        source: DivisionError,
    },
    #[error(
        "certificate `{subject}` names several nodes ({codes}); a node certificate names exactly one"
    )]
    SeveralNodeCodes { subject: String, codes: String },
    #[error("cannot build the TLS {side} configuration: {detail}")]
    Config { side: &'static str, detail: String },
    #[error("invalid address `{addr}`: {reason}")]
    InvalidAddress { addr: String, reason: String },
    #[error("cannot open a TCP connection to {addr}: {source}")]
    Tcp { addr: String, source: io::Error },
    #[error("TLS handshake with {addr} (expecting `{server_name}`) failed: {source}")]
    Handshake {
        addr: String,
        server_name: String,
        source: io::Error,
    },
    #[error("{addr} presented the certificate of node `{got}`, expected `{expected}`")]
    WrongServer {
        addr: String,
        expected: DivisionCode,
        got: String,
    },
    #[error("connecting to {addr} timed out after {}s", timeout.as_secs())]
    Timeout { addr: String, timeout: Duration },
    #[error("cannot connect to {addr}: {detail}")]
    Connect { addr: String, detail: String },
}

/// Installs ring as the process-wide rustls crypto provider. Idempotent:
/// if a provider is already installed (by an earlier call or by anyone
/// else) that one stays, which is harmless because every config built here
/// names ring explicitly.
pub fn install_crypto_provider() {
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// This node's TLS identity: the CA roots, its certificate chain and key,
/// and its division code as its certificate states it.
pub struct TlsMaterial {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    /// The CA certificates, sent after our own chain by the server so that a
    /// joining node can pin the CA by fingerprint (see [`join_client_config`]).
    ca_certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    own_code: DivisionCode,
}

impl fmt::Debug for TlsMaterial {
    // The key stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("own_code", &self.own_code)
            .field("roots", &self.roots.len())
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Clone for TlsMaterial {
    fn clone(&self) -> Self {
        TlsMaterial {
            roots: self.roots.clone(),
            chain: self.chain.clone(),
            ca_certs: self.ca_certs.clone(),
            key: self.key.clone_key(),
            own_code: self.own_code.clone(),
        }
    }
}

/// Where a PEM came from, for error messages.
struct Labeled<'a> {
    what: String,
    pem: &'a str,
}

impl TlsMaterial {
    /// Reads the CA bundle, this node's certificate chain and its private key.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<TlsMaterial, TlsError> {
        let read = |kind: &'static str, path: &Path| {
            std::fs::read_to_string(path).map_err(|source| TlsError::Read {
                kind,
                path: path.to_owned(),
                source,
            })
        };
        let ca_pem = read("CA certificate", ca)?;
        let cert_pem = read("node certificate", cert)?;
        let key_pem = read("node key", key)?;
        Self::parse(
            Labeled {
                what: ca.display().to_string(),
                pem: &ca_pem,
            },
            Labeled {
                what: cert.display().to_string(),
                pem: &cert_pem,
            },
            Labeled {
                what: key.display().to_string(),
                pem: &key_pem,
            },
        )
    }

    /// Like [`TlsMaterial::load`], from PEM text.
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<TlsMaterial, TlsError> {
        Self::parse(
            Labeled {
                what: "the CA PEM".to_owned(),
                pem: ca_pem,
            },
            Labeled {
                what: "the certificate PEM".to_owned(),
                pem: cert_pem,
            },
            Labeled {
                what: "the key PEM".to_owned(),
                pem: key_pem,
            },
        )
    }

    fn parse(
        ca: Labeled<'_>,
        cert: Labeled<'_>,
        key: Labeled<'_>,
    ) -> Result<TlsMaterial, TlsError> {
        let ca_certs = parse_certs(&ca)?;
        let chain = parse_certs(&cert)?;
        let key_der = match PrivateKeyDer::from_pem_slice(key.pem.as_bytes()) {
            Ok(der) => der,
            Err(rustls::pki_types::pem::Error::NoItemsFound) => {
                return Err(TlsError::NoKey { what: key.what });
            }
            Err(e) => {
                return Err(TlsError::Pem {
                    what: key.what,
                    detail: e.to_string(),
                });
            }
        };

        let mut roots = RootCertStore::empty();
        for der in ca_certs.iter().cloned() {
            roots.add(der).map_err(|e| TlsError::BadCa {
                what: ca.what.clone(),
                detail: e.to_string(),
            })?;
        }
        let roots = Arc::new(roots);
        let provider = provider();

        // rustls checks that the key's public half is the certificate's.
        match rustls::sign::CertifiedKey::from_der(chain.clone(), key_der.clone_key(), &provider) {
            Ok(_) => {}
            Err(rustls::Error::InconsistentKeys(_)) => {
                return Err(TlsError::KeyMismatch {
                    cert: cert.what,
                    key: key.what,
                });
            }
            Err(e) => {
                return Err(TlsError::BadKey {
                    what: key.what,
                    detail: e.to_string(),
                });
            }
        }

        let own_code = code_from_cert(&chain[0]).map_err(|e| TlsError::NotANodeCert {
            what: cert.what.clone(),
            detail: e.to_string(),
        })?;

        // Verify our own certificate the way our peers will: chained to the
        // CA and valid for our DNS name (which also proves the DNS SAN and
        // the URI SAN agree). Only an expired or not-yet-valid certificate is
        // let through, with a warning: refusing to start would not renew it,
        // and the operator needs the node up to see what it reports.
        let verifier = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider)
            .build()
            .map_err(|e| TlsError::BadCa {
                what: ca.what.clone(),
                detail: e.to_string(),
            })?;
        let server_name = server_name_for(&own_code)?;
        match verifier.verify_server_cert(
            &chain[0],
            &chain[1..],
            &server_name,
            &[],
            UnixTime::now(),
        ) {
            Ok(_) => {}
            Err(rustls::Error::InvalidCertificate(
                error @ (CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. }),
            )) => {
                tracing::warn!(
                    cert = %cert.what,
                    code = %own_code,
                    error = %rustls::Error::InvalidCertificate(error),
                    "this node's certificate is outside its validity period; peers will refuse it"
                );
            }
            Err(e) => {
                return Err(TlsError::NotIssuedByCa {
                    cert: cert.what,
                    ca: ca.what,
                    detail: e.to_string(),
                });
            }
        }

        Ok(TlsMaterial {
            roots,
            chain,
            ca_certs,
            key: key_der,
            own_code,
        })
    }

    /// This node's code, from its certificate's URI SAN.
    pub fn own_code(&self) -> &DivisionCode {
        &self.own_code
    }

    /// Server side: TLS 1.3 only, ALPN `h2`. A client certificate, when one
    /// is presented, must chain to the deployment CA or the handshake fails.
    /// A client may also present none: only the join RPC serves such a
    /// caller (its token is the credential); every other service asks
    /// [`peer_code`], which refuses a connection without a verified
    /// certificate. The CA certificates follow our own chain, so a joining
    /// node can pin the CA by the fingerprint in its token.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let config_error = |detail: String| TlsError::Config {
            side: "server",
            detail,
        };
        let provider = provider();
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| config_error(e.to_string()))?;
        let mut sent = self.chain.clone();
        sent.extend(self.ca_certs.iter().cloned());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| config_error(e.to_string()))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(sent, self.key.clone_key())
            .map_err(|e| config_error(e.to_string()))?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }

    /// Client side: TLS 1.3 only, the deployment CA as the only root, this
    /// node's certificate as the client certificate, ALPN `h2`.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let config_error = |detail: String| TlsError::Config {
            side: "client",
            detail,
        };
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| config_error(e.to_string()))?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| config_error(e.to_string()))?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }
}

/// SHA-256 of a certificate's DER: how a join token names the deployment CA.
pub fn cert_fingerprint(der: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(der).into()
}

/// The SHA-256 fingerprint of the first certificate in `ca_pem`.
pub fn ca_fingerprint(ca_pem: &str) -> Result<[u8; 32], TlsError> {
    let certs = parse_certs(&Labeled {
        what: "the CA PEM".to_owned(),
        pem: ca_pem,
    })?;
    Ok(cert_fingerprint(&certs[0]))
}

/// Client side for a node that is joining and has no certificate yet: TLS
/// 1.3, no client certificate, and the server verified against the one CA
/// certificate in the server's chain whose SHA-256 is `ca_fingerprint` (from
/// the join token). The ordinary name checks of [`connect`] still apply.
pub fn join_client_config(ca_fingerprint: [u8; 32]) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PinnedCa {
        fingerprint: ca_fingerprint,
        provider: provider.clone(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config {
            side: "client",
            detail: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Verifies a server against a CA pinned by fingerprint, found among the
/// certificates the server sent. Everything after finding it is the
/// standard WebPKI verification with that CA as the only root.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| cert_fingerprint(c) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the server's deployment CA is not the one named in the join token (fingerprint {})",
                    hex::encode(self.fingerprint)
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("the pinned CA is unusable: {e}")))?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?
            .verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn parse_certs(source: &Labeled<'_>) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(source.pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: source.what.clone(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what: source.what.clone(),
        });
    }
    Ok(certs)
}

pub(super) fn server_name_for(code: &DivisionCode) -> Result<ServerName<'static>, TlsError> {
    let name = node_dns_name(code);
    // A division code is digits only, so this cannot fail; keep the error
    // path rather than a panic all the same.
    ServerName::try_from(name.clone()).map_err(|e| TlsError::Config {
        side: "client",
        detail: format!("`{name}` is not a valid server name: {e}"),
    })
}

/// The division code in a node certificate's `tiersync://node/<code>` URI
/// SAN. Errors if there is none, if the code is invalid, or if the
/// certificate names more than one node.
pub fn code_from_cert(der: &CertificateDer<'_>) -> Result<DivisionCode, TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::BadCertificate {
            detail: e.to_string(),
        })?;
    let subject = cert.subject().to_string();
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::BadCertificate {
            detail: format!("certificate `{subject}` has an invalid SAN extension: {e}"),
        })?;
    let uris: Vec<&str> = sans
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with(NODE_URI_PREFIX) => {
                Some(*uri)
            }
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(TlsError::NoNodeCode { subject }),
        [uri] => DivisionCode::parse(&uri[NODE_URI_PREFIX.len()..]).map_err(|source| {
            TlsError::BadNodeCode {
                subject,
                uri: (*uri).to_owned(),
                source,
            }
        }),
        several => Err(TlsError::SeveralNodeCodes {
            subject,
            codes: several.join(", "),
        }),
    }
}

/// Why a caller has no node identity (answered `unauthenticated`).
#[derive(Debug, thiserror::Error)]
pub enum NoPeerIdentity {
    #[error(
        "no verified client certificate on this connection: tiersync peers must connect over mutual TLS"
    )]
    NoCertificate,
    #[error("the client presented an empty certificate chain")]
    EmptyChain,
    #[error("the client certificate does not identify a tiersync node: {0}")]
    NotANode(TlsError),
}

/// The division code of the client that sent `request`, from its verified
/// certificate.
pub fn peer_code<T>(request: &tonic::Request<T>) -> Result<DivisionCode, NoPeerIdentity> {
    let certs = request.peer_certs().ok_or(NoPeerIdentity::NoCertificate)?;
    let leaf = certs.first().ok_or(NoPeerIdentity::EmptyChain)?;
    code_from_cert(leaf).map_err(NoPeerIdentity::NotANode)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::SystemTime;

    use tokio::sync::oneshot;
    use tokio_stream::StreamExt as _;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

    use std::error::Error as _;

    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::TlsConnector;

    use super::*;
    use crate::identity::pki::{Ca, CertifiedKey};
    use crate::identity::transport::*;

    const CITY: &str = "5111";
    const SERVER: &str = "511102";
    const CLIENT: &str = "511102004";

    fn code(s: &str) -> DivisionCode {
        DivisionCode::parse(s).unwrap()
    }

    fn material(ca: &Ca, issued: &CertifiedKey) -> TlsMaterial {
        TlsMaterial::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap()
    }

    fn node(ca: &Ca, c: &str) -> TlsMaterial {
        material(ca, &ca.issue_node(&code(c), 1).unwrap())
    }

    /// A health server on 127.0.0.1:0 over [`tls_incoming`], recording the
    /// [`peer_code`] of every call it sees.
    struct TestServer {
        addr: std::net::SocketAddr,
        seen: Arc<Mutex<Vec<Result<DivisionCode, String>>>>,
        shutdown: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    }

    impl TestServer {
        async fn start(material: &TlsMaterial) -> TestServer {
            install_crypto_provider();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (_reporter, health) = tonic_health::server::health_reporter();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let record = seen.clone();
            let interceptor = move |request: tonic::Request<()>| {
                record
                    .lock()
                    .unwrap()
                    .push(peer_code(&request).map_err(|e| e.to_string()));
                Ok(request)
            };
            let (tx, rx) = oneshot::channel::<()>();
            let incoming = tls_incoming(listener, material.server_config().unwrap());
            let task = tokio::spawn(
                tonic::transport::Server::builder()
                    .layer(tonic::service::InterceptorLayer::new(interceptor))
                    .add_service(health)
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = rx.await;
                    }),
            );
            TestServer {
                addr,
                seen,
                shutdown: Some(tx),
                task,
            }
        }

        async fn stop(mut self) {
            let _ = self.shutdown.take().unwrap().send(());
            self.task.await.unwrap().unwrap();
        }
    }

    /// Connects and makes one health check; any failure as text.
    async fn health_check(
        addr: &str,
        server: &DivisionCode,
        config: Arc<ClientConfig>,
    ) -> Result<HealthCheckResponse, String> {
        let channel = connect(addr, server, config)
            .await
            .map_err(|e| e.to_string())?;
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| match status.source() {
                Some(source) => error_chain(source),
                None => status.message().to_owned(),
            })
    }

    #[tokio::test]
    async fn mutual_tls_call_succeeds_and_the_server_sees_the_client_code() {
        let ca = Ca::generate(&code(CITY), 1).unwrap();
        let server = TestServer::start(&node(&ca, SERVER)).await;
        let client = node(&ca, CLIENT);
        assert_eq!(client.own_code(), &code(CLIENT));

        for addr in [server.addr.to_string(), format!("https://{}", server.addr)] {
            let response = health_check(&addr, &code(SERVER), client.client_config().unwrap())
                .await
                .unwrap();
            assert_eq!(response.status(), ServingStatus::Serving);
        }
        assert_eq!(
            *server.seen.lock().unwrap(),
            [Ok(code(CLIENT)), Ok(code(CLIENT))]
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn client_from_another_ca_is_refused() {
        let ca = Ca::generate(&code(CITY), 1).unwrap();
        let server = TestServer::start(&node(&ca, SERVER)).await;
        let addr = server.addr.to_string();
        // Another deployment of the same city has a CA with the very same
        // name, so its certificates fail on the signature; one of another
        // city has an issuer the server does not know at all.
        for (other_city, alert) in [(CITY, "DecryptError"), ("5101", "UnknownCA")] {
            let other_ca = Ca::generate(&code(other_city), 1).unwrap();
            let stranger_code = format!("{other_city}02004");
            let stranger = node(&other_ca, &stranger_code);
            // It trusts our server's CA, so only the server's check can refuse it.
            let config = TlsMaterial {
                roots: node(&ca, CLIENT).roots,
                ..stranger
            }
            .client_config()
            .unwrap();

            let err = health_check(&addr, &code(SERVER), config)
                .await
                .unwrap_err();
            // TLS 1.3: the client finishes its handshake before the server
            // has judged its certificate, so the refusal surfaces as the
            // server's alert on the first call.
            assert_eq!(
                err,
                format!("transport error: connection error: received fatal alert: {alert}")
            );
        }
        assert!(server.seen.lock().unwrap().is_empty());
        server.stop().await;
    }

    #[tokio::test]
    async fn client_with_an_expired_certificate_is_refused() {
        let ca = Ca::generate(&code(CITY), 1).unwrap();
        let server = TestServer::start(&node(&ca, SERVER)).await;
        let day = Duration::from_secs(24 * 60 * 60);
        let now = SystemTime::now();
        let expired = ca
            .issue_node_between(&code(CLIENT), now - 2 * day, now - day)
            .unwrap();
        // Loading an expired certificate only warns: see `TlsMaterial::parse`.
        let client = material(&ca, &expired);

        let err = health_check(
            &server.addr.to_string(),
            &code(SERVER),
            client.client_config().unwrap(),
        )
        .await
        .unwrap_err();
        assert!(err.contains("CertificateExpired"), "{err}");
        assert!(server.seen.lock().unwrap().is_empty());
        server.stop().await;
    }

    #[tokio::test]
    async fn client_refuses_a_server_with_another_code() {
        let ca = Ca::generate(&code(CITY), 1).unwrap();
        // A sibling county answers where the child expected its parent.
        let server = TestServer::start(&node(&ca, "511111")).await;
        let client = node(&ca, CLIENT);
        let addr = server.addr.to_string();

        let err = connect(&addr, &code(SERVER), client.client_config().unwrap())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("cannot connect to {addr}: ")),
            "{err}"
        );
        assert!(
            err.contains(&format!(
                "TLS handshake with {addr} (expecting `511102.node.tiersync`) failed"
            )),
            "{err}"
        );
        assert!(
            err.ends_with(
                "invalid peer certificate: certificate not valid for name \"511102.node.tiersync\"; \
                 certificate is only valid for UniformResourceIdentifier(\"tiersync://node/511111\") \
                 or DnsName(\"511111.node.tiersync\")"
            ),
            "{err}"
        );
        assert!(server.seen.lock().unwrap().is_empty());
        server.stop().await;
    }

    #[tokio::test]
    async fn tls12_client_is_refused() {
        let ca = Ca::generate(&code(CITY), 1).unwrap();
        let server = TestServer::start(&node(&ca, SERVER)).await;
        let client = node(&ca, CLIENT);
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(client.roots.clone())
            .with_client_auth_cert(client.chain.clone(), client.key.clone_key())
            .unwrap();
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        let addr = server.addr.to_string();

        let err = connect(&addr, &code(SERVER), Arc::new(config))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("cannot connect to {addr}: ")),
            "{err}"
        );
        assert!(err.contains("ProtocolVersion"), "{err}");
        server.stop().await;
    }

    #[tokio::test]
    async fn one_stalled_client_does_not_block_others() {
        let ca = Ca::generate(&code(CITY), 1).unwrap();
        let server = TestServer::start(&node(&ca, SERVER)).await;
        // Connects but never says a word: its handshake waits for the timeout.
        let _stalled = TcpStream::connect(server.addr).await.unwrap();
        // And one that says rubbish.
        let mut garbage = TcpStream::connect(server.addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut garbage, b"GET / HTTP/1.1\r\n\r\n")
            .await
            .unwrap();

        let client = node(&ca, CLIENT);
        let response = health_check(
            &server.addr.to_string(),
            &code(SERVER),
            client.client_config().unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), ServingStatus::Serving);
        server.stop().await;
    }

    #[tokio::test]
    async fn accept_stream_skips_failed_handshakes() {
        install_crypto_provider();
        let ca = Ca::generate(&code(CITY), 1).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = tls_incoming(listener, node(&ca, SERVER).server_config().unwrap());

        // A client that hangs up at once, then a good one.
        drop(TcpStream::connect(addr).await.unwrap());
        let client = node(&ca, CLIENT);
        let connector = TlsConnector::from(client.client_config().unwrap());
        let dial = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let mut tls = connector
                .connect(server_name_for(&code(SERVER)).unwrap(), tcp)
                .await
                .unwrap();
            // Let the server read our certificate and finish its side.
            tokio::io::AsyncWriteExt::write_all(&mut tls, b"x")
                .await
                .unwrap();
            tls
        });
        let accepted = incoming.next().await.unwrap().unwrap();
        let (_, session) = accepted.get_ref();
        assert_eq!(
            code_from_cert(&session.peer_certificates().unwrap()[0]).unwrap(),
            code(CLIENT)
        );
        assert_eq!(session.alpn_protocol(), Some(ALPN_H2));
        drop(dial.await.unwrap());
    }

    #[tokio::test]
    async fn connect_fails_fast_when_nothing_listens() {
        install_crypto_provider();
        let ca = Ca::generate(&code(CITY), 1).unwrap();
        // Bind then drop: a port that was just free and now refuses.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let err = connect(
            &addr,
            &code(SERVER),
            node(&ca, CLIENT).client_config().unwrap(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(&format!("cannot connect to {addr}: ")),
            "{err}"
        );
        assert!(
            err.contains(&format!("cannot open a TCP connection to {addr}")),
            "{err}"
        );
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_addr("10.0.0.1:7443").unwrap(), "10.0.0.1:7443");
        assert_eq!(
            parse_addr("https://parent.example:7443/").unwrap(),
            "parent.example:7443"
        );
        assert_eq!(parse_addr("[::1]:7443").unwrap(), "[::1]:7443");
        for (addr, reason) in [
            ("parent.example", "missing :port"),
            (
                "http://parent.example:7443",
                "expected host:port or https://host:port",
            ),
            (
                "parent.example:https",
                "the port is not a number from 0 to 65535",
            ),
            (":7443", "missing host"),
        ] {
            assert_eq!(
                parse_addr(addr).unwrap_err().to_string(),
                format!("invalid address `{addr}`: {reason}")
            );
        }
    }

    #[test]
    fn code_from_cert_needs_the_uri_san() {
        let mut params =
            rcgen::CertificateParams::new(vec!["511102.node.tiersync".to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "511102");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            code_from_cert(cert.der()).unwrap_err().to_string(),
            "certificate `CN=511102` has no `tiersync://node/<code>` URI SAN"
        );

        params.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from("tiersync://node/51110x").unwrap(),
        ));
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            code_from_cert(cert.der()).unwrap_err().to_string(),
            "certificate `CN=511102` has the URI SAN `tiersync://node/51110x` but its code is invalid: \
             division code `51110x` contains `x`; it must be decimal digits only"
        );
    }

    #[test]
    fn material_errors_name_the_file() {
        install_crypto_provider();
        let tmp = tempfile::tempdir().unwrap();
        crate::identity::pki::init_dir(tmp.path(), &code(CITY)).unwrap();
        let (cert, key) =
            crate::identity::pki::issue_into_dir(tmp.path(), &code(CLIENT), 1).unwrap();
        let ca = tmp.path().join("ca.pem");

        let missing = tmp.path().join("nope.pem");
        let err = TlsMaterial::load(&ca, &missing, &key)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "cannot read node certificate file {}: ",
                missing.display()
            )),
            "{err}"
        );

        // A key file given as the certificate.
        assert_eq!(
            TlsMaterial::load(&ca, &key, &key).unwrap_err().to_string(),
            format!("no certificate found in {}", key.display())
        );
        assert_eq!(
            TlsMaterial::load(&ca, &cert, &cert)
                .unwrap_err()
                .to_string(),
            format!("no private key found in {}", cert.display())
        );

        // Another node's key.
        let (_, other_key) =
            crate::identity::pki::issue_into_dir(tmp.path(), &code(SERVER), 1).unwrap();
        assert_eq!(
            TlsMaterial::load(&ca, &cert, &other_key)
                .unwrap_err()
                .to_string(),
            format!(
                "the private key in {} does not match the certificate in {}",
                other_key.display(),
                cert.display()
            )
        );

        // A certificate from another deployment's CA.
        let other = tempfile::tempdir().unwrap();
        crate::identity::pki::init_dir(other.path(), &code(CITY)).unwrap();
        let other_ca = other.path().join("ca.pem");
        let err = TlsMaterial::load(&other_ca, &cert, &key)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "the certificate in {} is not valid under the CA in {}: ",
                cert.display(),
                other_ca.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn init_then_issue_gives_loadable_material() {
        install_crypto_provider();
        let tmp = tempfile::tempdir().unwrap();
        crate::identity::pki::init_dir(tmp.path(), &code(CITY)).unwrap();
        let node = code("511102004001");
        let (cert, key) = crate::identity::pki::issue_into_dir(tmp.path(), &node, 30).unwrap();
        let material = TlsMaterial::load(&tmp.path().join("ca.pem"), &cert, &key).unwrap();
        assert_eq!(material.own_code(), &node);
        material.server_config().unwrap();
        material.client_config().unwrap();

        let err = crate::identity::pki::init_dir(tmp.path(), &code(CITY))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "refusing to overwrite the existing CA key {}",
                tmp.path().join("ca.key").display()
            )),
            "{err}"
        );
    }

    #[tokio::test]
    async fn peer_code_without_tls_is_unauthenticated() {
        let status = tonic::Status::from(peer_code(&tonic::Request::new(())).unwrap_err());
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(
            status
                .message()
                .starts_with("no verified client certificate"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn install_crypto_provider_is_idempotent() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(CryptoProvider::get_default().is_some());
    }
}
