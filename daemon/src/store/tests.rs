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

// === a full disk (SQLite) ===

/// A tmpfs of a few megabytes mounted on a fresh directory, unmounted when
/// dropped: a filesystem that fills up the way a small disk does.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts it (root only); `None`, after printing `skipping <test>:
    /// <reason>`, where no tmpfs can be mounted, unless `CI` is set: CI runs
    /// as root and must not skip, so the test fails there instead.
    fn mount(test: &str, size_kb: u64) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let reason = match std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_kb}k"), "tmpfs"])
            .arg(dir.path())
            .output()
        {
            Ok(out) if out.status.success() => return Some(SmallDisk { dir }),
            Ok(out) => format!(
                "cannot mount a tmpfs ({}: {})",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(error) => format!("cannot run mount ({error})"),
        };
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: {reason}; CI runs as root and must not skip this test"
        );
        eprintln!("skipping {test}: {reason}");
        None
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fills the disk with a file, then frees about `room_kb` of it.
    fn fill_leaving(&self, room_kb: u64) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0x5au8; 64 << 10];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) if error.raw_os_error() == Some(28) => break, // ENOSPC
                Err(error) => panic!("writing the filler: {error}"),
            }
        }
        let len = file.metadata().unwrap().len();
        file.set_len(len.saturating_sub(room_kb << 10)).unwrap();
        file.sync_all().unwrap();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Test record `n` with a payload of about 60 KB, the size of a resident
/// with a photo, that does not compress (PostgreSQL would).
fn bulky(n: u32) -> wire::Record {
    let mut r = numbered(n, 0);
    let mut x = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    r.payload = (0..60 << 10)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into();
    r
}

/// Once the disk is full no own write is answered as stored that is not:
/// everything acknowledged is still there after reopening, at the seq it
/// was acknowledged with. Every write refused meanwhile (every waiter of a
/// failed group) gets a clear "full" error, reads go on, and once there is
/// room again writes resume without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_full_disk_never_acknowledges_a_lost_write() {
    let test = "sqlite_full_disk_never_acknowledges_a_lost_write";
    let Some(disk) = SmallDisk::mount(test, 8 << 10) else {
        return;
    };
    let path = disk.path().join("store.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path, &code("511102")).await.unwrap());
    let writes = Arc::new(GroupCommit::start(store.clone()));
    let filler = disk.fill_leaving(1 << 10);

    let mut acknowledged = Vec::new();
    let mut failures = Vec::new();
    let mut n = 0;
    // one at a time until the disk is full, then rounds of three at once
    // (one group commit, mostly)
    while failures.len() < 12 {
        assert!(n < 200, "the disk never filled");
        let round = if failures.is_empty() { 1 } else { 3 };
        let mut puts = tokio::task::JoinSet::new();
        for _ in 0..round {
            n += 1;
            let (writes, n) = (writes.clone(), n);
            puts.spawn(async move { (n, writes.put(own_write(bulky(n), 0)).await) });
        }
        while let Some(done) = puts.join_next().await {
            match done.unwrap() {
                (n, Ok(stored)) => acknowledged.push((n, stored.seq)),
                (n, Err(error)) => failures.push((n, error)),
            }
        }
    }
    let filled = acknowledged.len();
    assert!(filled >= 3, "the disk filled too early");
    // reads go on
    let (first, _) = acknowledged[0];
    let read = store.get(&bulky(first).id).await;
    let head = store.head_seq().await.unwrap();

    // room again
    std::fs::remove_file(&filler).unwrap();
    let mut after_room = Vec::new();
    for _ in 0..3 {
        n += 1;
        match writes.put(own_write(bulky(n), 0)).await {
            Ok(stored) => acknowledged.push((n, stored.seq)),
            Err(error) => after_room.push((n, error.to_string())),
        }
    }
    drop(writes);
    store.close().await;

    let reopened = SqliteStore::open(&path, &code("511102")).await.unwrap();
    let mut lost = Vec::new();
    for &(n, seq) in &acknowledged {
        match reopened.get(&bulky(n).id).await.unwrap() {
            Some(held) if held.seq == seq => {}
            other => lost.push((n, seq, other.map(|h| h.seq))),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost (put, seq, held seq): {lost:?}",
        lost.len(),
        acknowledged.len()
    );
    assert_eq!(reopened.count().await.unwrap(), acknowledged.len() as u64);
    reopened.close().await;

    assert!(
        after_room.is_empty(),
        "writes did not resume once there was room: {after_room:?}"
    );
    let mut seqs: Vec<u64> = acknowledged.iter().map(|&(_, seq)| seq).collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=acknowledged.len() as u64).collect::<Vec<_>>(),
        "acknowledged writes take consecutive seqs"
    );
    let shown = path.display().to_string();
    for (n, error) in &failures {
        assert!(
            matches!(error, StoreError::Full { .. }),
            "put {n}: not a full-store error: {error}"
        );
        let text = error.to_string();
        assert!(
            text.contains(&shown) && text.contains("is full"),
            "put {n}: the error names neither the store nor the condition: {text}"
        );
    }
    assert!(read.unwrap().is_some(), "a read on the full disk");
    assert_eq!(head, filled as u64, "the head on the full disk");
}

