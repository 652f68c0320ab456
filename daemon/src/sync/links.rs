//! The link table: what this node knows about each of its links (its
//! [`LinkState`] with the reason and since when, cursors, lag, counts),
//! written by the link sessions where each state arises and read by the
//! status page, `/status.json`, the `Status` API call, `tiersync status`
//! and the `tiersync_links{state}` gauge.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tiersync_proto::wire;

use crate::clock::{Clock, SharedClock};
use crate::route::Toward;

/// What a link is doing: exactly one of these at a time, each entered
/// where the link's code finds it (not worked out when it is shown), with
/// a reason in words and the time it was entered ([`LinkInfo`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkState {
    /// A session is up, and none of the states below applies.
    Ok,
    /// The child is dialling its parent (`client.rs`); where a link is
    /// first seen, it starts here.
    Connecting,
    /// No session: an attempt failed or the last session ended. The child
    /// dials again after a backoff (`client.rs`); at the parent, the entry
    /// of a child whose session ended or was refused waits here for the
    /// child to dial again (`session.rs`, `server.rs`).
    Retrying,
    /// A session is up and the peer's log is ahead of our cursor, but the
    /// cursor has not moved for `sync.stall_secs` (`session.rs`).
    Stalled,
    /// A session is up and one side's log is being read again from the
    /// start, until the reader has caught up: the peer's store has a new
    /// epoch (recreated, or restored and given `new-epoch`), so our cursor
    /// into it means nothing; or the peer's cursor into this node's log is
    /// not into this store (its epoch differs, or it is past our head) and
    /// we resend everything (`session.rs`). Nothing here keeps a log
    /// shorter than a peer's cursor could need, so a cursor is never behind
    /// what a log retains.
    MustResync,
    /// A session is up, and records from the peer are going to quarantine:
    /// the last batch from it that carried records had some refused
    /// (`session.rs`). A later batch that applies in full ends it; the
    /// quarantined records wait for `tiersync quarantine`.
    Quarantining,
}

impl LinkState {
    /// Every state, in the order above.
    pub const ALL: [LinkState; 6] = [
        LinkState::Ok,
        LinkState::Connecting,
        LinkState::Retrying,
        LinkState::Stalled,
        LinkState::MustResync,
        LinkState::Quarantining,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Ok => "ok",
            LinkState::Connecting => "connecting",
            LinkState::Retrying => "retrying",
            LinkState::Stalled => "stalled",
            LinkState::MustResync => "must-resync",
            LinkState::Quarantining => "quarantining",
        }
    }
}

impl std::fmt::Display for LinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What holds for a link while its session is up; the state follows from
/// them (stalled before must-resync before quarantining before ok).
#[derive(Debug, Clone, Default)]
struct Session {
    /// Reading the peer's log from the start: why.
    resync_in: Option<String>,
    /// Resending our log from the start: why, and our head at the time,
    /// which the peer's acknowledgements must reach.
    resync_out: Option<(String, u64)>,
    stalled: Option<String>,
    quarantining: Option<String>,
}

/// What a node knows about one link.
#[derive(Debug, Clone)]
pub struct LinkInfo {
    pub peer: String,
    pub toward: Toward,
    /// Change it through the methods below, which keep `reason` and
    /// `since_ms` with it.
    pub state: LinkState,
    /// Why the link is in `state`, in words.
    pub reason: String,
    /// Wall-clock ms (node clock) when `state` was entered.
    pub since_ms: i64,
    /// Our cursor into the peer's log.
    pub applied_through: u64,
    /// The peer's newest sequence number, from its batches and heartbeats.
    pub peer_head: u64,
    /// How far the peer has acknowledged our log.
    pub peer_applied: u64,
    pub lag_seconds: f64,
    pub last_error: String,
    pub records_in: u64,
    pub records_out: u64,
    pub rejected: u64,
    /// When the cursor last moved, by the node's clock (for stall
    /// detection).
    pub last_progress_ms: i64,
    /// `None` while there is no session.
    session: Option<Session>,
    /// Sessions begun: the end of a session a newer one replaced (a child
    /// that reconnected) leaves the newer one's state alone.
    sessions_begun: u64,
}

