//! A node's status report: its store, trust list, links and workers, as the status
//! page, `/status.json`, the `Status` API call and `tiersync status` show
//! it. Metrics mirror the same fields. Times are ms since the Unix epoch in
//! JSON and on the wire, and dates with how long ago for people.

use tiersync_proto::wire;

use crate::clock::human_time;
use crate::store::postgres::LeaseStatus;
use crate::sync::links::direction;
use crate::worker::{WorkerState, WorkerStatus};

/// One line on the lease for the status page.
fn describe_lease(lease: &LeaseStatus) -> String {
    format!(
        "active lease: held by {who} ({holder}, {host}), renewed {age:.1} s ago, lasts {expiry:.1} s{expired}, fence {fence}",
        who = if lease.this_daemon {
            "this daemon"
        } else {
            "another daemon"
        },
        holder = lease.holder,
        host = lease.host,
        age = lease.age_seconds,
        expiry = lease.expiry_seconds,
        expired = if lease.expired { " EXPIRED" } else { "" },
        fence = lease.fence,
    )
}

/// A snapshot of a node for the status page, `/status.json` and
/// `tiersync status --json`. The field names are stable: scripts read them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusReport {
    pub node: String,
    pub name: Option<String>,
    pub tier: String,
    /// When the snapshot was taken, ms since the Unix epoch (the node's
    /// clock for the page, the caller's for the command line).
    pub now_ms: i64,
    pub head_seq: u64,
    pub records: u64,
    pub quarantined: u64,
    pub trust: TrustReport,
    /// The node's active lease (PostgreSQL only): holder, age, expiry.
    /// Left out where there is none, and by `tiersync status --json`, whose
    /// API call does not carry it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseStatus>,
    pub links: Vec<LinkReport>,
    /// The node's long-running loops (see [`crate::worker`]).
    pub workers: Vec<WorkerStatus>,
}

/// The trust list a node holds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrustReport {
    /// 0: no trust list yet.
    pub sequence: u64,
    pub next_update_ms: i64,
    /// No list, or the list is past its next update; the node keeps working.
    pub stale: bool,
    pub revoked: Vec<String>,
}

impl TrustReport {
    fn describe(&self, now_ms: i64) -> String {
        if self.sequence == 0 {
            return "trust list: none yet (stale)".into();
        }
        format!(
            "trust list {}{}, next update {}{}",
            self.sequence,
            if self.stale { " STALE" } else { "" },
            human_time(self.next_update_ms, now_ms),
            if self.revoked.is_empty() {
                String::new()
            } else {
                format!(", revoked: {}", self.revoked.join(", "))
            }
        )
    }
}

/// One link: its state (ok, connecting, retrying, stalled, must-resync,
/// quarantining; see `crate::sync::links::LinkState`), why, since when.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LinkReport {
    pub peer: String,
    pub direction: String,
    pub state: String,
    pub reason: String,
    pub since_ms: i64,
    pub applied_through: u64,
    pub peer_head: u64,
    pub lag_changes: u64,
    pub lag_seconds: f64,
    pub records_in: u64,
    pub records_out: u64,
    pub rejected: u64,
    pub last_error: String,
}

pub async fn report(node: &crate::node::Node) -> Result<StatusReport, crate::store::StoreError> {
    Ok(StatusReport {
        node: node.code().to_string(),
        name: node.name().map(str::to_owned),
        tier: node.code().tier().to_string(),
        now_ms: node.clock().now_ms(),
        head_seq: node.head_seq().await?,
        records: node.record_count().await?,
        quarantined: node.quarantined_count().await?,
        trust: {
            let t = node.keyring().trust_status(node.clock().now_ms());
            TrustReport {
                sequence: t.sequence,
                next_update_ms: t.next_update_ms,
                stale: t.stale,
                revoked: t.revocations.into_iter().map(|r| r.node).collect(),
            }
        },
        lease: node.lease().await?,
        links: node
            .links()
            .snapshot()
            .into_iter()
            .map(|l| LinkReport {
                lag_changes: l.lag_changes(),
                peer: l.peer,
                direction: direction(l.toward).into(),
                state: l.state.as_str().into(),
                reason: l.reason,
                since_ms: l.since_ms,
                applied_through: l.applied_through,
                peer_head: l.peer_head,
                lag_seconds: l.lag_seconds,
                records_in: l.records_in,
                records_out: l.records_out,
                rejected: l.rejected,
                last_error: l.last_error,
            })
            .collect(),
        workers: node.workers().snapshot(),
    })
}

