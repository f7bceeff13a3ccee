//! `worker-pool` — the gRPC report: 10 worker threads, 200 concurrent users, every call ended
//! in DEADLINE_EXCEEDED and the success rate fell to 0%.
//!
//! `/api/worker-pool` hands its work to a fixed pool of OS threads (`worker_pool_size`, 10 by
//! default) through a queue, and waits for it until the request's deadline
//! (`request_deadline_ms`, or a `grpc-timeout` header, or `deadline_ms`). Fragile: the queue is
//! unbounded (`worker_queue_max = 0`) and a worker starts a job even when its deadline passed
//! while it queued (`worker_deadline_check = false`), so under overload every request times
//! out while the workers stay busy finishing work nobody waits for: goodput 0. The fix: a
//! bounded queue (excess refused at once with 503 + `Retry-After`), the deadline checked before
//! work starts, and more workers (the pool resizes live).
//!
//! Metrics: `worker_pool_threads`, `worker_pool_busy`, `worker_pool_queue_depth`,
//! `worker_pool_queue_wait_seconds`, `worker_pool_deadline_exceeded_total{stage}`,
//! `worker_pool_wasted_work_total`, `worker_pool_rejected_total`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use chokepoint_repro::plan::{Plan, Prediction, Target, Watch};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::apidoc::{int, num, obj, string, Op};
use crate::error::{AppError, AppResult};
use crate::params::{Choice, Fallback, Num, Params};
use crate::scenarios::{around, Alert, Gauge, Panel, Readings, Repro, RunConfig, Saturated, Scenario, AROUND};
use crate::state::AppState;
use crate::telemetry::{register, GaugeGuard, LATENCY_BUCKETS};

pub const MODE: Choice = Choice {
    name: "mode",
    choices: &["block", "burn"],
    about: "block: the thread sleeps (I/O-like work); burn: it spins the CPU",
};

pub const DEADLINE_MS: Num<u64> = Num {
    name: "deadline_ms",
    default: Fallback::Knob("request_deadline_ms"),
    min: 1,
    max: 600_000,
    about: "the request's deadline in ms; without it, the grpc-timeout header",
};

/// The work of one call when the caller names none: the report's setup (200 users, 10 workers,
/// client deadlines of 5 to 30 s) collapses at it. The queue 200 users make is 200 × 4.5 s / 10
/// = 90 s, three times the longest deadline, so after the first 10 × ⌊30 s / 4.5 s⌋ = 60 calls
/// every call queues behind abandoned work and misses its deadline; and 4.5 s fits the shortest
/// deadline, 5 s, so the report's Option 1 (200 workers, no queue) serves every call.
pub const REPORT_WORK_MS: u64 = 4_500;

pub const WORK_MS: Num<u64> = Num {
    name: "work_ms",
    default: Fallback::Value(REPORT_WORK_MS),
    min: 1,
    max: 60_000,
    about: "milliseconds of work on a pool thread",
};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/worker-pool", get(work))
}

/// What a job does on its worker thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkMode {
    /// Holds the thread without CPU (a blocking call: the gRPC report's case).
    Block,
    /// Burns CPU for the duration.
    Burn,
}

struct Job {
    enqueued: Instant,
    deadline: Instant,
    work: Duration,
    mode: WorkMode,
    check_deadline: bool,
    done: oneshot::Sender<Outcome>,
}

#[derive(Debug)]
enum Outcome {
    Done {
        queue_wait: Duration,
    },
    /// The deadline passed in the queue and the worker skipped the job, or passed while it ran
    /// and the work stopped there (deadline propagation).
    Skipped,
}

#[derive(Clone)]
struct PoolMetrics {
    threads: IntGauge,
    busy: IntGauge,
    queue_depth: IntGauge,
    queue_wait: Histogram,
    deadline_exceeded: IntCounterVec,
    wasted: IntCounter,
    rejected: IntCounter,
}

