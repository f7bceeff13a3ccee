//! `burst` — the burst report: 1000 users POST `/api/v1/deployments/` at once; each creation is
//! synchronous work that holds a pooled connection (and, at its end, the lock on one shared
//! counter row), so requests queue for the pool until the 20 s request timeout: median 19 s,
//! 100% failures.
//!
//! `POST /api/v1/deployments/` creates a deployment in one transaction: replay check, then
//! `deploy_work_ms` of provisioning work holding the connection, then the deployment row, an
//! audit row, the shared counter bump (`sequence`, the hot row every writer locks), the final
//! status and a second audit row. `GET /api/v1/deployments/{id}` reads one back.
//!
//! Knobs: `deploy_mode` (`sync` answers 201 after the work; `async` answers 202 + `Location`
//! at once and workers drain a bounded queue, refusing with 503 + `Retry-After` when it is
//! full), `deploy_timeout_ms` (20 s like the report; 504), `deploy_work_ms`, and the pool knobs
//! of `db-pool`. The async side follows from the pool ([`Drain`]): `deploy_workers = 0` (the
//! default) is the pool's maximum less one connection kept for accepting, so the queue drains
//! at the pool's speed; `deploy_queue_max = 0` (hardened) bounds the queue by what those
//! workers can *start* within `deploy_timeout_ms`; a refusal's `Retry-After` is the time the
//! queue ahead takes to drain. An `Idempotency-Key` header makes a retried POST safe: the
//! key is unique in the table, so a retry answers with the deployment the first attempt created
//! (200, `Idempotent-Replayed: true`) and never creates a second one.
//!
//! Metrics: `deployments_total{mode,outcome}`, `deploy_queue_depth`, `deploy_workers_busy`,
//! `deploy_queue_wait_seconds`, `deploy_transaction_seconds`, `deploy_job_retries_total`,
//! `deploy_jobs_recovered_total`.
//!
//! An accepted (202) deployment always ends `succeeded` or `failed` with a reason: a worker
//! retries a job whose database work failed with exponential backoff (up to
//! [`JOB_ATTEMPTS`] attempts, then marks it `failed`), and a sweep every [`SWEEP_EVERY`]
//! re-queues `queued` rows that no worker of this process holds (accepted while the database
//! was failing, or left by a crashed process). Completing a job claims its row
//! (`status = 'queued'` → `succeeded`), so a job run twice completes once.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chokepoint_repro::plan::{Plan, Prediction, Target, Watch};
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};
use serde_json::json;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::apidoc::{int, nullable, obj, path_param, string, Op, POOL_TIMEOUT, STORAGE_FULL};
use crate::error::{AppError, AppResult};
use crate::infra::database::{Conn, Database};
use crate::knobs::{DeployMode, KnobStore, Knobs};
use crate::on_conn;
use crate::scenarios::{
    around, Alert, Gauge, Panel, Readings, Repro, RunConfig, Saturated, Scenario, AROUND, POOL_WAITING,
};
use crate::state::AppState;
use crate::telemetry::{register, LATENCY_BUCKETS};

/// The burst report's endpoint (the panel counts its async deployments as they complete).
pub const DEPLOYMENTS_ROUTE: &str = "/api/v1/deployments/";
/// A deployment's status, read back (polling: not work).
pub const STATUS_ROUTE: &str = "/api/v1/deployments/{id}";

pub fn router() -> Router<AppState> {
    Router::new()
        .route(DEPLOYMENTS_ROUTE, post(create))
        .route("/api/v1/deployments", post(create))
        .route(STATUS_ROUTE, get(show))
}

pub(crate) const NAME_LEN: std::ops::RangeInclusive<usize> = 1..=200;
pub(crate) const ENVIRONMENT_LEN: std::ops::RangeInclusive<usize> = 1..=64;
pub(crate) const REPLICAS: std::ops::RangeInclusive<i64> = 1..=100;
pub(crate) const IDEMPOTENCY_KEY_LEN: std::ops::RangeInclusive<usize> = 1..=255;
/// How often the dispatcher looks at the knobs even when nothing woke it.
const DISPATCH_TICK: Duration = Duration::from_millis(250);
/// Attempts at one job's database work before it is marked `failed` (backoff 100 ms doubling
/// to 5 s between them: about 35 s of outage ridden out).
pub(crate) const JOB_ATTEMPTS: u32 = 12;
const JOB_BACKOFF_FIRST: Duration = Duration::from_millis(100);
const JOB_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often `queued` rows nobody holds are looked for, and how old they must be (a row younger
/// than this may still be on its way into the queue).
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(5);
const SWEEP_MIN_AGE: Duration = Duration::from_secs(2);
/// Connections the automatic worker count leaves to acceptance (one short transaction per
/// POST), so a 202 never waits behind 2 s of work.
pub(crate) const ACCEPT_RESERVE: u32 = 1;
/// The wait budget of the automatic queue bound when `deploy_timeout_ms` is 0 (no timeout):
/// the report's 20 s.
const DEFAULT_BUDGET_MS: u64 = 20_000;
/// The automatic queue bound's ceiling (the knob's own range).
const QUEUE_MAX_CEILING: u64 = 1_000_000;

/// How the async queue drains under the knobs in force: the one place the worker count, the
/// drain rate and the queue bound are derived, read by the dispatcher, acceptance, the
/// refusal's `Retry-After` and `repro burst`'s prediction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drain {
    /// Workers running jobs at once (`deploy_workers`, or the pool less [`ACCEPT_RESERVE`]).
    pub workers: u32,
    /// Deployments completed per second when the queue is never empty: workers (at most the
    /// pool) / work.
    pub per_second: f64,
    /// Deployments allowed to wait (`deploy_queue_max`, or workers × (1 + budget / work):
    /// the jobs that start within the budget, counting the round that starts at once).
    pub queue_max: u32,
}

