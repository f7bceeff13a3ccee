//! Typed settings, parsed once from environment and flags (flags win) and validated at start-up.
//!
//! The environment names are the ones users of the Python "backend under load" app already set
//! (`DATABASE_URL`, `DB_POOL_SIZE`, `DB_MAX_OVERFLOW`, ...). An invalid value stops start-up with
//! one line naming the variable and its allowed range.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::knobs::{CpuMode, DeployMode, Profile};

/// chokepoint: a deliberately fragile backend that reproduces production collapses on demand.
#[derive(Debug, Parser)]
#[command(name = "chokepoint", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the lab (the default when no subcommand is given).
    Serve(Box<Settings>),
    /// Run the downstream dependency simulator.
    Downstream(DownstreamSettings),
    /// Run the database migrations and exit (a job or init container ahead of replicas that
    /// reach PostgreSQL through PgBouncer with SKIP_MIGRATIONS=true).
    Migrate(Box<Settings>),
    /// Exit 0 when the local server answers 200 on a path (a container HEALTHCHECK without curl).
    Healthcheck(HealthcheckArgs),
    /// Reproduce a catalog row under open-model load and print a breaking-point report
    /// (in-process lab by default; the serve settings, e.g. DATABASE_URL, apply to it).
    Repro(Box<ReproCommand>),
}

/// `chokepoint repro`: its own arguments plus the settings of the in-process lab.
#[derive(Debug, Clone, Args)]
pub struct ReproCommand {
    #[command(flatten)]
    pub repro: crate::repro::ReproArgs,
    #[command(flatten)]
    pub lab: Settings,
}

/// Arguments of `chokepoint healthcheck`.
#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// Port of the local server (the app's 8000, the simulator's 8001).
    #[arg(long, env = "PORT", default_value_t = 8000)]
    pub port: u16,
    /// Path to probe.
    #[arg(long, default_value = "/health")]
    pub path: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3)]
    pub timeout: u64,
}

impl Cli {
    /// Parses the command line, treating a missing subcommand as `serve`.
    pub fn parse_with_default_serve<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let needs_serve = match args.get(1).and_then(|a| a.to_str()) {
            None => true,
            Some("-h" | "--help" | "-V" | "--version" | "help") => false,
            Some(first) => first.starts_with('-'),
        };
        if needs_serve {
            args.insert(1.min(args.len()), "serve".into());
        }
        Cli::try_parse_from(args)
    }
}

