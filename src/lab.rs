//! `GET /lab`: the live panel for workshops. One page, embedded in the binary (no CDN), fed by
//! `GET /lab/events`: server-sent events carrying one snapshot of the lab per second.
//!
//! A snapshot is read from the same Prometheus registry `/metrics` serves, so the panel shows
//! exactly what a dashboard would: per route group (the OpenAPI tag of the route) requests/s,
//! error rate (5xx, 429 and 499), the requests whose client gave up (499) per second, and p50/p95/p99 interpolated from the latency histogram's buckets
//! over the last second; the pool, queue, memory and breaker gauges; every knob's value; and the
//! knobs that changed since the previous snapshot (the charts draw those as markers).
//!
//! One sampler task per process starts with the first subscriber and stops when the state is
//! dropped; each snapshot is serialised once and shared by every subscriber.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, Response};
use axum::routing::get;
use axum::Router;
use futures::{Stream, StreamExt};
use prometheus::proto::MetricFamily;
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use crate::knobs::{Knobs, Profile};
use crate::scenarios::{Reading, ALL};
use crate::{AppState, AppStateInner};

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
}

async fn page() -> Html<&'static str> {
    Html(LAB_HTML)
}

async fn script() -> Response {
    crate::openapi::static_asset("text/javascript; charset=utf-8", LAB_JS)
}

async fn scenarios() -> axum::Json<Value> {
    axum::Json(SCENARIOS.clone())
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

/// The sampler's shared output.
pub struct Lab {
    tx: watch::Sender<Arc<String>>,
    started: Mutex<bool>,
}

impl Default for Lab {
    fn default() -> Self {
        Lab {
            tx: watch::channel(Arc::new(String::from("{}"))).0,
            started: Mutex::new(false),
        }
    }
}

impl Lab {
    fn subscribe(&self, state: &AppState) -> watch::Receiver<Arc<String>> {
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        if !*started {
            *started = true;
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
    /// Cumulative bucket counts (upper bound, count), as the histogram reports them.
    buckets: Vec<(f64, f64)>,
}

#[derive(Default)]
pub struct Sampler {
    prev: Option<(std::time::Instant, HashMap<String, Totals>)>,
    prev_knobs: Option<Value>,
}

impl Sampler {
    pub fn sample(&mut self, state: &AppState) -> Value {
        state.db.refresh_gauges();
        state.cache.refresh_gauges();
        let families = state.registry.gather();
        let now = std::time::Instant::now();
        let totals = group_totals(&families);
        let mut by_group = Map::new();
        for &g in groups() {
            let cur = totals.get(g).cloned().unwrap_or_default();
            let (rps, error_rate, p, abandoned_rps) = match &self.prev {
                Some((at, prev)) => {
                    let secs = now.duration_since(*at).as_secs_f64().max(1e-3);
                    let before = prev.get(g).cloned().unwrap_or_default();
                    let n = (cur.requests - before.requests).max(0.0);
                    let errors = (cur.errors - before.errors).max(0.0);
                    let abandoned = (cur.abandoned - before.abandoned).max(0.0);
                    let delta: Vec<(f64, f64)> = cur
                        .buckets
                        .iter()
                        .enumerate()
                        .map(|(i, (le, c))| (*le, c - before.buckets.get(i).map_or(0.0, |b| b.1)))
                        .collect();
                    let q = |q: f64| quantile(&delta, q).map(|s| (s * 1e5).round() / 100.0);
                    (
                        n / secs,
                        if n > 0.0 { errors / n } else { 0.0 },
                        [q(0.5), q(0.95), q(0.99)],
                        abandoned / secs,
                    )
                }
                None => (0.0, 0.0, [None, None, None], 0.0),
            };
            by_group.insert(
                g.to_string(),
                json!({"rps": (rps * 100.0).round() / 100.0, "error_rate": (error_rate * 1e4).round() / 1e4,
                       "p50_ms": p[0], "p95_ms": p[1], "p99_ms": p[2],
                       "abandoned_rps": (abandoned_rps * 100.0).round() / 100.0}),
            );
        }
        self.prev = Some((now, totals));

        let knobs = state.knobs.current();
        let knob_values = serde_json::to_value(&*knobs).unwrap_or(Value::Null);
        let changes: Vec<String> = match (&self.prev_knobs, knob_values.as_object()) {
            (Some(Value::Object(before)), Some(after)) => after
                .iter()
                .filter(|(k, v)| before.get(*k) != Some(*v))
                .map(|(k, v)| format!("{k} = {v}"))
                .collect(),
            _ => Vec::new(),
        };
        self.prev_knobs = Some(knob_values.clone());
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
        json!({
            "t": chrono::Utc::now().timestamp_millis(),
            "groups": by_group,
            "gauges": gauges,
            "profile": profile_of(&knobs),
            "knobs": knob_values,
            "changes": changes,
        })
    }
}

/// `fragile` or `hardened` when every knob has that profile's value, else `custom`.
fn profile_of(k: &Knobs) -> &'static str {
    if *k == Knobs::for_profile(Profile::Fragile) {
        "fragile"
    } else if *k == Knobs::for_profile(Profile::Hardened) {
        "hardened"
    } else {
        "custom"
    }
}

fn label<'a>(m: &'a prometheus::proto::Metric, name: &str) -> Option<&'a str> {
    m.get_label().iter().find(|l| l.name() == name).map(|l| l.value())
}

