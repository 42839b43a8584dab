// WebKit, Safari's engine: Debian's WebKitGTK (MiniBrowser, JavaScriptCore) driven through its
// WebKitWebDriver (W3C WebDriver classic, test/webdriver.mjs) under xvfb-run runs the pages of
// browser.test.mjs (web/test-pages/, the package installed from its `npm pack` tarball) and the
// same checks: the codes equal Node's bit for bit, attention within 1e-4, for the build WebKit
// picks by itself (SIMD128 where the engine rejects relaxed SIMD, as Safari does), threads (on the
// page and in a module Web Worker), a page whose Content-Security-Policy refuses workers, an engine
// without SharedArrayBuffer, the scalar build, and an IndexedDB round trip.
//
// Safari gives cross-origin isolated pages SharedArrayBuffer; WebKitGTK's JavaScriptCore keeps it
// off unless its option useSharedArrayBuffer is set (JSC_useSharedArrayBuffer=1 in the browser's
// environment), so the threaded cases run with it and one case without. Then the demo page (web/demo/) with tq-ref-128: the
// exact fp32 cache's 64 greedy bytes equal the native runner's, and the default cache generates
// (skipped without the model, as demo.browser.test.mjs).
//
// WEBKIT_DRIVER (default /usr/bin/WebKitWebDriver, package webkit2gtk-driver) and WEBKIT_BROWSER
// (MiniBrowser) select them; without them, or without xvfb-run, the test is skipped.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { check, expected, packInstall, serveTestPages } from './browser-env.mjs';
import { serve as serveDemo, web } from '../demo/serve.mjs';
import { modelGolden } from './helpers.mjs';
import { miniBrowserPath, newSession, startWebKitDriver, webkitDriverPath } from './webdriver.mjs';

