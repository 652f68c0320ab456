//! The chain with the county and the city on PostgreSQL and the street and
//! community on SQLite: it converges exactly as on SQLite alone, and a
//! PostgreSQL-backed county killed mid-stream loses and duplicates nothing.
//! Each PostgreSQL node gets its own scratch schema on the server at
//! 127.0.0.1:5432 (or `TIERSYNC_TEST_PG`); without one the tests print a
//! skip line.

use tiersync::node::Reader;
use tiersync_e2e::{Cluster, all_hold, eventually, kill_mid_backlog, put_resident, records_held};

const CHAIN: &[&str] = &["5111", "511102", "511102004", "511102004001"];
const ON_POSTGRES: &[&str] = &["5111", "511102"];

/// A cluster with the city and county on PostgreSQL, or `None` (skip line
/// printed) without a server.
async fn mixed_chain(test: &str) -> Option<Cluster> {
    let mut cluster = Cluster::new();
    for code in ON_POSTGRES {
        if !cluster.on_postgres(code, test).await {
            return None;
        }
    }
    for code in CHAIN {
        cluster.start(code).await;
    }
    Some(cluster)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_with_county_and_city_on_postgres_converges_exactly_once() {
    let Some(cluster) =
        mixed_chain("chain_with_county_and_city_on_postgres_converges_exactly_once").await
    else {
        return;
    };
    assert!(
        cluster
            .postgres_url("511102")
            .is_some_and(|u| u.starts_with("postgres://"))
    );
    let community = cluster.node("511102004001");
    let mut ids = Vec::new();
    for n in 0..50 {
        ids.push(put_resident(&community, n).await.id);
    }
    eventually("all 50 residents at street, county and city", || {
        all_hold(&cluster, &CHAIN[..3], &ids)
    })
    .await;
    for node in &CHAIN[..3] {
        let n = cluster.node(node);
        assert_eq!(records_held(&n).await, 50, "{node} holds each once");
        assert_eq!(n.quarantined_count().await.unwrap(), 0, "{node}");
    }
    // a lookup by natural key works on the PostgreSQL city as on SQLite
    let city = cluster.node("5111");
    let first = community
        .reads(Reader::Node)
        .get(&ids[0])
        .await
        .unwrap()
        .unwrap();
    let key = &first.keys[0];
    let found = city
        .reads(Reader::Node)
        .lookup(&first.kind, &key.name, &key.value)
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, ids[0]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_postgres_county_loses_and_duplicates_nothing() {
    let Some(mut cluster) =
        mixed_chain("killed_postgres_county_loses_and_duplicates_nothing").await
    else {
        return;
    };
    kill_mid_backlog(&mut cluster, "511102").await;
    for node in ["511102004", "511102", "5111"] {
        let n = cluster.node(node);
        assert_eq!(n.quarantined_count().await.unwrap(), 0, "{node}");
    }
    // the county's cursor into the street's log is exactly the street's head
    let street = cluster.node("511102004");
    let county = cluster.node("511102");
    eventually("the county's cursor reaches the street's head", || async {
        let cursor = county.cursor(&"511102004".parse().unwrap()).await.unwrap();
        cursor.map(|c| c.applied_through) == Some(street.head_seq().await.unwrap())
    })
    .await;
    cluster.shutdown().await;
}
