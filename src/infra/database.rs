//! The database pool: SQLite (embedded default) or PostgreSQL, sized like SQLAlchemy's
//! `pool_size + max_overflow` with an acquire timeout (`DB_POOL_TIMEOUT`). Every acquire goes
//! through [`Database::acquire`], which is where pool starvation becomes measurable: waiters,
//! the wait histogram and the acquire-timeout counter move here.
//!
//! Readiness uses a separate one-connection probe pool, so a starved main pool (a scenario) never
//! fails `/ready` while the database itself is reachable.

use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{ConnectOptions, PgPool, Postgres, Sqlite, SqlitePool};

use crate::error::AppError;
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
    pool: Pool,
    probe: Pool,
    max_connections: u32,
    acquire_timeout: Duration,
    metrics: DbMetrics,
}

impl Database {
    /// Opens the pool described by the settings and runs the migrations.
    pub async fn connect(settings: &Settings, registry: &Registry) -> anyhow::Result<Self> {
        let url = settings.effective_database_url();
        let max = settings.db_max_connections();
        let (pool, probe) = if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(&url)
                .with_context(|| "DATABASE_URL is not a valid sqlite URL")?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(5))
                .disable_statement_logging();
            let pool = SqlitePoolOptions::new()
                .max_connections(max)
                .min_connections(settings.db_pool_size)
                .acquire_timeout(settings.db_acquire_timeout())
                .test_before_acquire(false)
                .connect_with(opts.clone())
                .await
                .with_context(|| format!("cannot open the SQLite database {}", redact(&url)))?;
            sqlx::migrate!("./migrations/sqlite")
                .run(&pool)
                .await
                .context("running SQLite migrations")?;
            let probe = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(PROBE_TIMEOUT)
                .connect_lazy_with(opts);
            (Pool::Sqlite(pool), Pool::Sqlite(probe))
        } else {
            let opts = PgConnectOptions::from_str(&url)
                .with_context(|| "DATABASE_URL is not a valid postgres URL")?
                .application_name(APPLICATION_NAME)
                .disable_statement_logging();
            let pool = PgPoolOptions::new()
                .max_connections(max)
                .min_connections(settings.db_pool_size)
                .acquire_timeout(settings.db_acquire_timeout())
                .test_before_acquire(false)
                .connect_with(opts.clone())
                .await
                .with_context(|| format!("cannot connect to PostgreSQL at {}", redact(&url)))?;
            sqlx::migrate!("./migrations/postgres")
                .run(&pool)
                .await
                .context("running PostgreSQL migrations")?;
            let probe = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(PROBE_TIMEOUT)
                .idle_timeout(Duration::from_secs(60))
                .connect_lazy_with(opts.application_name(PROBE_APPLICATION_NAME));
            (Pool::Pg(pool), Pool::Pg(probe))
        };
        let metrics = DbMetrics::new(registry);
        metrics.max.set(i64::from(max));
        Ok(Self {
            pool,
            probe,
            max_connections: max,
            acquire_timeout: settings.db_acquire_timeout(),
            metrics,
        })
    }

    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Pg(_) => Backend::Postgres,
            Pool::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Acquires a pooled connection, recording the wait. Gives up after the acquire timeout
    /// with [`AppError::PoolTimeout`]; the time waited is returned with the connection.
    pub async fn acquire(&self) -> Result<(Conn, Duration), AppError> {
        let start = Instant::now();
        // Counts the waiter for as long as it waits, even if its request is cancelled mid-wait.
        let waiting = GaugeGuard::new(&self.metrics.waiting);
        let result = match &self.pool {
            Pool::Pg(p) => p.acquire().await.map(Conn::Pg),
            Pool::Sqlite(p) => p.acquire().await.map(Conn::Sqlite),
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
                Pool::Pg(p) => sqlx::query("SELECT 1").execute(p).await.map(|_| ()),
                Pool::Sqlite(p) => sqlx::query("SELECT 1").execute(p).await.map(|_| ()),
            }
        };
        tokio::time::timeout(PROBE_TIMEOUT, run)
            .await
            .unwrap_or(Err(sqlx::Error::PoolTimedOut))
    }

    /// Pool occupancy right now.
    pub fn stats(&self) -> PoolStats {
        let (size, idle) = match &self.pool {
            Pool::Pg(p) => (p.size(), p.num_idle() as u32),
            Pool::Sqlite(p) => (p.size(), p.num_idle() as u32),
        };
        PoolStats {
            max_connections: self.max_connections,
            open: size,
            idle,
            in_use: size.saturating_sub(idle),
            waiting: self.metrics.waiting.get().max(0) as u64,
            acquire_timeout_ms: self.acquire_timeout.as_millis() as u64,
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
        for pool in [&self.pool, &self.probe] {
            match pool {
                Pool::Pg(p) => p.close().await,
                Pool::Sqlite(p) => p.close().await,
            }
        }
    }
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PoolStats {
    pub max_connections: u32,
    pub open: u32,
    pub idle: u32,
    pub in_use: u32,
    pub waiting: u64,
    pub acquire_timeout_ms: u64,
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
