// WebKit, Safari's engine: Debian's WebKitGTK (MiniBrowser, JavaScriptCore) driven through its
// WebKitWebDriver (W3C WebDriver classic, test/webdriver.mjs) under xvfb-run runs the subtests of
// page-suite.mjs (shared with firefox.test.mjs) on the package installed from its `npm pack`
// tarball: the build WebKit picks (SIMD128: it rejects relaxed SIMD, as Safari does), 2 threads on
// the page and in a module Web Worker, CSP, scalar, IndexedDB, the demo page with tq-ref-128. And
// its own: SIMD128 forced, and an engine without SharedArrayBuffer.
//
// Safari gives cross-origin isolated pages SharedArrayBuffer; WebKitGTK's JavaScriptCore keeps it
// off unless its option useSharedArrayBuffer is set (JSC_useSharedArrayBuffer=1 in the browser's
// environment), so the threaded cases run with it and one case without.
//
// WEBKIT_DRIVER (default /usr/bin/WebKitWebDriver, package webkit2gtk-driver) and WEBKIT_BROWSER
// (MiniBrowser) select them; without them, or without xvfb-run, the test is skipped.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { check, expected, packInstall, serveTestPages } from './browser-env.mjs';
import { pageSuite } from './page-suite.mjs';
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
  const driver = await startWebKitDriver({ JSC_useSharedArrayBuffer: '1' });
  let plainDriver;
  after(() => {
    driver.stop();
    plainDriver?.stop();
    server.close();
  });
  const want = { simd: await expected(true), scalar: await expected(false) };
  // Each page in a browser of its own (a new session), as the other browser tests use a new context.
  const run = await pageSuite(t, {
    name: 'webkit', open: () => newSession(driver.url), base: `http://127.0.0.1:${server.address().port}/`, want,
    relaxedPacked: existsSync(join(pkg, 'dist', 'tqkv-relaxed.wasm')),
  });

  await t.test('the SIMD128 build forced (?simd=simd128): what Safari runs', async () => {
    const result = await run('index.html?simd=simd128');
    assert.equal(result.variant, 'simd128');
    check(result, want.simd);
  });

  await t.test("an engine without SharedArrayBuffer (WebKitGTK's default): 'auto' runs on one thread, 2 says why", async () => {
    plainDriver = await startWebKitDriver();
    const open = () => newSession(plainDriver.url);
    const result = await run('index.html?threads=auto', { open });
    assert.equal(result.threads, 1);
    check(result, want.simd);
    const failed = await run('index.html?threads=2', { fails: true, open });
    assert.equal(failed.ok, false);
    assert.match(failed.error, /tqkv: threads: 2 asked, but this engine has no SharedArrayBuffer/);
    console.log(`# webkit without SharedArrayBuffer: threads 'auto' -> ${result.threads} (${result.fallbacks.at(-1)}); threads 2 -> ${failed.error.split('\n')[0]}`);
  });
});
