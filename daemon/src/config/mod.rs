//! Node configuration: versioned TOML in, a validated [`NodeConfig`] out.
//!
//! [`RawConfig`] is the file as written (`deny_unknown_fields`, so a typo is an
//! error, not a silently ignored key). [`RawConfig::validate`] checks every
//! field, collects *every* problem with its key path and value, and returns
//! either the typed config or all the errors at once, so an operator fixes a
//! file in one pass. `tiersync check-config` runs exactly this.
//!
//! Relative paths in a file resolve against the file's directory, so a
//! config works wherever the daemon's working directory is.
//!
//! This module owns the validated types and [`NodeConfig::load`]; `raw` holds
//! the file as written and its environment overrides, `validate` turns it
//! into a [`NodeConfig`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tiersync_proto::types::{DivisionCode, Tier};

mod raw;
mod validate;

pub use raw::{
    ENV_OVERRIDES, RawConfig, RawDeployment, RawListen, RawNode, RawParent, RawStorage, RawSync,
    RawTls, RawTrust,
};

/// The config format version this build reads.
pub const CONFIG_VERSION: u32 = 1;

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.key, self.problem)
    }
}

/// Every problem found in one config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML for tiersync: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path} has {} problem(s):\n{}", issues.len(), issues.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        issues: Vec<ConfigIssue>,
    },
}

/// Sync tuning with production defaults.
#[derive(Debug, Clone)]
pub struct SyncTuning {
    /// Most records in one batch.
    pub batch_records: usize,
    /// Soft cap on one batch's encoded size.
    pub batch_bytes: usize,
    /// Batches in flight without an ack. The receiver writes every batch
    /// already verified when a write begins in one transaction (up to 8,000
    /// records), so the window bounds how large a catch-up's commits can
    /// get: with 4, commits held 1,000-2,000 records; with 16, a 100,000
    /// record catch-up takes ~30 commits (`cargo bench --bench link`).
    /// Each commit rewrites every page of the natural-key index it touches
    /// (the keys are random), and a larger commit shares those pages among
    /// more records. The sender holds up to `window` batches in memory.
    pub window: usize,
    pub heartbeat: Duration,
    /// A link with lag and no progress for this long is reported stalled.
    pub stall_after: Duration,
    /// Largest frame a peer may send; larger ones end the session.
    pub max_frame_bytes: usize,
    /// Check every arriving record's owner signature. Not settable from a
    /// config file: only the link benchmark turns it off, to measure what
    /// verification costs.
    pub verify_origin: bool,
}

impl Default for SyncTuning {
    fn default() -> Self {
        Self {
            batch_records: 1000,
            batch_bytes: 4 << 20,
            window: 16,
            heartbeat: Duration::from_secs(5),
            stall_after: Duration::from_secs(30),
            max_frame_bytes: 16 << 20,
            verify_origin: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ParentConfig {
    pub code: DivisionCode,
    /// The parent's peer addresses, at least one: its active daemon and any
    /// standby. A child dials the next on a connect error.
    pub addresses: Vec<String>,
}

/// Where a node keeps its store.
#[derive(Clone, PartialEq, Eq)]
pub enum Storage {
    /// A SQLite file (the embedded default).
    Sqlite(PathBuf),
    /// A PostgreSQL database (data centres); the URL as configured.
    Postgres(String),
}

impl Storage {
    /// The SQLite file, if that is the engine.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Storage::Sqlite(p) => Some(p),
            Storage::Postgres(_) => None,
        }
    }
}

/// Shows the store without a PostgreSQL password, so it can go in logs,
/// errors and the status page.
impl fmt::Display for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Storage::Sqlite(p) => write!(f, "{}", p.display()),
            Storage::Postgres(url) => f.write_str(&crate::store::postgres::mask_url(url)),
        }
    }
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, Clone)]
pub struct TrustPaths {
    pub root: PathBuf,
    pub key: PathBuf,
    pub cert: PathBuf,
    pub root_key: Option<PathBuf>,
    pub chain: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca_key: Option<PathBuf>,
}

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub code: DivisionCode,
    pub name: Option<String>,
    pub storage: Storage,
    /// PostgreSQL: the active daemon's lease renewal and expiry.
    pub lease: crate::store::postgres::LeaseTiming,
    pub listen_peer: Option<SocketAddr>,
    pub listen_api: Option<SocketAddr>,
    pub listen_admin: Option<SocketAddr>,
    pub parent: Option<ParentConfig>,
    pub tls: TlsPaths,
    pub trust: TrustPaths,
    pub digest_key_file: PathBuf,
    pub sync: SyncTuning,
}

impl NodeConfig {
    pub fn tier(&self) -> Tier {
        self.code.tier()
    }

    /// Reads, parses and validates a file; `env` overrides keys
    /// (`TIERSYNC_STORAGE_PATH`, `TIERSYNC_PARENT_ADDRESS`, ...), injected so
    /// tests never touch the process environment.
    pub fn load(path: &Path, env: &BTreeMap<String, String>) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path, env)
    }

    /// Parses and validates the text of the file at `path` (which names it
    /// in errors and anchors its relative paths); `env` as for
    /// [`NodeConfig::load`].
    pub fn parse(
        text: &str,
        path: &Path,
        env: &BTreeMap<String, String>,
    ) -> Result<NodeConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        raw.with_env(env)
            .validate(base)
            .map_err(|issues| ConfigError::Invalid {
                path: path.to_owned(),
                issues,
            })
    }
}
