// npm run bench: the fused attention of `tqkv-bench attend` (same shape: 4 heads, 4 KV heads,
// d = 128, K4 V4, one query token over all tokens, non-causal), timed for the relaxed-SIMD,
// SIMD128 and scalar wasm builds — in this Node process, or with --browser in Chromium (--browser firefox: Firefox, --browser webkit: WebKitGTK; the same
// code, bench/measure.mjs, in bench/page.html) — and natively by running ../build/bench/tqkv-bench
// in the same script run (its best kernel, and AVX2 when the CPU has it), each with precision
// 'fast' (the default) and 'exact'. One JSON object per line:
//   {"target":"wasm-relaxed"|"wasm-simd128"|"wasm-scalar"|"native", "heads", "kv_heads", "dim",
//    "tokens", "key_bits", "value_bits", "ns_per_query", "dense_fp32_ns_per_query", ...,
//    "spec", "preset" (null: rates given as bits), "precision" ("exact" | "fast"), "engine"}
// then one {"target":"ratio", "precision", ...} line per precision and token count with the speed
// ratios, among them the best wasm build's: best_wasm_variant, best_wasm_ns_per_query,
// best_wasm_speedup_vs_dense_fp32 (dense fp32 attention in the same module; ratio of the two
// medians), best_wasm_paired_speedup_vs_dense_fp32 (the two timed in alternating batches: median
// over rounds of dense / fused time, the row's paired_speedup_vs_dense_fp32, the steadier figure
// on a shared machine) and best_wasm_slowdown_vs_native_avx2 (native AVX2 at the same precision,
// in the same run), best_wasm_paired_slowdown_vs_native_avx2 (the best build and native AVX2
// timed in 5 alternating rounds of --seconds / 2 each: the median of the per-round ratios; the
// plain ratio compares two runs up to a minute apart, and on this project's shared VM it swung
// from 1.4 to 2.7 between runs of one build).
// Then, for each wasm build, the calibrated default cache (preset 'default', K3.5V2.5-w16:
// fractional rates, centred, exact window of 16; calibrated on the first 1024 tokens of the same
// keys/values) beside K4V4, both with 2 KV heads (grouped-query attention as in tq-ref-128), each
// with precision 'exact' and 'fast': rows with "preset":"default" and "spec":"K4V4", and a
// {"target":"ratio-default"} line per build and token count (default_slowdown_vs_k4v4 =
// ns_per_query default / K4V4, both exact; default_slowdown_vs_k4v4_fast, both fast;
// fast_speedup_vs_exact_default and _k4v4 = exact / fast; default_memory_vs_k4v4 = bytes_used
// ratio). --no-default skips them.
// Node 20 runs the relaxed module only with V8's --experimental-wasm-relaxed-simd, which this
// script turns on itself (a {"target":"wasm-relaxed","error"} line when that does not help);
// Chromium runs it as is.
//
// Then, with --threads N (default 2; 1 skips it), the best wasm build's threaded module
// (Tqkv.load({ threads: N }): N - 1 workers on a shared memory) and native AVX2 with --threads N,
// each at every precision: rows with "threads": N, and a {"target":"ratio-threads", "precision",
// "tokens", "threads", "wasm_variant", "wasm_ns_per_query", "wasm_speedup_vs_1_thread",
// "wasm_speedup_vs_dense_fp32" (dense fp32 attention on one thread, as tqkv-bench attend does),
// "native_avx2_ns_per_query" (N threads), "wasm_slowdown_vs_native_avx2"} line. Decode (below)
// likewise runs the best build again on N threads: decode rows with "threads": N and a
// {"target":"ratio-decode-threads", "fp32_speedup_vs_1_thread", "default_speedup_vs_1_thread",
// "default_speedup_vs_fp32"} line.
//
// Then decode of a real model (bench/measure.mjs: decodeRows; tq-ref-128 at ../shared/data, or
// $TQKV_MODEL; skipped with an error line when absent, or with --no-decode): the calibrated
// default cache against the exact fp32 cache, token by token at --context (default 1024, the
// last --steps 64 ids timed) in the best wasm build that loads (relaxed, else SIMD128), and
// natively (`tqkv-bench decode`, the same caches and context) in the same run:
//   {"target":"decode", "variant", "model", "config", "preset", "context", "steps",
//    "decode_tokens_per_s", "ms_per_token", "prefill_tokens_per_s", "bits_per_coord",
//    "speedup_vs_fp32" (default row: paired, fp32 time / default time), "speedup_vs_fp32_min", "engine"}
// (the native rows are tqkv-bench decode's JSON with "target":"decode", "variant":"native"), then
// {"target":"ratio-decode", "wasm_variant", "wasm_default_speedup_vs_fp32",
//  "native_default_speedup_vs_fp32", "wasm_slowdown_vs_native_default", "wasm_slowdown_vs_native_fp32"}.
//
// Then Codec.dot rows (bench/measure.mjs: codecDotRow): {"target":"codec-dot", "variant",
// "queries", "vectors", "dim", "bits", "per_query_calls_ns", "one_call_ns", "js_fp32_ns",
// "speedup_vs_js_fp32"}
//
//   node bench.mjs [--tokens 4096,16384] [--seconds 0.5] [--heads 4] [--kv-heads 4] [--dim 128]
//                  [--key-bits 4] [--value-bits 4] [--precision fast,exact] [--only codec|decode|attend]
//                  [--no-default] [--no-decode] [--context 1024] [--steps 64] [--browser [chromium|firefox|webkit]]
//                  [--threads 2] [--dist DIR (another build of dist/)]
// TQKV_BENCH=path/to/tqkv-bench overrides the native binary; CHROMIUM (default /usr/bin/chromium)
// the browser of --browser, FIREFOX (default /usr/bin/firefox-esr) that of --browser firefox, WEBKIT_DRIVER and WEBKIT_BROWSER (test/webdriver.mjs) those of --browser webkit.
import { existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { basename, resolve } from 'node:path';
import v8 from 'node:v8';
import { readFile } from 'node:fs/promises';
import { attendRows, codecDotRow, decodeRows, median } from './bench/measure.mjs';
import { defaultModelDir as modelDir, serve } from './demo/serve.mjs';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]?.startsWith('--') ? '' : all[i + 1] ?? '']] : acc), []),
);
const here = fileURLToPath(new URL('.', import.meta.url));
const { Tqkv } = await import(args.dist ? new URL(`file://${resolve(args.dist)}/node.js`).href : './dist/node.js');
const heads = +(args.heads ?? 4), kvHeads = +(args['kv-heads'] ?? heads), dim = +(args.dim ?? 128);
const keyBits = +(args['key-bits'] ?? 4), valueBits = +(args['value-bits'] ?? 4);
const tokens = String(args.tokens ?? '4096,16384').split(',').map(Number);
const seconds = +(args.seconds ?? 0.5);
const precisions = String(args.precision ?? 'fast,exact').split(',');
const shape = { heads, kvHeads, dim, keyBits, valueBits, tokens, seconds };
const known = ['tokens', 'seconds', 'heads', 'kv-heads', 'dim', 'key-bits', 'value-bits', 'precision', 'only', 'no-default',
  'no-decode', 'context', 'steps', 'browser', 'dist', 'threads'];