impl Drain {
    pub fn of(k: &Knobs) -> Self {
        let pool = (k.db_pool_size + k.db_max_overflow).max(1);
        let workers = match k.deploy_workers {
            0 => pool.saturating_sub(ACCEPT_RESERVE).max(1),
            n => n,
        };
        let running = u64::from(workers.min(pool));
        let work_ms = k.deploy_work_ms.max(1);
        let queue_max = match k.deploy_queue_max {
            0 => {
                let budget = if k.deploy_timeout_ms > 0 {
                    k.deploy_timeout_ms
                } else {
                    DEFAULT_BUDGET_MS
                };
                (running * (1 + budget / work_ms)).min(QUEUE_MAX_CEILING) as u32
            }
            n => n,
        };
        Drain {
            workers,
            per_second: running as f64 * 1000.0 / work_ms as f64,
            queue_max,
        }
    }

    /// How long `depth` queued deployments take to drain: when a refused client should come
    /// back (1 s at least, an hour at most).
    pub fn time_to_drain(&self, depth: usize) -> Duration {
        Duration::from_secs_f64((depth as f64 / self.per_second).clamp(1.0, 3600.0))
    }
}

#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct Deployment {
    id: String,
    name: String,
    environment: String,
    replicas: i64,
    status: String,
    idempotency_key: Option<String>,
    sequence: Option<i64>,
    error: Option<String>,
    created_ms: i64,
    completed_ms: Option<i64>,
}

const COLUMNS: &str =
    "id, name, environment, replicas, status, idempotency_key, sequence, error, created_ms, completed_ms";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[derive(Clone)]
struct Metrics {
    outcomes: IntCounterVec,
    queue_depth: IntGauge,
    busy: IntGauge,
    queue_wait: Histogram,
    transaction: Histogram,
    retries: IntCounterVec,
    recovered: prometheus::IntCounter,
}

/// A queued async deployment.
struct Job {
    id: String,
    enqueued: Instant,
}

/// The async mode's bounded queue and its workers.
pub struct Deployments {
    queue: Mutex<Queue>,
    notify: Notify,
    metrics: Metrics,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Slots promised to requests still writing their row; counted against the bound.
    reserved: usize,
    /// Ids queued or running in this process, so the sweep does not queue them twice.
    held: HashSet<String>,
}

/// A promised queue slot; given back if the request fails before it enqueues.
struct Reservation {
    owner: Arc<Deployments>,
    used: bool,
}

impl Reservation {
    fn enqueue(mut self, id: String) {
        self.used = true;
        let mut q = self.owner.lock();
        q.reserved -= 1;
        q.held.insert(id.clone());
        q.jobs.push_back(Job {
            id,
            enqueued: Instant::now(),
        });
        self.owner.metrics.queue_depth.set((q.jobs.len() + q.reserved) as i64);
        drop(q);
        self.owner.notify.notify_one();
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.used {
            let mut q = self.owner.lock();
            q.reserved -= 1;
            self.owner.metrics.queue_depth.set((q.jobs.len() + q.reserved) as i64);
        }
    }
}

