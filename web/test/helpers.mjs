// Shared by the node tests: loading both builds, deterministic inputs, comparisons.
import { Tqkv } from '../dist/index.js';

export { Tqkv };
export const builds = [
  ['simd', { simd: true }],
  ['scalar', { simd: false }],
];

// The golden input stream, bit-identical to js_stream() in tests/test_capi.cpp: xorshift32,
// each value a 24-bit integer / 2^22 in [-2, 2) (exact in float32).
export function stream(n, seed) {
  const out = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s = (s ^ (s << 13)) >>> 0;
    s = (s ^ (s >>> 17)) >>> 0;
    s = (s ^ (s << 5)) >>> 0;
    out[i] = ((s >>> 8) - (1 << 23)) / (1 << 22);
  }
  return out;
}

// Relative error ||a - b|| / ||b|| over rows of `d` floats; returns the worst row.
export function worstRowRelError(a, b, d) {
  let worst = 0;
  for (let r = 0; r < a.length / d; r++) {
    let num = 0, den = 0;
    for (let j = r * d; j < (r + 1) * d; j++) {
      num += (a[j] - b[j]) ** 2;
      den += b[j] ** 2;
    }
    worst = Math.max(worst, Math.sqrt(num / Math.max(den, 1e-30)));
  }
  return worst;
}

export function bytesEqual(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
