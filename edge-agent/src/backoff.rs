//! When to poll next. Pure arithmetic over an injected random number, so tests pin
//! it down without sleeping.
//!
//! Invariants: the steady interval is jittered to [0.5, 1.5) × the server's
//! interval (agents started together drift apart); after failures the delay grows
//! 2^n from 1 s up to the cap, and is drawn from [cap/2, cap) at the cap, so a
//! fleet reconnecting after an outage never stampedes at one instant and never
//! stops backing off; a server's Retry-After is a floor.

use std::time::Duration;

/// `unit` is a random number in [0, 1).
pub fn steady(interval_ms: u64, unit: f64) -> Duration {
    let ms = (interval_ms.max(1000) as f64) * (0.5 + unit.clamp(0.0, 0.999_999));
    Duration::from_millis(ms as u64)
}

/// Delay after `failures` consecutive failures (1 = the first).
pub fn after_failure(
    failures: u32,
    cap: Duration,
    retry_after: Option<Duration>,
    unit: f64,
) -> Duration {
    let unit = unit.clamp(0.0, 0.999_999);
    let exp = Duration::from_secs(1u64 << failures.clamp(1, 20).saturating_sub(1));
    let delay = if exp >= cap {
        cap.mul_f64(0.5 + 0.5 * unit)
    } else {
        // Full jitter below the cap, but never under 100 ms.
        exp.mul_f64(unit).max(Duration::from_millis(100))
    };
    delay.max(retry_after.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_interval_is_jittered_around_the_servers() {
        assert_eq!(steady(30_000, 0.0), Duration::from_millis(15_000));
        assert_eq!(steady(30_000, 0.5), Duration::from_millis(30_000));
        assert!(steady(30_000, 0.999_999) < Duration::from_millis(45_000));
        assert_eq!(steady(10, 0.5), Duration::from_millis(1000), "floor of 1 s");
    }

    #[test]
    fn failures_grow_to_the_cap_and_stay_jittered_there() {
        let cap = Duration::from_secs(300);
        assert!(after_failure(1, cap, None, 0.999) < Duration::from_secs(1));
        assert!(after_failure(5, cap, None, 0.999) <= Duration::from_secs(16));
        for unit in [0.0, 0.3, 0.9] {
            let d = after_failure(30, cap, None, unit);
            assert!(d >= Duration::from_secs(150) && d < cap, "{d:?}");
        }
        assert_ne!(
            after_failure(30, cap, None, 0.1),
            after_failure(30, cap, None, 0.9),
            "jitter at the cap"
        );
        assert_eq!(
            after_failure(1, cap, Some(Duration::from_secs(20)), 0.5),
            Duration::from_secs(20)
        );
        assert_eq!(after_failure(1, cap, None, 0.0), Duration::from_millis(100));
    }
}
