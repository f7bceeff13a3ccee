// The original's io-stress: 30 VUs for 5 min, each calling /api/slow?delay=3..7 then sleeping
// 1 s. Asynchronous sleeps hold no thread: equivalent on both, nothing collapses (the contrast).
import http from 'k6/http';
import { check, sleep } from 'k6';
import { BASE_URL, secs, probeScenario, probe, tally, reachable, SCALE } from './lib.js';

const DURATION = 300;
export const options = {
  scenarios: {
    io_stress: { executor: 'constant-vus', vus: 30, duration: secs(DURATION) },
    probe: probeScenario(Math.max(2, Math.round(DURATION / SCALE))),
  },
};

export const setup = reachable;
export { probe };

export default function () {
  const delay = 3 + Math.floor(Math.random() * 5); // 3..7
  const res = http.get(`${BASE_URL}/api/slow?delay=${delay}`, { timeout: '60s', tags: { kind: 'load', name: 'slow' } });
  tally(res);
  check(res, { 'status is 200': (r) => r.status === 200 });
  sleep(1);
}
