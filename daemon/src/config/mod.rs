//! Node configuration: versioned TOML in, a validated [`NodeConfig`] out.
//!
//! [`NodeConfig::parse`] reports *every* problem of a file at once, each
//! with its key path and, where the file sets the key, its line: TOML
//! syntax errors (all of them, and then nothing else, since what a broken
//! file says is uncertain); unknown keys, with the known key they most
//! resemble; values of the wrong type; and the semantic checks of what the
//! rest says. An operator fixes a file in one pass. `tiersync check-config`
//! and `tiersync serve` both run exactly this.
//!
//! Relative paths in a file resolve against the file's directory, so a
//! config works wherever the daemon's working directory is.
//!
//! This module owns the validated types and [`NodeConfig::load`]; `raw`
//! holds the file as written (the serde structs: the one list of keys and
//! their types) and its environment overrides, `read` reads a file's text
//! into them collecting unknown keys and type errors (`schema` knows every
//! table's keys, from the same structs), `validate` turns them into a
//! [`NodeConfig`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tiersync_proto::types::{DivisionCode, Tier};

mod raw;
mod read;
mod schema;
mod validate;

pub use raw::{
    ENV_OVERRIDES, RawConfig, RawDeployment, RawListen, RawNode, RawParent, RawStorage, RawSync,
    RawTls, RawTrust,
};

/// The config format version this build reads.
pub const CONFIG_VERSION: u32 = 1;

/// Where a problem's key got its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssueSource {
    /// The line of the file (from 1) that sets the key.
    Line(usize),
    /// An environment variable that overrides the key.
    Env(&'static str),
}

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The key path, e.g. `tls.cert` or `parent.addresses[1]`.
    pub key: String,
    pub problem: String,
    /// Where the key was set; `None` for a key the file lacks.
    pub source: Option<IssueSource>,
}

impl ConfigIssue {
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> ConfigIssue {
        ConfigIssue {
            key: key.into(),
            problem: problem.into(),
            source: None,
        }
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(IssueSource::Line(line)) => {
                write!(f, "line {line}: `{}`: {}", self.key, self.problem)
            }
            Some(IssueSource::Env(var)) => {
                write!(f, "`{}` (from {var}): {}", self.key, self.problem)
            }
            None => write!(f, "`{}`: {}", self.key, self.problem),
        }
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
    #[error("config file {path} is not valid TOML ({} error(s); the rest is checked once it parses):\n{}", errors.len(), errors.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Syntax { path: PathBuf, errors: Vec<String> },
    #[error("config file {path} has {} problem(s):\n{}", issues.len(), issues.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        issues: Vec<ConfigIssue>,
    },
}

impl ConfigError {
    /// The problems found, if the file was read and parsed.
    pub fn issues(&self) -> &[ConfigIssue] {
        match self {
            ConfigError::Invalid { issues, .. } => issues,
            _ => &[],
        }
    }
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
    /// The adapter port: department systems (mutual TLS).
    pub listen_adapter: Option<SocketAddr>,
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

    /// Parses and validates `text` as the config file at `path` (relative
    /// paths resolve against its directory), reporting every problem.
    pub fn parse(
        text: &str,
        path: &Path,
        env: &BTreeMap<String, String>,
    ) -> Result<NodeConfig, ConfigError> {
        let doc = read::Document::parse(text).map_err(|errors| ConfigError::Syntax {
            path: path.to_owned(),
            errors,
        })?;
        let reading = doc.read();
        let mut issues: Vec<ConfigIssue> = reading
            .found
            .iter()
            .map(|found| ConfigIssue {
                key: read::render(&found.path),
                problem: found.problem.clone(),
                source: Some(IssueSource::Line(doc.line_at(found.span.start))),
            })
            .collect();
        let dropped: Vec<String> = reading.dropped.iter().map(|p| read::render(p)).collect();
        let invalid = |issues| ConfigError::Invalid {
            path: path.to_owned(),
            issues,
        };
        let Some(raw) = reading.raw else {
            return Err(invalid(issues));
        };
        let base = path.parent().unwrap_or(Path::new("."));
        match raw.with_env(env).validate(base) {
            Ok(config) if issues.is_empty() => return Ok(config),
            Ok(_) => {}
            Err(semantic) => {
                // A key taken out for its type reads as missing; what the
                // checks say of it (or of its table) is already reported.
                issues.extend(
                    semantic
                        .into_iter()
                        .filter(|i| !dropped.iter().any(|d| related(&i.key, d)))
                        .map(|mut i| {
                            i.source = env_source(&i.key, env)
                                .or_else(|| doc.line_of(&i.key).map(IssueSource::Line));
                            i
                        }),
                );
            }
        }
        // In the order of the file; keys it lacks last.
        issues.sort_by_key(|i| match i.source {
            Some(IssueSource::Line(line)) => line,
            _ => usize::MAX,
        });
        Err(invalid(issues))
    }
}

/// Whether one key path is the other or inside it (`parent` and
/// `parent.code`, `parent.addresses` and `parent.addresses[1]`).
fn related(a: &str, b: &str) -> bool {
    let inside = |inner: &str, outer: &str| {
        inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
    };
    inside(a, b) || inside(b, a)
}

