// The SIMD128 build and the scalar build produce the same codes (serialized caches and codec
// bytes bit for bit) and attention outputs within 1e-4 relative.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tqkv } from '../dist/node.js';
import { stream, bytesEqual, worstRowRelError, parityConfigs as configs, appendParityTokens, parityCodecs, parityCodecInput } from './helpers.mjs';

test('SIMD128 build == scalar build: codes bit for bit, attention within 1e-4', async () => {
  const simd = await Tqkv.load({ simd: true });
  const scalar = await Tqkv.load({ simd: false });
  assert.equal(simd.kernel, 'wasm128');
  assert.equal(scalar.kernel, 'scalar');
  for (const [i, { tokens, ...cfg }] of configs.entries()) {
    const q = cfg.heads * cfg.headDim;
    const a = simd.createCache(cfg), b = scalar.createCache(cfg);
    appendParityTokens([a, b], cfg, tokens, i);
    assert.ok(bytesEqual(a.serialize(), b.serialize()), `config ${i}: serialized caches differ`);
    const qs = stream(5 * q, 300 + i);
    const oa = a.attend(0, qs), ob = b.attend(0, qs);
    const err = worstRowRelError(oa, ob, cfg.headDim);
    assert.ok(err < 1e-4, `config ${i}: attention differs by ${err}`);
    a.dispose();
    b.dispose();
  }
  // codec bytes
  for (const [method, bits, dim] of parityCodecs) {
    const x = parityCodecInput(dim, bits);
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
