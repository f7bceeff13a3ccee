//! Typed settings, parsed once from environment and flags (flags win) and validated at start-up.
//!
//! The environment names are the ones users of the Python "backend under load" app already set
//! (`DATABASE_URL`, `DB_POOL_SIZE`, `DB_MAX_OVERFLOW`, ...). An invalid value stops start-up with
//! one line naming the variable and its allowed range.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::LazyLock;
use std::time::Duration;

use clap::{Args, FromArgMatches};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{json, Value};

use crate::knobs::{parse_bool, KnobArgs, Knobs, Profile, Source, SPECS};

/// Settings of `chokepoint serve`: the start-up-only settings, plus every runtime knob's
/// variable and flag (flattened in from the knob table, [`KnobArgs`]).
#[derive(Debug, Clone, Args, Serialize)]
pub struct Settings {
    /// Address to bind. A non-loopback address exposes the lab (and its admin API) to the network.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port to bind; 0 picks a free port (tests use this).
    #[arg(long, env = "PORT", default_value_t = 8000)]
    pub port: u16,

    /// Port of the gRPC service (`chokepoint.worker.v1.WorkerPool`, the worker-pool report's
    /// protocol), on the same host; 0 picks a free port (`GET /` names it), `off` serves none.
    #[arg(long, env = "GRPC_PORT", default_value = "50051", value_parser = parse_grpc_port)]
    pub grpc_port: GrpcPort,

    /// Database URL: `sqlite://path` or `postgres://...` (`postgresql+asyncpg://` is accepted).
    /// Unset: an SQLite file in the system temp directory, no set-up needed.
    #[arg(long, env = "DATABASE_URL", value_parser = parse_database_url)]
    pub database_url: Option<String>,

    /// Knob profile at start-up: `fragile` behaves like the field reports, `hardened` turns every
    /// fix on. Single knobs below override it.
    #[arg(long, env = "PROFILE", value_enum, default_value = "fragile")]
    pub profile: Profile,

    /// Redis URL; unset disables the cache scenario (it answers 503 saying so).
    #[arg(long, env = "REDIS_URL", value_parser = parse_redis_url)]
    pub redis_url: Option<String>,

    /// Skip the migrations at start-up: for replicas that reach PostgreSQL through PgBouncer in
    /// transaction mode (run them once directly, e.g. from one replica or a job).
    #[arg(long, env = "SKIP_MIGRATIONS", default_value_t = false, value_parser = parse_bool)]
    pub skip_migrations: bool,

    /// Seconds start-up keeps retrying an unreachable PostgreSQL (backoff 0.25 s doubling to 5 s)
    /// while already serving `/health`, `/lab` and `/metrics`, with `/ready` answering 503 and the
    /// DB routes 503 `db_unavailable`; past it the process exits 1. 0: exit at the first failure.
    /// (A pod whose postgres is still pulling stays up instead of crash-looping.)
    #[arg(long, env = "DB_STARTUP_TIMEOUT", default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub db_startup_timeout: u64,

    /// SQLite only: cap the database file at this many pages (`PRAGMA max_page_count`, 4 KiB
    /// pages), so a full disk can be rehearsed without filling one: writes past it answer 507
    /// `storage_full`. Unset: no cap.
    #[arg(long, env = "SQLITE_MAX_PAGE_COUNT", value_parser = clap::value_parser!(u32).range(1..))]
    pub sqlite_max_page_count: Option<u32>,

    /// Prefix of every Redis key the lab writes; `POST /admin/cache/flush` deletes only these.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "chokepoint:", value_parser = parse_key_prefix)]
    pub redis_key_prefix: String,

    /// Base URL of the downstream dependency. Unset: an embedded simulator is started on its
    /// own thread and runtime, so a collapse of the app never slows the simulated dependency.
    #[arg(long, env = "DOWNSTREAM_SERVICE_URL", value_parser = parse_http_url)]
    pub downstream_service_url: Option<String>,

    /// Route the app's connections to PostgreSQL, Redis and the downstream through its own TCP
    /// fault proxy, whose toxics (latency, bandwidth, blackhole, resets, ...) `PUT /admin/links/{link}`
    /// sets live (the slow-link scenario). Off: the app dials its dependencies directly.
    #[arg(long, env = "LINK_PROXY", default_value_t = false, value_parser = parse_bool)]
    pub link_proxy: bool,

    /// Seconds: the downstream client's default timeout for calls that do not set their own.
    #[arg(long, env = "DOWNSTREAM_TIMEOUT", default_value = "30", value_parser = seconds(0.1, 600.0))]
    pub downstream_timeout: f64,

    /// Async runtime worker threads (default: one per CPU). Few workers make CPU and
    /// thread-blocking collapses visible sooner.
    #[arg(long, env = "WORKER_COUNT", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub worker_count: Option<u16>,

    /// Bearer token required by mutating `/admin` calls when bound to a non-loopback address.
    /// Never logged.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    #[serde(serialize_with = "set_or_unset")]
    pub admin_token: Option<Secret>,

