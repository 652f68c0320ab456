//! Time as the daemon reads it. Rules that depend on time (join-token
//! expiry, trust-list freshness and revocation, when a link counts as
//! stalled) read the node's [`Clock`], so tests move time by hand
//! ([`ManualClock`]) instead of sleeping for it to pass. Record-keeping
//! stamps (audit entries, quarantine rows) read the system clock
//! ([`now_ms`]). [`human_time`] writes a time for people: a date in UTC
//! and how long ago.

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

/// A time (`ms` since the Unix epoch) as people read it, with how long
/// before or after `now_ms` it is: `2026-12-07 21:40:03 UTC (3 min ago)`.
/// 0 (what the status views hold for "not yet") reads `never`.
pub fn human_time(ms: i64, now_ms: i64) -> String {
    if ms == 0 {
        return "never".into();
    }
    format!("{} ({})", utc(ms), relative(now_ms - ms))
}

/// `ms` since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(ms: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("{ms} ms since the epoch"),
    }
}

/// A span of `ms` (positive: in the past) in words: `3 min ago`, `in 2 h`.
fn relative(ms: i64) -> String {
    let secs = ms.unsigned_abs() / 1000;
    let span = match secs {
        0 => return "now".into(),
        1..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86_400 => match secs % 3600 / 60 {
            0 => format!("{} h", secs / 3600),
            min => format!("{} h {min} min", secs / 3600),
        },
        _ => match secs % 86_400 / 3600 {
            0 => format!("{} d", secs / 86_400),
            h => format!("{} d {h} h", secs / 86_400),
        },
    };
    if ms < 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_dates_in_utc_with_how_long_ago() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_796_679_603_000), "2026-12-07 21:40:03 UTC");
        assert_eq!(utc(951_868_799_999), "2000-02-29 23:59:59 UTC");
        assert_eq!(utc(4_107_542_400_000), "2100-03-01 00:00:00 UTC");
        assert_eq!(utc(-1000), "1969-12-31 23:59:59 UTC");
        let at = 1_796_679_603_000;
        assert_eq!(
            human_time(at, at + 180_000),
            "2026-12-07 21:40:03 UTC (3 min ago)"
        );
        assert_eq!(human_time(at, at + 400), "2026-12-07 21:40:03 UTC (now)");
        assert_eq!(
            human_time(at, at + 59_000).split_once(" (").unwrap().1,
            "59 s ago)"
        );
        assert_eq!(relative(2 * 3_600_000), "2 h ago");
        assert_eq!(relative(3_600_000 + 5 * 60_000), "1 h 5 min ago");
        assert_eq!(relative(3 * 86_400_000 + 3_600_000), "3 d 1 h ago");
        assert_eq!(relative(-90_000), "in 1 min");
        assert_eq!(human_time(0, at), "never");
    }

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
