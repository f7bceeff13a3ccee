//! Retries with capped exponential backoff and full jitter, bounded by a retry budget.
//!
//! Attempt `n` (n ≥ 1 retries so far) waits a uniform random time in
//! `[0, min(retry_max_backoff_ms, retry_base_ms · 2^(n-1))]`; `retry_base_ms = 0` retries
//! immediately (the naive policy that turns a blip into a storm). The budget, like Finagle's,
//! lets retries add at most `retry_budget_percent` % of the first attempts seen in the last 10 s,
//! plus a floor of 10 retries per window so a quiet service can still retry.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::knobs::Knobs;

const BUDGET_WINDOW: Duration = Duration::from_secs(10);
const BUDGET_FLOOR: u64 = 10;

/// The wait before retry number `retry` (1-based).
pub fn backoff(k: &Knobs, retry: u32) -> Duration {
    if k.retry_base_ms == 0 {
        return Duration::ZERO;
    }
    let exp = k
        .retry_base_ms
        .saturating_mul(1u64 << (retry.saturating_sub(1)).min(20));
    let ceiling = exp.min(k.retry_max_backoff_ms);
    Duration::from_millis(rand::rng().random_range(0..=ceiling))
}

#[derive(Default)]
pub struct RetryBudget {
    /// (when, is_retry) of recent attempts.
    events: Mutex<VecDeque<(Instant, bool)>>,
}

impl RetryBudget {
    fn prune(events: &mut VecDeque<(Instant, bool)>, now: Instant) {
        while events
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > BUDGET_WINDOW)
        {
            events.pop_front();
        }
    }

    /// Records a first attempt.
    pub fn first_attempt(&self) {
        let now = Instant::now();
        let mut ev = self.events.lock().unwrap_or_else(|p| p.into_inner());
        Self::prune(&mut ev, now);
        ev.push_back((now, false));
    }

    /// Takes one retry from the budget if it allows it.
    pub fn try_retry(&self, k: &Knobs) -> bool {
        let now = Instant::now();
        let mut ev = self.events.lock().unwrap_or_else(|p| p.into_inner());
        Self::prune(&mut ev, now);
        if k.retry_budget_percent > 0 {
            let firsts = ev.iter().filter(|(_, r)| !r).count() as u64;
            let retries = ev.iter().filter(|(_, r)| *r).count() as u64;
            let allowed = firsts * u64::from(k.retry_budget_percent) / 100 + BUDGET_FLOOR;
            if retries >= allowed {
                return false;
            }
        }
        ev.push_back((now, true));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knobs::Profile;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let k = Knobs {
            retry_base_ms: 100,
            retry_max_backoff_ms: 300,
            ..Knobs::for_profile(Profile::Hardened)
        };
        for retry in 1..8 {
            assert!(backoff(&k, retry) <= Duration::from_millis(300));
        }
        let immediate = Knobs { retry_base_ms: 0, ..k };
        assert_eq!(backoff(&immediate, 3), Duration::ZERO);
    }

    #[test]
    fn budget_bounds_retries() {
        let k = Knobs {
            retry_budget_percent: 10,
            ..Knobs::for_profile(Profile::Hardened)
        };
        let b = RetryBudget::default();
        for _ in 0..100 {
            b.first_attempt();
        }
        let granted = (0..100).filter(|_| b.try_retry(&k)).count();
        assert_eq!(granted, 20, "10% of 100 plus the floor of 10");
        let unlimited = Knobs {
            retry_budget_percent: 0,
            ..k
        };
        assert!(b.try_retry(&unlimited));
    }
}
