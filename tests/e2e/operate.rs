//! What an operator sees: the admin endpoints and the quarantine.

use std::io::{Read, Write};

use tiersync_e2e::{Cluster, FakeChild, envelope, eventually, holds, put_resident};
use tiersync_proto::types::Tier;
use tiersync_proto::wire::{self, local_api_client::LocalApiClient};

/// A plain HTTP GET (the admin listener is plain HTTP on loopback).
pub(crate) fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_show_links_lag_and_counts() {
    let cluster = Cluster::with(&["5111", "511102", "511102004", "511102004001"]).await;
    let r = put_resident(&cluster.node("511102004001"), 1).await;
    let city = cluster.node("5111");
    eventually("the resident at the city", || holds(&city, &r.id)).await;
    let admin = cluster.running("511102").admin_addr.unwrap();
    let metrics = tokio::task::spawn_blocking(move || get(admin, "/metrics"))
        .await
        .unwrap();
    assert_eq!(metrics.0, 200);
    for needle in [
        "tiersync_link_up{peer=\"5111\",direction=\"parent\"} 1",
        "tiersync_link_up{peer=\"511102004\",direction=\"child\"} 1",
        "tiersync_sync_records_applied_total{kind=\"civil.v1.Resident\"} 1",
        "tiersync_link_lag_changes",
        "tiersync_link_lag_seconds",
        "tiersync_store_head_seq",
    ] {
        assert!(
            metrics.1.contains(needle),
            "/metrics lacks `{needle}`:\n{}",
            metrics.1
        );
    }
    let (ready, _) = tokio::task::spawn_blocking(move || get(admin, "/readyz"))
        .await
        .unwrap();
    assert_eq!(ready, 200);
    let (page_status, page) = tokio::task::spawn_blocking(move || get(admin, "/"))
        .await
        .unwrap();
    assert_eq!(page_status, 200);
    assert!(
        page.contains("tiersync 511102") && page.contains("511102004") && page.contains(">up<"),
        "{page}"
    );
    let (_, json) = tokio::task::spawn_blocking(move || get(admin, "/status.json"))
        .await
        .unwrap();
    assert!(json.contains("\"direction\": \"child\""), "{json}");
    let (missing, _) = tokio::task::spawn_blocking(move || get(admin, "/nope"))
        .await
        .unwrap();
    assert_eq!(missing, 404);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantined_records_can_be_listed_and_replayed() {
    let cluster = Cluster::with(&["5111", "511102", "511102004"]).await;
    let mut child = FakeChild::connect(&cluster, "511102004001", "511102004")
        .await
        .unwrap();
    let payload = prost::Message::encode_to_vec(&tiersync_e2e::resident(4));
    let v2 = envelope(
        "511102004001",
        "civil.v1.Resident",
        2,
        payload.clone(),
        Tier::City,
    );
    let v1 = wire::Record {
        version: 1,
        ..v2.clone()
    };
    let forged = envelope("511102005001", "civil.v1.Resident", 1, payload, Tier::City);
    child.send_batch(1, vec![v2]).await.unwrap();
    let ack = child.send_batch(2, vec![v1, forged]).await.unwrap();
    assert_eq!(ack.rejected, 2);

    let mut api = LocalApiClient::connect(format!(
        "http://{}",
        cluster.running("511102004").api_addr.unwrap()
    ))
    .await
    .unwrap();
    let list = api
        .list_quarantine(wire::ListQuarantineRequest { limit: 10 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.entries.len(), 2);
    let status = api
        .status(wire::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.quarantined, 2);
    let stale = list
        .entries
        .iter()
        .find(|e| e.reason.contains("stale"))
        .unwrap();
    let forged = list
        .entries
        .iter()
        .find(|e| e.reason.contains("forged"))
        .unwrap();

    // a forged record stays forged: replay refuses it again, with the reason
    let again = api
        .replay_quarantine(wire::ReplayQuarantineRequest { qid: forged.qid })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.applied);
    assert!(again.reason.contains("forged origin"), "{}", again.reason);
    // a stale version is superseded by what is held: the entry closes
    let closed = api
        .replay_quarantine(wire::ReplayQuarantineRequest { qid: stale.qid })
        .await
        .unwrap()
        .into_inner();
    assert!(!closed.applied);
    assert_eq!(
        closed.reason,
        "superseded: version 2 is already held; entry closed"
    );
    let list = api
        .list_quarantine(wire::ListQuarantineRequest { limit: 10 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.entries.len(), 1);
    let err = api
        .replay_quarantine(wire::ReplayQuarantineRequest { qid: stale.qid })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_makes_no_progress_is_reported_stalled() {
    let cluster = Cluster::with(&["5111", "511102", "511102004"]).await;
    let child = FakeChild::connect(&cluster, "511102004001", "511102004")
        .await
        .unwrap();
    // The child claims 50 changes and never sends them.
    child
        .tx
        .send(wire::LinkFrame {
            body: Some(wire::link_frame::Body::Heartbeat(wire::Heartbeat {
                head_seq: 50,
                sent_at_ms: 0,
            })),
        })
        .await
        .unwrap();
    let street = cluster.node("511102004");
    eventually("the link reported stalled", || async {
        street.links().get("511102004001").is_some_and(|l| {
            l.state == tiersync::sync::links::LinkState::Stalled && l.lag_changes() == 50
        })
    })
    .await;
    let admin = cluster.running("511102004").admin_addr.unwrap();
    let (_, metrics) = tokio::task::spawn_blocking(move || get(admin, "/metrics"))
        .await
        .unwrap();
    assert!(
        metrics.contains("tiersync_link_stalled{peer=\"511102004001\",direction=\"child\"} 1"),
        "{metrics}"
    );
    drop(child);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_listed_and_an_unreachable_parent_shows_retrying() {
    let mut cluster = Cluster::with(&["5111", "511102"]).await;
    let street = cluster.node("511102");
    let worker = |name: &'static str| {
        let street = street.clone();
        move || street.workers().get(name)
    };
    eventually("the parent link up", || {
        let w = worker("parent-link")();
        async move { w.is_some_and(|w| w.state.as_str() == "up") }
    })
    .await;
    let admin = cluster.running("511102").admin_addr.unwrap();
    let (_, json) = tokio::task::spawn_blocking(move || get(admin, "/status.json"))
        .await
        .unwrap();
    for name in [
        "group-commit",
        "group-signer",
        "parent-link",
        "trust",
        "admin",
        // the SQLite store's own loop
        "wal-checkpoint",
    ] {
        assert!(json.contains(&format!("\"name\": \"{name}\"")), "{json}");
    }
    let (_, page) = tokio::task::spawn_blocking(move || get(admin, "/"))
        .await
        .unwrap();
    assert!(
        page.contains("<h2>workers</h2>") && page.contains("parent-link"),
        "{page}"
    );
    let (_, metrics) = tokio::task::spawn_blocking(move || get(admin, "/metrics"))
        .await
        .unwrap();
    assert!(
        metrics.contains("tiersync_worker_errors_total{worker=\"parent-link\"} 0")
            && metrics.contains("tiersync_worker_queue_length{worker=\"group-commit\"}"),
        "{metrics}"
    );
    // the city sees its child's session as a worker of its own
    let city = cluster.node("5111");
    eventually("the child link at the city", || {
        let up = city
            .workers()
            .get("child-link:511102")
            .is_some_and(|w| w.state.as_str() == "up");
        async move { up }
    })
    .await;

    let mut api = LocalApiClient::connect(format!(
        "http://{}",
        cluster.running("511102").api_addr.unwrap()
    ))
    .await
    .unwrap();
    let status = api
        .status(wire::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = status.workers.iter().map(|w| w.name.as_str()).collect();
    assert!(
        names.contains(&"group-commit") && names.contains(&"parent-link"),
        "{names:?}"
    );
    let report =
        tiersync::ops::status::StatusReport::from_wire(&status, tiersync::clock::now_ms()).unwrap();
    let printed = tiersync::cli::format_status(&report, false);
    assert!(
        printed.contains("workers:") && printed.contains("parent-link"),
        "{printed}"
    );

    // the parent goes away: the link retries, with the error it met
    cluster.stop("5111").await;
    eventually("the parent link retrying with its last error", || {
        let w = worker("parent-link")();
        async move {
            w.is_some_and(|w| {
                w.state.as_str() == "retrying" && w.errors > 0 && !w.last_error.is_empty()
            })
        }
    })
    .await;
    let status = api
        .status(wire::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let link = status
        .workers
        .iter()
        .find(|w| w.name == "parent-link")
        .unwrap();
    // it may be between attempts or dialling again, but the error stays
    assert!(link.errors > 0 && !link.last_error.is_empty(), "{link:?}");
    assert!(link.last_error_ms > 0, "{link:?}");
    cluster.shutdown().await;
}
