//! One link session, the same at both ends once the hellos are exchanged.
//!
//! Two halves run concurrently:
//! - the **sender** ([`super::send`]) streams this node's change log after the peer's cursor,
//!   filtered by [`crate::route::delivery`], in bounded batches, with at most
//!   `window` batches unacknowledged (flow control: a fast county cannot
//!   drown a slow street). Records go out as the bytes they are stored as
//!   (only their routing fields are decoded). Caught up, it waits for new
//!   changes and sends a heartbeat every `heartbeat` with its head, so the
//!   peer can report lag;
//! - the **receiver** validates and applies the peer's batches, the cursor
//!   committed in the same transaction, and acknowledges each one (see
//!   `receive_loop` for its three stages).
//!
//! A frame that fails to decode or is over the size limit ends the session
//! (tonic rejects it before we see it); nothing of that frame was applied,
//! and the peer resends from the cursor we announce on reconnect. Inside a
//! well-formed batch each record is decoded on its own: one that does not
//! decode is quarantined like any refused record, and the rest applies.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tiersync_proto::types::{DivisionCode, HlcTimestamp};
use tiersync_proto::wire::{self, link_frame::Body};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::send::send_loop;
use super::{LinkError, PROTOCOL};
use crate::clock::now_ms;
use crate::node::{Node, PreparedBatch, ScreenedBatch};
use crate::ops::metrics::LinkLabels;
use crate::route::Toward;
use crate::sync::links::{LinkState, direction};

/// Most records applied in one transaction when batches queue up.
const COALESCE_RECORDS: usize = 8000;

/// Batches of one link whose records are checked at once, on blocking
/// threads: two keep both cores of a small machine busy while the writer
/// waits on its commit.
const VERIFYING: usize = 2;

/// The first frame of each side.
pub fn hello(node: &Node, applied_through: u64, applied_epoch: &str) -> wire::LinkFrame {
    wire::LinkFrame {
        body: Some(Body::Hello(wire::Hello {
            protocol: PROTOCOL,
            node: node.code().to_string(),
            applied_through,
            epoch: node.epoch().to_owned(),
            applied_epoch: applied_epoch.to_owned(),
        })),
    }
}

/// Our cursor into `peer`'s log, and the epoch it refers to. A cursor taken
/// against a previous incarnation of the peer's store restarts at zero.
pub async fn our_cursor(
    node: &Node,
    peer: &DivisionCode,
    peer_epoch: Option<&str>,
) -> Result<(u64, String), LinkError> {
    Ok(match node.cursor(peer).await? {
        Some(c) if peer_epoch.is_none_or(|e| e == c.peer_epoch) => {
            (c.applied_through, c.peer_epoch)
        }
        Some(c) => {
            warn!(peer = %peer, recorded = %c.peer_epoch, "peer store was recreated; reading its log from the start");
            (0, String::new())
        }
        None => (0, String::new()),
    })
}

/// Reads the peer's hello, the first frame of its stream.
pub async fn read_hello<S>(inbound: &mut S, peer_hint: &str) -> Result<wire::Hello, LinkError>
where
    S: Stream<Item = Result<wire::LinkFrame, tonic::Status>> + Unpin,
{
    let first = tokio::time::timeout(Duration::from_secs(15), inbound.next())
        .await
        .map_err(|_| LinkError::Protocol {
            peer: peer_hint.into(),
            reason: "no hello within 15 s".into(),
        })?;
    match first {
        Some(Ok(wire::LinkFrame {
            body: Some(Body::Hello(h)),
        })) => {
            if h.protocol != PROTOCOL {
                return Err(LinkError::Protocol {
                    peer: peer_hint.into(),
                    reason: format!(
                        "speaks protocol {}, this node speaks {PROTOCOL}",
                        h.protocol
                    ),
                });
            }
            Ok(h)
        }
        Some(Ok(_)) => Err(LinkError::Protocol {
            peer: peer_hint.into(),
            reason: "first frame is not a hello".into(),
        }),
        Some(Err(status)) => Err(LinkError::Peer(status)),
        None => Err(LinkError::Closed),
    }
}

