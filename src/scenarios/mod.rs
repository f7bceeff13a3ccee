//! The catalog: one module per failure mode, each describing itself with one [`Scenario`] value
//! (its id, from which its doc page, k6 script and test file follow; its router and OpenAPI
//! operations, each route with its guard group; its live-panel gauges and saturation rule; its
//! dashboard row and alerts). [`ALL`] is the one list: `App::build` merges its routers, the
//! guard takes its route map from it, `/openapi.json`, the `GET /` index, `/lab/scenarios.json`,
//! the lab's route groups, gauges and saturation banners, `chokepoint scenarios` (read by
//! `scripts/ci/k6-smoke.sh`) and everything `chokepoint catalog --write` writes
//! ([`crate::catalog`]) all derive from it.
//!
//! `healthy` holds the probes and the fast routes whose latency shows when something else is
//! starving the process; `db-replicas` has no routes of its own (it is `db-pool`'s routes on
//! several replicas in front of one PostgreSQL).
//!
//! Adding a scenario: one module exporting `SCENARIO`, one line in [`ALL`], its doc page, its
//! k6 script and its test file (docs/architecture.md shows a real diff).

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::Router;
use chokepoint_repro::plan::{Plan, Prediction, Target, Watch};
use serde::Serialize;

use crate::apidoc::Op;
use crate::resilience::guard::Group;
use crate::state::AppState;

pub mod adaptive_limit;
pub mod burst;
pub mod cache_stampede;
pub mod cold_start;
pub mod connection_leak;
pub mod cpu;
pub mod db_pool;
pub mod db_replicas;
pub mod downstream;
pub mod faults;
pub mod healthy;
pub mod io;
pub mod memory;
pub mod poisoned_pool;
pub mod pool_too_big;
pub mod retry_storm;
pub mod slow_link;
pub mod worker_pool;

/// Every scenario, in the order the panel, the OpenAPI document and the dashboards show them.
pub static ALL: &[Scenario] = &[
    healthy::SCENARIO,
    cpu::SCENARIO,
    io::SCENARIO,
    memory::SCENARIO,
    db_pool::SCENARIO,
    db_replicas::SCENARIO,
    downstream::SCENARIO,
    worker_pool::SCENARIO,
    worker_pool::GRPC_SCENARIO,
    retry_storm::SCENARIO,
    cold_start::SCENARIO,
    burst::SCENARIO,
    cache_stampede::SCENARIO,
    faults::SCENARIO,
    slow_link::SCENARIO,
    connection_leak::SCENARIO,
    poisoned_pool::SCENARIO,
    pool_too_big::SCENARIO,
    adaptive_limit::SCENARIO,
];

/// One failure mode, as it describes itself. Written with [`scenario!`], which derives its files
/// from its id, then the builder methods below for what differs.
pub struct Scenario {
    /// The catalog id (`db-pool`): the OpenAPI tag of its routes, the panel's route group, the
    /// `repro` argument, the doc page's and k6 script's file name.
    pub id: &'static str,
    /// The collapse, in a few words.
    pub title: &'static str,
    /// `docs/scenarios/<id>.md`.
    pub doc: &'static str,
    /// The k6 script that triggers it: `load-tests/<id>.js`.
    pub k6: K6Script,
    /// The test file that shows the collapse and the cure, when it is not
    /// `tests/scenarios/<id with underscores>.rs` (see [`Scenario::test`]).
    test_file: Option<&'static str>,
    pub router: fn() -> Router<AppState>,
    /// Its routes in the OpenAPI document, each with its guard group.
    pub operations: fn() -> Vec<Op>,
    /// What `chokepoint repro <id>` and the panel's Break it / Fix it run, or why the scenario
    /// has no such run (its collapse has no capacity to sweep; the reason is shown to users).
    pub repro: Result<Repro, &'static str>,
    /// What the live panel reads for it.
    pub gauges: &'static [Gauge],
    /// When its resource is at its limit, from the panel's gauges (the saturation banner).
    pub saturation: Option<SaturationRule>,
    /// Its row of the Grafana dashboard: the metric that shows the collapse first, then the
    /// cure's (`chokepoint catalog --write` writes k8s/monitoring/grafana-dashboard.json).
    pub dashboard: &'static [Panel],
    /// The scenario whose dashboard row it shares (its collapse shows on the same panels).
    pub dashboard_row_with: Option<&'static str>,
    /// The Prometheus alerts that fire on its collapse (k8s/monitoring/alerts.rules.yml).
    pub alerts: &'static [Alert],
}

