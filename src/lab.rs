//! `GET /lab`: the live panel for workshops. One page, embedded in the binary (no CDN), fed by
//! `GET /lab/events`: server-sent events carrying one snapshot of the lab per second.
//!
//! Rates, error rates and gauges are read from the same Prometheus registry `/metrics` serves, so
//! the panel shows what a dashboard would: per route group (the scenario that owns the route)
//! requests/s, error rate (5xx, 429 and 499) and the requests whose client gave up (499) per
//! second; the pool, queue, memory and breaker gauges; every knob's value; and the knobs that
//! changed since the previous snapshot (the charts draw those as markers). The percentiles are
//! exact, not interpolated from buckets: the edge records every request's latency into an HDR
//! histogram per group ([`LatencyWindows`]) while a panel is open, and p50/p95/p99/max cover the
//! last [`WINDOW_SECONDS`] seconds.
//!
//! One sampler task per process starts with the first subscriber and stops when the state is
//! dropped; each snapshot is serialised once and shared by every subscriber.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::{Stream, StreamExt};
use hdrhistogram::Histogram;
use prometheus::proto::MetricFamily;
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use crate::knobs::{Knobs, Profile};
use crate::scenarios::{Reading, ALL};
use crate::state::{AppState, AppStateInner};

const LAB_HTML: &str = include_str!("../assets/lab.html");
const LAB_JS: &[u8] = include_bytes!("../assets/lab.js");

/// How often a snapshot is taken.
pub const INTERVAL: Duration = Duration::from_secs(1);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/lab", get(page))
        .route("/lab/lab.js", get(script))
        .route("/lab/events", get(events))
        .route("/lab/scenarios.json", get(scenarios))
        .route("/lab/uplot.js", get(uplot_js))
        .route("/lab/uplot.css", get(uplot_css))
        .route("/lab/run", get(crate::repro::panel::status))
        .route("/lab/run/stop", post(crate::repro::panel::stop))
        .route("/lab/run/{scenario}", post(crate::repro::panel::start))
}

const UPLOT_JS: &[u8] = include_bytes!("../assets/vendor/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &[u8] = include_bytes!("../assets/vendor/uplot/uPlot.min.css");

async fn uplot_js() -> Response {
    crate::openapi::static_asset("text/javascript; charset=utf-8", UPLOT_JS)
}

async fn uplot_css() -> Response {
    crate::openapi::static_asset("text/css; charset=utf-8", UPLOT_CSS)
}

async fn page() -> Html<&'static str> {
    Html(LAB_HTML)
}

async fn script() -> Response {
    crate::openapi::static_asset("text/javascript; charset=utf-8", LAB_JS)
}

/// The catalog, each repro marked with why this lab cannot run it, if it cannot
/// (`cannot_run_here`: the panel's Break it / Fix it buttons stay off and say why).
async fn scenarios(State(state): State<AppState>) -> axum::Json<Value> {
    let mut list = SCENARIOS.clone();
    for (entry, s) in list.as_array_mut().into_iter().flatten().zip(ALL) {
        let why = s.repro.as_ref().ok().and_then(|r| r.cannot_run_here(&state));
        entry["cannot_run_here"] = json!(why);
    }
    axum::Json(list)
}