/// Runs a session until either side ends it or `cancel` fires.
pub async fn run<S>(
    node: Arc<Node>,
    peer: DivisionCode,
    toward: Toward,
    peer_hello: wire::Hello,
    inbound: S,
    outbound: mpsc::Sender<wire::LinkFrame>,
    cancel: CancellationToken,
) -> Result<(), LinkError>
where
    S: Stream<Item = Result<wire::LinkFrame, tonic::Status>> + Unpin + Send + 'static,
{
    let labels = LinkLabels {
        peer: peer.to_string(),
        direction: direction(toward).into(),
    };
    // Where the peer says it is in our log; a cursor against another epoch of
    // our store, or beyond our head, is not ours: start over (apply is
    // idempotent, so resending is harmless, skipping is not).
    let head = node.head_seq().await?;
    let into_our_log =
        peer_hello.applied_epoch == node.epoch() && peer_hello.applied_through <= head;
    let start = if into_our_log {
        peer_hello.applied_through
    } else {
        if peer_hello.applied_through > 0 {
            warn!(peer = %peer, cursor = peer_hello.applied_through, "peer's cursor is not into this store's log; resending from the start");
        }
        0
    };
    // A peer that had read our log (it names a cursor) but not this
    // store's: we resend it all, and the link must resync until the peer
    // has acknowledged our head.
    let resync_out = (!into_our_log
        && (peer_hello.applied_through > 0 || !peer_hello.applied_epoch.is_empty()))
    .then(|| {
        let why = if peer_hello.applied_epoch != node.epoch() {
            format!(
                "this node's store has a new epoch since `{peer}` read its log (was `{}`, now `{}`); resending the log from the start",
                peer_hello.applied_epoch,
                node.epoch()
            )
        } else {
            format!(
                "`{peer}` has applied this node's log through {}, past its head {head} (a store restored without new-epoch?); resending the log from the start",
                peer_hello.applied_through
            )
        };
        (why, head)
    });
    // Our cursor into an earlier store of the peer: we read its new log
    // from the start.
    let resync_in = match node.cursor(&peer).await? {
        Some(c) if !c.peer_epoch.is_empty() && c.peer_epoch != peer_hello.epoch => Some(format!(
            "`{peer}`'s store has a new epoch (was `{}`, now `{}`); reading its log again from the start",
            c.peer_epoch, peer_hello.epoch
        )),
        _ => None,
    };
    node.metrics().link_up.get_or_create(&labels).set(1);
    node.metrics().link_sessions.get_or_create(&labels).inc();
    let session_number = node.links().update_at(peer.as_str(), toward, |l, clock| {
        l.peer_applied = start;
        l.session_up(resync_in, resync_out, clock)
    });
    info!(peer = %peer, direction = direction(toward), from_seq = start, "link session up");

    let session = cancel.child_token();
    let window = Arc::new(Semaphore::new(node.tuning().window));
    let sender = tokio::spawn(send_loop(
        node.clone(),
        peer.clone(),
        toward,
        start,
        outbound.clone(),
        window.clone(),
        session.clone(),
    ));
    let result = receive_loop(
        &node,
        &peer,
        toward,
        &peer_hello.epoch,
        inbound,
        &outbound,
        &window,
        &session,
    )
    .await;
    session.cancel();
    let sent = sender.await.unwrap_or(Ok(()));
    let result = result.and(sent);
    // A child that reconnected has a newer session on this link by now:
    // its state and gauges are that session's.
    let current = node.links().update_at(peer.as_str(), toward, |l, clock| {
        let ended = match &result {
            Ok(()) => "session ended".to_owned(),
            Err(e) => format!("session ended: {e}"),
        };
        let next = match toward {
            Toward::Child => "waiting for the child to dial again",
            Toward::Parent => "dialling again",
        };
        let current = l.session_ended(session_number, format!("{ended}; {next}"), clock);
        if current && let Err(e) = &result {
            l.last_error = e.to_string();
        }
        current
    });
    if current {
        node.metrics().link_up.get_or_create(&labels).set(0);
        node.metrics().link_stalled.get_or_create(&labels).set(0);
    }
    if result.is_err() {
        node.metrics().link_errors.get_or_create(&labels).inc();
    }
    result
}

/// What the acknowledgement and the link's status need of a received batch.
struct BatchMeta {
    /// The `through_seq` of every frame coalesced into it, in order.
    throughs: Vec<u64>,
    through: u64,
    head: u64,
    received: u64,
    newest_ms: Option<u64>,
}

impl BatchMeta {
    /// A received batch (`through`, `head`, record count) once screened.
    fn of(through: u64, head: u64, received: usize, screened: &ScreenedBatch) -> BatchMeta {
        BatchMeta {
            throughs: vec![through],
            through,
            head: head.max(through),
            received: received as u64,
            newest_ms: screened
                .newest()
                .map(|t| HlcTimestamp::from_u64(t).millis()),
        }
    }

