//! `cache-stampede` — a read-through Redis cache over a slow database query. When hot keys
//! expire together (or `POST /admin/cache/flush` empties the cache), every request misses at
//! once and goes to the database: the thundering herd exhausts the DB pool (503
//! `db_pool_timeout`). When Redis fails, every request fails with it (500 `redis_error`).
//!
//! `GET /api/cache/items/{id}` reads `item:{id}` from Redis; on a miss it runs the slow query
//! (`cache_query_ms` holding a pooled connection) and writes the item back with a TTL.
//!
//! Knobs: `cache_ttl_ms`, `cache_query_ms`, and the fixes — `cache_single_flight` (one database
//! load per key at a time; concurrent misses wait for it), `cache_ttl_jitter_percent` (TTLs drawn
//! from ttl ± x%, so keys filled together expire apart), `cache_serve_stale` with
//! `redis_timeout_ms` (on a Redis error or timeout, answer from the last value this process saw,
//! or load from the database through single-flight). Redis pool: `redis_pool_size`,
//! `redis_pool_timeout_ms`. Without `REDIS_URL` the endpoints answer 503 saying how to enable them.
//!
//! Metrics: `cache_requests_total{result}` (hit, miss, coalesced, stale, bypass, error),
//! `cache_db_loads_total`, `cache_loads_in_flight`, plus the Redis pool's and the DB pool's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use chokepoint_repro::plan::{Plan, Prediction, Target, Watch};
use futures::future::{BoxFuture, FutureExt, Shared};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::apidoc::{admin_auth, int, obj, path_param, string, Op};
use crate::error::{AppError, AppResult};
use crate::infra::database::Database;
use crate::infra::redis::Redis;
use crate::knobs::Knobs;
use crate::scenarios::{Alert, Panel, Repro, RunConfig, Scenario};
use crate::state::AppState;
use crate::telemetry::{register, GaugeGuard};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/cache/items/{id}", get(get_item))
        .route("/admin/cache/flush", post(flush))
}

/// Item ids the endpoint serves (also bounds the in-process stale copies).
pub const ITEM_IDS: std::ops::RangeInclusive<u64> = 1..=10_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Item {
    id: u64,
    name: String,
    price_cents: u64,
    /// When the database produced this value (ms since the epoch).
    loaded_at_ms: u64,
}

type LoadResult = Result<Item, Arc<AppError>>;
type Flight = Shared<BoxFuture<'static, LoadResult>>;

#[derive(Clone)]
struct Metrics {
    requests: IntCounterVec,
    db_loads: IntCounter,
    loads_in_flight: IntGauge,
}

pub struct Cache {
    redis: Option<Redis>,
    /// The last value seen per item: what serve-stale answers when Redis fails.
    last_seen: Mutex<HashMap<u64, Item>>,
    /// Loads running now, per item, for single-flight.
    flights: Mutex<HashMap<u64, Flight>>,
    metrics: Metrics,
}

