// Calibrated caches through npm (issue 16 parts 1 and 3): a calibration from K/V samples a runtime
// already has, caches from specs and presets with it, save/load of calibrations (and of caches that
// carry its means), the SIMD128 and scalar builds coding them identically, errors for bad specs,
// conflicting options and hostile calibration bytes.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { Tqkv, TqkvError, Calibration } from '../dist/node.js';
import { builds, stream, bytesEqual, worstRowRelError, tinyModel } from './helpers.mjs';

const L = 2, H = 4, KH = 2, D = 64, ROW = KH * D, Q = H * D;
const shape = { layers: L, heads: H, kvHeads: KH, headDim: D };

// Keys and values with large per-channel offsets (what real models have, and what centring removes).
function kv(n, seed) {
  const k = stream(n * ROW, seed), v = stream(n * ROW, seed + 1);
  for (let i = 0; i < k.length; i++) {
    const c = i % ROW;
    k[i] = 0.5 * k[i] + 3 * Math.sin(c * 0.7);
    v[i] = 0.5 * v[i] + 2 * Math.cos(c * 0.3);
  }
  return { keys: k, values: v };
}
const samples = () => [kv(256, 1), kv(256, 3)];

test('presets and the spec grammar are listed', async () => {
  const t = await Tqkv.load();
  const presets = t.presets;
  assert.ok(presets.length >= 1);
  assert.ok(presets.some((p) => p.name === 'default'), JSON.stringify(presets));
  for (const p of presets) assert.ok(p.spec.length > 0 && p.summary.length > 0);
  assert.match(t.specGrammar, /K/);
});

for (const [name, opts] of builds) {
  describe(`${name} build`, () => {
    let t;
    test('loads', async () => {
      t = await Tqkv.load(opts);
    });

    test('calibrate from samples; the calibrated spec cache is closer to exact attention than plain TurboQuant', () => {
      const cal = t.calibrate({ layers: L, kvHeads: KH, headDim: D }, samples());
      assert.ok(cal instanceof Calibration);
      assert.deepEqual(cal.info, { layers: L, kvHeads: KH, headDim: D, minTokens: 256 });
      const calibrated = t.createCache({ ...shape, spec: 'K3.5V2.5-w16', calibration: cal });
      const preset = t.createCache({ ...shape, preset: 'default', calibration: cal });
      const plain = t.createCache({ ...shape, keyBits: 4, valueBits: 4 });
      const exact = t.createCache({ ...shape, window: 4096 });
      const cfg = calibrated.config;
      assert.deepEqual([cfg.keyBits, cfg.valueBits, cfg.window], [3.5, 2.5, 16]);
      assert.ok(cfg.keyHighChannels > 0);
      const T = 600;
      const { keys, values } = kv(T, 11);
      for (const c of [calibrated, preset, plain, exact]) c.append(1, keys, values);
      const q = stream(Q, 12);
      const want = exact.attend(1, q, undefined, false);
      const errCal = worstRowRelError(calibrated.attend(1, q, undefined, false), want, D);
      const errPlain = worstRowRelError(plain.attend(1, q, undefined, false), want, D);
      assert.ok(errCal < errPlain, `calibrated K3.5V2.5-w16 error ${errCal} vs plain K4V4 ${errPlain}`);
      console.log(`# ${name}: attention error vs exact: calibrated K3.5V2.5-w16 ${errCal.toFixed(4)}, plain K4V4 ${errPlain.toFixed(4)}`);
      // the cache carries the means: serialize -> deserialize attends identically for the next decode step
      const again = t.deserialize(calibrated.serialize());
      assert.deepEqual(again.attend(1, q), calibrated.attend(1, q));
      cal.dispose(); // caches keep what they need
      calibrated.append(1, keys.subarray(0, ROW), values.subarray(0, ROW));
      assert.equal(calibrated.tokens(1), T + 1);
      for (const c of [calibrated, preset, plain, exact, again]) c.dispose();
    });

    test('calibration bytes: round trip, same caches; hostile bytes rejected', () => {
      const cal = t.calibrate({ layers: L, kvHeads: KH, headDim: D }, samples());
      const bytes = cal.serialize();
      const back = t.loadCalibration(bytes);
      assert.ok(bytesEqual(back.serialize(), bytes));
      const a = t.createCache({ ...shape, spec: 'K3V2-w8', calibration: cal }), b = t.createCache({ ...shape, spec: 'K3V2-w8', calibration: back });
      const { keys, values } = kv(100, 21);
      a.append(0, keys, values);
      b.append(0, keys, values);
      assert.ok(bytesEqual(a.serialize(), b.serialize()));
      const bad = (x, re) => assert.throws(() => t.loadCalibration(x), (e) => e instanceof TqkvError && e.code === 'bad data' && (!re || re.test(e.message)));
      bad(bytes.subarray(0, bytes.length - 1));
      bad(new Uint8Array(0));
      const flipped = bytes.slice();
      flipped[bytes.length >> 1] ^= 1;
      bad(flipped);
      bad(new Uint8Array(4000).fill(7));
      assert.throws(() => t.loadCalibration([1, 2, 3]), TypeError);
      for (const x of [cal, back, a, b]) x.dispose();
    });

    test('spec / preset errors and conflicts', () => {
      const cal = t.calibrate({ layers: L, kvHeads: KH, headDim: D }, samples());
      const tq = (o, re, code = 'invalid argument') =>
        assert.throws(() => t.createCache({ ...shape, ...o }), (e) => e instanceof TqkvError && e.code === code && re.test(e.message));
      tq({ spec: 'K3.5V2.5-w16' }, /calibration/); // fractional rates need high channels
      tq({ spec: 'K9V9', calibration: cal }, /./);
      tq({ spec: 'q4_0' }, /baseline/);
      tq({ preset: 'no-such-preset' }, /./);
      tq({ spec: 'K4V4', calibration: t.calibrate({ layers: 1, kvHeads: KH, headDim: D }, [kv(10, 5)]) }, /./);
      assert.throws(() => t.createCache({ ...shape, spec: 'K4V4', keyBits: 3 }), /'keyBits' is decided by the spec/);
      assert.throws(() => t.createCache({ ...shape, spec: 'K4V4', preset: 'default' }), /spec or preset, not both/);
      assert.throws(() => t.createCache({ ...shape, calibration: cal }), /calibration needs a spec or preset/);
      assert.throws(() => t.createCache({ ...shape, spec: 'K4V4', calibration: {} }), /calibration must be a Calibration/);
      assert.throws(() => t.calibrate({ layers: L, kvHeads: KH, headDim: D }, [kv(10, 1)]), /1 samples for 2 layers/);
      assert.throws(() => t.calibrate({ layers: L, kvHeads: KH, headDim: D }, [{ keys: 1 }, {}]), TypeError);
      assert.throws(() => t.createCalibration({ layers: 2, kvHeads: 2, headDim: 64, heads: 4 }), /unknown option 'heads'/);
      assert.throws(() => cal.add(0, stream(ROW - 1, 1), stream(ROW - 1, 2)), TqkvError);
      const nan = stream(ROW, 1);
      nan[3] = NaN;
      assert.throws(() => cal.add(0, nan, stream(ROW, 2)), TqkvError);
      assert.equal(cal.info.minTokens, 256, 'failed adds added nothing');
      // a plain spec needs no calibration
      const plain = t.createCache({ ...shape, spec: 'K4V4' });
      assert.deepEqual([plain.config.keyBits, plain.config.valueBits], [4, 4]);
      plain.dispose();
      cal.dispose();
      assert.throws(() => cal.serialize(), /disposed/);
    });

    test("a model's calibration saves, loads and drives its runner the same", () => {
      const { config, weights } = tinyModel(6);
      const m = t.loadModel(config, weights);
      const cal = m.calibrate('Calibration text for the tiny model, a few dozen bytes long.');
      const back = t.loadCalibration(cal.serialize());
      const a = m.createRunner('K3.5V2.5-w16', { calibration: cal }), b = m.createRunner('K3.5V2.5-w16', { calibration: back });
      assert.deepEqual([...b.generate('Hello', { maxTokens: 12 })], [...a.generate('Hello', { maxTokens: 12 })]);
      for (const x of [a, b, cal, back, m]) x.dispose();
    });
  });
}