/// Settings of `chokepoint serve`.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address to bind. A non-loopback address exposes the lab (and its admin API) to the network.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port to bind; 0 picks a free port (tests use this).
    #[arg(long, env = "PORT", default_value_t = 8000)]
    pub port: u16,

    /// Database URL: `sqlite://path` or `postgres://...` (`postgresql+asyncpg://` is accepted).
    /// Unset: an SQLite file in the system temp directory, no set-up needed.
    #[arg(long, env = "DATABASE_URL", value_parser = parse_database_url)]
    pub database_url: Option<String>,

    /// Knob profile at start-up: `fragile` behaves like the field reports, `hardened` turns every
    /// fix on. Single knobs below override it.
    #[arg(long, env = "PROFILE", value_enum, default_value = "fragile")]
    pub profile: Profile,

    /// Connections the pool keeps open (SQLAlchemy's `pool_size`; profile default 5).
    #[arg(long, env = "DB_POOL_SIZE", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_pool_size: Option<u32>,

    /// Extra connections opened under load on top of the pool size (SQLAlchemy's `max_overflow`;
    /// profile default 10).
    #[arg(long, env = "DB_MAX_OVERFLOW", value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub db_max_overflow: Option<u32>,

    /// Seconds a request waits for a pooled connection before failing with 503 (acquire timeout;
    /// fragile 30 like the reports, hardened 0.25).
    #[arg(long, env = "DB_POOL_TIMEOUT", value_parser = seconds(0.01, 600.0))]
    pub db_pool_timeout: Option<f64>,

    /// Redis URL; unset disables the cache scenario (it answers 503 saying so).
    #[arg(long, env = "REDIS_URL", value_parser = parse_redis_url)]
    pub redis_url: Option<String>,

    /// Skip the migrations at start-up: for replicas that reach PostgreSQL through PgBouncer in
    /// transaction mode (run them once directly, e.g. from one replica or a job).
    #[arg(long, env = "SKIP_MIGRATIONS", default_value_t = false, value_parser = parse_bool)]
    pub skip_migrations: bool,

    /// SQLite only: cap the database file at this many pages (`PRAGMA max_page_count`, 4 KiB
    /// pages), so a full disk can be rehearsed without filling one: writes past it answer 507
    /// `storage_full`. Unset: no cap.
    #[arg(long, env = "SQLITE_MAX_PAGE_COUNT", value_parser = clap::value_parser!(u32).range(1..))]
    pub sqlite_max_page_count: Option<u32>,

    /// Prefix of every Redis key the lab writes; `POST /admin/cache/flush` deletes only these.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "chokepoint:", value_parser = parse_key_prefix)]
    pub redis_key_prefix: String,

    /// Base URL of the downstream dependency. Unset: an embedded simulator is started on its
    /// own thread and runtime, so a collapse of the app never slows the simulated dependency.
    #[arg(long, env = "DOWNSTREAM_SERVICE_URL", value_parser = parse_http_url)]
    pub downstream_service_url: Option<String>,

    /// Seconds: the downstream client's default timeout for calls that do not set their own.
    #[arg(long, env = "DOWNSTREAM_TIMEOUT", default_value = "30", value_parser = seconds(0.1, 600.0))]
    pub downstream_timeout: f64,

    /// Async runtime worker threads (default: one per CPU). Few workers make CPU and
    /// thread-blocking collapses visible sooner.
    #[arg(long, env = "WORKER_COUNT", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub worker_count: Option<u16>,

    /// Circuit breaker on downstream calls (knob `breaker_enabled`).
    #[arg(long, env = "ENABLE_CIRCUIT_BREAKER", value_parser = parse_bool)]
    pub enable_circuit_breaker: Option<bool>,

    /// Rate limiting: 429 above `RATE_LIMIT_RPS` (knob `rate_limit_enabled`).
    #[arg(long, env = "ENABLE_RATE_LIMITING", value_parser = parse_bool)]
    pub enable_rate_limiting: Option<bool>,

    /// Bearer token required by mutating `/admin` calls when bound to a non-loopback address.
    /// Never logged.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub admin_token: Option<Secret>,

    // Runtime knobs settable at start-up; see docs/knobs.md. Unset: the profile's value.
    /// Knob `db_statement_timeout_ms`.
    #[arg(long, env = "DB_STATEMENT_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub db_statement_timeout_ms: Option<u64>,
    /// Knob `cpu_mode`: `inline` or `offload`.
    #[arg(long, env = "CPU_MODE", value_enum)]
    pub cpu_mode: Option<CpuMode>,
    /// Knob `cpu_max_concurrency`.
    #[arg(long, env = "CPU_MAX_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub cpu_max_concurrency: Option<u32>,
    /// Knob `max_in_flight` (load shedding; 0 = unlimited).
    #[arg(long, env = "MAX_IN_FLIGHT", value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub max_in_flight: Option<u32>,
    /// Knob `rate_limit_rps`.
    #[arg(long, env = "RATE_LIMIT_RPS", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate_limit_rps: Option<u32>,
    /// Knob `rate_limit_burst`.
    #[arg(long, env = "RATE_LIMIT_BURST", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate_limit_burst: Option<u32>,
    /// Knob `request_timeout_cpu_ms`.
    #[arg(long, env = "REQUEST_TIMEOUT_CPU_MS", value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub request_timeout_cpu_ms: Option<u64>,
    /// Knob `request_timeout_io_ms`.
    #[arg(long, env = "REQUEST_TIMEOUT_IO_MS", value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub request_timeout_io_ms: Option<u64>,
    /// Knob `request_timeout_db_ms`.
    #[arg(long, env = "REQUEST_TIMEOUT_DB_MS", value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub request_timeout_db_ms: Option<u64>,
    /// Knob `request_timeout_downstream_ms`.
    #[arg(long, env = "REQUEST_TIMEOUT_DOWNSTREAM_MS", value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub request_timeout_downstream_ms: Option<u64>,
    /// Knob `downstream_timeout_cap_ms`.
    #[arg(long, env = "DOWNSTREAM_TIMEOUT_CAP_MS", value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub downstream_timeout_cap_ms: Option<u64>,
    /// Knob `downstream_max_concurrency` (bulkhead; 0 = unbounded).
    #[arg(long, env = "DOWNSTREAM_MAX_CONCURRENCY", value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub downstream_max_concurrency: Option<u32>,
    /// Knob `breaker_failure_rate`.
    #[arg(long, env = "BREAKER_FAILURE_RATE", value_parser = fraction(0.01, 1.0))]
    pub breaker_failure_rate: Option<f64>,
    /// Knob `breaker_min_calls`.
    #[arg(long, env = "BREAKER_MIN_CALLS", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub breaker_min_calls: Option<u32>,
    /// Knob `breaker_window_calls`.
    #[arg(long, env = "BREAKER_WINDOW_CALLS", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub breaker_window_calls: Option<u32>,
    /// Knob `breaker_open_ms`.
    #[arg(long, env = "BREAKER_OPEN_MS", value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub breaker_open_ms: Option<u64>,
    /// Knob `retry_max_attempts` (1 = no retry).
    #[arg(long, env = "RETRY_MAX_ATTEMPTS", value_parser = clap::value_parser!(u32).range(1..=10))]
    pub retry_max_attempts: Option<u32>,
    /// Knob `retry_base_ms` (0 = immediate retries).
    #[arg(long, env = "RETRY_BASE_MS", value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub retry_base_ms: Option<u64>,
    /// Knob `retry_max_backoff_ms`.
    #[arg(long, env = "RETRY_MAX_BACKOFF_MS", value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub retry_max_backoff_ms: Option<u64>,
    /// Knob `retry_budget_percent` (0 = unlimited).
    #[arg(long, env = "RETRY_BUDGET_PERCENT", value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub retry_budget_percent: Option<u32>,
    /// Knob `memory_budget_mb` (0 = only the safety cap).
    #[arg(long, env = "MEMORY_BUDGET_MB", value_parser = clap::value_parser!(u64).range(0..=1_048_576))]
    pub memory_budget_mb: Option<u64>,
    /// Knob `worker_pool_size` (OS threads of the worker-pool scenario).
    #[arg(long, env = "WORKER_POOL_SIZE", value_parser = clap::value_parser!(u32).range(1..=512))]
    pub worker_pool_size: Option<u32>,
    /// Knob `worker_queue_max` (0 = unbounded).
    #[arg(long, env = "WORKER_QUEUE_MAX", value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub worker_queue_max: Option<u32>,
    /// Knob `worker_deadline_check`.
    #[arg(long, env = "WORKER_DEADLINE_CHECK", value_parser = parse_bool)]
    pub worker_deadline_check: Option<bool>,
    /// Knob `request_deadline_ms`.
    #[arg(long, env = "REQUEST_DEADLINE_MS", value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub request_deadline_ms: Option<u64>,
    /// Knob `min_warm_workers` (cold-start scenario).
    #[arg(long, env = "MIN_WARM_WORKERS", value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub min_warm_workers: Option<u32>,
    /// Knob `max_workers` (cold-start scenario).
    #[arg(long, env = "MAX_WORKERS", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_workers: Option<u32>,
    /// Knob `cold_start_ms`.
    #[arg(long, env = "COLD_START_MS", value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub cold_start_ms: Option<u64>,
    /// Knob `idle_timeout_ms`.
    #[arg(long, env = "IDLE_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub idle_timeout_ms: Option<u64>,
    /// Knob `gateway_timeout_ms`.
    #[arg(long, env = "GATEWAY_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub gateway_timeout_ms: Option<u64>,
    /// Knob `http_header_read_timeout_ms` (every route).
    #[arg(long, env = "HTTP_HEADER_READ_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub http_header_read_timeout_ms: Option<u64>,
    /// Knob `http_idle_timeout_ms` (every route).
    #[arg(long, env = "HTTP_IDLE_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub http_idle_timeout_ms: Option<u64>,
    /// Knob `http_max_connections` (every route; 0 = auto).
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub http_max_connections: Option<u32>,
    /// Knob `memory_trim_interval_ms` (memory scenario; 0 = never).
    #[arg(long, env = "MEMORY_TRIM_INTERVAL_MS", value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub memory_trim_interval_ms: Option<u64>,
    /// Knob `deploy_mode` (burst scenario).
    #[arg(long, env = "DEPLOY_MODE", value_enum)]
    pub deploy_mode: Option<DeployMode>,
    /// Knob `deploy_timeout_ms` (burst scenario).
    #[arg(long, env = "DEPLOY_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(0..=600000))]
    pub deploy_timeout_ms: Option<u64>,
    /// Knob `deploy_work_ms` (burst scenario).
    #[arg(long, env = "DEPLOY_WORK_MS", value_parser = clap::value_parser!(u64).range(0..=60000))]
    pub deploy_work_ms: Option<u64>,
    /// Knob `deploy_queue_max` (burst scenario).
    #[arg(long, env = "DEPLOY_QUEUE_MAX", value_parser = clap::value_parser!(u32).range(1..=1000000))]
    pub deploy_queue_max: Option<u32>,
    /// Knob `deploy_workers` (burst scenario).
    #[arg(long, env = "DEPLOY_WORKERS", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub deploy_workers: Option<u32>,
    /// Knob `cache_ttl_ms` (cache-stampede scenario).
    #[arg(long, env = "CACHE_TTL_MS", value_parser = clap::value_parser!(u64).range(100..=86400000))]
    pub cache_ttl_ms: Option<u64>,
    /// Knob `cache_ttl_jitter_percent` (cache-stampede scenario).
    #[arg(long, env = "CACHE_TTL_JITTER_PERCENT", value_parser = clap::value_parser!(u32).range(0..=100))]
    pub cache_ttl_jitter_percent: Option<u32>,
    /// Knob `cache_single_flight` (cache-stampede scenario).
    #[arg(long, env = "CACHE_SINGLE_FLIGHT", value_parser = parse_bool)]
    pub cache_single_flight: Option<bool>,
    /// Knob `cache_serve_stale` (cache-stampede scenario).
    #[arg(long, env = "CACHE_SERVE_STALE", value_parser = parse_bool)]
    pub cache_serve_stale: Option<bool>,
    /// Knob `cache_query_ms` (cache-stampede scenario).
    #[arg(long, env = "CACHE_QUERY_MS", value_parser = clap::value_parser!(u64).range(0..=60000))]
    pub cache_query_ms: Option<u64>,
    /// Knob `redis_timeout_ms` (cache-stampede scenario).
    #[arg(long, env = "REDIS_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(0..=60000))]
    pub redis_timeout_ms: Option<u64>,
    /// Knob `redis_pool_size` (cache-stampede scenario).
    #[arg(long, env = "REDIS_POOL_SIZE", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub redis_pool_size: Option<u32>,
    /// Knob `redis_pool_timeout_ms` (cache-stampede scenario).
    #[arg(long, env = "REDIS_POOL_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(1..=600000))]
    pub redis_pool_timeout_ms: Option<u64>,

    /// Safety cap (MiB) on memory the memory endpoints may hold at once (retained + spikes).
    /// Raise it explicitly to let the process grow into the container limit (OOM demos).
    #[arg(long, env = "MEMORY_LEAK_LIMIT_MB", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub memory_leak_limit_mb: u64,

    /// Log format: `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Milliseconds in-flight requests get to finish after SIGTERM/SIGINT before exit.
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub shutdown_grace_ms: u64,

    /// Milliseconds the app keeps serving after SIGTERM/SIGINT with `/ready` already failing, so
    /// load balancers stop routing to it before it stops accepting (then the grace period starts).
    #[arg(long, env = "SHUTDOWN_DELAY_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub shutdown_delay_ms: u64,
}

