//! A throwaway PostgreSQL cluster of the test's own (initdb in a temp dir, its own port), and
//! PgBouncer in front of it, for the tests that must change the server itself:
//! `max_connections` (db-replicas), or stop and start it (the fault suite). Both come from the
//! one fixture `scripts/lib/private-pg.sh`, which `scripts/ci/k6-replicas.sh` uses too; it runs
//! the servers as `postgres` when the tests run as root (initdb and pgbouncer refuse root).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// `scripts/lib/private-pg.sh` with `args`; its standard output, trimmed. Panics naming the
/// command and its error output when it fails.
fn fixture(args: &[&str]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/lib/private-pg.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("private-pg.sh {args:?}: {e}"));
    assert!(
        out.status.success(),
        "private-pg.sh {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A throwaway PostgreSQL cluster in a temp dir (role `app`, database `lab`), stopped and
/// deleted on drop.
pub struct PrivatePostgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl PrivatePostgres {
    pub fn start(max_connections: u32, reserved: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().display().to_string();
        let port = fixture(&["start", &path, &max_connections.to_string(), &reserved.to_string()])
            .parse()
            .expect("private-pg.sh start prints the port");
        Self { dir, port }
    }

    fn path(&self) -> String {
        self.dir.path().display().to_string()
    }

    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-At", "-v", "ON_ERROR_STOP=1"])
            .args(["-p", &self.port.to_string(), "-d", db, "-c", sql])
            .output()
            .expect("psql");
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Connections the server refused for want of slots (SQLSTATE 53300 `too_many_connections`):
    /// `sorry, too many clients already` past `max_connections`, and `remaining connection slots
    /// are reserved ...` in the last slots kept for superusers.
    pub fn refusals(&self) -> usize {
        fixture(&["refusals", &self.path()]).parse().unwrap_or(0)
    }

    pub fn app_connections(&self) -> u32 {
        self.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'",
        )
        .parse()
        .unwrap()
    }

    /// `postgres://app@127.0.0.1:<port>/lab`, the app's role and database.
    pub fn app_url(&self) -> String {
        format!("postgres://app@127.0.0.1:{}/lab", self.port)
    }

    /// Stops the server (`fast`: open sessions are terminated, as `systemctl stop` does).
    pub fn stop(&self) {
        fixture(&["stop", &self.path(), "fast"]);
    }

    /// Starts it again on the same port and data.
    pub fn restart(&self) {
        fixture(&["restart", &self.path()]);
    }

    /// PgBouncer in transaction mode in front of it, with `pool` server connections; stopped
    /// when the returned value is dropped.
    pub fn bouncer(&self, pool: u32) -> Bouncer {
        let port = fixture(&["bouncer", &self.path(), &self.port.to_string(), &pool.to_string()])
            .parse()
            .expect("private-pg.sh bouncer prints the port");
        Bouncer { dir: self.path(), port }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/lib/private-pg.sh");
        let _ = Command::new("bash")
            .arg(script)
            .args(["stop", &self.path(), "immediate"])
            .output();
    }
}

/// PgBouncer from [`PrivatePostgres::bouncer`].
pub struct Bouncer {
    dir: String,
    pub port: u16,
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        fixture(&["bouncer-stop", &self.dir]);
    }
}