/// The stream ends when the server starts draining, so an open panel never holds a shutdown
/// for the grace period.
async fn events(State(state): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = state.lab.subscribe(&state);
    let draining = state.lifecycle.draining();
    let stream = futures::stream::unfold((rx, true), |(mut rx, first)| async move {
        if !first && rx.changed().await.is_err() {
            return None;
        }
        let data = rx.borrow_and_update().clone();
        Some((Ok(Event::default().event("snapshot").data(data.as_str())), (rx, false)))
    })
    .take_until(draining);
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// The sampler's shared output, and the latency windows the edge feeds.
pub struct Lab {
    tx: watch::Sender<Arc<String>>,
    started: Mutex<bool>,
    pub latency: LatencyWindows,
    /// Break it / Fix it: the panel's own load.
    pub runs: crate::repro::panel::PanelRuns,
}

impl Default for Lab {
    fn default() -> Self {
        Lab {
            tx: watch::channel(Arc::new(String::from("{}"))).0,
            started: Mutex::new(false),
            latency: LatencyWindows::default(),
            runs: Default::default(),
        }
    }
}

/// Seconds of requests the panel's percentiles cover.
pub const WINDOW_SECONDS: usize = 5;

/// Every request's latency per group, exactly (an HDR histogram at two significant digits, so
/// within 1%), for the panel's percentiles. Recording starts with the panel's first subscriber:
/// a lab nobody watches pays one relaxed atomic load per request.
pub struct LatencyWindows {
    watching: AtomicBool,
    /// The second being filled, one histogram per group (in [`groups`]' order).
    current: Vec<Mutex<Histogram<u64>>>,
}

impl Default for LatencyWindows {
    fn default() -> Self {
        LatencyWindows {
            watching: AtomicBool::new(false),
            current: groups().iter().map(|_| Mutex::new(new_histogram())).collect(),
        }
    }
}

/// 1 µs to 10 minutes, two significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 2).expect("valid bounds")
}

impl LatencyWindows {
    /// Records one answered request of `route` (observer routes are not shown).
    pub fn record(&self, route: &str, latency: Duration) {
        if !self.watching.load(Ordering::Relaxed) {
            return;
        }
        let Some(i) = group_index(route) else { return };
        if let Some(h) = self.current.get(i) {
            let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1);
            h.lock().unwrap_or_else(|p| p.into_inner()).saturating_record(micros);
        }
    }

    /// The second just ended, per group; the next one starts empty.
    fn take(&self) -> Vec<Histogram<u64>> {
        self.current
            .iter()
            .map(|h| std::mem::replace(&mut *h.lock().unwrap_or_else(|p| p.into_inner()), new_histogram()))
            .collect()
    }
}

/// The position in [`groups`] of a route's group; None for observer routes.
fn group_index(route: &str) -> Option<usize> {
    let group = group_of(route)?;
    groups().iter().position(|g| *g == group)
}

/// The panel group of a route template: the scenario that owns it, `other` for the rest, None
/// for the observer routes (not shown).
fn group_of(route: &str) -> Option<&'static str> {
    match crate::scenarios::route_scenarios().get(route) {
        Some(id) => Some(id),
        None if crate::resilience::guard::is_exempt(route) => None,
        None => Some("other"),
    }
}

impl Lab {
    fn subscribe(&self, state: &AppState) -> watch::Receiver<Arc<String>> {
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        if !*started {
            *started = true;
            self.latency.watching.store(true, Ordering::Relaxed);
            let weak = Arc::downgrade(&state.0);
            let mut sampler = Sampler::default();
            // The first snapshot now, so a new page has numbers at once.
            self.tx.send_replace(Arc::new(sampler.sample(state).to_string()));
            state.lifecycle.spawn_background(run(weak, sampler));
        }
        self.tx.subscribe()
    }
}

async fn run(weak: Weak<AppStateInner>, mut sampler: Sampler) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        let state = AppState(inner);
        let snapshot = sampler.sample(&state).to_string();
        state.lab.tx.send_replace(Arc::new(snapshot));
    }
}

/// The groups shown: every scenario with routes, in the catalog's order, then `other` (the
/// observer surfaces' own traffic is not shown).
pub fn groups() -> &'static [&'static str] {
    static GROUPS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
        crate::scenarios::with_routes()
            .map(|s| s.id)
            .chain(std::iter::once("other"))
            .collect()
    });
    &GROUPS
}

/// Cumulative counts of one group at one instant.
#[derive(Default, Clone)]
struct Totals {
    requests: f64,
    errors: f64,
    /// Requests whose client gave up before the answer (status 499).
    abandoned: f64,
    /// Work completed: successful answers that did the work (not a 202, which only promises
    /// it), plus the async deployments the workers created (the goodput).
    completed: f64,
}