for (const k of Object.keys(args))
  if (!known.includes(k)) throw new Error(`bench: unknown option --${k}; accepted: ${known.map((o) => `--${o}`).join(', ')}`);
const threads = +(args.threads ?? 2);
if (!Number.isInteger(threads) || threads < 1 || threads > 64) throw new Error(`bench: --threads ${args.threads}: expected an integer from 1 to 64`);
const only = args.only ?? '';  // '' (all), 'codec', 'decode' or 'attend'
if (!['', 'codec', 'decode', 'attend'].includes(only)) throw new Error(`bench: --only ${only}: expected codec, decode or attend`);
const print = (row) => console.log(JSON.stringify(row));
const decodeShape = { model: basename(modelDir), context: +(args.context ?? 1024), steps: +(args.steps ?? 64), calibrationTokens: 2048 };
if (!Number.isInteger(decodeShape.context) || !Number.isInteger(decodeShape.steps) || decodeShape.steps < 1 || decodeShape.steps >= decodeShape.context)
  throw new Error(`bench: --context ${args.context ?? 1024} --steps ${args.steps ?? 64}: need integers with 1 <= steps < context`);

// Where the wasm rows are measured: this Node process, or a Chromium page.
let engine, closeEngine = async () => {};
if (args.browser !== undefined) {
  const which = args.browser || 'chromium';
  if (!['chromium', 'firefox', 'webkit'].includes(which)) throw new Error(`bench: --browser ${which}: accepted: chromium (the default), firefox, webkit`);
  const server = await serve([['/model/', modelDir], ['/', here]]);
  const url = `http://127.0.0.1:${server.address().port}/bench/page.html`;
  let browser, page;
  if (which === 'webkit') {
    // Debian's WebKitGTK (MiniBrowser, JavaScriptCore: Safari's engine) through its WebKitWebDriver
    // under xvfb-run (test/webdriver.mjs), with SharedArrayBuffer on as Safari has it in
    // cross-origin isolated pages.
    const { newSession, startWebKitDriver, webkitDriverPath } = await import('./test/webdriver.mjs');
    const { waitFor } = await import('./test/page-suite.mjs');
    if (!existsSync(webkitDriverPath)) throw new Error(`bench --browser webkit: no driver at ${webkitDriverPath} (apt-get install webkit2gtk-driver xvfb xauth, or set WEBKIT_DRIVER)`);
    const driver = await startWebKitDriver({ JSC_useSharedArrayBuffer: '1' });
    const session = await newSession(driver.url);
    await session.setScriptTimeout(1_800_000);
    await session.goto(url);
    await waitFor(session, 'return window.tqkvBenchReady === true ? true : null', 60_000);
    // window.tqkvBench[name](...args), awaited in the page.
    const call = (name, ...args) => session.executeAsync(`const done = arguments[arguments.length - 1];
      window.tqkvBench[arguments[0]](...arguments[1]).then(done, (e) => done({ error: String(e) }));`, name, args);
    page = {
      attendRows: (o) => call('attendRows', o),
      codecDotRow: (simd) => call('codecDotRow', simd, seconds),
      decodeRows: (o) => call('decodeRows', o),
    };
    browser = { close: async () => { await session.close(); driver.stop(); } };
  } else if (which === 'firefox') {
    // Debian's firefox-esr through puppeteer-core (WebDriver BiDi).
    const firefoxPath = process.env.FIREFOX || '/usr/bin/firefox-esr';
    const puppeteer = (await import('puppeteer-core').catch(() => {
      throw new Error('bench --browser firefox: puppeteer-core is not installed (npm ci in web/)');
    })).default;
    if (!existsSync(firefoxPath)) throw new Error(`bench --browser firefox: no browser at ${firefoxPath} (apt-get install firefox-esr, or set FIREFOX)`);
    browser = await puppeteer.launch({ browser: 'firefox', executablePath: firefoxPath, headless: true });
    page = await browser.newPage();
    await page.goto(url);
    await page.waitForFunction(() => window.tqkvBenchReady === true, { timeout: 60_000 });
  } else {
    const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
    const { chromium } = await import('playwright-core').catch(() => {
      throw new Error('bench --browser: playwright-core is not installed (npm ci in web/)');
    });
    if (!existsSync(chromiumPath)) throw new Error(`bench --browser: no browser at ${chromiumPath} (apt-get install chromium, or set CHROMIUM)`);
    // --no-liftoff: every function compiled by the optimizing tier up front, as in Node below.
    browser = await chromium.launch({ executablePath: chromiumPath, args: ['--js-flags=--no-liftoff'] });
    page = await browser.newPage();
    await page.goto(url);
    await page.waitForFunction(() => window.tqkvBenchReady === true, null, { timeout: 60_000 });
  }
  // (page.evaluate(fn, arg) is the same call in playwright and puppeteer.)
  engine = which === 'webkit' ? page : {
    attendRows: (o) => page.evaluate((o) => window.tqkvBench.attendRows(o), o),
    codecDotRow: (simd) => page.evaluate(([s, sec]) => window.tqkvBench.codecDotRow(s, sec), [simd, seconds]),
    decodeRows: (o) => page.evaluate((o) => window.tqkvBench.decodeRows(o), o),
  };
  closeEngine = async () => {
    await browser.close();
    server.close();
  };
} else {
  // Node 20 validates relaxed SIMD only with this V8 flag (set before any relaxed module is compiled).
  const { relaxedSimdSupported } = await import(args.dist ? new URL(`file://${resolve(args.dist)}/node.js`).href : './dist/node.js');
  if (!relaxedSimdSupported()) v8.setFlagsFromString('--experimental-wasm-relaxed-simd');
  // Every module compiled by the optimizing tier up front: with V8's default dynamic tiering, code
  // starts in the baseline compiler (Liftoff) and a hot function is recompiled in the background;
  // on a busy machine that took seconds, and the first variant timed (relaxed) took as long per
  // query at 4096 tokens as at 16384 (9-10 vs 10-12 ms). The time of compiling is not measured here.
  v8.setFlagsFromString('--no-liftoff');
  const label = `node ${process.versions.node} (V8 ${process.versions.v8})`;
  engine = {
    attendRows: (o) => attendRows(Tqkv, label, o),
    codecDotRow: (simd) => codecDotRow(Tqkv, simd, seconds),
    decodeRows: (o) => decodeRows(Tqkv, label, { ...o, modelUrl: pathToFileURL(modelDir + '/').href }, (u) => readFile(u)),
  };
}

