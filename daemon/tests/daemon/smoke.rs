//! Smoke test of the real `tiersync` binary: four `tiersync serve` processes
//! (city, county, street, community of Leshan) over mutual TLS, driven only
//! through the command line and the admin HTTP port, the way an operator
//! would. A record put at the community reaches the city masked; records put
//! while the street is SIGKILLed wait in the community's log and arrive once
//! the street is back. A county run as two processes on one PostgreSQL
//! schema (an active daemon and its standby) survives SIGKILL of the active
//! one, a hang of the active one (SIGSTOP), and the loss of the active
//! one's database session (skipped, with the reason printed, where no
//! PostgreSQL answers).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tiersync");

const CITY: &str = "5111";
const COUNTY: &str = "511102";
const STREET: &str = "511102004";
const COMMUNITY: &str = "511102004001";

const RESIDENT: &str = "civil.v1.Resident";

/// Written to a node's log before each start.
const START_MARK: &str = "---- tiersync serve ";
const ADDR_IN_USE: &str = "Address already in use";

/// How long a node may take to become ready, and records to arrive. A
/// healthy run takes about a second in all.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const SYNC_TIMEOUT: Duration = Duration::from_secs(15);

/// A `tiersync` command with none of the caller's `TIERSYNC_*` variables
/// (they override config keys and the API address) and no colour codes.
fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null()).env("NO_COLOR", "1");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TIERSYNC_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn run(args: &[&str]) -> Output {
    command(args).output().expect("run tiersync")
}

/// Runs a command that must succeed; returns its stdout.
fn run_ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "tiersync {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Polls `check` every 50 ms until it yields a value; fails after `timeout`.
fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal HTTP/1.1 GET; `None` if the port does not answer yet.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// A 127.0.0.1 port held open until the node that will use it starts.
fn reserve_port() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

fn port_of(l: &TcpListener) -> u16 {
    l.local_addr().expect("bound").port()
}

struct NodeProc {
    code: String,
    config: PathBuf,
    log: PathBuf,
    peer: Option<SocketAddr>,
    api: SocketAddr,
    admin: SocketAddr,
    /// Dropped just before the first start, so the process can bind them.
    reserved: Vec<TcpListener>,
    child: Option<Child>,
}

/// The deployment's folder and processes. Dropping it kills every process,
/// so a failed assertion never leaves nodes running; while panicking it
/// also prints the end of every node's log.
struct Cluster {
    dir: tempfile::TempDir,
    nodes: BTreeMap<&'static str, NodeProc>,
}

