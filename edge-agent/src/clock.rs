//! Time and chance, injected: the poll loop sleeps and draws jitter only through
//! [`Clock`], so tests drive it without sleeping and with chosen random numbers.
//!
//! Invariant: a sleep ends early, and says so, as soon as the stop flag is set
//! (SIGTERM/SIGINT), so shutdown never waits out a backoff.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub trait Clock {
    /// Sleeps for `d` unless `stop` is set first; returns true when it was.
    fn sleep(&self, d: Duration, stop: &AtomicBool) -> bool;
    /// A uniform random number in [0, 1).
    fn unit(&self) -> f64;
}

/// The real clock: sleeps in short steps, checking `stop` between them.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn sleep(&self, d: Duration, stop: &AtomicBool) -> bool {
        let until = Instant::now() + d;
        loop {
            if stop.load(Ordering::Relaxed) {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100).min(until - now));
        }
    }

    fn unit(&self) -> f64 {
        rand::random::<f64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_stop_flag_ends_the_sleep_at_once() {
        let stop = AtomicBool::new(true);
        let t = Instant::now();
        assert!(SystemClock.sleep(Duration::from_secs(3600), &stop));
        assert!(t.elapsed() < Duration::from_secs(3600));
        let go = AtomicBool::new(false);
        assert!(!SystemClock.sleep(Duration::ZERO, &go));
        let u = SystemClock.unit();
        assert!((0.0..1.0).contains(&u), "{u}");
    }
}
