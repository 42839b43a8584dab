// wasm == native, bit for bit: golden files written by the native build in this test run
// (tests/test_capi.cpp, tag [golden], with TQKV_GOLDEN_DIR), compared with what both wasm builds
// produce from the same inputs; then the reverse: caches serialized by wasm load natively
// (tag [golden-load]); and a calibrated K3.5V2.5-w16 cache: calibration bytes, cache bytes and
// attention of the native build recomputed in wasm from the same keys and values.
//
// TQKV_GOLDEN_DIR: a directory with the golden files (wasm/test.sh makes it); otherwise the
// native test binary (TQKV_NATIVE_TESTS, default ../build/tests/tqkv_tests) writes them to a
// temporary directory. Without either the test is skipped with a message.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Tqkv } from '../dist/node.js';
import { stream, bytesEqual, worstRowRelError } from './helpers.mjs';

const here = fileURLToPath(new URL('.', import.meta.url));
const nativeTests = [process.env.TQKV_NATIVE_TESTS, resolve(here, '../../build/tests/tqkv_tests'),
  resolve(here, '../../build-capi/tests/tqkv_tests')].find((p) => p && existsSync(p));

let dir = process.env.TQKV_GOLDEN_DIR;
let skip = false;
if (!dir) {
  if (nativeTests) {
    dir = mkdtempSync(join(tmpdir(), 'tqkv-golden-'));
    const r = spawnSync(nativeTests, ['[golden]'], { env: { ...process.env, TQKV_GOLDEN_DIR: dir }, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`native golden writer failed:\n${r.stdout}\n${r.stderr}`);
  } else {
    skip = 'no golden files: set TQKV_GOLDEN_DIR or build the native tests (build/tests/tqkv_tests)';
  }
}

test('wasm codes == native codes bit for bit; native caches load in wasm and attend within 1e-4', { skip }, async () => {
  const files = readdirSync(dir);
  const caches = files.filter((f) => f.endsWith('.tqkv') && !f.endsWith('.wasm.tqkv') && !f.endsWith('.calibrated.tqkv'))
    .map((f) => f.slice(0, -5));
  const codecs = files.filter((f) => f.endsWith('.codes')).map((f) => f.slice(0, -6));
  assert.ok(caches.length >= 4 && codecs.length >= 3, `golden files missing in ${dir}: ${files}`);
  for (const simd of [true, false]) {
    const t = await Tqkv.load({ simd });
    for (const name of caches) {
      const native = new Uint8Array(readFileSync(join(dir, `${name}.tqkv`)));
      const nativeOut = new Float32Array(new Uint8Array(readFileSync(join(dir, `${name}.attend.f32`))).buffer);
      // 1. the native bytes load in wasm and re-serialize identically
      const loaded = t.deserialize(native);
      assert.ok(bytesEqual(loaded.serialize(), native), `${name}: re-serialized bytes differ`);
      const cfg = loaded.config;
      const q = cfg.heads * cfg.headDim, row = cfg.kvHeads * cfg.headDim;
      const qs = stream(4 * q, 77);
      const out = loaded.attend(cfg.layers - 1, qs);
      // The native cache attended right after its append, with the exact rows of that chunk, which
      // serialization does not keep: with a window, only the last query (the next decode step)
      // reads the same tokens exactly from the loaded bytes.
      const from = cfg.window > 0 ? 3 * q : 0;
      const err = worstRowRelError(out.subarray(from), nativeOut.subarray(from), cfg.headDim);
      assert.ok(err < 1e-4, `${name} (${t.kernel}): attention differs from native by ${err}`);
      // 2. the same appends in wasm give the native bytes
      const { layers, heads, kvHeads, headDim, keyBits, valueBits, keyMethod, window, blockTokens } = cfg;
      const fresh = t.createCache({ layers, heads, kvHeads, headDim, keyBits, valueBits, keyMethod, window, blockTokens });
      for (let l = 0; l < cfg.layers; l++) {
        const n = loaded.tokens(l);
        fresh.append(l, stream(n * row, 1000 + 2 * l), stream(n * row, 1001 + 2 * l));
      }
      const mine = fresh.serialize();
      assert.ok(bytesEqual(mine, native), `${name} (${t.kernel}): wasm codes differ from native`);
      const out2 = fresh.attend(cfg.layers - 1, qs);
      assert.ok(worstRowRelError(out2, nativeOut, cfg.headDim) < 1e-4);
      if (simd) writeFileSync(join(dir, `${name}.wasm.tqkv`), mine);
      loaded.dispose();
      fresh.dispose();
    }
    for (const name of codecs) {
      const [, method, bits, dim] = name.match(/^(mse|prod|qjl)(\d+)d(\d+)$/);
      const codec = t.createCodec({ method, bits: +bits, dim: +dim });
      const codes = codec.encode(stream(20 * +dim, 4242));
      assert.ok(bytesEqual(codes, new Uint8Array(readFileSync(join(dir, `${name}.codes`)))), `${name}: codec bytes differ`);
      codec.dispose();
    }
  }
});

test('caches serialized by wasm load natively (native [golden-load])', { skip: skip || (!nativeTests && 'no native test binary') }, () => {
  assert.ok(existsSync(join(dir, 'k4v4.wasm.tqkv')), 'run after the previous test');
  const r = spawnSync(nativeTests, ['[golden-load]'], { env: { ...process.env, TQKV_GOLDEN_DIR: dir }, encoding: 'utf8' });
  assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
  assert.match(r.stdout, /All tests passed/);
});

// Keys and values with channel offsets (what centring removes), as offset_kv() in tests/test_capi.cpp
// writes them: the stream plus an integer (keys) or half-integer (values) per channel, one float
// rounding, the same in both languages.
function offsetKV(seed, n, row) {
  const keys = stream(n * row, seed), values = stream(n * row, seed + 1);
  for (let i = 0; i < keys.length; i++) {
    keys[i] += ((i % row) % 7) - 3;
    values[i] += (((i % row) % 5) - 2) * 0.5;
  }
  return { keys, values };
}

test('calibrated K3.5V2.5-w16: wasm calibration and cache bytes == native; attention within 1e-4', { skip }, async () => {
  const read = (f) => new Uint8Array(readFileSync(join(dir, f)));
  assert.ok(existsSync(join(dir, 'k35v25w16.calibration')), `no calibrated golden files in ${dir} (native tests too old?)`);
  const nativeCal = read('k35v25w16.calibration'), nativeCache = read('k35v25w16.calibrated.tqkv');
  const nativeOut = new Float32Array(read('k35v25w16.calibrated.attend.f32').buffer);
  const layers = 2, heads = 4, kvHeads = 2, headDim = 128, row = kvHeads * headDim, q = heads * headDim;
  const shape = { layers, heads, kvHeads, headDim };
  const qs = stream(4 * q, 77);
  for (const simd of [true, false]) {
    const t = await Tqkv.load({ simd });
    const cal = t.calibrate({ layers, kvHeads, headDim }, [offsetKV(3000, 200, row), offsetKV(3002, 200, row)]);
    assert.ok(bytesEqual(cal.serialize(), nativeCal), `${t.kernel}: calibration bytes differ from native`);
    for (const c of [cal, t.loadCalibration(nativeCal)]) {
      const cache = t.createCache({ ...shape, spec: 'K3.5V2.5-w16', calibration: c });
      for (let l = 0; l < layers; l++) {
        const { keys, values } = offsetKV(1000 + 2 * l, 150, row);
        cache.append(l, keys, values);
      }
      assert.ok(bytesEqual(cache.serialize(), nativeCache), `${t.kernel}: calibrated cache bytes differ from native`);
      // Right after the append, as the native cache attended: every query within the tolerance.
      const err = worstRowRelError(cache.attend(layers - 1, qs), nativeOut, headDim);
      assert.ok(err < 1e-4, `${t.kernel}: calibrated attention differs from native by ${err}`);
      cache.dispose();
      c.dispose();
    }
    // The native bytes load (means, channels, debias flags included) and attend like native for
    // the next decode step (the last query: the chunk's exact rows are not serialized).
    const loaded = t.deserialize(nativeCache);
    assert.ok(bytesEqual(loaded.serialize(), nativeCache));
    assert.deepEqual([loaded.config.keyBits, loaded.config.valueBits, loaded.config.window], [3.5, 2.5, 16]);
    const err = worstRowRelError(loaded.attend(layers - 1, qs).subarray(3 * q), nativeOut.subarray(3 * q), headDim);
    assert.ok(err < 1e-4, `${t.kernel}: loaded calibrated cache attends ${err} from native`);
    loaded.dispose();
  }
});