    /// Runtime knobs settable at start-up (unset: the profile's value); see docs/knobs.md.
    #[command(flatten)]
    #[serde(skip)]
    pub knobs: KnobArgs,

    /// Safety cap (MiB) on memory the memory endpoints may hold at once (retained + spikes).
    /// Raise it explicitly to let the process grow into the container limit (OOM demos).
    #[arg(long, env = "MEMORY_LEAK_LIMIT_MB", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub memory_leak_limit_mb: u64,

    /// Log format: `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Milliseconds in-flight requests get to finish after SIGTERM/SIGINT before exit.
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub shutdown_grace_ms: u64,

    /// Milliseconds the app keeps serving after SIGTERM/SIGINT with `/ready` already failing, so
    /// load balancers stop routing to it before it stops accepting (then the grace period starts).
    #[arg(long, env = "SHUTDOWN_DELAY_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub shutdown_delay_ms: u64,
}

/// Where the gRPC service listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GrpcPort {
    Off,
    Port(u16),
}

fn parse_grpc_port(s: &str) -> Result<GrpcPort, String> {
    match s.trim() {
        "off" | "false" | "none" => Ok(GrpcPort::Off),
        n => n
            .parse::<u16>()
            .map(GrpcPort::Port)
            .map_err(|_| format!("GRPC_PORT must be a port (0..=65535, 0 = a free one) or `off`, not {n:?}")),
    }
}

/// Settings of `chokepoint downstream`.
#[derive(Debug, Clone, Args)]
pub struct DownstreamSettings {
    /// Address to bind.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port to bind.
    #[arg(long, env = "PORT", default_value_t = 8001)]
    pub port: u16,

    /// Log format: `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

impl Settings {
    /// Settings from the given flags only, ignoring the environment (used by tests so that a
    /// developer's exported `DATABASE_URL` never leaks into them).
    pub fn from_flags<I, T>(flags: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cmd = clap::Command::new("serve").mut_args(|a| a.env(None));
        let cmd = Settings::augment_args(cmd);
        let matches = cmd.try_get_matches_from(
            std::iter::once(std::ffi::OsString::from("serve")).chain(flags.into_iter().map(Into::into)),
        )?;
        Settings::from_arg_matches(&matches)
    }

    /// The start-up knobs: the profile's values with the environment's and flags' on top.
    pub fn startup_knobs(&self) -> (Knobs, BTreeMap<&'static str, Source>) {
        self.knobs.layer_over(self.profile)
    }

    /// The start-up-only settings (everything `serve` takes that is not a knob) with their
    /// environment variables, read from the command definition so none can be missed.
    pub fn startup_only_names() -> &'static [(String, String)] {
        static NAMES: LazyLock<Vec<(String, String)>> = LazyLock::new(|| {
            let knobs: BTreeSet<&str> = SPECS.iter().map(|s| s.name).collect();
            Settings::augment_args(clap::Command::new("serve"))
                .get_arguments()
                .filter(|a| !knobs.contains(a.get_id().as_str()))
                .filter_map(|a| {
                    let env = a.get_env()?.to_string_lossy().into_owned();
                    Some((a.get_id().to_string(), env))
                })
                .collect()
        });
        &NAMES
    }

    /// The start-up-only settings as `GET /admin/config` shows them: URLs without passwords,
    /// the token as `(set)`/`(unset)`, defaults filled in (the database URL, the worker count).
    pub fn startup_view(&self) -> BTreeMap<String, StartupSetting> {
        let mut values = match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => Default::default(),
        };
        values.insert("database_url".into(), json!(redact(&self.effective_database_url())));
        values.insert("redis_url".into(), json!(self.redis_url.as_deref().map(redact)));
        values.insert("worker_count".into(), json!(self.effective_worker_count()));
        Self::startup_only_names()
            .iter()
            .map(|(name, env)| {
                let value = values.remove(name).unwrap_or(Value::Null);
                (
                    name.clone(),
                    StartupSetting {
                        value,
                        runtime_tunable: false,
                        env: env.clone(),
                    },
                )
            })
            .collect()
    }

    /// Async runtime worker threads: `WORKER_COUNT`, or one per CPU.
    pub fn effective_worker_count(&self) -> usize {
        match self.worker_count {
            Some(n) => usize::from(n),
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    pub fn bind_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    pub fn downstream_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.downstream_timeout)
    }

    pub fn shutdown_delay(&self) -> Duration {
        Duration::from_millis(self.shutdown_delay_ms)
    }

    pub fn db_startup_timeout(&self) -> Duration {
        Duration::from_secs(self.db_startup_timeout)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    pub fn memory_limit_bytes(&self) -> u64 {
        self.memory_leak_limit_mb * 1024 * 1024
    }

    /// The database URL in use, with the embedded SQLite default filled in.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => {
                let path = std::env::temp_dir().join("chokepoint.db");
                format!("sqlite://{}?mode=rwc", path.display())
            }
        }
    }
}

