//! Graceful shutdown of the real binary: SIGTERM during a steady load ⇒ `/ready` fails at once
//! (503 while the app keeps serving for `SHUTDOWN_DELAY_MS`, then the listener closes), every
//! request sent before the signal completes with 200, and the process exits 0 within
//! `SHUTDOWN_GRACE_MS`.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

fn start(port: u16, db: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_chokepoint"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PORT", port.to_string())
        .env("GRPC_PORT", "0")
        .env("DATABASE_URL", db)
        .env("SHUTDOWN_GRACE_MS", "5000")
        .env("SHUTDOWN_DELAY_MS", "300")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chokepoint")
}

/// The binary on a fresh SQLite file and a free port: the file's directory (kept until the
/// test ends), the process and its base URL.
fn start_fresh() -> (tempfile::TempDir, Child, String) {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
    let port = crate::common::free_port();
    let child = start(port, &db);
    (dir, child, format!("http://127.0.0.1:{port}"))
}

#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    /// Sent after the signal and refused or cut once the listener closed: allowed.
    after_signal_not_served: usize,
    /// Sent before the signal and not answered 200: must be zero.
    failed: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_accepted_requests_and_exits_zero() {
    let (_dir, mut child, base) = start_fresh();
    // A new connection per request, so a refused connection is the only way not to be accepted.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    crate::common::wait_200(&client, &format!("{base}/ready"), "never ready").await;

    // Steady load: slow requests (1 s) and fast ones, 16 clients in closed loops.
    let stop = Arc::new(AtomicBool::new(false));
    let signal_at: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let (client, base, stop, signal_at) = (client.clone(), base.clone(), stop.clone(), signal_at.clone());
            tokio::spawn(async move {
                let path = if i % 2 == 0 { "/api/slow?delay=1" } else { "/api/ping" };
                let mut t = Tally::default();
                let until = Instant::now() + Duration::from_secs(15);
                while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                    let sent_before_signal = signal_at.get().is_none();
                    match client.get(format!("{base}{path}")).send().await {
                        Ok(r) if r.status() == 200 => t.ok += 1,
                        _ if !sent_before_signal => {
                            t.after_signal_not_served += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Ok(r) => t.failed.push(format!("{path}: {}", r.status())),
                        Err(e) => t.failed.push(format!("{path}: {e}")),
                    }
                }
                t
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let signalled = Instant::now();
    signal_at.set(signalled).unwrap();
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    // Readiness fails at once (503 while serving for the delay, then refused).
    let mut ready_failed_after = None;
    while signalled.elapsed() < Duration::from_secs(1) {
        match client.get(format!("{base}/ready")).send().await {
            Ok(r) if r.status() == 200 => tokio::time::sleep(Duration::from_millis(10)).await,
            _ => {
                ready_failed_after = Some(signalled.elapsed());
                break;
            }
        }
    }
    // Exit 0 within the grace period (5 s) once the 1 s requests have drained.
    let (code, exited_after) = exit_within(&mut child, signalled, Duration::from_secs(10)).await;
    stop.store(true, Ordering::SeqCst);
    let mut total = Tally::default();
    for c in clients {
        let t = c.await.unwrap();
        total.ok += t.ok;
        total.after_signal_not_served += t.after_signal_not_served;
        total.failed.extend(t.failed);
    }
    eprintln!(
        "{} ok, {} sent after the signal and not served, {} failed; /ready failed after {ready_failed_after:?}; exit {code:?} after {exited_after:?}",
        total.ok,
        total.after_signal_not_served,
        total.failed.len()
    );
    assert!(code.success(), "exit status {code:?}");
    assert!(total.failed.is_empty(), "accepted requests failed: {:?}", total.failed);
    assert!(total.ok >= 20, "the load ran ({} ok)", total.ok);
    let after = ready_failed_after.expect("/ready kept answering 200 after SIGTERM");
    assert!(after < Duration::from_millis(500), "/ready failed only after {after:?}");
    // 300 ms of delay, then the slow requests in flight (≤ 1 s left) drain: well inside the grace.
    assert!(exited_after < Duration::from_secs(4), "exit took {exited_after:?}");
    assert!(
        exited_after >= Duration::from_millis(300),
        "exit before the delay: {exited_after:?}"
    );
}

/// The same with keep-alive clients (as k6 and every browser are): after SIGTERM each answer says
/// `Connection: close`, so no request is sent on a connection the drain is about to close. No
/// request fails with anything but a refused new connection once the listener is closed, except
/// HTTP/1.1's own race (an idle connection closed as the client reuses it, the request never
/// written), which clients retry: it must stay rare, and the retry must succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_keep_alive_load_resets_nothing() {
    let (_dir, mut child, base) = start_fresh();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    crate::common::wait_200(&client, &format!("{base}/ready"), "never ready").await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let (client, base, stop) = (client.clone(), base.clone(), stop.clone());
            tokio::spawn(async move {
                let path = if i % 4 == 0 { "/api/slow?delay=1" } else { "/api/ping" };
                let (mut ok, mut refused, mut failed, mut retried) = (0usize, 0usize, Vec::new(), 0usize);
                let until = Instant::now() + Duration::from_secs(15);
                let mut retry = false;
                while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                    match client.get(format!("{base}{path}")).send().await {
                        Ok(r) if r.status() == 200 => ok += 1,
                        Err(e) if e.is_connect() => {
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        // The request could not even be written: the server closed this idle
                        // kept-alive connection as the client reused it. That race is HTTP/1.1's
                        // own (RFC 9112 §9.3.1); clients retry an idempotent request once (Go's
                        // net/http, which k6 uses, and browsers do). The server never read it.
                        Err(e) if !retry && format!("{e:?}").contains("BodyWrite") => {
                            retried += 1;
                            retry = true;
                            continue;
                        }
                        Ok(r) => failed.push(format!("{path}: {}", r.status())),
                        Err(e) => failed.push(format!("{path}: {e:?}")),
                    }
                    retry = false;
                }
                (ok, refused, failed, retried)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let signalled = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let (code, _) = exit_within(&mut child, signalled, Duration::from_secs(10)).await;
    stop.store(true, Ordering::SeqCst);
    let (mut ok, mut refused, mut failed, mut retried) = (0, 0, Vec::new(), 0);
    for c in clients {
        let (o, r, f, t) = c.await.unwrap();
        ok += o;
        refused += r;
        failed.extend(f);
        retried += t;
    }
    eprintln!(
        "keep-alive load: {ok} ok, {refused} refused new connections after the listener closed, {retried} retried (idle connection closed as it was reused), {} failed; exit {code:?} after {:?}",
        failed.len(),
        signalled.elapsed()
    );
    assert!(code.success());
    assert!(ok >= 20);
    assert!(failed.is_empty(), "requests lost to the shutdown: {failed:?}");
    // The race is rare (1 in ~90,000 requests seen): many means the drain closes busy connections.
    assert!(retried <= 3, "{retried} requests met a closing connection");
}

/// Waits for the child to exit (at most `limit`), returning how long it took from `since`.
async fn exit_within(child: &mut Child, since: Instant, limit: Duration) -> (std::process::ExitStatus, Duration) {
    loop {
        if let Some(code) = child.try_wait().unwrap() {
            return (code, since.elapsed());
        }
        if since.elapsed() > limit {
            let _ = child.kill();
            panic!("still running {limit:?} after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An open `/lab/events` stream (a panel left open) ends when the server starts draining, so
/// Ctrl-C takes the shutdown delay, not the 5 s grace period: one token and one tracker stop
/// every task (src/lifecycle.rs). Before, one open panel turned a 2 s stop into 12 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_panel_does_not_hold_the_shutdown() {
    let (_dir, mut child, base) = start_fresh();
    let client = reqwest::Client::new();
    crate::common::wait_200(&client, &format!("{base}/ready"), "never ready").await;

    // Two panels open (the stream's first snapshot arrives at once), and async deployments in
    // the background so the workers and sweep are running too.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut resp = client.get(format!("{base}/lab/events")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.chunk().await.unwrap().is_some(), "no first snapshot");
        streams.push(resp);
    }
    let _ = client.get(format!("{base}/lab")).send().await.unwrap();

    let signalled = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let (code, took) = exit_within(&mut child, signalled, Duration::from_secs(15)).await;
    assert!(code.success(), "exit {code:?}");
    // The delay is 300 ms; the grace 5 s. The streams must not hold the drain to the grace.
    assert!(
        took < Duration::from_secs(3),
        "exited {took:?} after SIGTERM with panels open"
    );
    // And the streams ended cleanly (not a hang until the client gives up).
    for mut s in streams {
        let end = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(Some(_)) = s.chunk().await {}
        })
        .await;
        assert!(end.is_ok(), "a stream did not end");
    }
    eprintln!("exited {took:?} after SIGTERM with two panels open");
}
