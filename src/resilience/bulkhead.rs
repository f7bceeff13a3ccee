//! Bulkhead: at most `limit` holders at once; the next one is refused at once instead of queued
//! (that queue is the collapse). Used for CPU offload, downstream calls and global load shedding.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use prometheus::IntGauge;

pub struct Bulkhead {
    in_use: AtomicU32,
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
            gauge,
        })
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
