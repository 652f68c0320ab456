//! One behavioural suite for every store engine. Each engine's test module
//! calls [`suite`] with a function that opens a fresh, empty store.

use std::future::Future;
use std::sync::Arc;

use super::sqlite::SqliteStore;
use super::*;

fn code(s: &str) -> DivisionCode {
    DivisionCode::parse(s).unwrap()
}

fn record(id: u8, version: u64, owner: &str) -> wire::Record {
    let mut raw = [0u8; 16];
    raw[15] = id;
    raw[6] = 0x70; // UUIDv7 version nibble
    raw[8] = 0x80;
    wire::Record {
        id: raw.to_vec(),
        kind: "civil.v1.Resident".into(),
        owner: Some(wire::Owner {
            node: owner.into(),
            department: String::new(),
        }),
        version,
        updated_at: 1,
        scope: None,
        deleted: false,
        payload: vec![id; 8],
        keys: vec![wire::NaturalKey {
            name: "id_digest".into(),
            value: format!("d{id}"),
        }],
        reach: None,
        withdrawn: false,
        ..Default::default()
    }
}

fn batch(records: Vec<wire::Record>, through: u64) -> ApplyBatch {
    ApplyBatch {
        via: "511102004001".into(),
        cursor: Some((
            code("511102004001"),
            Cursor {
                applied_through: through,
                peer_epoch: "e1".into(),
            },
        )),
        records,
        refused: vec![],
    }
}

async fn apply_is_idempotent_and_version_ordered(store: Arc<dyn Store>) {
    let report = store
        .apply(batch(
            vec![record(1, 1, "511102004001"), record(2, 1, "511102004001")],
            10,
        ))
        .await
        .unwrap();
    assert_eq!(report.applied.len(), 2);
    assert_eq!(store.head_seq().await.unwrap(), 2);
    // the same batch again: nothing changes
    let again = store
        .apply(batch(
            vec![record(1, 1, "511102004001"), record(2, 1, "511102004001")],
            10,
        ))
        .await
        .unwrap();
    assert_eq!((again.applied.len(), again.duplicates), (0, 2));
    assert_eq!(store.head_seq().await.unwrap(), 2);
    // a newer version moves the record to the head of the log
    let newer = store
        .apply(batch(vec![record(1, 3, "511102004001")], 11))
        .await
        .unwrap();
    assert_eq!(newer.applied[0].0, 3);
    let changes = store.changes_after(0, 100).await.unwrap();
    assert_eq!(
        changes
            .iter()
            .map(|c| (c.seq, c.record.version))
            .collect::<Vec<_>>(),
        vec![(2, 1), (3, 3)]
    );
    // an older one is refused, quarantined, and the stored record untouched
    let stale = store
        .apply(batch(vec![record(1, 2, "511102004001")], 12))
        .await
        .unwrap();
    assert_eq!(stale.refused.len(), 1);
    assert!(
        stale.refused[0].reason.starts_with("stale version"),
        "{}",
        stale.refused[0].reason
    );
    assert_eq!(
        store
            .get(&record(1, 0, "").id)
            .await
            .unwrap()
            .unwrap()
            .record
            .version,
        3
    );
    assert_eq!(store.quarantine_count().await.unwrap(), 1);
    // the cursor advanced with each batch, including the refusing one
    assert_eq!(
        store
            .cursor(&code("511102004001"))
            .await
            .unwrap()
            .unwrap()
            .applied_through,
        12
    );
}

async fn withdrawal_supersedes_same_version(store: Arc<dyn Store>) {
    store
        .apply(batch(vec![record(1, 2, "511102004001")], 1))
        .await
        .unwrap();
    let mut w = record(1, 2, "511102004001");
    w.deleted = true;
    w.withdrawn = true;
    w.payload.clear();
    let report = store.apply(batch(vec![w], 2)).await.unwrap();
    assert_eq!(report.applied.len(), 1);
    let held = store.get(&record(1, 0, "").id).await.unwrap().unwrap();
    assert!(held.record.withdrawn && held.record.payload.is_empty());
    assert!(
        store
            .lookup("civil.v1.Resident", "id_digest", "d1")
            .await
            .unwrap()
            .is_empty()
    );
}

