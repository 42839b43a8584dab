// The SIMD128 build and the scalar build produce the same codes (serialized caches and codec
// bytes bit for bit) and attention outputs within 1e-4 relative.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tqkv } from '../dist/index.js';
import { stream, bytesEqual, worstRowRelError } from './helpers.mjs';

const configs = [
  { heads: 4, kvHeads: 4, headDim: 128, keyBits: 4, valueBits: 4, tokens: 300 },
  { heads: 8, kvHeads: 2, headDim: 64, keyBits: 3, valueBits: 2, window: 16, blockTokens: 32, tokens: 200 },
  { heads: 2, kvHeads: 1, headDim: 96, keyBits: 2, valueBits: 1, keyMethod: 'prod', tokens: 150 },
  { heads: 2, kvHeads: 2, headDim: 80, keyBits: 1, valueBits: 3, tokens: 97 },
  { heads: 4, kvHeads: 2, headDim: 128, keyBits: 6, valueBits: 5, normFormat: 'f32', tokens: 130 },
  { heads: 2, kvHeads: 1, headDim: 64, keyBits: 3.5, valueBits: 2.5, keyHighChannels: [...Array(32).keys()],
    valueHighChannels: [...Array(32).keys()], tokens: 100 },
];

test('SIMD128 build == scalar build: codes bit for bit, attention within 1e-4', async () => {
  const simd = await Tqkv.load({ simd: true });
  const scalar = await Tqkv.load({ simd: false });
  assert.equal(simd.kernel, 'wasm128');
  assert.equal(scalar.kernel, 'scalar');
  for (const [i, { tokens, ...cfg }] of configs.entries()) {
    const row = cfg.kvHeads * cfg.headDim, q = cfg.heads * cfg.headDim;
    const a = simd.createCache(cfg), b = scalar.createCache(cfg);
    // appended in uneven chunks (the window and block boundaries fall inside chunks)
    for (let t0 = 0, step = 1; t0 < tokens; t0 += step, step = step * 3 + 1) {
      const n = Math.min(step, tokens - t0);
      const k = stream(n * row, 100 + i * 10 + t0), v = stream(n * row, 200 + i * 10 + t0);
      a.append(0, k, v);
      b.append(0, k, v);
    }
    assert.ok(bytesEqual(a.serialize(), b.serialize()), `config ${i}: serialized caches differ`);
    const qs = stream(5 * q, 300 + i);
    const oa = a.attend(0, qs), ob = b.attend(0, qs);
    const err = worstRowRelError(oa, ob, cfg.headDim);
    assert.ok(err < 1e-4, `config ${i}: attention differs by ${err}`);
    a.dispose();
    b.dispose();
  }
  // codec bytes
  for (const [method, bits, dim] of [['mse', 4, 128], ['mse', 3, 100], ['prod', 3, 64], ['qjl', 1, 128], ['mse', 8, 48], ['mse', 2, 256]]) {
    const x = stream(50 * dim, dim + bits);
    x[0] = 0; // also a zero coordinate and extreme magnitudes
    x[dim] = 1e-30;
    x[2 * dim + 1] = 1000;
    const ca = simd.createCodec({ dim, bits, method }), cb = scalar.createCodec({ dim, bits, method });
    const codes = ca.encode(x);
    assert.ok(bytesEqual(codes, cb.encode(x)), `${method}${bits} d=${dim}: codes differ`);
    const da = ca.decode(codes), db = cb.decode(codes);
    assert.ok(worstRowRelError(da, db, dim) < 1e-5, `${method}${bits}: decode differs`);
    const sa = ca.dot(x.subarray(0, dim), codes), sb = cb.dot(x.subarray(0, dim), codes);
    for (let v = 0; v < sa.length; v++) assert.ok(Math.abs(sa[v] - sb[v]) <= 1e-4 * (Math.abs(sb[v]) + 1), `${method}${bits}: dot differs`);
    ca.dispose();
    cb.dispose();
  }
});

test('a cache serialized by one build loads in the other', async () => {
  const simd = await Tqkv.load({ simd: true });
  const scalar = await Tqkv.load({ simd: false });
  const cfg = { heads: 4, kvHeads: 2, headDim: 64, window: 8 };
  const a = simd.createCache(cfg);
  a.append(0, stream(100 * 128, 1), stream(100 * 128, 2));
  const b = scalar.deserialize(a.serialize());
  assert.ok(bytesEqual(b.serialize(), a.serialize()));
  const q = stream(256, 3);
  assert.ok(worstRowRelError(a.attend(0, q), b.attend(0, q), 64) < 1e-4);
  const c = simd.deserialize(b.serialize());
  assert.deepEqual(c.attend(0, q), a.attend(0, q));
  for (const x of [a, b, c]) x.dispose();
});
