//! The fixed deployment every fuzz target runs against: a trust root, a TLS
//! CA and the keys of four nodes on one branch of Leshan (city `5111`,
//! county `511102`, street `511102004`, community `511102004001`), committed
//! under `fixtures/` so that the seeds in `fuzz/corpus/` (signed with these
//! keys) verify in every fuzz run; and a street node with a SQLite store
//! that has learned the four nodes' origin keys, for the targets that feed
//! the node itself.
//!
//! The fixture files are test material, not secrets; they were made with
//! `tiersync pki init --city 5111` and `tiersync pki issue --days 7300` for
//! each code (see `fixtures/README.md`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use prost::Message;
use tiersync_proto::types::{DigestKey, DivisionCode, RecordId, Tier};
use tiersync_proto::wire;
use tiersync_trust::cert::Certificate;

use crate::config::SyncTuning;
use crate::identity::origin::{Identity, RootIssuer, TrustRoot};
use crate::kinds::KIND_NODE_KEY;
use crate::node::Node;
use crate::ops::metrics::Metrics;

/// The city, whose trust root signs every origin certificate.
pub const CITY: &str = "5111";
/// The street's parent.
pub const COUNTY: &str = "511102";
/// The node of [`node`]: a street, with a parent and children.
pub const STREET: &str = "511102004";
/// The street's child that the fixture's links run with.
pub const COMMUNITY: &str = "511102004001";
/// Every node with keys in the fixture, top down.
pub const CODES: [&str; 4] = [CITY, COUNTY, STREET, COMMUNITY];

/// A fixture file's text.
macro_rules! fixture_text {
    ($name:literal) => {
        include_str!(concat!("fixtures/", $name))
    };
}

/// The files of one node: origin key and certificate, TLS key and certificate.
struct NodeFiles {
    code: &'static str,
    origin_key: &'static str,
    origin_cert: &'static str,
    tls_key: &'static str,
    tls_cert: &'static str,
}

const NODES: [NodeFiles; 4] = [
    NodeFiles {
        code: CITY,
        origin_key: fixture_text!("5111.sm2.key"),
        origin_cert: fixture_text!("5111.sm2.pem"),
        tls_key: fixture_text!("5111.key"),
        tls_cert: fixture_text!("5111.pem"),
    },
    NodeFiles {
        code: COUNTY,
        origin_key: fixture_text!("511102.sm2.key"),
        origin_cert: fixture_text!("511102.sm2.pem"),
        tls_key: fixture_text!("511102.key"),
        tls_cert: fixture_text!("511102.pem"),
    },
    NodeFiles {
        code: STREET,
        origin_key: fixture_text!("511102004.sm2.key"),
        origin_cert: fixture_text!("511102004.sm2.pem"),
        tls_key: fixture_text!("511102004.key"),
        tls_cert: fixture_text!("511102004.pem"),
    },
    NodeFiles {
        code: COMMUNITY,
        origin_key: fixture_text!("511102004001.sm2.key"),
        origin_cert: fixture_text!("511102004001.sm2.pem"),
        tls_key: fixture_text!("511102004001.key"),
        tls_cert: fixture_text!("511102004001.pem"),
    },
];

/// The trust root's certificate, PEM.
pub const TRUST_ROOT_PEM: &str = fixture_text!("trust-root.pem");
const TRUST_ROOT_KEY: &str = fixture_text!("trust-root.key");
/// The deployment's TLS CA certificate, PEM.
pub const CA_PEM: &str = fixture_text!("ca.pem");
const CA_KEY: &str = fixture_text!("ca.key");
/// The deployment secret (the digest key), hex.
pub const DEPLOYMENT_KEY: &str = fixture_text!("deployment.key");

fn files(code: &str) -> &'static NodeFiles {
    NODES
        .iter()
        .find(|n| n.code == code)
        .unwrap_or_else(|| panic!("no fixture node `{code}`; the fixture has {CODES:?}"))
}

/// A fixture code as a [`DivisionCode`].
pub fn code(code: &str) -> DivisionCode {
    DivisionCode::parse(code).expect("fixture codes are valid")
}

/// The deployment's trust root.
pub fn trust_root() -> &'static TrustRoot {
    static ROOT: OnceLock<TrustRoot> = OnceLock::new();
    ROOT.get_or_init(|| {
        TrustRoot::from_pem(TRUST_ROOT_PEM, "the fuzz fixture's trust root")
            .expect("fixture trust root")
    })
}

/// The trust root with its key, as the city holds it.
pub fn root_issuer() -> RootIssuer {
    RootIssuer::from_pem(
        TRUST_ROOT_PEM,
        TRUST_ROOT_KEY,
        "the fuzz fixture's trust root",
    )
    .expect("fixture trust root key")
}

/// The deployment's TLS CA, as the city holds it.
pub fn ca() -> crate::identity::pki::Ca {
    crate::identity::pki::Ca::load(CA_PEM, CA_KEY).expect("fixture CA")
}