#[derive(Default)]
pub struct Sampler {
    prev: Option<(std::time::Instant, HashMap<String, Totals>)>,
    prev_knobs: Option<Value>,
    prev_profile: Option<&'static str>,
    /// The last [`WINDOW_SECONDS`] seconds of latencies, one histogram per group each.
    windows: VecDeque<Vec<Histogram<u64>>>,
}

/// Three significant digits (1.53 ms, 15.3 ms, 1530 ms): what the histogram's precision and a
/// reader's eye support.
fn significant(ms: f64) -> f64 {
    if ms <= 0.0 {
        return 0.0;
    }
    let scale = 10f64.powi(2 - ms.log10().floor() as i32);
    (ms * scale).round() / scale
}

/// The chart markers for one second's knob changes: `knob before → after` each, or, when most
/// of them are a profile's values (a switch, perhaps followed within the second by a few knobs
/// set on top, as a panel run does), `profile → hardened` and then only the knobs that differ
/// from the profile.
fn markers(
    store: &crate::knobs::KnobStore,
    changed: &[(&String, &Value, &Value)],
    prev_profile: Option<&'static str>,
) -> Vec<String> {
    let each = |c: &[&(&String, &Value, &Value)]| -> Vec<String> {
        c.iter()
            .map(|(k, b, a)| format!("{k} {} → {}", shown(b), shown(a)))
            .collect()
    };
    if changed.len() > 1 {
        for p in [Profile::Fragile, Profile::Hardened] {
            if prev_profile == Some(p.as_str()) {
                continue;
            }
            let values = serde_json::to_value(store.profile_keeping_startup(p).0).unwrap_or(Value::Null);
            let (by_profile, extra): (Vec<_>, Vec<_>) =
                changed.iter().partition(|(k, _, a)| values.get(k.as_str()) == Some(*a));
            if by_profile.len() > 1 && extra.len() * 2 < changed.len() {
                let mut out = vec![format!("profile → {}", p.as_str())];
                out.extend(each(&extra));
                return out;
            }
        }
    }
    each(&changed.iter().collect::<Vec<_>>())
}

