//! The load generator: an open model (requests sent on a schedule, whether or not earlier
//! ones have answered), one stage at a time, with its latency histogram, failures by kind,
//! throughput, a canary beside it and the watched metrics read from the lab's `/metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::Value;

use crate::grpc::{self, Calls};
use crate::lab::LabClient;
use crate::plan::{Plan, Target};

/// A request unanswered after this long counts as `client_timeout`.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A request bounded by the client timeout.
async fn bounded(request: impl std::future::Future<Output = Result<(), String>>) -> Result<(), String> {
    tokio::time::timeout(CLIENT_TIMEOUT, request)
        .await
        .unwrap_or_else(|_| Err("client_timeout".into()))
}

/// The measurement of one stage.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageResult {
    pub offered_rps: f64,
    pub seconds: f64,
    pub requests: u64,
    pub ok: u64,
    /// Failures by kind: `503 db_pool_timeout`, `client_timeout`, `dropped`, ...
    pub failures: BTreeMap<String, u64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Successful responses per second of the stage.
    pub throughput_rps: f64,
    /// Work completed per second (goodput): the throughput, or where an answer only promises
    /// the work (an async 202), the plan's `completed` counter's increase per second of the
    /// stage.
    pub goodput_rps: f64,
    /// The canary's p95 during the stage, when the scenario has one.
    pub canary_p95_ms: Option<f64>,
    /// The watched metrics: a gauge's maximum, a counter's increase.
    pub metrics: BTreeMap<String, f64>,
    /// Stopped early by Ctrl-C.
    pub interrupted: bool,
    /// The swept knob's value during the stage, when the plan sweeps one ([`crate::plan::Sweep`]).
    pub swept: Option<f64>,
}

impl StageResult {
    /// Where the stage sits on the report's x axis: the swept knob's value, or the offered rate.
    pub fn x(&self) -> f64 {
        self.swept.unwrap_or(self.offered_rps)
    }
}

impl StageResult {
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
}
/// What one request ended as.
enum Outcome {
    /// Latency from the intended send time, and when it finished (from the stage's start).
    Ok(Duration, Duration),
    Failed(String, Duration),
}

async fn send(client: &reqwest::Client, url: &str, target: &Target) -> Result<(), String> {
    let mut req = client.request(target.method.clone(), url);
    if let Some(body) = target.body {
        req = req.header("content-type", "application/json").body(body);
    }
    match req.send().await {
        Ok(resp) if resp.status().is_success() => {
            let _ = resp.bytes().await;
            Ok(())
        }
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            Err(match body["error"].as_str() {
                Some(code) => format!("{status} {code}"),
                None => status.to_string(),
            })
        }
        Err(e) if e.is_timeout() => Err("client_timeout".into()),
        Err(e) if e.is_connect() => Err("connect_error".into()),
        Err(_) => Err("transport_error".into()),
    }
}

