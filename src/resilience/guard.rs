//! The request guard in front of every scenario route: rate limiting (429), global load
//! shedding (503 + `Retry-After` past `max_in_flight`) and a request timeout per route group.
//! Probes (`/health`, `/ready`), `/metrics` and `/admin` are never guarded: an operator must
//! always be able to see and fix the system.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use crate::error::AppError;
use crate::knobs::ConcurrencyLimit;
use crate::knobs::Knobs;
use crate::resilience::adaptive::{self, Limits};
use crate::resilience::bulkhead::{Bulkhead, Permit};
use crate::telemetry::register;

/// Route groups that share a request timeout. Each route declares its group with its OpenAPI
/// operation (`Op::guard`, in its scenario's module); the guard is handed that route map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Cpu,
    Io,
    Db,
    Downstream,
    Other,
}

impl Group {
    pub fn as_str(self) -> &'static str {
        match self {
            Group::Cpu => "cpu",
            Group::Io => "io",
            Group::Db => "db",
            Group::Downstream => "downstream",
            Group::Other => "other",
        }
    }

    fn timeout(self, k: &Knobs) -> Option<Duration> {
        let ms = match self {
            Group::Cpu => k.request_timeout_cpu_ms,
            Group::Io => k.request_timeout_io_ms,
            Group::Db => k.request_timeout_db_ms,
            Group::Downstream => k.request_timeout_downstream_ms,
            Group::Other => 0,
        };
        (ms > 0).then(|| Duration::from_millis(ms))
    }
}

/// Routes no mitigation may touch.
pub fn is_exempt(route: &str) -> bool {
    matches!(route, "/health" | "/ready" | "/metrics" | "/openapi.json")
        || route.starts_with("/admin")
        || route.starts_with("/docs")
        || route.starts_with("/lab")
}

struct Limiter {
    rps: u32,
    burst: u32,
    limiter: DefaultDirectRateLimiter,
}

pub struct Guard {
    /// Route template → group, from the scenarios' operations; other routes are `Other`.
    routes: HashMap<&'static str, Group>,
    in_flight: Arc<Bulkhead>,
    /// The adaptive limits of the db and cpu groups (`concurrency_limit`).
    pub limits: Limits,
    limiter: ArcSwap<Limiter>,
    shed: IntCounterVec,
    rate_limited: IntCounter,
    timeouts: IntCounterVec,
}

fn limiter(rps: u32, burst: u32) -> Limiter {
    let quota = Quota::per_second(NonZeroU32::new(rps.max(1)).expect("max(1) is non-zero"))
        .allow_burst(NonZeroU32::new(burst.max(1)).expect("max(1) is non-zero"));
    Limiter {
        rps,
        burst,
        limiter: RateLimiter::direct(quota),
    }
}

impl Guard {
    pub fn new(routes: HashMap<&'static str, Group>, registry: &Registry) -> Self {
        let mut guard = Self::register_all(registry);
        guard.routes = routes;
        // Present from the start, so dashboards and rate() see zero rather than nothing.
        for reason in ["in_flight", "cpu", "concurrency_limit"] {
            guard.shed.with_label_values(&[reason]);
        }
        for group in [Group::Cpu, Group::Io, Group::Db, Group::Downstream] {
            guard.timeouts.with_label_values(&[group.as_str()]);
        }
        guard
    }

