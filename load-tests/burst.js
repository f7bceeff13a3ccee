// burst — the burst report: 1000 users POST /api/v1/deployments/ at once; every creation holds
// a pooled connection for its 2 s of work (15 connections: 7.5 creations/s), the rest wait for
// the 20 s request timeout: median 19 s, most requests failing.
// fragile (deploy_mode=sync): failures above 50% (smoke, 200 users: above 15%) and a median
// above 15 s (smoke: 8 s).
// hardened (deploy_mode=async): every POST answered 202 + Location in p95 under 1 s, no
// failures; the work drains in the background at database speed (deploy_workers=4).
// Run it last or alone: the accepted work keeps 4 connections busy after the script ends.
import http from 'k6/http';
import { check } from 'k6';
import { BASE_URL, dur, pick, checkLab } from './lib/lab.js';

http.setResponseCallback(http.expectedStatuses(201, 202));

const USERS = dur(1000, 200);

export const options = {
  scenarios: {
    burst: {
      executor: 'per-vu-iterations',
      vus: USERS,
      iterations: 1,
      maxDuration: '2m',
    },
  },
  thresholds: pick(
    {
      http_req_failed: [`rate>${dur(0.5, 0.15)}`],
      http_req_duration: [`med>${dur(15000, 8000)}`],
    },
    { http_req_failed: ['rate<0.01'], http_req_duration: ['p(95)<1000'] },
  ),
};

export function setup() {
  checkLab(['deploy_mode', 'deploy_timeout_ms', 'deploy_work_ms', 'db_pool_size', 'db_max_overflow']);
}

export default function () {
  const body = JSON.stringify({ name: `burst-${__VU}`, environment: 'production', replicas: 1 });
  const res = http.post(`${BASE_URL}/api/v1/deployments/`, body, {
    headers: { 'Content-Type': 'application/json', 'Idempotency-Key': `k6-${__VU}-${Date.now()}` },
    timeout: '60s',
    tags: { name: 'deployments' },
  });
  check(res, {
    'created or accepted': (r) => r.status === 201 || r.status === 202,
    'has Location': (r) => r.status >= 400 || !!r.headers.Location,
  });
}
