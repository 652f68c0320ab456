//! The sending half of a link session: streams this node's change log
//! after the peer's cursor, filtered per record by [`route::delivery`], in
//! bounded batches with at most `window` unacknowledged; caught up, it
//! waits for new changes and sends heartbeats with its head. Records go out
//! as the bytes they are stored as (only their routing fields are decoded).

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use tiersync_proto::types::DivisionCode;
use tiersync_proto::wire::{self, link_frame::Body};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::LinkError;
use crate::clock::now_ms;
use crate::node::Node;
use crate::ops::metrics::LinkLabels;
use crate::route::{self, Delivery, Scope, Toward};
use crate::sync::links::direction;

/// What of a stored record goes to the peer, if anything: its stored bytes
/// as they are, or a withdrawal. Only the fields that route it are decoded.
pub(crate) fn outgoing(
    node: &Node,
    body: Bytes,
    peer: &DivisionCode,
    toward: Toward,
) -> Option<Bytes> {
    let route = wire::RecordRoute::decode(&body[..]).ok()?;
    let owner = DivisionCode::parse(&route.owner.as_ref()?.node).ok()?;
    let scope = Scope::from_wire(&owner, route.scope.as_ref()).ok()?;
    let reach = Scope::from_wire(&owner, route.reach.as_ref().or(route.scope.as_ref())).ok()?;
    match route::delivery(&scope, &reach, &owner, node.code(), peer, toward) {
        Delivery::Skip => None,
        // We hold only a withdrawal; we cannot give the peer what we no
        // longer have.
        Delivery::Full if route.withdrawn => None,
        Delivery::Full => Some(body),
        Delivery::Withdrawal => {
            let record = wire::Record::decode(body).ok()?;
            Some(
                crate::identity::origin::withdrawal_of(record)
                    .encode_to_vec()
                    .into(),
            )
        }
    }
}

pub(super) async fn send_loop(
    node: Arc<Node>,
    peer: DivisionCode,
    toward: Toward,
    start: u64,
    outbound: mpsc::Sender<wire::LinkFrame>,
    window: Arc<Semaphore>,
    cancel: CancellationToken,
) -> Result<(), LinkError> {
    let labels = LinkLabels {
        peer: peer.to_string(),
        direction: direction(toward).into(),
    };
    let mut head_rx = node.subscribe_head();
    let mut scanned = start;
    let mut announced = start;
    let mut heartbeat = tokio::time::interval(node.tuning().heartbeat);
    let batch_records = node.tuning().batch_records;
    let batch_bytes = node.tuning().batch_bytes;
    // What route::delivery would send in this direction at all, filtered in
    // the store (scope is still decided per record by `outgoing`).
    let owners = route::Owners::toward(node.code(), &peer, toward);
    loop {
        if cancel.is_cancelled() {
            return Ok(());
        }
        // Marked seen before reading, so a change committed while we read
        // wakes the wait below instead of being passed over.
        head_rx.borrow_and_update();
        let page = node
            .link_page(scanned, batch_records as u32, &owners)
            .await?;
        let mut records = Vec::new();
        let mut bytes = 0usize;
        let mut through = page.through;
        let mut caught_up = page.caught_up;
        for change in page.changes {
            if let Some(r) = outgoing(&node, change.body, &peer, toward) {
                let len = r.len();
                if !records.is_empty() && bytes + len > batch_bytes {
                    // The rest of the page goes in the next batch.
                    through = scanned;
                    caught_up = false;
                    break;
                }
                bytes += len;
                records.push(r);
            }
            scanned = change.seq;
        }
        scanned = scanned.max(through);
        if !records.is_empty() {
            let n = records.len() as u64;
            send_batch(&node, &outbound, &window, &cancel, scanned, records).await?;
            announced = scanned;
            node.metrics().link_sent.get_or_create(&labels).inc_by(n);
            node.links()
                .update(peer.as_str(), toward, |l| l.records_out += n);
            debug!(peer = %peer, through = scanned, records = n, "batch sent");
        } else if scanned > announced
            && (caught_up || scanned - announced >= crate::store::LINK_SCAN_SPAN)
        {
            // Everything read was filtered out: tell the peer so its cursor
            // moves and it reports no lag.
            send_batch(&node, &outbound, &window, &cancel, scanned, Vec::new()).await?;
            announced = scanned;
        }
        if !caught_up {
            continue;
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            changed = head_rx.changed() => if changed.is_err() { return Ok(()) },
            _ = heartbeat.tick() => {
                let hb = wire::Heartbeat { head_seq: node.head_seq().await?, sent_at_ms: now_ms() };
                if outbound.send(wire::LinkFrame { body: Some(Body::Heartbeat(hb)) }).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

async fn send_batch(
    node: &Node,
    outbound: &mpsc::Sender<wire::LinkFrame>,
    window: &Semaphore,
    cancel: &CancellationToken,
    through: u64,
    records: Vec<Bytes>,
) -> Result<(), LinkError> {
    tokio::select! {
        _ = cancel.cancelled() => return Err(LinkError::Closed),
        permit = window.acquire() => permit.map_err(|_| LinkError::Closed)?.forget(),
    }
    let batch = wire::Batch {
        through_seq: through,
        records,
        head_seq: node.head_seq().await?,
        sent_at_ms: now_ms(),
    };
    outbound
        .send(wire::LinkFrame {
            body: Some(Body::Batch(batch)),
        })
        .await
        .map_err(|_| LinkError::Closed)
}
