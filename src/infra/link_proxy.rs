//! A TCP fault proxy on the app's links to its dependencies (PostgreSQL, Redis, the downstream),
//! with toxiproxy's repertoire as live settings per link. Started with `LINK_PROXY=true` (a
//! start-up setting: the connections must be opened through it); the app then dials each
//! dependency through a listener of its own on 127.0.0.1, on its own OS thread and runtime so
//! that a collapse of the app (inline CPU work) does not slow the link itself.
//!
//! Toxics, set with `PUT /admin/links/{link}` (src/scenarios/slow_link.rs) and read by every
//! connection for every chunk, so a change applies at once to open connections too:
//! - `latency` (+ `jitter`): each chunk the dependency sends waits this long, so every round
//!   trip costs that much more (toxiproxy's `latency` on the downstream stream);
//! - `bandwidth_kbps`: what the dependency sends is paced to this many KiB/s;
//! - `slow_close`: a close is passed on this much later;
//! - `timeout`: a blackhole: nothing passes (data is dropped, as toxiproxy drops it) and the
//!   connection is closed after this time, never when `0ms`;
//! - `reset_peer`: connections are reset (TCP RST) this long after they opened (`0ms`: at once);
//! - `limit_data`: a connection is closed once the dependency has sent this many bytes.
//!
//! Metrics: `link_faults_active{link,toxic}`, `link_connections_open{link}`,
//! `link_bytes_total{link,direction}`, `link_resets_total{link}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::error::{AppError, AppResult};
use crate::params::parse_duration;
use crate::telemetry::register;

/// The links the proxy can sit on.
pub const LINKS: [&str; 3] = ["postgres", "redis", "downstream"];

/// The toxic names, as `link_faults_active` labels them.
pub const TOXICS: [&str; 6] = [
    "latency",
    "bandwidth",
    "slow_close",
    "timeout",
    "reset_peer",
    "limit_data",
];

/// The largest `bandwidth_kbps` and `limit_data`.
pub const MAX_BANDWIDTH_KBPS: u64 = 10_000_000;
pub const MAX_LIMIT_DATA: u64 = 1 << 40;

/// A link's toxics as the admin API takes and shows them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToxicSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_kbps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_close: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_peer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_data: Option<u64>,
}

/// A link's toxics, parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Toxics {
    pub spec: ToxicSpec,
    pub latency: Duration,
    pub jitter: Duration,
    /// Bytes per second.
    pub bandwidth: Option<u64>,
    pub slow_close: Duration,
    pub timeout: Option<Duration>,
    pub reset_peer: Option<Duration>,
    pub limit_data: Option<u64>,
}

fn duration(param: &str, text: &Option<String>) -> AppResult<Option<Duration>> {
    text.as_deref()
        .map(|t| {
            parse_duration(t).ok_or_else(|| {
                AppError::invalid(
                    param,
                    format!("`{param}`: `{t}`; expected a duration from `0ms` to `60s`"),
                )
            })
        })
        .transpose()
}

impl Toxics {
    pub fn parse(spec: ToxicSpec) -> AppResult<Toxics> {
        let bandwidth = match spec.bandwidth_kbps {
            Some(k) if !(1..=MAX_BANDWIDTH_KBPS).contains(&k) => {
                return Err(AppError::out_of_range("bandwidth_kbps", 1, MAX_BANDWIDTH_KBPS, k))
            }
            k => k.map(|k| k * 1024),
        };
        if let Some(n) = spec.limit_data {
            if !(1..=MAX_LIMIT_DATA).contains(&n) {
                return Err(AppError::out_of_range("limit_data", 1, MAX_LIMIT_DATA, n));
            }
        }
        let t = Toxics {
            latency: duration("latency", &spec.latency)?.unwrap_or_default(),
            jitter: duration("jitter", &spec.jitter)?.unwrap_or_default(),
            bandwidth,
            slow_close: duration("slow_close", &spec.slow_close)?.unwrap_or_default(),
            timeout: duration("timeout", &spec.timeout)?,
            reset_peer: duration("reset_peer", &spec.reset_peer)?,
            limit_data: spec.limit_data,
            spec,
        };
        if t.active().is_empty() {
            return Err(AppError::invalid(
                "toxics",
                "set at least one of latency, jitter, bandwidth_kbps, slow_close, timeout, reset_peer, limit_data (DELETE the link's toxics to clear them)",
            ));
        }
        Ok(t)
    }

