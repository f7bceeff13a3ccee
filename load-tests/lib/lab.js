// Shared by every script: where the lab is, which profile's expectations apply, and the
// stage shrinker. The scripts never change the lab's knobs: switch the profile yourself
// (POST /admin/profile/<name>) and tell the script which one to expect with PROFILE.
//
//   BASE_URL   the lab (default http://127.0.0.1:8000)
//   PROFILE    fragile (default: thresholds check that the collapse happened) or hardened
//              (thresholds check that the fix held)
//   SMOKE=1    every stage shrunk to seconds (CI), same shape and expectations
//   ADMIN_TOKEN  sent as a bearer token where a script triggers its scenario through /admin
import http from 'k6/http';

export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8000').replace(/\/+$/, '');
export const PROFILE = (__ENV.PROFILE || 'fragile').toLowerCase();
if (PROFILE !== 'fragile' && PROFILE !== 'hardened') {
  throw new Error(`PROFILE must be fragile or hardened (got ${__ENV.PROFILE})`);
}
export const SMOKE = ['1', 'true', 'yes'].includes((__ENV.SMOKE || '').toLowerCase());

/** The full (report-like) value, or the smoke one with SMOKE=1. */
export const dur = (full, smoke) => (SMOKE ? smoke : full);
/** The fragile or the hardened value, by PROFILE. */
export const pick = (fragile, hardened) => (PROFILE === 'hardened' ? hardened : fragile);

export function adminHeaders() {
  const h = { 'Content-Type': 'application/json' };
  if (__ENV.ADMIN_TOKEN) h.Authorization = `Bearer ${__ENV.ADMIN_TOKEN}`;
  return h;
}

/**
 * For setup(): fails fast when the lab is unreachable, and warns when its knobs are not the
 * PROFILE's (the thresholds would then judge the wrong expectation). Returns the config.
 */
export function checkLab(knobsThatMatter) {
  const res = http.get(`${BASE_URL}/admin/config`, { tags: { name: 'setup' } });
  if (res.status !== 200) {
    throw new Error(`the lab is not answering at ${BASE_URL} (GET /admin/config: ${res.status} ${res.error || ''})`);
  }
  const cfg = res.json();
  const off = (knobsThatMatter || [])
    .filter((k) => cfg.knobs[k] && JSON.stringify(cfg.knobs[k].value) !== JSON.stringify(cfg.knobs[k].profiles[PROFILE]))
    .map((k) => `${k}=${JSON.stringify(cfg.knobs[k].value)} (${PROFILE}: ${JSON.stringify(cfg.knobs[k].profiles[PROFILE])})`);
  if (off.length) {
    console.warn(`the lab's knobs differ from PROFILE=${PROFILE}: ${off.join(', ')}; ` +
      `POST ${BASE_URL}/admin/profile/${PROFILE} to match, or expect the thresholds to disagree`);
  }
  return cfg;
}
