//! `faults`: rules set through `/admin/faults` (and, when the knob allows them, per-request
//! headers) inject latency, errors, resets and response-phase faults on one route group, counted
//! apart from real failures. The collapse each one causes is measured next to its cure: a
//! response-phase 500 makes retried writes duplicate unless they carry an `Idempotency-Key`; an
//! injected delay passes straight through to the caller unless the group's request timeout cuts it.

use std::time::{Duration, Instant};

use chokepoint::scenarios::faults::FaultsView;
use futures::future::join_all;
use serde_json::{json, Value};

use crate::common::{spawn_app, Db, TestApp};

async fn set_rule(app: &TestApp, group: &str, rule: Value) -> (u16, Value) {
    let resp = app
        .client
        .put(app.url(&format!("/admin/faults/{group}")))
        .json(&rule)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn put_rule(app: &TestApp, group: &str, rule: Value) {
    let (status, body) = set_rule(app, group, rule.clone()).await;
    assert_eq!(status, 200, "PUT /admin/faults/{group} {rule}: {body}");
}

async fn faults(app: &TestApp) -> FaultsView {
    let (status, body) = app.get_json("/admin/faults").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body).expect("GET /admin/faults matches FaultsView")
}

async fn injected(app: &TestApp, group: &str, kind: &str) -> f64 {
    app.metric(&format!("faults_injected_total{{group=\"{group}\",kind=\"{kind}\"}}"))
        .await
}

async fn pg_count(app: &TestApp, sql: &str) -> i64 {
    let url = &app.pg.as_ref().expect("a postgres test").url;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url).await.unwrap();
    sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
}

