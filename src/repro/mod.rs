//! `chokepoint repro <scenario>`: the one-command demonstration. It starts the lab in-process
//! (or targets `--base-url`), drives open-model load — a constant arrival rate per stage, latency
//! measured from each request's *intended* send time, so a stalled server cannot hide its queue
//! (no coordinated omission) — and prints a breaking-point report: a table per stage, the
//! prediction from the knobs beside the measurement, and the verdict.

pub mod report;
pub mod scenarios;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::Value;

pub use scenarios::ScenarioId;
use scenarios::{Plan, Prediction, Target};

use crate::knobs::Profile;

/// Arguments of `chokepoint repro`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReproArgs {
    /// The catalog row to reproduce.
    #[arg(value_enum)]
    pub scenario: ScenarioId,
    /// Run fragile then hardened and print them side by side.
    #[arg(long)]
    pub compare: bool,
    /// A running lab to target instead of starting one in-process. Its knobs are changed through
    /// the admin API (and reset afterwards).
    #[arg(long)]
    pub base_url: Option<String>,
    /// The admin token of the lab at --base-url, when it has one: the serve settings'
    /// `--admin-token` / `ADMIN_TOKEN`, which `chokepoint repro` also takes (one flag, not two).
    #[arg(skip)]
    pub admin_token: Option<String>,
    /// Seconds of load per stage (1-60).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub stage_seconds: u64,
    /// Write report.md, report.json and chart.svg here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Requests in flight at most; beyond it a request is not sent and counts as `dropped`
/// (the generator's own safety cap: bounded tasks and sockets).
const MAX_IN_FLIGHT: u64 = 2_000;
/// A request unanswered after this long counts as `client_timeout`.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// The canary's p95 during the stage, when the scenario has one.
    pub canary_p95_ms: Option<f64>,
    /// The watched metrics: a gauge's maximum, a counter's increase.
    pub metrics: BTreeMap<String, f64>,
    /// Stopped early by Ctrl-C.
    pub interrupted: bool,
}

impl StageResult {
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
}

/// One profile's run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Run {
    pub profile: String,
    pub prediction: Prediction,
    pub knobs: Value,
    pub stages: Vec<StageResult>,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Verdict {
    /// The first stage (index) where it broke: throughput below 90% of offered, over 1%
    /// failures, or p95 above 3× the first stage's (and above 50 ms).
    pub knee_stage: Option<usize>,
    pub knee_offered_rps: Option<f64>,
    pub measured_capacity_rps: f64,
    /// measured / predicted capacity.
    pub capacity_ratio: Option<f64>,
    /// The watched metric that crossed its saturation threshold first, and at which stage.
    pub first_signal: Option<(String, usize)>,
    pub summary: String,
}

/// The whole report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub generated_at: String,
    pub stage_seconds: u64,
    pub request: String,
    pub runs: Vec<Run>,
    pub interrupted: bool,
}

