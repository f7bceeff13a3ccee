//! `slow-link` — "the database got slow": the dependency itself is fine, the link to it is sick.
//! With `LINK_PROXY=true` the app reaches PostgreSQL, Redis and the downstream through its own
//! TCP fault proxy (src/infra/link_proxy.rs), and `PUT /admin/links/{link}` sets toxiproxy's
//! toxics on a link while the load runs.
//!
//! The collapse: +20 ms per round trip on the PostgreSQL link. A request that holds its pooled
//! connection for `hold` and makes `r` round trips on it now holds it for `hold + r × 20 ms`, so
//! the pool's capacity falls from `pool / hold` to `pool / (hold + r × latency)` (Little's law),
//! and in fragile everyone past it queues for the 30 s acquire timeout. The cure: a fail-fast
//! acquire timeout (the excess gets 503 in ms), a statement timeout (a query stuck on a
//! blackholed link is cut), and a pool sized for the new service time.
//!
//! Redis and the downstream take the same toxics: a blackholed Redis link hangs every cache
//! read in fragile (no Redis timeout) and is served stale in hardened; `limit_data` on the
//! downstream link truncates its answers (502).
//!
//! Metrics: `link_faults_active{link,toxic}` (the `LinkFaultActive` alert), `link_connections_open`,
//! `link_bytes_total{link,direction}`, `link_resets_total`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::apidoc::{admin_auth, array_of, obj, path_param, Op};
use crate::error::{AppError, AppResult};
use crate::infra::link_proxy::{ToxicSpec, Toxics, LINKS};
use crate::scenarios::db_pool::{hold_plan, hold_prediction};
use crate::scenarios::{around, Alert, Panel, Repro, RunConfig, Scenario, AROUND};
use crate::state::AppState;
use chokepoint_repro::plan::{Plan, Prediction};
use serde_json::Value;

pub const SCENARIO: Scenario = crate::scenarios::scenario!("slow-link", "a sick link to a dependency: +20 ms per database round trip cuts the pool's capacity", without routes)
    // It needs PostgreSQL and LINK_PROXY=true.
    .k6_run_by("scripts/ci/k6-slow-link.sh")
    .repro(REPRO)
    .dashboard(DASHBOARD)
    .alerts(ALERTS);

/// Its row of the Grafana dashboard (k8s/monitoring/grafana-dashboard.json).
const DASHBOARD: &[Panel] = &[
    Panel {
        title: "Link toxics set",
        unit: "short",
        targets: &[(
            "sum by (link, toxic) (max by (link, toxic) (link_faults_active))",
            "{{link}} {{toxic}}",
        )],
        description: "1 while a toxic is set on a dependency link (LINK_PROXY).",
    },
    Panel {
        title: "Bytes through each link/s",
        unit: "Bps",
        targets: &[(
            "sum by (link, direction) (rate(link_bytes_total[1m]))",
            "{{link}} {{direction}}",
        )],
        description: "",
    },
    Panel {
        title: "DB pool under a slow link",
        unit: "short",
        targets: &[
            ("sum(db_pool_waiting)", "waiting"),
            ("sum(db_pool_connections{state=\"in_use\"})", "in use"),
            ("sum(rate(db_pool_acquire_timeouts_total[1m]))", "acquire timeouts/s"),
        ],
        description: "+L per round trip: the pool's capacity falls to pool / (hold + round trips × L).",
    },
];

/// The alerts that fire on its collapse (k8s/monitoring/alerts.rules.yml).
const ALERTS: &[Alert] = &[
    Alert {
        name: "LinkFaultActive",
        expr: "max by (instance, link, toxic) (link_faults_active) > 0",
        for_: "10m",
        severity: "info",
        summary: "The {{ $labels.link }} link of {{ $labels.instance }} is sick on purpose ({{ $labels.toxic }})",
        description: "A link-proxy toxic has been set for 10 minutes: the dependency is fine, its link is slowed or cut by the lab (LINK_PROXY). DELETE /admin/links clears every toxic.",
    },
];

/// The latency `repro slow-link` adds to each chunk PostgreSQL sends (the issue's +20 ms).
const REPRO_LATENCY_MS: f64 = 20.0;
/// The hold of each request, as `repro db-pool`'s.
const REPRO_HOLD_MS: u64 = 100;

