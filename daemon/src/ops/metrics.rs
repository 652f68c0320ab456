//! Prometheus metrics of one node, registered on an explicit registry (no
//! global). Names follow `tiersync_<subsystem>_<name>_<unit>[_total]`.
//!
//! Labels stay bounded: `peer` is a *direct* peer (a node has one parent and
//! at most a few dozen children), never a subtree code; `kind` is a canonical
//! kind this build knows, or `other` for relayed kinds it does not, so a peer
//! cannot blow up cardinality by inventing kinds; `worker` is a worker's
//! name with `child-link:<code>` collapsed to `child-link`; `state` is one
//! of the six link states.

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use tiersync_proto::types::Schemas;

use crate::store::postgres::LeaseView;
use crate::sync::links::LinkTable;
use crate::worker::Workers;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LinkLabels {
    pub peer: String,
    /// `parent` or `child`: which side of this node the peer is on.
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

pub struct Metrics {
    pub link_up: Family<LinkLabels, Gauge>,
    pub link_stalled: Family<LinkLabels, Gauge>,
    pub link_lag_changes: Family<LinkLabels, Gauge>,
    pub link_lag_seconds: Family<LinkLabels, Gauge<f64, AtomicU64>>,
    pub link_sent: Family<LinkLabels, Counter>,
    pub link_received: Family<LinkLabels, Counter>,
    pub link_sessions: Family<LinkLabels, Counter>,
    pub link_errors: Family<LinkLabels, Counter>,
    pub applied: Family<KindLabels, Counter>,
    pub rejected: Family<KindLabels, Counter>,
    pub head_seq: Gauge,
    pub quarantined: Gauge,
    pub trust_list_sequence: Gauge,
    pub trust_list_stale: Gauge,
    pub trust_list_next_update: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            link_up: Family::default(),
            link_stalled: Family::default(),
            link_lag_changes: Family::default(),
            link_lag_seconds: Family::default(),
            link_sent: Family::default(),
            link_received: Family::default(),
            link_sessions: Family::default(),
            link_errors: Family::default(),
            applied: Family::default(),
            rejected: Family::default(),
            head_seq: Gauge::default(),
            quarantined: Gauge::default(),
            trust_list_sequence: Gauge::default(),
            trust_list_stale: Gauge::default(),
            trust_list_next_update: Gauge::default(),
        };
        // Series an alert compares against exist from the start, at zero.
        let schemas = Schemas::global();
        for kind in schemas
            .canonical_kinds()
            .into_iter()
            .chain(["other".to_owned()])
        {
            let labels = KindLabels { kind };
            m.applied.get_or_create(&labels).inc_by(0);
            m.rejected.get_or_create(&labels).inc_by(0);
        }
        let tiersync = registry.sub_registry_with_prefix("tiersync");
        tiersync.register(
            "link_up",
            "1 while the link to a direct peer has a session",
            m.link_up.clone(),
        );
        tiersync.register(
            "link_stalled",
            "1 while a link has lag but made no progress for sync.stall_secs",
            m.link_stalled.clone(),
        );
        tiersync.register(
            "link_lag_changes",
            "Changes in the peer's log not yet applied here",
            m.link_lag_changes.clone(),
        );
        tiersync.register(
            "link_lag_seconds",
            "Age of the newest change applied from the peer while behind; 0 when caught up",
            m.link_lag_seconds.clone(),
        );
        tiersync.register(
            "link_records_sent",
            "Records sent to the peer",
            m.link_sent.clone(),
        );
        tiersync.register(
            "link_records_received",
            "Records received from the peer",
            m.link_received.clone(),
        );
        tiersync.register(
            "link_sessions",
            "Link sessions established",
            m.link_sessions.clone(),
        );
        tiersync.register(
            "link_errors",
            "Link sessions that ended in an error",
            m.link_errors.clone(),
        );
        tiersync.register(
            "sync_records_applied",
            "Records applied, by kind",
            m.applied.clone(),
        );
        tiersync.register(
            "sync_records_rejected",
            "Records rejected and quarantined, by kind",
            m.rejected.clone(),
        );
        tiersync.register(
            "store_head_seq",
            "Newest sequence number in this node's change log",
            m.head_seq.clone(),
        );
        tiersync.register(
            "store_quarantined_records",
            "Records waiting in quarantine",
            m.quarantined.clone(),
        );
        tiersync.register(
            "trust_list_sequence",
            "Sequence number of the trust list this node holds (0: none yet)",
            m.trust_list_sequence.clone(),
        );
        tiersync.register(
            "trust_list_stale",
            "1 while this node holds no trust list or one past its next update",
            m.trust_list_stale.clone(),
        );
        tiersync.register(
            "trust_list_next_update_timestamp_seconds",
            "When the trust list held expects its successor, Unix seconds",
            m.trust_list_next_update.clone(),
        );
        m
    }

    fn kind_label(kind: &str, schemas: &Schemas) -> KindLabels {
        KindLabels {
            kind: if schemas.is_canonical(kind) {
                kind.to_owned()
            } else {
                "other".to_owned()
            },
        }
    }

    pub fn record_applied(&self, kind: &str, schemas: &Schemas) {
        self.records_applied([kind], schemas);
    }

    /// Counts records applied, one label lookup per run of the same kind
    /// (a link batch is mostly one kind: this runs for every record).
    pub fn records_applied<'a>(&self, kinds: impl IntoIterator<Item = &'a str>, schemas: &Schemas) {
        let count = |kind: &str, n: u64| {
            self.applied
                .get_or_create(&Self::kind_label(kind, schemas))
                .inc_by(n);
        };
        let mut run: Option<(&str, u64)> = None;
        for kind in kinds {
            match &mut run {
                Some((current, n)) if *current == kind => *n += 1,
                _ => {
                    if let Some((done, n)) = run.replace((kind, 1)) {
                        count(done, n);
                    }
                }
            }
        }
        if let Some((done, n)) = run {
            count(done, n);
        }
    }

    pub fn record_rejected(&self, kind: &str, schemas: &Schemas) {
        self.rejected
            .get_or_create(&Self::kind_label(kind, schemas))
            .inc();
        self.quarantined.inc();
    }
}