    /// The toxics in force.
    pub fn active(&self) -> Vec<&'static str> {
        let mut on = Vec::new();
        if self.latency > Duration::ZERO || self.jitter > Duration::ZERO {
            on.push("latency");
        }
        if self.bandwidth.is_some() {
            on.push("bandwidth");
        }
        if self.slow_close > Duration::ZERO {
            on.push("slow_close");
        }
        if self.timeout.is_some() {
            on.push("timeout");
        }
        if self.reset_peer.is_some() {
            on.push("reset_peer");
        }
        if self.limit_data.is_some() {
            on.push("limit_data");
        }
        on
    }
}

struct Metrics {
    active: IntGaugeVec,
    open: IntGaugeVec,
    bytes: IntCounterVec,
    resets: IntCounterVec,
}

/// The link proxies of one app: one listener per proxied dependency.
pub struct LinkProxies {
    links: Vec<Arc<Link>>,
    _thread: Option<ProxyThread>,
}

/// One proxied link.
pub struct Link {
    pub name: &'static str,
    /// Where the app dials (the proxy's listener).
    pub listen: SocketAddr,
    /// The dependency's own address.
    pub upstream: String,
    toxics: watch::Sender<Arc<Toxics>>,
    metrics: Arc<Metrics>,
}

struct ProxyThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for ProxyThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl LinkProxies {
    /// No proxy (`LINK_PROXY` off): the metrics exist (at zero) and every link call says so.
    pub fn disabled(registry: &Registry) -> Self {
        Metrics::register(registry);
        Self {
            links: Vec::new(),
            _thread: None,
        }
    }

    /// Starts a listener for each `(link, upstream host:port)` on a thread and runtime of its own.
    pub fn start(upstreams: &[(&'static str, String)], registry: &Registry) -> std::io::Result<Self> {
        let metrics = Arc::new(Metrics::register(registry));
        let mut listeners = Vec::new();
        let mut links = Vec::new();
        for (name, upstream) in upstreams {
            let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            std_listener.set_nonblocking(true)?;
            let link = Arc::new(Link {
                name,
                listen: std_listener.local_addr()?,
                upstream: upstream.clone(),
                toxics: watch::channel(Arc::new(Toxics::default())).0,
                metrics: metrics.clone(),
            });
            listeners.push((std_listener, link.clone()));
            links.push(link);
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new().name("link-proxy".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "the link proxy's runtime did not start");
                    return;
                }
            };
            rt.block_on(async move {
                for (std_listener, link) in listeners {
                    match TcpListener::from_std(std_listener) {
                        Ok(listener) => {
                            tokio::spawn(accept_loop(listener, link));
                        }
                        Err(e) => tracing::error!(error = %e, "link proxy listener"),
                    }
                }
                let _ = stopped.await;
            });
        })?;
        for link in &links {
            tracing::info!(link = link.name, listen = %link.listen, upstream = %link.upstream, "link proxy in front of the dependency");
        }
        Ok(Self {
            links,
            _thread: Some(ProxyThread { stop: Some(stop) }),
        })
    }

    pub fn enabled(&self) -> bool {
        self._thread.is_some()
    }

    pub fn links(&self) -> &[Arc<Link>] {
        &self.links
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Link>> {
        self.links.iter().find(|l| l.name == name)
    }

    /// Clears every link's toxics (`DELETE /admin/links`, `POST /admin/reset`).
    pub fn clear(&self) {
        for link in &self.links {
            link.set(None);
        }
    }
}

impl Metrics {
    fn register(registry: &Registry) -> Self {
        let m = Metrics {
            active: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "link_faults_active",
                        "1 while a toxic is set on a dependency link (LINK_PROXY)",
                    ),
                    &["link", "toxic"],
                )
                .unwrap(),
            ),
            open: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "link_connections_open",
                        "Connections open through the link proxy, by link",
                    ),
                    &["link"],
                )
                .unwrap(),
            ),
            bytes: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "link_bytes_total",
                        "Bytes the link proxy passed, by link and direction (to_dependency, from_dependency)",
                    ),
                    &["link", "direction"],
                )
                .unwrap(),
            ),
            resets: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "link_resets_total",
                        "Connections the link proxy reset or closed on purpose (reset_peer, timeout, limit_data)",
                    ),
                    &["link"],
                )
                .unwrap(),
            ),
        };
        for link in LINKS {
            m.open.with_label_values(&[link]);
            m.resets.with_label_values(&[link]);
            for toxic in TOXICS {
                m.active.with_label_values(&[link, toxic]).set(0);
            }
            for dir in ["to_dependency", "from_dependency"] {
                m.bytes.with_label_values(&[link, dir]);
            }
        }
        m
    }
}

impl Link {
    pub fn toxics(&self) -> Arc<Toxics> {
        self.toxics.borrow().clone()
    }

