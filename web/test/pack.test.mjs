// `npm pack` gives a tarball that installs and runs in a fresh directory (no network needed:
// the package has no dependencies).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, writeFileSync, readdirSync, readFileSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const web = resolve(fileURLToPath(new URL('.', import.meta.url)), '..');
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';

test('npm pack tarball installs and runs in a fresh directory', () => {
  const work = mkdtempSync(join(tmpdir(), 'tqkv-pack-'));
  const packed = execFileSync(npm, ['pack', '--silent', '--pack-destination', work], { cwd: web, encoding: 'utf8' }).trim().split('\n').pop();
  const tarball = join(work, packed);
  assert.ok(existsSync(tarball), `npm pack did not write ${tarball}`);
  const listing = execFileSync('tar', ['-tzf', tarball], { encoding: 'utf8' }).split('\n').filter(Boolean).sort();
  const code = readdirSync(join(web, 'dist')).filter((f) => /\.(js|d\.ts)$/.test(f)).map((f) => `package/dist/${f}`);
  const wasm = ['tqkv.wasm', 'tqkv-scalar.wasm', 'tqkv-relaxed.wasm', 'tqkv-mt.wasm', 'tqkv-relaxed-mt.wasm'].filter((f) => existsSync(join(web, 'dist', f))).map((f) => `package/dist/${f}`);
  assert.deepEqual(listing, [...code, ...wasm, 'package/LICENSE', 'package/README.md', 'package/package.json', 'package/require.cjs'].sort());
  assert.ok(code.includes('package/dist/index.js') && code.includes('package/dist/node.js') && code.includes('package/dist/index.d.ts'));
  const app = join(work, 'app');
  execFileSync('mkdir', ['-p', app]);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  execFileSync(npm, ['install', '--offline', '--no-audit', '--no-fund', '--silent', tarball], { cwd: app, encoding: 'utf8' });
  assert.ok(readdirSync(join(app, 'node_modules', 'tqkv', 'dist')).includes('tqkv.wasm'));
  writeFileSync(join(app, 'main.mjs'), `
    import { Tqkv } from 'tqkv';
    const results = {};
    for (const simd of [true, false]) {
      const t = await Tqkv.load({ simd });
      const c = t.createCache({ layers: 2, heads: 4, kvHeads: 2, headDim: 64, keyBits: 4, valueBits: 3, window: 8 });
      const k = new Float32Array(100 * 128).map((_, i) => Math.sin(i)), v = k.map((x) => x * 0.5);
      c.append(1, k, v);
      const out = c.attend(1, new Float32Array(256).fill(0.25));
      const d = simd ? Tqkv.deserialize(c.serialize()) : t.deserialize(c.serialize());
      results[t.kernel] = { tokens: c.tokens(1), bytes: c.bytesUsed(), out0: out[0], same: d.attend(1, new Float32Array(256).fill(0.25))[0] === out[0] };
      c.dispose(); d.dispose();
    }
    console.log(JSON.stringify(results));
  `);
  const res = JSON.parse(execFileSync(process.execPath, ['main.mjs'], { cwd: app, encoding: 'utf8' }));
  // require('tqkv') (the 'node' + 'require' condition): the same ES module instance through require(esm)
  writeFileSync(join(app, 'main.cjs'), `
    const tqkv = require('tqkv');
    tqkv.Tqkv.load().then((t) => console.log(JSON.stringify({ variant: t.variant, same: tqkv.default === tqkv.Tqkv,
      error: new tqkv.TqkvError('x', 1).code })));
  `);
  const cjs = spawnSync(process.execPath, ['main.cjs'], { cwd: app, encoding: 'utf8' });
  const major = +process.versions.node.split('.')[0], minor = +process.versions.node.split('.')[1];
  if (process.features.require_module || major > 22 || (major === 22 && minor >= 12) || (major === 20 && minor >= 19)) {
    assert.equal(cjs.status, 0, cjs.stderr);
    assert.deepEqual(JSON.parse(cjs.stdout), { variant: 'simd128', same: true, error: 'invalid argument' });
  } else {
    assert.match(cjs.stderr, /tqkv is an ES module: require\('tqkv'\) needs Node >= 20\.19/);
  }
  assert.deepEqual(Object.keys(res).sort(), ['scalar', 'wasm128']);
  for (const r of Object.values(res)) {
    assert.equal(r.tokens, 100);
    assert.ok(r.bytes > 0 && Number.isFinite(r.out0) && r.same);
  }
  assert.ok(Math.abs(res.wasm128.out0 - res.scalar.out0) <= 1e-4 * Math.abs(res.scalar.out0));
  // the bundled typings resolve and type-check for TypeScript users
  const dts = join(app, 'node_modules', 'tqkv', 'dist', 'index.d.ts');
  assert.ok(existsSync(dts));
  const tsc = join(web, 'node_modules', 'typescript', 'bin', 'tsc');
  if (existsSync(tsc)) {
    writeFileSync(join(app, 'check.ts'), `
      import { Tqkv, KVCache, TqkvError, LlamaModel, Calibration, Runner, saveToIndexedDB, loadFromIndexedDB, supportedVariants,
        type CacheOptions, type ModelInfo, type RunnerStats, type AttentionStats, type ModuleVariant } from 'tqkv';
      const opts: CacheOptions = { layers: 2, heads: 4, kvHeads: 2, headDim: 64, keyBits: 4, valueBits: 3 };
      export async function run(): Promise<number> {
        const t: Tqkv = await Tqkv.load({ simd: 'auto', maximumMemory: 1 << 30 });
        const c: KVCache = t.createCache(opts);
        c.append(0, new Float32Array(128), new Float32Array(128));
        const out: Float32Array = c.attend(0, new Float32Array(256), new Float32Array(256), true);
        const bytes: Uint8Array = c.serialize();
        const d: KVCache = Tqkv.deserialize(bytes);
        try { c.truncate(5); } catch (e) { if (e instanceof TqkvError) console.log(e.code, e.status); }
        const codes: Uint8Array = t.createCodec({ dim: 64, bits: 4, method: 'mse' }).encode(new Float32Array(64));
        c.append(0, new Uint16Array(128), new Uint16Array(128), { layout: 'head-major' });
        const stats: AttentionStats = c.attendStats(0, new Float32Array(256));
        const v: ModuleVariant = t.variant;
        const saved: number = await saveToIndexedDB('k', c);
        const back: Uint8Array | undefined = await loadFromIndexedDB('k');
        { using e = t.createCache(opts); void e; }
        d[Symbol.dispose](); c.dispose();
        return out[0] + codes.length + c.config.headDim + t.memoryBytes + stats.sumExp[0] + saved + (back?.length ?? 0) + v.length + supportedVariants().length;
      }
      export async function generate(t: Tqkv): Promise<RunnerStats> {
        const m: LlamaModel = await t.fetchModel('/models/tq-ref-128/', { onProgress: (n: number) => void n });
        const cal: Calibration = m.calibrate('calibration text');
        const r: Runner = m.createRunner('K4V4', { calibration: cal, maxChunk: 64 });
        const info: ModelInfo = m.info;
        for (const token of r.generate('The ', { maxTokens: info.context, temperature: 0.8, topK: 40, seed: 3 })) void token;
        const logits = new Float32Array(info.vocab);
        r.decode(r.prefill([1, 2, 3], logits), logits);
        const { nll }: { nll: number } = r.nll('some text');
        r.dispose(); cal.dispose(); m.dispose();
        return { ...r.stats(), bitsPerCoord: nll };
      }
    `);
    execFileSync(process.execPath, [tsc, '--noEmit', '--strict', '--target', 'es2022', '--module', 'nodenext',
      '--moduleResolution', 'nodenext', '--lib', 'es2022,dom,esnext.disposable', 'check.ts'], { cwd: app, encoding: 'utf8' });
  }
});

