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
//!
//! Reachability: a monitor pings the probe pool every [`MONITOR_EVERY`] and keeps `db_up`. While
//! the server is unreachable (refused, reset, closed, stalled past the probe timeout), acquires
//! fail at once with 503 `db_unavailable` and waiters already queued are told the same, instead
//! of hanging until the acquire timeout and being reported as pool exhaustion. A busy pool on a
//! reachable database queues exactly as before (the scenario).
//!
//! Release-time guard: a request cancelled while sqlx's `BEGIN` round trip is in flight (client
//! gone, `request_timeout_*`) leaves its connection inside a transaction that sqlx does not know
//! about (sqlx #4385/#4393). Returned to the pool as is, the next request on it writes into that
//! transaction and is acknowledged, and the rows vanish when the connection closes; after any
//! error in it, every query on the connection fails. So every connection is checked on release
//! ([`release_check`]): a transaction still open is rolled back, a connection that cannot be
//! made clean is discarded (`db_connections_recovered_total{action}`), whatever the sqlx version.
//! The knob `db_skip_release_check` turns the guard off, for the poisoned-pool scenario only.
//!
//! Every acquire is a [`Checkout`] registered with its holder ([`crate::infra::checkout`]): hold
//! times, connections held too long, the leak detector and the connection-leak scenario's leaks.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Executor, PgConnection, PgPool, Row, SqliteConnection, SqlitePool};

use crate::error::AppError;
use crate::infra::checkout::{Checkout, Checkouts};
use crate::knobs::Knobs;
use crate::lifecycle::Lifecycle;
use crate::settings::{redact, Settings};
use crate::telemetry::{register, GaugeGuard, LATENCY_BUCKETS};

/// Runs `$body` inside a transaction on the PostgreSQL connection `$c` (a `&mut
/// PoolConnection<Postgres>`), with `$tx` bound to it, and commits. Every statement the lab sends
/// outside a transaction of its own goes through here, unnamed (`.persistent(false)`): sqlx sends
/// an unnamed statement's Parse/Describe and its Bind/Execute as two round trips, and PgBouncer in
/// transaction mode may hand them to two server connections ("unnamed prepared statement does not
/// exist") unless a transaction pins them; named (cached) statements break without
/// `max_prepared_statements` (PgBouncer < 1.21). Cost on a direct connection: BEGIN and COMMIT.
#[macro_export]
macro_rules! pg_tx {
    ($c:expr, $tx:ident => $body:expr) => {{
        let mut $tx = sqlx::Connection::begin(&mut **$c).await?;
        let out = $body;
        $tx.commit().await?;
        out
    }};
}

/// Runs `$body` with `$c` bound to the pooled connection of either backend (a `&mut Conn`
/// match; the SQL is shared: `$n` placeholders work on both).
#[macro_export]
macro_rules! on_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::infra::database::Conn::Pg($c) => $body,
            $crate::infra::database::Conn::Sqlite($c) => $body,
        }
    };
}

/// Application name the pool's connections carry (visible in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "chokepoint";
const PROBE_APPLICATION_NAME: &str = "chokepoint-probe";
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the monitor pings the database (the time `db_up` and `/ready` take to notice).
pub const MONITOR_EVERY: Duration = Duration::from_millis(250);

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

/// A pooled connection of either backend (declared beside [`Checkout`], which wraps it).
pub use crate::infra::checkout::Conn;

