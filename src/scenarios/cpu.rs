//! `cpu` — the CPU-stress report: 50 req/s of fib(25..35) made *unrelated* endpoints slow and
//! failed the liveness probe.
//!
//! The work runs inline on the async runtime's worker threads (`WORKER_COUNT` of them), which is
//! the fragile behaviour: while every worker computes, `/health` and `/api/ping` wait in line.
//! Metrics that move: `http_request_duration_seconds{route="/health"}`, `process_cpu_seconds_total`.

use std::hint::black_box;
use std::time::Instant;

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::error::AppResult;
use crate::params::Params;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/cpu-intensive", get(cpu_intensive))
        .route("/api/hash", get(hash))
        .route("/api/json-processing", get(json_processing))
}

/// Recursive fibonacci: exponential on purpose, `fib(30)` is about 1.6 million calls.
#[inline(never)]
pub fn fib(n: u32) -> u64 {
    if n < 2 {
        u64::from(n)
    } else {
        fib(black_box(n - 1)) + fib(black_box(n - 2))
    }
}

/// SHA-256 applied `iterations` times, each round hashing the previous digest.
pub fn chained_sha256(seed: &[u8], iterations: u32) -> [u8; 32] {
    let mut digest: [u8; 32] = Sha256::digest(seed).into();
    for _ in 1..iterations {
        digest = Sha256::digest(digest).into();
    }
    digest
}

async fn cpu_intensive(params: Params) -> AppResult<Json<Value>> {
    let complexity: u32 = params.num("complexity", 30, 1..=40)?;
    let start = Instant::now();
    let result = fib(complexity);
    Ok(Json(json!({
        "complexity": complexity,
        "result": result,
        "duration_ms": start.elapsed().as_secs_f64() * 1e3,
        "mode": "inline",
    })))
}

async fn hash(params: Params) -> AppResult<Json<Value>> {
    let iterations: u32 = params.num("iterations", 10_000, 1..=100_000)?;
    let start = Instant::now();
    let digest = chained_sha256(b"chokepoint", iterations);
    Ok(Json(json!({
        "iterations": iterations,
        "hash": hex::encode(digest),
        "duration_ms": start.elapsed().as_secs_f64() * 1e3,
    })))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    id: u32,
    name: String,
    value: f64,
    tags: Vec<String>,
}

async fn json_processing(params: Params) -> AppResult<Json<Value>> {
    let size: u32 = params.num("size", 1000, 1..=10_000)?;
    let start = Instant::now();
    let records: Vec<Record> = (0..size)
        .map(|i| Record {
            id: i,
            name: format!("item-{i}"),
            value: f64::from((i * 7919) % 1000) / 10.0,
            tags: vec![format!("group-{}", i % 10), "chokepoint".to_string()],
        })
        .collect();
    let encoded = serde_json::to_vec(&records).map_err(crate::error::AppError::internal)?;
    let mut decoded: Vec<Record> = serde_json::from_slice(&encoded).map_err(crate::error::AppError::internal)?;
    decoded.sort_by(|a, b| b.value.total_cmp(&a.value).then(a.id.cmp(&b.id)));
    let sum: f64 = decoded.iter().map(|r| r.value).sum();
    let top: Vec<u32> = decoded.iter().take(5).map(|r| r.id).collect();
    Ok(Json(json!({
        "size": size,
        "bytes": encoded.len(),
        "sum": sum,
        "average": sum / f64::from(size),
        "top_ids": top,
        "duration_ms": start.elapsed().as_secs_f64() * 1e3,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fib_is_right() {
        assert_eq!(fib(0), 0);
        assert_eq!(fib(1), 1);
        assert_eq!(fib(20), 6765);
    }

    #[test]
    fn hash_chain_differs_per_iteration() {
        assert_ne!(chained_sha256(b"x", 1), chained_sha256(b"x", 2));
        assert_eq!(chained_sha256(b"x", 1), <[u8; 32]>::from(Sha256::digest(b"x")));
    }
}