/// One Grafana time series panel.
pub struct Panel {
    pub title: &'static str,
    /// Grafana's unit id (`s`, `reqps`, `short`, `bytes`, `percentunit`, `Bps`).
    pub unit: &'static str,
    /// PromQL expression and legend, one per series.
    pub targets: &'static [(&'static str, &'static str)],
    pub description: &'static str,
}

/// One Prometheus alerting rule.
pub struct Alert {
    pub name: &'static str,
    pub expr: &'static str,
    /// How long the condition holds before it fires (`30s`, `1m`).
    pub for_: &'static str,
    /// `info`, `warning` or `critical`.
    pub severity: &'static str,
    pub summary: &'static str,
    pub description: &'static str,
}

/// A scenario's saturation rule: its resource at its limit right now, or `None`.
pub type SaturationRule = fn(&Readings) -> Option<Saturated>;

/// What a saturation rule reads: the live panel's gauges, by key.
pub struct Readings<'a>(pub &'a serde_json::Map<String, serde_json::Value>);

impl Readings<'_> {
    /// A number (0 when absent).
    pub fn n(&self, key: &str) -> f64 {
        self.0.get(key).and_then(serde_json::Value::as_f64).unwrap_or(0.0)
    }

    /// A reading shown as text (the breaker's state).
    pub fn text(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(serde_json::Value::as_str)
    }
}

/// A resource at its limit, as the panel's banner shows it: the tiles it turns red and what the
/// numbers say.
#[derive(Debug, Default)]
pub struct Saturated {
    pub resource: &'static str,
    pub tiles: Vec<&'static str>,
    pub detail: Vec<String>,
}

impl Saturated {
    pub fn new(resource: &'static str) -> Saturated {
        Saturated {
            resource,
            ..Saturated::default()
        }
    }

    /// Adds what one reading says, with the tiles that show it.
    pub fn because(mut self, tiles: &[&'static str], detail: String) -> Saturated {
        self.tiles.extend_from_slice(tiles);
        self.detail.push(detail);
        self
    }

    /// `None` when no reading said anything.
    pub fn if_any(self) -> Option<Saturated> {
        (!self.detail.is_empty()).then_some(self)
    }
}

/// A catalog entry whose files follow from its id: `docs/scenarios/<id>.md`, `load-tests/<id>.js`
/// (embedded, and run by the k6 smoke), `tests/scenarios/<id with underscores>.rs`, and the
/// calling module's own `router` and `operations` functions. `without routes` for a scenario
/// that loads another's routes; `k6: "<name>"` for a script not named after the id.
macro_rules! scenario {
    ($id:literal, $title:expr) => {
        $crate::scenarios::scenario!(@files $id, $id, $title).routes(router, operations)
    };
    ($id:literal, $title:expr, without routes) => {
        $crate::scenarios::scenario!(@files $id, $id, $title)
    };
    ($id:literal, $title:expr, k6: $k6:literal) => {
        $crate::scenarios::scenario!(@files $id, $k6, $title).routes(router, operations)
    };
    (@files $id:literal, $k6:literal, $title:expr) => {
        $crate::scenarios::Scenario::new(
            $id,
            $title,
            concat!("docs/scenarios/", $id, ".md"),
            $crate::scenarios::K6Script {
                path: concat!("load-tests/", $k6, ".js"),
                source: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/load-tests/", $k6, ".js")),
                run_by: $crate::scenarios::K6_SMOKE,
            },
        )
    };
}
pub(crate) use scenario;

impl Scenario {
    /// What [`scenario!`] builds: no routes, no repro (a catalog test requires one or a reason),
    /// no gauges.
    #[doc(hidden)]
    pub const fn new(id: &'static str, title: &'static str, doc: &'static str, k6: K6Script) -> Scenario {
        Scenario {
            id,
            title,
            doc,
            k6,
            test_file: None,
            router: Router::new,
            operations: Vec::new,
            repro: Err(""),
            gauges: &[],
            saturation: None,
            dashboard: &[],
            dashboard_row_with: None,
            alerts: &[],
        }
    }

