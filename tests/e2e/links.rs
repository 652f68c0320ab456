//! Link states as operators read them, from whole nodes over real TLS: a
//! link whose records go to quarantine is `quarantining`, a link resending
//! a log from the start is `must-resync`, each with its reason and since
//! when, the same in the link table, the `Status` call, `/status.json`,
//! `tiersync status` and `/metrics`; and each returns to `ok` by itself.

use std::time::{Duration, Instant};

use tiersync::ops::status::StatusReport;
use tiersync::sync::links::LinkState;
use tiersync_e2e::{Cluster, FakeChild, envelope, eventually};
use tiersync_proto::pb::civil;
use tiersync_proto::types::Tier;
use tiersync_proto::wire::{self, link_frame::Body, local_api_client::LocalApiClient};

use crate::operate::get;

const CHAIN: &[&str] = &["5111", "511102", "511102004"];
const STREET: &str = "511102004";
const CHILD: &str = "511102004001";

fn resident(id_number: &str) -> Vec<u8> {
    use prost::Message;
    civil::v1::Resident {
        name: "赵六".into(),
        id_number: id_number.into(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// `(state, reason)` of the street's link to the child, if listed.
fn link_of(cluster: &Cluster) -> Option<(LinkState, String)> {
    cluster
        .node(STREET)
        .links()
        .get(CHILD)
        .map(|l| (l.state, l.reason))
}

async fn wait_for(cluster: &Cluster, state: LinkState) {
    eventually(&format!("the link {state}"), || {
        let now = link_of(cluster);
        async move { now.is_some_and(|(s, _)| s == state) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_going_to_quarantine_make_a_link_quarantining_until_a_clean_batch() {
    let cluster = Cluster::with(CHAIN).await;
    let mut child = FakeChild::connect(&cluster, CHILD, STREET).await.unwrap();
    wait_for(&cluster, LinkState::Ok).await;

    // A record owned outside the child's subtree: a forged origin.
    let forged = envelope(
        "511102004002",
        "civil.v1.Resident",
        1,
        resident("11010519491231002X"),
        Tier::City,
    );
    let ack = child.send_batch(1, vec![forged]).await.unwrap();
    assert_eq!((ack.applied, ack.rejected), (0, 1));
    let (state, reason) = link_of(&cluster).unwrap();
    assert_eq!(state, LinkState::Quarantining);
    assert!(
        reason
            .starts_with("1 of 1 records in the last batch went to quarantine; the first: record ")
            && reason.contains("forged origin: record owned by `511102004002` arrived from child"),
        "{reason}"
    );
    let since = cluster.node(STREET).links().get(CHILD).unwrap().since_ms;

    // Every view reads the same state.
    let running = cluster.running(STREET);
    let admin = running.admin_addr.unwrap();
    let (metrics, json) = tokio::task::spawn_blocking(move || {
        (get(admin, "/metrics").1, get(admin, "/status.json").1)
    })
    .await
    .unwrap();
    assert!(
        metrics.contains("tiersync_links{state=\"quarantining\"} 1"),
        "{metrics}"
    );
    let body = &json[json.find("\r\n\r\n").unwrap() + 4..];
    let status: serde_json::Value = serde_json::from_str(body).unwrap();
    let link = status["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["peer"] == CHILD)
        .unwrap();
    assert_eq!(link["state"], "quarantining");
    assert_eq!(link["reason"].as_str(), Some(reason.as_str()));
    assert_eq!(link["since_ms"].as_i64(), Some(since));

    let mut api = LocalApiClient::connect(format!("http://{}", running.api_addr.unwrap()))
        .await
        .unwrap();
    let wire_status = api
        .status(wire::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let report = StatusReport::from_wire(&wire_status, tiersync::clock::now_ms()).unwrap();
    let problems = report.clone().problems_only();
    assert_eq!(
        problems
            .links
            .iter()
            .map(|l| (l.peer.as_str(), l.state.as_str()))
            .collect::<Vec<_>>(),
        vec![(CHILD, "quarantining")]
    );
    let printed = tiersync::cli::format_status(&problems, true);
    assert!(
        printed.contains(CHILD) && printed.contains("quarantining"),
        "{printed}"
    );
    assert!(printed.contains(" UTC ("), "a human time: {printed}");
    assert!(!printed.contains("511102 "), "only problems: {printed}");

    // A batch that applies in full: ok again.
    let honest = envelope(
        CHILD,
        "civil.v1.Resident",
        1,
        resident("11010519491231002X"),
        Tier::City,
    );
    let ack = child.send_batch(2, vec![honest]).await.unwrap();
    assert_eq!((ack.applied, ack.rejected), (1, 0));
    assert_eq!(link_of(&cluster).unwrap().0, LinkState::Ok);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_into_another_epoch_makes_the_link_must_resync_until_acknowledged() {
    let cluster = Cluster::with(CHAIN).await;
    // The child had read the street's log of an earlier store (restored
    // and given a new epoch since): the street resends its log from the
    // start, and the link must resync until the child has it all.
    let mut child = FakeChild::connect_with_hello(&cluster, CHILD, STREET, |hello| {
        hello.applied_epoch = "an-earlier-epoch".into();
        hello.applied_through = 7;
    })
    .await
    .unwrap();
    wait_for(&cluster, LinkState::MustResync).await;
    let (_, reason) = link_of(&cluster).unwrap();
    assert!(
        reason.starts_with(&format!(
            "this node's store has a new epoch since `{CHILD}` read its log (was `an-earlier-epoch`, now `"
        )) && reason.ends_with("resending the log from the start"),
        "{reason}"
    );
    // Nothing acknowledged yet: it stays so.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(link_of(&cluster).unwrap().0, LinkState::MustResync);

    // The child applies and acknowledges what the street sends.
    let deadline = Instant::now() + Duration::from_secs(15);
    while link_of(&cluster).unwrap().0 != LinkState::Ok {
        assert!(Instant::now() < deadline, "still {:?}", link_of(&cluster));
        let frame = tokio::time::timeout(Duration::from_millis(200), child.inbound.message()).await;
        if let Ok(frame) = frame {
            let frame = frame.expect("the street's stream").expect("still open");
            if let Some(Body::Batch(batch)) = frame.body {
                child
                    .tx
                    .send(wire::LinkFrame {
                        body: Some(Body::Ack(wire::Ack {
                            through_seq: batch.through_seq,
                            ..Default::default()
                        })),
                    })
                    .await
                    .unwrap();
            }
        }
    }
    assert_eq!(link_of(&cluster).unwrap().1, "session up");
    cluster.shutdown().await;
}
