//! Runtime knobs: every setting that causes or cures a collapse, tunable while the load runs.
//!
//! Layers, later wins: the profile's values (`PROFILE=fragile`, the default, behaves like the
//! field reports; `hardened` turns every fix on) < environment < CLI flags < runtime changes
//! through `/admin`. The current set lives in the app state behind a `watch` channel; readers
//! take a cheap snapshot per request, and [`crate::admin`] applies changes (rebuilding pools
//! where a size changed) before it replies.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus::{GaugeVec, IntCounter, Opts, Registry};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::settings::Settings;
use crate::telemetry::register;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Behaves like the field reports: 30 s acquire wait, no timeouts, no shedding, inline CPU.
    Fragile,
    /// Every fix on with sensible values.
    Hardened,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Fragile => "fragile",
            Profile::Hardened => "hardened",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CpuMode {
    /// CPU work runs on the async workers (fragile: unrelated routes starve).
    Inline,
    /// CPU work runs on a bounded blocking pool; excess work is shed with 503.
    Offload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeployMode {
    /// The deployment's work runs before the answer (fragile: waits pile up to the timeout).
    Sync,
    /// 202 + Location at once; workers drain a bounded queue at database speed.
    Async,
}

/// The runtime-tunable settings. Field names are the knob names of the admin API; units are in
/// the names. `0` means "off / unlimited" where the range allows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Knobs {
    pub db_pool_size: u32,
    pub db_max_overflow: u32,
    pub db_pool_timeout_ms: u64,
    pub db_statement_timeout_ms: u64,
    pub cpu_mode: CpuMode,
    pub cpu_max_concurrency: u32,
    pub max_in_flight: u32,
    pub http_header_read_timeout_ms: u64,
    pub http_idle_timeout_ms: u64,
    pub http_max_connections: u32,
    pub rate_limit_enabled: bool,
    pub rate_limit_rps: u32,
    pub rate_limit_burst: u32,
    pub request_timeout_cpu_ms: u64,
    pub request_timeout_io_ms: u64,
    pub request_timeout_db_ms: u64,
    pub request_timeout_downstream_ms: u64,
    pub downstream_timeout_cap_ms: u64,
    pub downstream_max_concurrency: u32,
    pub breaker_enabled: bool,
    pub breaker_failure_rate: f64,
    pub breaker_min_calls: u32,
    pub breaker_window_calls: u32,
    pub breaker_open_ms: u64,
    pub retry_max_attempts: u32,
    pub retry_base_ms: u64,
    pub retry_max_backoff_ms: u64,
    pub retry_budget_percent: u32,
    pub memory_budget_mb: u64,
    pub memory_trim_interval_ms: u64,
    pub worker_pool_size: u32,
    pub worker_queue_max: u32,
    pub worker_deadline_check: bool,
    pub request_deadline_ms: u64,
    pub min_warm_workers: u32,
    pub max_workers: u32,
    pub cold_start_ms: u64,
    pub idle_timeout_ms: u64,
    pub gateway_timeout_ms: u64,
    pub deploy_mode: DeployMode,
    pub deploy_timeout_ms: u64,
    pub deploy_work_ms: u64,
    pub deploy_queue_max: u32,
    pub deploy_workers: u32,
    pub cache_ttl_ms: u64,
    pub cache_ttl_jitter_percent: u32,
    pub cache_single_flight: bool,
    pub cache_serve_stale: bool,
    pub cache_query_ms: u64,
    pub redis_timeout_ms: u64,
    pub redis_pool_size: u32,
    pub redis_pool_timeout_ms: u64,
}

