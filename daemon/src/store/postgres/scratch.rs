//! Test support: scratch schemas for tests, examples and benchmarks that
//! need a real PostgreSQL; each gets its own schema, dropped afterwards.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

/// The server this machine kind runs (trust auth, database `test`);
/// `TIERSYNC_TEST_PG` overrides it.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn base_url() -> String {
    std::env::var("TIERSYNC_TEST_PG").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// A fresh schema, dropped (with everything in it) when this is dropped.
pub struct ScratchSchema {
    base: String,
    name: String,
}

impl ScratchSchema {
    /// Creates a schema on the test server; `None`, after printing
    /// `skipping <test>: <reason>`, when no server answers (a panic instead
    /// when `CI` is set: CI never skips).
    pub async fn create(test: &str) -> Option<ScratchSchema> {
        let base = base_url();
        let connect = async {
            let options = PgConnectOptions::from_str(&base)?;
            PgConnection::connect_with(&options).await
        };
        let why = match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("no answer within 5 s".to_owned()),
        };
        let mut conn = match why {
            Ok(conn) => conn,
            // CI runs every test: a missing server there is a failure
            Err(why) if std::env::var_os("CI").is_some() => {
                panic!(
                    "{test}: no PostgreSQL at {} ({why}), and CI is set",
                    super::mask_url(&base)
                )
            }
            Err(why) => {
                eprintln!(
                    "skipping {test}: no PostgreSQL at {} ({why})",
                    super::mask_url(&base)
                );
                return None;
            }
        };
        let name = format!("ts_{}", hex::encode(rand::random::<[u8; 6]>()));
        // `name` is ours: ts_ and hex digits
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&mut conn)
            .await
            .expect("create scratch schema");
        let _ = conn.close().await;
        Some(ScratchSchema { base, name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A `storage.path` URL that selects this schema.
    pub fn url(&self) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{sep}options[search_path]={}", self.base, self.name)
    }

    pub fn options(&self) -> PgConnectOptions {
        super::connect_options(&self.url()).expect("scratch URL parses")
    }
}

impl Drop for ScratchSchema {
    fn drop(&mut self) {
        let base = self.base.clone();
        let name = self.name.clone();
        // Drop may run inside a runtime, which cannot block on another.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let Ok(options) = PgConnectOptions::from_str(&base) else {
                    return;
                };
                if let Ok(mut conn) = PgConnection::connect_with(&options).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP SCHEMA IF EXISTS {name} CASCADE"
                    )))
                    .execute(&mut conn)
                    .await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}
