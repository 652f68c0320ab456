//! The deployment files in `deploy/` cannot run here (no Docker, no
//! systemd), so these tests check what can be checked without them: the
//! compose demo's generator makes configs and PKI that `tiersync` accepts and
//! that match compose.yaml; the alert rules only name metrics the daemon
//! exports; every command line in the units, the image and compose parses.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use tiersync::cli::Cli;
use tiersync::config::NodeConfig;
use tiersync::identity::tls::TlsMaterial;
use tiersync::ops::metrics::{KindLabels, LinkLabels, Metrics};

const BIN: &str = env!("CARGO_BIN_EXE_tiersync");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("daemon/ is inside the workspace")
        .to_owned()
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Runs `deploy/compose/gen.sh` into `out`, which must succeed.
fn gen_sh(out: &Path) {
    let output = Command::new("bash")
        .arg(repo().join("deploy/compose/gen.sh"))
        .arg(BIN)
        .arg(out)
        .env("NO_COLOR", "1")
        .output()
        .expect("run bash");
    assert!(
        output.status.success(),
        "gen.sh failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The compose services that run a node: those whose command names a
/// generated config, `/gen/<service>/tiersync.toml`.
fn compose_node_services() -> BTreeSet<String> {
    let compose = read("deploy/compose/compose.yaml");
    let mut in_services = false;
    let mut services = BTreeSet::new();
    for line in compose.lines() {
        if !line.starts_with(' ') && !line.starts_with('#') && !line.is_empty() {
            in_services = line == "services:";
            continue;
        }
        if in_services
            && let Some(name) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':'))
            && !name.starts_with([' ', '#'])
        {
            services.insert(name.to_owned());
        }
    }
    assert!(
        services.contains("init"),
        "compose.yaml services: {services:?}"
    );
    services
        .into_iter()
        .filter(|s| compose.contains(&format!("\"/gen/{s}/tiersync.toml\"")))
        .collect()
}

/// service name -> (its folder, its validated config).
fn generated(out: &Path) -> BTreeMap<String, (PathBuf, NodeConfig)> {
    let mut nodes = BTreeMap::new();
    for entry in std::fs::read_dir(out).expect("read gen.sh output") {
        let dir = entry.expect("entry").path();
        let service = dir.file_name().unwrap().to_string_lossy().into_owned();
        if service == "ca" {
            continue;
        }
        let config = dir.join("tiersync.toml");
        let loaded = NodeConfig::load(&config, &BTreeMap::new())
            .unwrap_or_else(|e| panic!("{}: {e}", config.display()));
        nodes.insert(service, (dir, loaded));
    }
    nodes
}

/// Every config gen.sh writes passes `check-config --files`: it also makes
/// the PKI they name, so every file is there and holds what it should.
#[test]
fn gen_sh_makes_configs_check_config_accepts_one_per_compose_service() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("gen");
    gen_sh(&out);
    let nodes = generated(&out);

    for (service, (dir, _)) in &nodes {
        let config = dir.join("tiersync.toml");
        let result = Command::new(BIN)
            .args(["check-config", "--files", "--config"])
            .arg(&config)
            .env("NO_COLOR", "1")
            .output()
            .expect("run tiersync check-config");
        let stdout = String::from_utf8_lossy(&result.stdout);
        assert!(
            result.status.success() && stdout.contains(": ok ("),
            "check-config {service}: {}\n{stdout}{}",
            result.status,
            String::from_utf8_lossy(&result.stderr)
        );
    }

    let services: BTreeSet<String> = nodes.keys().cloned().collect();
    assert_eq!(
        services,
        compose_node_services(),
        "gen.sh should write a config for exactly the node services of compose.yaml"
    );
    let tiers: BTreeSet<String> = nodes.values().map(|(_, c)| c.tier().to_string()).collect();
    assert_eq!(tiers.len(), 4, "all four tiers: {tiers:?}");
}

