//! worker-pool-grpc: the thread-pool report over real gRPC (tonic), on its own port. Measured:
//! past the pool's capacity every call ends in status 4 DEADLINE_EXCEEDED while the workers
//! finish abandoned work (fragile); a bounded queue answers RESOURCE_EXHAUSTED at once and no
//! abandoned work runs (hardened). And the report's own setup (200 users, client deadlines of
//! 5 s and 30 s) collapses at the defaults, scaled in time.

use std::time::{Duration, Instant};

use chokepoint::grpc::pb::worker_pool_client::WorkerPoolClient;
use chokepoint::grpc::pb::{Mode, WorkRequest};
use serde_json::json;
use tonic::transport::Channel;

use crate::common::{spawn_app, Db, TestApp};

async fn client(app: &TestApp) -> WorkerPoolClient<Channel> {
    let (_, index) = app.get_json("/").await;
    let addr = index["grpc"].as_str().expect("GET / names the gRPC address");
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    WorkerPoolClient::new(channel)
}

/// One call with `work_ms` of work under a `deadline`, sent in the request (`deadline_ms`): the
/// server alone decides when it has passed. (With `grpc-timeout`, tonic's client cuts the call
/// itself at the same instant and reports CANCELLED; k6's and grpc-go's clients report
/// DEADLINE_EXCEEDED either way: load-tests/worker-pool-grpc.js uses the header.)
async fn call(c: &mut WorkerPoolClient<Channel>, work_ms: u32, deadline: Duration) -> (tonic::Code, Duration) {
    let req = tonic::Request::new(WorkRequest {
        work_ms,
        mode: Mode::Block as i32,
        deadline_ms: deadline.as_millis() as u32,
    });
    let start = Instant::now();
    let code = match c.work(req).await {
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    };
    (code, start.elapsed())
}

/// `n` concurrent calls: the codes and each call's time.
async fn burst(app: &TestApp, n: usize, work_ms: u32, deadline: Duration) -> Vec<(tonic::Code, Duration)> {
    let c = client(app).await;
    let calls = (0..n).map(|_| {
        let mut c = c.clone();
        async move { call(&mut c, work_ms, deadline).await }
    });
    futures::future::join_all(calls).await
}

