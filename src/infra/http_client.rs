//! The HTTP client to the downstream dependency. Each call states its own timeout policy, because
//! the missing timeout *is* the lesson of `/api/no-timeout`. Outcomes are counted per simulated
//! endpoint (a fixed label, not the raw URL): `ok`, `timeout`, `http_error`, `bad_body`, `error`.

use std::time::{Duration, Instant};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use serde_json::Value;

use crate::error::AppError;
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
}

#[derive(Clone)]
pub struct DownstreamClient {
    base_url: std::sync::Arc<str>,
    http: reqwest::Client,
    default_timeout: Duration,
    metrics: ClientMetrics,
}

/// A successful call: the parsed body and how long it took.
#[derive(Debug)]
pub struct CallOk {
    pub body: Value,
    pub elapsed: Duration,
}

impl DownstreamClient {
    pub fn new(base_url: &str, default_timeout: Duration, registry: &Registry) -> Self {
        let metrics = ClientMetrics {
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
                    "Downstream calls waiting for an answer right now",
                )
                .unwrap(),
            ),
        };
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("a plain HTTP client always builds");
        Self {
            base_url: base_url.trim_end_matches('/').into(),
            http,
            default_timeout,
            metrics,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET {base}{path_and_query}` expecting a 2xx JSON body. `endpoint` is the metric label.
    pub async fn get_json(
        &self,
        endpoint: &'static str,
        path_and_query: &str,
        timeout: CallTimeout,
    ) -> Result<CallOk, AppError> {
        let url = format!("{}{}", self.base_url, path_and_query);
        let mut req = self.http.get(&url);
        match timeout {
            CallTimeout::Default => req = req.timeout(self.default_timeout),
            CallTimeout::After(d) => req = req.timeout(d),
            CallTimeout::Never => {}
        }
        let _in_flight = GaugeGuard::new(&self.metrics.in_flight);
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
        match result {
            Ok(body) => Ok(CallOk { body, elapsed }),
            Err(Failure::Timeout) => Err(AppError::DownstreamTimeout { elapsed }),
            Err(Failure::Status(status, snippet)) => Err(AppError::DownstreamError {
                detail: format!("downstream {endpoint} answered {status}: {snippet}"),
                upstream_status: Some(status),
            }),
            Err(Failure::BadBody(e)) => Err(AppError::DownstreamError {
                detail: format!("downstream {endpoint} sent a malformed body: {e}"),
                upstream_status: None,
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
