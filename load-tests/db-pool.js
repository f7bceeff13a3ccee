// db-pool — the backend-under-load report: users ramp 50 → 100, every request holds a pooled
// connection (300 ms here), the pool (5 + 10) serves 50 requests/s and everyone else queues.
// fragile (30 s acquire timeout): nobody fails fast — requests queue silently, p95 above
// 800 ms (50 users / 50 per s ≈ 1 s) and no errors.
// hardened (250 ms acquire timeout): requests that would wait longer fail fast with 503 (p95
// under 500 ms) and the ones served wait at most the timeout: p95 under 700 ms (hold + 250 ms).
import http from 'k6/http';
import { check, sleep } from 'k6';
import { BASE_URL, dur, pick, checkLab } from './lib/lab.js';

http.setResponseCallback(http.expectedStatuses(200, 503));

export const options = {
  scenarios: {
    users: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: dur(
        [
          { duration: '30s', target: 50 },
          { duration: '2m', target: 50 },
          { duration: '30s', target: 100 },
          { duration: '2m', target: 100 },
          { duration: '30s', target: 0 },
        ],
        [
          { duration: '2s', target: 50 },
          { duration: '6s', target: 50 },
        ],
      ),
      gracefulRampDown: '30s',
    },
  },
  thresholds: pick(
    { http_req_duration: ['p(95)>800'], http_req_failed: ['rate<0.01'] },
    {
      'http_req_duration{status:200}': ['p(95)<700'],
      'http_req_duration{status:503}': ['p(95)<500'],
      'http_reqs{status:503}': ['count>0'],
      checks: ['rate>0.99'],
    },
  ),
};

export function setup() {
  checkLab(['db_pool_size', 'db_max_overflow', 'db_pool_timeout_ms']);
}

export default function () {
  const res = http.get(`${BASE_URL}/api/db/hold?ms=300`, { tags: { name: 'db-hold' } });
  check(res, { 'served or refused fast': (r) => r.status === 200 || r.status === 503 });
  sleep(0.05);
}