impl Deployments {
    pub fn new(registry: &Registry) -> Arc<Self> {
        let metrics = Metrics {
            outcomes: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "deployments_total",
                        "POST /api/v1/deployments/ outcomes (created, accepted, replayed, queue_full, timeout, failed)",
                    ),
                    &["mode", "outcome"],
                )
                .unwrap(),
            ),
            queue_depth: register(
                registry,
                IntGauge::new("deploy_queue_depth", "Async deployments waiting for a worker").unwrap(),
            ),
            busy: register(
                registry,
                IntGauge::new("deploy_workers_busy", "Async deployment workers running a deployment").unwrap(),
            ),
            queue_wait: register(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "deploy_queue_wait_seconds",
                        "Time an async deployment waited in the queue",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )
                .unwrap(),
            ),
            transaction: register(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "deploy_transaction_seconds",
                        "Time a deployment's transaction held its connection (work included)",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )
                .unwrap(),
            ),
            retries: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "deploy_job_retries_total",
                        "Async deployment attempts that failed and were retried with backoff, by error code",
                    ),
                    &["error"],
                )
                .unwrap(),
            ),
            recovered: register(
                registry,
                prometheus::IntCounter::new(
                    "deploy_jobs_recovered_total",
                    "Accepted deployments found `queued` with no worker holding them, re-queued by the sweep",
                )
                .unwrap(),
            ),
        };
        // Every series from the start, so rate() sees the first increment.
        for mode in ["sync", "async"] {
            for outcome in [
                "created",
                "accepted",
                "replayed",
                "queue_full",
                "timeout",
                "invalid",
                "failed",
            ] {
                metrics.outcomes.with_label_values(&[mode, outcome]);
            }
        }
        Arc::new(Self {
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reserve(self: &Arc<Self>, drain: Drain) -> Result<Reservation, AppError> {
        let mut q = self.lock();
        let depth = q.jobs.len() + q.reserved;
        if depth >= drain.queue_max as usize {
            let retry_after = drain.time_to_drain(depth);
            return Err(AppError::Shed {
                detail: format!(
                    "the deployment queue is full ({depth} waiting, bound {} (deploy_queue_max); {} workers drain {:.1}/s: retry in {} s",
                    drain.queue_max,
                    drain.workers,
                    drain.per_second,
                    retry_after.as_secs_f64().ceil()
                ),
                retry_after,
            });
        }
        q.reserved += 1;
        self.metrics.queue_depth.set((depth + 1) as i64);
        Ok(Reservation {
            owner: self.clone(),
            used: false,
        })
    }

    fn pop(&self) -> Option<Job> {
        let mut q = self.lock();
        let job = q.jobs.pop_front();
        self.metrics.queue_depth.set((q.jobs.len() + q.reserved) as i64);
        job
    }

    /// Queues ids found in the database unless this process already holds them; returns how
    /// many were queued.
    fn requeue(&self, ids: Vec<String>) -> usize {
        let mut q = self.lock();
        let mut added = 0;
        for id in ids {
            if q.held.insert(id.clone()) {
                q.jobs.push_back(Job {
                    id,
                    enqueued: Instant::now(),
                });
                added += 1;
            }
        }
        self.metrics.queue_depth.set((q.jobs.len() + q.reserved) as i64);
        drop(q);
        if added > 0 {
            self.notify.notify_one();
        }
        added
    }

    fn release(&self, id: &str) {
        self.lock().held.remove(id);
    }

    fn count(&self, mode: DeployMode, outcome: &str) {
        let mode = match mode {
            DeployMode::Sync => "sync",
            DeployMode::Async => "async",
        };
        self.metrics.outcomes.with_label_values(&[mode, outcome]).inc();
    }

    /// Re-queues deployments a previous run accepted but never ran, then starts the dispatcher.
    pub async fn start(
        self: &Arc<Self>,
        db: Arc<Database>,
        knobs: Arc<KnobStore>,
        lifecycle: &crate::lifecycle::Lifecycle,
    ) -> anyhow::Result<()> {
        if db.starting().is_none() {
            self.requeue_earlier(&db).await?;
            self.spawn_workers(db, knobs, lifecycle);
            return Ok(());
        }
        // Start-up is still waiting for the database: the workers start once it is there.
        let this = self.clone();
        let spawner = lifecycle.clone();
        lifecycle.spawn_background(async move {
            db.wait_established().await;
            if let Err(e) = this.requeue_earlier(&db).await {
                // The sweep finds them a little later.
                tracing::warn!(error = %crate::error::chain_text(&e), "could not re-queue earlier deployments at start-up");
            }
            this.spawn_workers(db, knobs, &spawner);
        });
        Ok(())
    }

    async fn requeue_earlier(&self, db: &Database) -> anyhow::Result<()> {
        let (mut conn, _) = db
            .acquire(Duration::from_secs(30))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // The simple protocol (no prepared statement): safe behind PgBouncer in transaction mode.
        let pending = queued_before(&mut conn, i64::MAX).await?;
        drop(conn);
        let count = self.requeue(pending);
        if count > 0 {
            tracing::info!(count, "re-queued deployments accepted by an earlier run");
        }
        Ok(())
    }

    /// Background work: when the app stops, the dispatcher is dropped with its running jobs
    /// (their transactions roll back, their rows stay `queued` and the next start runs them).
    fn spawn_workers(
        self: &Arc<Self>,
        db: Arc<Database>,
        knobs: Arc<KnobStore>,
        lifecycle: &crate::lifecycle::Lifecycle,
    ) {
        lifecycle.spawn_background(self.clone().dispatch(db.clone(), knobs));
        lifecycle.spawn_background(self.clone().sweep(db));
    }

    /// Every [`SWEEP_EVERY`]: re-queues `queued` rows older than [`SWEEP_MIN_AGE`] that no worker
    /// here holds. A failed look (database down) is tried again at the next tick.
    async fn sweep(self: Arc<Self>, db: Arc<Database>) {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            let before = now_ms() - SWEEP_MIN_AGE.as_millis() as i64;
            let found = async {
                let (mut conn, _) = db.acquire(SWEEP_EVERY).await?;
                Ok::<_, AppError>(queued_before(&mut conn, before).await?)
            }
            .await;
            match found {
                Ok(ids) => {
                    let added = self.requeue(ids);
                    if added > 0 {
                        self.metrics.recovered.inc_by(added as u64);
                        tracing::warn!(count = added, "re-queued accepted deployments that no worker held");
                    }
                }
                Err(e) => tracing::debug!(error = %crate::error::error_chain(&e), "deployment sweep skipped"),
            }
        }
    }

    async fn dispatch(self: Arc<Self>, db: Arc<Database>, knobs: Arc<KnobStore>) {
        let mut running = JoinSet::new();
        loop {
            let limit = Drain::of(&knobs.current()).workers as usize;
            while running.len() < limit {
                let Some(job) = self.pop() else { break };
                self.metrics.queue_wait.observe(job.enqueued.elapsed().as_secs_f64());
                let (db, knobs, me) = (db.clone(), knobs.clone(), self.clone());
                running.spawn(async move { me.run_job(&db, &knobs, job.id).await });
            }
            self.metrics.busy.set(running.len() as i64);
            tokio::select! {
                _ = self.notify.notified() => {}
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Err(e) = done {
                        tracing::error!(error = %e, "a deployment worker panicked");
                    }
                }
                _ = tokio::time::sleep(DISPATCH_TICK) => {}
            }
        }
    }

    /// Runs one job to a final state: retried with backoff while its database work fails,
    /// then marked `failed` with the last error as its reason.
    async fn run_job(&self, db: &Database, knobs: &KnobStore, id: String) {
        let mut backoff = JOB_BACKOFF_FIRST;
        let mut attempt = 1;
        let outcome = loop {
            let result = async {
                let k = knobs.current();
                let (mut conn, _) = db.acquire(Duration::from_millis(k.db_pool_timeout_ms)).await?;
                let start = Instant::now();
                let done = complete_queued(&mut conn, &id, Duration::from_millis(k.deploy_work_ms)).await;
                self.metrics.transaction.observe(start.elapsed().as_secs_f64());
                Ok::<_, AppError>(done?)
            }
            .await;
            match result {
                Ok(claimed) => break Ok(claimed),
                // The pool is busy: the job keeps its turn and tries again (not an attempt).
                Err(AppError::PoolTimeout { .. }) => continue,
                Err(e) if attempt < JOB_ATTEMPTS => {
                    self.metrics.retries.with_label_values(&[e.code()]).inc();
                    tracing::warn!(deployment = %id, attempt, error = %crate::error::error_chain(&e), "deployment attempt failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(JOB_BACKOFF_MAX);
                    attempt += 1;
                }
                Err(e) => break Err(e),
            }
        };
        match outcome {
            Ok(true) => self.count(DeployMode::Async, "created"),
            // Someone completed it first: counted once, by them.
            Ok(false) => {}
            Err(e) => {
                let detail = crate::error::error_chain(&e);
                tracing::error!(deployment = %id, attempts = attempt, error = %detail, "deployment failed");
                self.count(DeployMode::Async, "failed");
                let marked = async {
                    let (mut conn, _) = db.acquire(Duration::from_millis(knobs.current().db_pool_timeout_ms)).await?;
                    on_conn!(&mut *conn, c => crate::pg_tx!(c, tx => {
                        sqlx::query("UPDATE deployments SET status = 'failed', error = $2, completed_ms = $3 WHERE id = $1 AND status = 'queued'")
                            .persistent(false)
                            .bind(&id)
                            .bind(format!("gave up after {attempt} attempts: {detail}"))
                            .bind(now_ms())
                            .execute(&mut *tx)
                            .await
                            .map(|_| ())?
                    }));
                    Ok::<_, AppError>(())
                }
                .await;
                if let Err(e) = marked {
                    // Still `queued`: the sweep picks it up again once the database answers.
                    tracing::error!(deployment = %id, error = %crate::error::error_chain(&e), "could not mark the deployment failed");
                }
            }
        }
        self.release(&id);
    }
}

