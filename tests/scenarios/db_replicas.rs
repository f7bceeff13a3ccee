//! `db-replicas`: scaling out made it worse. A private PostgreSQL with `max_connections = 20`
//! (3 reserved for superusers: 17 for the app's role) and 1, 2, then 3 chokepoint processes, each
//! with a pool of 5 + 5 and 10 clients holding connections for 1 s. One replica fits; two and
//! three ask for 20 and 30 connections, the server refuses the rest with `sorry, too many clients
//! already`, and the refusals and the failed requests grow with the replica count. The same 3
//! replicas through PgBouncer (transaction pooling, 15 server connections) get no refusal and no
//! failure: PgBouncer queues the excess instead of the server refusing it.
//!
//! The private cluster and PgBouncer run as the `postgres` user when the test runs as root
//! (initdb and pgbouncer refuse root): the fixture is scripts/lib/private-pg.sh, shared with
//! scripts/ci/k6-replicas.sh. scripts/ensure-services.sh installs pgbouncer.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::private_pg::PrivatePostgres;
use futures::future::join_all;

const MAX_CONNECTIONS: u32 = 20;
const RESERVED: u32 = 3;
const POOL: u32 = 5;
const OVERFLOW: u32 = 5;
const CLIENTS_PER_REPLICA: usize = 10;
const HOLD_MS: u64 = 1000;
const LOAD_FOR: Duration = Duration::from_secs(4);
const BOUNCER_POOL: u32 = 15;
/// The replicas' acquire timeout, the same in every phase. Long enough for PgBouncer's queue:
/// sqlx pings a connection when it returns to the pool, and behind PgBouncer in transaction
/// mode that ping waits for a server connection like any query.
const ACQUIRE_TIMEOUT_S: &str = "3";

/// A chokepoint process (the release binary), killed on drop.
struct Replica {
    child: Child,
    base: String,
    log: tempfile::NamedTempFile,
}

