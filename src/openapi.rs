//! `GET /openapi.json` (OpenAPI 3.1) and `GET /docs` (Swagger UI, vendored and embedded).
//!
//! The query parameters come from the same `Num`/`Choice`/`Text` definitions the handlers parse
//! with, the admin body from the knob table, and the guard's answers (429, 503, 504) from the
//! guard's own route classification, so the spec cannot drift from the code on those. The rest
//! (success bodies, each endpoint's own failures) is written here; schemathesis checks it
//! against the running server in CI (`scripts/ci/api-fuzz.sh`).

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Map, Value};

use crate::apidoc::{admin_auth, array_of, boolean, nullable, obj, path_param, string, Op};
use crate::resilience::guard::{is_exempt, Group};
use crate::scenarios::ALL;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(spec_handler))
        .route("/docs", get(docs))
        .route("/docs/swagger-ui-bundle.js", get(swagger_js))
        .route("/docs/swagger-ui.css", get(swagger_css))
}

const SWAGGER_JS: &[u8] = include_bytes!("../assets/vendor/swagger-ui/swagger-ui-bundle.js");
const SWAGGER_CSS: &[u8] = include_bytes!("../assets/vendor/swagger-ui/swagger-ui.css");
const DOCS_HTML: &str = include_str!("../assets/docs.html");

async fn spec_handler() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], SPEC_JSON.as_str()).into_response()
}

async fn docs() -> Html<&'static str> {
    Html(DOCS_HTML)
}

async fn swagger_js() -> Response {
    static_asset("text/javascript; charset=utf-8", SWAGGER_JS)
}

async fn swagger_css() -> Response {
    static_asset("text/css; charset=utf-8", SWAGGER_CSS)
}

/// An embedded asset: immutable for the life of the binary, so it may be cached for a day.
pub(crate) fn static_asset(content_type: &'static str, bytes: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        bytes,
    )
        .into_response()
}

static SPEC_JSON: LazyLock<String> = LazyLock::new(|| spec().to_string());

fn config_schema() -> Value {
    obj(&[
        ("knobs", json!({"type": "object"})),
        ("startup_only", json!({"type": "object"})),
    ])
}