impl LinkInfo {
    fn new(peer: &str, toward: Toward, now: i64) -> LinkInfo {
        LinkInfo {
            peer: peer.to_owned(),
            toward,
            state: LinkState::Connecting,
            reason: "not connected yet".into(),
            since_ms: now,
            applied_through: 0,
            peer_head: 0,
            peer_applied: 0,
            lag_seconds: 0.0,
            last_error: String::new(),
            records_in: 0,
            records_out: 0,
            rejected: 0,
            last_progress_ms: now,
            session: None,
            sessions_begun: 0,
        }
    }

    pub fn lag_changes(&self) -> u64 {
        self.peer_head.saturating_sub(self.applied_through)
    }

    /// Enters `state` for `reason`; the time moves only if the state
    /// changes (a link retrying for an hour says so, whatever its latest
    /// error).
    fn enter(&mut self, state: LinkState, reason: String, clock: &dyn Clock) {
        if self.state != state {
            self.state = state;
            self.since_ms = clock.now_ms();
        }
        self.reason = reason;
    }

    /// The state of an up session, from what holds for it. Runs for every
    /// batch: it reads the clock and allocates only when something changed.
    fn settle(&mut self, clock: &dyn Clock) {
        let Some(s) = &self.session else {
            return;
        };
        let (state, reason) = if let Some(why) = &s.stalled {
            (LinkState::Stalled, why.as_str())
        } else if let Some(why) = s
            .resync_in
            .as_ref()
            .or(s.resync_out.as_ref().map(|(why, _)| why))
        {
            (LinkState::MustResync, why.as_str())
        } else if let Some(why) = &s.quarantining {
            (LinkState::Quarantining, why.as_str())
        } else {
            (LinkState::Ok, "session up")
        };
        if self.state != state {
            self.state = state;
            self.since_ms = clock.now_ms();
        }
        if self.reason != reason {
            self.reason = reason.to_owned();
        }
    }

    /// Dialling the peer (the child's side).
    pub fn connecting(&mut self, reason: String, clock: &dyn Clock) {
        self.session = None;
        self.enter(LinkState::Connecting, reason, clock);
    }

    /// No session, and another is to come: an attempt failed, or the
    /// session ended.
    pub fn retrying(&mut self, reason: String, clock: &dyn Clock) {
        self.session = None;
        self.enter(LinkState::Retrying, reason, clock);
    }

    /// The session numbered `session` (from [`LinkInfo::session_up`])
    /// ended for `reason`: retrying, unless a newer session has begun
    /// meanwhile. Whether it was still the link's session.
    pub fn session_ended(&mut self, session: u64, reason: String, clock: &dyn Clock) -> bool {
        if session != self.sessions_begun {
            return false;
        }
        self.retrying(reason, clock);
        true
    }

    /// The hellos are exchanged and the session runs. `resync_in`: why we
    /// read the peer's log from the start, if we do; `resync_out`: why we
    /// resend ours from the start, with our head now. Returns the session's
    /// number, for [`LinkInfo::session_ended`].
    pub fn session_up(
        &mut self,
        resync_in: Option<String>,
        resync_out: Option<(String, u64)>,
        clock: &dyn Clock,
    ) -> u64 {
        if resync_in.is_some() {
            // The peer's head and our cursor belong to its old log.
            self.applied_through = 0;
            self.peer_head = 0;
            self.lag_seconds = 0.0;
        }
        self.last_error.clear();
        self.last_progress_ms = clock.now_ms();
        self.session = Some(Session {
            resync_in,
            resync_out: resync_out.filter(|(_, head)| *head > 0),
            ..Session::default()
        });
        self.settle(clock);
        self.sessions_begun += 1;
        self.sessions_begun
    }

