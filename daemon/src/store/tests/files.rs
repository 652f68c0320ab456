//! The files beside a SQLite store: one daemon per store, and a store that
//! existed is never started empty, damaged or as another store.

use super::*;

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
