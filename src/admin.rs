//! The admin API: read every knob, change knobs while the load runs, switch profiles, reset.
//!
//! - `GET /admin/config`: every knob with value, start-up value, source, range and profile values,
//!   plus the start-up-only settings.
//! - `PATCH /admin/config`: a partial JSON object; every field is validated before any applies
//!   (422 names each refused knob; 409 when only start-up settings were asked for).
//! - `POST /admin/profile/{fragile|hardened}`, `POST /admin/reset` (start-up values, retained
//!   memory cleared).
//!
//! Writes are open on a loopback bind. On any other bind they need
//! `Authorization: Bearer $ADMIN_TOKEN`, and without a configured token they are refused (403).
//! When a token is configured it is required on every bind. The token is never logged.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::error::AppError;
use crate::knobs::{self, Knobs, Profile, Source};
use crate::AppState;

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

fn config_view(state: &AppState) -> Value {
    let mut view = state.knobs.describe(&state.settings);
    view["profile_at_startup"] = json!(state.settings.profile.as_str());
    view
}

async fn get_config(State(state): State<AppState>) -> Json<Value> {
    Json(config_view(&state))
}

/// Applies `new` (swapping the database pool if its size changed) and publishes it.
fn apply(state: &AppState, new: Knobs, source: Source) {
    state.db.apply(&new);
    state.worker_pool.resize(new.worker_pool_size);
    state.elastic.apply(&new);
    state.cache.apply(&new);
    state.knobs.publish(new, source);
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
    let new = match knobs::merge(&state.knobs.current(), &patch) {
        Ok(new) => new,
        Err(refused) => return AppError::InvalidKnobs { refused }.into_response(),
    };
    let changed: Vec<String> = patch
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    apply(&state, new, Source::Runtime);
    tracing::info!(knobs = ?changed, "configuration changed at runtime");
    Json(config_view(&state)).into_response()
}

async fn set_profile(State(state): State<AppState>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
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
    apply(&state, Knobs::for_profile(profile), Source::RuntimeProfile);
    tracing::info!(profile = profile.as_str(), "profile switched at runtime");
    Json(config_view(&state)).into_response()
}

async fn reset(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    let _serialised = state.knobs.change_lock.lock().await;
    let startup = (*state.knobs.startup()).clone();
    state.db.apply(&startup);
    state.worker_pool.resize(startup.worker_pool_size);
    state.elastic.apply(&startup);
    state.cache.apply(&startup);
    state.knobs.reset();
    let (bytes, chunks) = state.memory.clear();
    tracing::info!(released_bytes = bytes, chunks, "configuration reset to start-up values");
    let mut view = config_view(&state);
    view["released_memory_mb"] = json!(bytes / (1024 * 1024));
    Json(view).into_response()
}
