//! Time as the daemon reads it. Rules that depend on time (join-token
//! expiry, trust-list freshness and revocation, when a link counts as
//! stalled) read the node's [`Clock`], so tests move time by hand
//! ([`ManualClock`]) instead of sleeping for it to pass. Record-keeping
//! stamps (audit entries, quarantine rows) read the system clock
//! ([`now_ms`]).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now_ms(&self) -> i64;
}

/// A node's clock, shared by everything that reads it.
pub type SharedClock = Arc<dyn Clock>;

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

impl SystemClock {
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock)
    }
}

/// A clock that moves only when told to (for tests).
#[derive(Debug, Clone)]
pub struct ManualClock {
    ms: Arc<AtomicI64>,
}

impl ManualClock {
    /// Starts at the system's time now.
    pub fn starting_now() -> ManualClock {
        ManualClock {
            ms: Arc::new(AtomicI64::new(now_ms())),
        }
    }

    pub fn advance(&self, by: Duration) {
        self.ms.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }

    pub fn shared(&self) -> SharedClock {
        Arc::new(self.clone())
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.ms.load(Ordering::SeqCst)
    }
}

/// Wall-clock milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = ManualClock::starting_now();
        let shared = clock.shared();
        let start = shared.now_ms();
        assert!((start - now_ms()).abs() < 60_000);
        assert_eq!(shared.now_ms(), start);
        clock.advance(Duration::from_millis(1500));
        assert_eq!(shared.now_ms(), start + 1500);
    }
}
