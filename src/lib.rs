//! chokepoint: a deliberately fragile backend that reproduces production collapses on demand.
//!
//! [`App::build`] assembles the service from settings (binding its own listener, so port 0
//! works), and [`App::run_until_stopped`] serves it until a shutdown signal, draining in-flight
//! requests within the grace period. The binary and the tests build the very same app.

pub mod admin;
pub mod apidoc;
pub mod catalog;
pub mod cli;
pub mod downstream;
pub mod edge;
pub mod error;
pub mod grpc;
pub mod infra;
pub mod knobs;
pub mod lab;
pub mod lifecycle;
pub mod openapi;
pub mod params;
pub mod proto;
pub mod repro;
pub mod resilience;
pub mod scenarios;
pub mod server;
pub mod settings;
pub mod startup;
pub mod state;
pub mod telemetry;

pub use startup::{router, App};
pub use state::{AppState, AppStateInner};
