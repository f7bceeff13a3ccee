//! `faults` — injected faults on any route group, the way podinfo, QuickPizza, Chaos Monkey and
//! fortio inject them, with a count of every one and the cure beside it.
//!
//! A **rule** per guard group (`cpu`, `io`, `db`, `downstream`, `other`), optionally narrowed to
//! some of the group's route templates, set live with `PUT /admin/faults/{group}`:
//! - `delay`: `300ms`, or fortio's weighted list `150ms:10,2s:5` (10% wait 150 ms, 5% wait 2 s,
//!   the rest none), plus `jitter` (a uniform extra wait up to it). The wait runs inside the
//!   group's request timeout, so the hardened timeouts cut it (the cure);
//! - `error`: `503@20%` (or `503:20,429:10`): answered before the handler runs;
//! - `abort`: `10%`: the connection is reset (RST) without an answer;
//! - `response`: `500@100%` or `reset@50%`: a **response-phase fault**. The handler runs and its
//!   write commits, then the client gets a 500 or a reset instead of the answer. A client that
//!   retries without an `Idempotency-Key` creates the deployment twice (the burst scenario's
//!   `POST /api/v1/deployments/` shows it; with the key the retry is replayed);
//! - `fail_first` (+ `fail_first_status`, 503): the rule's first N requests fail, then it recovers.
//!
//! Per request, QuickPizza-style headers do the same (`x-chokepoint-delay: 300ms`,
//! `x-chokepoint-error: 503@20%`, `x-chokepoint-abort`, `x-chokepoint-response`,
//! `x-chokepoint-jitter`), honoured only while the knob `fault_headers_allowed` is on (off in both
//! profiles); while it is off, an answer to a request that sent them says so in
//! `x-chokepoint-fault-headers`. A header replaces the rule's fault of the same kind.
//!
//! The observer routes (`/health`, `/ready`, `/metrics`, `/admin`, `/docs`, `/lab`) are never
//! faulted. Every injected answer carries `x-chokepoint-fault: <kind>` and the body code
//! `injected_fault`, and is counted apart from real failures in
//! `faults_injected_total{group,kind}`; `faults_active{group,kind}` is 1 while a rule holds that
//! kind (the `FaultInjectionActive` alert reads it, so nobody debugs an injected failure as a real
//! one).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::apidoc::{admin_auth, array_of, obj, path_param, string, Op};
use crate::error::{AppError, AppResult};
use crate::knobs::Knobs;
use crate::params::parse_duration;
use crate::resilience::guard::Group;
use crate::scenarios::{Alert, Panel, Scenario};
use crate::state::AppState;
use crate::telemetry::register;

pub const SCENARIO: Scenario = crate::scenarios::scenario!("faults", "injected latency, errors, resets and response-phase faults on any route group", without routes)
    .no_repro("an injected fault has no capacity to sweep: the share of failed answers is the \
                 rule's rate at every load, and its cure is the caller's (an Idempotency-Key, a \
                 timeout, a bounded retry), not a profile; load-tests/faults.js shows the duplicates \
                 and the key that prevents them")
    .dashboard(DASHBOARD)
    .alerts(ALERTS);

/// Its row of the Grafana dashboard (k8s/monitoring/grafana-dashboard.json).
const DASHBOARD: &[Panel] = &[
    Panel {
        title: "Injected faults/s by group and kind",
        unit: "reqps",
        targets: &[(
            "sum by (group, kind) (rate(faults_injected_total[1m]))",
            "{{group}} {{kind}}",
        )],
        description: "Failures made on purpose (rules in /admin/faults, or allowed headers): not real ones.",
    },
    Panel {
        title: "Fault rules set",
        unit: "short",
        targets: &[(
            "sum by (group, kind) (max by (group, kind) (faults_active))",
            "{{group}} {{kind}}",
        )],
        description: "1 while a rule of that kind is set on the group.",
    },
    Panel {
        title: "Connections reset by a fault/s",
        unit: "short",
        targets: &[(
            "sum(rate(http_connections_closed_total{reason=\"fault_reset\"}[1m]))",
            "resets/s",
        )],
        description: "",
    },
];

