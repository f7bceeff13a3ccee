//! The integration tests: one binary, one module per file (one file per scenario, plus the
//! cross-cutting ones), all sharing the harness in `common`. One binary links the crate once
//! (instead of once per file) and packs the tests onto the test threads.
//!
//! `cargo test --release` runs them all; `cargo test --release --test scenarios db_pool::` runs
//! one file's. Tests that measure the whole test process (its RSS, latency under its own CPU
//! load) run alone: `common::spawn_app_alone`.

mod common;

mod adaptive_limit;
mod admin;
mod api_surface;
mod burst;
mod cache_stampede;
mod cold_start;
mod connection_leak;
mod cpu;
mod db_pool;
mod db_replicas;
mod downstream;
mod faults;
mod io;
mod memory;
mod openapi_lab;
mod panel;
mod poisoned_pool;
mod pool_too_big;
mod recovery;
mod reliability;
mod repro;
mod retry_storm;
mod shutdown;
mod slow_link;
mod startup;
mod telemetry;
mod worker_pool;
mod worker_pool_grpc;
