//! `cpu`: CPU work inline on the async workers slows *unrelated* routes. With 2 workers busy
//! computing fibonacci, `/health` latency rises by a large factor over its idle latency.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{median, spawn_app_alone, Db, TestApp};

async fn health_latency(app: &TestApp, samples: usize) -> Duration {
    let mut xs = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        let resp = app.get("/health").await;
        assert_eq!(resp.status(), 200);
        xs.push(start.elapsed());
    }
    median(xs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_cpu_work_slows_the_health_probe() {
    // Arrange: 2 async workers, as in a small pod.
    let app = spawn_app_alone(Db::Sqlite, &["--worker-count", "2"]).await;
    health_latency(&app, 5).await; // warm the connection
    let idle = health_latency(&app, 30).await;

    // Act: 6 clients keep both workers computing fib(32), bounded in time and count.
    let (loaded, cpu_requests, shed) = health_under_cpu_load(&app).await;

    // Assert: the probe is at least 5x slower while the workers compute.
    let ratio = loaded.as_secs_f64() / idle.as_secs_f64();
    eprintln!("idle {idle:?}, loaded {loaded:?}, ratio {ratio:.1}, cpu requests {cpu_requests:.1}/s");
    assert!(cpu_requests > 0.5, "the load never ran");
    assert_eq!(shed, 0, "the fragile profile never sheds");
    assert!(
        ratio >= 5.0,
        "/health median went from {idle:?} to {loaded:?} (ratio {ratio:.1})"
    );

    // And it recovers once the load stops.
    let after = health_latency(&app, 30).await;
    assert!(
        after.as_secs_f64() < loaded.as_secs_f64() / 2.0,
        "after {after:?} vs loaded {loaded:?}"
    );
}

/// Returns (the loaded probe's latency, fib(32) served per second, shed). Keeps 6 clients on fib(32) for the duration of a `/health` measurement; returns the loaded
/// median and how many CPU requests were (answered 200, shed with 503).
async fn health_under_cpu_load(app: &TestApp) -> (Duration, f64, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..6)
        .map(|_| {
            let (stop, client, url) = (
                stop.clone(),
                app.client.clone(),
                app.url("/api/cpu-intensive?complexity=32"),
            );
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(20);
                let (mut ok, mut shed) = (0, 0);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && ok + shed < 5_000 {
                    match client.get(&url).send().await.unwrap().status().as_u16() {
                        200 => ok += 1,
                        503 => {
                            shed += 1;
                            // A well-behaved client backs off when told to.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        other => panic!("unexpected status {other}"),
                    }
                }
                (ok, shed)
            })
        })
        .collect();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let loaded = health_latency(app, 30).await;
    // At least 3 s of load, so the served rate is measured over whole jobs.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
    let window = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut shed) = (0, 0);
    for h in load {
        let (o, s) = h.await.unwrap();
        ok += o;
        shed += s;
    }
    (loaded, ok as f64 / window.as_secs_f64(), shed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offload_keeps_the_health_probe_fast_under_the_same_load() {
    // Arrange: 2 async workers; measure the idle probe.
    let app = spawn_app_alone(Db::Sqlite, &["--worker-count", "2"]).await;
    health_latency(&app, 5).await;
    let idle = health_latency(&app, 30).await;

    // Act 1: fragile (inline CPU work).
    let (fragile, fragile_ok, fragile_shed) = health_under_cpu_load(&app).await;
    // Act 2: the same load after switching to hardened at runtime (offload, cap 2, shedding).
    app.switch_profile("hardened").await;
    let (hardened, hardened_ok, hardened_shed) = health_under_cpu_load(&app).await;

    // Assert: the probe's slowdown drops by at least 3x; only the excess CPU work is shed (2
    // slots + 2 waiting, 6 clients), and the cores stay as busy as inline: goodput kept.
    let (r_fragile, r_hardened) = (
        fragile.as_secs_f64() / idle.as_secs_f64(),
        hardened.as_secs_f64() / idle.as_secs_f64(),
    );
    eprintln!(
        "idle {idle:?}; fragile {fragile:?} (x{r_fragile:.1}, {fragile_ok:.1} ok/s, {fragile_shed} shed); \
         hardened {hardened:?} (x{r_hardened:.1}, {hardened_ok:.1} ok/s, {hardened_shed} shed)"
    );
    assert_eq!(fragile_shed, 0, "fragile never sheds");
    assert!(r_fragile >= 5.0, "fragile probe ratio only {r_fragile:.1}");
    assert!(
        r_hardened * 3.0 <= r_fragile,
        "hardened ratio {r_hardened:.1} vs fragile {r_fragile:.1}"
    );
    assert!(hardened_ok > 0.0, "offloaded work still completes");
    assert!(
        hardened_shed > 0,
        "6 clients over 2 slots and 2 waiting: some work must be shed"
    );
    // Goodput: fib(32) served per second, on the same two cores, at least 90% of inline's (the
    // waiting jobs take a freed slot at once; nothing idles between a refusal and a retry).
    assert!(
        hardened_ok >= 0.9 * fragile_ok,
        "hardened served {hardened_ok:.1} fib(32)/s, fragile {fragile_ok:.1}/s"
    );
    assert!(app.metric(r#"requests_shed_total{reason="cpu"}"#).await >= hardened_shed as f64);
}

/// `cpu_cost_model = seed` (the default) spends what the original Python lab spent on fib(N):
/// fib(27) cost it ~19 ms of CPU; Rust computes it in well under 2 ms (`native`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_cost_model_spends_the_originals_cpu_time() {
    let app = spawn_app_alone(Db::Sqlite, &[]).await;
    let cpu_ms = |body: serde_json::Value| body["cpu_ms"].as_f64().unwrap();
    let mut seed = Vec::new();
    for _ in 0..3 {
        let (status, body) = app.get_json("/api/cpu-intensive?complexity=27").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["cost_model"], "seed");
        seed.push(cpu_ms(body));
    }
    app.set_knobs(serde_json::json!({"cpu_cost_model": "native"})).await;
    let mut native = Vec::new();
    for _ in 0..3 {
        let (_, body) = app.get_json("/api/cpu-intensive?complexity=27").await;
        assert_eq!(body["cost_model"], "native");
        native.push(cpu_ms(body));
    }
    let table_ms = 19.323; // seed_cost::FIB_US[27]
    eprintln!("fib(27) CPU ms: seed {seed:?}, native {native:?}");
    for ms in &seed {
        assert!(
            (ms / table_ms - 1.0).abs() < 0.15,
            "seed {ms} ms vs the table's {table_ms}"
        );
    }
    let native_max = native.iter().cloned().fold(0.0, f64::max);
    assert!(native_max * 4.0 < table_ms, "native {native:?} is not Rust speed");
}
