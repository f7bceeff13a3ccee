//! Break it / Fix it: the panel's bounded load, driven from inside the server with repro's
//! generator, so a workshop needs no k6 to watch a collapse and its cure.
//!
//! - `POST /lab/run/{scenario}?action=break|fix&seconds=N` starts one open-model stage against
//!   this process's own address: `break` first switches to fragile, `fix` to hardened (knobs set
//!   at start-up keep their values either way, see `POST /admin/profile`), then both apply the
//!   scenario's repro knobs (except those set at start-up) and send its request at the same rate: 1.5× the capacity the fragile
//!   knobs predict (the plan's highest stage when the scenario has no capacity), at most
//!   [`MAX_RATE`] req/s and [`MAX_IN_FLIGHT`] requests in flight, for 5–60 s (default 20).
//! - `POST /lab/run/stop` stops it: no request is sent after it; those in flight finish.
//! - `GET /lab/run` answers the current (or last) run; every `/lab/events` snapshot carries it too.
//!
//! One run at a time (409 while one runs). Starting and stopping are admin actions: the admin
//! API's token rules apply. The generator shares the server's cores, which the answer says: it
//! shows a collapse and a cure, while k6 from another machine remains the path for real load.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use chokepoint_repro::lab::LabClient;
use chokepoint_repro::load::{run_stage, StageResult, CLIENT_TIMEOUT};

use crate::admin::{authorize, ConfigView, KnobChange};
use crate::error::AppError;
use crate::knobs::Profile;
use crate::state::AppState;

/// Offered load at most, req/s.
pub const MAX_RATE: f64 = 400.0;
/// Requests in flight at most; past it a request is not sent (counted `dropped`).
pub const MAX_IN_FLIGHT: u64 = 256;
/// Seconds of load at most, and by default.
pub const MAX_SECONDS: u64 = 60;
pub const MIN_SECONDS: u64 = 5;
pub const DEFAULT_SECONDS: u64 = 20;
/// The offered rate as a multiple of the predicted capacity: past the knee, clearly.
pub const OVERLOAD: f64 = 1.5;

/// The panel's runs: the one in progress (or the last), and this server's own address.
#[derive(Default)]
pub struct PanelRuns {
    current: Mutex<Option<Current>>,
    addr: OnceLock<SocketAddr>,
}

struct Current {
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<RunStatus>>,
}

/// What a run is doing or did: the panel's card and chart read it.
#[derive(Debug, Clone, Serialize)]
pub struct RunStatus {
    pub scenario: String,
    /// `break` or `fix`.
    pub action: &'static str,
    /// `starting`, `running`, `stopping`, `done`, `stopped` or `failed`.
    pub state: &'static str,
    pub profile: &'static str,
    /// The request sent, e.g. `GET /api/db/hold`.
    pub request: String,
    pub rate_rps: Option<f64>,
    pub seconds: u64,
    /// When the load started (Unix ms), once it has.
    pub started_ms: Option<i64>,
    /// What the fragile knobs predict the resource serves (the rate is 1.5× it).
    pub predicted_capacity_rps: Option<f64>,
    pub formula: String,
    pub expect: String,
    /// What the switch changed, knob by knob (the cure, on `fix`).
    pub changed: Vec<KnobChange>,
    /// Knobs set at start-up that kept their value through the switch.
    pub kept_startup: BTreeMap<String, Value>,
    /// The generator runs in this process, on the server's cores.
    pub note: String,
    pub result: Option<StageResult>,
    pub error: Option<String>,
}

impl PanelRuns {
    /// Where the server listens (set once bound): the generator's target.
    pub fn set_addr(&self, addr: SocketAddr) {
        let ip = if addr.ip().is_unspecified() {
            match addr {
                SocketAddr::V4(_) => std::net::IpAddr::from([127, 0, 0, 1]),
                SocketAddr::V6(_) => std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            }
        } else {
            addr.ip()
        };
        let _ = self.addr.set(SocketAddr::new(ip, addr.port()));
    }

