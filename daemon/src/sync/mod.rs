//! Replication between a child and its parent over one bidirectional gRPC
//! stream: the parent's [`server::SyncService`], the child's
//! [`client::parent_link`] dialer, and the [`session`] both run.
//!
//! The link's identity is the pair of division codes only: cursors are keyed
//! by the peer's code, never by an address or credential, so a new address or
//! a renewed certificate never rewinds a link.

pub mod client;
pub mod links;
pub mod server;
pub mod session;

pub use session::{LinkError, PROTOCOL};
