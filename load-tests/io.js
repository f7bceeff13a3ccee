// io — the io-stress report: requests that wait on slow I/O for 3-8 s. Waiting asynchronously
// is cheap: hundreds of waits in flight leave every other route fast. Blocking the async
// worker thread instead (a sync sleep, a sync driver) freezes every route that worker serves,
// probes included. No knob cures it (a request timeout cannot interrupt a blocked thread): the
// cure is in the code, which is why the CPU scenario's cure moves the work off the workers.
// both profiles: the canary /api/ping stays under 250 ms (p95) beside the async waits, and
// rises above 250 ms beside the blocking calls — the collapse.
import http from 'k6/http';
import { check } from 'k6';
import { BASE_URL, dur, checkLab } from './lib/lab.js';

http.setResponseCallback(http.expectedStatuses(200));

// Blocking callers: more than the lab's async workers (WORKER_COUNT, one per CPU by default).
const BLOCKERS = Number(__ENV.BLOCKERS || 8);

export const options = {
  scenarios: {
    waits: {
      executor: 'constant-arrival-rate',
      exec: 'asyncWait',
      rate: 20,
      timeUnit: '1s',
      duration: dur('2m', '8s'),
      preAllocatedVUs: 50,
      maxVUs: dur(400, 200),
    },
    canary_async: {
      executor: 'constant-arrival-rate',
      exec: 'canaryAsync',
      rate: 10,
      timeUnit: '1s',
      duration: dur('2m', '8s'),
      preAllocatedVUs: 5,
      maxVUs: 50,
    },
    blockers: {
      executor: 'constant-vus',
      exec: 'blocking',
      vus: BLOCKERS,
      duration: dur('1m', '6s'),
      startTime: dur('2m10s', '17s'),
      gracefulStop: '30s',
    },
    canary_blocking: {
      executor: 'constant-arrival-rate',
      exec: 'canaryBlocking',
      rate: 10,
      timeUnit: '1s',
      duration: dur('1m', '6s'),
      startTime: dur('2m10s', '17s'),
      preAllocatedVUs: 5,
      maxVUs: 100,
    },
  },
  thresholds: {
    'http_req_duration{kind:canary_async}': ['p(95)<250'],
    'http_req_duration{kind:canary_blocking}': ['p(95)>250'],
    checks: ['rate>0.99'],
  },
};

export function setup() {
  checkLab([]);
}

export function asyncWait() {
  // The report's 3-8 s of I/O (shorter in SMOKE runs).
  const delay = dur(3 + Math.floor(Math.random() * 6), 1);
  const res = http.get(`${BASE_URL}/api/slow?delay=${delay}`, { tags: { kind: 'wait', name: 'slow' } });
  check(res, { 'wait 200': (r) => r.status === 200 });
}

export function blocking() {
  const res = http.get(`${BASE_URL}/api/blocking?duration=1`, { tags: { kind: 'blocking', name: 'blocking' } });
  check(res, { 'blocking 200': (r) => r.status === 200 });
}

function canary(kind) {
  const res = http.get(`${BASE_URL}/api/ping`, { tags: { kind, name: 'ping' } });
  check(res, { 'canary 200': (r) => r.status === 200 });
}

export function canaryAsync() {
  canary('canary_async');
}

export function canaryBlocking() {
  canary('canary_blocking');
}
