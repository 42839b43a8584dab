// The Llama runner in WebAssembly (LlamaModel / Calibration / Runner over the C ABI's
// tqkv_model_* / tqkv_runner_*):
//   - a tiny random model built here: generation, logits, NLL, stats, errors, dispose, memory;
//   - the real model (../shared/data/tq-ref-128; skipped with a message when absent): the exact-
//     cache NLL over the first 1024 bytes of eval.txt equals the native runner's within 1e-4, and
//     64 greedy bytes with the exact cache equal the native runner's (model.json from the native
//     test binary, see helpers.mjs); K4V4 generates 64 bytes; the calibrated default cache
//     (K3.5V2.5-w16) gives the native NLL within 1e-4 over the same bytes (the same ΔNLL).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Tqkv, TqkvError, LlamaModel, Runner, Calibration } from '../dist/node.js';
import { modelGolden, safetensors, tinyModel } from './helpers.mjs';
import { serve } from '../demo/serve.mjs';

const throwsTqkv = (fn, code, message) =>
  assert.throws(fn, (e) => e instanceof TqkvError && e.code === code && (!message || message.test(e.message)), `expected ${code}`);

for (const simd of [true, false]) {
  test(`${simd ? 'simd' : 'scalar'}: tiny model: generate, logits, nll, stats, dispose`, async () => {
    const t = await Tqkv.load({ simd });
    assert.equal(t.matmulKernel, simd ? 'wasm128' : 'plain');
    const { config, weights } = tinyModel(3);
    const m = t.loadModel(config, weights);
    assert.ok(m instanceof LlamaModel);
    assert.deepEqual(m.info, { layers: 2, hidden: 64, heads: 4, kvHeads: 2, headDim: 32, intermediate: 48, vocab: 256,
      context: 128, tied: true, parameters: 256 * 64 + 64 + 2 * (2 * 64 + 128 * 64 + 2 * 64 * 64 + 64 * 128 + 3 * 48 * 64) });
    // the same model from the parsed config object and an ArrayBuffer
    const m2 = t.loadModel(JSON.parse(config), weights.slice().buffer);
    const r = m.createRunner('fp32');
    const r2 = m2.createRunner();
    assert.ok(r instanceof Runner);
    assert.equal(r.cache, 'fp32');
    const a = [...r.generate('Hello', { maxTokens: 20 })];
    assert.equal(a.length, 20);
    assert.deepEqual([...r2.generate('Hello', { maxTokens: 20 })], a);
    assert.equal(r.position, 5 + 19);
    // greedy = argmax of the logits; prefill of every token's logits; decode
    r.reset();
    assert.equal(r.position, 0);
    const all = new Float32Array(5 * 256);
    const next = r.prefill('Hello', all);
    const lastRow = all.subarray(4 * 256);
    assert.equal(next, lastRow.indexOf(Math.max(...lastRow)));
    assert.equal(next, a[0]);
    const one = new Float32Array(256);
    assert.equal(r.decode(next, one), a[1]);
    assert.equal(one.indexOf(Math.max(...one)), a[1]);
    // nll: mean of -log softmax(logits)[target] over the scored positions
    const text = 'The tiny model scores this text.';
    const { nll, scored } = r.nll(text);
    assert.equal(scored, text.length - 1);
    r.reset();
    const lg = new Float32Array(text.length * 256);
    r.prefill(text, lg);
    let sum = 0;
    for (let i = 0; i + 1 < text.length; i++) {
      const row = lg.subarray(i * 256, (i + 1) * 256);
      const mx = Math.max(...row);
      let se = 0;
      for (const x of row) se += Math.exp(x - mx);
      sum += Math.log(se) + mx - row[text.charCodeAt(i + 1)];
    }
    assert.ok(Math.abs(nll - sum / scored) < 1e-5, `${nll} vs ${sum / scored}`);
    assert.equal(r.nll(text, 8).scored, text.length - Math.ceil(text.length / 8));
    // stats: fp32 = 2x fp16; a compressed cache is smaller
    r.reset();
    r.prefill('0123456789');
    const s = r.stats();
    assert.equal(s.position, 10);
    assert.equal(s.fp16Bytes, 10 * 2 * 2 * 2 * 32 * 2);
    assert.equal(s.cacheBytes, 2 * s.fp16Bytes);
    assert.equal(s.bitsPerCoord, 32);
    assert.ok(s.memoryBytes > 0);
    const cal = m.calibrate('Some calibration text for the tiny model, a few dozen bytes long.');
    assert.ok(cal instanceof Calibration);
    const k = m.createRunner('K4V4', { calibration: cal });
    const b = [...k.generate('Hello', { maxTokens: 10 })];
    assert.equal(b.length, 10);
    assert.ok(k.stats().cacheBytes < k.stats().fp16Bytes / 3);
    // serialize / restore: a runner of the same model, spec and calibration continues exactly
    // (logits bit for bit); damaged bytes and caches that cannot be saved throw, nothing changes
    const saved = k.serialize();
    const k2 = m.createRunner('K4V4', { calibration: cal }).restore(saved);
    assert.equal(k2.position, k.position);
    assert.deepEqual(k2.serialize(), saved);
    const la = new Float32Array(256), lb = new Float32Array(256);
    k.decode(b.at(-1), la);
    k2.decode(b.at(-1), lb);
    assert.deepEqual(lb, la);
    throwsTqkv(() => r.serialize(), 'invalid argument', /cannot be saved/);
    const damaged = saved.slice();
    damaged[damaged.length >> 1] ^= 1;
    throwsTqkv(() => k2.restore(damaged), 'bad data', /CRC/);
    throwsTqkv(() => r.restore(saved), 'bad data', /cannot be restored/);
    assert.equal(k2.position, k.position);
    assert.throws(() => k2.restore('bytes'), TypeError);
    k2.dispose();
    // sampling: deterministic for a seed, different tokens from greedy at a high temperature
    r.reset();
    const s1 = [...r.generate('Hello', { maxTokens: 30, temperature: 1.5, seed: 7 })];
    r.reset();
    const s2 = [...r.generate('Hello', { maxTokens: 30, temperature: 1.5, seed: 7 })];
    assert.deepEqual(s1, s2);
    r.reset();
    assert.notDeepEqual(s1, [...r.generate('Hello', { maxTokens: 30 })]);
    // generation stops at the context (128 tokens)
    r.reset();
    const long = [...r.generate('x'.repeat(100), { maxTokens: 1000 })];
    assert.equal(long.length, 29);
    assert.equal(r.position, 128);
    throwsTqkv(() => r.decode(65), 'capacity exceeded', /context of 128 tokens/);
    // dispose: later calls throw, a second dispose does nothing; runners outlive their model
    m.dispose();
    m.dispose();
    assert.ok(m.disposed);
    throwsTqkv(() => m.createRunner('fp32'), 'invalid handle', /disposed/);
    k.reset();
    assert.equal([...k.generate('Hello', { maxTokens: 10 })].length, 10);
    cal.dispose();
    throwsTqkv(() => m2.createRunner('K4V4', { calibration: cal }), 'invalid handle', /disposed/);
    for (const x of [r, r2, k]) x.dispose();
    throwsTqkv(() => r.stats(), 'invalid handle', /disposed/);
    assert.ok(r.disposed);
    m2.dispose();
  });
}

