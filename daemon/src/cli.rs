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
    /// Issue a node certificate carrying its division code.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        code: String,
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

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => serve(&config).await,
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
        Command::Audit { command } => audit(command).await,
        Command::Demo { dir, residents } => crate::demo::run(dir, residents).await,
        Command::Pki { command } => pki(command).await,
        Command::Trust { command } => {
            let status = match command {
                TrustCommand::Revoke {
                    api,
                    node,
                    reason,
                    effective_at_ms,
                } => connect(api.api)
                    .await?
                    .revoke(wire::RevokeRequest {
                        node,
                        reason,
                        effective_at_ms,
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner(),
                TrustCommand::Rollover { api, key_out } => {
                    let status = connect(api.api)
                        .await?
                        .rollover_root(wire::RolloverRootRequest {
                            key_out: key_out.display().to_string(),
                        })
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    eprintln!(
                        "the new root key is in {}; set trust.root_key to it in the city's config before its next restart",
                        key_out.display()
                    );
                    status
                }
                TrustCommand::Status { api } => connect(api.api)
                    .await?
                    .trust_status(wire::TrustStatusRequest {})
                    .await
                    .map_err(status_error)?
                    .into_inner(),
            };
            println!(
                "trust list {}{} issued at {} ms, next update at {} ms",
                status.sequence,
                if status.stale { " (STALE)" } else { "" },
                status.issued_at_ms,
                status.next_update_ms
            );
            for r in &status.revocations {
                println!(
                    "  revoked {} ({}) from {} ms, decided at {} ms",
                    r.node, r.reason, r.effective_at_ms, r.revoked_at_ms
                );
            }
            Ok(())
        }
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
            let token = crate::identity::join::JoinToken::parse(&token)?;
            let options = crate::identity::joining::JoinOptions {
                dir,
                listen_peer,
                listen_api,
                listen_admin,
                retry_for: std::time::Duration::from_secs(retry_secs),
            };
            let config_path = crate::identity::joining::join(&parent, &token, &options).await?;
            println!(
                "joined as node {} under {}; config written to {}",
                token.code,
                token
                    .code
                    .parent()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                config_path.display()
            );
            if no_serve {
                return Ok(());
            }
            serve(&config_path).await
        }
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

/// Runs the node configured in `config` until SIGINT or SIGTERM.
async fn serve(config: &Path) -> anyhow::Result<()> {
    let config = NodeConfig::load(config, &environment())?;
    let node = crate::App::start(config).await?;
    let cancel = node.cancel_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        cancel.cancel();
    });
    node.wait().await
}

async fn audit(command: AuditCommand) -> anyhow::Result<()> {
    use crate::store::audit::{AuditQuery, Verdict};
    match command {
        AuditCommand::Verify { config } => {
            let c = NodeConfig::load(&config, &environment())?;
            let log = crate::app::open_audit_log(&c).await?;
            match crate::store::audit::verify(&*log).await? {
                Verdict::Intact { entries, head } => {
                    println!(
                        "{}: audit log of node `{}` ok: {entries} entries, head {}",
                        config.display(),
                        c.code,
                        hex::encode(head)
                    );
                    Ok(())
                }
                Verdict::Broken(broken) => anyhow::bail!(
                    "{}: audit log of node `{}` is broken: {broken}",
                    config.display(),
                    c.code
                ),
            }
        }
        AuditCommand::Show {
            config,
            since_ms,
            until_ms,
            kind,
            actor,
            action,
            after,
            limit,
        } => {
            let c = NodeConfig::load(&config, &environment())?;
            let log = crate::app::open_audit_log(&c).await?;
            let query = AuditQuery {
                after,
                since_ms,
                until_ms,
                kind,
                actor,
                action,
                limit,
            };
            for entry in log.audit_list(&query).await? {
                println!("{entry}");
            }
            Ok(())
        }
    }
}

async fn pki(command: PkiCommand) -> anyhow::Result<()> {
    match command {
        PkiCommand::Init { dir, city } => {
            let city = DivisionCode::parse_for_tier(&city, Tier::City)?;
            crate::identity::pki::init_dir(&dir, &city)?;
            println!("deployment CA for {city} written to {}", dir.display());
            println!(
                "keep ca.key and deployment.key secret; copy ca.pem and deployment.key to every node"
            );
            Ok(())
        }
        PkiCommand::JoinToken { api, code, hours } => {
            let response = connect(api.api)
                .await?
                .create_join_token(wire::CreateJoinTokenRequest {
                    code,
                    ttl_seconds: hours * 3600,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{}", response.token);
            eprintln!(
                "one-time token, valid for {hours} h; on the new node run: tiersync join --parent <this node's peer address> --token <token>"
            );
            Ok(())
        }
        PkiCommand::Issue { dir, code, days } => {
            let code = DivisionCode::parse(&code)?;
            let (cert, key) = crate::identity::pki::issue_into_dir(&dir, &code, days)?;
            let (origin_cert, origin_key) =
                crate::identity::pki::issue_origin_into_dir(&dir, &code)?;
            println!(
                "issued {} and {} (TLS), {} and {} (record signing) for node {code}",
                cert.display(),
                key.display(),
                origin_cert.display(),
                origin_key.display()
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
    match &s.trust {
        Some(t) if t.sequence > 0 => out.push_str(&format!(
            "  trust list {}{} next update at {} ms, {} revoked{}\n",
            t.sequence,
            if t.stale { " STALE" } else { "" },
            t.next_update_ms,
            t.revocations.len(),
            t.revocations
                .iter()
                .map(|r| format!(" {} ({})", r.node, r.reason))
                .collect::<String>()
        )),
        _ => out.push_str("  trust list: none yet (stale)\n"),
    }
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