    /// The batch that came next, written in the same transaction.
    fn absorb(&mut self, next: BatchMeta) {
        self.throughs.extend(next.throughs);
        self.through = next.through;
        self.head = self.head.max(next.head);
        self.received += next.received;
        self.newest_ms = self.newest_ms.max(next.newest_ms);
    }
}

/// A received batch on its way to the writer, its records being checked
/// on a blocking thread.
struct Queued {
    verified: tokio::task::JoinHandle<PreparedBatch>,
    meta: BatchMeta,
}

type Writer = tokio::task::JoinHandle<Result<(), LinkError>>;

/// Receives the peer's frames. Three stages run at once, so a catch-up
/// keeps both cores busy:
/// - this loop reads frames and screens each batch in arrival order
///   ([`Node::screen_from_peer`]: trust lists and keys taken in);
/// - up to [`VERIFYING`] batches have their records and signatures checked
///   on blocking threads ([`crate::node::ScreenedBatch::verify`]);
/// - [`write_loop`] writes them in order, every batch already verified
///   when a write begins joining it in one transaction (so the slower the
///   store, the larger its commits), and acknowledges each.
///
/// A write under way finishes whatever ends the loop; batches not written
/// yet are dropped, and the peer resends them from the cursor.
#[allow(clippy::too_many_arguments)]
async fn receive_loop<S>(
    node: &Arc<Node>,
    peer: &DivisionCode,
    toward: Toward,
    peer_epoch: &str,
    inbound: S,
    outbound: &mpsc::Sender<wire::LinkFrame>,
    window: &Semaphore,
    cancel: &CancellationToken,
) -> Result<(), LinkError>
where
    S: Stream<Item = Result<wire::LinkFrame, tonic::Status>> + Unpin,
{
    // The sender keeps at most `window` batches unacknowledged, which
    // bounds what waits here too.
    let (queue, queued) = mpsc::channel(node.tuning().window.max(1));
    let stop_writer = CancellationToken::new();
    let mut writer = Some(tokio::spawn(write_loop(
        node.clone(),
        peer.clone(),
        toward,
        peer_epoch.to_owned(),
        queued,
        outbound.clone(),
        stop_writer.clone(),
    )));
    let result = receive_frames(
        node,
        peer,
        toward,
        inbound,
        window,
        cancel,
        &queue,
        &mut writer,
    )
    .await;
    drop(queue);
    stop_writer.cancel();
    let written = match writer {
        Some(handle) => joined(handle.await, peer),
        None => Ok(()),
    };
    match (result, written) {
        // The writer's failure is why the reader found the queue closed.
        (Err(LinkError::Closed), Err(error)) => Err(error),
        (result, _) => result,
    }
}

fn joined(
    result: Result<Result<(), LinkError>, tokio::task::JoinError>,
    peer: &DivisionCode,
) -> Result<(), LinkError> {
    result.unwrap_or_else(|join| {
        Err(LinkError::Protocol {
            peer: peer.to_string(),
            reason: format!("writing batches failed: {join}"),
        })
    })
}

/// Acknowledges a written batch and updates the link's status.
async fn finish_batch(
    node: &Arc<Node>,
    peer: &DivisionCode,
    toward: Toward,
    labels: &LinkLabels,
    report: crate::store::ApplyReport,
    meta: BatchMeta,
    outbound: &mpsc::Sender<wire::LinkFrame>,
) -> Result<(), LinkError> {
    let BatchMeta {
        throughs,
        through,
        head,
        received,
        newest_ms,
    } = meta;
    let rejections: Vec<wire::Rejection> = report
        .refused
        .iter()
        .take(100)
        .map(|r| wire::Rejection {
            record_id: r.record_id.clone(),
            kind: r.kind.clone(),
            origin: r.origin.clone(),
            reason: r.reason.clone(),
        })
        .collect();
    node.metrics()
        .link_received
        .get_or_create(labels)
        .inc_by(received);
    let lag_seconds = if through >= head {
        0.0
    } else {
        newest_ms.map_or(0.0, |ms| (now_ms() - ms as i64).max(0) as f64 / 1000.0)
    };
    node.links().update_at(peer.as_str(), toward, |l, clock| {
        l.lag_seconds = lag_seconds;
        l.batch_applied(
            through,
            head,
            received,
            report.refused.len() as u64,
            report.refused.first().map(|r| r.reason.as_str()),
            clock,
        );
    });
    update_lag_metrics(node, peer, labels);
    // One ack per batch received, so the sender's window gets every slot
    // back; the counts ride on the last.
    let last = throughs.len() - 1;
    let mut rejections = Some(rejections);
    for (i, batch_through) in throughs.into_iter().enumerate() {
        let ack = if i == last {
            wire::Ack {
                through_seq: batch_through,
                applied: report.applied.len() as u32,
                rejected: report.refused.len() as u32,
                rejections: rejections.take().unwrap_or_default(),
            }
        } else {
            wire::Ack {
                through_seq: batch_through,
                ..Default::default()
            }
        };
        if outbound
            .send(wire::LinkFrame {
                body: Some(Body::Ack(ack)),
            })
            .await
            .is_err()
        {
            return Err(LinkError::Closed);
        }
    }
    Ok(())
}