test('the browser entry (dist/index.js) never imports a node: module; the Node entry does', () => {
  const seen = new Set();
  const visit = (file) => {
    if (seen.has(file)) return;
    seen.add(file);
    const text = readFileSync(join(web, 'dist', file), 'utf8');
    assert.doesNotMatch(text, /from\s*['"]node:|import\(\s*['"]node:/, `${file} imports a node: module`);
    for (const [, dep] of text.matchAll(/(?:from|import)\s*['"]\.\/([^'"]+)['"]/g)) visit(dep);
  };
  visit('index.js');
  assert.ok(seen.has('loader.js') && seen.has('tqkv.js') && !seen.has('platform-node.js'), [...seen].join(' '));
  assert.match(readFileSync(join(web, 'dist', 'platform-node.js'), 'utf8'), /from 'node:fs\/promises'/);
});

test('npm pack refuses a package with a missing build output, naming it', () => {
  const copy = mkdtempSync(join(tmpdir(), 'tqkv-prepack-'));
  for (const f of ['package.json', 'README.md', 'LICENSE', 'require.cjs', 'scripts', 'src', 'dist'])
    cpSync(join(web, f), join(copy, f), { recursive: true, preserveTimestamps: true });
  const pack = () => spawnSync(npm, ['pack', '--dry-run'], { cwd: copy, encoding: 'utf8' });
  assert.equal(pack().status, 0, pack().stderr);
  rmSync(join(copy, 'dist', 'tqkv.wasm'));
  let r = pack();
  assert.notEqual(r.status, 0, 'npm pack without dist/tqkv.wasm must fail');
  assert.match(r.stderr, /refusing to pack an incomplete package:\s+dist\/tqkv\.wasm: missing/);
  cpSync(join(web, 'dist', 'tqkv.wasm'), join(copy, 'dist', 'tqkv.wasm'));
  rmSync(join(copy, 'dist', 'cache.d.ts'));
  r = pack();
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /dist\/cache\.d\.ts: missing \(built from src\/cache\.ts\)/);
});