/// Settings of `chokepoint downstream`.
#[derive(Debug, Clone, Args)]
pub struct DownstreamSettings {
    /// Address to bind.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port to bind.
    #[arg(long, env = "PORT", default_value_t = 8001)]
    pub port: u16,

    /// Log format: `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// One line for a command-line or environment error, naming the environment variable behind
/// the offending flag, e.g. `invalid value 'abc' for DB_POOL_SIZE (--db-pool-size): ...`.
pub fn one_line_error(err: &clap::Error) -> String {
    let rendered = err.to_string();
    let first = rendered
        .lines()
        .next()
        .unwrap_or("invalid configuration")
        .trim_start_matches("error: ");
    let Some(clap::error::ContextValue::String(arg)) = err.get(clap::error::ContextKind::InvalidArg) else {
        return first.to_string();
    };
    let long = arg.split_whitespace().next().unwrap_or("").trim_start_matches("--");
    let env = Cli::command()
        .get_subcommands()
        .flat_map(|sub| sub.get_arguments().cloned().collect::<Vec<_>>())
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()));
    match env {
        Some(env) if !first.contains(&format!("<{env}>")) => format!("{first} (environment variable {env})"),
        _ => first.to_string(),
    }
}

impl Settings {
    /// Settings from the given flags only, ignoring the environment (used by tests so that a
    /// developer's exported `DATABASE_URL` never leaks into them).
    pub fn from_flags<I, T>(flags: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cmd = clap::Command::new("serve").mut_args(|a| a.env(None));
        let cmd = Settings::augment_args(cmd);
        let matches = cmd.try_get_matches_from(
            std::iter::once(std::ffi::OsString::from("serve")).chain(flags.into_iter().map(Into::into)),
        )?;
        Settings::from_arg_matches(&matches)
    }