#[derive(Clone)]
struct DbMetrics {
    max: IntGauge,
    connections: IntGaugeVec,
    waiting: IntGauge,
    acquire_wait: Histogram,
    acquire_timeouts: IntCounter,
    /// Connections found dirty on release (a transaction left open by a cancelled request).
    recovered: IntCounterVec,
    up: IntGauge,
    unavailable: IntCounter,
    /// Queries refused with 25P02: a connection inside an aborted transaction (poisoned-pool).
    poisoned: IntCounter,
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
            recovered: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "db_connections_recovered_total",
                        "Connections returned to the pool inside a transaction (a cancelled request): \
                         rolled back, or discarded when that failed",
                    ),
                    &["action"],
                )
                .unwrap(),
            ),
            up: register(
                registry,
                IntGauge::new(
                    "db_up",
                    "1 while the database answers the monitor's ping, 0 while it is unreachable",
                )
                .unwrap(),
            ),
            unavailable: register(
                registry,
                IntCounter::new(
                    "db_unavailable_total",
                    "Acquires refused because the database was unreachable (503 db_unavailable)",
                )
                .unwrap(),
            ),
            poisoned: register(
                registry,
                IntCounter::new(
                    "db_poisoned_errors_total",
                    "Requests failed with 25P02 (current transaction is aborted): a pooled connection left inside an aborted transaction by an earlier request (poisoned-pool scenario)",
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
    /// `true` while the monitor finds the database unreachable, and until start-up reached it.
    down: tokio::sync::watch::Sender<bool>,
    /// `Some(what start-up last saw)` until the database is reached and migrated; `None` after.
    starting: tokio::sync::watch::Sender<Option<String>>,
    redacted_url: String,
    skip_migrations: bool,
    /// Bound on one start-up connection attempt.
    connect_within: Duration,
    /// Runs the monitor and the old pools' drains.
    lifecycle: Lifecycle,
    /// Who holds which connection (hold times, leak detector, leaks).
    checkouts: Arc<Checkouts>,
    /// `db_skip_release_check`: the release-time guard is off (poisoned-pool only).
    skip_release_check: Arc<AtomicBool>,
}

impl Database {
    /// Opens the pool described by the knobs (at the database the settings name) and runs the
    /// migrations, retrying an unreachable PostgreSQL for up to `DB_STARTUP_TIMEOUT` (the
    /// `migrate` subcommand; `serve` uses [`Database::open`], [`Database::establish_once`] and
    /// [`Database::retry_establish`] so it can serve its probes meanwhile).
    pub async fn connect(
        settings: &Settings,
        knobs: &Knobs,
        registry: &Registry,
        lifecycle: &Lifecycle,
    ) -> anyhow::Result<Self> {
        let db = Self::open(settings, knobs, registry, lifecycle)?;
        if let Err(first) = db.establish_once().await {
            if !db.retries_at_startup(settings.db_startup_timeout()) {
                return Err(first);
            }
            db.retry_establish(first, settings.db_startup_timeout()).await?;
        }
        Ok(db)
    }

    /// The database, not connected yet: the pool is lazy, DB routes answer 503 `db_unavailable`
    /// and `/ready` fails until [`Database::establish_once`] (or the retry) succeeds.
    pub fn open(
        settings: &Settings,
        knobs: &Knobs,
        registry: &Registry,
        lifecycle: &Lifecycle,
    ) -> anyhow::Result<Self> {
        let url = settings.effective_database_url();
        let (opts, probe) = if url.starts_with("sqlite:") {
            let mut opts = SqliteConnectOptions::from_str(&url)
                .with_context(|| "DATABASE_URL is not a valid sqlite URL")?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // WAL's usual pairing: commits do not wait for fsync (a lab, not a ledger), so
                // the single writer is not the bottleneck the scenarios measure.
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                .disable_statement_logging();
            if let Some(pages) = settings.sqlite_max_page_count {
                opts = opts.pragma("max_page_count", pages.to_string());
            }
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
        let metrics = DbMetrics::new(registry);
        for action in ["rolled_back", "discarded"] {
            metrics.recovered.with_label_values(&[action]);
        }
        let skip_release_check = Arc::new(AtomicBool::new(knobs.db_skip_release_check));
        let pool = build_pool(
            &opts,
            knobs.db_pool_size,
            knobs.db_max_overflow,
            &metrics.recovered,
            &skip_release_check,
        );
        let checkouts = Checkouts::new(registry, knobs.db_leak_detect_ms);
        checkouts.start_detector(lifecycle);
        metrics.max.set(i64::from(knobs.db_pool_size + knobs.db_max_overflow));
        metrics.up.set(0);
        Ok(Self {
            pool: ArcSwap::from_pointee(pool),
            probe,
            opts,
            shape: std::sync::Mutex::new((knobs.db_pool_size, knobs.db_max_overflow)),
            metrics,
            down: tokio::sync::watch::Sender::new(true),
            starting: tokio::sync::watch::Sender::new(Some("connecting".into())),
            redacted_url: redact(&url),
            skip_migrations: settings.skip_migrations,
            connect_within: Duration::from_millis(knobs.db_pool_timeout_ms).max(Duration::from_secs(5)),
            lifecycle: lifecycle.clone(),
            checkouts,
            skip_release_check,
        })
    }

    /// One attempt: reach the database, run the migrations, start the reachability monitor.
    pub async fn establish_once(&self) -> anyhow::Result<()> {
        check_reachable(&self.opts, self.connect_within)
            .await
            .with_context(|| self.cannot_connect())?;
        match &*self.pool.load_full() {
            _ if self.skip_migrations => tracing::info!("SKIP_MIGRATIONS: not running the migrations"),
            Pool::Pg(p) => sqlx::migrate!("./migrations/postgres")
                .run(p)
                .await
                .context("running PostgreSQL migrations")?,
            Pool::Sqlite(p) => sqlx::migrate!("./migrations/sqlite")
                .run(p)
                .await
                .context("running SQLite migrations")?,
        }
        self.metrics.up.set(1);
        self.down.send_replace(false);
        self.starting.send_replace(None);
        self.lifecycle
            .spawn_background(monitor(self.probe.clone(), self.down.clone(), self.metrics.up.clone()));
        Ok(())
    }

    /// Whether a failed first attempt is retried for `window` (`DB_STARTUP_TIMEOUT`): PostgreSQL
    /// only (an SQLite file that cannot be opened now will not open later), and not with 0.
    pub fn retries_at_startup(&self, window: Duration) -> bool {
        !window.is_zero() && self.backend() == Backend::Postgres
    }

    /// After a failed first attempt that [`Database::retries_at_startup`]: tries again with backoff
    /// (0.25 s doubling to 5 s) until it succeeds or `window` has passed. The error names the
    /// attempts and the window.
    pub async fn retry_establish(&self, first: anyhow::Error, window: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut last = first;
        let mut pause = Duration::from_millis(250);
        for attempt in 2u32.. {
            let left = window.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(last.context(format!(
                    "gave up after {} attempts in {} s (DB_STARTUP_TIMEOUT={})",
                    attempt - 1,
                    start.elapsed().as_secs(),
                    window.as_secs()
                )));
            }
            let status = format!(
                "waiting for the database: attempt {} failed ({}); next in {} ms, giving up in {} s",
                attempt - 1,
                crate::error::chain_text(&last),
                pause.as_millis(),
                left.as_secs()
            );
            tracing::warn!(attempt = attempt - 1, retry_in_ms = pause.as_millis() as u64,
                error = %crate::error::chain_text(&last), "database not reachable yet; serving /health, /ready fails until it is");
            self.starting.send_replace(Some(status));
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_secs(5));
            match self.establish_once().await {
                Ok(()) => {
                    tracing::info!(
                        attempt,
                        waited_ms = start.elapsed().as_millis() as u64,
                        "database connected"
                    );
                    return Ok(());
                }
                Err(e) => last = e,
            }
        }
        unreachable!("the attempt counter is unbounded")
    }

    fn cannot_connect(&self) -> String {
        match &self.opts {
            ConnectOpts::Pg(_) => format!("cannot connect to PostgreSQL at {}", self.redacted_url),
            ConnectOpts::Sqlite(_) => format!("cannot open the SQLite database {}", self.redacted_url),
        }
    }

    /// While start-up is still trying to reach the database: what it last saw.
    pub fn starting(&self) -> Option<String> {
        self.starting.borrow().clone()
    }

    /// Resolves once the database has been reached and migrated.
    pub async fn wait_established(&self) {
        let _ = self.starting.subscribe().wait_for(Option::is_none).await;
    }

    /// Rebuilds the pool when size or overflow changed; the old pool drains in the background.
    pub fn apply(&self, knobs: &Knobs) {
        self.checkouts.set_detect_ms(knobs.db_leak_detect_ms);
        let skip = knobs.db_skip_release_check;
        if self.skip_release_check.swap(skip, Ordering::Relaxed) != skip && skip {
            tracing::warn!(
                "db_skip_release_check is on: connections go back to the pool unchecked; a request \
                 cancelled during BEGIN can poison one (the poisoned-pool scenario; never outside the lab)"
            );
        }
        let wanted = (knobs.db_pool_size, knobs.db_max_overflow);
        if *self.shape.lock().unwrap_or_else(|p| p.into_inner()) == wanted {
            return;
        }
        let new = build_pool(
            &self.opts,
            wanted.0,
            wanted.1,
            &self.metrics.recovered,
            &self.skip_release_check,
        );
        let old = self.pool.swap(Arc::new(new));
        *self.shape.lock().unwrap_or_else(|p| p.into_inner()) = wanted;
        self.metrics.max.set(i64::from(wanted.0 + wanted.1));
        tracing::info!(
            size = wanted.0,
            overflow = wanted.1,
            "database pool resized; draining the old pool"
        );
        self.lifecycle.spawn(async move {
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
    pub async fn acquire(&self, timeout: Duration) -> Result<(Checkout, Duration), AppError> {
        let start = Instant::now();
        let mut down = self.down.subscribe();
        if *down.borrow_and_update() {
            return Err(self.unreachable());
        }
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
            let attempt = async {
                tokio::select! {
                    r = attempt => Some(r),
                    _ = down.wait_for(|d| *d) => None,
                }
            };
            match tokio::time::timeout(left, attempt).await {
                Err(_) => break Err(sqlx::Error::PoolTimedOut),
                Ok(None) => {
                    drop(waiting);
                    return Err(self.unreachable());
                }
                Ok(Some(r)) => match r {
                    // Caught on a pool that was swapped out: wait on the new one instead.
                    Err(sqlx::Error::PoolClosed) if !Arc::ptr_eq(&pool, &self.pool.load_full()) => continue,
                    r => break r,
                },
            }
        };
        drop(waiting);
        let waited = start.elapsed();
        self.metrics.acquire_wait.observe(waited.as_secs_f64());
        match result {
            Ok(conn) => Ok((self.checkouts.check_out(conn), waited)),
            Err(sqlx::Error::PoolTimedOut) => {
                self.metrics.acquire_timeouts.inc();
                Err(AppError::PoolTimeout { waited })
            }
            Err(e) => Err(AppError::Database(e)),
        }
    }

    fn unreachable(&self) -> AppError {
        self.metrics.unavailable.inc();
        let detail = match self.starting() {
            Some(_) => "the database is not connected yet (start-up keeps retrying, DB_STARTUP_TIMEOUT); \
                        not waiting for the pool"
                .into(),
            None => "the database is unreachable (the monitor's ping fails); not waiting for the pool".into(),
        };
        AppError::Unavailable {
            code: "db_unavailable",
            detail,
        }
    }

    /// Who holds which connection: the leak detector and the connection-leak scenario's leaks.
    pub fn checkouts(&self) -> &Arc<Checkouts> {
        &self.checkouts
    }

    /// Keeps `checkout` for `hold` past its request (see [`Checkouts::leak`]).
    pub fn leak<F, Fut>(&self, checkout: Checkout, hold: Duration, finish: F)
    where
        F: FnOnce(Checkout) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.checkouts.leak(&self.lifecycle, checkout, hold, finish);
    }

    /// Counts a request that failed on a poisoned connection (25P02), reported by the edge.
    pub fn count_poisoned(&self) {
        self.metrics.poisoned.inc();
    }

    /// Whether the monitor currently finds the database unreachable.
    pub fn is_down(&self) -> bool {
        *self.down.borrow()
    }

    /// Runs `SELECT 1` on the probe pool: is the database reachable at all?
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        ping_probe(&self.probe).await
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
        self.checkouts.refresh_gauges();
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

async fn ping_probe(probe: &Pool) -> Result<(), sqlx::Error> {
    let run = async {
        match probe {
            // The simple protocol: safe behind PgBouncer in transaction mode.
            Pool::Pg(p) => sqlx::raw_sql("SELECT 1").execute(p).await.map(|_| ()),
            Pool::Sqlite(p) => sqlx::raw_sql("SELECT 1").execute(p).await.map(|_| ()),
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, run)
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut))
}

/// Pings every [`MONITOR_EVERY`] and publishes reachability. Only a connection failure or a
/// stalled server counts as down: a server refusing for a reason of its own (`too many clients`,
/// the db-replicas scenario) is up.
async fn monitor(probe: Pool, down: tokio::sync::watch::Sender<bool>, up: IntGauge) {
    loop {
        tokio::time::sleep(MONITOR_EVERY).await;
        let is_down = match ping_probe(&probe).await {
            Ok(()) => false,
            // A dead socket reused once: ask again on a fresh connection before deciding.
            Err(e) if crate::error::db_failure(&e) == crate::error::DbFailure::Unreachable => {
                ping_probe(&probe).await.is_err_and(|e| {
                    matches!(e, sqlx::Error::PoolTimedOut)
                        || crate::error::db_failure(&e) == crate::error::DbFailure::Unreachable
                })
            }
            Err(sqlx::Error::PoolTimedOut) => true,
            Err(_) => false,
        };
        if *down.borrow() != is_down {
            if is_down {
                tracing::error!("database unreachable: DB routes answer 503 db_unavailable until it returns");
            } else {
                tracing::info!("database reachable again");
            }
            down.send_replace(is_down);
        }
        up.set(i64::from(!is_down));
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
/// Every released connection goes through [`release_check`] unless `skip` is set.
fn build_pool(opts: &ConnectOpts, size: u32, overflow: u32, recovered: &IntCounterVec, skip: &Arc<AtomicBool>) -> Pool {
    let (recovered, skip) = (recovered.clone(), skip.clone());
    match opts {
        ConnectOpts::Pg(o) => Pool::Pg(
            pool_options(size, overflow)
                .after_release(move |conn, _| {
                    let (recovered, skip) = (recovered.clone(), skip.clone());
                    Box::pin(async move {
                        Ok(skip.load(Ordering::Relaxed) || release_check(Released::Pg(conn), &recovered).await)
                    })
                })
                .connect_lazy_with(o.clone()),
        ),
        ConnectOpts::Sqlite(o) => Pool::Sqlite(
            pool_options(size, overflow)
                .after_release(move |conn, _| {
                    let (recovered, skip) = (recovered.clone(), skip.clone());
                    Box::pin(async move {
                        Ok(skip.load(Ordering::Relaxed) || release_check(Released::Sqlite(conn), &recovered).await)
                    })
                })
                .connect_lazy_with(o.clone()),
        ),
    }
}

/// The shape both backends' pools share.
fn pool_options<DB: sqlx::Database>(size: u32, overflow: u32) -> sqlx::pool::PoolOptions<DB> {
    sqlx::pool::PoolOptions::new()
        .max_connections(size + overflow)
        .min_connections(size)
        .acquire_timeout(POOL_BACKSTOP_TIMEOUT)
        .test_before_acquire(false)
}

/// A connection on its way back to the pool.
enum Released<'c> {
    Pg(&'c mut PgConnection),
    Sqlite(&'c mut SqliteConnection),
}

/// Is the session still inside a transaction? Asked of the server, not of sqlx's own counter
/// (which is what a cancelled `BEGIN` gets wrong). On PostgreSQL, `transaction_timestamp()`
/// equals `statement_timestamp()` only in the first statement of a transaction, i.e. outside
/// an explicit one; an aborted transaction fails the query (25P02), which also counts as open.
/// On SQLite, `BEGIN` fails inside a transaction. Both are one round trip, in the simple
/// protocol (safe behind PgBouncer in transaction mode). Pending replies of a cut-off request
/// are drained by sqlx before the check runs.
async fn in_transaction(conn: &mut Released<'_>) -> bool {
    match conn {
        Released::Pg(c) => match c
            .fetch_one(sqlx::raw_sql("SELECT transaction_timestamp() <> statement_timestamp()"))
            .await
        {
            Ok(row) => row.try_get::<bool, _>(0).unwrap_or(true),
            Err(_) => true,
        },
        Released::Sqlite(c) => match c.execute(sqlx::raw_sql("BEGIN")).await {
            Ok(_) => {
                let _ = c.execute(sqlx::raw_sql("ROLLBACK")).await;
                false
            }
            Err(_) => true,
        },
    }
}

/// The release-time guard: `true` keeps the connection (clean, or rolled back to clean),
/// `false` discards it.
async fn release_check(mut conn: Released<'_>, recovered: &IntCounterVec) -> bool {
    if !in_transaction(&mut conn).await {
        return true;
    }
    let rolled_back = match &mut conn {
        Released::Pg(c) => c.execute(sqlx::raw_sql("ROLLBACK")).await.is_ok(),
        Released::Sqlite(c) => c.execute(sqlx::raw_sql("ROLLBACK")).await.is_ok(),
    };
    let clean = rolled_back && !in_transaction(&mut conn).await;
    let action = if clean { "rolled_back" } else { "discarded" };
    recovered.with_label_values(&[action]).inc();
    tracing::warn!(
        action,
        "a connection came back to the pool inside a transaction (a request was cancelled mid-query)"
    );
    clean
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

impl crate::knobs::ApplyKnobs for Database {
    fn apply_knobs(&self, knobs: &Knobs) {
        self.apply(knobs);
    }
}