pub async fn run_stage(
    lab: &LabClient,
    plan: &Plan,
    rate: f64,
    length: Duration,
    stop: &Arc<AtomicBool>,
    label: &str,
    quiet: bool,
) -> StageResult {
    let total = (rate * length.as_secs_f64()).round().max(1.0) as u64;
    let url = format!("{}{}", lab.base, plan.target.path);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
    let in_flight = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let target = Arc::new(plan.target.clone());
    let grpc = Calls::open(lab, &plan.target).await;
    if let (Some(Calls::Unreachable(why)), false) = (&grpc, quiet) {
        eprintln!("{label}: no gRPC address ({why}): every call counts as connect_error");
    }

    // The watched metrics, sampled every 250 ms while the stage runs.
    let before = lab.metrics().await;
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (client, base, token) = (lab.client.clone(), lab.base.clone(), lab.token.clone());
        let watches = plan.watches.clone();
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let lab = LabClient { client, base, token };
            let mut peaks: BTreeMap<String, f64> = BTreeMap::new();
            while sampling.load(Ordering::SeqCst) {
                let m = lab.metrics().await;
                for w in watches.iter().filter(|w| !w.counter) {
                    if let Some(v) = m.get(w.series) {
                        let e = peaks.entry(w.series.to_string()).or_insert(f64::MIN);
                        *e = e.max(*v);
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            peaks
        })
    };
    // The canary: 10 req/s beside the load, each request its own task, latency from its
    // intended send time.
    let canary = plan.canary.map(|path| {
        let (client, url) = (lab.client.clone(), format!("{}{path}", lab.base));
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let hist = Arc::new(std::sync::Mutex::new(
                Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("valid bounds"),
            ));
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut tasks = tokio::task::JoinSet::new();
            while sampling.load(Ordering::SeqCst) {
                let intended = tick.tick().await;
                let (client, url, hist) = (client.clone(), url.clone(), hist.clone());
                tasks.spawn(async move {
                    let _ = client.get(&url).send().await.map(|_| ());
                    let d = intended.elapsed().as_micros().max(1) as u64;
                    let _ = hist.lock().unwrap_or_else(|p| p.into_inner()).record(d);
                });
            }
            while tasks.join_next().await.is_some() {}
            let h = hist.lock().unwrap_or_else(|p| p.into_inner()).clone();
            h
        })
    });

    let start = tokio::time::Instant::now();
    let mut last_progress = Instant::now();
    // At most five updates a second; `sent` is read through a shared counter.
    let sent_so_far = Arc::new(AtomicU64::new(0));
    let show_progress = {
        let (done, in_flight, sent_so_far) = (done.clone(), in_flight.clone(), sent_so_far.clone());
        move |last: &mut Instant| {
            if !quiet && last.elapsed() > Duration::from_millis(200) {
                let (sent, done, flying) = (
                    sent_so_far.load(Ordering::SeqCst),
                    done.load(Ordering::SeqCst),
                    in_flight.load(Ordering::SeqCst),
                );
                progress(label, sent, total, done, flying);
                *last = Instant::now();
            }
        }
    };
    let mut dropped = 0u64;
    let mut sent = 0u64;
    let mut interrupted = false;
    for i in 0..total {
        let intended = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(intended).await;
        if stop.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
        sent += 1;
        sent_so_far.store(sent, Ordering::SeqCst);
        if in_flight.load(Ordering::SeqCst) >= plan.max_in_flight {
            dropped += 1;
            continue;
        }
        in_flight.fetch_add(1, Ordering::SeqCst);
        let (client, url, tx, flying, finished, target) = (
            lab.client.clone(),
            url.clone(),
            tx.clone(),
            in_flight.clone(),
            done.clone(),
            target.clone(),
        );
        let call = grpc.as_ref().map(|calls| calls.for_call(i));
        tokio::spawn(async move {
            let result = match call {
                None => send(&client, &url, &target).await,
                Some(call) => bounded(grpc::send(call, &target)).await,
            };
            // Latency from the intended send time: a late send counts its lateness.
            let latency = intended.elapsed();
            let _ = tx.send(match result {
                Ok(()) => Outcome::Ok(latency, start.elapsed()),
                Err(kind) => Outcome::Failed(kind, latency),
            });
            flying.fetch_sub(1, Ordering::SeqCst);
            finished.fetch_add(1, Ordering::SeqCst);
        });
        show_progress(&mut last_progress);
    }
    drop(tx);
    // Wait for the stage's requests (each is bounded by the client timeout).
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("valid bounds");
    let mut ok = 0u64;
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let (mut first_done, mut last_done) = (Duration::MAX, Duration::ZERO);
    while let Some(outcome) = rx.recv().await {
        match outcome {
            Outcome::Ok(d, done_at) => {
                ok += 1;
                let _ = hist.record(d.as_micros().max(1) as u64);
                first_done = first_done.min(done_at);
                last_done = last_done.max(done_at);
            }
            Outcome::Failed(kind, d) => {
                let _ = hist.record(d.as_micros().max(1) as u64);
                *failures.entry(kind).or_default() += 1;
            }
        }
        show_progress(&mut last_progress);
    }
    if dropped > 0 {
        failures.insert("dropped (generator cap)".into(), dropped);
    }
    let elapsed = start.elapsed();
    sampling.store(false, Ordering::SeqCst);
    let peaks = sampler.await.unwrap_or_default();
    let canary_p95 = match canary {
        Some(h) => h
            .await
            .ok()
            .filter(|h| !h.is_empty())
            .map(|h| h.value_at_quantile(0.95) as f64 / 1e3),
        None => None,
    };
    let after = lab.metrics().await;
    let goodput = plan.completed.map(|series| {
        let done = after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0);
        done / elapsed.as_secs_f64().max(1e-3)
    });
    let mut metrics = BTreeMap::new();
    for w in &plan.watches {
        let v = if w.counter {
            after.get(w.series).copied().unwrap_or(0.0) - before.get(w.series).copied().unwrap_or(0.0)
        } else {
            peaks.get(w.series).copied().unwrap_or(0.0)
        };
        metrics.insert(w.series.to_string(), v);
    }
    if !quiet {
        eprint!("\r{:100}\r", "");
    }
    let q = |q: f64| (!hist.is_empty()).then(|| (hist.value_at_quantile(q) as f64 / 1e3 * 100.0).round() / 100.0);
    // Successes per second between the first and the last completion (plus one arrival
    // interval): the offered rate when everything is served, whatever the latency; the rate the
    // resource drained at when a queue made the stage run over. Never a window shorter than the
    // stage: a few successes bunched together (a breaker that opened after them) are a few
    // successes in the stage, not a rate.
    let window = if ok == 0 {
        length.as_secs_f64()
    } else {
        ((last_done.saturating_sub(first_done)).as_secs_f64() + 1.0 / rate).max(sent as f64 / rate)
    }
    .max(1e-3);
    StageResult {
        offered_rps: rate,
        seconds: (elapsed.as_secs_f64() * 100.0).round() / 100.0,
        requests: sent,
        ok,
        failures,
        p50_ms: q(0.5),
        p95_ms: q(0.95),
        p99_ms: q(0.99),
        max_ms: (!hist.is_empty()).then(|| (hist.max() as f64 / 1e3 * 100.0).round() / 100.0),
        throughput_rps: ((ok as f64 / window) * 100.0).round() / 100.0,
        goodput_rps: (goodput.unwrap_or(ok as f64 / window) * 100.0).round() / 100.0,
        canary_p95_ms: canary_p95.map(|v| (v * 100.0).round() / 100.0),
        metrics,
        interrupted,
        swept: None,
    }
}

fn progress(label: &str, sent: u64, total: u64, done: u64, in_flight: u64) {
    const WIDTH: usize = 24;
    let filled = ((sent as f64 / total as f64) * WIDTH as f64).round() as usize;
    eprint!(
        "\r{label} [{}{}] sent {sent}/{total} answered {done} in flight {in_flight}   ",
        "#".repeat(filled.min(WIDTH)),
        "-".repeat(WIDTH - filled.min(WIDTH))
    );
}
