//! `chokepoint repro <scenario>`: the one-command demonstration. It starts the lab in-process
//! (or targets `--base-url`), drives open-model load — a constant arrival rate per stage, latency
//! measured from each request's *intended* send time, so a stalled server cannot hide its queue
//! (no coordinated omission) — and prints a breaking-point report: a table per stage, the
//! prediction from the knobs beside the measurement, and the verdict.

pub mod panel;
pub mod scenarios;

use chokepoint_repro::lab::LabClient;
use chokepoint_repro::load::{run_stage, CLIENT_TIMEOUT};
use chokepoint_repro::report::{self, Report, Run};
use chokepoint_repro::verdict::verdict;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::knobs::Profile;

/// Arguments of `chokepoint repro`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReproArgs {
    /// The catalog row to reproduce (every scenario that declares a repro).
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(crate::scenarios::repro_ids()))]
    pub scenario: String,
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

/// Runs the command; the exit code (0, 1 on failure, 130 when interrupted).
/// `profile` is the lab's `--profile` (ignored with `--compare`, which runs both).
pub async fn run(
    mut args: ReproArgs,
    profile: Profile,
    settings: Option<crate::settings::Settings>,
) -> anyhow::Result<u8> {
    // Before minutes of load, not after: the report must have somewhere to go.
    if let Some(dir) = &args.out {
        check_writable(dir)?;
    }
    // The progress bar redraws one line with `\r`: only a terminal shows that as intended.
    {
        use std::io::IsTerminal;
        args.quiet |= !std::io::stderr().is_terminal();
    }
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
    let repro = crate::scenarios::find_repro(&args.scenario).map_err(anyhow::Error::msg)?;
    if let (None, Some(why)) = (&args.base_url, repro.needs_base_url) {
        bail!("{why}");
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
                s.grpc_port = crate::settings::GrpcPort::Port(0);
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
        command: command_line(std::env::args()),
        version: env!("CARGO_PKG_VERSION").to_string(),
        scenario: args.scenario.clone(),
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

/// The command line as typed, for the report: the program as `chokepoint`, the admin token
/// hidden, database and Redis passwords redacted.
pub fn command_line(args: impl IntoIterator<Item = String>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut secret_next = false;
    let mut url_next = false;
    for (i, arg) in args.into_iter().enumerate() {
        let shown = if i == 0 {
            "chokepoint".to_string()
        } else if secret_next {
            "***".to_string()
        } else if url_next {
            crate::settings::redact(&arg)
        } else if arg.starts_with("--admin-token=") {
            "--admin-token=***".to_string()
        } else if let Some(v) = arg
            .strip_prefix("--database-url=")
            .or_else(|| arg.strip_prefix("--redis-url="))
        {
            format!("{}={}", &arg[..arg.len() - v.len() - 1], crate::settings::redact(v))
        } else {
            arg.clone()
        };
        secret_next = arg == "--admin-token";
        url_next = arg == "--database-url" || arg == "--redis-url";
        let quoted = if shown.contains(|c: char| c.is_whitespace() || "'\"$`".contains(c)) {
            format!("'{}'", shown.replace('\'', r"'\''"))
        } else {
            shown
        };
        out.push(quoted);
    }
    out.join(" ")
}

/// The knobs that decide `scenario`: those the knob table files under it, and those the run set.
fn key_knobs(
    scenario: &str,
    knobs: &crate::knobs::Knobs,
    run_knobs: &serde_json::Value,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    crate::knobs::SPECS
        .iter()
        .filter(|s| s.scenario == scenario || run_knobs.get(s.name).is_some())
        .filter_map(|s| Some((s.name.to_string(), knobs.get(s.name)?)))
        .collect()
}

/// `--out` can hold the report: the directory exists (or is created) and a file can be written
/// in it.
fn check_writable(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("--out {}: cannot create the directory", dir.display()))?;
    let probe = dir.join(".chokepoint-write-check");
    std::fs::write(&probe, b"").with_context(|| format!("--out {}: cannot write in the directory", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// The lab's configuration in force, typed (`GET /admin/config` read as [`crate::admin::ConfigView`]).
pub(crate) async fn config(lab: &LabClient) -> anyhow::Result<scenarios::RunConfig> {
    let view: crate::admin::ConfigView =
        serde_json::from_value(lab.admin(reqwest::Method::GET, "/admin/config", None).await?)
            .context("reading the lab's /admin/config")?;
    scenarios::run_config(&view)
}

/// The repro's setup calls ([`crate::scenarios::Repro::setup`]), each failure naming its call.
pub(crate) async fn setup(lab: &LabClient, repro: &crate::scenarios::Repro) -> anyhow::Result<()> {
    for (method, path, body) in (repro.setup)() {
        lab.admin(method.clone(), path, Some(&body))
            .await
            .with_context(|| format!("the scenario's setup: {method} {path} {body}"))?;
    }
    Ok(())
}

/// The median latency of `n` requests sent one at a time (the CPU cost of one request alone).
pub(crate) async fn calibrate(lab: &LabClient, path: &str, n: usize) -> anyhow::Result<f64> {
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

/// Sets the swept knob to its value for stage `i`, when the plan sweeps one, and lets the
/// lab settle (a resized pool opens its connections): the value set.
pub(crate) async fn sweep_to(
    lab: &LabClient,
    plan: &chokepoint_repro::plan::Plan,
    i: usize,
) -> anyhow::Result<Option<f64>> {
    let Some(value) = plan.sweep.as_ref().and_then(|s| s.values.get(i).map(|v| (s.knob, *v))) else {
        return Ok(None);
    };
    let (knob, v) = value;
    let body = serde_json::json!({ knob: crate::scenarios::seed_number(v) });
    lab.admin(reqwest::Method::PATCH, "/admin/config", Some(&body))
        .await
        .with_context(|| format!("setting {knob}={v} for the sweep"))?;
    tokio::time::sleep(SWEEP_SETTLE).await;
    Ok(Some(v))
}

/// The pause after a swept knob changes, before the stage's load.
const SWEEP_SETTLE: Duration = Duration::from_millis(700);

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
    let repro = crate::scenarios::find_repro(&args.scenario).map_err(anyhow::Error::msg)?;
    let run_knobs = (repro.knobs)();
    if run_knobs.as_object().is_some_and(|o| !o.is_empty()) {
        lab.admin(reqwest::Method::PATCH, "/admin/config", Some(&run_knobs))
            .await?;
    }
    setup(lab, repro).await?;
    let cpu_ms = if repro.calibrate {
        Some(calibrate(lab, &repro.target().path, 15).await?)
    } else {
        None
    };
    let config = config(lab).await?;
    let plan = (repro.plan)(&config, cpu_ms);
    let prediction = (repro.predict)(&config, cpu_ms);
    tokio::time::sleep(plan.settle).await;
    let knobs = serde_json::to_value(&config.knobs)?;
    let request = plan.target.describe();
    if plan.target.grpc.is_some() {
        lab.grpc_url()
            .await
            .context("the scenario's calls go to the lab's gRPC port")?;
    }
    let mut stages = Vec::new();
    for (i, &rate) in plan.rates.iter().enumerate() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if let Some((method, path)) = &plan.before_stage {
            lab.admin(method.clone(), path, None).await?;
        }
        let swept = sweep_to(lab, &plan, i).await?;
        let label = format!(
            "[{} {}] stage {}/{} at {rate} req/s{}",
            args.scenario,
            profile.as_str(),
            i + 1,
            plan.rates.len(),
            swept.map_or(String::new(), |v| format!(
                ", {}={v}",
                plan.sweep.as_ref().map_or("", |s| s.knob)
            ))
        );
        let mut stage = run_stage(
            lab,
            &plan,
            rate,
            Duration::from_secs(args.stage_seconds),
            stop,
            &label,
            args.quiet,
        )
        .await;
        stage.swept = swept;
        stages.push(stage);
    }
    if let Some((method, path)) = &plan.after_run {
        let _ = lab.admin(method.clone(), path, None).await;
    }
    let verdict = verdict(&plan, &prediction, &stages);
    Ok((
        Run {
            profile: profile.as_str().into(),
            prediction,
            key_knobs: key_knobs(&args.scenario, &config.knobs, &run_knobs),
            knobs,
            stages,
            verdict,
            sweep_knob: plan.sweep.as_ref().map(|s| s.knob.to_string()),
        },
        request,
    ))
}

#[cfg(test)]
mod tests {
    use super::command_line;

    #[test]
    fn the_command_line_hides_secrets() {
        let args = [
            "/x/target/release/chokepoint",
            "repro",
            "db-pool",
            "--admin-token",
            "s3cret-token",
            "--database-url=postgres://u:pw@db/x",
            "--out",
            "my report",
        ]
        .map(String::from);
        let line = command_line(args);
        assert!(!line.contains("s3cret") && !line.contains("pw@"), "{line}");
        assert!(
            line.starts_with("chokepoint repro db-pool --admin-token *** --database-url=postgres://"),
            "{line}"
        );
        assert!(line.ends_with("--out 'my report'"), "{line}");
    }
}