/// Ids of `queued` deployments created before `before_ms`, oldest first. An unnamed statement
/// inside a transaction: safe behind PgBouncer in transaction mode, where the statement's two
/// round trips would otherwise be free to land on two server connections.
async fn queued_before(conn: &mut Conn, before_ms: i64) -> Result<Vec<String>, sqlx::Error> {
    const SQL: &str = "SELECT id FROM deployments WHERE status = 'queued' AND created_ms < $1 ORDER BY created_ms";
    on_conn!(conn, c => {
        let mut tx = sqlx::Connection::begin(&mut **c).await?;
        let ids = sqlx::query_scalar::<_, String>(SQL).persistent(false)
            .bind(before_ms)

            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ids)
    })
}

/// What a POST asked for.
struct NewDeployment {
    name: String,
    environment: String,
    replicas: i64,
    idempotency_key: Option<String>,
}

fn text_field(
    obj: &serde_json::Map<String, Value>,
    name: &str,
    default: &str,
    len: std::ops::RangeInclusive<usize>,
) -> AppResult<String> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(default.to_string()),
        Some(Value::String(s)) if len.contains(&s.chars().count()) && !s.contains('\0') => Ok(s.clone()),
        Some(v) => Err(AppError::InvalidParameter {
            param: name.to_string(),
            detail: format!(
                "`{name}` must be a string of {} to {} characters, without NUL (got {v})",
                len.start(),
                len.end()
            ),
            range: Some((len.start().to_string(), len.end().to_string())),
            input: None,
            rule: crate::error::Rule::Other,
        }),
    }
}