/// `chokepoint repro slow-link`: db-pool's holds (pool 4, 100 ms) with +20 ms on the PostgreSQL
/// link. It needs PostgreSQL and `LINK_PROXY=true` (in-process: `DATABASE_URL=postgres://...
/// LINK_PROXY=true chokepoint repro slow-link`); without them the setup's 409 says so.
const REPRO: Repro = Repro {
    calibrate: true,
    setup: repro_setup,
    unavailable: |state| find(state, "postgres").err().map(|e| e.to_string()),
    ..Repro::new(repro_knobs, repro_plan, repro_predict)
};

fn repro_knobs() -> Value {
    json!({"db_pool_size": 4, "db_max_overflow": 0})
}

fn repro_setup() -> Vec<(reqwest::Method, &'static str, Value)> {
    vec![(
        reqwest::Method::PUT,
        "/admin/links/postgres",
        json!({"latency": format!("{REPRO_LATENCY_MS}ms")}),
    )]
}

/// The time one request keeps its connection: its latency alone through the sick link
/// (`calibrated_ms`: the hold and every round trip made before the answer), plus the release
/// guard's check after the answer (one more round trip).
fn service_seconds(calibrated_ms: Option<f64>) -> f64 {
    let alone = calibrated_ms.unwrap_or(REPRO_HOLD_MS as f64 + 6.0 * REPRO_LATENCY_MS);
    (alone + REPRO_LATENCY_MS) / 1000.0
}

fn repro_plan(config: &RunConfig, calibrated_ms: Option<f64>) -> Plan {
    let mut plan = hold_plan(config, repro_knobs(), REPRO_HOLD_MS);
    let pool = f64::from(config.knobs.db_pool_size + config.knobs.db_max_overflow);
    plan.rates = around(pool / service_seconds(calibrated_ms), AROUND);
    plan
}

fn repro_predict(config: &RunConfig, calibrated_ms: Option<f64>) -> Prediction {
    let base = hold_prediction(config, REPRO_HOLD_MS);
    let pool = f64::from(config.knobs.db_pool_size + config.knobs.db_max_overflow);
    let service = service_seconds(calibrated_ms);
    let healthy = base.capacity_rps.unwrap_or(0.0);
    Prediction {
        capacity_rps: Some(pool / service),
        formula: format!(
            "pool {pool} connections / {service:.3} s (one hold alone through the +{REPRO_LATENCY_MS} ms link, \
             measured, + the release check's round trip) = {:.1} req/s, down from {healthy:.1} on a healthy link",
            pool / service
        ),
        expect: base.expect,
    }
}

/// `GET /admin/links`.
#[derive(Debug, Serialize, Deserialize)]
pub struct LinksView {
    /// `LINK_PROXY`: false means no link passes the proxy (restart with LINK_PROXY=true).
    pub enabled: bool,
    pub links: Vec<LinkView>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LinkView {
    pub link: String,
    /// Where the app dials (the proxy's listener).
    pub listen: String,
    /// The dependency's own address.
    pub upstream: String,
    pub toxics: ToxicSpec,
    pub active: Vec<String>,
}

pub fn view(state: &AppState) -> LinksView {
    LinksView {
        enabled: state.links.enabled(),
        links: state
            .links
            .links()
            .iter()
            .map(|l| {
                let t = l.toxics();
                LinkView {
                    link: l.name.to_string(),
                    listen: l.listen.to_string(),
                    upstream: l.upstream.clone(),
                    toxics: t.spec.clone(),
                    active: t.active().into_iter().map(String::from).collect(),
                }
            })
            .collect(),
    }
}

pub fn admin_router() -> Router<AppState> {
    Router::new()
        .route("/admin/links", get(list).delete(clear_all))
        .route("/admin/links/{link}", put(set_link).delete(clear_link))
}

async fn list(State(state): State<AppState>) -> Json<LinksView> {
    Json(view(&state))
}

fn find<'a>(state: &'a AppState, name: &str) -> AppResult<&'a Arc<crate::infra::link_proxy::Link>> {
    if !LINKS.contains(&name) {
        return Err(AppError::invalid(
            "link",
            format!("`link` must be one of {} (got `{name}`)", LINKS.join(", ")),
        ));
    }
    if !state.links.enabled() {
        return Err(AppError::Conflict {
            code: "link_proxy_off",
            detail: "no dependency link passes the link proxy: restart with LINK_PROXY=true (--link-proxy)".into(),
        });
    }
    state.links.get(name).ok_or_else(|| AppError::Conflict {
        code: "link_not_proxied",
        detail: format!(
            "the {name} link is not a TCP link of this lab (the embedded SQLite database, or no REDIS_URL): nothing to slow down"
        ),
    })
}

