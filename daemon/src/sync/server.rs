//! The parent side of links: accepts a child's stream after checking, from
//! its verified certificate, that it is a direct child of this node.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use tiersync_proto::types::DivisionCode;
use tiersync_proto::wire::{self, sync_server::Sync};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use super::LinkError;
use super::session;
use crate::identity::tls::{NoPeerIdentity, peer_code};
use crate::node::Node;
use crate::route::{NotAChild, Toward, admit_child};

pub struct SyncService {
    node: Arc<Node>,
    cancel: CancellationToken,
    /// The live session of each child; a new one from the same child
    /// replaces it (the old connection is dead or a duplicate).
    sessions: Mutex<HashMap<String, CancellationToken>>,
}

impl SyncService {
    pub fn new(node: Arc<Node>, cancel: CancellationToken) -> SyncService {
        SyncService {
            node,
            cancel,
            sessions: Mutex::new(HashMap::new()),
        }
    }
}

/// Why the parent refuses a link.
#[derive(Debug, thiserror::Error)]
pub enum LinkRefused {
    #[error(transparent)]
    NoIdentity(#[from] NoPeerIdentity),
    #[error(transparent)]
    NotAChild(#[from] NotAChild),
    #[error("{0}")]
    Revoked(String),
    /// The first frame was not a usable hello.
    #[error("{0}")]
    BadHello(LinkError),
    #[error("hello names node `{named}` but the client certificate is for `{peer}`")]
    HelloMismatch { named: String, peer: DivisionCode },
    /// Our cursor into the child's log could not be read.
    #[error("{0}")]
    Unavailable(LinkError),
    #[error("closed")]
    Closed,
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<wire::LinkFrame, Status>> + Send>>;

#[tonic::async_trait]
impl Sync for SyncService {
    type LinkStream = FrameStream;

    async fn link(
        &self,
        request: Request<Streaming<wire::LinkFrame>>,
    ) -> Result<Response<FrameStream>, Status> {
        let peer = peer_code(&request).map_err(LinkRefused::from)?;
        let node = self.node.clone();
        if let Err(refused) = admit_child(node.code(), &peer) {
            warn!(peer = %peer, "link refused: not a child of this node");
            return Err(LinkRefused::from(refused).into());
        }
        if let Some(reason) = node.revoked_now(&peer) {
            warn!(peer = %peer, %reason, "link refused: the child is revoked");
            node.links()
                .update_at(peer.as_str(), Toward::Child, |l, clock| {
                    l.retrying(format!("refused: {reason}"), clock)
                });
            return Err(LinkRefused::Revoked(reason).into());
        }
        let mut inbound = request.into_inner();
        let peer_hello = session::read_hello(&mut inbound, peer.as_str())
            .await
            .map_err(LinkRefused::BadHello)?;
        if peer_hello.node != peer.as_str() {
            return Err(LinkRefused::HelloMismatch {
                named: peer_hello.node,
                peer,
            }
            .into());
        }
        let (applied, applied_epoch) = session::our_cursor(&node, &peer, Some(&peer_hello.epoch))
            .await
            .map_err(LinkRefused::Unavailable)?;
        let (tx, rx) = mpsc::channel::<wire::LinkFrame>(node.tuning().window * 2 + 4);
        tx.send(session::hello(&node, applied, &applied_epoch))
            .await
            .map_err(|_| LinkRefused::Closed)?;

        let cancel = self.cancel.child_token();
        if let Some(previous) = self
            .sessions
            .lock()
            .expect("sessions lock")
            .insert(peer.to_string(), cancel.clone())
        {
            info!(peer = %peer, "child reconnected; ending its previous session");
            previous.cancel();
        }
        // Registered when the session starts, stopped when it ends; a
        // reconnecting child takes over its entry.
        let worker = node.workers().register(format!("child-link:{peer}"));
        worker.up();
        worker.set_info(format!("session with child {peer}"));
        tokio::spawn(async move {
            match session::run(
                node.clone(),
                peer.clone(),
                Toward::Child,
                peer_hello,
                inbound,
                tx,
                cancel,
            )
            .await
            {
                Ok(()) | Err(LinkError::Closed) => {
                    info!(peer = %peer, "child session ended");
                    worker.stopped();
                }
                // The connection went away (child stopped, killed, network cut):
                // routine for a link, not a fault of this node.
                Err(LinkError::Peer(status))
                    if matches!(
                        status.code(),
                        tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Unavailable
                    ) =>
                {
                    info!(peer = %peer, reason = %status.message(), "child disconnected");
                    worker.set_info(format!("disconnected: {}", status.message()));
                    worker.stopped();
                }
                Err(error) => {
                    warn!(peer = %peer, %error, "child session failed");
                    worker.error(&error);
                    worker.stopped();
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(Ok))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_direct_children_are_admitted() {
        let c = |s: &str| DivisionCode::parse(s).unwrap();
        assert!(admit_child(&c("511102004"), &c("511102004001")).is_ok());
        let err = Status::from(admit_child(&c("511102004"), &c("511102005001")).unwrap_err());
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            err.message(),
            "node `511102005001` is not a child of `511102004`: a child's code is `511102004` followed by 3 more digits"
        );
        // a grandchild may not skip its parent
        assert!(admit_child(&c("511102"), &c("511102004001")).is_err());
    }
}