/// The alerts that fire on its collapse (k8s/monitoring/alerts.rules.yml).
const ALERTS: &[Alert] = &[
    Alert {
        name: "FaultInjectionActive",
        expr: "max by (instance, group, kind) (faults_active) > 0",
        for_: "10m",
        severity: "info",
        summary: "Faults are injected on the {{ $labels.group }} routes ({{ $labels.kind }}) of {{ $labels.instance }}",
        description: "A fault rule has been set for 10 minutes: failures on this group are injected (faults_injected_total, x-chokepoint-fault), not real. DELETE /admin/faults clears every rule.",
    },
];

/// The groups a rule can target, in the order `GET /admin/faults` lists them.
pub const GROUPS: [Group; 5] = [Group::Cpu, Group::Io, Group::Db, Group::Downstream, Group::Other];

/// What a fault did, as `faults_injected_total`'s `kind` label and `x-chokepoint-fault` say.
pub const KINDS: [&str; 6] = [
    "delay",
    "error",
    "abort",
    "fail_first",
    "response_error",
    "response_reset",
];

/// The per-request headers, honoured while `fault_headers_allowed` is on.
pub const HEADER_DELAY: HeaderName = HeaderName::from_static("x-chokepoint-delay");
pub const HEADER_JITTER: HeaderName = HeaderName::from_static("x-chokepoint-jitter");
pub const HEADER_ERROR: HeaderName = HeaderName::from_static("x-chokepoint-error");
pub const HEADER_ABORT: HeaderName = HeaderName::from_static("x-chokepoint-abort");
pub const HEADER_RESPONSE: HeaderName = HeaderName::from_static("x-chokepoint-response");
const HEADERS: [HeaderName; 5] = [HEADER_DELAY, HEADER_JITTER, HEADER_ERROR, HEADER_ABORT, HEADER_RESPONSE];

/// On every injected answer: which kind of fault made it.
pub const HEADER_FAULT: HeaderName = HeaderName::from_static("x-chokepoint-fault");
/// On an answer whose request sent fault headers while they are not allowed.
pub const HEADER_IGNORED: HeaderName = HeaderName::from_static("x-chokepoint-fault-headers");

fn group_index(group: Group) -> usize {
    GROUPS.iter().position(|g| *g == group).unwrap_or(GROUPS.len() - 1)
}

fn parse_group(name: &str) -> AppResult<Group> {
    GROUPS.iter().copied().find(|g| g.as_str() == name).ok_or_else(|| {
        AppError::invalid(
            "group",
            format!("`group` must be one of cpu, io, db, downstream, other (got `{name}`)"),
        )
    })
}

// ---------------------------------------------------------------------------------------------
// The grammar shared by the admin body and the headers.

/// A list of outcomes, each with the percent of requests it takes; the rest get none.
#[derive(Debug, Clone, PartialEq)]
pub struct Weighted<T> {
    pub items: Vec<(T, f64)>,
}

impl<T: Copy> Weighted<T> {
    /// `VALUE`, `VALUE@P%` or `VALUE:P`, comma-separated; a lone `VALUE` takes every request.
    fn parse(param: &str, text: &str, value: impl Fn(&str) -> Option<T>, syntax: &str) -> AppResult<Self> {
        let bad = |why: String| AppError::invalid(param, format!("`{param}`: {why}; expected {syntax}"));
        let parts: Vec<&str> = text.split(',').map(str::trim).collect();
        if text.trim().is_empty() || parts.len() > 16 {
            return Err(bad(format!("`{text}` is empty or lists more than 16 outcomes")));
        }
        let mut items = Vec::with_capacity(parts.len());
        for part in &parts {
            let (v, pct) = match part.split_once('@').or_else(|| part.split_once(':')) {
                Some((v, p)) => {
                    let p = p.trim().trim_end_matches('%').trim();
                    let pct: f64 = p
                        .parse()
                        .ok()
                        .filter(|x: &f64| x.is_finite() && *x > 0.0 && *x <= 100.0)
                        .ok_or_else(|| bad(format!("percent `{p}` is not a number in (0, 100]")))?;
                    (v.trim(), pct)
                }
                None if parts.len() == 1 => (part.trim(), 100.0),
                None => return Err(bad(format!("`{part}` has no percent (a list needs one per outcome)"))),
            };
            let v = value(v).ok_or_else(|| bad(format!("`{v}` is not allowed")))?;
            items.push((v, pct));
        }
        let sum: f64 = items.iter().map(|(_, p)| p).sum();
        if sum > 100.0 + 1e-9 {
            return Err(bad(format!("the percents add up to {sum}, more than 100")));
        }
        Ok(Self { items })
    }