    /// The current or last run.
    pub fn status(&self) -> Option<RunStatus> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current
            .as_ref()
            .map(|c| c.status.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

#[derive(Debug, Deserialize)]
pub struct StartQuery {
    action: Option<String>,
    seconds: Option<String>,
}

fn conflict(detail: String) -> Response {
    (
        StatusCode::CONFLICT,
        Json(json!({"error": "run_in_progress", "detail": detail})),
    )
        .into_response()
}

/// `POST /lab/run/{scenario}`.
pub async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<StartQuery>,
) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    let profile = match query.action.as_deref() {
        None | Some("break") => Profile::Fragile,
        Some("fix") => Profile::Hardened,
        Some(other) => {
            return AppError::invalid("action", format!("action must be break or fix, not `{other}`")).into_response()
        }
    };
    let seconds = match query.seconds.as_deref() {
        None => DEFAULT_SECONDS,
        Some(text) => match text.parse::<u64>() {
            Ok(n) if (MIN_SECONDS..=MAX_SECONDS).contains(&n) => n,
            _ => {
                return AppError::invalid(
                    "seconds",
                    format!("seconds must be a whole number from {MIN_SECONDS} to {MAX_SECONDS}, not `{text}`"),
                )
                .into_response()
            }
        },
    };
    let repro = match crate::scenarios::find_repro(&id) {
        Ok(repro) => repro,
        Err(detail) => return AppError::NotFound { detail }.into_response(),
    };
    if let Some(why) = repro.cannot_run_here(&state) {
        return conflict(format!("{id} cannot run from the panel: {why}"));
    }
    let Some(addr) = state.lab.runs.addr.get().copied() else {
        return AppError::Unavailable {
            code: "not_ready",
            detail: "the server is not listening yet".into(),
        }
        .into_response();
    };
    let mut current = state.lab.runs.current.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = current.as_ref() {
        let s = c.status.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(s.state, "starting" | "running" | "stopping") {
            return conflict(format!(
                "a run is in progress ({} {}); stop it first (POST /lab/run/stop)",
                s.action, s.scenario
            ));
        }
    }
    let action = if profile == Profile::Fragile { "break" } else { "fix" };
    let status = Arc::new(Mutex::new(RunStatus {
        scenario: id.clone(),
        action,
        state: "starting",
        profile: profile.as_str(),
        request: repro.target().describe(),
        rate_rps: None,
        seconds,
        started_ms: None,
        predicted_capacity_rps: None,
        formula: String::new(),
        expect: String::new(),
        changed: Vec::new(),
        kept_startup: BTreeMap::new(),
        note: format!(
            "The load comes from inside this process and shares the server's {} core(s); \
             it shows the collapse and the cure, k6 from another machine is the path for real load.",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
        result: None,
        error: None,
    }));
    let stop = Arc::new(AtomicBool::new(false));
    *current = Some(Current {
        stop: stop.clone(),
        status: status.clone(),
    });
    drop(current);
    let lab = LabClient {
        client: match reqwest::Client::builder()
            .pool_max_idle_per_host(MAX_IN_FLIGHT as usize)
            .timeout(CLIENT_TIMEOUT)
            .build()
        {
            Ok(c) => c,
            Err(e) => return AppError::internal(e).into_response(),
        },
        base: format!("http://{addr}"),
        token: state.settings.admin_token.as_ref().map(|t| t.expose().to_string()),
    };
    let shared = status.clone();
    let weak = Arc::downgrade(&state.0);
    state.lifecycle.spawn_background(async move {
        let outcome = drive(weak, lab, &id, profile, seconds, &stop, &shared).await;
        let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok(()) if stop.load(Ordering::SeqCst) => s.state = "stopped",
            Ok(()) => s.state = "done",
            Err(e) => {
                s.state = "failed";
                s.error = Some(crate::error::describe(&e));
            }
        }
        tracing::info!(scenario = %s.scenario, action = s.action, state = s.state, "panel run ended");
    });
    let snapshot = status.lock().unwrap_or_else(|p| p.into_inner()).clone();
    tracing::info!(scenario = %snapshot.scenario, action, seconds, "panel run started");
    (StatusCode::ACCEPTED, Json(snapshot)).into_response()
}

