// The original's db-pool-exhaust: VUs ramp 0 → 50 (1 min) → 100 (2 min) → 50 (1 min), each
// calling /api/db-pool-exhaust?concurrent_queries=30 (30 queries holding a connection 5 s each)
// with a 30 s timeout. A pool of 5 + 10 overflow serves 3 such requests every 5 s: on the
// original and here, 98-100% of requests time out at the client. hardened: a short acquire
// timeout fails the excess queries at once.
import http from 'k6/http';
import { check, sleep } from 'k6';
import { BASE_URL, stages, total, probeScenario, probe, tally, reachable } from './lib.js';

const STAGES = [[60, 50], [120, 100], [60, 50]];
export const options = {
  scenarios: {
    db_pool: { executor: 'ramping-vus', startVUs: 0, stages: stages(STAGES) },
    probe: probeScenario(total(STAGES)),
  },
};

export const setup = reachable;
export { probe };

export default function () {
  const res = http.get(`${BASE_URL}/api/db-pool-exhaust?concurrent_queries=30`, {
    timeout: '30s',
    tags: { kind: 'load', name: 'db-pool-exhaust' },
  });
  tally(res);
  check(res, { 'status is not 500': (r) => r.status !== 500 });
  sleep(1);
}