impl Replica {
    fn start(database_url: &str, skip_migrations: bool) -> Self {
        let port = crate::common::free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_chokepoint"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", port.to_string())
            .env("GRPC_PORT", "0")
            .env("DATABASE_URL", database_url)
            .env("DB_POOL_SIZE", POOL.to_string())
            .env("DB_MAX_OVERFLOW", OVERFLOW.to_string())
            .env("DB_POOL_TIMEOUT", ACQUIRE_TIMEOUT_S)
            .env("SKIP_MIGRATIONS", skip_migrations.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("start chokepoint");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    async fn wait_ready(&self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{}/ready", self.base)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "replica {} never became ready; its log:\n{}",
                self.base,
                std::fs::read_to_string(self.log.path()).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Default, Clone)]
struct Outcome {
    ok: usize,
    failed: usize,
    refusals: usize,
    /// The body of the first failure, to say why in an assertion's message.
    first_failure: Option<String>,
}

/// Starts `n` replicas on `url`, loads each with 10 clients holding connections for 1 s, for
/// 4 s, and counts successes, failures and the server's refusals.
async fn run_phase(pg: &PrivatePostgres, url: &str, n: usize, skip_migrations: bool) -> Outcome {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let replicas: Vec<Replica> = (0..n).map(|_| Replica::start(url, skip_migrations)).collect();
    for r in &replicas {
        r.wait_ready(&client).await;
    }
    let refusals_before = pg.refusals();
    let until = Instant::now() + LOAD_FOR;
    let clients = replicas.iter().flat_map(|r| {
        let client = client.clone();
        (0..CLIENTS_PER_REPLICA).map(move |_| {
            let (client, url) = (client.clone(), format!("{}/api/db/hold?ms={HOLD_MS}", r.base));
            async move {
                let (mut ok, mut failed, mut first) = (0, 0, None);
                while Instant::now() < until {
                    match client.get(&url).send().await {
                        Ok(resp) if resp.status() == 200 => ok += 1,
                        Ok(resp) => {
                            let status = resp.status();
                            let body = resp.text().await.unwrap_or_default();
                            assert!(status == 503, "unexpected {status}: {body}");
                            if std::env::var_os("SHOW_FAILURES").is_some() {
                                eprintln!("{body}");
                            }
                            first.get_or_insert(body);
                            failed += 1;
                        }
                        Err(e) => panic!("{url}: {e}"),
                    }
                }
                (ok, failed, first)
            }
        })
    });
    let results = join_all(clients).await;
    let outcome = Outcome {
        ok: results.iter().map(|r| r.0).sum(),
        failed: results.iter().map(|r| r.1).sum(),
        refusals: pg.refusals() - refusals_before,
        first_failure: results.iter().find_map(|r| r.2.clone()),
    };
    drop(replicas);
    outcome
}

/// Waits until the stopped replicas' direct connections are gone: one left behind would make
/// the next phase's connections (PgBouncer's login among them) fail for a reason of its own.
async fn wait_connections_closed(pg: &PrivatePostgres) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.app_connections() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} connections of the stopped replicas still open after 30 s",
            pg.app_connections()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_exceed_max_connections_and_pgbouncer_cures_it() {
    let pg = PrivatePostgres::start(MAX_CONNECTIONS, RESERVED);
    let direct = format!("postgres://app@127.0.0.1:{}/lab", pg.port);
    let budget = MAX_CONNECTIONS - RESERVED;

    let mut direct_runs = vec![];
    for n in 1..=3 {
        let o = run_phase(&pg, &direct, n, false).await;
        wait_connections_closed(&pg).await;
        eprintln!(
            "direct, {n} replica(s) × {} connections vs {budget} allowed: {} ok, {} failed (503), {} `too many clients` refusals",
            POOL + OVERFLOW,
            o.ok,
            o.failed,
            o.refusals
        );
        direct_runs.push(o);
    }
    let [one, two, three] = [&direct_runs[0], &direct_runs[1], &direct_runs[2]];
    // One replica (10 ≤ 17) fits: no refusal, no failure.
    assert_eq!((one.refusals, one.failed), (0, 0), "{one:?}");
    // Two (20) and three (30) do not, and it gets worse with each replica.
    assert!(two.refusals > 0 && two.failed > 0, "{two:?}");
    assert!(three.refusals > two.refusals, "{two:?} then {three:?}");
    assert!(three.failed > two.failed, "{two:?} then {three:?}");
    // The server never runs more than its budget: 17 connections holding 1 s each
    // (a request started just before the end still completes: one more hold per connection).
    let hold = HOLD_MS as f64 / 1000.0;
    let capacity = f64::from(budget) * (LOAD_FOR.as_secs_f64() + hold) / hold;
    assert!((three.ok as f64) <= capacity * 1.1, "{three:?} vs capacity {capacity}");

    // The cure: the same 3 replicas through PgBouncer in transaction mode. The migrations ran
    // directly above, as they should (session advisory locks do not survive transaction pooling).
    let bouncer = pg.bouncer(BOUNCER_POOL);
    let pooled = format!(
        "postgres://app@127.0.0.1:{}/lab?statement-cache-capacity=0",
        bouncer.port
    );
    let cured = run_phase(&pg, &pooled, 3, true).await;
    eprintln!(
        "PgBouncer ({BOUNCER_POOL} server connections), 3 replicas: {} ok, {} failed, {} refusals",
        cured.ok, cured.failed, cured.refusals
    );
    assert_eq!(
        (cured.refusals, cured.failed),
        (0, 0),
        "{cured:?}; the first failure: {}",
        cured.first_failure.as_deref().unwrap_or("none")
    );
    // Throughput is the server connections PgBouncer keeps: 15 per second of hold, ±15%.
    let expected = f64::from(BOUNCER_POOL) * LOAD_FOR.as_secs_f64() / (HOLD_MS as f64 / 1000.0);
    assert!(
        (cured.ok as f64) > expected * 0.85 && (cured.ok as f64) < expected * 1.15 + 30.0,
        "{} ok vs {expected} expected",
        cured.ok
    );
    drop(bouncer);
}
