// connection-leak — the original lab's unclosed database sessions: GET /api/db/session answers,
// then keeps its pooled connection inside its open transaction for db_leak_ms (fragile: 60 s),
// as a session nobody closes waits for the garbage collector. 5 sessions/s against the default
// pool of 15 (5 + 10 overflow): the pool is empty after 3 s, and a steady leak serves at most
// 15 / 60 s = 0.25 sessions/s (Little's law, the leak being the hold). Everyone else queues
// for the 30 s acquire timeout; this client gives up after 5 s.
// fragile: most sessions never get a connection: fewer than half succeed; PostgreSQL shows the
// leaked ones `idle in transaction` (pg_stat_activity), /metrics shows db_connections_leaked
// at the pool's size and db_connections_held{over="10s"} climbing.
// hardened (db_leak_ms 0: scoped release, the cure): every session succeeds, p95 under 500 ms.
// teardown() releases the leaked connections (POST /admin/reset; ADMIN_TOKEN if the lab has
// one), so the scripts run after this one find a full pool.
import http from 'k6/http';
import { check, sleep } from 'k6';
import { Rate } from 'k6/metrics';
import { BASE_URL, dur, pick, adminHeaders, checkLab } from './lib/lab.js';

const served = new Rate('session_served');
http.setResponseCallback(http.expectedStatuses(200));

export const options = {
  scenarios: {
    sessions: {
      executor: 'constant-arrival-rate',
      rate: 5,
      timeUnit: '1s',
      duration: dur('3m', '12s'),
      preAllocatedVUs: 20,
      maxVUs: 100,
      gracefulStop: '10s',
    },
  },
  thresholds: pick(
    { session_served: ['rate<0.5'] },
    { session_served: ['rate>0.99'], 'http_req_duration{name:session}': ['p(95)<500'] },
  ),
};

export function setup() {
  checkLab(['db_leak_ms', 'db_pool_size', 'db_max_overflow']);
}

export default function () {
  const res = http.get(`${BASE_URL}/api/db/session`, { tags: { name: 'session' }, timeout: '5s' });
  served.add(res.status === 200);
  check(res, { 'session served': (r) => r.status === 200 });
}

/** Reads one unlabelled series from /metrics. */
function metric(name) {
  const res = http.get(`${BASE_URL}/metrics`, { tags: { name: 'setup' } });
  const line = res.body.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : NaN;
}

export function teardown() {
  console.log(`leaked connections at the end: ${metric('db_connections_leaked')}`);
  const res = http.post(`${BASE_URL}/admin/reset`, null, { headers: adminHeaders(), tags: { name: 'setup' } });
  if (res.status !== 200) {
    console.error(`POST /admin/reset: ${res.status}: the leaked connections stay out for db_leak_ms`);
    return;
  }
  for (let i = 0; i < 50 && (metric('db_connections_leaked') > 0 || metric('db_pool_waiting') > 0); i++) {
    sleep(0.2);
  }
  console.log(`after /admin/reset: leaked ${metric('db_connections_leaked')}, waiting ${metric('db_pool_waiting')}`);
}