test('tiny model: malformed files and bad arguments throw TqkvErrors, nothing changes', async () => {
  const t = await Tqkv.load({ simd: true });
  const { config, weights } = tinyModel(5);
  throwsTqkv(() => t.loadModel('{"hidden_size": 32', weights), 'bad data', /config\.json/);
  throwsTqkv(() => t.loadModel(config, weights.subarray(0, weights.length - 4)), 'bad data', /past the end/);
  throwsTqkv(() => t.loadModel(config, weights.subarray(0, 6)), 'bad data', /too short/);
  throwsTqkv(() => t.loadModel({ ...JSON.parse(config), num_hidden_layers: 3 }, weights), 'bad data', /model\.layers\.2\./);
  throwsTqkv(() => t.loadModel({ ...JSON.parse(config), hidden_act: 'gelu' }, weights), 'bad data', /gelu/);
  assert.throws(() => t.loadModel(config, 'not bytes'), TypeError);
  const m = t.loadModel(config, weights);
  throwsTqkv(() => m.createRunner('K9V9'), 'invalid argument', /cache spec/);
  throwsTqkv(() => m.createRunner('q5_0'), 'invalid argument', /cache spec/);
  assert.throws(() => m.createRunner(42), TypeError);
  const r = m.createRunner('q4_0');
  r.prefill('abc');
  throwsTqkv(() => r.prefill([65, 300]), 'invalid argument', /outside the vocabulary/);
  throwsTqkv(() => r.prefill([]), 'invalid argument', /no tokens/);
  throwsTqkv(() => r.prefill('abc', new Float32Array(100)), 'invalid argument', /logits/);
  throwsTqkv(() => r.decode(-1), 'invalid argument', /outside the vocabulary/);
  throwsTqkv(() => r.nll('a'), 'invalid argument', /at least 2 tokens/);
  throwsTqkv(() => m.calibrate(''), 'invalid argument', /no tokens/);
  assert.throws(() => r.decode(1.5), TypeError);
  assert.equal(r.position, 3, 'the failed calls changed nothing');
  assert.throws(() => m.tokens({}), TypeError);
  r.dispose();
  m.dispose();
});

