//! A node's status report: its store, trust list, links and workers, as the status
//! page, `/status.json`, the `Status` API call and `tiersync status` show
//! it. Metrics mirror the same fields.

use crate::store::postgres::LeaseStatus;
use crate::sync::links::direction;
use crate::worker::WorkerStatus;

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

/// A snapshot of a node for the status page, `/status.json` and the CLI.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusReport {
    pub node: String,
    pub name: Option<String>,
    pub tier: String,
    pub head_seq: u64,
    pub records: u64,
    pub quarantined: u64,
    pub trust: TrustReport,
    /// The node's active lease (PostgreSQL only): holder, age, expiry.
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
    fn describe(&self) -> String {
        if self.sequence == 0 {
            return "trust list: none yet (stale)".into();
        }
        format!(
            "trust list {}{}, next update at {} ms{}",
            self.sequence,
            if self.stale { " STALE" } else { "" },
            self.next_update_ms,
            if self.revoked.is_empty() {
                String::new()
            } else {
                format!(", revoked: {}", self.revoked.join(", "))
            }
        )
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LinkReport {
    pub peer: String,
    pub direction: String,
    pub state: String,
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
                "<tr class=\"{state}\"><td>{peer}</td><td>{dir}</td><td>{state}</td><td>{since}</td><td>{applied}</td><td>{lag}</td><td>{lag_s:.1}</td><td>{inn}</td><td>{out}</td><td>{rej}</td><td>{err}</td></tr>\n",
                peer = escape(&l.peer),
                dir = l.direction,
                state = l.state,
                since = l.since_ms,
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
                since = w.since_ms,
                iter = w.iterations,
                errors = w.errors,
                err = escape(&w.last_error),
                err_at = if w.last_error_ms == 0 { String::new() } else { w.last_error_ms.to_string() },
                queue = w.queue.map(|q| q.to_string()).unwrap_or_default(),
                info = escape(&w.info),
            ));
        }
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>tiersync {node}</title>\
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}\
p.stale{{color:#b00}}tr.up td:nth-child(3){{color:green}}tr.stalled td:nth-child(3),tr.down td:nth-child(3),tr.retrying td:nth-child(3){{color:#b00}}\
tr.failed td:nth-child(2),tr.retrying td:nth-child(2){{color:#b00}}</style></head>\
<body><h1>tiersync {node} {name}</h1><p>tier: {tier} &middot; change log head: {head} &middot; records held: {records} &middot; quarantined: {q}</p><p class=\"{trust_class}\">{trust}</p>{lease}\
<table><tr><th>peer</th><th>direction</th><th>state</th><th>since (ms)</th><th>applied through</th><th>lag (changes)</th><th>lag (s)</th><th>records in</th><th>records out</th><th>rejected</th><th>last error</th></tr>\n{rows}</table>\
<h2>workers</h2><table><tr><th>worker</th><th>state</th><th>since (ms)</th><th>iterations</th><th>errors</th><th>last error</th><th>last error at (ms)</th><th>queue</th><th>doing</th></tr>\n{workers}</table>\
<p><a href=\"/metrics\">metrics</a> &middot; <a href=\"/status.json\">status.json</a></p></body></html>\n",
            node = escape(&self.node),
            name = escape(self.name.as_deref().unwrap_or("")),
            tier = self.tier,
            head = self.head_seq,
            records = self.records,
            q = self.quarantined,
            trust = escape(&self.trust.describe()),
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
