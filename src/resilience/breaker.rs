//! Circuit breaker (closed → open → half-open → closed). Closed: calls pass and their outcomes
//! fill a window of the last `breaker_window_calls`; once it holds `breaker_min_calls` and the
//! failure rate reaches `breaker_failure_rate`, the breaker opens. Open: calls fail at once with
//! 503 `circuit_open` for `breaker_open_ms`. Then one trial call is let through (half-open): its
//! success closes the breaker, its failure opens it again.
//! Metrics: `circuit_breaker_state` (0 closed, 1 open, 2 half-open),
//! `circuit_breaker_transitions_total{from,to}`, `circuit_breaker_rejections_total`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::knobs::Knobs;
use crate::telemetry::register;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open { until: Instant },
    HalfOpen { trial_in_flight: bool },
}

impl BreakerState {
    fn label(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen { .. } => "half_open",
        }
    }

    fn gauge_value(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open { .. } => 1,
            BreakerState::HalfOpen { .. } => 2,
        }
    }
}

struct Inner {
    state: BreakerState,
    /// Last outcomes while closed: `true` = failure.
    window: VecDeque<bool>,
}

pub struct Breaker {
    inner: Mutex<Inner>,
    state_gauge: IntGauge,
    transitions: IntCounterVec,
    rejections: IntCounter,
}

impl Breaker {
    pub fn new(registry: &Registry) -> Self {
        let breaker = Self::register_all(registry);
        // Present from the start, so dashboards and alerts see zero rather than nothing.
        for (from, to) in [
            ("closed", "open"),
            ("open", "half_open"),
            ("half_open", "closed"),
            ("half_open", "open"),
        ] {
            breaker.transitions.with_label_values(&[from, to]);
        }
        breaker
    }

    fn register_all(registry: &Registry) -> Self {
        Self {
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                window: VecDeque::new(),
            }),
            state_gauge: register(
                registry,
                IntGauge::new(
                    "circuit_breaker_state",
                    "Downstream circuit breaker: 0 closed, 1 open, 2 half-open",
                )
                .unwrap(),
            ),
            transitions: register(
                registry,
                IntCounterVec::new(
                    Opts::new("circuit_breaker_transitions_total", "Circuit breaker state changes"),
                    &["from", "to"],
                )
                .unwrap(),
            ),
            rejections: register(
                registry,
                IntCounter::new(
                    "circuit_breaker_rejections_total",
                    "Calls refused because the breaker was open",
                )
                .unwrap(),
            ),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn transition(&self, inner: &mut Inner, to: BreakerState) {
        let from = inner.state;
        inner.state = to;
        if from.label() != to.label() {
            self.transitions.with_label_values(&[from.label(), to.label()]).inc();
            tracing::info!(from = from.label(), to = to.label(), "circuit breaker transition");
        }
        self.state_gauge.set(to.gauge_value());
        if to == BreakerState::Closed {
            inner.window.clear();
        }
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    /// May a call go out now? `Err(wait)` says how long until the next trial.
    pub fn admit(&self, k: &Knobs) -> Result<(), Duration> {
        let mut inner = self.lock();
        if !k.breaker_enabled {
            if inner.state != BreakerState::Closed {
                self.transition(&mut inner, BreakerState::Closed);
            }
            return Ok(());
        }
        match inner.state {
            BreakerState::Closed => Ok(()),
            BreakerState::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    self.transition(&mut inner, BreakerState::HalfOpen { trial_in_flight: true });
                    Ok(())
                } else {
                    self.rejections.inc();
                    Err(until - now)
                }
            }
            BreakerState::HalfOpen { trial_in_flight: false } => {
                inner.state = BreakerState::HalfOpen { trial_in_flight: true };
                Ok(())
            }
            BreakerState::HalfOpen { trial_in_flight: true } => {
                self.rejections.inc();
                Err(Duration::from_millis(k.breaker_open_ms.min(1000)))
            }
        }
    }

    /// Records the outcome of an admitted call.
    pub fn record(&self, k: &Knobs, failed: bool) {
        if !k.breaker_enabled {
            return;
        }
        let mut inner = self.lock();
        let open = || BreakerState::Open {
            until: Instant::now() + Duration::from_millis(k.breaker_open_ms),
        };
        match inner.state {
            BreakerState::HalfOpen { .. } => {
                let to = if failed { open() } else { BreakerState::Closed };
                self.transition(&mut inner, to);
            }
            BreakerState::Closed => {
                inner.window.push_back(failed);
                while inner.window.len() > k.breaker_window_calls.max(1) as usize {
                    inner.window.pop_front();
                }
                let n = inner.window.len();
                let failures = inner.window.iter().filter(|f| **f).count();
                if n >= k.breaker_min_calls as usize && failures as f64 / n as f64 >= k.breaker_failure_rate {
                    self.transition(&mut inner, open());
                }
            }
            // A late outcome of a call admitted before the breaker opened.
            BreakerState::Open { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knobs::Profile;

    fn knobs() -> Knobs {
        Knobs {
            breaker_enabled: true,
            breaker_min_calls: 4,
            breaker_window_calls: 4,
            breaker_failure_rate: 0.5,
            breaker_open_ms: 50,
            ..Knobs::for_profile(Profile::Fragile)
        }
    }

    #[test]
    fn opens_half_opens_and_closes() {
        let b = Breaker::new(&Registry::new());
        let k = knobs();
        for failed in [false, true, false, false] {
            b.admit(&k).unwrap();
            b.record(&k, failed);
        }
        assert_eq!(b.state(), BreakerState::Closed, "25% < 50%");
        // Window now [true, false, false, true]: 2 of 4 failed, 50% reaches the threshold.
        b.admit(&k).unwrap();
        b.record(&k, true);
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        assert!(b.admit(&k).is_err());
        std::thread::sleep(Duration::from_millis(60));
        b.admit(&k).unwrap();
        assert!(matches!(b.state(), BreakerState::HalfOpen { .. }));
        assert!(b.admit(&k).is_err(), "one trial at a time");
        b.record(&k, false);
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