impl Cluster {
    fn new() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = dir.path().join("pki");
        let pki = pki.to_str().expect("utf-8 path");
        run_ok(&["pki", "init", "--dir", pki, "--city", CITY]);
        for code in [CITY, COUNTY, STREET, COMMUNITY] {
            run_ok(&["pki", "issue", "--dir", pki, "--code", code]);
        }
        Cluster {
            dir,
            nodes: BTreeMap::new(),
        }
    }

    /// Writes the config of `code` with freshly reserved ports.
    fn configure(&mut self, code: &'static str, parent: Option<&str>) {
        let storage = format!("data/{code}.db");
        self.configure_as(code, code, parent.as_slice(), &storage);
    }

    /// Writes the config of a process `name` serving node `code`, on store
    /// `storage`, dialling the processes `parents` (one node: an active
    /// daemon and its standbys).
    fn configure_as(&mut self, name: &'static str, code: &str, parents: &[&str], storage: &str) {
        let leaf = code.len() == 12;
        let peer = (!leaf).then(reserve_port);
        let api = reserve_port();
        let admin = reserve_port();
        let mut text = format!("version = 1\n\n[node]\ncode = \"{code}\"\n\n");
        // Relative paths: the processes run in `/`, so this also checks that
        // paths resolve against the config file's folder.
        text += &format!("[storage]\npath = \"{storage}\"\n\n[listen]\n");
        if let Some(peer) = &peer {
            text += &format!("peer = \"127.0.0.1:{}\"\n", port_of(peer));
        }
        text += &format!(
            "api = \"127.0.0.1:{}\"\nadmin = \"127.0.0.1:{}\"\n\n",
            port_of(&api),
            port_of(&admin)
        );
        if let Some(first) = parents.first() {
            let parent_code = &self.nodes[first].code;
            let addresses: Vec<String> = parents
                .iter()
                .map(|p| {
                    let peer = self.nodes[p].peer.expect("a parent listens for peers");
                    format!("\"{peer}\"")
                })
                .collect();
            if let [one] = addresses.as_slice() {
                text += &format!("[parent]\ncode = \"{parent_code}\"\naddress = {one}\n\n");
            } else {
                text += &format!(
                    "[parent]\ncode = \"{parent_code}\"\naddresses = [{}]\n\n",
                    addresses.join(", ")
                );
            }
        }
        text += &format!(
            "[tls]\nca = \"pki/ca.pem\"\ncert = \"pki/{code}.pem\"\nkey = \"pki/{code}.key\"\n\n\
             [trust]\nroot = \"pki/trust-root.pem\"\nkey = \"pki/{code}.sm2.key\"\ncert = \"pki/{code}.sm2.pem\"\n\n\
             [deployment]\ndigest_key_file = \"pki/deployment.key\"\n\n\
             [sync]\nheartbeat_secs = 1\n"
        );
        let config = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, text).expect("write config");
        let addr = |l: &TcpListener| l.local_addr().expect("bound");
        self.nodes.insert(
            name,
            NodeProc {
                code: code.to_owned(),
                config,
                log: self.dir.path().join(format!("{name}.log")),
                peer: peer.as_ref().map(addr),
                api: addr(&api),
                admin: addr(&admin),
                reserved: [peer, Some(api), Some(admin)]
                    .into_iter()
                    .flatten()
                    .collect(),
                child: None,
            },
        );
    }

    /// Configures and starts `code` under `parent` (already running). If
    /// another process took one of its ports between the reservation and
    /// the bind, it starts again on fresh ports.
    fn launch(&mut self, code: &'static str, parent: Option<&str>) {
        for attempt in 1.. {
            self.configure(code, parent);
            match self.start(code) {
                Ok(()) => return,
                Err(log) if attempt < 3 && log.contains(ADDR_IN_USE) => continue,
                Err(log) => panic!("tiersync serve {code} exited:\n{log}"),
            }
        }
    }

    /// Restarts `code` with its existing config, so on the same ports its
    /// children dial; if a port is briefly taken by someone else, tries again.
    fn restart(&mut self, code: &str) {
        eventually(
            &format!("{code} to restart on its ports"),
            READY_TIMEOUT,
            || match self.start(code) {
                Ok(()) => Some(()),
                Err(log) if log.contains(ADDR_IN_USE) => None,
                Err(log) => panic!("tiersync serve {code} exited:\n{log}"),
            },
        );
    }

    /// Runs `tiersync serve` for `code` until `/readyz` answers 200; if the
    /// process exits first, returns its log of this start.
    fn start(&mut self, code: &str) -> Result<(), String> {
        self.start_until(code, |status, _| status == 200)
    }

    /// Runs `tiersync serve` for process `code` until its `/readyz` answer
    /// satisfies `ready`; if the process exits first, returns its log of
    /// this start.
    fn start_until(&mut self, code: &str, ready: fn(u16, &str) -> bool) -> Result<(), String> {
        let node = self.nodes.get_mut(code).expect("configured");
        node.reserved.clear();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("open log");
        writeln!(log, "{START_MARK}{code}").expect("write log");
        let config = node.config.to_str().expect("utf-8 path");
        let child = command(&["serve", "--config", config])
            .current_dir("/")
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn tiersync serve");
        let child = node.child.insert(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if child.try_wait().expect("try_wait").is_some() {
                node.child = None;
                let log = std::fs::read_to_string(&node.log).unwrap_or_default();
                let this_start = log.rsplit(START_MARK).next().unwrap_or_default();
                return Err(this_start.to_owned());
            }
            if let Some((status, body)) = http_get(node.admin, "/readyz")
                && ready(status, &body)
            {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "{code} not ready after {READY_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash or power cut would.
    fn kill(&mut self, code: &str) {
        let node = self.nodes.get_mut(code).expect("configured");
        let mut child = node.child.take().expect("running");
        child.kill().expect("kill");
        child.wait().expect("reap");
    }

    fn api(&self, code: &str) -> String {
        self.nodes[code].api.to_string()
    }

    fn admin(&self, code: &str) -> SocketAddr {
        self.nodes[code].admin
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            for (code, node) in &self.nodes {
                let log = std::fs::read_to_string(&node.log).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                eprintln!("==== last lines of {code}'s log\n{tail}");
            }
        }
    }
}

/// Appends the GB 11643 check character to a 17-digit body.
fn gb11643(body: &str) -> String {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    assert_eq!(body.len(), 17, "a GB 11643 body has 17 digits");
    let sum: u32 = body
        .bytes()
        .zip(WEIGHTS)
        .map(|(digit, weight)| u32::from(digit - b'0') * weight)
        .sum();
    let check = b"10X98765432"[(sum % 11) as usize] as char;
    format!("{body}{check}")
}

/// `tiersync put` of a resident; returns the new record's id.
fn put_resident(api: &str, name: &str, id_number: &str) -> String {
    let json = format!(r#"{{"name":"{name}","idNumber":"{id_number}"}}"#);
    let out = run_ok(&["put", "--api", api, "--kind", RESIDENT, "--json", &json]);
    let line = out.lines().last().expect("put prints the record");
    let record: serde_json::Value = serde_json::from_str(line).expect("put prints JSON");
    assert_eq!(record["owner"], COMMUNITY, "{line}");
    record["id"].as_str().expect("record id").to_owned()
}

/// `tiersync get`; `None` until the record is there.
fn get(api: &str, id: &str) -> Option<serde_json::Value> {
    let out = run(&["get", "--api", api, id]);
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).expect("utf-8 output");
    serde_json::from_str(text.trim()).ok()
}

/// The ids `tiersync list` shows for residents.
fn resident_ids(api: &str) -> Vec<String> {
    run_ok(&["list", "--api", api, "--kind", RESIDENT, "--limit", "1000"])
        .lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).expect("list prints JSON");
            record["id"].as_str().expect("record id").to_owned()
        })
        .collect()
}

