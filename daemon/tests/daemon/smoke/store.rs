//! The files beside a SQLite store: a second daemon on it is refused, and
//! a store that existed and is now empty or missing refuses to start.

use super::*;

/// A second `tiersync serve` on a store another daemon has open exits at
/// once, naming the store and the other daemon's pid; the first goes on.
#[test]
fn a_second_daemon_on_one_store_is_refused() {
    let mut cluster = Cluster::new();
    cluster.launch(CITY, None);
    let first = cluster.nodes[CITY].child.as_ref().expect("running").id();
    let storage = format!("data/{CITY}.db");
    cluster.configure_as("second", CITY, &[], &storage);
    let log = cluster
        .start("second")
        .expect_err("a second daemon started on the store");
    let store = cluster.dir.path().join(&storage);
    assert!(
        log.contains(&format!(
            "store {} is in use by another tiersync process (pid {first})",
            store.display()
        )),
        "{log}"
    );
    let api = cluster.api(CITY);
    let json = format!(
        r#"{{"name":"居民","idNumber":"{}"}}"#,
        gb11643("51110219800101100")
    );
    run_ok(&["put", "--api", &api, "--kind", RESIDENT, "--json", &json]);
}

/// A node whose store file was emptied while it was down refuses to start
/// (instead of starting as a new, empty node), says what it found and what
/// to do, and `audit verify` does not pass an empty log either.
#[test]
fn a_node_whose_store_was_emptied_refuses_to_start() {
    let mut cluster = Cluster::new();
    cluster.launch(CITY, None);
    let api = cluster.api(CITY);
    for i in 0..3 {
        let json = format!(
            r#"{{"name":"居民{i}","idNumber":"{}"}}"#,
            gb11643(&format!("511102198001{:02}100", i + 1))
        );
        run_ok(&["put", "--api", &api, "--kind", RESIDENT, "--json", &json]);
    }
    cluster.kill(CITY);
    let store = cluster.dir.path().join(format!("data/{CITY}.db"));
    OpenOptions::new()
        .write(true)
        .open(&store)
        .expect("open the store")
        .set_len(0)
        .expect("truncate -s 0");
    let log = cluster
        .start(CITY)
        .expect_err("a node started on its emptied store");
    assert!(
        log.contains(&format!(
            "refusing to open store {}: the file is empty (0 bytes), but {}.id says the store of node `{CITY}`",
            store.display(),
            store.display()
        )) && log.contains("Restore this node's store from a backup"),
        "{log}"
    );
    let config = cluster.nodes[CITY].config.to_str().expect("utf-8");
    let out = run(&["audit", "verify", "--config", config]);
    assert!(
        !out.status.success(),
        "audit verify passed an emptied store: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