    fn sample(&self, rng: &mut impl Rng) -> Option<T> {
        let mut roll = rng.random::<f64>() * 100.0;
        for (v, p) in &self.items {
            if roll < *p {
                return Some(*v);
            }
            roll -= p;
        }
        None
    }
}

fn parse_status(text: &str, min: u16) -> Option<StatusCode> {
    let code: u16 = text.trim().parse().ok()?;
    (min..=599)
        .contains(&code)
        .then(|| StatusCode::from_u16(code).ok())
        .flatten()
}

/// What a response-phase fault does once the handler has answered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum After {
    Status(StatusCode),
    Reset,
}

const DELAY_SYNTAX: &str =
    "`300ms`, `2s` or a weighted list `150ms:10,2s:5` (durations 0 to 60s, percents adding up to at most 100)";
const JITTER_SYNTAX: &str = "a duration from `0ms` to `60s`";
const ERROR_SYNTAX: &str =
    "`503`, `503@20%` or `503:20,429:10` (statuses 400 to 599, percents adding up to at most 100)";
const RESPONSE_SYNTAX: &str = "`500@100%`, `reset@50%` or `500:20,reset:10` (statuses 500 to 599 or `reset`)";

fn parse_delay(param: &str, t: &str) -> AppResult<Weighted<Duration>> {
    Weighted::parse(param, t, parse_duration, DELAY_SYNTAX)
}

fn parse_jitter(param: &str, t: &str) -> AppResult<Duration> {
    parse_duration(t).ok_or_else(|| AppError::invalid(param, format!("`{param}`: `{t}`; expected {JITTER_SYNTAX}")))
}

fn parse_error(param: &str, t: &str) -> AppResult<Weighted<StatusCode>> {
    Weighted::parse(param, t, |v| parse_status(v, 400), ERROR_SYNTAX)
}

fn parse_abort(param: &str, t: &str) -> AppResult<f64> {
    let p = t.trim().trim_end_matches('%').trim();
    p.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && (0.0..=100.0).contains(x))
        .ok_or_else(|| AppError::out_of_range(param, "0%", "100%", t))
}

fn parse_response(param: &str, t: &str) -> AppResult<Weighted<After>> {
    let value = |v: &str| {
        if v.eq_ignore_ascii_case("reset") {
            Some(After::Reset)
        } else {
            parse_status(v, 500).map(After::Status)
        }
    };
    Weighted::parse(param, t, value, RESPONSE_SYNTAX)
}

// ---------------------------------------------------------------------------------------------
// Rules.

/// A rule as the admin API takes and shows it: each fault in the header grammar.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_first: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_first_status: Option<u16>,
    /// Only these route templates of the group (all of them when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<String>>,
}

/// The largest `fail_first`.
pub const MAX_FAIL_FIRST: u64 = 1_000_000;

/// One group's rule, parsed.
#[derive(Debug)]
pub struct Rule {
    spec: RuleSpec,
    delay: Option<Weighted<Duration>>,
    jitter: Duration,
    error: Option<Weighted<StatusCode>>,
    abort: f64,
    response: Option<Weighted<After>>,
    fail_first: u64,
    fail_first_status: StatusCode,
    routes: Option<Vec<String>>,
    /// Requests the rule has seen: the first `fail_first` of them fail.
    seen: AtomicU64,
    set_at_ms: u64,
}