impl LinkReport {
    /// A link as the `Status` API call carries it.
    pub fn from_wire(l: &wire::LinkStatus) -> LinkReport {
        LinkReport {
            peer: l.peer.clone(),
            direction: l.direction.clone(),
            state: l.state.clone(),
            reason: l.reason.clone(),
            since_ms: l.since_ms,
            applied_through: l.applied_through,
            peer_head: l.peer_head,
            lag_changes: l.lag_changes,
            lag_seconds: l.lag_seconds,
            records_in: l.records_in,
            records_out: l.records_out,
            rejected: l.rejected,
            last_error: l.last_error.clone(),
        }
    }

    /// Whether an operator should look: any state but ok.
    pub fn is_problem(&self) -> bool {
        self.state != crate::sync::links::LinkState::Ok.as_str()
    }
}

impl StatusReport {
    /// The report from the `Status` API call's answer, taken at `now_ms`;
    /// it carries no lease. An unknown worker state (a newer daemon) is an
    /// error naming it.
    pub fn from_wire(s: &wire::StatusResponse, now_ms: i64) -> Result<StatusReport, String> {
        let trust = s.trust.clone().unwrap_or_default();
        let workers = s
            .workers
            .iter()
            .map(|w| {
                let state = WorkerState::from_name(&w.state).ok_or_else(|| {
                    format!("worker `{}` is in an unknown state `{}`", w.name, w.state)
                })?;
                Ok(WorkerStatus {
                    name: w.name.clone(),
                    state,
                    since_ms: w.since_ms,
                    iterations: w.iterations,
                    errors: w.errors,
                    last_error: w.last_error.clone(),
                    last_error_ms: w.last_error_ms,
                    queue: w.queue,
                    info: w.info.clone(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(StatusReport {
            node: s.node.clone(),
            name: (!s.name.is_empty()).then(|| s.name.clone()),
            tier: s.tier.clone(),
            now_ms,
            head_seq: s.head_seq,
            records: s.records,
            quarantined: s.quarantined,
            trust: TrustReport {
                sequence: trust.sequence,
                next_update_ms: trust.next_update_ms,
                stale: trust.stale,
                revoked: trust.revocations.into_iter().map(|r| r.node).collect(),
            },
            lease: None,
            links: s.links.iter().map(LinkReport::from_wire).collect(),
            workers,
        })
    }

    /// Only what an operator should look at: links not ok, workers
    /// retrying or failed.
    pub fn problems_only(mut self) -> StatusReport {
        self.links.retain(LinkReport::is_problem);
        self.workers.retain(|w| w.state.is_problem());
        self
    }
}

/// A worker as the `Status` RPC carries it.
pub fn worker_to_wire(w: &WorkerStatus) -> tiersync_proto::wire::WorkerStatus {
    tiersync_proto::wire::WorkerStatus {
        name: w.name.clone(),
        state: w.state.as_str().into(),
        since_ms: w.since_ms,
        iterations: w.iterations,
        errors: w.errors,
        last_error: w.last_error.clone(),
        last_error_ms: w.last_error_ms,
        queue: w.queue,
        info: w.info.clone(),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl StatusReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("status serialises")
    }

    pub fn to_html(&self) -> String {
        let mut rows = String::new();
        for l in &self.links {
            rows.push_str(&format!(
                "<tr class=\"{state}\"><td>{peer}</td><td>{dir}</td><td>{state}</td><td>{reason}</td><td title=\"{since_ms} ms\">{since}</td><td>{applied}</td><td>{lag}</td><td>{lag_s:.1}</td><td>{inn}</td><td>{out}</td><td>{rej}</td><td>{err}</td></tr>\n",
                peer = escape(&l.peer),
                dir = l.direction,
                state = l.state,
                reason = escape(&l.reason),
                since_ms = l.since_ms,
                since = human_time(l.since_ms, self.now_ms),
                applied = l.applied_through,
                lag = l.lag_changes,
                lag_s = l.lag_seconds,
                inn = l.records_in,
                out = l.records_out,
                rej = l.rejected,
                err = escape(&l.last_error),
            ));
        }
        let mut workers = String::new();
        for w in &self.workers {
            workers.push_str(&format!(
                "<tr class=\"{state}\"><td>{name}</td><td>{state}</td><td>{since}</td><td>{iter}</td><td>{errors}</td><td>{err}</td><td>{err_at}</td><td>{queue}</td><td>{info}</td></tr>\n",
                name = escape(&w.name),
                state = w.state,
                since = human_time(w.since_ms, self.now_ms),
                iter = w.iterations,
                errors = w.errors,
                err = escape(&w.last_error),
                err_at = if w.last_error_ms == 0 { String::new() } else { human_time(w.last_error_ms, self.now_ms) },
                queue = w.queue.map(|q| q.to_string()).unwrap_or_default(),
                info = escape(&w.info),
            ));
        }
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>tiersync {node}</title>\
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}\
p.stale{{color:#b00}}tr.ok td:nth-child(3){{color:green}}tr.stalled td:nth-child(3),tr.must-resync td:nth-child(3),tr.quarantining td:nth-child(3),tr.retrying td:nth-child(3){{color:#b00}}\
tr.failed td:nth-child(2),tr.retrying td:nth-child(2){{color:#b00}}</style></head>\
<body><h1>tiersync {node} {name}</h1><p>tier: {tier} &middot; change log head: {head} &middot; records held: {records} &middot; quarantined: {q}</p><p class=\"{trust_class}\">{trust}</p>{lease}\
<table><tr><th>peer</th><th>direction</th><th>state</th><th>why</th><th>since</th><th>applied through</th><th>lag (changes)</th><th>lag (s)</th><th>records in</th><th>records out</th><th>rejected</th><th>last error</th></tr>\n{rows}</table>\
<h2>workers</h2><table><tr><th>worker</th><th>state</th><th>since</th><th>iterations</th><th>errors</th><th>last error</th><th>last error at</th><th>queue</th><th>doing</th></tr>\n{workers}</table>\
<p><a href=\"/metrics\">metrics</a> &middot; <a href=\"/status.json\">status.json</a></p></body></html>\n",
            node = escape(&self.node),
            name = escape(self.name.as_deref().unwrap_or("")),
            tier = self.tier,
            head = self.head_seq,
            records = self.records,
            q = self.quarantined,
            trust = escape(&self.trust.describe(self.now_ms)),
            trust_class = if self.trust.stale { "stale" } else { "fresh" },
            lease = match &self.lease {
                Some(lease) => format!(
                    "<p class=\"{}\">{}</p>",
                    if lease.expired { "stale" } else { "fresh" },
                    escape(&describe_lease(lease))
                ),
                None => String::new(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-07 21:40:03 UTC.
    const AT: i64 = 1_796_679_603_000;

    fn sample() -> wire::StatusResponse {
        let link = |peer: &str, state: &str, reason: &str, since_ms: i64| wire::LinkStatus {
            peer: peer.into(),
            direction: "child".into(),
            state: state.into(),
            reason: reason.into(),
            since_ms,
            applied_through: 40,
            peer_head: 90,
            lag_changes: 50,
            ..Default::default()
        };
        let worker = |name: &str, state: &str| wire::WorkerStatus {
            name: name.into(),
            state: state.into(),
            since_ms: AT - 60_000,
            ..Default::default()
        };
        wire::StatusResponse {
            node: "511102004".into(),
            name: "大佛街道".into(),
            tier: "street".into(),
            head_seq: 7,
            records: 5,
            quarantined: 1,
            links: vec![
                link("511102", "ok", "session up", AT - 3_600_000),
                link(
                    "511102004001",
                    "stalled",
                    "50 changes behind `511102004001` and no progress for 31 s",
                    AT - 180_000,
                ),
            ],
            trust: None,
            workers: vec![
                worker("group-commit", "idle"),
                worker("parent-link", "retrying"),
            ],
        }
    }

    #[test]
    fn the_status_call_reads_as_the_report_with_its_stable_fields() {
        let report = StatusReport::from_wire(&sample(), AT).unwrap();
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        let keys = |v: &serde_json::Value| {
            v.as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(
            keys(&json),
            "head_seq,links,name,node,now_ms,quarantined,records,tier,trust,workers"
        );
        assert_eq!(
            keys(&json["links"][1]),
            "applied_through,direction,lag_changes,lag_seconds,last_error,peer,peer_head,reason,records_in,records_out,rejected,since_ms,state"
        );
        assert_eq!(json["links"][1]["state"], "stalled");
        assert_eq!(json["links"][1]["since_ms"], AT - 180_000);
        assert_eq!(json["name"], "大佛街道");
        assert_eq!(json["workers"][1]["state"], "retrying");

        let mut bad = sample();
        bad.workers[0].state = "dreaming".into();
        assert_eq!(
            StatusReport::from_wire(&bad, AT).unwrap_err(),
            "worker `group-commit` is in an unknown state `dreaming`"
        );
    }

    #[test]
    fn problems_are_the_links_not_ok_and_the_workers_retrying_or_failed() {
        let report = StatusReport::from_wire(&sample(), AT)
            .unwrap()
            .problems_only();
        let links: Vec<&str> = report.links.iter().map(|l| l.peer.as_str()).collect();
        let workers: Vec<&str> = report.workers.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(links, ["511102004001"]);
        assert_eq!(workers, ["parent-link"]);
    }

    #[test]
    fn the_page_shows_states_with_their_reasons_and_human_times() {
        let html = StatusReport::from_wire(&sample(), AT).unwrap().to_html();
        assert!(
            html.contains("<td>stalled</td><td>50 changes behind `511102004001` and no progress for 31 s</td><td title=\"1796679423000 ms\">2026-12-07 21:37:03 UTC (3 min ago)</td>"),
            "{html}"
        );
        assert!(html.contains("<tr class=\"ok\">"), "{html}");
    }
}