impl Knobs {
    pub fn for_profile(profile: Profile) -> Self {
        match profile {
            Profile::Fragile => Knobs {
                db_pool_size: 5,
                db_max_overflow: 10,
                db_pool_timeout_ms: 30_000,
                db_statement_timeout_ms: 0,
                cpu_mode: CpuMode::Inline,
                cpu_max_concurrency: 2,
                max_in_flight: 0,
                http_header_read_timeout_ms: 30_000,
                http_idle_timeout_ms: 120_000,
                http_max_connections: 0,
                rate_limit_enabled: false,
                rate_limit_rps: 100,
                rate_limit_burst: 200,
                request_timeout_cpu_ms: 0,
                request_timeout_io_ms: 0,
                request_timeout_db_ms: 0,
                request_timeout_downstream_ms: 0,
                downstream_timeout_cap_ms: 0,
                downstream_max_concurrency: 0,
                breaker_enabled: false,
                breaker_failure_rate: 0.5,
                breaker_min_calls: 5,
                breaker_window_calls: 20,
                breaker_open_ms: 5_000,
                retry_max_attempts: 1,
                retry_base_ms: 0,
                retry_max_backoff_ms: 2_000,
                retry_budget_percent: 0,
                memory_budget_mb: 0,
                memory_trim_interval_ms: 5_000,
                worker_pool_size: 10,
                worker_queue_max: 0,
                worker_deadline_check: false,
                request_deadline_ms: 2_000,
                min_warm_workers: 0,
                max_workers: 10,
                cold_start_ms: 1_000,
                idle_timeout_ms: 60_000,
                gateway_timeout_ms: 1_150,
                deploy_mode: DeployMode::Sync,
                deploy_timeout_ms: 20_000,
                deploy_work_ms: 2000,
                deploy_queue_max: 1000,
                deploy_workers: 4,
                cache_ttl_ms: 30_000,
                cache_ttl_jitter_percent: 0,
                cache_single_flight: false,
                cache_serve_stale: false,
                cache_query_ms: 200,
                redis_timeout_ms: 0,
                redis_pool_size: 16,
                redis_pool_timeout_ms: 30_000,
            },
            Profile::Hardened => Knobs {
                db_pool_size: 5,
                db_max_overflow: 10,
                db_pool_timeout_ms: 250,
                db_statement_timeout_ms: 10_000,
                cpu_mode: CpuMode::Offload,
                cpu_max_concurrency: 2,
                max_in_flight: 256,
                http_header_read_timeout_ms: 5_000,
                http_idle_timeout_ms: 30_000,
                http_max_connections: 0,
                rate_limit_enabled: false,
                rate_limit_rps: 100,
                rate_limit_burst: 200,
                request_timeout_cpu_ms: 10_000,
                request_timeout_io_ms: 35_000,
                request_timeout_db_ms: 15_000,
                request_timeout_downstream_ms: 10_000,
                downstream_timeout_cap_ms: 2_500,
                downstream_max_concurrency: 16,
                breaker_enabled: true,
                breaker_failure_rate: 0.5,
                breaker_min_calls: 5,
                breaker_window_calls: 20,
                breaker_open_ms: 5_000,
                retry_max_attempts: 3,
                retry_base_ms: 100,
                retry_max_backoff_ms: 2_000,
                retry_budget_percent: 20,
                memory_budget_mb: 256,
                memory_trim_interval_ms: 5_000,
                worker_pool_size: 20,
                worker_queue_max: 20,
                worker_deadline_check: true,
                request_deadline_ms: 2_000,
                min_warm_workers: 3,
                max_workers: 10,
                cold_start_ms: 1_000,
                idle_timeout_ms: 60_000,
                gateway_timeout_ms: 1_150,
                deploy_mode: DeployMode::Async,
                deploy_timeout_ms: 20_000,
                deploy_work_ms: 2000,
                deploy_queue_max: 1000,
                deploy_workers: 4,
                cache_ttl_ms: 30_000,
                cache_ttl_jitter_percent: 20,
                cache_single_flight: true,
                cache_serve_stale: true,
                cache_query_ms: 200,
                redis_timeout_ms: 100,
                redis_pool_size: 16,
                redis_pool_timeout_ms: 100,
            },
        }
    }
}

/// Allowed values of one knob.
#[derive(Debug, Clone, Copy)]
pub enum Range {
    Int(u64, u64),
    Float(f64, f64),
    Bool,
    Choice(&'static [&'static str]),
}

/// What the admin API and `docs/knobs.md` say about one knob.
pub struct KnobSpec {
    pub name: &'static str,
    /// Environment variable that sets it at start-up (the CLI flag is its kebab-case form).
    pub env: &'static str,
    pub range: Range,
    /// Scenario it causes or cures.
    pub scenario: &'static str,
    pub doc: &'static str,
}

macro_rules! spec {
    ($name:literal, $env:literal, $range:expr, $scenario:literal, $doc:literal) => {
        KnobSpec {
            name: $name,
            env: $env,
            range: $range,
            scenario: $scenario,
            doc: $doc,
        }
    };
}

