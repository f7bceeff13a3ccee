"""thread-pool — the gRPC report, with its own kind of client: Locust users calling the lab's
gRPC service (chokepoint.worker.v1.WorkerPool/Work) with their own deadline, no think time.
The report: ThreadPoolExecutor(max_workers=10), 200 concurrent users, clients that "timeout
after 5-30 seconds". Full size, one minute of calls, each followed to its end:

    locust -f load-tests/locust/thread_pool.py --headless -u 200 -r 200 -t 60s --stop-timeout 35 \
      -H http://127.0.0.1:8000 -e DEADLINE_S=30      # and DEADLINE_S=5

The gRPC address is the one the lab's `GET /` names under `grpc` (GRPC_ADDR overrides it).
WORK_MS: the work per call (0, the default: the server's, 4.5 s); DEADLINE_S: the client's
deadline (30). EXPECT picks the checks:
- fragile (10 workers): >= 80% of calls DEADLINE_EXCEEDED;
- option1 (the report's Option 1, WORKER_POOL_SIZE=200): >= 95% OK;
- hardened: no DEADLINE_EXCEEDED (at most 0.5%: a thread woken late), the rest OK or
  RESOURCE_EXHAUSTED at once.
RESULT=file.json keeps the counts, so a driver can check hardened served at least fragile's OK.
"""
import json
import os
import sys
import time

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, constant, events, task

sys.path.insert(0, os.path.dirname(__file__))
from common import Checks, fetch, guarded  # noqa: E402

grpc_gevent.init_gevent()
# gRPC's gevent support waits on the hub's thread pool, 10 threads by default: that would cap
# the users' calls in flight at 10, not the report's 200.
import gevent  # noqa: E402

gevent.get_hub().threadpool.maxsize = int(os.environ.get("GEVENT_THREADS", "1000"))

METHOD = "/chokepoint.worker.v1.WorkerPool/Work"
WORK_MS = int(os.environ.get("WORK_MS", "0"))
DEADLINE_S = float(os.environ.get("DEADLINE_S", "30"))
EXPECT = os.environ.get("EXPECT", "fragile").lower()
REFUSED_PAUSE_S = float(os.environ.get("REFUSED_PAUSE_S", "0"))
codes = {}


def encode_request(work_ms):
    """WorkRequest{work_ms} in protobuf: field 1, a varint (0 = the server's default: empty)."""
    if work_ms == 0:
        return b""
    out, n = bytearray([0x08]), work_ms
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class Caller(User):
    wait_time = constant(0)

    def on_start(self):
        addr = os.environ.get("GRPC_ADDR") or json.loads(fetch(self.host, "/"))["grpc"]
        self.channel = grpc.insecure_channel(addr)
        self.work = self.channel.unary_unary(METHOD)
        self.message = encode_request(WORK_MS)

    def on_stop(self):
        self.channel.close()

    @task
    def call(self):
        start = time.perf_counter()
        code, exc = "OK", None
        try:
            self.work(self.message, timeout=DEADLINE_S)
        except grpc.RpcError as e:
            code, exc = e.code().name, e
        codes[code] = codes.get(code, 0) + 1
        self.environment.events.request.fire(
            request_type="grpc", name="Work", response_time=(time.perf_counter() - start) * 1000,
            response_length=0, exception=exc, context={})
        if code == "RESOURCE_EXHAUSTED" and REFUSED_PAUSE_S > 0:
            time.sleep(REFUSED_PAUSE_S)


@events.quitting.add_listener
def on_quitting(environment, **_):
    guarded(environment, check)


def check(environment):
    n = sum(codes.values())
    share = lambda code: codes.get(code, 0) / max(n, 1)  # noqa: E731
    c = Checks(f"thread-pool ({EXPECT}, deadline {DEADLINE_S:g} s, work {WORK_MS or 'default'} ms): "
               f"{n} calls: " + ", ".join(f"{v} {k}" for k, v in sorted(codes.items())))
    c.expect(n > 0, "calls were made")
    if EXPECT == "fragile":
        c.expect(share("DEADLINE_EXCEEDED") >= 0.8, f"{share('DEADLINE_EXCEEDED'):.1%} DEADLINE_EXCEEDED (>= 80%)")
    elif EXPECT == "option1":
        c.expect(share("OK") >= 0.95, f"{share('OK'):.1%} OK (>= 95%)")
    else:
        c.expect(share("DEADLINE_EXCEEDED") <= 0.005, f"{share('DEADLINE_EXCEEDED'):.2%} DEADLINE_EXCEEDED (<= 0.5%)")
        c.expect(share("OK") + share("RESOURCE_EXHAUSTED") + share("DEADLINE_EXCEEDED") == 1.0,
                 "every call OK or refused at once")
    c.finish(environment, {"expect": EXPECT, "deadline_s": DEADLINE_S, "work_ms": WORK_MS, "calls": n, "codes": codes})
