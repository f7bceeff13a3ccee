//! Shared test harness: `spawn_app` runs the real app (the same `App::build` as the binary) on
//! port 0, on its own thread and runtime like the binary (so `--worker-count` means what it
//! means in production), against either a fresh SQLite file or a fresh PostgreSQL database that
//! is dropped when the test ends. Logs stay silent unless `TEST_LOG` is set.

#![allow(dead_code)]

pub mod private_pg;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chokepoint::admin::ConfigView;
use chokepoint::knobs::Knobs;
use chokepoint::settings::Settings;
use chokepoint::App;
use serde_json::Value;
use sqlx::{Connection, PgConnection};

/// A port that was free a moment ago, for the tests that start the real binary as a process
/// (the in-process apps bind port 0 themselves). The tiny race is accepted: the kernel does not
/// hand the same ephemeral port out again at once.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Admin connection for creating test databases (the machine's PostgreSQL, trust auth).
pub fn pg_admin_url() -> String {
    std::env::var("TEST_PG_ADMIN_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn pg_server_url() -> String {
    let admin = pg_admin_url();
    admin[..admin.rfind('/').expect("admin URL has a database part")].to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A PostgreSQL database created for one test and dropped (forcefully) when this is dropped.
pub struct TestPgDatabase {
    pub name: String,
    pub url: String,
}

impl TestPgDatabase {
    pub async fn create() -> Self {
        let name = format!("chokepoint_t_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&pg_admin_url()).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL must be running for the tests ({}): {e}. Run scripts/ensure-services.sh",
                pg_admin_url()
            )
        });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let url = format!("{}/{name}", pg_server_url());
        Self { name, url }
    }
}

impl Drop for TestPgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin_url = pg_admin_url();
        // Drop runs outside any runtime guarantee: use a private one on a private thread.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut admin = PgConnection::connect(&admin_url).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await?;
                Ok::<_, sqlx::Error>(())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("warning: could not drop test database {}: {e}", self.name);
        }
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub pg: Option<TestPgDatabase>,
    _sqlite_dir: Option<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Held until the app has stopped (fields drop after `Drop::drop`).
    _share: Share,
}

/// Every app runs inside the one test process. Most tests share it (a read lock for the life
/// of their apps); a test that measures the process itself (its RSS, a probe's latency under
/// its own CPU load) takes it alone ([`spawn_app_alone`]), so no other test's app runs beside it.
static PROCESS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

