//! Start-up: the real binary refuses an invalid setting with a first line naming the variable,
//! and `chokepoint downstream` serves the simulator.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn chokepoint() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chokepoint"));
    // A developer's or CI's exported settings must not change what these tests see: every
    // variable the serve command reads (start-up settings and knobs), and the log filter.
    let knobs = chokepoint::knobs::SPECS.iter().map(|s| s.env);
    let settings = chokepoint::settings::Settings::startup_only_names()
        .iter()
        .map(|(_, env)| env.as_str());
    for var in knobs.chain(settings).chain(["RUST_LOG"]) {
        cmd.env_remove(var);
    }
    // Its own gRPC port: other tests' processes run beside it.
    cmd.env("GRPC_PORT", "0");
    cmd
}

#[test]
fn invalid_environment_stops_startup_with_a_first_line_naming_the_variable() {
    let cases = [
        ("DB_POOL_SIZE", "abc"),
        ("DB_POOL_SIZE", "0"),
        ("DB_MAX_OVERFLOW", "-1"),
        ("DB_POOL_TIMEOUT", "forever"),
        ("DATABASE_URL", "mysql://localhost/x"),
        ("WORKER_COUNT", "0"),
        ("ENABLE_CIRCUIT_BREAKER", "maybe"),
        ("DB_STARTUP_TIMEOUT", "3601"),
        ("DB_STARTUP_TIMEOUT", "soon"),
        ("MEMORY_LEAK_LIMIT_MB", "0"),
        ("PORT", "99999"),
        ("REDIS_URL", "localhost:6379"),
        ("PROFILE", "turbo"),
        ("CPU_MODE", "fast"),
        ("ADMIN_TOKEN", "short"),
        ("BREAKER_FAILURE_RATE", "2"),
        ("RETRY_MAX_ATTEMPTS", "0"),
        ("DOWNSTREAM_SERVICE_URL", "ftp://x"),
    ];
    for (var, value) in cases {
        let out = chokepoint().env(var, value).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value} should stop start-up");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<_> = stderr.lines().collect();
        assert!(
            lines[0].starts_with("chokepoint: ") && lines[0].contains(var),
            "{var}={value}: the first line does not name the variable: {stderr}"
        );
        assert!(
            stderr.trim_end().ends_with("For more information, try '--help'."),
            "{var}={value}: no pointer to --help: {stderr}"
        );
        assert!(
            !stderr.contains('\x1b'),
            "{var}={value}: escape codes in a pipe: {stderr:?}"
        );
    }
}

/// Past `DB_STARTUP_TIMEOUT` (retrying meanwhile), or at once with 0: exit 1 with the cause.
#[test]
fn unreachable_database_stops_startup_with_a_clear_error() {
    for (window, says) in [("0", None), ("2", Some("gave up after"))] {
        let out = chokepoint()
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env("PORT", "0")
            .env("DB_POOL_TIMEOUT", "1")
            .env("DB_STARTUP_TIMEOUT", window)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "DB_STARTUP_TIMEOUT={window}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("chokepoint: "))
            .unwrap_or("");
        assert_eq!(
            last.matches("Connection refused").count(),
            1,
            "the cause once: {stderr}"
        );
        assert!(
            stderr.contains("hint: is PostgreSQL running") && stderr.contains("unset DATABASE_URL"),
            "a hint: {stderr}"
        );
        assert!(
            stderr.contains("cannot connect to PostgreSQL at postgres://nobody@127.0.0.1:1/none"),
            "{stderr}"
        );
        if let Some(says) = says {
            assert!(
                stderr.contains(says) && stderr.contains("DB_STARTUP_TIMEOUT=2"),
                "{stderr}"
            );
        }
    }
}

