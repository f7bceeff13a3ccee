//! The HTTP server: the accept loop and one task per connection (hyper-util's auto builder, as
//! `axum::serve` uses), plus the connection limits `axum::serve` does not have. Without them, a
//! thousand sockets that send nothing used up the descriptors (`accept error: Too many open
//! files` every second) and `/health` timed out for as long as they stayed open, and a socket
//! dribbling a header at 1 byte/s stayed open forever.
//!
//! Knobs (read for each new connection): `http_header_read_timeout_ms` (a request head must
//! arrive whole within it, counted from the connection's accept or the head's first byte),
//! `http_idle_timeout_ms` (a kept-alive connection with no request in flight and no bytes moving
//! is closed), `http_max_connections` (0 = auto: the descriptor limit less a
//! reserve for the pools and files). At the cap the oldest *idle* connection is closed to make
//! room, so a newcomer (a probe, `/metrics`, `/admin`) still gets in while silent sockets hold
//! the rest; only when every connection has a request in flight is the newcomer refused.
//!
//! Metrics: `http_connections_open`, `http_connections_max`,
//! `http_connections_closed_total{reason}` (`header_timeout`, `idle_timeout`, `evicted`,
//! `refused`, `fault_reset`), `http_accept_errors_total`.
//!
//! An answer marked [`Abort`] (an injected abort or response-phase reset, src/scenarios/faults.rs)
//! is never written: the connection is closed with `SO_LINGER` 0, so the client reads a TCP reset
//! instead of an answer.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tower::ServiceExt;

use crate::knobs::KnobStore;
use crate::scenarios::faults::Abort;
use crate::telemetry::register;

/// Descriptors kept free for everything that is not a client connection (database and Redis
/// pools, the downstream client, files): at least this many, or an eighth of the limit.
const FD_RESERVE_MIN: u64 = 128;

/// The connection cap in force: the knob, or (0) the descriptor limit less the reserve.
pub fn effective_max_connections(knob: u32) -> usize {
    if knob > 0 {
        return knob as usize;
    }
    let soft = fd_limit().unwrap_or(1024);
    let reserve = FD_RESERVE_MIN.max(soft / 8);
    soft.saturating_sub(reserve).clamp(16, 1_000_000) as usize
}

fn fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0).then_some(lim.rlim_cur)
}

#[derive(Clone)]
struct Metrics {
    open: IntGauge,
    max: IntGauge,
    closed: IntCounterVec,
    accept_errors: IntCounter,
}

impl Metrics {
    fn new(registry: &Registry) -> Self {
        let m = Self {
            open: register(
                registry,
                IntGauge::new("http_connections_open", "Client connections open right now").unwrap(),
            ),
            max: register(
                registry,
                IntGauge::new(
                    "http_connections_max",
                    "Client connections allowed (http_max_connections, or the automatic cap)",
                )
                .unwrap(),
            ),
            closed: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "http_connections_closed_total",
                        "Connections the server closed on its own: header_timeout, idle_timeout, evicted (oldest idle, at the cap), refused (at the cap, none idle), fault_reset (an injected abort)",
                    ),
                    &["reason"],
                )
                .unwrap(),
            ),
            accept_errors: register(
                registry,
                IntCounter::new("http_accept_errors_total", "accept() failures (e.g. out of descriptors)").unwrap(),
            ),
        };
        for reason in ["header_timeout", "idle_timeout", "evicted", "refused", "fault_reset"] {
            m.closed.with_label_values(&[reason]);
        }
        m
    }
}

/// One open connection, as the accept loop sees it.
struct Entry {
    in_flight: Arc<AtomicUsize>,
    kill: Arc<Notify>,
}

/// The open connections, oldest first (ids grow).
struct Connections {
    open: Mutex<BTreeMap<u64, Entry>>,
    next: AtomicU64,
    metrics: Metrics,
    /// Woken whenever a connection is gone, for the accept loop waiting on an eviction.
    removed: Notify,
}