/// How far `store` holds `peer`'s log applied.
async fn through(store: &dyn Store, peer: &DivisionCode) -> Option<u64> {
    store.cursor(peer).await.unwrap().map(|c| c.applied_through)
}

/// Batches from a peer on a full disk: a batch that cannot commit fails
/// whole, with the full-store error, and the cursor (in memory and after
/// reopening) never passes the last batch that committed; once there is
/// room the link goes on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_full_disk_never_moves_a_cursor_past_what_committed() {
    let test = "sqlite_full_disk_never_moves_a_cursor_past_what_committed";
    let Some(disk) = SmallDisk::mount(test, 8 << 10) else {
        return;
    };
    let path = disk.path().join("store.db");
    let store = SqliteStore::open(&path, &code("511102")).await.unwrap();
    let filler = disk.fill_leaving(1 << 10);
    let peer = code("511102004001");
    // batch b: records 4b..4b+3, through b + 1
    let peer_batch = |b: u32| {
        let records = (0..4).map(|i| bulky(b * 4 + i)).map(|mut r| {
            r.version = 1;
            r
        });
        batch(records.collect(), u64::from(b) + 1)
    };

    // batches as a link sends them: after a failure it resends from its
    // cursor, i.e. the same batch again
    let (mut acknowledged, mut failures) = (0u32, Vec::new());
    let mut seen = Vec::new();
    while failures.len() < 4 {
        assert!(acknowledged < 100, "the disk never filled");
        match store.apply(peer_batch(acknowledged)).await {
            Ok(_) => acknowledged += 1,
            Err(error) => failures.push(error),
        }
        seen.push((
            acknowledged,
            through(&store, &peer).await,
            store.head_seq().await.unwrap(),
        ));
    }
    assert!(acknowledged >= 1, "the disk filled too early");
    std::fs::remove_file(&filler).unwrap();
    let mut after_room = Vec::new();
    for _ in 0..2 {
        match store.apply(peer_batch(acknowledged)).await {
            Ok(_) => acknowledged += 1,
            Err(error) => after_room.push(error.to_string()),
        }
    }
    store.close().await;

    let reopened = SqliteStore::open(&path, &code("511102")).await.unwrap();
    assert_eq!(
        (
            through(&reopened, &peer).await,
            reopened.count().await.unwrap()
        ),
        (Some(u64::from(acknowledged)), u64::from(acknowledged) * 4),
        "cursor and records after reopening, {acknowledged} batches acknowledged"
    );
    reopened.close().await;
    for (acknowledged, through, head) in seen {
        assert_eq!(
            (through, head),
            (Some(u64::from(acknowledged)), u64::from(acknowledged) * 4),
            "cursor and head after {acknowledged} batches acknowledged"
        );
    }
    assert!(
        after_room.is_empty(),
        "batches did not resume once there was room: {after_room:?}"
    );
    for error in &failures {
        assert!(matches!(error, StoreError::Full { .. }), "{error}");
    }
}

/// A tablespace of the test server on a [`SmallDisk`], dropped when this
/// is (after the schemas using it).
struct SmallTablespace {
    name: String,
}

impl SmallTablespace {
    /// `None`, after printing why, where the server cannot put a tablespace
    /// on `disk` (it runs on another machine, or not as a local user).
    async fn create(test: &str, disk: &SmallDisk, name: &str) -> Option<SmallTablespace> {
        let chown = std::process::Command::new("chown")
            .args(["postgres:postgres"])
            .arg(disk.path())
            .status();
        if !chown.is_ok_and(|s| s.success()) {
            eprintln!("skipping {test}: no local `postgres` user to own a tablespace");
            return None;
        }
        let url = super::postgres::scratch::base_url();
        let mut conn = <sqlx::postgres::PgConnection as sqlx::Connection>::connect_with(
            &super::postgres::connect_options(&url).unwrap(),
        )
        .await
        .unwrap();
        let create = format!(
            "CREATE TABLESPACE {name} LOCATION '{}'",
            disk.path().display()
        );
        if let Err(error) = sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&mut conn)
            .await
        {
            eprintln!("skipping {test}: cannot create a tablespace on a tmpfs ({error})");
            return None;
        }
        let _ = sqlx::Connection::close(conn).await;
        Some(SmallTablespace {
            name: name.to_owned(),
        })
    }
}

