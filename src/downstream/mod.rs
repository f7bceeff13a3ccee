//! The downstream dependency simulator (`chokepoint downstream`, port 8001): slow, random,
//! flaky, trapping and bursting endpoints, plus fault controls (fail the first N calls, an
//! outage window) that the retry-storm and breaker demonstrations drive.
//!
//! When `DOWNSTREAM_SERVICE_URL` is unset, `chokepoint serve` runs it embedded
//! ([`EmbeddedDownstream`]) on its own thread and runtime, so a collapse of the app's runtime
//! (blocked or CPU-saturated workers) never slows the simulated dependency.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::error::AppResult;
use crate::params::Params;

/// Shared state of one simulator instance.
#[derive(Default)]
pub struct Simulator {
    /// Calls per simulated endpoint (`/stats`).
    calls: Mutex<BTreeMap<&'static str, u64>>,
    /// Injected failures served (fail-first, outage, sometimes-fail, burst-error).
    failures: AtomicU64,
    in_flight: AtomicI64,
    /// Fault control: the next N simulated calls fail with 503.
    fail_first_remaining: AtomicU64,
    /// Fault control: every simulated call fails with 503 until this instant.
    outage_until: Mutex<Option<Instant>>,
    /// Counter driving `/burst-error`'s periodic bursts.
    burst_counter: AtomicU64,
    /// The simulator's own base URL, for `/cascade` calling itself.
    self_url: OnceLock<String>,
    client: reqwest::Client,
}

type Sim = Arc<Simulator>;

impl Simulator {
    fn count(&self, endpoint: &'static str) {
        *self
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(endpoint)
            .or_default() += 1;
    }

    fn injected(&self, status: StatusCode, code: &str, detail: String) -> Response {
        self.failures.fetch_add(1, Ordering::Relaxed);
        (status, Json(json!({"error": code, "detail": detail}))).into_response()
    }

    fn outage_remaining(&self) -> Option<Duration> {
        let until = *self.outage_until.lock().unwrap_or_else(|p| p.into_inner());
        until
            .and_then(|u| u.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }
}

/// The simulator's routes. Faults apply to the simulated endpoints only; `/health`, `/stats` and
/// `/control` always answer.
pub fn router(sim: Sim) -> Router {
    let simulated = Router::new()
        .route("/slow", get(slow))
        .route("/random", get(random))
        .route("/sometimes-fail", get(sometimes_fail))
        .route("/timeout-trap", get(timeout_trap))
        .route("/burst-error", get(burst_error))
        .route("/cascade", get(cascade))
        .route("/malformed", get(malformed))
        .layer(axum::middleware::from_fn_with_state(sim.clone(), faults));
    Router::new()
        .merge(simulated)
        .route(
            "/health",
            get(|| async { Json(json!({"status": "healthy", "service": "downstream"})) }),
        )
        .route("/stats", get(stats))
        .route("/control", get(control_state))
        .route("/control/fail-first", post(control_fail_first))
        .route("/control/outage", post(control_outage))
        .route("/control/reset", post(control_reset))
        .fallback(crate::scenarios::healthy::not_found)
        .with_state(sim)
}

/// Applies the fault controls before a simulated endpoint runs, and counts calls.
async fn faults(State(sim): State<Sim>, req: Request, next: Next) -> Response {
    let endpoint = endpoint_label(req.uri().path());
    sim.count(endpoint);
    if let Some(left) = sim.outage_remaining() {
        return sim.injected(
            StatusCode::SERVICE_UNAVAILABLE,
            "injected_outage",
            format!("outage window: {} ms left", left.as_millis()),
        );
    }
    let took_one = sim
        .fail_first_remaining
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if took_one {
        return sim.injected(
            StatusCode::SERVICE_UNAVAILABLE,
            "injected_failure",
            "fail-first control".into(),
        );
    }
    sim.in_flight.fetch_add(1, Ordering::Relaxed);
    let resp = next.run(req).await;
    sim.in_flight.fetch_sub(1, Ordering::Relaxed);
    resp
}

fn endpoint_label(path: &str) -> &'static str {
    match path {
        "/slow" => "/slow",
        "/random" => "/random",
        "/sometimes-fail" => "/sometimes-fail",
        "/timeout-trap" => "/timeout-trap",
        "/burst-error" => "/burst-error",
        "/cascade" => "/cascade",
        "/malformed" => "/malformed",
        _ => "other",
    }
}