impl PoolMetrics {
    fn new(registry: &Registry) -> Self {
        let m = Self {
            threads: register(
                registry,
                IntGauge::new("worker_pool_threads", "OS threads in the worker pool").unwrap(),
            ),
            busy: register(
                registry,
                IntGauge::new("worker_pool_busy", "Worker threads running a job").unwrap(),
            ),
            queue_depth: register(
                registry,
                IntGauge::new("worker_pool_queue_depth", "Jobs waiting for a worker").unwrap(),
            ),
            queue_wait: register(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new("worker_pool_queue_wait_seconds", "Time a job waited for a worker")
                        .buckets(LATENCY_BUCKETS.to_vec()),
                )
                .unwrap(),
            ),
            deadline_exceeded: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "worker_pool_deadline_exceeded_total",
                        "Requests past their deadline: stage=client (the caller gave up), queued (skipped before work), abandoned (its caller was gone before work started: skipped), running (the work stopped at the deadline: propagated)",
                    ),
                    &["stage"],
                )
                .unwrap(),
            ),
            wasted: register(
                registry,
                IntCounter::new(
                    "worker_pool_wasted_work_total",
                    "Jobs that ran to the end after their caller had given up",
                )
                .unwrap(),
            ),
            rejected: register(
                registry,
                IntCounter::new(
                    "worker_pool_rejected_total",
                    "Jobs refused at once: the queue was full, or (deadline check on) the work queued ahead would make them miss their deadline",
                )
                .unwrap(),
            ),
        };
        for stage in ["client", "queued", "abandoned", "running"] {
            m.deadline_exceeded.with_label_values(&[stage]);
        }
        m
    }
}

/// Jobs waiting, and jobs running. Workers not running a job take queued jobs at once, so the
/// jobs they are about to pick up do not count against `worker_queue_max`.
#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    running: usize,
    /// When each running job's work ends (one entry per running job, any order): with the
    /// queued jobs' work, when a new job would start.
    running_ends: Vec<Instant>,
}

/// Slack kept between a job's predicted end and its deadline when admitting it (a sleeping
/// thread wakes a little late).
const ADMIT_MARGIN: Duration = Duration::from_millis(20);

impl Queue {
    /// When a job queued now would start on one of `workers` threads: every worker's next free
    /// instant (a running job's end, or now), then the queued jobs handed out in order, each to
    /// the worker free first.
    fn start_of_next(&self, workers: usize, now: Instant) -> Instant {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let mut free: BinaryHeap<Reverse<Instant>> =
            self.running_ends.iter().map(|&end| Reverse(end.max(now))).collect();
        while free.len() < workers.max(1) {
            free.push(Reverse(now));
        }
        for job in &self.jobs {
            let Reverse(at) = free.pop().unwrap_or(Reverse(now));
            free.push(Reverse(at + job.work));
        }
        free.peek().map_or(now, |r| r.0)
    }
}

struct Shared {
    queue: Mutex<Queue>,
    available: Condvar,
    /// Threads wanted; threads above it exit after their current job.
    target: AtomicU32,
    alive: AtomicU32,
    metrics: PoolMetrics,
}

/// A pool of OS threads with a FIFO queue, resizable while it runs.
pub struct WorkerPool {
    shared: Arc<Shared>,
}

