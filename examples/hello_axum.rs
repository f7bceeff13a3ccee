//! The baseline for bench/ping.sh: the smallest axum service answering `GET /api/ping` the way
//! chokepoint does (same JSON, same runtime), without chokepoint's instrumentation (metrics,
//! tracing, request ids, the request guard). `PORT` picks the port (default 8080).

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

#[tokio::main]
async fn main() {
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8080);
    let app = Router::new().route("/api/ping", get(|| async { Json::<Value>(json!({"ping": "pong"})) }));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    axum::serve(listener, app).await.expect("serve");
}
