// retry-storm — the HTTP delivery report: deliveries to a receiver that fails 20% of calls
// transiently; with no retry logic every transient failure is a lost delivery.
// fragile (1 attempt): more than 10% of deliveries are lost to a transient error (502).
// hardened (3 attempts, backoff + jitter, 20% retry budget): under 10% lost, and the attempts
// per delivery stay bounded (mean under 1.5). The hardened breaker judges 50 attempts once 20
// are in, so the receiver's 20% does not open it by chance; if it does open, those deliveries
// fail fast with 503 (counted in circuit_open, not as lost).
import http from 'k6/http';
import { check } from 'k6';
import { Rate, Trend } from 'k6/metrics';
import { BASE_URL, dur, pick, checkLab } from './lib/lab.js';

const failed = new Rate('delivery_failed');
const circuitOpen = new Rate('circuit_open');
const attempts = new Trend('attempts_per_delivery');
http.setResponseCallback(http.expectedStatuses(200, 502, 503));

export const options = {
  scenarios: {
    deliveries: {
      executor: 'constant-arrival-rate',
      rate: 20,
      timeUnit: '1s',
      duration: dur('3m', '6s'),
      preAllocatedVUs: 20,
      maxVUs: 200,
    },
  },
  thresholds: pick(
    { delivery_failed: ['rate>0.1'] },
    { delivery_failed: ['rate<0.1'], attempts_per_delivery: ['avg<1.5'] },
  ),
};

export function setup() {
  checkLab(['retry_max_attempts', 'retry_base_ms', 'retry_budget_percent']);
}

export default function () {
  const res = http.get(`${BASE_URL}/api/deliver?failure_rate=0.2`, { tags: { name: 'deliver' } });
  failed.add(res.status === 502);
  circuitOpen.add(res.status === 503);
  if (res.status === 200) attempts.add(res.json('attempts'));
  check(res, { 'answered': (r) => [200, 502, 503].includes(r.status) });
}
