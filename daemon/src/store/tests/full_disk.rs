//! A full disk: nothing acknowledged is lost, every caller is told the store
//! is full, and writes resume once there is room (a tmpfs for SQLite, a
//! tablespace on one for PostgreSQL).

use super::*;

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
