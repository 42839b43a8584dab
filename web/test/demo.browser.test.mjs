// The demo page (web/demo/) in a real browser: Debian's Chromium driven by playwright-core loads
// web/demo/index.html from the local static server of web/demo/serve.mjs, which serves the model
// directory (../shared/data/tq-ref-128) at /model/. Like a person would, the test types the
// prompt, picks the cache, sets 64 bytes and clicks Generate: once with the exact fp32 cache,
// whose 64 greedy bytes must equal the native runner's (model.json, see helpers.mjs), once with
// K4V4, which must produce 64 bytes in less memory than fp16; then a reload, after which the
// calibration comes back from IndexedDB and K4V4 gives the same bytes. The page must show tokens/s
// and the cache bytes against fp16 while it generates (sampled at animation frames), not only at the end.
// Then the default cache (K3.5V2.5-w16): 48 bytes in one run; 32 bytes, whose session (runner
// position + cache) the page saves in IndexedDB; a reload restores it and Continue gives bytes
// 32..47 of the uninterrupted run (~5 s in all: short runs, one reload). Prints decode tokens/s
// with the default and the exact cache. Last, ?model=URL of a tiny checkpoint in two shards (no
// model.safetensors): the page reads the index, fetches both shards and generates (~1 s). Then
// ?model=URL of ../shared/data/tq-bpe-64 (a Llama with a byte-level BPE tokenizer.json, 8192 ids):
// the page encodes the prompt with that tokenizer and its greedy token ids and text equal those of
// the npm runner in Node (both SIMD128; ~3 s, most of it loading the 69 MB checkpoint twice).
// Last, a directory with a SentencePiece tokenizer.model (a tiny random model over its 259 byte-
// fallback pieces): BOS added, ids and streamed text as in Node (~1 s).
//
// Skipped with a message without a browser (CHROMIUM, default /usr/bin/chromium), playwright-core
// or the model; the tq-bpe-64 part without that model (TQKV_BPE_MODEL).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Tqkv, TokenStream } from '../dist/node.js';
import { serve, web } from '../demo/serve.mjs';
import { byteFallbackModel, modelGolden, safetensors, tinyModel } from './helpers.mjs';

const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
const bpeDir = process.env.TQKV_BPE_MODEL || resolve(fileURLToPath(new URL('.', import.meta.url)), '../../../shared/data/tq-bpe-64');
let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch {}
const g = await modelGolden();
const skip = !existsSync(chromiumPath)
  ? `no browser at ${chromiumPath} (apt-get install chromium)`
  : !chromium
    ? 'playwright-core not installed (npm ci in web/)'
    : g.skip ?? false;

// The ids the npm runner generates greedily with the fp32 cache after `ids`, up to n, stopping
// before an end-of-sequence id (what the page must show).
function greedyIds(model, ids, n) {
  const stop = new Set(model.endOfSequence);
  const out = [];
  for (const id of model.createRunner('fp32').generate(ids, { maxTokens: n })) {
    if (stop.has(id)) break;
    out.push(id);
  }
  return out;
}