/// Parses the optional JSON body (unknown fields are ignored, like the original app) and the
/// `Idempotency-Key` header.
fn parse_request(headers: &HeaderMap, body: &Bytes) -> AppResult<NewDeployment> {
    if headers.get_all("idempotency-key").iter().count() > 1 {
        // Which one would be "the" key? Keeping the first silently could create a duplicate.
        return Err(AppError::BadRequest {
            code: "duplicate_header",
            detail: "send one `Idempotency-Key` header, not several".into(),
        });
    }
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let key = v
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|k| IDEMPOTENCY_KEY_LEN.contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()));
            match key {
                Some(k) => Some(k.to_string()),
                None => {
                    return Err(AppError::InvalidParameter {
                        param: "Idempotency-Key".into(),
                        detail: "the `Idempotency-Key` header must be 1 to 255 visible ASCII characters".into(),
                        range: Some(("1".into(), "255".into())),
                        input: None,
                        rule: crate::error::Rule::Other,
                    })
                }
            }
        }
    };
    let empty = serde_json::Map::new();
    let parsed;
    let obj = if body.iter().all(u8::is_ascii_whitespace) {
        &empty
    } else {
        parsed = serde_json::from_slice::<Value>(body)
            .map_err(|e| AppError::invalid("body", format!("the body must be a JSON object: {e}")))?;
        parsed
            .as_object()
            .ok_or_else(|| AppError::invalid("body", "the body must be a JSON object"))?
    };
    let replicas = match obj.get("replicas") {
        None | Some(Value::Null) => 1,
        Some(v) => match v.as_i64().filter(|n| REPLICAS.contains(n)) {
            Some(n) => n,
            None => return Err(AppError::out_of_range("replicas", REPLICAS.start(), REPLICAS.end(), v)),
        },
    };
    Ok(NewDeployment {
        name: text_field(obj, "name", "deployment", NAME_LEN)?,
        environment: text_field(obj, "environment", "production", ENVIRONMENT_LEN)?,
        replicas,
        idempotency_key,
    })
}

/// The answer to a POST.
enum Created {
    /// Committed now (sync: 201) or queued now (async: 202).
    New(Deployment),
    /// The idempotency key was already used: the deployment its first attempt created.
    Replayed(Deployment),
}

async fn find_by_key(conn: &mut Conn, key: &str) -> Result<Option<Deployment>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM deployments WHERE idempotency_key = $1");
    on_conn!(conn, c => Ok(crate::pg_tx!(c, tx => sqlx::query_as::<_, Deployment>(&sql).persistent(false).bind(key).fetch_optional(&mut *tx).await?)))
}

async fn find_by_id(conn: &mut Conn, id: &str) -> Result<Option<Deployment>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM deployments WHERE id = $1");
    on_conn!(conn, c => Ok(crate::pg_tx!(c, tx => sqlx::query_as::<_, Deployment>(&sql).persistent(false).bind(id).fetch_optional(&mut *tx).await?)))
}

/// The answer once the insert ran: the new row, or the deployment that already holds the key.
async fn created_or_replayed(
    conn: &mut Conn,
    inserted: bool,
    id: &str,
    new: &NewDeployment,
) -> Result<Created, sqlx::Error> {
    if inserted {
        let row = find_by_id(conn, id).await?.ok_or(sqlx::Error::RowNotFound)?;
        return Ok(Created::New(row));
    }
    let key = new.idempotency_key.as_deref().unwrap_or_default();
    let existing = find_by_key(conn, key).await?.ok_or(sqlx::Error::RowNotFound)?;
    Ok(Created::Replayed(existing))
}

