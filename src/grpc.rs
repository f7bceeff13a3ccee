//! The worker-pool report's own protocol: a real gRPC service (tonic) on its own port
//! (`GRPC_PORT`, default 50051), `chokepoint.worker.v1.WorkerPool/Work`, backed by the same pool
//! of OS threads as `GET /api/worker-pool` (`worker_pool_size`, 10 by default) and the same knobs.
//!
//! The call's deadline is its `grpc-timeout` (or the request's `deadline_ms`, or the knob
//! `request_deadline_ms`). Fragile: the queue is unbounded and a worker runs a job even when its
//! caller is gone, so past capacity every call ends in status 4 `DEADLINE_EXCEEDED` while the
//! workers stay busy on abandoned work. Hardened: a bounded queue answers status 8
//! `RESOURCE_EXHAUSTED` at once, the deadline travels with the job and is checked before work
//! starts, and a job whose caller has gone is shed. Server reflection (v1 and v1alpha) lets
//! grpcurl and k6 call it without the .proto (`proto/chokepoint/worker/v1/worker.proto`).
//!
//! Metrics, per method and status code: `grpc_server_handled_total{grpc_service,grpc_method,grpc_code}`,
//! `grpc_server_handling_seconds{grpc_service,grpc_method}`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chokepoint_repro::grpc::metric_code_name;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::scenarios::worker_pool::{parse_grpc_timeout, run_job, JobError, WorkMode, DEADLINE_MS, WORK_MS};
use crate::state::AppState;
use crate::telemetry::{register, LATENCY_BUCKETS};

/// The code generated from `proto/` (`src/proto.rs`).
pub use crate::proto::worker as pb;
pub use crate::proto::worker::SERVICE;
/// `work_ms` 0 means this, as an absent `work_ms` does on `GET /api/worker-pool`. The bounds of
/// both fields are the HTTP parameters' ([`WORK_MS`], [`DEADLINE_MS`]).
const WORK_MS_DEFAULT: u32 = crate::scenarios::worker_pool::REPORT_WORK_MS as u32;

/// The gRPC metrics.
#[derive(Clone)]
pub struct GrpcMetrics {
    handled: IntCounterVec,
    seconds: HistogramVec,
}

impl GrpcMetrics {
    pub fn new(registry: &Registry) -> Self {
        let m = Self {
            handled: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "grpc_server_handled_total",
                        "gRPC calls answered, by method and status code",
                    ),
                    &["grpc_service", "grpc_method", "grpc_code"],
                )
                .unwrap(),
            ),
            seconds: register(
                registry,
                HistogramVec::new(
                    HistogramOpts::new("grpc_server_handling_seconds", "Time to answer a gRPC call, by method")
                        .buckets(LATENCY_BUCKETS.to_vec()),
                    &["grpc_service", "grpc_method"],
                )
                .unwrap(),
            ),
        };
        for code in [
            tonic::Code::Ok,
            tonic::Code::DeadlineExceeded,
            tonic::Code::ResourceExhausted,
            tonic::Code::Cancelled,
        ] {
            m.handled.with_label_values(&[SERVICE, "Work", metric_code_name(code)]);
        }
        // The histogram's series exist before the first call (dashboards and alerts name them).
        m.seconds.with_label_values(&[SERVICE, "Work"]);
        m
    }

    fn record(&self, method: &str, code: tonic::Code, took: Duration) {
        self.handled
            .with_label_values(&[SERVICE, method, metric_code_name(code)])
            .inc();
        self.seconds
            .with_label_values(&[SERVICE, method])
            .observe(took.as_secs_f64());
    }
}

struct Worker {
    state: AppState,
}

/// The call's deadline: `grpc-timeout`, else `deadline_ms`, else the knob.
fn deadline_of(req: &Request<pb::WorkRequest>, knob_ms: u64) -> Result<Duration, Status> {
    let header = req
        .metadata()
        .get("grpc-timeout")
        .map(|v| v.to_str().ok().and_then(parse_grpc_timeout));
    let deadline = match header {
        Some(None) => {
            return Err(Status::invalid_argument(
                "grpc-timeout: must be digits and a unit (H, M, S, m, u, n), e.g. 2S",
            ))
        }
        Some(Some(d)) => d,
        None if req.get_ref().deadline_ms > 0 => Duration::from_millis(u64::from(req.get_ref().deadline_ms)),
        None => Duration::from_millis(knob_ms),
    };
    let ms = deadline.as_millis() as u64;
    if !(DEADLINE_MS.min..=DEADLINE_MS.max).contains(&ms) {
        return Err(Status::invalid_argument(format!(
            "deadline: {ms} ms is out of range {}..={} ms (grpc-timeout or deadline_ms)",
            DEADLINE_MS.min, DEADLINE_MS.max
        )));
    }
    Ok(deadline)
}