    pub const fn dashboard(mut self, panels: &'static [Panel]) -> Scenario {
        self.dashboard = panels;
        self
    }

    pub const fn dashboard_row_with(mut self, id: &'static str) -> Scenario {
        self.dashboard_row_with = Some(id);
        self
    }

    pub const fn alerts(mut self, alerts: &'static [Alert]) -> Scenario {
        self.alerts = alerts;
        self
    }

    pub const fn saturation(mut self, rule: SaturationRule) -> Scenario {
        self.saturation = Some(rule);
        self
    }

    pub const fn routes(mut self, router: fn() -> Router<AppState>, operations: fn() -> Vec<Op>) -> Scenario {
        self.router = router;
        self.operations = operations;
        self
    }

    pub const fn repro(mut self, repro: Repro) -> Scenario {
        self.repro = Ok(repro);
        self
    }

    /// It has no `chokepoint repro`, and this is why (shown to users).
    pub const fn no_repro(mut self, why: &'static str) -> Scenario {
        self.repro = Err(why);
        self
    }

    pub const fn gauges(mut self, gauges: &'static [Gauge]) -> Scenario {
        self.gauges = gauges;
        self
    }

    /// Its k6 script needs more than one lab process or a service the k6 smoke does not
    /// start: `script` (under `scripts/`) runs it in CI instead.
    pub const fn k6_run_by(mut self, script: &'static str) -> Scenario {
        self.k6.run_by = script;
        self
    }

    /// Its test file is not named after its id.
    pub const fn test_file(mut self, path: &'static str) -> Scenario {
        self.test_file = Some(path);
        self
    }

    /// The test file that shows the collapse and the cure.
    pub fn test(&self) -> String {
        match self.test_file {
            Some(path) => path.to_string(),
            None => format!("tests/scenarios/{}.rs", self.id.replace('-', "_")),
        }
    }
}

/// A scenario's `chokepoint repro`: the knobs the run sets on top of the profile, the plan
/// (request, stages, watched metrics) and the prediction, both from the lab's configuration.
pub struct Repro {
    pub knobs: fn() -> serde_json::Value,
    pub plan: fn(&RunConfig, Option<f64>) -> Plan,
    pub predict: fn(&RunConfig, Option<f64>) -> Prediction,
    /// Measure the target's latency alone first (its CPU cost), passed to plan and predict.
    pub calibrate: bool,
    /// Why it cannot run against an in-process lab, when it cannot.
    pub needs_base_url: Option<&'static str>,
    /// Admin calls made once after the knobs are set and before anything is measured (e.g.
    /// slow-link's toxic on the PostgreSQL link): method, path, JSON body.
    pub setup: fn() -> Vec<(reqwest::Method, &'static str, serde_json::Value)>,
    /// Why this lab cannot run it as configured (e.g. slow-link on the embedded SQLite), so the
    /// panel's card says so before a run starts instead of failing one.
    pub unavailable: fn(&AppState) -> Option<String>,
}

/// A repro's [`Repro::setup`] when it needs none.
fn no_setup() -> Vec<(reqwest::Method, &'static str, serde_json::Value)> {
    Vec::new()
}

impl Repro {
    /// Why a run against this lab cannot work: it needs another lab (`--base-url`), or this one
    /// lacks what the scenario needs.
    pub fn cannot_run_here(&self, state: &AppState) -> Option<String> {
        self.needs_base_url
            .map(str::to_string)
            .or_else(|| (self.unavailable)(state))
    }

