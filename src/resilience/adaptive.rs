//! An adaptive concurrency limit (the knob `concurrency_limit`): a limit on the requests in
//! flight per route group (db, cpu) that is found from their measured latency, with no capacity
//! given. resilience4j has been asked for one since 2018 (#201); Netflix's concurrency-limits
//! has AIMD and Gradient2.
//!
//! Both algorithms watch windows of completed requests (at least [`WINDOW_MIN`] and about one
//! limit's worth). The no-queue baseline is measured by a probe window at half the limit (at the
//! start, and again every [`BASELINE_TTL`], so a slower dependency becomes the new normal instead
//! of a permanent alarm), and lowered by any window faster than it.
//! A window whose mean stays within [`TOLERANCE`] of the baseline means nobody queued: the limit
//! was not the bottleneck, so it probes one higher (only when the window was busy, with the limit
//! reached; an idle lab does not grow it). Above the tolerance requests are queueing behind the
//! real capacity (a pool, the cores), and the limit comes down:
//!
//! - `gradient` — to `limit × tolerance × baseline / window mean` (Little's law: in-flight over
//!   capacity is the latency's ratio to its no-queue value, so one step lands near the knee);
//! - `aimd` — by a fixed factor, [`AIMD_BACKOFF`] (TCP Reno's additive increase, multiplicative
//!   decrease, with "loss" = latency past the tolerance).
//!
//! After a decrease it holds for [`HOLD_WINDOWS`] windows before probing again, so the limit
//! sits at the knee most of the time instead of oscillating one above it.
//!
//! Why not a crate: `tower-acc` (0.1) and `tower-resilience-adaptive` are tower layers over a
//! whole service; their Vegas keeps a standing queue of 3–6 requests by design and Gradient2 adds
//! a queue allowance to every update, which at a capacity of 2 (the cpu scenario's cores) is
//! +150% or more, where the goal is ±10%, and neither feeds the lab's metrics or a live knob.
//!
//! Up to one limit's worth of requests wait for a slot (a freed slot is taken at once, so the
//! capacity never idles between a completion and the next arrival); past that, 503 at once
//! (`requests_shed_total{reason="concurrency_limit"}`).
//! Metrics: `concurrency_limit{group}` (the limit now), `concurrency_limit_rtt_seconds{group,
//! kind="baseline"|"window"}`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{GaugeVec, IntGaugeVec, Opts, Registry};

use crate::knobs::ConcurrencyLimit;
use crate::telemetry::register;

/// A window's mean within this factor of the baseline: nobody queued.
pub const TOLERANCE: f64 = 1.1;
/// The fewest completions a window holds.
pub const WINDOW_MIN: u32 = 10;
/// The baseline is forgotten this often (re-learned from the next windows).
pub const BASELINE_TTL: Duration = Duration::from_secs(10);
/// Windows without a probe after a decrease.
pub const HOLD_WINDOWS: u32 = 3;
/// AIMD's multiplicative decrease.
pub const AIMD_BACKOFF: f64 = 0.8;
/// Where a limit starts, and its bounds.
pub const INITIAL: f64 = 4.0;
pub const MAX: f64 = 1000.0;

/// The algorithm's state, updated once per window.
#[derive(Debug, Clone)]
pub struct Estimator {
    pub limit: f64,
    baseline: Option<f64>,
    baseline_at: Instant,
    sum: f64,
    count: u32,
    /// The most in flight seen during the window (was the limit reached?).
    peak: u32,
    hold: u32,
    /// A probe window is running at half the limit; the limit to go back to.
    probe: Option<f64>,
}

impl Default for Estimator {
    fn default() -> Self {
        Self {
            limit: INITIAL,
            baseline: None,
            baseline_at: Instant::now(),
            sum: 0.0,
            count: 0,
            peak: 0,
            hold: 0,
            probe: None,
        }
    }
}

/// What a window ended with (for the metrics and the tests).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowEnd {
    pub mean: f64,
    pub baseline: f64,
    pub limit: f64,
}

impl Estimator {
    /// The limit in force, whole requests (at least 1).
    pub fn current(&self) -> u32 {
        self.limit.round().max(1.0) as u32
    }

