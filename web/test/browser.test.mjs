// A real browser: Debian's Chromium driven by playwright-core loads web/test-pages/index.html
// from a local static server, with the package installed from the `npm pack` tarball (as a user
// would), runs append/attend/serialize there and reports back. Checked: the browser's codes equal
// Node's bit for bit (hash of the serialized cache), attention within 1e-4; once with SIMD128,
// once forced to the scalar build (?simd=0), and once on an engine that reports no SIMD128 (the
// SIMD module unreachable, WebAssembly.validate rejecting SIMD): the loader falls back by itself.
//
// CHROMIUM (default /usr/bin/chromium) selects the browser; without it the test is skipped.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { check, expected, packInstall, serveTestPages } from './browser-env.mjs';

const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch {}
const skip = !existsSync(chromiumPath) ? `no browser at ${chromiumPath} (apt-get install chromium)` : !chromium ? 'playwright-core not installed (npm ci in web/)' : false;

test('Chromium runs the packed package: builds, fallback without SIMD, IndexedDB persistence', { skip, timeout: 180_000 }, async (t) => {
  // The package as installed from the tarball.
  const { work, pkg } = packInstall('tqkv-browser-');
  const server = await serveTestPages(work);
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
  });
  const want = { simd: await expected(true), scalar: await expected(false) };
  assert.equal(want.simd.hash, want.scalar.hash, 'SIMD and scalar builds serialize identically in Node');

  async function run(query, { noSimd = false, fails = false } = {}) {
    const context = await browser.newContext();
    const page = await context.newPage();
    const requested = [];
    const logs = [];
    page.on('console', (m) => logs.push(m.text()));
    page.on('pageerror', (e) => logs.push(String(e)));
    page.on('request', (r) => requested.push(new URL(r.url()).pathname));
    if (noSimd) {
      // An engine without SIMD128: feature detection says no, and the SIMD module cannot load.
      await page.addInitScript(() => {
        const validate = WebAssembly.validate;
        WebAssembly.validate = (bytes) => {
          const b = new Uint8Array(bytes instanceof ArrayBuffer ? bytes : bytes.buffer);
          for (let i = 0; i + 1 < b.length; i++) if (b[i] === 0xfd) return false; // SIMD opcode prefix
          return validate.call(WebAssembly, bytes);
        };
      });
      await page.route('**/tqkv.wasm', (route) => route.fulfill({ status: 404, body: 'no SIMD here' }));
    }
    await page.goto(base + query);
    await page.waitForFunction(() => window.__tqkvResult !== undefined, null, { timeout: 120_000 });
    const result = await page.evaluate(() => window.__tqkvResult);
    const status = await page.textContent('#status');
    await context.close();
    if (fails) return { result, requested, status };
    assert.ok(result.ok, `page failed: ${result.error}\n${logs.join('\n')}`);
    assert.equal(result.threadsAfterDispose, 1);
    assert.ok(result.sameAfterDispose, 'the same bits on one thread after dispose()');
    return { result, requested, status };
  }

  const relaxedPacked = existsSync(join(pkg, 'dist', 'tqkv-relaxed.wasm'));
  await t.test('auto: relaxed SIMD when packaged, else SIMD128', async () => {
    const { result, requested, status } = await run('index.html');
    assert.equal(result.simdSupported, true);
    assert.equal(result.relaxedSimdSupported, true, 'Chromium validates relaxed SIMD');
    assert.equal(result.simd, true);
    assert.ok(!requested.includes('/node_modules/tqkv/dist/tqkv-scalar.wasm'));
    assert.ok(requested.includes('/node_modules/tqkv/dist/tqkv-relaxed.wasm'), 'relaxed is tried first');
    if (relaxedPacked) {
      assert.equal(result.variant, 'relaxed');
      assert.deepEqual(result.fallbacks, []);
      assert.ok(!requested.includes('/node_modules/tqkv/dist/tqkv.wasm'));
      console.log(`# chromium relaxed: ${Math.round(result.nsPerQuery)} ns/query (8 heads, 2 KV heads, d=128, 1000 tokens)`);
    } else {
      assert.equal(result.variant, 'simd128');
      assert.match(result.fallbacks[0], /^relaxed: tqkv: cannot fetch .*tqkv-relaxed\.wasm: 404/);
      assert.equal(result.kernel, 'wasm128');
      assert.ok(requested.includes('/node_modules/tqkv/dist/tqkv.wasm'));
      t.diagnostic('relaxed build NOT tested in Chromium: the package has no dist/tqkv-relaxed.wasm (fell back to SIMD128)');
      console.log('# relaxed build NOT tested in Chromium: the package has no dist/tqkv-relaxed.wasm (fell back to SIMD128)');
    }
    check(result, want.simd);
    assert.match(status, new RegExp(`^ok: ${result.kernel}, 1000 tokens`));
  });

  await t.test('SIMD128 forced (?simd=simd128)', async () => {
    const { result, requested } = await run('index.html?simd=simd128');
    assert.equal(result.variant, 'simd128');
    assert.equal(result.kernel, 'wasm128');
    assert.ok(!requested.includes('/node_modules/tqkv/dist/tqkv-relaxed.wasm'));
    check(result, want.simd);
    console.log(`# chromium simd128: ${Math.round(result.nsPerQuery)} ns/query (8 heads, 2 KV heads, d=128, 1000 tokens)`);
  });

  await t.test('threads: 2 (?threads=2): the threaded build and a Web Worker give the same bits', async () => {
    const { result, requested } = await run('index.html?threads=2');
    assert.equal(result.crossOriginIsolated, true);
    assert.equal(result.threads, 2);
    assert.equal(result.threaded, true);
    assert.equal(result.workers, 1, 'one worker entered the pool');
    const file = relaxedPacked ? 'tqkv-relaxed-mt.wasm' : 'tqkv-mt.wasm';
    assert.ok(requested.includes(`/node_modules/tqkv/dist/${file}`), requested.join(' '));
    check(result, want.simd);
    console.log(`# chromium ${result.variant}, 2 threads: ${Math.round(result.nsPerQuery)} ns/query (8 heads, 2 KV heads, d=128, 1000 tokens)`);
  });

  await t.test('in a module Web Worker (?in=worker), with 2 threads: as runtimes run their model off the main thread', async () => {
    const { result } = await run('index.html?in=worker&threads=2');
    assert.equal(result.inWorker, true);
    assert.equal(result.threads, 2);
    assert.equal(result.workers, 1, 'the worker started its own worker, which entered the pool');
    check(result, want.simd);
    console.log(`# chromium ${result.variant} in a Web Worker, 2 threads: ${Math.round(result.nsPerQuery)} ns/query`);
  });

  await t.test("a Content-Security-Policy that refuses workers: threads 'auto' runs on one thread, threads 2 says why it cannot", async () => {
    const csp = "worker-src 'none'";
    const { result } = await run(`index.html?threads=auto&csp=${encodeURIComponent(csp)}`);
    assert.equal(result.threads, 1);
    check(result, want.simd);
    if (result.hardwareConcurrency > 1)  // (one core: 'auto' never tries a worker)
      assert.match(result.fallbacks.at(-1), /^threads: auto: 1 thread \(.*blob: URL, which a page's Content-Security-Policy must allow in worker-src/);
    const failed = await run(`index.html?threads=2&csp=${encodeURIComponent(csp)}`, { fails: true });
    assert.equal(failed.result.ok, false);
    assert.match(failed.result.error, /tqkv: threads: .*worker.*blob: URL, which a page's Content-Security-Policy must allow in worker-src/);
    console.log(`# chromium with ${csp}: threads 'auto' -> ${result.threads} (${result.fallbacks.at(-1)}); threads 2 -> ${failed.result.error.split('\n')[0]}`);
  });

  await t.test('scalar build forced (?simd=0)', async () => {
    const { result, requested } = await run('index.html?simd=0');
    assert.equal(result.simd, false);
    assert.equal(result.kernel, 'scalar');
    assert.ok(requested.includes('/node_modules/tqkv/dist/tqkv-scalar.wasm'));
    check(result, want.scalar);
  });

  await t.test('IndexedDB: a saved cache restores after a reload and continues exactly; using; Float16Array', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    const logs = [];
    page.on('console', (m) => logs.push(m.text()));
    page.on('pageerror', (e) => logs.push(String(e)));
    const get = async () => {
      await page.waitForFunction(() => window.__tqkvResult !== undefined, null, { timeout: 60_000 });
      const r = await page.evaluate(() => window.__tqkvResult);
      assert.ok(r.ok, `${r.phase}: ${r.error}\n${logs.join('\n')}`);
      return r;
    };
    await page.goto(base + 'persist.html?phase=save');
    const saved = await get();
    await page.goto(base + 'persist.html?phase=restore'); // a new page load: only IndexedDB carries the cache
    const restored = await get();
    await context.close();
    assert.equal(restored.loadedBytes, saved.savedBytes);
    assert.ok(saved.savedBytes < saved.fp16Bytes / 3, `${saved.savedBytes} bytes vs fp16 ${saved.fp16Bytes}`);
    assert.deepEqual(restored.outA, saved.outA, 'attend after the restore == before the save, bit for bit');
    assert.deepEqual(restored.outB, saved.outB, 'appending after the restore continues identically');
    assert.equal(restored.hashB, saved.hashB, 'the same bytes after continuing');
    assert.equal(restored.tokens, 340);
    assert.equal(restored.afterRemove, true);
    assert.equal(saved.usingSyntax, true, 'Chromium has `using`');
    assert.equal(saved.usingDisposed, true, '`using` disposed the cache');
    assert.equal(saved.float16, true, 'Chromium has Float16Array');
    assert.equal(saved.float16Equal, true, 'Float16Array input == its Uint16Array bits');
    console.log(`# IndexedDB round trip: ${saved.savedBytes} bytes (fp16 would be ${saved.fp16Bytes}), ${saved.variant}`);
  });

  await t.test('engine without SIMD128: the loader falls back to the scalar build', async () => {
    const { result, requested } = await run('index.html', { noSimd: true });
    assert.equal(result.simdSupported, false);
    assert.equal(result.relaxedSimdSupported, false);
    assert.equal(result.variant, 'scalar');
    assert.equal(result.kernel, 'scalar');
    assert.ok(!requested.includes('/node_modules/tqkv/dist/tqkv.wasm'), 'the SIMD module was not even fetched');
    assert.ok(!requested.includes('/node_modules/tqkv/dist/tqkv-relaxed.wasm'));
    check(result, want.scalar);
  });
});