async fn slow(params: Params) -> AppResult<Json<Value>> {
    let delay: f64 = params.num("delay", 1.0, 0.0..=120.0)?;
    tokio::time::sleep(Duration::from_secs_f64(delay)).await;
    Ok(Json(json!({"delay": delay, "message": "slow downstream response"})))
}

async fn random(params: Params) -> AppResult<Response> {
    let min: f64 = params.num("min_delay", 0.1, 0.0..=120.0)?;
    let max: f64 = params.num("max_delay", 2.0, 0.0..=120.0)?;
    if max < min {
        return Err(crate::error::AppError::invalid(
            "max_delay",
            format!("`max_delay` ({max}) must be >= `min_delay` ({min})"),
        ));
    }
    let delay = rand::rng().random_range(min..=max);
    tokio::time::sleep(Duration::from_secs_f64(delay)).await;
    Ok(Json(json!({"delay": delay})).into_response())
}

async fn sometimes_fail(State(sim): State<Sim>, params: Params) -> AppResult<Response> {
    let failure_rate: f64 = params.num("failure_rate", 0.3, 0.0..=1.0)?;
    let delay: f64 = params.num("delay", 0.0, 0.0..=120.0)?;
    tokio::time::sleep(Duration::from_secs_f64(delay)).await;
    if rand::rng().random_bool(failure_rate) {
        return Ok(sim.injected(
            StatusCode::INTERNAL_SERVER_ERROR,
            "injected_failure",
            format!("failed at failure_rate={failure_rate}"),
        ));
    }
    Ok(Json(json!({"ok": true, "failure_rate": failure_rate, "delay": delay})).into_response())
}