impl WorkerPool {
    pub fn new(size: u32, registry: &Registry) -> Self {
        let pool = Self {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                available: Condvar::new(),
                target: AtomicU32::new(0),
                alive: AtomicU32::new(0),
                metrics: PoolMetrics::new(registry),
            }),
        };
        pool.resize(size);
        pool
    }

    /// Sets the number of threads: starts the missing ones now; surplus ones exit once idle.
    pub fn resize(&self, size: u32) {
        let s = &self.shared;
        s.target.store(size, Ordering::SeqCst);
        loop {
            let alive = s.alive.load(Ordering::SeqCst);
            if alive >= size {
                break;
            }
            if s.alive
                .compare_exchange(alive, alive + 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                s.metrics.threads.inc();
                let shared = s.clone();
                let spawned = std::thread::Builder::new()
                    .name("worker-pool".into())
                    .spawn(move || worker(shared));
                if let Err(e) = spawned {
                    s.alive.fetch_sub(1, Ordering::SeqCst);
                    s.metrics.threads.dec();
                    tracing::error!(error = %e, "cannot start a worker-pool thread");
                    break;
                }
            }
        }
        // Wake idle threads so surplus ones notice and exit.
        s.available.notify_all();
    }

    pub fn threads(&self) -> u32 {
        self.shared.alive.load(Ordering::SeqCst)
    }

    /// Queues a job unless the queue holds `queue_max` already (`0` = unbounded), or, with the
    /// deadline check on, unless the work queued ahead means it cannot finish before its
    /// deadline (deadline-aware admission: refused now rather than failed at the deadline).
    fn submit(&self, job: Job, queue_max: u32) -> Result<(), JobError> {
        let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        let alive = self.shared.alive.load(Ordering::SeqCst) as usize;
        let free_workers = alive.saturating_sub(q.running);
        let full = queue_max > 0 && q.jobs.len() >= queue_max as usize + free_workers;
        if full || job.check_deadline {
            let now = Instant::now();
            let start = q.start_of_next(alive, now);
            if full {
                return Err(JobError::Shed {
                    queue_max,
                    retry_after: start.saturating_duration_since(now),
                });
            }
            if start + job.work + ADMIT_MARGIN > job.deadline {
                return Err(JobError::WouldMissDeadline {
                    starts_in: start.saturating_duration_since(now),
                    deadline: job.deadline.saturating_duration_since(job.enqueued),
                });
            }
        }
        q.jobs.push_back(job);
        self.shared.metrics.queue_depth.set(q.jobs.len() as i64);
        drop(q);
        self.shared.available.notify_one();
        Ok(())
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.resize(0);
    }
}

