// Shared by the seed scripts: the original "backend under load" lab's own loads, written anew
// for chokepoint (same endpoints, parameters, executors, rates and thresholds), plus a /health
// probe beside each load, as a Kubernetes liveness probe would send.
//
//   BASE_URL  the lab (default http://127.0.0.1:8000)
//   SCALE     divide every duration by this (default 1: the original's durations; the
//             fidelity bench uses 6, as the original's runs were compared on 2 cores)
//   SMOKE=1   SCALE defaults to 20 instead (CI): the same rates, for seconds
//
// Rates are never scaled: the collapse is a matter of rate, not of duration.
import http from 'k6/http';
import { Counter, Trend } from 'k6/metrics';

export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8000').replace(/\/+$/, '');
export const SMOKE = ['1', 'true', 'yes'].includes((__ENV.SMOKE || '').toLowerCase());
export const SCALE = Number(__ENV.SCALE || (SMOKE ? 20 : 1));
if (!(SCALE >= 1)) throw new Error(`SCALE must be a number >= 1 (got ${__ENV.SCALE})`);

/** A duration of the original's, in seconds, divided by SCALE (at least 2 s). */
export const secs = (s) => `${Math.max(2, Math.round(s / SCALE))}s`;
/** Stages of the original's ({ seconds, target }), each divided by SCALE. */
export const stages = (list) => list.map(([s, target]) => ({ duration: secs(s), target }));
/** The sum of a stage list's seconds, divided by SCALE. */
export const total = (list) => list.reduce((n, [s]) => n + Math.max(2, Math.round(s / SCALE)), 0);

// What the bench reads from the summary (k6 --summary-export).
export const work = new Trend('work_duration', true);
export const probeDuration = new Trend('probe_duration', true);
export const clientTimeouts = new Counter('client_timeouts');
export const connectionErrors = new Counter('connection_errors');
export const served = new Counter('served_2xx');
export const refused503 = new Counter('status_503');
export const timeout504 = new Counter('status_504');
export const otherErrors = new Counter('status_other_errors');

/** Counts one answer of the load by outcome, and its duration. */
export function tally(res) {
  work.add(res.timings.duration);
  if (res.error_code === 1050) clientTimeouts.add(1); // k6: request timeout
  else if (res.status === 0) connectionErrors.add(1); // reset, refused, EOF
  else if (res.status >= 200 && res.status < 300) served.add(1);
  else if (res.status === 503) refused503.add(1);
  else if (res.status === 504) timeout504.add(1);
  else otherErrors.add(1);
}

/** The /health probe scenario: 2 probes a second for `seconds`, each waiting up to 15 s. */
export function probeScenario(seconds) {
  return {
    executor: 'constant-arrival-rate',
    exec: 'probe',
    rate: 2,
    timeUnit: '1s',
    duration: `${seconds}s`,
    preAllocatedVUs: 4,
    maxVUs: 40,
  };
}

export function probe() {
  const res = http.get(`${BASE_URL}/health`, { timeout: '15s', tags: { kind: 'probe', name: 'health' } });
  probeDuration.add(res.timings.duration);
}

/** Fails fast when nothing answers at BASE_URL. */
export function reachable() {
  const res = http.get(`${BASE_URL}/health`, { timeout: '10s', tags: { kind: 'setup' } });
  if (res.status !== 200) throw new Error(`the lab is not answering at ${BASE_URL}/health (${res.status} ${res.error || ''})`);
}
