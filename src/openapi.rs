//! `GET /openapi.json` (OpenAPI 3.1) and `GET /docs` (Swagger UI, vendored and embedded).
//!
//! The query parameters come from the same `Num`/`Choice`/`Text` definitions the handlers parse
//! with, the admin body from the knob table, and the guard's answers (429, 503, 504) from the
//! guard's own route classification, so the spec cannot drift from the code on those. The rest
//! (success bodies, each endpoint's own failures) is written here; schemathesis checks it
//! against the running server in CI (`scripts/api-fuzz.sh`).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Map, Value};

use crate::params::QueryParam;
use crate::resilience::guard::{is_exempt, Group};
use crate::scenarios::{
    burst, cache_stampede, cold_start, cpu, db_pool, downstream, io, memory, retry_storm, worker_pool,
};
use crate::AppState;

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

// ---- schema helpers -------------------------------------------------------------------------

fn int() -> Value {
    json!({"type": "integer"})
}
fn num() -> Value {
    json!({"type": "number"})
}
fn string() -> Value {
    json!({"type": "string"})
}
fn boolean() -> Value {
    json!({"type": "boolean"})
}
fn nullable(t: &str) -> Value {
    json!({"type": [t, "null"]})
}
fn any() -> Value {
    json!({})
}
fn array_of(items: Value) -> Value {
    json!({"type": "array", "items": items})
}
fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// An object whose listed properties are all required; other properties are allowed.
fn obj(props: &[(&str, Value)]) -> Value {
    let required: Vec<&str> = props.iter().map(|(n, _)| *n).collect();
    let properties: Map<String, Value> = props.iter().map(|(n, v)| (n.to_string(), v.clone())).collect();
    json!({"type": "object", "required": required, "properties": properties})
}

/// One operation of the spec.
struct Op {
    method: &'static str,
    path: &'static str,
    tag: &'static str,
    summary: &'static str,
    params: Vec<Value>,
    body: Option<Value>,
    responses: BTreeMap<u16, Value>,
}

impl Op {
    fn new(method: &'static str, path: &'static str, tag: &'static str, summary: &'static str) -> Op {
        Op {
            method,
            path,
            tag,
            summary,
            params: Vec::new(),
            body: None,
            responses: BTreeMap::new(),
        }
    }

    fn query(mut self, params: &[&dyn QueryParam]) -> Op {
        self.params.extend(params.iter().map(|p| p.openapi()));
        self
    }

    fn param(mut self, p: Value) -> Op {
        self.params.push(p);
        self
    }

    fn body(mut self, content_type: &str, schema: Value, required: bool) -> Op {
        self.body = Some(json!({"required": required, "content": {content_type: {"schema": schema}}}));
        self
    }

    /// A JSON success (or any non-error) answer.
    fn ok(mut self, status: u16, description: &str, schema: Value) -> Op {
        self.responses.insert(
            status,
            json!({"description": description, "content": {"application/json": {"schema": schema}}}),
        );
        self
    }

    /// A documented failure: the shared error body.
    fn fails(mut self, status: u16, description: &str) -> Op {
        let entry = self.responses.entry(status).or_insert_with(|| {
            let mut r = json!({
                "description": "",
                "content": {"application/json": {"schema": schema_ref("Error")}},
            });
            if matches!(status, 429 | 503) {
                r["headers"] = json!({"Retry-After": {"description": "seconds to wait (when the failure says so)",
                                                      "schema": {"type": "integer"}}});
            }
            r
        });
        let d = entry["description"].as_str().unwrap_or_default();
        entry["description"] = json!(if d.is_empty() {
            description.to_string()
        } else {
            format!("{d}; {description}")
        });
        self
    }

