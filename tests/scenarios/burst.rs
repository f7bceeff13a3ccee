//! `burst`: many clients POST `/api/v1/deployments/` at once. Synchronously, each creation holds
//! a pooled connection for its work, so throughput pins at pool / work time and the rest wait
//! until the request timeout (504). Asynchronously (202 + Location, a bounded queue drained by
//! workers) every request is answered at once, the work completes at database speed, and a full
//! queue refuses with 503 instead of queueing forever. With `Idempotency-Key`, clients that retry
//! after timeouts never create a deployment twice and never lose an acknowledged one.

use std::time::{Duration, Instant};

use crate::common::{eventually, median, spawn_app, Db, TestApp};
use futures::future::join_all;
use serde_json::{json, Value};

const PATH: &str = "/api/v1/deployments/";

/// One POST: (status, latency, body, headers).
async fn deploy(app: &TestApp, key: Option<&str>, body: Value) -> (u16, Duration, Value, reqwest::header::HeaderMap) {
    let mut req = app.client.post(app.url(PATH)).json(&body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let start = Instant::now();
    let resp = req.send().await.expect("POST deployments");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, start.elapsed(), body, headers)
}

async fn pg_count(app: &TestApp, sql: &str) -> i64 {
    let url = &app.pg.as_ref().expect("a postgres test").url;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url).await.unwrap();
    sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
}

