//! The app's assembly: [`App::build`] makes the state and binds the listeners from the settings
//! (port 0 works), [`App::run_until_stopped`] serves until a shutdown signal, and [`router`] is the
//! whole HTTP surface.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::downstream::EmbeddedDownstream;
use crate::infra::database::Database;
use crate::infra::http_client::DownstreamClient;
use crate::knobs::KnobStore;
use crate::resilience::bulkhead::Bulkhead;
use crate::resilience::guard::Guard;
use crate::scenarios::memory::MemoryStore;
use crate::settings::Settings;
use crate::state::{AppState, AppStateInner};
use crate::telemetry::HttpMetrics;
use crate::{admin, edge, grpc, infra, lab, lifecycle, openapi, scenarios, server, settings, telemetry};

pub struct App {
    listener: TcpListener,
    grpc_listener: Option<TcpListener>,
    router: Router,
    state: AppState,
    embedded_downstream: Option<EmbeddedDownstream>,
    /// Fires when start-up gave up on the database: the process stops with that error.
    fatal: tokio::sync::oneshot::Receiver<anyhow::Error>,
}

impl App {
    /// Connects the database (running migrations), starts the embedded downstream simulator when
    /// no `DOWNSTREAM_SERVICE_URL` is set, and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        let lifecycle = lifecycle::Lifecycle::default();
        let registry = telemetry::new_registry();
        let http_metrics = HttpMetrics::new(&registry);
        let knobs = KnobStore::new(settings.startup_knobs(), &registry);
        // One attempt now; if PostgreSQL is not there yet, start-up serves its probes (with /ready
        // failing) and keeps trying in the background for DB_STARTUP_TIMEOUT.
        // The downstream first: the link proxy, when on, needs every dependency's address.
        let (mut downstream_url, embedded_downstream) = match &settings.downstream_service_url {
            Some(url) => (url.clone(), None),
            None => {
                let embedded =
                    EmbeddedDownstream::start(&lifecycle).context("starting the embedded downstream simulator")?;
                (format!("http://{}", embedded.addr()), Some(embedded))
            }
        };
        let mut settings = settings;
        let links = if settings.link_proxy {
            infra::link_proxy::route_through(&mut settings, &mut downstream_url, &registry)?
        } else {
            infra::link_proxy::LinkProxies::disabled(&registry)
        };
        let db = Arc::new(Database::open(&settings, &knobs.current(), &registry, &lifecycle)?);
        let pending_db = match db.establish_once().await {
            Ok(()) => None,
            Err(e) if db.retries_at_startup(settings.db_startup_timeout()) => {
                tracing::warn!(error = %crate::error::chain_text(&e), window_s = settings.db_startup_timeout,
                    "database not reachable at start-up: serving /health, /ready fails until it is");
                Some(e)
            }
            Err(e) => return Err(e),
        };

        let downstream = DownstreamClient::new(&downstream_url, settings.downstream_timeout(), &registry);
        let memory = MemoryStore::new(settings.memory_limit_bytes(), &registry);
        let elastic = scenarios::cold_start::ElasticPool::new(&registry, lifecycle.clone());
        elastic.apply(&knobs.current());
        let worker_pool = Arc::new(scenarios::worker_pool::WorkerPool::new(
            knobs.current().worker_pool_size,
            &registry,
        ));
        // The worker threads wind down when the app stops (surplus threads exit once idle).
        let winding_down = worker_pool.clone();
        lifecycle.on_stop(move || winding_down.resize(0));

        let redis = match &settings.redis_url {
            Some(url) => Some(infra::redis::Redis::new(
                url,
                &settings.redis_key_prefix,
                &knobs.current(),
                &registry,
            )?),
            None => None,
        };
        let cache = scenarios::cache_stampede::Cache::new(redis, &registry);

        let listener = TcpListener::bind(settings.bind_addr())
            .await
            .with_context(|| format!("cannot bind {} (HOST/PORT)", settings.bind_addr()))?;
        let grpc_listener = match settings.grpc_port {
            settings::GrpcPort::Off => None,
            settings::GrpcPort::Port(port) => Some(grpc::bind(settings.host, port).await?),
        };
        let grpc_addr = grpc_listener.as_ref().and_then(|l| l.local_addr().ok());