/// Sends headers at once, then trickles whitespace for `duration` seconds before the JSON:
/// a trap for clients that time out the connect or the headers but not the whole body.
async fn timeout_trap(params: Params) -> AppResult<Response> {
    let duration: u64 = params.num("duration", 60, 1..=600)?;
    let stream = futures::stream::unfold(0u64, move |sent| async move {
        if sent > duration {
            return None;
        }
        if sent == duration {
            return Some((
                Ok::<_, std::io::Error>(Bytes::from_static(b"{\"trap\":true}")),
                sent + 1,
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        Some((Ok(Bytes::from_static(b" ")), sent + 1))
    });
    Ok(([(header::CONTENT_TYPE, "application/json")], Body::from_stream(stream)).into_response())
}

/// Fails in periodic bursts: of every `every` calls, the first `burst` fail with 503.
async fn burst_error(State(sim): State<Sim>, params: Params) -> AppResult<Response> {
    let every: u64 = params.num("every", 10, 1..=10_000)?;
    let burst: u64 = params.num("burst", 3, 0..=10_000)?;
    let n = sim.burst_counter.fetch_add(1, Ordering::SeqCst);
    if n % every < burst {
        return Ok(sim.injected(
            StatusCode::SERVICE_UNAVAILABLE,
            "injected_burst",
            format!("call {n} is inside a burst ({burst} of every {every})"),
        ));
    }
    Ok(Json(json!({"ok": true, "call": n})).into_response())
}

/// Answers 200 with a truncated JSON body: a receiver that is up but broken.
async fn malformed() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], r#"{"ok": tru"#).into_response()
}

/// Calls itself `levels` deep, sleeping `delay` at each level: latency adds up along the chain.
async fn cascade(State(sim): State<Sim>, params: Params) -> AppResult<Response> {
    let levels: u32 = params.num("levels", 3, 0..=10)?;
    let delay: f64 = params.num("delay", 0.5, 0.0..=30.0)?;
    tokio::time::sleep(Duration::from_secs_f64(delay)).await;
    if levels == 0 {
        return Ok(Json(json!({"level": 0, "delay": delay})).into_response());
    }
    let base = sim.self_url.get().cloned().unwrap_or_default();
    let url = format!("{base}/cascade?levels={}&delay={delay}", levels - 1);
    match sim.client.get(&url).send().await {
        Ok(resp) if resp.status().is_success() => {
            let inner: Value = resp.json().await.unwrap_or(Value::Null);
            Ok(Json(json!({"level": levels, "delay": delay, "inner": inner})).into_response())
        }
        Ok(resp) => Ok(sim.injected(
            StatusCode::BAD_GATEWAY,
            "cascade_failed",
            format!("level {} answered {}", levels - 1, resp.status()),
        )),
        Err(e) => Ok(sim.injected(
            StatusCode::BAD_GATEWAY,
            "cascade_failed",
            format!("level {} unreachable: {e}", levels - 1),
        )),
    }
}

async fn stats(State(sim): State<Sim>) -> Json<Value> {
    let calls = sim.calls.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let total: u64 = calls.values().sum();
    Json(json!({
        "total_calls": total,
        "calls": calls,
        "injected_failures": sim.failures.load(Ordering::Relaxed),
        "in_flight": sim.in_flight.load(Ordering::Relaxed),
        "fail_first_remaining": sim.fail_first_remaining.load(Ordering::Relaxed),
        "outage_remaining_ms": sim.outage_remaining().map(|d| d.as_millis() as u64).unwrap_or(0),
    }))
}

async fn control_state(State(sim): State<Sim>) -> Json<Value> {
    Json(json!({
        "fail_first_remaining": sim.fail_first_remaining.load(Ordering::Relaxed),
        "outage_remaining_ms": sim.outage_remaining().map(|d| d.as_millis() as u64).unwrap_or(0),
    }))
}

async fn control_fail_first(State(sim): State<Sim>, params: Params) -> AppResult<Json<Value>> {
    let n: u64 = params.required_num("n", 0..=1_000_000)?;
    sim.fail_first_remaining.store(n, Ordering::SeqCst);
    Ok(Json(json!({"fail_first_remaining": n})))
}

async fn control_outage(State(sim): State<Sim>, params: Params) -> AppResult<Json<Value>> {
    let ms: u64 = params.required_num("duration_ms", 0..=3_600_000)?;
    let until = (ms > 0).then(|| Instant::now() + Duration::from_millis(ms));
    *sim.outage_until.lock().unwrap_or_else(|p| p.into_inner()) = until;
    Ok(Json(json!({"outage_remaining_ms": ms})))
}

async fn control_reset(State(sim): State<Sim>) -> Json<Value> {
    sim.fail_first_remaining.store(0, Ordering::SeqCst);
    *sim.outage_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
    sim.burst_counter.store(0, Ordering::SeqCst);
    sim.failures.store(0, Ordering::SeqCst);
    sim.calls.lock().unwrap_or_else(|p| p.into_inner()).clear();
    Json(json!({"reset": true}))
}

/// Binds `addr` and returns the simulator's router ready to serve, with its self URL set.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, Router)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let sim = Arc::new(Simulator::default());
    let _ = sim.self_url.set(format!("http://{local}"));
    Ok((listener, router(sim)))
}

/// The simulator running on its own OS thread and single-threaded runtime, stopped on drop.
pub struct EmbeddedDownstream {
    addr: SocketAddr,
    stop: tokio_util::sync::CancellationToken,
}

impl EmbeddedDownstream {
    /// Starts the simulator on 127.0.0.1 with a free port; it stops when the app does (or when
    /// this is dropped).
    pub fn start(lifecycle: &crate::lifecycle::Lifecycle) -> std::io::Result<Self> {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let stop = tokio_util::sync::CancellationToken::new();
        let stop_rx = stop.clone();
        // Detached: joining on stop would wait for slow simulated calls (up to minutes); the
        // thread ends by itself once its connections close, and logs a serve error if any.
        std::thread::Builder::new()
            .name("downstream-sim".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = addr_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let (listener, app) = match bind(SocketAddr::from(([127, 0, 0, 1], 0))).await {
                        Ok(bound) => bound,
                        Err(e) => {
                            let _ = addr_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = addr_tx.send(listener.local_addr());
                    let served = axum::serve(listener, app)
                        .with_graceful_shutdown(stop_rx.cancelled_owned())
                        .await;
                    if let Err(e) = served {
                        tracing::error!(error = %e, "embedded downstream simulator stopped with an error");
                    }
                });
            })?;
        let addr = addr_rx
            .recv()
            .map_err(|_| std::io::Error::other("the simulator thread exited before binding"))??;
        let on_stop = stop.clone();
        lifecycle.on_stop(move || on_stop.cancel());
        Ok(Self { addr, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EmbeddedDownstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
