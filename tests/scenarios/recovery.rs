//! Recovery without a restart: after each scenario's load stops, `/api/ping` latency returns to
//! its baseline within 10 s (the OOM scenario excepted by design: its cure is the kill). One app
//! (fragile profile, the machine's Redis for the cache) takes every load in turn; the time each
//! took to recover is printed.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use crate::common::{median, spawn_app, unique_prefix, Db, TestApp, REDIS_ADDR};
use futures::future::join_all;

const RECOVER_WITHIN: Duration = Duration::from_secs(10);

/// Median of 10 sequential pings.
async fn ping_median(app: &TestApp) -> Duration {
    let mut xs = Vec::with_capacity(10);
    for _ in 0..10 {
        let start = Instant::now();
        let resp = app.get("/api/ping").await;
        assert_eq!(resp.status(), 200);
        xs.push(start.elapsed());
    }
    median(xs)
}

/// `n` concurrent requests (any status: the load may be refused, that is the point).
async fn concurrent(app: &TestApp, n: usize, method: &str, path: &str) {
    let reqs = (0..n).map(|_| {
        let req = match method {
            "POST" => app.client.post(app.url(path)),
            _ => app.client.get(app.url(path)),
        };
        async move {
            let _ = req.send().await.map(|r| r.status());
        }
    });
    join_all(reqs).await;
}

type Load<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_latency_returns_to_baseline_after_every_scenario() {
    let redis = format!("redis://{REDIS_ADDR}");
    let prefix = unique_prefix();
    let app = spawn_app(
        Db::Sqlite,
        &[
            "--redis-url",
            &redis,
            "--redis-key-prefix",
            &prefix,
            "--worker-count",
            "2",
        ],
    )
    .await;
    // Warm up, then the baseline.
    for _ in 0..20 {
        app.get("/api/ping").await;
    }
    let baseline = ping_median(&app).await;
    let bound = baseline * 3 + Duration::from_millis(2);
    eprintln!("baseline /api/ping median {baseline:?}; recovered means ≤ {bound:?}");

    let loads: Vec<(&str, Load)> = vec![
        (
            "cpu",
            Box::pin(concurrent(&app, 8, "GET", "/api/cpu-intensive?complexity=35")),
        ),
        (
            "cpu (blocking)",
            Box::pin(concurrent(&app, 2, "GET", "/api/blocking?duration=1")),
        ),
        (
            "memory",
            Box::pin(async {
                concurrent(&app, 4, "GET", "/api/memory-spike?size_mb=50").await;
                concurrent(&app, 3, "GET", "/api/memory-leak?size_mb=20").await;
                app.post("/api/clear-memory").await;
            }),
        ),
        ("db-pool", Box::pin(concurrent(&app, 30, "GET", "/api/db/hold?ms=300"))),
        (
            "downstream",
            Box::pin(concurrent(&app, 20, "GET", "/api/call-downstream?timeout=1")),
        ),
        (
            "worker-pool",
            Box::pin(concurrent(&app, 50, "GET", "/api/worker-pool?work_ms=50")),
        ),
        (
            "retry-storm",
            Box::pin(concurrent(&app, 20, "GET", "/api/deliver?failure_rate=0.5")),
        ),
        (
            "cold-start",
            Box::pin(concurrent(&app, 15, "GET", "/api/cold-start?work_ms=100")),
        ),
        ("burst", Box::pin(concurrent(&app, 30, "POST", "/api/v1/deployments/"))),
        (
            "cache-stampede",
            Box::pin(async {
                app.post("/admin/cache/flush").await;
                concurrent(&app, 30, "GET", "/api/cache/items/7").await;
            }),
        ),
    ];
    let mut slow = vec![];
    for (name, load) in loads {
        let started = Instant::now();
        load.await;
        let load_took = started.elapsed();
        let stopped = Instant::now();
        let recovered = loop {
            let m = ping_median(&app).await;
            if m <= bound {
                break Some(stopped.elapsed());
            }
            if stopped.elapsed() > RECOVER_WITHIN {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        eprintln!("{name:>16}: load {load_took:>10.2?}, ping back to baseline after {recovered:.2?}");
        if recovered.is_none() {
            slow.push(name);
        }
    }
    assert!(
        slow.is_empty(),
        "ping did not recover within {RECOVER_WITHIN:?} after: {slow:?}"
    );
    let (status, _) = app.get_json("/ready").await;
    assert_eq!(status, 200, "still ready, no restart");
}
