//! The edge: the one layer every request passes through. It gives the request its id (kept
//! from `x-request-id` or a new UUID, echoed on the response), opens its tracing span, counts
//! it in the HTTP metrics (in flight, by method / route template / status, latency) and puts it
//! past the request guard (rate limit, shedding, the route group's timeout). A request whose
//! client goes away before the answer is counted too, with its duration and the status 499
//! (nginx's "client closed request"): otherwise a collapse that makes clients give up would never
//! show on the request-rate and latency panels. Every answer carries `X-Process-Time` (seconds,
//! as the original Python lab sent it), and CORS admits any origin while the knob
//! `cors_allow_any_origin` is on (the original's `allow_origins=["*"]`).
//!
//! One hand-written service instead of a stack of generic middlewares on purpose: each
//! `from_fn` middleware or router layer clones and boxes the rest of the stack on every request,
//! and `/api/ping` is the baseline every scenario is compared with, so the instrumentation must
//! stay cheap (bench/ping.sh, docs/performance.md). Here a request costs one boxed future.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::MatchedPath;
use axum::http::{header, HeaderName, HeaderValue, Method, Request, StatusCode};
use axum::response::Response;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::infra::checkout::{Holder, HOLDER};
use crate::knobs::ConcurrencyLimit;
use crate::resilience::adaptive;
use crate::resilience::guard::{Admission, Group, Held};
use crate::scenarios::faults::{self, Abort, After};
use crate::state::AppState;
use crate::telemetry::{GaugeGuard, UNMATCHED_ROUTE};

/// The request id header, kept from the request or generated, and always on the response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// `Router::layer(EdgeLayer::new(state))`: inside the router, so the route template
/// (`MatchedPath`) is known.
#[derive(Clone)]
pub struct EdgeLayer {
    state: AppState,
}

impl EdgeLayer {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    state: AppState,
}

/// A new request id: a random (v4) UUID.
fn new_request_id() -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(id).expect("a UUID is a valid header value")
}

/// The header with the seconds a request took to serve, as the original lab sent it.
pub const PROCESS_TIME: HeaderName = HeaderName::from_static("x-process-time");

/// The status recorded for a request whose client went away before the answer (nginx's 499).
pub const CLIENT_CLOSED: u16 = 499;

/// Records a request as abandoned (status 499) if it is dropped before it was answered: the
/// client closed the connection, so hyper dropped the request's future.
struct Unanswered<'a> {
    state: &'a AppState,
    method: &'a Method,
    route: &'a str,
    start: Instant,
    answered: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let latency = self.start.elapsed();
        let status = StatusCode::from_u16(CLIENT_CLOSED).expect("499 is a valid status code");
        self.state
            .http_metrics
            .record(self.method.as_str(), self.route, status, latency);
        tracing::debug!(
            method = %self.method,
            route = self.route,
            latency_ms = latency.as_secs_f64() * 1e3,
            "client closed the connection before the answer (counted as 499)"
        );
    }
}

/// The answer to a CORS preflight (`OPTIONS` with `Access-Control-Request-Method`): any origin,
/// the method and headers asked for, cached for 10 minutes.
fn preflight(req: &Request<Body>) -> Response {
    let mut resp = Response::new(Body::empty());
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, OPTIONS"),
    );
    if let Some(asked) = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    resp
}

/// An error answer that is not already the JSON error shape: axum's own rejections (a path
/// segment that is not UTF-8, a body over the limit or unreadable, a wrong content type) answer
/// `text/plain`.
fn needs_json_error(resp: &Response) -> bool {
    let status = resp.status();
    (status.is_client_error() || status.is_server_error())
        && !resp
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json"))
}

