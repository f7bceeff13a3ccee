//! The OpenAPI operations, as each scenario declares its own: the `Op` builder and the schema
//! helpers. [`crate::openapi`] assembles the document from every scenario's operations
//! ([`crate::scenarios::ALL`]) and the observer surfaces'; the guard's route map and the `GET /`
//! index come from the same operations.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::params::QueryParam;
use crate::resilience::guard::Group;

pub fn int() -> Value {
    json!({"type": "integer"})
}
pub fn num() -> Value {
    json!({"type": "number"})
}
pub fn string() -> Value {
    json!({"type": "string"})
}
pub fn boolean() -> Value {
    json!({"type": "boolean"})
}
pub fn nullable(t: &str) -> Value {
    json!({"type": [t, "null"]})
}
pub fn any() -> Value {
    json!({})
}
pub fn array_of(items: Value) -> Value {
    json!({"type": "array", "items": items})
}
pub fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// An object whose listed properties are all required; other properties are allowed.
pub fn obj(props: &[(&str, Value)]) -> Value {
    let required: Vec<&str> = props.iter().map(|(n, _)| *n).collect();
    let properties: Map<String, Value> = props.iter().map(|(n, v)| (n.to_string(), v.clone())).collect();
    json!({"type": "object", "required": required, "properties": properties})
}

/// One operation of the spec.
pub struct Op {
    pub method: &'static str,
    pub path: &'static str,
    /// The scenario's id (set from the catalog) or the observer surface's name.
    pub tag: &'static str,
    /// The guard's group: which request timeout applies (routes under `/admin`, `/docs`,
    /// `/lab` and the probes are never guarded at all: [`crate::resilience::guard::is_exempt`]).
    pub group: Group,
    pub summary: &'static str,
    pub params: Vec<Value>,
    pub body: Option<Value>,
    pub responses: BTreeMap<u16, Value>,
}

impl Op {
    pub fn new(method: &'static str, path: &'static str, summary: &'static str) -> Op {
        Op {
            method,
            path,
            tag: "",
            group: Group::Other,
            summary,
            params: Vec::new(),
            body: None,
            responses: BTreeMap::new(),
        }
    }

    /// The guard group whose request timeout applies to this route.
    pub fn guard(mut self, group: Group) -> Op {
        self.group = group;
        self
    }

    pub fn tag(mut self, tag: &'static str) -> Op {
        self.tag = tag;
        self
    }

    pub fn query(mut self, params: &[&dyn QueryParam]) -> Op {
        self.params.extend(params.iter().map(|p| p.openapi()));
        self
    }

    pub fn param(mut self, p: Value) -> Op {
        self.params.push(p);
        self
    }

    pub fn body(mut self, content_type: &str, schema: Value, required: bool) -> Op {
        self.body = Some(json!({"required": required, "content": {content_type: {"schema": schema}}}));
        self
    }

    /// A JSON success (or any non-error) answer.
    pub fn ok(mut self, status: u16, description: &str, schema: Value) -> Op {
        self.responses.insert(
            status,
            json!({"description": description, "content": {"application/json": {"schema": schema}}}),
        );
        self
    }

    /// A documented failure: the shared error body.
    pub fn fails(mut self, status: u16, description: &str) -> Op {
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

    pub fn to_json(&self) -> Value {
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

pub fn path_param(name: &str, schema: Value, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": schema, "description": description})
}

impl Op {
    pub fn ok_text(mut self) -> Op {
        self.responses.insert(
            200,
            json!({"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}),
        );
        self
    }

    pub fn ok_html(mut self) -> Op {
        self.responses.insert(
            200,
            json!({"description": "a page", "content": {"text/html": {"schema": {"type": "string"}}}}),
        );
        self
    }

    pub fn ok_asset(mut self, content_type: &str) -> Op {
        self.responses.insert(
            200,
            json!({"description": "an embedded asset", "content": {content_type: {"schema": {"type": "string"}}}}),
        );
        self
    }

    pub fn ok_stream(mut self) -> Op {
        self.responses.insert(
            200,
            json!({"description": "an endless event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}}),
        );
        self
    }
}

/// The database routes' 503.
pub const POOL_TIMEOUT: &str =
    "no pooled connection within db_pool_timeout_ms (db_pool_timeout), or the database is unreachable (db_unavailable)";

/// The writing routes' 507.
pub const STORAGE_FULL: &str = "the database has no room left: nothing was stored (storage_full)";

/// The answers of a route that calls the downstream dependency.
pub fn downstream_failures(op: Op) -> Op {
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
}

/// A write under `/admin`: the token header and its refusals.
pub fn admin_auth(op: Op) -> Op {
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
