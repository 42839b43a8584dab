// Bundlers: a tiny app that imports 'tqkv' (installed from the `npm pack` tarball, as a user would)
// built for production by Vite, esbuild and webpack, served on 127.0.0.1 and run in Chromium. Each
// bundle must contain no `node:` import, its page must find the .wasm files the bundler emitted (or,
// for esbuild, the ones copied beside the bundle as README.md says), and produce the same codes as
// Node (hash of the serialized cache).
//
// The bundlers come from web/test/bundlers/ (package.json + package-lock.json; `npm ci` there
// once: wasm/test.sh does it). Skipped with a message without them, the browser or playwright-core.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { extname, join, normalize, resolve } from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Tqkv } from '../dist/node.js';
import { fnv1a, stream } from './helpers.mjs';

const web = resolve(fileURLToPath(new URL('.', import.meta.url)), '..');
const fixture = join(web, 'test', 'bundlers');
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch {}
const skip = !existsSync(chromiumPath)
  ? `no browser at ${chromiumPath} (apt-get install chromium)`
  : !chromium
    ? 'playwright-core not installed (npm ci in web/)'
    : !existsSync(join(fixture, 'node_modules', 'vite')) || !existsSync(join(fixture, 'node_modules', 'webpack'))
      ? 'bundlers not installed: run `npm ci` in web/test/bundlers (wasm/test.sh does)'
      : false;

// The app: the same small cache as codes() below computes in Node, on the inputs of test-pages/inputs.js
// (its text, so that the app is one file for every bundler).
const INPUTS = readFileSync(new URL('../test-pages/inputs.js', import.meta.url), 'utf8');
const MAIN = `
import { Tqkv, TqkvError } from 'tqkv';
${INPUTS}
(async () => {
  const result = { ok: false };
  try {
    const t = await Tqkv.load();
    const cache = t.createCache({ heads: 4, kvHeads: 2, headDim: 64, keyBits: 4, valueBits: 3, window: 8 });
    cache.append(0, stream(100 * 128, 1), stream(100 * 128, 2));
    const out = cache.attend(0, stream(256, 3));
    let error = null;
    try { cache.append(0, new Float32Array(5), new Float32Array(5)); } catch (e) { error = e instanceof TqkvError && e.code; }
    Object.assign(result, { ok: true, variant: t.variant, kernel: t.kernel, fallbacks: t.fallbacks, hash: fnv1a(cache.serialize()),
      out: Array.from(out.subarray(0, 4)), error });
  } catch (e) {
    result.error = String((e && e.stack) || e);
  }
  window.__tqkvResult = result;
  document.getElementById('status').textContent = result.ok ? 'ok: ' + result.variant : 'failed: ' + result.error;
})();
`;
const html = (script, type = 'module') =>
  `<!doctype html><html><head><meta charset="utf-8"><title>tqkv app</title></head><body><p id="status">running</p>` +
  `<script type="${type}" src="${script}"></script></body></html>`;

function codes(t) {
  const cache = t.createCache({ heads: 4, kvHeads: 2, headDim: 64, keyBits: 4, valueBits: 3, window: 8 });
  cache.append(0, stream(100 * 128, 1), stream(100 * 128, 2));
  const h = fnv1a(cache.serialize());
  cache.dispose();
  return h;
}

const types = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.wasm': 'application/wasm' };
function serve(dir) {
  const server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    const file = normalize(join(dir, path === '/' ? 'index.html' : path));
    if (!file.startsWith(dir) || !existsSync(file) || !statSync(file).isFile()) return res.writeHead(404).end('not found');
    res.writeHead(200, { 'content-type': types[extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-store' });
    res.end(readFileSync(file));
  });
  return new Promise((ok) => server.listen(0, '127.0.0.1', () => ok(server)));
}

const walk = (dir) => readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(join(dir, e.name)) : [join(dir, e.name)]));

