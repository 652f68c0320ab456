//! The `tiersync` command line: run a node, check its config, manage the
//! deployment's PKI, talk to a node's local API, and run the demo.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tiersync_proto::types::{DivisionCode, RecordId, Schemas, Tier};
use tiersync_proto::wire::{self, local_api_client::LocalApiClient};
use tonic::transport::Channel;

use crate::config::NodeConfig;

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
    /// Validate a config file and report every problem (use as ExecStartPre).
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Give the node's store a new epoch after restoring it from a backup, so
    /// its peers resend instead of skipping renumbered changes. Run it with
    /// the node stopped; on PostgreSQL it refuses while a daemon of the node
    /// holds the active lease.
    NewEpoch {
        #[arg(long, short)]
        config: PathBuf,
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
        #[arg(long)]
        json: String,
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
    /// Find records by natural key (for residents: --key id_number --value <number>).
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
    /// A node's links, lag and counts.
    Status {
        #[command(flatten)]
        api: ApiArgs,
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
pub enum PkiCommand {
    /// Create the deployment CA and secret in DIR (once, at the city).
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// The city's 4-digit code.
        #[arg(long)]
        city: String,
    },
    /// Issue a node certificate carrying its division code.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        code: String,
        #[arg(long, default_value_t = 825)]
        days: u32,
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

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let config = NodeConfig::load(&config, &environment())?;
            let node = crate::App::start(config).await?;
            let cancel = node.cancel_token();
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("shutdown requested");
                cancel.cancel();
            });
            node.wait().await
        }
        Command::NewEpoch { config } => {
            let c = NodeConfig::load(&config, &environment())?;
            let epoch = crate::app::new_epoch(&c).await?;
            println!(
                "{}: node `{}` store {} has the new epoch {epoch}; its peers will resend from the start",
                config.display(),
                c.code,
                c.storage
            );
            Ok(())
        }
        Command::CheckConfig { config } => {
            let c = NodeConfig::load(&config, &environment())?;
            crate::app::load_material(&c).with_context(|| format!("{}", config.display()))?;
            println!(
                "{}: ok ({} node `{}`{}, store {})",
                config.display(),
                c.tier(),
                c.code,
                c.parent
                    .as_ref()
                    .map(|p| format!(", parent `{}` at {}", p.code, p.addresses.join(" or ")))
                    .unwrap_or_default(),
                c.storage
            );
            Ok(())
        }
        Command::Demo { dir, residents } => crate::demo::run(dir, residents).await,
        Command::Pki { command } => pki(command),
        Command::Put {
            api,
            kind,
            json,
            id,
            expected_version,
            up_to,
            down_to,
            delete,
            reason,
        } => {
            let schemas = Schemas::global();
            let payload = if delete {
                Vec::new()
            } else {
                schemas.payload_from_json(&kind, &json)?
            };
            let scope = if up_to.is_some() || !down_to.is_empty() {
                let up_to = match up_to {
                    Some(t) => t.parse::<Tier>()?.to_wire() as i32,
                    None => 0,
                };
                Some(wire::Scope {
                    up_to,
                    down_to,
                    departments: vec![],
                })
            } else {
                None
            };
            let id = id.map(|s| parse_id(&s)).transpose()?.unwrap_or_default();
            let mut client = connect(api.api).await?;
            let response = client
                .put(wire::PutRequest {
                    id,
                    kind,
                    payload,
                    expected_version,
                    scope,
                    delete,
                    department: String::new(),
                    reason,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if response.amendment {
                println!("amendment sent to the owner:");
            }
            if let Some(r) = response.record {
                println!("{}", record_json(&r));
            }
            Ok(())
        }
        Command::Get { api, id } => {
            let id = parse_id(&id)?;
            let mut client = connect(api.api).await?;
            let r = client
                .get(wire::GetRequest { id })
                .await
                .map_err(status_error)?
                .into_inner();
            if let Some(r) = r.record {
                println!("{}", record_json(&r));
            }
            Ok(())
        }
        Command::List {
            api,
            kind,
            owner,
            limit,
        } => {
            let mut client = connect(api.api).await?;
            let r = client
                .list(wire::ListRequest {
                    kind,
                    owner_prefix: owner,
                    limit,
                    include_deleted: false,
                    after_id: vec![],
                })
                .await
                .map_err(status_error)?
                .into_inner();
            for record in r.records {
                println!("{}", record_json(&record));
            }
            Ok(())
        }
        Command::Lookup {
            api,
            kind,
            key,
            value,
        } => {
            let mut client = connect(api.api).await?;
            let r = client
                .lookup(wire::LookupRequest { kind, key, value })
                .await
                .map_err(status_error)?
                .into_inner();
            if r.records.is_empty() {
                println!("no match");
            }
            for record in r.records {
                println!("{}", record_json(&record));
            }
            Ok(())
        }
        Command::Status { api } => {
            let mut client = connect(api.api).await?;
            let s = client
                .status(wire::StatusRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            print!("{}", format_status(&s));
            Ok(())
        }
        Command::Quarantine { command } => match command {
            QuarantineCommand::List { api, limit } => {
                let mut client = connect(api.api).await?;
                let r = client
                    .list_quarantine(wire::ListQuarantineRequest { limit })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                if r.entries.is_empty() {
                    println!("quarantine is empty");
                }
                for e in r.entries {
                    println!(
                        "#{} from `{}` kind {} origin `{}`: {}",
                        e.qid, e.peer, e.kind, e.origin, e.reason
                    );
                }
                Ok(())
            }
            QuarantineCommand::Replay { api, qid } => {
                let mut client = connect(api.api).await?;
                let r = client
                    .replay_quarantine(wire::ReplayQuarantineRequest { qid })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                if r.applied {
                    println!("#{qid} applied");
                } else {
                    println!("#{qid} not applied: {}", r.reason);
                }
                Ok(())
            }
        },
        Command::Kinds => {
            for kind in Schemas::global().canonical_kinds() {
                println!("{kind}");
            }
            Ok(())
        }
    }
}

fn pki(command: PkiCommand) -> anyhow::Result<()> {
    match command {
        PkiCommand::Init { dir, city } => {
            let city = DivisionCode::parse_for_tier(&city, Tier::City)?;
            crate::pki::init_dir(&dir, &city)?;
            println!("deployment CA for {city} written to {}", dir.display());
            println!(
                "keep ca.key and deployment.key secret; copy ca.pem and deployment.key to every node"
            );
            Ok(())
        }
        PkiCommand::Issue { dir, code, days } => {
            let code = DivisionCode::parse(&code)?;
            let (cert, key) = crate::pki::issue_into_dir(&dir, &code, days)?;
            println!(
                "issued {} and {} for node {code}",
                cert.display(),
                key.display()
            );
            Ok(())
        }
    }
}

async fn connect(addr: SocketAddr) -> anyhow::Result<LocalApiClient<Channel>> {
    LocalApiClient::connect(format!("http://{addr}"))
        .await
        .with_context(|| format!("cannot reach the local API at {addr}; is the node running (tiersync serve) and is listen.api {addr}?"))
}

fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

fn parse_id(s: &str) -> anyhow::Result<Vec<u8>> {
    let id: RecordId = s
        .parse()
        .map_err(|e| anyhow::anyhow!("invalid record id `{s}`: {e}"))?;
    Ok(id.as_bytes().to_vec())
}

/// A record as one JSON line, its payload decoded where the kind is known.
pub fn record_json(r: &wire::Record) -> String {
    let schemas = Schemas::global();
    let payload = if r.payload.is_empty() {
        serde_json::Value::Null
    } else {
        schemas
            .payload_to_json(&r.kind, &r.payload)
            .unwrap_or_else(|_| {
                serde_json::Value::String(format!("<{} bytes of {}>", r.payload.len(), r.kind))
            })
    };
    let id = RecordId::from_bytes(&r.id)
        .map(|i| i.to_string())
        .unwrap_or_else(|_| hex::encode(&r.id));
    serde_json::json!({
        "id": id,
        "kind": r.kind,
        "owner": r.owner.as_ref().map(|o| o.node.clone()).unwrap_or_default(),
        "version": r.version,
        "deleted": r.deleted,
        "withdrawn": r.withdrawn,
        "scope": r.scope.as_ref().map(|s| serde_json::json!({
            "up_to": Tier::from_wire(s.up_to).map(|t| t.to_string()),
            "down_to": s.down_to,
        })),
        "payload": payload,
    })
    .to_string()
}

pub fn format_status(s: &wire::StatusResponse) -> String {
    let mut out = format!(
        "node {} ({}) head {} records {} quarantined {}\n",
        s.node, s.tier, s.head_seq, s.records, s.quarantined
    );
    if s.links.is_empty() {
        out.push_str("  no links\n");
    }
    for l in &s.links {
        out.push_str(&format!(
            "  {:<7} {:<13} {:<10} applied {:>8} lag {:>6} changes {:>6.1}s  in {:>8} out {:>8} rejected {}{}\n",
            l.direction,
            l.peer,
            l.state,
            l.applied_through,
            l.lag_changes,
            l.lag_seconds,
            l.records_in,
            l.records_out,
            l.rejected,
            if l.last_error.is_empty() { String::new() } else { format!("  last error: {}", l.last_error) }
        ));
    }
    out
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Resolves `path` against the current directory for messages.
pub fn display_path(path: &Path) -> String {
    path.display().to_string()
}