impl Worker {
    async fn serve(&self, req: Request<pb::WorkRequest>) -> Result<Response<pb::WorkReply>, Status> {
        let knob_ms = self.state.knobs.current().request_deadline_ms;
        let deadline = deadline_of(&req, knob_ms)?;
        let body = req.into_inner();
        let work_ms = match body.work_ms {
            0 => WORK_MS_DEFAULT,
            n if (WORK_MS.min..=WORK_MS.max).contains(&u64::from(n)) => n,
            n => {
                return Err(Status::invalid_argument(format!(
                    "work_ms: {n} is out of range {}..={} (0 = the default, {WORK_MS_DEFAULT})",
                    WORK_MS.min, WORK_MS.max
                )))
            }
        };
        let mode = match pb::Mode::try_from(body.mode) {
            Ok(pb::Mode::Burn) => WorkMode::Burn,
            Ok(pb::Mode::Block) => WorkMode::Block,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "mode: {} is not a Mode (0 = MODE_BLOCK, 1 = MODE_BURN)",
                    body.mode
                )))
            }
        };
        match run_job(&self.state, u64::from(work_ms), mode, deadline).await {
            Ok(done) => Ok(Response::new(pb::WorkReply {
                work_ms,
                queue_wait_ms: done.queue_wait.as_secs_f64() * 1e3,
                total_ms: done.total.as_secs_f64() * 1e3,
                deadline_ms: deadline.as_millis() as u64,
            })),
            Err(JobError::Shed { queue_max, .. }) => Err(Status::resource_exhausted(format!(
                "{queue_max} jobs already queued (worker_queue_max): refused at once"
            ))),
            Err(JobError::WouldMissDeadline { starts_in, deadline }) => Err(Status::resource_exhausted(
                crate::scenarios::worker_pool::would_miss(starts_in, deadline, u64::from(work_ms)),
            )),
            Err(JobError::DeadlineExceeded) => Err(Status::deadline_exceeded(format!(
                "the {} ms deadline passed before a worker finished the job",
                deadline.as_millis()
            ))),
            Err(JobError::Dropped) => Err(Status::unavailable("the worker pool is stopping")),
        }
    }
}

/// Records one call when it ends, including a call whose client went away first (its future is
/// dropped): `Cancelled`, as grpc-go counts a call its client cancelled.
struct CallRecord<'a> {
    metrics: &'a GrpcMetrics,
    method: &'static str,
    start: Instant,
    code: tonic::Code,
}

impl Drop for CallRecord<'_> {
    fn drop(&mut self) {
        self.metrics.record(self.method, self.code, self.start.elapsed());
    }
}

#[tonic::async_trait]
impl pb::worker_pool_server::WorkerPool for Worker {
    async fn work(&self, req: Request<pb::WorkRequest>) -> Result<Response<pb::WorkReply>, Status> {
        let mut record = CallRecord {
            metrics: &self.state.grpc_metrics,
            method: "Work",
            start: Instant::now(),
            code: tonic::Code::Cancelled,
        };
        let result = self.serve(req).await;
        record.code = result.as_ref().map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        result
    }
}

/// Binds the gRPC listener (`GRPC_PORT`; 0 = a free port) on the HTTP server's host.
pub async fn bind(host: std::net::IpAddr, port: u16) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::new(host, port);
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind the gRPC port {addr} (GRPC_PORT; `off` disables it): {e}"))
}

/// Serves the worker service and reflection on `listener` until `shutdown` resolves; calls in
/// flight then finish. Served by axum (HTTP/2 without TLS), not tonic's own server: tonic's wraps
/// every call in its `grpc-timeout` layer, which ends a late call with CANCELLED before the
/// handler can answer DEADLINE_EXCEEDED as the report's server did.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::DESCRIPTOR)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::DESCRIPTOR)
        .build_v1alpha()?;
    let router = tonic::service::Routes::new(pb::worker_pool_server::WorkerPoolServer::new(Worker { state }))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .into_axum_router();
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await?;
    Ok(())
}