    pub fn bind_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    pub fn downstream_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.downstream_timeout)
    }

    pub fn shutdown_delay(&self) -> Duration {
        Duration::from_millis(self.shutdown_delay_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    pub fn memory_limit_bytes(&self) -> u64 {
        self.memory_leak_limit_mb * 1024 * 1024
    }

    /// The database URL in use, with the embedded SQLite default filled in.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => {
                let path = std::env::temp_dir().join("chokepoint.db");
                format!("sqlite://{}?mode=rwc", path.display())
            }
        }
    }
}

/// Accepts `postgres://`, `postgresql://`, `postgresql+asyncpg://` (rewritten) and `sqlite:` URLs.
fn parse_database_url(raw: &str) -> Result<String, String> {
    let url = raw.trim();
    if let Some(rest) = url.strip_prefix("postgresql+asyncpg://") {
        return Ok(format!("postgres://{rest}"));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") || url.starts_with("sqlite:") {
        return Ok(url.to_string());
    }
    Err("expected a postgres://, postgresql+asyncpg:// or sqlite:// URL".into())
}

/// A secret whose `Debug` never shows it, so logging settings cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

fn parse_secret(raw: &str) -> Result<Secret, String> {
    if raw.trim().len() < 8 {
        Err("expected a token of at least 8 characters".into())
    } else {
        Ok(Secret(raw.trim().to_string()))
    }
}

