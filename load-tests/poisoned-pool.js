// poisoned-pool — sqlx #4393, the pod that failed every query for 20 minutes. The database gets
// slow (setup() adds 60 ms per round trip on the lab's PostgreSQL link) and impatient clients
// give up after 30 ms: their requests are cut while sqlx's BEGIN is on the wire (20/s for the
// first phase). Then the database is healthy again (the link is cleared), and ordinary traffic
// runs: a plain write that hits a unique name someone holds already (409), and an unrelated
// read (GET /api/tasks).
// fragile: the lab runs with its release-time guard OFF (setup() sets db_skip_release_check,
// the one knob this script changes: off by default in both profiles, lab only). Connections
// come back inside the cut-off BEGIN's transaction; the first 409 on one aborts it, and from
// then on every query on that connection fails with 25P02 (500 db_connection_poisoned), on
// every route, with the database healthy (measured: 61% of the unrelated reads failed; the
// threshold: more than 10%).
// hardened (the guard on, the default): every cut-off BEGIN is rolled back on release
// (db_connections_recovered_total{action="rolled_back"}); the reads all succeed.
// Needs PostgreSQL and LINK_PROXY=true: scripts/ci/k6-slow-link.sh starts such a lab.
import http from 'k6/http';
import { check } from 'k6';
import { Counter, Rate } from 'k6/metrics';
import { BASE_URL, PROFILE, dur, pick, adminHeaders, checkLab } from './lib/lab.js';

const readOk = new Rate('unrelated_read_ok');
const poisoned = new Counter('poisoned_answers');
http.setResponseCallback(http.expectedStatuses(200, 409));

const CUT_FOR = dur('30s', '5s');
const CUT_SECONDS = parseInt(CUT_FOR, 10);

export const options = {
  scenarios: {
    impatient: {
      executor: 'constant-arrival-rate',
      exec: 'impatient',
      rate: 20,
      timeUnit: '1s',
      duration: CUT_FOR,
      preAllocatedVUs: 10,
      maxVUs: 50,
    },
    recovered: {
      executor: 'shared-iterations',
      exec: 'recovered',
      iterations: 1,
      vus: 1,
      startTime: `${CUT_SECONDS + 1}s`,
    },
    traffic: {
      executor: 'constant-arrival-rate',
      exec: 'traffic',
      rate: 10,
      timeUnit: '1s',
      duration: dur('1m', '8s'),
      preAllocatedVUs: 10,
      maxVUs: 50,
      startTime: `${CUT_SECONDS + 2}s`,
    },
  },
  thresholds: pick(
    { unrelated_read_ok: ['rate<0.9'], poisoned_answers: ['count>0'] },
    { unrelated_read_ok: ['rate>0.99'], poisoned_answers: ['count==0'] },
  ),
};

function admin(method, path, body) {
  const res = http.request(method, `${BASE_URL}${path}`, body ? JSON.stringify(body) : null, {
    headers: adminHeaders(),
    tags: { name: 'setup' },
  });
  if (res.status !== 200) {
    throw new Error(`${method} ${path}: ${res.status} ${res.body}`);
  }
  return res;
}

export function setup() {
  checkLab(['db_skip_release_check']);
  // One name per run, claimed while all is well (committed): the traffic claims it again.
  const taken = `taken-${Date.now()}`;
  const res = http.post(`${BASE_URL}/api/claims?name=${taken}`, null, { tags: { name: 'setup' } });
  if (res.status !== 200) throw new Error(`POST /api/claims: ${res.status} ${res.body}`);
  if (PROFILE === 'fragile') admin('PATCH', '/admin/config', { db_skip_release_check: true });
  // A warm pool when the database gets slow, as in production: connections opened now, on the
  // healthy link. (A connection opened through the sick link takes several round trips of 60 ms,
  // so a 30 ms client would cut every request while it waits for one, never during BEGIN.)
  http.batch(Array.from({ length: 10 }, () => ['GET', `${BASE_URL}/api/tasks?limit=1`, null, { tags: { name: 'setup' } }]));
  try {
    admin('PUT', '/admin/links/postgres', { latency: '60ms' });
  } catch (e) {
    throw new Error(`${e.message} (start the lab with LINK_PROXY=true and a PostgreSQL DATABASE_URL)`);
  }
  return { taken };
}

export function impatient() {
  // The client gives up mid-BEGIN; the answer never comes.
  http.get(`${BASE_URL}/api/tasks?limit=1`, { tags: { name: 'impatient' }, timeout: '30ms' });
}

export function recovered() {
  admin('DELETE', '/admin/links/postgres');
}

export function traffic(data) {
  const claim = http.post(`${BASE_URL}/api/claims?name=${data.taken}`, null, { tags: { name: 'claim' } });
  const read = http.get(`${BASE_URL}/api/tasks?limit=1`, { tags: { name: 'read' } });
  for (const r of [claim, read]) {
    if (r.status === 500 && r.json('error') === 'db_connection_poisoned') poisoned.add(1);
  }
  readOk.add(read.status === 200);
  check(read, { 'unrelated read served': (r) => r.status === 200 });
}

export function teardown() {
  http.del(`${BASE_URL}/admin/links/postgres`, null, { headers: adminHeaders(), tags: { name: 'setup' } });
  if (PROFILE === 'fragile') {
    http.patch(`${BASE_URL}/admin/config`, JSON.stringify({ db_skip_release_check: false }), {
      headers: adminHeaders(),
      tags: { name: 'setup' },
    });
  }
}