impl Drop for SmallTablespace {
    fn drop(&mut self) {
        let drop = format!("DROP TABLESPACE IF EXISTS {}", self.name);
        // Drop may run inside a runtime, which cannot block on another.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let url = super::postgres::scratch::base_url();
                let options = super::postgres::connect_options(&url).unwrap();
                if let Ok(mut conn) =
                    <sqlx::postgres::PgConnection as sqlx::Connection>::connect_with(&options).await
                {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
                        .execute(&mut conn)
                        .await;
                    let _ = sqlx::Connection::close(conn).await;
                }
            });
        })
        .join();
    }
}

/// PostgreSQL on a full disk (the store's tables in a tablespace on a
/// small tmpfs): writes fail with the full-store error naming the database
/// and none is acknowledged that is not stored; once there is room, writes
/// resume without reopening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_full_disk_is_a_full_store_error_and_writes_resume() {
    let test = "postgres_full_disk_is_a_full_store_error_and_writes_resume";
    let Some(disk) = SmallDisk::mount(test, 8 << 10) else {
        return;
    };
    let Some(schema) = ScratchSchema::create(test).await else {
        return;
    };
    let name = format!("{}_space", schema.name());
    let Some(_space) = SmallTablespace::create(test, &disk, &name).await else {
        return;
    };
    // declared after the tablespace: dropped (with its tables) before it
    let schema = schema;
    let options = schema
        .options()
        .options([("default_tablespace", name.as_str())]);
    let store: Arc<dyn Store> = Arc::new(PgStore::open(options, &code("511102")).await.unwrap());
    let filler = disk.fill_leaving(1 << 10);

    let mut acknowledged = Vec::new();
    let mut failures = Vec::new();
    let mut n = 0;
    while failures.len() < 3 {
        assert!(n < 200, "the disk never filled");
        n += 1;
        match store.put_local(own_write(bulky(n), 0)).await {
            Ok(stored) => acknowledged.push((n, stored.seq)),
            Err(error) => failures.push((n, error)),
        }
    }
    std::fs::remove_file(&filler).unwrap();
    let mut after_room = Vec::new();
    for _ in 0..3 {
        n += 1;
        match store.put_local(own_write(bulky(n), 0)).await {
            Ok(stored) => acknowledged.push((n, stored.seq)),
            Err(error) => after_room.push((n, error.to_string())),
        }
    }
    for &(n, seq) in &acknowledged {
        let held = store.get(&bulky(n).id).await.unwrap();
        assert_eq!(held.map(|h| h.seq), Some(seq), "acknowledged put {n}");
    }
    assert_eq!(store.count().await.unwrap(), acknowledged.len() as u64);
    store.close().await;
    assert!(acknowledged.len() >= 3, "the disk filled too early");
    assert!(after_room.is_empty(), "{after_room:?}");
    for (n, error) in &failures {
        assert!(
            matches!(error, StoreError::Full { .. }),
            "put {n}: not a full-store error: {error}"
        );
        let text = error.to_string();
        assert!(
            text.contains("postgres://") && text.contains("is full"),
            "put {n}: {text}"
        );
    }
}

/// A SQLite store is opened by one daemon at a time: a second open of the
/// same file (here in the same process, as in another) is refused with an
/// error naming the store and the holder's pid, until the first closes.
#[tokio::test]
async fn sqlite_store_refuses_a_second_opener() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let first = SqliteStore::open(&path, &code("511102")).await.unwrap();
    let err = SqliteStore::open(&path, &code("511102"))
        .await
        .err()
        .expect("a second opener of the same store");
    assert!(matches!(err, StoreError::InUse { .. }), "{err}");
    assert!(
        err.to_string().starts_with(&format!(
            "store {} is in use by another tiersync process (pid {})",
            path.display(),
            std::process::id()
        )),
        "{err}"
    );
    // the first goes on writing
    first
        .apply(batch(vec![record(1, 1, "511102004001")], 1))
        .await
        .unwrap();
    first.close().await;
    let second = SqliteStore::open(&path, &code("511102")).await.unwrap();
    assert_eq!(second.count().await.unwrap(), 1);
    second.close().await;
}