/// Writes verified batches in arrival order, each with the cursor, and
/// acknowledges them. Every batch already verified when a write begins
/// joins it (up to [`COALESCE_RECORDS`]), so a store that falls behind
/// catches up in fewer, larger commits, while steady traffic is written at
/// once. Ends when `stop` fires (after the write under way) or the reader
/// drops the queue.
async fn write_loop(
    node: Arc<Node>,
    peer: DivisionCode,
    toward: Toward,
    peer_epoch: String,
    mut queued: mpsc::Receiver<Queued>,
    outbound: mpsc::Sender<wire::LinkFrame>,
    stop: CancellationToken,
) -> Result<(), LinkError> {
    let labels = LinkLabels {
        peer: peer.to_string(),
        direction: direction(toward).into(),
    };
    let mut waiting: std::collections::VecDeque<Queued> = Default::default();
    loop {
        let first = match waiting.pop_front() {
            Some(next) if !stop.is_cancelled() => next,
            Some(_) => return Ok(()),
            None => tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                next = queued.recv() => match next {
                    Some(next) => next,
                    None => return Ok(()),
                },
            },
        };
        let mut prepared = verified(first.verified, &peer).await?;
        let mut meta = first.meta;
        while let Ok(next) = queued.try_recv() {
            waiting.push_back(next);
        }
        while prepared.len() < COALESCE_RECORDS
            && waiting.front().is_some_and(|q| q.verified.is_finished())
        {
            let next = waiting.pop_front().expect("checked above");
            prepared.absorb(verified(next.verified, &peer).await?);
            meta.absorb(next.meta);
        }
        let report = node.commit_from_peer(&peer, &peer_epoch, prepared).await?;
        finish_batch(&node, &peer, toward, &labels, report, meta, &outbound).await?;
    }
}

async fn verified(
    handle: tokio::task::JoinHandle<PreparedBatch>,
    peer: &DivisionCode,
) -> Result<PreparedBatch, LinkError> {
    handle.await.map_err(|join| LinkError::Protocol {
        peer: peer.to_string(),
        reason: format!("checking a batch failed: {join}"),
    })
}

#[allow(clippy::too_many_arguments)]
async fn receive_frames<S>(
    node: &Arc<Node>,
    peer: &DivisionCode,
    toward: Toward,
    mut inbound: S,
    window: &Semaphore,
    cancel: &CancellationToken,
    queue: &mpsc::Sender<Queued>,
    writer: &mut Option<Writer>,
) -> Result<(), LinkError>
where
    S: Stream<Item = Result<wire::LinkFrame, tonic::Status>> + Unpin,
{
    let labels = LinkLabels {
        peer: peer.to_string(),
        direction: direction(toward).into(),
    };
    // The records in a batch from the peer travelled toward us, i.e. they
    // come from the peer's side of the link.
    let from = toward;
    let mut stall_check = tokio::time::interval(node.tuning().heartbeat);
    let verifying = Arc::new(Semaphore::new(VERIFYING));
    let silent_after = silent_after(node.tuning().heartbeat);
    let mut last_heard = tokio::time::Instant::now();
    loop {
        let frame = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = stall_check.tick() => {
                check_stall(node, peer, toward, &labels);
                if let Some(secs) = silent(node, peer, toward, last_heard, silent_after, queue) {
                    return Err(LinkError::Silent { peer: peer.to_string(), secs });
                }
                continue;
            }
            // The writer ends on its own only when it fails.
            written = async { writer.as_mut().expect("guarded").await }, if writer.is_some() => {
                writer.take();
                joined(written, peer)?;
                return Err(LinkError::Closed);
            }
            frame = inbound.next() => frame,
        };
        let frame = match frame {
            None => return Err(LinkError::Closed),
            Some(Err(status)) => return Err(LinkError::Peer(status)),
            Some(Ok(f)) => f,
        };
        last_heard = tokio::time::Instant::now();
        match frame.body {
            Some(Body::Batch(batch)) => {
                if from == Toward::Child
                    && let Some(reason) = node.revoked_now(peer)
                {
                    return Err(LinkError::Revoked { reason });
                }
                let (through, head, received) =
                    (batch.through_seq, batch.head_seq, batch.records.len());
                let screened = node.screen_from_peer(peer, from, batch).await?;
                let meta = BatchMeta::of(through, head, received, &screened);
                let slot = verifying
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                let verified = tokio::task::spawn_blocking(move || {
                    let prepared = screened.verify();
                    drop(slot);
                    prepared
                });
                if queue.send(Queued { verified, meta }).await.is_err() {
                    return Err(LinkError::Closed);
                }
            }
            Some(Body::Ack(ack)) => {
                window.add_permits(1);
                if !ack.rejections.is_empty() {
                    for r in &ack.rejections {
                        warn!(peer = %peer, kind = %r.kind, origin = %r.origin, reason = %r.reason, "peer rejected a record we sent");
                    }
                }
                node.links().update_at(peer.as_str(), toward, |l, clock| {
                    l.acknowledged(ack.through_seq, clock)
                });
            }
            Some(Body::Heartbeat(hb)) => {
                node.links().update_at(peer.as_str(), toward, |l, clock| {
                    l.heard_head(hb.head_seq, clock)
                });
                update_lag_metrics(node, peer, &labels);
            }
            Some(Body::Hello(_)) => {
                return Err(LinkError::Protocol {
                    peer: peer.to_string(),
                    reason: "second hello in one session".into(),
                });
            }
            None => {
                return Err(LinkError::Protocol {
                    peer: peer.to_string(),
                    reason: "frame with no body".into(),
                });
            }
        }
    }
}

