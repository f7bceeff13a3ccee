//! A throwaway PostgreSQL cluster of the test's own (initdb in a temp dir, its own port), for
//! the tests that must change the server itself: `max_connections` (db-replicas), or stop and
//! start it (the fault suite). Runs as the `postgres` user when the tests run as root (initdb
//! refuses root).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL/PgBouncer program, as `postgres` when we are root.
pub fn as_pg_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

pub fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (scripts/ensure-services.sh)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join(name).exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .unwrap_or_else(|| panic!("{name} not found under /usr/lib/postgresql"))
        .join(name)
}

pub fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway PostgreSQL cluster in a temp dir, stopped and deleted on drop.
pub struct PrivatePostgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl PrivatePostgres {
    pub fn start(max_connections: u32, reserved: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        if is_root() {
            run(
                Command::new("chown").args(["postgres:postgres"]).arg(dir.path()),
                "chown",
            );
        }
        let data = dir.path().join("data");
        run(
            as_pg_user(&pg_bin("initdb"))
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(&data),
            "initdb",
        );
        let port = super::free_port();
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             max_connections = {max_connections}\nsuperuser_reserved_connections = {reserved}\n\
             fsync = off\nshared_buffers = 16MB\n",
            dir.path().display()
        );
        let conf_path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).unwrap();
        text.push_str(&conf);
        // Written as root: make sure the postgres user can still read it.
        std::fs::write(&conf_path, text).unwrap();
        run(
            as_pg_user(&pg_bin("pg_ctl"))
                .args(["-w", "-t", "30", "-D"])
                .arg(&data)
                .arg("-l")
                .arg(dir.path().join("server.log"))
                .arg("start"),
            "pg_ctl start",
        );
        let pg = Self { dir, port };
        pg.psql("postgres", "CREATE ROLE app LOGIN");
        pg.psql("postgres", "CREATE DATABASE lab OWNER app");
        pg
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
        std::fs::read_to_string(self.dir.path().join("server.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("too many clients already") || l.contains("remaining connection slots are reserved"))
            .count()
    }

    pub fn app_connections(&self) -> u32 {
        self.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'",
        )
        .parse()
        .unwrap()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = as_pg_user(&pg_bin("pg_ctl"))
            .args(["-m", "immediate", "-D"])
            .arg(self.dir.path().join("data"))
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl PrivatePostgres {
    /// `postgres://app@127.0.0.1:<port>/lab`, the app's role and database.
    pub fn app_url(&self) -> String {
        format!("postgres://app@127.0.0.1:{}/lab", self.port)
    }

    /// Stops the server (`fast`: open sessions are terminated, as `systemctl stop` does).
    pub fn stop(&self) {
        run(
            as_pg_user(&pg_bin("pg_ctl"))
                .args(["-w", "-m", "fast", "-D"])
                .arg(self.dir.path().join("data"))
                .arg("stop"),
            "pg_ctl stop",
        );
    }

    /// Starts it again on the same port and data.
    pub fn restart(&self) {
        run(
            as_pg_user(&pg_bin("pg_ctl"))
                .args(["-w", "-t", "30", "-D"])
                .arg(self.dir.path().join("data"))
                .arg("-l")
                .arg(self.dir.path().join("server.log"))
                .arg("start"),
            "pg_ctl start",
        );
    }
}
