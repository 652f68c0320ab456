//! The config file as written: the serde `Raw*` structs, every field
//! optional so validation can name each missing key, and the environment
//! variables that override keys before validation.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub version: Option<u32>,
    pub node: Option<RawNode>,
    pub storage: Option<RawStorage>,
    #[serde(default)]
    pub listen: RawListen,
    pub parent: Option<RawParent>,
    pub tls: Option<RawTls>,
    pub trust: Option<RawTrust>,
    pub deployment: Option<RawDeployment>,
    #[serde(default)]
    pub sync: RawSync,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub code: Option<String>,
    pub tier: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    /// `sqlite://PATH` or a plain path to the SQLite file, or a
    /// `postgres://USER@HOST:PORT/DB` URL.
    pub path: Option<String>,
    /// PostgreSQL: how often the active daemon renews its lease.
    pub lease_renew_ms: Option<u64>,
    /// PostgreSQL: how long a renewal lasts; a standby takes over a lease
    /// not renewed for this long.
    pub lease_expiry_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    /// Peer port for children (mutual TLS). Absent on a node without children.
    pub peer: Option<String>,
    /// Local API (plain gRPC, keep it on loopback).
    pub api: Option<String>,
    /// Adapter API: department systems, mutual TLS with department
    /// certificates. Absent: no department docks here.
    pub adapter: Option<String>,
    /// Admin HTTP: /metrics, /healthz, /readyz, status page.
    pub admin: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawParent {
    pub code: Option<String>,
    /// `host:port` of the parent's peer listener.
    pub address: Option<String>,
    /// Several `host:port`s of one parent (an active daemon and its
    /// standby); the child dials them in turn.
    pub addresses: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The deployment CA's private key: at the city only, which then issues
    /// the certificates of nodes that join (`tiersync join`).
    pub ca_key: Option<PathBuf>,
}

/// Signed origin: the deployment's trust root and this node's SM2 signing
/// key with its origin certificate (see `crate::identity::origin`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrust {
    pub root: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    /// The trust root's private key: at the city only, which then issues
    /// origin certificates to nodes that join.
    pub root_key: Option<PathBuf>,
    /// The roots since the first one (`tiersync join` writes it when this
    /// node's origin certificate comes from a rolled-over root).
    pub chain: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeployment {
    /// File holding the deployment-wide HMAC secret (hex) for ID-number digests.
    pub digest_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSync {
    pub batch_records: Option<usize>,
    pub batch_bytes: Option<usize>,
    pub window: Option<usize>,
    pub heartbeat_secs: Option<u64>,
    pub stall_secs: Option<u64>,
    pub max_frame_bytes: Option<usize>,
}

/// The environment variables that override config keys.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("TIERSYNC_STORAGE_PATH", "storage.path"),
    ("TIERSYNC_LISTEN_PEER", "listen.peer"),
    ("TIERSYNC_LISTEN_API", "listen.api"),
    ("TIERSYNC_LISTEN_ADAPTER", "listen.adapter"),
    ("TIERSYNC_LISTEN_ADMIN", "listen.admin"),
    ("TIERSYNC_PARENT_ADDRESS", "parent.address"),
];

impl RawConfig {
    /// Applies environment overrides (see [`ENV_OVERRIDES`]).
    pub fn with_env(mut self, env: &BTreeMap<String, String>) -> RawConfig {
        for (var, _) in ENV_OVERRIDES {
            let Some(value) = env.get(*var).cloned() else {
                continue;
            };
            match *var {
                "TIERSYNC_STORAGE_PATH" => {
                    self.storage.get_or_insert_with(RawStorage::default).path = Some(value)
                }
                "TIERSYNC_LISTEN_PEER" => self.listen.peer = Some(value),
                "TIERSYNC_LISTEN_API" => self.listen.api = Some(value),
                "TIERSYNC_LISTEN_ADAPTER" => self.listen.adapter = Some(value),
                "TIERSYNC_LISTEN_ADMIN" => self.listen.admin = Some(value),
                "TIERSYNC_PARENT_ADDRESS" => {
                    let parent = self.parent.get_or_insert(RawParent {
                        code: None,
                        address: None,
                        addresses: None,
                    });
                    // one or more, comma-separated
                    parent.address = None;
                    parent.addresses =
                        Some(value.split(',').map(|a| a.trim().to_owned()).collect());
                }
                _ => unreachable!("every override is matched above"),
            }
        }
        self
    }
}
