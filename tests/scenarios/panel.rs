//! Break it / Fix it from the panel (`POST /lab/run/{scenario}`): the server drives repro's
//! open-model load against itself. Break starves the pool (served at the predicted capacity, the
//! queue in the latency); Fix, at the same offered load, answers fast and sheds what it cannot
//! serve. One run at a time, validated parameters, and Stop stops it.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{spawn_app, Db};

/// Starts a run, checks a second one is refused while it runs, and waits for its end.
async fn run(app: &crate::common::TestApp, query: &str) -> Value {
    let (status, body) = app.post_json(&format!("/lab/run/db-pool?{query}")).await;
    assert_eq!(status, 202, "{body}");
    let (again, body) = app.post_json("/lab/run/db-pool").await;
    assert_eq!(again, 409, "one run at a time: {body}");
    finished(app, Duration::from_secs(90)).await
}

async fn finished(app: &crate::common::TestApp, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (status, body) = app.get_json("/lab/run").await;
        assert_eq!(status, 200, "{body}");
        if matches!(body["state"].as_str(), Some("done" | "stopped" | "failed")) {
            return body;
        }
        assert!(Instant::now() < deadline, "the run did not end: {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_it_starves_the_pool_and_fix_it_cures_it_at_the_same_load() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    assert_eq!(app.get_json("/lab/run").await.1["state"], "idle");

    let broken = run(&app, "action=break&seconds=6").await;
    assert_eq!(broken["state"], "done", "{broken}");
    assert_eq!(broken["profile"], "fragile");
    let capacity = broken["predicted_capacity_rps"]
        .as_f64()
        .expect("db-pool predicts a capacity");
    let rate = broken["rate_rps"].as_f64().unwrap();
    assert!(
        (rate / capacity - 1.5).abs() < 0.05,
        "offered 1.5x the capacity: {broken}"
    );
    let r = &broken["result"];
    let served = r["throughput_rps"].as_f64().unwrap();
    assert!(
        served > capacity * 0.7 && served < capacity * 1.15,
        "fragile serves at the pool's capacity ({capacity} req/s), not the offered {rate}: {r}"
    );
    let broken_p95 = r["p95_ms"].as_f64().unwrap();
    assert!(broken_p95 > 1000.0, "the queue shows in the latency: {r}");

    let fixed = run(&app, "action=fix&seconds=6").await;
    assert_eq!(fixed["state"], "done", "{fixed}");
    assert_eq!(fixed["profile"], "hardened");
    assert_eq!(fixed["rate_rps"].as_f64(), Some(rate), "the same load");
    assert!(
        fixed["changed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["knob"] == "db_pool_timeout_ms"),
        "the cure is named: {fixed}"
    );
    let f = &fixed["result"];
    let failed: f64 = f["failures"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_f64)
        .sum();
    assert!(failed > 0.0, "hardened sheds what the pool cannot serve: {f}");
    let fixed_p95 = f["p95_ms"].as_f64().unwrap();
    assert!(
        fixed_p95 < broken_p95 / 3.0,
        "fixed p95 {fixed_p95} ms against broken {broken_p95} ms: {f}"
    );
    assert_eq!(
        app.knobs().await.db_pool_size,
        4,
        "the run's pool: the repro's, the same both times"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_validated_and_stop_stops_them() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    for (query, param) in [
        ("action=smash", "action"),
        ("seconds=61", "seconds"),
        ("seconds=4", "seconds"),
        ("seconds=x", "seconds"),
    ] {
        let (status, body) = app.post_json(&format!("/lab/run/db-pool?{query}")).await;
        assert_eq!(status, 422, "{query}: {body}");
        assert!(body.to_string().contains(param), "{query}: {body}");
    }
    let (status, body) = app.post_json("/lab/run/nope").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("db-pool"),
        "lists the runnable ones: {body}"
    );
    assert_eq!(app.post_json("/lab/run/stop").await.0, 404, "nothing to stop");

    let (status, body) = app.post_json("/lab/run/db-pool?action=break&seconds=60").await;
    assert_eq!(status, 202, "{body}");
    let running = crate::common::eventually(Duration::from_secs(20), || async {
        app.get_json("/lab/run").await.1["state"] == "running"
    })
    .await;
    assert!(running, "the run never started sending");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, body) = app.post_json("/lab/run/stop").await;
    assert_eq!(status, 200, "{body}");
    let stopped = finished(&app, Duration::from_secs(60)).await;
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    let sent = stopped["result"]["requests"].as_f64().unwrap();
    let full = stopped["rate_rps"].as_f64().unwrap() * 60.0;
    assert!(sent < full / 4.0, "nothing was sent after Stop: {sent} of {full}");
    assert_eq!(stopped["result"]["interrupted"], true);
}

/// The catalog says, per lab, which Break it runs cannot work here and why; the panel keeps
/// their buttons off, and a start is refused at once with the same reason (no failed run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_this_lab_cannot_do_is_marked_and_refused_with_the_reason() {
    async fn why(app: &crate::common::TestApp, id: &str) -> Value {
        let (status, list) = app.get_json("/lab/scenarios.json").await;
        assert_eq!(status, 200);
        let entry = list.as_array().unwrap().iter().find(|s| s["id"] == id).unwrap().clone();
        entry["cannot_run_here"].clone()
    }
    let default = spawn_app(Db::Sqlite, &[]).await;
    assert_eq!(why(&default, "db-pool").await, Value::Null);
    assert!(why(&default, "db-replicas")
        .await
        .as_str()
        .unwrap()
        .contains("--base-url"));
    let slow_link = why(&default, "slow-link").await;
    assert!(slow_link.as_str().unwrap().contains("LINK_PROXY=true"), "{slow_link}");
    let (status, body) = default.post_json("/lab/run/slow-link?action=break").await;
    assert_eq!(status, 409, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("LINK_PROXY=true"), "{body}");
    assert_eq!(
        default.get_json("/lab/run").await.1["state"],
        "idle",
        "no run was started"
    );

    let sqlite_proxied = spawn_app(Db::Sqlite, &["--link-proxy"]).await;
    let slow_link = why(&sqlite_proxied, "slow-link").await;
    assert!(slow_link.as_str().unwrap().contains("SQLite"), "{slow_link}");

    let ready = spawn_app(Db::Postgres, &["--link-proxy"]).await;
    assert_eq!(why(&ready, "slow-link").await, Value::Null);
}

/// A scenario without a Break it run (its collapse has no capacity to sweep) says why, in the
/// catalog and in the refusal of a start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scenario_without_a_run_says_why() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    let (status, list) = app.get_json("/lab/scenarios.json").await;
    assert_eq!(status, 200);
    for entry in list.as_array().unwrap() {
        let has_run = entry["repro"].as_bool().unwrap();
        let why = &entry["no_repro"];
        assert_eq!(has_run, why.is_null(), "{entry}");
        if !has_run {
            assert!(why.as_str().unwrap().len() > 40, "a real reason: {entry}");
        }
    }
    for id in ["faults", "poisoned-pool", "io", "healthy"] {
        let entry = list.as_array().unwrap().iter().find(|s| s["id"] == id).unwrap();
        assert_eq!(entry["repro"], false, "{entry}");
        let (status, body) = app.post_json(&format!("/lab/run/{id}?action=break")).await;
        assert_eq!(status, 404, "{body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(entry["no_repro"].as_str().unwrap()), "{detail}");
    }
    assert_eq!(app.get_json("/lab/run").await.1["state"], "idle", "no run was started");
}
