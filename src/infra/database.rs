//! The database pool: SQLite (embedded default) or PostgreSQL, sized like SQLAlchemy's
//! `pool_size + max_overflow` with an acquire timeout (`DB_POOL_TIMEOUT`). Every acquire goes
//! through [`Database::acquire`], which is where pool starvation becomes measurable: waiters,
//! the wait histogram and the acquire-timeout counter move here.
//!
//! Readiness uses a separate one-connection probe pool, so a starved main pool (a scenario) never
//! fails `/ready` while the database itself is reachable.
//!
//! Live resizing (knobs `db_pool_size`, `db_max_overflow`): a new pool is built and swapped in;
//! the old one closes in the background once its checked-out connections come back, and a waiter
//! caught on the old pool moves to the new one, so no request fails because of the swap. The
//! acquire timeout (`db_pool_timeout_ms`) is enforced here, per acquire, so it changes instantly.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, PgPool, Postgres, Sqlite, SqlitePool};

use crate::error::AppError;
use crate::knobs::Knobs;
use crate::settings::Settings;
use crate::telemetry::{register, GaugeGuard, LATENCY_BUCKETS};

/// Application name the pool's connections carry (visible in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "chokepoint";
const PROBE_APPLICATION_NAME: &str = "chokepoint-probe";
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Postgres,
    Sqlite,
}

#[derive(Clone)]
enum Pool {
    Pg(PgPool),
    Sqlite(SqlitePool),
}

impl Pool {
    async fn close(&self) {
        match self {
            Pool::Pg(p) => p.close().await,
            Pool::Sqlite(p) => p.close().await,
        }
    }
}

/// How to open connections, kept to rebuild the pool with a new size.
#[derive(Clone)]
enum ConnectOpts {
    Pg(PgConnectOptions),
    Sqlite(SqliteConnectOptions),
}

/// The pool's own acquire timeout is only a backstop: the knob is enforced per acquire.
const POOL_BACKSTOP_TIMEOUT: Duration = Duration::from_secs(3600);

/// A pooled connection of either backend; returned to the pool when dropped.
pub enum Conn {
    Pg(PoolConnection<Postgres>),
    Sqlite(PoolConnection<Sqlite>),
}

#[derive(Clone)]
struct DbMetrics {
    max: IntGauge,
    connections: IntGaugeVec,
    waiting: IntGauge,
    acquire_wait: Histogram,
    acquire_timeouts: IntCounter,
}

impl DbMetrics {
    fn new(registry: &Registry) -> Self {
        Self {
            max: register(
                registry,
                IntGauge::new(
                    "db_pool_max_connections",
                    "Connections the pool may open (pool size + overflow)",
                )
                .unwrap(),
            ),
            connections: register(
                registry,
                IntGaugeVec::new(
                    Opts::new("db_pool_connections", "Open pool connections by state (in_use, idle)"),
                    &["state"],
                )
                .unwrap(),
            ),
            waiting: register(
                registry,
                IntGauge::new("db_pool_waiting", "Requests waiting for a pooled connection right now").unwrap(),
            ),
            acquire_wait: register(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "db_pool_acquire_wait_seconds",
                        "Time spent waiting for a pooled connection",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )
                .unwrap(),
            ),
            acquire_timeouts: register(
                registry,
                IntCounter::new(
                    "db_pool_acquire_timeouts_total",
                    "Acquires that gave up after the acquire timeout",
                )
                .unwrap(),
            ),
        }
    }
}

pub struct Database {
    pool: ArcSwap<Pool>,
    probe: Pool,
    opts: ConnectOpts,
    /// (size, overflow) of the current pool.
    shape: std::sync::Mutex<(u32, u32)>,
    metrics: DbMetrics,
}

