//! `chokepoint repro` end to end, on the release-built binary with its in-process lab: the
//! db-pool report's measured capacity matches the prediction from the knobs, the collapse and
//! the fix show in the numbers, the files in --out parse (JSON schema, well-formed SVG), and
//! Ctrl-C still writes what was measured.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn repro(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chokepoint"));
    cmd.arg("repro")
        .args(args)
        .arg("--out")
        .arg(dir.join("out"))
        .arg("--quiet")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}?mode=rwc", dir.join("lab.db").display()),
        )
        .env_remove("PROFILE")
        .env_remove("ADMIN_TOKEN")
        .env_remove("REDIS_URL");
    cmd
}

/// Runs it to the end; its stdout and stderr, after checking it exited 0.
fn run_ok(mut cmd: Command) -> (String, String) {
    let output = cmd.output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    assert!(output.status.success(), "repro failed: {stderr}\n{stdout}");
    (stdout, stderr)
}

/// Checks each run's measured capacity is within ±15% of its prediction (a shared 2-core
/// machine); the last stage of the fragile run and of the hardened one.
fn capacity_held_then_last_stages(report: &Value) -> (Value, Value) {
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for run in runs {
        let ratio = run["verdict"]["capacity_ratio"].as_f64().unwrap();
        assert!(
            (0.85..=1.15).contains(&ratio),
            "{}: measured/predicted = {ratio}",
            run["profile"]
        );
    }
    let last = |i: usize| runs[i]["stages"].as_array().unwrap().last().unwrap().clone();
    (last(0), last(1))
}

fn check_files(out: &Path) -> Value {
    let json: Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/repro-report.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&json)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "report.json does not match docs/repro-report.schema.json: {errors:?}"
    );
    let svg = std::fs::read_to_string(out.join("chart.svg")).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("chart.svg is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let lines = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline") || n.has_tag_name("path") || n.has_tag_name("line"))
        .count();
    assert!(lines > 4, "the chart has lines");
    let text: String = doc
        .descendants()
        .filter_map(|n| n.text())
        .collect::<Vec<_>>()
        .join("\n");
    for says in [
        "chokepoint repro",
        "chokepoint 0.",
        "predicted capacity",
        "offered load (req/s)",
        "failed (% of requests)",
    ] {
        assert!(text.contains(says), "the chart does not say {says:?}: {text}");
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("**Verdict:**") && md.contains("chart.svg"));
    assert!(
        md.contains("Command: `chokepoint repro ") && md.contains("**Knobs:** `"),
        "{md}"
    );
    json
}

#[test]
fn db_pool_repro_measures_the_predicted_capacity_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    // Logs at INFO: they go to stderr, and stdout holds the report alone.
    let mut cmd = repro(dir.path(), &["db-pool", "--compare", "--stage-seconds", "2"]);
    cmd.env("RUST_LOG", "info");
    let (stdout, stderr) = run_ok(cmd);
    assert!(stdout.contains("### Side by side"), "{stdout}");
    assert!(
        !stdout
            .lines()
            .any(|l| l.contains(" INFO ") || l.contains(" WARN ") || l.contains(" ERROR ")),
        "log lines on stdout: {stdout}"
    );
    assert!(
        stderr.contains("failed as documented"),
        "the expected 503s are logged on stderr, at INFO"
    );
    assert!(!stderr.contains(" ERROR ") && !stderr.contains('\x1b'), "{stderr}");
    let report = check_files(&dir.path().join("out"));
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for run in runs {
        // Pool 4 / 0.1 s hold: 40 req/s, within ±15% (a shared 2-core machine).
        let predicted = run["prediction"]["capacity_rps"].as_f64().unwrap();
        assert_eq!(predicted, 40.0);
        let ratio = run["verdict"]["capacity_ratio"].as_f64().unwrap();
        assert!(
            (0.85..=1.15).contains(&ratio),
            "{}: measured/predicted = {ratio}",
            run["profile"]
        );
        // The knee is at or past the capacity, not before it.
        let knee = run["verdict"]["knee_offered_rps"].as_f64().expect("a knee");
        assert!(knee >= 0.95 * predicted, "{}: knee at {knee}", run["profile"]);
    }
    let stages = |i: usize| runs[i]["stages"].as_array().unwrap().clone();
    let (fragile, hardened) = (stages(0), stages(1));
    let last = fragile.len() - 1;
    // The collapse: fragile queues silently (no failures, latency grows far past the hold) ...
    assert!(
        fragile.iter().all(|s| s["failures"].as_object().unwrap().is_empty()),
        "{fragile:?}"
    );
    let p95 = |s: &Value| s["p95_ms"].as_f64().unwrap();
    assert!(
        p95(&fragile[last]) > 5.0 * p95(&fragile[0]),
        "fragile p95 {} vs {}",
        p95(&fragile[last]),
        p95(&fragile[0])
    );
    // ... the fix: hardened fails the excess fast with 503 and keeps p95 near hold + timeout.
    let refused = hardened[last]["failures"]["503 db_pool_timeout"].as_u64().unwrap_or(0);
    assert!(refused > 0, "{:?}", hardened[last]);
    assert!(p95(&hardened[last]) < 700.0, "hardened p95 {}", p95(&hardened[last]));
    assert!(p95(&hardened[last]) < p95(&fragile[last]) / 2.0);
}

