// The loader's module variants (relaxed -> SIMD128 -> scalar): feature probes, the options that
// force a variant or pass modules explicitly (bytes, Module, path, URL, Response, per variant),
// option errors, and, in a child process with --experimental-wasm-relaxed-simd, the relaxed build
// (variants-child.mjs): picked by 'auto' and coding exactly like the others when
// dist/tqkv-relaxed.wasm exists; otherwise a clean fallback to SIMD128, and the report says that
// the relaxed build was not tested.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { relative } from 'node:path';
import { Tqkv, MODULE_VARIANTS, simdSupported, relaxedSimdSupported, supportedVariants } from '../dist/node.js';
import { stream, bytesEqual } from './helpers.mjs';

const dist = new URL('../dist/', import.meta.url);
const simdBytes = readFileSync(new URL('tqkv.wasm', dist));
const scalarBytes = readFileSync(new URL('tqkv-scalar.wasm', dist));

// The same small cache in each instance: its serialized bytes.
function codesOf(t) {
  const c = t.createCache({ heads: 2, kvHeads: 1, headDim: 64, keyBits: 3, valueBits: 2 });
  c.append(0, stream(70 * 64, 1), stream(70 * 64, 2));
  const b = c.serialize();
  c.dispose();
  return b;
}

test('feature probes (Node 20 without flags: SIMD128, no relaxed SIMD)', () => {
  assert.deepEqual(MODULE_VARIANTS, ['relaxed', 'simd128', 'scalar']);
  assert.equal(simdSupported(), true);
  const relaxed = relaxedSimdSupported();
  assert.equal(relaxed, process.execArgv.includes('--experimental-wasm-relaxed-simd') || +process.versions.node.split('.')[0] >= 22);
  assert.deepEqual(supportedVariants(), relaxed ? ['relaxed', 'simd128', 'scalar'] : ['simd128', 'scalar']);
});

test('auto, forced variants, and the 0.1 booleans', async () => {
  const auto = await Tqkv.load({ simd: 'auto' });
  assert.equal(auto.variant, supportedVariants()[0] === 'relaxed' && auto.fallbacks.length ? 'simd128' : supportedVariants()[0]);
  const simd = await Tqkv.load({ simd: 'simd128' }), scalar = await Tqkv.load({ simd: 'scalar' });
  assert.deepEqual([simd.variant, simd.kernel, simd.simd], ['simd128', 'wasm128', true]);
  assert.deepEqual([scalar.variant, scalar.kernel, scalar.simd], ['scalar', 'scalar', false]);
  assert.equal((await Tqkv.load({ simd: true })).variant, 'simd128');
  assert.equal((await Tqkv.load({ simd: false })).variant, 'scalar');
  assert.ok(bytesEqual(codesOf(simd), codesOf(scalar)));
  if (!relaxedSimdSupported())
    await assert.rejects(Tqkv.load({ simd: 'relaxed' }), /does not support the relaxed build.*--experimental-wasm-relaxed-simd/);
});

test('explicit modules: bytes, ArrayBuffer, Module, path, file URL, Response; per variant', async () => {
  const want = codesOf(await Tqkv.load({ simd: 'simd128' }));
  const path = relative(process.cwd(), fileURLToPath(new URL('tqkv.wasm', dist)));
  const sources = {
    bytes: simdBytes,
    arrayBuffer: simdBytes.buffer.slice(simdBytes.byteOffset, simdBytes.byteOffset + simdBytes.length),
    module: new WebAssembly.Module(simdBytes),
    path,
    fileUrl: new URL('tqkv.wasm', dist),
    fileUrlString: new URL('tqkv.wasm', dist).href,
    response: new Response(simdBytes, { headers: { 'content-type': 'application/wasm' } }),
    responseOctets: new Response(simdBytes),
  };
  for (const [name, wasm] of Object.entries(sources)) {
    const t = await Tqkv.load({ wasm });
    assert.equal(t.variant, 'simd128', name);
    assert.ok(bytesEqual(codesOf(t), want), name);
  }
  // A single scalar module: its variant comes from its kernel.
  assert.equal((await Tqkv.load({ wasm: scalarBytes })).variant, 'scalar');
  // Per variant: 'auto' picks among the given ones only; a forced variant takes its entry.
  const only = await Tqkv.load({ wasm: { scalar: scalarBytes } });
  assert.deepEqual([only.variant, only.kernel], ['scalar', 'scalar']);
  const both = await Tqkv.load({ wasm: { simd128: simdBytes, scalar: scalarBytes } });
  assert.equal(both.variant, 'simd128');
  const forced = await Tqkv.load({ simd: 'scalar', wasm: { simd128: simdBytes, scalar: scalarBytes } });
  assert.equal(forced.variant, 'scalar');
  // A missing SIMD128 file falls back to the scalar one in 'auto', with the reason.
  const missing = await Tqkv.load({ wasm: { simd128: new URL('no-such.wasm', dist), scalar: new URL('tqkv-scalar.wasm', dist) } });
  assert.equal(missing.variant, 'scalar');
  assert.equal(missing.fallbacks.length, 1);
  assert.match(missing.fallbacks[0], /^simd128: .*no-such\.wasm/);
  await assert.rejects(Tqkv.load({ simd: 'simd128', wasm: new URL('no-such.wasm', dist) }), /ENOENT|no such file/);
});

