//! Runtime knobs: every setting that causes or cures a collapse, tunable while the load runs.
//!
//! **One table.** [`knob_table!`] below declares each knob once: its name and type, environment
//! variable (the CLI flag is its kebab-case form), range, owning scenario, fragile and hardened
//! values and doc line. From that one declaration come the [`Knobs`] struct, both profiles,
//! [`SPECS`] (what `/admin/config`, the OpenAPI schema and `docs/knobs.md` say), the env/CLI
//! parsing ([`KnobArgs`], flattened into the serve settings) and the typed field access that
//! `PATCH /admin/config` uses. Env, CLI and `PATCH` go through the same [`KnobSpec::check`], so a
//! range is written once. Adding a knob is one entry here plus its use site.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuMode {
    /// CPU work runs on the async workers (fragile: unrelated routes starve).
    Inline,
    /// CPU work runs on a bounded blocking pool; excess work is shed with 503.
    Offload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CostModel {
    /// CPU routes cost what the original Python lab spent on the same parameters (the real
    /// computation, topped up on the thread's CPU clock from a calibration table).
    Seed,
    /// Native Rust speed: only the real computation (fib(34) ~20 ms instead of ~550 ms).
    Native,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConcurrencyLimit {
    /// No adaptive limit: the fixed bounds of each cure (pools, slots, max_in_flight).
    Fixed,
    /// Additive increase, multiplicative decrease on latency past the no-queue baseline.
    Aimd,
    /// The limit scaled by the no-queue latency over the measured one (Little's law).
    Gradient,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployMode {
    /// The deployment's work runs before the answer (fragile: waits pile up to the timeout).
    Sync,
    /// 202 + Location at once; workers drain a bounded queue at database speed.
    Async,
}

/// Allowed values of one knob.
#[derive(Debug, Clone, Copy)]
pub enum Range {
    Int(u64, u64),
    Float(f64, f64),
    Bool,
    Choice(&'static [&'static str]),
}
use Range::{Bool, Choice, Float, Int};

/// The unit the environment variable and flag are written in, when it is not the knob's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvUnit {
    /// The knob's own unit (the one in its name).
    Same,
    /// Seconds, fractions allowed, for a `_ms` knob (the seed's `DB_POOL_TIMEOUT`).
    Seconds,
}

/// What the admin API, the CLI and `docs/knobs.md` say about one knob.
#[derive(Debug)]
pub struct KnobSpec {
    pub name: &'static str,
    /// Environment variable that sets it at start-up (the CLI flag is its kebab-case form).
    pub env: &'static str,
    pub env_unit: EnvUnit,
    pub range: Range,
    /// Scenario it causes or cures (`all` for the edge's knobs).
    pub scenario: &'static str,
    pub doc: &'static str,
}

macro_rules! knob_table {
    ($(
        $name:ident : $ty:ty {
            env: $env:literal,
            $(env_in: $unit:ident,)?
            range: $range:expr,
            scenario: $scenario:ident,
            fragile: $fragile:expr, hardened: $hardened:expr,
            doc: $doc:literal $(,)?
        }
    )*) => {
        /// The runtime-tunable settings. Field names are the knob names of the admin API; units
        /// are in the names. `0` means "off / unlimited" where the range allows it.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Knobs {
            $(pub $name: $ty,)*
        }

        impl Knobs {
            pub fn for_profile(profile: Profile) -> Self {
                match profile {
                    Profile::Fragile => Knobs { $($name: $fragile,)* },
                    Profile::Hardened => Knobs { $($name: $hardened,)* },
                }
            }

            /// One knob's value as the admin API shows it.
            pub fn get(&self, name: &str) -> Option<Value> {
                match name {
                    $(stringify!($name) => Some(json!(self.$name)),)*
                    _ => None,
                }
            }

            /// Sets one knob from a value already checked against its range.
            fn set(&mut self, name: &str, value: &Value) -> Result<(), String> {
                match name {
                    $(stringify!($name) => {
                        self.$name = <$ty>::deserialize(value).map_err(|e| format!("`{name}`: {e}"))?;
                    })*
                    _ => return Err(format!("unknown knob `{name}`")),
                }
                Ok(())
            }
        }

        /// Every runtime knob, in the order of [`Knobs`].
        pub const SPECS: &[KnobSpec] = &[$(
            KnobSpec {
                name: stringify!($name),
                env: $env,
                env_unit: knob_table!(@unit $($unit)?),
                range: $range,
                scenario: knob_table!(@scenario $scenario),
                doc: $doc,
            },
        )*];
    };
    // The scenario a knob causes or cures: a catalog module (its `SCENARIO`'s id, checked by
    // the compiler), or `all` for the edge's knobs.
    (@scenario all) => { "all" };
    (@scenario $module:ident) => { crate::scenarios::$module::SCENARIO.id };
    (@unit) => { EnvUnit::Same };
    (@unit $unit:ident) => { EnvUnit::$unit };
}

