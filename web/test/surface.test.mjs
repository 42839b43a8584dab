// The API surface for runtimes, on the SIMD128 and the scalar build: unknown createCache options,
// effective config values, Symbol.dispose, fp16 input (== appending the widened floats, bit for
// bit), head-major tensors (== token-major), attendStats (merged by the documented formula ==
// attend over all the tokens) and Codec.dot of several queries at once.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { Tqkv, TqkvError } from '../dist/node.js';
import { builds, stream, bytesEqual, worstRowRelError, tinyModel } from './helpers.mjs';

const H = 4, KH = 2, D = 64, ROW = KH * D, Q = H * D;

// IEEE half bits of floats (round to nearest even), and back: the reference conversions.
function toHalf(x) {
  const f = new Float32Array(1), u = new Uint32Array(f.buffer);
  f[0] = x;
  const b = u[0], sign = (b >>> 16) & 0x8000, e = (b >>> 23) & 0xff, m = b & 0x7fffff;
  if (e === 0xff) return sign | 0x7c00 | (m ? 0x200 : 0);
  const v = Math.abs(f[0]);
  if (v >= 65520) return sign | 0x7c00;
  if (v < 2 ** -14) return sign | Math.round(v / 2 ** -24); // subnormal (round half even: Math.round ok for these inputs)
  let exp = Math.floor(Math.log2(v));
  if (2 ** exp > v) exp--;
  let mant = v / 2 ** exp - 1;
  let mi = mant * 1024, r = Math.floor(mi), frac = mi - r;
  if (frac > 0.5 || (frac === 0.5 && r % 2 === 1)) r++;
  if (r === 1024) { r = 0; exp++; }
  return sign | ((exp + 15) << 10) | r;
}
function fromHalf(h) {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0x1f) return m ? NaN : s * Infinity;
  if (e === 0) return s * m * 2 ** -24;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}
// fp16 test values: random normals, subnormals, signed zeros, large values.
function halfInput(n, seed) {
  const x = stream(n, seed);
  const h = new Uint16Array(n);
  for (let i = 0; i < n; i++) {
    let v = x[i];
    if (i % 97 === 0) v = 3e-6 * (i % 2 ? 1 : -1); // subnormal half
    if (i % 101 === 0) v = i % 2 ? -0 : 0;
    if (i % 103 === 0) v = 1000 * x[i];
    h[i] = toHalf(v);
  }
  return h;
}
const widen = (h) => Float32Array.from(h, fromHalf);

// token-major [n][heads][dim] <-> head-major [heads][n][dim]
function toHeads(x, n, heads, dim) {
  const out = new Float32Array(x.length);
  for (let t = 0; t < n; t++) for (let h = 0; h < heads; h++) out.set(x.subarray((t * heads + h) * dim, (t * heads + h + 1) * dim), (h * n + t) * dim);
  return out;
}
function toTokens(x, n, heads, dim) {
  const out = new Float32Array(x.length);
  for (let t = 0; t < n; t++) for (let h = 0; h < heads; h++) out.set(x.subarray((h * n + t) * dim, (h * n + t + 1) * dim), (t * heads + h) * dim);
  return out;
}

test('createCache rejects unknown options, naming them and the accepted ones', async () => {
  const t = await Tqkv.load();
  assert.throws(() => t.createCache({ heads: 4, headDim: 64, presets: 'K3.5V2.5-w16' }), (e) =>
    e instanceof TypeError && /createCache: unknown option 'presets' \(accepted: layers, heads, kvHeads, headDim, keyBits, valueBits, keyMethod, window, blockTokens, scale, maxTokens, seed, normFormat, keyHighChannels, valueHighChannels, kernel, layout, spec, preset, calibration, precision\)/.test(e.message));
  assert.throws(() => t.createCache({ heads: 4, headDim: 64, keybits: 3 }), /unknown option 'keybits'/);
  assert.throws(() => t.createCache({ heads: 4, headDim: 64, layout: 'nhd' }), /layout must be 'token-major' or 'head-major'/);
});