        let state = AppState(Arc::new(AppStateInner {
            settings: Arc::new(settings),
            registry: registry.clone(),
            http_metrics,
            db: db.clone(),
            downstream,
            memory: Arc::new(memory),
            knobs: Arc::new(knobs),
            guard: Arc::new(Guard::new(scenarios::route_groups(), &registry)),
            faults: Arc::new(scenarios::faults::Faults::new(&scenarios::route_groups(), &registry)),
            links: Arc::new(links),
            cpu_pool: Bulkhead::new(Some(scenarios::cpu::offload_gauge(&registry))),
            db_cpu_queries: scenarios::pool_too_big::CpuQueries::new(&registry),
            worker_pool,
            grpc_metrics: grpc::GrpcMetrics::new(&registry),
            grpc_addr,
            elastic,
            deployments: scenarios::burst::Deployments::new(&registry),
            cache,
            draining: Arc::new(AtomicBool::new(false)),
            lab: lab::Lab::default(),
            lifecycle: lifecycle.clone(),
            endpoints: Arc::new(serde_json::Value::Array(openapi::endpoint_table())),
        }));
        state
            .deployments
            .start(state.db.clone(), state.knobs.clone(), &lifecycle)
            .await
            .context("starting the deployment workers")?;
        if let Ok(addr) = listener.local_addr() {
            state.lab.runs.set_addr(addr);
        }
        let router = router(state.clone());
        let (fatal_tx, fatal) = tokio::sync::oneshot::channel();
        if let Some(first) = pending_db {
            let window = state.settings.db_startup_timeout();
            lifecycle.spawn_background(async move {
                if let Err(e) = db.retry_establish(first, window).await {
                    let _ = fatal_tx.send(e);
                }
            });
        }
        Ok(App {
            listener,
            grpc_listener,
            router,
            state,
            embedded_downstream,
            fatal,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves; then marks the app not ready at once, keeps serving for
    /// `SHUTDOWN_DELAY_MS` (load balancers see `/ready` fail and stop routing here; connections
    /// already queued on the socket are served), stops accepting, and gives in-flight requests
    /// `SHUTDOWN_GRACE_MS` to finish. Background workers stop with it.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let App {
            listener,
            grpc_listener,
            router,
            state,
            embedded_downstream,
            fatal,
        } = self;
        let grace = state.settings.shutdown_grace();
        let delay = state.settings.shutdown_delay();
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let draining = state.draining.clone();
        let lifecycle = state.lifecycle.clone();
        let signalled = lifecycle.clone();
        lifecycle.spawn_background(async move {
            shutdown.await;
            draining.store(true, Ordering::SeqCst);
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                grace_ms = grace.as_millis() as u64,
                "shutdown requested: not ready; serving for the delay, then draining in-flight requests"
            );
            tokio::time::sleep(delay).await;
            // Open event streams end now, so they do not hold the drain for the grace period.
            signalled.start_draining();
            let _ = stop_tx.send(true);
        });
        lifecycle.spawn_background(scenarios::memory::trim_periodically(state.knobs.clone()));
        if let Some(grpc_listener) = grpc_listener {
            // Stops taking calls with the HTTP server; calls in flight finish (or the stop's
            // bound ends them).
            let mut stopping = stop_rx.clone();
            let stopped = async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            };
            let grpc_state = state.clone();
            lifecycle.spawn(async move {
                if let Err(e) = grpc::serve(grpc_state, grpc_listener, stopped).await {
                    tracing::error!(error = %crate::error::chain_text(&e), "the gRPC server failed");
                }
            });
        }
        let (hard_tx, hard_rx) = tokio::sync::watch::channel(false);
        let serve = server::serve(
            listener,
            router,
            state.knobs.clone(),
            &state.registry,
            stop_rx.clone(),
            hard_rx,
        );
        let grace_expired = async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
            tokio::time::sleep(grace).await;
        };
        let fatal = async move {
            match fatal.await {
                Ok(e) => e,
                // Start-up reached the database (or never needed to wait): nothing will fire.
                Err(_) => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            r = serve => r,
            _ = grace_expired => {
                tracing::warn!("grace period expired with requests still in flight; exiting anyway");
                let _ = hard_tx.send(true);
                Ok(())
            }
            e = fatal => {
                let _ = hard_tx.send(true);
                Err(std::io::Error::other(crate::error::chain_text(&e)))
            }
        };
        // Background work stops; work that must finish (an accepted deployment's commit, a
        // single-flight load, the old pool's drain) gets a bounded wait.
        if !lifecycle.stop(Duration::from_secs(2)).await {
            tracing::warn!(
                tasks = lifecycle.tasks(),
                "background tasks still running 2 s after the stop"
            );
        }
        if tokio::time::timeout(Duration::from_secs(2), state.db.close())
            .await
            .is_err()
        {
            tracing::warn!("database pool did not close within 2 s");
        }
        drop(embedded_downstream);
        result
    }
}

/// The whole HTTP surface: every scenario's routes, probes and metrics, behind the edge
/// (request id, span, HTTP metrics, request guard: src/edge.rs).
pub fn router(state: AppState) -> Router {
    scenarios::ALL
        .iter()
        .fold(Router::new(), |router, scenario| router.merge((scenario.router)()))
        .merge(admin::router())
        .merge(scenarios::faults::admin_router())
        .merge(scenarios::slow_link::admin_router())
        .merge(openapi::router())
        .merge(lab::router())
        .route("/metrics", get(telemetry::metrics_handler))
        .fallback(scenarios::healthy::not_found)
        .method_not_allowed_fallback(scenarios::healthy::method_not_allowed)
        .layer(edge::EdgeLayer::new(state.clone()))
        .with_state(state)
}