impl Database {
    /// Opens the pool described by the knobs (at the database the settings name) and runs the
    /// migrations.
    pub async fn connect(settings: &Settings, knobs: &Knobs, registry: &Registry) -> anyhow::Result<Self> {
        let url = settings.effective_database_url();
        let (opts, probe) = if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(&url)
                .with_context(|| "DATABASE_URL is not a valid sqlite URL")?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // WAL's usual pairing: commits do not wait for fsync (a lab, not a ledger), so
                // the single writer is not the bottleneck the scenarios measure.
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                .disable_statement_logging();
            let probe = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(PROBE_TIMEOUT)
                .connect_lazy_with(opts.clone());
            (ConnectOpts::Sqlite(opts), Pool::Sqlite(probe))
        } else {
            let opts = PgConnectOptions::from_str(&url)
                .with_context(|| "DATABASE_URL is not a valid postgres URL")?
                .application_name(APPLICATION_NAME)
                .disable_statement_logging();
            let probe = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(PROBE_TIMEOUT)
                .idle_timeout(Duration::from_secs(60))
                .connect_lazy_with(opts.clone().application_name(PROBE_APPLICATION_NAME));
            (ConnectOpts::Pg(opts), Pool::Pg(probe))
        };
        let within = Duration::from_millis(knobs.db_pool_timeout_ms).max(Duration::from_secs(5));
        check_reachable(&opts, within).await.with_context(|| match &opts {
            ConnectOpts::Pg(_) => format!("cannot connect to PostgreSQL at {}", redact(&url)),
            ConnectOpts::Sqlite(_) => format!("cannot open the SQLite database {}", redact(&url)),
        })?;
        let pool = build_pool(&opts, knobs.db_pool_size, knobs.db_max_overflow);
        match &pool {
            _ if settings.skip_migrations => tracing::info!("SKIP_MIGRATIONS: not running the migrations"),
            Pool::Pg(p) => sqlx::migrate!("./migrations/postgres")
                .run(p)
                .await
                .context("running PostgreSQL migrations")?,
            Pool::Sqlite(p) => sqlx::migrate!("./migrations/sqlite")
                .run(p)
                .await
                .context("running SQLite migrations")?,
        }
        let metrics = DbMetrics::new(registry);
        metrics.max.set(i64::from(knobs.db_pool_size + knobs.db_max_overflow));
        Ok(Self {
            pool: ArcSwap::from_pointee(pool),
            probe,
            opts,
            shape: std::sync::Mutex::new((knobs.db_pool_size, knobs.db_max_overflow)),
            metrics,
        })
    }

    /// Rebuilds the pool when size or overflow changed; the old pool drains in the background.
    pub fn apply(&self, knobs: &Knobs) {
        let wanted = (knobs.db_pool_size, knobs.db_max_overflow);
        if *self.shape.lock().unwrap_or_else(|p| p.into_inner()) == wanted {
            return;
        }
        let new = build_pool(&self.opts, wanted.0, wanted.1);
        let old = self.pool.swap(Arc::new(new));
        *self.shape.lock().unwrap_or_else(|p| p.into_inner()) = wanted;
        self.metrics.max.set(i64::from(wanted.0 + wanted.1));
        tracing::info!(
            size = wanted.0,
            overflow = wanted.1,
            "database pool resized; draining the old pool"
        );
        tokio::spawn(async move {
            // Waits for connections still checked out (in-flight queries) to come back.
            old.close().await;
            tracing::debug!("old database pool closed");
        });
    }

    pub fn backend(&self) -> Backend {
        match self.opts {
            ConnectOpts::Pg(_) => Backend::Postgres,
            ConnectOpts::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Acquires a pooled connection, recording the wait. Gives up after `timeout` (the knob
    /// `db_pool_timeout_ms`) with [`AppError::PoolTimeout`]; the time waited is returned with
    /// the connection.
    pub async fn acquire(&self, timeout: Duration) -> Result<(Conn, Duration), AppError> {
        let start = Instant::now();
        // Counts the waiter for as long as it waits, even if its request is cancelled mid-wait.
        let waiting = GaugeGuard::new(&self.metrics.waiting);
        let result = loop {
            let pool = self.pool.load_full();
            let left = timeout.saturating_sub(start.elapsed());
            let attempt = async {
                match &*pool {
                    Pool::Pg(p) => p.acquire().await.map(Conn::Pg),
                    Pool::Sqlite(p) => p.acquire().await.map(Conn::Sqlite),
                }
            };
            match tokio::time::timeout(left, attempt).await {
                Err(_) => break Err(sqlx::Error::PoolTimedOut),
                // Caught on a pool that was swapped out: wait on the new one instead.
                Ok(Err(sqlx::Error::PoolClosed)) if !Arc::ptr_eq(&pool, &self.pool.load_full()) => continue,
                Ok(r) => break r,
            }
        };
        drop(waiting);
        let waited = start.elapsed();
        self.metrics.acquire_wait.observe(waited.as_secs_f64());
        match result {
            Ok(conn) => Ok((conn, waited)),
            Err(sqlx::Error::PoolTimedOut) => {
                self.metrics.acquire_timeouts.inc();
                Err(AppError::PoolTimeout { waited })
            }
            Err(e) => Err(AppError::Database(e)),
        }
    }

    /// Runs `SELECT 1` on the probe pool: is the database reachable at all?
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        let run = async {
            match &self.probe {
                // The simple protocol: safe behind PgBouncer in transaction mode.
                Pool::Pg(p) => sqlx::raw_sql("SELECT 1").execute(p).await.map(|_| ()),
                Pool::Sqlite(p) => sqlx::raw_sql("SELECT 1").execute(p).await.map(|_| ()),
            }
        };
        tokio::time::timeout(PROBE_TIMEOUT, run)
            .await
            .unwrap_or(Err(sqlx::Error::PoolTimedOut))
    }

    /// Pool occupancy right now.
    pub fn stats(&self) -> PoolStats {
        let (size, idle) = match &**self.pool.load() {
            Pool::Pg(p) => (p.size(), p.num_idle() as u32),
            Pool::Sqlite(p) => (p.size(), p.num_idle() as u32),
        };
        let (kept, overflow) = *self.shape.lock().unwrap_or_else(|p| p.into_inner());
        PoolStats {
            max_connections: kept + overflow,
            open: size,
            idle,
            in_use: size.saturating_sub(idle),
            waiting: self.metrics.waiting.get().max(0) as u64,
        }
    }

    /// Samples the pool into the gauges (called at scrape time).
    pub fn refresh_gauges(&self) {
        let s = self.stats();
        self.metrics
            .connections
            .with_label_values(&["in_use"])
            .set(i64::from(s.in_use));
        self.metrics
            .connections
            .with_label_values(&["idle"])
            .set(i64::from(s.idle));
    }

    /// Closes both pools, waiting for checked-out connections to come back.
    pub async fn close(&self) {
        self.pool.load_full().close().await;
        self.probe.close().await;
    }
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PoolStats {
    pub max_connections: u32,
    pub open: u32,
    pub idle: u32,
    pub in_use: u32,
    pub waiting: u64,
}

/// A pool of `size` kept + `overflow` extra connections, opened lazily (the kept ones are
/// opened in the background).
fn build_pool(opts: &ConnectOpts, size: u32, overflow: u32) -> Pool {
    match opts {
        ConnectOpts::Pg(o) => Pool::Pg(
            PgPoolOptions::new()
                .max_connections(size + overflow)
                .min_connections(size)
                .acquire_timeout(POOL_BACKSTOP_TIMEOUT)
                .test_before_acquire(false)
                .connect_lazy_with(o.clone()),
        ),
        ConnectOpts::Sqlite(o) => Pool::Sqlite(
            SqlitePoolOptions::new()
                .max_connections(size + overflow)
                .min_connections(size)
                .acquire_timeout(POOL_BACKSTOP_TIMEOUT)
                .test_before_acquire(false)
                .connect_lazy_with(o.clone()),
        ),
    }
}

/// Opens one connection outside any pool, so an unreachable database fails start-up with its
/// real cause (refused, unknown host, bad password) instead of a pool timeout.
async fn check_reachable(opts: &ConnectOpts, within: Duration) -> anyhow::Result<()> {
    let connect = async {
        match opts {
            ConnectOpts::Pg(o) => o.connect().await.map(|_| ()),
            ConnectOpts::Sqlite(o) => o.connect().await.map(|_| ()),
        }
    };
    match tokio::time::timeout(within, connect).await {
        Ok(result) => Ok(result?),
        Err(_) => anyhow::bail!("no connection within {} ms", within.as_millis()),
    }
}

/// The URL without its password, for error messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &url[scheme_end + 3..at];
            match creds.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme_end + 3], &creds[..colon], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
    }
}