/// One logical creation by a client that retries a 5xx until it succeeds: (attempts, 500s seen).
async fn create_with_retries(app: &TestApp, name: &str, key: Option<&str>) -> (u32, u32) {
    let (mut attempts, mut injected_500s) = (0, 0);
    loop {
        attempts += 1;
        let mut req = app
            .client
            .post(app.url("/api/v1/deployments/"))
            .json(&json!({"name": name}));
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let resp = req.send().await.expect("POST deployments");
        let status = resp.status().as_u16();
        if status == 500 {
            assert_eq!(resp.headers()["x-chokepoint-fault"], "response_error");
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"], "injected_fault", "{body}");
            injected_500s += 1;
        } else {
            assert!(status == 200 || status == 201, "{status}");
            return (attempts, injected_500s);
        }
        // 30 straight 500s at 50% happen once in 10⁹ creations.
        assert!(attempts < 30, "{name}: still failing after {attempts} attempts");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_phase_fault_duplicates_retried_writes_and_idempotency_keys_cure_it() {
    // Arrange: every write commits, then half the answers are replaced by a 500.
    let app = spawn_app(Db::Postgres, &["--deploy-work-ms", "0"]).await;
    put_rule(
        &app,
        "other",
        json!({"response": "500@50%", "routes": ["/api/v1/deployments/"]}),
    )
    .await;
    let n = 20;

    // Act (the collapse): a client retries each 500 without a key.
    let mut seen_500 = 0;
    let mut attempts = 0;
    for i in 0..n {
        let (a, e) = create_with_retries(&app, &format!("plain-{i}"), None).await;
        attempts += a;
        seen_500 += e;
    }
    let plain_rows = pg_count(&app, "SELECT count(*) FROM deployments WHERE name LIKE 'plain-%'").await;

    // Assert: every attempt wrote a row, so every 500 left a duplicate behind.
    assert!(seen_500 >= 3, "only {seen_500} injected 500s in {attempts} attempts");
    assert_eq!(
        plain_rows, attempts as i64,
        "a row per attempt, the 500'd ones included"
    );
    assert_eq!(plain_rows - n as i64, seen_500 as i64, "duplicates = injected 500s");

    // Act (the cure): the same client sends an Idempotency-Key with each creation.
    let mut keyed_500 = 0;
    for i in 0..n {
        let key = format!("faults-key-{i}");
        let (_, e) = create_with_retries(&app, &format!("keyed-{i}"), Some(&key)).await;
        keyed_500 += e;
    }
    let keyed_rows = pg_count(&app, "SELECT count(*) FROM deployments WHERE name LIKE 'keyed-%'").await;

    // Assert: retries replayed the first write; nothing duplicated.
    assert!(keyed_500 >= 3, "only {keyed_500} injected 500s");
    assert_eq!(keyed_rows, n as i64, "one row per logical creation");
    assert_eq!(
        injected(&app, "other", "response_error").await,
        (seen_500 + keyed_500) as f64,
        "every injected 500 counted, and only those"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_errors_follow_the_rule_and_never_touch_the_observer_routes() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    put_rule(&app, "other", json!({"error": "503@30%", "routes": ["/api/ping"]})).await;

    let mut errors = 0;
    let n = 300;
    for _ in 0..n {
        let resp = app.get("/api/ping").await;
        match resp.status().as_u16() {
            200 => assert!(resp.headers().get("x-chokepoint-fault").is_none()),
            503 => {
                assert_eq!(resp.headers()["x-chokepoint-fault"], "error");
                let body: Value = resp.json().await.unwrap();
                assert_eq!(body["error"], "injected_fault");
                errors += 1;
            }
            s => panic!("unexpected {s}"),
        }
    }
    let share = errors as f64 / n as f64;
    assert!((0.2..=0.4).contains(&share), "30% asked, {share:.2} measured");
    assert_eq!(injected(&app, "other", "error").await, errors as f64);
    // Other routes of the group are outside the rule's `routes`; observers are never faulted.
    for path in ["/api/fast", "/health", "/metrics", "/admin/config"] {
        for _ in 0..20 {
            assert_eq!(app.get(path).await.status(), 200, "{path}");
        }
    }
    assert_eq!(app.metric("faults_active{group=\"other\",kind=\"error\"}").await, 1.0);

    // A whole-group rule with a weighted delay: about half wait 250 ms, the rest none.
    put_rule(&app, "other", json!({"delay": "250ms:50"})).await;
    let started = join_all((0..60).map(|_| async {
        let t = Instant::now();
        assert_eq!(app.get("/api/fast").await.status(), 200);
        t.elapsed()
    }))
    .await;
    let slow = started.iter().filter(|d| **d >= Duration::from_millis(250)).count();
    assert!((15..=45).contains(&slow), "50% of 60 asked, {slow} delayed");
    assert_eq!(injected(&app, "other", "delay").await, slow as f64);

    // Cleared: nothing more is injected, and the gauge says so.
    let resp = app.client.delete(app.url("/admin/faults/other")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(faults(&app).await.groups.iter().all(|g| g.rule.is_none()));
    assert_eq!(app.metric("faults_active{group=\"other\",kind=\"delay\"}").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_delay_reaches_the_caller_until_the_group_timeout_cuts_it() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    put_rule(&app, "db", json!({"delay": "1500ms", "routes": ["/api/tasks"]})).await;

    // Fragile: no request timeout, the caller waits the whole injected delay.
    let t = Instant::now();
    let resp = app.get("/api/tasks").await;
    let fragile = t.elapsed();
    assert_eq!(resp.status(), 200);
    assert!(fragile >= Duration::from_millis(1500), "{fragile:?}");

    // The cure: the db group's request timeout answers 504 at 300 ms.
    app.set_knobs(json!({"request_timeout_db_ms": 300})).await;
    let t = Instant::now();
    let (status, body) = app.get_json("/api/tasks").await;
    let cured = t.elapsed();
    assert_eq!(
        (status, body["error"].as_str()),
        (504, Some("request_timeout")),
        "{body}"
    );
    assert!(cured < fragile / 3, "cut at {cured:?}, fragile took {fragile:?}");
    assert_eq!(injected(&app, "db", "delay").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_first_fails_exactly_n_then_recovers() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    put_rule(
        &app,
        "other",
        json!({"fail_first": 7, "fail_first_status": 500, "routes": ["/api/fast"]}),
    )
    .await;

    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(app.get("/api/fast").await.status().as_u16());
    }
    assert_eq!(&statuses[..7], &[500; 7]);
    assert_eq!(&statuses[7..], &[200; 13]);
    let view = faults(&app).await;
    let other = view.groups.iter().find(|g| g.group == "other").unwrap();
    assert_eq!(other.rule.as_ref().unwrap().fail_first_remaining, 0);
    assert_eq!(other.injected["fail_first"], 7);
    assert_eq!(injected(&app, "other", "fail_first").await, 7.0);
    // An injected 500 is a documented failure, not a fault of the lab.
    assert_eq!(
        app.metric("http_requests_total{method=\"GET\",route=\"/api/fast\",status=\"500\"}")
            .await,
        7.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_resets_the_connection_and_only_that_one() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    put_rule(&app, "other", json!({"abort": "100%", "routes": ["/api/fast"]})).await;

    let err = app
        .client
        .get(app.url("/api/fast"))
        .send()
        .await
        .expect_err("an aborted request gets no answer");
    let text = format!("{err:?}");
    assert!(
        text.contains("reset") || text.contains("closed") || text.contains("IncompleteMessage"),
        "{text}"
    );
    // The response-phase variant: the route ran, then the connection was reset.
    put_rule(&app, "other", json!({"response": "reset", "routes": ["/api/ping"]})).await;
    assert!(app.client.get(app.url("/api/ping")).send().await.is_err());
    // Everything else still answers.
    assert_eq!(app.get("/health").await.status(), 200);
    assert_eq!(injected(&app, "other", "abort").await, 1.0);
    assert_eq!(injected(&app, "other", "response_reset").await, 1.0);
    assert!(
        app.metric("http_connections_closed_total{reason=\"fault_reset\"}")
            .await
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_headers_apply_only_while_the_knob_allows_them() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    let send = |path: &'static str, name: &'static str, value: &'static str| {
        let req = app.client.get(app.url(path)).header(name, value);
        async move {
            let t = Instant::now();
            let resp = req.send().await.unwrap();
            (resp, t.elapsed())
        }
    };

    // Off in both profiles: ignored, and the answer says why.
    let (resp, _) = send("/api/ping", "x-chokepoint-error", "503").await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["x-chokepoint-fault-headers"]
        .to_str()
        .unwrap()
        .contains("fault_headers_allowed"));

    app.set_knobs(json!({"fault_headers_allowed": true})).await;
    let (resp, _) = send("/api/ping", "x-chokepoint-error", "418@100%").await;
    assert_eq!(resp.status(), 418);
    let (resp, took) = send("/api/ping", "x-chokepoint-delay", "300ms").await;
    assert_eq!(resp.status(), 200);
    assert!(took >= Duration::from_millis(300), "{took:?}");
    // A header that cannot be read is a 422 naming it.
    let (resp, _) = send("/api/ping", "x-chokepoint-delay", "soon").await;
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["parameter"], "x-chokepoint-delay", "{body}");
    // Observers never honour them.
    let (resp, _) = send("/health", "x-chokepoint-error", "503").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(injected(&app, "other", "error").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_rules_are_validated_and_cleared_by_reset() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    for (group, rule, param) in [
        ("nope", json!({"delay": "1s"}), "group"),
        ("other", json!({}), "rule"),
        ("other", json!({"delay": "61s"}), "delay"),
        ("other", json!({"error": "200"}), "error"),
        ("other", json!({"abort": "150%"}), "abort"),
        ("other", json!({"response": "404"}), "response"),
        ("other", json!({"fail_first": 2_000_000}), "fail_first"),
        (
            "other",
            json!({"fail_first": 1, "fail_first_status": 302}),
            "fail_first_status",
        ),
        ("other", json!({"delay": "1s", "routes": ["/api/tasks"]}), "routes"),
        ("other", json!({"latency": "1s"}), "body"),
    ] {
        let (status, body) = set_rule(&app, group, rule.clone()).await;
        assert_eq!(
            (status, body["parameter"].as_str()),
            (422, Some(param)),
            "{rule}: {body}"
        );
    }
    put_rule(&app, "cpu", json!({"error": "500"})).await;
    let (status, _) = app.post_json("/admin/reset").await;
    assert_eq!(status, 200);
    assert!(faults(&app).await.groups.iter().all(|g| g.rule.is_none()));

    // With an admin token, rules need it like every other change.
    let app = spawn_app(Db::Sqlite, &["--admin-token", "s3cret-token"]).await;
    let (status, _) = set_rule(&app, "cpu", json!({"error": "500"})).await;
    assert_eq!(status, 401);
}
