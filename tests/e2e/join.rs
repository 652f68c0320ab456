//! Onboarding: a new community joins its street with one token, its
//! certificate issued by the city through the tree, and syncs; a token is
//! single-use, bound to its code, refused after expiry, and pins the CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tiersync::clock::ManualClock;
use tiersync::config::NodeConfig;
use tiersync::identity::join::JoinToken;
use tiersync::identity::joining::{JoinOptions, join};
use tiersync::node::Node;
use tiersync_e2e::{Cluster, eventually, holds, put_resident};

const UPPER: &[&str] = &["5111", "511102", "511102004"];
const NEW: &str = "511102004001";

fn options(dir: PathBuf) -> JoinOptions {
    JoinOptions {
        dir,
        listen_peer: None,
        listen_api: "127.0.0.1:0".into(),
        listen_admin: "127.0.0.1:0".into(),
        // Refusals are final; only a vanished parent is retried.
        retry_for: Duration::ZERO,
    }
}

async fn token_for(cluster: &Cluster, parent: &Node, code: &str, ttl: Duration) -> JoinToken {
    let ca_pem = std::fs::read_to_string(cluster.dir().join("pki/ca.pem")).unwrap();
    parent
        .create_join_token(code, ttl, &ca_pem)
        .await
        .expect("token")
        .0
}

fn street_addr(cluster: &Cluster) -> String {
    cluster
        .running("511102004")
        .peer_addr
        .expect("street listens")
        .to_string()
}

async fn join_err(addr: &str, token: &JoinToken, dir: &Path) -> String {
    match join(addr, token, &options(dir.to_owned())).await {
        Ok(path) => panic!("join succeeded and wrote {}", path.display()),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_community_joins_with_one_token_and_syncs() {
    let cluster = Cluster::with(UPPER).await;
    let street = cluster.node("511102004");
    let token = token_for(&cluster, &street, NEW, Duration::from_secs(3600)).await;
    let token = JoinToken::parse(&token.to_string()).expect("the printed token parses");

    let dir = cluster.dir().join("joined");
    let config_path = join(&street_addr(&cluster), &token, &options(dir.clone()))
        .await
        .expect("join");

    // The key was made here and stays private; the CA key never travels.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("pki/node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "node.key mode {mode:o}");
    }
    assert!(std::fs::read_dir(dir.join("pki")).unwrap().all(|e| {
        let name = e.unwrap().file_name();
        name != "ca.key"
    }));

    // The written config is a working node: it starts and syncs.
    let config = NodeConfig::load(&config_path, &Default::default()).expect("config validates");
    assert_eq!(config.code.as_str(), NEW);
    let joined = tiersync::App::start(config)
        .await
        .expect("joined node starts");
    let record = put_resident(&joined.node, 1).await;
    let city = cluster.node("5111");
    eventually("the joined community's resident at the city", || {
        holds(&city, &record.id)
    })
    .await;

    // The street audits the token and the join; the city the certificate.
    let joins = |node: Arc<Node>| async move {
        node.audit_log()
            .audit_list(&tiersync::store::audit::AuditQuery {
                action: "join".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.detail)
            .collect::<Vec<_>>()
    };
    let at_street = joins(street.clone()).await;
    assert!(
        at_street[0].starts_with(&format!("join token issued for `{NEW}`")),
        "{at_street:?}"
    );
    assert_eq!(
        at_street[1],
        format!("node `{NEW}` joined"),
        "{at_street:?}"
    );
    let at_city = joins(city.clone()).await;
    assert!(
        at_city.contains(&format!(
            "certificate issued for `{NEW}` requested by `511102004`"
        )),
        "{at_city:?}"
    );

    // Single use: the same token again is refused, and nothing is written.
    let again = cluster.dir().join("again");
    let error = join_err(&street_addr(&cluster), &token, &again).await;
    assert!(error.contains("already used"), "{error}");
    assert!(!again.join("tiersync.toml").exists());

    joined.shutdown().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_bound_to_code_expiry_issuer_and_ca() {
    // The nodes' clock moves only when told: a token expires without the
    // test waiting for it.
    let clock = ManualClock::starting_now();
    let mut cluster = Cluster::new();
    cluster.deployment.clock = clock.shared();
    for code in UPPER {
        cluster.start(code).await;
    }
    let street: Arc<Node> = cluster.node("511102004");
    let addr = street_addr(&cluster);
    let scratch = cluster.dir().join("scratch");

    // Another child's code with this token's secret.
    let token = token_for(&cluster, &street, NEW, Duration::from_secs(3600)).await;
    let other = JoinToken {
        code: tiersync_proto::types::DivisionCode::parse("511102004002").unwrap(),
        ..token.clone()
    };
    let error = join_err(&addr, &other, &scratch).await;
    assert!(
        error.contains("issued for node `511102004001`, not `511102004002`"),
        "{error}"
    );

    // A secret the street never issued.
    let forged = JoinToken {
        secret: [0x5a; 16],
        ..token.clone()
    };
    let error = join_err(&addr, &forged, &scratch).await;
    assert!(error.contains("unknown join token"), "{error}");

    // A token naming another deployment's CA: the TLS handshake fails
    // before the secret is sent.
    let wrong_ca = JoinToken {
        ca_fingerprint: [0x11; 32],
        ..token.clone()
    };
    let error = join_err(&addr, &wrong_ca, &scratch).await;
    assert!(
        error.contains("not the one named in the join token"),
        "{error}"
    );

    // Expired.
    let short = token_for(&cluster, &street, "511102004002", Duration::from_secs(1)).await;
    clock.advance(Duration::from_millis(1100));
    let error = join_err(&addr, &short, &scratch).await;
    assert!(error.contains("expired"), "{error}");

    // A parent issues tokens for its direct children only.
    let error = street
        .create_join_token("511102006001", Duration::from_secs(60), "")
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("is not a child of `511102004`"), "{error}");

    // None of the refusals used the good token up.
    let ok = join(&addr, &token, &options(cluster.dir().join("ok"))).await;
    assert!(ok.is_ok(), "{ok:?}");
    cluster.shutdown().await;
}
