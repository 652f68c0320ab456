//! The child side: dial the parent, hold one session, and reconnect with
//! exponential backoff and jitter (backon) when it ends. While the parent is
//! unreachable the change log is the buffer; nothing is lost.
//!
//! The backoff is capped at 60 s and never gives up: a township offline for a
//! week must rejoin on its own. It resets once a session got as far as the
//! hellos, so a flapping link retries quickly.
//!
//! A parent may have several addresses (an active daemon and its standby on
//! one PostgreSQL database; only the active one listens). The child keeps
//! dialling the last address that worked; on a connect error it moves to the
//! next one at once, and backs off only after a whole round failed.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tiersync_proto::wire::sync_client::SyncClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::LinkError;
use super::session;
use crate::config::ParentConfig;
use crate::node::Node;
use crate::ops::metrics::LinkLabels;
use crate::route::Toward;
use crate::worker::WorkerHandle;

fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(60))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Keeps the link to the parent up until `cancel` fires.
pub async fn parent_link(
    node: Arc<Node>,
    parent: ParentConfig,
    tls: Arc<rustls::ClientConfig>,
    cancel: CancellationToken,
) {
    let mut delays = backoff();
    // the address that worked last (sticky), and connect failures in a row
    let mut at = 0usize;
    let mut failed = 0usize;
    let labels = LinkLabels {
        peer: parent.code.to_string(),
        direction: "parent".into(),
    };
    // The parent link's series exist before the first session, so a node
    // that never reaches its parent shows `link_up 0`, not nothing.
    node.metrics().link_up.get_or_create(&labels).set(0);
    node.metrics().link_errors.get_or_create(&labels).inc_by(0);
    let worker = node.workers().register("parent-link");
    loop {
        node.links()
            .update_at(parent.code.as_str(), Toward::Parent, |l, clock| {
                l.connecting(format!("dialling {}", parent.addresses[at]), clock)
            });
        worker.busy();
        worker.set_info(format!(
            "connecting to {} at {}",
            parent.code, parent.addresses[at]
        ));
        let result = tokio::select! {
            _ = cancel.cancelled() => {
                worker.stopped();
                return;
            }
            r = one_session(&node, &parent, &parent.addresses[at], &tls, &cancel, &worker) => r,
        };
        if cancel.is_cancelled() {
            worker.stopped();
            return;
        }
        let address = &parent.addresses[at];
        let reached = match &result {
            Ok(reached) => {
                worker.idle();
                *reached
            }
            Err((false, error @ LinkError::Connect { .. })) if parent.addresses.len() > 1 => {
                failed += 1;
                at = (at + 1) % parent.addresses.len();
                info!(parent = %parent.code, %address, next = %parent.addresses[at], %error, "parent address unreachable; trying the next one");
                if failed < parent.addresses.len() {
                    worker.error(error);
                    continue;
                }
                worker.retrying(error);
                node.links()
                    .update(parent.code.as_str(), Toward::Parent, |l| {
                        l.last_error = error.to_string()
                    });
                node.metrics().link_errors.get_or_create(&labels).inc();
                false
            }
            Err((reached, error)) => {
                warn!(parent = %parent.code, %address, %error, "parent link down");
                if matches!(error, LinkError::Silent { .. }) && parent.addresses.len() > 1 {
                    // A hung parent still accepts connections and then
                    // never answers: try its standby's address first.
                    at = (at + 1) % parent.addresses.len();
                }
                worker.retrying(error);
                node.links()
                    .update(parent.code.as_str(), Toward::Parent, |l| {
                        l.last_error = error.to_string()
                    });
                node.metrics().link_errors.get_or_create(&labels).inc();
                *reached
            }
        };
        failed = 0;
        if reached {
            delays = backoff();
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(60));
        let why = match &result {
            Ok(_) => "session ended".to_owned(),
            Err((_, error)) => error.to_string(),
        };
        node.links()
            .update_at(parent.code.as_str(), Toward::Parent, |l, clock| {
                l.retrying(
                    format!("{why}; next attempt in {:.1} s", delay.as_secs_f64()),
                    clock,
                )
            });
        worker.set_info(format!("next attempt in {} ms", delay.as_millis()));
        tokio::select! {
            _ = cancel.cancelled() => {
                worker.stopped();
                return;
            }
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One connection and session. The flag says whether the hellos were
/// exchanged (so the backoff may reset).
async fn one_session(
    node: &Arc<Node>,
    parent: &ParentConfig,
    address: &str,
    tls: &Arc<rustls::ClientConfig>,
    cancel: &CancellationToken,
    worker: &WorkerHandle,
) -> Result<bool, (bool, LinkError)> {
    let channel = crate::identity::transport::connect(address, &parent.code, tls.clone())
        .await
        .map_err(|e| {
            (
                false,
                LinkError::Connect {
                    address: address.to_owned(),
                    reason: e.to_string(),
                },
            )
        })?;
    let max = node.tuning().max_frame_bytes;
    let mut client = SyncClient::new(channel)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let (applied, applied_epoch) = session::our_cursor(node, &parent.code, None)
        .await
        .map_err(|e| (false, e))?;
    let (tx, rx) = mpsc::channel(node.tuning().window * 2 + 4);
    tx.send(session::hello(node, applied, &applied_epoch))
        .await
        .map_err(|_| (false, LinkError::Closed))?;
    let response = client
        .link(ReceiverStream::new(rx))
        .await
        .map_err(|s| (false, LinkError::Peer(s)))?;
    let mut inbound = response.into_inner();
    let parent_hello = session::read_hello(&mut inbound, parent.code.as_str())
        .await
        .map_err(|e| (false, e))?;
    if parent_hello.node != parent.code.as_str() {
        return Err((
            false,
            LinkError::Protocol {
                peer: address.to_owned(),
                reason: format!(
                    "answered as node `{}`, expected parent `{}`",
                    parent_hello.node, parent.code
                ),
            },
        ));
    }
    // The parent compares `applied_epoch` with its own epoch and streams
    // from the start if its store was recreated; batches then record its
    // new epoch with our cursor.
    info!(parent = %parent.code, %address, "link to parent established");
    worker.up();
    worker.set_info(format!("session with {} at {address}", parent.code));
    session::run(
        node.clone(),
        parent.code.clone(),
        Toward::Parent,
        parent_hello,
        inbound,
        tx,
        cancel.clone(),
    )
    .await
    .map(|_| true)
    .map_err(|e| (true, e))
}
