//! One error type for every handler: each documented failure maps to one status and a JSON body
//! `{"error": code, "detail": ...}`. Infrastructure errors become 500 with their cause logged
//! (with the `source()` chain), never returned to the client.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// The `Retry-After` of a refusal that knows no better: one second.
pub const RETRY_SOON: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A query parameter is missing, malformed or out of its documented range.
    #[error("invalid parameter `{param}`: {detail}")]
    InvalidParameter {
        param: String,
        detail: String,
        range: Option<(String, String)>,
        /// The value sent (`None`: absent), echoed as FastAPI's `input`.
        input: Option<String>,
        /// Which rule it broke, for FastAPI's `type`, `msg` and `ctx`.
        rule: Rule,
    },

    /// No pooled connection became free within the acquire timeout.
    #[error("database pool exhausted: no connection within {waited:?}")]
    PoolTimeout { waited: Duration },

    /// The downstream dependency did not answer within the timeout.
    #[error("downstream timed out after {elapsed:?}")]
    DownstreamTimeout { elapsed: Duration },

    /// The downstream dependency answered with an error or could not be reached.
    #[error("downstream error: {detail}")]
    DownstreamError {
        detail: String,
        upstream_status: Option<u16>,
    },

    /// The memory safety cap or the memory budget would be exceeded.
    #[error("memory cap reached: {detail}")]
    MemoryCap {
        detail: String,
        limit_mb: u64,
        lift_with: &'static str,
    },

    /// A query ran past the statement timeout (knob `db_statement_timeout_ms`).
    #[error("statement timeout after {after:?}")]
    StatementTimeout { after: Duration },

    /// Refused at once instead of queued (load shedding, a full bulkhead, a full queue).
    /// `retry_after` is when trying again makes sense: 1 s where nothing better is known, the
    /// queue's time to drain where it is (the `Retry-After` header and `retry_after_ms`).
    #[error("shed: {detail}")]
    Shed { detail: String, retry_after: Duration },

    /// The downstream circuit breaker is open.
    #[error("circuit open: {detail}")]
    CircuitOpen { detail: String, retry_after: Duration },

    /// Above the configured request rate.
    #[error("rate limited")]
    RateLimited { retry_after: Duration },

    /// A request body above the accepted size.
    #[error("payload too large")]
    PayloadTooLarge { limit: u64 },

    /// The (simulated) gateway gave up on the request.
    #[error("gateway timeout after {after:?}")]
    GatewayTimeout { after: Duration },

    /// The request's own deadline passed (gRPC's DEADLINE_EXCEEDED).
    #[error("deadline exceeded after {after:?}")]
    DeadlineExceeded { after: Duration },

    /// The route group's request timeout expired.
    #[error("request timed out after {after:?}")]
    RequestTimeout { group: &'static str, after: Duration },

    /// A configuration change was refused: unknown knobs, wrong types, out of range, or
    /// start-up-only settings (409 when those were all it asked for).
    #[error("configuration change refused")]
    InvalidKnobs { refused: Vec<crate::knobs::Refusal> },

    /// A configuration change without the admin token.
    #[error("unauthorized: {detail}")]
    Unauthorized { detail: String },

    /// A configuration change that needs a token nobody configured.
    #[error("forbidden: {detail}")]
    Forbidden { detail: String },

    /// A dependency this endpoint needs is not configured or not reachable.
    #[error("service unavailable: {detail}")]
    Unavailable { code: &'static str, detail: String },

    #[error("not found")]
    NotFound { detail: String },

    /// A request the app cannot interpret (a malformed path segment, a body that cannot be
    /// read, conflicting headers).
    #[error("bad request: {detail}")]
    BadRequest { code: &'static str, detail: String },

    #[error("database error")]
    Database(#[from] sqlx::Error),

    /// Redis failed (the cache-stampede scenario without serve-stale).
    #[error("redis error")]
    Redis(#[from] crate::infra::redis::RedisError),

    /// The request cannot apply to the lab as it was started (e.g. link toxics without the
    /// link proxy).
    #[error("conflict: {detail}")]
    Conflict { code: &'static str, detail: String },

    /// A fault injected on purpose (src/scenarios/faults.rs): its status is the rule's.
    #[error("injected fault ({kind}): {detail}")]
    InjectedFault {
        status: StatusCode,
        kind: &'static str,
        detail: String,
        /// A response-phase fault: the status of the answer it replaced.
        replaced_status: Option<u16>,
    },

    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The rule an invalid parameter broke: FastAPI's error `type` for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Required and absent (`missing`).
    Missing,
    /// Not a number (`int_parsing` / `float_parsing`).
    NotANumber { integer: bool },
    /// Below the minimum (`greater_than_equal`).
    Below,
    /// Above the maximum (`less_than_equal`).
    Above,
    /// Text shorter than allowed (`string_too_short`).
    TooShort,
    /// Text longer than allowed (`string_too_long`).
    TooLong,
    /// Anything else (`value_error`): a word outside a choice, a malformed value.
    Other,
}

impl AppError {
    pub fn invalid(param: &str, detail: impl Into<String>) -> Self {
        AppError::InvalidParameter {
            param: param.to_string(),
            detail: detail.into(),
            range: None,
            input: None,
            rule: Rule::Other,
        }
    }

    pub fn out_of_range(param: &str, min: impl ToString, max: impl ToString, got: impl std::fmt::Display) -> Self {
        let (min, max, got) = (min.to_string(), max.to_string(), got.to_string());
        let num = |s: &str| s.trim().parse::<f64>().ok();
        let rule = match (num(&got), num(&min)) {
            (Some(g), Some(lo)) if g < lo => Rule::Below,
            (Some(_), Some(_)) => Rule::Above,
            _ => Rule::Other,
        };
        AppError::InvalidParameter {
            param: param.to_string(),
            detail: format!("`{param}` must be between {min} and {max} (got {got})"),
            range: Some((min, max)),
            input: Some(got),
            rule,
        }
    }

    pub fn internal(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        AppError::Internal(Box::new(err))
    }

    /// Stable machine-readable code used as the body's `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::InvalidParameter { .. } => "invalid_parameter",
            AppError::PoolTimeout { .. } => "db_pool_timeout",
            AppError::DownstreamTimeout { .. } => "downstream_timeout",
            AppError::DownstreamError { .. } => "downstream_error",
            AppError::MemoryCap { .. } => "memory_cap",
            AppError::StatementTimeout { .. } => "db_statement_timeout",
            AppError::Shed { .. } => "shed",
            AppError::CircuitOpen { .. } => "circuit_open",
            AppError::RateLimited { .. } => "rate_limited",
            AppError::RequestTimeout { .. } => "request_timeout",
            AppError::DeadlineExceeded { .. } => "deadline_exceeded",
            AppError::PayloadTooLarge { .. } => "payload_too_large",
            AppError::GatewayTimeout { .. } => "gateway_timeout",
            AppError::Unavailable { code, .. }
            | AppError::BadRequest { code, .. }
            | AppError::Conflict { code, .. } => code,
            AppError::NotFound { .. } => "not_found",
            AppError::InjectedFault { .. } => "injected_fault",
            AppError::InvalidKnobs { refused } if refused.iter().all(|r| r.startup_only) => "startup_only",
            AppError::InvalidKnobs { .. } => "invalid_knob",
            AppError::Unauthorized { .. } => "unauthorized",
            AppError::Forbidden { .. } => "admin_token_required",
            AppError::Database(e) => match db_failure(e) {
                DbFailure::StorageFull => "storage_full",
                DbFailure::Unreachable => "db_unavailable",
                DbFailure::Poisoned => "db_connection_poisoned",
                DbFailure::Other => "database_error",
            },
            AppError::Redis(crate::infra::redis::RedisError::PoolTimeout(_)) => "redis_pool_timeout",
            AppError::Redis(_) => "redis_error",
            AppError::Internal(_) => "internal_error",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AppError::InvalidParameter { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::PoolTimeout { .. }
            | AppError::Unavailable { .. }
            | AppError::StatementTimeout { .. }
            | AppError::Shed { .. }
            | AppError::CircuitOpen { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AppError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::RequestTimeout { .. } | AppError::DeadlineExceeded { .. } | AppError::GatewayTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            AppError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::DownstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            AppError::DownstreamError { .. } => StatusCode::BAD_GATEWAY,
            AppError::MemoryCap { .. } => StatusCode::INSUFFICIENT_STORAGE,
            AppError::NotFound { .. } => StatusCode::NOT_FOUND,
            AppError::InjectedFault { status, .. } => *status,
            AppError::Conflict { .. } => StatusCode::CONFLICT,
            AppError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            AppError::InvalidKnobs { refused } if refused.iter().all(|r| r.startup_only) => StatusCode::CONFLICT,
            AppError::InvalidKnobs { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            AppError::Forbidden { .. } => StatusCode::FORBIDDEN,
            AppError::Redis(crate::infra::redis::RedisError::PoolTimeout(_)) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Database(e) if db_failure(e) == DbFailure::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            AppError::Database(e) if db_failure(e) == DbFailure::Unreachable => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Database(_) | AppError::Redis(_) | AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn body(&self) -> Value {
        let code = self.code();
        match self {
            AppError::InvalidParameter {
                param,
                detail,
                range,
                input,
                rule,
            } => {
                // `detail` is FastAPI's list, as the original lab answered; our sentence is `message`.
                let mut body = json!({
                    "error": code,
                    "message": detail,
                    "detail": [fastapi_error(param, detail, range.as_ref(), input.as_deref(), *rule)],
                    "parameter": param,
                });
                if let Some((min, max)) = range {
                    body["range"] = json!({"min": num_or_str(min), "max": num_or_str(max)});
                }
                body
            }
            AppError::PoolTimeout { waited } => json!({
                "error": code,
                "detail": format!("no database connection became free within {} ms (acquire timeout)", waited.as_millis()),
                "waited_ms": waited.as_millis() as u64,
            }),
            AppError::DownstreamTimeout { elapsed } => json!({
                "error": code,
                "detail": format!("downstream did not answer within {} ms", elapsed.as_millis()),
                "elapsed_ms": elapsed.as_millis() as u64,
            }),
            AppError::DownstreamError {
                detail,
                upstream_status,
            } => {
                json!({"error": code, "detail": detail, "upstream_status": upstream_status})
            }
            AppError::MemoryCap {
                detail,
                limit_mb,
                lift_with,
            } => {
                json!({"error": code, "detail": detail, "limit_mb": limit_mb, "lift_with": lift_with})
            }
            AppError::StatementTimeout { after } => json!({
                "error": code,
                "detail": format!("the query ran past the {} ms statement timeout", after.as_millis()),
            }),
            AppError::Shed { detail, retry_after } | AppError::CircuitOpen { detail, retry_after } => {
                json!({"error": code, "detail": detail, "retry_after_ms": retry_after.as_millis() as u64})
            }
            AppError::RateLimited { retry_after } => json!({
                "error": code,
                "detail": "request rate above the limit (rate_limit_rps)",
                "retry_after_ms": retry_after.as_millis() as u64,
            }),
            AppError::PayloadTooLarge { limit } => json!({
                "error": code,
                "detail": format!("the body exceeds the {} MiB limit", limit / (1024 * 1024)),
                "limit_bytes": limit,
            }),
            AppError::GatewayTimeout { after } => json!({
                "error": code,
                "detail": format!("the gateway gave up after {} ms (gateway_timeout_ms); the invocation still runs", after.as_millis()),
            }),
            AppError::DeadlineExceeded { after } => json!({
                "error": code,
                "detail": format!("the request's {} ms deadline passed before its work finished", after.as_millis()),
            }),
            AppError::RequestTimeout { group, after } => json!({
                "error": code,
                "detail": format!("the {group} route group's {} ms request timeout expired", after.as_millis()),
            }),
            AppError::InvalidKnobs { refused } => {
                let detail = refused.iter().map(|r| r.detail.as_str()).collect::<Vec<_>>().join("; ");
                json!({"error": code, "detail": detail, "refused": refused})
            }
            AppError::Unavailable { detail, .. }
            | AppError::BadRequest { detail, .. }
            | AppError::Conflict { detail, .. }
            | AppError::NotFound { detail }
            | AppError::Unauthorized { detail }
            | AppError::Forbidden { detail } => {
                json!({"error": code, "detail": detail})
            }
            AppError::Database(e) => match db_failure(e) {
                DbFailure::StorageFull => json!({
                    "error": code,
                    "detail": "the database has no room left (disk or size limit full): nothing was stored",
                }),
                DbFailure::Unreachable => json!({
                    "error": code,
                    "detail": "the database is unreachable (connection refused, closed or shutting down)",
                }),
                DbFailure::Poisoned => json!({
                    "error": code,
                    "detail": "this pooled connection is inside a transaction an earlier error aborted (25P02): every query on it fails until it is recycled; an earlier request was cancelled during BEGIN and the release-time guard is off (db_skip_release_check)",
                }),
                DbFailure::Other => json!({"error": code, "detail": "the database query failed; see the server log"}),
            },
            AppError::Redis(e) => json!({"error": code, "detail": e.to_string(), "kind": e.kind()}),
            AppError::InjectedFault {
                kind,
                detail,
                replaced_status,
                ..
            } => {
                let mut body = json!({"error": code, "detail": detail, "fault": kind});
                if let Some(replaced) = replaced_status {
                    body["replaced_status"] = json!(replaced);
                }
                body
            }
            AppError::Internal(_) => json!({"error": code, "detail": "unexpected error; see the server log"}),
        }
    }
}

/// What a database error means to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbFailure {
    /// SQLite's SQLITE_FULL (disk full or `max_page_count`), PostgreSQL's 53100 `disk_full`, or
    /// ENOSPC: a write that was not stored (507 `storage_full`).
    StorageFull,
    /// The server cannot be reached or dropped the connection: refused, reset, closed, shutting
    /// down (503 `db_unavailable`), as opposed to a pool that is merely busy.
    Unreachable,
    /// PostgreSQL's 25P02: the connection is inside a transaction an earlier error aborted, and
    /// refuses every statement until it ends (the poisoned-pool scenario; 500 `db_connection_poisoned`).
    Poisoned,
    Other,
}

pub fn db_failure(e: &sqlx::Error) -> DbFailure {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code();
            match code.as_deref() {
                // SQLITE_FULL (13); PostgreSQL disk_full.
                Some("13") | Some("53100") => DbFailure::StorageFull,
                // Connection exceptions (08xxx), admin/crash shutdown, cannot connect now.
                Some(c) if c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03") => DbFailure::Unreachable,
                Some("25P02") => DbFailure::Poisoned,
                _ if db.message().contains("database or disk is full") => DbFailure::StorageFull,
                _ => DbFailure::Other,
            }
        }
        sqlx::Error::Io(io) if io.raw_os_error() == Some(libc::ENOSPC) => DbFailure::StorageFull,
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
            DbFailure::Unreachable
        }
        // sqlx reports a server that closed the socket mid-exchange as a protocol error.
        sqlx::Error::Protocol(msg) if msg.contains("closed") || msg.contains("EOF") => DbFailure::Unreachable,
        _ => DbFailure::Other,
    }
}

/// One entry of FastAPI's 422 `detail` list (pydantic v2's wording) for a query parameter.
fn fastapi_error(
    param: &str,
    message: &str,
    range: Option<&(String, String)>,
    input: Option<&str>,
    rule: Rule,
) -> Value {
    // Fault headers (`x-chokepoint-…`) are read from the request head, the rest from the query.
    let loc = json!([if param.starts_with("x-") { "header" } else { "query" }, param]);
    let (min, max) = range.map_or((Value::Null, Value::Null), |(a, b)| (num_or_str(a), num_or_str(b)));
    let (kind, msg, ctx) = match rule {
        Rule::Missing => ("missing", "Field required".to_string(), None),
        Rule::NotANumber { integer: true } => (
            "int_parsing",
            "Input should be a valid integer, unable to parse string as an integer".to_string(),
            None,
        ),
        Rule::NotANumber { integer: false } => (
            "float_parsing",
            "Input should be a valid number, unable to parse string as a number".to_string(),
            None,
        ),
        Rule::Below => (
            "greater_than_equal",
            format!("Input should be greater than or equal to {min}"),
            Some(json!({"ge": min})),
        ),
        Rule::Above => (
            "less_than_equal",
            format!("Input should be less than or equal to {max}"),
            Some(json!({"le": max})),
        ),
        Rule::TooShort => (
            "string_too_short",
            format!(
                "String should have at least {min} character{}",
                if min == json!(1) { "" } else { "s" }
            ),
            Some(json!({"min_length": min})),
        ),
        Rule::TooLong => (
            "string_too_long",
            format!("String should have at most {max} characters"),
            Some(json!({"max_length": max})),
        ),
        Rule::Other => ("value_error", message.to_string(), None),
    };
    let mut entry = json!({"type": kind, "loc": loc, "msg": msg, "input": input});
    if let Some(ctx) = ctx {
        entry["ctx"] = ctx;
    }
    entry
}

fn num_or_str(s: &str) -> Value {
    s.parse::<i64>()
        .map(Value::from)
        .or_else(|_| s.parse::<f64>().map(Value::from))
        .unwrap_or_else(|_| Value::from(s))
}

/// What an error answer was, for the edge's one log line: its code, its cause, and whether it
/// is one of the lab's documented failure modes (a pool timeout, a shed request, a breaker's
/// refusal: logged at INFO, since the metrics and the scenario expect them) or a fault of the
/// lab itself (a 500: logged at ERROR with the cause).
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: &'static str,
    pub cause: String,
    pub expected: bool,
}

/// Writes the error and its whole `source()` chain into one string for logs, each cause once:
/// a cause whose text the previous message already holds (many errors print their source in
/// their own message) is not repeated.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        push_cause(&mut parts, e.to_string());
        cur = e.source();
    }
    parts.join(": ")
}

/// [`error_chain`] for an `anyhow::Error`: its contexts, then its causes, each once (what
/// `{err:#}` prints, without the repeats).
pub fn chain_text(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        push_cause(&mut parts, cause.to_string());
    }
    parts.join(": ")
}

