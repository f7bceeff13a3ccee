//! Telemetry at the edge: tracing set-up, the Prometheus registry, and the HTTP layer that
//! counts requests by route template (`MatchedPath`, never the raw path; unmatched paths share
//! the label `unmatched`) with latency buckets reaching past the longest timeout we demonstrate.
//!
//! The original Python lab's metric names are always there too, for dashboards written against
//! it: `http_requests_total` and `http_request_duration_seconds` carry its `endpoint` label (the
//! route template, the same value as `route`: the original used the raw path, whose cardinality a
//! scanner can explode), and [`SeedCompat`] serves `http_requests_active`, `app_memory_bytes` and
//! `app_cpu_percent` at scrape time.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use tracing_subscriber::EnvFilter;

use crate::state::AppState;

/// Latency buckets (seconds) shared by every histogram: fine at the fast end, and reaching past
/// the 30 s acquire timeout and the 60 s downstream timeout the lab demonstrates.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0,
];

/// Label used for requests that matched no route, so scanners cannot explode label cardinality.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Where log lines go: `serve` and `downstream` log to stdout (a container's log stream);
/// `repro` logs to stderr, so its report alone is on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// Colour only for a terminal, and never when `NO_COLOR` is set to anything non-empty
/// (<https://no-color.org>): a log written to a file or a pipe holds no escape codes.
pub fn use_colour(stream: LogStream) -> bool {
    use std::io::IsTerminal;
    let terminal = match stream {
        LogStream::Stdout => std::io::stdout().is_terminal(),
        LogStream::Stderr => std::io::stderr().is_terminal(),
    };
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the global tracing subscriber on stdout (`RUST_LOG` filter, default `info`). Safe
/// to call twice: the second call is a no-op, which lets tests spawn many apps.
pub fn init_tracing(format: &str) {
    init_tracing_to(format, LogStream::Stdout);
}

/// [`init_tracing`] on the given stream.
pub fn init_tracing_to(format: &str, stream: LogStream) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(use_colour(stream));
    let _ = match (format == "json", stream) {
        (true, LogStream::Stdout) => builder.json().flatten_event(true).try_init(),
        (true, LogStream::Stderr) => builder
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .try_init(),
        (false, LogStream::Stdout) => builder.try_init(),
        (false, LogStream::Stderr) => builder.with_writer(std::io::stderr).try_init(),
    };
}

/// A new registry with the process collector (RSS, CPU seconds, open fds) registered.
pub fn new_registry() -> Registry {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    {
        let pc = prometheus::process_collector::ProcessCollector::for_self();
        registry
            .register(Box::new(pc))
            .expect("process collector registers once");
    }
    let limit = register(
        &registry,
        prometheus::IntGauge::new(
            "process_memory_limit_bytes",
            "The container's memory limit (cgroup memory.max; 0 when unlimited): RSS near it means an OOMKill",
        )
        .unwrap(),
    );
    limit.set(cgroup_memory_limit().map_or(0, |b| b.min(i64::MAX as u64) as i64));
    registry
}

/// The memory limit of this process's cgroup (v2 `memory.max`, else v1 `memory.limit_in_bytes`),
/// `None` when there is none.
pub fn cgroup_memory_limit() -> Option<u64> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let v2 = read("/sys/fs/cgroup/memory.max").and_then(|s| s.trim().parse::<u64>().ok());
    // cgroup v1 reports "no limit" as a huge number close to i64::MAX.
    let v1 = read("/sys/fs/cgroup/memory/memory.limit_in_bytes")
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|b| *b < 1 << 60);
    v2.or(v1)
}

/// Registers a collector on the app's registry. Metric names are fixed at compile time, so a
/// failure here is a programming error caught by every test.
pub fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry.register(Box::new(c.clone())).expect("metric names are unique");
    c
}

#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGauge,
}

