//! The `tiersync` command line: run a node, check its config, manage the
//! deployment's PKI, talk to a node's local API, and run the demo.
//!
//! This module owns the clap definitions and the dispatch; the commands live
//! by what they work on: `node` (a node through its config file), `records`
//! (records through the local API) and `admin` (the deployment's PKI, joining,
//! the trust list, status and quarantine).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tiersync_proto::wire::local_api_client::LocalApiClient;
use tonic::transport::Channel;

mod admin;
mod grants;
mod node;
mod records;

pub use admin::format_status;
pub use records::record_json;

#[derive(Debug, Parser)]
#[command(
    name = "tiersync",
    version,
    about = "Federated sync of canonical records across community, street, county and city"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// Address of the node's local API.
    #[arg(long, default_value = "127.0.0.1:7401", env = "TIERSYNC_API")]
    pub api: SocketAddr,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and report every problem at once, each with
    /// its key and line: unknown keys, values of the wrong type, and what
    /// the values say (use as ExecStartPre). The key and certificate files
    /// it names are not opened unless --files is given.
    CheckConfig {
        /// The config file (or --config FILE).
        #[arg(
            value_name = "FILE",
            required_unless_present = "config",
            conflicts_with = "config"
        )]
        file: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Also check every file the config names: that it exists, is
        /// readable and holds what it should (certificates, keys, the
        /// deployment secret), and that they fit together.
        #[arg(long)]
        files: bool,
    },
    /// Give the node's store a new epoch after restoring it from a backup, so
    /// its peers resend instead of skipping renumbered changes. Run it with
    /// the node stopped; on PostgreSQL it refuses while a daemon of the node
    /// holds the active lease.
    NewEpoch {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check or show the node's tamper-evident audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Run a four-tier federation of Leshan in one process and show it converge.
    Demo {
        /// Keep the demo's files here instead of a temporary folder.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Residents collected at each community.
        #[arg(long, default_value_t = 200)]
        residents: usize,
    },
    /// Join a deployment as a new node: one command, with a token from the
    /// parent's operator (`tiersync pki join-token`). Generates the key here,
    /// gets the certificate issued through the tree, writes DIR/tiersync.toml,
    /// and then runs the node (unless --no-serve).
    Join {
        /// HOST:PORT of the parent's peer listener.
        #[arg(long)]
        parent: String,
        /// The join token.
        #[arg(long, env = "TIERSYNC_JOIN_TOKEN")]
        token: String,
        /// Directory for the node's config, keys and store.
        #[arg(long, default_value = "/etc/tiersync")]
        dir: PathBuf,
        /// Peer listener for the node's own children (not for communities).
        #[arg(long)]
        listen_peer: Option<String>,
        #[arg(long, default_value = "127.0.0.1:7401")]
        listen_api: String,
        #[arg(long, default_value = "127.0.0.1:7402")]
        listen_admin: String,
        /// Seconds to keep retrying while the parent or the city is unreachable.
        #[arg(long, default_value_t = 300)]
        retry_secs: u64,
        /// Write the node's files and stop, e.g. to run it under systemd.
        #[arg(long)]
        no_serve: bool,
    },
    /// The trust list: revoke a node's signing keys (at the city), or show
    /// the list a node holds.
    Trust {
        #[command(subcommand)]
        command: TrustCommand,
    },
    /// Departments' grants (事项准入): request, approve, withdraw, list.
    Grant {
        #[command(subcommand)]
        command: grants::GrantCommand,
    },
    /// The deployment's certificate authority and node certificates.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Create or change a record (at a node that does not own it: an amendment).
    Put {
        #[command(flatten)]
        api: ApiArgs,
        /// Canonical kind, e.g. civil.v1.Resident.
        #[arg(long)]
        kind: String,
        /// The payload as JSON (protobuf JSON mapping of the kind).
        #[arg(long, conflicts_with = "json_file")]
        json: Option<String>,
        /// The payload as JSON, read from FILE (`-`: standard input), for
        /// records too large for a command-line argument.
        #[arg(long, value_name = "FILE")]
        json_file: Option<PathBuf>,
        /// Record id to change; omit to create.
        #[arg(long)]
        id: Option<String>,
        /// The version you last saw (0 to create).
        #[arg(long, default_value_t = 0)]
        expected_version: u64,
        /// Highest tier the record may travel up to (community, street, county, city).
        #[arg(long)]
        up_to: Option<String>,
        /// Division prefixes the record may travel down to (repeatable).
        #[arg(long)]
        down_to: Vec<String>,
        #[arg(long)]
        delete: bool,
        /// Why (for an amendment).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Show one record.
    Get {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
    },
    /// List records.
    List {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long, default_value = "")]
        kind: String,
        #[arg(long, default_value = "")]
        owner: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Find records by natural key (for residents: --key id_number --value NUMBER).
    Lookup {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        kind: String,
        #[arg(long)]
        key: String,
        #[arg(long)]
        value: String,
    },
    /// A node's links (each ok, connecting, retrying, stalled, must-resync
    /// or quarantining, why, and since when), lag, counts and workers.
    Status {
        #[command(flatten)]
        api: ApiArgs,
        /// Print JSON for scripts: the fields of /status.json, times in ms
        /// since the Unix epoch.
        #[arg(long)]
        json: bool,
        /// Only the links that are not ok and the workers retrying or failed.
        #[arg(long)]
        problems: bool,
    },
    /// Records refused on arrival.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
    },
    /// The canonical kinds this build knows.
    Kinds,
}

