// faults — a response-phase fault (Chaos Monkey's "after the work is done"): the lab commits each
// deployment, then answers 30% of them with an injected 500. 4 creations/s, below the 7.5/s the
// fragile lab's synchronous deployments can serve, so only the fault fails them. setup() sets
// the rule through PUT /admin/faults/other (ADMIN_TOKEN if the lab has one); teardown() clears it.
// fragile (a client that retries a 500 without an Idempotency-Key): every retried 500 leaves a
// duplicate deployment behind: about 30% of creations are duplicated (the threshold: above 5%).
// hardened (the same client sending an Idempotency-Key): each retry replays the committed write
// (Idempotent-Replayed: true); no creation is duplicated.
// The cure is on the client here, so PROFILE picks the client; the lab's profile only changes
// how the write is acknowledged (201 sync, 202 async). Every injected answer carries
// x-chokepoint-fault and is counted in faults_injected_total{group="other",kind="response_error"}.
import http from 'k6/http';
import { check } from 'k6';
import { Counter, Rate } from 'k6/metrics';
import { BASE_URL, PROFILE, dur, pick, adminHeaders, checkLab } from './lib/lab.js';

const duplicated = new Rate('creation_duplicated');
const injected500 = new Counter('injected_500s');
const gaveUp = new Rate('creation_gave_up');
http.setResponseCallback(http.expectedStatuses(200, 201, 202, 500));

const RUN = `${Date.now()}`;
const RULE = { response: '500@30%', routes: ['/api/v1/deployments/'] };

export const options = {
  scenarios: {
    creations: {
      executor: 'constant-arrival-rate',
      rate: 4,
      timeUnit: '1s',
      duration: dur('1m', '10s'),
      preAllocatedVUs: 10,
      maxVUs: 100,
    },
  },
  thresholds: pick(
    { creation_duplicated: ['rate>0.05'], creation_gave_up: ['rate<0.05'] },
    { creation_duplicated: ['rate==0'], creation_gave_up: ['rate<0.05'] },
  ),
};

export function setup() {
  checkLab([]);
  const res = http.put(`${BASE_URL}/admin/faults/other`, JSON.stringify(RULE), {
    headers: adminHeaders(),
    tags: { name: 'setup' },
  });
  if (res.status !== 200) {
    throw new Error(`PUT /admin/faults/other: ${res.status} ${res.body}`);
  }
}

export function teardown() {
  http.del(`${BASE_URL}/admin/faults/other`, null, { headers: adminHeaders(), tags: { name: 'setup' } });
}

export default function () {
  const name = `k6-faults-${RUN}-${__VU}-${__ITER}`;
  const headers = { 'Content-Type': 'application/json' };
  if (PROFILE === 'hardened') headers['Idempotency-Key'] = name;
  let failures = 0;
  for (let attempt = 1; attempt <= 5; attempt++) {
    const res = http.post(`${BASE_URL}/api/v1/deployments/`, JSON.stringify({ name }), {
      headers,
      tags: { name: 'deployments' },
    });
    if (res.status === 500) {
      check(res, { 'a 500 here is injected': (r) => r.headers['X-Chokepoint-Fault'] === 'response_error' });
      injected500.add(1);
      failures += 1;
      continue;
    }
    check(res, { 'created or replayed': (r) => [200, 201, 202].includes(r.status) });
    // A success after committed-then-500'd attempts made a new row unless it was a replay.
    const replayed = res.headers['Idempotent-Replayed'] === 'true';
    duplicated.add(failures > 0 && !replayed);
    gaveUp.add(false);
    return;
  }
  gaveUp.add(true);
  duplicated.add(!headers['Idempotency-Key'] && failures > 1);
}
