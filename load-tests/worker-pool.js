// worker-pool — the gRPC report: 10 worker threads, 200 concurrent users, a 2 s deadline;
// the queue wait passes the deadline and success goes to 0% while the workers stay busy.
// fragile (unbounded queue, no deadline check): more than half the requests get
// DEADLINE_EXCEEDED (504) — success heads to 0% while every worker stays busy.
// hardened (20 workers, queue of 20, deadline checked before work): at most 5% deadline
// exceeded; the excess is refused with 503 in under 100 ms.
import http from 'k6/http';
import { check } from 'k6';
import { Rate } from 'k6/metrics';
import { BASE_URL, dur, pick, checkLab } from './lib/lab.js';

const succeeded = new Rate('succeeded');
const deadlineExceeded = new Rate('deadline_exceeded');
http.setResponseCallback(http.expectedStatuses(200, 503, 504));

export const options = {
  scenarios: {
    users: {
      executor: 'constant-vus',
      vus: 200,
      duration: dur('3m', '8s'),
    },
  },
  thresholds: pick(
    { deadline_exceeded: ['rate>0.5'] },
    {
      deadline_exceeded: ['rate<0.05'],
      'http_req_duration{status:503}': ['p(95)<100'],
    },
  ),
};

export function setup() {
  checkLab(['worker_pool_size', 'worker_queue_max', 'worker_deadline_check']);
}

export default function () {
  // 150 ms of work each: 10 workers serve 66/s; 200 users wait 3 s > the 2 s deadline.
  const res = http.get(`${BASE_URL}/api/worker-pool?work_ms=150&deadline_ms=2000`, { tags: { name: 'worker-pool' } });
  succeeded.add(res.status === 200);
  deadlineExceeded.add(res.status === 504);
  check(res, { 'answered': (r) => [200, 503, 504].includes(r.status) });
}