/// Every runtime knob, in the order of [`Knobs`].
pub const SPECS: &[KnobSpec] = &[
    spec!(
        "db_pool_size",
        "DB_POOL_SIZE",
        Range::Int(1, 1000),
        "db-pool",
        "connections the pool keeps open; a change rebuilds the pool and drains the old one"
    ),
    spec!(
        "db_max_overflow",
        "DB_MAX_OVERFLOW",
        Range::Int(0, 1000),
        "db-pool",
        "extra connections under load (pool maximum = size + overflow)"
    ),
    spec!(
        "db_pool_timeout_ms",
        "DB_POOL_TIMEOUT",
        Range::Int(10, 600_000),
        "db-pool",
        "acquire timeout: how long a request waits for a connection before 503 (env in seconds)"
    ),
    spec!(
        "db_statement_timeout_ms",
        "DB_STATEMENT_TIMEOUT_MS",
        Range::Int(0, 600_000),
        "db-pool",
        "longest a query may hold its connection (0 = unlimited)"
    ),
    spec!(
        "cpu_mode",
        "CPU_MODE",
        Range::Choice(&["inline", "offload"]),
        "cpu",
        "inline: CPU work on the async workers; offload: on a bounded blocking pool"
    ),
    spec!(
        "cpu_max_concurrency",
        "CPU_MAX_CONCURRENCY",
        Range::Int(1, 256),
        "cpu",
        "offload mode: CPU jobs running at once; more are shed with 503"
    ),
    spec!(
        "max_in_flight",
        "MAX_IN_FLIGHT",
        Range::Int(0, 100_000),
        "all",
        "load shedding: requests in flight beyond this get 503 + Retry-After (0 = unlimited)"
    ),
    spec!(
        "http_header_read_timeout_ms",
        "HTTP_HEADER_READ_TIMEOUT_MS",
        Range::Int(100, 600_000),
        "all",
        "a connection that has not sent a whole request head within this is closed (slow-header sockets); new connections take a change"
    ),
    spec!(
        "http_idle_timeout_ms",
        "HTTP_IDLE_TIMEOUT_MS",
        Range::Int(100, 3_600_000),
        "all",
        "a keep-alive connection with no request in flight and no bytes moving for this long is closed"
    ),
    spec!(
        "http_max_connections",
        "HTTP_MAX_CONNECTIONS",
        Range::Int(0, 1_000_000),
        "all",
        "open client connections allowed; at the cap the oldest idle one is closed for a new one, or the new one is refused when none is idle (0 = auto: the descriptor limit less a reserve)"
    ),
    spec!(
        "rate_limit_enabled",
        "ENABLE_RATE_LIMITING",
        Range::Bool,
        "burst",
        "rate limiting: requests above the rate get 429 + Retry-After"
    ),
    spec!(
        "rate_limit_rps",
        "RATE_LIMIT_RPS",
        Range::Int(1, 1_000_000),
        "burst",
        "sustained requests per second allowed"
    ),
    spec!(
        "rate_limit_burst",
        "RATE_LIMIT_BURST",
        Range::Int(1, 1_000_000),
        "burst",
        "requests allowed at once above the rate"
    ),
    spec!(
        "request_timeout_cpu_ms",
        "REQUEST_TIMEOUT_CPU_MS",
        Range::Int(0, 600_000),
        "cpu",
        "request timeout of the CPU routes (0 = none)"
    ),
    spec!(
        "request_timeout_io_ms",
        "REQUEST_TIMEOUT_IO_MS",
        Range::Int(0, 600_000),
        "cpu",
        "request timeout of the slow-I/O routes (0 = none)"
    ),
    spec!(
        "request_timeout_db_ms",
        "REQUEST_TIMEOUT_DB_MS",
        Range::Int(0, 600_000),
        "db-pool",
        "request timeout of the database routes (0 = none)"
    ),
    spec!(
        "request_timeout_downstream_ms",
        "REQUEST_TIMEOUT_DOWNSTREAM_MS",
        Range::Int(0, 600_000),
        "downstream",
        "request timeout of the downstream routes (0 = none)"
    ),
    spec!(
        "downstream_timeout_cap_ms",
        "DOWNSTREAM_TIMEOUT_CAP_MS",
        Range::Int(0, 600_000),
        "downstream",
        "caps every downstream call's timeout, /api/no-timeout included (0 = calls keep their own)"
    ),
    spec!(
        "downstream_max_concurrency",
        "DOWNSTREAM_MAX_CONCURRENCY",
        Range::Int(0, 100_000),
        "downstream",
        "bulkhead: downstream calls at once; more fail fast with 503 (0 = unbounded)"
    ),
    spec!(
        "breaker_enabled",
        "ENABLE_CIRCUIT_BREAKER",
        Range::Bool,
        "downstream",
        "circuit breaker on downstream calls"
    ),
    spec!(
        "breaker_failure_rate",
        "BREAKER_FAILURE_RATE",
        Range::Float(0.01, 1.0),
        "downstream",
        "failure rate over the window that opens the breaker"
    ),
    spec!(
        "breaker_min_calls",
        "BREAKER_MIN_CALLS",
        Range::Int(1, 10_000),
        "downstream",
        "calls in the window before the rate is judged"
    ),
    spec!(
        "breaker_window_calls",
        "BREAKER_WINDOW_CALLS",
        Range::Int(1, 10_000),
        "downstream",
        "the last N calls the failure rate is computed over"
    ),
    spec!(
        "breaker_open_ms",
        "BREAKER_OPEN_MS",
        Range::Int(10, 600_000),
        "downstream",
        "how long the breaker stays open before a half-open trial call"
    ),
    spec!(
        "retry_max_attempts",
        "RETRY_MAX_ATTEMPTS",
        Range::Int(1, 10),
        "retry-storm",
        "attempts per downstream call (1 = no retry)"
    ),
    spec!(
        "retry_base_ms",
        "RETRY_BASE_MS",
        Range::Int(0, 60_000),
        "retry-storm",
        "backoff base: attempt n waits a random time in [0, base * 2^n] (0 = immediate retries)"
    ),
    spec!(
        "retry_max_backoff_ms",
        "RETRY_MAX_BACKOFF_MS",
        Range::Int(0, 600_000),
        "retry-storm",
        "cap on one backoff wait"
    ),
    spec!(
        "retry_budget_percent",
        "RETRY_BUDGET_PERCENT",
        Range::Int(0, 1000),
        "retry-storm",
        "retries may add at most this % of first attempts over the last 10 s (0 = unlimited)"
    ),
    spec!(
        "memory_budget_mb",
        "MEMORY_BUDGET_MB",
        Range::Int(0, 1_048_576),
        "memory",
        "memory the memory endpoints may hold before refusing with 507 (0 = only the safety cap)"
    ),
    spec!(
        "memory_trim_interval_ms",
        "MEMORY_TRIM_INTERVAL_MS",
        Range::Int(0, 3_600_000),
        "memory",
        "how often freed heap memory is handed back to the OS (glibc malloc_trim), so RSS falls after load; 0 = never (glibc's own behaviour: RSS stays at its peak)"
    ),
    spec!(
        "worker_pool_size",
        "WORKER_POOL_SIZE",
        Range::Int(1, 512),
        "worker-pool",
        "OS threads of the worker pool behind /api/worker-pool; resized live"
    ),
    spec!(
        "worker_queue_max",
        "WORKER_QUEUE_MAX",
        Range::Int(0, 100_000),
        "worker-pool",
        "jobs allowed to wait for a worker; more are refused with 503 + Retry-After (0 = unbounded)"
    ),
    spec!(
        "worker_deadline_check",
        "WORKER_DEADLINE_CHECK",
        Range::Bool,
        "worker-pool",
        "skip a queued job whose deadline passed before a worker took it (no wasted work)"
    ),
    spec!(
        "request_deadline_ms",
        "REQUEST_DEADLINE_MS",
        Range::Int(1, 600_000),
        "worker-pool",
        "default deadline of a worker-pool request (a grpc-timeout header or deadline_ms overrides it)"
    ),
    spec!(
        "min_warm_workers",
        "MIN_WARM_WORKERS",
        Range::Int(0, 1000),
        "cold-start",
        "simulated workers kept warm (provisioned concurrency); the cold-start fix"
    ),
    spec!(
        "max_workers",
        "MAX_WORKERS",
        Range::Int(1, 1000),
        "cold-start",
        "simulated workers that may exist at once (started on demand)"
    ),
    spec!(
        "cold_start_ms",
        "COLD_START_MS",
        Range::Int(0, 600_000),
        "cold-start",
        "time a new simulated worker takes before it can serve"
    ),
    spec!(
        "idle_timeout_ms",
        "IDLE_TIMEOUT_MS",
        Range::Int(10, 3_600_000),
        "cold-start",
        "idle time after which a simulated worker above the warm minimum is retired"
    ),
    spec!(
        "gateway_timeout_ms",
        "GATEWAY_TIMEOUT_MS",
        Range::Int(1, 600_000),
        "cold-start",
        "the gateway answers 504 once a cold-start request has taken this long"
    ),    spec!(
        "deploy_mode",
        "DEPLOY_MODE",
        Range::Choice(&["sync", "async"]),
        "burst",
        "sync: POST /api/v1/deployments/ does the work before answering; async: 202 + Location, work drained from a bounded queue"
    ),
    spec!(
        "deploy_timeout_ms",
        "DEPLOY_TIMEOUT_MS",
        Range::Int(0, 600000),
        "burst",
        "request timeout of POST /api/v1/deployments/ (the report's 20 s; 0 = none); 504 when it expires"
    ),
    spec!(
        "deploy_work_ms",
        "DEPLOY_WORK_MS",
        Range::Int(0, 60000),
        "burst",
        "provisioning work each deployment does inside its transaction, holding its connection"
    ),
    spec!(
        "deploy_queue_max",
        "DEPLOY_QUEUE_MAX",
        Range::Int(1, 1000000),
        "burst",
        "async mode: deployments allowed to wait for a worker; more are refused with 503 + Retry-After"
    ),
    spec!(
        "deploy_workers",
        "DEPLOY_WORKERS",
        Range::Int(1, 256),
        "burst",
        "async mode: workers draining the deployment queue (keep below the pool size, so accepting always finds a connection)"
    ),
    spec!(
        "cache_ttl_ms",
        "CACHE_TTL_MS",
        Range::Int(100, 86400000),
        "cache-stampede",
        "how long a cached item stays fresh in Redis"
    ),
    spec!(
        "cache_ttl_jitter_percent",
        "CACHE_TTL_JITTER_PERCENT",
        Range::Int(0, 100),
        "cache-stampede",
        "each TTL is drawn from ttl ± this %, so keys filled together do not expire together"
    ),
    spec!(
        "cache_single_flight",
        "CACHE_SINGLE_FLIGHT",
        Range::Bool,
        "cache-stampede",
        "one database load per missing key at a time; concurrent misses wait for it"
    ),
    spec!(
        "cache_serve_stale",
        "CACHE_SERVE_STALE",
        Range::Bool,
        "cache-stampede",
        "on a Redis error or timeout, answer from the last value this process saw instead of 500"
    ),
    spec!(
        "cache_query_ms",
        "CACHE_QUERY_MS",
        Range::Int(0, 60000),
        "cache-stampede",
        "time the slow database query behind a cache miss holds its connection"
    ),
    spec!(
        "redis_timeout_ms",
        "REDIS_TIMEOUT_MS",
        Range::Int(0, 60000),
        "cache-stampede",
        "timeout of one Redis operation, connection included (0 = none)"
    ),
    spec!(
        "redis_pool_size",
        "REDIS_POOL_SIZE",
        Range::Int(1, 1000),
        "cache-stampede",
        "Redis connections the pool may open; resized live"
    ),
    spec!(
        "redis_pool_timeout_ms",
        "REDIS_POOL_TIMEOUT_MS",
        Range::Int(1, 600000),
        "cache-stampede",
        "how long a request waits for a pooled Redis connection"
    ),
];

