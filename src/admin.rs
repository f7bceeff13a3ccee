//! The admin API: read every knob, change knobs while the load runs, switch profiles, reset.
//!
//! - `GET /admin/config`: every knob with value, start-up value, source, range and profile values,
//!   plus the start-up-only settings.
//! - `PATCH /admin/config`: a partial JSON object; every field is validated before any applies
//!   (422 names each refused knob; 409 when only start-up settings were asked for).
//! - `POST /admin/profile/{fragile|hardened}`, `POST /admin/reset` (start-up values, retained
//!   memory cleared, fault rules and link toxics cleared, leaked connections released).
//!
//! Writes are open on a loopback bind. On any other bind they need
//! `Authorization: Bearer $ADMIN_TOKEN`, and without a configured token they are refused (403).
//! When a token is configured it is required on every bind. The token is never logged.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::AppError;
use crate::knobs::{self, Knobs, Profile, Source, SPECS};
use crate::settings::{Settings, StartupSetting};
use crate::state::AppState;

/// What `GET /admin/config` (and every admin write) answers: the typed view that the admin API,
/// `repro`, the lab and the tests all read, instead of indexing JSON by path.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigView {
    /// Every runtime knob, by name.
    pub knobs: BTreeMap<String, KnobView>,
    /// Every start-up-only setting, by name.
    pub startup_only: BTreeMap<String, StartupSetting>,
    pub profile_at_startup: Profile,
    /// `POST /admin/reset` only: retained memory released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_memory_mb: Option<u64>,
    /// `POST /admin/profile/...` only: what the switch changed and what it kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch: Option<ProfileSwitch>,
}

/// What a profile switch did, knob by knob.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileSwitch {
    pub profile: Profile,
    /// Every knob whose value changed: before and after.
    pub changed: Vec<KnobChange>,
    /// Knobs set at start-up (environment or flags) that kept their start-up value instead of
    /// the profile's (`?keep_startup=false` applies the profile's values to them too).
    pub kept_startup: BTreeMap<String, Value>,
}

/// One knob's change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnobChange {
    pub knob: String,
    pub before: Value,
    pub after: Value,
}

/// The knobs whose value differs between `before` and `after`, in the table's order.
pub fn knob_changes(before: &Knobs, after: &Knobs) -> Vec<KnobChange> {
    SPECS
        .iter()
        .filter_map(|s| {
            let (b, a) = (before.get(s.name)?, after.get(s.name)?);
            (b != a).then(|| KnobChange {
                knob: s.name.to_string(),
                before: b,
                after: a,
            })
        })
        .collect()
}

/// One knob in [`ConfigView`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnobView {
    pub value: Value,
    /// The start-up value (`POST /admin/reset` returns to it).
    pub default: Value,
    pub source: Source,
    pub runtime_tunable: bool,
    pub range: Value,
    pub profiles: ProfileValues,
    pub env: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    pub scenario: String,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileValues {
    pub fragile: Value,
    pub hardened: Value,
}

impl ConfigView {
    pub fn new(knobs: &knobs::KnobStore, settings: &Settings) -> Self {
        let current = knobs.current();
        let startup = knobs.startup();
        let sources = knobs.sources();
        let fragile = Knobs::for_profile(Profile::Fragile);
        let hardened = Knobs::for_profile(Profile::Hardened);
        let knobs = SPECS
            .iter()
            .map(|s| {
                let view = KnobView {
                    value: current.get(s.name).unwrap_or_default(),
                    default: startup.get(s.name).unwrap_or_default(),
                    source: sources.get(s.name).copied().unwrap_or(Source::Profile),
                    runtime_tunable: true,
                    range: s.range_json(),
                    profiles: ProfileValues {
                        fragile: fragile.get(s.name).unwrap_or_default(),
                        hardened: hardened.get(s.name).unwrap_or_default(),
                    },
                    env: s.env.to_string(),
                    unit: s.unit().map(str::to_string),
                    scenario: s.scenario.to_string(),
                    description: s.doc.to_string(),
                };
                (s.name.to_string(), view)
            })
            .collect();
        ConfigView {
            knobs,
            startup_only: settings.startup_view(),
            profile_at_startup: settings.profile,
            released_memory_mb: None,
            switch: None,
        }
    }