knob_table! {
    db_pool_size: u32 {
        env: "DB_POOL_SIZE",
        range: Int(1, 1000),
        scenario: db_pool,
        fragile: 5, hardened: 5,
        doc: "connections the pool keeps open; a change rebuilds the pool and drains the old one",
    }
    db_max_overflow: u32 {
        env: "DB_MAX_OVERFLOW",
        range: Int(0, 1000),
        scenario: db_pool,
        fragile: 10, hardened: 10,
        doc: "extra connections under load (pool maximum = size + overflow)",
    }
    db_pool_timeout_ms: u64 {
        env: "DB_POOL_TIMEOUT",
        env_in: Seconds,
        range: Int(10, 600_000),
        scenario: db_pool,
        fragile: 30_000, hardened: 250,
        doc: "acquire timeout: how long a request waits for a connection before 503 (env in seconds)",
    }
    db_statement_timeout_ms: u64 {
        env: "DB_STATEMENT_TIMEOUT_MS",
        range: Int(0, 600_000),
        scenario: db_pool,
        fragile: 0, hardened: 10_000,
        doc: "longest a query may hold its connection (0 = unlimited)",
    }
    db_cpu_query_slots: u32 {
        env: "DB_CPU_QUERY_SLOTS",
        range: Int(0, 1000),
        scenario: pool_too_big,
        fragile: 0, hardened: 4,
        doc: "CPU-bound queries (/api/expensive-query) running on the database at once, whatever the pool's size; the rest wait in the app, up to the acquire timeout, then 503 (0 = as many as the pool opens; hardened 4 = the lab PostgreSQL host's 2 cores x 2: set yours to its cores x 2)",
    }
    cpu_mode: CpuMode {
        env: "CPU_MODE",
        range: Choice(&["inline", "offload"]),
        scenario: cpu,
        fragile: CpuMode::Inline, hardened: CpuMode::Offload,
        doc: "inline: CPU work on the async workers; offload: on a bounded blocking pool",
    }
    cpu_cost_model: CostModel {
        env: "CPU_COST_MODEL",
        range: Choice(&["seed", "native"]),
        scenario: cpu,
        fragile: CostModel::Seed, hardened: CostModel::Seed,
        doc: "seed: /api/cpu-intensive, /api/hash and /api/json-processing cost the CPU time the original Python lab spent (calibration table in docs/scenarios/cpu.md); native: Rust speed (~26x less for fib)",
    }
    cpu_max_concurrency: u32 {
        env: "CPU_MAX_CONCURRENCY",
        range: Int(1, 256),
        scenario: cpu,
        fragile: 2, hardened: 2,
        doc: "offload mode: CPU jobs running at once; more are shed with 503",
    }
    cpu_queue_max: u32 {
        env: "CPU_QUEUE_MAX",
        range: Int(0, 10_000),
        scenario: cpu,
        fragile: 0, hardened: 2,
        doc: "offload mode: CPU jobs allowed to wait for a slot, so a freed slot is taken at once and the cores never idle while work is offered; more are shed with 503 (0 = none wait)",
    }
    concurrency_limit: ConcurrencyLimit {
        env: "CONCURRENCY_LIMIT",
        range: Choice(&["fixed", "aimd", "gradient"]),
        scenario: adaptive_limit,
        fragile: ConcurrencyLimit::Fixed, hardened: ConcurrencyLimit::Fixed,
        doc: "an adaptive limit on the db and cpu routes in flight, found from their measured latency with no capacity given (aimd | gradient; past it 503 at once); fixed: none",
    }
    max_in_flight: u32 {
        env: "MAX_IN_FLIGHT",
        range: Int(0, 100_000),
        scenario: all,
        fragile: 0, hardened: 256,
        doc: "load shedding: requests in flight beyond this get 503 + Retry-After (0 = unlimited)",
    }
    http_header_read_timeout_ms: u64 {
        env: "HTTP_HEADER_READ_TIMEOUT_MS",
        range: Int(100, 600_000),
        scenario: all,
        fragile: 30_000, hardened: 5_000,
        doc: "a connection that has not sent a whole request head within this is closed (slow-header sockets); new connections take a change",
    }
    http_idle_timeout_ms: u64 {
        env: "HTTP_IDLE_TIMEOUT_MS",
        range: Int(100, 3_600_000),
        scenario: all,
        fragile: 120_000, hardened: 30_000,
        doc: "a keep-alive connection with no request in flight and no bytes moving for this long is closed",
    }
    http_max_connections: u32 {
        env: "HTTP_MAX_CONNECTIONS",
        range: Int(0, 1_000_000),
        scenario: all,
        fragile: 0, hardened: 0,
        doc: "open client connections allowed; at the cap the oldest idle one is closed for a new one, or the new one is refused when none is idle (0 = auto: the descriptor limit less a reserve)",
    }
    cors_allow_any_origin: bool {
        env: "CORS_ALLOW_ANY_ORIGIN",
        range: Bool,
        scenario: all,
        fragile: true, hardened: true,
        doc: "CORS: any origin may call the lab from a browser (Access-Control-Allow-Origin: *, preflights answered), as the original lab allowed",
    }
    rate_limit_enabled: bool {
        env: "ENABLE_RATE_LIMITING",
        range: Bool,
        scenario: burst,
        fragile: false, hardened: false,
        doc: "rate limiting: requests above the rate get 429 + Retry-After",
    }
    rate_limit_rps: u32 {
        env: "RATE_LIMIT_RPS",
        range: Int(1, 1_000_000),
        scenario: burst,
        fragile: 100, hardened: 100,
        doc: "sustained requests per second allowed",
    }
    rate_limit_burst: u32 {
        env: "RATE_LIMIT_BURST",
        range: Int(1, 1_000_000),
        scenario: burst,
        fragile: 200, hardened: 200,
        doc: "requests allowed at once above the rate",
    }
    request_timeout_cpu_ms: u64 {
        env: "REQUEST_TIMEOUT_CPU_MS",
        range: Int(0, 600_000),
        scenario: cpu,
        fragile: 0, hardened: 10_000,
        doc: "request timeout of the CPU routes (0 = none)",
    }
    request_timeout_io_ms: u64 {
        env: "REQUEST_TIMEOUT_IO_MS",
        range: Int(0, 600_000),
        scenario: io,
        fragile: 0, hardened: 35_000,
        doc: "request timeout of the slow-I/O routes (0 = none)",
    }
    request_timeout_db_ms: u64 {
        env: "REQUEST_TIMEOUT_DB_MS",
        range: Int(0, 600_000),
        scenario: db_pool,
        fragile: 0, hardened: 15_000,
        doc: "request timeout of the database routes (0 = none)",
    }
    request_timeout_downstream_ms: u64 {
        env: "REQUEST_TIMEOUT_DOWNSTREAM_MS",
        range: Int(0, 600_000),
        scenario: downstream,
        fragile: 0, hardened: 10_000,
        doc: "request timeout of the downstream routes (0 = none)",
    }
    downstream_timeout_cap_ms: u64 {
        env: "DOWNSTREAM_TIMEOUT_CAP_MS",
        range: Int(0, 600_000),
        scenario: downstream,
        fragile: 0, hardened: 5_000,
        doc: "caps every downstream call's timeout, /api/no-timeout included (0 = calls keep their own)",
    }
    downstream_max_concurrency: u32 {
        env: "DOWNSTREAM_MAX_CONCURRENCY",
        range: Int(0, 100_000),
        scenario: downstream,
        fragile: 0, hardened: 16,
        doc: "bulkhead: downstream calls at once; more fail fast with 503 (0 = unbounded)",
    }
    downstream_pool_size: u32 {
        env: "DOWNSTREAM_POOL_SIZE",
        range: Int(0, 100_000),
        scenario: downstream,
        fragile: 10, hardened: 10,
        doc: "the downstream client's connections (one host); calls beyond it wait for one to be released (0 = unbounded)",
    }
    downstream_pool_wait_ms: u64 {
        env: "DOWNSTREAM_POOL_WAIT_MS",
        range: Int(0, 600_000),
        scenario: downstream,
        fragile: 0, hardened: 250,
        doc: "longest a downstream call waits for a free connection before failing with 503 (0 = waits as long as it takes: the cascade)",
    }
    downstream_deadline_includes_wait: bool {
        env: "DOWNSTREAM_DEADLINE_INCLUDES_WAIT",
        range: Bool,
        scenario: downstream,
        fragile: false, hardened: true,
        doc: "a call's timeout is a deadline from when the caller asked, so time spent waiting for a connection is taken from it (false: the timeout starts once a connection is held)",
    }
    breaker_enabled: bool {
        env: "ENABLE_CIRCUIT_BREAKER",
        range: Bool,
        scenario: downstream,
        fragile: false, hardened: true,
        doc: "circuit breaker on downstream calls",
    }
    breaker_failure_rate: f64 {
        env: "BREAKER_FAILURE_RATE",
        range: Float(0.01, 1.0),
        scenario: downstream,
        fragile: 0.5, hardened: 0.5,
        doc: "failure rate over the window that opens the breaker",
    }
    breaker_min_calls: u32 {
        env: "BREAKER_MIN_CALLS",
        range: Int(1, 10_000),
        scenario: downstream,
        fragile: 20, hardened: 20,
        doc: "calls in the window before the rate is judged",
    }
    breaker_window_calls: u32 {
        env: "BREAKER_WINDOW_CALLS",
        range: Int(1, 10_000),
        scenario: downstream,
        fragile: 50, hardened: 50,
        doc: "the last N calls the failure rate is computed over",
    }
    breaker_open_ms: u64 {
        env: "BREAKER_OPEN_MS",
        range: Int(10, 600_000),
        scenario: downstream,
        fragile: 5_000, hardened: 5_000,
        doc: "how long the breaker stays open before a half-open trial call",
    }
    retry_max_attempts: u32 {
        env: "RETRY_MAX_ATTEMPTS",
        range: Int(1, 10),
        scenario: retry_storm,
        fragile: 1, hardened: 3,
        doc: "attempts per downstream call (1 = no retry)",
    }
    retry_base_ms: u64 {
        env: "RETRY_BASE_MS",
        range: Int(0, 60_000),
        scenario: retry_storm,
        fragile: 0, hardened: 100,
        doc: "backoff base: attempt n waits a random time in [0, base * 2^n] (0 = immediate retries)",
    }
    retry_max_backoff_ms: u64 {
        env: "RETRY_MAX_BACKOFF_MS",
        range: Int(0, 600_000),
        scenario: retry_storm,
        fragile: 2_000, hardened: 2_000,
        doc: "cap on one backoff wait",
    }
    retry_budget_percent: u32 {
        env: "RETRY_BUDGET_PERCENT",
        range: Int(0, 1000),
        scenario: retry_storm,
        fragile: 0, hardened: 20,
        doc: "retries may add at most this % of first attempts over the last 10 s (0 = unlimited)",
    }
    memory_budget_mb: u64 {
        env: "MEMORY_BUDGET_MB",
        range: Int(0, 1_048_576),
        scenario: memory,
        fragile: 0, hardened: 256,
        doc: "memory the memory endpoints may hold before refusing with 507 (0 = only the safety cap)",
    }
    memory_trim_interval_ms: u64 {
        env: "MEMORY_TRIM_INTERVAL_MS",
        range: Int(0, 3_600_000),
        scenario: memory,
        fragile: 5_000, hardened: 5_000,
        doc: "how often freed heap memory is handed back to the OS (glibc malloc_trim), so RSS falls after load; 0 = never (glibc's own behaviour: RSS stays at its peak)",
    }
    worker_pool_size: u32 {
        env: "WORKER_POOL_SIZE",
        range: Int(1, 512),
        scenario: worker_pool,
        fragile: 10, hardened: 20,
        doc: "OS threads of the worker pool behind /api/worker-pool; resized live",
    }
    worker_queue_max: u32 {
        env: "WORKER_QUEUE_MAX",
        range: Int(0, 100_000),
        scenario: worker_pool,
        fragile: 0, hardened: 20,
        doc: "jobs allowed to wait for a worker; more are refused with 503 + Retry-After (0 = unbounded)",
    }
    worker_deadline_check: bool {
        env: "WORKER_DEADLINE_CHECK",
        range: Bool,
        scenario: worker_pool,
        fragile: false, hardened: true,
        doc: "skip a queued job whose deadline passed before a worker took it (no wasted work)",
    }
    request_deadline_ms: u64 {
        env: "REQUEST_DEADLINE_MS",
        range: Int(1, 600_000),
        scenario: worker_pool,
        fragile: 30_000, hardened: 30_000,
        doc: "deadline of a worker-pool request that carries none (the report's longest client deadline; a grpc-timeout header or deadline_ms overrides it)",
    }
    min_warm_workers: u32 {
        env: "MIN_WARM_WORKERS",
        range: Int(0, 1000),
        scenario: cold_start,
        fragile: 0, hardened: 3,
        doc: "simulated workers kept warm (provisioned concurrency); the cold-start fix",
    }
    max_workers: u32 {
        env: "MAX_WORKERS",
        range: Int(1, 1000),
        scenario: cold_start,
        fragile: 10, hardened: 10,
        doc: "simulated workers that may exist at once (started on demand)",
    }
    cold_start_ms: u64 {
        env: "COLD_START_MS",
        range: Int(0, 600_000),
        scenario: cold_start,
        fragile: 1_000, hardened: 1_000,
        doc: "time a new simulated worker takes before it can serve",
    }
    idle_timeout_ms: u64 {
        env: "IDLE_TIMEOUT_MS",
        range: Int(10, 3_600_000),
        scenario: cold_start,
        fragile: 60_000, hardened: 60_000,
        doc: "idle time after which a simulated worker above the warm minimum is retired",
    }
    gateway_timeout_ms: u64 {
        env: "GATEWAY_TIMEOUT_MS",
        range: Int(1, 600_000),
        scenario: cold_start,
        fragile: 1_150, hardened: 1_150,
        doc: "the gateway answers 504 once a cold-start request has taken this long",
    }
    deploy_mode: DeployMode {
        env: "DEPLOY_MODE",
        range: Choice(&["sync", "async"]),
        scenario: burst,
        fragile: DeployMode::Sync, hardened: DeployMode::Async,
        doc: "sync: POST /api/v1/deployments/ does the work before answering; async: 202 + Location, work drained from a bounded queue",
    }
    deploy_timeout_ms: u64 {
        env: "DEPLOY_TIMEOUT_MS",
        range: Int(0, 600000),
        scenario: burst,
        fragile: 20_000, hardened: 20_000,
        doc: "request timeout of POST /api/v1/deployments/ (the report's 20 s; 0 = none); 504 when it expires",
    }
    deploy_work_ms: u64 {
        env: "DEPLOY_WORK_MS",
        range: Int(0, 60000),
        scenario: burst,
        fragile: 2000, hardened: 2000,
        doc: "provisioning work each deployment does inside its transaction, holding its connection",
    }
    deploy_queue_max: u32 {
        env: "DEPLOY_QUEUE_MAX",
        range: Int(0, 1000000),
        scenario: burst,
        fragile: 1000, hardened: 0,
        doc: "async mode: deployments allowed to wait for a worker; more are refused with 503 + Retry-After (the time to drain). 0 = auto: what the workers can start within deploy_timeout_ms (workers × (1 + timeout / work))",
    }
    deploy_workers: u32 {
        env: "DEPLOY_WORKERS",
        range: Int(0, 256),
        scenario: burst,
        fragile: 0, hardened: 0,
        doc: "async mode: workers draining the deployment queue. 0 = auto: the pool's maximum less one connection kept for accepting (pool / work deployments/s)",
    }
    cache_ttl_ms: u64 {
        env: "CACHE_TTL_MS",
        range: Int(100, 86400000),
        scenario: cache_stampede,
        fragile: 30_000, hardened: 30_000,
        doc: "how long a cached item stays fresh in Redis",
    }
    cache_ttl_jitter_percent: u32 {
        env: "CACHE_TTL_JITTER_PERCENT",
        range: Int(0, 100),
        scenario: cache_stampede,
        fragile: 0, hardened: 20,
        doc: "each TTL is drawn from ttl ± this %, so keys filled together do not expire together",
    }
    cache_single_flight: bool {
        env: "CACHE_SINGLE_FLIGHT",
        range: Bool,
        scenario: cache_stampede,
        fragile: false, hardened: true,
        doc: "one database load per missing key at a time; concurrent misses wait for it",
    }
    cache_serve_stale: bool {
        env: "CACHE_SERVE_STALE",
        range: Bool,
        scenario: cache_stampede,
        fragile: false, hardened: true,
        doc: "on a Redis error or timeout, answer from the last value this process saw instead of 500",
    }
    cache_query_ms: u64 {
        env: "CACHE_QUERY_MS",
        range: Int(0, 60000),
        scenario: cache_stampede,
        fragile: 200, hardened: 200,
        doc: "time the slow database query behind a cache miss holds its connection",
    }
    redis_timeout_ms: u64 {
        env: "REDIS_TIMEOUT_MS",
        range: Int(0, 60000),
        scenario: cache_stampede,
        fragile: 0, hardened: 100,
        doc: "timeout of one Redis operation, connection included (0 = none)",
    }
    redis_pool_size: u32 {
        env: "REDIS_POOL_SIZE",
        range: Int(1, 1000),
        scenario: cache_stampede,
        fragile: 16, hardened: 16,
        doc: "Redis connections the pool may open; resized live",
    }
    redis_pool_timeout_ms: u64 {
        env: "REDIS_POOL_TIMEOUT_MS",
        range: Int(1, 600000),
        scenario: cache_stampede,
        fragile: 30_000, hardened: 100,
        doc: "how long a request waits for a pooled Redis connection",
    }
    fault_headers_allowed: bool {
        env: "FAULT_HEADERS_ALLOWED",
        range: Bool,
        scenario: faults,
        fragile: false, hardened: false,
        doc: "honour per-request fault headers (x-chokepoint-delay, -error, -abort, -response, -jitter) on the scenario routes; rules set through /admin/faults apply either way",
    }
    db_leak_ms: u64 {
        env: "DB_LEAK_MS",
        range: Int(0, 86_400_000),
        scenario: connection_leak,
        fragile: 60_000, hardened: 0,
        doc: "how long GET /api/db/session keeps its connection, inside its open transaction, after answering (the original lab's unclosed session); 0 = released with the answer (scoped release, the cure); POST /admin/reset releases every leaked connection",
    }
    db_leak_detect_ms: u64 {
        env: "DB_LEAK_DETECT_MS",
        range: Int(0, 3_600_000),
        scenario: connection_leak,
        fragile: 0, hardened: 10_000,
        doc: "leak detector (HikariCP's leakDetectionThreshold): a connection checked out longer than this is logged once at WARN with the route and request id that took it and counted in db_connection_leaks_detected_total (0 = off)",
    }
    db_idle_in_transaction_timeout_ms: u64 {
        env: "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
        range: Int(0, 3_600_000),
        scenario: connection_leak,
        fragile: 0, hardened: 5_000,
        doc: "PostgreSQL's idle_in_transaction_session_timeout on the transactions GET /api/db/session opens: the server ends a session left idle in its transaction this long, freeing its locks and its server slot (not the app's pool slot; 0 = off)",
    }
    db_skip_release_check: bool {
        env: "DB_SKIP_RELEASE_CHECK",
        range: Bool,
        scenario: poisoned_pool,
        fragile: false, hardened: false,
        doc: "UNSAFE, for the poisoned-pool scenario only: return connections to the pool without the release-time guard, so a request cancelled during BEGIN leaves its connection inside a transaction (sqlx #4393) and the first error there fails every later query on it",
    }
}