/// The value of one exact sample line (`name{labels}`) in a /metrics text.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        if name == series {
            value.parse().ok()
        } else {
            None
        }
    })
}

fn metrics(admin: SocketAddr) -> String {
    match http_get(admin, "/metrics") {
        Some((200, body)) => body,
        other => panic!("GET {admin}/metrics: {other:?}"),
    }
}

#[test]
fn four_real_processes_converge_through_a_street_crash() {
    assert_eq!(gb11643("11010519491231002"), "11010519491231002X");

    let mut cluster = Cluster::new();
    // Top down, so every parent is up when its child first dials.
    cluster.launch(CITY, None);
    cluster.launch(COUNTY, Some(CITY));
    cluster.launch(STREET, Some(COUNTY));
    cluster.launch(COMMUNITY, Some(STREET));
    let (city_api, community_api) = (cluster.api(CITY), cluster.api(COMMUNITY));

    // One resident travels up; the city sees it masked, the owner in full.
    let first = put_resident(&community_api, "张三", "11010519491231002X");
    let at_city = eventually("the resident to reach the city", SYNC_TIMEOUT, || {
        get(&city_api, &first)
    });
    assert_eq!(
        at_city["payload"]["idNumber"], "110105********002X",
        "{at_city}"
    );
    assert!(!at_city.to_string().contains("11010519491231002X"));
    let at_owner = get(&community_api, &first).expect("the owner has its record");
    assert_eq!(at_owner["payload"]["idNumber"], "11010519491231002X");

    // The street crashes; the community keeps collecting meanwhile.
    cluster.kill(STREET);
    let street_link = format!(r#"tiersync_link_up{{peer="{STREET}",direction="parent"}}"#);
    eventually("the community to see its parent down", SYNC_TIMEOUT, || {
        (sample(&metrics(cluster.admin(COMMUNITY)), &street_link) == Some(0.0)).then_some(())
    });
    let mut ids = BTreeSet::from([first]);
    for i in 0..20 {
        let body = format!(
            "511102{:04}{:02}{:02}{:03}",
            1950 + i,
            1 + i % 12,
            1 + i % 28,
            100 + i
        );
        ids.insert(put_resident(
            &community_api,
            &format!("居民{i}"),
            &gb11643(&body),
        ));
    }
    assert_eq!(ids.len(), 21, "every put made a new record");

    // Back with the same config and store: everything arrives, once.
    cluster.restart(STREET);
    let at_city = eventually("21 residents at the city", SYNC_TIMEOUT, || {
        let listed = resident_ids(&city_api);
        (listed.len() >= 21).then_some(listed)
    });
    assert_eq!(at_city.len(), 21, "no resident twice: {at_city:?}");
    assert_eq!(at_city.into_iter().collect::<BTreeSet<_>>(), ids);

    let city_metrics = metrics(cluster.admin(CITY));
    for name in ["tiersync_sync_records_applied_total", "tiersync_link_up"] {
        assert!(
            city_metrics.contains(name),
            "city /metrics lacks {name}:\n{city_metrics}"
        );
    }
    let applied = sample(
        &city_metrics,
        &format!(r#"tiersync_sync_records_applied_total{{kind="{RESIDENT}"}}"#),
    );
    assert!(
        applied.is_some_and(|n| n >= 21.0),
        "applied at the city: {applied:?}\n{city_metrics}"
    );
}

/// `check-config` reports every mistake in one run, and fails.
#[test]
fn check_config_reports_every_mistake_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    // Two mistakes: the tier does not match the 12-digit code, and the
    // parent is not the street the code belongs to.
    std::fs::write(
        &path,
        r#"version = 1
[node]
code = "511102004001"
tier = "street"
[storage]
path = "node.db"
[listen]
api = "127.0.0.1:7401"
[parent]
code = "511102006"
address = "street.example:7400"
[tls]
ca = "pki/ca.pem"
cert = "pki/511102004001.pem"
key = "pki/511102004001.key"
[trust]
root = "pki/trust-root.pem"
key = "pki/511102004001.sm2.key"
cert = "pki/511102004001.sm2.pem"
[deployment]
digest_key_file = "pki/deployment.key"
"#,
    )
    .expect("write");
    let out = run(&["check-config", "--config", path.to_str().expect("utf-8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check-config accepted it:\n{stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout for a bad file");
    assert!(stderr.contains("2 problem(s)"), "{stderr}");
    assert!(
        stderr.contains("`node.tier`: `street` does not match node.code `511102004001`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("`parent.code`: `511102006` does not own node `511102004001`"),
        "{stderr}"
    );
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let Some(schema) = runtime.block_on(tiersync::store::postgres::scratch::ScratchSchema::create(
        TEST,
    )) else {
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let Some(schema) = runtime.block_on(tiersync::store::postgres::scratch::ScratchSchema::create(
        TEST,
    )) else {
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

/// `tiersync audit verify` finds a row of the audit log edited behind the
/// running daemon's back, and names its entry; `audit show` filters.
#[test]
fn audit_verify_finds_a_row_edited_behind_the_daemons_back() {
    let mut cluster = Cluster::new();
    cluster.launch(CITY, None);
    let api = cluster.api(CITY);
    let config = cluster.nodes[CITY]
        .config
        .to_str()
        .expect("utf-8")
        .to_owned();
    for i in 0..3 {
        let json = format!(
            r#"{{"name":"居民{i}","idNumber":"{}"}}"#,
            gb11643(&format!("511102198001{:02}100", i + 1))
        );
        run_ok(&["put", "--api", &api, "--kind", RESIDENT, "--json", &json]);
    }

    let ok = run_ok(&["audit", "verify", "--config", &config]);
    assert!(ok.contains("ok"), "{ok}");
    let shown = run_ok(&[
        "audit",
        "show",
        "--config",
        &config,
        "--actor",
        "local-api",
        "--action",
        "put",
    ]);
    let puts: Vec<&str> = shown.lines().collect();
    assert_eq!(puts.len(), 3, "{shown}");
    assert!(puts.iter().all(|l| l.contains(RESIDENT)), "{shown}");
    let entry: i64 = puts[1]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a line starts with its entry number");

    // edit one row with the daemon still running
    let db = cluster.dir.path().join(format!("data/{CITY}.db"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        use sqlx::ConnectOptions;
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&db)
            .busy_timeout(Duration::from_secs(10))
            .connect()
            .await
            .expect("open the city's store");
        let changed = sqlx::query("UPDATE audit SET actor = 'someone-else' WHERE entry = ?1")
            .bind(entry)
            .execute(&mut conn)
            .await
            .expect("edit an audit row");
        assert_eq!(changed.rows_affected(), 1);
    });

    let out = run(&["audit", "verify", "--config", &config]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "verify passed a tampered log: {stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "entry {entry} was changed (its hash does not match its contents)"
        )),
        "{stderr}"
    );
}

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

/// Arguments as `run` takes them.
fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Runs `tiersync` with `input` on its standard input.
fn run_with_stdin(args: &[&str], input: &str) -> Output {
    let mut child = command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tiersync");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait for tiersync")
}

/// `tiersync put --json-file FILE` (`-`: standard input) takes a payload too
/// large for a command-line argument, and refuses bad JSON before anything
/// is sent. No node listens at the address given: a payload that parses
/// gets as far as dialling it.
#[test]
fn put_reads_its_payload_from_a_file_or_standard_input() {
    // Port 9 (discard) is closed on this machine: dialling fails at once.
    let put = |source: &str| {
        vec![
            "put".to_owned(),
            "--api".to_owned(),
            "127.0.0.1:9".to_owned(),
            "--kind".to_owned(),
            RESIDENT.to_owned(),
            "--json-file".to_owned(),
            source.to_owned(),
        ]
    };
    let big = format!(
        r#"{{"name":"大记录","idNumber":"11010519491231002X","notes":"{}"}}"#,
        "x".repeat(200_000)
    );
    let dialled = |out: &Output| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        !out.status.success() && stderr.contains("cannot reach the local API at 127.0.0.1:9")
    };

    let from_stdin = put("-");
    let out = run_with_stdin(&refs(&from_stdin), &big);
    assert!(dialled(&out), "{}", String::from_utf8_lossy(&out.stderr));

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("resident.json");
    std::fs::write(&file, &big).expect("write payload");
    let from_file = put(file.to_str().expect("utf-8 path"));
    let out = run(&refs(&from_file));
    assert!(dialled(&out), "{}", String::from_utf8_lossy(&out.stderr));

    // bad JSON is refused, naming the kind, before anything is dialled
    let out = run_with_stdin(&refs(&from_stdin), r#"{"name": 5}"#);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(RESIDENT) && !stderr.contains("cannot reach"),
        "{stderr}"
    );

    // a missing file is named; no payload at all says how to give one
    let out = run(&refs(&put("/nonexistent/resident.json")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read the payload JSON from /nonexistent/resident.json"),
        "{stderr}"
    );
    let out = run(&["put", "--api", "127.0.0.1:9", "--kind", RESIDENT]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("give the payload with --json TEXT or --json-file FILE"),
        "{stderr}"
    );
}