#[test]
fn gen_sh_parents_are_compose_services_listening_on_the_dialled_port() {
    let tmp = tempfile::tempdir().expect("tempdir");
    gen_sh(tmp.path());
    let nodes = generated(tmp.path());
    for (service, (_, c)) in &nodes {
        let Some(parent) = &c.parent else {
            assert_eq!(c.tier().to_string(), "city", "{service} has no parent");
            continue;
        };
        let (host, port) = parent.addresses[0].rsplit_once(':').expect("HOST:PORT");
        let (_, p) = nodes
            .get(host)
            .unwrap_or_else(|| panic!("{service} dials `{host}`, which is not a service"));
        assert_eq!(p.code, parent.code, "{service} dials {host} as its parent");
        assert_eq!(
            p.listen_peer.map(|a| a.port().to_string()),
            Some(port.to_owned()),
            "{service} dials {host} on a port it does not listen on"
        );
    }
}

#[test]
fn gen_sh_gives_each_node_its_own_certificate_and_never_the_ca_key() {
    tiersync::identity::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("tempdir");
    gen_sh(tmp.path());
    let secret = std::fs::read(tmp.path().join("ca/deployment.key")).expect("secret");
    let files_before = snapshot(tmp.path());
    for (service, (dir, c)) in generated(tmp.path()) {
        // What `serve` loads first: the chain verifies against the CA, the
        // key matches, and the certificate names this node.
        let tls = TlsMaterial::load(&c.tls.ca, &c.tls.cert, &c.tls.key)
            .unwrap_or_else(|e| panic!("{service}: {e}"));
        assert_eq!(tls.own_code(), &c.code, "{service}");
        assert_eq!(
            std::fs::read(&c.digest_key_file).expect("digest key"),
            secret,
            "{service}: one deployment secret for all"
        );
        for file in walk(&dir) {
            assert_ne!(
                file.file_name().unwrap(),
                "ca.key",
                "{service} must not get the CA key"
            );
        }
    }

    // Again, as compose's init does on every `up`: the CA, the secret and
    // the certificates stay, the configs come out the same.
    gen_sh(tmp.path());
    assert_eq!(snapshot(tmp.path()), files_before, "gen.sh is idempotent");
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                todo.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// Every file under `dir` with its contents.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    walk(dir)
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read");
            (p, bytes)
        })
        .collect()
}

