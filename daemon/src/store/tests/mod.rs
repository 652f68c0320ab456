//! One behavioural suite for every store engine: each case is written once
//! against an [`Engine`] (which opens fresh stores and can tamper with their
//! tables) and instantiated for SQLite and for PostgreSQL by
//! [`engine_tests!`]. The PostgreSQL run uses the server at 127.0.0.1:5432
//! (or `TIERSYNC_TEST_PG`), each store in its own scratch schema, and prints
//! a skip line where no server answers.

use std::sync::Arc;

use async_trait::async_trait;

use super::postgres::PgStore;
use super::postgres::scratch::ScratchSchema;
use super::sqlite::SqliteStore;
use super::*;

mod files;
mod full_disk;
mod lease;
mod subscriptions;

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
        payload: vec![id; 8].into(),
        keys: vec![wire::NaturalKey {
            name: "id_digest".into(),
            value: format!("d{id}"),
        }],
        reach: None,
        withdrawn: false,
        ..Default::default()
    }
}

/// Test record `n` of many: ids beyond the 256 of [`record`].
fn numbered(n: u32, version: u64) -> wire::Record {
    let mut r = record(0, version, "511102004001");
    r.id[11..15].copy_from_slice(&n.to_be_bytes());
    r.keys[0].value = format!("n{n}");
    r
}

/// An own write of `r` by the local API, checking natural keys.
fn own_write(r: wire::Record, expected_version: u64) -> LocalWrite {
    LocalWrite {
        record: r,
        expected_version,
        unique_keys: true,
        audit: AuditNote::write("local-api", false),
    }
}

