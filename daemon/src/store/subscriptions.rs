//! Departments' subscription cursors: how far each department has
//! acknowledged this node's change log, per subscription name. A store
//! keeps them beside the records (one file for a community), in the log's
//! epoch: a cursor of an older epoch (the store was restored and its log
//! renumbered) reads as the start, so nothing is skipped.

use async_trait::async_trait;

use super::Result;

/// Durable subscription cursors (the adapter API's `Acknowledge`).
#[async_trait]
pub trait Subscriptions {
    /// How far `department` has acknowledged subscription `name` in this
    /// store's epoch; 0 for a new subscription or an older epoch.
    async fn subscription_acked(&self, department: &str, name: &str) -> Result<u64>;
    /// Moves the cursor forward to `through` (never back) and returns the
    /// committed cursor.
    async fn subscription_ack(&self, department: &str, name: &str, through: u64) -> Result<u64>;
}
