// Run by variants.test.mjs under `node --experimental-wasm-relaxed-simd` (Node 20 validates relaxed
// SIMD only with the flag): what the loader picks when the engine has relaxed SIMD, and whether
// the relaxed build codes exactly like the SIMD128 and scalar builds. Prints one JSON line.
// (`node --test test/` also runs every file of test/ once: without the flag this file does nothing.)
import { existsSync, readFileSync } from 'node:fs';
import { Tqkv, relaxedSimdSupported, supportedVariants } from '../dist/node.js';
import { stream, bytesEqual, worstRowRelError, parityConfigs, appendParityTokens, parityCodecs, parityCodecInput } from './helpers.mjs';

if (!process.execArgv.includes('--experimental-wasm-relaxed-simd')) process.exit(0);

const relaxedFile = new URL('../dist/tqkv-relaxed.wasm', import.meta.url);
const simdFile = new URL('../dist/tqkv.wasm', import.meta.url);
const result = { relaxedSimdSupported: relaxedSimdSupported(), supported: supportedVariants(), relaxedFile: existsSync(relaxedFile) };

// 'auto': relaxed when its file loads, else SIMD128 with the reason recorded.
const auto = await Tqkv.load({ simd: 'auto' });
result.auto = { variant: auto.variant, kernel: auto.kernel, fallbacks: auto.fallbacks };

// A relaxed module the engine rejects (not a module at all): 'auto' falls back, forcing it throws.
const junk = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 99]);
const fallback = await Tqkv.load({ wasm: { relaxed: junk, simd128: readFileSync(simdFile) } });
result.rejected = { variant: fallback.variant, fallbacks: fallback.fallbacks };
try {
  await Tqkv.load({ simd: 'relaxed', wasm: { relaxed: junk } });
  result.forcedJunk = 'loaded';
} catch (e) {
  result.forcedJunk = `${e.name}: ${e.message}`;
}

if (result.relaxedFile) {
  // relaxed == SIMD128 == scalar: serialized caches and codec bytes bit for bit, attention within 1e-4.
  const builds = await Promise.all(['relaxed', 'simd128', 'scalar'].map((simd) => Tqkv.load({ simd })));
  result.kernels = builds.map((t) => t.kernel);
  result.mismatches = [];
  for (const [i, { tokens, ...cfg }] of parityConfigs.entries()) {
    const caches = builds.map((t) => t.createCache(cfg));
    appendParityTokens(caches, cfg, tokens, i);
    const bytes = caches.map((c) => c.serialize());
    if (!bytesEqual(bytes[0], bytes[1]) || !bytesEqual(bytes[0], bytes[2])) result.mismatches.push(`config ${i}: serialized caches differ`);
    const qs = stream(5 * cfg.heads * cfg.headDim, 300 + i);
    const outs = caches.map((c) => c.attend(0, qs));
    for (const j of [1, 2]) {
      const err = worstRowRelError(outs[0], outs[j], cfg.headDim);
      if (!(err < 1e-4)) result.mismatches.push(`config ${i}: relaxed attention differs from ${builds[j].variant} by ${err}`);
    }
    for (const c of caches) c.dispose();
  }
  for (const [method, bits, dim] of parityCodecs) {
    const x = parityCodecInput(dim, bits);
    const codecs = builds.map((t) => t.createCodec({ dim, bits, method }));
    const codes = codecs.map((c) => c.encode(x));
    if (!bytesEqual(codes[0], codes[1]) || !bytesEqual(codes[0], codes[2])) result.mismatches.push(`${method}${bits} d=${dim}: codes differ`);
    for (const c of codecs) c.dispose();
  }
}
console.log(JSON.stringify(result));
