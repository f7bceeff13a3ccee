//! One error type for every handler: each documented failure maps to one status and a JSON body
//! `{"error": code, "detail": ...}`. Infrastructure errors become 500 with their cause logged
//! (with the `source()` chain), never returned to the client.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A query parameter is missing, malformed or out of its documented range.
    #[error("invalid parameter `{param}`: {detail}")]
    InvalidParameter {
        param: String,
        detail: String,
        range: Option<(String, String)>,
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

    /// The memory safety cap would be exceeded.
    #[error("memory cap reached: {detail}")]
    MemoryCap { detail: String, limit_mb: u64 },

    /// A dependency this endpoint needs is not configured or not reachable.
    #[error("service unavailable: {detail}")]
    Unavailable { code: &'static str, detail: String },

    #[error("not found")]
    NotFound { detail: String },

    #[error("database error")]
    Database(#[from] sqlx::Error),

    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl AppError {
    pub fn invalid(param: &str, detail: impl Into<String>) -> Self {
        AppError::InvalidParameter {
            param: param.to_string(),
            detail: detail.into(),
            range: None,
        }
    }

    pub fn out_of_range(param: &str, min: impl ToString, max: impl ToString, got: impl std::fmt::Display) -> Self {
        let (min, max) = (min.to_string(), max.to_string());
        AppError::InvalidParameter {
            param: param.to_string(),
            detail: format!("`{param}` must be between {min} and {max} (got {got})"),
            range: Some((min, max)),
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
            AppError::Unavailable { code, .. } => code,
            AppError::NotFound { .. } => "not_found",
            AppError::Database(_) => "database_error",
            AppError::Internal(_) => "internal_error",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AppError::InvalidParameter { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::PoolTimeout { .. } | AppError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AppError::DownstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            AppError::DownstreamError { .. } => StatusCode::BAD_GATEWAY,
            AppError::MemoryCap { .. } => StatusCode::INSUFFICIENT_STORAGE,
            AppError::NotFound { .. } => StatusCode::NOT_FOUND,
            AppError::Database(_) | AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn body(&self) -> Value {
        let code = self.code();
        match self {
            AppError::InvalidParameter { param, detail, range } => {
                let mut body = json!({"error": code, "detail": detail, "parameter": param});
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
            AppError::MemoryCap { detail, limit_mb } => {
                json!({"error": code, "detail": detail, "limit_mb": limit_mb, "lift_with": "MEMORY_LEAK_LIMIT_MB"})
            }
            AppError::Unavailable { detail, .. } | AppError::NotFound { detail } => {
                json!({"error": code, "detail": detail})
            }
            AppError::Database(_) => json!({"error": code, "detail": "the database query failed; see the server log"}),
            AppError::Internal(_) => json!({"error": code, "detail": "unexpected error; see the server log"}),
        }
    }
}

fn num_or_str(s: &str) -> Value {
    s.parse::<i64>()
        .map(Value::from)
        .or_else(|_| s.parse::<f64>().map(Value::from))
        .unwrap_or_else(|_| Value::from(s))
}

/// Writes the error and its whole `source()` chain into one string for logs.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() && !matches!(self, AppError::Unavailable { .. }) {
            tracing::warn!(error = %error_chain(&self), code = self.code(), "request failed");
        }
        let mut resp = (status, Json(self.body())).into_response();
        if let AppError::PoolTimeout { .. } = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
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
