//! A community's records reach the city through street and county, and a
//! restarted or killed node loses and duplicates nothing.

use tiersync::node::Reader;
use tiersync_e2e::{Cluster, all_hold, eventually, kill_mid_backlog, put_resident, records_held};

const CHAIN: &[&str] = &["5111", "511102", "511102004", "511102004001"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn community_records_converge_at_the_city() {
    let cluster = Cluster::with(CHAIN).await;
    let community = cluster.node("511102004001");
    let mut ids = Vec::new();
    for n in 0..50 {
        ids.push(put_resident(&community, n).await.id);
    }
    eventually("all 50 residents at street, county and city", || {
        all_hold(&cluster, &CHAIN[..3], &ids)
    })
    .await;
    // exactly once: the city's log holds each record once
    let city = cluster.node("5111");
    assert_eq!(records_held(&city).await, 50);
    assert_eq!(city.quarantined_count().await.unwrap(), 0);
    // the street's link to the county reports no lag once caught up
    let street = cluster.node("511102004");
    eventually("link status caught up", || async {
        street.links().get("511102").is_some_and(|l| {
            l.state == tiersync::sync::links::LinkState::Ok && l.peer_applied >= 50
        })
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middle_node_restart_loses_and_duplicates_nothing() {
    let mut cluster = Cluster::with(CHAIN).await;
    let community = cluster.node("511102004001");
    let mut ids = Vec::new();
    for n in 0..30 {
        ids.push(put_resident(&community, n).await.id);
    }
    eventually("first 30 at the city", || {
        all_hold(&cluster, &["5111"], &ids)
    })
    .await;

    cluster.stop("511102004").await;
    for n in 30..80 {
        ids.push(put_resident(&community, n).await.id);
    }
    cluster.start("511102004").await;
    eventually("all 80 at the city after the street restarted", || {
        all_hold(&cluster, &CHAIN[..3], &ids)
    })
    .await;
    for node in &CHAIN[..3] {
        let n = cluster.node(node);
        assert_eq!(
            records_held(&n).await,
            80,
            "node {node} holds each record exactly once"
        );
        assert_eq!(
            n.quarantined_count().await.unwrap(),
            0,
            "node {node} rejected nothing"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_child_resumes_exactly_from_its_cursor() {
    let mut cluster = Cluster::with(CHAIN).await;
    let community = kill_mid_backlog(&mut cluster, "511102004").await;
    // the street's cursor into the community's log is exactly its head
    let street = cluster.node("511102004");
    let cursor = street
        .cursor(&"511102004001".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cursor.applied_through, community.head_seq().await.unwrap());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_and_updates_replicate() {
    let cluster = Cluster::with(CHAIN).await;
    let community = cluster.node("511102004001");
    let city = cluster.node("5111");
    let r = put_resident(&community, 1).await;
    let mut changed = tiersync_e2e::resident(1);
    changed.notes = "moved house".into();
    community
        .put(tiersync::node::PutInput {
            id: r.id.clone(),
            kind: "civil.v1.Resident".into(),
            payload: prost::Message::encode_to_vec(&changed),
            expected_version: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    eventually("version 2 at the city", || async {
        tiersync_e2e::version_at(&city, &r.id).await == Some(2)
    })
    .await;
    community
        .put(tiersync::node::PutInput {
            id: r.id.clone(),
            kind: "civil.v1.Resident".into(),
            expected_version: 2,
            delete: true,
            ..Default::default()
        })
        .await
        .unwrap();
    eventually("the tombstone at the city", || async {
        city.reads(Reader::Node)
            .get(&r.id)
            .await
            .unwrap()
            .is_some_and(|r| r.deleted && r.version == 3)
    })
    .await;
    cluster.shutdown().await;
}