enum Share {
    Shared(#[allow(dead_code)] tokio::sync::RwLockReadGuard<'static, ()>),
    Alone(#[allow(dead_code)] tokio::sync::RwLockWriteGuard<'static, ()>),
}

fn init_test_log() {
    if std::env::var_os("TEST_LOG").is_some() {
        chokepoint::telemetry::init_tracing("text");
    }
}

/// Spawns the app with the given extra flags (e.g. `["--db-pool-size", "2"]`).
pub async fn spawn_app(db: Db, flags: &[&str]) -> TestApp {
    let share = Share::Shared(PROCESS.read().await);
    start_app(db, flags, share).await
}

/// Like [`spawn_app`], once every other test's app has stopped, and no other starts until this
/// one is dropped: for measurements of the whole test process. One such app at a time per test.
pub async fn spawn_app_alone(db: Db, flags: &[&str]) -> TestApp {
    let share = Share::Alone(PROCESS.write().await);
    // Freed memory of earlier tests' apps, still resident in the allocator's free lists, would
    // be reused without growing RSS: start the measurement from a trimmed heap.
    chokepoint::scenarios::memory::give_back();
    start_app(db, flags, share).await
}

async fn start_app(db: Db, flags: &[&str], share: Share) -> TestApp {
    init_test_log();
    let (pg, sqlite_dir, url) = match db {
        Db::Postgres => {
            let pg = TestPgDatabase::create().await;
            let url = pg.url.clone();
            (Some(pg), None, url)
        }
        Db::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
            (None, Some(dir), url)
        }
    };
    let mut all: Vec<String> = vec!["--port".into(), "0".into()];
    // Every test app has its own gRPC port (never the default 50051 another one holds).
    if !flags.contains(&"--grpc-port") {
        all.extend(["--grpc-port".into(), "0".into()]);
    }
    // A test may name its own database (e.g. a file on a small tmpfs).
    if !flags.contains(&"--database-url") {
        all.extend(["--database-url".into(), url]);
    }
    all.extend(["--shutdown-grace-ms".into(), "1000".into()]);
    all.extend(["--shutdown-delay-ms".into(), "0".into()]);
    all.extend(flags.iter().map(|s| s.to_string()));
    let settings = Settings::from_flags(&all).expect("valid test flags");
    let workers = settings.worker_count.map(usize::from).unwrap_or(2);

    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .expect("app runtime");
        rt.block_on(async move {
            let app = match App::build(settings).await {
                Ok(app) => app,
                Err(e) => {
                    let _ = addr_tx.send(Err(format!("{e:#}")));
                    return;
                }
            };
            let _ = addr_tx.send(Ok(app.local_addr()));
            app.run_until_stopped(async {
                let _ = stop_rx.await;
            })
            .await
            .expect("app ran");
        });
        // Blocked workers (e.g. /api/blocking) must not hold the test hostage.
        rt.shutdown_timeout(Duration::from_secs(1));
    });
    let addr = addr_rx
        .await
        .expect("app thread alive")
        .unwrap_or_else(|e| panic!("app failed to start: {e}"));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap();
    TestApp {
        addr,
        base: format!("http://{addr}"),
        client,
        pg,
        _sqlite_dir: sqlite_dir,
        stop: Some(stop_tx),
        thread: Some(thread),
        _share: share,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // `pg` is dropped after this, once the app has closed its pool.
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub async fn post(&self, path: &str) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// GET returning status and JSON body.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let resp = self.get(path).await;
        let status = resp.status().as_u16();
        let body = resp
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: body is not JSON: {e}"));
        (status, body)
    }

    pub async fn post_json(&self, path: &str) -> (u16, Value) {
        let resp = self.post(path).await;
        let status = resp.status().as_u16();
        let body = resp
            .json()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: body is not JSON: {e}"));
        (status, body)
    }

    /// `PATCH /admin/config` with a JSON body (and a bearer token if given).
    pub async fn patch_config(&self, body: Value, token: Option<&str>) -> (u16, Value) {
        let mut req = self.client.patch(self.url("/admin/config")).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    /// Changes knobs on loopback (no token needed), asserting success.
    pub async fn set_knobs(&self, body: Value) {
        let (status, resp) = self.patch_config(body.clone(), None).await;
        assert_eq!(status, 200, "PATCH {body}: {resp}");
    }

    /// `POST /admin/profile/{name}`, asserting success.
    pub async fn switch_profile(&self, name: &str) {
        let (status, body) = self.post_json(&format!("/admin/profile/{name}")).await;
        assert_eq!(status, 200, "profile {name}: {body}");
    }

    /// `GET /admin/config`, typed.
    pub async fn config(&self) -> ConfigView {
        let (status, config) = self.get_json("/admin/config").await;
        assert_eq!(status, 200, "{config}");
        serde_json::from_value(config).expect("/admin/config matches ConfigView")
    }

    /// The current knobs, typed (from `/admin/config`).
    pub async fn knobs(&self) -> Knobs {
        self.config().await.current().expect("every knob in /admin/config")
    }

    /// The raw `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        self.get("/metrics").await.text().await.unwrap()
    }

    /// The value of one series, e.g. `db_pool_waiting` or `memory_retained_bytes`, or
    /// `http_requests_total{method="GET",route="/health",status="200"}` (labels as printed).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics_text().await;
        metric_in(&text, series).unwrap_or_else(|| panic!("series {series} not in /metrics"))
    }

    /// Sends a fault control to the simulator the app talks to, e.g. `"outage?duration_ms=500"`,
    /// `"fail-first?n=5"` or `"reset"`, and checks it was accepted.
    pub async fn sim_control(&self, command: &str) {
        let sim = self.downstream_url().await;
        let resp = self
            .client
            .post(format!("{sim}/control/{command}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "control/{command}");
    }

    /// The base URL of the downstream the app talks to (the embedded simulator by default).
    pub async fn downstream_url(&self) -> String {
        let (_, index) = self.get_json("/").await;
        index["downstream"]
            .as_str()
            .expect("index names the downstream")
            .to_string()
    }
}

///
/// Labels match as a subset: `http_requests_total{route="/health",status="200"}` finds the series
/// whatever its other labels; the first series that has them all is read.
pub fn metric_in(text: &str, series: &str) -> Option<f64> {
    let (name, wanted) = split_series(series);
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (head, value) = l.rsplit_once(' ')?;
        let (n, labels) = split_series(head);
        (n == name && wanted.iter().all(|w| labels.contains(w)))
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// `name{a="x",b="y"}` → (name, [`a="x"`, `b="y"`]).
fn split_series(series: &str) -> (&str, Vec<&str>) {
    match series.split_once('{') {
        None => (series, Vec::new()),
        Some((name, rest)) => {
            let inner = rest.strip_suffix('}').unwrap_or(rest);
            let labels = inner
                .split("\",")
                .filter(|l| !l.is_empty())
                .map(|l| l.trim_end_matches('"'))
                .collect();
            (name, labels)
        }
    }
}

/// Median of durations.
pub fn median(mut xs: Vec<Duration>) -> Duration {
    assert!(!xs.is_empty());
    xs.sort();
    xs[xs.len() / 2]
}

/// Polls `check` every 50 ms until it is true or `limit` passes; returns whether it became true.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `url` every 50 ms until it answers 200; panics saying `what` after 20 s (a process
/// started by a test that never came up).
pub async fn wait_200(client: &reqwest::Client, url: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !client.get(url).send().await.is_ok_and(|r| r.status() == 200) {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Redis for the tests: the machine's server (started by scripts/ensure-services.sh).
pub const REDIS_ADDR: &str = "127.0.0.1:6379";

/// A unique key prefix, so concurrent tests never share keys in the one Redis.
pub fn unique_prefix() -> String {
    format!("cp-test-{}:", uuid::Uuid::new_v4().simple())
}

/// What a [`FaultProxy`] does with the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    Forward,
    /// Connections are closed and new ones dropped at once (a crashed server).
    Refuse,
    /// Connections stay open and nothing is answered (a stalled server or a black-holed network).
    Hang,
}

/// A TCP proxy in front of a real service whose link can be cut or stalled: an outage for one
/// test without stopping the server the other tests share.
pub struct FaultProxy {
    pub addr: SocketAddr,
    mode: tokio::sync::watch::Sender<LinkMode>,
}

impl FaultProxy {
    pub async fn start(upstream: &'static str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, rx) = tokio::sync::watch::channel(LinkMode::Forward);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(proxy_link(client, upstream, rx.clone()));
            }
        });
        Self { addr, mode }
    }

    pub fn set(&self, mode: LinkMode) {
        self.mode.send_replace(mode);
    }
}

