//! `tiersync grant`: the work-item admission life cycle (事项准入) at the
//! approving node, through its local API: a department's access is
//! requested, approved, listed and withdrawn. The rules (who may grant
//! what, which transitions are allowed) are the node's; this only builds
//! the records and prints them.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;

use clap::Subcommand;
use prost::Message;
use tiersync_proto::types::RecordId;
use tiersync_proto::wire::{self, GrantState};

use super::{ApiArgs, connect, status_error};
use crate::clock::utc;
use crate::departments::grant::{GrantStatus, HeldGrant};
use crate::kinds::KIND_GRANT;
use crate::store::id_text;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

#[derive(Debug, Subcommand)]
pub enum GrantCommand {
    /// Record a department's application for access (state: requested).
    /// Run it at the approving node; the area lies inside its subtree.
    Request {
        #[command(flatten)]
        api: ApiArgs,
        /// The department's code in the catalogue, e.g. civil-affairs.
        #[arg(long)]
        department: String,
        /// A record kind it may read (repeatable), e.g. civil.v1.Resident.
        #[arg(long = "kind", required = true)]
        kinds: Vec<String>,
        /// A personal field it may read in clear, `<kind>.<field>`
        /// (repeatable), e.g. civil.v1.Resident.id_number.
        #[arg(long = "clear")]
        clear_fields: Vec<String>,
        /// The area: the division code whose subtree's records it reads.
        #[arg(long)]
        area: String,
        /// The purpose: the matter code (事项编码).
        #[arg(long)]
        matter: String,
        /// The matter's name.
        #[arg(long, default_value = "")]
        matter_name: String,
        /// The law or document that allows the access (设定依据).
        #[arg(long)]
        legal_basis: String,
        /// Who applied (office, person, reference).
        #[arg(long, default_value = "")]
        requested_by: String,
        /// Days the access lasts from --valid-from-ms (or now).
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Start of validity, ms since the epoch (default: now).
        #[arg(long)]
        valid_from_ms: Option<i64>,
        /// The department may also submit records of these kinds.
        #[arg(long)]
        may_submit: bool,
    },
    /// Approve a requested grant.
    Approve {
        #[command(flatten)]
        api: ApiArgs,
        /// The grant's record id.
        id: String,
        /// Who approves it.
        #[arg(long)]
        by: String,
    },
    /// Withdraw a grant: it stops allowing anything at every node within
    /// one replication round.
    Withdraw {
        #[command(flatten)]
        api: ApiArgs,
        /// The grant's record id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// List the grants this node holds, with their state now.
    List {
        #[command(flatten)]
        api: ApiArgs,
        /// Only this department's.
        #[arg(long)]
        department: Option<String>,
    },
}

pub(super) async fn run(command: GrantCommand) -> anyhow::Result<()> {
    match command {
        GrantCommand::Request {
            api,
            department,
            kinds,
            clear_fields,
            area,
            matter,
            matter_name,
            legal_basis,
            requested_by,
            days,
            valid_from_ms,
            may_submit,
        } => {
            let from = valid_from_ms.unwrap_or_else(crate::clock::now_ms);
            let grant = wire::Grant {
                department,
                kinds,
                clear_fields,
                division_prefix: area,
                matter_code: matter,
                matter_name,
                legal_basis,
                valid_from_ms: from,
                valid_until_ms: from + i64::from(days) * DAY_MS,
                state: GrantState::Requested as i32,
                requested_by,
                approved_by: String::new(),
                withdrawn_reason: String::new(),
                may_submit,
            };
            let record = put(api.api, Vec::new(), 0, grant).await?;
            println!(
                "grant {} requested; approve it with: tiersync grant approve {} --by <who>",
                id_text(&record.id),
                id_text(&record.id)
            );
            Ok(())
        }
        GrantCommand::Approve { api, id, by } => {
            change(api.api, &id, |g| {
                g.state = GrantState::Approved as i32;
                g.approved_by = by;
            })
            .await?;
            println!("grant {id} approved");
            Ok(())
        }
        GrantCommand::Withdraw { api, id, reason } => {
            change(api.api, &id, |g| {
                g.state = GrantState::Withdrawn as i32;
                g.withdrawn_reason = reason;
            })
            .await?;
            println!("grant {id} withdrawn");
            Ok(())
        }
        GrantCommand::List { api, department } => list(api.api, department).await,
    }
}

async fn put(
    api: SocketAddr,
    id: Vec<u8>,
    expected_version: u64,
    grant: wire::Grant,
) -> anyhow::Result<wire::Record> {
    let response = connect(api)
        .await?
        .put(wire::PutRequest {
            id,
            kind: KIND_GRANT.into(),
            payload: grant.encode_to_vec(),
            expected_version,
            ..Default::default()
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if response.amendment {
        anyhow::bail!(
            "the grant is owned by another node: approve or withdraw it there, at the node that approved it"
        );
    }
    response
        .record
        .ok_or_else(|| anyhow::anyhow!("the node answered without the record"))
}

/// Reads grant `id`, applies `edit`, and writes it back at the version read.
async fn change(
    api: SocketAddr,
    id: &str,
    edit: impl FnOnce(&mut wire::Grant),
) -> anyhow::Result<()> {
    let rid: RecordId = id
        .parse()
        .map_err(|e| anyhow::anyhow!("invalid grant id `{id}`: {e}"))?;
    let record = connect(api)
        .await?
        .get(wire::GetRequest {
            id: rid.as_bytes().to_vec(),
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .record
        .ok_or_else(|| anyhow::anyhow!("grant {id} not found"))?;
    if record.kind != KIND_GRANT {
        anyhow::bail!("record {id} is a `{}`, not a grant", record.kind);
    }
    let mut grant = wire::Grant::decode(&record.payload[..])?;
    edit(&mut grant);
    put(api, record.id, record.version, grant).await?;
    Ok(())
}

async fn list(api: SocketAddr, department: Option<String>) -> anyhow::Result<()> {
    let mut client = connect(api).await?;
    let mut after_id = Vec::new();
    let now = crate::clock::now_ms();
    println!(
        "{:<36}  {:<16}  {:<10}  {:<16}  {:<12}  {:<20}  kinds",
        "grant", "department", "state", "matter", "area", "valid until"
    );
    loop {
        let page = client
            .list(wire::ListRequest {
                kind: KIND_GRANT.into(),
                limit: 500,
                after_id: after_id.clone(),
                ..Default::default()
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .records;
        let Some(last) = page.last() else { break };
        after_id = last.id.clone();
        for r in page {
            let Ok(grant) = wire::Grant::decode(&r.payload[..]) else {
                continue;
            };
            if department.as_ref().is_some_and(|d| *d != grant.department) {
                continue;
            }
            let held = HeldGrant {
                owner: r.owner.map(|o| o.node).unwrap_or_default(),
                id: r.id,
                grant,
            };
            let status = held.status(now);
            let g = &held.grant;
            println!(
                "{:<36}  {:<16}  {:<10}  {:<16}  {:<12}  {:<20}  {}",
                held.name(),
                g.department,
                status.word(),
                g.matter_code,
                g.division_prefix,
                utc(g.valid_until_ms).trim_end_matches(" UTC"),
                g.kinds.join(",")
            );
            if let GrantStatus::Withdrawn(reason) | GrantStatus::Void(reason) = &status
                && !reason.is_empty()
            {
                println!("{:<38}{}: {reason}", "", status.word());
            }
        }
    }
    Ok(())
}
