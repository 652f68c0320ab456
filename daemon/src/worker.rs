//! Named workers: every long-running loop of a node (group commit, the
//! signer, the parent link, each child session, the servers, the trust
//! worker) registers here and reports what it is doing, so an operator
//! reads one table (`/status.json`, the status page, `tiersync status`)
//! instead of guessing from logs. The model is garage's background
//! workers: a name, a state, counts of iterations and errors, the last
//! error with its time, and a queue length where the loop has one.
//!
//! Names are stable and few (`group-commit`, `group-signer`, `parent-link`,
//! `trust`, `child-link:<code>` per direct child, `admin`, `peer-server`,
//! `api-server`): registering a name again (a child that reconnects) takes
//! over its entry and keeps its counts, so the table stays bounded and error
//! counts only grow. A handle from an earlier registration goes quiet.
//!
//! Depends on nothing but [`crate::clock`]: times come from the node's clock.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::clock::{SharedClock, SystemClock};

/// What a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Doing a unit of work (a commit, a signature, a connection attempt).
    Busy,
    /// Waiting for work.
    Idle,
    /// Holding a connection or serving a listener.
    Up,
    /// Failed and waiting to try again (see `last_error`).
    Retrying,
    /// Stopped with an error; it does not come back by itself.
    Failed,
    /// Ended (shutdown, or a child's session that closed).
    Stopped,
}

impl WorkerState {
    /// Every state, in the order above.
    pub const ALL: [WorkerState; 6] = [
        WorkerState::Busy,
        WorkerState::Idle,
        WorkerState::Up,
        WorkerState::Retrying,
        WorkerState::Failed,
        WorkerState::Stopped,
    ];

    /// The state named `name` (as [`WorkerState::as_str`] writes it).
    pub fn from_name(name: &str) -> Option<WorkerState> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether an operator should look: failed, or failing and retrying.
    pub fn is_problem(self) -> bool {
        matches!(self, WorkerState::Retrying | WorkerState::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Busy => "busy",
            WorkerState::Idle => "idle",
            WorkerState::Up => "up",
            WorkerState::Retrying => "retrying",
            WorkerState::Failed => "failed",
            WorkerState::Stopped => "stopped",
        }
    }
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One worker as an operator sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WorkerStatus {
    pub name: String,
    pub state: WorkerState,
    /// When it entered `state`, ms since the Unix epoch (node clock).
    pub since_ms: i64,
    /// Units of work begun (each `busy`).
    pub iterations: u64,
    /// Errors reported, over every registration of this name.
    pub errors: u64,
    /// The last error; empty if none.
    pub last_error: String,
    /// When the last error happened; 0 if none.
    pub last_error_ms: i64,
    /// Items waiting, for workers with a queue.
    pub queue: Option<u64>,
    /// What it is doing, in words (an address, a peer); may be empty.
    pub info: String,
}

struct Slot {
    /// Bumped on each registration; handles of earlier ones are ignored.
    generation: u64,
    status: WorkerStatus,
}

/// The registry of a node's workers. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct Workers {
    clock: SharedClock,
    slots: Arc<Mutex<BTreeMap<String, Arc<Mutex<Slot>>>>>,
}

impl fmt::Debug for Workers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workers")
            .field("workers", &self.snapshot().len())
            .finish()
    }
}

impl Workers {
    pub fn new(clock: SharedClock) -> Workers {
        Workers {
            clock,
            slots: Arc::default(),
        }
    }

    /// Registers worker `name` (state `idle`), or takes over the entry of an
    /// earlier worker of that name, keeping its counts and last error.
    pub fn register(&self, name: impl Into<String>) -> WorkerHandle {
        let name = name.into();
        let now = self.clock.now_ms();
        let mut slots = self.slots.lock().expect("workers lock");
        let slot = slots
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(Mutex::new(Slot {
                    generation: 0,
                    status: WorkerStatus {
                        name: name.clone(),
                        state: WorkerState::Idle,
                        since_ms: now,
                        iterations: 0,
                        errors: 0,
                        last_error: String::new(),
                        last_error_ms: 0,
                        queue: None,
                        info: String::new(),
                    },
                }))
            })
            .clone();
        let generation = {
            let mut s = slot.lock().expect("worker lock");
            s.generation += 1;
            s.status.state = WorkerState::Idle;
            s.status.since_ms = now;
            s.status.queue = None;
            s.status.info.clear();
            s.generation
        };
        WorkerHandle {
            clock: self.clock.clone(),
            slot,
            generation,
        }
    }

    /// Every worker, by name.
    pub fn snapshot(&self) -> Vec<WorkerStatus> {
        let slots: Vec<_> = self
            .slots
            .lock()
            .expect("workers lock")
            .values()
            .cloned()
            .collect();
        slots
            .iter()
            .map(|s| s.lock().expect("worker lock").status.clone())
            .collect()
    }

    /// One worker, if registered.
    pub fn get(&self, name: &str) -> Option<WorkerStatus> {
        let slot = self.slots.lock().expect("workers lock").get(name).cloned();
        slot.map(|s| s.lock().expect("worker lock").status.clone())
    }
}

