//! Commands that operate a deployment: its PKI and join tokens, joining it
//! as a new node, the trust list (revocation, root rollover), and a running
//! node's status and quarantine through its local API.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::PathBuf;

use tiersync_proto::types::{DivisionCode, Tier};
use tiersync_proto::wire;

use super::{PkiCommand, QuarantineCommand, TrustCommand, connect, status_error};
use crate::clock::human_time;
use crate::ops::status::StatusReport;

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

/// `tiersync status`: a node's links, lag and counts, as a table for
/// people or (`json`) as JSON for scripts; `problems`: only the links not
/// ok and the workers retrying or failed.
pub(super) async fn status(api: SocketAddr, json: bool, problems: bool) -> anyhow::Result<()> {
    let mut client = connect(api).await?;
    let s = client
        .status(wire::StatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let mut report = StatusReport::from_wire(&s, crate::clock::now_ms()).map_err(|e| {
        anyhow::anyhow!("the node at {api} answered a status this build cannot read: {e}")
    })?;
    if problems {
        report = report.problems_only();
    }
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", format_status(&report, problems));
    }
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

/// A status report as `tiersync status` prints it: the node, its trust
/// list, a table of its links and one of its workers, times as dates with
/// how long ago. `problems`: the report holds only what is not ok.
pub fn format_status(s: &StatusReport, problems: bool) -> String {
    let when = |ms: i64| human_time(ms, s.now_ms);
    let mut out = format!(
        "node {}{} ({}): head {}, records {}, quarantined {}\n",
        s.node,
        s.name
            .as_deref()
            .map(|n| format!(" {n}"))
            .unwrap_or_default(),
        s.tier,
        s.head_seq,
        s.records,
        s.quarantined
    );
    let t = &s.trust;
    if t.sequence > 0 {
        out.push_str(&format!(
            "trust list {}{}, next update {}, {} revoked{}\n",
            t.sequence,
            if t.stale { " STALE" } else { "" },
            when(t.next_update_ms),
            t.revoked.len(),
            if t.revoked.is_empty() {
                String::new()
            } else {
                format!(": {}", t.revoked.join(", "))
            }
        ));
    } else {
        out.push_str("trust list: none yet (stale)\n");
    }
    if problems && s.links.is_empty() && s.workers.is_empty() {
        out.push_str("no problems: every link is ok, no worker is retrying or failed\n");
        return out;
    }
    if s.links.is_empty() {
        out.push_str(if problems {
            "links: all ok\n"
        } else {
            "links: none\n"
        });
    } else {
        out.push_str(&format!(
            "links:\n  {:<13} {:<9} {:<12} {:<40} {:>8} {:>9} {:>9} {:>8}  {}\n",
            "peer", "direction", "state", "since", "lag", "in", "out", "rejected", "why"
        ));
        for l in &s.links {
            out.push_str(&format!(
                "  {:<13} {:<9} {:<12} {:<40} {:>8} {:>9} {:>9} {:>8}  {}\n",
                l.peer,
                l.direction,
                l.state,
                when(l.since_ms),
                l.lag_changes,
                l.records_in,
                l.records_out,
                l.rejected,
                l.reason
            ));
            if !l.last_error.is_empty() {
                out.push_str(&format!("  {:<13} last error: {}\n", "", l.last_error));
            }
        }
    }
    if s.workers.is_empty() {
        if problems {
            out.push_str("workers: none retrying or failed\n");
        }
        return out;
    }
    out.push_str(&format!(
        "workers:\n  {:<26} {:<8} {:<40} {:>10} {:>6}  {}\n",
        "worker", "state", "since", "iterations", "errors", "doing"
    ));
    for w in &s.workers {
        out.push_str(&format!(
            "  {:<26} {:<8} {:<40} {:>10} {:>6}  {}{}\n",
            w.name,
            w.state,
            when(w.since_ms),
            w.iterations,
            w.errors,
            w.info,
            w.queue.map(|q| format!(" (queue {q})")).unwrap_or_default(),
        ));
        if !w.last_error.is_empty() {
            out.push_str(&format!(
                "  {:<26} last error {}: {}\n",
                "",
                when(w.last_error_ms),
                w.last_error
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-07 21:40:03 UTC.
    const AT: i64 = 1_796_679_603_000;

    fn report() -> StatusReport {
        let link = |peer: &str, state: &str, reason: &str, since_ms: i64| wire::LinkStatus {
            peer: peer.into(),
            direction: "child".into(),
            state: state.into(),
            reason: reason.into(),
            since_ms,
            lag_changes: 3,
            ..Default::default()
        };
        let status = wire::StatusResponse {
            node: "511102004".into(),
            tier: "street".into(),
            links: vec![
                link("511102004001", "ok", "session up", AT - 3_600_000),
                link(
                    "511102004002",
                    "must-resync",
                    "`511102004002`'s store has a new epoch",
                    AT - 180_000,
                ),
            ],
            workers: vec![wire::WorkerStatus {
                name: "parent-link".into(),
                state: "retrying".into(),
                since_ms: AT - 5_000,
                errors: 2,
                last_error: "cannot reach the parent".into(),
                last_error_ms: AT - 5_000,
                ..Default::default()
            }],
            ..Default::default()
        };
        StatusReport::from_wire(&status, AT).unwrap()
    }

    #[test]
    fn status_prints_a_table_with_human_times() {
        let printed = format_status(&report(), false);
        let lines: Vec<&str> = printed.lines().collect();
        assert_eq!(
            lines[0],
            "node 511102004 (street): head 0, records 0, quarantined 0"
        );
        assert_eq!(lines[1], "trust list: none yet (stale)");
        assert_eq!(lines[2], "links:");
        assert!(lines[3].split_whitespace().eq([
            "peer",
            "direction",
            "state",
            "since",
            "lag",
            "in",
            "out",
            "rejected",
            "why"
        ]));
        assert!(
            lines[4].contains("ok") && lines[4].contains("2026-12-07 20:40:03 UTC (1 h ago)"),
            "{printed}"
        );
        assert!(
            lines[5].starts_with(
                "  511102004002  child     must-resync  2026-12-07 21:37:03 UTC (3 min ago)"
            ) && lines[5].ends_with("`511102004002`'s store has a new epoch"),
            "{printed}"
        );
        assert!(
            printed
                .contains("last error 2026-12-07 21:39:58 UTC (5 s ago): cannot reach the parent"),
            "{printed}"
        );
    }

    #[test]
    fn problems_leave_out_what_is_ok_and_say_when_nothing_is_wrong() {
        let printed = format_status(&report().problems_only(), true);
        assert!(!printed.contains("511102004001"), "{printed}");
        assert!(
            printed.contains("must-resync") && printed.contains("parent-link"),
            "{printed}"
        );
        let mut fine = report();
        fine.links.truncate(1);
        fine.workers.clear();
        let printed = format_status(&fine.problems_only(), true);
        assert!(
            printed.ends_with("no problems: every link is ok, no worker is retrying or failed\n"),
            "{printed}"
        );
    }
}