/// A knob's value as a marker shows it: strings without quotes.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Sampler {
    pub fn sample(&mut self, state: &AppState) -> Value {
        state.db.refresh_gauges();
        state.cache.refresh_gauges();
        let families = state.registry.gather();
        let now = std::time::Instant::now();
        let totals = group_totals(&families);
        // The latency windows: the second just ended joins, the oldest beyond the window leaves.
        if self.prev.is_some() {
            self.windows.push_back(state.lab.latency.take());
        } else {
            state.lab.latency.take();
        }
        while self.windows.len() > WINDOW_SECONDS {
            self.windows.pop_front();
        }
        let mut by_group = Map::new();
        for (gi, &g) in groups().iter().enumerate() {
            let cur = totals.get(g).cloned().unwrap_or_default();
            let (rps, error_rate, abandoned_rps, completed_rps) = match &self.prev {
                Some((at, prev)) => {
                    let secs = now.duration_since(*at).as_secs_f64().max(1e-3);
                    let before = prev.get(g).cloned().unwrap_or_default();
                    let n = (cur.requests - before.requests).max(0.0);
                    let errors = (cur.errors - before.errors).max(0.0);
                    let abandoned = (cur.abandoned - before.abandoned).max(0.0);
                    let completed = (cur.completed - before.completed).max(0.0);
                    (
                        n / secs,
                        if n > 0.0 { errors / n } else { 0.0 },
                        abandoned / secs,
                        completed / secs,
                    )
                }
                None => (0.0, 0.0, 0.0, 0.0),
            };
            let mut window = new_histogram();
            for second in &self.windows {
                if let Some(h) = second.get(gi) {
                    let _ = window.add(h);
                }
            }
            let q = |q: f64| (!window.is_empty()).then(|| significant(window.value_at_quantile(q) as f64 / 1e3));
            by_group.insert(
                g.to_string(),
                json!({"rps": (rps * 100.0).round() / 100.0, "error_rate": (error_rate * 1e4).round() / 1e4,
                       "p50_ms": q(0.5), "p95_ms": q(0.95), "p99_ms": q(0.99),
                       "max_ms": (!window.is_empty()).then(|| significant(window.max() as f64 / 1e3)),
                       "window_requests": window.len(),
                       "abandoned_rps": (abandoned_rps * 100.0).round() / 100.0,
                       "completed_rps": (completed_rps * 100.0).round() / 100.0}),
            );
        }
        self.prev = Some((now, totals));

        let knobs = state.knobs.current();
        let knob_values = serde_json::to_value(&*knobs).unwrap_or(Value::Null);
        let profile = profile_of(&state.knobs, &knobs);
        let changed: Vec<(&String, &Value, &Value)> = match (&self.prev_knobs, knob_values.as_object()) {
            (Some(Value::Object(before)), Some(after)) => after
                .iter()
                .filter_map(|(k, v)| {
                    let b = before.get(k)?;
                    (b != v).then_some((k, b, v))
                })
                .collect(),
            _ => Vec::new(),
        };
        let changes = markers(&state.knobs, &changed, self.prev_profile);
        self.prev_knobs = Some(knob_values.clone());
        self.prev_profile = Some(profile);
        let gauges: Map<String, Value> = ALL
            .iter()
            .flat_map(|s| s.gauges)
            .map(|g| {
                let v = gauge(&families, g.metric, g.labels);
                let shown = match g.reading {
                    Reading::Value => json!(v),
                    Reading::MiB => json!(v.map(|b| (b / 1048576.0 * 10.0).round() / 10.0)),
                    Reading::BreakerState => json!(match v {
                        Some(1.0) => "open",
                        Some(2.0) => "half_open",
                        Some(_) => "closed",
                        None => "unknown",
                    }),
                };
                (g.key.to_string(), shown)
            })
            .collect();
        let saturated = saturation(&gauges);
        json!({
            "t": chrono::Utc::now().timestamp_millis(),
            "saturated": saturated,
            "groups": by_group,
            "gauges": gauges,
            "profile": profile,
            "knobs": knob_values,
            "changes": changes,
            "run": state.lab.runs.status(),
            "faults": active_faults(state, &knobs),
        })
    }
}

/// The fault rules in force (src/scenarios/faults.rs) and the sick links (src/scenarios/slow_link.rs),
/// for the panel's "Injected faults" card: failures it shows there are made on purpose.
fn active_faults(state: &AppState, knobs: &Knobs) -> Value {
    let view = state.faults.view(knobs);
    let rules: Vec<Value> = view
        .groups
        .into_iter()
        .filter_map(|g| {
            let rule = g.rule?;
            Some(json!({
                "group": g.group,
                "rule": rule.spec,
                "kinds": rule.kinds,
                "fail_first_remaining": rule.fail_first_remaining,
                "injected": g.injected.values().sum::<u64>(),
            }))
        })
        .collect();
    let links: Vec<Value> = crate::scenarios::slow_link::view(state)
        .links
        .into_iter()
        .filter(|l| !l.active.is_empty())
        .map(|l| json!({"link": l.link, "toxics": l.toxics, "upstream": l.upstream}))
        .collect();
    json!({"headers_allowed": view.headers_allowed, "rules": rules, "links": links})
}

/// The resources at their limit right now, each with the scenario it belongs to, the tiles
/// that show it (the panel turns them red) and what the numbers say: every catalog scenario's
/// saturation rule ([`crate::scenarios::Scenario::saturation`]), in catalog order.
pub fn saturation(gauges: &Map<String, Value>) -> Vec<Value> {
    let readings = crate::scenarios::Readings(gauges);
    crate::scenarios::ALL
        .iter()
        .filter_map(|s| Some((s.id, (s.saturation?)(&readings)?)))
        .map(|(scenario, x)| {
            json!({"resource": x.resource, "scenario": scenario, "tiles": x.tiles, "detail": x.detail.join(", ")})
        })
        .collect()
}

