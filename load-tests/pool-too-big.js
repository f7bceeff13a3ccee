// pool-too-big — the false cure: "raise the pool to 500-1000". Start the lab against PostgreSQL
// with the report's advice, scaled to PostgreSQL's default max_connections of 100:
//   DATABASE_URL=postgres://... DB_POOL_SIZE=64 DB_MAX_OVERFLOW=0 chokepoint serve
// Then RATE (default 450) CPU-bound queries/s (GET /api/expensive-query?iterations=200: a
// recursive CTE, ~5.5 ms of one PostgreSQL core; 2 cores do ~360/s, whatever the pool) for
// 1 minute (smoke: 15 s), and beside them 10/s of a light query on the same database
// (GET /api/tasks?limit=10, 0.5 ms alone).
// fragile (db_cpu_query_slots=0): every connection of the 64 runs a heavy query at once, the
// cores are time-sliced between them, and the light query queues behind them: its p95 passes
// 200 ms (measured ~1 s).
// hardened (db_cpu_query_slots=4, cores x 2): 4 heavy queries run at once, the rest wait in the
// app (250 ms, then 503), the light query finds a free connection and an unloaded server:
// p95 < 100 ms (measured ~20 ms).
// Needs PostgreSQL: scripts/ci/k6-slow-link.sh starts such a lab. queries_completed is the goodput.
import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';
import { BASE_URL, dur, pick, checkLab } from './lib/lab.js';

http.setResponseCallback(http.expectedStatuses(200, 503));

const RATE = Number(__ENV.RATE || 450);
const completed = new Counter('queries_completed');

export const options = {
  scenarios: {
    heavy: {
      executor: 'constant-arrival-rate',
      exec: 'heavy',
      rate: RATE,
      timeUnit: '1s',
      duration: dur('1m', '15s'),
      preAllocatedVUs: 100,
      maxVUs: 2000,
    },
    light: {
      executor: 'constant-arrival-rate',
      exec: 'light',
      rate: 10,
      timeUnit: '1s',
      duration: dur('1m', '15s'),
      preAllocatedVUs: 5,
      maxVUs: 200,
    },
  },
  thresholds: pick(
    { 'http_req_duration{name:light}': ['p(95)>200'] },
    { 'http_req_duration{name:light}': ['p(95)<100'] },
  ),
};

export function setup() {
  const cfg = checkLab(['db_cpu_query_slots']);
  const pool = cfg.knobs.db_pool_size.value + cfg.knobs.db_max_overflow.value;
  if (pool < 32) {
    throw new Error(`the lab's pool is ${pool}: start it with DB_POOL_SIZE=64 DB_MAX_OVERFLOW=0 (the advice this script tries)`);
  }
}

export function heavy() {
  const res = http.get(`${BASE_URL}/api/expensive-query?iterations=200`, { tags: { name: 'heavy' } });
  if (res.status === 200) completed.add(1);
  check(res, { 'served, or refused fast': (r) => r.status === 200 || r.status === 503 });
}

export function light() {
  const res = http.get(`${BASE_URL}/api/tasks?limit=10`, { tags: { name: 'light' } });
  check(res, { 'light query served': (r) => r.status === 200 });
}