test('sharded checkpoints: loadModel(shards) and fetchModel of an index (path and http) == the single file; bad sets refused', async () => {
  // Layer 1 in the second shard, the rest in the first, as Hugging Face splits by size. Cost: ~0.2 s.
  const t = await Tqkv.load({ simd: true });
  const { config, weights, tensors } = tinyModel(4);
  const names = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'];
  const inSecond = ([name]) => name.startsWith('model.layers.1.');
  const shards = [safetensors(tensors.filter((x) => !inSecond(x))), safetensors(tensors.filter(inSecond))];
  const index = JSON.stringify({ metadata: { total_size: weights.length }, weight_map: Object.fromEntries(tensors.map((x) => [x[0], names[inSecond(x) ? 1 : 0]])) });
  const logits = (m) => {
    const r = m.createRunner('fp32');
    const lg = new Float32Array(12 * 256);
    r.prefill('Hello shards', lg);
    r.dispose();
    m.dispose();
    return lg;
  };
  const want = logits(t.loadModel(config, weights));
  assert.deepEqual(logits(t.loadModel(config, shards)), want);
  assert.deepEqual(logits(t.loadModel(config, [shards[1], shards[0].slice().buffer])), want);
  const dup = safetensors(tensors.filter((x) => inSecond(x) || x[0] === 'model.norm.weight'));
  throwsTqkv(() => t.loadModel(config, [shards[0], dup]), 'bad data', /"model\.norm\.weight" is in two shards/);
  throwsTqkv(() => t.loadModel(config, [shards[0]]), 'bad data', /missing tensor "model\.layers\.1\./);
  throwsTqkv(() => t.loadModel(config, []), 'invalid argument', /1\.\.4096/);
  assert.throws(() => t.loadModel(config, [shards[0], 'x']), TypeError);
  // A directory without model.safetensors: the index's shards, from disk and over http.
  const dir = mkdtempSync(join(tmpdir(), 'tqkv-shards-'));
  const server = await serve([['/model/', dir]], 0);
  try {
    writeFileSync(join(dir, 'config.json'), config);
    writeFileSync(join(dir, 'model.safetensors.index.json'), index);
    names.forEach((n, i) => writeFileSync(join(dir, n), shards[i]));
    const url = `http://127.0.0.1:${server.address().port}/model/`;
    for (const where of [dir, url]) {
      const progress = [];
      const m = await t.fetchModel(where, { onProgress: (loaded, total) => progress.push([loaded, total]) });
      assert.deepEqual(logits(m), want, where);
      const bytes = shards[0].length + shards[1].length;
      assert.deepEqual(progress.at(-1), [bytes, bytes], where);
      assert.ok(progress.every(([l, tot], i) => tot >= l && (i === 0 || l >= progress[i - 1][0])), JSON.stringify(progress));
    }
    // A missing shard or a tensor the index places in the wrong shard: named, nothing loaded.
    rmSync(join(dir, names[1]));
    await assert.rejects(t.fetchModel(url), /404/);
    await assert.rejects(t.fetchModel(dir), /ENOENT|no such file/);
    writeFileSync(join(dir, names[1]), dup);
    await assert.rejects(t.fetchModel(dir), (e) => e instanceof TqkvError && /"model\.norm\.weight" is in two shards/.test(e.message));
    writeFileSync(join(dir, names[1]), safetensors(tensors.filter((x) => inSecond(x) && !x[0].endsWith('up_proj.weight'))));
    await assert.rejects(t.fetchModel(url), (e) => e instanceof TqkvError && /lacks tensor "model\.layers\.1\.mlp\.up_proj\.weight"/.test(e.message));
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { 'model.norm.weight': '../x.safetensors' } }));
    await assert.rejects(t.fetchModel(url), (e) => e instanceof TqkvError && /not a plain file name/.test(e.message));
    rmSync(join(dir, 'model.safetensors.index.json'));
    await assert.rejects(t.fetchModel(url), /neither model\.safetensors nor model\.safetensors\.index\.json/);
    assert.deepEqual(logits(t.loadModel(config, shards)), want, 'the instance is still usable');
  } finally {
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a model larger than maximumMemory fails with out of memory; the instance stays usable', async () => {
  const t = await Tqkv.load({ simd: true, maximumMemory: 16 << 20 });
  // 7.4 MB of fp32 weights: the staging copy fits, the loader's copy + the converted tensors do not
  const { config, weights } = tinyModel(9, { num_hidden_layers: 1, hidden_size: 256, head_dim: 64, intermediate_size: 2048 });
  assert.ok(weights.length > 6 << 20 && weights.length < 8 << 20, `${weights.length}`);
  throwsTqkv(() => t.loadModel(config, weights), 'out of memory');
  assert.ok(t.memoryBytes <= 16 << 20);
  // still usable
  const small = tinyModel(2);
  const m = t.loadModel(small.config, small.weights);
  const r = m.createRunner('K4V4');
  assert.equal([...r.generate('ok', { maxTokens: 4 })].length, 4);
  r.dispose();
  m.dispose();
});