    /// A repro that measures nothing first and runs against an in-process lab (most do).
    pub const fn new(
        knobs: fn() -> serde_json::Value,
        plan: fn(&RunConfig, Option<f64>) -> Plan,
        predict: fn(&RunConfig, Option<f64>) -> Prediction,
    ) -> Repro {
        Repro {
            knobs,
            plan,
            predict,
            calibrate: false,
            needs_base_url: None,
            setup: no_setup,
            unavailable: |_| None,
        }
    }

    /// The request it sends (it does not depend on the knobs).
    pub fn target(&self) -> Target {
        let defaults = RunConfig {
            knobs: crate::knobs::Knobs::for_profile(crate::knobs::Profile::Fragile),
            memory_leak_limit_mb: f64::NAN,
        };
        (self.plan)(&defaults, None).target
    }
}

/// The lab's configuration in force for a repro run, typed (read once from `GET /admin/config`).
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub knobs: crate::knobs::Knobs,
    /// The safety cap, `MEMORY_LEAK_LIMIT_MB`.
    pub memory_leak_limit_mb: f64,
}

/// Multiples of a capacity: the stages of offered load around it.
pub(crate) fn around(capacity: f64, multiples: &[f64]) -> Vec<f64> {
    multiples.iter().map(|m| (capacity * m * 10.0).round() / 10.0).collect()
}

pub(crate) const AROUND: &[f64] = &[0.5, 0.8, 1.0, 1.25, 1.5, 2.0];

/// Requests waiting for a database connection: the pool's first sign of saturation.
pub(crate) const POOL_WAITING: Watch = Watch::gauge("db_pool_waiting", "waiting for a connection (max)", 0.0);

/// The scenarios `chokepoint repro` can run, by id.
/// A number in a response body as the original lab typed it: its integer parameters answer as
/// integers (`5`, not `5.0`) even where chokepoint accepts fractions.
pub fn seed_number(x: f64) -> serde_json::Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        serde_json::json!(x as i64)
    } else {
        serde_json::json!(x)
    }
}

pub fn repro_ids() -> Vec<&'static str> {
    ALL.iter().filter(|s| s.repro.is_ok()).map(|s| s.id).collect()
}

/// A scenario's k6 script.
pub struct K6Script {
    /// `load-tests/<name>.js`.
    pub path: &'static str,
    /// The script itself (its opening comment explains the scenario in the panel).
    pub source: &'static str,
    /// The script that runs it in CI: [`K6_SMOKE`] against one lab process per profile, or
    /// its own when it needs more (db-replicas: `scripts/ci/k6-replicas.sh`).
    pub run_by: &'static str,
}

/// The k6 smoke: every script it runs against one lab per profile.
pub const K6_SMOKE: &str = "scripts/ci/k6-smoke.sh";

impl K6Script {
    /// Run by the k6 smoke.
    pub fn in_smoke(&self) -> bool {
        self.run_by == K6_SMOKE
    }
}

/// One number of the live panel: a key of the snapshot's `gauges`, read from a metric.
pub struct Gauge {
    pub key: &'static str,
    pub metric: &'static str,
    pub labels: &'static [(&'static str, &'static str)],
    pub reading: Reading,
}

/// How a gauge's value is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    Value,
    /// Bytes shown as MiB with one decimal.
    MiB,
    /// The circuit breaker's state number shown as `closed`/`open`/`half_open`.
    BreakerState,
}

impl Gauge {
    pub const fn value(key: &'static str, metric: &'static str) -> Gauge {
        Gauge {
            key,
            metric,
            labels: &[],
            reading: Reading::Value,
        }
    }
}

impl Scenario {
    /// Its operations, tagged with its id.
    pub fn tagged_operations(&self) -> Vec<Op> {
        (self.operations)().into_iter().map(|op| op.tag(self.id)).collect()
    }
}

/// The scenarios that have routes of their own (db-replicas has none), in catalog order: the
/// OpenAPI tags and the panel's route groups.
pub fn with_routes() -> impl Iterator<Item = &'static Scenario> {
    ALL.iter().filter(|s| !(s.operations)().is_empty())
}