    /// The current knob set, typed.
    pub fn current(&self) -> Result<Knobs, serde_json::Error> {
        let values: serde_json::Map<String, Value> = self
            .knobs
            .iter()
            .map(|(name, k)| (name.clone(), k.value.clone()))
            .collect();
        serde_json::from_value(Value::Object(values))
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/config", get(get_config).patch(patch_config))
        .route("/admin/profile/{name}", post(set_profile))
        .route("/admin/reset", post(reset))
}

/// Checks the caller may change the configuration.
pub(crate) fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), AppError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match (&state.settings.admin_token, presented) {
        (Some(expected), Some(given)) if constant_time_eq(expected.expose().as_bytes(), given.as_bytes()) => Ok(()),
        (Some(_), _) => Err(AppError::Unauthorized {
            detail: "changing the configuration needs `Authorization: Bearer <ADMIN_TOKEN>`".into(),
        }),
        (None, _) if state.settings.host.is_loopback() => Ok(()),
        (None, _) => Err(AppError::Forbidden {
            detail: format!(
                "the lab is bound to {} (not loopback), so configuration changes need a token: restart with \
                 ADMIN_TOKEN=<secret> and send `Authorization: Bearer <secret>`",
                state.settings.host
            ),
        }),
    }
}

/// Compares fixed-length SHA-256 digests of both sides byte by byte without an early exit, so
/// neither the token's content nor its length shows in the time a refusal takes.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (da, db) = (Sha256::digest(a), Sha256::digest(b));
    da.iter().zip(db.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn config_view(state: &AppState) -> ConfigView {
    ConfigView::new(&state.knobs, &state.settings)
}

async fn get_config(State(state): State<AppState>) -> Json<ConfigView> {
    Json(config_view(&state))
}

/// Applies `new` to everything sized by a knob (the database pool swapped if its size changed,
/// the worker pool, the elastic pool, the Redis pool) and publishes it. `None` returns to the
/// start-up values.
fn apply(state: &AppState, new: Option<(Knobs, Source)>) {
    let knobs = match &new {
        Some((k, _)) => k.clone(),
        None => (*state.knobs.startup()).clone(),
    };
    state.apply_knobs(&knobs);
    match new {
        Some((k, source)) => state.knobs.publish(k, source),
        None => state.knobs.reset(),
    }
}

async fn patch_config(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return AppError::invalid("body", format!("the body must be a JSON object of knobs: {e}")).into_response()
        }
    };
    let _serialised = state.knobs.change_lock.lock().await;
    let new = match knobs::merge(&state.knobs.current(), &patch, Settings::startup_only_names()) {
        Ok(new) => new,
        Err(refused) => return AppError::InvalidKnobs { refused }.into_response(),
    };
    let changed: Vec<String> = patch
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    apply(&state, Some((new, Source::Runtime)));
    tracing::info!(knobs = ?changed, "configuration changed at runtime");
    Json(config_view(&state)).into_response()
}

/// `?keep_startup=`: whether knobs set at start-up keep their value through a switch.
#[derive(Debug, Deserialize)]
pub struct SwitchQuery {
    keep_startup: Option<String>,
}

async fn set_profile(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    axum::extract::Query(query): axum::extract::Query<SwitchQuery>,
) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    let keep_startup = match query.keep_startup.as_deref() {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return AppError::invalid(
                "keep_startup",
                format!("keep_startup must be true or false, not `{other}`"),
            )
            .into_response()
        }
    };
    let profile = match name.as_str() {
        "fragile" => Profile::Fragile,
        "hardened" => Profile::Hardened,
        other => {
            return AppError::NotFound {
                detail: format!("no profile `{other}`; use fragile or hardened"),
            }
            .into_response()
        }
    };
    let _serialised = state.knobs.change_lock.lock().await;
    let before = state.knobs.current();
    let (new, kept) = if keep_startup {
        state.knobs.profile_keeping_startup(profile)
    } else {
        (Knobs::for_profile(profile), Vec::new())
    };
    let changed = knob_changes(&before, &new);
    let kept_startup: BTreeMap<String, Value> = kept
        .iter()
        .map(|k| (k.to_string(), new.get(k).unwrap_or_default()))
        .collect();
    apply(&state, Some((new, Source::RuntimeProfile)));
    tracing::info!(profile = profile.as_str(), changed = changed.len(), kept_startup = ?kept,
        "profile switched at runtime");
    let mut view = config_view(&state);
    view.switch = Some(ProfileSwitch {
        profile,
        changed,
        kept_startup,
    });
    Json(view).into_response()
}

async fn reset(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    let _serialised = state.knobs.change_lock.lock().await;
    apply(&state, None);
    let (bytes, chunks) = state.memory.clear();
    state.clear_injected_faults();
    let leaked = state.db.checkouts().leaked();
    state.db.checkouts().release_leaks();
    tracing::info!(
        released_bytes = bytes,
        chunks,
        leaked_connections = leaked,
        "configuration reset to start-up values, fault rules and link toxics cleared, leaked connections released"
    );
    let mut view = config_view(&state);
    view.released_memory_mb = Some(bytes / (1024 * 1024));
    Json(view).into_response()
}