/// The worker families, read from the node's [`Workers`] at each scrape:
/// `tiersync_worker_errors_total{worker}` and
/// `tiersync_worker_queue_length{worker}`. The label is the worker's name
/// with `child-link:<code>` collapsed to `child-link` (summed), so series
/// stay bounded however many children come and go.
#[derive(Debug)]
pub struct WorkerMetrics(pub Workers);

/// The `worker` label of a worker's name.
pub fn worker_label(name: &str) -> &str {
    match name.split_once(':') {
        Some((kind, _)) => kind,
        None => name,
    }
}

impl Collector for WorkerMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut errors = BTreeMap::<String, u64>::new();
        let mut queues = BTreeMap::<String, u64>::new();
        for w in self.0.snapshot() {
            let label = worker_label(&w.name).to_owned();
            *errors.entry(label.clone()).or_default() += w.errors;
            if let Some(queue) = w.queue {
                *queues.entry(label).or_default() += queue;
            }
        }
        let family = encoder.encode_descriptor(
            "worker_errors",
            "Errors reported by a long-running worker (child-link sums every child's session)",
            None,
            MetricType::Counter,
        );
        let mut family = family?;
        for (worker, n) in errors {
            ConstCounter::new(n).encode(family.encode_family(&WorkerLabels { worker })?)?;
        }
        let mut family = encoder.encode_descriptor(
            "worker_queue_length",
            "Items waiting for a worker that has a queue (writes to commit, records to sign)",
            None,
            MetricType::Gauge,
        )?;
        for (worker, n) in queues {
            ConstGauge::new(n as i64).encode(family.encode_family(&WorkerLabels { worker })?)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    /// A worker's name, `child-link:<code>` collapsed to `child-link`.
    pub worker: String,
}

/// Registers the worker families ([`WorkerMetrics`]) of `workers`.
pub fn register_workers(registry: &mut Registry, workers: Workers) {
    registry
        .sub_registry_with_prefix("tiersync")
        .register_collector(Box::new(WorkerMetrics(workers)));
}

/// `tiersync_links{state}`: how many links of this node are in each state
/// (ok, connecting, retrying, stalled, must-resync, quarantining), read
/// from the link table at each scrape, every state listed (at 0 too) so
/// alerts can compare. The label is the state, never a peer.
#[derive(Debug)]
pub struct LinkStateMetrics(pub LinkTable);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LinkStateLabels {
    pub state: String,
}