/// The scenario with this id.
pub fn find(id: &str) -> Option<&'static Scenario> {
    ALL.iter().find(|s| s.id == id)
}

/// The repro of scenario `id`, or why there is none (the scenario's reason, or the ids that
/// have one): what `chokepoint repro` and the panel's Break it / Fix it run.
pub fn find_repro(id: &str) -> Result<&'static Repro, String> {
    match find(id).map(|s| &s.repro) {
        Some(Ok(repro)) => Ok(repro),
        Some(Err(why)) => Err(format!("`{id}` has no repro: {why}")),
        None => Err(format!("no repro for `{id}`; one of: {}", repro_ids().join(", "))),
    }
}

/// Route template → guard group, for every scenario route (the guard's route map).
pub fn route_groups() -> HashMap<&'static str, Group> {
    ALL.iter()
        .flat_map(|s| (s.operations)())
        .map(|op| (op.path, op.group))
        .collect()
}

/// Route template → scenario id (the panel's route groups).
pub fn route_scenarios() -> &'static HashMap<&'static str, &'static str> {
    static MAP: LazyLock<HashMap<&'static str, &'static str>> = LazyLock::new(|| {
        ALL.iter()
            .flat_map(|s| (s.operations)().into_iter().map(move |op| (op.path, s.id)))
            .collect()
    });
    &MAP
}

/// One line of `chokepoint scenarios --json`.
#[derive(Debug, Serialize)]
pub struct Listing {
    pub id: &'static str,
    pub title: &'static str,
    pub doc: &'static str,
    pub k6: &'static str,
    pub k6_smoke: bool,
    /// The script that runs its k6 script in CI.
    pub k6_run_by: &'static str,
    pub test: String,
    pub routes: Vec<String>,
    /// Why `chokepoint repro <id>` has no run for it (null: it has one).
    pub no_repro: Option<&'static str>,
}

