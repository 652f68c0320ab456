//! A hybrid logical clock: the `updated_at` of every record change.
//!
//! Wall clocks at hundreds of community offices drift and get stepped back by
//! NTP; plain logical counters say nothing about when things happened. An HLC
//! is both: a timestamp is the wall clock in milliseconds (high 48 bits) plus
//! a logical counter (low 16 bits) that breaks ties and carries causality.
//! Timestamps from one clock strictly increase even when the wall clock goes
//! back, and after [`Hlc::observe`]ing a timestamp from a peer every later
//! local one is greater, so a change made after receiving another always
//! sorts after it.
//!
//! A peer whose clock is far in the future would drag every clock in the
//! tree forward with it, so a remote timestamp more than
//! [`Hlc::MAX_AHEAD_MS`] ahead of the local wall clock is not adopted; the
//! caller gets an error to log.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const COUNTER_BITS: u32 = 16;

/// An HLC timestamp: milliseconds since the Unix epoch in the high 48 bits,
/// a logical counter in the low 16. Orders as the `u64` it is.
///
/// `Display` is `millis+counter`, e.g. `1704067200000+3`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HlcTimestamp(u64);

impl HlcTimestamp {
    pub const ZERO: HlcTimestamp = HlcTimestamp(0);
    /// The largest millisecond value that fits in 48 bits (the year 10889).
    pub const MAX_MILLIS: u64 = (1 << 48) - 1;

    /// A timestamp from its parts; `millis` above [`Self::MAX_MILLIS`] is
    /// clamped to it.
    pub fn new(millis: u64, counter: u16) -> Self {
        HlcTimestamp((millis.min(Self::MAX_MILLIS) << COUNTER_BITS) | u64::from(counter))
    }

    pub fn millis(self) -> u64 {
        self.0 >> COUNTER_BITS
    }

    pub fn counter(self) -> u16 {
        self.0 as u16
    }

    pub fn as_u64(self) -> u64 {
        self.0
    }

    pub fn from_u64(value: u64) -> Self {
        HlcTimestamp(value)
    }
}

impl fmt::Display for HlcTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{}", self.millis(), self.counter())
    }
}

impl fmt::Debug for HlcTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HlcTimestamp({self})")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HlcError {
    #[error(
        "remote timestamp {remote} is {ahead_ms} ms ahead of the local clock; more than {limit_ms} ms ahead is not adopted"
    )]
    TooFarAhead {
        remote: HlcTimestamp,
        ahead_ms: u64,
        limit_ms: u64,
    },
}

type Clock = Box<dyn Fn() -> u64 + Send + Sync>;

/// A hybrid logical clock, safe to share between threads (one atomic word,
/// updated with a compare-and-swap loop).
pub struct Hlc {
    last: AtomicU64,
    clock: Clock,
}

impl Hlc {
    /// How far ahead of the local wall clock a remote timestamp may be and
    /// still be adopted.
    pub const MAX_AHEAD_MS: u64 = 60_000;

    /// A clock on the system wall clock.
    pub fn new() -> Self {
        Self::with_clock(system_millis)
    }

    /// A clock on `clock`, which returns milliseconds since the Unix epoch
    /// (tests inject one that stalls or goes backwards).
    pub fn with_clock(clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Hlc {
            last: AtomicU64::new(0),
            clock: Box::new(clock),
        }
    }

    fn wall(&self) -> u64 {
        (self.clock)().min(HlcTimestamp::MAX_MILLIS)
    }