/// The summed value of a gauge over the series that carry `labels` (None if it has none).
fn gauge(families: &[MetricFamily], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let family = families.iter().find(|f| f.name() == name)?;
    let mut found = None;
    for m in family.get_metric() {
        if labels.iter().all(|(k, v)| label(m, k) == Some(*v)) {
            *found.get_or_insert(0.0) += m.get_gauge().value();
        }
    }
    found
}

fn group_totals(families: &[MetricFamily]) -> HashMap<String, Totals> {
    let mut out: HashMap<String, Totals> = HashMap::new();
    let routes = crate::scenarios::route_scenarios();
    let group = |route: &str| -> Option<String> {
        match routes.get(route) {
            Some(id) => Some(id.to_string()),
            None if crate::resilience::guard::is_exempt(route) => None,
            None => Some("other".to_string()),
        }
    };
    for f in families {
        match f.name() {
            "http_requests_total" => {
                for m in f.get_metric() {
                    let Some(g) = group(label(m, "route").unwrap_or("")) else {
                        continue;
                    };
                    let t = out.entry(g).or_default();
                    let v = m.get_counter().value();
                    t.requests += v;
                    let status: u16 = label(m, "status").and_then(|s| s.parse().ok()).unwrap_or(0);
                    if status >= 500 || status == 429 || status == crate::edge::CLIENT_CLOSED {
                        t.errors += v;
                    }
                    if status == crate::edge::CLIENT_CLOSED {
                        t.abandoned += v;
                    }
                }
            }
            "http_request_duration_seconds" => {
                for m in f.get_metric() {
                    let Some(g) = group(label(m, "route").unwrap_or("")) else {
                        continue;
                    };
                    let t = out.entry(g).or_default();
                    let h = m.get_histogram();
                    let buckets = h.get_bucket();
                    if t.buckets.is_empty() {
                        t.buckets = buckets.iter().map(|b| (b.upper_bound(), 0.0)).collect();
                    }
                    for (i, b) in buckets.iter().enumerate() {
                        if let Some(slot) = t.buckets.get_mut(i) {
                            slot.1 += b.cumulative_count() as f64;
                        }
                    }
                    // The +Inf bucket is implicit: the sample count.
                    if t.buckets.len() == buckets.len() {
                        t.buckets.push((f64::INFINITY, 0.0));
                    }
                    if let Some(last) = t.buckets.last_mut() {
                        last.1 += h.get_sample_count() as f64;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The `q` quantile (seconds) of cumulative bucket counts, interpolated linearly inside the
/// bucket that holds it (as Prometheus' `histogram_quantile` does). Above the largest finite
/// bound it answers that bound. None without samples.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let in_bucket = count - lower.1;
            let frac = if in_bucket > 0.0 {
                (rank - lower.1) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * frac);
        }
        lower = (le, count);
    }
    Some(lower.0)
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
    fn quantiles_interpolate_inside_buckets() {
        // 10 samples in (0, 0.1], 10 in (0.1, 0.2], none above.
        let b = [(0.1, 10.0), (0.2, 20.0), (f64::INFINITY, 20.0)];
        assert!((quantile(&b, 0.5).unwrap() - 0.1).abs() < 1e-9);
        assert!((quantile(&b, 0.75).unwrap() - 0.15).abs() < 1e-9);
        assert!((quantile(&b, 0.25).unwrap() - 0.05).abs() < 1e-9);
        // Everything above the last finite bound: that bound.
        let over = [(0.1, 0.0), (f64::INFINITY, 5.0)];
        assert_eq!(quantile(&over, 0.99), Some(0.1));
        assert_eq!(quantile(&[(0.1, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
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
