//! The HTTP client to the downstream dependency. Each call states its own timeout policy, because
//! the missing timeout *is* the lesson of `/api/no-timeout`. Outcomes are counted per simulated
//! endpoint (a fixed label, not the raw URL): `ok`, `timeout`, `http_error`, `bad_body`, `error`.
//!
//! The downstream mitigations wrap every call, each read from the live knobs: a timeout cap
//! (`downstream_timeout_cap_ms`), a bulkhead (`downstream_max_concurrency`), the circuit breaker
//! and retries with backoff, jitter and a budget. Every call also needs one of the pool's
//! connections ([`OutboundPool`], `downstream_pool_size`): the finite resource behind the cascade. `downstream_attempts_total{kind}` and
//! `downstream_attempts_per_call` show retry amplification.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use serde_json::Value;

use crate::error::AppError;
use crate::infra::outbound_pool::OutboundPool;
use crate::knobs::Knobs;
use crate::resilience::breaker::Breaker;
use crate::resilience::bulkhead::Bulkhead;
use crate::resilience::retry::{backoff, RetryBudget};
use crate::telemetry::{register, GaugeGuard, LATENCY_BUCKETS};

/// How long a call may take.
#[derive(Debug, Clone, Copy)]
pub enum CallTimeout {
    /// The client's default (`DOWNSTREAM_TIMEOUT`).
    Default,
    /// An explicit per-call timeout.
    After(Duration),
    /// No timeout at all: the caller waits as long as the dependency takes (fragile on purpose).
    Never,
}

#[derive(Clone)]
struct ClientMetrics {
    calls: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGauge,
    attempts: IntCounterVec,
    attempts_per_call: Histogram,
    retries_denied: IntCounter,
    bulkhead_rejections: IntCounter,
}

impl ClientMetrics {
    fn new(registry: &Registry) -> Self {
        let m = Self::register_all(registry);
        // Present from the start, so dashboards and rate() see zero rather than nothing.
        for kind in ["first", "retry"] {
            m.attempts.with_label_values(&[kind]);
        }
        m
    }

    fn register_all(registry: &Registry) -> Self {
        Self {
            calls: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "downstream_calls_total",
                        "Calls to the downstream dependency by endpoint and outcome",
                    ),
                    &["endpoint", "outcome"],
                )
                .unwrap(),
            ),
            duration: register(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "downstream_call_duration_seconds",
                        "Downstream call latency by endpoint",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["endpoint"],
                )
                .unwrap(),
            ),
            in_flight: register(
                registry,
                IntGauge::new(
                    "downstream_calls_in_flight",
                    "Downstream calls in progress: waiting for a pooled connection or for the answer",
                )
                .unwrap(),
            ),
            attempts: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "downstream_attempts_total",
                        "Downstream attempts sent, first tries and retries",
                    ),
                    &["kind"],
                )
                .unwrap(),
            ),
            attempts_per_call: register(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "downstream_attempts_per_call",
                        "Attempts one logical downstream call took",
                    )
                    .buckets(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]),
                )
                .unwrap(),
            ),
            retries_denied: register(
                registry,
                IntCounter::new("downstream_retries_denied_total", "Retries refused by the retry budget").unwrap(),
            ),
            bulkhead_rejections: register(
                registry,
                IntCounter::new(
                    "downstream_bulkhead_rejections_total",
                    "Downstream calls refused because downstream_max_concurrency were in flight",
                )
                .unwrap(),
            ),
        }
    }
}

#[derive(Clone)]
pub struct DownstreamClient {
    base_url: Arc<str>,
    http: reqwest::Client,
    default_timeout: Duration,
    metrics: ClientMetrics,
    bulkhead: Arc<Bulkhead>,
    pool: Arc<OutboundPool>,
    breaker: Arc<Breaker>,
    budget: Arc<RetryBudget>,
}

/// A successful call: the parsed body, how long it took (all attempts) and how many attempts.
#[derive(Debug)]
pub struct CallOk {
    pub body: Value,
    pub elapsed: Duration,
    pub attempts: u32,
}

