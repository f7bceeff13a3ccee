//! Who holds which pooled connection, and for how long: every [`crate::infra::database::Database::acquire`]
//! registers a checkout with the route and request id that took it (from [`HOLDER`], set by the
//! edge around each handler), and the checkout's drop ends it. From this come:
//!
//! - `db_connection_hold_seconds`: how long connections are held (the pool's service time, the
//!   denominator of its capacity);
//! - `db_connections_held{over}`: checkouts open right now for longer than 1 s, 10 s and 60 s,
//!   and `db_connection_oldest_hold_seconds`: the connection-leak scenario's "held too long";
//! - the leak detector (knob `db_leak_detect_ms`, HikariCP's `leakDetectionThreshold`): a checkout
//!   older than the threshold is logged once at WARN with its holder and counted in
//!   `db_connection_leaks_detected_total{route}`;
//! - leaked connections ([`Checkouts::leak`]): a checkout kept past its request for a while (the
//!   connection-leak scenario), released by its deadline, by `POST /admin/reset`
//!   ([`Checkouts::release_leaks`]) or when the app stops; counted in `db_connections_leaked`.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::MatchedPath;
use axum::http::HeaderValue;
use prometheus::{Gauge, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use sqlx::pool::PoolConnection;
use sqlx::{Postgres, Sqlite};

use crate::lifecycle::Lifecycle;
use crate::telemetry::{register, GaugeGuard, LATENCY_BUCKETS};

tokio::task_local! {
    /// The request a handler serves: the edge scopes every handler future in it, so a checkout
    /// knows its holder.
    pub static HOLDER: Holder;
}

/// The request that takes a connection.
#[derive(Clone)]
pub struct Holder {
    pub route: Option<MatchedPath>,
    pub request_id: HeaderValue,
}

/// Holds older than these are counted in `db_connections_held{over}`.
const OVER: [(Duration, &str); 3] = [
    (Duration::from_secs(1), "1s"),
    (Duration::from_secs(10), "10s"),
    (Duration::from_secs(60), "60s"),
];

/// How often the leak detector looks.
const DETECT_EVERY: Duration = Duration::from_millis(100);

struct Entry {
    since: Instant,
    /// Who took it, as the edge handed it over (shared, not copied: this is every acquire's
    /// path); `None` outside a request. Turned into text only when the detector reports.
    holder: Option<Holder>,
    reported: bool,
}

impl Entry {
    fn route(&self) -> &str {
        match &self.holder {
            Some(h) => h.route.as_ref().map_or("unmatched", |r| r.as_str()),
            None => "background",
        }
    }

    fn request_id(&self) -> &str {
        self.holder
            .as_ref()
            .and_then(|h| h.request_id.to_str().ok())
            .unwrap_or("")
    }
}

/// The open checkouts and their metrics.
pub struct Checkouts {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Entry>>,
    hold_seconds: Histogram,
    held: IntGaugeVec,
    oldest: Gauge,
    detected: IntCounterVec,
    leaked: IntGauge,
    /// `db_leak_detect_ms` (0 = off).
    detect_ms: AtomicU64,
    /// Bumped by [`Checkouts::release_leaks`]: every leak task watching it lets go.
    release: tokio::sync::watch::Sender<u64>,
}

/// A pooled connection of either backend; returned to the pool when dropped.
pub enum Conn {
    Pg(PoolConnection<Postgres>),
    Sqlite(PoolConnection<Sqlite>),
}

/// A pooled connection and its registration: derefs to [`Conn`]; dropping it returns the
/// connection to the pool and ends the hold.
pub struct Checkout {
    conn: Conn,
    hold: Hold,
}

struct Hold {
    id: u64,
    checkouts: Arc<Checkouts>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.checkouts.finish(self.id);
    }
}

impl Deref for Checkout {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl DerefMut for Checkout {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }
}

impl Checkout {
    /// Closes the connection instead of returning it (a session the server ended): the pool
    /// opens a replacement.
    pub async fn close(self) {
        let Checkout { conn, hold } = self;
        let _ = crate::on_conn!(conn, c => c.close().await);
        drop(hold);
    }
}

