//! The catalog: one module per failure mode, each owning its routes, its knobs and its metrics.
//! `healthy` holds the probes and the fast routes whose latency shows when something else is
//! starving the process.

pub mod burst;
pub mod cache_stampede;
pub mod cold_start;
pub mod cpu;
pub mod db_pool;
pub mod downstream;
pub mod healthy;
pub mod io;
pub mod memory;
pub mod retry_storm;
pub mod worker_pool;
