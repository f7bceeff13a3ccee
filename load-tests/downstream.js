// downstream — the backend-under-load report's cascade: a slow dependency (3 s per call) at an
// arrival rate ramping 10 → 100 req/s; without timeouts every request waits the dependency out
// and in-flight requests pile up.
// fragile (no cap, no bulkhead, no breaker): p95 at or above the dependency's 3 s.
// hardened (bulkhead of 16 calls, 250 ms wait for one of the 10 connections taken from the
// deadline, 5 s timeout cap, breaker): what is admitted completes without queueing (p95 of the
// 200s under 3.5 s: the call's 3 s and at most the wait), the excess is refused fast (median 503
// under 300 ms) instead of queued behind the dependency, and the work done is not given up: at
// least one full wave of the pool completes (the pool / 3 s = 3.3 calls/s, as much as fragile).
import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';
import { BASE_URL, dur, pick, checkLab } from './lib/lab.js';

http.setResponseCallback(http.expectedStatuses(200, 502, 503, 504));
const completed = new Counter('completed');

export const options = {
  scenarios: {
    cascade: {
      executor: 'ramping-arrival-rate',
      startRate: 10,
      timeUnit: '1s',
      preAllocatedVUs: 50,
      maxVUs: dur(1500, 300),
      stages: dur(
        [
          { duration: '2m', target: 100 },
          { duration: '2m', target: 100 },
        ],
        [{ duration: '6s', target: 30 }],
      ),
    },
  },
  thresholds: pick(
    { http_req_duration: ['p(95)>=2900'] },
    {
      'http_req_duration{status:503}': ['med<300'],
      'http_req_duration{status:200}': ['p(95)<3500'],
      completed: ['count>=10'],
      checks: ['rate>0.99'],
    },
  ),
};

export function setup() {
  checkLab(['downstream_timeout_cap_ms', 'downstream_max_concurrency', 'breaker_enabled']);
}

export default function () {
  // The seed endpoint: downstream /slow?delay=3 with a 5 s client timeout.
  const res = http.get(`${BASE_URL}/api/call-downstream?timeout=5`, { tags: { name: 'call-downstream' } });
  check(res, { 'answered': (r) => [200, 502, 503, 504].includes(r.status) });
  if (res.status === 200) completed.add(1);
}
