//! A malicious middle node: a street between a community and its county
//! that alters, invents, replays and re-scopes the community's records. The
//! county checks every record against its owner's signature, refuses each
//! forgery with the record, its origin and the reason, and every honest
//! record still converges at the city.

use prost::Message;
use tiersync::node::Reader;
use tiersync_e2e::{
    Cluster, FakeChild, envelope, eventually, holds, node_key_record, resident, sign_as,
};
use tiersync_proto::types::Tier;
use tiersync_proto::wire;

const UPPER: &[&str] = &["5111", "511102"];
const STREET: &str = "511102004";
const COMMUNITY: &str = "511102004001";

/// Records as the community signed them.
fn signed_by_community(cluster: &Cluster, from: usize, n: usize) -> Vec<wire::Record> {
    let mut records: Vec<wire::Record> = (from..from + n)
        .map(|i| {
            envelope(
                COMMUNITY,
                "civil.v1.Resident",
                1,
                resident(i).encode_to_vec(),
                Tier::City,
            )
        })
        .collect();
    sign_as(cluster, COMMUNITY, &mut records);
    records
}

fn rejection<'a>(ack: &'a wire::Ack, record: &wire::Record) -> &'a wire::Rejection {
    ack.rejections
        .iter()
        .find(|r| r.record_id == record.id)
        .unwrap_or_else(|| panic!("no rejection for {:?} in {:?}", record.id, ack.rejections))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_street_that_tampers_in_transit_is_caught_by_the_county() {
    let cluster = Cluster::with(UPPER).await;
    let county = cluster.node("511102");
    let city = cluster.node("5111");
    // The street is ours to script; it forwards the community's key as an
    // honest street would.
    let mut street = FakeChild::connect(&cluster, STREET, "511102")
        .await
        .unwrap();
    let ack = street
        .send_batch_as_is(1, vec![node_key_record(&cluster, COMMUNITY)])
        .await
        .unwrap();
    assert_eq!((ack.applied, ack.rejected), (1, 0), "{:?}", ack.rejections);

    let honest = signed_by_community(&cluster, 0, 6);

    // 1. altered: the payload changed after the community signed it
    let mut altered = honest[1].clone();
    altered.payload = resident(99).encode_to_vec().into();
    // 2. invented in the community's name, signed with the street's own key
    let mut invented = envelope(
        COMMUNITY,
        "civil.v1.Resident",
        1,
        resident(50).encode_to_vec(),
        Tier::City,
    );
    sign_as(&cluster, STREET, std::slice::from_mut(&mut invented));
    // 3. invented and unsigned
    let unsigned = envelope(
        COMMUNITY,
        "civil.v1.Resident",
        1,
        resident(51).encode_to_vec(),
        Tier::City,
    );
    // 4. widened: sent down to another street's subtree too
    let mut widened = honest[2].clone();
    widened
        .scope
        .as_mut()
        .unwrap()
        .down_to
        .push("511102006".into());
    widened.reach = widened.scope.clone();
    // 5. a version bumped without the owner
    let mut bumped = honest[3].clone();
    bumped.version = 2;

    let ack = street
        .send_batch_as_is(
            2,
            vec![
                honest[0].clone(),
                altered.clone(),
                invented.clone(),
                unsigned.clone(),
                widened.clone(),
                bumped.clone(),
                honest[4].clone(),
                honest[5].clone(),
            ],
        )
        .await
        .unwrap();
    assert_eq!((ack.applied, ack.rejected), (3, 5), "{:?}", ack.rejections);
    let origin = "of origin `511102004001`";
    for (record, why) in [
        (&altered, "bad path"),
        (
            &invented,
            "it is signed by `511102004`, not by its owner `511102004001`",
        ),
        (&unsigned, "unsigned: it carries no proof"),
        (&widened, "bad path"),
        (&bumped, "bad path"),
    ] {
        let r = rejection(&ack, record);
        assert_eq!(r.origin, COMMUNITY);
        assert!(
            r.reason.contains(origin) && r.reason.contains(why),
            "`{}` should name the origin and `{why}`",
            r.reason
        );
        let id = tiersync_proto::types::RecordId::from_bytes(&record.id).unwrap();
        assert!(r.reason.contains(&id.to_string()), "{}", r.reason);
        assert!(!holds(&county, &record.id).await);
    }
    // every refusal is quarantined with its reason, for the operator
    let quarantined = county.quarantine_list(100).await.unwrap();
    assert_eq!(quarantined.len(), 5);
    assert!(quarantined.iter().all(|q| q.origin == COMMUNITY));

    // 6. a replay: an old version after the owner moved on
    let mut v2 = honest[0].clone();
    v2.version = 2;
    v2.payload = resident(70).encode_to_vec().into();
    v2.proof.clear();
    sign_as(&cluster, COMMUNITY, std::slice::from_mut(&mut v2));
    let ack = street.send_batch_as_is(3, vec![v2.clone()]).await.unwrap();
    assert_eq!((ack.applied, ack.rejected), (1, 0), "{:?}", ack.rejections);
    let ack = street
        .send_batch_as_is(4, vec![honest[0].clone()])
        .await
        .unwrap();
    assert_eq!(ack.rejected, 1);
    assert!(
        ack.rejections[0].reason.contains("stale version"),
        "{}",
        ack.rejections[0].reason
    );
    let held = county
        .reads(Reader::Node)
        .get(&v2.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(held.version, 2);

    // The honest records travel on to the city, untouched; no forgery does.
    for record in [&v2, &honest[4], &honest[5]] {
        eventually("honest records at the city", || holds(&city, &record.id)).await;
    }
    let at_city = city
        .reads(Reader::Node)
        .get(&honest[4].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(at_city, honest[4]);
    for record in [&invented, &unsigned, &widened, &bumped] {
        assert!(!holds(&city, &record.id).await);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_whose_key_arrives_later_is_applied_when_it_does() {
    let cluster = Cluster::with(UPPER).await;
    let county = cluster.node("511102");
    let mut street = FakeChild::connect(&cluster, STREET, "511102")
        .await
        .unwrap();
    let honest = signed_by_community(&cluster, 0, 2);
    // The community's key has not reached the county yet: held back, not lost.
    let ack = street.send_batch_as_is(1, honest.clone()).await.unwrap();
    assert_eq!(ack.rejected, 2);
    assert!(
        ack.rejections[0]
            .reason
            .contains("no signing key known for origin `511102004001`"),
        "{}",
        ack.rejections[0].reason
    );
    // The key arrives: the held records are replayed and applied.
    let ack = street
        .send_batch_as_is(2, vec![node_key_record(&cluster, COMMUNITY)])
        .await
        .unwrap();
    assert_eq!(ack.applied, 1);
    for record in &honest {
        assert!(holds(&county, &record.id).await);
    }
    assert_eq!(county.quarantined_count().await.unwrap(), 0);
    cluster.shutdown().await;
}

/// A receiver checks several batches of a link at once; the keys one batch
/// brings must still be known when the next is checked, however the two
/// are scheduled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_taken_in_before_the_next_batch_is_checked() {
    let cluster = Cluster::with(UPPER).await;
    let county = cluster.node("511102");
    let mut street = FakeChild::connect(&cluster, STREET, "511102")
        .await
        .unwrap();
    // A large batch with the community's key last, then two small ones
    // signed with it, sent back to back, none waiting for an ack: the small
    // ones are quick to check, the large one slow.
    let mut first = signed_by_community(&cluster, 0, 300);
    first.push(node_key_record(&cluster, COMMUNITY));
    let second = signed_by_community(&cluster, 300, 3);
    let third = signed_by_community(&cluster, 303, 3);
    let acks = street
        .send_batches_as_is(vec![
            (1, first.clone()),
            (2, second.clone()),
            (3, third.clone()),
        ])
        .await
        .unwrap();
    assert_eq!(
        acks.iter().map(|a| a.through_seq).collect::<Vec<_>>(),
        [1, 2, 3],
        "one ack per batch, in order"
    );
    let applied: u32 = acks.iter().map(|a| a.applied).sum();
    let rejected: Vec<_> = acks.iter().flat_map(|a| &a.rejections).collect();
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(applied, 307);
    for record in first.iter().chain(&second).chain(&third) {
        assert!(holds(&county, &record.id).await);
    }
    assert_eq!(county.quarantined_count().await.unwrap(), 0);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_from_another_deployment_teaches_nothing() {
    let cluster = Cluster::with(UPPER).await;
    let other = Cluster::with(&["5111"]).await;
    let county = cluster.node("511102");
    let mut street = FakeChild::connect(&cluster, STREET, "511102")
        .await
        .unwrap();
    // The community's key, certified by another deployment's trust root.
    let foreign = node_key_record(&other, COMMUNITY);
    let ack = street.send_batch_as_is(1, vec![foreign]).await.unwrap();
    assert_eq!(ack.rejected, 1);
    assert!(
        ack.rejections[0]
            .reason
            .contains("not issued by this deployment's trust root"),
        "{}",
        ack.rejections[0].reason
    );
    // so records signed with that key are not accepted either
    let mut forged = envelope(
        COMMUNITY,
        "civil.v1.Resident",
        1,
        resident(1).encode_to_vec(),
        Tier::City,
    );
    sign_as(&other, COMMUNITY, std::slice::from_mut(&mut forged));
    let ack = street
        .send_batch_as_is(2, vec![forged.clone()])
        .await
        .unwrap();
    assert_eq!(ack.rejected, 1);
    assert!(!holds(&county, &forged.id).await);
    other.shutdown().await;
    cluster.shutdown().await;
}