/// A worker's way to report. Cloning gives another handle to the same
/// worker (a loop and the tasks it spawns).
#[derive(Clone)]
pub struct WorkerHandle {
    clock: SharedClock,
    slot: Arc<Mutex<Slot>>,
    generation: u64,
}

impl fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("name", &self.slot.lock().expect("worker lock").status.name)
            .finish()
    }
}

impl WorkerHandle {
    /// A handle registered nowhere (for a loop started outside a node, as
    /// in tests): it reports into a registry of its own.
    pub fn detached(name: &str) -> WorkerHandle {
        Workers::new(SystemClock::shared()).register(name)
    }

    fn update(&self, f: impl FnOnce(&mut WorkerStatus, i64)) {
        let now = self.clock.now_ms();
        let mut slot = self.slot.lock().expect("worker lock");
        if slot.generation == self.generation {
            f(&mut slot.status, now);
        }
    }

    fn set(&self, state: WorkerState, error: Option<String>) {
        self.update(|s, now| {
            if s.state != state {
                s.state = state;
                s.since_ms = now;
            }
            if state == WorkerState::Busy {
                s.iterations += 1;
            }
            if let Some(error) = error {
                s.errors += 1;
                s.last_error = error;
                s.last_error_ms = now;
            }
        });
    }

    /// Begins a unit of work (counted as an iteration).
    pub fn busy(&self) {
        self.set(WorkerState::Busy, None);
    }

    pub fn idle(&self) {
        self.set(WorkerState::Idle, None);
    }

    /// Holding a connection or serving.
    pub fn up(&self) {
        self.set(WorkerState::Up, None);
    }

    /// Failed; it will try again.
    pub fn retrying(&self, error: impl fmt::Display) {
        self.set(WorkerState::Retrying, Some(error.to_string()));
    }

    /// Failed for good.
    pub fn failed(&self, error: impl fmt::Display) {
        self.set(WorkerState::Failed, Some(error.to_string()));
    }

    /// Counts an error without changing state (one failed unit of work).
    pub fn error(&self, error: impl fmt::Display) {
        let error = error.to_string();
        self.update(|s, now| {
            s.errors += 1;
            s.last_error = error;
            s.last_error_ms = now;
        });
    }

    pub fn stopped(&self) {
        self.set(WorkerState::Stopped, None);
    }

    /// Items waiting for this worker.
    pub fn set_queue(&self, n: usize) {
        self.update(|s, _| s.queue = Some(n as u64));
    }

    /// What the worker is doing, in words.
    pub fn set_info(&self, info: impl Into<String>) {
        let info = info.into();
        self.update(|s, _| s.info = info);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn workers_report_state_errors_and_queue() {
        let clock = ManualClock::starting_now();
        let start = clock.shared().now_ms();
        let workers = Workers::new(clock.shared());
        let commit = workers.register("group-commit");
        let link = workers.register("parent-link");

        let status = workers.get("group-commit").unwrap();
        assert_eq!(status.state, WorkerState::Idle);
        assert_eq!(
            (status.iterations, status.errors, status.queue),
            (0, 0, None)
        );

        clock.advance(Duration::from_secs(1));
        commit.busy();
        commit.set_queue(7);
        commit.busy(); // still busy: since stays, iterations count
        commit.error("disk full");
        commit.idle();
        let status = workers.get("group-commit").unwrap();
        assert_eq!(status.state, WorkerState::Idle);
        assert_eq!(status.since_ms, start + 1000);
        assert_eq!(status.iterations, 2);
        assert_eq!(status.errors, 1);
        assert_eq!(status.last_error, "disk full");
        assert_eq!(status.last_error_ms, start + 1000);
        assert_eq!(status.queue, Some(7));

        link.busy();
        clock.advance(Duration::from_secs(2));
        link.retrying("connection refused");
        let status = workers.get("parent-link").unwrap();
        assert_eq!(status.state, WorkerState::Retrying);
        assert_eq!(status.since_ms, start + 3000);
        assert_eq!(status.last_error_ms, start + 3000);
        link.up();
        link.failed("gone");
        assert_eq!(workers.get("parent-link").unwrap().errors, 2);

        let names: Vec<_> = workers.snapshot().into_iter().map(|w| w.name).collect();
        assert_eq!(names, ["group-commit", "parent-link"]);
        let json = serde_json::to_string(&workers.get("parent-link").unwrap()).unwrap();
        assert!(json.contains("\"state\":\"failed\""), "{json}");
    }

    #[test]
    fn registering_a_name_again_keeps_its_counts_and_silences_the_old_handle() {
        let clock = ManualClock::starting_now();
        let workers = Workers::new(clock.shared());
        let first = workers.register("child-link:511102004001");
        first.up();
        first.error("reset by peer");
        let second = workers.register("child-link:511102004001");
        second.up();
        first.stopped(); // the old session ending late changes nothing
        let status = workers.get("child-link:511102004001").unwrap();
        assert_eq!(status.state, WorkerState::Up);
        assert_eq!(status.errors, 1);
        assert_eq!(workers.snapshot().len(), 1);
        second.stopped();
        let status = workers.get("child-link:511102004001").unwrap();
        assert_eq!(status.state, WorkerState::Stopped);
    }
}