    /// A written batch from the peer: our cursor is at `through`, the
    /// peer's head at least `head`; of `received` records, `refused` went
    /// to quarantine, the first for `first_refusal`.
    pub fn batch_applied(
        &mut self,
        through: u64,
        head: u64,
        received: u64,
        refused: u64,
        first_refusal: Option<&str>,
        clock: &dyn Clock,
    ) {
        let progressed = through > self.applied_through;
        if progressed {
            self.last_progress_ms = clock.now_ms();
        }
        self.applied_through = through;
        self.peer_head = self.peer_head.max(head);
        self.records_in += received;
        self.rejected += refused;
        let caught_up = self.applied_through >= self.peer_head;
        if let Some(s) = &mut self.session {
            if progressed || caught_up {
                s.stalled = None;
            }
            if caught_up {
                s.resync_in = None;
            }
            if refused > 0 {
                s.quarantining = Some(format!(
                    "{refused} of {received} records in the last batch went to quarantine{}",
                    first_refusal
                        .map(|why| format!("; the first: {why}"))
                        .unwrap_or_default()
                ));
            } else if received > 0 {
                s.quarantining = None;
            }
        }
        self.settle(clock);
    }

    /// A heartbeat: the peer's head is `head`.
    pub fn heard_head(&mut self, head: u64, clock: &dyn Clock) {
        self.peer_head = self.peer_head.max(head);
        if self.peer_head <= self.applied_through {
            self.lag_seconds = 0.0;
            if let Some(s) = &mut self.session {
                s.resync_in = None;
                s.stalled = None;
            }
        }
        self.settle(clock);
    }

    /// The peer acknowledged our log through `through`.
    pub fn acknowledged(&mut self, through: u64, clock: &dyn Clock) {
        self.peer_applied = self.peer_applied.max(through);
        if let Some(s) = &mut self.session
            && s.resync_out
                .as_ref()
                .is_some_and(|(_, target)| self.peer_applied >= *target)
        {
            s.resync_out = None;
        }
        self.settle(clock);
    }