/// Every sequence number handed out is unique and they are exactly 1..=n.
async fn assert_dense_sequences(app: &TestApp, n: i64) {
    assert_eq!(pg_count(app, "SELECT count(*) FROM deployments").await, n, "rows");
    assert_eq!(
        pg_count(
            app,
            "SELECT count(DISTINCT sequence) FROM deployments WHERE status = 'succeeded'"
        )
        .await,
        n,
        "distinct sequences"
    );
    assert_eq!(
        pg_count(app, "SELECT coalesce(max(sequence), 0) FROM deployments").await,
        n
    );
    assert_eq!(
        pg_count(app, "SELECT total FROM deployment_counter").await,
        n,
        "shared counter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synchronous_burst_times_out_and_async_acceptance_cures_it() {
    // Pool of 2, 200 ms of work per deployment: capacity 10 deployments/s. Timeout 1.1 s.
    let app = spawn_app(
        Db::Postgres,
        &[
            "--db-pool-size",
            "2",
            "--db-max-overflow",
            "0",
            "--deploy-work-ms",
            "200",
            "--deploy-timeout-ms",
            "1100",
        ],
    )
    .await;

    // Collapse: 30 at once, synchronously.
    let started = Instant::now();
    let results = join_all((0..30).map(|i| deploy(&app, None, json!({"name": format!("sync-{i}")})))).await;
    let elapsed = started.elapsed();
    let ok: Vec<_> = results.iter().filter(|r| r.0 == 201).collect();
    let timeouts: Vec<_> = results.iter().filter(|r| r.0 == 504).collect();
    assert_eq!(
        ok.len() + timeouts.len(),
        30,
        "{:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    eprintln!(
        "sync: {} created, {} timed out in {elapsed:?}; median 504 latency {:?}",
        ok.len(),
        timeouts.len(),
        median(timeouts.iter().map(|r| r.1).collect())
    );
    // Throughput pinned at pool / work = 10/s: about 10 creations inside the 1.1 s timeout.
    assert!((8..=13).contains(&ok.len()), "created {}", ok.len());
    assert!(timeouts.len() >= 17, "timed out {}", timeouts.len());
    let t = median(timeouts.iter().map(|r| r.1).collect());
    assert!(
        t >= Duration::from_millis(1050) && t < Duration::from_millis(1600),
        "504s at {t:?}"
    );
    assert_eq!(timeouts[0].2["error"], "request_timeout");
    assert!(ok.iter().all(|r| r.3.get("location").is_some()));
    assert_eq!(
        app.metric(r#"deployments_total{mode="sync",outcome="timeout"}"#).await,
        timeouts.len() as f64
    );
    // Timed-out transactions rolled back: only acknowledged creations (give or take one that
    // committed as its timeout fired) are in the table.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rows = pg_count(&app, "SELECT count(*) FROM deployments").await;
    assert!(rows >= ok.len() as i64 && rows <= ok.len() as i64 + 2, "rows {rows}");

    // Fix: async acceptance with 2 workers. Everyone gets 202 at once; the work drains at 10/s.
    app.set_knobs(json!({"deploy_mode": "async", "deploy_workers": 2}))
        .await;
    let before = pg_count(&app, "SELECT count(*) FROM deployments").await;
    let results = join_all((0..30).map(|i| deploy(&app, None, json!({"name": format!("async-{i}")})))).await;
    assert!(
        results.iter().all(|r| r.0 == 202),
        "{:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    let accept = median(results.iter().map(|r| r.1).collect());
    eprintln!("async: 30 accepted, median acceptance {accept:?}");
    assert!(accept < Duration::from_millis(500), "acceptance took {accept:?}");
    let ids: Vec<String> = results
        .iter()
        .map(|r| r.2["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        results[0].3["location"].to_str().unwrap(),
        format!("/api/v1/deployments/{}", ids[0])
    );
    let drained = eventually(Duration::from_secs(15), || async {
        pg_count(
            &app,
            "SELECT count(*) FROM deployments WHERE status = 'queued' OR status = 'provisioning'",
        )
        .await
            == 0
    })
    .await;
    assert!(drained, "the queue drained");
    for id in &ids[..3] {
        let (status, body) = app.get_json(&format!("/api/v1/deployments/{id}")).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("succeeded")), "{body}");
    }
    assert_dense_sequences(&app, before + 30).await;
    let span = pg_count(
        &app,
        "SELECT (max(completed_ms) - min(completed_ms)) FROM deployments WHERE name LIKE 'async-%'",
    )
    .await;
    // 30 deployments at 2 × 5/s: about 3 s from the first completion to the last.
    eprintln!("async drain: 30 completed over {span} ms");
    assert!((2_300..=4_500).contains(&span), "drain span {span} ms");

    // A bounded queue: beyond deploy_queue_max, 503 + Retry-After, and no row is written.
    // One worker, so the pool keeps a connection for accepting (workers < pool size).
    app.set_knobs(json!({"deploy_queue_max": 5, "deploy_work_ms": 1000, "deploy_workers": 1}))
        .await;
    let before = pg_count(&app, "SELECT count(*) FROM deployments").await;
    let results = join_all((0..20).map(|i| deploy(&app, None, json!({"name": format!("full-{i}")})))).await;
    let accepted = results.iter().filter(|r| r.0 == 202).count();
    let refused: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    eprintln!("bounded queue: {accepted} accepted, {} refused", refused.len());
    assert_eq!(
        accepted + refused.len(),
        20,
        "{:?}",
        results.iter().map(|r| (r.0, r.2["error"].clone())).collect::<Vec<_>>()
    );
    assert!((5..=9).contains(&accepted), "accepted {accepted}");
    assert!(refused
        .iter()
        .all(|r| r.3.get("retry-after").is_some() && r.2["error"] == "shed"));
    assert!(
        refused.iter().all(|r| r.1 < Duration::from_millis(500)),
        "refusals are fast"
    );
    assert_eq!(
        pg_count(&app, "SELECT count(*) FROM deployments").await - before,
        accepted as i64
    );
    assert_eq!(
        app.metric(r#"deployments_total{mode="async",outcome="queue_full"}"#)
            .await,
        refused.len() as f64
    );
}

/// Goodput, not only fast answers: the automatic async side (workers = pool − 1, a queue bound
/// of what starts within the timeout, `Retry-After` = time to drain) completes at least what the
/// synchronous profile completes inside the same timeout, at the pool's speed; a client that
/// honours `Retry-After` gets every refused deployment done later; no accepted one is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_acceptance_drains_at_the_pools_speed_and_retry_after_brings_the_rest() {
    // Pool of 6, 200 ms of work: pool / work = 30/s. Timeout 1 s. 60 clients at once.
    const CLIENTS: usize = 60;
    let app = spawn_app(
        Db::Postgres,
        &[
            "--db-pool-size",
            "6",
            "--db-max-overflow",
            "0",
            "--deploy-work-ms",
            "200",
            "--deploy-timeout-ms",
            "1000",
        ],
    )
    .await;

    // Fragile: synchronous creations inside the timeout.
    let results = join_all((0..CLIENTS).map(|i| deploy(&app, None, json!({"name": format!("sync-{i}")})))).await;
    let fragile_created = results.iter().filter(|r| r.0 == 201).count();

    // The cure with its automatic values: 5 workers (one connection kept for accepting), a bound
    // of 5 × (1 + 1000 / 200) = 30, every one of which starts within the 1 s budget.
    app.set_knobs(json!({"deploy_mode": "async", "deploy_workers": 0, "deploy_queue_max": 0}))
        .await;
    let keys: Vec<String> = (0..CLIENTS).map(|i| format!("goodput-{i}")).collect();
    let started = Instant::now();
    let first = join_all(
        keys.iter()
            .enumerate()
            .map(|(i, k)| deploy(&app, Some(k), json!({"name": format!("async-{i}")}))),
    )
    .await;
    let accepted: Vec<_> = first.iter().filter(|r| r.0 == 202).collect();
    let refused: Vec<_> = first.iter().filter(|r| r.0 == 503).collect();
    assert_eq!(
        accepted.len() + refused.len(),
        CLIENTS,
        "{:?}",
        first.iter().map(|r| (r.0, r.2["error"].clone())).collect::<Vec<_>>()
    );
    assert!(
        (30..=32).contains(&accepted.len()),
        "accepted {} (bound 30)",
        accepted.len()
    );
    // Retry-After is the queue's time to drain: 30 queued at 25/s = 1.2 s, rounded up to 2.
    let after: Vec<u64> = refused
        .iter()
        .map(|r| r.3["retry-after"].to_str().unwrap().parse().unwrap())
        .collect();
    assert!(after.iter().all(|a| (1..=3).contains(a)), "Retry-After {after:?}");
    assert!(refused
        .iter()
        .all(|r| r.2["error"] == "shed" && r.2["retry_after_ms"].as_u64() >= Some(900)));

    // Goodput inside the same timeout + work: at least what sync completed, and ≥ 90% of 25/s.
    let done_by = |ms: u64| {
        let app = &app;
        async move {
            pg_count(
                app,
                &format!(
                    "SELECT count(*) FROM deployments WHERE name LIKE 'async-%' AND status = 'succeeded' \
                     AND completed_ms <= (SELECT min(created_ms) FROM deployments WHERE name LIKE 'async-%') + {ms}"
                ),
            )
            .await
        }
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            pg_count(
                &app,
                "SELECT count(*) FROM deployments WHERE name LIKE 'async-%' AND status = 'queued'",
            )
            .await
                == 0
        })
        .await,
        "the accepted deployments drained"
    );
    let in_budget = done_by(1200).await;
    let span = pg_count(
        &app,
        "SELECT max(completed_ms) - min(created_ms) FROM deployments WHERE name LIKE 'async-%'",
    )
    .await;
    let rate = accepted.len() as f64 / (span as f64 / 1000.0);
    eprintln!(
        "fragile created {fragile_created} of {CLIENTS} inside 1 s; hardened accepted {}, {in_budget} done by 1.2 s, drained at {rate:.1}/s (5 workers / 0.2 s = 25/s)",
        accepted.len()
    );
    assert!(
        in_budget as usize >= fragile_created,
        "hardened completed {in_budget} inside timeout + work, fragile {fragile_created}"
    );
    assert!(rate >= 0.9 * 25.0 * 0.8, "drained at {rate:.1}/s");

    // A client that honours Retry-After: each refused one comes back once it says, with its key.
    let mut pending: Vec<(usize, u64)> = first
        .iter()
        .enumerate()
        .filter(|(_, r)| r.0 == 503)
        .map(|(i, r)| (i, r.3["retry-after"].to_str().unwrap().parse().unwrap()))
        .collect();
    let mut rounds = 0;
    while !pending.is_empty() && rounds < 10 {
        rounds += 1;
        let wait = pending.iter().map(|p| p.1).min().unwrap();
        tokio::time::sleep(Duration::from_secs(wait)).await;
        let again = join_all(
            pending
                .iter()
                .map(|(i, _)| deploy(&app, Some(&keys[*i]), json!({"name": format!("async-{i}")}))),
        )
        .await;
        pending = pending
            .iter()
            .zip(again.iter())
            .filter(|(_, r)| r.0 == 503)
            .map(|((i, _), r)| (*i, r.3["retry-after"].to_str().unwrap().parse().unwrap()))
            .collect();
    }
    assert!(
        pending.is_empty(),
        "{} still refused after {rounds} rounds",
        pending.len()
    );
    // Nothing lost: every accepted deployment ends `succeeded`, one per key.
    assert!(
        eventually(Duration::from_secs(10), || async {
            pg_count(
                &app,
                "SELECT count(*) FROM deployments WHERE name LIKE 'async-%' AND status = 'succeeded'",
            )
            .await
                == CLIENTS as i64
        })
        .await,
        "every deployment succeeded"
    );
    assert_eq!(
        pg_count(&app, "SELECT count(*) FROM deployments WHERE name LIKE 'async-%'").await,
        CLIENTS as i64
    );
    eprintln!(
        "Retry-After client: all {CLIENTS} done in {:?}, {rounds} retry rounds",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_posts_with_idempotency_keys_never_duplicate_nor_lose_a_write() {
    // Tight on purpose: clients give up after 400 ms, the server after 600 ms, and the pool
    // serves 2 × 10 deployments/s, so many attempts time out on one side or the other.
    let app = spawn_app(
        Db::Postgres,
        &[
            "--db-pool-size",
            "2",
            "--db-max-overflow",
            "0",
            "--deploy-work-ms",
            "100",
            "--deploy-timeout-ms",
            "600",
        ],
    )
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let clients = (0..40).map(|i| {
        let client = client.clone();
        let url = app.url(PATH);
        async move {
            let key = format!("burst-key-{i}");
            let mut failed_attempts = 0;
            loop {
                assert!(Instant::now() < deadline, "client {i} never got an answer");
                let sent = client
                    .post(&url)
                    .header("Idempotency-Key", &key)
                    .json(&json!({"name": format!("idem-{i}")}))
                    .send()
                    .await;
                match sent {
                    // The client's 400 ms can also run out while the body is read: the answer
                    // is lost on the way, and the client retries like any other timeout.
                    Ok(resp) if resp.status().is_success() => match resp.json::<Value>().await {
                        Ok(body) => return (key, body["id"].as_str().unwrap().to_string(), failed_attempts),
                        Err(e) => assert!(e.is_timeout(), "{e}"),
                    },
                    Ok(resp) => assert!(
                        [503, 504].contains(&resp.status().as_u16()),
                        "unexpected {}",
                        resp.status()
                    ),
                    Err(e) => assert!(e.is_timeout(), "{e}"),
                }
                failed_attempts += 1;
                tokio::time::sleep(Duration::from_millis(50 + 10 * (i % 5))).await;
            }
        }
    });
    let acknowledged = join_all(clients).await;
    let retries: u32 = acknowledged.iter().map(|a| a.2).sum();
    eprintln!("40 keys acknowledged after {retries} failed attempts");
    assert!(retries >= 10, "the run should have forced retries (got {retries})");

    // Let attempts abandoned by their clients finish on the server, then check the invariant.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_dense_sequences(&app, 40).await;
    assert_eq!(
        pg_count(&app, "SELECT count(DISTINCT idempotency_key) FROM deployments").await,
        40
    );
    assert_eq!(
        pg_count(&app, "SELECT count(*) FROM deployment_audit").await,
        80,
        "2 audit rows each"
    );
    for (key, id, _) in &acknowledged {
        let (status, body) = app.get_json(&format!("/api/v1/deployments/{id}")).await;
        assert_eq!(status, 200);
        assert_eq!(body["idempotency_key"].as_str(), Some(key.as_str()));
    }
    // A late retry of an acknowledged key is a replay, not a new deployment.
    let (status, _, body, headers) = deploy(&app, Some("burst-key-0"), json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(body["id"].as_str(), Some(acknowledged[0].1.as_str()));
    assert!(app.metric(r#"deployments_total{mode="sync",outcome="replayed"}"#).await >= 1.0);
    assert_eq!(pg_count(&app, "SELECT count(*) FROM deployments").await, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_validate_their_input_and_read_back() {
    let app = spawn_app(Db::Sqlite, &["--deploy-work-ms", "10"]).await;

    let (status, _, body, headers) = deploy(
        &app,
        Some("first"),
        json!({"name": "api", "environment": "staging", "replicas": 3, "image": "ignored:1"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "succeeded");
    assert_eq!(
        (body["name"].as_str(), body["replicas"].as_i64()),
        (Some("api"), Some(3))
    );
    let location = headers["location"].to_str().unwrap().to_string();
    let (status, read) = app.get_json(&location).await;
    assert_eq!((status, &read), (200, &body));

    let (status, _, replay, headers) = deploy(&app, Some("first"), json!({"name": "other"})).await;
    assert_eq!((status, &replay["id"]), (200, &body["id"]));
    assert_eq!(headers["idempotent-replayed"], "true");

    // An empty body takes the defaults; so does the path without the trailing slash.
    let resp = app.client.post(app.url("/api/v1/deployments")).send().await.unwrap();
    assert_eq!(resp.status(), 201);

    let bad = [
        (json!({"replicas": 0}), "replicas"),
        (json!({"replicas": "three"}), "replicas"),
        (json!({"name": ""}), "name"),
        (json!({"environment": 7}), "environment"),
        (json!([1, 2]), "body"),
    ];
    for (payload, param) in bad {
        let (status, _, body, _) = deploy(&app, None, payload.clone()).await;
        assert_eq!(
            (status, body["parameter"].as_str()),
            (422, Some(param)),
            "{payload}: {body}"
        );
    }
    let (status, _, body, _) = deploy(&app, None, json!({"replicas": 101})).await;
    assert_eq!(body["range"], json!({"min": 1, "max": 100}));
    assert_eq!(status, 422);
    let resp = app
        .client
        .post(app.url(PATH))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let long_key = "k".repeat(256);
    let (status, _, body, _) = deploy(&app, Some(&long_key), json!({})).await;
    assert_eq!((status, body["parameter"].as_str()), (422, Some("Idempotency-Key")));

    let (status, body) = app.get_json("/api/v1/deployments/not-a-uuid").await;
    assert_eq!((status, body["parameter"].as_str()), (422, Some("id")));
    let (status, body) = app
        .get_json("/api/v1/deployments/00000000-0000-4000-8000-000000000000")
        .await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));

    // Async on SQLite too: 202 now, succeeded soon after.
    app.set_knobs(json!({"deploy_mode": "async"})).await;
    let (status, _, body, headers) = deploy(&app, None, json!({})).await;
    assert_eq!((status, body["status"].as_str()), (202, Some("queued")));
    let location = headers["location"].to_str().unwrap().to_string();
    let done = eventually(Duration::from_secs(5), || async {
        app.get_json(&location).await.1["status"] == "succeeded"
    })
    .await;
    assert!(done);
    assert_eq!(app.get_json(&location).await.1["sequence"], 3);
}
