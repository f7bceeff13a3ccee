//! Mitigations, each small, each implemented once and reused by the scenarios. Every policy
//! reads its limits from the runtime knobs at the moment it decides, so a change through
//! `/admin` applies to the next request without a restart.
//!
//! tower's `ConcurrencyLimit`/`LoadShed`/`Timeout` fix their limits when the layer is built; the
//! lab must retune them while load runs, so the equivalent decisions are made here against the
//! live knobs. Rate limiting uses `governor` (GCRA), rebuilt when its knobs change.

pub mod adaptive;
pub mod breaker;
pub mod bulkhead;
pub mod guard;
pub mod retry;