test('bad load options: clear errors naming what is accepted', async () => {
  await assert.rejects(Tqkv.load({ simd: 'avx2' }), (e) => e instanceof TypeError && /simd must be 'auto', 'relaxed', 'simd128', 'scalar', true or false/.test(e.message));
  await assert.rejects(Tqkv.load({ simdd: true }), (e) => e instanceof TypeError && /unknown Tqkv.load option 'simdd' \(accepted: simd, wasm, maximumMemory, threads\)/.test(e.message));
  await assert.rejects(Tqkv.load({ wasm: { sse: simdBytes } }), /unknown variant 'sse' \(accepted: relaxed, simd128, scalar\)/);
  await assert.rejects(Tqkv.load({ wasm: { simd128: 42 } }), /wasm.simd128 is not a URL/);
  await assert.rejects(Tqkv.load({ wasm: 42 }), TypeError);
  await assert.rejects(Tqkv.load({ simd: 'simd128', wasm: { scalar: scalarBytes } }), /no 'simd128' entry/);
  await assert.rejects(Tqkv.load({ maximumMemory: -1 }), RangeError);
  await assert.rejects(Tqkv.load({ wasm: new Uint8Array([1, 2, 3]) }), WebAssembly.CompileError);
});

test('relaxed SIMD (child process with --experimental-wasm-relaxed-simd)', { timeout: 120_000 }, (t) => {
  const child = fileURLToPath(new URL('variants-child.mjs', import.meta.url));
  const r = spawnSync(process.execPath, ['--experimental-wasm-relaxed-simd', child], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const res = JSON.parse(r.stdout.trim().split('\n').pop());
  assert.equal(res.relaxedSimdSupported, true);
  assert.deepEqual(res.supported, ['relaxed', 'simd128', 'scalar']);
  // a rejected relaxed module: 'auto' falls back with the reason; forcing it throws the CompileError
  assert.equal(res.rejected.variant, 'simd128');
  assert.match(res.rejected.fallbacks[0], /^relaxed: /);
  assert.match(res.forcedJunk, /^CompileError/);
  if (!res.relaxedFile) {
    assert.equal(res.auto.variant, 'simd128');
    assert.match(res.auto.fallbacks[0], /^relaxed: .*tqkv-relaxed\.wasm/);
    t.diagnostic('relaxed build NOT tested: dist/tqkv-relaxed.wasm is missing (the loader fell back to SIMD128)');
    console.log('# relaxed build NOT tested: dist/tqkv-relaxed.wasm is missing (the loader fell back to SIMD128)');
    return;
  }
  assert.equal(res.auto.variant, 'relaxed');
  assert.deepEqual(res.auto.fallbacks, []);
  assert.deepEqual(res.mismatches, [], 'relaxed == SIMD128 == scalar');
  console.log(`# relaxed build tested: kernels ${res.kernels.join(', ')}`);
});

test('the browser entry in Node cannot read files: a clear error', async () => {
  const { Tqkv: BrowserTqkv } = await import('../dist/index.js');
  // dist/index.js shares its modules with dist/node.js in this process (node.js installed the
  // file-system platform), so check the message on a fresh copy of the module graph instead.
  assert.equal(typeof BrowserTqkv.load, 'function');
  const r = spawnSync(process.execPath, ['--input-type=module', '-e',
    `import { Tqkv } from ${JSON.stringify(new URL('index.js', dist).href)};
     try { await Tqkv.load(); console.log('loaded'); } catch (e) { console.log(e.message); }`], { encoding: 'utf8' });
  assert.match(r.stdout, /browser entry of tqkv.*no file-system access/);
  assert.ok(existsSync(new URL('node.js', dist)));
});