for (const [name, opts] of builds) {
  describe(`${name} build`, () => {
    let t;
    test('loads', async () => {
      t = await Tqkv.load(opts);
    });

    test('config reports effective values; Symbol.dispose on every disposable class', () => {
      const c = t.createCache({ heads: H, kvHeads: KH, headDim: D, keyBits: 3.5, valueBits: 2, keyHighChannels: [...Array(32).keys()] });
      const cfg = c.config;
      assert.equal(cfg.scale, Math.fround(1 / 8), 'scale 0 -> 1/sqrt(headDim)');
      assert.equal(cfg.maxTokens, 2 ** 28, 'unbounded -> 2^28');
      assert.deepEqual([cfg.kernel, cfg.variant, cfg.keyHighChannels, cfg.valueHighChannels, cfg.layout],
        [t.kernel, t.variant, 32, 0, 'token-major']);
      assert.equal(t.createCache({ heads: 1, headDim: 100, scale: 0.25 }).config.scale, 0.25);
      assert.equal(t.createCache({ heads: 1, headDim: 100 }).config.scale, Math.fround(1 / Math.sqrt(100)));
      assert.equal(typeof Symbol.dispose, 'symbol');
      c[Symbol.dispose]();
      assert.ok(c.disposed);
      const codec = t.createCodec({ dim: 32 });
      codec[Symbol.dispose]();
      assert.ok(codec.disposed);
      const { config, weights } = tinyModel(4);
      const m = t.loadModel(config, weights), cal = m.calibrate('calibration'), r = m.createRunner('K4V4', { calibration: cal });
      for (const x of [r, cal, m]) {
        x[Symbol.dispose]();
        x[Symbol.dispose](); // a second time does nothing
      }
      assert.ok(r.disposed && m.disposed);
      assert.throws(() => r.stats(), /disposed/);
    });

    test('fp16 input (Uint16Array bits) == appending the widened floats, bit for bit', () => {
      for (const [i, cfg] of [{ keyBits: 4, valueBits: 4 }, { keyBits: 3, valueBits: 2, window: 8, keyMethod: 'prod' }].entries()) {
        const shape = { layers: 2, heads: H, kvHeads: KH, headDim: D, ...cfg };
        const a = t.createCache(shape), b = t.createCache(shape);
        for (const [chunk, seed] of [[37, 1], [1, 2], [64, 3]]) {
          const k = halfInput(chunk * ROW, seed + 10 * i), v = halfInput(chunk * ROW, seed + 100);
          a.append(1, k, v);
          b.append(1, widen(k), widen(v));
        }
        assert.ok(bytesEqual(a.serialize(), b.serialize()), `config ${i}: fp16 codes differ from the widened floats'`);
        const q = stream(2 * Q, 9);
        assert.deepEqual(a.attend(1, q), b.attend(1, q));
        // non-finite halves are rejected like non-finite floats, naming the element; nothing changes
        const before = a.serialize();
        const bad = halfInput(2 * ROW, 5);
        bad[ROW + 3] = 0x7c00; // +inf
        assert.throws(() => a.append(1, bad, halfInput(2 * ROW, 6)), (e) => e instanceof TqkvError && /key of token 1, head 0, channel 3 is not finite/.test(e.message));
        bad[ROW + 3] = 0x7e00; // NaN
        assert.throws(() => a.append(1, halfInput(2 * ROW, 6), bad), (e) => e instanceof TqkvError && /value of token 1, head 0, channel 3 is not finite/.test(e.message));
        assert.throws(() => a.append(1, halfInput(ROW - 1, 6), halfInput(ROW - 1, 7)), (e) => e instanceof TqkvError && e.code === 'invalid argument');
        assert.throws(() => a.append(1, halfInput(ROW, 6), stream(ROW, 7)), /same element type/);
        assert.throws(() => a.append(1, new Int16Array(ROW), new Int16Array(ROW)), /Float32Array, a Uint16Array \(fp16 bits\) or a Float16Array/);
        assert.ok(bytesEqual(a.serialize(), before));
        a.dispose();
        b.dispose();
      }
      if (typeof globalThis.Float16Array !== 'function') console.log('# Float16Array: not in this engine (tested in Chromium)');
    });

    test("layout 'head-major' == token-major: append (also a token range), attend, attendStats", () => {
      const n = 50;
      const k = stream(n * ROW, 21), v = stream(n * ROW, 22);
      const a = t.createCache({ heads: H, kvHeads: KH, headDim: D, window: 4 });
      const b = t.createCache({ heads: H, kvHeads: KH, headDim: D, window: 4, layout: 'head-major' });
      const c = t.createCache({ heads: H, kvHeads: KH, headDim: D, window: 4 });
      a.append(0, k, v);
      b.append(0, toHeads(k, n, KH, D), toHeads(v, n, KH, D));
      // the same tokens as two slices of one head-major tensor, in fp16 too
      const kh = toHeads(k, n, KH, D), vh = toHeads(v, n, KH, D);
      c.append(0, kh, vh, { layout: 'head-major', start: 0, count: 20 });
      c.append(0, kh, vh, { layout: 'head-major', start: 20 });
      assert.ok(bytesEqual(a.serialize(), b.serialize()), 'head-major append');
      assert.ok(bytesEqual(a.serialize(), c.serialize()), 'head-major token ranges');
      const m = 3, q = stream(m * Q, 23);
      const outA = a.attend(0, q);
      const outB = b.attend(0, toHeads(q, m, H, D)); // the cache's default layout
      assert.deepEqual(toTokens(outB, m, H, D), outA);
      assert.deepEqual(toTokens(a.attend(0, toHeads(q, m, H, D), undefined, { layout: 'head-major', causal: true }), m, H, D), outA);
      assert.deepEqual(a.attend(0, q, undefined, { causal: false }), a.attend(0, q, undefined, false));
      const sa = a.attendStats(0, q), sb = b.attendStats(0, toHeads(q, m, H, D));
      assert.deepEqual(toTokens(sb.acc, m, H, D), sa.acc);
      assert.deepEqual(toTokens(sb.maxLogit, m, H, 1), sa.maxLogit);
      assert.deepEqual(toTokens(sb.sumExp, m, H, 1), sa.sumExp);
      assert.throws(() => a.append(0, k, v, { start: 1 }), /start\/count need layout 'head-major'/);
      assert.throws(() => a.append(0, kh, vh, { layout: 'head-major', start: 60 }), TypeError);
      assert.throws(() => a.append(0, k, v, { layot: 'head-major' }), /append: unknown option 'layot' \(accepted: layout, start, count\)/);
      assert.throws(() => a.attend(0, q, undefined, { casual: true }), /attend: unknown option 'casual'/);
      assert.throws(() => a.append(0, kh.subarray(1), vh.subarray(1), { layout: 'head-major' }), (e) => e instanceof TqkvError && /kv_heads \* head_dim = 128/.test(e.message));
      assert.equal(a.tokens(), n);
      for (const x of [a, b, c]) x.dispose();
    });

    test('attendStats: two caches merged by the documented formula == attend over all tokens', () => {
      // exact: the fast path scales value weights per 32-token group by the group's largest, so
      // splitting the tokens at 70 moves its rounding (within its bound, past 1e-5)
      const cfg = { heads: H, kvHeads: KH, headDim: D, keyBits: 4, valueBits: 3, precision: 'exact' };
      const T = 180, T1 = 70;
      const k = stream(T * ROW, 31), v = stream(T * ROW, 32);
      const all = t.createCache(cfg), first = t.createCache(cfg), rest = t.createCache(cfg);
      all.append(0, k, v);
      first.append(0, k.subarray(0, T1 * ROW), v.subarray(0, T1 * ROW));
      rest.append(0, k.subarray(T1 * ROW), v.subarray(T1 * ROW));
      const m = 2, q = stream(m * Q, 33);
      const want = all.attend(0, q, undefined, false);
      const a = first.attendStats(0, q), b = rest.attendStats(0, q);
      const merged = new Float32Array(m * Q);
      for (let i = 0; i < m * H; i++) {
        const X = Math.max(a.maxLogit[i], b.maxLogit[i]);
        const wa = Math.exp(a.maxLogit[i] - X), wb = Math.exp(b.maxLogit[i] - X);
        const den = wa * a.sumExp[i] + wb * b.sumExp[i];
        for (let j = 0; j < D; j++) merged[i * D + j] = (wa * a.acc[i * D + j] + wb * b.acc[i * D + j]) / den;
      }
      const err = worstRowRelError(merged, want, D);
      assert.ok(err < 1e-5, `merged differs from attend by ${err}`);
      // the statistics themselves: over one cache, acc / sumExp is attend's output
      const s = all.attendStats(0, q);
      const norm = s.acc.map((x, i) => x / s.sumExp[Math.floor(i / D)]);
      assert.ok(worstRowRelError(norm, want, D) < 1e-5);
      assert.ok(s.sumExp.every((x) => x >= 1), 'the max token contributes exp(0) = 1');
      // into given arrays; errors
      const into = { acc: new Float32Array(m * Q), maxLogit: new Float32Array(m * H), sumExp: new Float32Array(m * H) };
      assert.equal(all.attendStats(0, q, into).acc, into.acc);
      assert.deepEqual(into.acc, s.acc);
      assert.throws(() => all.attendStats(0, q, { acc: new Float32Array(5) }), (e) => e instanceof TqkvError && /attend_stats: acc has 5 floats/.test(e.message));
      assert.throws(() => all.attendStats(0, q.subarray(1)), (e) => e instanceof TqkvError && /heads \* head_dim = 256/.test(e.message));
      const nan = q.slice();
      nan[7] = NaN;
      const keep = new Float32Array(m * Q).fill(5);
      assert.throws(() => all.attendStats(0, nan, { acc: keep }), TqkvError);
      assert.ok(keep.every((x) => x === 5), 'a failed call leaves its outputs untouched');
      const empty = t.createCache(cfg);
      assert.throws(() => empty.attendStats(0, q), TqkvError);
      for (const x of [all, first, rest, empty]) x.dispose();
    });

    test('Codec.dot of several queries == one query at a time, bit for bit', () => {
      const codec = t.createCodec({ dim: 128, bits: 4 });
      const x = stream(300 * 128, 41), q = stream(4 * 128, 42);
      const codes = codec.encode(x);
      const many = codec.dot(q, codes);
      assert.equal(many.length, 4 * 300);
      for (let i = 0; i < 4; i++) assert.deepEqual(many.subarray(i * 300, (i + 1) * 300), codec.dot(q.subarray(i * 128, (i + 1) * 128), codes));
      assert.throws(() => codec.dot(q.subarray(1), codes), (e) => e instanceof TqkvError && /multiple of dim = 128/.test(e.message));
      assert.throws(() => codec.dot(q, codes, new Float32Array(300)), (e) => e instanceof TqkvError && /4 queries \* 300 vectors/.test(e.message));
      codec.dispose();
    });
  });
}
