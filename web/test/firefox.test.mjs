// Firefox: Debian's firefox-esr driven by puppeteer-core over WebDriver BiDi runs the subtests of
// page-suite.mjs (shared with webkit.test.mjs) on the package installed from its `npm pack`
// tarball: the codes equal Node's bit for bit, attention within 1e-4, for the build Firefox picks
// by itself, 2 threads (also inside a module Web Worker), a page whose Content-Security-Policy
// refuses workers, the scalar build, an IndexedDB round trip, and the demo page with tq-ref-128
// (the exact fp32 cache's 64 greedy bytes equal the native runner's; skipped without the model).
//
// FIREFOX (default /usr/bin/firefox-esr) selects the browser; without it, or without
// puppeteer-core (npm ci in web/), the test is skipped.
import { test, after } from 'node:test';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { expected, packInstall, serveTestPages } from './browser-env.mjs';
import { pageSuite } from './page-suite.mjs';

const firefoxPath = process.env.FIREFOX || '/usr/bin/firefox-esr';
let puppeteer;
try {
  puppeteer = (await import('puppeteer-core')).default;
} catch {}
const skip = !existsSync(firefoxPath) ? `no browser at ${firefoxPath} (apt-get install firefox-esr)` : !puppeteer ? 'puppeteer-core not installed (npm ci in web/)' : false;

test('Firefox runs the packed package: its build, threads, a worker, CSP, scalar, IndexedDB, the demo', { skip, timeout: 300_000 }, async (t) => {
  const { work, pkg } = packInstall('tqkv-firefox-');
  const server = await serveTestPages(work);
  const browser = await puppeteer.launch({ browser: 'firefox', executablePath: firefoxPath, headless: true });
  after(async () => {
    await browser.close();
    server.close();
  });
  // A page in a browser context of its own.
  const open = async () => {
    const context = await browser.createBrowserContext();
    const page = await context.newPage();
    const logs = [];
    page.on('console', (m) => logs.push(m.text()));
    page.on('pageerror', (e) => logs.push(String(e)));
    return {
      logs,
      goto: (url) => page.goto(url),
      evaluate: (body, ...args) => page.evaluate((body, args) => new Function(body)(...args), body, args),
      close: () => context.close(),
    };
  };
  await pageSuite(t, {
    name: 'firefox', open, base: `http://127.0.0.1:${server.address().port}/`,
    want: { simd: await expected(true), scalar: await expected(false) },
    relaxedPacked: existsSync(join(pkg, 'dist', 'tqkv-relaxed.wasm')),
  });
});
