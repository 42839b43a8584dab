// Firefox: Debian's firefox-esr driven by puppeteer-core over WebDriver BiDi runs the pages of
// browser.test.mjs (web/test-pages/, the package installed from its `npm pack` tarball) and the
// same checks: the codes equal Node's bit for bit, attention within 1e-4, for the build Firefox
// picks by itself, the threaded build (2 threads, also inside a module Web Worker), a page whose
// Content-Security-Policy refuses workers, the scalar build, and an IndexedDB round trip. Then the
// demo page (web/demo/) with tq-ref-128: the exact fp32 cache's 64 greedy bytes equal the native
// runner's, and the default cache generates; decode tokens/s of both printed (skipped without the
// model, as demo.browser.test.mjs).
//
// FIREFOX (default /usr/bin/firefox-esr) selects the browser; without it, or without
// puppeteer-core (npm ci in web/), the test is skipped.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { check, expected, packInstall, serveTestPages } from './browser-env.mjs';
import { serve as serveDemo, web } from '../demo/serve.mjs';
import { modelGolden } from './helpers.mjs';

const firefoxPath = process.env.FIREFOX || '/usr/bin/firefox-esr';
let puppeteer;
try {
  puppeteer = (await import('puppeteer-core')).default;
} catch {}
const skip = !existsSync(firefoxPath) ? `no browser at ${firefoxPath} (apt-get install firefox-esr)` : !puppeteer ? 'puppeteer-core not installed (npm ci in web/)' : false;