// Chunked prefill (issue 16 part 2): a runtime appends a chunk and attends its queries causally;
// each query must see what token-by-token decode shows it (the window before it exact, older
// tokens as codes), within the kernels' rounding. Tokens 0..299 with chunks crossing the window,
// blocks and the 32-token code groups; a calibrated fractional spec and a plain one.
test('chunked prefill == token-by-token decode within 1e-4, through npm', async () => {
  const t = await Tqkv.load();
  const cal = t.calibrate({ layers: L, kvHeads: KH, headDim: D }, samples());
  const T = 300, chunks = [37, 64, 1, 120, 78];
  const { keys, values } = kv(T, 41);
  const queries = stream(T * Q, 42);
  for (const [spec, calibration] of [['K3.5V2.5-w16', cal], ['K3V2-w8', undefined]]) {
    const byToken = t.createCache({ ...shape, spec, calibration });
    const want = new Float32Array(T * Q);
    for (let i = 0; i < T; i++) {
      byToken.append(0, keys.subarray(i * ROW, (i + 1) * ROW), values.subarray(i * ROW, (i + 1) * ROW));
      byToken.attend(0, queries.subarray(i * Q, (i + 1) * Q), want.subarray(i * Q, (i + 1) * Q));
    }
    const chunked = t.createCache({ ...shape, spec, calibration });
    const got = new Float32Array(T * Q);
    let t0 = 0;
    for (const n of chunks) {
      chunked.append(0, keys.subarray(t0 * ROW, (t0 + n) * ROW), values.subarray(t0 * ROW, (t0 + n) * ROW));
      chunked.attend(0, queries.subarray(t0 * Q, (t0 + n) * Q), got.subarray(t0 * Q, (t0 + n) * Q));
      t0 += n;
    }
    assert.equal(t0, T);
    const err = worstRowRelError(got, want, D);
    assert.ok(err < 1e-4, `${spec}: chunked prefill differs from token-by-token by ${err}`);
    // Against a cache whose chunk rows were coded before the queries saw them: clearly worse, so the
    // comparison above can fail (the window does matter for prefill queries).
    const coded = t.createCache({ ...shape, spec, calibration });
    const stale = new Float32Array(T * Q);
    for (let l = 0; l < L; l++) { // (truncate needs every layer to hold the tokens)
      coded.append(l, keys, values);
      coded.append(l, keys.subarray(0, ROW), values.subarray(0, ROW)); // drops the chunk's exact rows
    }
    coded.truncate(T);
    coded.attend(0, queries, stale);
    const staleErr = worstRowRelError(stale, want, D);
    console.log(`# ${spec}: chunked prefill vs token-by-token ${err.toExponential(2)}; with the chunk already coded ${staleErr.toFixed(4)}`);
    assert.ok(staleErr > 100 * err && staleErr > 1e-3, `${spec}: the window made no difference`);
    for (const c of [byToken, chunked, coded]) c.dispose();
  }
  cal.dispose();
});