impl Rule {
    fn parse(spec: RuleSpec, group: Group, group_routes: &[&str]) -> AppResult<Rule> {
        let delay = spec.delay.as_deref().map(|t| parse_delay("delay", t)).transpose()?;
        let jitter = spec.jitter.as_deref().map(|t| parse_jitter("jitter", t)).transpose()?;
        let error = spec.error.as_deref().map(|t| parse_error("error", t)).transpose()?;
        let abort = spec.abort.as_deref().map(|t| parse_abort("abort", t)).transpose()?;
        let response = spec
            .response
            .as_deref()
            .map(|t| parse_response("response", t))
            .transpose()?;
        let fail_first = spec.fail_first.unwrap_or(0);
        if fail_first > MAX_FAIL_FIRST {
            return Err(AppError::out_of_range("fail_first", 0, MAX_FAIL_FIRST, fail_first));
        }
        let status = spec.fail_first_status.unwrap_or(503);
        let fail_first_status = parse_status(&status.to_string(), 400)
            .ok_or_else(|| AppError::out_of_range("fail_first_status", 400, 599, status))?;
        if let Some(routes) = &spec.routes {
            if let Some(bad) = routes.iter().find(|r| !group_routes.contains(&r.as_str())) {
                return Err(AppError::invalid(
                    "routes",
                    format!(
                        "`{bad}` is not a route template of the {} group; its routes: {}",
                        group.as_str(),
                        group_routes.join(", ")
                    ),
                ));
            }
        }
        if delay.is_none() && error.is_none() && abort.is_none() && response.is_none() && fail_first == 0 {
            return Err(AppError::invalid(
                "rule",
                "a rule needs at least one of delay, error, abort, response, fail_first (DELETE the group's rule to clear it)",
            ));
        }
        Ok(Rule {
            delay,
            jitter: jitter.unwrap_or(Duration::ZERO),
            error,
            abort: abort.unwrap_or(0.0),
            response,
            fail_first,
            fail_first_status,
            routes: spec.routes.clone(),
            spec,
            seen: AtomicU64::new(0),
            set_at_ms: now_ms(),
        })
    }