#[test]
fn ctrl_c_stops_cleanly_and_writes_what_was_measured() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = repro(dir.path(), &["worker-pool", "--stage-seconds", "3"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Two stages in, interrupt (SIGINT, as Ctrl-C sends).
    std::thread::sleep(Duration::from_millis(4500));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "repro did not stop after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130));
    let report = check_files(&dir.path().join("out"));
    assert_eq!(report["interrupted"], true);
    let stages = report["runs"][0]["stages"].as_array().unwrap();
    assert!((1..6).contains(&stages.len()), "{} stages", stages.len());
    assert_eq!(stages.last().unwrap()["interrupted"], true);
}

/// Bad arguments exit 2 naming them; a scenario the lab cannot run exits 1 saying why.
#[test]
fn bad_arguments_are_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = repro(dir.path(), &["db-pool", "--stage-seconds", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stage-seconds"));
    let out = repro(dir.path(), &["no-such-scenario"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = repro(dir.path(), &["db-replicas"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--base-url"));
    // slow-link needs PostgreSQL behind the link proxy: the default lab says what to restart with.
    let out = repro(dir.path(), &["slow-link"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("409") && stderr.contains("LINK_PROXY=true"), "{stderr}");
    let out = repro(dir.path(), &["slow-link"])
        .env("LINK_PROXY", "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not a TCP link") && stderr.contains("SQLite"),
        "{stderr}"
    );
}

/// `repro worker-pool-grpc` over real gRPC: the calls carry the 1 s deadline as `grpc-timeout`;
/// past 4 workers / 0.1 s = 40 calls/s, fragile's unbounded queue ends calls in
/// DEADLINE_EXCEEDED while the workers still run the abandoned jobs, and hardened's bounded queue
/// answers RESOURCE_EXHAUSTED at once and wastes no work.
#[test]
fn worker_pool_grpc_repro_shows_deadline_exceeded_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, _) = run_ok(repro(
        dir.path(),
        &["worker-pool-grpc", "--compare", "--stage-seconds", "2"],
    ));
    assert!(
        stdout.contains("request: `gRPC /chokepoint.worker.v1.WorkerPool/Work {work_ms: 100} deadline 1000 ms`"),
        "{stdout}"
    );
    let report = check_files(&dir.path().join("out"));
    for run in report["runs"].as_array().unwrap() {
        assert_eq!(run["prediction"]["capacity_rps"].as_f64(), Some(40.0));
    }
    let (fragile, hardened) = capacity_held_then_last_stages(&report);
    let failed = |s: &Value, kind: &str| s["failures"][kind].as_u64().unwrap_or(0);
    let requests = |s: &Value| s["requests"].as_u64().unwrap();
    // The collapse: at 2× capacity, a good part of the calls outlive their deadline in the queue,
    // and the workers run jobs for callers already gone.
    let late = failed(&fragile, "gRPC DEADLINE_EXCEEDED");
    assert!(late * 10 > requests(&fragile), "fragile: {fragile}");
    assert!(
        fragile["metrics"]["worker_pool_wasted_work_total"].as_f64().unwrap() > 0.0,
        "{fragile}"
    );
    // The fix: the excess is refused at once, nothing runs past its deadline, nothing is wasted.
    assert!(failed(&hardened, "gRPC RESOURCE_EXHAUSTED") > 0, "hardened: {hardened}");
    assert!(
        failed(&hardened, "gRPC DEADLINE_EXCEEDED") * 100 <= requests(&hardened),
        "{hardened}"
    );
    assert_eq!(
        hardened["metrics"]["worker_pool_wasted_work_total"].as_f64(),
        Some(0.0),
        "{hardened}"
    );
    let p95 = |s: &Value| s["p95_ms"].as_f64().unwrap();
    assert!(
        p95(&hardened) < p95(&fragile),
        "p95 {} vs {}",
        p95(&hardened),
        p95(&fragile)
    );
}

/// `repro slow-link` on PostgreSQL through the lab's link proxy (+20 ms per chunk PostgreSQL
/// sends): the pool of 4 serves pool / (one hold alone through the link + the release check's
/// round trip), far below the healthy link's 40 req/s; hardened fails the excess fast.
#[tokio::test]
async fn slow_link_repro_measures_the_capacity_the_sick_link_leaves() {
    let pg = crate::common::TestPgDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = repro(dir.path(), &["slow-link", "--compare", "--stage-seconds", "2"]);
    cmd.env("DATABASE_URL", &pg.url).env("LINK_PROXY", "true");
    let (stdout, _) = tokio::task::spawn_blocking(move || run_ok(cmd)).await.unwrap();
    assert!(stdout.contains("down from 40.0 on a healthy link"), "{stdout}");
    let report = check_files(&dir.path().join("out"));
    for run in report["runs"].as_array().unwrap() {
        let predicted = run["prediction"]["capacity_rps"].as_f64().unwrap();
        // 100 ms + about 6.5 round trips × 20 ms, + 20 ms: about 16 req/s.
        assert!(
            (12.0..=20.0).contains(&predicted),
            "{}: predicted {predicted}",
            run["profile"]
        );
    }
    let (fragile, hardened) = capacity_held_then_last_stages(&report);
    // Fragile queues (nothing fails within the 30 s acquire timeout), hardened refuses the excess.
    assert!(fragile["failures"].as_object().unwrap().is_empty(), "{fragile}");
    assert!(
        hardened["failures"]["503 db_pool_timeout"].as_u64().unwrap_or(0) > 0,
        "{hardened}"
    );
    assert!(hardened["p95_ms"].as_f64().unwrap() < fragile["p95_ms"].as_f64().unwrap());
}
