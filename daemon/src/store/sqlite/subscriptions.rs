//! [`Subscriptions`] on SQLite: one row per department and subscription,
//! written on the writer's own connection like every write.

use async_trait::async_trait;
use sqlx::Row;

use super::{SqliteStore, begin, commit};
use crate::clock::now_ms;
use crate::store::{Result, Store, Subscriptions};

#[async_trait]
impl Subscriptions for SqliteStore {
    async fn subscription_acked(&self, department: &str, name: &str) -> Result<u64> {
        let row = sqlx::query(
            "SELECT acked_through FROM subscriptions WHERE department = ?1 AND name = ?2 AND epoch = ?3",
        )
        .bind(department)
        .bind(name)
        .bind(self.epoch())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map_or(0, |r| r.get::<i64, _>(0) as u64))
    }

    async fn subscription_ack(&self, department: &str, name: &str, through: u64) -> Result<u64> {
        let mut writer = self.writer.lock().await;
        let mut conn = self.writer_conn(&mut writer).await?;
        let epoch = self.epoch().to_owned();
        let outcome = async {
            begin(&mut conn).await?;
            // A row of an older epoch is replaced, not advanced.
            let acked: i64 = sqlx::query_scalar(
                "INSERT INTO subscriptions (department, name, acked_through, epoch, updated_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (department, name) DO UPDATE SET \
                   acked_through = CASE WHEN epoch = excluded.epoch \
                     THEN MAX(acked_through, excluded.acked_through) ELSE excluded.acked_through END, \
                   epoch = excluded.epoch, updated_ms = excluded.updated_ms \
                 RETURNING acked_through",
            )
            .bind(department)
            .bind(name)
            .bind(through as i64)
            .bind(&epoch)
            .bind(now_ms())
            .fetch_one(&mut conn)
            .await?;
            commit(&mut conn).await?;
            Ok(acked as u64)
        }
        .await;
        self.settle(&mut writer, conn, outcome).await
    }
}
