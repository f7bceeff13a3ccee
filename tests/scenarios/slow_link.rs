//! `slow-link`: with `--link-proxy true` the app reaches PostgreSQL, Redis and the downstream
//! through its own TCP fault proxy, and `PUT /admin/links/{link}` makes a link sick. The toxics
//! are checked one by one against a plain TCP peer, then against the real services: +20 ms per
//! round trip on the PostgreSQL link cuts the pool's capacity to pool / (its new service time),
//! and a right-sized pool restores it; a blackholed database or Redis link hangs requests in
//! fragile and is cut by the request timeout, or served stale, in hardened.

use std::time::{Duration, Instant};

use chokepoint::infra::link_proxy::{LinkProxies, Toxics};
use chokepoint::scenarios::slow_link::LinksView;
use futures::future::join_all;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{spawn_app, unique_prefix, Db, TestApp, REDIS_ADDR};

// ---- the toxics, against a plain TCP peer --------------------------------------------------

/// A peer that echoes what it reads, or, after reading `send:<n>\n`, sends n bytes and closes.
async fn peer() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    if let Some(count) = text.strip_prefix("send:") {
                        let count: usize = count.trim().parse().unwrap();
                        let _ = s.write_all(&vec![b'x'; count]).await;
                        return;
                    }
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn toxics(spec: Value) -> Option<Toxics> {
    Some(Toxics::parse(serde_json::from_value(spec).unwrap()).unwrap())
}

async fn echo_time(addr: std::net::SocketAddr) -> Duration {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let t = Instant::now();
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    t.elapsed()
}

/// Reads until EOF or error: (bytes, how it ended, when).
async fn drain(s: &mut TcpStream) -> (usize, std::io::Result<()>, Duration) {
    let t = Instant::now();
    let mut total = 0;
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => return (total, Ok(()), t.elapsed()),
            Ok(n) => total += n,
            Err(e) => return (total, Err(e), t.elapsed()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_toxic_does_what_toxiproxy_does() {
    let upstream = peer().await;
    let registry = prometheus::Registry::new();
    let proxies = LinkProxies::start(&[("downstream", upstream)], &registry).unwrap();
    let link = proxies.get("downstream").unwrap();
    let addr = link.listen;

    // latency: every round trip costs it.
    let clean = echo_time(addr).await;
    link.set(toxics(json!({"latency": "80ms"})));
    let slow = echo_time(addr).await;
    assert!(
        slow >= Duration::from_millis(80) && slow < clean + Duration::from_millis(300),
        "{clean:?} → {slow:?}"
    );

    // bandwidth: 256 KiB at 512 KiB/s take about half a second.
    link.set(toxics(json!({"bandwidth_kbps": 512})));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"send:262144\n").await.unwrap();
    let (n, end, took) = drain(&mut s).await;
    assert_eq!((n, end.is_ok()), (262144, true));
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // limit_data: the connection closes after that many bytes.
    link.set(toxics(json!({"limit_data": 1000})));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"send:5000\n").await.unwrap();
    assert_eq!(drain(&mut s).await.0, 1000);

    // slow_close: the dependency's close arrives that much later.
    link.set(toxics(json!({"slow_close": "400ms"})));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"send:10\n").await.unwrap();
    let (n, _, took) = drain(&mut s).await;
    assert_eq!(n, 10);
    assert!(took >= Duration::from_millis(400), "{took:?}");

    // reset_peer 0ms: reset at once.
    link.set(toxics(json!({"reset_peer": "0ms"})));
    // (On loopback the reset can beat the connect's own completion.)
    let reset = match TcpStream::connect(addr).await {
        Err(e) => e.kind(),
        Ok(mut s) => drain(&mut s).await.1.unwrap_err().kind(),
    };
    assert_eq!(reset, std::io::ErrorKind::ConnectionReset);

    // reset_peer 200ms on an open connection: it works, then it is reset.
    link.set(toxics(json!({"reset_peer": "200ms"})));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"ok").await.unwrap();
    let mut two = [0u8; 2];
    s.read_exact(&mut two).await.unwrap();
    let (_, end, took) = drain(&mut s).await;
    assert!(
        end.is_err() && took >= Duration::from_millis(100),
        "{end:?} after {took:?}"
    );

    // timeout 0ms: a blackhole; nothing passes until it is cleared, then new data flows.
    link.set(toxics(json!({"timeout": "0ms"})));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"lost").await.unwrap();
    let mut buf = [0u8; 4];
    let read = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await;
    assert!(read.is_err(), "the blackhole answered: {read:?}");
    link.set(None);
    s.write_all(b"back").await.unwrap();
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"back");

    let families = registry.gather();
    let active = families.iter().find(|f| f.name() == "link_faults_active").unwrap();
    assert!(
        active.get_metric().iter().all(|m| m.get_gauge().get_value() == 0.0),
        "cleared: no toxic active"
    );
    let resets = families.iter().find(|f| f.name() == "link_resets_total").unwrap();
    let downstream = resets
        .get_metric()
        .iter()
        .find(|m| m.get_label().iter().any(|l| l.value() == "downstream"))
        .unwrap();
    assert!(
        downstream.get_counter().get_value() >= 3.0,
        "limit_data and two resets counted"
    );
}

