//! One shutdown for the whole app: one cancellation token and one task tracker, in the app
//! state. Every task and thread the app starts goes through it:
//!
//! - **background work** ([`Lifecycle::spawn_background`]: the deployment dispatcher and sweep,
//!   the database monitor, the lab sampler, the memory trimmer, cold-start timers) stops when the
//!   app stops — its future is dropped at its next await;
//! - **work that must finish once started** ([`Lifecycle::spawn`]: committing an accepted
//!   deployment, a single-flight cache load, a cold-start invocation, the old pool's close) is
//!   never cancelled, and the stop waits for it within a bound;
//! - **threads** (the worker pool's, the embedded simulator's) are told to stop by a tracked
//!   task when the app stops.
//!
//! The order, in [`crate::App::run_until_stopped`]: a signal marks the app not ready; after
//! `SHUTDOWN_DELAY_MS` the server stops accepting and [`Lifecycle::start_draining`] ends open
//! event streams (`/lab/events`), so a watching panel does not hold the drain for the whole
//! grace period; once in-flight requests are done (or `SHUTDOWN_GRACE_MS` passed),
//! [`Lifecycle::stop`] cancels the background work and waits for the tracked tasks.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

#[derive(Clone)]
pub struct Lifecycle {
    /// Cancelled once the app stops; cancels `draining` with it.
    stopping: CancellationToken,
    /// Cancelled when the server stops accepting: open streams end.
    draining: CancellationToken,
    tracker: TaskTracker,
}

impl Default for Lifecycle {
    fn default() -> Self {
        let stopping = CancellationToken::new();
        Lifecycle {
            draining: stopping.child_token(),
            stopping,
            tracker: TaskTracker::new(),
        }
    }
}

impl Lifecycle {
    /// Background work: runs until it ends or the app stops.
    pub fn spawn_background<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stopping = self.stopping.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                biased;
                _ = stopping.cancelled() => {}
                _ = work => {}
            }
        });
    }

    /// Work that must finish once started: tracked (the stop waits for it), never cancelled.
    pub fn spawn<F>(&self, work: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(work)
    }

    /// Runs `on_stop` when the app stops (to tell a thread or a pool to wind down).
    pub fn on_stop<F>(&self, on_stop: F)
    where
        F: FnOnce() + Send + 'static,
    {
        let stopping = self.stopping.clone();
        self.tracker.spawn(async move {
            stopping.cancelled().await;
            on_stop();
        });
    }

    /// Resolves when the server stops accepting (or the app stops): open streams end on it.
    pub fn draining(&self) -> WaitForCancellationFutureOwned {
        self.draining.clone().cancelled_owned()
    }

    pub fn start_draining(&self) {
        self.draining.cancel();
    }

    /// Cancels the background work and waits up to `within` for every tracked task; false if
    /// some were still running then (they are left to the runtime's shutdown).
    pub async fn stop(&self, within: Duration) -> bool {
        self.stopping.cancel();
        self.tracker.close();
        tokio::time::timeout(within, self.tracker.wait()).await.is_ok()
    }

    /// Tasks still tracked.
    pub fn tasks(&self) -> usize {
        self.tracker.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn background_work_stops_and_finishing_work_is_awaited() {
        let life = Lifecycle::default();
        let (tx, rx) = tokio::sync::oneshot::channel();
        life.spawn_background(std::future::pending());
        let finishing = life.spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx.send(());
        });
        let stopped_thread = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stopped_thread.clone();
        life.on_stop(move || flag.store(true, std::sync::atomic::Ordering::SeqCst));
        let mut draining = std::pin::pin!(life.draining());
        assert!(futures::poll!(draining.as_mut()).is_pending());
        assert!(life.stop(Duration::from_secs(2)).await, "a task outlived the stop");
        assert!(rx.await.is_ok(), "finishing work was cancelled");
        assert!(finishing.await.is_ok());
        assert!(stopped_thread.load(std::sync::atomic::Ordering::SeqCst));
        assert!(futures::poll!(draining).is_ready());
        assert_eq!(life.tasks(), 0);
    }
}
