// downstream — the backend-under-load report's cascade: a slow dependency (3 s per call) at an
// arrival rate ramping 10 → 100 req/s; without timeouts every request waits the dependency out
// and in-flight requests pile up.
// fragile (no cap, no bulkhead, no breaker): p95 at or above the dependency's 3 s.
// hardened (2.5 s timeout cap, bulkhead of 16 calls, breaker): nothing waits past the cap
// (p95 under 2.8 s), and once the breaker opens most requests are refused at once (median 503
// under 100 ms) instead of queued behind the dependency.
import http from 'k6/http';
import { check } from 'k6';
import { BASE_URL, dur, pick, checkLab } from './lib/lab.js';

http.setResponseCallback(http.expectedStatuses(200, 502, 503, 504));

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
      'http_req_duration{status:503}': ['med<100'],
      http_req_duration: ['p(95)<2800'],
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
}
