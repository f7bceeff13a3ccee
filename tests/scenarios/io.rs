//! `io`: waiting on slow I/O asynchronously is cheap, blocking the async worker is not. With a
//! single async worker, one blocking call freezes every route (the collapse); a hundred
//! asynchronous waits leave the probe fast (the cure: never block the worker).

use std::time::{Duration, Instant};

use crate::common::{spawn_app_alone, Db, TestApp};

/// Sends `request` in the background, then a `/health` probe 150 ms later; returns how long the
/// probe took, once the background requests have all answered 200.
async fn probe_beside(app: &TestApp, path: &str, concurrent: usize) -> Duration {
    let background: Vec<_> = (0..concurrent)
        .map(|_| {
            let (client, url) = (app.client.clone(), app.url(path));
            tokio::spawn(async move { client.get(&url).send().await.unwrap().status().as_u16() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let start = Instant::now();
    assert_eq!(app.get("/health").await.status(), 200);
    let probe = start.elapsed();
    for b in background {
        assert_eq!(b.await.unwrap(), 200, "{path}");
    }
    probe
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_call_freezes_its_worker() {
    // Arrange: a single async worker, the extreme case of thread-pool exhaustion.
    let app = spawn_app_alone(Db::Sqlite, &["--worker-count", "1"]).await;
    app.get("/health").await;

    // Act: one request blocks the only worker for 1 s; a probe sent right after must wait.
    let probe = probe_beside(&app, "/api/blocking?duration=1", 1).await;

    // Assert: the probe waited for most of the blocked second.
    assert!(
        probe >= Duration::from_millis(500),
        "probe took only {probe:?} while the worker was blocked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asynchronous_waits_leave_the_worker_free() {
    // The same single worker, now with 100 requests waiting 1 s each on (simulated) I/O.
    let app = spawn_app_alone(Db::Sqlite, &["--worker-count", "1"]).await;
    app.get("/health").await;

    let probe = probe_beside(&app, "/api/slow?delay=1", 100).await;

    // A hundred waits in flight cost the probe nothing like the one blocked second above.
    assert!(
        probe < Duration::from_millis(250),
        "probe took {probe:?} beside 100 asynchronous waits"
    );
}