// The rows of one wasm build and cache (printed as they come).
async function wasmTarget(variant, config) {
  const r = await engine.attendRows({ ...shape, variant, ...config });
  if (r.error) {
    print({ target: `wasm-${variant}`, precision: config.precision, error: r.error });
    return [];
  }
  r.rows.forEach(print);
  return r.rows;
}

const nativeBin = process.env.TQKV_BENCH || resolve(here, '../build/bench/tqkv-bench');

// tqkv-bench attend rows of the shape above (kernel '' = its best), or an error line.
function nativeRows(kernel, precision, tokenList = tokens, secs = seconds, nthreads = 1) {
  if (!existsSync(nativeBin)) return { error: `no native benchmark at ${nativeBin} (bash scripts/build.sh)` };
  const argv = ['attend', '--json', '--tokens', tokenList.join(','), '--seconds', String(secs), '--heads', String(heads),
    '--kv-heads', String(kvHeads), '--dim', String(dim), '--key-bits', String(keyBits), '--value-bits', String(valueBits),
    '--precision', precision];
  if (kernel) argv.push('--kernel', kernel);
  if (nthreads > 1) argv.push('--threads', String(nthreads));
  const r = spawnSync(nativeBin, argv, { encoding: 'utf8' });
  if (r.status !== 0) return { error: (r.stderr || r.stdout).trim().split('\n').pop() };
  return {
    rows: r.stdout.split('\n').filter((l) => l.startsWith('{'))
      .map((l) => ({ target: 'native', ...JSON.parse(l), spec: `K${keyBits}V${valueBits}`, preset: null, precision })),
  };
}