/// Settings that exist but cannot change while running (a restart is needed).
pub const STARTUP_ONLY: &[(&str, &str)] = &[
    ("host", "HOST"),
    ("port", "PORT"),
    ("worker_count", "WORKER_COUNT"),
    ("database_url", "DATABASE_URL"),
    ("redis_url", "REDIS_URL"),
    ("redis_key_prefix", "REDIS_KEY_PREFIX"),
    ("skip_migrations", "SKIP_MIGRATIONS"),
    ("sqlite_max_page_count", "SQLITE_MAX_PAGE_COUNT"),
    ("downstream_service_url", "DOWNSTREAM_SERVICE_URL"),
    ("downstream_timeout", "DOWNSTREAM_TIMEOUT"),
    ("memory_leak_limit_mb", "MEMORY_LEAK_LIMIT_MB"),
    ("shutdown_grace_ms", "SHUTDOWN_GRACE_MS"),
    ("shutdown_delay_ms", "SHUTDOWN_DELAY_MS"),
    ("log_format", "LOG_FORMAT"),
    ("profile", "PROFILE"),
    ("admin_token", "ADMIN_TOKEN"),
];

pub fn spec(name: &str) -> Option<&'static KnobSpec> {
    SPECS.iter().find(|s| s.name == name)
}

