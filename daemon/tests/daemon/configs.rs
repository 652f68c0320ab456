//! The example configs in `config/` are what operators copy, so they must
//! validate, be named for their tier, and form one consistent deployment: each
//! node's parent is the node of the file one tier up, dialled on the port that
//! node listens on, with the same CA and deployment secret everywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use tiersync::config::{NodeConfig, RawConfig, SyncTuning};
use tiersync_proto::types::Tier;

const TIERS: [Tier; 4] = [Tier::City, Tier::County, Tier::Street, Tier::Community];

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config")
}

/// Every `*.toml` in `config/`, sorted.
fn example_files() -> Vec<PathBuf> {
    let dir = config_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// The tier a file is named for: `street.toml` and `street-anything.toml`
/// are street configs.
fn tier_of_file(path: &Path) -> Tier {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("utf-8 name");
    let word = stem.split('-').next().expect("split yields one part");
    word.parse().unwrap_or_else(|e| {
        panic!(
            "{}: the file name must start with a tier (city, county, street, community): {e}",
            path.display()
        )
    })
}

/// Loads every example, keyed by the tier in its file name; exactly one file
/// per tier, so the parent chain below is unambiguous.
fn load_examples() -> BTreeMap<String, (PathBuf, NodeConfig)> {
    let mut by_tier = BTreeMap::new();
    for path in example_files() {
        let config = NodeConfig::load(&path, &BTreeMap::new())
            .unwrap_or_else(|e| panic!("{} does not validate: {e}", path.display()));
        let tier = tier_of_file(&path);
        assert_eq!(
            config.tier(),
            tier,
            "{} is named for a {tier} node but node.code `{}` is a {}",
            path.display(),
            config.code,
            config.tier()
        );
        if let Some((other, _)) = by_tier.insert(tier.to_string(), (path.clone(), config)) {
            panic!(
                "two {tier} examples: {} and {}",
                other.display(),
                path.display()
            );
        }
    }
    by_tier
}

/// `tiersync check-config FILE` accepts every example as shipped, although
/// the key and certificate files they name (under /etc/tiersync/pki) are
/// not on a build machine: without `--files` it does not open them.
#[test]
fn check_config_accepts_every_example_as_shipped() {
    let files = example_files();
    assert_eq!(files.len(), TIERS.len(), "{files:?}");
    for path in files {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tiersync"))
            .arg("check-config")
            .arg(&path)
            .env("NO_COLOR", "1")
            .output()
            .expect("run tiersync check-config");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(": ok ("),
            "check-config {}: {}\n{stdout}{}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_example_validates_and_is_named_for_its_tier() {
    let examples = load_examples();
    let found: BTreeSet<String> = examples.keys().cloned().collect();
    let wanted: BTreeSet<String> = TIERS.iter().map(Tier::to_string).collect();
    assert_eq!(found, wanted, "config/ should hold one example per tier");
}

#[test]
fn parents_chain_up_to_the_city_on_the_port_the_parent_listens_on() {
    let examples = load_examples();
    let (city_path, city) = &examples["city"];
    assert!(
        city.parent.is_none(),
        "{}: the city is the root",
        city_path.display()
    );
    for pair in TIERS.windows(2) {
        let (upper_path, upper) = &examples[&pair[0].to_string()];
        let (lower_path, lower) = &examples[&pair[1].to_string()];
        let parent = lower
            .parent
            .as_ref()
            .unwrap_or_else(|| panic!("{}: no [parent]", lower_path.display()));
        assert_eq!(
            parent.code,
            upper.code,
            "{}: parent.code should be the node code of {}",
            lower_path.display(),
            upper_path.display()
        );
        let peer = upper
            .listen_peer
            .unwrap_or_else(|| panic!("{}: a parent needs listen.peer", upper_path.display()));
        let (host, port) = parent.addresses[0]
            .rsplit_once(':')
            .expect("validated HOST:PORT");
        assert_eq!(
            port.parse::<u16>().expect("validated port"),
            peer.port(),
            "{}: parent.address `{}` should use the port {} listens on ({peer})",
            lower_path.display(),
            parent.addresses[0],
            upper_path.display()
        );
        assert!(
            host.contains(upper.code.as_str()),
            "{}: parent.address host `{host}` should name the parent `{}` like the other examples",
            lower_path.display(),
            upper.code
        );
    }
}

#[test]
fn listeners_expose_only_the_peer_port() {
    for (tier, (path, c)) in load_examples() {
        assert_eq!(
            c.listen_peer.is_some(),
            tier != "community",
            "{}: every tier but community has children and so a peer listener",
            path.display()
        );
        // The local API and the admin port have no authentication.
        for (key, addr) in [
            ("listen.api", c.listen_api),
            ("listen.admin", c.listen_admin),
        ] {
            let addr = addr.unwrap_or_else(|| panic!("{}: {key} is unset", path.display()));
            assert!(
                addr.ip().is_loopback(),
                "{}: {key} {addr} should stay on loopback",
                path.display()
            );
        }
    }
}

#[test]
fn every_node_uses_its_own_certificate_and_the_shared_deployment_files() {
    let examples = load_examples();
    let mut shared = BTreeSet::new();
    for (path, c) in examples.values() {
        let name = |p: &Path| p.file_name().and_then(|n| n.to_str()).map(str::to_owned);
        // The daemon refuses to start on a certificate for another code.
        assert_eq!(
            name(&c.tls.cert),
            Some(format!("{}.pem", c.code)),
            "{}",
            path.display()
        );
        assert_eq!(
            name(&c.tls.key),
            Some(format!("{}.key", c.code)),
            "{}",
            path.display()
        );
        assert_eq!(
            name(&c.trust.key),
            Some(format!("{}.sm2.key", c.code)),
            "{}",
            path.display()
        );
        assert_eq!(
            name(&c.trust.cert),
            Some(format!("{}.sm2.pem", c.code)),
            "{}",
            path.display()
        );
        assert_eq!(
            c.trust.root_key.is_some(),
            c.tier() == Tier::City,
            "only the city holds trust-root.key: {}",
            path.display()
        );
        assert!(
            c.storage.sqlite_path().is_none_or(|p| p.is_absolute()),
            "{}",
            path.display()
        );
        shared.insert((
            c.tls.ca.clone(),
            c.trust.root.clone(),
            c.digest_key_file.clone(),
        ));
    }
    assert_eq!(
        shared.len(),
        1,
        "all examples should share one CA, one trust root and one deployment secret: {shared:?}"
    );
}

#[test]
fn codes_and_names_are_real_leshan_divisions() {
    let divisions =
        tiersync::divisions::parse(tiersync::divisions::LESHAN_CSV).expect("shipped divisions");
    for (path, c) in load_examples().values() {
        let d = divisions
            .get(&c.code)
            .unwrap_or_else(|| panic!("{}: `{}` is not a Leshan code", path.display(), c.code));
        assert_eq!(
            c.name.as_deref(),
            Some(d.name.as_str()),
            "{}",
            path.display()
        );
    }
}

/// The `[sync]` keys are documented as commented-out defaults. Uncommented,
/// they must be real keys (unknown keys are errors) with the real defaults,
/// and every tuning knob must be documented.
#[test]
fn commented_sync_defaults_are_real_keys_with_the_real_defaults() {
    let defaults = SyncTuning::default();
    for path in example_files() {
        let text = std::fs::read_to_string(&path).expect("readable");
        let mut in_sync = false;
        let mut documented = BTreeSet::new();
        let uncommented: Vec<String> = text
            .lines()
            .map(|line| {
                if line.starts_with('[') {
                    in_sync = line.trim() == "[sync]";
                }
                if in_sync
                    && let Some(setting) = line.strip_prefix("# ")
                    && let Some((key, _)) = setting.split_once(" = ")
                    && !key.is_empty()
                    && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                {
                    documented.insert(key.to_owned());
                    return setting.to_owned();
                }
                line.to_owned()
            })
            .collect();
        assert_eq!(
            documented.len(),
            6,
            "{}: document every [sync] key, found {documented:?}",
            path.display()
        );
        let raw: RawConfig = toml::from_str(&uncommented.join("\n")).unwrap_or_else(|e| {
            panic!(
                "{} with its [sync] defaults uncommented: {e}",
                path.display()
            )
        });
        let sync = raw
            .validate(&config_dir())
            .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()))
            .sync;
        assert_eq!(
            sync.batch_records,
            defaults.batch_records,
            "{}",
            path.display()
        );
        assert_eq!(sync.batch_bytes, defaults.batch_bytes, "{}", path.display());
        assert_eq!(sync.window, defaults.window, "{}", path.display());
        assert_eq!(sync.heartbeat, defaults.heartbeat, "{}", path.display());
        assert_eq!(sync.stall_after, defaults.stall_after, "{}", path.display());
        assert_eq!(
            sync.max_frame_bytes,
            defaults.max_frame_bytes,
            "{}",
            path.display()
        );
    }
}
