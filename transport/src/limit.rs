//! Rate-limited warnings: a peer that misbehaves on purpose must not fill the disk with log
//! lines (one refused connection writes a few hundred bytes; thousands per second add up).
//!
//! A [`LogLimiter`] allows `burst` lines per `period`; lines past that are counted, and the
//! first line allowed afterwards reports how many were suppressed in between.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Allows at most `burst` log lines per `period`, counting the rest.
#[derive(Debug)]
pub struct LogLimiter {
    period: Duration,
    burst: u32,
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    start: Option<Instant>,
    emitted: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter of `burst` lines per `period`.
    pub const fn new(period: Duration, burst: u32) -> Self {
        Self {
            period,
            burst,
            window: Mutex::new(Window {
                start: None,
                emitted: 0,
                suppressed: 0,
            }),
        }
    }

    /// The limit used for bad connections: 10 lines per 10 s.
    pub const fn for_bad_peers() -> Self {
        Self::new(Duration::from_secs(10), 10)
    }

    /// Whether to log a line now: `Some(k)` (log it, mentioning the `k` lines suppressed since
    /// the last one logged) or `None` (suppressed and counted).
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Option<u64> {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = w
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.period);
        if fresh {
            w.start = Some(now);
            w.emitted = 0;
        }
        if w.emitted >= self.burst {
            w.suppressed += 1;
            return None;
        }
        w.emitted += 1;
        Some(std::mem::take(&mut w.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_per_period_and_reports_what_it_suppressed() {
        let l = LogLimiter::new(Duration::from_secs(1), 3);
        let t0 = Instant::now();
        let got: Vec<_> = (0..10).map(|_| l.check_at(t0)).collect();
        assert_eq!(got[..3], [Some(0), Some(0), Some(0)]);
        assert!(got[3..].iter().all(Option::is_none));
        let later = t0 + Duration::from_secs(1);
        assert_eq!(l.check_at(later), Some(7));
        assert_eq!(l.check_at(later), Some(0));
    }
}