// ---------------------------------------------------------------------------------------------
// The real model

const g = await modelGolden();
const skip = g.skip ?? false;
if (skip) console.log(`# model tests skipped: ${skip}`);

test('tq-ref-128 in wasm: exact-cache NLL and greedy text equal the native runner; K4V4 generates', { skip, timeout: 120_000 }, async () => {
  const { golden, modelDir } = g;
  const eval_ = readFileSync(join(modelDir, 'eval.txt'));
  const prompt = golden.prompt;
  const n = golden.greedy_bytes;
  assert.equal(n, 64);
  const results = {};
  for (const simd of [true, false]) {
    const t = await Tqkv.load({ simd });
    const t0 = performance.now();
    const m = await t.fetchModel(modelDir);
    const loadMs = performance.now() - t0;
    assert.equal(m.info.parameters, 19012096);
    const exact = m.createRunner('fp32');
    // greedy, timed: prefill, then the decode steps
    const timed = (runner) => {
      const out = [];
      let t1 = 0;
      for (const tok of runner.generate(prompt, { maxTokens: n })) {
        if (!out.length) t1 = performance.now();
        out.push(tok);
      }
      return { out, tokensPerSecond: (n - 1) / ((performance.now() - t1) / 1000) };
    };
    const ge = timed(exact);
    assert.deepEqual(ge.out, golden.greedy_exact,
      `${t.kernel}: wasm ${JSON.stringify(Buffer.from(ge.out).toString())} vs native ${JSON.stringify(Buffer.from(golden.greedy_exact).toString())}`);
    const r = { loadMs: Math.round(loadMs), memoryMB: +(t.memoryBytes / 2 ** 20).toFixed(1), exactTokensPerSecond: +ge.tokensPerSecond.toFixed(1) };
    if (simd) {
      // NLL over the first 1024 bytes (the scalar build takes ~10 s for it: SIMD only)
      const t2 = performance.now();
      const { nll, scored } = exact.nll(eval_.subarray(0, golden.nll_bytes));
      r.nllMs = Math.round(performance.now() - t2);
      assert.equal(scored, golden.scored);
      const diff = Math.abs(nll - golden.nll_exact);
      r.nll = nll;
      r.nativeNll = golden.nll_exact;
      r.nllDiff = diff;
      assert.ok(diff <= 1e-4, `wasm NLL ${nll} vs native ${golden.nll_exact}: |diff| ${diff}`);
      // K4V4 calibrated as tqkv-run does (the last 2048 bytes of eval.txt)
      const t3 = performance.now();
      const cal = m.calibrate(eval_.subarray(eval_.length - golden.calib_bytes));
      r.calibrationMs = Math.round(performance.now() - t3);
      const k4 = m.createRunner('K4V4', { calibration: cal });
      const gk = timed(k4);
      assert.equal(gk.out.length, 64);
      const stats = k4.stats();
      assert.equal(stats.position, new TextEncoder().encode(prompt).length + 63);
      assert.equal(stats.cacheBytes, golden.K4V4_cache_bytes);
      assert.equal(stats.fp16Bytes, golden.K4V4_fp16_bytes);
      r.k4TokensPerSecond = +gk.tokensPerSecond.toFixed(1);
      r.k4EqualsNative = gk.out.every((x, i) => x === golden.greedy_K4V4[i]);
      r.k4Text = Buffer.from(gk.out).toString();
      // The calibrated default cache over the same bytes with the same calibration: the native
      // runner's NLL (what `tqkv-bench ppl --bytes 1024 --calib-bytes 2048 --config K3.5V2.5-w16`
      // reports), i.e. the same ΔNLL against the exact cache.
      assert.ok(golden.nll_default !== undefined, 'model.json has no nll_default (native tests too old: rebuild)');
      const kd = m.createRunner(golden.default_spec, { calibration: cal });
      const t4 = performance.now();
      const d = kd.nll(eval_.subarray(0, golden.nll_bytes));
      r.defaultNllMs = Math.round(performance.now() - t4);
      r.defaultDeltaPct = +(100 * (d.nll / nll - 1)).toFixed(4);
      r.nativeDefaultDeltaPct = +(100 * (golden.nll_default / golden.nll_exact - 1)).toFixed(4);
      r.defaultNllDiff = Math.abs(d.nll - golden.nll_default);
      assert.equal(d.scored, golden.scored);
      // Both run the default precision, fast. Its integer tables round the float tables to 2^12
      // (or 2^8) levels, a step function of the query: the builds' forward passes differ in the last
      // float bits (the exact cache's NLL agrees within 1e-4), and where a table entry sits on a
      // rounding edge that becomes a step of the fast path's own size. So the agreement asked is
      // the fast path's allowance against exact: 0.02 percentage points of NLL (README, fast path).
      assert.ok(r.defaultNllDiff <= 2e-4 * golden.nll_default, `${golden.default_spec}: wasm NLL ${d.nll} vs native ${golden.nll_default}`);
      kd.dispose();
      k4.dispose();
      cal.dispose();
    }
    exact.dispose();
    m.dispose();
    results[t.kernel] = r;
  }
  console.log(`tq-ref-128 wasm vs native: ${JSON.stringify({ ...results, native: {
    decodeTokensPerSecondExact: +golden.native_decode_tokens_per_s_exact.toFixed(1),
    decodeTokensPerSecondK4V4: +golden.native_decode_tokens_per_s_K4V4.toFixed(1), matmul: golden.matmul } })}`);
});
