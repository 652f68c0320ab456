//! Scope decides who receives what, in both directions, and a narrowed
//! scope withdraws a record from the nodes that may no longer hold it.

use prost::Message;
use tiersync::node::{PutInput, Reader};
use tiersync_e2e::{Cluster, FakeChild, envelope, eventually, holds, put_resident};
use tiersync_proto::pb::gov;
use tiersync_proto::types::Tier;
use tiersync_proto::wire;

const TREE: &[&str] = &[
    "5111",
    "511102",
    "511102004",
    "511102004001",
    "511102004002",
    "511102006",
    "511102006001",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn county_notice_to_one_street_reaches_its_communities_and_no_others() {
    let cluster = Cluster::with(TREE).await;
    let county = cluster.node("511102");
    let notice = gov::v1::Notice {
        title: "通知".into(),
        body: "本周完成入户检查".into(),
        ..Default::default()
    };
    let sent = county
        .put(PutInput {
            kind: "gov.v1.Notice".into(),
            payload: notice.encode_to_vec(),
            scope: Some(wire::Scope {
                up_to: Tier::County.to_wire() as i32,
                down_to: vec!["511102004".into()],
                departments: vec![],
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let id = sent.stored.record.id;
    for c in ["511102004", "511102004001", "511102004002"] {
        let n = cluster.node(c);
        eventually(&format!("the notice at {c}"), || holds(&n, &id)).await;
    }
    // Markers the county sends after the notice, down the other branch and up
    // to the city, travel the same links in log order: once they arrive,
    // those links have passed the notice by.
    let put_notice = |up_to: Tier, down_to: Vec<String>| {
        let county = county.clone();
        async move {
            county
                .put(PutInput {
                    kind: "gov.v1.Notice".into(),
                    payload: gov::v1::Notice {
                        title: "marker".into(),
                        ..Default::default()
                    }
                    .encode_to_vec(),
                    scope: Some(wire::Scope {
                        up_to: up_to.to_wire() as i32,
                        down_to,
                        departments: vec![],
                    }),
                    ..Default::default()
                })
                .await
                .unwrap()
                .stored
                .record
                .id
        }
    };
    let down_marker = put_notice(Tier::County, vec!["511102006".into()]).await;
    let up_marker = put_notice(Tier::City, vec![]).await;
    let city = cluster.node("5111");
    let other = cluster.node("511102006001");
    eventually("the down marker at 511102006001", || {
        holds(&other, &down_marker)
    })
    .await;
    eventually("the up marker at the city", || holds(&city, &up_marker)).await;
    for c in ["5111", "511102006", "511102006001"] {
        assert!(
            !holds(&cluster.node(c), &id).await,
            "node {c} must not hold the notice"
        );
    }
    // and a community's resident goes up only: never to a sibling community
    let resident = put_resident(&cluster.node("511102004001"), 1).await;
    eventually("the resident at the city", || holds(&city, &resident.id)).await;
    assert!(!holds(&cluster.node("511102004002"), &resident.id).await);
    assert!(!holds(&cluster.node("511102006"), &resident.id).await);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_scoped_to_the_street_stays_below_the_county() {
    let cluster = Cluster::with(&["5111", "511102", "511102004", "511102004001"]).await;
    let community = cluster.node("511102004001");
    let local = community
        .put(PutInput {
            kind: "civil.v1.Resident".into(),
            payload: tiersync_e2e::resident(1).encode_to_vec(),
            scope: Some(wire::Scope {
                up_to: Tier::Street.to_wire() as i32,
                down_to: vec![],
                departments: vec![],
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .stored
        .record;
    let shared = put_resident(&community, 2).await;
    let city = cluster.node("5111");
    eventually("the city-scoped resident at the city", || {
        holds(&city, &shared.id)
    })
    .await;
    assert!(holds(&cluster.node("511102004"), &local.id).await);
    assert!(!holds(&cluster.node("511102"), &local.id).await);
    assert!(!holds(&city, &local.id).await);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowing_a_scope_withdraws_the_record_upstream() {
    let cluster = Cluster::with(&["5111", "511102", "511102004", "511102004001"]).await;
    let community = cluster.node("511102004001");
    let r = put_resident(&community, 3).await;
    let city = cluster.node("5111");
    eventually("the resident at the city", || holds(&city, &r.id)).await;
    community
        .put(PutInput {
            id: r.id.clone(),
            kind: "civil.v1.Resident".into(),
            payload: tiersync_e2e::resident(3).encode_to_vec(),
            expected_version: 1,
            scope: Some(wire::Scope {
                up_to: Tier::Street.to_wire() as i32,
                down_to: vec![],
                departments: vec![],
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    for n in ["511102", "5111"] {
        let node = cluster.node(n);
        eventually(&format!("a withdrawal at {n}"), || async {
            node.reads(Reader::Operator)
                .get(&r.id)
                .await
                .unwrap()
                .is_some_and(|r| r.withdrawn && r.payload.is_empty() && r.version == 2)
        })
        .await;
    }
    let street = cluster
        .node("511102004")
        .reads(Reader::Node)
        .get(&r.id)
        .await
        .unwrap()
        .unwrap();
    assert!(!street.withdrawn && !street.payload.is_empty() && street.version == 2);
    // nothing personal is left behind at the city
    assert!(
        city.reads(Reader::Node)
            .lookup("civil.v1.Resident", "id_digest", &r.keys[0].value)
            .await
            .unwrap()
            .is_empty()
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinds_a_node_does_not_know_are_relayed_unchanged() {
    let cluster = Cluster::with(&["5111", "511102", "511102004"]).await;
    let mut child = FakeChild::connect(&cluster, "511102004003", "511102004")
        .await
        .unwrap();
    let future = envelope(
        "511102004003",
        "survey.v3.Questionnaire",
        1,
        vec![8, 1, 18, 3, 0xE4, 0xB8, 0xAD],
        Tier::City,
    );
    let ack = child.send_batch(1, vec![future.clone()]).await.unwrap();
    assert_eq!((ack.applied, ack.rejected), (1, 0), "{:?}", ack.rejections);
    let city = cluster.node("5111");
    eventually("the unknown kind at the city", || holds(&city, &future.id)).await;
    let at_city = city
        .reads(Reader::Node)
        .get(&future.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(at_city.payload, future.payload, "relayed byte for byte");
    cluster.shutdown().await;
}
