//! Bulkhead: at most `limit` holders at once; the next one is refused at once instead of queued
//! (that queue is the collapse), or, with [`Bulkhead::enter_or_wait`], waits in a short bounded
//! queue so a freed slot is taken at once (goodput: the slots never idle while work is offered).
//! Used for CPU offload, downstream calls and global load shedding.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use prometheus::IntGauge;

pub struct Bulkhead {
    in_use: AtomicU32,
    /// Callers waiting in [`Bulkhead::enter_or_wait`].
    waiting: AtomicU32,
    /// Woken when a permit is dropped.
    freed: tokio::sync::Notify,
    gauge: Option<IntGauge>,
}

/// Held while inside the bulkhead; leaving is automatic on drop.
pub struct Permit {
    bulkhead: Arc<Bulkhead>,
}

impl Bulkhead {
    pub fn new(gauge: Option<IntGauge>) -> Arc<Self> {
        Arc::new(Self {
            in_use: AtomicU32::new(0),
            waiting: AtomicU32::new(0),
            freed: tokio::sync::Notify::new(),
            gauge,
        })
    }

    /// Enters like [`Bulkhead::try_enter`], or waits for a slot if fewer than `queue_max`
    /// callers are waiting already; `None` (refused at once) when the queue is full too. The
    /// wait ends when a permit is dropped (the caller's own timeout bounds it); a caller that
    /// is cancelled while waiting leaves the queue.
    pub async fn enter_or_wait(self: &Arc<Self>, limit: u32, queue_max: u32) -> Option<Permit> {
        if let Some(p) = self.try_enter(limit) {
            return Some(p);
        }
        let joined = self
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < queue_max).then_some(n + 1))
            .is_ok();
        if !joined {
            return None;
        }
        struct Leave<'a>(&'a AtomicU32);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _leave = Leave(&self.waiting);
        loop {
            // Registered before the retry, so a permit dropped in between still wakes us.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(p) = self.try_enter(limit) {
                return Some(p);
            }
            freed.await;
        }
    }

    /// Enters if fewer than `limit` are inside (`limit == 0` means unlimited).
    pub fn try_enter(self: &Arc<Self>, limit: u32) -> Option<Permit> {
        let entered = self
            .in_use
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (limit == 0 || n < limit).then_some(n + 1)
            })
            .is_ok();
        if !entered {
            return None;
        }
        if let Some(g) = &self.gauge {
            g.inc();
        }
        Some(Permit { bulkhead: self.clone() })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.bulkhead.in_use.fetch_sub(1, Ordering::SeqCst);
        // Only when someone waits: every request's in-flight permit ends here. A waiter counts
        // itself before its last try, so a slot freed after that try sees it.
        if self.bulkhead.waiting.load(Ordering::SeqCst) > 0 {
            self.bulkhead.freed.notify_one();
        }
        if let Some(g) = &self.bulkhead.gauge {
            g.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_limit_and_frees_on_drop() {
        let b = Bulkhead::new(None);
        let p1 = b.try_enter(2).unwrap();
        let _p2 = b.try_enter(2).unwrap();
        assert!(b.try_enter(2).is_none());
        drop(p1);
        assert!(b.try_enter(2).is_some());
        assert!(b.try_enter(0).is_some(), "0 means unlimited");
    }
}