    fn to_json(&self) -> Value {
        // What the HTTP layer answers before the handler runs, in the same error shape (the
        // edge rewrites axum's plain-text rejections): a path segment that is not valid UTF-8,
        // an unreadable or oversized body.
        let mut all = self.responses.clone();
        let has_path_param = self.params.iter().any(|p| p["in"] == "path");
        let mut implicit = |status: u16, description: &str| {
            all.entry(status).or_insert_with(|| {
                json!({"description": description, "content": {"application/json": {"schema": schema_ref("Error")}}})
            });
        };
        if has_path_param || self.body.is_some() {
            implicit(
                400,
                "the request could not be read: a path segment that is not UTF-8, a malformed (e.g. chunked) body (bad_request)",
            );
        }
        if self.body.is_some() {
            implicit(413, "the body is above the 2 MiB limit (payload_too_large)");
        }
        let responses: Map<String, Value> = all.iter().map(|(status, r)| (status.to_string(), r.clone())).collect();
        let mut op = json!({
            "tags": [self.tag],
            "summary": self.summary,
            "operationId": format!("{}{}", self.method, self.path.replace(['/', '{', '}', '-', '.'], "_")),
            "responses": responses,
        });
        if !self.params.is_empty() {
            op["parameters"] = json!(self.params);
        }
        if let Some(b) = &self.body {
            op["requestBody"] = b.clone();
        }
        op
    }
}

fn path_param(name: &str, schema: Value, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": schema, "description": description})
}

fn admin_auth(op: Op) -> Op {
    op.param(json!({
        "name": "Authorization", "in": "header", "required": false,
        "description": "`Bearer <ADMIN_TOKEN>`: needed when a token is configured or the bind is not loopback",
        "schema": {"type": "string"}}))
        .fails(401, "a token is configured and was not presented (unauthorized)")
        .fails(
            403,
            "not bound to loopback and no ADMIN_TOKEN configured (admin_token_required)",
        )
}

fn config_schema() -> Value {
    obj(&[
        ("knobs", json!({"type": "object"})),
        ("startup_only", json!({"type": "object"})),
    ])
}