fn parse_key_prefix(raw: &str) -> Result<String, String> {
    if (1..=64).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(raw.to_string())
    } else {
        Err("must be 1 to 64 visible ASCII characters".into())
    }
}

fn parse_redis_url(raw: &str) -> Result<String, String> {
    let url = raw.trim();
    if url.starts_with("rediss://") {
        Err("rediss:// (TLS) is not supported by this build; use redis:// (a TLS sidecar can terminate TLS)".into())
    } else if url.starts_with("redis://") || url.starts_with("redis+unix://") {
        Ok(url.to_string())
    } else {
        Err("expected a redis:// URL".into())
    }
}

fn parse_http_url(raw: &str) -> Result<String, String> {
    let url = raw.trim().trim_end_matches('/');
    if (url.starts_with("http://") || url.starts_with("https://")) && url.len() > "https://".len() {
        Ok(url.to_string())
    } else {
        Err("expected an http:// or https:// URL".into())
    }
}

fn parse_bool(raw: &str) -> Result<bool, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// A parser for a fraction within `min..=max`.
fn fraction(min: f64, max: f64) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |raw: &str| {
        let msg = || format!("expected a number in {min}..={max}");
        let value: f64 = raw.trim().parse().map_err(|_| msg())?;
        if (min..=max).contains(&value) {
            Ok(value)
        } else {
            Err(msg())
        }
    }
}