impl KnobSpec {
    /// The command-line flag: the environment variable in kebab case (`--db-pool-timeout`).
    pub fn flag(&self) -> String {
        self.env.to_ascii_lowercase().replace('_', "-")
    }

    /// The unit, read from the name's suffix.
    pub fn unit(&self) -> Option<&'static str> {
        [("_ms", "ms"), ("_mb", "MiB"), ("_percent", "%"), ("_rps", "requests/s")]
            .iter()
            .find(|(suffix, _)| self.name.ends_with(suffix))
            .map(|(_, unit)| *unit)
    }

    /// Whether `value` is allowed: the one range check behind env, CLI and `PATCH`.
    pub fn check(&self, v: &Value) -> Result<(), String> {
        let ok = match self.range {
            Int(min, max) => v.as_u64().is_some_and(|n| (min..=max).contains(&n)),
            Float(min, max) => v.as_f64().is_some_and(|n| (min..=max).contains(&n)),
            Bool => v.is_boolean(),
            Choice(c) => v.as_str().is_some_and(|s| c.contains(&s)),
        };
        if ok {
            return Ok(());
        }
        let name = self.name;
        Err(match self.range {
            Int(min, max) => format!("`{name}` must be an integer between {min} and {max} (got {v})"),
            Float(min, max) => format!("`{name}` must be a number between {min} and {max} (got {v})"),
            Bool => format!("`{name}` must be true or false (got {v})"),
            Choice(c) => format!("`{name}` must be one of {} (got {v})", c.join(", ")),
        })
    }

    /// Parses the text of the environment variable or flag into the value `PATCH` would take,
    /// then checks it like `PATCH` does.
    pub fn parse_text(&self, raw: &str) -> Result<Value, String> {
        let raw = raw.trim();
        let value = match (self.range, self.env_unit) {
            (Int(min, max), EnvUnit::Seconds) => {
                let secs: f64 = raw
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| seconds_range(min, max))?;
                let ms = (secs * 1000.0).round() as u64;
                return if (min..=max).contains(&ms) {
                    Ok(json!(ms))
                } else {
                    Err(seconds_range(min, max))
                };
            }
            (Int(..), EnvUnit::Same) => raw.parse::<u64>().map(|n| json!(n)).map_err(|_| String::new()),
            (Float(..), _) => raw
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(|f| json!(f))
                .ok_or_else(String::new),
            (Bool, _) => parse_bool(raw).map(Value::Bool),
            (Choice(_), _) => Ok(json!(raw)),
        };
        let value = value.map_err(|_| self.expected())?;
        self.check(&value).map_err(|_| self.expected())?;
        Ok(value)
    }

    fn expected(&self) -> String {
        match self.range {
            Int(min, max) => format!("expected an integer in {min}..={max}"),
            Float(min, max) => format!("expected a number in {min}..={max}"),
            Bool => "expected true or false".into(),
            Choice(c) => format!("expected one of {}", c.join(", ")),
        }
    }

    /// The range as `/admin/config` and the 422 refusals show it.
    pub fn range_json(&self) -> Value {
        match self.range {
            Int(min, max) => json!({"min": min, "max": max}),
            Float(min, max) => json!({"min": min, "max": max}),
            Bool => json!({"values": [true, false]}),
            Choice(c) => json!({"values": c}),
        }
    }

    /// The range as the knob table in `docs/knobs.md` writes it.
    pub fn range_text(&self) -> String {
        match self.range {
            Int(min, max) => format!("{min}–{max}"),
            Float(min, max) => format!("{min:?}–{max:?}"),
            Bool => "true / false".into(),
            Choice(c) => c.join(" / "),
        }
    }

    /// The JSON Schema of the knob's value.
    pub fn schema(&self) -> Value {
        let mut schema = match self.range {
            Int(min, max) => json!({"type": "integer", "minimum": min, "maximum": max}),
            Float(min, max) => json!({"type": "number", "minimum": min, "maximum": max}),
            Bool => json!({"type": "boolean"}),
            Choice(c) => json!({"type": "string", "enum": c}),
        };
        schema["description"] = json!(self.doc);
        schema
    }

    /// The value's number on the `knob_value` gauge (booleans 0/1, a choice by its position).
    fn gauge(&self, v: &Value) -> f64 {
        match (v, self.range) {
            (Value::Bool(b), _) => f64::from(u8::from(*b)),
            (Value::Number(n), _) => n.as_f64().unwrap_or(0.0),
            (Value::String(s), Choice(c)) => c.iter().position(|x| x == s).unwrap_or(0) as f64,
            _ => 0.0,
        }
    }
}