/// A SQLite store with `n` records of about 1 KB, closed; returns its epoch.
async fn sqlite_store_with(path: &std::path::Path, n: u32) -> String {
    let store = SqliteStore::open(path, &code("511102")).await.unwrap();
    let records = (0..n)
        .map(|i| {
            let mut r = numbered(i, 1);
            r.payload = vec![i as u8; 1000].into();
            r
        })
        .collect();
    store.apply(batch(records, 1)).await.unwrap();
    let epoch = store.epoch().to_owned();
    store.close().await;
    epoch
}

fn marker_of(path: &std::path::Path) -> std::path::PathBuf {
    path.with_file_name(format!(
        "{}.id",
        path.file_name().unwrap().to_string_lossy()
    ))
}

/// A store that existed (its marker says so) and is now empty or missing is
/// refused with what was found and what to do, and nothing is created in
/// its place; deleting the marker starts a new, empty store deliberately,
/// with a new epoch.
#[tokio::test]
async fn sqlite_store_that_existed_is_not_started_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let epoch = sqlite_store_with(&path, 3).await;
    let marker = marker_of(&path);

    // truncate -s 0
    std::fs::File::create(&path).unwrap();
    let err = SqliteStore::open(&path, &code("511102"))
        .await
        .err()
        .expect("a store that existed, truncated to 0 bytes, opened");
    assert!(matches!(err, StoreError::Unusable { .. }), "{err}");
    let text = err.to_string();
    for part in [
        format!(
            "refusing to open store {}: the file is empty (0 bytes)",
            path.display()
        ),
        format!(
            "{} says the store of node `511102` (epoch {epoch}) was created there",
            marker.display()
        ),
        "Restore this node's store from a backup".to_owned(),
        format!("delete {}", marker.display()),
    ] {
        assert!(text.contains(&part), "missing {part:?} in: {text}");
    }
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "left as found");
    let text = std::fs::read_to_string(&marker).unwrap();
    assert!(text.contains(&format!("epoch = {epoch}")), "{text}");

    std::fs::remove_file(&path).unwrap();
    let err = SqliteStore::open(&path, &code("511102"))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("the file is missing"), "{err}");
    assert!(!path.exists(), "no new store in its place");

    // deliberately a new, empty store
    std::fs::remove_file(&marker).unwrap();
    let store = SqliteStore::open(&path, &code("511102")).await.unwrap();
    assert_eq!(store.count().await.unwrap(), 0);
    assert_ne!(store.epoch(), epoch);
    let text = std::fs::read_to_string(&marker).unwrap();
    assert!(
        text.contains(&format!("epoch = {}", store.epoch())),
        "{text}"
    );
    store.close().await;
}

/// A store file whose pages are damaged is refused at open, with what
/// SQLite's quick check found, instead of starting and failing reads later.
#[tokio::test]
async fn sqlite_store_with_damaged_pages_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    sqlite_store_with(&path, 200).await;
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len >= 8 * 8192, "a store of {len} bytes");
    // scribble over the header of a page in the middle of the file
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.seek(SeekFrom::Start((len / 8192 / 2) * 8192)).unwrap();
        file.write_all(&[0xa5; 64]).unwrap();
    }
    let err = SqliteStore::open(&path, &code("511102"))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::Unusable { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("it is damaged (PRAGMA quick_check: ")
            && text.contains("Restore this node's store from a backup"),
        "{text}"
    );
}

/// A store file that is another store of the node than the one created
/// there (another epoch) is refused; `renew_epoch` keeps the marker in step,
/// so a renewed store opens.
#[tokio::test]
async fn sqlite_store_of_another_epoch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mine, other) = (dir.path().join("mine.db"), dir.path().join("other.db"));
    let epoch = sqlite_store_with(&mine, 3).await;
    let other_epoch = sqlite_store_with(&other, 1).await;
    std::fs::copy(&other, &mine).unwrap();
    let err = SqliteStore::open(&mine, &code("511102"))
        .await
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(
        text.contains(&format!("it is the store of epoch {other_epoch}"))
            && text.contains(&format!("has epoch {epoch}"))
            && text.contains("tiersync new-epoch"),
        "{text}"
    );

    let store = SqliteStore::open(&other, &code("511102")).await.unwrap();
    let renewed = store.renew_epoch().await.unwrap();
    store.close().await;
    let store = SqliteStore::open(&other, &code("511102")).await.unwrap();
    assert_eq!(store.epoch(), renewed);
    store.close().await;

    // a store from before markers gets one, and opens as before
    std::fs::remove_file(marker_of(&other)).unwrap();
    let store = SqliteStore::open(&other, &code("511102")).await.unwrap();
    store.close().await;
    let text = std::fs::read_to_string(marker_of(&other)).unwrap();
    assert!(text.contains(&format!("epoch = {renewed}")), "{text}");
}

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