    /// A timestamp greater than every one this clock has issued or observed.
    ///
    /// If the wall clock is ahead of the last timestamp, that is the wall
    /// clock with counter 0; otherwise the last timestamp plus one. When the
    /// counter is full the increment carries into the milliseconds, so the
    /// clock runs a millisecond ahead of the wall rather than repeating.
    pub fn now(&self) -> HlcTimestamp {
        let wall = self.wall();
        let mut last = self.last.load(Ordering::Acquire);
        loop {
            let next = if wall > HlcTimestamp(last).millis() {
                HlcTimestamp::new(wall, 0).0
            } else {
                // Saturates only at the end of 48-bit time.
                last.saturating_add(1)
            };
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return HlcTimestamp(next),
                Err(actual) => last = actual,
            }
        }
    }

    /// Merges a timestamp received from a peer, so every later [`Hlc::now`]
    /// is greater than it.
    ///
    /// A remote more than [`Hlc::MAX_AHEAD_MS`] ahead of the local wall
    /// clock is not adopted (the clock is left as it was) and the error says
    /// by how much it was ahead.
    pub fn observe(&self, remote: HlcTimestamp) -> Result<(), HlcError> {
        let wall = self.wall();
        if remote.millis() > wall.saturating_add(Self::MAX_AHEAD_MS) {
            return Err(HlcError::TooFarAhead {
                remote,
                ahead_ms: remote.millis() - wall,
                limit_ms: Self::MAX_AHEAD_MS,
            });
        }
        self.last.fetch_max(remote.0, Ordering::AcqRel);
        Ok(())
    }

    /// The last timestamp issued or observed (to persist, and to
    /// [`Hlc::observe`] again after a restart).
    pub fn last(&self) -> HlcTimestamp {
        HlcTimestamp(self.last.load(Ordering::Acquire))
    }
}

impl Default for Hlc {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hlc").field("last", &self.last()).finish()
    }
}