test('demo page in Chromium: exact-cache output equals the native runner, K4V4 generates, speed and memory shown live',
  { skip, timeout: 180_000 }, async (t) => {
    const { golden, modelDir } = g;
    // A tiny byte-vocabulary model in two shards + model.safetensors.index.json (no model.safetensors).
    const sharded = mkdtempSync(join(tmpdir(), 'tqkv-demo-shards-'));
    const tiny = tinyModel(6);
    const shardNames = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'];
    const inSecond = ([name]) => name.startsWith('model.layers.1.');
    writeFileSync(join(sharded, 'config.json'), tiny.config);
    writeFileSync(join(sharded, shardNames[0]), safetensors(tiny.tensors.filter((x) => !inSecond(x))));
    writeFileSync(join(sharded, shardNames[1]), safetensors(tiny.tensors.filter(inSecond)));
    writeFileSync(join(sharded, 'model.safetensors.index.json'),
      JSON.stringify({ weight_map: Object.fromEntries(tiny.tensors.map((x) => [x[0], shardNames[inSecond(x) ? 1 : 0]])) }));
    // A tiny random model over a byte-fallback tokenizer.model (<unk> <s> </s>, 256 byte pieces).
    const spmDir = mkdtempSync(join(tmpdir(), 'tqkv-demo-spm-'));
    const spmModel = tinyModel(7, { vocab_size: 259 });
    writeFileSync(join(spmDir, 'config.json'), spmModel.config);
    writeFileSync(join(spmDir, 'model.safetensors'), spmModel.weights);
    writeFileSync(join(spmDir, 'tokenizer.model'), byteFallbackModel());
    const server = await serve([['/model/', modelDir], ['/sharded/', sharded], ['/bpe/', bpeDir], ['/spm/', spmDir], ['/', web]]);
    const base = `http://127.0.0.1:${server.address().port}/`;
    const browser = await chromium.launch({
      executablePath: chromiumPath,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
    });
    after(async () => {
      await browser.close();
      server.close();
      rmSync(sharded, { recursive: true, force: true });
      rmSync(spmDir, { recursive: true, force: true });
    });
    const page = await browser.newPage();
    const logs = [];
    page.on('console', (m) => logs.push(m.text()));
    page.on('pageerror', (e) => logs.push(String(e)));
    const requested = [];
    page.on('request', (r) => requested.push(new URL(r.url()).pathname));

    const t0 = Date.now();
    await page.goto(base + 'demo/');
    await page.waitForFunction(() => ['ready', 'error'].includes(window.tqkvDemo?.state), null, { timeout: 120_000 });
    const loaded = await page.evaluate(() => ({ state: window.tqkvDemo.state, error: window.tqkvDemo.error, model: window.tqkvDemo.model, kernel: window.tqkvDemo.kernel }));
    assert.equal(loaded.state, 'ready', `the page did not load the model: ${loaded.error}\n${logs.join('\n')}`);
    const loadMs = Date.now() - t0;
    assert.equal(loaded.kernel, 'wasm128');
    assert.equal(loaded.model.matmul, 'wasm128');
    assert.equal(loaded.model.parameters, 19012096);
    assert.ok(requested.includes('/model/config.json') && requested.includes('/model/model.safetensors'), requested.join(' '));
    // Chromium validates relaxed SIMD: the relaxed build when it is there, else SIMD128
    const relaxed = existsSync(new URL('../dist/tqkv-relaxed.wasm', import.meta.url));
    // The demo server makes the page cross-origin isolated and the demo asks threads: 'auto': the
    // threaded build on this machine's cores (at most 8).
    const threads = Math.min(8, (await import('node:os')).availableParallelism?.() ?? (await import('node:os')).cpus().length);
    assert.equal(loaded.model.threads, threads);
    const file = (relaxed ? '/dist/tqkv-relaxed' : '/dist/tqkv') + (threads > 1 ? '-mt.wasm' : '.wasm');
    assert.ok(requested.includes(file), requested.join(' '));
    assert.match(await page.textContent('#model-line'), threads > 1 ? new RegExp(`, ${threads} threads\\.`) : /, 1 thread\./);
    assert.match(await page.textContent('#model-line'), relaxed ? /WebAssembly relaxed SIMD/ : /WebAssembly SIMD128/);
    assert.match(await page.textContent('#model-line'), /19\.0 M parameters, 6 layers/);
    const tqkvVariant = relaxed ? 'relaxed SIMD' : 'SIMD128';
    assert.match(await page.textContent('#status'), /^ready/);

    async function generate(spec, n = golden.greedy_bytes, button = '#generate', prompt = golden.prompt) {
      if (button === '#generate') {
        await page.fill('#prompt', prompt);
        await page.selectOption('#cache', spec);
      }
      await page.fill('#tokens', String(n));
      await page.fill('#temperature', '0');
      const runs = await page.evaluate(() => window.tqkvDemo.runs.length);
      // Sample what a person sees: the displayed numbers at each animation frame while generating.
      await page.evaluate(() => {
        const seen = (window.__frames = []);
        const tick = () => {
          if (window.tqkvDemo.state === 'generating')
            seen.push({ tps: document.getElementById('tps').textContent, cache: document.getElementById('cache-bytes').textContent,
              position: document.getElementById('position').textContent, text: document.getElementById('out-text').textContent.length,
              replacement: document.getElementById('out-text').textContent.includes('\ufffd') });
          if (!window.__stopFrames) requestAnimationFrame(tick);
        };
        window.__stopFrames = false;
        requestAnimationFrame(tick);
      });
      const t1 = Date.now();
      await page.click(button);
      await page.waitForFunction((n) => window.tqkvDemo.runs.length > n && window.tqkvDemo.state === 'ready', runs, { timeout: 120_000 });
      const ms = Date.now() - t1;
      const run = await page.evaluate(() => window.tqkvDemo.runs.at(-1));
      const frames = await page.evaluate(() => { window.__stopFrames = true; return window.__frames; });
      const shown = {
        tps: await page.textContent('#tps'), cache: await page.textContent('#cache-bytes'), fp16: await page.textContent('#fp16-bytes'),
        ratio: await page.textContent('#ratio'), bits: await page.textContent('#bits'), position: await page.textContent('#position'),
        output: await page.textContent('#output'), status: await page.textContent('#status'),
      };
      assert.ok(!run.error, `${spec}: ${run.error}\n${logs.join('\n')}`);
      return { run, frames, shown, ms };
    }

    const results = {};
    await t.test('exact fp32 cache: 64 greedy bytes equal the native runner', async () => {
      const { run, frames, shown, ms } = await generate('fp32');
      assert.equal(run.cache, 'fp32');
      assert.equal(run.tokens.length, 64);
      assert.deepEqual(run.tokens, golden.greedy_exact,
        `browser ${JSON.stringify(run.text)} vs native ${JSON.stringify(Buffer.from(golden.greedy_exact).toString())}`);
      assert.equal(shown.output, golden.prompt + Buffer.from(golden.greedy_exact).toString());
      const promptBytes = Buffer.byteLength(golden.prompt);
      assert.equal(run.stats.position, promptBytes + 63);
      assert.equal(run.stats.cacheBytes, 2 * run.stats.fp16Bytes, 'fp32 is twice fp16');
      assert.match(shown.tps, /^\d+(\.\d)? tokens\/s$/);
      assert.ok(run.decodeTokensPerSecond > 0);
      assert.match(shown.ratio, /2\.00× larger/);
      assert.equal(shown.position, String(run.stats.position));
      assert.match(shown.status, /^done: 64 bytes with the fp32 cache/);
      results.fp32 = { tokensPerSecond: +run.decodeTokensPerSecond.toFixed(1), prefillTokensPerSecond: Math.round(run.prefillTokensPerSecond), ms, frames: frames.length };
      checkLive(frames, 'fp32');
    });

    await t.test('K4V4: 64 bytes, about 4x less memory than fp16', async () => {
      const { run, frames, shown, ms } = await generate('K4V4');
      assert.equal(run.cache, 'K4V4');
      assert.equal(run.tokens.length, 64);
      assert.ok(run.tokens.every((x) => Number.isInteger(x) && x >= 0 && x < 256));
      assert.equal(run.stats.cacheBytes, golden.K4V4_cache_bytes);
      assert.equal(run.stats.fp16Bytes, golden.K4V4_fp16_bytes);
      assert.ok(run.stats.bitsPerCoord > 4 && run.stats.bitsPerCoord < 4.2, `${run.stats.bitsPerCoord}`);
      assert.match(shown.ratio, /^3\.\d\d× smaller/);
      assert.match(shown.bits, /^4\.1\d bits per coordinate$/);
      assert.match(shown.cache, /KiB$/);
      assert.match(shown.fp16, /KiB$/);
      assert.match(shown.tps, /^\d+(\.\d)? tokens\/s$/);
      assert.match(shown.status, /calibrated in [\d.]+ s on the last 2048 bytes of eval\.txt/);
      const equal = run.tokens.every((x, i) => x === golden.greedy_K4V4[i]);
      results.K4V4 = { tokensPerSecond: +run.decodeTokensPerSecond.toFixed(1), ms, frames: frames.length, equalsNative: equal, text: run.text,
        tokens: run.tokens };
      checkLive(frames, 'K4V4');
    });

    await t.test('reload: the calibration comes back from IndexedDB, K4V4 generates the same bytes', async () => {
      await page.reload();
      await page.waitForFunction(() => ['ready', 'error'].includes(window.tqkvDemo?.state), null, { timeout: 120_000 });
      const { run, shown } = await generate('K4V4');
      const restored = await page.evaluate(() => window.tqkvDemo.calibrationRestored);
      assert.ok(restored > 0, 'a calibration was restored');
      assert.match(shown.status, /a calibration restored from IndexedDB \([\d.]+ (KiB|MiB|B)\)/);
      assert.deepEqual(run.tokens, results.K4V4.tokens, 'the same bytes as with the calibration computed before the reload');
      results.reload = { calibrationBytes: restored };
    });

    await t.test('default cache: the session is saved in IndexedDB, restored after a reload, and continues exactly', async () => {
      const spec = 'K3.5V2.5-w16';
      const full = await generate(spec, 48);
      assert.equal(full.run.tokens.length, 48);
      const { run, shown, ms } = await generate(spec, 32);
      results.default = { tokensPerSecond: +run.decodeTokensPerSecond.toFixed(1), ms };
      assert.deepEqual(run.tokens, full.run.tokens.slice(0, 32), 'greedy: the first 32 bytes of the 48-byte run');
      const saved = await page.evaluate(() => window.tqkvDemo.saved);
      const promptBytes = Buffer.byteLength(golden.prompt);
      assert.equal(saved?.spec, spec);
      assert.equal(saved.position, promptBytes + 31);
      assert.ok(saved.bytes > 0 && saved.bytes < saved.fp16Bytes, `saved ${saved.bytes} bytes, fp16 cache ${saved.fp16Bytes}`);
      assert.match(shown.status, /session saved \([\d.]+ KiB\)/);
      assert.match(await page.textContent('#saved'), /^saved in IndexedDB: [\d.]+ KiB for \d+ tokens \(an fp16 cache: [\d.]+ KiB\)$/);
      await page.reload();
      await page.waitForFunction(() => ['ready', 'error'].includes(window.tqkvDemo?.state), null, { timeout: 120_000 });
      const restored = await page.evaluate(() => window.tqkvDemo.restored);
      assert.deepEqual(restored, saved, 'the restored session is the saved one');
      assert.match(await page.textContent('#status'), new RegExp(`Restored the saved ${spec.replace('.', '\\.')} session \\(${saved.position} tokens`));
      assert.equal(await page.textContent('#output'), golden.prompt + run.text);
      assert.equal(await page.textContent('#position'), String(saved.position));
      const more = await generate(spec, 16, '#continue');
      assert.equal(more.run.continued, true);
      assert.deepEqual(more.run.tokens, full.run.tokens.slice(32, 48), 'after the reload: bytes 32..47 of the uninterrupted run');
      assert.equal(more.run.stats.position, promptBytes + 47);
      assert.equal(await page.textContent('#output'), golden.prompt + full.run.text);
      results.persisted = { savedBytes: saved.bytes, fp16Bytes: saved.fp16Bytes, position: saved.position };
      // Forget removes the session from IndexedDB (a reload would find nothing; not reloaded again: CI time).
      await page.click('#forget');
      await page.waitForFunction(() => window.tqkvDemo.saved === null);
      assert.equal(await page.textContent('#saved'), 'nothing saved');
      const left = await page.evaluate(() => new Promise((resolve, reject) => {
        const open = indexedDB.open('tqkv');
        open.onerror = () => reject(open.error);
        open.onsuccess = () => {
          const db = open.result;
          if (!db.objectStoreNames.contains('sessions')) return resolve(0);
          const req = db.transaction('sessions').objectStore('sessions').count();
          req.onsuccess = () => resolve(req.result);
          req.onerror = () => reject(req.error);
        };
      }));
      assert.equal(left, 0, 'no session left in IndexedDB');
    });

    await t.test('?model=URL of a sharded checkpoint: the index and both shards load, greedy bytes as the single file', async () => {
      // ~1 s: a 0.1 M-parameter model; what the single file gives comes from the Node build.
      const tq = await Tqkv.load({ simd: true });
      const single = tq.loadModel(tiny.config, tiny.weights);
      const want = [...single.createRunner('fp32').generate(golden.prompt, { maxTokens: 8 })];
      single.dispose();
      requested.length = 0;
      await page.goto(base + 'demo/?model=/sharded/');
      await page.waitForFunction(() => ['ready', 'error'].includes(window.tqkvDemo?.state), null, { timeout: 60_000 });
      const state = await page.evaluate(() => ({ state: window.tqkvDemo.state, error: window.tqkvDemo.error }));
      assert.equal(state.state, 'ready', `${state.error}\n${logs.join('\n')}`);
      for (const f of ['model.safetensors.index.json', ...shardNames]) assert.ok(requested.includes('/sharded/' + f), requested.join(' '));
      assert.match(await page.textContent('#model-line'), /0\.1 M parameters, 2 layers/);
      const { run } = await generate('fp32', 8);
      assert.deepEqual(run.tokens, want);
    });

    await t.test('?model=URL of a model with a BPE tokenizer.json (tq-bpe-64): greedy token ids and text equal the npm runner\'s', async (st) => {
      if (!existsSync(join(bpeDir, 'tokenizer.json')) || !existsSync(join(bpeDir, 'model.safetensors'))) {
        st.skip(`no ${bpeDir}/tokenizer.json + model.safetensors (TQKV_BPE_MODEL)`);
        return;
      }
      // The first greedy token is the first byte of an 'é' (0xC3), the second its last: the page must
      // show neither a U+FFFD nor lose the character (eval.txt has "Bjørn"; the model says "Bjé Lepberg").
      const prompt = 'Contact:\tBj';
      const n = 24;
      // What the npm runner gives in Node; the same module variant in both (?simd=1: SIMD128, as
      // Node 20 does not run relaxed SIMD).
      const tq = await Tqkv.load({ simd: true });
      const m = await tq.fetchModel(bpeDir);
      const ids = m.tokenizer.encode(prompt, { special: true });
      assert.deepEqual(m.endOfSequence, [0], 'config.json eos_token_id 0 = <|endoftext|>');
      const want = greedyIds(m, ids, n);
      const wantText = m.tokenizer.decode(want);
      m.dispose();
      requested.length = 0;
      const t1 = Date.now();
      await page.goto(base + 'demo/?model=/bpe/&simd=1');
      await page.waitForFunction(() => ['ready', 'error'].includes(window.tqkvDemo?.state), null, { timeout: 120_000 });
      const state = await page.evaluate(() => ({ state: window.tqkvDemo.state, error: window.tqkvDemo.error, model: window.tqkvDemo.model }));
      assert.equal(state.state, 'ready', `${state.error}\n${logs.join('\n')}`);
      assert.equal(state.model.variant, 'simd128');
      for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json'])
        assert.ok(requested.includes('/bpe/' + f), requested.join(' '));
      assert.deepEqual(state.model.tokenizer, { source: base + 'bpe/tokenizer.json', vocab: 8192, bos: -1, eos: 0, endOfSequence: [0] });
      assert.match(await page.textContent('#model-line'), /, tokenizer tokenizer\.json \(8192 ids, no BOS, stops at "<\|endoftext\|>" = 0\)\./);
      assert.equal(await page.textContent('#tokens-label'), 'Tokens');
      const { run, frames, shown } = await generate('fp32', n, '#generate', prompt);
      assert.deepEqual(run.tokens, want, `page ${JSON.stringify(run.text)} vs Node ${JSON.stringify(wantText)}`);
      assert.equal(run.text, wantText);
      assert.equal(shown.output, prompt + wantText);
      assert.equal(run.stats.position, ids.length + want.length - (want.length < n ? 0 : 1));
      assert.match(shown.status, want.length < n ? /^done: \d+ tokens with the fp32 cache \(end of sequence\)/ : new RegExp(`^done: ${n} tokens with the fp32 cache`));
      assert.ok(frames.every((f) => !f.replacement), 'no U+FFFD shown while generating');
      assert.ok(/^\u00e9/.test(wantText) && !wantText.includes('\ufffd'), `the reference text changed: ${JSON.stringify(wantText)}`);
      results.bpe = { ms: Date.now() - t1, promptTokens: ids.length, tokens: want.length, text: wantText,
        tokensPerSecond: +run.decodeTokensPerSecond.toFixed(1) };
    });

    await t.test('?model=URL of a directory with a SentencePiece tokenizer.model: BOS added, ids and streamed text as in Node', async () => {
      const prompt = 'Gr\u00fc\u00dfe, ';
      const n = 32;
      const tq = await Tqkv.load({ simd: true });
      const m = tq.loadModel(spmModel.config, spmModel.weights);
      m.tokenizer = tq.loadTokenizer(byteFallbackModel());
      const ids = m.tokenizer.encode(prompt, { special: true });
      assert.equal(ids[0], 1, 'BOS <s>');
      assert.deepEqual(m.endOfSequence, [2], '</s>');
      const want = greedyIds(m, ids, n);
      // Random weights: random bytes, U+FFFD where they are not UTF-8 (as Node's TokenStream shows them).
      const stream = new TokenStream(m.tokenizer, ids);
      const wantText = want.map((id) => stream.push(id)).join('') + stream.flush();
      m.dispose();
      requested.length = 0;
      await page.goto(base + 'demo/?model=/spm/&simd=1');
      await page.waitForFunction(() => ['ready', 'error'].includes(window.tqkvDemo?.state), null, { timeout: 60_000 });
      const state = await page.evaluate(() => ({ state: window.tqkvDemo.state, error: window.tqkvDemo.error, model: window.tqkvDemo.model }));
      assert.equal(state.state, 'ready', `${state.error}\n${logs.join('\n')}`);
      assert.ok(requested.includes('/spm/tokenizer.json') && requested.includes('/spm/tokenizer.model'), requested.join(' '));
      assert.deepEqual(state.model.tokenizer, { source: base + 'spm/tokenizer.model', vocab: 259, bos: 1, eos: 2, endOfSequence: [2] });
      assert.match(await page.textContent('#model-line'), /, tokenizer tokenizer\.model \(259 ids, BOS id 1, stops at id 2\)\./);
      const { run, shown } = await generate('fp32', n, '#generate', prompt);
      assert.deepEqual(run.tokens, want);
      assert.equal(run.text, wantText);
      assert.equal(shown.output, prompt + wantText);
      assert.equal(run.stats.position, ids.length + want.length - (want.length < n ? 0 : 1));
    });

    console.log(`chromium demo (model load ${loadMs} ms): ${JSON.stringify(results)}`);
    console.log(`chromium decode tokens/s, tq-ref-128 (${tqkvVariant}): default K3.5V2.5-w16 ${results.default?.tokensPerSecond} ` +
      `(32 bytes after the prompt), exact fp32 ${results.fp32?.tokensPerSecond} (64 bytes)`);
  });

// The numbers change while the text streams in: several animation frames saw partial output with
// different positions, and a speed once decoding had started.
function checkLive(frames, spec) {
  const positions = new Set(frames.map((f) => f.position));
  const partial = frames.filter((f) => f.text > 0 && f.text < 64);
  assert.ok(positions.size >= 3 && partial.length >= 2,
    `${spec}: the page did not update while generating (${frames.length} frames, positions ${[...positions].join(',')})`);
  assert.ok(frames.some((f) => /tokens\/s$/.test(f.tps)), `${spec}: no tokens/s shown while generating`);
  assert.ok(frames.some((f) => /(KiB|MiB|B)$/.test(f.cache)), `${spec}: no cache bytes shown while generating`);
}