fn count(results: &[(tonic::Code, Duration)], code: tonic::Code) -> usize {
    results.iter().filter(|(c, _)| *c == code).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_capacity_every_late_call_is_deadline_exceeded_and_the_workers_waste_their_time() {
    // 2 workers, 200 ms of work, a 300 ms deadline: within its deadline the pool finishes one
    // job per worker (the second batch would end at 400 ms). 20 calls at once.
    let app = spawn_app(Db::Sqlite, &["--worker-pool-size", "2"]).await;
    let results = burst(&app, 20, 200, Duration::from_millis(300)).await;
    let ok = count(&results, tonic::Code::Ok);
    let late = count(&results, tonic::Code::DeadlineExceeded);
    assert_eq!((ok, late), (2, 18), "{results:?}");
    // The queue keeps the workers busy on calls nobody waits for any more: 18 × 200 ms / 2.
    let wasted_by = Instant::now() + Duration::from_secs(3);
    let mut wasted = 0.0;
    while Instant::now() < wasted_by {
        wasted = app.metric("worker_pool_wasted_work_total").await;
        if wasted >= 18.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(wasted, 18.0, "abandoned jobs the workers ran anyway");
    let handled = |code: &'static str| {
        let app = &app;
        async move {
            app.metric(&format!(
                "grpc_server_handled_total{{grpc_method=\"Work\",grpc_code=\"{code}\"}}"
            ))
            .await
        }
    };
    assert_eq!(handled("OK").await, 2.0);
    assert_eq!(handled("DeadlineExceeded").await, 18.0);
    eprintln!("worker-pool-grpc fragile: 2 workers, 20 calls of 200 ms under 300 ms: {ok} OK, {late} DEADLINE_EXCEEDED, {wasted} jobs run for nobody");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardened_refuses_at_once_and_sheds_abandoned_work() {
    let app = spawn_app(
        Db::Sqlite,
        &[
            "--profile",
            "hardened",
            "--worker-pool-size",
            "2",
            "--worker-queue-max",
            "2",
        ],
    )
    .await;
    let results = burst(&app, 20, 200, Duration::from_millis(300)).await;
    let ok = count(&results, tonic::Code::Ok);
    let refused: Vec<Duration> = results
        .iter()
        .filter(|(c, _)| *c == tonic::Code::ResourceExhausted)
        .map(|(_, t)| *t)
        .collect();
    // 2 running are taken. A queued call would start at 200 ms and end at 400 ms, past its
    // 300 ms deadline: deadline-aware admission refuses it at once, like the 16 past the queue.
    assert_eq!(refused.len(), 18, "{results:?}");
    assert_eq!(ok, 2, "{results:?}");
    assert_eq!(count(&results, tonic::Code::DeadlineExceeded), 0, "{results:?}");
    let slowest = refused.iter().max().unwrap();
    assert!(
        *slowest < Duration::from_millis(150),
        "RESOURCE_EXHAUSTED took {slowest:?}"
    );
    // Nothing runs for a caller that is gone, and nothing is cut at its deadline: every call
    // that was taken finished in time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.metric("worker_pool_wasted_work_total").await, 0.0);
    assert_eq!(
        app.metric("worker_pool_deadline_exceeded_total{stage=\"running\"}")
            .await,
        0.0
    );
    eprintln!(
        "worker-pool-grpc hardened: {ok} OK, {} RESOURCE_EXHAUSTED (slowest {slowest:?}), {} DEADLINE_EXCEEDED, 0 wasted",
        refused.len(),
        count(&results, tonic::Code::DeadlineExceeded)
    );

    // A caller that gives up before its job starts: the worker sheds the job.
    app.set_knobs(json!({"worker_queue_max": 0})).await;
    let mut c = client(&app).await;
    let blockers = (0..2).map(|_| {
        let mut c = c.clone();
        async move { call(&mut c, 400, Duration::from_secs(5)).await }
    });
    let blockers = tokio::spawn(futures::future::join_all(blockers));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A 5 s deadline, but the client walks away after 100 ms.
    let gone = tokio::time::timeout(Duration::from_millis(100), call(&mut c, 100, Duration::from_secs(5))).await;
    assert!(gone.is_err());
    let blocked = blockers.await.unwrap();
    assert!(blocked.iter().all(|(c, _)| *c == tonic::Code::Ok), "{blocked:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        app.metric("worker_pool_deadline_exceeded_total{stage=\"abandoned\"}")
            .await,
        1.0
    );
    assert_eq!(app.metric("worker_pool_wasted_work_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_invalid_argument_naming_the_field() {
    let app = spawn_app(Db::Sqlite, &[]).await;
    let mut c = client(&app).await;
    for (req, field) in [
        (
            WorkRequest {
                work_ms: 60_001,
                mode: 0,
                deadline_ms: 0,
            },
            "work_ms",
        ),
        (
            WorkRequest {
                work_ms: 10,
                mode: 7,
                deadline_ms: 0,
            },
            "mode",
        ),
        (
            WorkRequest {
                work_ms: 10,
                mode: 0,
                deadline_ms: 600_001,
            },
            "deadline",
        ),
    ] {
        let status = c.work(req).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{req:?}");
        assert!(status.message().contains(field), "{req:?}: {}", status.message());
    }
    // The default work (4.5 s: the report's setup collapses at it) under the knob's 30 s deadline.
    let reply = c
        .work(WorkRequest {
            work_ms: 0,
            mode: 0,
            deadline_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.work_ms, reply.deadline_ms), (4500, 30_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_port_can_be_turned_off() {
    let app = spawn_app(Db::Sqlite, &["--grpc-port", "off"]).await;
    let (_, index) = app.get_json("/").await;
    assert!(index["grpc"].is_null(), "{index}");
    assert!(chokepoint::settings::Settings::from_flags(["--grpc-port", "http"]).is_err());
}

/// The report's own setup, every time divided by 10: 200 closed-loop users (no think time),
/// 10 workers, the default work (4.5 s → 450 ms) and client deadlines of 5 s and 30 s (→ 500 ms
/// and 3 s), calls started within a minute (→ 6 s) and followed to their end. Returns
/// (OK, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, other).
async fn report_setup(app: &TestApp, deadline: Duration) -> (usize, usize, usize, usize) {
    const USERS: usize = 200;
    let work = (chokepoint::scenarios::worker_pool::REPORT_WORK_MS / 10) as u32;
    let window = Duration::from_secs(6);
    // A few connections, as several client processes would open.
    let mut channels = vec![];
    for _ in 0..4 {
        channels.push(client(app).await);
    }
    let end = Instant::now() + window;
    let users = (0..USERS).map(|i| {
        let mut c = channels[i % channels.len()].clone();
        async move {
            let mut codes = vec![];
            while Instant::now() < end {
                let (code, _) = call(&mut c, work, deadline).await;
                if code == tonic::Code::ResourceExhausted {
                    // Refused at once: a breath before the next call keeps the test's CPU bounded.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                codes.push(code);
            }
            codes
        }
    });
    let codes: Vec<tonic::Code> = futures::future::join_all(users).await.into_iter().flatten().collect();
    let n = |c| codes.iter().filter(|x| **x == c).count();
    let (ok, late, refused) = (
        n(tonic::Code::Ok),
        n(tonic::Code::DeadlineExceeded),
        n(tonic::Code::ResourceExhausted),
    );
    (ok, late, refused, codes.len() - ok - late - refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reports_setup_collapses_at_the_defaults_and_both_cures_serve() {
    let share = |part: usize, of: (usize, usize, usize, usize)| part as f64 / (of.0 + of.1 + of.2 + of.3) as f64;
    for deadline in [Duration::from_millis(500), Duration::from_secs(3)] {
        // Fragile at its defaults (10 workers): most calls end DEADLINE_EXCEEDED.
        let fragile = report_setup(&spawn_app(Db::Sqlite, &[]).await, deadline).await;
        // Option 1 of the report: 200 workers, no queue.
        let option1 = report_setup(&spawn_app(Db::Sqlite, &["--worker-pool-size", "200"]).await, deadline).await;
        // Hardened: 20 workers, a bounded queue, deadline-aware admission.
        let hardened = report_setup(&spawn_app(Db::Sqlite, &["--profile", "hardened"]).await, deadline).await;
        eprintln!(
            "report setup /10, deadline {deadline:?} (OK, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, other): fragile {fragile:?}, 200 workers {option1:?}, hardened {hardened:?}"
        );
        assert!(share(fragile.1, fragile) >= 0.8, "fragile {fragile:?}");
        assert!(share(option1.0, option1) >= 0.95, "200 workers {option1:?}");
        // Hardened: nothing late (a thread woken late may cut the odd call), and more served.
        assert!(share(hardened.1, hardened) <= 0.005, "hardened {hardened:?}");
        assert!(
            hardened.0 >= fragile.0,
            "hardened served {} < fragile {}",
            hardened.0,
            fragile.0
        );
        assert_eq!((fragile.3, option1.3, hardened.3), (0, 0, 0), "unexpected codes");
    }
}