/// The environment variable that set `key`, if one did.
fn env_source(key: &str, env: &BTreeMap<String, String>) -> Option<IssueSource> {
    ENV_OVERRIDES.iter().find_map(|(var, overridden)| {
        // TIERSYNC_PARENT_ADDRESS sets parent.addresses (one or more).
        let sets = key == *overridden
            || (*var == "TIERSYNC_PARENT_ADDRESS" && key.starts_with("parent.addresses"));
        (sets && env.contains_key(*var)).then_some(IssueSource::Env(var))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREET: &str = r#"version = 1
[node]
code = "511102004"
[storage]
path = "node.db"
[listen]
peer = "0.0.0.0:7400"
[parent]
code = "511102"
address = "county.example:7400"
[tls]
ca = "pki/ca.pem"
cert = "pki/511102004.pem"
key = "pki/511102004.key"
[trust]
root = "pki/trust-root.pem"
key = "pki/511102004.sm2.key"
cert = "pki/511102004.sm2.pem"
[deployment]
digest_key_file = "pki/deployment.key"
"#;

    fn parse_with(text: &str, env: &[(&str, &str)]) -> Result<NodeConfig, Vec<String>> {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        NodeConfig::parse(text, Path::new("/etc/tiersync/tiersync.toml"), &env).map_err(|e| {
            assert!(matches!(e, ConfigError::Invalid { .. }), "{e}");
            e.issues().iter().map(ConfigIssue::to_string).collect()
        })
    }

    fn parse(text: &str) -> Result<NodeConfig, Vec<String>> {
        parse_with(text, &[])
    }

    #[test]
    fn a_good_file_parses_and_resolves_against_its_directory() {
        let c = parse(STREET).unwrap();
        assert_eq!(c.code.as_str(), "511102004");
        assert_eq!(c.tls.ca, PathBuf::from("/etc/tiersync/pki/ca.pem"));
    }

    #[test]
    fn unknown_keys_type_errors_and_semantic_problems_come_in_one_report() {
        let text = STREET
            .replace("code = \"511102\"", "code = \"511103\"")
            .replace(
                "cert = \"pki/511102004.pem\"",
                "cert_fle = \"pki/511102004.pem\"",
            )
            .replace(
                "[deployment]",
                "[sync]\nbatch_records = \"1000\"\n[deployment]",
            )
            .replace(
                "peer = \"0.0.0.0:7400\"",
                "peer = \"0.0.0.0:7400\"\nadmn = \"x\"",
            );
        assert_eq!(
            parse(&text).unwrap_err(),
            vec![
                "line 8: `listen.admn`: unknown key (did you mean `admin`?)",
                "line 10: `parent.code`: `511103` does not own node `511102004`; the parent of `511102004` is `511102` (its first 6 digits)",
                "line 14: `tls.cert_fle`: unknown key (did you mean `cert`?)",
                "line 21: `sync.batch_records`: expected an integer, 0 or more, found a string (\"1000\")",
                "`tls.cert`: missing",
            ]
        );
    }

    #[test]
    fn a_key_of_the_wrong_type_is_not_also_reported_missing() {
        let text = STREET
            .replace("ca = \"pki/ca.pem\"", "ca = [\"pki/ca.pem\"]")
            .replace("code = \"511102004\"", "code = 511102004");
        assert_eq!(
            parse(&text).unwrap_err(),
            vec![
                "line 3: `node.code`: expected a string, found the integer 511102004",
                "line 12: `tls.ca`: expected a string, found an array",
            ]
        );
        // A whole table of the wrong type, and a bad element of a list.
        let (head, tail) = STREET.split_once("[tls]").unwrap();
        let text = head
            .replace("version = 1", "version = 1\ntls = \"pki\"")
            .replace(
                "address = \"county.example:7400\"",
                "addresses = [\"county.example:7400\", 7401]",
            )
            + &tail[tail.find("[trust]").unwrap()..];
        assert_eq!(
            parse(&text).unwrap_err(),
            vec![
                "line 2: `tls`: expected a table, found a string (\"pki\")",
                "line 11: `parent.addresses[1]`: expected a string, found the integer 7401",
            ]
        );
    }

    #[test]
    fn a_problem_with_a_value_from_the_environment_names_the_variable() {
        let errors = parse_with(STREET, &[("TIERSYNC_LISTEN_PEER", "nowhere")]).unwrap_err();
        assert_eq!(
            errors,
            vec![
                "`listen.peer` (from TIERSYNC_LISTEN_PEER): `nowhere` is not an IP:port address, e.g. `0.0.0.0:7400`"
            ]
        );
        let errors = parse_with(STREET, &[("TIERSYNC_PARENT_ADDRESS", "a:1, b")]).unwrap_err();
        assert_eq!(
            errors,
            vec![
                "`parent.addresses` (from TIERSYNC_PARENT_ADDRESS): `b` is not HOST:PORT, e.g. `street.example:7400`"
            ]
        );
    }

    #[test]
    fn syntax_errors_stop_before_the_other_checks() {
        let e = NodeConfig::parse(
            "version = 1\n[node\n",
            Path::new("/etc/tiersync/tiersync.toml"),
            &BTreeMap::new(),
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("config file /etc/tiersync/tiersync.toml is not valid TOML (1 error(s); the rest is checked once it parses):\n  - line 2, column 6: "),
            "{text}"
        );
    }

    #[test]
    fn related_key_paths() {
        assert!(related("tls", "tls.ca"));
        assert!(related("tls.ca", "tls"));
        assert!(related("parent.addresses", "parent.addresses[1]"));
        assert!(related("tls.ca", "tls.ca"));
        assert!(!related("tls.ca", "tls.ca_key"));
        assert!(!related("parent.address", "parent.addresses"));
    }
}