/// A parser for a number of seconds (fractions allowed) within `min..=max`.
fn seconds(min: f64, max: f64) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |raw: &str| {
        let value: f64 = raw
            .trim()
            .parse()
            .map_err(|_| format!("expected a number of seconds in {min}..={max}"))?;
        if value.is_finite() && (min..=max).contains(&value) {
            Ok(value)
        } else {
            Err(format!("expected a number of seconds in {min}..={max}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_seed() {
        let s = Settings::from_flags(Vec::<String>::new()).unwrap();
        assert_eq!(s.port, 8000);
        assert_eq!(s.profile, Profile::Fragile);
        let (k, _) = crate::knobs::from_settings(&s);
        assert_eq!(k.db_pool_size, 5);
        assert_eq!(k.db_max_overflow, 10);
        assert_eq!(k.db_pool_timeout_ms, 30_000);
        assert!(!k.breaker_enabled);
    }

    #[test]
    fn asyncpg_urls_are_accepted() {
        let s = Settings::from_flags(["--database-url", "postgresql+asyncpg://u:p@db:5432/app"]).unwrap();
        assert_eq!(s.database_url.as_deref(), Some("postgres://u:p@db:5432/app"));
    }

    #[test]
    fn out_of_range_values_are_refused_naming_the_variable() {
        let err = Settings::from_flags(["--db-pool-size", "0"]).unwrap_err().to_string();
        assert!(err.contains("DB_POOL_SIZE"), "{err}");
        let err = Settings::from_flags(["--db-pool-timeout=-1"]).unwrap_err().to_string();
        assert!(err.contains("DB_POOL_TIMEOUT"), "{err}");
        let err = Settings::from_flags(["--database-url", "mysql://x"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("DATABASE_URL"), "{err}");
    }

    #[test]
    fn admin_token_never_shows_in_debug() {
        let s = Settings::from_flags(["--admin-token", "super-secret-token"]).unwrap();
        assert!(!format!("{s:?}").contains("super-secret-token"));
        assert_eq!(s.admin_token.unwrap().expose(), "super-secret-token");
        assert!(Settings::from_flags(["--admin-token", "short"]).is_err());
    }

    #[test]
    fn missing_subcommand_means_serve() {
        let cli = Cli::parse_with_default_serve(["chokepoint", "--port", "9000"]).unwrap();
        assert!(matches!(cli.command, Command::Serve(s) if s.port == 9000));
        let cli = Cli::parse_with_default_serve(["chokepoint"]).unwrap();
        assert!(matches!(cli.command, Command::Serve(_)));
        let cli = Cli::parse_with_default_serve(["chokepoint", "downstream"]).unwrap();
        assert!(matches!(cli.command, Command::Downstream(d) if d.port == 8001));
    }
}