    /// The kinds of fault this rule can inject (for `faults_active`).
    fn kinds(&self) -> Vec<&'static str> {
        let mut kinds = Vec::new();
        if self.delay.is_some() || self.jitter > Duration::ZERO {
            kinds.push("delay");
        }
        if self.error.is_some() {
            kinds.push("error");
        }
        if self.abort > 0.0 {
            kinds.push("abort");
        }
        if self.fail_first > 0 {
            kinds.push("fail_first");
        }
        if let Some(r) = &self.response {
            if r.items.iter().any(|(a, _)| matches!(a, After::Status(_))) {
                kinds.push("response_error");
            }
            if r.items.iter().any(|(a, _)| *a == After::Reset) {
                kinds.push("response_reset");
            }
        }
        kinds
    }

    fn applies_to(&self, route: &str) -> bool {
        self.routes.as_ref().is_none_or(|r| r.iter().any(|x| x == route))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What to do to one request: decided by the edge before it calls the route.
#[derive(Debug, Default)]
pub struct Decision {
    pub group: &'static str,
    /// Answer this instead of running the route (error, fail_first, abort).
    pub refuse: Option<Response>,
    /// Wait this long before running the route (inside the group's timeout).
    pub delay: Option<Duration>,
    /// What to do to the route's answer.
    pub after: Option<After>,
    /// The request sent fault headers that the knob does not allow.
    pub headers_ignored: bool,
}

/// Marks an answer that must not be written: the connection is reset instead (src/server.rs).
#[derive(Debug, Clone, Copy)]
pub struct Abort;

/// The status the metrics and the log record for a reset connection (nginx's "connection closed
/// without response").
pub const ABORTED: u16 = 444;

/// The rules of every group, their counters, and the metrics.
pub struct Faults {
    rules: ArcSwap<[Option<Arc<Rule>>; 5]>,
    /// Route templates of each group (a rule's `routes` must be among them).
    routes: [Vec<&'static str>; 5],
    injected: IntCounterVec,
    active: IntGaugeVec,
}

impl Faults {
    pub fn new(route_groups: &HashMap<&'static str, Group>, registry: &Registry) -> Self {
        let injected = register(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "faults_injected_total",
                    "Faults injected on purpose (by rule or header), by route group and kind; never counted as real failures",
                ),
                &["group", "kind"],
            )
            .unwrap(),
        );
        let active = register(
            registry,
            IntGaugeVec::new(
                Opts::new(
                    "faults_active",
                    "1 while a fault rule of this kind is set on the route group",
                ),
                &["group", "kind"],
            )
            .unwrap(),
        );
        let mut routes: [Vec<&'static str>; 5] = Default::default();
        for (route, group) in route_groups {
            routes[group_index(*group)].push(route);
        }
        for (i, group) in GROUPS.iter().enumerate() {
            routes[i].sort_unstable();
            for kind in KINDS {
                // Present from the start, so rate() and the alert see zero rather than nothing.
                injected.with_label_values(&[group.as_str(), kind]);
                active.with_label_values(&[group.as_str(), kind]).set(0);
            }
        }
        Self {
            rules: ArcSwap::from_pointee(Default::default()),
            routes,
            injected,
            active,
        }
    }

    fn count(&self, group: &str, kind: &str) {
        self.injected.with_label_values(&[group, kind]).inc();
    }

    /// The edge's question for an admitted request: `None` (the common case: no rule, no
    /// headers) costs one atomic load and a header lookup. A header the knob allows but cannot
    /// be read is a 422 naming it.
    pub fn decide(&self, knobs: &Knobs, group: Group, route: &str, headers: &HeaderMap) -> Option<Decision> {
        let rules = self.rules.load();
        let rule = rules[group_index(group)].as_ref().filter(|r| r.applies_to(route));
        let sent_headers = HEADERS.iter().any(|h| headers.contains_key(h));
        if rule.is_none() && !sent_headers {
            return None;
        }
        let g = group.as_str();
        let mut d = Decision {
            group: g,
            ..Decision::default()
        };
        let mut delay = rule.and_then(|r| r.delay.clone());
        let mut jitter = rule.map_or(Duration::ZERO, |r| r.jitter);
        let mut error = rule.and_then(|r| r.error.clone());
        let mut abort = rule.map_or(0.0, |r| r.abort);
        let mut response = rule.and_then(|r| r.response.clone());
        if sent_headers && !knobs.fault_headers_allowed {
            d.headers_ignored = true;
        } else if sent_headers {
            let header = |name: &HeaderName| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
            let parsed = (|| -> AppResult<()> {
                if let Some(t) = header(&HEADER_DELAY) {
                    delay = Some(parse_delay(HEADER_DELAY.as_str(), t)?);
                }
                if let Some(t) = header(&HEADER_JITTER) {
                    jitter = parse_jitter(HEADER_JITTER.as_str(), t)?;
                }
                if let Some(t) = header(&HEADER_ERROR) {
                    error = Some(parse_error(HEADER_ERROR.as_str(), t)?);
                }
                if let Some(t) = header(&HEADER_ABORT) {
                    abort = parse_abort(HEADER_ABORT.as_str(), t)?;
                }
                if let Some(t) = header(&HEADER_RESPONSE) {
                    response = Some(parse_response(HEADER_RESPONSE.as_str(), t)?);
                }
                Ok(())
            })();
            if let Err(e) = parsed {
                d.refuse = Some(e.into_response());
                return Some(d);
            }
        }
        let mut rng = rand::rng();
        if let Some(rule) = rule {
            if rule.fail_first > 0 && rule.seen.fetch_add(1, Ordering::Relaxed) < rule.fail_first {
                self.count(g, "fail_first");
                let detail = format!(
                    "fault injected on the {g} group: the rule's first {} requests fail (fail_first), then it recovers",
                    rule.fail_first
                );
                d.refuse = Some(injected(rule.fail_first_status, "fail_first", detail, None));
                return Some(d);
            }
        }
        if abort > 0.0 && rng.random::<f64>() * 100.0 < abort {
            self.count(g, "abort");
            d.refuse = Some(aborted("abort"));
            return Some(d);
        }
        if let Some(status) = error.as_ref().and_then(|e| e.sample(&mut rng)) {
            self.count(g, "error");
            let detail = format!(
                "fault injected on the {g} group: answered {} before the route ran",
                status.as_u16()
            );
            d.refuse = Some(injected(status, "error", detail, None));
            return Some(d);
        }
        let wait = delay
            .as_ref()
            .and_then(|w| w.sample(&mut rng))
            .unwrap_or(Duration::ZERO)
            + if jitter > Duration::ZERO {
                Duration::from_micros(rng.random_range(0..=jitter.as_micros() as u64))
            } else {
                Duration::ZERO
            };
        if wait > Duration::ZERO {
            self.count(g, "delay");
            d.delay = Some(wait);
        }
        d.after = response.as_ref().and_then(|r| r.sample(&mut rng));
        Some(d)
    }

    /// The route's answer after a response-phase fault (counted here, when it fires).
    pub fn after(&self, group: &str, after: After, resp: Response) -> Response {
        match after {
            After::Reset => {
                self.count(group, "response_reset");
                aborted("response_reset")
            }
            After::Status(status) => {
                self.count(group, "response_error");
                let replaced = resp.status().as_u16();
                let detail = format!(
                    "fault injected on the {group} group after the route ran: its answer ({replaced}) was replaced by {}; whatever it wrote is committed",
                    status.as_u16()
                );
                injected(status, "response_error", detail, Some(replaced))
            }
        }
    }

    fn set(&self, group: Group, rule: Option<Arc<Rule>>) {
        let i = group_index(group);
        let g = group.as_str();
        let kinds = rule.as_ref().map(|r| r.kinds()).unwrap_or_default();
        for kind in KINDS {
            self.active
                .with_label_values(&[g, kind])
                .set(kinds.contains(&kind) as i64);
        }
        self.rules.rcu(|current| {
            let mut next = (**current).clone();
            next[i] = rule.clone();
            next
        });
    }

    /// Clears every rule (`DELETE /admin/faults`, `POST /admin/reset`).
    pub fn clear(&self) {
        for group in GROUPS {
            self.set(group, None);
        }
    }

    /// The rules in force, as `GET /admin/faults` and the panel show them.
    pub fn view(&self, knobs: &Knobs) -> FaultsView {
        let rules = self.rules.load();
        let groups = GROUPS
            .iter()
            .enumerate()
            .map(|(i, group)| {
                let g = group.as_str();
                let injected = KINDS
                    .iter()
                    .map(|k| (k.to_string(), self.injected.with_label_values(&[g, k]).get()))
                    .filter(|(_, n)| *n > 0)
                    .collect();
                let rule = rules[i].as_ref().map(|r| RuleView {
                    spec: r.spec.clone(),
                    kinds: r.kinds().into_iter().map(String::from).collect(),
                    fail_first_remaining: r.fail_first.saturating_sub(r.seen.load(Ordering::Relaxed)),
                    set_at_ms: r.set_at_ms,
                });
                GroupView {
                    group: g.to_string(),
                    routes: self.routes[i].iter().map(|r| r.to_string()).collect(),
                    rule,
                    injected,
                }
            })
            .collect();
        FaultsView {
            headers_allowed: knobs.fault_headers_allowed,
            headers: HEADERS.iter().map(|h| h.as_str().to_string()).collect(),
            groups,
        }
    }
}

/// An injected answer: JSON like every error, marked as injected.
fn injected(status: StatusCode, kind: &'static str, detail: String, replaced: Option<u16>) -> Response {
    let mut resp = AppError::InjectedFault {
        status,
        kind,
        detail,
        replaced_status: replaced,
    }
    .into_response();
    resp.headers_mut().insert(HEADER_FAULT, HeaderValue::from_static(kind));
    resp
}

/// The stand-in answer for a reset: never written (src/server.rs resets the connection).
fn aborted(kind: &'static str) -> Response {
    let mut resp = Response::new(axum::body::Body::empty());
    *resp.status_mut() = StatusCode::from_u16(ABORTED).expect("444 is a valid status");
    resp.headers_mut().insert(HEADER_FAULT, HeaderValue::from_static(kind));
    resp.extensions_mut().insert(Abort);
    resp
}

/// `GET /admin/faults`.
#[derive(Debug, Serialize, Deserialize)]
pub struct FaultsView {
    /// The knob `fault_headers_allowed`.
    pub headers_allowed: bool,
    /// The per-request headers it allows.
    pub headers: Vec<String>,
    pub groups: Vec<GroupView>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct GroupView {
    pub group: String,
    /// The group's route templates.
    pub routes: Vec<String>,
    pub rule: Option<RuleView>,
    /// Faults injected on the group since start-up, by kind (kinds with none left out).
    pub injected: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RuleView {
    #[serde(flatten)]
    pub spec: RuleSpec,
    pub kinds: Vec<String>,
    /// Of `fail_first`, the requests still to fail.
    pub fail_first_remaining: u64,
    pub set_at_ms: u64,
}

// ---------------------------------------------------------------------------------------------
// The admin routes (guarded by the admin token like the rest of /admin).

/// The admin routes' OpenAPI operations (listed with the other observer surfaces).
pub fn admin_operations() -> Vec<Op> {
    let text = |d: &str| json!({"type": "string", "description": d});
    let rule = json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "delay": text(DELAY_SYNTAX),
            "jitter": text(JITTER_SYNTAX),
            "error": text(ERROR_SYNTAX),
            "abort": text("a percent of requests from 0 to 100, `10%`: the connection is reset"),
            "response": text(RESPONSE_SYNTAX),
            "fail_first": {"type": "integer", "minimum": 0, "maximum": MAX_FAIL_FIRST},
            "fail_first_status": {"type": "integer", "minimum": 400, "maximum": 599, "default": 503},
            "routes": array_of(string()),
        },
    });
    let view = obj(&[
        ("headers_allowed", json!({"type": "boolean"})),
        ("headers", array_of(string())),
        ("groups", array_of(json!({"type": "object"}))),
    ]);
    let group = || {
        path_param(
            "group",
            json!({"type": "string", "enum": GROUPS.iter().map(|g| g.as_str()).collect::<Vec<_>>()}),
            "the route group (the request guard's)",
        )
    };
    vec![
        Op::new("get", "/admin/faults", "Fault rules per route group, each group's routes, faults injected so far")
            .tag("admin")
            .ok(200, "the rules", view.clone()),
        admin_auth(Op::new("delete", "/admin/faults", "Clear every fault rule").tag("admin")).ok(
            200,
            "cleared; the rules",
            view.clone(),
        ),
        admin_auth(
            Op::new(
                "put",
                "/admin/faults/{group}",
                "Set the group's fault rule: delay, error, abort, response-phase fault, fail-first (docs/scenarios/faults.md)",
            )
            .tag("admin"),
        )
        .param(group())
        .body("application/json", rule, true)
        .ok(200, "set; the rules", view.clone())
        .fails(422, "a field out of its range or syntax, an unknown group or route, or an empty rule (invalid_parameter)"),
        admin_auth(Op::new("delete", "/admin/faults/{group}", "Clear the group's fault rule").tag("admin"))
            .param(group())
            .ok(200, "cleared; the rules", view)
            .fails(422, "no such group (invalid_parameter)"),
    ]
}