fn update_lag_metrics(node: &Node, peer: &DivisionCode, labels: &LinkLabels) {
    if let Some(l) = node.links().get(peer.as_str()) {
        node.metrics()
            .link_lag_changes
            .get_or_create(labels)
            .set(l.lag_changes() as i64);
        node.metrics()
            .link_lag_seconds
            .get_or_create(labels)
            .set(l.lag_seconds);
    }
}

/// How long a peer may send nothing before the session counts it hung: three
/// heartbeats (a caught-up sender sends one every heartbeat), at least 2 s.
fn silent_after(heartbeat: Duration) -> Duration {
    (heartbeat * 3).max(Duration::from_secs(2))
}

/// Whether the peer has been silent for `silent_after`, and for how long:
/// nothing heard from it, and nothing of its in hand here (no batch queued
/// for our writer, and our cursor not moved meanwhile; a peer waiting for
/// our acknowledgements is not silent, it is waiting for us).
fn silent(
    node: &Node,
    peer: &DivisionCode,
    toward: Toward,
    last_heard: tokio::time::Instant,
    silent_after: Duration,
    queue: &mpsc::Sender<Queued>,
) -> Option<f64> {
    let heard = last_heard.elapsed();
    if heard < silent_after || queue.capacity() < queue.max_capacity() {
        return None;
    }
    let progressed_ms = node
        .links()
        .get(peer.as_str())
        .map(|l| node.clock().now_ms() - l.last_progress_ms)?;
    let since_progress = Duration::from_millis(progressed_ms.max(0) as u64);
    (since_progress >= silent_after).then(|| {
        warn!(peer = %peer, direction = direction(toward), silent_s = heard.as_secs_f64(), "peer silent; ending the session");
        heard.as_secs_f64()
    })
}

/// A link with lag that has not moved its cursor for `stall_after` is
/// reported stalled, not silently waited on.
fn check_stall(node: &Node, peer: &DivisionCode, toward: Toward, labels: &LinkLabels) {
    let stall_after = node.tuning().stall_after.as_millis() as i64;
    let now = node.clock().now_ms();
    let stalled = node.links().update_at(peer.as_str(), toward, |l, clock| {
        let still = now - l.last_progress_ms;
        let stalled = l.lag_changes() > 0 && still >= stall_after;
        let why = stalled.then(|| {
            format!(
                "{} changes behind `{peer}` and no progress for {} s",
                l.lag_changes(),
                still / 1000
            )
        });
        let was = l.state;
        l.set_stalled(why, clock);
        if l.state == LinkState::Stalled && was != LinkState::Stalled {
            warn!(peer = %peer, lag = l.lag_changes(), "link stalled: behind and no progress");
        }
        stalled
    });
    node.metrics()
        .link_stalled
        .get_or_create(labels)
        .set(stalled as i64);
}
