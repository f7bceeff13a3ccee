// Every database endpoint, concurrently, across the replicas in BASE_URLS: the check that
// scripts/ci/k6-replicas.sh runs behind PgBouncer in transaction mode (Debian's 1.18, no
// max_prepared_statements). With sqlx's statement cache off (statement-cache-capacity=0) only
// unnamed statements are sent, so consecutive statements landing on different server connections
// cannot fail with `prepared statement "sqlx_s_1" does not exist` / `already exists`: any 5xx
// here fails the run. Not a lab scenario (it is not in load-tests/): a CI check.
import http from 'k6/http';
import { check } from 'k6';

const TARGETS = (__ENV.BASE_URLS || 'http://127.0.0.1:8000').split(',').map((u) => u.trim());
const ITERATIONS = Number(__ENV.ITERATIONS || 60);

export const options = {
  scenarios: {
    mixed: { executor: 'shared-iterations', vus: 12, iterations: ITERATIONS, maxDuration: '90s' },
  },
  thresholds: {
    // Every endpoint answered 2xx, every time (a 503 would be pool exhaustion: not this check).
    checks: ['rate==1'],
    http_req_failed: ['rate==0'],
  },
};

const json = { headers: { 'content-type': 'application/json' } };

export default function () {
  const base = TARGETS[(__VU + __ITER) % TARGETS.length];
  const tag = `${__VU}-${__ITER}`;
  const res = {
    'POST /api/tasks': http.post(`${base}/api/tasks?title=bouncer-${tag}&description=d`),
    'GET /api/tasks': http.get(`${base}/api/tasks?limit=5`),
    'GET /api/db/hold': http.get(`${base}/api/db/hold?ms=20`),
    'GET /api/expensive-query': http.get(`${base}/api/expensive-query?iterations=20`),
    'GET /api/cache/items/{id}': http.get(`${base}/api/cache/items/${(__ITER % 5) + 1}`),
  };
  // It holds each connection 5 s: one VU sends it, twice, so the check does not saturate the 15
  // server connections (behind a saturated PgBouncer the monitor's ping queues past its 2 s
  // timeout and the app reports the database down: docs/scenarios/db-replicas.md).
  if (__VU === 1 && __ITER < 2) {
    res['GET /api/db-pool-exhaust'] = http.get(`${base}/api/db-pool-exhaust?concurrent_queries=3`);
  }
  const deployed = http.post(`${base}/api/v1/deployments/`, JSON.stringify({ name: `b-${tag}` }), {
    ...json,
    headers: { ...json.headers, 'Idempotency-Key': `bouncer-${tag}` },
  });
  res['POST /api/v1/deployments/'] = deployed;
  const id = deployed.json('id');
  if (id) res['GET /api/v1/deployments/{id}'] = http.get(`${base}/api/v1/deployments/${id}`);
  for (const [name, r] of Object.entries(res)) {
    check(r, { [`${name} 2xx`]: (x) => x.status >= 200 && x.status < 300 });
    if (r.status >= 300) console.error(`${name}: ${r.status} ${String(r.body).slice(0, 300)}`);
  }
}