pub fn admin_router() -> Router<AppState> {
    Router::new()
        .route("/admin/faults", get(list).delete(clear_all))
        .route("/admin/faults/{group}", put(set_rule).delete(clear_rule))
}

async fn list(State(state): State<AppState>) -> Json<FaultsView> {
    Json(state.faults.view(&state.knobs.current()))
}

async fn set_rule(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(group): Path<String>,
    body: axum::body::Bytes,
) -> AppResult<Json<FaultsView>> {
    crate::admin::authorize(&state, &headers)?;
    let group = parse_group(&group)?;
    let spec: RuleSpec = serde_json::from_slice(&body).map_err(|e| {
        AppError::invalid(
            "body",
            format!(
                "a JSON object with delay, jitter, error, abort, response, fail_first, fail_first_status, routes: {e}"
            ),
        )
    })?;
    let rule = Rule::parse(spec, group, &state.faults.routes[group_index(group)])?;
    tracing::warn!(group = group.as_str(), rule = ?rule.spec, "fault rule set: failures on this group are injected");
    state.faults.set(group, Some(Arc::new(rule)));
    Ok(Json(state.faults.view(&state.knobs.current())))
}

async fn clear_rule(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(group): Path<String>,
) -> AppResult<Json<FaultsView>> {
    crate::admin::authorize(&state, &headers)?;
    let group = parse_group(&group)?;
    state.faults.set(group, None);
    tracing::info!(group = group.as_str(), "fault rule cleared");
    Ok(Json(state.faults.view(&state.knobs.current())))
}