impl Collector for LinkStateMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "links",
            "Links of this node in each state: ok, connecting, retrying, stalled, must-resync, quarantining",
            None,
            MetricType::Gauge,
        )?;
        for (state, n) in self.0.count_by_state() {
            let labels = LinkStateLabels {
                state: state.as_str().to_owned(),
            };
            ConstGauge::new(n as i64).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Registers `tiersync_links{state}` ([`LinkStateMetrics`]) of `links`.
pub fn register_link_states(registry: &mut Registry, links: LinkTable) {
    registry
        .sub_registry_with_prefix("tiersync")
        .register_collector(Box::new(LinkStateMetrics(links)));
}

/// Registers `tiersync_standby`: 1 while this daemon waits as the standby of
/// a node whose active lease another daemon holds, 0 once it is active.
pub fn register_standby(registry: &mut Registry, standby: bool) -> Gauge {
    let gauge = Gauge::default();
    gauge.set(i64::from(standby));
    registry.sub_registry_with_prefix("tiersync").register(
        "standby",
        "1 while this daemon is a standby waiting for its node's active lease",
        gauge.clone(),
    );
    gauge
}

/// `tiersync_standby_lease_age_seconds` and
/// `tiersync_standby_lease_expiry_seconds`: how long ago the node's active
/// lease was last renewed, and how long a renewal lasts, as this daemon
/// last saw them (its own renewals while active; the holder's row while
/// standing by, so a standby shows a hung active daemon's lease ageing).
/// Absent until a lease was seen.
pub fn register_lease(registry: &mut Registry, view: LeaseView) {
    let tiersync = registry.sub_registry_with_prefix("tiersync");
    tiersync.register(
        "standby_lease_age_seconds",
        "Seconds since the node's active lease was last renewed, as this daemon last saw it",
        LeaseGauge(view.clone(), LeaseView::age),
    );
    tiersync.register(
        "standby_lease_expiry_seconds",
        "How long a renewal of the node's active lease lasts; a standby takes over after it",
        LeaseGauge(view, LeaseView::expiry),
    );
}

/// A gauge read from the [`LeaseView`] when scraped, so the age keeps
/// growing while nobody renews.
struct LeaseGauge(LeaseView, fn(&LeaseView) -> Option<Duration>);

impl std::fmt::Debug for LeaseGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LeaseGauge").field(&self.0).finish()
    }
}

impl EncodeMetric for LeaseGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let seconds = (self.1)(&self.0).unwrap_or_default().as_secs_f64();
        encoder.encode_gauge(&seconds)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }

    fn is_empty(&self) -> bool {
        (self.1)(&self.0).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_records_are_counted_by_kind_across_runs() {
        let metrics = Metrics::register(&mut Registry::default());
        let schemas = Schemas::global();
        let kinds = [
            "civil.v1.Resident",
            "civil.v1.Resident",
            "gov.v1.Notice",
            "civil.v1.Resident",
            "acme.v9.Unknown",
        ];
        metrics.records_applied(kinds, schemas);
        metrics.record_applied("gov.v1.Notice", schemas);
        let count = |kind: &str| {
            metrics
                .applied
                .get_or_create(&KindLabels { kind: kind.into() })
                .get()
        };
        assert_eq!(count("civil.v1.Resident"), 3);
        assert_eq!(count("gov.v1.Notice"), 2);
        assert_eq!(count("other"), 1);
        metrics.records_applied([], schemas);
        assert_eq!(count("civil.v1.Resident"), 3);
    }

    #[test]
    fn worker_series_collapse_child_links() {
        let workers = Workers::new(crate::clock::SystemClock::shared());
        let mut registry = Registry::default();
        register_workers(&mut registry, workers.clone());
        let commit = workers.register("group-commit");
        commit.set_queue(3);
        workers.register("child-link:511102004001").error("reset");
        workers.register("child-link:511102004002").error("reset");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for needle in [
            "# HELP tiersync_worker_errors Errors reported",
            "tiersync_worker_errors_total{worker=\"child-link\"} 2",
            "tiersync_worker_errors_total{worker=\"group-commit\"} 0",
            "tiersync_worker_queue_length{worker=\"group-commit\"} 3",
        ] {
            assert!(text.contains(needle), "lacks `{needle}`:\n{text}");
        }
        assert!(!text.contains("511102004001"), "{text}");
    }

    #[test]
    fn links_are_counted_by_state_with_every_state_listed() {
        let links = LinkTable::new(crate::clock::SystemClock::shared());
        let mut registry = Registry::default();
        register_link_states(&mut registry, links.clone());
        let toward = crate::route::Toward::Child;
        links.update_at("511102004001", toward, |l, clock| {
            l.session_up(None, None, clock)
        });
        links.update_at("511102004002", toward, |l, clock| {
            l.session_up(None, Some(("new epoch".into(), 9)), clock)
        });
        links.update_at("511102004003", toward, |l, clock| {
            l.session_up(None, None, clock)
        });
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for needle in [
            "# TYPE tiersync_links gauge",
            "tiersync_links{state=\"ok\"} 2",
            "tiersync_links{state=\"must-resync\"} 1",
            "tiersync_links{state=\"connecting\"} 0",
            "tiersync_links{state=\"retrying\"} 0",
            "tiersync_links{state=\"stalled\"} 0",
            "tiersync_links{state=\"quarantining\"} 0",
        ] {
            assert!(text.contains(needle), "lacks `{needle}`:\n{text}");
        }
        assert!(!text.contains("511102004001"), "{text}");
    }
}