impl DownstreamClient {
    pub fn new(base_url: &str, default_timeout: Duration, registry: &Registry) -> Self {
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("a plain HTTP client always builds");
        Self {
            base_url: base_url.trim_end_matches('/').into(),
            http,
            default_timeout,
            metrics: ClientMetrics::new(registry),
            bulkhead: Bulkhead::new(None),
            pool: OutboundPool::new(registry),
            breaker: Arc::new(Breaker::new(registry)),
            budget: Arc::new(RetryBudget::default()),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET {base}{path_and_query}` expecting a 2xx JSON body, through the mitigations the knobs
    /// turn on. `endpoint` is the metric label.
    pub async fn get_json(
        &self,
        knobs: &Knobs,
        endpoint: &'static str,
        path_and_query: &str,
        timeout: CallTimeout,
    ) -> Result<CallOk, AppError> {
        let url = format!("{}{}", self.base_url, path_and_query);
        let own = match timeout {
            CallTimeout::Default => Some(self.default_timeout),
            CallTimeout::After(d) => Some(d),
            CallTimeout::Never => None,
        };
        let timeout = match (own, knobs.downstream_timeout_cap_ms) {
            (own, 0) => own,
            (None, cap) => Some(Duration::from_millis(cap)),
            (Some(own), cap) => Some(own.min(Duration::from_millis(cap))),
        };
        let started = Instant::now();
        let mut attempt: u32 = 1;
        self.budget.first_attempt();
        let result = loop {
            let kind = if attempt == 1 { "first" } else { "retry" };
            self.metrics.attempts.with_label_values(&[kind]).inc();
            let result = self.attempt(knobs, endpoint, &url, timeout).await;
            // Timeouts, unreachable and 5xx may pass; a 4xx or a malformed 2xx body would repeat.
            let retryable = matches!(
                &result,
                Err(AppError::DownstreamTimeout { .. })
                    | Err(AppError::DownstreamError {
                        upstream_status: None | Some(500..),
                        ..
                    })
            );
            if !retryable || attempt >= knobs.retry_max_attempts {
                break result;
            }
            if !self.budget.try_retry(knobs) {
                self.metrics.retries_denied.inc();
                break result;
            }
            tokio::time::sleep(backoff(knobs, attempt)).await;
            attempt += 1;
        };
        self.metrics.attempts_per_call.observe(f64::from(attempt));
        result.map(|body| CallOk {
            body,
            elapsed: started.elapsed(),
            attempts: attempt,
        })
    }

    /// One attempt: bulkhead, breaker admission, the HTTP call, and the breaker's record.
    async fn attempt(
        &self,
        knobs: &Knobs,
        endpoint: &'static str,
        url: &str,
        timeout: Option<Duration>,
    ) -> Result<Value, AppError> {
        let Some(_permit) = self.bulkhead.try_enter(knobs.downstream_max_concurrency) else {
            self.metrics.bulkhead_rejections.inc();
            return Err(AppError::Shed {
                retry_after: crate::error::RETRY_SOON,
                detail: format!(
                    "{} downstream calls already in flight (downstream_max_concurrency)",
                    knobs.downstream_max_concurrency
                ),
            });
        };
        if let Err(wait) = self.breaker.admit(knobs) {
            return Err(AppError::CircuitOpen {
                detail: format!(
                    "the downstream circuit breaker is open; next trial in {} ms",
                    wait.as_millis()
                ),
                retry_after: wait,
            });
        }
        let _in_flight = GaugeGuard::new(&self.metrics.in_flight);
        let asked = Instant::now();
        let wait_cap = match knobs.downstream_pool_wait_ms {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        };
        let counts_wait = knobs.downstream_deadline_includes_wait;
        let wait = match (wait_cap, timeout) {
            (Some(cap), Some(t)) if counts_wait => Some(cap.min(t)),
            (None, Some(t)) if counts_wait => Some(t),
            (cap, _) => cap,
        };
        let _connection = match self.pool.acquire(knobs.downstream_pool_size, wait).await {
            Ok(lease) => lease,
            Err(out) => {
                self.metrics.calls.with_label_values(&[endpoint, "pool_timeout"]).inc();
                return Err(AppError::Shed {
 retry_after: crate::error::RETRY_SOON,
                    detail: format!(
                        "no downstream connection free within {} ms ({} in use: downstream_pool_size; wait cap downstream_pool_wait_ms)",
                        out.waited.as_millis(),
                        knobs.downstream_pool_size
                    ),
                });
            }
        };
        let timeout = match timeout {
            Some(t) if counts_wait => Some(t.saturating_sub(asked.elapsed()).max(Duration::from_millis(1))),
            other => other,
        };
        let mut req = self.http.get(url);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let start = Instant::now();
        let result = Self::send(req).await;
        let elapsed = start.elapsed();
        self.metrics
            .duration
            .with_label_values(&[endpoint])
            .observe(elapsed.as_secs_f64());
        let outcome = match &result {
            Ok(_) => "ok",
            Err(Failure::Timeout) => "timeout",
            Err(Failure::Status(..)) => "http_error",
            Err(Failure::BadBody(_)) => "bad_body",
            Err(Failure::Transport(_)) => "error",
        };
        self.metrics.calls.with_label_values(&[endpoint, outcome]).inc();
        // 4xx is the caller's mistake, not the dependency failing.
        self.breaker
            .record(knobs, !matches!(result, Ok(_) | Err(Failure::Status(400..=499, _))));
        match result {
            Ok(body) => Ok(body),
            Err(Failure::Timeout) => Err(AppError::DownstreamTimeout { elapsed }),
            Err(Failure::Status(status, snippet)) => Err(AppError::DownstreamError {
                detail: format!("downstream {endpoint} answered {status}: {snippet}"),
                upstream_status: Some(status),
            }),
            Err(Failure::BadBody(e)) => Err(AppError::DownstreamError {
                detail: format!("downstream {endpoint} answered 200 with a malformed JSON body: {e}"),
                upstream_status: Some(200),
            }),
            Err(Failure::Transport(e)) => {
                tracing::warn!(error = %crate::error::error_chain(&e), endpoint, "downstream unreachable");
                Err(AppError::DownstreamError {
                    detail: format!("downstream {endpoint} unreachable: {}", transport_summary(&e)),
                    upstream_status: None,
                })
            }
        }
    }

    async fn send(req: reqwest::RequestBuilder) -> Result<Value, Failure> {
        let resp = req.send().await.map_err(Failure::from_reqwest)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(Failure::from_reqwest)?;
        if !status.is_success() {
            let snippet: String = String::from_utf8_lossy(&bytes).chars().take(200).collect();
            return Err(Failure::Status(status.as_u16(), snippet));
        }
        serde_json::from_slice(&bytes).map_err(|e| Failure::BadBody(e.to_string()))
    }
}

enum Failure {
    Timeout,
    Status(u16, String),
    BadBody(String),
    Transport(reqwest::Error),
}

impl Failure {
    fn from_reqwest(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            Failure::Timeout
        } else {
            Failure::Transport(e)
        }
    }
}

fn transport_summary(e: &reqwest::Error) -> &'static str {
    if e.is_connect() {
        "connection refused or failed"
    } else if e.is_body() || e.is_decode() {
        "connection dropped while reading the body"
    } else {
        "request failed"
    }
}
