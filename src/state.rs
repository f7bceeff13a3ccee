//! The state every handler may reach ([`AppState`]): one `Arc` around the shared parts and each
//! scenario's own. [`crate::startup`] builds it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus::Registry;

use crate::infra::database::Database;
use crate::infra::http_client::DownstreamClient;
use crate::knobs::KnobStore;
use crate::resilience::bulkhead::Bulkhead;
use crate::resilience::guard::Guard;
use crate::scenarios::memory::MemoryStore;
use crate::settings::Settings;
use crate::telemetry::HttpMetrics;
use crate::{grpc, infra, knobs, lab, lifecycle, scenarios};

/// Everything a handler may reach; no process-wide statics. One `Arc`, so the per-request
/// clones (each middleware and handler takes the state) touch one reference count instead of
/// one per field: at tens of thousands of requests per second on several cores, contended
/// reference counts are a measurable share of the instrumentation cost (bench/ping.sh).
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<AppStateInner>);

impl std::ops::Deref for AppState {
    type Target = AppStateInner;

    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

pub struct AppStateInner {
    pub settings: Arc<Settings>,
    pub registry: Registry,
    pub http_metrics: HttpMetrics,
    pub db: Arc<Database>,
    pub downstream: DownstreamClient,
    pub memory: Arc<MemoryStore>,
    pub knobs: Arc<KnobStore>,
    /// Rate limiting, load shedding and request timeouts in front of the scenario routes.
    pub guard: Arc<Guard>,
    /// Faults injected on purpose on the scenario routes (rules and headers; the `faults` scenario).
    pub faults: Arc<scenarios::faults::Faults>,
    /// The TCP fault proxy on the dependency links (`LINK_PROXY`; the `slow-link` scenario).
    pub links: Arc<infra::link_proxy::LinkProxies>,
    /// CPU jobs running on the blocking pool in `offload` mode (bounded by `cpu_max_concurrency`).
    pub cpu_pool: Arc<Bulkhead>,
    /// CPU-bound queries running on the database (bounded by `db_cpu_query_slots`; pool-too-big).
    pub db_cpu_queries: Arc<scenarios::pool_too_big::CpuQueries>,
    /// The OS-thread pool of the worker-pool scenario (`worker_pool_size`, resized live).
    pub worker_pool: Arc<scenarios::worker_pool::WorkerPool>,
    /// The gRPC service's metrics, and where it listens (`GRPC_PORT`; `None` when off).
    pub grpc_metrics: grpc::GrpcMetrics,
    pub grpc_addr: Option<std::net::SocketAddr>,
    /// The simulated elastic pool of the cold-start scenario.
    pub elastic: Arc<scenarios::cold_start::ElasticPool>,
    /// The burst scenario's async deployment queue and its workers.
    pub deployments: Arc<scenarios::burst::Deployments>,
    /// The cache-stampede scenario's read-through cache (Redis when `REDIS_URL` is set).
    pub cache: Arc<scenarios::cache_stampede::Cache>,
    /// Set once shutdown starts: `/ready` fails so load balancers stop sending traffic.
    pub draining: Arc<AtomicBool>,
    /// The live panel's sampler (`/lab`).
    pub lab: lab::Lab,
    /// One shutdown: every task and thread the app starts (src/lifecycle.rs).
    pub lifecycle: lifecycle::Lifecycle,
    /// The `GET /` index's endpoint table (from the OpenAPI operations).
    pub endpoints: Arc<serde_json::Value>,
}

impl AppState {
    /// Everything sized or tuned by a knob takes `knobs` (before they are published): the
    /// database pool (swapped if its size changed), the worker pool, the elastic pool, the
    /// Redis pool. The admin API's change, profile switch and reset all go through here.
    pub fn apply_knobs(&self, knobs: &knobs::Knobs) {
        let tuned: [&dyn knobs::ApplyKnobs; 4] = [&*self.db, &*self.worker_pool, &self.elastic, &*self.cache];
        for part in tuned {
            part.apply_knobs(knobs);
        }
    }

    /// Clears every fault rule and link toxic (`POST /admin/reset`).
    pub fn clear_injected_faults(&self) {
        self.faults.clear();
        self.links.clear();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}