/// clap's whole message: what is missing, the accepted values, a suggestion, the pointer to
/// `--help`; never escape codes in a pipe.
#[test]
fn command_line_errors_are_complete_and_suggest() {
    let cases: [(&[&str], &[&str]); 4] = [
        (
            &["repro"],
            &["the following required arguments were not provided", "<SCENARIO>"],
        ),
        (
            &["repro", "db-pol"],
            &["possible values:", "a similar value exists: 'db-pool'"],
        ),
        (
            &["repro", "faults"],
            &[
                "`faults` is in the catalog but has no repro: an injected fault has no capacity",
                "k6 run -e SMOKE=1 load-tests/faults.js",
                "possible values:",
            ],
        ),
        (
            &["--db-pool-siz", "3"],
            &["a similar argument exists: '--db-pool-size'"],
        ),
    ];
    for (args, says) in cases {
        let out = chokepoint().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for s in says {
            assert!(stderr.contains(s), "{args:?} does not say {s:?}: {stderr}");
        }
        assert!(stderr.starts_with("chokepoint: "), "{stderr}");
        assert!(stderr.contains("For more information, try '--help'."), "{stderr}");
        assert!(!stderr.contains('\x1b'), "escape codes in a pipe: {stderr:?}");
    }
}

/// `repro --help` lists repro's own flags and the few serve settings it uses, each once.
#[test]
fn repro_help_shows_only_repro_flags() {
    let out = chokepoint().args(["repro", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert_eq!(help.matches("--admin-token <").count(), 1, "{help}");
    for own in [
        "--compare",
        "--base-url",
        "--stage-seconds",
        "--out",
        "--quiet",
        "--profile",
        "--database-url",
    ] {
        assert!(help.contains(own), "{own} missing: {help}");
    }
    for serve_only in ["--db-pool-size", "--port", "--worker-pool-size", "--shutdown-grace-ms"] {
        assert!(!help.contains(serve_only), "{serve_only} listed: {help}");
    }
    assert!(help.contains("chokepoint serve --help"), "{help}");
    let flags = help.lines().filter(|l| l.trim_start().starts_with("--")).count();
    assert!(flags <= 12, "{flags} flags: {help}");
}

/// `--out` is checked before minutes of load: nothing runs, nothing is printed on stdout.
#[test]
fn repro_refuses_an_unwritable_out_before_the_run() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let out_dir = file.path().join("report");
    let out = chokepoint()
        .args(["repro", "db-pool", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--out") && stderr.contains("cannot create the directory"),
        "{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "a report was printed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Logs written to a file: no escape codes; the start-up line names the panel and the docs; an
/// expected 503 (a documented failure mode) is one INFO line, never ERROR.
#[test]
fn serve_logs_to_a_file_plainly_and_once_per_expected_failure() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
    let mut child = chokepoint()
        .args(["serve", "--port", "0"])
        .env("DATABASE_URL", db)
        .env("DB_POOL_SIZE", "1")
        .env("DB_MAX_OVERFLOW", "0")
        .env("DB_POOL_TIMEOUT", "0.2")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let listening = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("chokepoint listening")) {
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "no listening line: {text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let addr = listening
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .expect("addr= in the listening line")
        .to_string();
    assert!(
        listening.contains(&format!("lab=http://{addr}/lab"))
            && listening.contains(&format!("docs=http://{addr}/docs")),
        "{listening}"
    );
    // One connection, three callers: one holds it, two time out acquiring (503 db_pool_timeout).
    let holders: Vec<_> = (0..3)
        .map(|_| {
            let url = format!("http://{addr}/api/db/hold?ms=1500");
            std::thread::spawn(move || http_get::try_blocking_get(&url))
        })
        .collect();
    let refused = holders
        .into_iter()
        .filter_map(|h| h.join().ok().flatten())
        .filter(|body| body.contains("db_pool_timeout"))
        .count();
    assert!(refused >= 1, "no caller timed out acquiring");
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains('\x1b'), "escape codes in a file: {text:?}");
    let documented: Vec<_> = text.lines().filter(|l| l.contains("db_pool_timeout")).collect();
    assert_eq!(documented.len(), refused, "one line per expected 503: {text}");
    assert!(
        documented
            .iter()
            .all(|l| l.contains(" INFO ") && l.contains("failed as documented")),
        "{text}"
    );
    assert!(!text.contains(" ERROR "), "{text}");
}

#[test]
fn serve_starts_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
    let mut child = chokepoint()
        .args(["serve", "--port", "0"])
        .env("DATABASE_URL", db)
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The JSON log line announcing the address.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("listening line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("LOG_FORMAT=json logs JSON lines");
        if v["message"] == "chokepoint listening" {
            break v["addr"].as_str().unwrap().to_string();
        }
    };
    let body = http_get::blocking_get(&format!("http://{addr}/api/ping"));
    assert_eq!(body, r#"{"ping":"pong"}"#);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = Instant::now();
    loop {
        if let Some(code) = child.try_wait().unwrap() {
            assert!(code.success(), "exit status {code:?}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn downstream_subcommand_serves_the_simulator() {
    let port = crate::common::free_port();
    let mut child = chokepoint()
        .args(["downstream", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/health");
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        if let Some(body) = http_get::try_blocking_get(&url) {
            break body;
        }
        assert!(Instant::now() < deadline, "simulator did not come up");
        std::thread::sleep(Duration::from_millis(50));
    };
    child.kill().unwrap();
    let _ = child.wait();
    assert!(body.contains("downstream"), "{body}");
}

#[test]
fn healthcheck_exits_zero_only_when_the_local_server_answers() {
    let port = crate::common::free_port();
    // Nothing listening: non-zero, with the reason.
    let out = chokepoint()
        .args(["healthcheck", "--timeout", "1"])
        .env("PORT", port.to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("did not answer"));

    let mut child = chokepoint()
        .args(["downstream", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let healthy = loop {
        let ok = chokepoint()
            .args(["healthcheck", "--port", &port.to_string()])
            .status()
            .unwrap()
            .success();
        if ok || Instant::now() > deadline {
            break ok;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let missing = chokepoint()
        .args(["healthcheck", "--port", &port.to_string(), "--path", "/no-such-path"])
        .output()
        .unwrap();
    child.kill().unwrap();
    let _ = child.wait();
    assert!(healthy, "healthcheck against a live /health");
    assert!(!missing.status.success(), "a 404 is not healthy");
}

#[test]
fn migrate_applies_the_migrations_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let migrate = || chokepoint().args(["migrate", "--database-url", &url]).output().unwrap();
    let out = migrate();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The tables exist: a second run finds them applied (and still succeeds).
    assert!(migrate().status.success());
    let bytes = std::fs::read(&path).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("deployment_counter") && text.contains("_sqlx_migrations"));
}

/// A tiny blocking GET over std's TcpStream (no runtime needed in these process tests).
mod http_get {
    use std::io::{Read, Write};

    pub fn try_blocking_get(url: &str) -> Option<String> {
        let rest = url.strip_prefix("http://")?;
        let (host, path) = rest.split_at(rest.find('/')?);
        let mut stream = std::net::TcpStream::connect(host).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut resp = String::new();
        stream.read_to_string(&mut resp).ok()?;
        resp.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
    }

    pub fn blocking_get(url: &str) -> String {
        try_blocking_get(url).unwrap_or_else(|| panic!("GET {url} failed"))
    }
}

/// `chokepoint scenarios` lists the catalog the scripts read (`--json`), `chokepoint knobs`
/// prints the knob table; a bad flag is refused with exit 2.
#[test]
fn scenarios_and_knobs_list_the_catalog_and_the_table() {
    let out = chokepoint().args(["scenarios", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listing: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listing.len(), chokepoint::scenarios::ALL.len());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for s in &listing {
        for file in ["doc", "k6", "test"] {
            let path = s[file].as_str().unwrap();
            assert!(root.join(path).is_file(), "{}: {path}", s["id"]);
        }
    }
    assert!(listing.iter().any(|s| s["id"] == "io" && s["k6_smoke"] == true));
    assert!(listing
        .iter()
        .any(|s| s["id"] == "db-replicas" && s["k6_smoke"] == false));

    let table = chokepoint().arg("knobs").output().unwrap();
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("| `db_pool_size` | `DB_POOL_SIZE` | 1–1000 |"), "{text}");
    assert_eq!(text.lines().count(), chokepoint::knobs::SPECS.len() + 2);

    for bad in [&["scenarios", "--yaml"][..], &["knobs", "extra"][..]] {
        let out = chokepoint().args(bad).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}
