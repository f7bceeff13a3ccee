// The original's cascade-failure: a ramping arrival rate of /api/cascade-failure (5 parallel
// downstream calls of 2 s each) from 10 to 50 req/s over 2 min, to 100 over 3 min, back to 50
// over 2 min (preAllocatedVUs 50, maxVUs 200), a 30 s client timeout, "200 or 504" checked,
// then 1 s of sleep. On the original: p50 15 s, p95 30 s, 20% timed out, 3,593 iterations
// dropped. chokepoint's downstream client has a pool of 10 connections (downstream_pool_size)
// whose waiters queue without limit in fragile: 1 req/s of capacity, so the queue grows until
// callers time out. hardened caps the wait, and the excess fails fast.
import http from 'k6/http';
import { check, sleep } from 'k6';
import { BASE_URL, stages, total, probeScenario, probe, tally, reachable } from './lib.js';

const STAGES = [[120, 50], [180, 100], [120, 50]];
export const options = {
  scenarios: {
    cascade: {
      executor: 'ramping-arrival-rate',
      startRate: 10,
      timeUnit: '1s',
      preAllocatedVUs: 50,
      maxVUs: 200,
      stages: stages(STAGES),
    },
    probe: probeScenario(total(STAGES)),
  },
};

export const setup = reachable;
export { probe };

export default function () {
  const res = http.get(`${BASE_URL}/api/cascade-failure`, { timeout: '30s', tags: { kind: 'load', name: 'cascade-failure' } });
  tally(res);
  check(res, { 'status is 200 or 504': (r) => r.status === 200 || r.status === 504 });
  sleep(1);
}
