// What the browser tests share (browser.test.mjs: Chromium through playwright-core; firefox.test.mjs:
// Firefox through puppeteer-core): the package installed from its `npm pack` tarball, a static
// server for web/test-pages/ (cross-origin isolated; ?csp=POLICY adds that Content-Security-Policy
// to a page), what the page computes, computed in Node, and the checks of a page's result.
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { existsSync, mkdtempSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, extname, normalize } from 'node:path';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Tqkv } from '../dist/node.js';
import { fnv1a, stream, worstRowRelError } from './helpers.mjs';

export const web = resolve(fileURLToPath(new URL('.', import.meta.url)), '..');

/** The package as a user installs it: `npm pack`, unpacked into a fresh node_modules/tqkv. */
export function packInstall(prefix) {
  const work = mkdtempSync(join(tmpdir(), prefix));
  const packed = execFileSync('npm', ['pack', '--silent', '--pack-destination', work], { cwd: web, encoding: 'utf8' }).trim().split('\n').pop();
  const pkg = join(work, 'node_modules', 'tqkv');
  mkdirSync(pkg, { recursive: true });
  execFileSync('tar', ['-xzf', join(work, packed), '-C', pkg, '--strip-components=1']);
  return { work, pkg };
}

/** The installed package at /node_modules/ and the test pages at / on 127.0.0.1. */
export function serveTestPages(work) {
  return serve([['/node_modules/', join(work, 'node_modules')], ['/', join(web, 'test-pages')]]);
}

// What the page computes, computed in Node.
export async function expected(simd) {
  const t = await Tqkv.load({ simd });
  const heads = 8, kvHeads = 2, headDim = 128, tokens = 1000, row = kvHeads * headDim, q = heads * headDim;
  const cache = t.createCache({ layers: 2, heads, kvHeads, headDim, keyBits: 4, valueBits: 3, window: 16 });
  for (let t0 = 0; t0 < tokens; t0 += 250) cache.append(1, stream(250 * row, 10 + t0), stream(250 * row, 20 + t0));
  const out = cache.attend(1, stream(q, 7));
  const bytes = cache.serialize();
  cache.dispose();
  return { out, hash: fnv1a(bytes), length: bytes.length };
}

const types = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.wasm': 'application/wasm', '.json': 'application/json', '.ts': 'text/plain' };

export function serve(mounts) {
  const server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    for (const [prefix, dir] of mounts) {
      if (!path.startsWith(prefix)) continue;
      const file = normalize(join(dir, path.slice(prefix.length) || 'index.html'));
      if (!file.startsWith(dir) || !existsSync(file) || !statSync(file).isFile()) break;
      // Cross-origin isolated pages (SharedArrayBuffer: the threaded builds); ?csp=POLICY.
      const csp = new URL(req.url, 'http://x').searchParams.get('csp');
      res.writeHead(200, { 'content-type': types[extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-store',
        'cross-origin-opener-policy': 'same-origin', 'cross-origin-embedder-policy': 'require-corp',
        ...(csp ? { 'content-security-policy': csp } : {}) });
      res.end(readFileSync(file));
      return;
    }
    res.writeHead(404).end('not found');
  });
  return new Promise((ok) => server.listen(0, '127.0.0.1', () => ok(server)));
}

/** The checks of a page's result (test-pages/run.js) against Node's. */
export function check(result, want) {
  assert.equal(result.tokens, 1000);
  assert.equal(result.tokensAfterErrors, 1000, 'failed appends changed nothing');
  assert.ok(result.bytesUsed > 0 && result.bytesUsed < result.fp16Bytes, `${result.bytesUsed} bytes vs fp16 ${result.fp16Bytes}`);
  assert.equal(result.serializedLength, want.length);
  assert.equal(result.serializedHash, want.hash, 'the browser codes equal Node codes bit for bit');
  assert.ok(worstRowRelError(Float32Array.from(result.out), want.out, 128) < 1e-4);
  assert.ok(result.roundTripEqual);
  assert.deepEqual([result.error.name, result.error.code, result.error.isTqkvError], ['TqkvError', 'invalid argument', true]);
  assert.match(result.error.message, /kv_heads \* head_dim = 256/);
  assert.match(result.nanError, /not finite/);
}