    /// Sets (or clears) the link's toxics: open connections take them at their next chunk.
    pub fn set(&self, toxics: Option<Toxics>) {
        let toxics = toxics.unwrap_or_default();
        let active = toxics.active();
        for toxic in TOXICS {
            self.metrics
                .active
                .with_label_values(&[self.name, toxic])
                .set(active.contains(&toxic) as i64);
        }
        self.toxics.send_replace(Arc::new(toxics));
    }
}

async fn accept_loop(listener: TcpListener, link: Arc<Link>) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                let link = link.clone();
                tokio::spawn(async move {
                    link.metrics.open.with_label_values(&[link.name]).inc();
                    serve(client, &link).await;
                    link.metrics.open.with_label_values(&[link.name]).dec();
                });
            }
            Err(e) => {
                tracing::warn!(link = link.name, error = %e, "link proxy accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// How a proxied connection ended.
enum End {
    Closed,
    /// Reset on purpose (reset_peer), or closed on purpose (timeout, limit_data).
    Cut {
        reset: bool,
    },
}

async fn serve(mut client: TcpStream, link: &Link) {
    let _ = client.set_nodelay(true);
    let opened = Instant::now();
    let mut rx = link.toxics.subscribe();
    if rx.borrow().reset_peer == Some(Duration::ZERO) {
        link.metrics.resets.with_label_values(&[link.name]).inc();
        let _ = client.set_zero_linger();
        return;
    }
    let Ok(mut server) = TcpStream::connect(&link.upstream).await else {
        // The dependency refused: so does the link.
        return;
    };
    let _ = server.set_nodelay(true);
    let end = {
        let (mut cr, mut cw) = client.split();
        let (mut sr, mut sw) = server.split();
        let up = pump(&mut cr, &mut sw, link, Direction::ToDependency);
        let down = pump(&mut sr, &mut cw, link, Direction::FromDependency);
        // Each direction ends on its own (a half-close passes through); a cut ends both.
        let pumps = async {
            tokio::pin!(up, down);
            let (mut up_open, mut down_open) = (true, true);
            while up_open || down_open {
                let cut = tokio::select! {
                    cut = &mut up, if up_open => { up_open = false; cut }
                    cut = &mut down, if down_open => { down_open = false; cut }
                };
                if cut {
                    return End::Cut { reset: false };
                }
            }
            End::Closed
        };
        let reset = async {
            loop {
                let after = rx.borrow_and_update().reset_peer;
                match after {
                    Some(after) => {
                        let due = opened + after;
                        tokio::select! {
                            _ = tokio::time::sleep_until(due.into()) => return,
                            changed = rx.changed() => if changed.is_err() { std::future::pending::<()>().await },
                        }
                    }
                    None => {
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                }
            }
        };
        tokio::select! {
            end = pumps => end,
            _ = reset => End::Cut { reset: true },
        }
    };
    if let End::Cut { reset } = end {
        link.metrics.resets.with_label_values(&[link.name]).inc();
        if reset {
            let _ = client.set_zero_linger();
            let _ = server.set_zero_linger();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToDependency,
    FromDependency,
}

/// Copies one direction, applying the link's toxics to each chunk. True when it cut the
/// connection on purpose (timeout, limit_data).
async fn pump<R, W>(r: &mut R, w: &mut W, link: &Link, dir: Direction) -> bool
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let label = match dir {
        Direction::ToDependency => "to_dependency",
        Direction::FromDependency => "from_dependency",
    };
    let bytes = link.metrics.bytes.with_label_values(&[link.name, label]);
    let mut buf = vec![0u8; 16 * 1024];
    let mut sent: u64 = 0;
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let t = link.toxics();
        if let Some(timeout) = t.timeout {
            // A blackhole: the chunk is dropped; the connection closes after `timeout`.
            if timeout > Duration::ZERO {
                tokio::time::sleep(timeout).await;
                return true;
            }
            continue;
        }
        let mut chunk = &buf[..n];
        if dir == Direction::FromDependency {
            let jitter = if t.jitter > Duration::ZERO {
                Duration::from_micros(rand::rng().random_range(0..=t.jitter.as_micros() as u64))
            } else {
                Duration::ZERO
            };
            let wait = t.latency + jitter;
            if wait > Duration::ZERO {
                tokio::time::sleep(wait).await;
            }
            if let Some(rate) = t.bandwidth {
                tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
            }
            if let Some(limit) = t.limit_data {
                let room = limit.saturating_sub(sent) as usize;
                if room < chunk.len() {
                    chunk = &chunk[..room];
                    let _ = w.write_all(chunk).await;
                    bytes.inc_by(chunk.len() as u64);
                    return true;
                }
            }
        }
        if w.write_all(chunk).await.is_err() {
            break;
        }
        sent += chunk.len() as u64;
        bytes.inc_by(chunk.len() as u64);
    }
    let slow = link.toxics().slow_close;
    if slow > Duration::ZERO {
        tokio::time::sleep(slow).await;
    }
    let _ = w.shutdown().await;
    false
}

/// Starts a proxy for each TCP dependency of the lab (PostgreSQL when `DATABASE_URL` is one,
/// Redis when `REDIS_URL` is set, the downstream always) and points the settings at them.
pub fn route_through(
    settings: &mut crate::settings::Settings,
    downstream_url: &mut String,
    registry: &Registry,
) -> anyhow::Result<LinkProxies> {
    use anyhow::Context;
    let db_url = settings.effective_database_url();
    let mut wanted: Vec<(&'static str, String)> = Vec::new();
    let bad = |what: &str, e: String| anyhow::anyhow!("LINK_PROXY: the {what} URL: {e}");
    if db_url.starts_with("postgres") {
        wanted.push(("postgres", upstream_of(&db_url, 5432).map_err(|e| bad("database", e))?));
    }
    if let Some(url) = &settings.redis_url {
        wanted.push(("redis", upstream_of(url, 6379).map_err(|e| bad("Redis", e))?));
    }
    wanted.push((
        "downstream",
        upstream_of(downstream_url, 80).map_err(|e| bad("downstream", e))?,
    ));
    let proxies = LinkProxies::start(&wanted, registry).context("starting the link proxy (LINK_PROXY)")?;
    for link in proxies.links() {
        match link.name {
            "postgres" => {
                settings.database_url = Some(pointed_at(&db_url, link.listen).map_err(|e| bad("database", e))?)
            }
            "redis" => {
                let url = settings.redis_url.clone().unwrap_or_default();
                settings.redis_url = Some(pointed_at(&url, link.listen).map_err(|e| bad("Redis", e))?);
            }
            _ => *downstream_url = pointed_at(downstream_url, link.listen).map_err(|e| bad("downstream", e))?,
        }
    }
    Ok(proxies)
}

/// `host:port` of a URL: what the proxy dials.
pub fn upstream_of(url: &str, default_port: u16) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("cannot read the URL: {e}"))?;
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("the URL has no TCP host (a Unix socket cannot pass the link proxy)")?;
    let port = parsed.port().unwrap_or(default_port);
    Ok(if host.contains(':') {
        format!("[{}]:{port}", host.trim_matches(['[', ']']))
    } else {
        format!("{host}:{port}")
    })
}

/// The URL with the proxy's address in place of the dependency's; the rest kept.
pub fn pointed_at(url: &str, addr: SocketAddr) -> Result<String, String> {
    let mut u = reqwest::Url::parse(url).map_err(|e| format!("cannot read the URL: {e}"))?;
    u.set_host(Some(&addr.ip().to_string())).map_err(|e| e.to_string())?;
    u.set_port(Some(addr.port()))
        .map_err(|_| "the URL cannot take a port")?;
    Ok(u.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_pointed_at_the_proxy_and_keeps_the_rest() {
        let url = "postgres://u:p@db.example:6543/app?sslmode=disable";
        assert_eq!(upstream_of(url, 5432).unwrap(), "db.example:6543");
        assert_eq!(
            pointed_at(url, "127.0.0.1:40000".parse().unwrap()).unwrap(),
            "postgres://u:p@127.0.0.1:40000/app?sslmode=disable"
        );
        assert_eq!(upstream_of("redis://127.0.0.1/0", 6379).unwrap(), "127.0.0.1:6379");
        assert!(upstream_of("postgres:///app?host=/var/run/postgresql", 5432).is_err());
    }

    #[test]
    fn toxics_are_validated_by_name() {
        for (spec, param) in [
            (json_spec(r#"{"latency": "61s"}"#), "latency"),
            (json_spec(r#"{"bandwidth_kbps": 0}"#), "bandwidth_kbps"),
            (json_spec(r#"{"limit_data": 0}"#), "limit_data"),
            (json_spec(r#"{}"#), "toxics"),
        ] {
            let Err(AppError::InvalidParameter { param: p, .. }) = Toxics::parse(spec) else {
                panic!("{param}: accepted");
            };
            assert_eq!(p, param);
        }
        let t = Toxics::parse(json_spec(r#"{"latency": "20ms", "timeout": "0ms"}"#)).unwrap();
        assert_eq!(t.active(), vec!["latency", "timeout"]);
    }

    fn json_spec(s: &str) -> ToxicSpec {
        serde_json::from_str(s).unwrap()
    }
}
