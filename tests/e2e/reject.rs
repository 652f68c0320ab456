//! Every bad input is refused with an error that names what is wrong, and
//! nothing already stored is touched.

use bytes::Bytes;
use prost::Message;
use tiersync::node::Reader;
use tiersync_e2e::{
    Cluster, FakeChild, envelope, eventually, fake_channel, holds, raw_link, records_held, sign_as,
};
use tiersync_proto::pb::civil;
use tiersync_proto::types::Tier;
use tiersync_proto::wire::{self, local_api_client::LocalApiClient};

const CHAIN: &[&str] = &["5111", "511102", "511102004"];

fn resident_payload(id_number: &str) -> Vec<u8> {
    civil::v1::Resident {
        name: "王五".into(),
        id_number: id_number.into(),
        ..Default::default()
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_from_another_county_is_refused() {
    let cluster = Cluster::with(CHAIN).await;
    // 511111 is 沙湾区, another county of Leshan: same CA, wrong subtree.
    let err = FakeChild::connect(&cluster, "511111100001", "511102004")
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        err.message(),
        "node `511111100001` is not a child of `511102004`: a child's code is `511102004` followed by 3 more digits"
    );
    // a grandchild may not skip its street either
    let err = FakeChild::connect(&cluster, "511102004001", "511102")
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        cluster
            .node("511102004")
            .links()
            .get("511111100001")
            .is_none()
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_origins_are_quarantined_and_the_rest_of_the_batch_applies() {
    let cluster = Cluster::with(CHAIN).await;
    let street = cluster.node("511102004");
    let mut child = FakeChild::connect(&cluster, "511102004001", "511102004")
        .await
        .unwrap();
    let honest = envelope(
        "511102004001",
        "civil.v1.Resident",
        1,
        resident_payload("11010519491231002X"),
        Tier::City,
    );
    let forged = envelope(
        "511102004002",
        "civil.v1.Resident",
        1,
        resident_payload("11010519491231002X"),
        Tier::City,
    );
    let ack = child
        .send_batch(2, vec![forged.clone(), honest.clone()])
        .await
        .unwrap();
    assert_eq!((ack.applied, ack.rejected), (1, 1));
    assert!(
        ack.rejections[0].reason.contains(
            "forged origin: record owned by `511102004002` arrived from child `511102004001`, but `511102004002` is outside `511102004001`'s subtree"
        ),
        "{}",
        ack.rejections[0].reason
    );
    assert!(holds(&street, &honest.id).await);
    assert!(!holds(&street, &forged.id).await);
    let q = street.quarantine_list(10).await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].origin, "511102004002");
    // the honest record travels on; the forged one never does
    let city = cluster.node("5111");
    eventually("the honest record at the city", || holds(&city, &honest.id)).await;
    assert!(!holds(&city, &forged.id).await);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_going_backwards_is_rejected() {
    let cluster = Cluster::with(CHAIN).await;
    let street = cluster.node("511102004");
    let mut child = FakeChild::connect(&cluster, "511102004001", "511102004")
        .await
        .unwrap();
    let v2 = envelope(
        "511102004001",
        "civil.v1.Resident",
        2,
        resident_payload("11010519491231002X"),
        Tier::City,
    );
    let v1 = wire::Record {
        version: 1,
        payload: resident_payload(&tiersync::demo::demo_id_number(0, 1)).into(),
        ..v2.clone()
    };
    assert_eq!(
        child.send_batch(1, vec![v2.clone()]).await.unwrap().applied,
        1
    );
    let ack = child.send_batch(2, vec![v1]).await.unwrap();
    assert_eq!(ack.rejected, 1);
    assert!(
        ack.rejections[0].reason.contains("stale version"),
        "{}",
        ack.rejections[0].reason
    );
    let held = street
        .reads(Reader::Node)
        .get(&v2.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((held.version, &held.payload), (2, &v2.payload));
    // the same version again is a harmless duplicate, not an error
    let ack = child.send_batch(3, vec![v2]).await.unwrap();
    assert_eq!((ack.applied, ack.rejected), (0, 0));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_id_numbers_are_refused_at_the_api_and_from_peers() {
    let cluster = Cluster::with(CHAIN).await;
    let street = cluster.node("511102004");
    let mut api = LocalApiClient::connect(format!(
        "http://{}",
        cluster.running("511102004").api_addr.unwrap()
    ))
    .await
    .unwrap();
    let err = api
        .put(wire::PutRequest {
            kind: "civil.v1.Resident".into(),
            payload: resident_payload("110105194912310021"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().starts_with("invalid id_number: "),
        "{}",
        err.message()
    );
    assert!(
        !err.message().contains("110105194912310021"),
        "the raw number must not leak: {}",
        err.message()
    );

    let mut child = FakeChild::connect(&cluster, "511102004001", "511102004")
        .await
        .unwrap();
    let bad = envelope(
        "511102004001",
        "civil.v1.Resident",
        1,
        resident_payload("110105194912310021"),
        Tier::City,
    );
    let ack = child.send_batch(1, vec![bad.clone()]).await.unwrap();
    assert_eq!(ack.rejected, 1);
    assert!(
        ack.rejections[0].reason.contains("id_number"),
        "{}",
        ack.rejections[0].reason
    );
    assert!(!holds(&street, &bad.id).await);
    assert_eq!(records_held(&street).await, 0);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kinds_are_refused_at_the_local_api() {
    let cluster = Cluster::with(&["5111"]).await;
    let mut api = LocalApiClient::connect(format!(
        "http://{}",
        cluster.running("5111").api_addr.unwrap()
    ))
    .await
    .unwrap();
    let err = api
        .put(wire::PutRequest {
            kind: "civil.v9.Pet".into(),
            payload: vec![],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "unknown kind `civil.v9.Pet`; this node accepts: civil.v1.Household, civil.v1.Resident, gov.v1.Notice, service.v1.Application, tiersync.v1.Department, tiersync.v1.Grant"
    );
    // a payload that is not the kind it claims
    let err = api
        .put(wire::PutRequest {
            kind: "gov.v1.Notice".into(),
            payload: vec![0xff, 0xff, 0xff],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message()
            .starts_with("invalid payload: payload is not a valid `gov.v1.Notice`"),
        "{}",
        err.message()
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_frames_end_the_session_and_touch_nothing() {
    let cluster = Cluster::with(CHAIN).await;
    let street = cluster.node("511102004");
    // something stored before, via an honest child
    let mut child = FakeChild::connect(&cluster, "511102004001", "511102004")
        .await
        .unwrap();
    let mut kept = envelope(
        "511102004001",
        "civil.v1.Resident",
        1,
        resident_payload("11010519491231002X"),
        Tier::City,
    );
    sign_as(&cluster, "511102004001", std::slice::from_mut(&mut kept));
    child.send_batch(1, vec![kept.clone()]).await.unwrap();
    drop(child);
    let before = street.head_seq().await.unwrap();

    // not protobuf at all
    let channel = fake_channel(&cluster, "511102004001", "511102004").await;
    let err = raw_link(
        channel,
        vec![Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f])],
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::InvalidArgument | tonic::Code::Internal
        ),
        "malformed frame: {err:?}"
    );
    // a frame over the 16 MiB limit
    let channel = fake_channel(&cluster, "511102004001", "511102004").await;
    let err = raw_link(channel, vec![Bytes::from(vec![0u8; 17 << 20])])
        .await
        .unwrap_err();
    assert!(
        err.message().contains("message length too large") || err.code() == tonic::Code::OutOfRange,
        "oversized frame: {err:?}"
    );

    assert_eq!(street.head_seq().await.unwrap(), before);
    let held = street
        .reads(Reader::Node)
        .get(&kept.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(held, kept);
    // and the link still works for an honest child afterwards
    let mut child = FakeChild::connect(&cluster, "511102004001", "511102004")
        .await
        .unwrap();
    let later = envelope(
        "511102004001",
        "civil.v1.Resident",
        1,
        resident_payload("11010519491231002X"),
        Tier::City,
    );
    assert_eq!(child.send_batch(2, vec![later]).await.unwrap().applied, 1);
    cluster.shutdown().await;
}

/// A batch is a list of encoded records, each decoded on its own: bytes
/// that are no record are quarantined with the reason and the rest of the
/// batch applies; a record padded with fields no signature covers applies
/// without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_does_not_decode_is_quarantined_and_the_rest_applies() {
    let cluster = Cluster::with(CHAIN).await;
    let street = cluster.node("511102004");
    let county = cluster.node("511102");
    let mut child = FakeChild::connect(&cluster, "511102004001", "511102004")
        .await
        .unwrap();
    let mut records: Vec<wire::Record> = (10..12)
        .map(|n| {
            envelope(
                "511102004001",
                "civil.v1.Resident",
                1,
                resident_payload(&tiersync::demo::demo_id_number(0, n)),
                Tier::City,
            )
        })
        .collect();
    sign_as(&cluster, "511102004001", &mut records);
    let garbage = Bytes::from_static(&[0x0a, 0xff, 0xff, 0xff, 0x0f]);
    // field 99 (varint 7) after the record's own fields
    let mut padded = records[1].encode_to_vec();
    padded.extend_from_slice(&[0x98, 0x06, 0x07]);
    let acks = child
        .send_encoded_batches(vec![(
            1,
            vec![
                records[0].encode_to_vec().into(),
                garbage.clone(),
                Bytes::from(padded),
            ],
        )])
        .await
        .unwrap();
    let ack = &acks[0];
    assert_eq!((ack.applied, ack.rejected), (2, 1), "{:?}", ack.rejections);
    assert!(
        ack.rejections[0]
            .reason
            .starts_with("record 1 of the batch through seq 1 is not a tiersync.v1.Record"),
        "{}",
        ack.rejections[0].reason
    );
    let quarantined = street.quarantine_list(10).await.unwrap();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(quarantined[0].body, garbage.to_vec());
    for record in &records {
        let held = street
            .reads(Reader::Node)
            .get(&record.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&held, record);
    }
    // both travel on, and the link stays up for more
    for record in &records {
        eventually("records at the county", || holds(&county, &record.id)).await;
    }
    let mut later = envelope(
        "511102004001",
        "civil.v1.Resident",
        1,
        resident_payload(&tiersync::demo::demo_id_number(0, 12)),
        Tier::City,
    );
    sign_as(&cluster, "511102004001", std::slice::from_mut(&mut later));
    assert_eq!(child.send_batch(2, vec![later]).await.unwrap().applied, 1);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_for_another_node_than_the_certificate_is_refused() {
    let cluster = Cluster::with(CHAIN).await;
    let channel = fake_channel(&cluster, "511102004001", "511102004").await;
    let hello = wire::LinkFrame {
        body: Some(wire::link_frame::Body::Hello(wire::Hello {
            protocol: tiersync::sync::PROTOCOL,
            node: "511102004002".into(),
            ..Default::default()
        })),
    };
    let err = raw_link(channel, vec![Bytes::from(hello.encode_to_vec())])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        err.message(),
        "hello names node `511102004002` but the client certificate is for `511102004001`"
    );
    cluster.shutdown().await;
}

/// A child that says hello and then nothing (a hung process keeps its
/// socket open, and its kernel still answers keepalives) is dropped after
/// three heartbeats of silence, with the reason in the link table, instead
/// of holding the link until HTTP/2 keepalive gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_dropped_after_three_heartbeats() {
    let cluster = Cluster::with(CHAIN).await;
    let street = cluster.node("511102004");
    let child = FakeChild::connect(&cluster, "511102004001", "511102004")
        .await
        .unwrap();
    eventually("the street drops the silent child", || async {
        street
            .links()
            .get("511102004001")
            .is_some_and(|l| l.last_error.contains("sent nothing for"))
    })
    .await;
    drop(child);
    cluster.shutdown().await;
}
