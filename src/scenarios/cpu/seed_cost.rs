//! What the original Python lab spent on each CPU route, so chokepoint collapses under the
//! original's own load (knob `cpu_cost_model = seed`, the default). Recursive fibonacci is ~26×
//! faster in Rust than in CPython; without this, 50 req/s of fib(25..34) never saturates two cores.
//!
//! How the figures were obtained (`bench/seed-cost.py` reproduces them):
//! - **fib(N)**: the original's measured response times for fib(25) 7.8 ms, fib(30) ~80 ms and
//!   fib(34) 546 ms, divided by the calls a recursive fib makes (2·F(N+1) − 1), give 32.1, 29.7 and
//!   29.6 ns per call; the table is calls(N) × 30.4 ns (the fit that keeps all three within 6%),
//!   which extends them to every N in 0..=40 by fibonacci's own growth ratio (φ ≈ 1.618 per step).
//!   CPython 3.11.7 on the 2-core CI machine measures 37.5 ns per call (fib(25) 9.1 ms), the same
//!   growth.
//! - **hash** and **json-processing**: no measurements of the original exist, so the original's
//!   algorithms were rewritten in Python (chained `sha256(str).hexdigest()`; a size × size nested
//!   dict serialized and parsed 5 times) and timed with `time.process_time` (best of 5) in CPython
//!   3.11.7 on the 2-core CI machine, then scaled by 0.81, the ratio between the original's fib
//!   cost per call (30.4 ns) and this machine's (37.5 ns), so all three come from one machine.
//!   hash: 605 ns per iteration here → 490 ns. json: 15.1 ms at size 100, 163 ms at 300, 2.12 s at
//!   1,000 here (≈ 2 µs per nested item: the original's work grows with size²); interpolated
//!   linearly between the measured sizes, by size² above 1,000, and capped at
//!   [`SEED_CAP`] (the original needed minutes and gigabytes there: its 512 MiB pod was killed).
//!
//! chokepoint's own computation stays its own (json-processing handles `size` records, not size²
//! nested items), so `cpu_cost_model = native` never needs size² memory.
//!
//! The real computation always runs; the model burns only the difference on the thread's CPU clock
//! (like `/api/cpu/burn`), so a busy machine makes a call slower, never cheaper.

use std::time::Duration;

/// Original CPU time of `fib(N)` in microseconds, N = 0..=40: calls(N) × 30.4 ns.
pub const FIB_US: [u32; 41] = [
    0, 0, 0, 0, 0, 0, 1, 1, 2, 3, // 0..=9
    5, 9, 14, 23, 37, 60, 97, 157, 254, 411, // 10..=19
    665, 1_077, 1_742, 2_819, 4_561, 7_381, 11_942, 19_323, 31_265, 50_588, // 20..=29
    81_853, 132_441, 214_294, 346_735, 561_030, 907_765, 1_468_795, 2_376_561, 3_845_356, 6_221_917,  // 30..=39
    10_067_273, // 40
];

/// Nanoseconds per iteration of the original's chained SHA-256.
pub const HASH_NS_PER_ITERATION: f64 = 490.0;

/// The original's json-processing time (µs) at measured sizes; linear in between, size² above.
pub const JSON_POINTS: [(u32, f64); 7] = [
    (0, 0.0),
    (1, 17.0),
    (10, 145.0),
    (30, 1_103.0),
    (100, 12_200.0),
    (300, 132_200.0),
    (1_000, 1_714_000.0),
];

/// No call's seed cost exceeds this (json-processing at size ≥ ~5,900 would ask for more).
pub const SEED_CAP: Duration = Duration::from_secs(60);

/// CPU time the original spent on `fib(n)`.
pub fn fib(n: u32) -> Duration {
    let us = FIB_US.get(n as usize).copied().unwrap_or(FIB_US[40]);
    Duration::from_micros(u64::from(us))
}

/// CPU time the original spent on `iterations` chained SHA-256 rounds.
pub fn hash(iterations: u32) -> Duration {
    Duration::from_nanos((f64::from(iterations) * HASH_NS_PER_ITERATION) as u64)
}

/// CPU time the original spent processing `size` JSON records.
pub fn json(size: u32) -> Duration {
    let x = f64::from(size);
    let us = JSON_POINTS
        .windows(2)
        .find(|w| size <= w[1].0)
        .map(|w| {
            let ((x0, y0), (x1, y1)) = ((f64::from(w[0].0), w[0].1), (f64::from(w[1].0), w[1].1));
            y0 + (y1 - y0) * (x - x0) / (x1 - x0)
        })
        .unwrap_or_else(|| {
            let (xl, yl) = JSON_POINTS[JSON_POINTS.len() - 1];
            yl * (x / f64::from(xl)).powi(2)
        });
    Duration::from_nanos((us * 1e3) as u64).min(SEED_CAP)
}

/// The fibonacci table as a markdown table (docs/scenarios/cpu.md carries it; a test keeps it current).
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| N | original CPU time | N | original CPU time | N | original CPU time |\n|---|---|---|---|---|---|\n",
    );
    let cell = |n: usize| -> String {
        let us = FIB_US[n];
        if us >= 1_000_000 {
            format!("{:.2} s", f64::from(us) / 1e6)
        } else if us >= 1_000 {
            format!("{:.1} ms", f64::from(us) / 1e3)
        } else {
            format!("{us} µs")
        }
    };
    for row in 0..14 {
        let cols: Vec<String> = [row + 1, row + 15, row + 29]
            .into_iter()
            .map(|n| {
                if n <= 40 {
                    format!("{n} | {}", cell(n))
                } else {
                    " | ".to_string()
                }
            })
            .collect();
        out.push_str(&format!("| {} |\n", cols.join(" | ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls(n: u32) -> u64 {
        let (mut a, mut b) = (0u64, 1u64); // F(0), F(1)
        for _ in 0..=n {
            (a, b) = (b, a + b);
        }
        2 * a - 1 // a = F(n + 1)
    }

    #[test]
    fn the_fib_table_is_calls_times_the_fitted_cost() {
        for n in 0..=40u32 {
            let expected = (calls(n) as f64 * 0.0304).round() as u32;
            assert_eq!(FIB_US[n as usize], expected, "fib({n})");
        }
    }

    #[test]
    fn the_fib_table_meets_the_originals_measurements() {
        for (n, original_ms) in [(25, 7.8), (30, 80.0), (34, 546.0)] {
            let ms = fib(n).as_secs_f64() * 1e3;
            assert!(
                (ms / original_ms - 1.0).abs() < 0.06,
                "fib({n}): {ms} ms vs {original_ms}"
            );
        }
        // The growth ratio of consecutive entries tends to φ.
        let ratio = f64::from(FIB_US[40]) / f64::from(FIB_US[39]);
        assert!((ratio - 1.618).abs() < 0.001, "{ratio}");
    }

    #[test]
    fn the_cpu_page_has_the_table() {
        let doc = include_str!("../../../docs/scenarios/cpu.md");
        assert!(
            doc.contains(&markdown_table()),
            "docs/scenarios/cpu.md's table is out of date:\n{}",
            markdown_table()
        );
    }

    #[test]
    fn hash_and_json_follow_their_measurements() {
        assert_eq!(hash(10_000), Duration::from_micros(4_900));
        assert_eq!(json(1_000), Duration::from_millis(1_714));
        assert_eq!(json(200), Duration::from_micros(72_200));
        assert_eq!(json(2_000), Duration::from_millis(6_856));
        assert_eq!(json(10_000), SEED_CAP);
        assert!(json(5_500) > json(2_000) && json(5_500) <= SEED_CAP);
    }
}
