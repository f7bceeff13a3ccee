//! The admin API and the knob system: every knob is listed; invalid changes are refused whole;
//! profiles and reset work; writes need a token off loopback; pools resize under load without
//! failing a request; probes, metrics and admin are never shed, limited or timed out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{spawn_app, Db};
use chokepoint::admin::ConfigView;
use chokepoint::knobs::{CpuMode, Profile, Source};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_lists_every_knob_with_value_source_and_range() {
    let app = spawn_app(Db::Sqlite, &["--db-pool-size", "3"]).await;
    // Parsing into the typed view checks every field of every knob is there.
    let config = app.config().await;
    let knobs = &config.knobs;
    assert_eq!(knobs.len(), chokepoint::knobs::SPECS.len());
    assert_eq!(knobs["db_pool_size"].value, 3);
    assert_eq!(knobs["db_pool_size"].source, Source::Startup);
    assert_eq!(knobs["db_max_overflow"].source, Source::Profile);
    assert_eq!(knobs["db_pool_timeout_ms"].value, 30_000);
    assert_eq!(knobs["db_pool_timeout_ms"].unit.as_deref(), Some("ms"));
    assert_eq!(knobs["cpu_mode"].profiles.fragile, "inline");
    assert_eq!(knobs["cpu_mode"].profiles.hardened, "offload");
    assert!(!config.startup_only["port"].runtime_tunable);
    assert_eq!(config.startup_only["admin_token"].value, "(unset)");
    // No start-up setting that has a default reads null (redis_key_prefix, skip_migrations and
    // shutdown_delay_ms once did: they were matched by name and missed).
    for (name, setting) in &config.startup_only {
        let optional = ["redis_url", "downstream_service_url", "sqlite_max_page_count"];
        assert!(
            optional.contains(&name.as_str()) || !setting.value.is_null(),
            "{name} is null"
        );
    }
    assert_eq!(config.startup_only["redis_key_prefix"].value, "chokepoint:");
    // The harness starts every app with --shutdown-delay-ms 0.
    assert_eq!(config.startup_only["shutdown_delay_ms"].value, 0);
    assert_eq!(config.startup_only["skip_migrations"].value, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_patches_are_refused_and_change_nothing() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    let (_, before) = app.get_json("/admin/config").await;
    let cases: &[(Value, u16, &str)] = &[
        (json!({"no_such_knob": 1}), 422, "no_such_knob"),
        (json!({"db_pool_size": "5"}), 422, "db_pool_size"),
        (json!({"db_pool_size": 0}), 422, "db_pool_size"),
        (json!({"db_pool_size": 1001}), 422, "db_pool_size"),
        (json!({"db_pool_size": 2.5}), 422, "db_pool_size"),
        (json!({"breaker_failure_rate": 1.5}), 422, "breaker_failure_rate"),
        (json!({"cpu_mode": "turbo"}), 422, "cpu_mode"),
        (json!({"breaker_enabled": "yes"}), 422, "breaker_enabled"),
        (json!({"port": 9000}), 409, "port"),
        (json!({"database_url": "postgres://x"}), 409, "database_url"),
        // A valid change next to an invalid one: nothing applies.
        (json!({"db_pool_size": 7, "max_in_flight": -1}), 422, "max_in_flight"),
        (json!({"db_pool_size": 7, "worker_count": 4}), 409, "worker_count"),
        (json!([1, 2]), 422, "(body)"),
    ];
    for (body, want, names) in cases {
        let (status, resp) = app.patch_config(body.clone(), None).await;
        assert_eq!(status, *want, "{body}: {resp}");
        assert!(
            resp["detail"].as_str().unwrap().contains(names) || resp["refused"].to_string().contains(names),
            "{body}: {resp}"
        );
    }
    let resp = app
        .client
        .patch(app.url("/admin/config"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let (_, after) = app.get_json("/admin/config").await;
    assert_eq!(before, after, "a refused change altered the configuration");
    assert_eq!(app.metric("config_changes_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_profile_and_reset() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    let (status, resp) = app
        .patch_config(json!({"max_in_flight": 50, "cpu_mode": "offload"}), None)
        .await;
    assert_eq!(status, 200, "{resp}");
    let view: ConfigView = serde_json::from_value(resp).unwrap();
    assert_eq!(view.knobs["max_in_flight"].value, 50);
    assert_eq!(view.knobs["max_in_flight"].source, Source::Runtime);
    assert_eq!(app.metric(r#"knob_value{knob="max_in_flight"}"#).await, 50.0);
    assert_eq!(app.metric(r#"knob_value{knob="cpu_mode"}"#).await, 1.0);

    app.switch_profile("hardened").await;
    let knobs = app.knobs().await;
    assert_eq!(knobs.db_pool_timeout_ms, 250);
    assert!(knobs.breaker_enabled);
    let (status, _) = app.post_json("/admin/profile/turbo").await;
    assert_eq!(status, 404);

    app.get_json("/api/memory-leak?size_mb=2").await;
    let (status, resp) = app.post_json("/admin/reset").await;
    assert_eq!(status, 200, "{resp}");
    let view: ConfigView = serde_json::from_value(resp).unwrap();
    assert_eq!(view.knobs["max_in_flight"].value, 0);
    assert_eq!(view.knobs["max_in_flight"].source, Source::Profile);
    assert_eq!(view.current().unwrap().db_pool_timeout_ms, 30_000);
    assert_eq!(view.released_memory_mb, Some(2));
    assert_eq!(app.metric("memory_retained_bytes").await, 0.0);
    assert_eq!(app.metric("config_changes_total").await, 3.0);
}

/// A profile switch keeps what was set at start-up (the cure must not come from a pool the
/// switch quietly grew) and answers every change with its before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_switch_keeps_startup_values_and_says_what_changed() {
    let app = spawn_app(Db::Sqlite, &["--db-pool-size", "2", "--db-max-overflow", "0"]).await;
    let (status, body) = app.post_json("/admin/profile/hardened").await;
    assert_eq!(status, 200, "{body}");
    let view: ConfigView = serde_json::from_value(body).unwrap();
    let k = view.current().unwrap();
    assert_eq!(
        (k.db_pool_size, k.db_max_overflow),
        (2, 0),
        "the start-up pool survives the switch"
    );
    assert_eq!(k.db_pool_timeout_ms, 250, "the cure applies");
    assert_eq!(
        app.metric("db_pool_max_connections").await,
        2.0,
        "the pool itself is still 2"
    );
    let switch = view.switch.expect("the switch says what it did");
    assert_eq!(switch.kept_startup.get("db_pool_size"), Some(&json!(2)));
    assert_eq!(switch.kept_startup.get("db_max_overflow"), Some(&json!(0)));
    assert!(
        switch
            .changed
            .iter()
            .any(|c| c.knob == "db_pool_timeout_ms" && c.before == json!(30000) && c.after == json!(250)),
        "{:?}",
        switch.changed
    );
    assert!(!switch.changed.iter().any(|c| c.knob == "db_pool_size"));

    // Asked for explicitly, the profile's values replace the start-up ones, and say so.
    let (status, body) = app.post_json("/admin/profile/hardened?keep_startup=false").await;
    assert_eq!(status, 200, "{body}");
    let view: ConfigView = serde_json::from_value(body).unwrap();
    let hardened = chokepoint::knobs::Knobs::for_profile(Profile::Hardened);
    assert_eq!(view.current().unwrap().db_pool_size, hardened.db_pool_size);
    let changed = view.switch.unwrap().changed;
    assert!(
        changed
            .iter()
            .any(|c| c.knob == "db_pool_size" && c.before == json!(2) && c.after == json!(hardened.db_pool_size)),
        "{changed:?}"
    );
    let (status, body) = app.post_json("/admin/profile/fragile?keep_startup=maybe").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("keep_startup"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_loopback_bind_needs_a_token_for_writes() {
    // Without a token: writes refused with a message saying how to set one; reads open.
    let app = spawn_app(Db::Sqlite, &["--host", "0.0.0.0"]).await;
    let (status, body) = app.patch_config(json!({"max_in_flight": 10}), None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("ADMIN_TOKEN"), "{body}");
    assert_eq!(app.post_json("/admin/profile/hardened").await.0, 403);
    assert_eq!(app.post_json("/admin/reset").await.0, 403);
    assert_eq!(app.get_json("/admin/config").await.0, 200);
    assert_eq!(app.knobs().await.max_in_flight, 0);
    drop(app);

    // With a token: only the right bearer token writes, and the token is never shown.
    let app = spawn_app(Db::Sqlite, &["--host", "0.0.0.0", "--admin-token", "s3cret-token"]).await;
    assert_eq!(app.patch_config(json!({"max_in_flight": 10}), None).await.0, 401);
    assert_eq!(
        app.patch_config(json!({"max_in_flight": 10}), Some("wrong")).await.0,
        401
    );
    let (status, body) = app
        .patch_config(json!({"max_in_flight": 10}), Some("s3cret-token"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.knobs().await.max_in_flight, 10);
    let (_, config) = app.get_json("/admin/config").await;
    assert!(!config.to_string().contains("s3cret-token"));
    assert!(!app.metrics_text().await.contains("s3cret-token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_resizes_live_under_load_without_failing_a_request() {
    // Arrange: pool of 2, 300 ms holds, 12 closed-loop clients for ~3 s.
    let app = spawn_app(Db::Sqlite, &["--db-pool-size", "2", "--db-max-overflow", "0"]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..12)
        .map(|_| {
            let (client, url, stop) = (app.client.clone(), app.url("/api/db/hold?ms=300"), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, 0);
                let deadline = Instant::now() + Duration::from_secs(15);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match client.get(&url).send().await.map(|r| r.status().as_u16()) {
                        Ok(200) => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(app.metric("db_pool_max_connections").await, 2.0);

    // Act: grow the pool while 12 clients queue on it.
    let changed = Instant::now();
    app.set_knobs(json!({"db_pool_size": 6})).await;
    let seen = crate::common::eventually(Duration::from_secs(1), || async {
        app.metric("db_pool_max_connections").await == 6.0
    })
    .await;
    assert!(seen, "new size not in metrics within 1 s");
    assert!(changed.elapsed() < Duration::from_secs(1));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Shrink it again under the same load.
    app.set_knobs(json!({"db_pool_size": 3})).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);

    // Assert: no request failed; the bigger pool actually served more at once.
    let (mut ok, mut failed) = (0, 0);
    for c in clients {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed += f;
    }
    assert_eq!(failed, 0, "{failed} requests failed during the swaps ({ok} ok)");
    // 1 s at 2/0.3 + 2 s at 6/0.3 + 1 s at 3/0.3 ≈ 6.7 + 40 + 10; well above the 13/s of 2 alone.
    assert!(ok > 35, "only {ok} requests served");
    assert_eq!(app.metric("db_pool_max_connections").await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_metrics_and_admin_are_never_shed_limited_or_timed_out() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    app.set_knobs(
        json!({"max_in_flight": 1, "rate_limit_enabled": true, "rate_limit_rps": 1, "rate_limit_burst": 1,
                         "request_timeout_io_ms": 300}),
    )
    .await;
    // One slow request occupies the only in-flight slot (and the rate limiter's burst).
    let slow = {
        let (client, url) = (app.client.clone(), app.url("/api/db/hold?ms=1500"));
        tokio::spawn(async move { client.get(url).send().await.unwrap().status().as_u16() })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..5 {
        for path in ["/health", "/ready", "/metrics", "/admin/config"] {
            assert_eq!(app.get(path).await.status(), 200, "{path} was refused");
        }
    }
    assert_eq!(slow.await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shedding_rate_limiting_and_request_timeouts() {
    let app = spawn_app(Db::Sqlite, &[]).await;

    // Load shedding: past max_in_flight, 503 + Retry-After at once.
    app.set_knobs(json!({"max_in_flight": 2})).await;
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let (client, url) = (app.client.clone(), app.url("/api/db/hold?ms=1000"));
            tokio::spawn(async move { client.get(url).send().await.unwrap().status().as_u16() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    let resp = app.get("/api/ping").await;
    assert_eq!(resp.status(), 503);
    assert!(start.elapsed() < Duration::from_millis(200));
    assert_eq!(resp.headers()["retry-after"], "1");
    assert!(resp.headers().contains_key("x-request-id"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "shed");
    // Probes are never shed: an operator can always see the system.
    assert_eq!(app.get("/health").await.status(), 200);
    for h in holders {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert_eq!(app.metric(r#"requests_shed_total{reason="in_flight"}"#).await, 1.0);
    // A refusal is still an answered request in the HTTP metrics.
    assert_eq!(
        app.metric(r#"http_requests_total{method="GET",route="/api/ping",status="503"}"#)
            .await,
        1.0
    );

    // Rate limiting: 429 + Retry-After above the rate.
    app.set_knobs(json!({"max_in_flight": 0, "rate_limit_enabled": true, "rate_limit_rps": 2, "rate_limit_burst": 3}))
        .await;
    let mut statuses = vec![];
    for _ in 0..10 {
        let resp = app.get("/api/ping").await;
        if resp.status() == 429 {
            assert!(resp.headers().contains_key("retry-after"));
        }
        statuses.push(resp.status().as_u16());
    }
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!((6..=7).contains(&limited), "{statuses:?}");
    assert!(app.metric("requests_rate_limited_total").await >= 6.0);

    // Request timeout per route group: io routes cut at 500 ms, db routes untouched.
    app.set_knobs(json!({"rate_limit_enabled": false, "request_timeout_io_ms": 500}))
        .await;
    let start = Instant::now();
    let (status, body) = app.get_json("/api/slow?delay=2").await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"], "request_timeout");
    assert!(start.elapsed() < Duration::from_millis(1500));
    assert_eq!(app.get_json("/api/db/hold?ms=700").await.0, 200);
    assert_eq!(app.metric(r#"request_timeouts_total{group="io"}"#).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_profile_with_single_knob_overrides() {
    let app = spawn_app(
        Db::Sqlite,
        &[
            "--profile",
            "hardened",
            "--db-pool-timeout",
            "1.5",
            "--cpu-mode",
            "inline",
        ],
    )
    .await;
    let config = app.config().await;
    let knobs = config.current().unwrap();
    assert_eq!(knobs.db_pool_timeout_ms, 1500);
    assert_eq!(config.knobs["db_pool_timeout_ms"].source, Source::Startup);
    assert_eq!(knobs.cpu_mode, CpuMode::Inline);
    assert_eq!(knobs.max_in_flight, 256);
    assert_eq!(config.knobs["max_in_flight"].source, Source::Profile);
    assert_eq!(config.profile_at_startup, Profile::Hardened);
}

/// Every knob in the table, not a sample: a value past each end of its range and values of the
/// wrong type are refused with 422, the body names the knob and gives its range, and nothing
/// changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_knob_refuses_values_out_of_range_and_of_the_wrong_type() {
    use chokepoint::knobs::{Range, SPECS};
    let app = spawn_app(Db::Sqlite, &[]).await;
    let (_, before) = app.get_json("/admin/config").await;
    let mut checked = 0;
    for spec in SPECS {
        let (bad, range): (Vec<Value>, Value) = match spec.range {
            Range::Int(lo, hi) => {
                let mut bad = vec![json!("1"), json!(1.5), json!(true), json!(null), json!([1])];
                bad.push(if lo > 0 { json!(lo - 1) } else { json!(-1) });
                if hi < u64::MAX {
                    bad.push(json!(hi as u128 + 1));
                }
                (bad, json!({"min": lo, "max": hi}))
            }
            Range::Float(lo, hi) => (
                vec![json!(lo - 1.0), json!(hi + 1.0), json!("0.5"), json!(false), json!({})],
                json!({"min": lo, "max": hi}),
            ),
            Range::Bool => (
                vec![json!(1), json!("yes"), json!(null)],
                json!({"values": [true, false]}),
            ),
            Range::Choice(values) => (
                vec![json!("no-such-choice"), json!(3), json!(true)],
                json!({"values": values}),
            ),
        };
        for value in bad {
            let body = json!({ spec.name: value });
            let (status, resp) = app.patch_config(body.clone(), None).await;
            assert_eq!(status, 422, "{body}: {resp}");
            assert_eq!(resp["refused"][0]["knob"], spec.name, "{body}: {resp}");
            assert_eq!(resp["refused"][0]["range"], range, "{body}: {resp}");
            assert!(resp["detail"].as_str().unwrap().contains(spec.name), "{body}: {resp}");
            checked += 1;
        }
    }
    let (_, after) = app.get_json("/admin/config").await;
    assert_eq!(before, after, "a refused change altered the configuration");
    assert_eq!(app.metric("config_changes_total").await, 0.0);
    eprintln!("{} knobs, {checked} bad values, every one refused", SPECS.len());
}
