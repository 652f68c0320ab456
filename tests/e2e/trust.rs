//! The trust list: the city publishes it to every node; a revoked node's
//! records signed from the revocation on are refused, earlier ones stay
//! valid, and its parent refuses its link.

use std::time::Duration;

use prost::Message;
use tiersync_e2e::{
    Cluster, FakeChild, envelope, eventually, holds, node_key_record, put_resident, resident,
    sign_as,
};
use tiersync_proto::types::{HlcTimestamp, Tier};
use tiersync_proto::wire;

const CHAIN: &[&str] = &["5111", "511102", "511102004", "511102004001"];

fn revocation(node: &str, reason: &str) -> wire::Revocation {
    wire::Revocation {
        node: node.into(),
        reason: reason.into(),
        effective_at_ms: 0,
        revoked_at_ms: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_city_trust_list_reaches_every_node_and_is_current() {
    let cluster = Cluster::with(CHAIN).await;
    let community = cluster.node("511102004001");
    eventually("the city's first trust list at the community", || async {
        community
            .keyring()
            .trust_list()
            .is_some_and(|b| b.sequence == 1)
    })
    .await;
    let status = community.keyring().trust_status(tiersync::clock::now_ms());
    assert!(!status.stale, "{status:?}");
    assert_eq!(community.metrics().trust_list_stale.get(), 0);
    assert_eq!(community.metrics().trust_list_sequence.get(), 1);

    // A revocation is a new list, and reaches the leaves too.
    let city = cluster.node("5111");
    let body = city
        .publish_trust_list(Some(revocation("511102006001", "cessationOfOperation")))
        .await
        .unwrap();
    assert_eq!(body.sequence, 2);
    eventually("the revocation at the community", || async {
        community.keyring().revocation("511102006001").is_some()
    })
    .await;
    // Only the city can publish, and a revocation must say why.
    let error = community
        .publish_trust_list(Some(revocation("511102006001", "x")))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("holds no trust root key"), "{error}");
    let error = city
        .publish_trust_list(Some(revocation("511102006001", "")))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("say why"), "{error}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_refused_and_only_its_later_records_with_it() {
    let cluster = Cluster::with(&["5111", "511102"]).await;
    let city = cluster.node("5111");
    let county = cluster.node("511102");
    let mut street = FakeChild::connect(&cluster, "511102004", "511102")
        .await
        .unwrap();
    street
        .send_batch_as_is(1, vec![node_key_record(&cluster, "511102004001")])
        .await
        .unwrap();
    let signed_at = |ms: i64| HlcTimestamp::new(ms as u64, 0).as_u64();
    let record = |n: usize, at: u64| {
        let mut r = envelope(
            "511102004001",
            "civil.v1.Resident",
            1,
            resident(n).encode_to_vec(),
            Tier::City,
        );
        r.updated_at = at;
        sign_as(&cluster, "511102004001", std::slice::from_mut(&mut r));
        r
    };
    let before = tiersync::clock::now_ms();
    let early = record(1, signed_at(before - 60_000));
    let late_but_early = record(2, signed_at(before - 30_000));

    city.publish_trust_list(Some(revocation("511102004001", "keyCompromise")))
        .await
        .unwrap();
    eventually("the county adopts the revocation", || async {
        county.keyring().revocation("511102004001").is_some()
    })
    .await;

    // Signed after the revocation took effect: refused, naming why.
    let forged = record(3, signed_at(tiersync::clock::now_ms() + 1_000));
    let ack = street
        .send_batch_as_is(
            2,
            vec![forged.clone(), early.clone(), late_but_early.clone()],
        )
        .await
        .unwrap();
    assert_eq!((ack.applied, ack.rejected), (2, 1), "{:?}", ack.rejections);
    assert!(
        ack.rejections[0]
            .reason
            .contains("origin `511102004001` is revoked (keyCompromise)"),
        "{}",
        ack.rejections[0].reason
    );
    assert!(!holds(&county, &forged.id).await);
    // Signed before: still valid, and they travel on.
    for r in [&early, &late_but_early] {
        eventually("records signed before the revocation at the city", || {
            holds(&city, &r.id)
        })
        .await;
    }

    // Revoking the street itself: its parent ends the session and refuses
    // to link again.
    city.publish_trust_list(Some(revocation("511102004", "cessationOfOperation")))
        .await
        .unwrap();
    eventually("the county adopts the street's revocation", || async {
        county
            .revoked_now(&tiersync_proto::types::DivisionCode::parse("511102004").unwrap())
            .is_some()
    })
    .await;
    let refused = street.send_batch_as_is(3, vec![record(4, 1)]).await;
    assert!(refused.is_err(), "{refused:?}");
    let error = FakeChild::connect(&cluster, "511102004", "511102")
        .await
        .err()
        .expect("refused");
    assert_eq!(error.code(), tonic::Code::PermissionDenied);
    assert!(
        error.message().contains("node `511102004` is revoked"),
        "{}",
        error.message()
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trust_root_rolls_over_with_a_node_offline_across_the_switch() {
    let mut cluster = Cluster::with(CHAIN).await;
    let community = cluster.node("511102004001");
    eventually("the first trust list at the community", || async {
        community
            .keyring()
            .trust_list()
            .is_some_and(|b| b.sequence == 1)
    })
    .await;
    let early = put_resident(&community, 1).await;
    // Offline across the switch: it will never see the announcement.
    cluster.stop("511102004001").await;

    let city = cluster.node("5111");
    let key_out = cluster.dir().join("pki/trust-root-2.key");
    let body = city.rollover_root(&key_out).await.unwrap();
    assert_eq!(
        body.sequence, 3,
        "announced in 2, signed by the successor in 3"
    );
    assert!(key_out.is_file());
    let error = city.rollover_root(&key_out).await.unwrap_err().to_string();
    assert!(error.contains("cannot write"), "{error}");
    let street = cluster.node("511102004");
    eventually("the successor's list at the street", || async {
        street
            .keyring()
            .trust_list()
            .is_some_and(|b| b.sequence == 3)
    })
    .await;

    // A node that joins now gets its origin certificate from the successor,
    // and its records verify everywhere.
    let ca_pem = std::fs::read_to_string(cluster.dir().join("pki/ca.pem")).unwrap();
    let (token, _) = street
        .create_join_token("511102004002", Duration::from_secs(600), &ca_pem)
        .await
        .unwrap();
    let config = tiersync::identity::joining::join(
        &cluster.running("511102004").peer_addr.unwrap().to_string(),
        &token,
        &tiersync::identity::joining::JoinOptions {
            dir: cluster.dir().join("joined"),
            listen_peer: None,
            listen_api: "127.0.0.1:0".into(),
            listen_admin: "127.0.0.1:0".into(),
            retry_for: Duration::ZERO,
        },
    )
    .await
    .expect("join after the rollover");
    let joined = tiersync::App::start(
        tiersync::config::NodeConfig::load(&config, &Default::default()).unwrap(),
    )
    .await
    .unwrap();
    let late = put_resident(&joined.node, 2).await;
    eventually("the new node's resident at the city", || {
        holds(&city, &late.id)
    })
    .await;

    // The sleeper comes back, follows the endorsement chain from the root
    // it knows, and its records (signed under the first root) stay valid.
    cluster.start("511102004001").await;
    let community = cluster.node("511102004001");
    eventually("the sleeper adopts the successor's list", || async {
        community
            .keyring()
            .trust_list()
            .is_some_and(|b| b.sequence == 3)
    })
    .await;
    let after = put_resident(&community, 3).await;
    for r in [&early, &after] {
        eventually("the sleeper's records at the city", || holds(&city, &r.id)).await;
    }

    // The city restarts on the new key and keeps publishing.
    cluster.stop("5111").await;
    let path = cluster.deployment.config_path("5111");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(
            "root_key = \"pki/trust-root.key\"",
            "root_key = \"pki/trust-root-2.key\"",
        ),
    )
    .unwrap();
    cluster.start("5111").await;
    let city = cluster.node("5111");
    let body = city.publish_trust_list(None).await.unwrap();
    assert_eq!(body.sequence, 4);
    eventually("the restarted city's list at the community", || async {
        community
            .keyring()
            .trust_list()
            .is_some_and(|b| b.sequence == 4)
    })
    .await;
    joined.shutdown().await;
    cluster.shutdown().await;
}