fn operations() -> Vec<Op> {
    let pool = obj(&[
        ("max_connections", int()),
        ("open", int()),
        ("idle", int()),
        ("in_use", int()),
        ("waiting", int()),
    ]);
    let deployment = obj(&[
        ("id", string()),
        ("name", string()),
        ("environment", string()),
        ("replicas", int()),
        (
            "status",
            json!({"type": "string", "enum": ["queued", "running", "succeeded", "failed"]}),
        ),
        ("idempotency_key", nullable("string")),
        ("sequence", nullable("integer")),
        ("error", nullable("string")),
        ("created_ms", int()),
        ("completed_ms", nullable("integer")),
    ]);
    let task = obj(&[
        ("id", int()),
        ("title", string()),
        ("description", nullable("string")),
        ("status", string()),
        ("created_at", string()),
    ]);
    let pool_timeout = "no pooled connection within db_pool_timeout_ms (db_pool_timeout), or the database is unreachable (db_unavailable)";
    let storage_full = "the database has no room left: nothing was stored (storage_full)";
    let downstream_failures = |op: Op| {
        op.fails(
            502,
            "the downstream answered an error or could not be reached (downstream_error)",
        )
        .fails(
            503,
            "the circuit breaker is open (circuit_open) or the downstream bulkhead is full (shed)",
        )
        .fails(
            504,
            "the downstream did not answer within the timeout (downstream_timeout)",
        )
    };
    let deploy_body = json!({
        "type": "object",
        "properties": {
            "name": {"type": ["string", "null"], "minLength": burst::NAME_LEN.start(), "maxLength": burst::NAME_LEN.end(), "default": "deployment"},
            "environment": {"type": ["string", "null"], "minLength": burst::ENVIRONMENT_LEN.start(), "maxLength": burst::ENVIRONMENT_LEN.end(), "default": "production"},
            "replicas": {"type": ["integer", "null"], "minimum": burst::REPLICAS.start(), "maximum": burst::REPLICAS.end(), "default": 1},
        },
    });
    let idempotency = json!({
        "name": "Idempotency-Key", "in": "header", "required": false,
        "description": "a retry with the same key returns the first deployment (200, Idempotent-Replayed: true)",
        "schema": {"type": "string", "minLength": burst::IDEMPOTENCY_KEY_LEN.start(), "maxLength": burst::IDEMPOTENCY_KEY_LEN.end(), "pattern": "^[!-~]+$"},
    });
    let create_deployment = |path: &'static str| {
        Op::new(
            "post",
            path,
            "burst",
            "Create a deployment: sync 201, or async 202 with Location",
        )
        .param(idempotency.clone())
        .body("application/json", deploy_body.clone(), false)
        .ok(201, "created (deploy_mode sync)", deployment.clone())
        .ok(
            202,
            "accepted, runs in the background (deploy_mode async)",
            deployment.clone(),
        )
        .ok(
            200,
            "replayed: this Idempotency-Key already created a deployment",
            deployment.clone(),
        )
        .fails(
            422,
            "a body field or the Idempotency-Key is invalid (invalid_parameter)",
        )
        .fails(503, pool_timeout)
        .fails(503, "the async queue is full (shed)")
        .fails(504, "deploy_timeout_ms passed (request_timeout)")
        .fails(507, storage_full)
    };

    vec![
        Op::new("get", "/", "healthy", "Service index: version, backends and the endpoint table").ok(
            200,
            "the index",
            obj(&[("service", string()), ("version", string()), ("database", string()), ("endpoints", any())]),
        ),
        Op::new("get", "/health", "healthy", "Liveness").ok(200, "alive", obj(&[("status", string())])),
        Op::new("get", "/ready", "healthy", "Readiness: database reachable and not draining")
            .ok(200, "ready", obj(&[("status", string()), ("database", string())]))
            .fails(503, "draining for shutdown or database unreachable (not_ready)"),
        Op::new("get", "/api/ping", "healthy", "The canary for unrelated-route latency")
            .ok(200, "pong", obj(&[("ping", string())])),
        Op::new("get", "/api/fast", "healthy", "A fast response").ok(
            200,
            "ok",
            obj(&[("status", string()), ("message", string()), ("timestamp", string())]),
        ),
        Op::new("get", "/api/cpu-intensive", "cpu", "Recursive fibonacci (inline or offloaded: cpu_mode)")
            .query(&[&cpu::COMPLEXITY])
            .ok(200, "computed", obj(&[("complexity", int()), ("result", int()), ("duration_ms", num()), ("mode", string())]))
            .fails(422, "invalid_parameter")
            .fails(503, "the CPU bulkhead is full (shed)"),
        Op::new("get", "/api/hash", "cpu", "Chained SHA-256")
            .query(&[&cpu::ITERATIONS])
            .ok(200, "computed", obj(&[("iterations", int()), ("hash", string()), ("duration_ms", num()), ("mode", string())]))
            .fails(422, "invalid_parameter")
            .fails(503, "the CPU bulkhead is full (shed)"),
        Op::new("get", "/api/json-processing", "cpu", "Serialize, parse and aggregate records")
            .query(&[&cpu::SIZE])
            .ok(
                200,
                "computed",
                obj(&[("size", int()), ("bytes", int()), ("sum", num()), ("average", num()), ("top_ids", array_of(int())), ("duration_ms", num()), ("mode", string())]),
            )
            .fails(422, "invalid_parameter")
            .fails(503, "the CPU bulkhead is full (shed)"),
        Op::new("get", "/api/cpu/burn", "cpu", "Burn a calibrated amount of CPU time (thread CPU clock)")
            .query(&[&cpu::BURN_MS])
            .ok(200, "burned", obj(&[("ms", int()), ("cpu_ms", num()), ("wall_ms", num()), ("mode", string())]))
            .fails(422, "invalid_parameter")
            .fails(503, "the CPU bulkhead is full (shed)"),
        Op::new("get", "/api/slow", "io", "Asynchronous sleep")
            .query(&[&io::DELAY])
            .ok(200, "slept", obj(&[("delay", num()), ("message", string())]))
            .fails(422, "invalid_parameter"),
        Op::new("get", "/api/random-delay", "io", "Asynchronous sleep of 0.5-5 s")
            .ok(200, "slept", obj(&[("delay", num()), ("message", string())])),
        Op::new("get", "/api/blocking", "io", "Blocks the async worker thread it runs on")
            .query(&[&io::DURATION])
            .ok(200, "blocked", obj(&[("duration", num()), ("message", string())]))
            .fails(422, "invalid_parameter"),
        Op::new("get", "/api/parallel-io", "io", "Concurrent simulated I/O")
            .query(&[&io::COUNT])
            .ok(
                200,
                "done",
                obj(&[("count", int()), ("results", array_of(obj(&[("operation", int()), ("delay", num())]))), ("elapsed_seconds", num()), ("sequential_seconds", num())]),
            )
            .fails(422, "invalid_parameter"),
        Op::new("get", "/api/memory-leak", "memory", "Allocate and retain memory until cleared")
            .query(&[&memory::LEAK_MB])
            .ok(
                200,
                "retained",
                obj(&[("allocated_mb", int()), ("retained_mb", int()), ("chunks", int()), ("limit_mb", int()), ("message", string())]),
            )
            .fails(422, "invalid_parameter")
            .fails(507, "the memory cap or budget would be exceeded (memory_cap)"),
        Op::new("get", "/api/memory-spike", "memory", "Allocate, hold about a second, free")
            .query(&[&memory::SPIKE_MB])
            .ok(200, "done", obj(&[("spike_mb", int()), ("held_ms", int()), ("message", string())]))
            .fails(422, "invalid_parameter")
            .fails(507, "the memory cap or budget would be exceeded (memory_cap)"),
        Op::new("post", "/api/clear-memory", "memory", "Free the retained memory")
            .ok(200, "freed", obj(&[("released_mb", int()), ("chunks", int()), ("retained_mb", int())])),
        Op::new("get", "/api/tasks", "db-pool", "List tasks, newest first")
            .query(&[&db_pool::LIMIT])
            .ok(200, "the tasks", obj(&[("count", int()), ("tasks", array_of(task.clone()))]))
            .fails(422, "invalid_parameter")
            .fails(503, pool_timeout),
        Op::new("post", "/api/tasks", "db-pool", "Insert a task")
            .query(&[&db_pool::TITLE, &db_pool::DESCRIPTION])
            .ok(200, "the new task", task)
            .fails(422, "invalid_parameter")
            .fails(503, pool_timeout)
            .fails(507, storage_full),
        Op::new("get", "/api/db/hold", "db-pool", "Hold one pooled connection")
            .query(&[&db_pool::HOLD_MS])
            .ok(200, "held", obj(&[("held_ms", int()), ("wait_ms", num()), ("pool", pool.clone())]))
            .fails(422, "invalid_parameter")
            .fails(503, pool_timeout)
            .fails(503, "db_statement_timeout_ms cut the hold short (db_statement_timeout)"),
        Op::new("get", "/api/db-pool-exhaust", "db-pool", "Concurrent queries, each holding a connection 5 s")
            .query(&[&db_pool::CONCURRENT_QUERIES])
            .ok(
                200,
                "the outcome of every query (failures included)",
                obj(&[("concurrent_queries", int()), ("succeeded", int()), ("failed", int()), ("elapsed_seconds", num()), ("pool", pool), ("queries", array_of(any()))]),
            )
            .fails(422, "invalid_parameter"),
        Op::new("get", "/api/expensive-query", "db-pool", "A heavy recursive SQL query")
            .query(&[&db_pool::QUERY_ITERATIONS])
            .ok(
                200,
                "counted",
                obj(&[("iterations", int()), ("rows", int()), ("checksum", any()), ("query_ms", num()), ("wait_ms", num())]),
            )
            .fails(422, "invalid_parameter")
            .fails(503, pool_timeout)
            .fails(503, "the query ran past db_statement_timeout_ms (db_statement_timeout)"),
        downstream_failures(
            Op::new("get", "/api/call-downstream", "downstream", "Downstream /slow?delay=3 with a timeout")
                .query(&[&downstream::TIMEOUT])
                .ok(200, "answered", obj(&[("timeout", num()), ("elapsed_ms", num()), ("downstream", any())]))
                .fails(422, "invalid_parameter"),
        ),
        Op::new("get", "/api/cascade-failure", "downstream", "Five parallel downstream calls").ok(
            200,
            "the outcome of every call (failures included)",
            obj(&[("calls", int()), ("succeeded", int()), ("failed", int()), ("timeout_seconds", int()), ("results", array_of(any()))]),
        ),
        downstream_failures(
            Op::new("get", "/api/no-timeout", "downstream", "Downstream delay of 30 s, waited for without a timeout")
                .ok(200, "answered", obj(&[("elapsed_ms", num()), ("message", string()), ("downstream", any())])),
        ),
        Op::new("get", "/api/worker-pool", "worker-pool", "Work on a fixed OS-thread pool within a deadline")
            .query(&[&worker_pool::WORK_MS, &worker_pool::MODE, &worker_pool::DEADLINE_MS])
            .param(json!({"name": "grpc-timeout", "in": "header", "required": false,
                          "description": "the deadline as gRPC sends it: digits and a unit (H, M, S, m, u, n), e.g. 500m",
                          "schema": {"type": "string", "pattern": "^[0-9]{1,8}[HMSmun]$"}}))
            .ok(
                200,
                "done within the deadline",
                obj(&[("work_ms", int()), ("mode", string()), ("queue_wait_ms", num()), ("total_ms", num()), ("deadline_ms", int())]),
            )
            .fails(422, "invalid_parameter")
            .fails(503, "the queue is full (worker_queue_max) (shed)")
            .fails(504, "the deadline passed (deadline_exceeded)"),
        downstream_failures(
            Op::new("get", "/api/deliver", "retry-storm", "One delivery through the retry policy")
                .query(&[&retry_storm::FAILURE_RATE, &retry_storm::TARGET])
                .ok(200, "delivered", obj(&[("delivered", boolean()), ("attempts", int()), ("elapsed_ms", num()), ("receiver", any())]))
                .fails(422, "invalid_parameter"),
        ),
        Op::new("post", "/api/upload", "retry-storm", "Upload 0-100 MiB, buffered or streamed")
            .query(&[&retry_storm::UPLOAD_MODE])
            .body("application/octet-stream", json!({"type": "string", "format": "binary"}), false)
            .ok(200, "hashed", obj(&[("mode", string()), ("bytes", int()), ("sha256", string())]))
            .fails(413, "above 100 MiB (payload_too_large)")
            .fails(422, "invalid_parameter")
            .fails(507, "buffering would exceed the memory cap or budget (memory_cap)"),
        Op::new("get", "/api/cold-start", "cold-start", "Work on a simulated pool provisioned on demand")
            .query(&[&cold_start::WORK_MS])
            .ok(200, "done", obj(&[("work_ms", int()), ("waited_ms", num()), ("total_ms", num())]))
            .fails(422, "invalid_parameter")
            .fails(503, "no worker could be provisioned (shed)")
            .fails(504, "gateway_timeout_ms passed (gateway_timeout)"),
        create_deployment("/api/v1/deployments/"),
        create_deployment("/api/v1/deployments"),
        Op::new("get", "/api/v1/deployments/{id}", "burst", "Read a deployment back")
            .param(path_param("id", json!({"type": "string", "format": "uuid"}), "the deployment's id"))
            .ok(200, "the deployment", deployment)
            .fails(404, "no such deployment (not_found)")
            .fails(422, "the id is not a UUID (invalid_parameter)")
            .fails(503, pool_timeout),
        Op::new("get", "/api/cache/items/{id}", "cache-stampede", "Read-through Redis cache over a slow query")
            .param(path_param(
                "id",
                json!({"type": "integer", "minimum": cache_stampede::ITEM_IDS.start(), "maximum": cache_stampede::ITEM_IDS.end()}),
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
        admin_auth(Op::new("post", "/admin/cache/flush", "cache-stampede", "Delete the lab's cache keys"))
            .ok(200, "deleted", obj(&[("deleted", int())]))
            .fails(500, "Redis failed (redis_error)")
            .fails(503, "no REDIS_URL (redis_not_configured) or no Redis connection in time (redis_pool_timeout)"),
        Op::new("get", "/admin/config", "admin", "Every knob: value, start-up value, source, range, profiles")
            .ok(200, "the configuration", config_schema()),
        admin_auth(Op::new("patch", "/admin/config", "admin", "Change knobs while the load runs"))
            .body("application/json", crate::knobs::patch_schema(), true)
            .ok(200, "applied; the new configuration", config_schema())
            .fails(409, "only start-up settings were asked for (startup_only)")
            .fails(422, "unknown knob, wrong type or out of range: every refusal is listed (invalid_knob)"),
        admin_auth(Op::new("post", "/admin/profile/{name}", "admin", "Switch every knob to a profile"))
            .param(path_param("name", json!({"type": "string", "enum": ["fragile", "hardened"]}), "the profile"))
            .ok(200, "switched; the new configuration", config_schema())
            .fails(404, "no such profile (not_found)"),
        admin_auth(Op::new("post", "/admin/reset", "admin", "Back to start-up values; retained memory freed"))
            .ok(200, "reset; the configuration", config_schema()),
        Op::new("get", "/metrics", "telemetry", "Prometheus metrics").ok_text(),
        Op::new("get", "/openapi.json", "docs", "This document").ok(200, "the OpenAPI document", json!({"type": "object"})),
        Op::new("get", "/docs", "docs", "Interactive API documentation (Swagger UI)").ok_html(),
        Op::new("get", "/docs/swagger-ui-bundle.js", "docs", "Swagger UI's script (embedded)").ok_asset("text/javascript"),
        Op::new("get", "/docs/swagger-ui.css", "docs", "Swagger UI's style sheet (embedded)").ok_asset("text/css"),
        Op::new("get", "/lab", "lab", "The live lab panel").ok_html(),
        Op::new("get", "/lab/lab.js", "lab", "The panel's script (embedded)").ok_asset("text/javascript"),
        Op::new("get", "/lab/scenarios.json", "lab", "The scenario catalog: explanation and k6 commands").ok(
            200,
            "one entry per k6 script",
            array_of(obj(&[("id", string()), ("about", string()), ("k6_fragile", string()), ("k6_hardened", string())])),
        ),
        Op::new("get", "/lab/events", "lab", "Server-sent events: one snapshot of the lab per second").ok_stream(),
    ]
}

impl Op {
    fn ok_text(mut self) -> Op {
        self.responses.insert(
            200,
            json!({"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}),
        );
        self
    }

    fn ok_html(mut self) -> Op {
        self.responses.insert(
            200,
            json!({"description": "a page", "content": {"text/html": {"schema": {"type": "string"}}}}),
        );
        self
    }

    fn ok_asset(mut self, content_type: &str) -> Op {
        self.responses.insert(
            200,
            json!({"description": "an embedded asset", "content": {content_type: {"schema": {"type": "string"}}}}),
        );
        self
    }

    fn ok_stream(mut self) -> Op {
        self.responses.insert(
            200,
            json!({"description": "an endless event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}}),
        );
        self
    }
}

/// The guard's answers, on every route it guards: from its own classification of the route.
fn with_guard(op: Op) -> Op {
    if is_exempt(op.path) {
        return op;
    }
    let op = op
        .fails(429, "above rate_limit_rps when rate_limit_enabled (rate_limited)")
        .fails(503, "max_in_flight requests already in flight (shed)");
    let group = Group::of(op.path);
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
                invalid parameters name the parameter and its range. Knobs: `GET /admin/config`.",
        },
        "tags": [
            {"name": "healthy"}, {"name": "cpu"}, {"name": "io"}, {"name": "memory"}, {"name": "db-pool"},
            {"name": "downstream"}, {"name": "worker-pool"}, {"name": "retry-storm"}, {"name": "cold-start"},
            {"name": "burst"}, {"name": "cache-stampede"}, {"name": "admin"}, {"name": "telemetry"},
            {"name": "docs"}, {"name": "lab"},
        ],
        "paths": paths,
        "components": {"schemas": {"Error": {
            "type": "object",
            "required": ["error", "detail"],
            "properties": {
                "error": {"type": "string", "description": "a stable machine-readable code"},
                "detail": {"type": "string"},
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
        assert_eq!(p["schema"]["maximum"], cpu::COMPLEXITY.max);
        let guarded = &spec["paths"]["/api/slow"]["get"]["responses"];
        assert!(guarded.get("429").is_some() && guarded.get("504").is_some());
        assert!(spec["paths"]["/health"]["get"]["responses"].get("429").is_none());
    }
}
