//! `cache-stampede`, against the real Redis: a flushed hot key sends every concurrent request to
//! the database and exhausts its pool, unless single-flight lets one load serve them all; keys
//! filled together expire together unless their TTLs are jittered; a Redis outage is a 500 for
//! every request, unless stale values are served under a Redis timeout.

use std::time::{Duration, Instant};

use crate::common::{spawn_app, unique_prefix, Db, FaultProxy, LinkMode, TestApp, REDIS_ADDR};
use deadpool_redis::redis::{self, AsyncCommands};
use futures::future::join_all;
use serde_json::{json, Value};

async fn spawn_cached(db: Db, redis_addr: &str, prefix: &str, extra: &[&str]) -> TestApp {
    let url = format!("redis://{redis_addr}");
    let mut flags = vec!["--redis-url", url.as_str(), "--redis-key-prefix", prefix];
    flags.extend_from_slice(extra);
    spawn_app(db, &flags).await
}

async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{REDIS_ADDR}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis at 127.0.0.1:6379 (scripts/ensure-services.sh starts it)")
}

async fn read(app: &TestApp, id: u64) -> (u16, Value) {
    app.get_json(&format!("/api/cache/items/{id}")).await
}

/// `n` concurrent GETs of one item: statuses and `cache` results.
async fn herd(app: &TestApp, id: u64, n: usize) -> Vec<(u16, Value)> {
    join_all((0..n).map(|_| read(app, id))).await
}

