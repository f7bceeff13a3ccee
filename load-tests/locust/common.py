"""Shared by the locustfiles: the lab's metrics and knobs, the result file and the checks.

The checks run when Locust quits: a failed one prints why and sets Locust's exit code to 1,
so `locust --headless` fails like a k6 threshold. The numbers go to RESULT (a JSON file) when
it is set, for a driver that compares two runs (scripts/ci/locust-smoke.sh).
"""
import json
import os
import re
import urllib.request

PROFILE = os.environ.get("PROFILE", "fragile").lower()


def fetch(host, path, timeout=10):
    with urllib.request.urlopen(host.rstrip("/") + path, timeout=timeout) as r:
        return r.read().decode()


def series(host, name):
    """Every series of a metric: {'mode="sync",outcome="created"': value, '': value}."""
    out = {}
    for line in fetch(host, "/metrics").splitlines():
        m = re.match(r"^" + re.escape(name) + r"(?:\{([^}]*)\})? (\S+)$", line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


def knobs(host):
    cfg = json.loads(fetch(host, "/admin/config"))
    return {k: v["value"] for k, v in cfg["knobs"].items()}


class Checks:
    """Named pass/fail lines, printed together; any failure makes Locust exit 1."""

    def __init__(self, title):
        self.title = title
        self.lines = []
        self.failed = False

    def expect(self, ok, text):
        self.lines.append(("ok  " if ok else "FAIL") + " " + text)
        self.failed |= not ok

    def finish(self, environment, result):
        print(f"\n{self.title}")
        for line in self.lines:
            print("  " + line)
        if os.environ.get("RESULT"):
            with open(os.environ["RESULT"], "w") as f:
                json.dump(result, f, indent=2)
        if self.failed:
            environment.process_exit_code = 1


def guarded(environment, check):
    """Runs the checks; an error in them fails the run (Locust only logs a handler's error)."""
    try:
        check(environment)
    except Exception as e:  # noqa: BLE001 - any error means the checks did not pass
        import traceback

        traceback.print_exc()
        print(f"the checks could not run: {e}")
        environment.process_exit_code = 1