/// The catalog as `chokepoint scenarios` lists it.
pub fn listing() -> Vec<Listing> {
    ALL.iter()
        .map(|s| Listing {
            id: s.id,
            title: s.title,
            doc: s.doc,
            k6: s.k6.path,
            k6_smoke: s.k6.in_smoke(),
            k6_run_by: s.k6.run_by,
            test: s.test(),
            routes: (s.operations)()
                .iter()
                .map(|op| format!("{} {}", op.method.to_uppercase(), op.path))
                .collect(),
            no_repro: s.repro.as_ref().err().copied(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    fn root() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
    }

    /// Every scenario has its doc page, k6 script and test file, named after its id; and every
    /// doc page and k6 script belongs to a scenario.
    #[test]
    fn every_scenario_has_its_doc_page_k6_script_and_test() {
        let mut ids = BTreeSet::new();
        for s in ALL {
            assert!(ids.insert(s.id), "{} twice in ALL", s.id);
            for file in [s.doc, s.k6.path, &s.test()] {
                assert!(root().join(file).is_file(), "{}: {file} is missing", s.id);
            }
            if !s.k6.in_smoke() {
                let runner = std::fs::read_to_string(root().join(s.k6.run_by))
                    .unwrap_or_else(|e| panic!("{}: its k6 runner {}: {e}", s.id, s.k6.run_by));
                assert!(
                    runner.contains(s.k6.path.trim_start_matches("load-tests/")),
                    "{}: {} does not run {}",
                    s.id,
                    s.k6.run_by,
                    s.k6.path
                );
            }
            if let Err(why) = s.repro {
                assert!(
                    !why.is_empty(),
                    "{}: no repro and no reason why (.repro or .no_repro)",
                    s.id
                );
            }
            assert_eq!(s.doc, format!("docs/scenarios/{}.md", s.id));
            let source = std::fs::read_to_string(root().join(s.k6.path)).unwrap();
            assert_eq!(
                source, s.k6.source,
                "{}: the embedded k6 script is not {}",
                s.id, s.k6.path
            );
            assert!(
                s.k6.source.starts_with("//"),
                "{}: the k6 script opens with its explanation",
                s.id
            );
        }
        for (dir, ext) in [("docs/scenarios", "md"), ("load-tests", "js")] {
            for entry in std::fs::read_dir(root().join(dir)).unwrap() {
                let path = entry.unwrap().path();
                // docs/scenarios/README.md is the catalog's index (src/catalog.rs writes it).
                if path.extension().and_then(|e| e.to_str()) != Some(ext) || path.ends_with("README.md") {
                    continue;
                }
                let rel = format!("{dir}/{}", path.file_name().unwrap().to_string_lossy());
                assert!(
                    ALL.iter().any(|s| s.doc == rel || s.k6.path == rel),
                    "{rel} belongs to no scenario in ALL"
                );
            }
        }
    }

    /// Every scenario but `healthy` (the overview row) has its dashboard row or shares one that
    /// exists; alert names are unique.
    #[test]
    fn every_scenario_is_on_the_dashboard() {
        let mut names = BTreeSet::new();
        for s in ALL {
            match s.dashboard_row_with {
                Some(other) => {
                    let owner = find(other).unwrap_or_else(|| panic!("{}: shares the row of unknown `{other}`", s.id));
                    assert!(
                        !owner.dashboard.is_empty() && s.dashboard.is_empty(),
                        "{}: shares {other}'s row",
                        s.id
                    );
                }
                None => assert!(
                    s.id == "healthy" || !s.dashboard.is_empty(),
                    "{} has no dashboard row",
                    s.id
                ),
            }
            for a in s.alerts {
                assert!(names.insert(a.name), "alert {} twice", a.name);
                assert!(["info", "warning", "critical"].contains(&a.severity), "{}", a.name);
            }
        }
    }

    /// Every repro sends a request to one of its own scenario's routes (db-replicas: db-pool's,
    /// on several replicas; slow-link: db-pool's, through a sick link; pool-too-big: db-pool's CPU-bound
    /// query), and its plan has stages and something to watch.
    #[test]
    fn every_repro_loads_its_own_routes() {
        assert!(repro_ids().len() >= 10, "{:?}", repro_ids());
        for s in ALL {
            let Ok(repro) = &s.repro else { continue };
            let owner = if ["db-replicas", "slow-link", "pool-too-big", "adaptive-limit"].contains(&s.id) {
                find("db-pool").unwrap()
            } else {
                s
            };
            let target = repro.target();
            let path = target.path.split('?').next().unwrap();
            if target.grpc.is_some() {
                // worker-pool-grpc: no HTTP routes; its calls go to the gRPC service.
                assert_eq!(path, crate::proto::worker::WORK_PATH, "{}", s.id);
            } else {
                let routes: Vec<&str> = (owner.operations)().iter().map(|op| op.path).collect();
                let matches = routes
                    .iter()
                    .any(|r| r == &path || (r.contains('{') && path.starts_with(r.split('{').next().unwrap())));
                assert!(matches, "{}: repro target {path} is not one of {routes:?}", s.id);
            }
            let defaults = RunConfig {
                knobs: crate::knobs::Knobs::for_profile(crate::knobs::Profile::Fragile),
                memory_leak_limit_mb: 1024.0,
            };
            let plan = (repro.plan)(&defaults, Some(5.0));
            assert!(!plan.rates.is_empty() && !plan.watches.is_empty(), "{}", s.id);
        }
    }

    /// Every route is declared once, by one scenario.
    #[test]
    fn routes_belong_to_one_scenario() {
        let mut seen = HashMap::new();
        for s in ALL {
            for op in (s.operations)() {
                let key = (op.method, op.path);
                assert!(seen.insert(key, s.id).is_none(), "{key:?} declared twice");
            }
        }
        assert_eq!(route_groups()["/api/cpu-intensive"], Group::Cpu);
        assert_eq!(route_groups()["/api/db/hold"], Group::Db);
        assert_eq!(route_scenarios()["/api/db/hold"], "db-pool");
    }
}
