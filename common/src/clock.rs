//! Time as a seam. A loop that decides by the time (the backup decider, the orphan watchdog,
//! the recorder, the scheduler) reads it from a [`Clock`], so its decision is a function of the
//! time it is given and unit tests drive it with a [`ManualClock`].

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Wall-clock milliseconds (event and file times) and a monotonic instant (grace periods).
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
    /// A monotonic instant: waits measured with it survive wall-clock steps.
    fn now(&self) -> Instant;
}

/// A shared clock, as processes hand it to their loops.
pub type SharedClock = Arc<dyn Clock>;

/// The machine's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        crate::events::now_ms()
    }
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// The system clock, shared.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that moves only when told (tests): both readings advance together.
#[derive(Debug)]
pub struct ManualClock {
    start_ms: i64,
    start: Instant,
    elapsed_ms: AtomicI64,
}

impl ManualClock {
    /// Starts at `start_ms` since the epoch.
    pub fn new(start_ms: i64) -> Arc<Self> {
        Arc::new(Self { start_ms, start: Instant::now(), elapsed_ms: AtomicI64::new(0) })
    }

    pub fn advance(&self, by: Duration) {
        self.elapsed_ms.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.start_ms + self.elapsed_ms.load(Ordering::SeqCst)
    }
    fn now(&self) -> Instant {
        self.start + Duration::from_millis(self.elapsed_ms.load(Ordering::SeqCst) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_both_readings_together_and_only_when_told() {
        let c = ManualClock::new(1_000);
        let (t0, i0) = (c.now_ms(), c.now());
        assert_eq!((c.now_ms(), c.now()), (t0, i0));
        c.advance(Duration::from_millis(1_500));
        assert_eq!(c.now_ms(), 2_500);
        assert_eq!(c.now() - i0, Duration::from_millis(1_500));
    }
}