test('Firefox runs the packed package: its build, threads, a worker, CSP, scalar, IndexedDB, the demo', { skip, timeout: 300_000 }, async (t) => {
  const { work, pkg } = packInstall('tqkv-firefox-');
  const server = await serveTestPages(work);
  const base = `http://127.0.0.1:${server.address().port}/`;
  const browser = await puppeteer.launch({ browser: 'firefox', executablePath: firefoxPath, headless: true });
  after(async () => {
    await browser.close();
    server.close();
  });
  const want = { simd: await expected(true), scalar: await expected(false) };
  const relaxedPacked = existsSync(join(pkg, 'dist', 'tqkv-relaxed.wasm'));

  async function run(query, { fails = false } = {}) {
    const context = await browser.createBrowserContext();
    const page = await context.newPage();
    const logs = [];
    page.on('console', (m) => logs.push(m.text()));
    page.on('pageerror', (e) => logs.push(String(e)));
    await page.goto(base + query);
    await page.waitForFunction(() => window.__tqkvResult !== undefined, { timeout: 120_000 });
    const result = await page.evaluate(() => window.__tqkvResult);
    await context.close();
    if (!fails) {
      assert.ok(result.ok, `page failed: ${result.error}\n${logs.join('\n')}`);
      assert.equal(result.threadsAfterDispose, 1);
      assert.ok(result.sameAfterDispose, 'the same bits on one thread after dispose()');
    }
    return result;
  }

  await t.test('auto: the best build Firefox validates', async () => {
    const result = await run('index.html');
    assert.equal(result.simdSupported, true);
    assert.equal(result.variant, result.relaxedSimdSupported && relaxedPacked ? 'relaxed' : 'simd128');
    check(result, want.simd);
    console.log(`# firefox (${result.userAgent.match(/Firefox\/[\d.]+/)?.[0]}): ${result.variant}, relaxed SIMD ` +
      `${result.relaxedSimdSupported ? 'validated' : 'not validated'}, ${Math.round(result.nsPerQuery)} ns/query (8 heads, 2 KV heads, d=128, 1000 tokens)`);
  });

  await t.test('threads: 2, cross-origin isolated: the threaded build gives the same bits', async () => {
    const result = await run('index.html?threads=2');
    assert.equal(result.crossOriginIsolated, true);
    assert.equal(result.threads, 2);
    assert.equal(result.threaded, true);
    assert.equal(result.workers, 1, 'one worker entered the pool');
    check(result, want.simd);
    console.log(`# firefox ${result.variant}, 2 threads: ${Math.round(result.nsPerQuery)} ns/query`);
  });

  await t.test('in a module Web Worker with 2 threads', async () => {
    const result = await run('index.html?in=worker&threads=2');
    assert.equal(result.inWorker, true);
    assert.equal(result.threads, 2);
    assert.equal(result.workers, 1);
    check(result, want.simd);
  });

  await t.test("a Content-Security-Policy that refuses workers: 'auto' runs on one thread, 2 says why", async () => {
    const csp = encodeURIComponent("worker-src 'none'");
    const result = await run(`index.html?threads=auto&csp=${csp}`);
    assert.equal(result.threads, 1);
    check(result, want.simd);
    if (result.hardwareConcurrency > 1) assert.match(result.fallbacks.at(-1), /^threads: auto: 1 thread \(/);
    const failed = await run(`index.html?threads=2&csp=${csp}`, { fails: true });
    assert.equal(failed.ok, false);
    assert.match(failed.error, /tqkv: threads: .*worker/);
    console.log(`# firefox with worker-src 'none': threads 'auto' -> ${result.threads} (${result.fallbacks.at(-1)}); threads 2 -> ${failed.error.split('\n')[0]}`);
  });

  await t.test('scalar build forced (?simd=0)', async () => {
    const result = await run('index.html?simd=0');
    assert.equal(result.kernel, 'scalar');
    check(result, want.scalar);
  });

  await t.test('IndexedDB: a saved cache restores after a reload and continues exactly', async () => {
    const context = await browser.createBrowserContext();
    const page = await context.newPage();
    const get = async () => {
      await page.waitForFunction(() => window.__tqkvResult !== undefined, { timeout: 60_000 });
      const r = await page.evaluate(() => window.__tqkvResult);
      assert.ok(r.ok, `${r.phase}: ${r.error}`);
      return r;
    };
    await page.goto(base + 'persist.html?phase=save');
    const saved = await get();
    await page.goto(base + 'persist.html?phase=restore');
    const restored = await get();
    await context.close();
    assert.equal(restored.loadedBytes, saved.savedBytes);
    assert.deepEqual(restored.outA, saved.outA, 'attend after the restore == before the save, bit for bit');
    assert.deepEqual(restored.outB, saved.outB, 'appending after the restore continues identically');
    assert.equal(restored.hashB, saved.hashB);
    assert.equal(restored.afterRemove, true);
    if (saved.float16) assert.equal(saved.float16Equal, true, 'Float16Array input == its Uint16Array bits');
  });

  const g = await modelGolden();
  await t.test('the demo page: the exact cache gives the native runner\'s bytes; the default cache generates', { skip: g.skip ?? false }, async () => {
    const { golden, modelDir } = g;
    const demo = await serveDemo([['/model/', modelDir], ['/', web]]);
    const context = await browser.createBrowserContext();
    try {
      const page = await context.newPage();
      const logs = [];
      page.on('console', (m) => logs.push(m.text()));
      page.on('pageerror', (e) => logs.push(String(e)));
      await page.goto(`http://127.0.0.1:${demo.address().port}/demo/`);
      await page.waitForFunction(() => ['ready', 'error'].includes(window.tqkvDemo?.state), { timeout: 120_000 });
      const loaded = await page.evaluate(() => ({ state: window.tqkvDemo.state, error: window.tqkvDemo.error, model: window.tqkvDemo.model }));
      assert.equal(loaded.state, 'ready', `the page did not load the model: ${loaded.error}\n${logs.join('\n')}`);
      const generate = async (spec, n) => {
        // As a person would: the form's fields, then Generate (the page reads them on the click).
        await page.evaluate((spec, n, prompt) => {
          const set = (id, v) => {
            const el = document.getElementById(id);
            el.value = v;
            el.dispatchEvent(new Event('input', { bubbles: true }));
            el.dispatchEvent(new Event('change', { bubbles: true }));
          };
          set('prompt', prompt);
          set('cache', spec);
          set('tokens', String(n));
          set('temperature', '0');
        }, spec, n, golden.prompt);
        const runs = await page.evaluate(() => window.tqkvDemo.runs.length);
        await page.click('#generate');
        await page.waitForFunction((k) => window.tqkvDemo.runs.length > k && window.tqkvDemo.state === 'ready', { timeout: 120_000 }, runs);
        const run = await page.evaluate(() => window.tqkvDemo.runs.at(-1));
        assert.ok(!run.error, `${spec}: ${run.error}\n${logs.join('\n')}`);
        return run;
      };
      const exact = await generate('fp32', golden.greedy_bytes);
      assert.deepEqual(exact.tokens, golden.greedy_exact,
        `firefox ${JSON.stringify(exact.text)} vs native ${JSON.stringify(Buffer.from(golden.greedy_exact).toString())}`);
      const dflt = await generate('K3.5V2.5-w16', 48);
      assert.equal(dflt.tokens.length, 48);
      assert.ok(dflt.stats.cacheBytes < dflt.stats.fp16Bytes, `${dflt.stats.cacheBytes} bytes vs fp16 ${dflt.stats.fp16Bytes}`);
      console.log(`# firefox demo (${loaded.model.threads} threads): decode ${exact.decodeTokensPerSecond.toFixed(1)} tokens/s exact fp32, ` +
        `${dflt.decodeTokensPerSecond.toFixed(1)} default K3.5V2.5-w16`);
    } finally {
      await context.close();
      demo.close();
    }
  });
});
