// db-replicas — the backend-under-load report: three pods made it worse. Point it at a Service
// in front of several replicas (the k8s `replicas` overlay: 3 × (5 + 10) connections against
// max_connections 40) or list the replicas in BASE_URLS=http://a:8000,http://b:8000,...
// Each request holds a connection 1 s; load spreads round-robin over the replicas.
// PROFILE here names the deployment, not the knobs (the cure is infrastructure):
// fragile (replicas overlay): PostgreSQL refuses connections ("too many clients already"), so
// requests fail (503 after the acquire timeout) — more than 1%.
// hardened (the pgbouncer overlay: the same replicas through PgBouncer): under 1% fail. Keep
// the acquire timeout above PgBouncer's queue time (docs/scenarios/db-replicas.md).
// With a single replica nothing exceeds max_connections and the fragile threshold fails: that
// is the point of the scenario. tests/scenarios/db_replicas.rs measures both on one machine.
import http from 'k6/http';
import { check, sleep } from 'k6';
import { BASE_URL, dur, pick } from './lib/lab.js';

const TARGETS = (__ENV.BASE_URLS || BASE_URL).split(',').map((u) => u.trim().replace(/\/+$/, ''));
http.setResponseCallback(http.expectedStatuses(200));

export const options = {
  scenarios: {
    users: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: dur(
        [
          { duration: '1m', target: 60 },
          { duration: '3m', target: 60 },
          { duration: '30s', target: 0 },
        ],
        [
          { duration: '2s', target: 30 },
          { duration: '6s', target: 30 },
        ],
      ),
    },
  },
  thresholds: pick({ http_req_failed: ['rate>0.01'] }, { http_req_failed: ['rate<0.01'] }),
};

export function setup() {
  for (const base of TARGETS) {
    const res = http.get(`${base}/ready`);
    if (res.status !== 200) throw new Error(`replica ${base} is not ready (${res.status})`);
  }
}

export default function () {
  const base = TARGETS[(__VU + __ITER) % TARGETS.length];
  const res = http.get(`${base}/api/db/hold?ms=1000`, { tags: { name: 'db-hold' } });
  check(res, { 'answered': (r) => r.status === 200 || r.status === 503 });
  sleep(0.1);
}