/// Runs the command; the exit code (0, 1 on failure, 130 when interrupted).
/// `profile` is the lab's `--profile` (ignored with `--compare`, which runs both).
pub async fn run(args: ReproArgs, profile: Profile, settings: Option<crate::settings::Settings>) -> anyhow::Result<u8> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\ninterrupted: finishing the requests in flight, then writing what was measured");
                stop.store(true, Ordering::SeqCst);
            }
        });
    }
    let profiles: Vec<Profile> = if args.compare {
        vec![Profile::Fragile, Profile::Hardened]
    } else {
        vec![profile]
    };
    if args.base_url.is_none() && args.scenario == ScenarioId::DbReplicas {
        bail!("{}", args.scenario.needs_base_url().unwrap_or_default());
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(CLIENT_TIMEOUT)
        .build()?;
    let mut runs = Vec::new();
    let mut target_label = String::new();
    let mut request = String::new();
    for profile in profiles {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        // A fresh in-process lab per profile (so nothing warm or retained carries over), or the
        // given one switched to the profile.
        let (base, lab) = match &args.base_url {
            Some(url) => (url.trim_end_matches('/').to_string(), None),
            None => {
                let mut s = settings.clone().context("in-process settings")?;
                s.profile = profile;
                s.port = 0;
                s.host = std::net::IpAddr::from([127, 0, 0, 1]);
                let app = crate::App::build(s).await?;
                let base = format!("http://{}", app.local_addr());
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                let handle = tokio::spawn(app.run_until_stopped(async move {
                    let _ = rx.await;
                }));
                (base, Some((tx, handle)))
            }
        };
        target_label = if lab.is_some() {
            "in-process lab".into()
        } else {
            base.clone()
        };
        let lab_client = LabClient {
            client: client.clone(),
            base: base.clone(),
            token: args.admin_token.clone(),
        };
        let result = run_profile(&args, profile, &lab_client, &stop).await;
        if args.base_url.is_some() {
            // Leave the lab as it was found.
            let _ = lab_client.admin(reqwest::Method::POST, "/admin/reset", None).await;
        }
        if let Some((tx, handle)) = lab {
            let _ = tx.send(());
            let _ = handle.await;
        }
        let (run, req) = result?;
        request = req;
        runs.push(run);
    }
    let interrupted = stop.load(Ordering::SeqCst);
    let report = Report {
        scenario: args.scenario.as_str().into(),
        target: target_label,
        generated_at: chrono::Utc::now().to_rfc3339(),
        stage_seconds: args.stage_seconds,
        request,
        runs,
        interrupted,
    };
    print!("{}", report::text(&report));
    if let Some(dir) = &args.out {
        report::write(&report, dir)?;
        println!("\nwrote {0}/report.md, {0}/report.json, {0}/chart.svg", dir.display());
    }
    Ok(if interrupted { 130 } else { 0 })
}

struct LabClient {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl LabClient {
    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.with_context(|| format!("{}{path}", self.base))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{path} answered {status}: {}", body["detail"].as_str().unwrap_or(""));
        }
        Ok(body)
    }

    async fn config(&self) -> anyhow::Result<scenarios::RunConfig> {
        let view: crate::admin::ConfigView =
            serde_json::from_value(self.admin(reqwest::Method::GET, "/admin/config", None).await?)
                .context("reading the lab's /admin/config")?;
        scenarios::RunConfig::from_view(&view)
    }

    /// Every series of `/metrics` as name{labels} → value.
    async fn metrics(&self) -> BTreeMap<String, f64> {
        let Ok(resp) = self.client.get(format!("{}/metrics", self.base)).send().await else {
            return BTreeMap::new();
        };
        let text = resp.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect()
    }
}

/// The median latency of `n` requests sent one at a time (the CPU cost of one request alone).
async fn calibrate(lab: &LabClient, path: &str, n: usize) -> anyhow::Result<f64> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let resp = lab.client.get(format!("{}{path}", lab.base)).send().await?;
        resp.bytes().await?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[n / 2])
}

