//! Targets for what a peer sends over a link: a whole session's frames
//! (hello, batches, acknowledgements, heartbeats) through the real
//! [`session::run`], and one record through every check a node makes of
//! it, as a receiver and as a sender routing it on.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use tiersync_proto::types::DivisionCode;
use tiersync_proto::wire::{self, link_frame::Body};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::fixture::{self, COMMUNITY, COUNTY};
use crate::identity::origin::{signed_bytes, withdrawal_of};
use crate::route::{Toward, admit_child};
use crate::store::Encoded;
use crate::sync::{send, session};

/// Most frames one input is read as.
const MAX_FRAMES: usize = 32;
/// How long a session may take to acknowledge the input's batches before
/// its inbound stream ends anyway.
const ACK_WAIT: Duration = Duration::from_secs(10);

/// The link a session input is for: the street as the parent of the
/// community (`Toward::Child`) or as the child of the county.
fn side(first: u8) -> (DivisionCode, Toward) {
    if first & 1 == 0 {
        (fixture::code(COMMUNITY), Toward::Child)
    } else {
        (fixture::code(COUNTY), Toward::Parent)
    }
}

/// A session's inbound frames, as tonic yields them.
pub type Frames = Vec<Result<wire::LinkFrame, tonic::Status>>;

/// Reads an input as a session's frames: the first byte picks the side
/// ([`side`]), the rest is length-delimited `LinkFrame`s. A frame that does
/// not decode ends the stream with an error, as tonic ends it.
pub fn frames(data: &[u8]) -> Option<(DivisionCode, Toward, Frames)> {
    let (&first, mut rest) = data.split_first()?;
    let (peer, toward) = side(first);
    let mut frames = Vec::new();
    while !rest.is_empty() && frames.len() < MAX_FRAMES {
        match wire::LinkFrame::decode_length_delimited(&mut rest) {
            Ok(frame) => frames.push(Ok(frame)),
            Err(e) => {
                frames.push(Err(tonic::Status::internal(format!(
                    "failed to decode a LinkFrame: {e}"
                ))));
                break;
            }
        }
    }
    Some((peer, toward, frames))
}

/// A link session with the fixture street: the input's frames arrive as
/// the peer's stream, through the checks the server (or the dialling
/// child) makes of the hello and then [`session::run`], which screens,
/// verifies and commits every batch and acknowledges it. The stream ends
/// once every batch was acknowledged (or the session ended), so each input
/// runs to the same end.
pub fn link_session(data: &[u8]) {
    let Some((peer, toward, frames)) = frames(data) else {
        return;
    };
    let fx = fixture::node();
    let node = fx.node.clone();
    let batches = frames
        .iter()
        .filter(|f| {
            matches!(
                f,
                Ok(wire::LinkFrame {
                    body: Some(Body::Batch(_))
                })
            )
        })
        .count();
    fx.runtime.block_on(async move {
        if toward == Toward::Child
            && (admit_child(node.code(), &peer).is_err() || node.revoked_now(&peer).is_some())
        {
            return;
        }
        let (outbound, mut sent) = mpsc::channel::<wire::LinkFrame>(64);
        let (acked_tx, mut acked) = watch::channel(0usize);
        let drain = tokio::spawn(async move {
            let mut acks = 0;
            while let Some(frame) = sent.recv().await {
                if let Some(Body::Ack(_)) = frame.body {
                    acks += 1;
                    acked_tx.send_replace(acks);
                }
            }
        });
        let end = futures::stream::once(async move {
            let _ = tokio::time::timeout(ACK_WAIT, acked.wait_for(|n| *n >= batches)).await;
            None
        })
        .filter_map(|frame: Option<Result<wire::LinkFrame, tonic::Status>>| async move { frame });
        let mut inbound = Box::pin(futures::stream::iter(frames).chain(end));
        let Ok(hello) = session::read_hello(&mut inbound, peer.as_str()).await else {
            drop(outbound);
            let _ = drain.await;
            return;
        };
        if hello.node == peer.as_str() {
            let peer_epoch = (toward == Toward::Child).then_some(hello.epoch.as_str());
            if session::our_cursor(&node, &peer, peer_epoch).await.is_ok() {
                let _ = session::run(
                    node.clone(),
                    peer,
                    toward,
                    hello,
                    inbound,
                    outbound,
                    CancellationToken::new(),
                )
                .await;
            }
        } else {
            drop(outbound);
        }
        let _ = drain.await;
    });
}

/// One record's bytes as a peer sends them: decoded as the receiver keeps
/// it, checked as arriving from the street's child and from its parent,
/// its owner's signature verified; and routed on by the street as a sender
/// does from its stored bytes (only `RecordRoute` decoded). Checks that
/// the sender's and the receiver's decoders agree on the routing fields,
/// and that a record whose signature verifies still verifies as its
/// withdrawal and as whatever a sender makes of it.
pub fn record(data: &[u8]) {
    let fx = fixture::node();
    let node = &fx.node;
    let Ok(encoded) = Encoded::received(Bytes::copy_from_slice(data)) else {
        return;
    };
    let r = &encoded.record;
    let route = wire::RecordRoute::decode(data)
        .expect("bytes that decode as a Record decode as its RecordRoute");
    assert_eq!(
        (&route.owner, &route.scope, &route.reach, route.withdrawn),
        (&r.owner, &r.scope, &r.reach, r.withdrawn),
        "a sender reads other routing fields than the receiver"
    );
    for (peer, from) in [(COMMUNITY, Toward::Child), (COUNTY, Toward::Parent)] {
        let _ = node.check_incoming(r, &fixture::code(peer), from);
    }
    let _ = signed_bytes(r);
    let verified = node.keyring().verify(&[r]).pop().expect("one verdict");
    if verified.is_ok() && !r.withdrawn {
        let withdrawal = withdrawal_of(r.clone());
        assert_eq!(
            node.keyring()
                .verify(&[&withdrawal])
                .pop()
                .expect("one verdict"),
            Ok(()),
            "the withdrawal of a record whose signature verifies does not verify"
        );
    }
    route_on(node, &encoded, verified.is_ok());
}

/// What the street's sender makes of a record it stored (`stored.body`,
/// the bytes [`Encoded::received`] kept) for each of its links: the
/// record, a withdrawal or nothing, decoding only the routing fields.
fn route_on(node: &crate::node::Node, stored: &Encoded, verified: bool) {
    for (peer, toward) in [
        (COMMUNITY, Toward::Child),
        ("511102004002", Toward::Child),
        (COUNTY, Toward::Parent),
    ] {
        let Some(out) = send::outgoing(node, stored.body.clone(), &fixture::code(peer), toward)
        else {
            continue;
        };
        let sent = Encoded::received(out).expect("what a sender sends decodes as a Record");
        let checked = node
            .keyring()
            .verify(&[&sent.record])
            .pop()
            .expect("one verdict");
        assert!(
            !verified || checked.is_ok(),
            "a record whose signature verifies was sent on as one that does not: {checked:?}"
        );
    }
}