/// Where a knob's current value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The start-up profile's value.
    Profile,
    /// An environment variable or CLI flag.
    Startup,
    /// A profile switch through `/admin/profile/...`.
    RuntimeProfile,
    /// A `PATCH /admin/config`.
    Runtime,
}

/// One refused field of a change.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    pub knob: String,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<Value>,
    #[serde(skip)]
    pub startup_only: bool,
}

/// The JSON Schema of a `PATCH /admin/config` body: every runtime knob with its type and range,
/// nothing else (unknown names are refused with 422).
pub fn patch_schema() -> Value {
    let properties: serde_json::Map<String, Value> = SPECS
        .iter()
        .map(|s| {
            let schema = match s.range {
                Range::Int(min, max) => json!({"type": "integer", "minimum": min, "maximum": max}),
                Range::Float(min, max) => json!({"type": "number", "minimum": min, "maximum": max}),
                Range::Bool => json!({"type": "boolean"}),
                Range::Choice(c) => json!({"type": "string", "enum": c}),
            };
            let mut schema = schema;
            schema["description"] = json!(s.doc);
            (s.name.to_string(), schema)
        })
        .collect();
    json!({"type": "object", "properties": properties, "additionalProperties": false})
}

fn range_json(r: Range) -> Value {
    match r {
        Range::Int(min, max) => json!({"min": min, "max": max}),
        Range::Float(min, max) => json!({"min": min, "max": max}),
        Range::Bool => json!({"values": [true, false]}),
        Range::Choice(c) => json!({"values": c}),
    }
}

