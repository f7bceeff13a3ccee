// baseline — no field report: the healthy lab. Light constant load on the fast routes.
// Profile: either. Expected: no failures, p95 under 100 ms. Run it before and after any
// scenario to see the lab back at its baseline.
import http from 'k6/http';
import { check } from 'k6';
import { BASE_URL, dur, checkLab } from './lib/lab.js';

export const options = {
  scenarios: {
    fast: {
      executor: 'constant-arrival-rate',
      rate: 50,
      timeUnit: '1s',
      duration: dur('2m', '5s'),
      preAllocatedVUs: 10,
      maxVUs: 50,
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    http_req_duration: ['p(95)<100'],
  },
};

export function setup() {
  checkLab([]);
}

const PATHS = ['/api/ping', '/health', '/api/fast'];

export default function () {
  const path = PATHS[__ITER % PATHS.length];
  const res = http.get(`${BASE_URL}${path}`, { tags: { name: path } });
  check(res, { 'status 200': (r) => r.status === 200 });
}
