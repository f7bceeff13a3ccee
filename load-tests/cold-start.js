// cold-start — the serverless report: 30 requests at concurrency 15 on workers provisioned on
// demand behind a gateway timeout; requests queued behind cold starts time out: 93.3% success.
// Time is scaled down in the lab (1 s cold start, 1.15 s gateway timeout); the run is the
// report's size in both modes. Run it on a lab whose simulated workers have gone idle (60 s).
// fragile (min_warm_workers=0): success below 100%.
// hardened (min_warm_workers=3): 100% success.
import http from 'k6/http';
import { check } from 'k6';
import { Rate } from 'k6/metrics';
import { BASE_URL, pick, checkLab } from './lib/lab.js';

const succeeded = new Rate('succeeded');
http.setResponseCallback(http.expectedStatuses(200, 504));

export const options = {
  scenarios: {
    invocations: {
      executor: 'shared-iterations',
      vus: 15,
      iterations: 30,
      maxDuration: '1m',
    },
  },
  thresholds: pick({ succeeded: ['rate<1'] }, { succeeded: ['rate==1'] }),
};

export function setup() {
  checkLab(['min_warm_workers', 'max_workers', 'cold_start_ms', 'gateway_timeout_ms']);
}

export default function () {
  const res = http.get(`${BASE_URL}/api/cold-start?work_ms=100`, { tags: { name: 'cold-start' } });
  succeeded.add(res.status === 200);
  check(res, { 'answered': (r) => r.status === 200 || r.status === 504 });
}
