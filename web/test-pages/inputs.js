// The deterministic inputs and the hash every page and test compares across engines: the pages
// here import this file, the Node tests through test/helpers.mjs, and the bundler test's app
// embeds its text (test/bundlers.test.mjs).

/** n floats in [-2, 2) from xorshift32 seeded with `seed`. */
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

/** FNV-1a of the bytes, as hex. */
export function fnv1a(bytes) {
  let h = 0x811c9dc5;
  for (const b of bytes) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h.toString(16);
}
