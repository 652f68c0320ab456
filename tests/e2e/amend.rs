//! Only the owner changes a record; anyone else sends an amendment that is
//! routed to the owner, which applies or rejects it, and the answer flows
//! back.

use prost::Message;
use tiersync::node::{PutInput, Reader};
use tiersync_e2e::{Cluster, eventually, put_resident, version_at};
use tiersync_proto::wire;

const CHAIN: &[&str] = &["5111", "511102", "511102004", "511102004001"];

async fn result_for(
    node: &tiersync::node::Node,
    amendment_id: &[u8],
) -> Option<wire::AmendmentResult> {
    let found = node
        .reads(Reader::Node)
        .lookup(
            "tiersync.v1.AmendmentResult",
            "amendment_id",
            &hex(amendment_id),
        )
        .await
        .unwrap();
    found
        .first()
        .map(|r| wire::AmendmentResult::decode(&r.payload[..]).unwrap())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_city_amends_a_community_record_through_its_owner() {
    let cluster = Cluster::with(CHAIN).await;
    let community = cluster.node("511102004001");
    let city = cluster.node("5111");
    let r = put_resident(&community, 5).await;
    eventually("the resident at the city", || async {
        version_at(&city, &r.id).await == Some(1)
    })
    .await;

    let mut fixed = tiersync_e2e::resident(5);
    fixed.notes = "address corrected by the city".into();
    let sent = city
        .put(PutInput {
            id: r.id.clone(),
            kind: "civil.v1.Resident".into(),
            payload: fixed.encode_to_vec(),
            expected_version: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        sent.amendment,
        "a put for a record owned elsewhere becomes an amendment"
    );
    assert_eq!(
        version_at(&city, &r.id).await,
        Some(1),
        "the city does not change it itself"
    );

    eventually("version 2 back at the city", || async {
        version_at(&city, &r.id).await == Some(2)
    })
    .await;
    let at_owner = community
        .reads(Reader::Node)
        .get(&r.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(civil_notes(&at_owner), "address corrected by the city");
    assert_eq!(
        at_owner.owner.unwrap().node,
        "511102004001",
        "ownership never moves"
    );
    let amendment_id = sent.stored.record.id;
    eventually("the owner's answer at the city", || async {
        result_for(&city, &amendment_id).await.is_some()
    })
    .await;
    let answer = result_for(&city, &amendment_id).await.unwrap();
    assert!(answer.accepted);
    assert_eq!(answer.new_version, 2);

    // an amendment based on an old version is refused, and the refusal flows back
    let stale = city
        .put(PutInput {
            id: r.id.clone(),
            kind: "civil.v1.Resident".into(),
            payload: fixed.encode_to_vec(),
            expected_version: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let stale_id = stale.stored.record.id;
    eventually("the refusal at the city", || async {
        result_for(&city, &stale_id).await.is_some()
    })
    .await;
    let answer = result_for(&city, &stale_id).await.unwrap();
    assert!(!answer.accepted);
    assert_eq!(
        answer.reason,
        "invalid base_version: the record moved on to version 2 since version 1 the amendment was based on"
    );
    assert_eq!(version_at(&community, &r.id).await, Some(2));
    cluster.shutdown().await;
}

fn civil_notes(r: &wire::Record) -> String {
    tiersync_proto::pb::civil::v1::Resident::decode(&r.payload[..])
        .unwrap()
        .notes
}