test('Vite, esbuild and webpack production builds of an app using tqkv run in Chromium', { skip, timeout: 300_000 }, async (t) => {
  const work = mkdtempSync(join(tmpdir(), 'tqkv-bundlers-'));
  const packed = execFileSync('npm', ['pack', '--silent', '--pack-destination', work], { cwd: web, encoding: 'utf8' }).trim().split('\n').pop();
  const app = join(work, 'app');
  mkdirSync(join(app, 'src'), { recursive: true });
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  execFileSync('npm', ['install', '--offline', '--no-audit', '--no-fund', '--silent', join(work, packed)], { cwd: app });
  writeFileSync(join(app, 'src', 'main.js'), MAIN);
  const relaxedPacked = existsSync(join(app, 'node_modules', 'tqkv', 'dist', 'tqkv-relaxed.wasm'));
  const fromFixture = createRequire(join(fixture, 'package.json'));

  const want = codes(await Tqkv.load({ simd: 'simd128' }));
  const browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'], // and a fresh --user-data-dir (playwright)
  });
  after(() => browser.close());
  const timings = {};

  async function runIn(out, name) {
    const js = walk(out).filter((f) => f.endsWith('.js'));
    assert.ok(js.length > 0, `${name}: no JavaScript emitted`);
    for (const f of js) assert.doesNotMatch(readFileSync(f, 'utf8'), /["']node:(fs|url|path)/, `${name}: ${f} names a node: module`);
    const server = await serve(out);
    const context = await browser.newContext();
    const page = await context.newPage();
    const logs = [], wasm = [];
    page.on('console', (m) => logs.push(m.text()));
    page.on('pageerror', (e) => logs.push(String(e)));
    page.on('response', (r) => r.url().endsWith('.wasm') && wasm.push([new URL(r.url()).pathname, r.status()]));
    try {
      await page.goto(`http://127.0.0.1:${server.address().port}/`);
      await page.waitForFunction(() => window.__tqkvResult !== undefined, null, { timeout: 60_000 });
      const result = await page.evaluate(() => window.__tqkvResult);
      assert.ok(result.ok, `${name}: ${result.error}\n${logs.join('\n')}`);
      assert.equal(result.hash, want, `${name}: the browser's codes equal Node's`);
      assert.equal(result.error, 'invalid argument');
      const loaded = wasm.filter(([, s]) => s === 200);
      assert.equal(loaded.length, 1, `${name}: one module fetched: ${JSON.stringify(wasm)}`);
      if (relaxedPacked) {
        assert.equal(result.variant, 'relaxed', name);
      } else {
        assert.equal(result.variant, 'simd128', name);
        assert.equal(result.kernel, 'wasm128');
      }
      return { result, wasm };
    } finally {
      await context.close();
      server.close();
    }
  }

  await t.test('Vite (vite build)', async () => {
    writeFileSync(join(app, 'index.html'), html('/src/main.js'));
    const { build } = await import(pathToFileURL(fromFixture.resolve('vite')).href);
    const t0 = Date.now();
    const warnings = [];
    await build({
      root: app, configFile: false, logLevel: 'silent', build: { outDir: join(work, 'vite'), emptyOutDir: true },
      customLogger: { info() {}, warn: (m) => warnings.push(m), warnOnce: (m) => warnings.push(m), error: (m) => warnings.push(m),
        clearScreen() {}, hasErrorLogged: () => false, hasWarned: false },
    });
    timings.vite = Date.now() - t0;
    const emitted = walk(join(work, 'vite')).filter((f) => f.endsWith('.wasm')).length;
    assert.ok(emitted >= 2, 'Vite emitted the .wasm files');
    const { wasm } = await runIn(join(work, 'vite'), 'vite');
    assert.ok(wasm.some(([p]) => p.startsWith('/assets/tqkv-') && p.endsWith('.wasm')), JSON.stringify(wasm));
    t.diagnostic(`vite warnings: ${warnings.length ? warnings.join(' | ') : 'none'}`);
  });

  await t.test('esbuild (--bundle --platform=browser, the .wasm files copied beside the bundle)', async () => {
    const esbuild = fromFixture('esbuild');
    const out = join(work, 'esbuild');
    const t0 = Date.now();
    const r = await esbuild.build({
      absWorkingDir: app, entryPoints: ['src/main.js'], bundle: true, format: 'esm', platform: 'browser', minify: true,
      outdir: out, logLevel: 'silent',
    });
    for (const f of readdirSync(join(app, 'node_modules', 'tqkv', 'dist')).filter((f) => f.endsWith('.wasm')))
      cpSync(join(app, 'node_modules', 'tqkv', 'dist', f), join(out, f));
    timings.esbuild = Date.now() - t0;
    assert.deepEqual(r.errors, []);
    writeFileSync(join(out, 'index.html'), html('./main.js'));
    await runIn(out, 'esbuild');
  });

  await t.test('webpack (mode production, target web)', async () => {
    const webpack = fromFixture('webpack');
    const out = join(work, 'webpack');
    const t0 = Date.now();
    // Until wasm/build.sh makes tqkv-relaxed.wasm, the packed package lacks it and webpack, unlike
    // Vite, fails on a missing `new URL` asset: map it to nothing (the loader then falls back).
    const alias = relaxedPacked ? {} : { [join(app, 'node_modules', 'tqkv', 'dist', 'tqkv-relaxed.wasm')]: false };
    const stats = await new Promise((ok, fail) =>
      webpack({ mode: 'production', context: app, entry: './src/main.js', target: 'web', output: { path: out, filename: 'main.js' },
        resolve: { alias } }, (err, s) => (err ? fail(err) : ok(s))));
    timings.webpack = Date.now() - t0;
    const info = stats.toJson({ all: false, errors: true, warnings: true, assets: true });
    assert.deepEqual(info.errors.map((e) => e.message), [], 'webpack errors');
    assert.ok(info.assets.filter((a) => a.name.endsWith('.wasm')).length >= 2, 'webpack emitted the .wasm files');
    writeFileSync(join(out, 'index.html'), html('./main.js', 'text/javascript'));
    await runIn(out, 'webpack');
    t.diagnostic(`webpack warnings: ${info.warnings.length ? info.warnings.map((w) => w.message).join(' | ') : 'none'}`);
  });

  if (!relaxedPacked) console.log('# bundlers: relaxed build NOT tested (the package has no dist/tqkv-relaxed.wasm)');
  console.log(`# bundler build times (ms): ${JSON.stringify(timings)}`);
});
