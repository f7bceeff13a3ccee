//! What one run sends and watches: the request, the stages of offered load, the metrics that
//! show saturation, and the prediction the verdict compares the measurement with.

use serde_json::Value;

/// One request the load generator sends: an HTTP request to the lab's address, or a unary gRPC
/// call to its gRPC port (`grpc`).
#[derive(Debug, Clone)]
pub struct Target {
    pub method: reqwest::Method,
    /// The HTTP path and query; for a gRPC call, its method path (`/package.Service/Method`).
    pub path: String,
    pub body: Option<&'static str>,
    /// Sent over gRPC instead of HTTP, to the port the lab's `GET /` names under `grpc`.
    pub grpc: Option<GrpcCall>,
}

/// A unary gRPC call: its request message, already encoded, and the deadline it carries.
#[derive(Debug, Clone)]
pub struct GrpcCall {
    /// The encoded protobuf request.
    pub message: bytes::Bytes,
    /// Sent as `grpc-timeout`.
    pub deadline: std::time::Duration,
    /// What the report shows for the message (`work_ms=100`).
    pub shown: String,
}

impl Target {
    pub fn get(path: impl Into<String>) -> Target {
        Target {
            method: reqwest::Method::GET,
            path: path.into(),
            body: None,
            grpc: None,
        }
    }

    /// A POST with a JSON body.
    pub fn post(path: impl Into<String>, body: &'static str) -> Target {
        Target {
            method: reqwest::Method::POST,
            body: Some(body),
            ..Target::get(path)
        }
    }

    /// A unary gRPC call to `method` (`/package.Service/Method`).
    pub fn grpc(method: &str, message: Vec<u8>, deadline: std::time::Duration, shown: impl Into<String>) -> Target {
        Target {
            method: reqwest::Method::POST,
            path: method.into(),
            body: None,
            grpc: Some(GrpcCall {
                message: message.into(),
                deadline,
                shown: shown.into(),
            }),
        }
    }

    /// The request as the report shows it: `GET /api/x?y=1`, or
    /// `gRPC /pkg.Service/Method {work_ms=100} deadline 2000 ms`.
    pub fn describe(&self) -> String {
        match &self.grpc {
            None => format!("{} {}", self.method, self.path),
            Some(call) => format!(
                "gRPC {} {{{}}} deadline {} ms",
                self.path,
                call.shown,
                call.deadline.as_millis()
            ),
        }
    }
}

/// A gauge or counter read from `/metrics` while a stage runs.
#[derive(Debug, Clone, Copy)]
pub struct Watch {
    /// The series as `/metrics` prints it (name and labels).
    pub series: &'static str,
    /// Shown in the report.
    pub label: &'static str,
    /// A counter: the report shows its increase over the stage; a gauge: its maximum.
    pub counter: bool,
    /// Above this value the metric says "saturated" (a capacity set by knobs is resolved by
    /// the plan, which knows the lab's configuration).
    pub saturated_above: f64,
}

impl Watch {
    /// A gauge: the report shows its maximum over the stage.
    pub const fn gauge(series: &'static str, label: &'static str, saturated_above: f64) -> Watch {
        Watch {
            series,
            label,
            counter: false,
            saturated_above,
        }
    }

    /// A counter: the report shows its increase over the stage.
    pub const fn counter(series: &'static str, label: &'static str, saturated_above: f64) -> Watch {
        Watch {
            series,
            label,
            counter: true,
            saturated_above,
        }
    }
}

/// What the knobs predict.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Prediction {
    /// Successful requests per second the resource can serve, when the scenario has one.
    pub capacity_rps: Option<f64>,
    /// The arithmetic, in words.
    pub formula: String,
    /// What should happen past it, per the profile's knobs.
    pub expect: String,
}

/// Requests in flight at most by default ([`Plan::max_in_flight`]).
pub const MAX_IN_FLIGHT: u64 = 2_000;

/// Everything `repro` needs to run one scenario.
pub struct Plan {
    pub target: Target,
    /// Knobs set (after the profile) before the run, to keep it short and the numbers small.
    pub knobs: Value,
    /// Offered rates, req/s.
    pub rates: Vec<f64>,
    pub watches: Vec<Watch>,
    /// A light request stream beside the load whose latency shows collateral damage.
    pub canary: Option<&'static str>,
    /// Called once before each stage (e.g. flush the cache).
    pub before_stage: Option<(reqwest::Method, &'static str)>,
    /// Waited before the first stage (e.g. warm workers finishing their own cold start).
    pub settle: std::time::Duration,
    /// Called once after the last stage (e.g. free retained memory).
    pub after_run: Option<(reqwest::Method, &'static str)>,
    /// Requests in flight at most; beyond it a request is not sent and counts as `dropped`
    /// (the generator's own safety cap: bounded tasks and sockets).
    pub max_in_flight: u64,
    /// A counter of the lab's that counts completed work, when an answer is not the work done
    /// (an async 202 only promises it): its increase over the stage per second is the stage's
    /// goodput. `None`: the work is done when the answer is a success (goodput = throughput).
    pub completed: Option<&'static str>,
    /// Sweep a knob instead of the rate: before stage `i` the run sets `knob` to `values[i]`
    /// (live, through `PATCH /admin/config`), and `rates[i]` stays the offered load. The
    /// report's x axis is then the knob (pool-too-big sweeps the pool at one rate).
    pub sweep: Option<Sweep>,
}

/// A knob swept across a run's stages ([`Plan::sweep`]).
#[derive(Debug, Clone)]
pub struct Sweep {
    pub knob: &'static str,
    pub values: Vec<f64>,
}

impl Plan {
    /// A plan that sends `GET /api/ping` at no rate, having set `knobs`: the scenario fills in
    /// the rest.
    pub fn new(knobs: Value) -> Plan {
        Plan {
            target: Target::get("/api/ping"),
            knobs,
            rates: vec![],
            watches: vec![],
            canary: None,
            before_stage: None,
            settle: std::time::Duration::ZERO,
            after_run: None,
            max_in_flight: MAX_IN_FLIGHT,
            completed: None,
            sweep: None,
        }
    }
}