/// The observer surfaces' operations (admin, telemetry, docs, lab): never guarded.
fn observer_operations() -> Vec<Op> {
    vec![
        Op::new(
            "get",
            "/admin/config",
            "Every knob: value, start-up value, source, range, profiles",
        )
        .tag("admin")
        .ok(200, "the configuration", config_schema()),
        admin_auth(Op::new("patch", "/admin/config", "Change knobs while the load runs").tag("admin"))
            .body("application/json", crate::knobs::patch_schema(), true)
            .ok(200, "applied; the new configuration", config_schema())
            .fails(409, "only start-up settings were asked for (startup_only)")
            .fails(
                422,
                "unknown knob, wrong type or out of range: every refusal is listed (invalid_knob)",
            ),
        admin_auth(
            Op::new(
                "post",
                "/admin/profile/{name}",
                "Switch to a profile: every knob takes its value, except those set at start-up (environment or flags), which keep theirs unless keep_startup=false; the answer lists every change, before and after",
            )
            .tag("admin"),
        )
        .param(path_param(
            "name",
            json!({"type": "string", "enum": ["fragile", "hardened"]}),
            "the profile",
        ))
        .param(json!({"name": "keep_startup", "in": "query", "required": false,
                      "schema": {"type": "string", "enum": ["true", "false"], "default": "true"},
                      "description": "false: the profile's values replace the start-up ones too"}))
        .ok(200, "switched; the new configuration, with `switch`: what changed and what was kept", config_schema())
        .fails(404, "no such profile (not_found)")
        .fails(422, "keep_startup is neither true nor false (validation_error)"),
        admin_auth(Op::new("post", "/admin/reset", "Back to start-up values; retained memory freed").tag("admin")).ok(
            200,
            "reset; the configuration",
            config_schema(),
        ),
    ]
    .into_iter()
    .chain(crate::scenarios::faults::admin_operations())
    .chain(crate::scenarios::slow_link::admin_operations())
    .chain([
        Op::new("get", "/metrics", "Prometheus metrics")
            .tag("telemetry")
            .ok_text(),
        Op::new("get", "/openapi.json", "This document").tag("docs").ok(
            200,
            "the OpenAPI document",
            json!({"type": "object"}),
        ),
        Op::new("get", "/docs", "Interactive API documentation (Swagger UI)")
            .tag("docs")
            .ok_html(),
        Op::new("get", "/docs/swagger-ui-bundle.js", "Swagger UI's script (embedded)")
            .tag("docs")
            .ok_asset("text/javascript"),
        Op::new("get", "/docs/swagger-ui.css", "Swagger UI's style sheet (embedded)")
            .tag("docs")
            .ok_asset("text/css"),
        Op::new("get", "/lab", "The live lab panel").tag("lab").ok_html(),
        Op::new("get", "/lab/lab.js", "The panel's script (embedded)")
            .tag("lab")
            .ok_asset("text/javascript"),
        Op::new(
            "get",
            "/lab/scenarios.json",
            "The scenario catalog: explanation, k6 commands, whether the scenario has a Break it / Fix it run (`no_repro`: why not, or null) and whether this lab can run it (`cannot_run_here`: the reason, or null)",
        )
        .tag("lab")
        .ok(
            200,
            "one entry per k6 script",
            array_of(obj(&[
                ("id", string()),
                ("about", string()),
                ("k6_fragile", string()),
                ("k6_hardened", string()),
                ("repro", boolean()),
                // Why the scenario has no Break it / Fix it run at all (null: it has one).
                ("no_repro", nullable("string")),
                // Why this lab cannot run the scenario's Break it / Fix it (null: it can).
                ("cannot_run_here", nullable("string")),
            ])),
        ),
        Op::new("get", "/lab/uplot.js", "uPlot, the panel's chart library (embedded)")
            .tag("lab")
            .ok_asset("text/javascript"),
        Op::new("get", "/lab/uplot.css", "uPlot's style sheet (embedded)")
            .tag("lab")
            .ok_asset("text/css"),
        Op::new("get", "/lab/run", "Break it / Fix it: the panel's current or last load run")
            .tag("lab")
            .ok(200, "the run's status, or {\"state\": \"idle\"}", json!({"type": "object"})),
        admin_auth(
            Op::new(
                "post",
                "/lab/run/{scenario}",
                "Break it / Fix it: switch to fragile (break) or hardened (fix), then drive the scenario's load from inside the server at 1.5x the capacity the fragile knobs predict (at most 400 req/s, 256 in flight)",
            )
            .tag("lab"),
        )
        .param(path_param(
            "scenario",
            json!({"type": "string", "enum": crate::scenarios::repro_ids()}),
            "the catalog row",
        ))
        .param(json!({"name": "action", "in": "query", "required": false,
                      "schema": {"type": "string", "enum": ["break", "fix"], "default": "break"},
                      "description": "break: fragile profile; fix: hardened profile (start-up values kept)"}))
        .param(json!({"name": "seconds", "in": "query", "required": false,
                      "schema": {"type": "integer", "minimum": crate::repro::panel::MIN_SECONDS,
                                 "maximum": crate::repro::panel::MAX_SECONDS,
                                 "default": crate::repro::panel::DEFAULT_SECONDS},
                      "description": "seconds of load"}))
        .ok(202, "the run started; its status", json!({"type": "object"}))
        .fails(404, "no such scenario, or it has no repro (not_found)")
        .fails(409, "a run is in progress, or the scenario cannot run from the panel (run_in_progress)")
        .fails(422, "action or seconds out of range (validation_error)")
        .fails(503, "the server is not listening yet (not_ready)"),
        admin_auth(Op::new("post", "/lab/run/stop", "Stop the panel's load run: nothing more is sent").tag("lab"))
            .ok(200, "the run's status", json!({"type": "object"}))
            .fails(404, "no run to stop (not_found)"),
        Op::new(
            "get",
            "/lab/events",
            "Server-sent events: one snapshot of the lab per second",
        )
        .tag("lab")
        .ok_stream(),
    ])
    .collect()
}

/// Every operation: each scenario's (tagged with its id), then the observers'.
fn operations() -> Vec<Op> {
    ALL.iter()
        .flat_map(|s| s.tagged_operations())
        .chain(observer_operations())
        .collect()
}

/// The guard's answers, on every route it guards: from the group the route declares.
fn with_guard(op: Op) -> Op {
    if is_exempt(op.path) {
        return op;
    }
    let group = op.group;
    let op = op
        .fails(429, "above rate_limit_rps when rate_limit_enabled (rate_limited)")
        .fails(503, "max_in_flight requests already in flight (shed)");
    if group == Group::Other {
        op
    } else {
        let description = match group {
            Group::Cpu => "request_timeout_cpu_ms expired (request_timeout)",
            Group::Io => "request_timeout_io_ms expired (request_timeout)",
            Group::Db => "request_timeout_db_ms expired (request_timeout)",
            _ => "request_timeout_downstream_ms expired (request_timeout)",
        };
        op.fails(504, description)
    }
}