/// The sample names a node exports once every metric family has a series.
fn exported_metric_names() -> BTreeSet<String> {
    let mut registry = prometheus_client::registry::Registry::default();
    let m = Metrics::register(&mut registry);
    let link = LinkLabels {
        peer: "511102".into(),
        direction: "child".into(),
    };
    m.link_up.get_or_create(&link).set(1);
    m.link_stalled.get_or_create(&link).set(0);
    m.link_lag_changes.get_or_create(&link).set(0);
    m.link_lag_seconds.get_or_create(&link).set(0.0);
    m.link_sent.get_or_create(&link).inc();
    m.link_received.get_or_create(&link).inc();
    m.link_sessions.get_or_create(&link).inc();
    m.link_errors.get_or_create(&link).inc();
    let kind = KindLabels {
        kind: "civil.v1.Resident".into(),
    };
    m.applied.get_or_create(&kind).inc();
    m.rejected.get_or_create(&kind).inc();
    let lease = tiersync::store::postgres::LeaseView::default();
    lease.saw(
        "tiersync-0",
        std::time::Duration::ZERO,
        std::time::Duration::from_secs(10),
    );
    tiersync::ops::metrics::register_lease(&mut registry, lease);
    let links = tiersync::sync::links::LinkTable::new(tiersync::clock::SystemClock::shared());
    tiersync::ops::metrics::register_link_states(&mut registry, links);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// Every `tiersync_...` word in `text`.
fn metric_words(text: &str) -> BTreeSet<String> {
    let mut words = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("tiersync_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        words.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    words
}

#[test]
fn alert_rules_name_only_metrics_the_daemon_exports() {
    let exported = exported_metric_names();
    // The names the brief and the docs rely on, with prometheus-client's
    // `_total` on counters.
    for name in [
        "tiersync_link_up",
        "tiersync_link_stalled",
        "tiersync_link_lag_seconds",
        "tiersync_link_errors_total",
        "tiersync_link_sessions_total",
        "tiersync_sync_records_applied_total",
        "tiersync_sync_records_rejected_total",
        "tiersync_store_quarantined_records",
    ] {
        assert!(exported.contains(name), "{name} not in {exported:?}");
    }
    // alerts.yml lists every exported metric in its header, and its rules
    // use no other; a new metric shows up here to be documented.
    let in_rules = metric_words(&read("deploy/prometheus/alerts.yml"));
    assert_eq!(
        in_rules, exported,
        "deploy/prometheus/alerts.yml should name exactly the exported metrics"
    );
    let in_tests = metric_words(&read("deploy/prometheus/alerts.test.yml"));
    let unknown: Vec<_> = in_tests.difference(&exported).collect();
    assert!(
        !in_tests.is_empty() && unknown.is_empty(),
        "alerts.test.yml uses metrics the daemon does not export: {unknown:?}"
    );
}

/// Parses `args` (without the program name) with the real command line.
fn assert_parses(origin: &str, args: &[String]) {
    let argv = std::iter::once("tiersync".to_owned()).chain(args.iter().cloned());
    if let Err(e) = Cli::try_parse_from(argv) {
        panic!(
            "{origin}: `tiersync {}` does not parse:\n{e}",
            args.join(" ")
        );
    }
}

#[test]
fn every_command_line_in_units_image_and_compose_parses() {
    let mut checked = 0;
    for unit in [
        "deploy/systemd/tiersync.service",
        "deploy/systemd/tiersync-hardened.service",
    ] {
        let mut configs = BTreeSet::new();
        for line in read(unit).lines() {
            let Some(command) = line
                .strip_prefix("ExecStartPre=")
                .or_else(|| line.strip_prefix("ExecStart="))
            else {
                continue;
            };
            let mut words = command
                .trim_start_matches(['-', '@', ':', '+', '!'])
                .split_whitespace();
            assert_eq!(words.next(), Some("/usr/bin/tiersync"), "{unit}: {line}");
            let args: Vec<String> = words.map(str::to_owned).collect();
            assert_parses(unit, &args);
            configs.insert(args.last().cloned());
            checked += 1;
        }
        assert_eq!(
            configs,
            BTreeSet::from([Some("/etc/tiersync/tiersync.toml".to_owned())]),
            "{unit}: check-config and serve should read the same file"
        );
    }

    let containerfile = read("deploy/container/Containerfile");
    let json_after = |prefix: &str| -> Vec<String> {
        let line = containerfile
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("Containerfile has no {prefix}"));
        serde_json::from_str(line).expect("exec-form JSON array")
    };
    assert_eq!(json_after("ENTRYPOINT "), ["tiersync"]);
    assert_parses("Containerfile CMD", &json_after("CMD "));
    checked += 1;

    for line in read("deploy/compose/compose.yaml").lines() {
        let line = line.trim();
        if let Some(array) = line.strip_prefix("command: [") {
            let args: Vec<String> =
                serde_json::from_str(&format!("[{array}")).expect("flow array of strings");
            assert_parses("compose.yaml", &args);
            checked += 1;
        } else if let Some(array) = line.strip_prefix("test: [") {
            let words: Vec<String> =
                serde_json::from_str(&format!("[{array}")).expect("flow array of strings");
            assert_eq!(words[..2], ["CMD", "tiersync"], "compose healthcheck");
            assert_parses("compose.yaml healthcheck", &words[2..]);
            checked += 1;
        }
    }
    assert_eq!(checked, 4 + 1 + 5 + 1, "command lines found");
}

/// The hardened unit is the plain one plus sandboxing: same behaviour.
#[test]
fn hardened_unit_keeps_every_setting_of_the_plain_one() {
    let settings = |unit: &str| -> BTreeSet<String> {
        read(unit)
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains('=') && !l.starts_with("Description="))
            .map(str::to_owned)
            .collect()
    };
    let plain = settings("deploy/systemd/tiersync.service");
    let hardened = settings("deploy/systemd/tiersync-hardened.service");
    let missing: Vec<_> = plain.difference(&hardened).collect();
    assert!(missing.is_empty(), "the hardened unit lacks {missing:?}");
    for directive in [
        "ProtectSystem=strict",
        "ProtectHome=true",
        "PrivateTmp=true",
        "NoNewPrivileges=true",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "MemoryDenyWriteExecute=true",
        "SystemCallFilter=@system-service",
        "ReadWritePaths=/var/lib/tiersync",
    ] {
        assert!(
            hardened.contains(directive),
            "hardened unit lacks {directive}"
        );
    }
}