fn check_range(spec: &KnobSpec, v: &Value) -> Result<(), String> {
    let ok = match spec.range {
        Range::Int(min, max) => v.as_u64().is_some_and(|n| (min..=max).contains(&n)),
        Range::Float(min, max) => v.as_f64().is_some_and(|n| (min..=max).contains(&n)),
        Range::Bool => v.is_boolean(),
        Range::Choice(c) => v.as_str().is_some_and(|s| c.contains(&s)),
    };
    if ok {
        return Ok(());
    }
    Err(match spec.range {
        Range::Int(min, max) => format!("`{}` must be an integer between {min} and {max} (got {v})", spec.name),
        Range::Float(min, max) => format!("`{}` must be a number between {min} and {max} (got {v})", spec.name),
        Range::Bool => format!("`{}` must be true or false (got {v})", spec.name),
        Range::Choice(c) => format!("`{}` must be one of {} (got {v})", spec.name, c.join(", ")),
    })
}

/// Applies a partial JSON change to `current`, validating every field before any is applied.
pub fn merge(current: &Knobs, patch: &Value) -> Result<Knobs, Vec<Refusal>> {
    let Some(obj) = patch.as_object() else {
        return Err(vec![Refusal {
            knob: "(body)".into(),
            detail: "the body must be a JSON object of knob names to values".into(),
            range: None,
            startup_only: false,
        }]);
    };
    let mut merged = serde_json::to_value(current).expect("knobs serialize");
    let mut refusals = Vec::new();
    for (name, value) in obj {
        if let Some((_, env)) = STARTUP_ONLY.iter().find(|(n, _)| n == name) {
            refusals.push(Refusal {
                knob: name.clone(),
                detail: format!(
                    "`{name}` is a start-up setting ({env}); it cannot change at runtime, restart with it set"
                ),
                range: None,
                startup_only: true,
            });
            continue;
        }
        let Some(spec) = spec(name) else {
            refusals.push(Refusal {
                knob: name.clone(),
                detail: format!("unknown knob `{name}`; GET /admin/config lists them"),
                range: None,
                startup_only: false,
            });
            continue;
        };
        if let Err(detail) = check_range(spec, value) {
            refusals.push(Refusal {
                knob: name.clone(),
                detail,
                range: Some(range_json(spec.range)),
                startup_only: false,
            });
            continue;
        }
        merged[name] = value.clone();
    }
    if !refusals.is_empty() {
        return Err(refusals);
    }
    serde_json::from_value(merged).map_err(|e| {
        vec![Refusal {
            knob: "(body)".into(),
            detail: e.to_string(),
            range: None,
            startup_only: false,
        }]
    })
}

/// The start-up knobs: the profile's values overridden by whatever the environment or flags set.
pub fn from_settings(settings: &Settings) -> (Knobs, BTreeMap<&'static str, Source>) {
    let mut knobs = Knobs::for_profile(settings.profile);
    let mut sources: BTreeMap<&'static str, Source> = SPECS.iter().map(|s| (s.name, Source::Profile)).collect();
    let mut set = |name: &'static str, apply: &mut dyn FnMut(&mut Knobs)| {
        apply(&mut knobs);
        sources.insert(name, Source::Startup);
    };
    macro_rules! layer {
        ($field:ident, $value:expr) => {
            if let Some(v) = $value {
                set(stringify!($field), &mut |k: &mut Knobs| k.$field = v);
            }
        };
    }
    layer!(db_pool_size, settings.db_pool_size);
    layer!(db_max_overflow, settings.db_max_overflow);
    layer!(
        db_pool_timeout_ms,
        settings.db_pool_timeout.map(|s| (s * 1000.0).round() as u64)
    );
    layer!(db_statement_timeout_ms, settings.db_statement_timeout_ms);
    layer!(cpu_mode, settings.cpu_mode);
    layer!(cpu_max_concurrency, settings.cpu_max_concurrency);
    layer!(max_in_flight, settings.max_in_flight);
    layer!(rate_limit_enabled, settings.enable_rate_limiting);
    layer!(rate_limit_rps, settings.rate_limit_rps);
    layer!(rate_limit_burst, settings.rate_limit_burst);
    layer!(request_timeout_cpu_ms, settings.request_timeout_cpu_ms);
    layer!(request_timeout_io_ms, settings.request_timeout_io_ms);
    layer!(request_timeout_db_ms, settings.request_timeout_db_ms);
    layer!(request_timeout_downstream_ms, settings.request_timeout_downstream_ms);
    layer!(downstream_timeout_cap_ms, settings.downstream_timeout_cap_ms);
    layer!(downstream_max_concurrency, settings.downstream_max_concurrency);
    layer!(breaker_enabled, settings.enable_circuit_breaker);
    layer!(breaker_failure_rate, settings.breaker_failure_rate);
    layer!(breaker_min_calls, settings.breaker_min_calls);
    layer!(breaker_window_calls, settings.breaker_window_calls);
    layer!(breaker_open_ms, settings.breaker_open_ms);
    layer!(retry_max_attempts, settings.retry_max_attempts);
    layer!(retry_base_ms, settings.retry_base_ms);
    layer!(retry_max_backoff_ms, settings.retry_max_backoff_ms);
    layer!(retry_budget_percent, settings.retry_budget_percent);
    layer!(memory_budget_mb, settings.memory_budget_mb);
    layer!(worker_pool_size, settings.worker_pool_size);
    layer!(worker_queue_max, settings.worker_queue_max);
    layer!(worker_deadline_check, settings.worker_deadline_check);
    layer!(request_deadline_ms, settings.request_deadline_ms);
    layer!(min_warm_workers, settings.min_warm_workers);
    layer!(max_workers, settings.max_workers);
    layer!(cold_start_ms, settings.cold_start_ms);
    layer!(idle_timeout_ms, settings.idle_timeout_ms);
    layer!(gateway_timeout_ms, settings.gateway_timeout_ms);
    layer!(http_header_read_timeout_ms, settings.http_header_read_timeout_ms);
    layer!(http_idle_timeout_ms, settings.http_idle_timeout_ms);
    layer!(http_max_connections, settings.http_max_connections);
    layer!(memory_trim_interval_ms, settings.memory_trim_interval_ms);
    layer!(deploy_mode, settings.deploy_mode);
    layer!(deploy_timeout_ms, settings.deploy_timeout_ms);
    layer!(deploy_work_ms, settings.deploy_work_ms);
    layer!(deploy_queue_max, settings.deploy_queue_max);
    layer!(deploy_workers, settings.deploy_workers);
    layer!(cache_ttl_ms, settings.cache_ttl_ms);
    layer!(cache_ttl_jitter_percent, settings.cache_ttl_jitter_percent);
    layer!(cache_single_flight, settings.cache_single_flight);
    layer!(cache_serve_stale, settings.cache_serve_stale);
    layer!(cache_query_ms, settings.cache_query_ms);
    layer!(redis_timeout_ms, settings.redis_timeout_ms);
    layer!(redis_pool_size, settings.redis_pool_size);
    layer!(redis_pool_timeout_ms, settings.redis_pool_timeout_ms);
    (knobs, sources)
}

