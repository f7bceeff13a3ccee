#!/usr/bin/env python3
"""Re-measures the CPython side of chokepoint's seed cost table (src/scenarios/cpu/seed_cost.rs).

The original lab is a FastAPI app; its CPU routes run recursive fibonacci, a chained SHA-256 over
hex strings, and a size x size nested dict serialized and parsed 5 times. This script times the
same algorithms (written anew here) with time.process_time (best of N) in this machine's CPython,
then prints the table the Rust code carries, derived from the original's own fib measurements
(7.8 ms at 25, ~80 ms at 30, 546 ms at 34) and this machine's ratio to them.

Usage: python3 bench/seed-cost.py [--quick]
"""
import hashlib
import json
import sys
import time

QUICK = "--quick" in sys.argv
ORIGINAL_FIB_MS = {25: 7.8, 30: 80.0, 34: 546.0}
NS_PER_CALL = 30.4  # the fit to ORIGINAL_FIB_MS used by the table


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def calls(n):
    a, b = 0, 1
    for _ in range(n + 1):
        a, b = b, a + b
    return 2 * a - 1  # a = F(n + 1)


def hash_chain(iterations):
    text = "start"
    for _ in range(iterations):
        text = hashlib.sha256(text.encode()).hexdigest()
    return text


def nested_json(size):
    data = {f"key_{i}": {f"nested_{j}": f"value_{i}_{j}" for j in range(size)} for i in range(size)}
    for _ in range(5):
        data = json.loads(json.dumps(data))


def best(fn, arg, reps):
    t = float("inf")
    for _ in range(reps):
        start = time.process_time()
        fn(arg)
        t = min(t, time.process_time() - start)
    return t


print(f"CPython {sys.version.split()[0]}, time.process_time, best of {2 if QUICK else 5}")
reps = 2 if QUICK else 5
here_ns = []
for n in (20, 25, 28) if QUICK else (20, 25, 28, 30):
    s = best(fib, n, reps)
    here_ns.append(s * 1e9 / calls(n))
    print(f"  fib({n}): {s * 1e3:8.2f} ms  ({here_ns[-1]:.1f} ns per call)")
machine = NS_PER_CALL / (sum(here_ns[1:]) / len(here_ns[1:]))
print(f"  original / this machine: {machine:.2f} (original {NS_PER_CALL} ns per call)")
for n, ms in ORIGINAL_FIB_MS.items():
    print(f"  original fib({n}) {ms} ms vs table {calls(n) * NS_PER_CALL / 1e6:.1f} ms")
for it in (1_000, 10_000) if QUICK else (1_000, 10_000, 100_000):
    s = best(hash_chain, it, reps)
    print(f"  hash({it}): {s * 1e3:8.2f} ms  ({s * 1e9 / it:.0f} ns per iteration; x{machine:.2f} = {s * 1e9 / it * machine:.0f})")
for size in (10, 30, 100) if QUICK else (10, 30, 100, 300, 1000):
    s = best(nested_json, size, 1 if size >= 1000 else reps)
    print(f"  json({size}): {s * 1e3:10.2f} ms  (x{machine:.2f} = {s * 1e3 * machine:.1f} ms)")
print("fib table (µs), N = 0..40:")
print([round(calls(n) * NS_PER_CALL / 1e3) for n in range(41)])
