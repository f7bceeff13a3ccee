//! worker-pool-grpc: the thread-pool report over real gRPC (tonic), on its own port. Measured:
//! past the pool's capacity every call ends in status 4 DEADLINE_EXCEEDED while the workers
//! finish abandoned work (fragile); a bounded queue answers RESOURCE_EXHAUSTED at once and no
//! abandoned work runs (hardened).

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
    // The default work (100 ms) under the knob's 2 s deadline.
    let reply = c
        .work(WorkRequest {
            work_ms: 0,
            mode: 0,
            deadline_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.work_ms, reply.deadline_ms), (100, 2000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_port_can_be_turned_off() {
    let app = spawn_app(Db::Sqlite, &["--grpc-port", "off"]).await;
    let (_, index) = app.get_json("/").await;
    assert!(index["grpc"].is_null(), "{index}");
    assert!(chokepoint::settings::Settings::from_flags(["--grpc-port", "http"]).is_err());
}
