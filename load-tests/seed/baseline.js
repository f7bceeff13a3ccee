// The original's baseline: VUs ramp 0 → 50 → 100 over 16 min, each iteration batching
// /api/fast, /api/ping and /health, then sleeping 1 s. Thresholds p(95) < 500 ms, p(99) < 1 s,
// under 10% failed. Both pass: the healthy reference.
import http from 'k6/http';
import { check, sleep } from 'k6';
import { BASE_URL, stages, total, probeScenario, probe, tally, reachable } from './lib.js';

const STAGES = [[120, 50], [300, 50], [120, 100], [300, 100], [120, 0]];
export const options = {
  scenarios: {
    baseline: { executor: 'ramping-vus', startVUs: 0, stages: stages(STAGES) },
    probe: probeScenario(total(STAGES)),
  },
  thresholds: {
    'http_req_duration{kind:load}': ['p(95)<500', 'p(99)<1000'],
    'http_req_failed{kind:load}': ['rate<0.1'],
  },
};

export const setup = reachable;
export { probe };

export default function () {
  const tags = { kind: 'load' };
  const responses = http.batch([
    ['GET', `${BASE_URL}/api/fast`, null, { tags: { ...tags, name: 'fast' } }],
    ['GET', `${BASE_URL}/api/ping`, null, { tags: { ...tags, name: 'ping' } }],
    ['GET', `${BASE_URL}/health`, null, { tags: { ...tags, name: 'health' } }],
  ]);
  responses.forEach(tally);
  check(responses[0], { 'fast is 200': (r) => r.status === 200 });
  sleep(1);
}