    /// One completion: its latency (seconds) and how many were in flight with it.
    pub fn sample(&mut self, algo: ConcurrencyLimit, rtt: f64, in_flight: u32, now: Instant) -> Option<WindowEnd> {
        self.sum += rtt;
        self.count += 1;
        self.peak = self.peak.max(in_flight);
        if self.count < WINDOW_MIN.max(self.current()) {
            return None;
        }
        let mean = self.sum / f64::from(self.count);
        let busy = self.peak >= self.current();
        (self.sum, self.count, self.peak) = (0.0, 0, 0);
        if let Some(restore) = self.probe.take() {
            // The probe window ran at half the limit: its mean is the new no-queue baseline.
            self.baseline = Some(mean);
            self.baseline_at = now;
            self.limit = restore;
            self.hold = 0;
            return Some(WindowEnd {
                mean,
                baseline: mean,
                limit: self.limit,
            });
        }
        let expired = now.duration_since(self.baseline_at) > BASELINE_TTL;
        let Some(baseline) = self.baseline.filter(|_| !expired) else {
            // No baseline yet, or too old: measure one window at half the limit, where a
            // limit above the capacity stops queueing (a baseline learned while queueing
            // would hold the limit above the knee for good).
            self.probe = Some(self.limit);
            self.limit = (self.limit / 2.0).floor().max(1.0);
            return Some(WindowEnd {
                mean,
                baseline: self.baseline.unwrap_or(mean),
                limit: self.limit,
            });
        };
        let baseline = baseline.min(mean);
        self.baseline = Some(baseline);
        if mean <= TOLERANCE * baseline {
            if self.hold > 0 {
                self.hold -= 1;
            } else if busy {
                self.limit = (self.limit.floor() + 1.0).min(MAX);
            }
        } else {
            let next = match algo {
                ConcurrencyLimit::Aimd => self.limit * AIMD_BACKOFF,
                _ => self.limit * TOLERANCE * baseline / mean,
            };
            self.limit = next.clamp(1.0, MAX);
            self.hold = HOLD_WINDOWS;
        }
        Some(WindowEnd {
            mean,
            baseline,
            limit: self.limit,
        })
    }
}

/// One group's limit: its requests in flight and its estimator.
pub struct Limit {
    group: &'static str,
    in_flight: AtomicU32,
    /// Requests waiting for a slot (at most the limit: a freed slot is taken at once, so the
    /// capacity never idles between a completion and the next arrival).
    waiting: AtomicU32,
    freed: tokio::sync::Notify,
    estimator: Mutex<Estimator>,
    metrics: Metrics,
}

#[derive(Clone)]
struct Metrics {
    limit: IntGaugeVec,
    rtt: GaugeVec,
}

/// Held while a request runs inside its group's limit; its latency is sampled on drop.
pub struct Permit {
    limit: Arc<Limit>,
    algo: ConcurrencyLimit,
    start: Instant,
}

impl Limit {
    /// Enters if fewer than the current limit are in flight.
    pub fn try_enter(self: &Arc<Self>, algo: ConcurrencyLimit) -> Option<Permit> {
        let limit = self.estimator.lock().unwrap_or_else(|p| p.into_inner()).current();
        self.in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < limit).then_some(n + 1))
            .ok()?;
        Some(Permit {
            limit: self.clone(),
            algo,
            start: Instant::now(),
        })
    }

    /// Enters at once, or waits for a slot if fewer than the limit are waiting already; `None`
    /// (refused) when the wait queue is full too. The permit's latency counts from entering the
    /// slot, so the short wait does not read as the resource slowing down.
    pub async fn enter_or_wait(self: &Arc<Self>, algo: ConcurrencyLimit) -> Option<Permit> {
        if let Some(p) = self.try_enter(algo) {
            return Some(p);
        }
        let queue_max = self.current();
        self.waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < queue_max).then_some(n + 1))
            .ok()?;
        struct Leave<'a>(&'a AtomicU32);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _leave = Leave(&self.waiting);
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(p) = self.try_enter(algo) {
                return Some(p);
            }
            freed.await;
        }
    }

    /// The limit in force now.
    pub fn current(&self) -> u32 {
        self.estimator.lock().unwrap_or_else(|p| p.into_inner()).current()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let l = &self.limit;
        let in_flight = l.in_flight.fetch_sub(1, Ordering::SeqCst);
        if l.waiting.load(Ordering::SeqCst) > 0 {
            l.freed.notify_one();
        }
        let rtt = self.start.elapsed().as_secs_f64();
        let end =
            l.estimator
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .sample(self.algo, rtt, in_flight, Instant::now());
        if let Some(end) = end {
            l.metrics
                .limit
                .with_label_values(&[l.group])
                .set(end.limit.round().max(1.0) as i64);
            l.metrics
                .rtt
                .with_label_values(&[l.group, "baseline"])
                .set(end.baseline);
            l.metrics.rtt.with_label_values(&[l.group, "window"]).set(end.mean);
        }
    }
}