/// The version `store` holds of test record `n`.
async fn version_held(store: &dyn Store, n: u8) -> u64 {
    store
        .get(&record(n, 0, "").id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("record {n} is not held"))
        .record
        .version
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
        records: records.into_iter().map(Encoded::new).collect(),
        refused: vec![],
        audit: vec![],
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
    assert_eq!(version_held(&*store, 1).await, 3);
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
    let write = own_write;
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

async fn grouped_local_writes_see_each_other_and_fail_alone(store: Arc<dyn Store>) {
    let write = own_write;
    let mut same_key = record(3, 0, "511102004001");
    same_key.keys = record(1, 0, "").keys;
    let outcomes = store
        .put_local_many(vec![
            write(record(1, 0, "511102004001"), 0),
            // sees the create just before it in the same transaction
            write(record(1, 0, "511102004001"), 1),
            // refused alone: version 1 was superseded by the write before
            write(record(1, 0, "511102004001"), 1),
            write(record(2, 0, "511102004001"), 0),
            // the natural key of record 1, staged above
            write(same_key, 0),
            write(record(4, 0, "511102004001"), 5),
        ])
        .await
        .unwrap();
    let verdicts: Vec<String> = outcomes
        .iter()
        .map(|o| match o {
            Ok(s) => format!("seq {} v{}", s.seq, s.record.version),
            Err(e) => format!("{e}"),
        })
        .collect();
    assert_eq!(verdicts[0], "seq 1 v1");
    assert_eq!(verdicts[1], "seq 2 v2");
    assert!(
        matches!(
            outcomes[2],
            Err(StoreError::VersionConflict {
                current: 2,
                expected: 1,
                ..
            })
        ),
        "{verdicts:?}"
    );
    assert_eq!(verdicts[3], "seq 3 v1");
    assert!(
        matches!(outcomes[4], Err(StoreError::DuplicateKey { .. })),
        "{verdicts:?}"
    );
    assert!(
        matches!(outcomes[5], Err(StoreError::NotFound { .. })),
        "{verdicts:?}"
    );
    assert_eq!(store.head_seq().await.unwrap(), 3);
    assert_eq!(version_held(&*store, 1).await, 2);
    assert!(store.get(&record(3, 0, "").id).await.unwrap().is_none());
    let changes: Vec<u64> = store
        .changes_after(0, 10)
        .await
        .unwrap()
        .iter()
        .map(|s| s.seq)
        .collect();
    assert_eq!(changes, vec![2, 3], "record 1's row moved to seq 2");
    // the three writes are audited, in order, on an intact chain
    let audited = entries(&*store, AuditQuery::default()).await;
    assert_eq!(audited.len(), 3, "{audited:?}");
    assert!(matches!(
        crate::store::audit::verify(&*store).await.unwrap(),
        crate::store::audit::Verdict::Intact { entries: 3, .. }
    ));
    // a group of refusals writes nothing
    let outcomes = store
        .put_local_many(vec![write(record(2, 0, "511102004001"), 0)])
        .await
        .unwrap();
    assert!(matches!(outcomes[0], Err(StoreError::AlreadyExists { .. })));
    assert_eq!(store.head_seq().await.unwrap(), 3);
    // and an empty group is a no-op
    assert!(store.put_local_many(vec![]).await.unwrap().is_empty());
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

/// A link sender's pages skip what its direction never sends, and say how
/// far they read, so the skipped tail is passed, not re-read.
async fn link_pages_filter_by_owner_and_report_how_far_they_read(store: Arc<dyn Store>) {
    // seqs 1..=6: owners alternate between two communities of one street;
    // 7: a county notice; 8: the street's own record
    let mut records: Vec<_> = (1..=6)
        .map(|i| {
            let owner = if i % 2 == 1 {
                "511102004001"
            } else {
                "511102004002"
            };
            record(i, 1, owner)
        })
        .collect();
    records.push(record(7, 1, "511102"));
    records.push(record(8, 1, "511102004"));
    store.apply(batch(records, 8)).await.unwrap();
    let seqs = |page: &LinkPage| page.changes.iter().map(|c| c.seq).collect::<Vec<_>>();

    // down to 511102004001: everything not owned in its subtree
    let (child, street) = (code("511102004001"), code("511102004"));
    let (county, elsewhere) = (code("511102"), code("511102004003"));
    let down = Owners::Outside(&child);
    let page = store.link_page(0, 100, &down).await.unwrap();
    assert_eq!(seqs(&page), vec![2, 4, 6, 7, 8]);
    assert_eq!((page.through, page.caught_up), (8, true));
    // a full page ends at its last change, and is not the head
    let page = store.link_page(0, 2, &down).await.unwrap();
    assert_eq!(seqs(&page), vec![2, 4]);
    assert_eq!((page.through, page.caught_up), (4, false));
    let page = store.link_page(4, 2, &down).await.unwrap();
    assert_eq!(seqs(&page), vec![6, 7]);
    assert_eq!((page.through, page.caught_up), (7, false));

    // up from the street 511102004: only its own subtree, and a filtered
    // tail (the county's notice) still moves `through` to the head
    let up = Owners::Within(&street);
    let page = store.link_page(5, 100, &up).await.unwrap();
    assert_eq!(seqs(&page), vec![6, 8]);
    assert_eq!((page.through, page.caught_up), (8, true));
    let only_county = Owners::Within(&county);
    assert_eq!(
        seqs(&store.link_page(0, 100, &only_county).await.unwrap()).len(),
        8
    );
    let nothing = Owners::Within(&elsewhere);
    let page = store.link_page(0, 100, &nothing).await.unwrap();
    assert!(page.changes.is_empty());
    assert_eq!((page.through, page.caught_up), (8, true));
    // at the head: nothing read, nothing passed
    let page = store.link_page(8, 100, &down).await.unwrap();
    assert!(page.changes.is_empty());
    assert_eq!((page.through, page.caught_up), (8, true));
    assert!(down.admits(&code("511102004002")) && !down.admits(&code("511102004001")));
}

/// A store engine under test: opens stores for node `511102` and can plant
/// rows behind a store's back.
#[async_trait]
trait Engine: Send {
    /// A fresh, empty store.
    async fn fresh(&mut self) -> Arc<dyn Store>;
    /// The last store opened again (after closing it), as node `node`.
    async fn reopen(&mut self, node: &str) -> Result<Arc<dyn Store>>;
    /// Plants a natural-key index entry, as a hash collision would.
    async fn plant_key(&self, key_hash: i64, seq: i64);
    /// Changes the audit table of the last store behind its back.
    async fn tamper(&self, tamper: Tamper);
    /// Stores `record` at `seq` behind the last store's back, as a commit
    /// whose answer was lost leaves it.
    async fn plant_record(&self, seq: i64, record: &wire::Record);
}

/// What a tampering test does to one audit row.
#[derive(Debug, Clone)]
enum Tamper {
    /// Changes the detail, leaving the hashes.
    Edit {
        entry: u64,
        detail: &'static str,
    },
    Delete {
        entry: u64,
    },
    /// Changes the detail and stores the hash that matches it.
    Rehash {
        entry: u64,
        detail: &'static str,
        hash: Vec<u8>,
    },
}

struct SqliteEngine {
    dir: tempfile::TempDir,
    n: usize,
    last: Option<Arc<SqliteStore>>,
}

impl SqliteEngine {
    fn new() -> SqliteEngine {
        SqliteEngine {
            dir: tempfile::tempdir().unwrap(),
            n: 0,
            last: None,
        }
    }
    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join(format!("store-{}.db", self.n))
    }
}

#[async_trait]
impl Engine for SqliteEngine {
    async fn fresh(&mut self) -> Arc<dyn Store> {
        self.n += 1;
        let store = Arc::new(
            SqliteStore::open(&self.path(), &code("511102"))
                .await
                .unwrap(),
        );
        self.last = Some(store.clone());
        store
    }
    async fn reopen(&mut self, node: &str) -> Result<Arc<dyn Store>> {
        if let Some(last) = self.last.take() {
            last.close().await;
        }
        let store = Arc::new(SqliteStore::open(&self.path(), &code(node)).await?);
        self.last = Some(store.clone());
        Ok(store)
    }
    async fn plant_key(&self, key_hash: i64, seq: i64) {
        sqlx::query("INSERT INTO natural_keys (key_hash, record_seq) VALUES (?1, ?2)")
            .bind(key_hash)
            .bind(seq)
            .execute(self.last.as_ref().unwrap().pool())
            .await
            .unwrap();
    }
    async fn tamper(&self, tamper: Tamper) {
        let pool = self.last.as_ref().unwrap().pool();
        let q = match tamper {
            Tamper::Edit { entry, detail } => {
                sqlx::query("UPDATE audit SET detail = ?1 WHERE entry = ?2")
                    .bind(detail)
                    .bind(entry as i64)
            }
            Tamper::Delete { entry } => {
                sqlx::query("DELETE FROM audit WHERE entry = ?1").bind(entry as i64)
            }
            Tamper::Rehash {
                entry,
                detail,
                hash,
            } => sqlx::query("UPDATE audit SET detail = ?1, hash = ?2 WHERE entry = ?3")
                .bind(detail)
                .bind(hash)
                .bind(entry as i64),
        };
        assert_eq!(q.execute(pool).await.unwrap().rows_affected(), 1);
    }
    async fn plant_record(&self, seq: i64, r: &wire::Record) {
        sqlx::query(
            "INSERT INTO records (seq, id, kind, owner, version, updated_at, deleted, withdrawn, via, body) \
             VALUES (?1, ?2, ?3, ?4, ?5, 0, 0, 0, '', ?6)",
        )
        .bind(seq)
        .bind(&r.id)
        .bind(&r.kind)
        .bind(&r.owner.as_ref().unwrap().node)
        .bind(r.version as i64)
        .bind(r.encode_to_vec())
        .execute(self.last.as_ref().unwrap().pool())
        .await
        .unwrap();
    }
}

struct PgEngine {
    schemas: Vec<ScratchSchema>,
    test: &'static str,
    last: Option<Arc<PgStore>>,
}

impl PgEngine {
    /// `None` (the skip line printed) when no PostgreSQL answers.
    async fn new(test: &'static str) -> Option<PgEngine> {
        // probe once, so a missing server skips before any case runs
        let probe = ScratchSchema::create(test).await?;
        Some(PgEngine {
            schemas: vec![probe],
            test,
            last: None,
        })
    }
}

#[async_trait]
impl Engine for PgEngine {
    async fn fresh(&mut self) -> Arc<dyn Store> {
        if self.last.is_some() {
            let schema = ScratchSchema::create(self.test)
                .await
                .expect("the server answered a moment ago");
            self.schemas.push(schema);
        }
        let options = self.schemas.last().unwrap().options();
        let store = Arc::new(PgStore::open(options, &code("511102")).await.unwrap());
        self.last = Some(store.clone());
        store
    }
    async fn reopen(&mut self, node: &str) -> Result<Arc<dyn Store>> {
        if let Some(last) = self.last.take() {
            last.close().await;
        }
        let options = self.schemas.last().unwrap().options();
        let store = Arc::new(PgStore::open(options, &code(node)).await?);
        self.last = Some(store.clone());
        Ok(store)
    }
    async fn plant_key(&self, key_hash: i64, seq: i64) {
        sqlx::query("INSERT INTO natural_keys (key_hash, record_seq) VALUES ($1, $2)")
            .bind(key_hash)
            .bind(seq)
            .execute(self.last.as_ref().unwrap().pool())
            .await
            .unwrap();
    }
    async fn tamper(&self, tamper: Tamper) {
        let pool = self.last.as_ref().unwrap().pool();
        let q = match tamper {
            Tamper::Edit { entry, detail } => {
                sqlx::query("UPDATE audit SET detail = $1 WHERE entry = $2")
                    .bind(detail)
                    .bind(entry as i64)
            }
            Tamper::Delete { entry } => {
                sqlx::query("DELETE FROM audit WHERE entry = $1").bind(entry as i64)
            }
            Tamper::Rehash {
                entry,
                detail,
                hash,
            } => sqlx::query("UPDATE audit SET detail = $1, hash = $2 WHERE entry = $3")
                .bind(detail)
                .bind(hash)
                .bind(entry as i64),
        };
        assert_eq!(q.execute(pool).await.unwrap().rows_affected(), 1);
    }
    async fn plant_record(&self, seq: i64, r: &wire::Record) {
        sqlx::query(
            "INSERT INTO records (seq, id, kind, owner, version, updated_at, deleted, withdrawn, via, body) \
             VALUES ($1, $2, $3, $4, $5, 0, false, false, '', $6)",
        )
        .bind(seq)
        .bind(&r.id)
        .bind(&r.kind)
        .bind(&r.owner.as_ref().unwrap().node)
        .bind(r.version as i64)
        .bind(r.encode_to_vec())
        .execute(self.last.as_ref().unwrap().pool())
        .await
        .unwrap();
    }
}

async fn refuses_another_nodes_store_and_keeps_its_epoch(engine: &mut dyn Engine) {
    let store = engine.fresh().await;
    let epoch = store.epoch().to_owned();
    let reopened = engine.reopen("511102").await.unwrap();
    assert_eq!(reopened.epoch(), epoch);
    let err = engine.reopen("511111").await.err().unwrap();
    assert!(
        err.to_string()
            .contains("belongs to node `511102`, but this node is `511111`"),
        "{err}"
    );
}

async fn reopened_store_continues_the_log(engine: &mut dyn Engine) {
    let store = engine.fresh().await;
    store
        .apply(batch(
            vec![record(1, 1, "511102004001"), record(2, 1, "511102004001")],
            2,
        ))
        .await
        .unwrap();
    let store = engine.reopen("511102").await.unwrap();
    assert_eq!(store.head_seq().await.unwrap(), 2);
    let report = store
        .apply(batch(vec![record(3, 1, "511102004001")], 3))
        .await
        .unwrap();
    assert_eq!(report.applied[0].0, 3);
}

async fn lookup_checks_the_key_on_the_record_not_just_the_hash(engine: &mut dyn Engine) {
    let store = engine.fresh().await;
    store
        .apply(batch(vec![record(1, 1, "511102004001")], 1))
        .await
        .unwrap();
    // An index entry, as a hash collision would make, that points the hash
    // of another key at record 1.
    engine
        .plant_key(
            key_hash("civil.v1.Resident", "id_digest", "someone-else"),
            1,
        )
        .await;
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

async fn a_batch_keeps_the_newest_copy_of_each_record(engine: &mut dyn Engine) {
    let store = engine.fresh().await;
    let report = store
        .apply(batch(
            vec![
                record(1, 2, "511102004001"),
                record(1, 1, "511102004001"),
                record(1, 3, "511102004001"),
                record(2, 1, "511102004001"),
            ],
            4,
        ))
        .await
        .unwrap();
    assert_eq!(
        report
            .applied
            .iter()
            .map(|(seq, r)| (*seq, r.id[15], r.version))
            .collect::<Vec<_>>(),
        vec![(1, 1, 3), (2, 2, 1)]
    );
    assert_eq!(report.duplicates, 1);
    assert!(report.refused.is_empty());
    // a changed record's old natural keys no longer find it
    let mut moved = record(2, 2, "511102004001");
    moved.keys[0].value = "d2-new".into();
    store.apply(batch(vec![moved], 5)).await.unwrap();
    assert!(
        store
            .lookup("civil.v1.Resident", "id_digest", "d2")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .lookup("civil.v1.Resident", "id_digest", "d2-new")
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn quarantine_lists_and_resolves(engine: &mut dyn Engine) {
    let store = engine.fresh().await;
    let bad = record(9, 1, "511102004009");
    let mut b = batch(vec![record(1, 1, "511102004001")], 1);
    b.refused
        .push(Refusal::of(&bad, RefusalCause::Route, "forged origin"));
    let report = store.apply(b).await.unwrap();
    assert_eq!((report.applied.len(), report.refused.len()), (1, 1));
    let rows = store.quarantine_list(10).await.unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(
        (row.peer.as_str(), row.reason.as_str(), row.origin.as_str()),
        ("511102004001", "forged origin", "511102004009")
    );
    // the cause is stored as the rules act on it, not only as text
    assert_eq!(row.cause, RefusalCause::Route);
    for cause in RefusalCause::ALL {
        assert_eq!(RefusalCause::from_stored(cause.as_str()), cause);
    }
    assert_eq!(RefusalCause::from_stored("nonsense"), RefusalCause::Unknown);
    assert_eq!(row.record_id, bad.id);
    assert_eq!(
        wire::Record::decode(row.body.as_slice()).unwrap().id,
        bad.id
    );
    assert!(store.quarantine_get(row.qid).await.unwrap().is_some());
    store.quarantine_resolve(row.qid).await.unwrap();
    assert!(store.quarantine_get(row.qid).await.unwrap().is_none());
    assert_eq!(store.quarantine_count().await.unwrap(), 0);
}

async fn a_renewed_epoch_survives_reopening_and_keeps_the_records(engine: &mut dyn Engine) {
    let store = engine.fresh().await;
    store
        .apply(batch(vec![record(1, 1, "511102004001")], 1))
        .await
        .unwrap();
    let old = store.epoch().to_owned();
    let new = store.renew_epoch().await.unwrap();
    assert_ne!(new, old);
    let reopened = engine.reopen("511102").await.unwrap();
    assert_eq!(reopened.epoch(), new);
    assert_eq!(reopened.count().await.unwrap(), 1);
    assert_eq!(reopened.head_seq().await.unwrap(), 1);
}

/// Runs every case on one engine, each on a fresh store.
async fn entries(store: &dyn Store, query: AuditQuery) -> Vec<(u64, String, String, String)> {
    store
        .audit_list(&query)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.entry, e.actor, e.action, e.detail))
        .collect()
}

async fn audit_entries_commit_with_their_events(engine: &mut dyn Engine) {
    let store = engine.fresh().await;
    let write = |r: wire::Record, expected, actor: &str| LocalWrite {
        audit: AuditNote::write(actor, r.deleted),
        record: r,
        expected_version: expected,
        unique_keys: true,
    };
    store
        .put_local(write(record(1, 0, "511102"), 0, "local-api"))
        .await
        .unwrap();
    // a refused write leaves no entry: the entry is in its transaction
    store
        .put_local(write(record(1, 0, "511102"), 0, "local-api"))
        .await
        .unwrap_err();
    let mut gone = record(1, 0, "511102");
    gone.deleted = true;
    store
        .put_local(write(gone, 1, "civil-affairs"))
        .await
        .unwrap();
    // an applied batch without refusals adds no entry
    store
        .apply(batch(vec![record(2, 2, "511102004001")], 1))
        .await
        .unwrap();
    assert_eq!(
        store
            .audit_list(&AuditQuery::default())
            .await
            .unwrap()
            .len(),
        2
    );
    // a stale version and a validation refusal, plus an event of the batch
    let mut b = batch(vec![record(2, 1, "511102004001")], 2);
    b.refused.push(Refusal::of(
        &record(3, 1, "511102004003"),
        RefusalCause::Route,
        "forged origin",
    ));
    b.audit.push(AuditEvent {
        actor: "node".into(),
        action: "trust".into(),
        detail: "adopted trust list sequence 2".into(),
        ..Default::default()
    });
    store.apply(b).await.unwrap();
    let read = store
        .audit_append(AuditEvent {
            actor: "public-security".into(),
            action: "read".into(),
            kind: "civil.v1.Resident".into(),
            record_id: id_text(&record(2, 0, "").id),
            detail: "household check".into(),
        })
        .await
        .unwrap();
    assert_eq!(read.entry, 6);

    let all = entries(&*store, AuditQuery::default()).await;
    let shape: Vec<(u64, &str, &str)> = all
        .iter()
        .map(|(n, actor, action, _)| (*n, actor.as_str(), action.as_str()))
        .collect();
    assert_eq!(
        shape,
        [
            (1, "local-api", "put"),
            (2, "civil-affairs", "delete"),
            (3, "peer:511102004001", "reject"),
            (4, "peer:511102004001", "reject"),
            (5, "node", "trust"),
            (6, "public-security", "read"),
        ]
    );
    assert_eq!(all[2].3, "forged origin");
    assert!(
        all[3].3.starts_with("stale version: record "),
        "{}",
        all[3].3
    );

    // filters and paging
    let check = |query: AuditQuery, expected: &'static [u64]| {
        let store = store.clone();
        async move {
            let got: Vec<u64> = entries(&*store, query.clone())
                .await
                .into_iter()
                .map(|e| e.0)
                .collect();
            assert_eq!(got, expected, "{query:?}");
        }
    };
    let q = AuditQuery::default;
    check(
        AuditQuery {
            action: "reject".into(),
            ..q()
        },
        &[3, 4],
    )
    .await;
    check(
        AuditQuery {
            actor: "node".into(),
            ..q()
        },
        &[5],
    )
    .await;
    check(
        AuditQuery {
            kind: "civil.v1.Resident".into(),
            ..q()
        },
        &[1, 2, 3, 4, 6],
    )
    .await;
    check(
        AuditQuery {
            after: 2,
            limit: 2,
            ..q()
        },
        &[3, 4],
    )
    .await;
    check(
        AuditQuery {
            since_ms: Some(read.at_ms + 1),
            ..q()
        },
        &[],
    )
    .await;
    check(
        AuditQuery {
            until_ms: Some(read.at_ms),
            ..q()
        },
        &[1, 2, 3, 4, 5, 6],
    )
    .await;

    assert!(matches!(
        crate::store::audit::verify(&*store).await.unwrap(),
        crate::store::audit::Verdict::Intact { entries: 6, .. }
    ));
    // a reopened store continues the chain
    let store = engine.reopen("511102").await.unwrap();
    store
        .put_local(write(record(4, 0, "511102"), 0, "local-api"))
        .await
        .unwrap();
    assert!(matches!(
        crate::store::audit::verify(&*store).await.unwrap(),
        crate::store::audit::Verdict::Intact { entries: 7, .. }
    ));
}

/// Edits, deletions and re-linked edits behind the store's back are each
/// found, with the entry named.
async fn audit_verify_names_the_first_broken_entry(engine: &mut dyn Engine) {
    type Case = (&'static str, fn(&[AuditEntry]) -> Tamper, &'static str);
    let cases: Vec<Case> = vec![
        (
            "edited",
            |_| Tamper::Edit {
                entry: 3,
                detail: "nothing to see",
            },
            "entry 3 was changed (its hash does not match its contents)",
        ),
        (
            "deleted",
            |_| Tamper::Delete { entry: 3 },
            "entry 3 is missing (2 is followed by 4)",
        ),
        (
            "re-linked",
            |all| {
                let mut e = all[2].clone();
                e.detail = "nothing to see".into();
                Tamper::Rehash {
                    entry: 3,
                    detail: "nothing to see",
                    hash: e.expected_hash().to_vec(),
                }
            },
            "entry 4 does not link to entry 3",
        ),
    ];
    for (name, tamper, expected) in cases {
        let store = engine.fresh().await;
        for i in 1..=5 {
            store
                .audit_append(AuditEvent {
                    actor: "public-security".into(),
                    action: "read".into(),
                    detail: format!("read {i}"),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        let all = store.audit_list(&AuditQuery::default()).await.unwrap();
        engine.tamper(tamper(&all)).await;
        match crate::store::audit::verify(&*store).await.unwrap() {
            crate::store::audit::Verdict::Broken(b) => {
                assert_eq!(b.to_string(), expected, "{name}")
            }
            v => panic!("{name}: tampering not found: {v:?}"),
        }
    }
}

/// After a failed write the writer's next seq and audit chain follow what
/// the store holds, not what the process last believed: a commit that
/// failed may have committed all the same (its answer lost), and writing
/// on at seqs it took would fail every write from then on.
async fn a_failed_write_leaves_the_writer_following_the_store(engine: &mut dyn Engine) {
    let store = engine.fresh().await;
    let own = |n: u8| {
        let mut r = record(n, 1, "511102004001");
        r.owner.as_mut().unwrap().node = "511102".into();
        r
    };
    store.put_local(own_write(own(1), 0)).await.unwrap();
    // what a commit whose answer was lost leaves: a record at the next seq
    engine.plant_record(2, &own(2)).await;
    let err = store.put_local(own_write(own(3), 0)).await.unwrap_err();
    assert!(!err.is_refusal(), "{err}");
    let stored = store.put_local(own_write(own(3), 0)).await.unwrap();
    assert_eq!(stored.seq, 3, "the write after the failure");
    assert_eq!(store.head_seq().await.unwrap(), 3);
    let more = store.put_local(own_write(own(4), 0)).await.unwrap();
    assert_eq!(more.seq, 4);
    assert!(matches!(
        crate::store::audit::verify(&*store).await.unwrap(),
        crate::store::audit::Verdict::Intact { entries: 3, .. }
    ));
}

async fn suite(engine: &mut dyn Engine) {
    apply_is_idempotent_and_version_ordered(engine.fresh().await).await;
    withdrawal_supersedes_same_version(engine.fresh().await).await;
    local_writes_check_versions_and_keys(engine.fresh().await).await;
    grouped_local_writes_see_each_other_and_fail_alone(engine.fresh().await).await;
    list_pages_and_filters(engine.fresh().await).await;
    link_pages_filter_by_owner_and_report_how_far_they_read(engine.fresh().await).await;
    refuses_another_nodes_store_and_keeps_its_epoch(engine).await;
    reopened_store_continues_the_log(engine).await;
    lookup_checks_the_key_on_the_record_not_just_the_hash(engine).await;
    a_batch_keeps_the_newest_copy_of_each_record(engine).await;
    quarantine_lists_and_resolves(engine).await;
    a_renewed_epoch_survives_reopening_and_keeps_the_records(engine).await;
    audit_entries_commit_with_their_events(engine).await;
    audit_verify_names_the_first_broken_entry(engine).await;
    a_failed_write_leaves_the_writer_following_the_store(engine).await;
    subscriptions::cursors_move_forward_within_an_epoch(engine).await;
}

#[tokio::test]
async fn sqlite_store_suite() {
    suite(&mut SqliteEngine::new()).await;
}

#[tokio::test]
async fn postgres_store_suite() {
    let Some(mut engine) = PgEngine::new("postgres_store_suite").await else {
        return;
    };
    suite(&mut engine).await;
}

#[tokio::test]
async fn postgres_store_fences_out_an_earlier_opener() {
    let Some(schema) = ScratchSchema::create("postgres_store_fences_out_an_earlier_opener").await
    else {
        return;
    };
    let old = PgStore::open(schema.options(), &code("511102"))
        .await
        .unwrap();
    old.apply(batch(vec![record(1, 1, "511102004001")], 1))
        .await
        .unwrap();
    // a standby takes over while the old active is still running
    let new = PgStore::open(schema.options(), &code("511102"))
        .await
        .unwrap();
    let err = old
        .apply(batch(vec![record(2, 1, "511102004001")], 2))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    assert!(
        err.to_string().starts_with("another daemon took over"),
        "{err}"
    );
    let err = old
        .put_local(LocalWrite {
            record: record(3, 0, "511102"),
            expected_version: 0,
            unique_keys: true,
            audit: AuditNote::write("local-api", false),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    // the new one continues the log where the old one stopped
    let report = new
        .apply(batch(vec![record(2, 1, "511102004001")], 2))
        .await
        .unwrap();
    assert_eq!(report.applied[0].0, 2);
    assert_eq!(new.count().await.unwrap(), 2);
    old.close().await;
    new.close().await;
}

/// `tiersync audit` on PostgreSQL reads through a plain session: the active
/// store keeps writing afterwards (opening the store would fence it out).
#[tokio::test]
async fn postgres_audit_reader_leaves_the_active_store_writing() {
    let Some(schema) =
        ScratchSchema::create("postgres_audit_reader_leaves_the_active_store_writing").await
    else {
        return;
    };
    let store = PgStore::open(schema.options(), &code("511102"))
        .await
        .unwrap();
    let read = || AuditEvent {
        actor: "public-security".into(),
        action: "read".into(),
        ..Default::default()
    };
    store.audit_append(read()).await.unwrap();
    let reader = super::postgres::open_reader(schema.options())
        .await
        .unwrap();
    assert!(matches!(
        crate::store::audit::verify(&reader).await.unwrap(),
        crate::store::audit::Verdict::Intact { entries: 1, .. }
    ));
    store.audit_append(read()).await.unwrap();
    assert_eq!(
        reader
            .audit_list(&AuditQuery::default())
            .await
            .unwrap()
            .len(),
        2
    );
    reader.close().await;
    store.close().await;
}

/// A SQLite store copies its WAL into the database file on its own
/// connection once ~48 MB have been committed, well before a committing
/// writer would (at 32,768 pages of 8 KB): the main file grows while
/// nothing but link batches is written.
#[tokio::test]
async fn sqlite_checkpoints_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = SqliteStore::open(&path, &code("511102")).await.unwrap();
    let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(page_size, 8192, "a new store's page size");
    let before = std::fs::metadata(&path).unwrap().len();
    // 40 batches of 1,000 records of ~1.3 KB (with their index entries and
    // rewritten pages, past the threshold of about 48 MB)
    for b in 0..40u32 {
        let records = (0..1000)
            .map(|i| {
                let mut r = numbered(b * 1000 + i, 1);
                r.payload = vec![b as u8; 1300].into();
                r
            })
            .collect();
        store.apply(batch(records, u64::from(b) + 1)).await.unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let size = std::fs::metadata(&path).unwrap().len();
        if size > before + (32 << 20) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the database file is still {size} bytes ({before} before): no checkpoint ran"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    store.close().await;
}

/// A received record keeps the bytes it came in (its payload a slice of
/// them, not a copy) when they are exactly its fields; bytes padded with a
/// field no signature covers are not kept, the record is encoded afresh.
#[test]
fn a_received_record_keeps_its_bytes_only_when_they_are_its_fields() {
    let r = record(7, 1, "511102004001");
    let exact = bytes::Bytes::from(r.encode_to_vec());
    let kept = Encoded::received(exact.clone()).unwrap();
    assert_eq!(kept.record, r);
    assert_eq!(kept.body.as_ptr(), exact.as_ptr(), "the same buffer");
    let payload_at = kept.record.payload.as_ptr() as usize;
    let buffer = exact.as_ptr() as usize..exact.as_ptr() as usize + exact.len();
    assert!(buffer.contains(&payload_at), "the payload is not copied");

    let mut padded = r.encode_to_vec();
    padded.extend_from_slice(&[0x98, 0x06, 0x07]); // field 99 = 7
    let cleaned = Encoded::received(padded.into()).unwrap();
    assert_eq!(cleaned.record, r);
    assert_eq!(cleaned.body.to_vec(), r.encode_to_vec());

    assert!(Encoded::received(bytes::Bytes::from_static(&[0x0a, 0xff])).is_err());
}
