// cache-stampede — Redis in front of the database: hot keys vanish together (a flush here,
// like a mass expiry) while 40 users read them; every reader that misses goes to the database.
// Needs the lab started with REDIS_URL. The script flushes the lab's keys FLUSHES times.
// fragile (no single-flight): misses per flush close to the number of readers (at least 20).
// hardened (single-flight, jittered TTLs, serve-stale): about one miss per hot key per flush
// (at most 2 × 5).
import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter } from 'k6/metrics';
import { BASE_URL, dur, pick, checkLab, adminHeaders } from './lib/lab.js';

const misses = new Counter('cache_misses');
const FLUSHES = dur(10, 3);
const GAP_S = dur(10, 2);
const HOT_KEYS = 5;

export const options = {
  scenarios: {
    readers: {
      executor: 'constant-vus',
      exec: 'read',
      vus: 40,
      duration: `${FLUSHES * GAP_S + 1}s`,
    },
    expiry: {
      executor: 'per-vu-iterations',
      exec: 'flush',
      vus: 1,
      iterations: FLUSHES,
      startTime: '1s',
      maxDuration: `${FLUSHES * GAP_S + 30}s`,
    },
  },
  thresholds: pick(
    { cache_misses: [`count>=${FLUSHES * 20}`], http_req_failed: ['rate<0.05'] },
    { cache_misses: [`count<=${FLUSHES * HOT_KEYS * 2}`], http_req_failed: ['rate<0.01'] },
  ),
};

export function setup() {
  checkLab(['cache_single_flight', 'cache_ttl_jitter_percent', 'cache_serve_stale']);
  const res = http.get(`${BASE_URL}/api/cache/items/1`);
  if (res.status === 503) {
    throw new Error(`the lab has no Redis: ${res.body}`);
  }
}

export function read() {
  const res = http.get(`${BASE_URL}/api/cache/items/${1 + (__ITER % HOT_KEYS)}`, { tags: { name: 'cache-item' } });
  if (res.status === 200 && res.json('cache') === 'miss') misses.add(1);
  check(res, { 'status 200': (r) => r.status === 200 });
  sleep(0.01);
}

export function flush() {
  const res = http.post(`${BASE_URL}/admin/cache/flush`, null, { headers: adminHeaders(), tags: { name: 'flush' } });
  check(res, { 'flushed': (r) => r.status === 200 });
  sleep(GAP_S);
}