const hasXvfb = (() => {
  try {
    execFileSync('sh', ['-c', 'command -v xvfb-run'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();
const skip = !existsSync(webkitDriverPath) || !existsSync(miniBrowserPath)
  ? `no WebKitGTK driver at ${webkitDriverPath} or browser at ${miniBrowserPath} (apt-get install webkit2gtk-driver)`
  : !hasXvfb ? 'no xvfb-run (apt-get install xvfb xauth)' : false;

test('WebKit runs the packed package: its build, threads, a worker, CSP, scalar, IndexedDB, the demo', { skip, timeout: 420_000 }, async (t) => {
  const { work, pkg } = packInstall('tqkv-webkit-');
  const server = await serveTestPages(work);
  const base = `http://127.0.0.1:${server.address().port}/`;
  const driver = await startWebKitDriver({ JSC_useSharedArrayBuffer: '1' });
  let plainDriver;
  after(() => {
    driver.stop();
    plainDriver?.stop();
    server.close();
  });
  const want = { simd: await expected(true), scalar: await expected(false) };
  const relaxedPacked = existsSync(join(pkg, 'dist', 'tqkv-relaxed.wasm'));

  // Each page in a browser of its own (a new session), as the other browser tests use a new context.
  async function run(query, { fails = false, on = driver } = {}) {
    const session = await newSession(on.url);
    try {
      await session.goto(base + query);
      const result = await session.waitFor('return window.__tqkvResult ?? null', 120_000);
      if (!fails) {
        assert.ok(result.ok, `page failed: ${result.error}`);
        assert.equal(result.threadsAfterDispose, 1);
        assert.ok(result.sameAfterDispose, 'the same bits on one thread after dispose()');
      }
      return result;
    } finally {
      await session.close();
    }
  }

  let version = '';
  await t.test('auto: the best build WebKit validates', async () => {
    const result = await run('index.html');
    version = result.userAgent.match(/AppleWebKit\/[\d.]+/)?.[0] ?? result.userAgent;
    assert.equal(result.simdSupported, true);
    assert.equal(result.variant, result.relaxedSimdSupported && relaxedPacked ? 'relaxed' : 'simd128');
    check(result, want.simd);
    console.log(`# webkit (${version}): ${result.variant}, relaxed SIMD ${result.relaxedSimdSupported ? 'validated' : 'not validated'}, ` +
      `${Math.round(result.nsPerQuery)} ns/query (8 heads, 2 KV heads, d=128, 1000 tokens)`);
  });

  await t.test('the SIMD128 build forced (?simd=simd128): what Safari runs', async () => {
    const result = await run('index.html?simd=simd128');
    assert.equal(result.variant, 'simd128');
    check(result, want.simd);
  });

  await t.test('threads: 2, cross-origin isolated: the threaded build gives the same bits', async () => {
    const result = await run('index.html?threads=2');
    assert.equal(result.crossOriginIsolated, true);
    assert.equal(result.threads, 2);
    assert.equal(result.threaded, true);
    assert.equal(result.workers, 1, 'one worker entered the pool');
    check(result, want.simd);
    console.log(`# webkit ${result.variant}, 2 threads: ${Math.round(result.nsPerQuery)} ns/query`);
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
  });

  await t.test("an engine without SharedArrayBuffer (WebKitGTK's default): 'auto' runs on one thread, 2 says why", async () => {
    plainDriver = await startWebKitDriver();
    const result = await run('index.html?threads=auto', { on: plainDriver });
    assert.equal(result.threads, 1);
    check(result, want.simd);
    const failed = await run('index.html?threads=2', { fails: true, on: plainDriver });
    assert.equal(failed.ok, false);
    assert.match(failed.error, /tqkv: threads: 2 asked, but this engine has no SharedArrayBuffer/);
    console.log(`# webkit without SharedArrayBuffer: threads 'auto' -> ${result.threads} (${result.fallbacks.at(-1)}); threads 2 -> ${failed.error.split('\n')[0]}`);
  });

  await t.test('scalar build forced (?simd=0)', async () => {
    const result = await run('index.html?simd=0');
    assert.equal(result.kernel, 'scalar');
    check(result, want.scalar);
  });

  await t.test('IndexedDB: a saved cache restores after a reload and continues exactly', async () => {
    const session = await newSession(driver.url);
    try {
      const get = async () => {
        const r = await session.waitFor('return window.__tqkvResult ?? null', 60_000);
        assert.ok(r.ok, `${r.phase}: ${r.error}`);
        return r;
      };
      await session.goto(base + 'persist.html?phase=save');
      const saved = await get();
      await session.goto(base + 'persist.html?phase=restore');
      const restored = await get();
      assert.equal(restored.loadedBytes, saved.savedBytes);
      assert.deepEqual(restored.outA, saved.outA, 'attend after the restore == before the save, bit for bit');
      assert.deepEqual(restored.outB, saved.outB, 'appending after the restore continues identically');
      assert.equal(restored.hashB, saved.hashB);
      assert.equal(restored.afterRemove, true);
      if (saved.usingSyntax) assert.equal(saved.usingDisposed, true, '`using` disposed the cache');
      if (saved.float16) assert.equal(saved.float16Equal, true, 'Float16Array input == its Uint16Array bits');
      console.log(`# webkit IndexedDB round trip: ${saved.savedBytes} bytes, ${saved.variant}; ` +
        `\`using\` ${saved.usingSyntax ? 'disposes' : 'is not in this engine'}, Float16Array ${saved.float16 ? 'equal to its bits' : 'absent'}`);
    } finally {
      await session.close();
    }
  });

  const g = await modelGolden();
  await t.test('the demo page: the exact cache gives the native runner\'s bytes; the default cache generates', { skip: g.skip ?? false }, async () => {
    const { golden, modelDir } = g;
    const demo = await serveDemo([['/model/', modelDir], ['/', web]]);
    const session = await newSession(driver.url);
    try {
      await session.goto(`http://127.0.0.1:${demo.address().port}/demo/`);
      await session.waitFor("return ['ready', 'error'].includes(window.tqkvDemo?.state) ? true : null", 120_000);
      const loaded = await session.execute('return { state: window.tqkvDemo.state, error: window.tqkvDemo.error ?? null, model: window.tqkvDemo.model }');
      assert.equal(loaded.state, 'ready', `the page did not load the model: ${loaded.error}`);
      const generate = async (spec, n) => {
        // As a person would: the form's fields, then Generate (the page reads them on the click).
        const runs = await session.execute(`
          const [spec, n, prompt] = arguments;
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
          const runs = window.tqkvDemo.runs.length;
          document.getElementById('generate').click();
          return runs;`, spec, n, golden.prompt);
        await session.waitFor('return window.tqkvDemo.runs.length > arguments[0] && window.tqkvDemo.state === "ready" ? true : null', 120_000, runs);
        const run = await session.execute('return window.tqkvDemo.runs.at(-1)');
        assert.ok(!run.error, `${spec}: ${run.error}`);
        return run;
      };
      const exact = await generate('fp32', golden.greedy_bytes);
      assert.deepEqual(exact.tokens, golden.greedy_exact,
        `webkit ${JSON.stringify(exact.text)} vs native ${JSON.stringify(Buffer.from(golden.greedy_exact).toString())}`);
      const dflt = await generate('K3.5V2.5-w16', 48);
      assert.equal(dflt.tokens.length, 48);
      assert.ok(dflt.stats.cacheBytes < dflt.stats.fp16Bytes, `${dflt.stats.cacheBytes} bytes vs fp16 ${dflt.stats.fp16Bytes}`);
      console.log(`# webkit demo (${loaded.model.threads} threads, ${loaded.model.variant ?? ''}): decode ${exact.decodeTokensPerSecond.toFixed(1)} tokens/s exact fp32, ` +
        `${dflt.decodeTokensPerSecond.toFixed(1)} default K3.5V2.5-w16`);
    } finally {
      await session.close();
      demo.close();
    }
  });
});