fn count(results: &[(u16, Value)], status: u16) -> usize {
    results.iter().filter(|r| r.0 == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_hot_key_stampedes_the_database_unless_loads_are_single_flight() {
    // DB pool of 2, a 200 ms query behind each miss, a 500 ms acquire timeout.
    let prefix = unique_prefix();
    let app = spawn_cached(
        Db::Postgres,
        REDIS_ADDR,
        &prefix,
        &[
            "--db-pool-size",
            "2",
            "--db-max-overflow",
            "0",
            "--db-pool-timeout",
            "0.5",
            "--cache-query-ms",
            "200",
        ],
    )
    .await;
    let (status, first) = app.get_json("/api/cache/items/1").await;
    assert_eq!((status, first["cache"].as_str()), (200, Some("miss")), "{first}");
    let (_, second) = app.get_json("/api/cache/items/1").await;
    assert_eq!(second["cache"], "hit");
    assert_eq!(second["item"], first["item"]);

    // Collapse: the key vanishes (a flush, like a mass expiry) under 40 concurrent readers.
    let (status, flushed) = app.post_json("/admin/cache/flush").await;
    assert_eq!((status, flushed["deleted"].as_u64()), (200, Some(1)));
    let loads_before = app.metric("cache_db_loads_total").await;
    let results = herd(&app, 1, 40).await;
    let loads = app.metric("cache_db_loads_total").await - loads_before;
    let (ok, unavailable) = (count(&results, 200), count(&results, 503));
    eprintln!("no single-flight: {loads} DB loads, {ok} ok, {unavailable} × 503");
    assert_eq!(ok + unavailable, 40);
    assert!(loads >= 35.0, "every miss went to the database ({loads})");
    assert!(unavailable >= 20, "the pool was exhausted ({unavailable} × 503)");
    assert!(results
        .iter()
        .filter(|r| r.0 == 503)
        .all(|r| r.1["error"] == "db_pool_timeout"));
    assert!(app.metric("db_pool_acquire_timeouts_total").await >= unavailable as f64);

    // Fix: single-flight. The same herd makes one load, and everyone gets the item.
    app.set_knobs(json!({"cache_single_flight": true})).await;
    app.post_json("/admin/cache/flush").await;
    let loads_before = app.metric("cache_db_loads_total").await;
    let results = herd(&app, 1, 40).await;
    let loads = app.metric("cache_db_loads_total").await - loads_before;
    let coalesced = results.iter().filter(|r| r.1["cache"] == "coalesced").count();
    eprintln!(
        "single-flight: {loads} DB load(s), {} ok, {coalesced} coalesced",
        count(&results, 200)
    );
    assert_eq!(count(&results, 200), 40);
    assert_eq!(loads, 1.0);
    assert!(coalesced >= 35, "coalesced {coalesced}");
    assert!(app.metric(r#"cache_requests_total{result="coalesced"}"#).await >= coalesced as f64);
    let (_, after) = app.get_json("/api/cache/items/1").await;
    assert_eq!(after["cache"], "hit", "the single load filled the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_filled_together_expire_together_unless_ttls_are_jittered() {
    let prefix = unique_prefix();
    let app = spawn_cached(
        Db::Sqlite,
        REDIS_ADDR,
        &prefix,
        &["--cache-query-ms", "0", "--cache-ttl-ms", "60000"],
    )
    .await;
    let mut redis = redis_conn().await;

    // Remaining TTLs (ms) of 50 keys filled in one burst.
    async fn fill_and_read_ttls(
        app: &TestApp,
        redis: &mut redis::aio::MultiplexedConnection,
        prefix: &str,
    ) -> Vec<i64> {
        app.post_json("/admin/cache/flush").await;
        let results = join_all((1..=50u64).map(|id| read(app, id))).await;
        assert!(results.iter().all(|r| r.0 == 200 && r.1["cache"] == "miss"));
        let mut ttls = vec![];
        for id in 1..=50 {
            let ttl: i64 = redis.pttl(format!("{prefix}item:{id}")).await.unwrap();
            assert!(ttl > 0, "item {id} has a TTL");
            ttls.push(ttl);
        }
        ttls.sort();
        ttls
    }
    // Keys expiring within one second of the first to go: the herd that arrives together.
    fn first_second(ttls: &[i64]) -> usize {
        ttls.iter().filter(|t| **t - ttls[0] < 1000).count()
    }

    let fixed = fill_and_read_ttls(&app, &mut redis, &prefix).await;
    let spread = fixed[49] - fixed[0];
    eprintln!(
        "fixed TTL: spread {spread} ms, {} of 50 expire in the same second",
        first_second(&fixed)
    );
    assert!(spread < 1000, "spread {spread} ms");
    assert_eq!(first_second(&fixed), 50);

    app.set_knobs(json!({"cache_ttl_jitter_percent": 20})).await;
    let jittered = fill_and_read_ttls(&app, &mut redis, &prefix).await;
    let spread = jittered[49] - jittered[0];
    eprintln!(
        "±20% jitter: spread {spread} ms, {} of 50 expire in the first second",
        first_second(&jittered)
    );
    // Uniform over 48..72 s: 50 draws span about 23 s, a few land in any one second.
    assert!(spread > 15_000, "spread {spread} ms");
    assert!(jittered[0] >= 47_000 && jittered[49] <= 72_000, "{jittered:?}");
    assert!(first_second(&jittered) <= 10, "{}", first_second(&jittered));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_a_500_unless_stale_values_are_served() {
    let proxy = FaultProxy::start(REDIS_ADDR).await;
    let prefix = unique_prefix();
    let addr = proxy.addr.to_string();
    let app = spawn_cached(Db::Sqlite, &addr, &prefix, &["--cache-query-ms", "20"]).await;
    for id in 1..=10 {
        let (status, body) = read(&app, id).await;
        assert_eq!(status, 200, "{body}");
    }

    // Collapse: Redis goes away. Every read fails with it.
    proxy.set(LinkMode::Refuse);
    let results = join_all((1..=10u64).map(|id| read(&app, id))).await;
    eprintln!("outage, fragile: {:?}", results.iter().map(|r| r.0).collect::<Vec<_>>());
    assert_eq!(count(&results, 500), 10);
    assert!(results.iter().all(|r| r.1["error"] == "redis_error"));
    assert!(app.metric(r#"cache_requests_total{result="error"}"#).await >= 10.0);

    // Fix: serve stale under a Redis timeout. Known items come from the last values seen;
    // an item never seen goes to the database.
    app.set_knobs(json!({"cache_serve_stale": true, "redis_timeout_ms": 100, "cache_single_flight": true}))
        .await;
    let results = join_all((1..=10u64).map(|id| read(&app, id))).await;
    assert!(
        results.iter().all(|r| r.0 == 200 && r.1["cache"] == "stale"),
        "{results:?}"
    );
    let (status, body) = app.get_json("/api/cache/items/99").await;
    assert_eq!((status, body["cache"].as_str()), (200, Some("bypass")));

    // A stalled Redis (connections open, nothing answered): the fragile lab hangs with it...
    proxy.set(LinkMode::Hang);
    app.set_knobs(json!({"cache_serve_stale": false, "redis_timeout_ms": 0}))
        .await;
    let hung = app
        .client
        .get(app.url("/api/cache/items/1"))
        .timeout(Duration::from_millis(1500))
        .send()
        .await;
    assert!(
        hung.is_err_and(|e| e.is_timeout()),
        "a stalled Redis stalls the fragile read"
    );
    // ...and the timeout + serve-stale answers in about the timeout.
    app.set_knobs(json!({"cache_serve_stale": true, "redis_timeout_ms": 100}))
        .await;
    let start = Instant::now();
    let results = join_all((1..=10u64).map(|id| read(&app, id))).await;
    let took = start.elapsed();
    eprintln!("stalled Redis, serve-stale: 10 answers in {took:?}");
    assert!(
        results.iter().all(|r| r.0 == 200 && r.1["cache"] == "stale"),
        "{results:?}"
    );
    assert!(took < Duration::from_millis(1000), "{took:?}");
    assert!(app.metric(r#"redis_errors_total{kind="timeout"}"#).await >= 10.0);

    // Redis back: hits again, no restart.
    proxy.set(LinkMode::Forward);
    let recovered = crate::common::eventually(Duration::from_secs(5), || async {
        app.get_json("/api/cache/items/1").await.1["cache"] == "hit"
    })
    .await;
    assert!(recovered, "reads hit Redis again once it is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_cache_says_how_to_enable_it_and_ids_are_validated() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    let (status, body) = app.get_json("/api/cache/items/1").await;
    assert_eq!((status, body["error"].as_str()), (503, Some("redis_not_configured")));
    assert!(body["detail"].as_str().unwrap().contains("REDIS_URL"), "{body}");
    let (status, _) = app.post_json("/admin/cache/flush").await;
    assert_eq!(status, 503);

    let app = spawn_cached(Db::Sqlite, REDIS_ADDR, &unique_prefix(), &[]).await;
    for bad in ["0", "10001", "abc", "-1"] {
        let (status, body) = app.get_json(&format!("/api/cache/items/{bad}")).await;
        assert_eq!((status, body["parameter"].as_str()), (422, Some("id")), "{bad}: {body}");
        assert_eq!(body["range"], json!({"min": 1, "max": 10000}));
    }
    // Redis pool knobs change live.
    app.set_knobs(json!({"redis_pool_size": 2, "redis_pool_timeout_ms": 50}))
        .await;
    let results = herd(&app, 5, 10).await;
    assert_eq!(count(&results, 200), 10);
}