// ---- the real services ---------------------------------------------------------------------

async fn put_link(app: &TestApp, link: &str, body: Value) -> (u16, Value) {
    let resp = app
        .client
        .put(app.url(&format!("/admin/links/{link}")))
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn sicken(app: &TestApp, link: &str, body: Value) {
    let (status, resp) = put_link(app, link, body.clone()).await;
    assert_eq!(status, 200, "PUT /admin/links/{link} {body}: {resp}");
}

async fn clear(app: &TestApp, link: &str) {
    let resp = app
        .client
        .delete(app.url(&format!("/admin/links/{link}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// Mean latency of `n` unloaded holds.
async fn service_time(app: &TestApp, n: u32) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..n {
        let t = Instant::now();
        assert_eq!(app.get("/api/db/hold?ms=100").await.status(), 200);
        total += t.elapsed();
    }
    total / n
}

/// Holds completed per second by `clients` closed-loop clients over `secs`.
async fn throughput(app: &TestApp, clients: usize, secs: f64) -> f64 {
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(secs);
    let done = join_all((0..clients).map(|_| async {
        let mut n = 0u32;
        while Instant::now() < until {
            if app.get("/api/db/hold?ms=100").await.status() == 200 {
                n += 1;
            }
        }
        n
    }))
    .await;
    done.iter().sum::<u32>() as f64 / start.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_got_slow_capacity_falls_to_pool_over_the_new_service_time_and_a_bigger_pool_restores_it() {
    // Pool of 4, 100 ms holds, every connection through the link proxy.
    let app = spawn_app(
        Db::Postgres,
        &["--link-proxy", "--db-pool-size", "4", "--db-max-overflow", "0"],
    )
    .await;
    let view: LinksView = serde_json::from_value(app.get_json("/admin/links").await.1).unwrap();
    assert!(
        view.enabled && view.links.iter().any(|l| l.link == "postgres"),
        "{view:?}"
    );

    let clean = service_time(&app, 5).await;
    let fast = throughput(&app, 16, 2.5).await;
    sicken(&app, "postgres", json!({"latency": "20ms"})).await;
    let sick = service_time(&app, 5).await;
    let added = sick.saturating_sub(clean);
    let round_trips = added.as_secs_f64() / 0.020;
    assert!(
        (1.5..=10.0).contains(&round_trips),
        "+{added:?}: {round_trips:.1} round trips of 20 ms"
    );

    // Little's law with the new service time: pool / (hold + round trips × 20 ms). A connection
    // is held one round trip past the answer: the release-time guard asks the server whether
    // it is still inside a transaction.
    let held = sick.as_secs_f64() + 0.020;
    let predicted = 4.0 / held;
    let slow = throughput(&app, 16, 3.0).await;
    assert!(
        (slow / predicted - 1.0).abs() <= 0.15,
        "predicted {predicted:.1} req/s (held {held:.3} s), measured {slow:.1}; clean {fast:.1}"
    );
    assert!(slow < fast * 0.85, "{slow:.1} vs {fast:.1}");
    assert_eq!(
        app.metric("link_faults_active{link=\"postgres\",toxic=\"latency\"}")
            .await,
        1.0
    );

    // The cure: a pool sized for the new service time serves the old rate again.
    let pool = (fast * held).ceil() as u32;
    app.set_knobs(json!({"db_pool_size": pool})).await;
    let cured = throughput(&app, 16, 3.0).await;
    assert!(
        cured >= fast * 0.85,
        "pool {pool}: {cured:.1} req/s vs {fast:.1} before the link got slow"
    );
    eprintln!(
        "slow-link: clean {fast:.1} req/s (hold {clean:?}); +20 ms per round trip: hold {sick:?}, \
         {round_trips:.1} round trips, predicted {predicted:.1} req/s, measured {slow:.1}; pool {pool}: {cured:.1} req/s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_database_link_hangs_fragile_requests_and_the_request_timeout_cuts_them() {
    let app = spawn_app(Db::Postgres, &["--link-proxy"]).await;
    assert_eq!(app.get("/api/db/hold?ms=10").await.status(), 200);
    sicken(&app, "postgres", json!({"timeout": "0ms"})).await;

    // Fragile: no request timeout, the request hangs (the client gives up at 1.5 s).
    let hung = app
        .client
        .get(app.url("/api/db/hold?ms=10"))
        .timeout(Duration::from_millis(1500))
        .send()
        .await;
    assert!(hung.is_err_and(|e| e.is_timeout()), "a blackholed link answered");

    // The cure: the db group's request timeout answers 504 at its limit.
    app.set_knobs(json!({"request_timeout_db_ms": 400})).await;
    let t = Instant::now();
    let (status, body) = app.get_json("/api/db/hold?ms=10").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (504, Some("request_timeout")),
        "{body}"
    );
    assert!(t.elapsed() < Duration::from_millis(1200), "{:?}", t.elapsed());

    // Cleared: the lab recovers (the cut connections are not reused).
    clear(&app, "postgres").await;
    let mut ok = false;
    for _ in 0..50 {
        if app.get("/api/db/hold?ms=10").await.status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the lab did not recover once the link was cleared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_redis_link_hangs_cache_reads_until_a_redis_timeout_serves_them_stale() {
    let prefix = unique_prefix();
    let url = format!("redis://{REDIS_ADDR}");
    let app = spawn_app(
        Db::Sqlite,
        &[
            "--link-proxy",
            "--redis-url",
            &url,
            "--redis-key-prefix",
            &prefix,
            "--cache-query-ms",
            "10",
        ],
    )
    .await;
    let (status, body) = app.get_json("/api/cache/items/7").await;
    assert_eq!(status, 200, "{body}");
    sicken(&app, "redis", json!({"timeout": "0ms"})).await;

    let hung = app
        .client
        .get(app.url("/api/cache/items/7"))
        .timeout(Duration::from_millis(1500))
        .send()
        .await;
    assert!(
        hung.is_err_and(|e| e.is_timeout()),
        "a blackholed Redis answered in fragile"
    );

    app.set_knobs(json!({"redis_timeout_ms": 100, "cache_serve_stale": true}))
        .await;
    let t = Instant::now();
    let (status, body) = app.get_json("/api/cache/items/7").await;
    assert_eq!(status, 200, "{body}");
    assert!(t.elapsed() < Duration::from_millis(1000), "{:?}", t.elapsed());
    clear(&app, "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_downstream_link_slows_and_truncates_calls() {
    let app = spawn_app(Db::Sqlite, &["--link-proxy"]).await;
    let t = Instant::now();
    assert_eq!(app.get("/api/deliver").await.status(), 200);
    let clean = t.elapsed();
    sicken(&app, "downstream", json!({"latency": "300ms"})).await;
    let t = Instant::now();
    assert_eq!(app.get("/api/deliver").await.status(), 200);
    let slow = t.elapsed();
    assert!(slow >= clean + Duration::from_millis(250), "{clean:?} → {slow:?}");

    sicken(&app, "downstream", json!({"limit_data": 20})).await;
    let (status, body) = app.get_json("/api/deliver").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (502, Some("downstream_error")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_toxics_are_validated_and_need_the_proxy() {
    let off = spawn_app(Db::Sqlite, &[]).await;
    let (status, body) = put_link(&off, "downstream", json!({"latency": "20ms"})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("link_proxy_off")),
        "{body}"
    );

    let app = spawn_app(Db::Sqlite, &["--link-proxy"]).await;
    let (status, body) = put_link(&app, "postgres", json!({"latency": "20ms"})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("link_not_proxied")),
        "{body}"
    );
    for (link, toxics, param) in [
        ("nope", json!({"latency": "20ms"}), "link"),
        ("downstream", json!({}), "toxics"),
        ("downstream", json!({"latency": "2 minutes"}), "latency"),
        ("downstream", json!({"bandwidth_kbps": 0}), "bandwidth_kbps"),
        ("downstream", json!({"limit_data": 0}), "limit_data"),
        ("downstream", json!({"lag": "1s"}), "body"),
    ] {
        let (status, body) = put_link(&app, link, toxics.clone()).await;
        assert_eq!(
            (status, body["parameter"].as_str()),
            (422, Some(param)),
            "{toxics}: {body}"
        );
    }
    sicken(&app, "downstream", json!({"latency": "1ms"})).await;
    assert_eq!(app.post_json("/admin/reset").await.0, 200);
    let view: LinksView = serde_json::from_value(app.get_json("/admin/links").await.1).unwrap();
    assert!(view.links.iter().all(|l| l.active.is_empty()), "{view:?}");
}