impl HttpMetrics {
    pub fn new(registry: &Registry) -> Self {
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by method, route template and status (499: the client closed the connection first); endpoint = route, the original lab's label",
            ),
            &["method", "route", "endpoint", "status"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency by method and route template (endpoint = route)",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["method", "route", "endpoint"],
        )
        .expect("valid metric");
        let in_flight =
            IntGauge::new("http_requests_in_flight", "HTTP requests being served right now").expect("valid metric");
        let in_flight = register(registry, in_flight);
        registry
            .register(Box::new(SeedCompat::new(in_flight.clone())))
            .expect("metric names are unique");
        Self {
            requests: register(registry, requests),
            duration: register(registry, duration),
            in_flight,
        }
    }

    /// The gauge of requests being served (the edge layer holds a [`GaugeGuard`] on it).
    pub fn in_flight(&self) -> &IntGauge {
        &self.in_flight
    }

    /// Counts one answered request and its latency.
    pub fn record(&self, method: &str, route: &str, status: StatusCode, latency: Duration) {
        self.duration
            .with_label_values(&[method, route, route])
            .observe(latency.as_secs_f64());
        self.requests
            .with_label_values(&[method, route, route, status.as_str()])
            .inc();
    }
}

/// The original lab's process gauges, read when scraped: `http_requests_active` (our
/// `http_requests_in_flight`), `app_memory_bytes` (RSS) and `app_cpu_percent` (CPU used since the
/// previous scrape, 100 = one core, as psutil's `cpu_percent()` reports it).
struct SeedCompat {
    in_flight: IntGauge,
    active: IntGauge,
    memory: prometheus::Gauge,
    cpu: prometheus::Gauge,
    last: std::sync::Mutex<Option<(std::time::Instant, f64)>>,
}

impl SeedCompat {
    fn new(in_flight: IntGauge) -> Self {
        Self {
            in_flight,
            active: IntGauge::new("http_requests_active", "Active HTTP requests (the original lab's name)").unwrap(),
            memory: prometheus::Gauge::new("app_memory_bytes", "Resident memory in bytes (the original lab's name)")
                .unwrap(),
            cpu: prometheus::Gauge::new(
                "app_cpu_percent",
                "CPU used since the previous scrape, 100 = one core (the original lab's name)",
            )
            .unwrap(),
            last: std::sync::Mutex::new(None),
        }
    }
}

/// This process's (resident bytes, CPU seconds) from /proc.
fn self_usage() -> Option<(f64, f64)> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    // SAFETY: sysconf has no preconditions.
    let (page, ticks) = unsafe { (libc::sysconf(libc::_SC_PAGESIZE), libc::sysconf(libc::_SC_CLK_TCK)) };
    Some((resident * page as f64, (utime + stime) / ticks.max(1) as f64))
}

impl prometheus::core::Collector for SeedCompat {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        [self.active.desc(), self.memory.desc(), self.cpu.desc()].concat()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.active.set(self.in_flight.get());
        if let Some((rss, cpu_s)) = self_usage() {
            self.memory.set(rss);
            let now = std::time::Instant::now();
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, before)) = *last {
                let wall = now.duration_since(at).as_secs_f64();
                if wall > 0.0 {
                    self.cpu.set(((cpu_s - before) / wall * 100.0).max(0.0));
                }
            }
            *last = Some((now, cpu_s));
        }
        [self.active.collect(), self.memory.collect(), self.cpu.collect()].concat()
    }
}

/// Increments a gauge now and decrements it when dropped, so in-flight counts stay right even
/// when a request future is cancelled (client gone).
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    pub fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `GET /metrics`: Prometheus text format. Pool gauges are sampled at scrape time.
pub async fn metrics_handler(State(state): State<AppState>) -> Response {
    state.db.refresh_gauges();
    state.cache.refresh_gauges();
    let families = state.registry.gather();
    let mut buf = Vec::with_capacity(16 * 1024);
    match TextEncoder::new().encode(&families, &mut buf) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], buf).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