/// `fragile` or `hardened` when every knob has that profile's value (the knobs set at start-up
/// keeping theirs, as a switch keeps them), else `custom`.
fn profile_of(store: &crate::knobs::KnobStore, k: &Knobs) -> &'static str {
    if *k == store.profile_keeping_startup(Profile::Fragile).0 {
        "fragile"
    } else if *k == store.profile_keeping_startup(Profile::Hardened).0 {
        "hardened"
    } else {
        "custom"
    }
}

fn label<'a>(m: &'a prometheus::proto::Metric, name: &str) -> Option<&'a str> {
    m.get_label().iter().find(|l| l.name() == name).map(|l| l.value())
}

/// The summed value of a gauge (or a counter) over the series that carry `labels` (None if it
/// has none).
fn gauge(families: &[MetricFamily], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let family = families.iter().find(|f| f.name() == name)?;
    let counter = family.get_field_type() == prometheus::proto::MetricType::COUNTER;
    let mut found = None;
    for m in family.get_metric() {
        if labels.iter().all(|(k, v)| label(m, k) == Some(*v)) {
            let v = if counter {
                m.get_counter().get_value()
            } else {
                m.get_gauge().get_value()
            };
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

fn group_totals(families: &[MetricFamily]) -> HashMap<String, Totals> {
    let mut out: HashMap<String, Totals> = HashMap::new();
    for f in families.iter().filter(|f| f.name() == "http_requests_total") {
        for m in f.get_metric() {
            let Some(g) = group_of(label(m, "route").unwrap_or("")) else {
                continue;
            };
            let t = out.entry(g.to_string()).or_default();
            let v = m.get_counter().get_value();
            t.requests += v;
            let status: u16 = label(m, "status").and_then(|s| s.parse().ok()).unwrap_or(0);
            if status >= 500 || status == 429 || status == crate::edge::CLIENT_CLOSED {
                t.errors += v;
            }
            if status == crate::edge::CLIENT_CLOSED {
                t.abandoned += v;
            }
            let route = label(m, "route").unwrap_or("");
            if (200..400).contains(&status) && status != 202 && route != crate::scenarios::burst::STATUS_ROUTE {
                t.completed += v;
            }
        }
    }
    // An accepted deployment is completed when a worker creates it.
    if let Some(g) = group_of(crate::scenarios::burst::DEPLOYMENTS_ROUTE) {
        for f in families.iter().filter(|f| f.name() == "deployments_total") {
            for m in f.get_metric() {
                if label(m, "mode") == Some("async") && label(m, "outcome") == Some("created") {
                    out.entry(g.to_string()).or_default().completed += m.get_counter().get_value();
                }
            }
        }
    }
    out
}

/// The catalog for the scenario selector: each scenario's k6 script's opening comment (the
/// field report it reproduces, and what each profile should show) and the commands that run it.
static SCENARIOS: LazyLock<Value> = LazyLock::new(|| {
    let list: Vec<Value> = ALL
        .iter()
        .map(|s| {
            let about: Vec<&str> =
                s.k6.source
                    .lines()
                    .take_while(|l| l.starts_with("//"))
                    .map(|l| l.trim_start_matches('/').trim())
                    .collect();
            json!({
                "id": s.id,
                "title": s.title,
                "doc": s.doc,
                "about": about.join(" "),
                "k6": s.k6.path,
                "repro": s.repro.is_ok(),
                "no_repro": s.repro.as_ref().err().copied(),
                "k6_smoke": format!("SMOKE=1 PROFILE=fragile k6 run {}", s.k6.path),
                "k6_fragile": format!("PROFILE=fragile k6 run {}", s.k6.path),
                "k6_hardened": format!("PROFILE=hardened k6 run {}", s.k6.path),
            })
        })
        .collect();
    json!(list)
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturation_names_the_resource_the_scenario_and_the_tiles() {
        let g = |v: Value| v.as_object().unwrap().clone();
        let calm = g(
            json!({"db_in_use": 3.0, "db_max": 15.0, "db_waiting": 0.0, "worker_busy": 1.0,
                            "worker_threads": 10.0, "worker_queue": 0.0, "breaker": "closed"}),
        );
        assert!(saturation(&calm).is_empty());
        let starved = g(
            json!({"db_in_use": 15.0, "db_max": 15.0, "db_waiting": 37.0, "worker_queue": 4.0,
                               "breaker": "open"}),
        );
        let s = saturation(&starved);
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s[0]["scenario"], "db-pool");
        assert_eq!(s[0]["tiles"], json!(["db_in_use", "db_max", "db_waiting"]));
        assert!(
            s[0]["detail"].as_str().unwrap().contains("37 requests waiting"),
            "{s:?}"
        );
        let scenarios: Vec<&str> = s.iter().filter_map(|x| x["scenario"].as_str()).collect();
        assert_eq!(scenarios, ["db-pool", "downstream", "worker-pool"], "{s:?}");
        assert_eq!(s[1]["resource"], "downstream breaker");
        assert_eq!(s[2]["tiles"], json!(["worker_queue"]));
    }

    #[test]
    fn a_switch_with_knobs_on_top_reads_as_the_switch_and_those_knobs() {
        let store = crate::knobs::KnobStore::new(
            crate::knobs::KnobArgs::default().layer_over(Profile::Fragile),
            &prometheus::Registry::new(),
        );
        let before = serde_json::to_value(Knobs::for_profile(Profile::Fragile)).unwrap();
        let mut after = serde_json::to_value(Knobs::for_profile(Profile::Hardened)).unwrap();
        after["db_pool_size"] = json!(4);
        let changed: Vec<(&String, &Value, &Value)> = after
            .as_object()
            .unwrap()
            .iter()
            .filter_map(|(k, v)| {
                let b = &before[k.as_str()];
                (b != v).then_some((k, b, v))
            })
            .collect();
        assert!(changed.len() > 10);
        let m = markers(&store, &changed, Some("fragile"));
        assert_eq!(m[0], "profile → hardened", "{m:?}");
        assert!(m.contains(&"db_pool_size 5 → 4".to_string()), "{m:?}");
        assert!(m.len() < 4, "{m:?}");
        // One knob: itself.
        let one = [(&"db_pool_size".to_string(), &json!(5), &json!(2))];
        let v: Vec<(&String, &Value, &Value)> = one.iter().map(|(k, b, a)| (*k, *b, *a)).collect();
        assert_eq!(markers(&store, &v, Some("fragile")), vec!["db_pool_size 5 → 2"]);
    }

    #[test]
    fn percentiles_are_rounded_to_three_significant_digits() {
        assert_eq!(significant(1534.7), 1530.0);
        assert_eq!(significant(15.347), 15.3);
        assert_eq!(significant(1.5347), 1.53);
        assert_eq!(significant(0.01234), 0.0123);
        assert_eq!(significant(0.0), 0.0);
    }

    #[test]
    fn latency_windows_record_only_while_watched_and_by_group() {
        let w = LatencyWindows::default();
        w.record("/api/db-pool-exhaust", Duration::from_millis(5));
        assert!(w.take().iter().all(|h| h.is_empty()), "recorded while nobody watches");
        w.watching.store(true, Ordering::Relaxed);
        w.record("/api/db-pool-exhaust", Duration::from_millis(5));
        w.record("/metrics", Duration::from_millis(5));
        let taken = w.take();
        let db = groups().iter().position(|g| *g == "db-pool").unwrap();
        assert_eq!(taken[db].len(), 1);
        assert_eq!(
            taken.iter().map(|h| h.len()).sum::<u64>(),
            1,
            "observer routes are not shown"
        );
        assert!(w.take().iter().all(|h| h.is_empty()), "each second starts empty");
    }

    #[test]
    fn every_scenario_script_has_an_explanation() {
        for s in SCENARIOS.as_array().unwrap() {
            assert!(s["about"].as_str().unwrap().len() > 40, "{s}");
        }
        assert!(groups().contains(&"db-pool"));
        assert!(!groups().contains(&"admin"));
        assert!(!groups().contains(&"db-replicas"));
    }
}
