// slow-link — "the database got slow": the lab runs with LINK_PROXY=true against PostgreSQL, and
// setup() adds 20 ms to every round trip on its PostgreSQL link (PUT /admin/links/postgres;
// ADMIN_TOKEN if the lab has one); teardown() clears it. 100 holds/s of 100 ms on the default
// pool of 15 (5 + 10 overflow): 150/s clean, but a hold's ~6.5 round trips and the release check
// make it ~0.25 s, so the sick link serves 15 / 0.25 s ≈ 60/s (measured: 54/s) and the rest queue.
// fragile (30 s acquire timeout): nobody fails fast, the queue grows: p95 above 500 ms
// (smoke: 10 s).
// hardened (250 ms acquire timeout): the excess gets 503 db_pool_timeout in ms: p95 under 700 ms
// (the ~0.25 s hold + the 250 ms wait).
// Needs PostgreSQL and LINK_PROXY=true: scripts/ci/k6-slow-link.sh starts such a lab.
import http from 'k6/http';
import { check } from 'k6';
import { BASE_URL, dur, pick, adminHeaders, checkLab } from './lib/lab.js';

http.setResponseCallback(http.expectedStatuses(200, 503));

export const options = {
  scenarios: {
    holds: {
      executor: 'constant-arrival-rate',
      rate: 100,
      timeUnit: '1s',
      duration: dur('2m', '10s'),
      preAllocatedVUs: 50,
      maxVUs: 1000,
    },
  },
  thresholds: pick(
    { 'http_req_duration{name:hold}': ['p(95)>500'] },
    { 'http_req_duration{name:hold}': ['p(95)<700'] },
  ),
};

export function setup() {
  checkLab(['db_pool_timeout_ms']);
  const res = http.put(`${BASE_URL}/admin/links/postgres`, JSON.stringify({ latency: '20ms' }), {
    headers: adminHeaders(),
    tags: { name: 'setup' },
  });
  if (res.status !== 200) {
    throw new Error(`PUT /admin/links/postgres: ${res.status} ${res.body} (start the lab with LINK_PROXY=true and a PostgreSQL DATABASE_URL)`);
  }
}

export function teardown() {
  http.del(`${BASE_URL}/admin/links/postgres`, null, { headers: adminHeaders(), tags: { name: 'setup' } });
}

export default function () {
  const res = http.get(`${BASE_URL}/api/db/hold?ms=100`, { tags: { name: 'hold' } });
  check(res, { 'held, or refused fast': (r) => r.status === 200 || r.status === 503 });
}