/// [`chain_text`], followed by a hint when the cause is a known one.
pub fn describe(err: &anyhow::Error) -> String {
    let text = chain_text(err);
    match hint(&text) {
        Some(hint) => format!("{text}\n  hint: {hint}"),
        None => text,
    }
}

fn push_cause(parts: &mut Vec<String>, cause: String) {
    let cause = cause.trim().to_string();
    if cause.is_empty() || parts.last().is_some_and(|prev| prev.contains(&cause)) {
        return;
    }
    parts.push(cause);
}

/// A next step for the causes people meet first.
pub fn hint(text: &str) -> Option<&'static str> {
    let refused = text.contains("Connection refused") || text.contains("connection refused");
    if text.contains("PostgreSQL") && refused {
        Some("is PostgreSQL running and listening there? Or unset DATABASE_URL to use the embedded SQLite database")
    } else if text.contains("PostgreSQL") && text.contains("does not exist") {
        Some("create it (createdb) or point DATABASE_URL at an existing database")
    } else if text.contains("Redis") && refused {
        Some("is Redis running there? Or unset REDIS_URL to use the in-process cache")
    } else if (text.contains("Address already in use") || text.contains("address already in use"))
        && text.contains("gRPC")
    {
        Some("another process listens on that port (another chokepoint?): stop it, or choose another with --grpc-port / GRPC_PORT (0 picks a free one, `off` serves no gRPC)")
    } else if text.contains("Address already in use") || text.contains("address already in use") {
        Some("another process listens on that port: stop it, or choose another with --port / PORT (0 picks a free one)")
    } else if text.contains("Permission denied") && text.contains("bind") {
        Some("ports below 1024 need privileges: use a port above 1024 (--port / PORT)")
    } else {
        None
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = match &self {
            AppError::PoolTimeout { .. } | AppError::Redis(crate::infra::redis::RedisError::PoolTimeout(_)) => {
                Some(Duration::from_secs(1))
            }
            AppError::RateLimited { retry_after }
            | AppError::CircuitOpen { retry_after, .. }
            | AppError::Shed { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        // Logged once, by the edge, which knows the route and the request id.
        let failure = Failure {
            code: self.code(),
            cause: error_chain(&self),
            expected: status != StatusCode::INTERNAL_SERVER_ERROR || matches!(self, AppError::InjectedFault { .. }),
        };
        let mut resp = (status, Json(self.body())).into_response();
        resp.extensions_mut().insert(failure);
        if let Some(after) = retry_after {
            // Whole seconds, rounded up, at least 1.
            let secs = after.as_millis().div_ceil(1000).max(1) as u64;
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

pub type AppResult<T> = Result<T, AppError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_body_names_parameter_and_range() {
        let err = AppError::out_of_range("complexity", 1, 40, 41);
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body = err.body();
        assert_eq!(body["error"], "invalid_parameter");
        assert_eq!(body["parameter"], "complexity");
        assert_eq!(body["range"]["min"], 1);
        assert_eq!(body["range"]["max"], 40);
    }

    #[test]
    fn error_chain_keeps_sources() {
        let io = std::io::Error::other("disk on fire");
        let err = AppError::internal(io);
        assert_eq!(error_chain(&err), "internal error: disk on fire");
    }
}
