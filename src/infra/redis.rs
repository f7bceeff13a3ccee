//! Redis through a deadpool-redis pool (`REDIS_URL`), used by the cache-stampede scenario.
//!
//! Every operation goes through [`Redis::run`], which applies the knobs: the pool's wait
//! timeout (`redis_pool_timeout_ms`) and one timeout over connect/recycle and the command
//! (`redis_timeout_ms`, 0 = none — the fragile default, so a hanging Redis hangs its callers).
//! The pool is resized live (`redis_pool_size`). Keys live under `REDIS_KEY_PREFIX`, so a flush
//! deletes only this lab's keys, never the rest of a shared Redis.
//!
//! Metrics: `redis_pool_connections{state}`, `redis_pool_waiting`, `redis_errors_total{kind}`.

use std::time::Duration;

use deadpool_redis::redis::{self, AsyncCommands};
use deadpool_redis::{Config, Pool, PoolError, Runtime, Timeouts};
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::knobs::Knobs;
use crate::telemetry::register;

/// Why a Redis operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("no Redis connection became free within {0:?} (redis_pool_timeout_ms)")]
    PoolTimeout(Duration),
    #[error("Redis did not answer within {0:?} (redis_timeout_ms)")]
    Timeout(Duration),
    #[error("Redis connection failed")]
    Pool(#[source] PoolError),
    #[error("Redis command failed")]
    Command(#[source] redis::RedisError),
}

impl RedisError {
    pub fn kind(&self) -> &'static str {
        match self {
            RedisError::PoolTimeout(_) => "pool_timeout",
            RedisError::Timeout(_) => "timeout",
            RedisError::Pool(_) => "connection",
            RedisError::Command(_) => "command",
        }
    }
}

#[derive(Clone)]
struct Metrics {
    connections: IntGaugeVec,
    waiting: IntGauge,
    errors: IntCounterVec,
}

pub struct Redis {
    pool: Pool,
    prefix: String,
    metrics: Metrics,
}

impl Redis {
    /// Builds the pool (connections open lazily: an unreachable Redis is an outage to observe,
    /// not a start-up failure).
    pub fn new(url: &str, prefix: &str, knobs: &Knobs, registry: &Registry) -> anyhow::Result<Self> {
        let mut cfg = Config::from_url(url);
        cfg.pool = Some(deadpool_redis::PoolConfig::new(knobs.redis_pool_size as usize));
        let pool = cfg
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| anyhow::anyhow!("REDIS_URL: {e}"))?;
        let metrics = Metrics {
            connections: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "redis_pool_connections",
                        "Open Redis pool connections by state (in_use, idle)",
                    ),
                    &["state"],
                )
                .unwrap(),
            ),
            waiting: register(
                registry,
                IntGauge::new(
                    "redis_pool_waiting",
                    "Requests waiting for a Redis connection right now",
                )
                .unwrap(),
            ),
            errors: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "redis_errors_total",
                        "Failed Redis operations by kind (pool_timeout, timeout, connection, command)",
                    ),
                    &["kind"],
                )
                .unwrap(),
            ),
        };
        for kind in ["pool_timeout", "timeout", "connection", "command"] {
            metrics.errors.with_label_values(&[kind]);
        }
        Ok(Self {
            pool,
            prefix: prefix.to_string(),
            metrics,
        })
    }

    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Applies `redis_pool_size` (connections above a smaller size close as they come back).
    pub fn apply(&self, knobs: &Knobs) {
        if self.pool.status().max_size != knobs.redis_pool_size as usize {
            self.pool.resize(knobs.redis_pool_size as usize);
        }
    }

    /// Runs one operation on a pooled connection under the knobs' timeouts.
    pub async fn run<T, F>(&self, knobs: &Knobs, op: F) -> Result<T, RedisError>
    where
        F: AsyncFnOnce(&mut deadpool_redis::Connection) -> redis::RedisResult<T>,
    {
        let op_timeout = (knobs.redis_timeout_ms > 0).then(|| Duration::from_millis(knobs.redis_timeout_ms));
        let wait = Duration::from_millis(knobs.redis_pool_timeout_ms);
        let timeouts = Timeouts {
            wait: Some(wait),
            create: op_timeout,
            recycle: op_timeout,
        };
        let work = async {
            let mut conn = self.pool.timeout_get(&timeouts).await.map_err(|e| match e {
                PoolError::Timeout(deadpool_redis::TimeoutType::Wait) => RedisError::PoolTimeout(wait),
                PoolError::Timeout(_) => RedisError::Timeout(op_timeout.unwrap_or_default()),
                e => RedisError::Pool(e),
            })?;
            op(&mut conn).await.map_err(RedisError::Command)
        };
        let result = match op_timeout {
            Some(after) => tokio::time::timeout(after, work)
                .await
                .unwrap_or(Err(RedisError::Timeout(after))),
            None => work.await,
        };
        if let Err(e) = &result {
            self.metrics.errors.with_label_values(&[e.kind()]).inc();
        }
        result
    }

    pub async fn get(&self, knobs: &Knobs, key: &str) -> Result<Option<String>, RedisError> {
        self.run(knobs, async |c| c.get(key).await).await
    }

    pub async fn set_px(&self, knobs: &Knobs, key: &str, value: &str, ttl: Duration) -> Result<(), RedisError> {
        let ms = ttl.as_millis().max(1) as u64;
        self.run(knobs, async |c| c.pset_ex(key, value, ms).await).await
    }

    /// Deletes every key under the prefix; returns how many.
    pub async fn flush_prefix(&self, knobs: &Knobs) -> Result<u64, RedisError> {
        let pattern = format!("{}*", glob_escape(&self.prefix));
        self.run(knobs, async |c| {
            let mut deleted = 0u64;
            let mut cursor = 0u64;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(c)
                    .await?;
                if !keys.is_empty() {
                    deleted += c.unlink::<_, u64>(&keys).await?;
                }
                if next == 0 {
                    return Ok(deleted);
                }
                cursor = next;
            }
        })
        .await
    }

    /// Samples the pool into the gauges (called at scrape time).
    pub fn refresh_gauges(&self) {
        let s = self.pool.status();
        let idle = s.available.min(s.size);
        self.metrics
            .connections
            .with_label_values(&["in_use"])
            .set((s.size - idle) as i64);
        self.metrics.connections.with_label_values(&["idle"]).set(idle as i64);
        self.metrics.waiting.set(s.waiting as i64);
    }
}

/// Escapes the glob characters of `SCAN MATCH` so the prefix matches literally.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}
