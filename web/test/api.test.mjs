// Every API call and every error path, on the SIMD128 build and the scalar build.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { Tqkv, TqkvError, Status, simdSupported } from '../dist/node.js';
import { builds, stream, bytesEqual, worstRowRelError } from './helpers.mjs';

const H = 4, KH = 2, D = 64, ROW = KH * D, Q = H * D;

function throwsTqkv(fn, code, pattern) {
  assert.throws(fn, (e) => {
    assert.ok(e instanceof TqkvError, `expected a TqkvError, got ${e}`);
    assert.ok(e instanceof Error);
    assert.equal(e.code, code, e.message);
    if (pattern) assert.match(e.message, pattern);
    return true;
  });
}

test('feature detection and default instance', async () => {
  assert.equal(typeof simdSupported(), 'boolean');
  assert.equal(simdSupported(), true, 'node 20 supports SIMD128');
  const a = await Tqkv.load();
  const b = await Tqkv.load();
  assert.equal(a, b, 'Tqkv.load() without options shares one instance');
  assert.equal(Tqkv.default, a);
  assert.equal(a.simd, true);
  assert.equal(a.kernel, 'wasm128');
  assert.ok(a.memoryBytes >= 4 << 20);
});

for (const [name, opts] of builds) {
  describe(`${name} build`, () => {
    let t;
    test('loads', async () => {
      t = await Tqkv.load(opts);
      assert.equal(t.simd, name === 'simd');
      assert.equal(t.kernel, name === 'simd' ? 'wasm128' : 'scalar');
    });

    test('createCache, append, attend, tokens, bytesUsed, truncate, clear, config, kernel, dispose', () => {
      const c = t.createCache({ layers: 2, heads: H, kvHeads: KH, headDim: D, keyBits: 4, valueBits: 3, window: 8, blockTokens: 32 });
      assert.equal(c.layers, 2);
      assert.equal(c.kernel, t.kernel);
      const cfg = c.config;
      assert.deepEqual(
        [cfg.layers, cfg.heads, cfg.kvHeads, cfg.headDim, cfg.keyBits, cfg.valueBits, cfg.window, cfg.blockTokens, cfg.keyMethod, cfg.normFormat],
        [2, H, KH, D, 4, 3, 8, 32, 'mse', 'f16'],
      );
      assert.equal(typeof cfg.seed, 'bigint');
      assert.equal(c.tokens(0), 0);
      const empty = c.bytesUsed();
      assert.ok(empty > 0);
      const k = stream(100 * ROW, 1), v = stream(100 * ROW, 2);
      c.append(0, k, v);
      c.append(1, k.subarray(0, 60 * ROW), v.subarray(0, 60 * ROW));
      assert.equal(c.tokens(0), 100);
      assert.equal(c.tokens(1), 60);
      assert.ok(c.bytesUsed() > empty);

      // attend: causal chunk, non-causal, into a given array, a fresh array
      const q = stream(3 * Q, 3);
      const out = new Float32Array(3 * Q);
      const r = c.attend(0, q, out);
      assert.equal(r, out, 'attend returns the out array it was given');
      assert.ok(out.every(Number.isFinite));
      const fresh = c.attend(0, q);
      assert.deepEqual(fresh, out);
      const nc = c.attend(0, q, undefined, false);
      assert.notDeepEqual(nc, out, 'non-causal differs from causal for a chunk of 3');
      // the last causal query sees everything: equal to the non-causal one
      assert.ok(worstRowRelError(nc.subarray(2 * Q), out.subarray(2 * Q), D) < 1e-6);

      c.truncate(40);
      assert.equal(c.tokens(0), 40);
      assert.equal(c.tokens(1), 40);
      c.clear();
      assert.equal(c.tokens(0), 0);
      assert.equal(c.tokens(1), 0);
      c.append(0, k.subarray(0, ROW), v.subarray(0, ROW));
      assert.equal(c.tokens(0), 1);
      c.dispose();
      assert.equal(c.disposed, true);
      c.dispose(); // a second dispose is a no-op
      throwsTqkv(() => c.tokens(), 'invalid handle', /disposed/);
      throwsTqkv(() => c.append(0, k, v), 'invalid handle');
      throwsTqkv(() => c.attend(0, q), 'invalid handle');
      throwsTqkv(() => c.serialize(), 'invalid handle');
      throwsTqkv(() => c.bytesUsed(), 'invalid handle');
      throwsTqkv(() => c.truncate(0), 'invalid handle');
      throwsTqkv(() => c.clear(), 'invalid handle');
      throwsTqkv(() => c.kernel, 'invalid handle');
    });

    test('setAttentionWindow: old tokens dropped, kept by serialize, truncate refused below them', () => {
      const opts = { layers: 1, heads: H, kvHeads: KH, headDim: D, keyBits: 4, valueBits: 3, window: 8, blockTokens: 32 };
      const c = t.createCache(opts), plain = t.createCache(opts);
      c.setAttentionWindow(20);
      const k = stream(200 * ROW, 31), v = stream(200 * ROW, 32), q = stream(Q, 33);
      for (const x of [c, plain]) {
        x.append(0, k.subarray(0, 100 * ROW), v.subarray(0, 100 * ROW));
        for (let i = 100; i < 200; i++) x.append(0, k.subarray(i * ROW, (i + 1) * ROW), v.subarray(i * ROW, (i + 1) * ROW));
      }
      assert.equal(c.tokens(0), 200);
      assert.ok(2 * c.bytesUsed() < plain.bytesUsed(), 'dropped blocks are freed');
      const a = c.attend(0, q), b = plain.attend(0, q);
      assert.notDeepEqual(a, b, 'the window changes attention');
      const bytes = c.serialize();
      assert.ok(bytes.length < plain.serialize().length);
      const d = t.deserialize(bytes);
      d.setPrecision(c.config.precision);
      assert.deepEqual(d.attend(0, q), a);
      throwsTqkv(() => c.truncate(150), 'invalid argument', /dropped/);
      assert.equal(c.tokens(0), 200);
      throwsTqkv(() => c.setAttentionWindow(30), 'invalid argument', /dropped/);
      assert.throws(() => c.setAttentionWindow(-1), TypeError);
      c.clear();
      c.setAttentionWindow(30);
      for (const x of [c, plain, d]) x.dispose();
    });

    test('grouped-query attention against a direct computation on decoded vectors (window = all)', () => {
      // With a window covering every token, attention is exact: compare with a plain softmax.
      const c = t.createCache({ heads: H, kvHeads: KH, headDim: D, window: 64 });
      const T = 50, k = stream(T * ROW, 11), v = stream(T * ROW, 12), q = stream(Q, 13);
      c.append(0, k, v);
      const out = c.attend(0, q, undefined, false);
      const want = new Float32Array(Q);
      for (let h = 0; h < H; h++) {
        const kvh = Math.floor(h / (H / KH));
        const s = new Float64Array(T);
        let mx = -Infinity;
        for (let i = 0; i < T; i++) {
          let d = 0;
          for (let j = 0; j < D; j++) d += q[h * D + j] * k[i * ROW + kvh * D + j];
          s[i] = d / Math.sqrt(D);
          mx = Math.max(mx, s[i]);
        }
        let sum = 0;
        for (let i = 0; i < T; i++) sum += (s[i] = Math.exp(s[i] - mx));
        for (let j = 0; j < D; j++) {
          let a = 0;
          for (let i = 0; i < T; i++) a += s[i] * v[i * ROW + kvh * D + j];
          want[h * D + j] = a / sum;
        }
      }
      assert.ok(worstRowRelError(out, want, D) < 1e-5);
      c.dispose();
    });

    test('options: prod keys, fractional rates, f32 norms, seed, scale, kernel, maxTokens', () => {
      const high = Array.from({ length: 32 }, (_, i) => 2 * i);
      const c = t.createCache({
        heads: 2, kvHeads: 1, headDim: D, keyMethod: 'prod', keyBits: 3.5, valueBits: 2.5,
        keyHighChannels: high, valueHighChannels: high, normFormat: 'f32', seed: 42n, scale: 0.1,
        kernel: 'scalar', maxTokens: 1000,
      });
      const cfg = c.config;
      assert.equal(cfg.keyMethod, 'prod');
      assert.equal(cfg.keyBits, 3.5);
      assert.equal(cfg.normFormat, 'f32');
      assert.ok(Math.abs(cfg.scale - 0.1) < 1e-7);
      assert.equal(cfg.maxTokens, 1000);
      assert.equal(c.kernel, 'scalar');
      c.append(0, stream(70 * D, 5), stream(70 * D, 6));
      assert.ok(c.attend(0, stream(2 * D, 7)).every(Number.isFinite));
      c.dispose();
      // number seeds and bigint seeds give the same codes
      const a = t.createCache({ heads: 1, headDim: 32, seed: 7 }), b = t.createCache({ heads: 1, headDim: 32, seed: 7n });
      const k = stream(40 * 32, 8);
      a.append(0, k, k);
      b.append(0, k, k);
      assert.ok(bytesEqual(a.serialize(), b.serialize()));
      a.dispose();
      b.dispose();
    });

    test('bad configurations throw the library message and create nothing', () => {
      const bad = (o, code, re) => throwsTqkv(() => t.createCache({ heads: 4, headDim: 64, ...o }), code, re);
      bad({ kvHeads: 3 }, 'invalid argument', /kv_heads 3 must divide heads 4/);
      bad({ headDim: 2 }, 'invalid argument', /head_dim 2 out of range/);
      bad({ keyBits: 9 }, 'invalid argument', /keys:/);
      bad({ keyBits: NaN }, 'invalid argument', /finite/);
      bad({ valueBits: 2.5 }, 'invalid argument', /values:/);
      bad({ blockTokens: 40 }, 'invalid argument', /block_tokens/);
      bad({ window: 5000 }, 'invalid argument', /window/);
      bad({ layers: 0 }, 'invalid argument', /layers 0/);
      bad({ kernel: 'sse9' }, 'invalid argument', /unknown kernel/);
      bad({ maxTokens: 2 ** 40 }, 'invalid argument', /max_tokens/);
      assert.throws(() => t.createCache({ heads: 4.5, headDim: 64 }), TypeError);
      assert.throws(() => t.createCache({ heads: 4, headDim: 64, keyMethod: 'xyz' }), TypeError);
      assert.throws(() => t.createCache({ heads: 4, headDim: 64, normFormat: 'f8' }), TypeError);
      assert.throws(() => t.createCache(null), TypeError);
      assert.throws(() => t.createCache({ heads: 4, headDim: 64, kernel: 'é' }), RangeError);
    });

    test('append errors: wrong lengths, NaN, Inf, huge norms, types, layers, capacity; the cache is unchanged', () => {
      const c = t.createCache({ layers: 2, heads: H, kvHeads: KH, headDim: D, window: 4, maxTokens: 64 });
      const k = stream(50 * ROW, 21), v = stream(50 * ROW, 22);
      c.append(0, k, v);
      const before = c.serialize();
      throwsTqkv(() => c.append(0, k.subarray(0, ROW - 1), v.subarray(0, ROW - 1)), 'invalid argument', /kv_heads \* head_dim = 128/);
      throwsTqkv(() => c.append(0, k.subarray(0, ROW), v.subarray(0, 2 * ROW)), 'invalid argument', /values have 256 floats/);
      throwsTqkv(() => c.append(0, new Float32Array(0), new Float32Array(0)), 'invalid argument');
      const nan = k.slice(0, 2 * ROW);
      nan[ROW + 5] = NaN;
      throwsTqkv(() => c.append(0, nan, v.subarray(0, 2 * ROW)), 'invalid argument', /key of token 1, head 0, channel 5 is not finite/);
      const inf = v.slice(0, ROW);
      inf[70] = -Infinity;
      throwsTqkv(() => c.append(0, k.subarray(0, ROW), inf), 'invalid argument', /value of token 0, head 1, channel 6 is not finite/);
      const huge = k.slice(0, ROW).fill(1e5);
      throwsTqkv(() => c.append(0, huge, v.subarray(0, ROW)), 'invalid argument', /fp16/);
      throwsTqkv(() => c.append(2, k.subarray(0, ROW), v.subarray(0, ROW)), 'invalid argument', /layer 2 out of range/);
      throwsTqkv(() => c.append(-1, k.subarray(0, ROW), v.subarray(0, ROW)), 'invalid argument', /layer -1/);
      throwsTqkv(() => c.append(0, k.subarray(0, 20 * ROW), v.subarray(0, 20 * ROW)), 'capacity exceeded', /capacity of 64 tokens/);
      assert.throws(() => c.append(0, Array.from(k.subarray(0, ROW)), v.subarray(0, ROW)), TypeError);
      assert.throws(() => c.append(0, new Float64Array(ROW), v.subarray(0, ROW)), TypeError);
      assert.throws(() => c.append(0.5, k.subarray(0, ROW), v.subarray(0, ROW)), TypeError);
      assert.equal(c.tokens(0), 50);
      assert.ok(bytesEqual(c.serialize(), before), 'failed appends left the cache exactly as it was');
      c.append(0, k.subarray(0, 14 * ROW), v.subarray(0, 14 * ROW)); // up to the capacity
      throwsTqkv(() => c.append(0, k.subarray(0, ROW), v.subarray(0, ROW)), 'capacity exceeded');
      c.dispose();
    });

    test('attend errors: lengths, NaN, empty layer, too many causal queries, types', () => {
      const c = t.createCache({ layers: 2, heads: H, kvHeads: KH, headDim: D });
      c.append(0, stream(5 * ROW, 31), stream(5 * ROW, 32));
      const q = stream(Q, 33);
      throwsTqkv(() => c.attend(0, q.subarray(1)), 'invalid argument', /heads \* head_dim = 256/);
      throwsTqkv(() => c.attend(0, q, new Float32Array(Q + 1)), 'invalid argument', /out has 257 floats/);
      throwsTqkv(() => c.attend(1, q), 'invalid argument', /empty/);
      throwsTqkv(() => c.attend(0, stream(6 * Q, 34)), 'invalid argument', /6 causal queries but only 5 tokens/);
      const bad = q.slice();
      bad[3] = NaN;
      throwsTqkv(() => c.attend(0, bad), 'invalid argument', /query of token 0, head 0, channel 3 is not finite/);
      throwsTqkv(() => c.attend(7, q), 'invalid argument', /layer 7/);
      assert.throws(() => c.attend(0, Array.from(q)), TypeError);
      assert.throws(() => c.attend(0, q, new Float64Array(Q)), TypeError);
      const out = new Float32Array(Q).fill(123);
      throwsTqkv(() => c.attend(0, bad, out), 'invalid argument');
      assert.ok(out.every((x) => x === 123), 'a failed attend leaves out untouched');
      // 6 tokens non-causal is fine
      assert.ok(c.attend(0, stream(6 * Q, 34), undefined, false).every(Number.isFinite));
      c.dispose();
    });

    test('truncate errors', () => {
      const c = t.createCache({ layers: 2, heads: H, kvHeads: KH, headDim: D });
      c.append(0, stream(10 * ROW, 41), stream(10 * ROW, 42));
      throwsTqkv(() => c.truncate(11), 'invalid argument', /fewer than 11/);
      throwsTqkv(() => c.truncate(1), 'invalid argument'); // layer 1 holds 0 tokens
      assert.throws(() => c.truncate(-1), TypeError);
      assert.throws(() => c.truncate(1.5), TypeError);
      assert.equal(c.tokens(0), 10);
      c.truncate(0);
      assert.equal(c.tokens(0), 0);
      c.dispose();
    });

    test('serialize / deserialize round trip; bad bytes are rejected', () => {
      const c = t.createCache({ layers: 2, heads: H, kvHeads: KH, headDim: D, window: 8, keyBits: 3, valueBits: 2 });
      for (let l = 0; l < 2; l++) c.append(l, stream(77 * ROW, 51 + l), stream(77 * ROW, 61 + l));
      const bytes = c.serialize();
      assert.ok(bytes instanceof Uint8Array);
      assert.deepEqual(Array.from(bytes.subarray(0, 8)), Array.from(new TextEncoder().encode('TQKVCACH')));
      const d = t.deserialize(bytes);
      assert.ok(bytesEqual(d.serialize(), bytes));
      assert.deepEqual(d.config, c.config);
      // The next decode step attends identically; so does everything after the next append. (The
      // exact rows of the last appended chunk, kept for that chunk's own queries, are not saved:
      // a multi-query attend of that chunk right after a reload reads its older tokens as codes.)
      const q1 = stream(Q, 71);
      assert.deepEqual(d.attend(1, q1), c.attend(1, q1));
      for (const x of [c, d]) x.append(1, stream(5 * ROW, 72), stream(5 * ROW, 73));
      const q = stream(2 * Q, 74);
      assert.deepEqual(d.attend(1, q), c.attend(1, q));
      assert.ok(bytesEqual(d.serialize(), c.serialize()));
      const s = t.deserialize(bytes, 'scalar');
      assert.equal(s.kernel, 'scalar');
      throwsTqkv(() => t.deserialize(bytes, 'sse9'), 'invalid argument', /unknown kernel/);
      throwsTqkv(() => t.deserialize(new Uint8Array(0)), 'bad data', /truncated/);
      throwsTqkv(() => t.deserialize(bytes.subarray(0, bytes.length - 1)), 'bad data');
      const flipped = bytes.slice();
      flipped[Math.floor(bytes.length / 2)] ^= 0x40;
      throwsTqkv(() => t.deserialize(flipped), 'bad data', /CRC/);
      const magic = bytes.slice();
      magic[1] = 0;
      throwsTqkv(() => t.deserialize(magic), 'bad data', /magic/);
      const junk = new Uint8Array(5000).fill(0x5a);
      throwsTqkv(() => t.deserialize(junk), 'bad data');
      assert.throws(() => t.deserialize(Array.from(bytes)), TypeError);
      for (const x of [c, d, s]) x.dispose();
    });

    test('codecs: encode, decode, dot, teaching helpers, errors', () => {
      const codec = t.createCodec({ dim: 64, bits: 3 });
      assert.equal(codec.bytesPerVector, 2 + 24);
      assert.equal(codec.bitsPerCoord, (8 * 26) / 64);
      const x = stream(5 * 64, 81);
      const codes = codec.encode(x);
      assert.equal(codes.length, 5 * 26);
      const dec = codec.decode(codes);
      let err = 0, norm = 0;
      for (let i = 0; i < x.length; i++) (err += (x[i] - dec[i]) ** 2), (norm += x[i] ** 2);
      assert.ok(err / norm < 0.05, `relative mse ${err / norm}`);
      const scores = codec.dot(x.subarray(0, 64), codes);
      let self = 0;
      for (let j = 0; j < 64; j++) self += x[j] * dec[j];
      assert.ok(Math.abs(scores[0] - self) < 1e-3 * Math.abs(self));
      assert.deepEqual(t.encode(x, { dim: 64, bits: 3 }), codes);
      assert.deepEqual(t.decode(codes, { dim: 64, bits: 3 }), dec);
      const into = new Uint8Array(26);
      assert.equal(codec.encode(x.subarray(0, 64), into), into);
      throwsTqkv(() => codec.encode(x.subarray(0, 63)), 'invalid argument', /multiple of dim = 64/);
      throwsTqkv(() => codec.encode(x.subarray(0, 64), new Uint8Array(27)), 'invalid argument', /expected 26/);
      const nan = x.slice(0, 64);
      nan[9] = NaN;
      throwsTqkv(() => codec.encode(nan), 'invalid argument', /not finite|NaN/i);
      throwsTqkv(() => codec.decode(codes.subarray(0, 25)), 'invalid argument');
      const infNorm = codes.slice(0, 26);
      infNorm[0] = 0x00;
      infNorm[1] = 0x7c;
      throwsTqkv(() => codec.decode(infNorm), 'invalid argument');
      throwsTqkv(() => codec.dot(x.subarray(0, 63), codes), 'invalid argument', /dim = 64/);
      throwsTqkv(() => codec.dot(x.subarray(0, 64), codes, new Float32Array(4)), 'invalid argument');
      throwsTqkv(() => t.createCodec({ dim: 64, bits: 0 }), 'invalid argument');
      throwsTqkv(() => t.createCodec({ dim: 2 }), 'invalid argument');
      assert.throws(() => t.createCodec({ dim: 64, method: 'zzz' }), TypeError);
      for (const [method, bits] of [['prod', 4], ['qjl', 1], ['mse', 2.5]]) {
        const c2 = t.createCodec({ dim: 64, bits, method, highChannels: bits % 1 ? Array.from({ length: 32 }, (_, i) => i) : undefined, seed: 3n });
        assert.equal(c2.decode(c2.encode(x)).length, x.length);
        c2.dispose();
      }
      codec.dispose();
      codec.dispose();
      throwsTqkv(() => codec.encode(x), 'invalid handle', /disposed/);
    });

    test('dense fp32 baseline', () => {
      const shape = { heads: 4, kvHeads: 2, headDim: 32, tokens: 100 };
      const q = stream(128, 91), k = stream(2 * 100 * 32, 92), v = stream(2 * 100 * 32, 93);
      const out = t.denseAttention(shape, q, k, v);
      assert.equal(out.length, 128);
      assert.ok(out.every(Number.isFinite));
      throwsTqkv(() => t.denseAttention({ ...shape, heads: 3 }, q, k, v), 'invalid argument');
      throwsTqkv(() => t.denseAttention(shape, q, k, v.subarray(1)), 'invalid argument');
    });
  });
}

test('Tqkv.deserialize uses the default instance', async () => {
  const t = await Tqkv.load();
  const c = t.createCache({ heads: 2, headDim: 32 });
  c.append(0, stream(40 * 64, 1), stream(40 * 64, 2));
  const d = Tqkv.deserialize(c.serialize());
  assert.equal(d.tokens(), 40);
  c.dispose();
  d.dispose();
  assert.equal(Status.BAD_DATA, 5);
});
