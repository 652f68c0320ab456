//! The audit log of whole nodes: a refusal from a peer, a trust list
//! published at the city and adopted below it, and a department's read each
//! leave an entry, and every node's chain verifies.

use prost::Message;
use tiersync::node::Node;
use tiersync::store::audit::{AuditQuery, Verdict, verify};
use tiersync_e2e::{Cluster, FakeChild, envelope, eventually};
use tiersync_proto::pb::civil;
use tiersync_proto::types::Tier;
use tiersync_proto::wire;

const CHAIN: &[&str] = &["5111", "511102", "511102004"];

/// (actor, action, detail) of the entries of `node` with action `action`.
async fn entries(node: &Node, action: &str) -> Vec<(String, String, String)> {
    node.audit_log()
        .audit_list(&AuditQuery {
            action: action.into(),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.actor, e.action, e.detail))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_trust_changes_and_reads_are_audited() {
    let cluster = Cluster::with(CHAIN).await;
    let (city, street) = (cluster.node("5111"), cluster.node("511102004"));

    // a forged origin from a child: refused, and audited with the reason
    let mut child = FakeChild::connect(&cluster, "511102004001", "511102004")
        .await
        .unwrap();
    let payload = civil::v1::Resident {
        name: "王五".into(),
        id_number: "11010519491231002X".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let forged = envelope("511102004002", "civil.v1.Resident", 1, payload, Tier::City);
    let ack = child.send_batch(2, vec![forged]).await.unwrap();
    assert_eq!(ack.rejected, 1);
    let rejects = entries(&street, "reject").await;
    assert_eq!(rejects.len(), 1, "{rejects:?}");
    assert_eq!(rejects[0].0, "peer:511102004001");
    assert_eq!(rejects[0].2, ack.rejections[0].reason);

    // a trust list published at the city, adopted at the street
    city.publish_trust_list(Some(wire::Revocation {
        node: "511102006001".into(),
        reason: "cessationOfOperation".into(),
        effective_at_ms: 0,
        revoked_at_ms: 0,
    }))
    .await
    .unwrap();
    let published = entries(&city, "trust").await;
    assert!(
        published.iter().any(|(actor, _, detail)| actor == "node"
            && detail.starts_with(
                "published trust list sequence 2; revocations: 511102006001 (cessationOfOperation)"
            )),
        "{published:?}"
    );
    eventually("the street audits the adopted list", || async {
        entries(&street, "trust")
            .await
            .iter()
            .any(|(_, _, d)| d.starts_with("adopted trust list sequence 2;"))
    })
    .await;
    let adopted = entries(&street, "trust").await;
    assert!(
        adopted.iter().all(|(_, _, d)| d.ends_with("of `5111`")),
        "{adopted:?}"
    );

    for node in [&city, &street, &cluster.node("511102")] {
        match verify(node.audit_log()).await.unwrap() {
            Verdict::Intact { entries, .. } => assert!(entries > 0, "{}", node.code()),
            broken => panic!("{}: {broken:?}", node.code()),
        }
    }
    cluster.shutdown().await;
}