impl Checkouts {
    pub fn new(registry: &Registry, detect_ms: u64) -> Arc<Self> {
        let detected = register(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "db_connection_leaks_detected_total",
                    "Connections held past db_leak_detect_ms, by the route that took them (each counted once, and logged at WARN)",
                ),
                &["route"],
            )
            .unwrap(),
        );
        // The family exists before the first finding (dashboards and alerts name it).
        detected.with_label_values(&["/api/db/session"]);
        let held = register(
            registry,
            IntGaugeVec::new(
                Opts::new(
                    "db_connections_held",
                    "Pooled connections checked out right now for longer than 1 s, 10 s, 60 s",
                ),
                &["over"],
            )
            .unwrap(),
        );
        for (_, label) in OVER {
            held.with_label_values(&[label]).set(0);
        }
        Arc::new(Self {
            next: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
            hold_seconds: register(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "db_connection_hold_seconds",
                        "How long a pooled connection was held, checkout to release",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )
                .unwrap(),
            ),
            held,
            oldest: register(
                registry,
                Gauge::new(
                    "db_connection_oldest_hold_seconds",
                    "Age of the longest-held pooled connection right now (0 when none is out)",
                )
                .unwrap(),
            ),
            detected,
            leaked: register(
                registry,
                IntGauge::new(
                    "db_connections_leaked",
                    "Pooled connections kept past their request right now (connection-leak scenario, db_leak_ms)",
                )
                .unwrap(),
            ),
            detect_ms: AtomicU64::new(detect_ms),
            release: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Registers `conn` as held by the current request ([`HOLDER`]; `background` outside one).
    pub fn check_out(self: &Arc<Self>, conn: Conn) -> Checkout {
        let holder = HOLDER.try_with(Holder::clone).ok();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.open.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            Entry {
                since: Instant::now(),
                holder,
                reported: false,
            },
        );
        Checkout {
            conn,
            hold: Hold {
                id,
                checkouts: self.clone(),
            },
        }
    }

    fn finish(&self, id: u64) {
        let entry = self.open.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        if let Some(e) = entry {
            self.hold_seconds.observe(e.since.elapsed().as_secs_f64());
        }
    }

    pub fn set_detect_ms(&self, ms: u64) {
        self.detect_ms.store(ms, Ordering::Relaxed);
    }

    /// Samples the held-too-long gauges (called at scrape time).
    pub fn refresh_gauges(&self) {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let ages: Vec<Duration> = open.values().map(|e| e.since.elapsed()).collect();
        drop(open);
        for (over, label) in OVER {
            let n = ages.iter().filter(|a| **a > over).count();
            self.held.with_label_values(&[label]).set(n as i64);
        }
        self.oldest.set(ages.iter().max().map_or(0.0, |a| a.as_secs_f64()));
    }

    /// Connections kept past their request right now.
    pub fn leaked(&self) -> i64 {
        self.leaked.get()
    }

    /// One look of the leak detector: logs and counts every checkout older than the threshold
    /// that was not reported yet. Returns how many it found.
    pub fn detect(&self) -> usize {
        let ms = self.detect_ms.load(Ordering::Relaxed);
        if ms == 0 {
            return 0;
        }
        let threshold = Duration::from_millis(ms);
        let mut found = Vec::new();
        {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            for e in open.values_mut() {
                if !e.reported && e.since.elapsed() > threshold {
                    e.reported = true;
                    found.push((e.route().to_string(), e.request_id().to_string(), e.since.elapsed()));
                }
            }
        }
        for (route, request_id, held) in &found {
            self.detected.with_label_values(&[route]).inc();
            tracing::warn!(
                route = %route,
                request_id = %request_id,
                held_ms = held.as_millis() as u64,
                threshold_ms = ms,
                "connection leak suspected: a pooled connection is held past db_leak_detect_ms by this request"
            );
        }
        found.len()
    }

    /// Runs the leak detector in the background for as long as the app runs.
    pub fn start_detector(self: &Arc<Self>, lifecycle: &Lifecycle) {
        let me = self.clone();
        lifecycle.spawn_background(async move {
            loop {
                tokio::time::sleep(DETECT_EVERY).await;
                me.detect();
            }
        });
    }

    /// Keeps `checkout` (and whatever it holds open: a transaction, locks) for `hold` after its
    /// request is over, as an unclosed session does; then `finish` runs on it (e.g. a rollback)
    /// and it goes back to the pool. [`Checkouts::release_leaks`] and the app's stop end it early.
    pub fn leak<F, Fut>(self: &Arc<Self>, lifecycle: &Lifecycle, checkout: Checkout, hold: Duration, finish: F)
    where
        F: FnOnce(Checkout) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let leaked = GaugeGuard::new(&self.leaked);
        let mut release = self.release.subscribe();
        release.borrow_and_update();
        lifecycle.spawn_background(async move {
            tokio::select! {
                _ = tokio::time::sleep(hold) => {}
                _ = release.changed() => {}
            }
            // Still counted as leaked while it is being given back.
            finish(checkout).await;
            drop(leaked);
        });
    }

    /// Lets every leaked connection go now (`POST /admin/reset`).
    pub fn release_leaks(&self) {
        self.release.send_modify(|g| *g += 1);
    }
}