/// The service index's endpoint table: `METHOD /path?param=default`, the scenario (the tag) and
/// the summary, for every operation of the spec.
pub fn endpoint_table() -> Vec<Value> {
    static TABLE: LazyLock<Vec<Value>> = LazyLock::new(|| {
        operations()
            .iter()
            .map(|op| {
                let query: Vec<String> = op
                    .params
                    .iter()
                    .filter(|p| p["in"] == "query")
                    .filter_map(|p| {
                        let d = &p["schema"]["default"];
                        let v = match d {
                            Value::String(s) => s.clone(),
                            Value::Null => return None,
                            other => other.to_string(),
                        };
                        Some(format!("{}={v}", p["name"].as_str().unwrap_or_default()))
                    })
                    .collect();
                let endpoint = if query.is_empty() {
                    format!("{} {}", op.method.to_uppercase(), op.path)
                } else {
                    format!("{} {}?{}", op.method.to_uppercase(), op.path, query.join("&"))
                };
                json!({"endpoint": endpoint, "scenario": op.tag, "description": op.summary})
            })
            .collect()
    });
    TABLE.clone()
}

/// The tags: every scenario that has routes, in the catalog's order, then the observers.
fn tags() -> Vec<Value> {
    let scenarios = crate::scenarios::with_routes().map(|s| s.id);
    scenarios
        .chain(OBSERVERS.iter().copied())
        .map(|name| json!({"name": name}))
        .collect()
}

/// The observer surfaces' tags: their traffic is the observer's own, not the lab's.
pub const OBSERVERS: &[&str] = &["admin", "telemetry", "docs", "lab"];

/// The whole document.
pub fn spec() -> Value {
    let mut paths = Map::new();
    for op in operations().into_iter().map(with_guard) {
        let entry = paths.entry(op.path.to_string()).or_insert_with(|| json!({}));
        entry[op.method] = op.to_json();
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "chokepoint",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A deliberately fragile backend that reproduces production collapses on demand. \
                Every failure answers with the JSON body `{\"error\": code, \"detail\": ...}`; \
                invalid parameters name the parameter and its range. Where the original Python lab \
                answered differently, `detail` is its value (FastAPI's list for an invalid parameter, \
                `Not Found`, `Method Not Allowed`) and our sentence is `message`. Knobs: `GET /admin/config`.",
        },
        "tags": tags(),
        "paths": paths,
        "components": {"schemas": {"Error": {
            "type": "object",
            "required": ["error", "detail"],
            "properties": {
                "error": {"type": "string", "description": "a stable machine-readable code"},
                "detail": {"description": "a sentence; FastAPI's validation list for invalid_parameter",
                           "anyOf": [{"type": "string"}, {"type": "array", "items": {
                               "type": "object", "required": ["type", "loc", "msg"],
                               "properties": {"type": {"type": "string"}, "loc": {"type": "array"},
                                              "msg": {"type": "string"}, "input": {}, "ctx": {"type": "object"}}}}]},
                "message": {"type": "string", "description": "our sentence where `detail` keeps the original's value"},
                "parameter": {"type": "string", "description": "the invalid parameter (invalid_parameter)"},
                "range": {"type": "object", "description": "its allowed range (invalid_parameter)"},
                "retry_after_ms": {"type": "integer"},
            },
        }}},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_documents_a_success_and_unique_ids() {
        let spec = spec();
        let mut ids = std::collections::HashSet::new();
        for (path, item) in spec["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                assert!(
                    ids.insert(op["operationId"].as_str().unwrap().to_string()),
                    "{method} {path}"
                );
                let codes: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
                assert!(codes.iter().any(|c| c.starts_with('2')), "{method} {path} has no 2xx");
            }
        }
    }

    #[test]
    fn ranges_come_from_the_handlers_definitions() {
        let spec = spec();
        let p = &spec["paths"]["/api/cpu-intensive"]["get"]["parameters"][0];
        assert_eq!(p["name"], "complexity");
        assert_eq!(p["schema"]["maximum"], crate::scenarios::cpu::COMPLEXITY.max);
        let guarded = &spec["paths"]["/api/slow"]["get"]["responses"];
        assert!(guarded.get("429").is_some() && guarded.get("504").is_some());
        assert!(spec["paths"]["/health"]["get"]["responses"].get("429").is_none());
    }
}