/// One worker thread: take the oldest job, maybe skip it, run it, report.
fn worker(s: Arc<Shared>) {
    loop {
        let job = {
            let mut q = s.queue.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                let alive = s.alive.load(Ordering::SeqCst);
                if alive > s.target.load(Ordering::SeqCst)
                    && s.alive
                        .compare_exchange(alive, alive - 1, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                {
                    s.metrics.threads.dec();
                    return;
                }
                if let Some(job) = q.jobs.pop_front() {
                    q.running += 1;
                    q.running_ends.push(Instant::now() + job.work);
                    s.metrics.queue_depth.set(q.jobs.len() as i64);
                    break job;
                }
                q = s
                    .available
                    .wait_timeout(q, Duration::from_secs(1))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        };
        let queue_wait = job.enqueued.elapsed();
        s.metrics.queue_wait.observe(queue_wait.as_secs_f64());
        if job.check_deadline && Instant::now() >= job.deadline {
            s.metrics.deadline_exceeded.with_label_values(&["queued"]).inc();
            let _ = job.done.send(Outcome::Skipped);
        } else if job.check_deadline && job.done.is_closed() {
            // The caller is gone (cancelled the call, closed the connection): shed its work.
            s.metrics.deadline_exceeded.with_label_values(&["abandoned"]).inc();
        } else {
            // Deadline propagation (with the check on): the work stops at the call's deadline, as
            // a deadline passed down to a database or downstream call would stop it.
            let budget = if job.check_deadline {
                job.work.min(job.deadline.saturating_duration_since(Instant::now()))
            } else {
                job.work
            };
            {
                let _busy = GaugeGuard::new(&s.metrics.busy);
                match job.mode {
                    WorkMode::Block => std::thread::sleep(budget),
                    WorkMode::Burn => burn(budget),
                }
            }
            if budget < job.work {
                s.metrics.deadline_exceeded.with_label_values(&["running"]).inc();
                let _ = job.done.send(Outcome::Skipped);
            } else if job.done.send(Outcome::Done { queue_wait }).is_err() {
                s.metrics.wasted.inc();
            }
        }
        let mut q = s.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.running -= 1;
        // This job's entry: the earliest end is as good as its own (the entries are only used
        // as a multiset of free instants).
        if let Some(i) = (0..q.running_ends.len()).min_by_key(|&i| q.running_ends[i]) {
            q.running_ends.swap_remove(i);
        }
    }
}

/// Spins the CPU for `d`.
fn burn(d: Duration) {
    let end = Instant::now() + d;
    let mut x: u64 = 0;
    while Instant::now() < end {
        for _ in 0..1000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

/// Parses a gRPC `grpc-timeout` header value: digits then a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    if raw.len() < 2 || raw.len() > 9 {
        return None;
    }
    let (digits, unit) = raw.split_at(raw.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

async fn work(State(state): State<AppState>, headers: HeaderMap, params: Params) -> AppResult<Json<Value>> {
    let knobs = state.knobs.current();
    let work_ms: u64 = params.get(&WORK_MS)?;
    let mode = match params.choice(&MODE)? {
        "burn" => WorkMode::Burn,
        _ => WorkMode::Block,
    };
    let header = headers
        .get("grpc-timeout")
        .map(|v| v.to_str().ok().and_then(parse_grpc_timeout));
    let deadline_ms: u64 = match header {
        Some(None) => {
            return Err(AppError::invalid(
                "grpc-timeout",
                "the `grpc-timeout` header must be digits and a unit (H, M, S, m, u, n), e.g. 500m",
            ));
        }
        Some(Some(d)) if !params.has(DEADLINE_MS.name) => {
            let ms = d.as_millis() as u64;
            if !(1..=600_000).contains(&ms) {
                return Err(AppError::out_of_range("grpc-timeout", "1m", "600S", ms));
            }
            ms
        }
        _ => params.get_or(&DEADLINE_MS, knobs.request_deadline_ms)?,
    };
    let deadline_after = Duration::from_millis(deadline_ms);
    match run_job(&state, work_ms, mode, deadline_after).await {
        Ok(done) => Ok(Json(json!({
            "work_ms": work_ms,
            "mode": if mode == WorkMode::Block { "block" } else { "burn" },
            "queue_wait_ms": done.queue_wait.as_secs_f64() * 1e3,
            "total_ms": done.total.as_secs_f64() * 1e3,
            "deadline_ms": deadline_ms,
        }))),
        Err(JobError::Shed { queue_max, retry_after }) => Err(AppError::Shed {
            retry_after,
            detail: format!("{queue_max} jobs already queued (worker_queue_max)"),
        }),
        Err(JobError::WouldMissDeadline { starts_in, deadline }) => Err(AppError::Shed {
            retry_after: starts_in,
            detail: would_miss(starts_in, deadline, work_ms),
        }),
        Err(JobError::DeadlineExceeded) => Err(AppError::DeadlineExceeded { after: deadline_after }),
        Err(JobError::Dropped) => Err(AppError::Internal("the worker pool dropped the job".into())),
    }
}

/// A job's result, as both front doors (HTTP and gRPC) see it.
#[derive(Debug, Clone, Copy)]
pub struct JobDone {
    pub queue_wait: Duration,
    pub total: Duration,
}

/// Why a job gave no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobError {
    /// The queue holds `worker_queue_max` jobs already: refused at once (503 / RESOURCE_EXHAUSTED).
    Shed { queue_max: u32, retry_after: Duration },
    /// Deadline-aware admission (`worker_deadline_check`): the work queued ahead would start
    /// this job after its deadline could still be met; refused at once (503 /
    /// RESOURCE_EXHAUSTED) instead of failing at the deadline.
    WouldMissDeadline { starts_in: Duration, deadline: Duration },
    /// The deadline passed in the queue or while the job ran (504 / DEADLINE_EXCEEDED).
    DeadlineExceeded,
    /// The pool lost the job (it was stopping).
    Dropped,
}

/// Queues `work` on the pool and waits for it until `deadline` (from now), under the knobs in
/// force: `worker_queue_max` bounds the queue, `worker_deadline_check` lets a worker skip a job
/// whose deadline passed or whose caller is gone. Dropping the future (the caller left) leaves
/// the job queued: in fragile a worker still runs it (`worker_pool_wasted_work_total`).
pub async fn run_job(state: &AppState, work_ms: u64, mode: WorkMode, deadline: Duration) -> Result<JobDone, JobError> {
    let (queue_max, check_deadline) = {
        let k = state.knobs.current();
        (k.worker_queue_max, k.worker_deadline_check)
    };
    let start = Instant::now();
    let (tx, rx) = oneshot::channel();
    let job = Job {
        enqueued: start,
        deadline: start + deadline,
        work: Duration::from_millis(work_ms),
        mode,
        check_deadline,
        done: tx,
    };
    let pool = &state.worker_pool;
    if let Err(refused) = pool.submit(job, queue_max) {
        pool.shared.metrics.rejected.inc();
        return Err(refused);
    }
    match tokio::time::timeout(deadline, rx).await {
        Ok(Ok(Outcome::Done { queue_wait })) => Ok(JobDone {
            queue_wait,
            total: start.elapsed(),
        }),
        Ok(Ok(Outcome::Skipped)) => Err(JobError::DeadlineExceeded),
        Ok(Err(_)) => Err(JobError::Dropped),
        Err(_) => {
            pool.shared
                .metrics
                .deadline_exceeded
                .with_label_values(&["client"])
                .inc();
            Err(JobError::DeadlineExceeded)
        }
    }
}

impl crate::knobs::ApplyKnobs for WorkerPool {
    fn apply_knobs(&self, knobs: &crate::knobs::Knobs) {
        self.resize(knobs.worker_pool_size);
    }
}

/// The catalog entry (see [`crate::scenarios::ALL`]).
pub const SCENARIO: Scenario = crate::scenarios::scenario!("worker-pool", "queue wait passes the deadline")
    .repro(REPRO)
    .gauges(&[
        Gauge::value("worker_queue", "worker_pool_queue_depth"),
        Gauge::value("worker_busy", "worker_pool_busy"),
        Gauge::value("worker_threads", "worker_pool_threads"),
    ])
    .saturation(saturation)
    .dashboard(DASHBOARD)
    .alerts(ALERTS);

/// Its row of the Grafana dashboard (k8s/monitoring/grafana-dashboard.json).
const DASHBOARD: &[Panel] = &[
    Panel {
        title: "Busy workers and queue",
        unit: "short",
        targets: &[
            ("sum(worker_pool_busy)", "busy"),
            ("sum(worker_pool_threads)", "threads"),
            ("sum(worker_pool_queue_depth)", "queued"),
        ],
        description: "",
    },
    Panel {
        title: "Queue wait p95 vs deadline",
        unit: "s",
        targets: &[
            (
                "histogram_quantile(0.95, sum by (instance, le) (rate(worker_pool_queue_wait_seconds_bucket[1m])))",
                "p95 wait {{instance}}",
            ),
            (
                "knob_value{knob=\"request_deadline_ms\"} / 1000",
                "deadline {{instance}}",
            ),
        ],
        description: "Once the wait passes the deadline, every request gets DEADLINE_EXCEEDED.",
    },
    Panel {
        title: "Deadline exceeded, wasted work, rejected",
        unit: "reqps",
        targets: &[
            (
                "sum(rate(worker_pool_deadline_exceeded_total[1m]))",
                "deadline exceeded",
            ),
            ("sum(rate(worker_pool_wasted_work_total[1m]))", "wasted work"),
            ("sum(rate(worker_pool_rejected_total[1m]))", "rejected (queue full)"),
        ],
        description: "",
    },
];

/// The alerts that fire on its collapse (k8s/monitoring/alerts.rules.yml).
const ALERTS: &[Alert] = &[
    Alert {
        name: "WorkerQueueWaitNearDeadline",
        expr: "histogram_quantile(0.95, sum by (instance, le) (rate(worker_pool_queue_wait_seconds_bucket[1m])))\n  > on (instance) (0.8 * max by (instance) (knob_value{knob=\"request_deadline_ms\"}) / 1000)\n",
        for_: "1m",
        severity: "critical",
        summary: "Worker-pool queue wait near the request deadline on {{ $labels.instance }}",
        description: "p95 queue wait is {{ $value | humanizeDuration }}: requests will reach workers after their deadline (DEADLINE_EXCEEDED while workers stay busy).",
    },
];

/// Its saturation banner: every thread busy, or calls queued.
fn saturation(r: &Readings) -> Option<Saturated> {
    let mut s = Saturated::new("worker pool");
    if r.n("worker_threads") > 0.0 && r.n("worker_busy") >= r.n("worker_threads") {
        s = s.because(
            &["worker_busy", "worker_threads"],
            format!("{} of {} threads busy", r.n("worker_busy"), r.n("worker_threads")),
        );
    }
    if r.n("worker_queue") > 0.0 {
        s = s.because(&["worker_queue"], format!("{} calls queued", r.n("worker_queue")));
    }
    s.if_any()
}

/// The same report over real gRPC (`src/grpc.rs`, `GRPC_PORT`): no HTTP routes of its own.
pub const GRPC_SCENARIO: Scenario = crate::scenarios::scenario!("worker-pool-grpc", "queue wait passes the deadline, over real gRPC: DEADLINE_EXCEEDED", without routes)
    .repro(GRPC_REPRO)
    .gauges(&[
        Gauge {
            key: "grpc_deadline_exceeded",
            metric: "grpc_server_handled_total",
            labels: &[("grpc_code", "DeadlineExceeded")],
            reading: crate::scenarios::Reading::Value,
        },
        Gauge {
            key: "grpc_resource_exhausted",
            metric: "grpc_server_handled_total",
            labels: &[("grpc_code", "ResourceExhausted")],
            reading: crate::scenarios::Reading::Value,
        },
    ])
    .dashboard(GRPC_DASHBOARD)
    .alerts(GRPC_ALERTS);

/// Its row of the Grafana dashboard (k8s/monitoring/grafana-dashboard.json).
const GRPC_DASHBOARD: &[Panel] = &[
    Panel {
        title: "gRPC calls/s by code",
        unit: "reqps",
        targets: &[(
            "sum by (grpc_method, grpc_code) (rate(grpc_server_handled_total[1m]))",
            "{{grpc_method}} {{grpc_code}}",
        )],
        description: "DeadlineExceeded climbing with OK falling: the pool is past workers / work time.",
    },
    Panel {
        title: "gRPC handling p95",
        unit: "s",
        targets: &[(
            "histogram_quantile(0.95, sum by (grpc_method, le) (rate(grpc_server_handling_seconds_bucket[1m])))",
            "p95 {{grpc_method}}",
        )],
        description: "Pinned at the deadline in fragile; short in hardened (RESOURCE_EXHAUSTED at once).",
    },
];

/// The alerts that fire on its collapse (k8s/monitoring/alerts.rules.yml).
const GRPC_ALERTS: &[Alert] = &[
    Alert {
        name: "GrpcDeadlineExceeded",
        expr: "sum by (instance, grpc_method) (rate(grpc_server_handled_total{grpc_code=\"DeadlineExceeded\"}[5m]))\n  / sum by (instance, grpc_method) (rate(grpc_server_handled_total[5m])) > 0.5\n",
        for_: "2m",
        severity: "critical",
        summary: "Most {{ $labels.grpc_method }} calls on {{ $labels.instance }} end in DEADLINE_EXCEEDED",
        description: "The worker pool is past its capacity (workers / work time): calls wait in its queue past their deadline while the workers run calls nobody waits for (worker_pool_wasted_work_total). Cure: a bounded queue (RESOURCE_EXHAUSTED at once), deadline checks, more workers.",
    },
];

/// Its routes in the OpenAPI document, each with its guard group.
fn operations() -> Vec<Op> {
    vec![
        Op::new("get", "/api/worker-pool", "Work on a fixed OS-thread pool within a deadline")
            .query(&[&WORK_MS, &MODE, &DEADLINE_MS])
            .param(json!({"name": "grpc-timeout", "in": "header", "required": false,
                          "description": "the deadline as gRPC sends it: digits and a unit (H, M, S, m, u, n), e.g. 500m",
                          "schema": {"type": "string", "pattern": "^[0-9]{1,8}[HMSmun]$"}}))
            .ok(
                200,
                "done within the deadline",
                obj(&[("work_ms", int()), ("mode", string()), ("queue_wait_ms", num()), ("total_ms", num()), ("deadline_ms", int())]),
            )
            .fails(422, "invalid_parameter")
            .fails(503, "the queue is full (worker_queue_max) (shed)")
            .fails(504, "the deadline passed (deadline_exceeded)"),
    ]
}

/// `chokepoint repro worker-pool`: its plan and prediction.
const REPRO: Repro = Repro::new(repro_knobs, repro_plan, repro_predict);

/// The knobs `repro worker-pool` sets on top of the profile, to keep the run short and the numbers small.
fn repro_knobs() -> Value {
    json!({"worker_pool_size": 4, "request_deadline_ms": 2000})
}

/// The plan: what `repro worker-pool` sends, at which rates, watching what.
fn repro_plan(config: &RunConfig, _cpu_ms: Option<f64>) -> Plan {
    let knobs = &config.knobs;
    let mut plan = Plan::new(repro_knobs());
    plan.target = Target::get("/api/worker-pool?work_ms=100");
    plan.rates = around((knobs.worker_pool_size as f64) / 0.1, AROUND);
    plan.watches = vec![
        Watch::gauge("worker_pool_queue_depth", "queue depth (max)", 0.0),
        Watch::gauge(
            "worker_pool_busy",
            "busy threads (max)",
            f64::from(knobs.worker_pool_size) - 0.5,
        ),
        Watch::counter("worker_pool_deadline_exceeded_total", "deadline exceeded", 0.0),
    ];
    plan
}

/// The prediction from the knobs in force (after the profile and the run's knobs).
fn repro_predict(config: &RunConfig, _cpu_ms: Option<f64>) -> Prediction {
    predict(config, "504")
}

/// Capacity = workers / 0.1 s of work; past it, a queue whose wait passes the deadline.
fn predict(config: &RunConfig, failure: &str) -> Prediction {
    let knobs = &config.knobs;
    let w = knobs.worker_pool_size as f64;
    let bound = match knobs.worker_queue_max {
        0 => "none".to_string(),
        n => n.to_string(),
    };
    Prediction {
        capacity_rps: Some(w / 0.1),
        formula: format!("{w} worker threads / 0.1 s work = {:.1} req/s", w / 0.1),
        expect: format!(
            "past capacity the queue grows (bound {bound}); requests whose wait passes the {} ms deadline fail with {failure}",
            knobs.request_deadline_ms
        ),
    }
}

/// `chokepoint repro worker-pool-grpc`: the same pool and stages as `repro worker-pool`, the
/// calls over real gRPC carrying the knob `request_deadline_ms` as their `grpc-timeout`.
const GRPC_REPRO: Repro = Repro::new(grpc_repro_knobs, grpc_repro_plan, grpc_repro_predict);

/// 4 workers, as `repro worker-pool`, and a 1 s deadline (the report's is 2 s) so that a short
/// stage past capacity already queues past it.
fn grpc_repro_knobs() -> Value {
    json!({"worker_pool_size": 4, "request_deadline_ms": 1000})
}

fn grpc_repro_plan(config: &RunConfig, cpu_ms: Option<f64>) -> Plan {
    use crate::proto::worker::{Mode, WorkRequest, WORK_PATH};
    let mut plan = repro_plan(config, cpu_ms);
    plan.knobs = grpc_repro_knobs();
    let message = WorkRequest {
        work_ms: 100,
        mode: Mode::Block as i32,
        deadline_ms: 0,
    };
    plan.target = Target::grpc(
        WORK_PATH,
        prost::Message::encode_to_vec(&message),
        Duration::from_millis(config.knobs.request_deadline_ms),
        "work_ms: 100",
    );
    plan.watches.push(Watch::counter(
        "worker_pool_wasted_work_total",
        "work for callers already gone",
        0.0,
    ));
    plan
}

fn grpc_repro_predict(config: &RunConfig, _cpu_ms: Option<f64>) -> Prediction {
    predict(
        config,
        "status 4 DEADLINE_EXCEEDED (hardened: 8 RESOURCE_EXHAUSTED once the queue is full)",
    )
}

/// The refusal's text when a job could not finish before its deadline.
pub(crate) fn would_miss(starts_in: Duration, deadline: Duration, work_ms: u64) -> String {
    format!(
        "the work queued ahead starts this job in {} ms; with {work_ms} ms of work it would end after its {} ms deadline: refused now (worker_deadline_check)",
        starts_in.as_millis(),
        deadline.as_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_parses() {
        assert_eq!(parse_grpc_timeout("500m"), Some(Duration::from_millis(500)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5"), None);
        assert_eq!(parse_grpc_timeout("abcS"), None);
        assert_eq!(parse_grpc_timeout("1000000000m"), None, "at most 8 digits");
    }

    #[test]
    fn pool_resizes_both_ways() {
        let pool = WorkerPool::new(3, &Registry::new());
        assert_eq!(pool.threads(), 3);
        pool.resize(6);
        assert_eq!(pool.threads(), 6);
        pool.resize(1);
        let start = Instant::now();
        while pool.threads() > 1 && start.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(pool.threads(), 1);
    }
}