impl Cache {
    pub fn new(redis: Option<Redis>, registry: &Registry) -> Arc<Self> {
        let metrics = Metrics {
            requests: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "cache_requests_total",
                        "Cache reads by result (hit, miss, coalesced, stale, bypass, error)",
                    ),
                    &["result"],
                )
                .unwrap(),
            ),
            db_loads: register(
                registry,
                IntCounter::new(
                    "cache_db_loads_total",
                    "Database loads started by cache misses (each holds a pooled connection)",
                )
                .unwrap(),
            ),
            loads_in_flight: register(
                registry,
                IntGauge::new(
                    "cache_loads_in_flight",
                    "Database loads running for cache misses right now",
                )
                .unwrap(),
            ),
        };
        // Every result from the start, so rate() sees the first increment.
        for result in ["hit", "miss", "coalesced", "stale", "bypass", "error"] {
            metrics.requests.with_label_values(&[result]);
        }
        Arc::new(Self {
            redis,
            last_seen: Mutex::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    pub fn apply(&self, knobs: &Knobs) {
        if let Some(r) = &self.redis {
            r.apply(knobs);
        }
    }

    pub fn refresh_gauges(&self) {
        if let Some(r) = &self.redis {
            r.refresh_gauges();
        }
    }

    fn redis(&self) -> AppResult<&Redis> {
        self.redis.as_ref().ok_or_else(|| AppError::Unavailable {
            code: "redis_not_configured",
            detail: "the cache-stampede scenario needs Redis: restart with REDIS_URL=redis://127.0.0.1:6379".into(),
        })
    }

    fn count(&self, result: &str) {
        self.metrics.requests.with_label_values(&[result]).inc();
    }

    fn remember(&self, item: &Item) {
        self.last_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(item.id, item.clone());
    }

    fn last_seen(&self, id: u64) -> Option<Item> {
        self.last_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The slow query behind a miss: holds a pooled connection for `cache_query_ms`.
async fn query_item(db: &Database, knobs: &Knobs, id: u64) -> AppResult<Item> {
    let (mut conn, _) = db.acquire(Duration::from_millis(knobs.db_pool_timeout_ms)).await?;
    let statement = (knobs.db_statement_timeout_ms > 0).then(|| Duration::from_millis(knobs.db_statement_timeout_ms));
    super::db_pool::hold_connection(&mut conn, Duration::from_millis(knobs.cache_query_ms), statement).await?;
    Ok(Item {
        id,
        name: format!("item-{id}"),
        price_cents: (id * 7919) % 100_000,
        loaded_at_ms: now_ms(),
    })
}

/// The TTL for one write: `cache_ttl_ms`, spread by ± `cache_ttl_jitter_percent`.
fn ttl(knobs: &Knobs) -> Duration {
    let base = knobs.cache_ttl_ms as f64;
    let spread = f64::from(knobs.cache_ttl_jitter_percent) / 100.0;
    let factor = if spread > 0.0 {
        rand::rng().random_range(1.0 - spread..=1.0 + spread)
    } else {
        1.0
    };
    Duration::from_millis((base * factor).max(1.0) as u64)
}

/// Loads from the database and writes the item back to Redis (a failed write is counted and
/// logged; the loaded item is still the answer).
async fn load_and_fill(state: &AppState, knobs: &Knobs, id: u64, fill: bool) -> AppResult<Item> {
    let cache = &state.cache;
    cache.metrics.db_loads.inc();
    let _running = GaugeGuard::new(&cache.metrics.loads_in_flight);
    let item = query_item(&state.db, knobs, id).await?;
    if fill {
        if let Some(redis) = &cache.redis {
            let value = serde_json::to_string(&item).map_err(AppError::internal)?;
            if let Err(e) = redis
                .set_px(knobs, &redis.key(&format!("item:{id}")), &value, ttl(knobs))
                .await
            {
                tracing::warn!(error = %crate::error::error_chain(&e), item = id, "cache fill failed");
            }
        }
    }
    cache.remember(&item);
    Ok(item)
}

/// A follower of a failed single-flight load gets the same kind of failure.
fn reissue(e: &AppError) -> AppError {
    match e {
        AppError::PoolTimeout { waited } => AppError::PoolTimeout { waited: *waited },
        AppError::StatementTimeout { after } => AppError::StatementTimeout { after: *after },
        _ => AppError::Unavailable {
            code: "cache_load_failed",
            detail: "the database load this request waited for failed; see the server log".into(),
        },
    }
}

/// Loads `id`, joining a load already running for it when single-flight is on. Returns the
/// item and whether this request joined another's load.
async fn load(state: &AppState, knobs: &Arc<Knobs>, id: u64, fill: bool) -> AppResult<(Item, bool)> {
    if !knobs.cache_single_flight {
        return load_and_fill(state, knobs, id, fill).await.map(|i| (i, false));
    }
    let (flight, joined) = {
        let mut flights = state.cache.flights.lock().unwrap_or_else(|p| p.into_inner());
        match flights.get(&id) {
            Some(f) => (f.clone(), true),
            None => {
                let (st, k) = (state.clone(), knobs.clone());
                // Spawned, so the load finishes for its followers even if the leader's client
                // goes away; it leaves the table once the item is back in Redis.
                let task = state.lifecycle.spawn(async move {
                    let result = load_and_fill(&st, &k, id, fill).await.map_err(Arc::new);
                    st.cache.flights.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                    result
                });
                let flight = async move { task.await.unwrap_or_else(|e| Err(Arc::new(AppError::internal(e)))) }
                    .boxed()
                    .shared();
                flights.insert(id, flight.clone());
                (flight, false)
            }
        }
    };
    match flight.await {
        Ok(item) => Ok((item, joined)),
        Err(e) if joined => Err(reissue(&e)),
        Err(e) => Err(Arc::try_unwrap(e).unwrap_or_else(|e| reissue(&e))),
    }
}

async fn get_item(State(state): State<AppState>, Path(raw): Path<String>) -> AppResult<Json<Value>> {
    let id: u64 = raw
        .parse()
        .ok()
        .filter(|n| ITEM_IDS.contains(n))
        .ok_or_else(|| AppError::out_of_range("id", ITEM_IDS.start(), ITEM_IDS.end(), &raw))?;
    let cache = &state.cache;
    let redis = cache.redis()?;
    let knobs = state.knobs.current();
    let (result, item) = match redis.get(&knobs, &redis.key(&format!("item:{id}"))).await {
        Ok(Some(raw)) => match serde_json::from_str::<Item>(&raw) {
            Ok(item) => {
                cache.remember(&item);
                ("hit", item)
            }
            // A value this build cannot read: treat it as a miss and overwrite it.
            Err(_) => {
                let (item, joined) = load(&state, &knobs, id, true).await?;
                (if joined { "coalesced" } else { "miss" }, item)
            }
        },
        Ok(None) => {
            let (item, joined) = load(&state, &knobs, id, true).await?;
            (if joined { "coalesced" } else { "miss" }, item)
        }
        Err(e) if knobs.cache_serve_stale => {
            tracing::debug!(error = %crate::error::error_chain(&e), "redis failed; serving stale");
            match cache.last_seen(id) {
                Some(item) => ("stale", item),
                None => ("bypass", load(&state, &knobs, id, false).await?.0),
            }
        }
        Err(e) => {
            cache.count("error");
            return Err(e.into());
        }
    };
    cache.count(result);
    Ok(Json(json!({"item": item, "cache": result})))
}

async fn flush(State(state): State<AppState>, headers: HeaderMap) -> AppResult<Json<Value>> {
    crate::admin::authorize(&state, &headers)?;
    let redis = state.cache.redis()?;
    let deleted = redis.flush_prefix(&state.knobs.current()).await?;
    tracing::info!(deleted, "cache flushed");
    Ok(Json(json!({"deleted": deleted})))
}

impl crate::knobs::ApplyKnobs for Cache {
    fn apply_knobs(&self, knobs: &Knobs) {
        self.apply(knobs);
    }
}

/// The catalog entry (see [`crate::scenarios::ALL`]).
pub const SCENARIO: Scenario =
    crate::scenarios::scenario!("cache-stampede", "expired keys send every reader to the database")
        .repro(REPRO)
        .dashboard(DASHBOARD)
        .alerts(ALERTS);

/// Its row of the Grafana dashboard (k8s/monitoring/grafana-dashboard.json).
const DASHBOARD: &[Panel] = &[
    Panel {
        title: "Cache reads by result",
        unit: "reqps",
        targets: &[("sum by (result) (rate(cache_requests_total[1m]))", "{{result}}")],
        description: "",
    },
    Panel {
        title: "Database loads",
        unit: "short",
        targets: &[
            ("sum(rate(cache_db_loads_total[1m]))", "loads/s"),
            ("sum(cache_loads_in_flight)", "in flight"),
        ],
        description: "A stampede: one load per reader. Single-flight: one per key.",
    },
    Panel {
        title: "Redis",
        unit: "short",
        targets: &[
            ("sum by (kind) (rate(redis_errors_total[1m]))", "errors/s {{kind}}"),
            ("sum by (state) (redis_pool_connections)", "pool {{state}}"),
            ("sum(redis_pool_waiting)", "pool waiting"),
        ],
        description: "",
    },
];

/// The alerts that fire on its collapse (k8s/monitoring/alerts.rules.yml).
const ALERTS: &[Alert] = &[
    Alert {
        name: "CacheStampede",
        expr: "sum by (instance) (rate(cache_db_loads_total[1m]))\n  > 0.5 * sum by (instance) (rate(cache_requests_total[1m]))\nand sum by (instance) (rate(cache_requests_total[1m])) > 1\n",
        for_: "1m",
        severity: "warning",
        summary: "Most cache reads go to the database on {{ $labels.instance }}",
        description: "Database loads are {{ $value | humanize }}/s: a flush or mass expiry sends every reader to the database (single-flight and jittered TTLs cure it).",
    },
    Alert {
        name: "RedisErrors",
        expr: "sum by (instance, kind) (rate(redis_errors_total[1m])) > 0",
        for_: "30s",
        severity: "warning",
        summary: "Redis operations failing ({{ $labels.kind }}) on {{ $labels.instance }}",
        description: "Without serve-stale, every cache read answers 500 redis_error.",
    },
];

/// Its routes in the OpenAPI document, each with its guard group.
fn operations() -> Vec<Op> {
    vec![
        Op::new("get", "/api/cache/items/{id}", "Read-through Redis cache over a slow query")
            .param(path_param(
                "id",
                json!({"type": "integer", "minimum": ITEM_IDS.start(), "maximum": ITEM_IDS.end()}),
                "the item's id",
            ))
            .ok(
                200,
                "the item and how the cache served it",
                obj(&[
                    ("item", obj(&[("id", int()), ("name", string()), ("price_cents", int()), ("loaded_at_ms", int())])),
                    ("cache", json!({"type": "string", "enum": ["hit", "miss", "coalesced", "stale", "bypass"]})),
                ]),
            )
            .fails(422, "invalid_parameter")
            .fails(500, "Redis failed and cache_serve_stale is off (redis_error)")
            .fails(503, "no REDIS_URL (redis_not_configured), no Redis connection within redis_pool_timeout_ms (redis_pool_timeout), or a database pool timeout"),
        admin_auth(Op::new("post", "/admin/cache/flush", "Delete the lab's cache keys"))
            .ok(200, "deleted", obj(&[("deleted", int())]))
            .fails(500, "Redis failed (redis_error)")
            .fails(503, "no REDIS_URL (redis_not_configured) or no Redis connection in time (redis_pool_timeout)"),
    ]
}

/// `chokepoint repro cache-stampede`: its plan and prediction.
const REPRO: Repro = Repro::new(repro_knobs, repro_plan, repro_predict);

/// The knobs `repro cache-stampede` sets on top of the profile, to keep the run short and the numbers small.
fn repro_knobs() -> Value {
    json!({})
}

/// The plan: what `repro cache-stampede` sends, at which rates, watching what.
fn repro_plan(_config: &RunConfig, _cpu_ms: Option<f64>) -> Plan {
    let mut plan = Plan::new(repro_knobs());
    plan.target = Target::get("/api/cache/items/1");
    plan.rates = vec![20.0, 50.0, 100.0];
    plan.before_stage = Some((reqwest::Method::POST, "/admin/cache/flush"));
    plan.watches = vec![
        Watch::counter("cache_db_loads_total", "database loads", 1.0),
        Watch::gauge("cache_loads_in_flight", "loads in flight (max)", 1.0),
    ];
    plan
}

/// The prediction from the knobs in force (after the profile and the run's knobs).
fn repro_predict(config: &RunConfig, _cpu_ms: Option<f64>) -> Prediction {
    let knobs = &config.knobs;
    let sf = knobs.cache_single_flight;
    Prediction {
        capacity_rps: None,
        formula: format!(
            "after a flush, every reader that misses during the {} ms load goes to the database{}",
            (knobs.cache_query_ms as f64),
            if sf { " — single-flight: one load per key" } else { "" }
        ),
        expect: if sf {
            "about 1 database load per stage".into()
        } else {
            "database loads ≈ offered rate × load time per stage".into()
        },
    }
}
