// The original's memory-stress: VUs ramp to 20 over 2 min and hold 5 min, each retaining
// 10-29 MB through /api/memory-leak, then sleeping 2 s. The original's pod was OOM-killed.
// chokepoint's safety cap (1 GiB) answers 507 instead of letting the host die; hardened's
// memory_budget_mb (256) refuses earlier. RSS is read by the bench, not here.
import http from 'k6/http';
import { check, sleep } from 'k6';
import { BASE_URL, stages, total, probeScenario, probe, tally, reachable } from './lib.js';

const STAGES = [[120, 20], [300, 20]];
export const options = {
  scenarios: {
    memory_leak: { executor: 'ramping-vus', startVUs: 0, stages: stages(STAGES) },
    probe: probeScenario(total(STAGES)),
  },
};

export const setup = reachable;
export { probe };

export default function () {
  const size = 10 + Math.floor(Math.random() * 20); // 10..29
  const res = http.get(`${BASE_URL}/api/memory-leak?size_mb=${size}`, { tags: { kind: 'load', name: 'memory-leak' } });
  tally(res);
  check(res, { 'status is 200': (r) => r.status === 200 });
  sleep(2);
}

export function teardown() {
  http.post(`${BASE_URL}/api/clear-memory`, null, { tags: { kind: 'setup' } });
}
