//! The files beside a SQLite store: `<store>.lock`, held exclusively while
//! a daemon runs the store, and `<store>.id`, the marker that says a store
//! existed here, so a store found missing, empty, replaced or damaged is
//! refused instead of started empty.

use std::fs::{File, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::*;

/// A file beside the store: `<store file name>.<suffix>`.
pub(super) fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    path.with_file_name(name)
}

/// What `<store>.id` says. It is written once a store has been created (and
/// beside a store from before these markers when it is next opened), and
/// says that this node's store exists: from then on a store file that is
/// missing, empty, another store or damaged is refused instead of started
/// as a brand-new empty node.
pub(super) struct Marker {
    pub(super) path: PathBuf,
    pub(super) node: String,
    pub(super) epoch: String,
}

impl Marker {
    /// The marker beside the store at `path`, if there is one.
    pub(super) fn read(path: &Path, shown: &str) -> Result<Option<Marker>> {
        let marker = beside(path, "id");
        let text = match std::fs::read_to_string(&marker) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(StoreError::Unusable {
                    store: shown.to_owned(),
                    problem: format!("cannot read {}: {e}", marker.display()),
                });
            }
        };
        let field = |key: &str| {
            text.lines()
                .filter_map(|line| line.split_once('='))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default()
        };
        Ok(Some(Marker {
            node: field("node"),
            epoch: field("epoch"),
            path: marker,
        }))
    }

    /// Writes the marker of the store at `path` (whole or not at all).
    pub(super) fn write(path: &Path, node: &str, epoch: &str) -> std::io::Result<()> {
        let marker = beside(path, "id");
        let temporary = beside(path, "id.new");
        let mut file = File::create(&temporary)?;
        write!(
            file,
            "# tiersync: this node's store was created beside this file. While this file\n\
             # exists, tiersync refuses to start on a store there that is missing, empty,\n\
             # damaged or another store. Delete it only to start this node on a new,\n\
             # empty store.\n\
             node = {node}\n\
             epoch = {epoch}\n"
        )?;
        file.sync_all()?;
        std::fs::rename(&temporary, &marker)?;
        if let Some(dir) = marker.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// What to do when the store it vouches for is gone.
    pub(super) fn advice(&self) -> String {
        format!(
            "Restore this node's store from a backup (and run `tiersync new-epoch` before starting it), or, to start this node on a new, empty store, delete {}: the new store gets a new epoch, so the nodes it links with start over with it",
            self.path.display()
        )
    }
}

/// Whether SQLite found the file not a database or damaged
/// (`SQLITE_NOTADB`, `SQLITE_CORRUPT`).
pub(super) fn is_damage(error: &StoreError) -> bool {
    match error {
        StoreError::Db(sqlx::Error::Database(db)) => db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 11 | 26)),
        _ => false,
    }
}

/// Refuses a store file that is missing or empty although `marker` says
/// the store was created (SQLite would start either as a new database).
pub(super) fn check_present(path: &Path, shown: &str, marker: &Marker) -> Result<()> {
    let found = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "the file is missing",
        Ok(meta) if meta.len() == 0 => "the file is empty (0 bytes)",
        _ => return Ok(()),
    };
    Err(StoreError::Unusable {
        store: shown.to_owned(),
        problem: format!(
            "{found}, but {} says the store of node `{}` (epoch {}) was created there, so its records are gone from this disk; not starting as a new, empty node. {}",
            marker.path.display(),
            marker.node,
            marker.epoch,
            marker.advice()
        ),
    })
}

/// Takes the exclusive lock that makes a daemon the only one on the store
/// at `path`: an advisory lock (`flock`) on `<store>.lock`, which also
/// holds the holder's pid for the message another gets. SQLite's own
/// locks let two processes share a file, and two daemons of one node then
/// handed out the same sequence numbers.
pub(super) fn lock_store(path: &Path, shown: &str) -> Result<File> {
    let lock = beside(path, "lock");
    let unusable = |problem: String| StoreError::Unusable {
        store: shown.to_owned(),
        problem,
    };
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .map_err(|e| unusable(format!("cannot open its lock file {}: {e}", lock.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(StoreError::InUse {
                store: shown.to_owned(),
                holder: match text.trim().parse::<u32>() {
                    Ok(pid) => format!(" (pid {pid})"),
                    Err(_) => String::new(),
                },
            });
        }
        Err(TryLockError::Error(e)) => {
            return Err(unusable(format!("cannot lock {}: {e}", lock.display())));
        }
    }
    // Only for the message above: a full disk must not keep a node down.
    let _ = file
        .set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    Ok(file)
}
