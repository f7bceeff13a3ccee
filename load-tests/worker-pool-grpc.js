// worker-pool-grpc — the gRPC report over real gRPC: 10 worker threads behind
// chokepoint.worker.v1.WorkerPool/Work (GRPC_PORT, found through GET / or GRPC_ADDR), 200
// concurrent users, the report's 2 s deadline (sent as grpc-timeout). 150 ms of work each:
// 10 workers serve 66 calls/s; 200 users wait 3 s in the queue > the 2 s deadline.
// The client needs no .proto: it asks the server's reflection service.
// fragile (unbounded queue, no deadline check): more than half the calls end in status 4
// DEADLINE_EXCEEDED, while the workers stay busy on calls nobody waits for.
// hardened (20 workers, queue of 20, deadline checked and propagated, abandoned work shed): at
// most 5% DEADLINE_EXCEEDED; the excess gets status 8 RESOURCE_EXHAUSTED in under 100 ms.
import grpc from 'k6/net/grpc';
import http from 'k6/http';
import { check } from 'k6';
import { Rate, Trend } from 'k6/metrics';
import { BASE_URL, dur, pick, checkLab } from './lib/lab.js';

const succeeded = new Rate('succeeded');
const deadlineExceeded = new Rate('deadline_exceeded');
const refusedMs = new Trend('resource_exhausted_ms', true);
const client = new grpc.Client();
let connected = false;

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
    { deadline_exceeded: ['rate<0.05'], resource_exhausted_ms: ['p(95)<100'] },
  ),
};

export function setup() {
  checkLab(['worker_pool_size', 'worker_queue_max', 'worker_deadline_check']);
  if (__ENV.GRPC_ADDR) return { grpc: __ENV.GRPC_ADDR };
  const index = http.get(`${BASE_URL}/`, { tags: { name: 'setup' } }).json();
  if (!index.grpc) throw new Error(`the lab at ${BASE_URL} serves no gRPC (GRPC_PORT=off?)`);
  return { grpc: index.grpc };
}

export default function (data) {
  if (!connected) {
    client.connect(data.grpc, { plaintext: true, reflect: true, timeout: '10s' });
    connected = true;
  }
  const start = Date.now();
  const res = client.invoke('chokepoint.worker.v1.WorkerPool/Work', { work_ms: 150 }, { timeout: '2s' });
  succeeded.add(res.status === grpc.StatusOK);
  deadlineExceeded.add(res.status === grpc.StatusDeadlineExceeded);
  if (res.status === grpc.StatusResourceExhausted) refusedMs.add(Date.now() - start);
  check(res, {
    'answered OK, DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED': (r) =>
      [grpc.StatusOK, grpc.StatusDeadlineExceeded, grpc.StatusResourceExhausted].includes(r.status),
  });
}

export function teardown() {
  client.close();
}