/// Inserts the deployment row unless its idempotency key is taken, in the transaction `c`.
/// Returns `false` when another request already claimed the key (it waits for that request's
/// transaction on PostgreSQL, so the answer is final).
macro_rules! insert_row {
    ($tx:expr, $id:expr, $new:expr, $status:expr, $at:expr) => {
        sqlx::query(
            "INSERT INTO deployments (id, name, environment, replicas, status, idempotency_key, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .persistent(false)
        .bind($id)
        .bind(&$new.name)
        .bind(&$new.environment)
        .bind($new.replicas)
        .bind($status)
        .bind(&$new.idempotency_key)
        .bind($at)
        .execute(&mut *$tx)
        .await?
        .rows_affected()
            == 1
    };
}

macro_rules! audit {
    ($tx:expr, $id:expr, $event:expr) => {
        sqlx::query("INSERT INTO deployment_audit (deployment_id, event, at_ms) VALUES ($1, $2, $3)")
            .persistent(false)
            .bind($id)
            .bind($event)
            .bind(now_ms())
            .execute(&mut *$tx)
            .await?
    };
}

/// Bumps the shared counter (locking its row until commit) and marks the deployment done.
macro_rules! finish {
    ($tx:expr, $id:expr) => {{
        let (sequence,): (i64,) =
            sqlx::query_as("UPDATE deployment_counter SET total = total + 1 WHERE id = 1 RETURNING total")
                .persistent(false)
                .fetch_one(&mut *$tx)
                .await?;
        sqlx::query("UPDATE deployments SET status = 'succeeded', sequence = $2, completed_ms = $3 WHERE id = $1")
            .persistent(false)
            .bind($id)
            .bind(sequence)
            .bind(now_ms())
            .execute(&mut *$tx)
            .await?;
        audit!($tx, $id, "succeeded");
    }};
}

/// The synchronous creation: the whole transaction before the answer.
async fn create_sync(conn: &mut Conn, new: &NewDeployment, work: Duration) -> Result<Created, sqlx::Error> {
    if let Some(key) = &new.idempotency_key {
        if let Some(existing) = find_by_key(conn, key).await? {
            return Ok(Created::Replayed(existing));
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    let inserted = on_conn!(&mut *conn, c => {
        let mut tx = sqlx::Connection::begin(&mut **c).await?;
        // The provisioning work, holding the connection inside the open transaction.
        tokio::time::sleep(work).await;
        let inserted = insert_row!(tx, &id, new, "provisioning", now_ms());
        if inserted {
            audit!(tx, &id, "requested");
            finish!(tx, &id);
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        inserted
    });
    created_or_replayed(conn, inserted, &id, new).await
}

/// The asynchronous acceptance: one short transaction writes the `queued` row.
/// `committed` runs the moment the `queued` row is committed, before the row is read back for
/// the answer: a read-back that fails must not leave an accepted deployment out of the queue
/// (the sweep would find it later and it would complete uncounted as accepted).
async fn accept_async(
    conn: &mut Conn,
    new: &NewDeployment,
    committed: impl FnOnce(&str),
) -> Result<Created, sqlx::Error> {
    if let Some(key) = &new.idempotency_key {
        if let Some(existing) = find_by_key(conn, key).await? {
            return Ok(Created::Replayed(existing));
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    let inserted = on_conn!(&mut *conn, c => {
        let mut tx = sqlx::Connection::begin(&mut **c).await?;
        let inserted = insert_row!(tx, &id, new, "queued", now_ms());
        if inserted {
            audit!(tx, &id, "queued");
        }
        tx.commit().await?;
        inserted
    });
    if inserted {
        committed(&id);
    }
    created_or_replayed(conn, inserted, &id, new).await
}

/// A worker's transaction for a queued deployment.
/// Claims the row first (`queued` → `succeeded`): a job that another worker or process already
/// completed changes nothing.
/// Returns whether this run completed it (`false`: it was already done, e.g. queued twice by the
/// sweep racing a worker that had just finished it).
async fn complete_queued(conn: &mut Conn, id: &str, work: Duration) -> Result<bool, sqlx::Error> {
    let claimed = on_conn!(conn, c => {
        // Already done (queued twice: the sweep read it just before a worker finished it)? Then
        // no work is spent on it. Read before the transaction: on SQLite a read inside it would
        // have to upgrade to the write lock later, which fails under concurrent writers.
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM deployments WHERE id = $1")
            .persistent(false)
            .bind(id)
            .fetch_optional(&mut **c)
            .await?;
        let mut tx = sqlx::Connection::begin(&mut **c).await?;
        if status.as_deref() == Some("queued") {
            // The work first: on SQLite a write would take the database's one write lock for it.
            tokio::time::sleep(work).await;
        }
        let claimed = sqlx::query("UPDATE deployments SET status = 'succeeded' WHERE id = $1 AND status = 'queued'").persistent(false)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if claimed == 1 {
            finish!(tx, id);
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        claimed == 1
    });
    Ok(claimed)
}

fn location(id: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("/api/v1/deployments/{id}")).expect("a uuid is a valid header value")
}

async fn create(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let k = state.knobs.current();
    let mode = k.deploy_mode;
    let result = async {
        let new = parse_request(&headers, &body)?;
        let acquire = Duration::from_millis(k.db_pool_timeout_ms);
        let run = async {
            match mode {
                DeployMode::Sync => {
                    let (mut conn, _) = state.db.acquire(acquire).await?;
                    let start = Instant::now();
                    let created = create_sync(&mut conn, &new, Duration::from_millis(k.deploy_work_ms)).await?;
                    state
                        .deployments
                        .metrics
                        .transaction
                        .observe(start.elapsed().as_secs_f64());
                    Ok::<_, AppError>(created)
                }
                DeployMode::Async => {
                    let reservation = state.deployments.reserve(Drain::of(&k))?;
                    // Not cancelled with the request: a row committed as `queued` is always
                    // enqueued, even if the client has stopped waiting.
                    let db = state.db.clone();
                    let deployments = state.deployments.clone();
                    state
                        .lifecycle
                        .spawn(async move {
                            let (mut conn, _) = db.acquire(acquire).await?;
                            // Queued and counted with the row: a client gone before its 202,
                            // or a failed read-back, still has an accepted deployment that runs.
                            let created = accept_async(&mut conn, &new, |id| {
                                reservation.enqueue(id.to_string());
                                deployments.count(DeployMode::Async, "accepted");
                            })
                            .await?;
                            Ok::<_, AppError>(created)
                        })
                        .await
                        .map_err(AppError::internal)?
                }
            }
        };
        if k.deploy_timeout_ms > 0 {
            let after = Duration::from_millis(k.deploy_timeout_ms);
            tokio::time::timeout(after, run)
                .await
                .map_err(|_| AppError::RequestTimeout { group: "deploy", after })?
        } else {
            run.await
        }
    }
    .await;
    match result {
        Ok(Created::New(d)) => {
            let status = match mode {
                DeployMode::Sync => {
                    state.deployments.count(mode, "created");
                    StatusCode::CREATED
                }
                // Counted as accepted where its row was committed.
                DeployMode::Async => StatusCode::ACCEPTED,
            };
            (status, [(header::LOCATION, location(&d.id))], Json(d)).into_response()
        }
        Ok(Created::Replayed(d)) => {
            state.deployments.count(mode, "replayed");
            (
                StatusCode::OK,
                [
                    (header::LOCATION, location(&d.id)),
                    (
                        header::HeaderName::from_static("idempotent-replayed"),
                        HeaderValue::from_static("true"),
                    ),
                ],
                Json(d),
            )
                .into_response()
        }
        Err(e) => {
            let outcome = match &e {
                AppError::Shed { .. } => "queue_full",
                AppError::RequestTimeout { .. } => "timeout",
                AppError::InvalidParameter { .. } => "invalid",
                _ => "failed",
            };
            state.deployments.count(mode, outcome);
            e.into_response()
        }
    }
}

async fn show(State(state): State<AppState>, Path(id): Path<String>) -> AppResult<Json<Deployment>> {
    // Upper-case, braced, URN and simple forms name the same deployment: ids are stored in the
    // hyphenated lower-case form.
    let Ok(id) = uuid::Uuid::parse_str(&id).map(|u| u.hyphenated().to_string()) else {
        return Err(AppError::invalid("id", "`id` must be a deployment id (a UUID)"));
    };
    let k = state.knobs.current();
    let (mut conn, _) = state.db.acquire(Duration::from_millis(k.db_pool_timeout_ms)).await?;
    let found = find_by_id(&mut conn, &id).await?;
    found.map(Json).ok_or_else(|| AppError::NotFound {
        detail: format!("no deployment {id}"),
    })
}

/// The catalog entry (see [`crate::scenarios::ALL`]).
pub const SCENARIO: Scenario = crate::scenarios::scenario!(
    "burst",
    "synchronous deployments hold connections until requests time out"
)
.repro(REPRO)
.gauges(&[Gauge::value("deploy_queue", "deploy_queue_depth")])
.saturation(saturation)
.dashboard(DASHBOARD)
.alerts(ALERTS);

/// Its row of the Grafana dashboard (k8s/monitoring/grafana-dashboard.json).
const DASHBOARD: &[Panel] = &[
    Panel {
        title: "Deployments by outcome",
        unit: "reqps",
        targets: &[(
            "sum by (mode, outcome) (rate(deployments_total[1m]))",
            "{{mode}} {{outcome}}",
        )],
        description: "sync: timeouts at the 20 s request timeout. async: accepted now, created at database speed.",
    },
    Panel {
        title: "Async queue and workers",
        unit: "short",
        targets: &[
            ("sum(deploy_queue_depth)", "queued"),
            ("sum(deploy_workers_busy)", "busy workers"),
        ],
        description: "",
    },
    Panel {
        title: "Transaction time p95 / queue wait p95",
        unit: "s",
        targets: &[
            (
                "histogram_quantile(0.95, sum by (instance, le) (rate(deploy_transaction_seconds_bucket[1m])))",
                "transaction {{instance}}",
            ),
            (
                "histogram_quantile(0.95, sum by (instance, le) (rate(deploy_queue_wait_seconds_bucket[1m])))",
                "queue wait {{instance}}",
            ),
        ],
        description: "",
    },
];

/// The alerts that fire on its collapse (k8s/monitoring/alerts.rules.yml).
const ALERTS: &[Alert] = &[
    Alert {
        name: "DeploymentRequestTimeouts",
        expr: "sum by (instance) (rate(deployments_total{outcome=\"timeout\"}[1m])) > 0",
        for_: "30s",
        severity: "critical",
        summary: "POST /api/v1/deployments/ timing out on {{ $labels.instance }}",
        description: "Synchronous deployments wait for the pool until the request timeout (504). Consider deploy_mode=async (docs/scenarios/burst.md).",
    },
];

/// Its saturation banner: deployments queued.
fn saturation(r: &Readings) -> Option<Saturated> {
    (r.n("deploy_queue") > 0.0).then(|| {
        Saturated::new("deploy queue").because(&["deploy_queue"], format!("{} deployments queued", r.n("deploy_queue")))
    })
}

/// Its routes in the OpenAPI document, each with its guard group.
fn operations() -> Vec<Op> {
    let deployment = obj(&[
        ("id", string()),
        ("name", string()),
        ("environment", string()),
        ("replicas", int()),
        (
            "status",
            json!({"type": "string", "enum": ["queued", "running", "succeeded", "failed"]}),
        ),
        ("idempotency_key", nullable("string")),
        ("sequence", nullable("integer")),
        ("error", nullable("string")),
        ("created_ms", int()),
        ("completed_ms", nullable("integer")),
    ]);
    let deploy_body = json!({
        "type": "object",
        "properties": {
            "name": {"type": ["string", "null"], "minLength": NAME_LEN.start(), "maxLength": NAME_LEN.end(), "default": "deployment"},
            "environment": {"type": ["string", "null"], "minLength": ENVIRONMENT_LEN.start(), "maxLength": ENVIRONMENT_LEN.end(), "default": "production"},
            "replicas": {"type": ["integer", "null"], "minimum": REPLICAS.start(), "maximum": REPLICAS.end(), "default": 1},
        },
    });
    let idempotency = json!({
        "name": "Idempotency-Key", "in": "header", "required": false,
        "description": "a retry with the same key returns the first deployment (200, Idempotent-Replayed: true)",
        "schema": {"type": "string", "minLength": IDEMPOTENCY_KEY_LEN.start(), "maxLength": IDEMPOTENCY_KEY_LEN.end(), "pattern": "^[!-~]+$"},
    });
    let create_deployment = |path: &'static str| {
        Op::new(
            "post",
            path,
            "Create a deployment: sync 201, or async 202 with Location",
        )
        .param(idempotency.clone())
        .body("application/json", deploy_body.clone(), false)
        .ok(201, "created (deploy_mode sync)", deployment.clone())
        .ok(
            202,
            "accepted, runs in the background (deploy_mode async)",
            deployment.clone(),
        )
        .ok(
            200,
            "replayed: this Idempotency-Key already created a deployment",
            deployment.clone(),
        )
        .fails(
            422,
            "a body field or the Idempotency-Key is invalid (invalid_parameter)",
        )
        .fails(503, POOL_TIMEOUT)
        .fails(503, "the async queue is full (shed)")
        .fails(504, "deploy_timeout_ms passed (request_timeout)")
        .fails(507, STORAGE_FULL)
    };
    vec![
        create_deployment("/api/v1/deployments/"),
        create_deployment("/api/v1/deployments"),
        Op::new("get", "/api/v1/deployments/{id}", "Read a deployment back")
            .param(path_param(
                "id",
                json!({"type": "string", "format": "uuid"}),
                "the deployment's id",
            ))
            .ok(200, "the deployment", deployment)
            .fails(404, "no such deployment (not_found)")
            .fails(422, "the id is not a UUID (invalid_parameter)")
            .fails(503, POOL_TIMEOUT),
    ]
}

/// `chokepoint repro burst`: its plan and prediction.
const REPRO: Repro = Repro::new(repro_knobs, repro_plan, repro_predict);

/// The knobs `repro burst` sets on top of the profile, to keep the run short and the numbers small.
/// A pool of 11: the async cure keeps one connection for accepting, so its workers drain at
/// 10/11 of the pool (91%: at least the 90% of pool / work the goodput rule asks; with a pool of
/// 4 it would be 75%).
fn repro_knobs() -> Value {
    json!({"db_pool_size": 11, "db_max_overflow": 0, "deploy_work_ms": 200, "deploy_timeout_ms": 5000})
}

/// The plan: what `repro burst` sends, at which rates, watching what.
fn repro_plan(config: &RunConfig, _cpu_ms: Option<f64>) -> Plan {
    let knobs = &config.knobs;
    let mut plan = Plan::new(repro_knobs());
    plan.target = Target::post("/api/v1/deployments/", "{}");
    let cap = if knobs.deploy_mode == DeployMode::Async {
        Drain::of(knobs).per_second
    } else {
        f64::from(knobs.db_pool_size + knobs.db_max_overflow) * 1000.0 / knobs.deploy_work_ms.max(1) as f64
    };
    plan.rates = around(cap, AROUND);
    if knobs.deploy_mode == DeployMode::Async {
        // A 202 is a promise: the stage's goodput is the deployments its workers completed.
        plan.completed = Some(r#"deployments_total{mode="async",outcome="created"}"#);
    }
    plan.watches = vec![
        POOL_WAITING,
        Watch::gauge("deploy_queue_depth", "async queue depth (max)", 0.0),
    ];
    plan
}

/// The prediction from the knobs in force (after the profile and the run's knobs).
fn repro_predict(config: &RunConfig, _cpu_ms: Option<f64>) -> Prediction {
    let knobs = &config.knobs;
    let pool = f64::from(knobs.db_pool_size + knobs.db_max_overflow);
    let work = (knobs.deploy_work_ms as f64) / 1000.0;
    if knobs.deploy_mode == DeployMode::Async {
        let d = Drain::of(knobs);
        Prediction {
            // Acceptance is not bounded by it: no capacity line for the answers.
            capacity_rps: None,
            formula: format!(
                "min({} workers, {pool} connections) / {work} s work = {:.1} deployments/s drained in the background",
                d.workers, d.per_second
            ),
            expect: format!(
                "POSTs are accepted at once (202) while the queue holds fewer than {} (what starts within the timeout); the rest get 503 with Retry-After",
                d.queue_max
            ),
        }
    } else {
        Prediction {
            capacity_rps: Some(pool / work),
            formula: format!(
                "pool {pool} connections / {work} s work = {:.1} creations/s",
                pool / work
            ),
            expect: format!(
                "past capacity creations queue for a connection and fail at the {} ms request timeout",
                (knobs.deploy_timeout_ms as f64)
            ),
        }
    }
}
