//! A county run as two processes on one PostgreSQL schema, an active daemon
//! and its standby: the standby takes over when the active one is killed
//! (SIGKILL) or hangs (SIGSTOP), and when the active one's database session
//! is lost; skipped, with the reason printed, where no PostgreSQL answers.

use super::*;

/// A scratch PostgreSQL schema for `test` and a runtime to talk to it;
/// `None`, with the skip reason printed, where no PostgreSQL answers.
fn scratch_schema(
    test: &str,
) -> Option<(
    tokio::runtime::Runtime,
    tiersync::store::postgres::scratch::ScratchSchema,
)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let schema = runtime.block_on(tiersync::store::postgres::scratch::ScratchSchema::create(
        test,
    ))?;
    Some((runtime, schema))
}

/// A standby answers `/readyz` 503, naming why.
fn standing_by(status: u16, body: &str) -> bool {
    status == 503 && body.starts_with("standby: ")
}

/// Puts residents `from..to` at the community; returns their ids.
fn put_residents(api: &str, from: u32, to: u32) -> Vec<String> {
    (from..to)
        .map(|i| {
            let body = format!(
                "511102{:04}{:02}{:02}{:03}",
                1940 + i,
                1 + i % 12,
                1 + i % 28,
                i
            );
            put_resident(api, &format!("居民{i}"), &gb11643(&body))
        })
        .collect()
}

/// Two `tiersync serve` processes for the county on one PostgreSQL schema:
/// one is active, the other stands by (admin up, nothing else bound); the
/// active one is SIGKILLed mid-stream, the standby takes over within a few
/// seconds, the street fails over to it, and every resident reaches the
/// county and the city exactly once.
#[test]
fn a_standby_county_takes_over_when_the_active_one_is_killed() {
    const TEST: &str = "a_standby_county_takes_over_when_the_active_one_is_killed";
    let Some((runtime, schema)) = scratch_schema(TEST) else {
        return;
    };
    let url = schema.url();

    let mut cluster = Cluster::new();
    cluster.launch(CITY, None);
    cluster.configure_as("county-a", COUNTY, &[CITY], &url);
    cluster.start("county-a").expect("county-a starts active");
    cluster.configure_as("county-b", COUNTY, &[CITY], &url);
    cluster
        .start_until("county-b", standing_by)
        .expect("county-b starts as the standby");
    // exactly one active: the standby binds no peer listener
    let b_peer = cluster.nodes["county-b"].peer.expect("county peer");
    assert!(
        TcpStream::connect_timeout(&b_peer, Duration::from_millis(500)).is_err(),
        "the standby must not accept children"
    );
    assert_eq!(
        sample(&metrics(cluster.admin("county-b")), "tiersync_standby"),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics(cluster.admin("county-a")), "tiersync_standby"),
        Some(0.0)
    );
    assert_eq!(
        http_get(cluster.admin("county-b"), "/healthz").map(|(s, _)| s),
        Some(200)
    );

    let street_storage = format!("data/{STREET}.db");
    cluster.configure_as(STREET, STREET, &["county-a", "county-b"], &street_storage);
    cluster.start(STREET).expect("street starts");
    cluster.launch(COMMUNITY, Some(STREET));
    let (city_api, community_api) = (cluster.api(CITY), cluster.api(COMMUNITY));

    let mut ids: BTreeSet<String> = put_residents(&community_api, 0, 10).into_iter().collect();
    eventually("10 residents at the city", SYNC_TIMEOUT, || {
        (resident_ids(&city_api).len() >= 10).then_some(())
    });
    // more residents in flight while the active county dies
    ids.extend(put_residents(&community_api, 10, 20));
    cluster.kill("county-a");
    let killed = Instant::now();
    eventually("county-b to become active", READY_TIMEOUT, || {
        matches!(
            http_get(cluster.admin("county-b"), "/readyz"),
            Some((200, _))
        )
        .then_some(())
    });
    eprintln!(
        "standby county ready {:.2} s after the active one was killed",
        killed.elapsed().as_secs_f64()
    );
    ids.extend(put_residents(&community_api, 20, 30));
    assert_eq!(ids.len(), 30, "every put made a new record");

    let county_b_api = cluster.api("county-b");
    for (what, api) in [("county", &county_b_api), ("city", &city_api)] {
        let listed = eventually(&format!("30 residents at the {what}"), SYNC_TIMEOUT, || {
            let listed = resident_ids(api);
            (listed.len() >= 30).then_some(listed)
        });
        assert_eq!(
            listed.len(),
            30,
            "no resident twice at the {what}: {listed:?}"
        );
        assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), ids, "{what}");
    }
    assert_eq!(
        sample(&metrics(cluster.admin("county-b")), "tiersync_standby"),
        Some(0.0)
    );
    // a restore's new epoch is refused while a daemon of the node is active
    let config = cluster.nodes["county-b"]
        .config
        .to_str()
        .expect("utf-8")
        .to_owned();
    let out = run(&["new-epoch", "--config", &config]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "new-epoch ran beside an active daemon"
    );
    assert!(
        stderr.contains("a daemon of node `511102` holds the active lease"),
        "{stderr}"
    );
    // the killed one comes back as the standby, not as a second active
    cluster
        .start_until("county-a", standing_by)
        .expect("county-a restarts as the standby");
    let log = std::fs::read_to_string(&cluster.nodes["county-b"].log).expect("log");
    assert!(log.contains("standing by"), "{log}");

    // The active one loses its database session (as when the database
    // restarts or the network cuts it): it stops with an error, and the
    // standby takes over.
    runtime.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect_with(&schema.options())
            .await
            .expect("connect");
        let ended: Vec<bool> = sqlx::query_scalar(
            // the lease of this node in this schema (other tests may hold
            // leases in theirs)
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND ((classid::int8 << 32) | objid::int8) = hashtextextended(current_schema() || '/tiersync/' || $1, 0)",
        )
        .bind(COUNTY)
        .fetch_all(&mut conn)
        .await
        .expect("terminate the lease session");
        assert_eq!(ended, vec![true], "exactly one session holds the lease");
    });
    let status = eventually("county-b to stop", READY_TIMEOUT, || {
        let child = cluster.nodes.get_mut("county-b")?.child.as_mut()?;
        child.try_wait().expect("try_wait")
    });
    cluster.nodes.get_mut("county-b").expect("configured").child = None;
    assert!(!status.success(), "losing the lease is an error exit");
    let log = std::fs::read_to_string(&cluster.nodes["county-b"].log).expect("log");
    assert!(log.contains("lost its active lease"), "{log}");
    eventually("county-a to become active", READY_TIMEOUT, || {
        matches!(
            http_get(cluster.admin("county-a"), "/readyz"),
            Some((200, _))
        )
        .then_some(())
    });
    ids.extend(put_residents(&community_api, 30, 35));
    let listed = eventually("35 residents at the city", SYNC_TIMEOUT, || {
        let listed = resident_ids(&city_api);
        (listed.len() >= 35).then_some(listed)
    });
    assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), ids);
    assert_eq!(resident_ids(&cluster.api("county-a")).len(), 35);
    drop(cluster);
    drop(schema);
}