/// Rewrites a non-JSON error answer into `{"error": code, "detail": ...}`, keeping its status
/// and headers (`Retry-After`, `Allow`) and the rejection's own text as the detail.
async fn json_error(resp: Response) -> Response {
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let detail = String::from_utf8_lossy(&text).trim().to_string();
    let code = match parts.status.as_u16() {
        400 => "bad_request",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        411 => "length_required",
        413 => "payload_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        422 => "invalid_body",
        431 => "headers_too_large",
        s if s >= 500 => "internal_error",
        _ => "bad_request",
    };
    let detail = if detail.is_empty() {
        parts.status.canonical_reason().unwrap_or("error").to_string()
    } else {
        detail
    };
    let body = serde_json::to_vec(&serde_json::json!({"error": code, "detail": detail})).unwrap_or_default();
    parts.headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// What happens after the guard's decision: a refusal to send, or the route's future to run
/// holding the permit, with the group's timeout if it has one.
enum Work<F> {
    Refused(Response),
    Run {
        fut: F,
        _permit: Option<Held>,
        /// The group's adaptive limit, entered before the route runs (`concurrency_limit`).
        limit: Option<(Group, (ConcurrencyLimit, Arc<adaptive::Limit>))>,
        timeout: Option<(Group, Duration)>,
        /// An injected delay before the route runs (inside the timeout) and a response-phase
        /// fault after it (src/scenarios/faults.rs).
        delay: Option<Duration>,
        after: Option<(&'static str, After)>,
    },
}

impl<S> Service<Request<Body>> for Edge<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let start = Instant::now();
        let request_id = match req.headers().get(&REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = new_request_id();
                req.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        // A shared string, not a copy: the route template labels the metrics at the end.
        let route = req.extensions().get::<MatchedPath>().cloned();
        let method = req.method().clone();
        // At DEBUG, so at the default level (info) no span is built per request: its fields
        // (and the registry's per-span bookkeeping) cost ~10% of /api/ping's throughput. The
        // edge's own error line names the request itself; RUST_LOG=debug puts the span on
        // every line the handlers log.
        let span = tracing::debug_span!(
            "request",
            method = %method,
            route = route.as_ref().map_or(UNMATCHED_ROUTE, |p| p.as_str()),
            request_id = request_id.to_str().unwrap_or(""),
        );
        let state = self.state.clone();
        let in_flight = GaugeGuard::new(state.http_metrics.in_flight());

        let knobs = state.knobs.current();
        let cors = knobs.cors_allow_any_origin;
        let is_preflight = cors
            && req.method() == Method::OPTIONS
            && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let admission = if is_preflight {
            Admission::Refused(preflight(&req))
        } else {
            state.guard.admit(&knobs, route.as_ref().map(|p| p.as_str()))
        };
        let mut fault_headers_ignored = false;
        let work = match admission {
            Admission::Refused(resp) => Work::Refused(resp),
            Admission::Exempt => Work::Run {
                fut: self.inner.call(req),
                _permit: None,
                limit: None,
                timeout: None,
                delay: None,
                after: None,
            },
            Admission::Admitted {
                permit,
                group,
                timeout,
                limit,
            } => {
                let fault = route
                    .as_ref()
                    .and_then(|r| state.faults.decide(&knobs, group, r.as_str(), req.headers()));
                let fault = fault.unwrap_or_default();
                fault_headers_ignored = fault.headers_ignored;
                match fault.refuse {
                    Some(resp) => Work::Refused(resp),
                    None => Work::Run {
                        fut: self.inner.call(req),
                        _permit: Some(permit),
                        limit: limit.map(|l| (group, l)),
                        timeout: timeout.map(|t| (group, t)),
                        delay: fault.delay,
                        after: fault.after.map(|a| (fault.group, a)),
                    },
                }
            }
        };
        drop(knobs);
        // The handler's checkouts of pooled connections name this request as their holder.
        let holder = Holder {
            route: route.clone(),
            request_id: request_id.clone(),
        };

        Box::pin(
            async move {
                let route = route.as_ref().map_or(UNMATCHED_ROUTE, |p| p.as_str());
                let mut unanswered = Unanswered {
                    state: &state,
                    method: &method,
                    route,
                    start,
                    answered: false,
                };
                let mut resp = match work {
                    Work::Refused(resp) => resp,
                    Work::Run {
                        fut,
                        mut _permit,
                        limit,
                        timeout,
                        delay,
                        after,
                    } => 'run: {
                        if let (Some((group, limit)), Some(held)) = (limit, _permit.as_mut()) {
                            if let Err(refused) = state.guard.enter_limit(held, group, limit).await {
                                break 'run refused;
                            }
                        }
                        let run = async {
                            if let Some(delay) = delay {
                                tokio::time::sleep(delay).await;
                            }
                            HOLDER.scope(holder, fut).await.unwrap_or_else(|never| match never {})
                        };
                        let resp = match timeout {
                            None => run.await,
                            Some((group, limit)) => match tokio::time::timeout(limit, run).await {
                                Ok(resp) => resp,
                                Err(_) => state.guard.timed_out(group, limit),
                            },
                        };
                        match after {
                            Some((group, after)) => state.faults.after(group, after, resp),
                            None => resp,
                        }
                    }
                };
                if needs_json_error(&resp) && resp.extensions().get::<Abort>().is_none() {
                    resp = json_error(resp).await;
                }
                if fault_headers_ignored {
                    resp.headers_mut().insert(
                        faults::HEADER_IGNORED,
                        HeaderValue::from_static("ignored: the knob fault_headers_allowed is off"),
                    );
                }
                let status = resp.status();
                let latency = start.elapsed();
                unanswered.answered = true;
                state.http_metrics.record(method.as_str(), route, status, latency);
                state.lab.latency.record(route, latency);
                drop(in_flight);
                if let Ok(v) = HeaderValue::from_str(&format!("{:.6}", latency.as_secs_f64())) {
                    resp.headers_mut().insert(PROCESS_TIME, v);
                }
                if cors {
                    resp.headers_mut()
                        .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
                }
                resp.headers_mut().insert(REQUEST_ID, request_id);
                if state.is_draining() {
                    // Shutting down: the client must not send its next request on this
                    // connection, which closes once this answer is written (a request sent on a
                    // kept-alive connection as it closes is lost; a new connection is refused
                    // cleanly, and the load balancer has already moved on).
                    resp.headers_mut()
                        .insert(axum::http::header::CONNECTION, HeaderValue::from_static("close"));
                }
                let latency_ms = latency.as_secs_f64() * 1000.0;
                if status.is_server_error() {
                    // One line per failed request. A documented failure mode (a pool timeout, a
                    // shed request, a 504 past a deadline) is the lab working as designed: INFO,
                    // with its code. A 500, or an observer route failing, is a fault: ERROR, with
                    // the cause.
                    let request_id = resp
                        .headers()
                        .get(REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let failure = resp.extensions().get::<crate::error::Failure>();
                    if failure.is_some_and(|f| f.code == "db_connection_poisoned") {
                        state.db.count_poisoned();
                    }
                    match failure {
                        Some(f) if f.expected => tracing::info!(
                            status = status.as_u16(),
                            code = f.code,
                            latency_ms,
                            method = %method,
                            route,
                            request_id,
                            "failed as documented"
                        ),
                        Some(f) => tracing::error!(
                            status = status.as_u16(),
                            code = f.code,
                            error = %f.cause,
                            latency_ms,
                            method = %method,
                            route,
                            request_id,
                            "response failed"
                        ),
                        None => tracing::error!(
                            status = status.as_u16(),
                            latency_ms,
                            method = %method,
                            route,
                            request_id,
                            "response failed"
                        ),
                    }
                } else {
                    tracing::debug!(status = status.as_u16(), latency_ms, "finished processing request");
                }
                Ok(resp)
            }
            .instrument(span),
        )
    }
}
