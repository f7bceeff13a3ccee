//! The downstream client's connection pool: the finite resource a real HTTP client has (httpx's
//! `max_connections`, a JDBC-style pool per host). At most `size` calls hold a connection at once;
//! the rest wait in line, first come first served. In fragile the wait has no limit, so at
//! 100 req/s of a 2 s dependency the line grows until callers time out: the cascade. The cure caps
//! the wait (`downstream_pool_wait_ms`), so the excess fails fast instead.
//!
//! The size and the wait cap are read from the live knobs on every call: shrinking the pool lets
//! calls holding a connection finish; growing it lets waiters in as connections are released.
//! chokepoint has one downstream host, so the client has one pool.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};
use tokio::sync::Notify;

use crate::telemetry::{register, GaugeGuard, LATENCY_BUCKETS};

pub struct OutboundPool {
    in_use: Mutex<u32>,
    released: Notify,
    metrics: PoolMetrics,
}

struct PoolMetrics {
    in_use: IntGauge,
    waiting: IntGauge,
    wait: Histogram,
    timeouts: IntCounter,
}

/// A connection held; returned to the pool on drop (also when the caller is cancelled).
pub struct Lease {
    pool: Arc<OutboundPool>,
}

/// No connection became free within the wait allowed.
#[derive(Debug)]
pub struct WaitedOut {
    pub waited: Duration,
}

impl OutboundPool {
    pub fn new(registry: &Registry) -> Arc<Self> {
        let metrics = PoolMetrics {
            in_use: register(
                registry,
                IntGauge::new(
                    "downstream_pool_connections_in_use",
                    "Downstream connections held by a call (the pool's size is the knob downstream_pool_size)",
                )
                .unwrap(),
            ),
            waiting: register(
                registry,
                IntGauge::new(
                    "downstream_pool_waiting",
                    "Downstream calls waiting for a free connection",
                )
                .unwrap(),
            ),
            wait: register(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "downstream_pool_wait_seconds",
                        "Time a downstream call waited for a connection",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )
                .unwrap(),
            ),
            timeouts: register(
                registry,
                IntCounter::new(
                    "downstream_pool_timeouts_total",
                    "Downstream calls that gave up waiting for a connection (downstream_pool_wait_ms)",
                )
                .unwrap(),
            ),
        };
        Arc::new(Self {
            in_use: Mutex::new(0),
            released: Notify::new(),
            metrics,
        })
    }

    /// Takes a connection if fewer than `size` are held (`size == 0`: no limit).
    fn try_take(self: &Arc<Self>, size: u32) -> Option<Lease> {
        let mut in_use = self.in_use.lock().unwrap_or_else(|e| e.into_inner());
        if size != 0 && *in_use >= size {
            return None;
        }
        *in_use += 1;
        let free_left = size == 0 || *in_use < size;
        drop(in_use);
        self.metrics.in_use.inc();
        if free_left {
            // The pool may have grown: let the next waiter look too.
            self.released.notify_one();
        }
        Some(Lease { pool: self.clone() })
    }

    /// Waits for a connection: at most `wait` when given, otherwise as long as it takes.
    pub async fn acquire(self: &Arc<Self>, size: u32, wait: Option<Duration>) -> Result<Lease, WaitedOut> {
        if let Some(lease) = self.try_take(size) {
            self.metrics.wait.observe(0.0);
            return Ok(lease);
        }
        let started = Instant::now();
        let _waiting = GaugeGuard::new(&self.metrics.waiting);
        let deadline = wait.map(|w| tokio::time::Instant::from_std(started + w));
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(lease) = self.try_take(size) {
                self.metrics.wait.observe(started.elapsed().as_secs_f64());
                return Ok(lease);
            }
            match deadline {
                Some(at) => {
                    if tokio::time::timeout_at(at, released).await.is_err() {
                        let waited = started.elapsed();
                        self.metrics.wait.observe(waited.as_secs_f64());
                        self.metrics.timeouts.inc();
                        return Err(WaitedOut { waited });
                    }
                }
                None => released.await,
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        {
            let mut in_use = self.pool.in_use.lock().unwrap_or_else(|e| e.into_inner());
            *in_use = in_use.saturating_sub(1);
        }
        self.pool.metrics.in_use.dec();
        self.pool.released.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_get_connections_in_turn_and_a_capped_wait_gives_up() {
        let pool = OutboundPool::new(&Registry::new());
        let a = pool.acquire(2, None).await.unwrap();
        let _b = pool.acquire(2, None).await.unwrap();
        // Full: a capped wait gives up after its cap.
        let err = pool.acquire(2, Some(Duration::from_millis(30))).await.err().unwrap();
        assert!(err.waited >= Duration::from_millis(30), "{err:?}");
        assert_eq!(pool.metrics.timeouts.get(), 1);
        // An uncapped waiter gets the connection `a` releases.
        let waiter = tokio::spawn({
            let pool = pool.clone();
            async move { pool.acquire(2, None).await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(pool.metrics.waiting.get(), 1);
        drop(a);
        waiter.await.unwrap().unwrap();
        assert_eq!(pool.metrics.waiting.get(), 0);
        // Growing the pool admits at once; size 0 is unlimited.
        let _c = pool.acquire(3, Some(Duration::ZERO)).await.unwrap();
        let _d = pool.acquire(0, Some(Duration::ZERO)).await.unwrap();
    }

    #[tokio::test]
    async fn a_cancelled_waiter_passes_its_turn_on() {
        let pool = OutboundPool::new(&Registry::new());
        let held = pool.acquire(1, None).await.unwrap();
        let first = tokio::spawn({
            let pool = pool.clone();
            async move { pool.acquire(1, None).await.map(|_| ()) }
        });
        let second = tokio::spawn({
            let pool = pool.clone();
            async move { pool.acquire(1, None).await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        first.abort();
        let _ = first.await;
        drop(held);
        tokio::time::timeout(Duration::from_secs(2), second)
            .await
            .expect("the released connection reached the remaining waiter")
            .unwrap()
            .unwrap();
        assert_eq!(pool.metrics.in_use.get(), 0);
    }
}