    /// Whether the session is stalled (`Some`: why), as the stall check
    /// found it.
    pub fn set_stalled(&mut self, stalled: Option<String>, clock: &dyn Clock) {
        if let Some(s) = &mut self.session {
            s.stalled = stalled;
        }
        self.settle(clock);
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
            reason: self.reason.clone(),
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
            links.insert(peer.to_owned(), LinkInfo::new(peer, toward, now));
        }
        f(links.get_mut(peer).expect("present: inserted above"))
    }

    /// Updates the entry of `peer` with the table's clock at hand, for the
    /// changes of state (which read it only when the state changes).
    pub fn update_at<R>(
        &self,
        peer: &str,
        toward: Toward,
        f: impl FnOnce(&mut LinkInfo, &dyn Clock) -> R,
    ) -> R {
        let clock: &dyn Clock = &*self.clock;
        self.update(peer, toward, |l| f(l, clock))
    }

    /// How many links are in each state, every state listed.
    pub fn count_by_state(&self) -> [(LinkState, u64); 6] {
        let mut counts = LinkState::ALL.map(|state| (state, 0));
        for link in self.links.lock().expect("link table lock").values() {
            if let Some((_, n)) = counts.iter_mut().find(|(s, _)| *s == link.state) {
                *n += 1;
            }
        }
        counts
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::ManualClock;

    const PEER: &str = "511102004001";

    fn table() -> (LinkTable, ManualClock) {
        let clock = ManualClock::starting_now();
        (LinkTable::new(clock.shared()), clock)
    }

    fn state(t: &LinkTable) -> (LinkState, String, i64) {
        let l = t.get(PEER).expect("the link is listed");
        (l.state, l.reason, l.since_ms)
    }

    fn at<R>(t: &LinkTable, f: impl FnOnce(&mut LinkInfo, &dyn Clock) -> R) {
        t.update_at(PEER, Toward::Child, f);
    }

    #[test]
    fn states_read_as_the_status_views_write_them() {
        let names: Vec<&str> = LinkState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "ok",
                "connecting",
                "retrying",
                "stalled",
                "must-resync",
                "quarantining"
            ]
        );
        for s in LinkState::ALL {
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
    }

    #[test]
    fn a_link_dials_comes_up_and_retries_with_its_reasons_and_times() {
        let (t, clock) = table();
        let t0 = t.now_ms();
        at(&t, |l, clock| {
            l.connecting("dialling 10.0.0.1:7400".into(), clock)
        });
        assert_eq!(
            state(&t),
            (LinkState::Connecting, "dialling 10.0.0.1:7400".into(), t0)
        );
        clock.advance(Duration::from_secs(2));
        at(&t, |l, clock| l.session_up(None, None, clock));
        assert_eq!(state(&t), (LinkState::Ok, "session up".into(), t0 + 2000));
        clock.advance(Duration::from_secs(3));
        at(&t, |l, clock| {
            l.retrying("session ended: reset".into(), clock)
        });
        assert_eq!(
            state(&t),
            (
                LinkState::Retrying,
                "session ended: reset".into(),
                t0 + 5000
            )
        );
        // Still retrying, for a newer reason: since when it began.
        clock.advance(Duration::from_secs(60));
        at(&t, |l, clock| l.retrying("refused".into(), clock));
        assert_eq!(
            state(&t),
            (LinkState::Retrying, "refused".into(), t0 + 5000)
        );
        // Nothing a session finds applies without one.
        at(&t, |l, clock| {
            l.set_stalled(Some("behind".into()), clock);
            l.batch_applied(5, 9, 5, 2, Some("bad"), clock);
        });
        assert_eq!(state(&t).0, LinkState::Retrying);
    }

    #[test]
    fn the_end_of_a_replaced_session_leaves_its_successor_alone() {
        let (t, _clock) = table();
        let first = t.update_at(PEER, Toward::Child, |l, clock| {
            l.session_up(None, None, clock)
        });
        // The child reconnects: a second session begins before the first
        // has wound down.
        let second = t.update_at(PEER, Toward::Child, |l, clock| {
            l.session_up(None, None, clock)
        });
        assert_ne!(first, second);
        let ended = t.update_at(PEER, Toward::Child, |l, clock| {
            l.session_ended(first, "session ended: replaced".into(), clock)
        });
        assert!(!ended);
        assert_eq!(state(&t).0, LinkState::Ok);
        let ended = t.update_at(PEER, Toward::Child, |l, clock| {
            l.session_ended(second, "session ended".into(), clock)
        });
        assert!(ended);
        assert_eq!(
            state(&t),
            (LinkState::Retrying, "session ended".into(), state(&t).2)
        );
    }

    #[test]
    fn stalled_until_the_cursor_moves_or_the_peer_is_caught_up() {
        let (t, clock) = table();
        at(&t, |l, clock| l.session_up(None, None, clock));
        at(&t, |l, clock| l.heard_head(50, clock));
        assert_eq!(t.get(PEER).unwrap().lag_changes(), 50);
        clock.advance(Duration::from_secs(30));
        at(&t, |l, clock| {
            l.set_stalled(Some("50 changes behind, no progress".into()), clock)
        });
        let (s, why, since) = state(&t);
        assert_eq!(
            (s, why.as_str()),
            (LinkState::Stalled, "50 changes behind, no progress")
        );
        clock.advance(Duration::from_secs(1));
        at(&t, |l, clock| l.batch_applied(10, 50, 10, 0, None, clock));
        let (s, _, later) = state(&t);
        assert_eq!(s, LinkState::Ok);
        assert_eq!(later, since + 1000);
        // A heartbeat showing nothing ahead ends a stall too.
        at(&t, |l, clock| l.set_stalled(Some("behind".into()), clock));
        at(&t, |l, clock| l.batch_applied(50, 50, 40, 0, None, clock));
        at(&t, |l, clock| l.set_stalled(Some("behind".into()), clock));
        at(&t, |l, clock| l.heard_head(50, clock));
        assert_eq!(state(&t).0, LinkState::Ok);
    }

    #[test]
    fn a_peer_with_a_new_epoch_is_must_resync_until_its_log_is_read_again() {
        let (t, _clock) = table();
        at(&t, |l, clock| {
            l.session_up(None, None, clock);
            l.batch_applied(900, 900, 900, 0, None, clock);
            l.retrying("session ended".into(), clock);
            l.session_up(Some("the peer's store has a new epoch".into()), None, clock);
        });
        let l = t.get(PEER).unwrap();
        assert_eq!(
            (l.state, l.reason.as_str()),
            (LinkState::MustResync, "the peer's store has a new epoch")
        );
        // The old log's cursor and head are gone.
        assert_eq!((l.applied_through, l.peer_head), (0, 0));
        at(&t, |l, clock| {
            l.batch_applied(100, 300, 100, 0, None, clock)
        });
        assert_eq!(state(&t).0, LinkState::MustResync);
        at(&t, |l, clock| l.heard_head(300, clock));
        assert_eq!(state(&t).0, LinkState::MustResync);
        at(&t, |l, clock| {
            l.batch_applied(300, 300, 200, 0, None, clock)
        });
        assert_eq!(state(&t).0, LinkState::Ok);
    }

    #[test]
    fn resending_our_log_is_must_resync_until_the_peer_acknowledges_it() {
        let (t, _clock) = table();
        at(&t, |l, clock| {
            l.session_up(None, Some(("our store has a new epoch".into(), 40)), clock)
        });
        assert_eq!(state(&t).0, LinkState::MustResync);
        at(&t, |l, clock| l.acknowledged(39, clock));
        assert_eq!(state(&t).0, LinkState::MustResync);
        at(&t, |l, clock| l.acknowledged(40, clock));
        assert_eq!(state(&t).0, LinkState::Ok);
        // An empty log has nothing to resend.
        at(&t, |l, clock| {
            l.retrying("ended".into(), clock);
            l.session_up(None, Some(("new epoch".into(), 0)), clock)
        });
        assert_eq!(state(&t).0, LinkState::Ok);
    }

    #[test]
    fn refused_records_make_a_link_quarantining_until_a_batch_applies_in_full() {
        let (t, _clock) = table();
        at(&t, |l, clock| l.session_up(None, None, clock));
        at(&t, |l, clock| {
            l.batch_applied(2, 2, 2, 1, Some("forged origin"), clock)
        });
        assert_eq!(state(&t).0, LinkState::Quarantining);
        assert_eq!(
            state(&t).1,
            "1 of 2 records in the last batch went to quarantine; the first: forged origin"
        );
        let l = t.get(PEER).unwrap();
        assert_eq!((l.records_in, l.rejected), (2, 1));
        // A batch with no records (progress over filtered changes) says
        // nothing of the quarantine.
        at(&t, |l, clock| l.batch_applied(3, 3, 0, 0, None, clock));
        assert_eq!(state(&t).0, LinkState::Quarantining);
        at(&t, |l, clock| l.batch_applied(4, 4, 1, 0, None, clock));
        assert_eq!(state(&t).0, LinkState::Ok);
    }

    #[test]
    fn stalled_goes_before_must_resync_before_quarantining() {
        let (t, _clock) = table();
        at(&t, |l, clock| {
            l.session_up(Some("new epoch".into()), None, clock);
            l.batch_applied(1, 10, 1, 1, Some("bad"), clock);
        });
        assert_eq!(state(&t).0, LinkState::MustResync);
        at(&t, |l, clock| l.set_stalled(Some("stuck".into()), clock));
        assert_eq!(state(&t).0, LinkState::Stalled);
        at(&t, |l, clock| l.set_stalled(None, clock));
        assert_eq!(state(&t).0, LinkState::MustResync);
        // Caught up over changes all filtered out: the resync is done, the
        // quarantine stands.
        at(&t, |l, clock| l.batch_applied(10, 10, 0, 0, None, clock));
        assert_eq!(state(&t).0, LinkState::Quarantining);
    }

    #[test]
    fn links_are_counted_by_state() {
        let (t, _clock) = table();
        at(&t, |l, clock| l.session_up(None, None, clock));
        t.update_at("511102004002", Toward::Child, |l, clock| {
            l.retrying("gone".into(), clock)
        });
        t.update_at("511102004003", Toward::Child, |l, clock| {
            l.retrying("gone".into(), clock)
        });
        let counts = t.count_by_state();
        assert_eq!(counts[0], (LinkState::Ok, 1));
        assert_eq!(counts[2], (LinkState::Retrying, 2));
        assert_eq!(counts.iter().map(|(_, n)| n).sum::<u64>(), 3);
    }
}