#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Revoke a node in a new trust list (run against the city's local API).
    /// Its records signed from --effective-at-ms on are refused everywhere,
    /// earlier ones stay valid, and its parent refuses its link.
    Revoke {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        node: String,
        /// keyCompromise, cessationOfOperation, superseded, ...
        #[arg(long)]
        reason: String,
        /// Milliseconds since the epoch; default now.
        #[arg(long, default_value_t = 0)]
        effective_at_ms: i64,
    },
    /// Roll the trust root over to a new key (run against the city's local
    /// API). The successor is announced by the current root, then signs the
    /// next list; nodes follow the endorsement chain, even ones offline
    /// across the switch. Afterwards set trust.root_key to --key-out.
    Rollover {
        #[command(flatten)]
        api: ApiArgs,
        /// Where the city writes the new root's private key (must not exist).
        #[arg(long)]
        key_out: PathBuf,
    },
    /// The trust list this node holds.
    Status {
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create the deployment CA and secret in DIR (once, at the city).
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// The city's 4-digit code.
        #[arg(long)]
        city: String,
    },
    /// Issue a node certificate carrying its division code, or with
    /// --department a department system's certificate for that node's
    /// adapter port.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        code: String,
        /// Issue a client certificate for this department (its catalogue
        /// code) at node --code, instead of a node certificate.
        #[arg(long)]
        department: Option<String>,
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
    /// Issue a one-time join token for a direct child of the running node at
    /// --api; hand it to the child's operator for `tiersync join`.
    JoinToken {
        #[command(flatten)]
        api: ApiArgs,
        /// The child's division code.
        #[arg(long)]
        code: String,
        /// Hours the token stays valid.
        #[arg(long, default_value_t = 24)]
        hours: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the node's audit chain and name the first broken entry; exits
    /// non-zero if there is one. Reads the store directly (the daemon may
    /// be running).
    Verify {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print audit entries, one a line: entry, time (ms), actor, action,
    /// kind, record id, detail.
    Show {
        #[arg(long, short)]
        config: PathBuf,
        /// Entries at or after this time (ms since the epoch).
        #[arg(long)]
        since_ms: Option<i64>,
        /// Entries at or before this time (ms since the epoch).
        #[arg(long)]
        until_ms: Option<i64>,
        #[arg(long, default_value = "")]
        kind: String,
        /// e.g. a department, `local-api`, `node`, `peer:511102004001`.
        #[arg(long, default_value = "")]
        actor: String,
        /// put, delete, reject, trust, join or read.
        #[arg(long, default_value = "")]
        action: String,
        /// Entries after this entry number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    List {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Re-check a quarantined record and apply it if it now passes.
    Replay {
        #[command(flatten)]
        api: ApiArgs,
        qid: u64,
    },
}

/// Process environment, read once here and injected below.
pub fn environment() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("TIERSYNC_"))
        .collect()
}

/// Runs one command; each lives in the child module for what it works on.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => node::serve(&config).await,
        Command::NewEpoch { config } => node::new_epoch(&config).await,
        Command::CheckConfig {
            file,
            config,
            files,
        } => {
            let path = file.or(config).expect("clap requires FILE or --config");
            node::check_config(&path, files)
        }
        Command::Audit { command } => node::audit(command).await,
        Command::Demo { dir, residents } => crate::demo::run(dir, residents).await,
        Command::Pki { command } => admin::pki(command).await,
        Command::Grant { command } => grants::run(command).await,
        Command::Trust { command } => admin::trust(command).await,
        Command::Join {
            parent,
            token,
            dir,
            listen_peer,
            listen_api,
            listen_admin,
            retry_secs,
            no_serve,
        } => {
            admin::join(
                parent,
                token,
                dir,
                listen_peer,
                listen_api,
                listen_admin,
                retry_secs,
                no_serve,
            )
            .await
        }
        Command::Put {
            api,
            kind,
            json,
            json_file,
            id,
            expected_version,
            up_to,
            down_to,
            delete,
            reason,
        } => {
            let json = records::payload_json(json, json_file.as_deref(), delete)?;
            records::put(
                api.api,
                kind,
                json,
                id,
                expected_version,
                up_to,
                down_to,
                delete,
                reason,
            )
            .await
        }
        Command::Get { api, id } => records::get(api.api, id).await,
        Command::List {
            api,
            kind,
            owner,
            limit,
        } => records::list(api.api, kind, owner, limit).await,
        Command::Lookup {
            api,
            kind,
            key,
            value,
        } => records::lookup(api.api, kind, key, value).await,
        Command::Status {
            api,
            json,
            problems,
        } => admin::status(api.api, json, problems).await,
        Command::Quarantine { command } => admin::quarantine(command).await,
        Command::Kinds => records::kinds(),
    }
}

/// A client of the node's local API at `addr`, or an error saying what to check.
async fn connect(addr: SocketAddr) -> anyhow::Result<LocalApiClient<Channel>> {
    LocalApiClient::connect(format!("http://{addr}"))
        .await
        .with_context(|| format!("cannot reach the local API at {addr}; is the node running (tiersync serve) and is listen.api {addr}?"))
}

/// A gRPC error status as an error for the operator.
fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

/// Resolves `path` against the current directory for messages.
pub fn display_path(path: &Path) -> String {
    path.display().to_string()
}