async fn run_profile(
    args: &ReproArgs,
    profile: Profile,
    lab: &LabClient,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<(Run, String)> {
    lab.admin(
        reqwest::Method::POST,
        &format!("/admin/profile/{}", profile.as_str()),
        None,
    )
    .await
    .context("switching the profile (give --admin-token if the lab has one)")?;
    let scenario = args.scenario;
    let run_knobs = scenario.run_knobs();
    if run_knobs.as_object().is_some_and(|o| !o.is_empty()) {
        lab.admin(reqwest::Method::PATCH, "/admin/config", Some(&run_knobs))
            .await?;
    }
    let cpu_ms = if scenario == ScenarioId::Cpu {
        Some(calibrate(lab, &scenario.target().path, 15).await?)
    } else {
        None
    };
    let config = lab.config().await?;
    if scenario == ScenarioId::ColdStart {
        // Let the profile's warm workers (min_warm_workers) finish their own cold start.
        let cold = config.knobs.cold_start_ms;
        tokio::time::sleep(Duration::from_millis(cold + 250)).await;
    }
    let plan = scenario.plan(&config, cpu_ms);
    let prediction = scenario.predict(&config, cpu_ms);
    let knobs = serde_json::to_value(&config.knobs)?;
    let request = format!("{} {}", plan.target.method, plan.target.path);
    let mut stages = Vec::new();
    for (i, &rate) in plan.rates.iter().enumerate() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if let Some((method, path)) = &plan.before_stage {
            lab.admin(method.clone(), path, None).await?;
        }
        let label = format!(
            "[{} {}] stage {}/{} at {rate} req/s",
            scenario.as_str(),
            profile.as_str(),
            i + 1,
            plan.rates.len()
        );
        let stage = run_stage(
            lab,
            &plan,
            rate,
            Duration::from_secs(args.stage_seconds),
            stop,
            &label,
            args.quiet,
        )
        .await;
        stages.push(stage);
    }
    if scenario == ScenarioId::Memory {
        let _ = lab.client.post(format!("{}/api/clear-memory", lab.base)).send().await;
    }
    let verdict = verdict(&plan, &config, &prediction, &stages);
    Ok((
        Run {
            profile: profile.as_str().into(),
            prediction,
            knobs,
            stages,
            verdict,
        },
        request,
    ))
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

async fn run_stage(
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
        if in_flight.load(Ordering::SeqCst) >= MAX_IN_FLIGHT {
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
        tokio::spawn(async move {
            let result = send(&client, &url, &target).await;
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
    // resource drained at when a queue made the stage run over.
    let window = if ok == 0 {
        length.as_secs_f64()
    } else {
        (last_done.saturating_sub(first_done)).as_secs_f64() + 1.0 / rate
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
        canary_p95_ms: canary_p95.map(|v| (v * 100.0).round() / 100.0),
        metrics,
        interrupted,
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

fn verdict(plan: &Plan, config: &scenarios::RunConfig, prediction: &Prediction, stages: &[StageResult]) -> Verdict {
    // The baseline is the best stage's p95 (not the first stage's: a cold start breaks first).
    let base_p95 = stages.iter().filter_map(|s| s.p95_ms).fold(f64::INFINITY, f64::min);
    let base_p95 = if base_p95.is_finite() { base_p95 } else { 0.0 };
    let knee = stages.iter().position(|s| {
        let fail_rate = s.failed() as f64 / s.requests.max(1) as f64;
        s.throughput_rps < 0.9 * s.offered_rps
            || fail_rate > 0.01
            || s.p95_ms.is_some_and(|p| p > (3.0 * base_p95).max(50.0))
    });
    let measured = stages.iter().map(|s| s.throughput_rps).fold(0.0, f64::max);
    let ratio = prediction.capacity_rps.map(|c| measured / c);
    let first_signal = plan
        .watches
        .iter()
        .filter_map(|w| {
            let t = scenarios::threshold(w, config);
            stages
                .iter()
                .position(|s| s.metrics.get(w.series).is_some_and(|v| *v > t))
                .map(|i| (w.label.to_string(), i))
        })
        .min_by_key(|(_, i)| *i);
    let mut summary = match knee {
        Some(i) => {
            let s = &stages[i];
            let mut why = Vec::new();
            if s.throughput_rps < 0.9 * s.offered_rps {
                why.push(format!(
                    "throughput {:.1} of {:.1} req/s offered",
                    s.throughput_rps, s.offered_rps
                ));
            }
            if s.failed() > 0 {
                let top = s
                    .failures
                    .iter()
                    .max_by_key(|(_, n)| **n)
                    .map(|(k, _)| k.clone())
                    .unwrap_or_default();
                why.push(format!("{} failed (mostly {top})", s.failed()));
            }
            if let Some(p) = s.p95_ms.filter(|p| *p > (3.0 * base_p95).max(50.0)) {
                why.push(format!("p95 {p:.0} ms vs {base_p95:.0} ms at the best stage"));
            }
            format!(
                "the knee is at {:.1} req/s (stage {}): {}",
                s.offered_rps,
                i + 1,
                why.join(", ")
            )
        }
        None => "no knee within the stages: it held at every offered rate".to_string(),
    };
    if let (Some(c), Some(r)) = (prediction.capacity_rps, ratio) {
        summary.push_str(&format!(
            "; measured capacity {measured:.1} req/s = {:.0}% of the predicted {c:.1}",
            r * 100.0
        ));
    }
    if let Some((label, i)) = &first_signal {
        summary.push_str(&format!("; the first metric to show it: {label} (stage {})", i + 1));
    }
    Verdict {
        knee_stage: knee,
        knee_offered_rps: knee.map(|i| stages[i].offered_rps),
        measured_capacity_rps: measured,
        capacity_ratio: ratio.map(|r| (r * 1000.0).round() / 1000.0),
        first_signal,
        summary,
    }
}