/// The live knob set, its history of sources, and its metrics.
pub struct KnobStore {
    tx: tokio::sync::watch::Sender<Arc<Knobs>>,
    startup: Arc<Knobs>,
    startup_sources: BTreeMap<&'static str, Source>,
    sources: Mutex<BTreeMap<&'static str, Source>>,
    /// Serialises changes so two PATCHes cannot interleave their pool rebuilds.
    pub change_lock: tokio::sync::Mutex<()>,
    values: GaugeVec,
    changes: IntCounter,
}

impl KnobStore {
    pub fn new(settings: &Settings, registry: &Registry) -> Self {
        let (knobs, sources) = from_settings(settings);
        let values = register(
            registry,
            GaugeVec::new(
                Opts::new(
                    "knob_value",
                    "Current value of each runtime knob (booleans 0/1, choices by position: cpu_mode offload=1, deploy_mode async=1)",
                ),
                &["knob"],
            )
            .unwrap(),
        );
        let changes = register(
            registry,
            IntCounter::new(
                "config_changes_total",
                "Runtime configuration changes applied through /admin",
            )
            .unwrap(),
        );
        let knobs = Arc::new(knobs);
        let store = Self {
            tx: tokio::sync::watch::channel(knobs.clone()).0,
            startup: knobs,
            startup_sources: sources.clone(),
            sources: Mutex::new(sources),
            change_lock: tokio::sync::Mutex::new(()),
            values,
            changes,
        };
        store.export(&store.current());
        store
    }

    /// A snapshot of the current knobs.
    pub fn current(&self) -> Arc<Knobs> {
        self.tx.borrow().clone()
    }

    pub fn startup(&self) -> Arc<Knobs> {
        self.startup.clone()
    }

    /// Publishes `new`, recording `source` for every knob whose value changed.
    pub fn publish(&self, new: Knobs, source: Source) {
        let old = self.current();
        let (old_v, new_v) = (
            serde_json::to_value(&*old).unwrap(),
            serde_json::to_value(&new).unwrap(),
        );
        {
            let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
            for spec in SPECS {
                if old_v[spec.name] != new_v[spec.name] {
                    sources.insert(spec.name, source);
                }
            }
        }
        self.export(&new);
        self.changes.inc();
        self.tx.send_replace(Arc::new(new));
    }

    /// Back to the start-up values and sources.
    pub fn reset(&self) {
        *self.sources.lock().unwrap_or_else(|p| p.into_inner()) = self.startup_sources.clone();
        self.export(&self.startup);
        self.changes.inc();
        self.tx.send_replace(self.startup.clone());
    }