async fn proxy_link(
    mut client: tokio::net::TcpStream,
    upstream: &'static str,
    mut rx: tokio::sync::watch::Receiver<LinkMode>,
) {
    let mode = *rx.borrow_and_update();
    if mode == LinkMode::Forward {
        let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
            return;
        };
        let cut = tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => None,
            m = rx.wait_for(|m| *m != LinkMode::Forward) => m.ok().map(|m| *m),
        };
        drop(server);
        if cut != Some(LinkMode::Hang) {
            return;
        }
    } else if mode == LinkMode::Refuse {
        return;
    }
    // Hang: hold the client's socket open, unanswered, until the link changes.
    let _ = rx.wait_for(|m| *m != LinkMode::Hang).await;
    drop(client);
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, ...); `pid` may be `self`.
pub fn proc_status_kib(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} not in /proc/{pid}/status"))
}

/// The built binary on a fresh SQLite file and a free port, killed when dropped: for a
/// measurement of a process of its own (its RSS), free of what the other tests in this process
/// allocate and free meanwhile.
pub struct Binary {
    child: std::process::Child,
    pub base: String,
    _dir: tempfile::TempDir,
}

impl Binary {
    pub async fn start() -> Binary {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_chokepoint"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", port.to_string())
            .env("GRPC_PORT", "0")
            .env(
                "DATABASE_URL",
                format!("sqlite://{}?mode=rwc", dir.path().join("b.db").display()),
            )
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start chokepoint");
        let binary = Binary {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        wait_200(
            &reqwest::Client::new(),
            &format!("{}/ready", binary.base),
            "never ready",
        )
        .await;
        binary
    }

    /// Its `/proc/<pid>/status` field in KiB (`VmHWM`, `VmRSS`).
    pub fn status_kib(&self, field: &str) -> u64 {
        proc_status_kib(&self.child.id().to_string(), field)
    }

    /// Resets its peak RSS (`VmHWM`) to the current RSS (Linux `clear_refs` 5).
    pub fn reset_peak(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5").expect("reset peak RSS");
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
