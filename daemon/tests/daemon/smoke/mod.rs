//! Smoke tests of the real `tiersync` binary, driven only through the
//! command line and the admin HTTP port, the way an operator would: the
//! process harness ([`Cluster`]) and four `tiersync serve` processes (city,
//! county, street, community of Leshan) over mutual TLS. A record put at the
//! community reaches the city masked; records put while the street is
//! SIGKILLed wait in the community's log and arrive once the street is back.
//! The standby county ([`standby`]), the store's files ([`store`]) and the
//! command line's inputs ([`cli`]) have modules of their own.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod cli;
mod standby;
mod store;

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