/// Accepts `postgres://`, `postgresql://`, `postgresql+asyncpg://` (rewritten) and `sqlite:` URLs.
fn parse_database_url(raw: &str) -> Result<String, String> {
    let url = raw.trim();
    if let Some(rest) = url.strip_prefix("postgresql+asyncpg://") {
        return Ok(format!("postgres://{rest}"));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") || url.starts_with("sqlite:") {
        return Ok(url.to_string());
    }
    Err("expected a postgres://, postgresql+asyncpg:// or sqlite:// URL".into())
}

/// One start-up-only setting in `GET /admin/config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartupSetting {
    pub value: Value,
    pub runtime_tunable: bool,
    pub env: String,
}

fn set_or_unset<S: Serializer>(token: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if token.is_some() { "(set)" } else { "(unset)" })
}

/// The URL without its password, for error messages, logs and `/admin/config`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &url[scheme_end + 3..at];
            match creds.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme_end + 3], &creds[..colon], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// A secret whose `Debug` never shows it, so logging settings cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

fn parse_secret(raw: &str) -> Result<Secret, String> {
    if raw.trim().len() < 8 {
        Err("expected a token of at least 8 characters".into())
    } else {
        Ok(Secret(raw.trim().to_string()))
    }
}

fn parse_key_prefix(raw: &str) -> Result<String, String> {
    if (1..=64).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(raw.to_string())
    } else {
        Err("must be 1 to 64 visible ASCII characters".into())
    }
}

fn parse_redis_url(raw: &str) -> Result<String, String> {
    let url = raw.trim();
    if url.starts_with("rediss://") {
        Err("rediss:// (TLS) is not supported by this build; use redis:// (a TLS sidecar can terminate TLS)".into())
    } else if url.starts_with("redis://") || url.starts_with("redis+unix://") {
        Ok(url.to_string())
    } else {
        Err("expected a redis:// URL".into())
    }
}

fn parse_http_url(raw: &str) -> Result<String, String> {
    let url = raw.trim().trim_end_matches('/');
    if (url.starts_with("http://") || url.starts_with("https://")) && url.len() > "https://".len() {
        Ok(url.to_string())
    } else {
        Err("expected an http:// or https:// URL".into())
    }
}

/// A parser for a number of seconds (fractions allowed) within `min..=max`.
fn seconds(min: f64, max: f64) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |raw: &str| {
        let value: f64 = raw
            .trim()
            .parse()
            .map_err(|_| format!("expected a number of seconds in {min}..={max}"))?;
        if value.is_finite() && (min..=max).contains(&value) {
            Ok(value)
        } else {
            Err(format!("expected a number of seconds in {min}..={max}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_seed() {
        let s = Settings::from_flags(Vec::<String>::new()).unwrap();
        assert_eq!(s.port, 8000);
        assert_eq!(s.profile, Profile::Fragile);
        let (k, _) = s.startup_knobs();
        assert_eq!(k.db_pool_size, 5);
        assert_eq!(k.db_max_overflow, 10);
        assert_eq!(k.db_pool_timeout_ms, 30_000);
        assert!(!k.breaker_enabled);
    }

    #[test]
    fn asyncpg_urls_are_accepted() {
        let s = Settings::from_flags(["--database-url", "postgresql+asyncpg://u:p@db:5432/app"]).unwrap();
        assert_eq!(s.database_url.as_deref(), Some("postgres://u:p@db:5432/app"));
    }

    #[test]
    fn out_of_range_values_are_refused_naming_the_variable() {
        let err = Settings::from_flags(["--db-pool-size", "0"]).unwrap_err().to_string();
        assert!(err.contains("DB_POOL_SIZE"), "{err}");
        let err = Settings::from_flags(["--db-pool-timeout=-1"]).unwrap_err().to_string();
        assert!(err.contains("DB_POOL_TIMEOUT"), "{err}");
        let err = Settings::from_flags(["--database-url", "mysql://x"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("DATABASE_URL"), "{err}");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
    }

    /// Every start-up setting with a default shows a value, not `null`.
    #[test]
    fn the_startup_view_names_every_setting() {
        let s = Settings::from_flags(Vec::<String>::new()).unwrap();
        let view = s.startup_view();
        for name in [
            "redis_key_prefix",
            "skip_migrations",
            "shutdown_delay_ms",
            "worker_count",
            "database_url",
        ] {
            assert!(!view[name].value.is_null(), "{name} is null");
        }
        assert_eq!(view["admin_token"].value, "(unset)");
        assert!(!view.contains_key("db_pool_size"));
        assert_eq!(view.len(), Settings::startup_only_names().len());
    }

    #[test]
    fn admin_token_never_shows_in_debug() {
        let s = Settings::from_flags(["--admin-token", "super-secret-token"]).unwrap();
        assert!(!format!("{s:?}").contains("super-secret-token"));
        assert_eq!(s.admin_token.unwrap().expose(), "super-secret-token");
        assert!(Settings::from_flags(["--admin-token", "short"]).is_err());
    }
}
