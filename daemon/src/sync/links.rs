//! The link table: what this node knows about each of its links (state,
//! cursors, lag, counts), written by the link sessions and read by the
//! status page, the `Status` API call and `tiersync status`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tiersync_proto::wire;

use crate::clock::SharedClock;
use crate::route::Toward;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Connecting,
    Up,
    Retrying,
    Stalled,
    Down,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Up => "up",
            LinkState::Retrying => "retrying",
            LinkState::Stalled => "stalled",
            LinkState::Down => "down",
        }
    }
}

/// What a node knows about one link.
#[derive(Debug, Clone)]
pub struct LinkInfo {
    pub peer: String,
    pub toward: Toward,
    pub state: LinkState,
    /// Our cursor into the peer's log.
    pub applied_through: u64,
    /// The peer's newest sequence number, from its batches and heartbeats.
    pub peer_head: u64,
    /// How far the peer has acknowledged our log.
    pub peer_applied: u64,
    pub lag_seconds: f64,
    /// Wall-clock ms when the state last changed.
    pub since_ms: i64,
    pub last_error: String,
    pub records_in: u64,
    pub records_out: u64,
    pub rejected: u64,
    /// When the cursor last moved, by the node's clock (for stall
    /// detection).
    pub last_progress_ms: i64,
}

impl LinkInfo {
    pub fn lag_changes(&self) -> u64 {
        self.peer_head.saturating_sub(self.applied_through)
    }

    pub fn to_wire(&self) -> wire::LinkStatus {
        wire::LinkStatus {
            peer: self.peer.clone(),
            direction: direction(self.toward).into(),
            state: self.state.as_str().into(),
            applied_through: self.applied_through,
            peer_head: self.peer_head,
            lag_changes: self.lag_changes(),
            lag_seconds: self.lag_seconds,
            since_ms: self.since_ms,
            last_error: self.last_error.clone(),
            records_in: self.records_in,
            records_out: self.records_out,
            rejected: self.rejected,
        }
    }
}

pub fn direction(toward: Toward) -> &'static str {
    match toward {
        Toward::Parent => "parent",
        Toward::Child => "child",
    }
}

/// Every link of this node, by peer code.
#[derive(Debug, Clone)]
pub struct LinkTable {
    links: Arc<Mutex<BTreeMap<String, LinkInfo>>>,
    clock: SharedClock,
}

impl LinkTable {
    /// A table whose times (state changes, progress) come from `clock`.
    pub fn new(clock: SharedClock) -> LinkTable {
        LinkTable {
            links: Arc::default(),
            clock,
        }
    }

    /// Now, by the clock of this table.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Updates (creating if needed) the entry of `peer`.
    pub fn update<R>(&self, peer: &str, toward: Toward, f: impl FnOnce(&mut LinkInfo) -> R) -> R {
        let mut links = self.links.lock().expect("link table lock");
        // Every batch updates its link: only a new entry needs the time and
        // an owned key.
        if !links.contains_key(peer) {
            let now = self.now_ms();
            links.insert(
                peer.to_owned(),
                LinkInfo {
                    peer: peer.to_owned(),
                    toward,
                    state: LinkState::Connecting,
                    applied_through: 0,
                    peer_head: 0,
                    peer_applied: 0,
                    lag_seconds: 0.0,
                    since_ms: now,
                    last_error: String::new(),
                    records_in: 0,
                    records_out: 0,
                    rejected: 0,
                    last_progress_ms: now,
                },
            );
        }
        f(links.get_mut(peer).expect("present: inserted above"))
    }

    pub fn set_state(&self, peer: &str, toward: Toward, state: LinkState) {
        let now = self.now_ms();
        self.update(peer, toward, |l| {
            if l.state != state {
                l.state = state;
                l.since_ms = now;
            }
        });
    }

    pub fn snapshot(&self) -> Vec<LinkInfo> {
        self.links
            .lock()
            .expect("link table lock")
            .values()
            .cloned()
            .collect()
    }

    pub fn get(&self, peer: &str) -> Option<LinkInfo> {
        self.links
            .lock()
            .expect("link table lock")
            .get(peer)
            .cloned()
    }
}