/// What the accept loop may do with a newcomer at the cap.
enum Room {
    Free,
    /// The oldest idle connection was told to close; wait for it first, so the descriptors in
    /// use never pass the cap.
    Evicting(u64),
    Full,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes room for one more under `cap`: `true` if there is room (possibly by closing the
    /// oldest idle connection), `false` if every connection is busy.
    fn make_room(&self, cap: usize) -> Room {
        let open = self.lock();
        if open.len() < cap {
            return Room::Free;
        }
        match open.iter().find(|(_, e)| e.in_flight.load(Ordering::Acquire) == 0) {
            Some((id, victim)) => {
                victim.kill.notify_one();
                self.metrics.closed.with_label_values(&["evicted"]).inc();
                Room::Evicting(*id)
            }
            None => {
                self.metrics.closed.with_label_values(&["refused"]).inc();
                Room::Full
            }
        }
    }

    /// Waits (at most a second) until connection `id` is gone.
    async fn gone(&self, id: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            let notified = self.removed.notified();
            if !self.lock().contains_key(&id) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    fn add(&self) -> (u64, Arc<AtomicUsize>, Arc<Notify>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (in_flight, kill) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
        let mut open = self.lock();
        open.insert(
            id,
            Entry {
                in_flight: in_flight.clone(),
                kill: kill.clone(),
            },
        );
        self.metrics.open.set(open.len() as i64);
        (id, in_flight, kill)
    }

    fn remove(&self, id: u64) {
        let mut open = self.lock();
        open.remove(&id);
        self.metrics.open.set(open.len() as i64);
        drop(open);
        self.removed.notify_waiters();
    }
}

/// Milliseconds since the server started: the clock of the idle timeout.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// When a connection's bytes last moved, and since when it has been waiting for a request head
/// to complete ([`NO_HEAD`]: not waiting).
struct Activity {
    last_io: AtomicU64,
    head_since: AtomicU64,
    in_flight: Arc<AtomicUsize>,
    /// Has it served a request yet? A fresh connection at the stop may carry a request already
    /// sent: it is served (with `Connection: close`), not closed unread (which resets it).
    served: std::sync::atomic::AtomicBool,
    /// Set by an injected abort: the socket closes with a reset (`SO_LINGER` 0), unanswered.
    reset: std::sync::atomic::AtomicBool,
    /// Ends the connection's task (the same signal an eviction sends).
    kill: Arc<Notify>,
}

const NO_HEAD: u64 = u64::MAX;

/// At the stop, a kept-alive connection that has served requests and is idle is not closed at
/// once: its client may have sent the next request already (unread bytes in the socket), and
/// closing then resets it. It lingers until it has been quiet this long; a request that comes
/// meanwhile is served with `Connection: close` (the edge adds it while draining), after which
/// the connection closes cleanly.
const DRAIN_LINGER_MS: u64 = 200;

/// A socket that tracks its [`Activity`]: the header-read timer starts at accept for a new
/// connection and at the first byte of each later request on a kept-alive one, so the wait
/// *between* requests is the idle timeout's business, not the header timeout's (hyper's own
/// header timer would count that wait too, and close keep-alive connections at 5 s).
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
    clock: Clock,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.activity.reset.load(Ordering::Relaxed) {
            let _ = self.inner.set_zero_linger();
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let now = self.clock.now_ms();
            let a = &self.activity;
            a.last_io.store(now, Ordering::Relaxed);
            if a.in_flight.load(Ordering::Acquire) == 0 && a.head_since.load(Ordering::Relaxed) == NO_HEAD {
                a.head_since.store(now, Ordering::Relaxed);
            }
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.last_io.store(self.clock.now_ms(), Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.last_io.store(self.clock.now_ms(), Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts a request in flight on its connection until its response is ready.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The router as one connection's hyper service: marks the request head complete and counts
/// the request in flight until its response is ready. (One router clone per request, as
/// `axum::serve` does; a tower `service_fn` behind `TowerToHyperService` cloned twice.)
struct ConnService {
    router: Router,
    activity: Arc<Activity>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for ConnService {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        // The head is complete: its timer stops until the next request's first byte.
        let guard = InFlight::new(&self.activity.in_flight);
        self.activity.head_since.store(NO_HEAD, Ordering::Relaxed);
        self.activity.served.store(true, Ordering::Relaxed);
        let fut = self.router.clone().oneshot(req.map(Body::new));
        let activity = self.activity.clone();
        Box::pin(async move {
            let resp = fut.await;
            if matches!(&resp, Ok(r) if r.extensions().get::<Abort>().is_some()) {
                // Not written: the connection's task ends and the socket is reset.
                activity.reset.store(true, Ordering::Relaxed);
                activity.kill.notify_one();
                drop(guard);
                return std::future::pending().await;
            }
            drop(guard);
            resp
        })
    }
}

/// Serves `router` on `listener` until `stop` turns true; then stops accepting, lets every
/// connection finish its in-flight request (idle keep-alive connections close once quiet for
/// [`DRAIN_LINGER_MS`]) and returns when all are closed. The caller bounds that wait with the grace period; `hard_stop`
/// closes whatever is left.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    knobs: Arc<KnobStore>,
    registry: &Registry,
    mut stop: watch::Receiver<bool>,
    hard_stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let conns = Arc::new(Connections {
        open: Mutex::new(BTreeMap::new()),
        next: AtomicU64::new(0),
        metrics: Metrics::new(registry),
        removed: Notify::new(),
    });
    let clock = Clock(Instant::now());
    // Dropped when the last connection task ends: the drain is over.
    let (alive_tx, mut alive_rx) = watch::channel(());
    let mut last_accept_error: Option<Instant> = None;
    let mut closing = false;
    loop {
        // After the stop, the connections already waiting in the backlog are still taken (the
        // kernel would reset them when the listener closes, losing the requests their clients
        // have sent); then the listener closes and new ones are refused.
        let accepted = if closing {
            match futures::FutureExt::now_or_never(listener.accept()) {
                Some(a) => a,
                None => break,
            }
        } else {
            tokio::select! {
                a = listener.accept() => a,
                _ = stop.wait_for(|s| *s) => {
                    closing = true;
                    continue;
                }
            }
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                conns.metrics.accept_errors.inc();
                if last_accept_error.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                    tracing::warn!(error = %e, "accept failed; backing off");
                    last_accept_error = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let k = knobs.current();
        let cap = effective_max_connections(k.http_max_connections);
        conns.metrics.max.set(cap as i64);
        match conns.make_room(cap) {
            Room::Free => {}
            Room::Evicting(victim) => conns.gone(victim).await,
            Room::Full => {
                drop(stream);
                continue;
            }
        }
        let _ = stream.set_nodelay(true);
        let (id, in_flight, kill) = conns.add();
        let activity = Arc::new(Activity {
            last_io: AtomicU64::new(clock.now_ms()),
            head_since: AtomicU64::new(clock.now_ms()),
            in_flight,
            served: std::sync::atomic::AtomicBool::new(false),
            reset: std::sync::atomic::AtomicBool::new(false),
            kill: kill.clone(),
        });
        let io = TokioIo::new(Tracked {
            inner: stream,
            activity: activity.clone(),
            clock,
        });
        let header_timeout = k.http_header_read_timeout_ms;
        let idle = k.http_idle_timeout_ms;
        // A head that starts while the task sleeps toward a later deadline is noticed at most
        // this late.
        let longest_nap = (header_timeout.min(idle) / 4).max(50);
        let service = ConnService {
            router: router.clone(),
            activity: activity.clone(),
        };
        let conns = conns.clone();
        let (mut stop, mut hard_stop, alive) = (stop.clone(), hard_stop.clone(), alive_tx.clone());
        tokio::spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new());
            builder.http2().timer(TokioTimer::new());
            let conn = builder.serve_connection_with_upgrades(io, service);
            tokio::pin!(conn);
            // Taken from the backlog after the stop: serve its request (answered with
            // `Connection: close`) instead of closing it unread.
            let mut draining = closing;
            // Set at the stop for a served connection: close it once idle and quiet since then.
            let mut linger_from: Option<u64> = None;
            let reason = loop {
                let now = clock.now_ms();
                let busy = activity.in_flight.load(Ordering::Acquire) > 0;
                let head_since = activity.head_since.load(Ordering::Relaxed);
                let quiet_since = activity.last_io.load(Ordering::Relaxed);
                let linger_due = linger_from.map(|from| from.max(quiet_since) + DRAIN_LINGER_MS);
                if let Some(due) = linger_due {
                    if !busy && head_since == NO_HEAD && now >= due {
                        // Idle and quiet: hyper closes it at once.
                        conn.as_mut().graceful_shutdown();
                        linger_from = None;
                    }
                }
                // Which limit is due, and when the next one falls due.
                let head_due = (!busy && head_since != NO_HEAD).then(|| head_since + header_timeout);
                let idle_due = (!busy && head_since == NO_HEAD).then(|| quiet_since + idle);
                match (head_due, idle_due) {
                    (Some(due), _) if now >= due => break Some("header_timeout"),
                    (_, Some(due)) if now >= due => break Some("idle_timeout"),
                    _ => {}
                }
                let next = [head_due, idle_due, linger_due]
                    .into_iter()
                    .flatten()
                    .min()
                    .map_or(longest_nap, |due| due.saturating_sub(now).clamp(5, longest_nap));
                tokio::select! {
                    _ = conn.as_mut() => break None,
                    _ = kill.notified() => break activity.reset.load(Ordering::Relaxed).then_some("fault_reset"),
                    _ = hard_stop.wait_for(|s| *s) => break None,
                    _ = stop.wait_for(|s| *s), if !draining => {
                        draining = true;
                        if activity.served.load(Ordering::Relaxed) {
                            linger_from = Some(clock.now_ms());
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_millis(next)) => {}
                }
            };
            if let Some(reason) = reason {
                conns.metrics.closed.with_label_values(&[reason]).inc();
            }
            conns.remove(id);
            drop(alive);
        });
    }
    drop(listener);
    drop(alive_tx);
    // Every connection task holds a sender clone: this returns once the last one has ended.
    let _ = alive_rx.wait_for(|_| false).await;
    Ok(())
}