fn system_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    /// A clock the test sets by hand.
    fn manual(start: u64) -> (Hlc, Arc<AtomicU64>) {
        let time = Arc::new(AtomicU64::new(start));
        let handle = time.clone();
        (Hlc::with_clock(move || handle.load(Ordering::SeqCst)), time)
    }

    const T: u64 = 1_704_067_200_000;

    #[test]
    fn timestamp_parts() {
        let ts = HlcTimestamp::new(T, 7);
        assert_eq!(ts.millis(), T);
        assert_eq!(ts.counter(), 7);
        assert_eq!(ts.as_u64(), (T << 16) | 7);
        assert_eq!(HlcTimestamp::from_u64(ts.as_u64()), ts);
        assert_eq!(ts.to_string(), "1704067200000+7");
        assert_eq!(format!("{ts:?}"), "HlcTimestamp(1704067200000+7)");
        assert!(HlcTimestamp::new(T, 0xffff) < HlcTimestamp::new(T + 1, 0));
        assert_eq!(
            HlcTimestamp::new(u64::MAX, 0).millis(),
            HlcTimestamp::MAX_MILLIS
        );
    }

    #[test]
    fn counter_ticks_while_the_wall_clock_stalls() {
        let (hlc, time) = manual(T);
        assert_eq!(hlc.now(), HlcTimestamp::new(T, 0));
        assert_eq!(hlc.now(), HlcTimestamp::new(T, 1));
        assert_eq!(hlc.now(), HlcTimestamp::new(T, 2));
        time.store(T + 5, Ordering::SeqCst);
        assert_eq!(hlc.now(), HlcTimestamp::new(T + 5, 0));
    }

    #[test]
    fn monotonic_when_the_wall_clock_goes_back() {
        let (hlc, time) = manual(T);
        let a = hlc.now();
        time.store(T - 10_000, Ordering::SeqCst);
        let b = hlc.now();
        let c = hlc.now();
        assert!(a < b && b < c, "{a} {b} {c}");
        assert_eq!(b, HlcTimestamp::new(T, 1));
        time.store(T + 1, Ordering::SeqCst);
        assert_eq!(hlc.now(), HlcTimestamp::new(T + 1, 0));
    }

    #[test]
    fn counter_overflow_carries_into_the_millis() {
        let (hlc, _time) = manual(T);
        hlc.observe(HlcTimestamp::new(T, 0xfffe)).unwrap();
        assert_eq!(hlc.now(), HlcTimestamp::new(T, 0xffff));
        assert_eq!(hlc.now(), HlcTimestamp::new(T + 1, 0));
    }

    #[test]
    fn observe_moves_later_timestamps_past_the_remote() {
        let (hlc, _time) = manual(T);
        let remote = HlcTimestamp::new(T + 30_000, 9);
        hlc.observe(remote).unwrap();
        assert_eq!(hlc.last(), remote);
        assert_eq!(hlc.now(), HlcTimestamp::new(T + 30_000, 10));
        // An older remote changes nothing.
        hlc.observe(HlcTimestamp::new(T - 1, 0)).unwrap();
        assert_eq!(hlc.now(), HlcTimestamp::new(T + 30_000, 11));
        // Exactly at the limit is still adopted.
        let edge = HlcTimestamp::new(T + Hlc::MAX_AHEAD_MS, 0);
        hlc.observe(edge).unwrap();
        assert!(hlc.now() > edge);
    }

    #[test]
    fn far_future_remote_is_refused_and_not_adopted() {
        let check = |remote: HlcTimestamp, expected: &str| {
            let (hlc, _time) = manual(T);
            let before = hlc.now();
            assert_eq!(hlc.observe(remote).unwrap_err().to_string(), expected);
            assert_eq!(hlc.last(), before);
            assert!(hlc.now() < remote);
        };
        check(
            HlcTimestamp::new(T + 60_001, 0),
            "remote timestamp 1704067260001+0 is 60001 ms ahead of the local clock; more than 60000 ms ahead is not adopted",
        );
        check(
            HlcTimestamp::new(T + 3_600_000, 42),
            "remote timestamp 1704070800000+42 is 3600000 ms ahead of the local clock; more than 60000 ms ahead is not adopted",
        );
        check(
            HlcTimestamp::from_u64(u64::MAX),
            "remote timestamp 281474976710655+65535 is 279770909510655 ms ahead of the local clock; more than 60000 ms ahead is not adopted",
        );
    }

    #[test]
    fn system_clock_is_close_to_now() {
        let hlc = Hlc::default();
        let ts = hlc.now();
        assert!(ts.millis().abs_diff(system_millis()) < 60_000);
        assert!(hlc.now() > ts);
    }

    #[test]
    fn unique_and_increasing_across_threads() {
        // A stalled clock forces every timestamp through the counter.
        let hlc = Arc::new(Hlc::with_clock(|| T));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let hlc = hlc.clone();
                std::thread::spawn(move || (0..5_000).map(|_| hlc.now()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = Vec::new();
        for handle in handles {
            let mine = handle.join().unwrap();
            assert!(mine.windows(2).all(|w| w[0] < w[1]));
            all.extend(mine);
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 40_000);
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// Set the wall clock, which may go backwards.
        Wall(u64),
        Now,
        /// Observe a remote timestamp this many ms from the wall clock.
        Observe(i64, u16),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (T - 100_000..T + 100_000).prop_map(Step::Wall),
            Just(Step::Now),
            Just(Step::Now),
            (-100_000i64..100_000, any::<u16>()).prop_map(|(d, c)| Step::Observe(d, c)),
        ]
    }

    proptest! {
        #[test]
        fn never_goes_back(steps in prop::collection::vec(step(), 1..200)) {
            let (hlc, time) = manual(T);
            let mut floor = HlcTimestamp::ZERO;
            for step in steps {
                match step {
                    Step::Wall(ms) => time.store(ms, Ordering::SeqCst),
                    Step::Now => {
                        let ts = hlc.now();
                        prop_assert!(ts > floor, "{} after {}", ts, floor);
                        floor = ts;
                    }
                    Step::Observe(delta, counter) => {
                        let wall = time.load(Ordering::SeqCst);
                        let remote = HlcTimestamp::new(wall.saturating_add_signed(delta), counter);
                        match hlc.observe(remote) {
                            Ok(()) => floor = floor.max(remote),
                            Err(HlcError::TooFarAhead { ahead_ms, .. }) => {
                                prop_assert!(ahead_ms > Hlc::MAX_AHEAD_MS);
                            }
                        }
                    }
                }
            }
        }
    }
}
