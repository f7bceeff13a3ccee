"""burst — the burst report, with its own client: Locust, 1000 users spawned at 100/s, no think
time, each POSTing /api/v1/deployments/ again as soon as it has an answer, for 60 s:

    locust -f load-tests/locust/burst.py --headless -u 1000 -r 100 -t 60s -H http://127.0.0.1:8000

fragile (deploy_mode=sync): most requests fail at the 20 s request timeout (the report: 100%,
median 19 s), and the pool's goodput falls below pool / work once requests wait long enough to
be cut mid-work (the checks: > 50% failed).
hardened (deploy_mode=async): answers are fast, and the work completes at the pool's speed:
goodput in the steady part of the run (after its first quarter) >= 90% of pool / work; after the
run every accepted deployment ends `succeeded` (nothing lost). RETRY_AFTER=1: a refused user
sleeps the 503's Retry-After and retries with the same Idempotency-Key (the report's client did
not; it retried at once).

PROFILE (fragile | hardened) picks the checks; RESULT=file.json keeps the numbers, so a driver
can check that hardened completed at least what fragile did (scripts/ci/locust-smoke.sh).
"""
import os
import sys
import time
import uuid

import gevent
from locust import FastHttpUser, constant, events, task

sys.path.insert(0, os.path.dirname(__file__))
from common import PROFILE, Checks, guarded, knobs, series  # noqa: E402

RETRY_AFTER = os.environ.get("RETRY_AFTER", "0").lower() in ("1", "true", "yes")
samples = []  # (seconds since start, {series: value}) of deployments_total
state = {}


def sample(host):
    s = series(host, "deployments_total")
    s.update({"queue": series(host, "deploy_queue_depth").get("", 0.0),
              "busy": series(host, "deploy_workers_busy").get("", 0.0)})
    return s


def total(s, *keys):
    return sum(s.get(f'mode="{m}",outcome="{o}"', 0.0) for m, o in keys)


CREATED = (("sync", "created"), ("async", "created"))


@events.test_start.add_listener
def on_start(environment, **_):
    host = environment.host
    state["knobs"] = knobs(host)
    state["t0"] = time.monotonic()

    def sampler():
        while "stopped" not in state:
            samples.append((time.monotonic() - state["t0"], sample(host)))
            gevent.sleep(0.1)

    state["sampler"] = gevent.spawn(sampler)


@events.test_stop.add_listener
def on_stop(environment, **_):
    state["stopped"] = True
    samples.append((time.monotonic() - state["t0"], sample(environment.host)))


class Deployer(FastHttpUser):
    wait_time = constant(0)

    @task
    def deploy(self):
        key = f"locust-{uuid.uuid4()}"
        while True:
            with self.client.post("/api/v1/deployments/", json={"name": "locust"},
                                  headers={"Idempotency-Key": key}, name="deployments",
                                  catch_response=True) as r:
                if r.status_code in (200, 201, 202):
                    r.success()
                    return
                r.failure(f"{r.status_code}")
                wait = r.headers.get("Retry-After") if r.headers else None
                if not (RETRY_AFTER and r.status_code == 503 and wait):
                    return
            gevent.sleep(float(wait))


@events.quitting.add_listener
def on_quitting(environment, **_):
    guarded(environment, check)


def check(environment):
    host, k = environment.host, state["knobs"]
    pool = k["db_pool_size"] + k["db_max_overflow"]
    capacity = pool / (k["deploy_work_ms"] / 1000.0)
    first, end = samples[0], samples[-1]
    done = total(end[1], *CREATED) - total(first[1], *CREATED)
    # The steady part: from the first completion after the run's first quarter to the last one,
    # measured between the moments the count moved (completions come in batches, one per worker
    # round: a window cut between batches would count one batch too many or too few).
    moves = [(t, total(s, *CREATED)) for (t, s), (_, prev) in zip(samples[1:], samples)
             if total(s, *CREATED) != total(prev, *CREATED)]
    later = [m for m in moves if m[0] >= end[0] / 4]
    steady = (later[-1][1] - later[0][1]) / (later[-1][0] - later[0][0]) if len(later) > 1 else 0.0
    # After the run: every accepted deployment must end succeeded or failed (bounded wait).
    drained_by = time.monotonic() + float(os.environ.get("DRAIN_WAIT_S", "600"))
    after = sample(host)
    while (after["queue"] > 0 or after["busy"] > 0) and time.monotonic() < drained_by:
        time.sleep(1)
        after = sample(host)
    d = lambda key: total(after, key) - total(first[1], key)  # noqa: E731
    accepted, created, failed = d(("async", "accepted")), d(("async", "created")), d(("async", "failed"))
    stats = environment.stats.total
    share_failed = stats.num_failures / max(stats.num_requests, 1)
    result = {
        "profile": PROFILE, "seconds": round(end[0], 1), "completed": done,
        "goodput_rps": round(done / max(end[0], 1e-9), 2), "steady_goodput_rps": round(steady, 2),
        "capacity_rps": capacity, "requests": stats.num_requests, "failed": stats.num_failures,
        "median_ms": stats.median_response_time, "accepted": accepted,
        "completed_after_drain": created + d(("sync", "created")), "accepted_failed": failed,
        "queue_left": after["queue"],
    }
    c = Checks(f"burst ({PROFILE}): {done:.0f} completed in {end[0]:.0f} s "
               f"({result['goodput_rps']}/s; steady {steady:.2f}/s; pool / work = {capacity:.1f}/s); "
               f"{stats.num_failures} of {stats.num_requests} requests failed, median {stats.median_response_time:.0f} ms")
    if PROFILE == "fragile":
        c.expect(share_failed > 0.5, f"most requests fail ({share_failed:.1%} > 50%)")
    else:
        c.expect(steady >= 0.9 * capacity, f"steady goodput {steady:.2f}/s >= 90% of pool / work ({0.9 * capacity:.2f}/s)")
        c.expect(environment.stats.get("deployments", "POST").get_response_time_percentile(0.95) < 1000,
                 "answers (202 and 503 alike) in p95 < 1 s")
    c.expect(after["queue"] == 0 and after["busy"] == 0, "the accepted work drained after the run")
    # Nothing lost: every accepted deployment succeeded. (More succeeded than were counted as
    # accepted would be a counter gap, not a lost deployment: said, not failed.)
    c.expect(created >= accepted and failed == 0,
             f"nothing lost: {accepted:.0f} accepted, {created:.0f} succeeded, {failed:.0f} failed"
             + (f" ({created - accepted:.0f} succeeded without being counted as accepted)" if created > accepted else ""))
    c.finish(environment, result)