async fn clear_all(State(state): State<AppState>, headers: HeaderMap) -> AppResult<Json<FaultsView>> {
    crate::admin::authorize(&state, &headers)?;
    state.faults.clear();
    tracing::info!("every fault rule cleared");
    Ok(Json(state.faults.view(&state.knobs.current())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_lists_parse_like_fortio_and_quickpizza() {
        let d = parse_delay("delay", "150ms:10,2s:5").unwrap();
        assert_eq!(
            d.items,
            vec![(Duration::from_millis(150), 10.0), (Duration::from_secs(2), 5.0)]
        );
        assert_eq!(
            parse_delay("delay", "300ms").unwrap().items,
            vec![(Duration::from_millis(300), 100.0)]
        );
        let e = parse_error("error", "503@20%").unwrap();
        assert_eq!(e.items, vec![(StatusCode::SERVICE_UNAVAILABLE, 20.0)]);
        let r = parse_response("response", "500:20,reset:10").unwrap();
        assert_eq!(
            r.items,
            vec![
                (After::Status(StatusCode::INTERNAL_SERVER_ERROR), 20.0),
                (After::Reset, 10.0)
            ]
        );
        assert_eq!(parse_abort("abort", "10%").unwrap(), 10.0);
    }

    #[test]
    fn bad_values_name_the_parameter_and_the_syntax() {
        for (param, text) in [
            ("delay", "61s"),
            ("delay", "300"),
            ("delay", "150ms:60,2s:50"),
            ("delay", "150ms,2s"),
            ("error", "200@10%"),
            ("error", "503@0%"),
            ("response", "404"),
            ("abort", "101%"),
        ] {
            let err = match param {
                "delay" => parse_delay(param, text).map(|_| ()),
                "error" => parse_error(param, text).map(|_| ()),
                "response" => parse_response(param, text).map(|_| ()),
                _ => parse_abort(param, text).map(|_| ()),
            }
            .unwrap_err();
            let AppError::InvalidParameter { param: p, detail, .. } = err else {
                panic!("{param} {text}: not an invalid parameter");
            };
            assert_eq!(p, param);
            assert!(!detail.is_empty());
        }
    }

    #[test]
    fn sampling_follows_the_percents() {
        let w = parse_error("error", "503:20,429:10").unwrap();
        let mut rng = rand::rng();
        let n = 20_000;
        let (mut a, mut b) = (0, 0);
        for _ in 0..n {
            match w.sample(&mut rng) {
                Some(StatusCode::SERVICE_UNAVAILABLE) => a += 1,
                Some(_) => b += 1,
                None => {}
            }
        }
        let (fa, fb) = (a as f64 / n as f64, b as f64 / n as f64);
        assert!((0.18..0.22).contains(&fa), "{fa}");
        assert!((0.08..0.12).contains(&fb), "{fb}");
    }
}