/// Gives process `name`'s config a short lease (renewed every `renew_ms`,
/// lasting `expiry_ms`).
fn short_lease(cluster: &Cluster, name: &str, renew_ms: u64, expiry_ms: u64) {
    let config = &cluster.nodes[name].config;
    let text = std::fs::read_to_string(config).expect("read config");
    let text = text.replacen(
        "[listen]\n",
        &format!("lease_renew_ms = {renew_ms}\nlease_expiry_ms = {expiry_ms}\n\n[listen]\n"),
        1,
    );
    std::fs::write(config, text).expect("write config");
}

/// `kill -SIG pid`.
fn signal(signal: &str, pid: u32) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// The active county daemon hangs (SIGSTOP: it keeps its process, its
/// sockets and its database sessions, as a daemon stuck on a disk or a
/// deadlock would) with residents in flight. Its lease is not renewed, so
/// the standby ends its sessions and takes over within the expiry and a
/// second; the street relinks to it. Woken (SIGCONT), the old daemon finds
/// its lease gone, exits non-zero and comes back as the standby; every
/// resident reaches the county and the city exactly once.
#[test]
fn a_standby_county_takes_over_when_the_active_one_hangs() {
    const TEST: &str = "a_standby_county_takes_over_when_the_active_one_hangs";
    const EXPIRY: Duration = Duration::from_millis(2000);
    let Some((_runtime, schema)) = scratch_schema(TEST) else {
        return;
    };
    let url = schema.url();

    let mut cluster = Cluster::new();
    cluster.launch(CITY, None);
    for name in ["county-a", "county-b"] {
        cluster.configure_as(name, COUNTY, &[CITY], &url);
        short_lease(&cluster, name, 250, EXPIRY.as_millis() as u64);
    }
    cluster.start("county-a").expect("county-a starts active");
    cluster
        .start_until("county-b", standing_by)
        .expect("county-b starts as the standby");
    let street_storage = format!("data/{STREET}.db");
    cluster.configure_as(STREET, STREET, &["county-a", "county-b"], &street_storage);
    cluster.start(STREET).expect("street starts");
    cluster.launch(COMMUNITY, Some(STREET));
    let (city_api, community_api) = (cluster.api(CITY), cluster.api(COMMUNITY));

    // both daemons show the lease: the active its own, the standby the
    // active's row
    let status = http_get(cluster.admin("county-a"), "/status.json").expect("status.json");
    let status: serde_json::Value = serde_json::from_str(&status.1).expect("status JSON");
    assert_eq!(status["lease"]["this_daemon"], true, "{status}");
    for name in ["county-a", "county-b"] {
        let age = sample(
            &metrics(cluster.admin(name)),
            "tiersync_standby_lease_age_seconds",
        )
        .unwrap_or_else(|| panic!("{name} shows the lease age"));
        assert!(age < EXPIRY.as_secs_f64(), "{name}: lease age {age}");
    }

    let mut ids: BTreeSet<String> = put_residents(&community_api, 0, 10).into_iter().collect();
    eventually("10 residents at the city", SYNC_TIMEOUT, || {
        (resident_ids(&city_api).len() >= 10).then_some(())
    });
    // more residents in flight while the active county hangs
    ids.extend(put_residents(&community_api, 10, 20));
    let pid = cluster.nodes["county-a"]
        .child
        .as_ref()
        .expect("running")
        .id();
    signal("STOP", pid);
    let hung = Instant::now();
    eventually("county-b to become active", READY_TIMEOUT, || {
        matches!(
            http_get(cluster.admin("county-b"), "/readyz"),
            Some((200, _))
        )
        .then_some(())
    });
    let took = hung.elapsed();
    eprintln!(
        "standby county ready {:.2} s after the active one hung (lease expiry {:.1} s)",
        took.as_secs_f64(),
        EXPIRY.as_secs_f64()
    );
    assert!(
        took < EXPIRY + Duration::from_secs(1),
        "takeover took {took:?}, more than the expiry and a second"
    );
    // The street relinks to county-b while county-a is still hung: its
    // session to the hung daemon ends after three heartbeats of silence (3 s
    // here), and it dials the next address, the standby's, first. (Before,
    // only HTTP/2 keepalive ended it, after 40 s, and the hung address was
    // dialled again first.)
    ids.extend(put_residents(&community_api, 20, 30));
    let county_b_api = cluster.api("county-b");
    eventually("30 residents at county-b", Duration::from_secs(60), || {
        (resident_ids(&county_b_api).len() >= 30).then_some(())
    });
    let relinked = hung.elapsed();
    eprintln!(
        "the street relinked to the standby {:.1} s after the active county hung",
        relinked.as_secs_f64()
    );
    assert!(
        relinked < Duration::from_secs(20),
        "the street took {relinked:?} to reach the standby"
    );

    // woken, the old active finds its lease gone and stops with an error
    signal("CONT", pid);
    let status = eventually("county-a to stop", READY_TIMEOUT, || {
        let child = cluster.nodes.get_mut("county-a")?.child.as_mut()?;
        child.try_wait().expect("try_wait")
    });
    cluster.nodes.get_mut("county-a").expect("configured").child = None;
    assert!(!status.success(), "losing the lease is an error exit");
    let log = std::fs::read_to_string(&cluster.nodes["county-a"].log).expect("log");
    assert!(log.contains("lost its active lease"), "{log}");
    let log = std::fs::read_to_string(&cluster.nodes["county-b"].log).expect("log");
    assert!(log.contains("ending its sessions and taking over"), "{log}");

    ids.extend(put_residents(&community_api, 30, 35));
    assert_eq!(ids.len(), 35, "every put made a new record");
    for (what, api) in [("county", &county_b_api), ("city", &city_api)] {
        let listed = eventually(&format!("35 residents at the {what}"), SYNC_TIMEOUT, || {
            let listed = resident_ids(api);
            (listed.len() >= 35).then_some(listed)
        });
        assert_eq!(
            listed.len(),
            35,
            "no resident twice at the {what}: {listed:?}"
        );
        assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), ids, "{what}");
    }
    // restarted (as `Restart=always` would), it stands by
    cluster
        .start_until("county-a", standing_by)
        .expect("county-a restarts as the standby");
    let status = http_get(cluster.admin("county-b"), "/status.json").expect("status.json");
    let status: serde_json::Value = serde_json::from_str(&status.1).expect("status JSON");
    assert_eq!(status["lease"]["this_daemon"], true, "{status}");
    assert_eq!(status["lease"]["expired"], false, "{status}");
    drop(cluster);
    drop(schema);
}
