//! Commands that operate a deployment: its PKI and join tokens, joining it
//! as a new node, the trust list (revocation, root rollover), and a running
//! node's status and quarantine through its local API.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::PathBuf;

use tiersync_proto::types::{DivisionCode, Tier};
use tiersync_proto::wire;

use super::{PkiCommand, QuarantineCommand, TrustCommand, connect, status_error};

/// `tiersync pki`: makes the deployment CA, issues certificates and join tokens.
pub(super) async fn pki(command: PkiCommand) -> anyhow::Result<()> {
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
        PkiCommand::Issue {
            dir,
            code,
            department: Some(department),
            days,
        } => {
            crate::departments::check_code(&department).map_err(anyhow::Error::msg)?;
            let id = crate::identity::department::DepartmentId {
                node: DivisionCode::parse(&code)?,
                department,
            };
            let (cert, key) = crate::identity::department::issue_into_dir(&dir, &id, days)?;
            println!(
                "issued {} and {} for department `{}` at node {} (its adapter port)",
                cert.display(),
                key.display(),
                id.department,
                id.node
            );
            Ok(())
        }
        PkiCommand::Issue {
            dir,
            code,
            department: None,
            days,
        } => {
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

/// `tiersync join`: joins the deployment, then serves unless `no_serve`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn join(
    parent: String,
    token: String,
    dir: PathBuf,
    listen_peer: Option<String>,
    listen_api: String,
    listen_admin: String,
    retry_secs: u64,
    no_serve: bool,
) -> anyhow::Result<()> {
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
    super::node::serve(&config_path).await
}

/// `tiersync trust`: revokes, rolls the root over, or shows the trust list.
pub(super) async fn trust(command: TrustCommand) -> anyhow::Result<()> {
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

/// `tiersync status`: a node's links, lag and counts.
pub(super) async fn status(api: SocketAddr) -> anyhow::Result<()> {
    let mut client = connect(api).await?;
    let s = client
        .status(wire::StatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    print!("{}", format_status(&s));
    Ok(())
}

/// `tiersync quarantine`: lists or replays records refused on arrival.
pub(super) async fn quarantine(command: QuarantineCommand) -> anyhow::Result<()> {
    match command {
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
    }
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
    if !s.workers.is_empty() {
        out.push_str("  workers:\n");
    }
    for w in &s.workers {
        out.push_str(&format!(
            "    {:<26} {:<8} since {} ms  iterations {:>8} errors {:>5}{}{}{}\n",
            w.name,
            w.state,
            w.since_ms,
            w.iterations,
            w.errors,
            w.queue.map(|q| format!("  queue {q}")).unwrap_or_default(),
            if w.info.is_empty() {
                String::new()
            } else {
                format!("  ({})", w.info)
            },
            if w.last_error.is_empty() {
                String::new()
            } else {
                format!("  last error at {} ms: {}", w.last_error_ms, w.last_error)
            }
        ));
    }
    out
}
