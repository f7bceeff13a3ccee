//! The load generator behind `chokepoint repro`, independent of the lab it loads: an open model
//! (a constant arrival rate per stage, latency measured from each request's *intended* send
//! time, so a stalled server cannot hide its queue), the verdict (the knee, the measured
//! capacity against the prediction, the first metric that saturated), and the report
//! (terminal text, `report.md`, `report.json`, `chart.svg`).
//!
//! The lab's side — which request, which stages, which metrics, what the knobs predict — is
//! the caller's: chokepoint builds a [`plan::Plan`] per scenario from its configuration.

pub mod chart;
pub mod grpc;
pub mod lab;
pub mod load;
pub mod plan;
pub mod report;
pub mod run;
pub mod verdict;
