// The subtests the Firefox and WebKit tests share: the pages of web/test-pages/ (the package from
// its `npm pack` tarball) and the demo page with tq-ref-128, checked as browser.test.mjs checks them
// in Chromium. Each browser test gives a way to open a fresh page session:
//   open() -> { goto(url), evaluate(body, ...args) (a function body run in the page; arguments[i]
//              = args[i]), close(), logs (console lines, where the driver reports them) }
import assert from 'node:assert/strict';
import { check } from './browser-env.mjs';
import { serve as serveDemo, web } from '../demo/serve.mjs';
import { modelGolden } from './helpers.mjs';

/** Polls `body` in the page until it returns something other than null / undefined. */
export async function waitFor(session, body, timeoutMs, ...args) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await session.evaluate(body, ...args);
    if (v !== null && v !== undefined) return v;
    if (Date.now() > end) throw new Error(`no result within ${timeoutMs / 1000} s: ${body}\n${session.logs.join('\n')}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const pageResult = 'return window.__tqkvResult ?? null';

/**
 * Runs the shared subtests under `t`. name: 'firefox' | 'webkit' (log lines); base: the test pages'
 * URL; want: Node's results (browser-env.mjs expected()); relaxedPacked: the tarball has the relaxed build.
 * Returns run(query, { fails, open }) for a browser's own subtests.
 */
export async function pageSuite(t, { name, open, base, want, relaxedPacked }) {
  async function run(query, { fails = false, open: openPage = open } = {}) {
    const session = await openPage();
    try {
      await session.goto(base + query);
      const result = await waitFor(session, pageResult, 120_000);
      if (!fails) {
        assert.ok(result.ok, `page failed: ${result.error}\n${session.logs.join('\n')}`);
        assert.equal(result.threadsAfterDispose, 1);
        assert.ok(result.sameAfterDispose, 'the same bits on one thread after dispose()');
      }
      return result;
    } finally {
      await session.close();
    }
  }

  await t.test(`auto: the best build ${name} validates`, async () => {
    const result = await run('index.html');
    assert.equal(result.simdSupported, true);
    assert.equal(result.variant, result.relaxedSimdSupported && relaxedPacked ? 'relaxed' : 'simd128');
    check(result, want.simd);
    const version = result.userAgent.match(/Firefox\/[\d.]+|AppleWebKit\/[\d.]+/)?.[0] ?? result.userAgent;
    console.log(`# ${name} (${version}): ${result.variant}, relaxed SIMD ${result.relaxedSimdSupported ? 'validated' : 'not validated'}, ` +
      `${Math.round(result.nsPerQuery)} ns/query (8 heads, 2 KV heads, d=128, 1000 tokens)`);
  });

  await t.test('threads: 2, cross-origin isolated: the threaded build gives the same bits', async () => {
    const result = await run('index.html?threads=2');
    assert.equal(result.crossOriginIsolated, true);
    assert.equal(result.threads, 2);
    assert.equal(result.threaded, true);
    assert.equal(result.workers, 1, 'one worker entered the pool');
    check(result, want.simd);
    console.log(`# ${name} ${result.variant}, 2 threads: ${Math.round(result.nsPerQuery)} ns/query`);
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
    console.log(`# ${name} with worker-src 'none': threads 'auto' -> ${result.threads} (${result.fallbacks.at(-1)}); threads 2 -> ${failed.error.split('\n')[0]}`);
  });

  await t.test('scalar build forced (?simd=0)', async () => {
    const result = await run('index.html?simd=0');
    assert.equal(result.kernel, 'scalar');
    check(result, want.scalar);
  });

  await t.test('IndexedDB: a saved cache restores after a reload and continues exactly', async () => {
    const session = await open();
    try {
      const get = async () => {
        const r = await waitFor(session, pageResult, 60_000);
        assert.ok(r.ok, `${r.phase}: ${r.error}\n${session.logs.join('\n')}`);
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
      console.log(`# ${name} IndexedDB round trip: ${saved.savedBytes} bytes, ${saved.variant}; ` +
        `\`using\` ${saved.usingSyntax ? 'disposes' : 'is not in this engine'}, Float16Array ${saved.float16 ? 'equal to its bits' : 'absent'}`);
    } finally {
      await session.close();
    }
  });

  const g = await modelGolden();
  await t.test('the demo page: the exact cache gives the native runner\'s bytes; the default cache generates', { skip: g.skip ?? false }, async () => {
    const { golden, modelDir } = g;
    const demo = await serveDemo([['/model/', modelDir], ['/', web]]);
    const session = await open();
    try {
      await session.goto(`http://127.0.0.1:${demo.address().port}/demo/`);
      await waitFor(session, "return ['ready', 'error'].includes(window.tqkvDemo?.state) ? true : null", 120_000);
      const loaded = await session.evaluate('return { state: window.tqkvDemo.state, error: window.tqkvDemo.error ?? null, model: window.tqkvDemo.model }');
      assert.equal(loaded.state, 'ready', `the page did not load the model: ${loaded.error}\n${session.logs.join('\n')}`);
      const generate = async (spec, n) => {
        // As a person would: the form's fields, then Generate (the page reads them on the click).
        const runs = await session.evaluate(`
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
        await waitFor(session, 'return window.tqkvDemo.runs.length > arguments[0] && window.tqkvDemo.state === "ready" ? true : null', 120_000, runs);
        const run = await session.evaluate('return window.tqkvDemo.runs.at(-1)');
        assert.ok(!run.error, `${spec}: ${run.error}\n${session.logs.join('\n')}`);
        return run;
      };
      const exact = await generate('fp32', golden.greedy_bytes);
      assert.deepEqual(exact.tokens, golden.greedy_exact,
        `${name} ${JSON.stringify(exact.text)} vs native ${JSON.stringify(Buffer.from(golden.greedy_exact).toString())}`);
      const dflt = await generate('K3.5V2.5-w16', 48);
      assert.equal(dflt.tokens.length, 48);
      assert.ok(dflt.stats.cacheBytes < dflt.stats.fp16Bytes, `${dflt.stats.cacheBytes} bytes vs fp16 ${dflt.stats.fp16Bytes}`);
      console.log(`# ${name} demo (${loaded.model.threads} threads, ${loaded.model.variant}): decode ${exact.decodeTokensPerSecond.toFixed(1)} tokens/s exact fp32, ` +
        `${dflt.decodeTokensPerSecond.toFixed(1)} default K3.5V2.5-w16`);
    } finally {
      await session.close();
      demo.close();
    }
  });

  return run;
}
