//! Group commit of a node's own writes.
//!
//! Every own write is durable before it is answered, and on SQLite that is
//! one fsync per transaction: a few milliseconds each on ordinary disks, so
//! writes committed one at a time queue behind each other well below a
//! thousand a second. [`GroupCommit`] hands every write that is waiting when
//! the previous commit ends to one [`Store::put_local_many`], so a burst
//! costs one fsync and no write waits for more than the commit before its
//! own. A lone write at an idle node is committed at once: nothing lingers.
//! A write once handed over is committed even if its caller stops waiting
//! (a client that hung up reads it back, as after any lost reply).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{LocalWrite, Result, Store, StoreError, Stored};
use crate::worker::WorkerHandle;

type Request = (LocalWrite, oneshot::Sender<Result<Stored>>);

/// The writer task's handle; the task ends when this is dropped and the
/// writes queued before have been committed.
pub struct GroupCommit {
    tx: mpsc::Sender<Request>,
}

impl GroupCommit {
    /// Most writes in one transaction.
    pub const MAX_GROUP: usize = 1000;

    /// Starts the writer task, reporting to a worker handle of its own.
    pub fn start(store: Arc<dyn Store>) -> GroupCommit {
        GroupCommit::start_reporting(store, WorkerHandle::detached("group-commit"))
    }

    /// Starts the writer task, reporting to `worker`: busy while it
    /// commits, its queue the writes waiting as of the last group taken or
    /// committed, an error for each group whose transaction failed.
    pub fn start_reporting(store: Arc<dyn Store>, worker: WorkerHandle) -> GroupCommit {
        let (tx, mut rx) = mpsc::channel::<Request>(Self::MAX_GROUP * 2);
        worker.set_queue(0);
        tokio::spawn(async move {
            let mut group = Vec::with_capacity(Self::MAX_GROUP);
            while rx.recv_many(&mut group, Self::MAX_GROUP).await > 0 {
                worker.busy();
                worker.set_queue(group.len() + rx.len());
                let (writes, replies): (Vec<_>, Vec<_>) = group.drain(..).unzip();
                match store.put_local_many(writes).await {
                    Ok(outcomes) => {
                        for (outcome, reply) in outcomes.into_iter().zip(replies) {
                            let _ = reply.send(outcome);
                        }
                    }
                    Err(failed) => {
                        worker.error(&failed);
                        let mut replies = replies.into_iter();
                        let first = replies.next();
                        for reply in replies {
                            let _ = reply.send(Err(failed.for_another_write()));
                        }
                        if let Some(first) = first {
                            let _ = first.send(Err(failed));
                        }
                    }
                }
                worker.set_queue(rx.len());
                worker.idle();
            }
            worker.stopped();
        });
        GroupCommit { tx }
    }

    /// Commits `write` with whatever else is waiting; answers once it is
    /// durable (or refused, or its transaction failed).
    pub async fn put(&self, write: LocalWrite) -> Result<Stored> {
        let stopped = || StoreError::Shared {
            reason: "the node's writer task has stopped".into(),
        };
        let (reply, answer) = oneshot::channel();
        self.tx.send((write, reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use tiersync_proto::types::DivisionCode;
    use tiersync_proto::wire;

    use super::*;
    use crate::store::AuditNote;
    use crate::store::sqlite::SqliteStore;

    fn write(n: u16, key: &str) -> LocalWrite {
        let mut id = [0u8; 16];
        id[14..].copy_from_slice(&n.to_be_bytes());
        LocalWrite {
            record: wire::Record {
                id: id.to_vec(),
                kind: "civil.v1.Resident".into(),
                owner: Some(wire::Owner {
                    node: "511102004001".into(),
                    department: String::new(),
                }),
                keys: vec![wire::NaturalKey {
                    name: "id_digest".into(),
                    value: key.into(),
                }],
                ..Default::default()
            },
            expected_version: 0,
            unique_keys: true,
            audit: AuditNote::write("local-api", false),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_each_get_their_own_answer() {
        let dir = tempfile::tempdir().unwrap();
        let code = DivisionCode::parse("511102004001").unwrap();
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&dir.path().join("n.db"), &code)
                .await
                .unwrap(),
        );
        let writer = Arc::new(GroupCommit::start(store.clone()));
        let mut puts = tokio::task::JoinSet::new();
        for n in 0..300u16 {
            let writer = writer.clone();
            // every tenth write reuses the natural key of the write before
            let key = if n % 10 == 9 { n - 1 } else { n };
            puts.spawn(async move { (n, writer.put(write(n, &format!("k{key}"))).await) });
        }
        let (mut seqs, mut refused) = (BTreeSet::new(), 0);
        while let Some(done) = puts.join_next().await {
            let (n, outcome) = done.unwrap();
            match outcome {
                Ok(stored) => {
                    assert_eq!(
                        stored.record.id[14..],
                        n.to_be_bytes(),
                        "another write's answer"
                    );
                    assert!(seqs.insert(stored.seq), "seq {} twice", stored.seq);
                }
                Err(StoreError::DuplicateKey { .. }) => refused += 1,
                Err(other) => panic!("write {n}: {other}"),
            }
        }
        // one of each pair sharing a key is refused, whichever came second
        assert_eq!(refused, 30);
        assert_eq!(seqs, (1..=270).collect::<BTreeSet<u64>>());
        assert_eq!(store.count().await.unwrap(), 270);
    }
}