async fn set_link(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(link): Path<String>,
    body: axum::body::Bytes,
) -> AppResult<Json<LinksView>> {
    crate::admin::authorize(&state, &headers)?;
    let l = find(&state, &link)?;
    let spec: ToxicSpec = serde_json::from_slice(&body).map_err(|e| {
        AppError::invalid(
            "body",
            format!(
                "a JSON object with latency, jitter, bandwidth_kbps, slow_close, timeout, reset_peer, limit_data: {e}"
            ),
        )
    })?;
    let toxics = Toxics::parse(spec)?;
    tracing::warn!(link = l.name, toxics = ?toxics.spec, "link toxics set: this dependency link is sick on purpose");
    l.set(Some(toxics));
    Ok(Json(view(&state)))
}

async fn clear_link(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(link): Path<String>,
) -> AppResult<Json<LinksView>> {
    crate::admin::authorize(&state, &headers)?;
    let l = find(&state, &link)?;
    l.set(None);
    tracing::info!(link = l.name, "link toxics cleared");
    Ok(Json(view(&state)))
}

async fn clear_all(State(state): State<AppState>, headers: HeaderMap) -> AppResult<Json<LinksView>> {
    crate::admin::authorize(&state, &headers)?;
    state.links.clear();
    tracing::info!("every link's toxics cleared");
    Ok(Json(view(&state)))
}

/// The admin routes' OpenAPI operations.
pub fn admin_operations() -> Vec<Op> {
    let text = |d: &str| json!({"type": "string", "description": d});
    let toxics = json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "latency": text("each chunk the dependency sends waits this long (`20ms`, up to `60s`)"),
            "jitter": text("plus a uniform extra wait up to this"),
            "bandwidth_kbps": {"type": "integer", "minimum": 1, "maximum": crate::infra::link_proxy::MAX_BANDWIDTH_KBPS},
            "slow_close": text("a close is passed on this much later"),
            "timeout": text("blackhole: nothing passes; closed after this (`0ms`: never)"),
            "reset_peer": text("connections reset this long after they opened (`0ms`: at once)"),
            "limit_data": {"type": "integer", "minimum": 1, "maximum": crate::infra::link_proxy::MAX_LIMIT_DATA},
        },
    });
    let view = obj(&[
        ("enabled", json!({"type": "boolean"})),
        ("links", array_of(json!({"type": "object"}))),
    ]);
    let link = || path_param("link", json!({"type": "string", "enum": LINKS}), "the dependency link");
    vec![
        Op::new("get", "/admin/links", "The dependency links through the link proxy (LINK_PROXY) and their toxics")
            .tag("admin")
            .ok(200, "the links", view.clone()),
        admin_auth(Op::new("delete", "/admin/links", "Clear every link's toxics").tag("admin"))
            .ok(200, "cleared; the links", view.clone())
            .fails(409, "the link proxy is off (link_proxy_off)"),
        admin_auth(
            Op::new(
                "put",
                "/admin/links/{link}",
                "Set a link's toxics: latency, bandwidth, slow_close, timeout, reset_peer, limit_data (docs/scenarios/slow-link.md)",
            )
            .tag("admin"),
        )
        .param(link())
        .body("application/json", toxics, true)
        .ok(200, "set; the links", view.clone())
        .fails(409, "the link proxy is off, or this link is not a TCP link of the lab (link_proxy_off, link_not_proxied)")
        .fails(422, "a toxic out of its range, an unknown link or an empty body (invalid_parameter)"),
        admin_auth(Op::new("delete", "/admin/links/{link}", "Clear a link's toxics").tag("admin"))
            .param(link())
            .ok(200, "cleared; the links", view)
            .fails(409, "the link proxy is off, or this link is not proxied")
            .fails(422, "no such link (invalid_parameter)"),
    ]
}