fn seconds_range(min_ms: u64, max_ms: u64) -> String {
    format!(
        "expected a number of seconds in {}..={}",
        min_ms as f64 / 1000.0,
        max_ms as f64 / 1000.0
    )
}

/// `1/true/yes/on` and `0/false/no/off/` (empty), any case: what the seed's env files use.
pub fn parse_bool(raw: &str) -> Result<bool, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

pub fn spec(name: &str) -> Option<&'static KnobSpec> {
    SPECS.iter().find(|s| s.name == name)
}

/// The knobs set at start-up by environment variables or flags (the serve command flattens
/// this in, one `--flag` / `ENV` per knob, parsed and range-checked by [`KnobSpec::parse_text`]).
#[derive(Debug, Clone, Default)]
pub struct KnobArgs {
    set: BTreeMap<&'static str, Value>,
}

impl KnobArgs {
    /// The start-up knobs: `profile`'s values overridden by whatever the environment or flags
    /// set, and where each came from.
    pub fn layer_over(&self, profile: Profile) -> (Knobs, BTreeMap<&'static str, Source>) {
        let mut knobs = Knobs::for_profile(profile);
        let mut sources: BTreeMap<&'static str, Source> = SPECS.iter().map(|s| (s.name, Source::Profile)).collect();
        for (name, value) in &self.set {
            // Checked at parse time; `set` cannot refuse a checked value.
            if knobs.set(name, value).is_ok() {
                sources.insert(name, Source::Startup);
            }
        }
        (knobs, sources)
    }
}

