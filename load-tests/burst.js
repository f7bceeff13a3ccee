// burst — the burst report: 1000 users POST /api/v1/deployments/ at once; every creation holds
// a pooled connection for its 2 s of work (15 connections: 7.5 creations/s), the rest wait for
// the 20 s request timeout: median 19 s, most requests failing.
// fragile (deploy_mode=sync): failures above 50% (smoke, 200 users: above 15%) and a median
// above 15 s (smoke: 8 s).
// hardened (deploy_mode=async): 202 + Location for what the workers can start within the 20 s
// budget (14 workers × (1 + 20 s / 2 s) = 154 queued), 503 + Retry-After (the queue's time to
// drain) at once for the rest. The client honours Retry-After (RETRY_AFTER=0: it does not) and
// comes back with the same Idempotency-Key: every user's deployment is accepted in the end, and
// the work drains at the pool's speed (14 / 2 s = 7/s).
// Both: teardown waits for the queue to drain, prints the goodput (deployments completed per
// second) and fails the run if an accepted deployment did not end `succeeded` (nothing lost).
import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter, Rate } from 'k6/metrics';
import { BASE_URL, PROFILE, dur, pick, checkLab } from './lib/lab.js';

http.setResponseCallback(http.expectedStatuses(200, 201, 202));

const USERS = dur(1000, 200);
const RETRY_AFTER = !['0', 'false', 'no'].includes((__ENV.RETRY_AFTER || '1').toLowerCase());
const accepted = new Rate('deployments_accepted');
const retried = new Counter('retry_after_waits');

export const options = {
  teardownTimeout: dur('6m', '2m'),
  scenarios: {
    burst: {
      executor: 'per-vu-iterations',
      vus: USERS,
      iterations: 1,
      maxDuration: dur('4m', '2m'),
    },
  },
  thresholds: pick(
    {
      http_req_failed: [`rate>${dur(0.5, 0.15)}`],
      http_req_duration: [`med>${dur(15000, 8000)}`],
    },
    {
      // Every user's deployment accepted in the end (after honouring Retry-After).
      deployments_accepted: [RETRY_AFTER ? 'rate>0.99' : 'rate>0.1'],
      // Answers are fast: acceptance and refusal alike.
      'http_req_duration{status:202}': ['p(95)<1000'],
      'http_req_duration{status:503}': ['p(95)<1000'],
    },
  ),
};

/** The lab's deployment counters: {"sync/created": n, "async/accepted": n, ...}. */
function counters() {
  const text = http.get(`${BASE_URL}/metrics`, { tags: { name: 'setup' } }).body;
  const out = { queue: 0, busy: 0 };
  for (const line of text.split('\n')) {
    let m = line.match(/^deployments_total\{mode="(\w+)",outcome="(\w+)"\} (\S+)/);
    if (m) out[`${m[1]}/${m[2]}`] = Number(m[3]);
    m = line.match(/^deploy_queue_depth (\S+)/);
    if (m) out.queue = Number(m[1]);
    m = line.match(/^deploy_workers_busy (\S+)/);
    if (m) out.busy = Number(m[1]);
  }
  return out;
}

export function setup() {
  const cfg = checkLab(['deploy_mode', 'deploy_timeout_ms', 'deploy_work_ms', 'db_pool_size', 'db_max_overflow',
    'deploy_workers', 'deploy_queue_max']);
  const k = (n) => cfg.knobs[n].value;
  return { before: counters(), started: Date.now(), pool: k('db_pool_size') + k('db_max_overflow'), workMs: k('deploy_work_ms') };
}

export default function () {
  const body = JSON.stringify({ name: `burst-${__VU}`, environment: 'production', replicas: 1 });
  const params = {
    headers: { 'Content-Type': 'application/json', 'Idempotency-Key': `k6-${__VU}-${Date.now()}` },
    timeout: '60s',
    tags: { name: 'deployments' },
  };
  for (;;) {
    const res = http.post(`${BASE_URL}/api/v1/deployments/`, body, params);
    const wait = Number(res.headers['Retry-After']);
    if (RETRY_AFTER && res.status === 503 && wait > 0) {
      retried.add(1);
      sleep(wait);
      continue;
    }
    accepted.add(res.status === 200 || res.status === 201 || res.status === 202);
    check(res, {
      'created or accepted': (r) => r.status === 200 || r.status === 201 || r.status === 202,
      'has Location': (r) => r.status >= 400 || !!r.headers.Location,
    });
    return;
  }
}

export function teardown(data) {
  // Wait (bounded) for the accepted work to drain: every 202 must end succeeded or failed.
  const limit = Date.now() + dur(300, 90) * 1000;
  let now = counters();
  while ((now.queue > 0 || now.busy > 0) && Date.now() < limit) {
    sleep(1);
    now = counters();
  }
  const d = (key) => (now[key] || 0) - (data.before[key] || 0);
  const secs = (Date.now() - data.started) / 1000;
  const acceptedN = d('async/accepted');
  const done = d('sync/created') + d('async/created');
  const failed = d('async/failed');
  const capacity = (data.pool / data.workMs) * 1000;
  console.log(`burst (${PROFILE}): ${done} deployments completed in ${secs.toFixed(0)} s ` +
    `(${(done / secs).toFixed(2)}/s; pool / work = ${capacity.toFixed(1)}/s), ` +
    `${d('sync/timeout')} timed out, ${acceptedN} accepted, ${d('async/queue_full')} refused with Retry-After, ` +
    `${failed} accepted and failed`);
  const lost = acceptedN - d('async/created') - failed;
  if (now.queue > 0 || now.busy > 0 || lost > 0 || failed !== 0) {
    throw new Error(`accepted deployments not completed: ${lost} unaccounted, ${failed} failed, ` +
      `queue ${now.queue}, busy ${now.busy} after the drain wait`);
  }
}