    fn register_all(registry: &Registry) -> Self {
        Self {
            routes: HashMap::new(),
            in_flight: Bulkhead::new(None),
            limits: Limits::new(registry),
            limiter: ArcSwap::from_pointee(limiter(100, 200)),
            shed: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "requests_shed_total",
                        "Requests refused with 503 instead of queued, by reason",
                    ),
                    &["reason"],
                )
                .unwrap(),
            ),
            rate_limited: register(
                registry,
                IntCounter::new(
                    "requests_rate_limited_total",
                    "Requests refused with 429 by the rate limiter",
                )
                .unwrap(),
            ),
            timeouts: register(
                registry,
                IntCounterVec::new(
                    Opts::new("request_timeouts_total", "Requests cut by their route group's timeout"),
                    &["group"],
                )
                .unwrap(),
            ),
        }
    }

    /// Counts a request refused by a bulkhead somewhere else (CPU pool, downstream calls).
    pub fn count_shed(&self, reason: &str) {
        self.shed.with_label_values(&[reason]).inc();
    }

    fn rate_check(&self, k: &Knobs) -> Result<(), Duration> {
        let current = self.limiter.load();
        let current = if current.rps != k.rate_limit_rps || current.burst != k.rate_limit_burst {
            self.limiter
                .store(Arc::new(limiter(k.rate_limit_rps, k.rate_limit_burst)));
            self.limiter.load()
        } else {
            current
        };
        current
            .limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// What an admitted request holds until its response is ready: its in-flight slot, and its
/// group's adaptive-limit slot when `concurrency_limit` is on (its latency is sampled on drop).
pub struct Held {
    _in_flight: Permit,
    _limit: Option<adaptive::Permit>,
}

/// What the guard decided for one request.
pub enum Admission {
    /// Exempt route: no limit, no timeout.
    Exempt,
    /// Admitted: hold the permit until the response is ready; cut the request at `timeout`.
    Admitted {
        permit: Held,
        group: Group,
        timeout: Option<Duration>,
        /// The group's adaptive limit to enter before the route runs ([`Guard::enter_limit`]).
        limit: Option<(ConcurrencyLimit, Arc<adaptive::Limit>)>,
    },
    /// Refused at once (429 rate limited, 503 shed).
    Refused(Response),
}

impl Guard {
    /// Rate limit, then shed, then pick the group's timeout. Synchronous and allocation-free on
    /// the admitted path, so the edge layer decides before it calls the route.
    pub fn admit(&self, knobs: &Knobs, route: Option<&str>) -> Admission {
        let group = match route {
            Some(r) if is_exempt(r) => return Admission::Exempt,
            Some(r) => self.routes.get(r).copied().unwrap_or(Group::Other),
            None => Group::Other,
        };
        if knobs.rate_limit_enabled {
            if let Err(wait) = self.rate_check(knobs) {
                self.rate_limited.inc();
                return Admission::Refused(AppError::RateLimited { retry_after: wait }.into_response());
            }
        }
        let Some(permit) = self.in_flight.try_enter(knobs.max_in_flight) else {
            self.count_shed("in_flight");
            return Admission::Refused(
                AppError::Shed {
                    retry_after: crate::error::RETRY_SOON,
                    detail: format!("{} requests already in flight (max_in_flight)", knobs.max_in_flight),
                }
                .into_response(),
            );
        };
        let limit = match (knobs.concurrency_limit, group) {
            (ConcurrencyLimit::Fixed, _) => None,
            (algo, Group::Db) => Some((algo, &self.limits.db)),
            (algo, Group::Cpu) => Some((algo, &self.limits.cpu)),
            _ => None,
        };
        Admission::Admitted {
            permit: Held {
                _in_flight: permit,
                _limit: None,
            },
            group,
            timeout: group.timeout(knobs),
            limit: limit.map(|(algo, l)| (algo, l.clone())),
        }
    }

    /// Enters the group's adaptive limit (waiting briefly for a slot) and keeps its permit in
    /// `held`; the 503 to answer instead when the limit and its short queue are full.
    pub async fn enter_limit(
        &self,
        held: &mut Held,
        group: Group,
        (algo, limit): (ConcurrencyLimit, Arc<adaptive::Limit>),
    ) -> Result<(), Response> {
        match limit.enter_or_wait(algo).await {
            Some(p) => {
                held._limit = Some(p);
                Ok(())
            }
            None => {
                self.count_shed("concurrency_limit");
                Err(AppError::Shed {
                    retry_after: crate::error::RETRY_SOON,
                    detail: format!(
                        "{} {} requests already in flight and as many waiting: the adaptive limit found from their \
                         latency (concurrency_limit)",
                        limit.current(),
                        group.as_str()
                    ),
                }
                .into_response())
            }
        }
    }

    /// The answer for a request cut by its group's timeout (and the count of it).
    pub fn timed_out(&self, group: Group, after: Duration) -> Response {
        self.timeouts.with_label_values(&[group.as_str()]).inc();
        AppError::RequestTimeout {
            group: group.as_str(),
            after,
        }
        .into_response()
    }
}