impl clap::FromArgMatches for KnobArgs {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut args = KnobArgs::default();
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        for spec in SPECS {
            if let Some(v) = matches.get_one::<Value>(spec.name) {
                self.set.insert(spec.name, v.clone());
            }
        }
        Ok(())
    }
}

impl clap::Args for KnobArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        SPECS.iter().fold(cmd, |cmd, spec| {
            let help = match spec.env_unit {
                EnvUnit::Same => format!("Knob `{}`: {}", spec.name, spec.doc),
                EnvUnit::Seconds => format!("Knob `{}`, in seconds: {}", spec.name, spec.doc),
            };
            cmd.arg(
                clap::Arg::new(spec.name)
                    .long(spec.flag())
                    .env(spec.env)
                    .value_name(spec.env)
                    .help(help)
                    .value_parser(move |raw: &str| spec.parse_text(raw)),
            )
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// A part of the app sized or tuned by knobs, which must take a new set before it is published
/// (a pool resized, a simulated fleet re-planned).
pub trait ApplyKnobs {
    fn apply_knobs(&self, knobs: &Knobs);
}

/// Where a knob's current value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

impl Refusal {
    fn body(detail: String) -> Self {
        Refusal {
            knob: "(body)".into(),
            detail,
            range: None,
            startup_only: false,
        }
    }
}

/// The JSON Schema of a `PATCH /admin/config` body: every runtime knob with its type and range,
/// nothing else (unknown names are refused with 422).
pub fn patch_schema() -> Value {
    let properties: serde_json::Map<String, Value> = SPECS.iter().map(|s| (s.name.to_string(), s.schema())).collect();
    json!({"type": "object", "properties": properties, "additionalProperties": false})
}

/// Applies a partial JSON change to `current`, validating every field before any is applied.
/// `startup_only` names the settings that exist but need a restart (with their variables), so
/// asking for one is told so rather than "unknown".
pub fn merge(current: &Knobs, patch: &Value, startup_only: &[(String, String)]) -> Result<Knobs, Vec<Refusal>> {
    let Some(obj) = patch.as_object() else {
        return Err(vec![Refusal::body(
            "the body must be a JSON object of knob names to values".into(),
        )]);
    };
    let mut merged = current.clone();
    let mut refusals = Vec::new();
    for (name, value) in obj {
        if let Some((_, env)) = startup_only.iter().find(|(n, _)| n == name) {
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
        if let Err(detail) = spec.check(value).and_then(|()| merged.set(name, value)) {
            refusals.push(Refusal {
                knob: name.clone(),
                detail,
                range: Some(spec.range_json()),
                startup_only: false,
            });
        }
    }
    if refusals.is_empty() {
        Ok(merged)
    } else {
        Err(refusals)
    }
}

/// The knob table of `docs/knobs.md`, generated from [`SPECS`] (`chokepoint knobs` prints it;
/// a test keeps the page equal to it).
pub fn markdown_table() -> String {
    let fragile = Knobs::for_profile(Profile::Fragile);
    let hardened = Knobs::for_profile(Profile::Hardened);
    let show = |v: Option<Value>| match v {
        Some(Value::String(s)) => s,
        Some(v) => v.to_string(),
        None => String::new(),
    };
    let mut out = String::from(
        "| knob | env | range | unit | fragile | hardened | scenario | what it does |\n|---|---|---|---|---|---|---|---|\n",
    );
    for s in SPECS {
        let unit = match (s.env_unit, s.unit()) {
            (EnvUnit::Seconds, Some(u)) => format!("{u} (env: s)"),
            (_, u) => u.unwrap_or("").to_string(),
        };
        out.push_str(&format!(
            "| `{}` | `{}` | {} | {} | {} | {} | {} | {} |\n",
            s.name,
            s.env,
            s.range_text(),
            unit,
            show(fragile.get(s.name)),
            show(hardened.get(s.name)),
            s.scenario,
            s.doc
        ));
    }
    out
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
    /// The store of the start-up knobs (`KnobArgs::layer_over` the start-up profile).
    pub fn new(startup: (Knobs, BTreeMap<&'static str, Source>), registry: &Registry) -> Self {
        let (knobs, sources) = startup;
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

    /// The knobs set explicitly at start-up (environment or flags).
    pub fn set_at_startup(&self) -> Vec<&'static str> {
        self.startup_sources
            .iter()
            .filter(|(_, s)| **s == Source::Startup)
            .map(|(n, _)| *n)
            .collect()
    }

    /// `profile`'s values, except the knobs set explicitly at start-up (environment or flags),
    /// which keep their start-up value; and the names of those kept. A profile switch applies
    /// this, so the cure a switch shows comes from the profile, not from a start-up value
    /// (`DB_POOL_SIZE=2`, say) quietly replaced by a bigger one.
    pub fn profile_keeping_startup(&self, profile: Profile) -> (Knobs, Vec<&'static str>) {
        let mut knobs = Knobs::for_profile(profile);
        let mut kept = Vec::new();
        for (name, source) in &self.startup_sources {
            if *source != Source::Startup {
                continue;
            }
            if let Some(v) = self.startup.get(name) {
                if knobs.get(name).as_ref() != Some(&v) && knobs.set(name, &v).is_ok() {
                    kept.push(*name);
                }
            }
        }
        (knobs, kept)
    }

    /// Where each knob's current value came from.
    pub fn sources(&self) -> BTreeMap<&'static str, Source> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Publishes `new`, recording `source` for every knob whose value changed.
    pub fn publish(&self, new: Knobs, source: Source) {
        let old = self.current();
        {
            let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
            for spec in SPECS {
                if old.get(spec.name) != new.get(spec.name) {
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
        for spec in SPECS {
            let v = knobs.get(spec.name).unwrap_or(Value::Null);
            self.values.with_label_values(&[spec.name]).set(spec.gauge(&v));
        }
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
            let k = Knobs::for_profile(p);
            for s in SPECS {
                s.check(&k.get(s.name).unwrap())
                    .unwrap_or_else(|e| panic!("{p:?}: {e}"));
            }
        }
    }

    #[test]
    fn text_and_patch_share_one_range_check() {
        let size = spec("db_pool_size").unwrap();
        assert_eq!(size.parse_text(" 7 ").unwrap(), json!(7));
        assert!(size.parse_text("0").is_err());
        assert!(size.parse_text("1001").is_err());
        assert!(size.parse_text("x").is_err());
        let timeout = spec("db_pool_timeout_ms").unwrap();
        assert_eq!(timeout.parse_text("0.25").unwrap(), json!(250));
        assert!(timeout.parse_text("-1").is_err());
        assert!(timeout.parse_text("601").is_err());
        assert_eq!(
            spec("cpu_mode").unwrap().parse_text("offload").unwrap(),
            json!("offload")
        );
        assert!(spec("cpu_mode").unwrap().parse_text("fast").is_err());
        assert_eq!(spec("breaker_enabled").unwrap().parse_text("YES").unwrap(), json!(true));
        assert!(spec("breaker_failure_rate").unwrap().parse_text("NaN").is_err());
    }

    #[test]
    fn merge_validates_everything_before_applying() {
        let k = Knobs::for_profile(Profile::Fragile);
        let startup_only = [("port".to_string(), "PORT".to_string())];
        let ok = merge(&k, &json!({"db_pool_size": 7, "cpu_mode": "offload"}), &startup_only).unwrap();
        assert_eq!(ok.db_pool_size, 7);
        assert_eq!(ok.cpu_mode, CpuMode::Offload);
        let err = merge(
            &k,
            &json!({"db_pool_size": 0, "nope": 1, "port": 1, "cpu_mode": "x", "breaker_enabled": 1}),
            &startup_only,
        )
        .unwrap_err();
        assert_eq!(err.len(), 5);
        assert!(err.iter().any(|r| r.startup_only && r.knob == "port"));
        assert!(merge(&k, &json!({"db_pool_size": "5"}), &startup_only).is_err());
        assert!(merge(&k, &json!({"db_pool_size": 5.5}), &startup_only).is_err());
        assert!(merge(&k, &json!([1]), &startup_only).is_err());
    }
}
