// memory — the backend-under-load report: a leak grows RSS linearly until the container's
// limit kills the process (OOMKill). Here every request retains 10 MB more.
// fragile: memory is retained without bound up to the safety cap (MEMORY_LEAK_LIMIT_MB,
// 1024 MB; 507 past it) — retained reaches 900 MB in the full run, 400 MB in the smoke run.
// hardened (memory_budget_mb=256): retained stays at or under 256 MB; the rest is refused with
// 507 in under 100 ms. teardown frees what the run retained.
import http from 'k6/http';
import { check } from 'k6';
import { Trend, Counter } from 'k6/metrics';
import { BASE_URL, dur, pick, checkLab } from './lib/lab.js';

const retained = new Trend('retained_mb');
const refusals = new Counter('memory_refusals');
http.setResponseCallback(http.expectedStatuses(200, 507));

export const options = {
  scenarios: {
    leak: {
      executor: 'constant-arrival-rate',
      rate: dur(2, 10),
      timeUnit: '1s',
      duration: dur('5m', '5s'),
      preAllocatedVUs: 5,
      maxVUs: 50,
    },
  },
  thresholds: pick(
    { retained_mb: [`max>${dur(900, 400)}`] },
    {
      retained_mb: ['max<=256'],
      memory_refusals: ['count>0'],
      'http_req_duration{status:507}': ['p(95)<100'],
    },
  ),
};

export function setup() {
  checkLab(['memory_budget_mb']);
  http.post(`${BASE_URL}/api/clear-memory`);
}

export default function () {
  const res = http.get(`${BASE_URL}/api/memory-leak?size_mb=10`, { tags: { name: 'memory-leak' } });
  if (res.status === 200) retained.add(res.json('retained_mb'));
  if (res.status === 507) refusals.add(1);
  check(res, { 'retained or refused': (r) => r.status === 200 || r.status === 507 });
}

export function teardown() {
  http.post(`${BASE_URL}/api/clear-memory`);
}