test('SIMD128 == scalar: calibrations and calibrated caches bit for bit', async () => {
  const [s, c] = await Promise.all([Tqkv.load({ simd: true }), Tqkv.load({ simd: false })]);
  const cals = [s, c].map((t) => t.calibrate({ layers: L, kvHeads: KH, headDim: D }, samples()));
  assert.ok(bytesEqual(cals[0].serialize(), cals[1].serialize()));
  const caches = [s, c].map((t, i) => t.createCache({ ...shape, spec: 'K3.5V2.5-w16', calibration: cals[i] }));
  const { keys, values } = kv(300, 31);
  for (const x of caches) x.append(0, keys, values);
  assert.ok(bytesEqual(caches[0].serialize(), caches[1].serialize()));
  const q = stream(Q, 32);
  assert.ok(worstRowRelError(caches[0].attend(0, q), caches[1].attend(0, q), D) < 1e-4);
});

// createCache({ precision }): 'fast' (the default) computes attention on integer tables, 'exact' on
// float ones (the same codes); unknown values are rejected; a deserialized cache is 'fast' until
// setPrecision.
for (const [name, opts] of builds) {
  test(`${name} build: precision 'exact' | 'fast'`, async () => {
    const t = await Tqkv.load(opts);
    const cal = t.calibrate({ layers: L, kvHeads: KH, headDim: D }, samples());
    const make = (precision) => t.createCache({ preset: 'default', heads: H, kvHeads: KH, headDim: D, layers: L, calibration: cal,
      ...(precision ? { precision } : {}) });
    const ex = make('exact'), fa = make();
    assert.equal(ex.config.precision, 'exact');
    assert.equal(fa.config.precision, 'fast', 'the default');
    const { keys, values } = kv(300, 7);
    for (const c of [ex, fa]) c.append(0, keys, values);
    assert.ok(bytesEqual(ex.serialize(), fa.serialize()), 'the same codes');
    const q = stream(2 * Q, 9);
    const a = ex.attend(0, q), b = fa.attend(0, q);
    const err = worstRowRelError(b, a, D);
    assert.ok(err < 0.05, `fast vs exact: worst row error ${err}`);
    assert.ok(a.some((x, i) => x !== b[i]), 'fast computes differently (else the option does nothing)');
    for (const bad of ['medium', 'FAST', '', 1, null])
      assert.throws(() => t.createCache({ preset: 'default', heads: H, kvHeads: KH, headDim: D, calibration: cal, precision: bad }), (e) => e instanceof TypeError && /precision must be 'exact' or 'fast'/.test(e.message), String(bad));
    assert.throws(() => ex.setPrecision('approx'), TypeError);
    assert.equal(ex.config.precision, 'exact');
    const back = t.deserialize(ex.serialize());
    assert.equal(back.config.precision, 'fast', 'precision is not serialized: the default');
    const backFast = t.deserialize(fa.serialize());
    back.setPrecision('exact');
    backFast.setPrecision('exact');
    assert.equal(back.config.precision, 'exact');
    const before = back.attend(0, q);
    assert.deepEqual(before, backFast.attend(0, q), 'loaded, exact: the same codes, the same output');
    back.setPrecision('fast');
    backFast.setPrecision('fast');
    assert.equal(back.config.precision, 'fast');
    // (not compared with fa: a loaded cache codes the rows the last append kept exact beyond the window)
    const after = back.attend(0, q);
    assert.ok(after.some((x, i) => x !== before[i]), 'setPrecision changes the arithmetic');
    assert.deepEqual(after, backFast.attend(0, q), 'the same codes, fast: the same output');
    assert.ok(worstRowRelError(after, before, D) < 0.05);
    for (const c of [ex, fa, back, backFast]) c.dispose();
    cal.dispose();
  });
}
