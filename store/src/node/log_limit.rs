//! Rate-limited warnings about refused connections: a peer that misbehaves on purpose must not
//! fill the disk with log lines. (The same idea as `manta_transport::LogLimiter`, kept here
//! because `store` depends on no other Manta crate.)

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most 10 warnings per 10 s about bad connections, counting the rest (a peer that
/// misbehaves on purpose must not fill the disk).
#[derive(Debug, Default)]
pub(super) struct LogLimit(Mutex<(Option<Instant>, u32, u64)>);

impl LogLimit {
    const PERIOD: Duration = Duration::from_secs(10);
    const BURST: u32 = 10;

    /// `Some(suppressed since the last line)` to log now, `None` to stay quiet.
    pub(super) fn check(&self) -> Option<u64> {
        let mut w = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if w.0
            .is_none_or(|start| now.saturating_duration_since(start) >= Self::PERIOD)
        {
            *w = (Some(now), 0, w.2);
        }
        if w.1 >= Self::BURST {
            w.2 += 1;
            return None;
        }
        w.1 += 1;
        Some(std::mem::take(&mut w.2))
    }
}
