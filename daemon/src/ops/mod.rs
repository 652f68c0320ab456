//! What operators see: the admin listener ([`admin`]: `/metrics`,
//! `/healthz`, `/readyz`, the status page and `/status.json`), the
//! Prometheus families ([`metrics`]) and the node's status report
//! ([`status`]).

pub mod admin;
pub mod metrics;
pub mod status;
