//! Replication between a child and its parent over one bidirectional gRPC
//! stream: the parent's [`server::SyncService`], the child's
//! [`client::parent_link`] dialer, and the [`session`] both run.
//!
//! The link's identity is the pair of division codes only: cursors are keyed
//! by the peer's code, never by an address or credential, so a new address or
//! a renewed certificate never rewinds a link.

pub mod client;
pub mod links;
pub(crate) mod send;
pub mod server;
pub mod session;

/// Wire protocol version spoken by this build.
pub const PROTOCOL: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("peer ended the session: {0}")]
    Peer(#[from] tonic::Status),
    #[error("protocol violation by `{peer}`: {reason}")]
    Protocol { peer: String, reason: String },
    #[error("store error: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot reach the parent: {reason}")]
    Connect { address: String, reason: String },
    #[error("session closed")]
    Closed,
    #[error("{reason}; the link is closed")]
    Revoked { reason: String },
    /// Nothing arrived from the peer for three heartbeats while this side
    /// had nothing of its in hand: the peer is hung or gone (a paused
    /// process keeps its sockets, and its kernel still answers keepalives).
    #[error("peer `{peer}` sent nothing for {secs:.1} s (three heartbeats); it is hung or gone")]
    Silent { peer: String, secs: f64 },
}