/// Switch, set the repro knobs, predict, then one stage of load.
async fn drive(
    weak: std::sync::Weak<crate::AppStateInner>,
    lab: LabClient,
    id: &str,
    profile: Profile,
    seconds: u64,
    stop: &Arc<AtomicBool>,
    status: &Arc<Mutex<RunStatus>>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let repro = crate::scenarios::find_repro(id).map_err(anyhow::Error::msg)?;
    let switched: ConfigView = serde_json::from_value(
        lab.admin(
            reqwest::Method::POST,
            &format!("/admin/profile/{}", profile.as_str()),
            None,
        )
        .await?,
    )?;
    let mut changed = switched.switch.as_ref().map(|s| s.changed.clone()).unwrap_or_default();
    let kept = switched
        .switch
        .as_ref()
        .map(|s| s.kept_startup.clone())
        .unwrap_or_default();
    // The repro's knobs keep the numbers small; a knob set at start-up wins over them.
    let mut run_knobs = (repro.knobs)();
    if let (Some(obj), Some(inner)) = (run_knobs.as_object_mut(), weak.upgrade()) {
        for name in inner.knobs.set_at_startup() {
            obj.remove(name);
        }
    }
    if run_knobs.as_object().is_some_and(|o| !o.is_empty()) {
        let before = switched.current().context("reading the knobs")?;
        let after: ConfigView = serde_json::from_value(
            lab.admin(reqwest::Method::PATCH, "/admin/config", Some(&run_knobs))
                .await?,
        )?;
        let after = after.current().context("reading the knobs")?;
        for c in crate::admin::knob_changes(&before, &after) {
            changed.retain(|x| x.knob != c.knob);
            changed.push(c);
        }
    }
    super::setup(&lab, repro).await?;
    let cpu_ms = if repro.calibrate {
        Some(super::calibrate(&lab, &repro.target().path, 15).await?)
    } else {
        None
    };
    let config = super::config(&lab).await?;
    // The same load for break and fix: from what the fragile knobs predict.
    let fragile = {
        let inner = weak.upgrade().context("the server stopped")?;
        let base = inner.knobs.profile_keeping_startup(Profile::Fragile).0;
        let knobs = crate::knobs::merge(&base, &run_knobs, crate::settings::Settings::startup_only_names())
            .map_err(|r| anyhow::anyhow!("the repro knobs were refused: {r:?}"))?;
        crate::scenarios::RunConfig {
            knobs,
            memory_leak_limit_mb: config.memory_leak_limit_mb,
        }
    };
    let fragile_prediction = (repro.predict)(&fragile, cpu_ms);
    let fragile_plan = (repro.plan)(&fragile, cpu_ms);
    let rate = match fragile_prediction.capacity_rps {
        Some(c) if c > 0.0 => c * OVERLOAD,
        _ => fragile_plan.rates.iter().copied().fold(1.0, f64::max),
    }
    .clamp(1.0, MAX_RATE);
    let mut rate = (rate * 10.0).round() / 10.0;
    let mut plan = (repro.plan)(&config, cpu_ms);
    // A sweep (pool-too-big) runs its last value, the one that breaks, at its own rate.
    if let Some(last) = plan.sweep.as_ref().map(|s| s.values.len().saturating_sub(1)) {
        super::sweep_to(&lab, &plan, last).await?;
        rate = plan.rates.get(last).copied().unwrap_or(rate);
    }
    plan.max_in_flight = MAX_IN_FLIGHT;
    let prediction = (repro.predict)(&config, cpu_ms);
    tokio::time::sleep(plan.settle).await;
    if let Some((method, path)) = &plan.before_stage {
        lab.admin(method.clone(), path, None).await?;
    }
    {
        let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
        s.state = if stop.load(Ordering::SeqCst) {
            "stopping"
        } else {
            "running"
        };
        s.rate_rps = Some(rate);
        // The request as the knobs in force shape it (a gRPC call's deadline is a knob).
        s.request = plan.target.describe();
        s.started_ms = Some(chrono::Utc::now().timestamp_millis());
        s.predicted_capacity_rps = fragile_prediction.capacity_rps.map(|c| (c * 10.0).round() / 10.0);
        s.formula = fragile_prediction.formula.clone();
        s.expect = prediction.expect.clone();
        s.changed = changed;
        s.kept_startup = kept;
    }
    let result = run_stage(&lab, &plan, rate, Duration::from_secs(seconds), stop, "panel", true).await;
    if let Some((method, path)) = &plan.after_run {
        let _ = lab.admin(method.clone(), path, None).await;
    }
    status.lock().unwrap_or_else(|p| p.into_inner()).result = Some(result);
    Ok(())
}

/// `POST /lab/run/stop`.
pub async fn stop(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    let current = state.lab.runs.current.lock().unwrap_or_else(|p| p.into_inner());
    let Some(c) = current.as_ref() else {
        return AppError::NotFound {
            detail: "no run to stop".into(),
        }
        .into_response();
    };
    c.stop.store(true, Ordering::SeqCst);
    let mut s = c.status.lock().unwrap_or_else(|p| p.into_inner());
    if matches!(s.state, "starting" | "running") {
        s.state = "stopping";
    }
    Json(s.clone()).into_response()
}

/// `GET /lab/run`.
pub async fn status(State(state): State<AppState>) -> Response {
    match state.lab.runs.status() {
        Some(s) => Json(s).into_response(),
        None => Json(json!({"state": "idle"})).into_response(),
    }
}
