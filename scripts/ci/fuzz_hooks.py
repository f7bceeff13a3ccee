"""schemathesis hooks for scripts/ci/api-fuzz.sh.

The spec documents the real ranges (a 30 s blocking call is valid). To keep the run short, a
generated value that is valid but slow is lowered to a bound here, after generation: values
outside the documented range are left alone, so negative cases stay negative.
"""
import schemathesis

# (path, parameter) -> the highest value sent for an otherwise valid value
BOUNDS = {
    ("/api/slow", "delay"): 1.2,
    ("/api/blocking", "duration"): 1.0,
    ("/api/db/hold", "ms"): 200,
    ("/api/worker-pool", "work_ms"): 200,
    ("/api/worker-pool", "deadline_ms"): 2000,
    ("/api/cold-start", "work_ms"): 200,
    ("/api/db-pool-exhaust", "concurrent_queries"): 3,
    ("/api/expensive-query", "iterations"): 500,
    ("/api/memory-spike", "size_mb"): 64,
    ("/api/memory-leak", "size_mb"): 16,
    ("/api/call-downstream", "timeout"): 1.5,
    ("/api/cpu/burn", "ms"): 50,
}

# (path, parameter) -> sent when the generated request leaves it out, where the default is slow
# (the worker pool's 4.5 s of work, the report's)
WHEN_ABSENT = {
    ("/api/worker-pool", "work_ms"): 200,
}


def _documented(ctx, name):
    for p in ctx.operation.definition.raw.get("parameters", []):
        if p.get("name") == name and p.get("in") == "query":
            s = p.get("schema", {})
            return s.get("minimum"), s.get("maximum")
    return None, None


@schemathesis.hook
def map_query(ctx, query):
    for (path, name), value in WHEN_ABSENT.items():
        if ctx.operation.path == path and (query is None or name not in query):
            query = dict(query or {})
            query[name] = value
    if not query:
        return query
    for (path, name), bound in BOUNDS.items():
        if ctx.operation.path != path or name not in query:
            continue
        raw = query[name]
        if isinstance(raw, bool):
            continue
        try:
            value = float(raw)
        except (TypeError, ValueError):
            continue
        lo, hi = _documented(ctx, name)
        if lo is not None and hi is not None and lo <= value <= hi and value > bound:
            query[name] = bound
    return query