/// The signing identity of fixture node `code`.
pub fn identity(code: &str) -> Identity {
    let f = files(code);
    Identity::load(
        trust_root(),
        &[],
        &self::code(code),
        f.origin_key,
        f.origin_cert,
        "fuzz fixture",
    )
    .expect("fixture identity")
}

/// Fixture node `code`'s origin signing key, PKCS#8 PEM.
pub fn origin_key_pem(code: &str) -> &'static str {
    files(code).origin_key
}

/// Fixture node `code`'s origin certificate, PEM.
pub fn origin_cert_pem(code: &str) -> &'static str {
    files(code).origin_cert
}

/// Fixture node `code`'s TLS key and certificate, PEM.
pub fn tls_pem(code: &str) -> (&'static str, &'static str) {
    let f = files(code);
    (f.tls_key, f.tls_cert)
}

/// The scope of what a node publishes to the whole deployment.
pub fn everywhere() -> wire::Scope {
    wire::Scope {
        up_to: Tier::City.to_wire() as i32,
        down_to: vec![CITY.to_owned()],
        departments: vec![],
    }
}

/// Fixture node `code`'s origin certificate, DER (read once: targets
/// build records with it on every input).
pub fn origin_cert_der(code: &str) -> &'static [u8] {
    static DERS: OnceLock<Vec<(&'static str, Vec<u8>)>> = OnceLock::new();
    let ders = DERS.get_or_init(|| {
        NODES
            .iter()
            .map(|n| {
                let cert = Certificate::from_pem(n.origin_cert).expect("fixture certificate");
                (n.code, cert.to_der().to_vec())
            })
            .collect()
    });
    let (_, der) = ders
        .iter()
        .find(|(c, _)| *c == code)
        .unwrap_or_else(|| panic!("no fixture node `{code}`; the fixture has {CODES:?}"));
    der
}

/// The `NodeKey` record fixture node `code` publishes, unsigned.
pub fn node_key_record(code: &str) -> wire::Record {
    wire::Record {
        id: RecordId::from_bytes(&[
            0x01,
            0x8c,
            0,
            0,
            0,
            0,
            0x70,
            0,
            0x80,
            0,
            0,
            0,
            0,
            0,
            0,
            code.len() as u8,
        ])
        .expect("a UUIDv7")
        .as_bytes()
        .to_vec(),
        kind: KIND_NODE_KEY.into(),
        owner: Some(wire::Owner {
            node: code.into(),
            department: String::new(),
        }),
        version: 1,
        updated_at: 1,
        scope: Some(everywhere()),
        payload: wire::NodeKey {
            certificates: vec![origin_cert_der(code).to_vec()],
        }
        .encode_to_vec()
        .into(),
        ..Default::default()
    }
}

/// The street node the node-level targets feed, with its runtime.
pub struct NodeFixture {
    /// Runs the node's tasks; targets `block_on` it.
    pub runtime: tokio::runtime::Runtime,
    /// The street [`STREET`], knowing every fixture node's origin key.
    pub node: Arc<Node>,
}

/// Small batches and window, so a link session reads little of the store.
fn tuning() -> SyncTuning {
    SyncTuning {
        batch_records: 8,
        window: 2,
        ..SyncTuning::default()
    }
}

/// The street node, made on first use (per process).
pub fn node() -> &'static NodeFixture {
    static NODE: OnceLock<NodeFixture> = OnceLock::new();
    NODE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let node = runtime.block_on(async {
            let street = code(STREET);
            let store =
                crate::store::sqlite::SqliteStore::open(&store_dir().join("street.db"), &street)
                    .await
                    .expect("the fixture's SQLite store");
            let mut registry = prometheus_client::registry::Registry::default();
            let node = Node::new(
                street,
                None,
                Arc::new(store),
                DigestKey::from_hex(DEPLOYMENT_KEY.trim()).expect("fixture deployment key"),
                Arc::new(Metrics::register(&mut registry)),
                tuning(),
                trust_root().clone(),
                identity(STREET),
                crate::clock::SystemClock::shared(),
            )
            .await
            .expect("the fixture node");
            for code in CODES {
                node.keyring()
                    .learn(&node_key_record(code))
                    .expect("fixture origin keys are issued by the fixture root");
            }
            node
        });
        NodeFixture { runtime, node }
    })
}

/// A directory for this process's store, under the system's temporary
/// directory. A fuzzer exits without running destructors, so the
/// directories of processes that have ended are removed here instead.
fn store_dir() -> PathBuf {
    const PREFIX: &str = "tiersync-fuzz-";
    let base = std::env::temp_dir();
    let proc = Path::new("/proc");
    if proc.join("self").exists()
        && let Ok(entries) = std::fs::read_dir(&base)
    {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if let Some(pid) = name.to_string_lossy().strip_prefix(PREFIX)
                && pid.bytes().all(|b| b.is_ascii_digit())
                && !proc.join(pid).exists()
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = base.join(format!("{PREFIX}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| {
        panic!(
            "cannot make the fuzz store directory {}: {e}",
            dir.display()
        )
    });
    dir
}
