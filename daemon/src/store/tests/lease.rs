//! The active lease on PostgreSQL: writes under an expired or taken lease
//! are refused, and a standby takes over a lease that is not renewed.

use super::*;

/// Takes the lease of `node` in `schema` with a short expiry.
async fn lease_in(
    schema: &ScratchSchema,
    node: &str,
    expiry_ms: u64,
) -> super::postgres::ActiveLease {
    let timing = super::postgres::LeaseTiming {
        renew: std::time::Duration::from_millis(expiry_ms / 5),
        expiry: std::time::Duration::from_millis(expiry_ms),
    };
    super::postgres::ActiveLease::acquire(
        schema.options(),
        &code(node),
        timing,
        &Default::default(),
        &tokio_util::sync::CancellationToken::new(),
        || {},
    )
    .await
    .unwrap()
    .expect("not cancelled")
}

async fn sql(schema: &ScratchSchema, statement: &'static str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect_with(&schema.options())
        .await
        .unwrap();
    sqlx::query(statement).execute(&mut conn).await.unwrap();
    let _ = conn.close().await;
}

/// The forced split-brain case: the active daemon's lease expires, or
/// another daemon claims it, while the old daemon's sessions survive (as
/// if the standby could not end them). Its writes are refused by the check
/// every write transaction makes, before and after the new holder opens
/// the store; a lease that merely expired with nobody taking over is
/// renewed and writing resumes.
#[tokio::test]
async fn postgres_writes_under_an_expired_or_taken_lease_are_refused() {
    let test = "postgres_writes_under_an_expired_or_taken_lease_are_refused";
    let Some(schema) = ScratchSchema::create(test).await else {
        return;
    };
    let lease = lease_in(&schema, "511102", 10_000).await;
    let old = PgStore::open_leased(schema.options(), &code("511102"), &lease)
        .await
        .unwrap();
    old.apply(batch(vec![record(1, 1, "511102004001")], 1))
        .await
        .unwrap();
    let status = old.lease().await.unwrap().expect("a lease row");
    assert!(status.this_daemon && !status.expired, "{status:?}");
    assert_eq!(status.holder, lease.holder());

    // expired, nobody took over: refused until renewed
    sql(
        &schema,
        "UPDATE active_lease SET expires_at = now() - interval '1 second'",
    )
    .await;
    let err = old
        .apply(batch(vec![record(2, 1, "511102004001")], 2))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
    assert!(err.to_string().contains("expired"), "{err}");
    old.renew_lease().await.unwrap();
    old.apply(batch(vec![record(2, 1, "511102004001")], 2))
        .await
        .unwrap();

    // another daemon claimed the row; the old one's sessions survive
    sql(&schema, "UPDATE active_lease SET holder = 'tiersync-other'").await;
    let err = old
        .apply(batch(vec![record(3, 1, "511102004001")], 3))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
    let err = old.renew_lease().await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
    // ... and opened the store: the fence is stale too
    let new = PgStore::open(schema.options(), &code("511102"))
        .await
        .unwrap();
    let err = old
        .put_local(LocalWrite {
            record: record(4, 0, "511102"),
            expected_version: 0,
            unique_keys: true,
            audit: AuditNote::write("local-api", false),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    assert!(matches!(
        old.renew_lease().await.unwrap_err(),
        StoreError::Fenced { .. }
    ));
    // nothing of the refused writes is stored, nothing twice
    let report = new
        .apply(batch(vec![record(3, 1, "511102004001")], 3))
        .await
        .unwrap();
    assert_eq!(report.applied[0].0, 3);
    assert_eq!(new.count().await.unwrap(), 3);
    old.close().await;
    new.close().await;
}

/// A standby takes over a lease its holder stopped renewing (a hung
/// daemon: its sessions stay open) within the expiry and a poll: it ends
/// the holder's sessions, so the old lock is released and an open
/// transaction of the old holder rolls back, and the old holder's lease
/// fires `lost`.
#[tokio::test]
async fn postgres_a_standby_takes_over_a_lease_that_is_not_renewed() {
    let test = "postgres_a_standby_takes_over_a_lease_that_is_not_renewed";
    let Some(schema) = ScratchSchema::create(test).await else {
        return;
    };
    let expiry = std::time::Duration::from_millis(1500);
    let old_lease = lease_in(&schema, "511102", expiry.as_millis() as u64).await;
    let old = Arc::new(
        PgStore::open_leased(schema.options(), &code("511102"), &old_lease)
            .await
            .unwrap(),
    );
    old.apply(batch(vec![record(1, 1, "511102004001")], 1))
        .await
        .unwrap();
    // renewing: the standby waits
    old_lease.keep(old.clone());
    let standby = tokio::spawn({
        let options = schema.options();
        async move {
            let timing = super::postgres::LeaseTiming {
                renew: std::time::Duration::from_millis(300),
                expiry,
            };
            let view = super::postgres::LeaseView::default();
            let node = code("511102");
            let cancel = tokio_util::sync::CancellationToken::new();
            super::postgres::ActiveLease::acquire(options, &node, timing, &view, &cancel, || {})
                .await
                .unwrap()
                .expect("not cancelled")
        }
    });
    tokio::time::sleep(expiry * 2).await;
    assert!(!standby.is_finished(), "took over a lease being renewed");

    // the holder hangs: its writer is wedged (so it stops renewing), with a
    // transaction open; its sessions and its lock stay
    let wedge = tokio::spawn({
        let old = old.clone();
        async move { old.wedge_writer_for(expiry * 3).await }
    });
    let mut open_tx = old.pool().begin().await.unwrap();
    sqlx::query("INSERT INTO meta (key, value) VALUES ('uncommitted', 'x')")
        .execute(&mut *open_tx)
        .await
        .unwrap();
    let hung = std::time::Instant::now();
    let new_lease = standby.await.unwrap();
    let took = hung.elapsed();
    assert!(
        took < expiry + std::time::Duration::from_secs(1),
        "took over after {took:?}"
    );
    assert!(
        open_tx.commit().await.is_err(),
        "the old transaction was ended"
    );
    tokio::time::timeout(
        std::time::Duration::from_secs(2),
        old_lease.lost().cancelled(),
    )
    .await
    .expect("the old holder learns it lost the lease");
    let new = Arc::new(
        PgStore::open_leased(schema.options(), &code("511102"), &new_lease)
            .await
            .unwrap(),
    );
    new_lease.keep(new.clone());
    let status = new.lease().await.unwrap().expect("a lease row");
    assert!(status.this_daemon && status.holder == new_lease.holder());
    let err = old
        .apply(batch(vec![record(2, 1, "511102004001")], 2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Fenced { .. } | StoreError::LeaseLost { .. } | StoreError::Db(_)
        ),
        "{err}"
    );
    let report = new
        .apply(batch(vec![record(2, 1, "511102004001")], 2))
        .await
        .unwrap();
    assert_eq!(report.applied[0].0, 2);
    let uncommitted: Option<String> =
        sqlx::query_scalar("SELECT value FROM meta WHERE key = 'uncommitted'")
            .fetch_optional(new.pool())
            .await
            .unwrap();
    assert_eq!(uncommitted, None);
    wedge.await.unwrap();
    old.close().await;
    new.close().await;
}