function nativeTarget(kernel, precision) {
  const r = nativeRows(kernel, precision);
  if (r.error) {
    print({ target: 'native', ...(kernel ? { kernel } : {}), precision, error: r.error });
    return [];
  }
  r.rows.forEach(print);
  return r.rows;
}

// The wasm build `variant` against native AVX2 at T tokens in alternating rounds (a wasm row,
// then a tqkv-bench run, 5 times, --seconds / 2 each): the median of the per-round ratios, or
// null when either side fails.
async function pairedSlowdownVsAvx2(variant, precision, T) {
  const ratios = [];
  for (let i = 0; i < 5; i++) {
    const w = await engine.attendRows({ ...shape, tokens: [T], seconds: seconds / 2, variant, kvHeads, precision });
    const n = nativeRows('avx2', precision, [T], seconds / 2);
    if (w.error || n.error || !w.rows.length || !n.rows.length) return null;
    ratios.push(w.rows[0].ns_per_query / n.rows[0].ns_per_query);
  }
  return +median(ratios).toFixed(3);
}

if (only === 'codec') {
  for (const simd of ['relaxed', true, false]) print(await engine.codecDotRow(simd));
  await closeEngine();
  process.exit(0);
}

const oneThread = {};  // precision -> the best SIMD build's rows on one thread (for ratio-threads)
for (const precision of only && only !== 'attend' ? [] : precisions) {
  const relaxed = await wasmTarget('relaxed', { kvHeads, precision });
  const simd = await wasmTarget('simd128', { kvHeads, precision });
  oneThread[precision] = relaxed.length ? { variant: 'relaxed', rows: relaxed } : { variant: 'simd128', rows: simd };
  const scalar = await wasmTarget('scalar', { kvHeads, precision });
  const native = nativeTarget('', precision);
  const nativeKernel = native[0]?.kernel;
  const avx2 = nativeKernel && nativeKernel !== 'avx2' ? nativeTarget('avx2', precision) : native;
  for (const T of tokens) {
    const s = simd.find((r) => r.tokens === T), c = scalar.find((r) => r.tokens === T);
    const x = relaxed.find((r) => r.tokens === T);
    const n = native.find((r) => r.tokens === T), a = avx2.find((r) => r.tokens === T);
    const best = [x, s, c].filter(Boolean).sort((p, q) => p.ns_per_query - q.ns_per_query)[0];
    if (!best) continue;
    const ratio = { target: 'ratio', tokens: T, precision, engine: best.engine };
    if (s && c) ratio.wasm_simd_speedup_vs_wasm_scalar = +(c.ns_per_query / s.ns_per_query).toFixed(3);
    if (s && n) ratio[`wasm_simd_slowdown_vs_native_${n.kernel}`] = +(s.ns_per_query / n.ns_per_query).toFixed(3);
    if (s && a && a !== n) ratio.wasm_simd_slowdown_vs_native_avx2 = +(s.ns_per_query / a.ns_per_query).toFixed(3);
    if (x) {
      if (s) ratio.wasm_relaxed_speedup_vs_wasm_simd = +(s.ns_per_query / x.ns_per_query).toFixed(3);
      if (n) ratio[`wasm_relaxed_slowdown_vs_native_${n.kernel}`] = +(x.ns_per_query / n.ns_per_query).toFixed(3);
      if (a && a !== n) ratio.wasm_relaxed_slowdown_vs_native_avx2 = +(x.ns_per_query / a.ns_per_query).toFixed(3);
    }
    ratio.best_wasm_variant = best.target;
    ratio.best_wasm_ns_per_query = best.ns_per_query;
    ratio.best_wasm_speedup_vs_dense_fp32 = best.speedup_vs_dense_fp32;
    ratio.best_wasm_paired_speedup_vs_dense_fp32 = best.paired_speedup_vs_dense_fp32;
    if (a) {
      ratio.best_wasm_slowdown_vs_native_avx2 = +(best.ns_per_query / a.ns_per_query).toFixed(3);
      const paired = await pairedSlowdownVsAvx2(best.target.slice('wasm-'.length), precision, T);
      if (paired !== null) ratio.best_wasm_paired_slowdown_vs_native_avx2 = paired;
    }
    print(ratio);
  }
}
// The best build's threaded module against itself on one thread and native AVX2 on as many threads.
if (threads > 1 && (!only || only === 'attend')) {
  for (const precision of precisions) {
    const { variant, rows: single } = oneThread[precision];
    const multi = await wasmTarget(variant, { kvHeads, precision, threads });
    const n = nativeRows('avx2', precision, tokens, seconds, threads);
    if (n.error) print({ target: 'native', kernel: 'avx2', threads, precision, error: n.error });
    else n.rows.forEach(print);
    for (const T of tokens) {
      const w = multi.find((r) => r.tokens === T), w1 = single.find((r) => r.tokens === T);
      const a = n.rows?.find((r) => r.tokens === T && r.threads === threads);
      if (!w) continue;
      print({ target: 'ratio-threads', precision, tokens: T, threads, wasm_variant: w.target, engine: w.engine,
        wasm_ns_per_query: w.ns_per_query, wasm_speedup_vs_1_thread: w1 ? +(w1.ns_per_query / w.ns_per_query).toFixed(3) : null,
        wasm_speedup_vs_dense_fp32: w.speedup_vs_dense_fp32, wasm_paired_speedup_vs_dense_fp32: w.paired_speedup_vs_dense_fp32,
        native_avx2_ns_per_query: a?.ns_per_query ?? null,
        wasm_slowdown_vs_native_avx2: a ? +(w.ns_per_query / a.ns_per_query).toFixed(3) : null });
    }
  }
}
// The calibrated default beside K4V4, 2 KV heads, per wasm build (interleaved per build so that
// both rows of a ratio are timed in the same minute of this loaded machine).
if (args['no-default'] === undefined && (!only || only === 'attend')) {
  for (const variant of ['relaxed', 'simd128', 'scalar']) {
    const k4 = await wasmTarget(variant, { kvHeads: 2, precision: 'exact' });
    const def = await wasmTarget(variant, { kvHeads: 2, preset: 'default', precision: 'exact' });
    const k4f = await wasmTarget(variant, { kvHeads: 2, precision: 'fast' });
    const deff = await wasmTarget(variant, { kvHeads: 2, preset: 'default', precision: 'fast' });
    for (const T of tokens) {
      const a = k4.find((r) => r.tokens === T), d = def.find((r) => r.tokens === T);
      const af = k4f.find((r) => r.tokens === T), df = deff.find((r) => r.tokens === T);
      if (!a || !d) continue;
      print({ target: 'ratio-default', variant: `wasm-${variant}`, tokens: T, kv_heads: 2, spec: d.spec, engine: d.engine,
        default_slowdown_vs_k4v4: +(d.ns_per_query / a.ns_per_query).toFixed(3),
        default_slowdown_vs_k4v4_fast: af && df ? +(df.ns_per_query / af.ns_per_query).toFixed(3) : null,
        fast_speedup_vs_exact_default: df ? +(d.ns_per_query / df.ns_per_query).toFixed(3) : null,
        fast_speedup_vs_exact_k4v4: af ? +(a.ns_per_query / af.ns_per_query).toFixed(3) : null,
        default_memory_vs_k4v4: +(d.bytes_used / a.bytes_used).toFixed(3),
        cosine_vs_exact_default: d.cosine_vs_exact, cosine_vs_exact_k4v4: a.cosine_vs_exact });
    }
  }
}
// Decode of the real model: the best wasm build that loads, then natively.
if (args['no-decode'] === undefined && (!only || only === 'decode')) {
  if (!existsSync(resolve(modelDir, 'config.json'))) {
    print({ target: 'decode', error: `no model at ${modelDir} (set TQKV_MODEL to a tq-ref-128 directory)` });
  } else {
    let wasm = null;
    for (const variant of ['relaxed', 'simd128']) {
      const r = await engine.decodeRows({ variant, ...decodeShape });
      if (r.error) {
        print({ target: 'decode', variant: `wasm-${variant}`, error: r.error });
        continue;
      }
      r.rows.forEach(print);
      wasm = r.rows;
      break;
    }
    let native = null;
    if (existsSync(nativeBin)) {
      const spec = wasm?.[1]?.config ?? 'K3.5V2.5-w16';
      const r = spawnSync(nativeBin, ['decode', '--json', '--model', modelDir, '--context', String(decodeShape.context),
        '--steps', String(decodeShape.steps), '--repeats', '3', '--config', `fp32,${spec}`], { encoding: 'utf8' });
      if (r.status !== 0) print({ target: 'decode', variant: 'native', error: (r.stderr || r.stdout).trim().split('\n').pop() });
      else {
        native = r.stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => ({ target: 'decode', variant: 'native', ...JSON.parse(l) }));
        native.forEach(print);
      }
    }
    if (wasm) {
      const ratio = { target: 'ratio-decode', wasm_variant: wasm[1].variant, context: decodeShape.context, engine: wasm[1].engine,
        wasm_default_speedup_vs_fp32: wasm[1].speedup_vs_fp32 };
      if (native?.length === 2) {
        ratio.native_default_speedup_vs_fp32 = +native[1].speedup_vs_fp32.toFixed(4);
        ratio.wasm_slowdown_vs_native_default = +(wasm[1].ms_per_token / native[1].ms_per_token).toFixed(3);
        ratio.wasm_slowdown_vs_native_fp32 = +(wasm[0].ms_per_token / native[0].ms_per_token).toFixed(3);
      }
      print(ratio);
      // The same build with --threads N: the runner's matrix products and attention on N threads.
      if (threads > 1) {
        const variant = wasm[1].variant.slice('wasm-'.length);
        const r = await engine.decodeRows({ variant, ...decodeShape, threads });
        if (r.error) print({ target: 'decode', variant: wasm[1].variant, threads, error: r.error });
        else {
          r.rows.forEach(print);
          print({ target: 'ratio-decode-threads', wasm_variant: wasm[1].variant, threads, context: decodeShape.context,
            engine: wasm[1].engine, fp32_speedup_vs_1_thread: +(wasm[0].ms_per_token / r.rows[0].ms_per_token).toFixed(3),
            default_speedup_vs_1_thread: +(wasm[1].ms_per_token / r.rows[1].ms_per_token).toFixed(3),
            default_speedup_vs_fp32: r.rows[1].speedup_vs_fp32 });
        }
      }
    }
  }
}
if (!only) for (const simd of ['relaxed', true, false]) print(await engine.codecDotRow(simd));
await closeEngine();