async fn local_writes_check_versions_and_keys(store: Arc<dyn Store>) {
    let write = |r: wire::Record, expected| LocalWrite {
        record: r,
        expected_version: expected,
        unique_keys: true,
    };
    let first = store
        .put_local(write(record(1, 0, "511102004001"), 0))
        .await
        .unwrap();
    assert_eq!(first.record.version, 1);
    let err = store
        .put_local(write(record(1, 0, "511102004001"), 0))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists { current: 1, .. }),
        "{err}"
    );
    let err = store
        .put_local(write(record(1, 0, "511102004001"), 5))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "record 00000000-0000-7000-8000-000000000001 is at version 1, not the expected version 5; re-read it and retry"
    );
    let second = store
        .put_local(write(record(1, 0, "511102004001"), 1))
        .await
        .unwrap();
    assert_eq!(second.record.version, 2);
    // the same natural key on a new record is the same fact collected twice
    let mut dup = record(2, 0, "511102004001");
    dup.keys = record(1, 0, "").keys;
    let err = store.put_local(write(dup, 0)).await.unwrap_err();
    assert!(matches!(err, StoreError::DuplicateKey { .. }), "{err}");
    assert_eq!(
        store
            .lookup("civil.v1.Resident", "id_digest", "d1")
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn list_pages_and_filters(store: Arc<dyn Store>) {
    let mut records: Vec<_> = (1..=5).map(|i| record(i, 1, "511102004001")).collect();
    records.push(record(6, 1, "511102004002"));
    store.apply(batch(records, 6)).await.unwrap();
    let page = store
        .list(&ListQuery {
            owner_prefix: "511102004001".into(),
            limit: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 3);
    let rest = store
        .list(&ListQuery {
            owner_prefix: "511102004001".into(),
            after_id: page[2].record.id.clone(),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(store.count().await.unwrap(), 6);
}

async fn suite<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    apply_is_idempotent_and_version_ordered(open().await).await;
    withdrawal_supersedes_same_version(open().await).await;
    local_writes_check_versions_and_keys(open().await).await;
    list_pages_and_filters(open().await).await;
}

#[tokio::test]
async fn sqlite_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    suite(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.path().join(format!("store-{n}.db"));
        async move {
            Arc::new(SqliteStore::open(&path, &code("511102")).await.unwrap()) as Arc<dyn Store>
        }
    })
    .await;
}

#[tokio::test]
async fn sqlite_store_refuses_another_nodes_file_and_keeps_its_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.db");
    let store = SqliteStore::open(&path, &code("511102")).await.unwrap();
    let epoch = store.epoch().to_owned();
    store.close().await;
    let reopened = SqliteStore::open(&path, &code("511102")).await.unwrap();
    assert_eq!(reopened.epoch(), epoch);
    reopened.close().await;
    let err = SqliteStore::open(&path, &code("511111"))
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("belongs to node `511102`, but this node is `511111`"),
        "{err}"
    );
}

#[tokio::test]
async fn sqlite_lookup_checks_the_key_on_the_record_not_just_the_hash() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("node.db"), &code("511102"))
        .await
        .unwrap();
    store
        .apply(batch(vec![record(1, 1, "511102004001")], 1))
        .await
        .unwrap();
    // Plant an index entry, as a hash collision would, that points the hash
    // of another key at record 1.
    let planted = super::sqlite::key_hash("civil.v1.Resident", "id_digest", "someone-else");
    sqlx::query("INSERT INTO natural_keys (key_hash, record_seq) VALUES (?1, 1)")
        .bind(planted)
        .execute(store.pool())
        .await
        .unwrap();
    assert!(
        store
            .lookup("civil.v1.Resident", "id_digest", "someone-else")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .lookup("civil.v1.Resident", "id_digest", "d1")
            .await
            .unwrap()
            .len(),
        1
    );
    // the same value under another kind is another key
    assert!(
        store
            .lookup("civil.v1.Household", "id_digest", "d1")
            .await
            .unwrap()
            .is_empty()
    );
}