    fn export(&self, knobs: &Knobs) {
        let v = serde_json::to_value(knobs).unwrap();
        for spec in SPECS {
            let n = match &v[spec.name] {
                Value::Bool(b) => f64::from(u8::from(*b)),
                Value::Number(n) => n.as_f64().unwrap_or(0.0),
                // A choice exports its position in the range (cpu_mode offload = 1, deploy_mode async = 1).
                Value::String(s) => match spec.range {
                    Range::Choice(c) => c.iter().position(|x| x == s).unwrap_or(0) as f64,
                    _ => 0.0,
                },
                _ => 0.0,
            };
            self.values.with_label_values(&[spec.name]).set(n);
        }
    }

    /// The `/admin/config` view: every knob with value, profile defaults, source and range,
    /// plus the start-up-only settings.
    pub fn describe(&self, settings: &Settings) -> Value {
        let cur = serde_json::to_value(&*self.current()).unwrap();
        let fragile = serde_json::to_value(Knobs::for_profile(Profile::Fragile)).unwrap();
        let hardened = serde_json::to_value(Knobs::for_profile(Profile::Hardened)).unwrap();
        let startup = serde_json::to_value(&*self.startup).unwrap();
        let sources = self.sources.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let knobs: BTreeMap<&str, Value> = SPECS
            .iter()
            .map(|s| {
                (
                    s.name,
                    json!({
                        "value": cur[s.name],
                        "default": startup[s.name],
                        "source": sources.get(s.name),
                        "runtime_tunable": true,
                        "range": range_json(s.range),
                        "profiles": {"fragile": fragile[s.name], "hardened": hardened[s.name]},
                        "env": s.env,
                        "scenario": s.scenario,
                        "description": s.doc,
                    }),
                )
            })
            .collect();
        let startup_only: BTreeMap<&str, Value> = STARTUP_ONLY
            .iter()
            .map(|(name, env)| {
                let value = match *name {
                    "host" => json!(settings.host.to_string()),
                    "port" => json!(settings.port),
                    "worker_count" => json!(settings.worker_count),
                    "database_url" => json!(crate::infra::database::redact(&settings.effective_database_url())),
                    "redis_url" => json!(settings.redis_url.as_deref().map(crate::infra::database::redact)),
                    "downstream_service_url" => json!(settings.downstream_service_url),
                    "downstream_timeout" => json!(settings.downstream_timeout),
                    "memory_leak_limit_mb" => json!(settings.memory_leak_limit_mb),
                    "shutdown_grace_ms" => json!(settings.shutdown_grace_ms),
                    "log_format" => json!(settings.log_format),
                    "profile" => json!(settings.profile.as_str()),
                    "admin_token" => json!(if settings.admin_token.is_some() {
                        "(set)"
                    } else {
                        "(unset)"
                    }),
                    _ => Value::Null,
                };
                (*name, json!({"value": value, "runtime_tunable": false, "env": env}))
            })
            .collect();
        json!({"knobs": knobs, "startup_only": startup_only})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_cover_every_field_in_order() {
        let v = serde_json::to_value(Knobs::for_profile(Profile::Fragile)).unwrap();
        let fields: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut names: Vec<&str> = SPECS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        let mut fields_sorted = fields.clone();
        fields_sorted.sort_unstable();
        assert_eq!(names, fields_sorted);
    }

    #[test]
    fn both_profiles_are_within_range() {
        for p in [Profile::Fragile, Profile::Hardened] {
            let v = serde_json::to_value(Knobs::for_profile(p)).unwrap();
            for s in SPECS {
                check_range(s, &v[s.name]).unwrap_or_else(|e| panic!("{p:?}: {e}"));
            }
        }
    }

    #[test]
    fn merge_validates_everything_before_applying() {
        let k = Knobs::for_profile(Profile::Fragile);
        let ok = merge(&k, &json!({"db_pool_size": 7, "cpu_mode": "offload"})).unwrap();
        assert_eq!(ok.db_pool_size, 7);
        assert_eq!(ok.cpu_mode, CpuMode::Offload);
        let err = merge(
            &k,
            &json!({"db_pool_size": 0, "nope": 1, "port": 1, "cpu_mode": "x", "breaker_enabled": 1}),
        )
        .unwrap_err();
        assert_eq!(err.len(), 5);
        assert!(err.iter().any(|r| r.startup_only && r.knob == "port"));
        assert!(merge(&k, &json!({"db_pool_size": "5"})).is_err());
        assert!(merge(&k, &json!({"db_pool_size": 5.5})).is_err());
        assert!(merge(&k, &json!([1])).is_err());
    }
}

#[cfg(test)]
mod doc_tests {
    /// `docs/knobs.md` documents every knob with its environment variable.
    #[test]
    fn every_knob_is_documented() {
        let doc = include_str!("../docs/knobs.md");
        for spec in super::SPECS {
            assert!(
                doc.contains(&format!("| `{}` | `{}` |", spec.name, spec.env)),
                "{} missing from docs/knobs.md",
                spec.name
            );
        }
    }
}