/// The limits of the groups that have one: db and cpu.
pub struct Limits {
    pub db: Arc<Limit>,
    pub cpu: Arc<Limit>,
}

impl Limits {
    pub fn new(registry: &Registry) -> Self {
        let metrics = Metrics {
            limit: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "concurrency_limit",
                        "The adaptive concurrency limit per route group (concurrency_limit = aimd | gradient)",
                    ),
                    &["group"],
                )
                .unwrap(),
            ),
            rtt: register(
                registry,
                GaugeVec::new(
                    Opts::new(
                        "concurrency_limit_rtt_seconds",
                        "The adaptive limit's latency: its no-queue baseline and the last window's mean",
                    ),
                    &["group", "kind"],
                )
                .unwrap(),
            ),
        };
        let limit = |group: &'static str| {
            // Present from the start, so dashboards and alerts see the series before a window.
            metrics.limit.with_label_values(&[group]).set(INITIAL as i64);
            for kind in ["baseline", "window"] {
                metrics.rtt.with_label_values(&[group, kind]).set(0.0);
            }
            Arc::new(Limit {
                group,
                in_flight: AtomicU32::new(0),
                waiting: AtomicU32::new(0),
                freed: tokio::sync::Notify::new(),
                estimator: Mutex::new(Estimator::default()),
                metrics: metrics.clone(),
            })
        };
        Self {
            db: limit("db"),
            cpu: limit("cpu"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resource with `capacity` slots and service time `s`: with `n` in flight the latency is
    /// s × max(1, n / capacity) (Little's law); the offered load always fills the limit.
    fn settle(algo: ConcurrencyLimit, capacity: f64, windows: usize) -> Vec<u32> {
        let mut e = Estimator::default();
        let mut t = Instant::now();
        let mut seen = Vec::new();
        for _ in 0..windows {
            let n = e.current();
            let rtt = 0.1 * (f64::from(n) / capacity).max(1.0);
            for _ in 0..WINDOW_MIN.max(n) {
                t += Duration::from_millis(10);
                if e.sample(algo, rtt, n, t).is_some() {
                    seen.push(e.current());
                }
            }
        }
        seen
    }

    fn share_within(seen: &[u32], lo: u32, hi: u32) -> f64 {
        let tail = &seen[seen.len() / 2..];
        tail.iter().filter(|&&l| (lo..=hi).contains(&l)).count() as f64 / tail.len() as f64
    }

    #[test]
    fn gradient_settles_at_the_capacity() {
        for cap in [2.0, 4.0, 15.0, 40.0] {
            let seen = settle(ConcurrencyLimit::Gradient, cap, 200);
            let (lo, hi) = ((cap * 0.9).floor() as u32, (cap * 1.1).ceil() as u32);
            let share = share_within(&seen, lo, hi);
            assert!(
                share >= 0.7,
                "capacity {cap}: {share} of the last windows within [{lo}, {hi}]: {seen:?}"
            );
        }
    }

    #[test]
    fn aimd_settles_near_the_capacity() {
        for cap in [4.0, 15.0] {
            let seen = settle(ConcurrencyLimit::Aimd, cap, 300);
            let tail = &seen[seen.len() / 2..];
            let mean = tail.iter().map(|&l| f64::from(l)).sum::<f64>() / tail.len() as f64;
            assert!(
                (mean / cap - 1.0).abs() <= 0.15,
                "capacity {cap}: mean limit {mean}: {seen:?}"
            );
        }
    }

    #[test]
    fn an_idle_lab_does_not_grow_the_limit() {
        let mut e = Estimator::default();
        let t = Instant::now();
        for i in 0..1000 {
            e.sample(ConcurrencyLimit::Gradient, 0.01, 1, t + Duration::from_millis(i));
        }
        assert_eq!(e.current(), INITIAL as u32);
    }
}
