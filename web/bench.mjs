// npm run bench: the fused attention of `tqkv-bench attend` (same shape: 4 heads, 4 KV heads,
// d = 128, K4 V4, one query token over all tokens, non-causal), timed in this Node process for
// the relaxed-SIMD, SIMD128 and scalar wasm builds, and natively by running
// ../build/bench/tqkv-bench in the same script run (its best kernel, and AVX2 when the CPU has it).
// One JSON object per line:
//   {"target":"wasm-relaxed"|"wasm-simd128"|"wasm-scalar"|"native", "heads", "kv_heads", "dim",
//    "tokens", "key_bits", "value_bits", "ns_per_query", "dense_fp32_ns_per_query", ...,
//    "spec", "preset" (null: rates given as bits), "precision" ("exact" | "fast")}
// then one {"target":"ratio", ...} line per token count with the speed ratios.
// Then, for each wasm build, the calibrated default cache (preset 'default', K3.5V2.5-w16:
// fractional rates, centred, exact window of 16; calibrated on the first 1024 tokens of the same
// keys/values) beside K4V4, both with 2 KV heads (grouped-query attention as in tq-ref-128), each
// with precision 'exact' and 'fast' (createCache({ precision })): rows with "preset":"default" and
// "spec":"K4V4", and a {"target":"ratio-default"} line per build and token count
// (default_slowdown_vs_k4v4 = ns_per_query default / K4V4, both exact; fast_speedup_vs_exact_default
// and _k4v4 = exact / fast; default_memory_vs_k4v4 = bytes_used ratio). --no-default skips them.
// Node 20 runs the relaxed module only with V8's --experimental-wasm-relaxed-simd, which this script turns on
// itself when the engine rejects a relaxed instruction (a {"target":"wasm-relaxed","error"} line
// when that does not help).
//
// Then Codec.dot rows: 4 queries over 4096 4-bit codes (d = 128), one call per query and one
// call for all four, against a plain JavaScript fp32 dot loop over the uncompressed vectors:
//   {"target":"codec-dot", "variant", "queries", "vectors", "dim", "bits", "per_query_calls_ns",
//    "one_call_ns", "js_fp32_ns", "speedup_vs_js_fp32"}
//
//   node bench.mjs [--tokens 4096,16384] [--seconds 0.5] [--heads 4] [--kv-heads 4] [--dim 128]
//                  [--key-bits 4] [--value-bits 4] [--only codec] [--no-default] [--dist DIR (another build of dist/)]
// TQKV_BENCH=path/to/tqkv-bench overrides the native binary.
import { existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { resolve } from 'node:path';
import v8 from 'node:v8';
const argvDist = process.argv.indexOf('--dist');
const { Tqkv, relaxedSimdSupported } = await import(argvDist > 0 ? new URL(`file://${process.argv[argvDist + 1]}/node.js`).href : './dist/node.js');

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1] ?? '']] : acc), []),
);
const heads = +(args.heads ?? 4), kvHeads = +(args['kv-heads'] ?? heads), dim = +(args.dim ?? 128);
const keyBits = +(args['key-bits'] ?? 4), valueBits = +(args['value-bits'] ?? 4);
const tokenList = String(args.tokens ?? '4096,16384').split(',').map(Number);
const budget = +(args.seconds ?? 0.5);

// Median over batches of the time per call, each batch at least ~20 ms (as tqkv-bench does).
function nsPerCall(fn) {
  fn();
  let reps = 1;
  for (;;) {
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) fn();
    if (performance.now() - t0 > 20) break;
    reps *= 2;
  }
  const per = [];
  const start = performance.now();
  while (per.length < 3 || (performance.now() - start < budget * 1000 && per.length < 15)) {
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) fn();
    per.push(((performance.now() - t0) / reps) * 1e6);
  }
  per.sort((a, b) => a - b);
  return per[per.length >> 1];
}

// Gaussian values (speed does not depend on them).
function gaussian(n, seed) {
  const out = new Float32Array(n);
  let s = seed >>> 0 || 1;
  const u = () => {
    s = (s ^ (s << 13)) >>> 0;
    s = (s ^ (s >>> 17)) >>> 0;
    s = (s ^ (s << 5)) >>> 0;
    return (s + 0.5) / 4294967296;
  };
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(u())), a = 2 * Math.PI * u();
    out[i] = r * Math.cos(a);
    if (i + 1 < n) out[i + 1] = r * Math.sin(a);
  }
  return out;
}

// Node 20 validates relaxed SIMD only with this V8 flag (set before any relaxed module is compiled).
if (!relaxedSimdSupported()) v8.setFlagsFromString('--experimental-wasm-relaxed-simd');
// Every module compiled by the optimizing tier up front: with V8's default dynamic tiering, code
// starts in the baseline compiler (Liftoff) and a hot function is recompiled in the background;
// on a busy machine that took seconds, and the first variant timed (relaxed) took as long per
// query at 4096 tokens as at 16384 (9-10 vs 10-12 ms). The time of compiling is not measured here.
v8.setFlagsFromString('--no-liftoff');

// variant: 'relaxed' (dist/tqkv-relaxed.wasm), 'simd128' (dist/tqkv.wasm) or 'scalar'.
// config: the cache: { kvHeads } with the rates of --key-bits/--value-bits, or { kvHeads, preset }
// (calibrated on the first 1024 tokens of each token count's keys and values).
async function wasmTarget(variant, config = { kvHeads }) {
  const precision = config.precision ?? 'exact';
  let t;
  try {
    t = await Tqkv.load({ simd: variant });
  } catch (e) {
    console.log(JSON.stringify({ target: `wasm-${variant}`, error: String(e.message ?? e) }));
    return [];
  }
  const rows = [];
  const { kvHeads } = config;
  const presetSpec = config.preset && t.presets.find((p) => p.name === config.preset)?.spec;
  if (config.preset && !presetSpec) throw new Error(`bench: no preset '${config.preset}' in this build`);
  for (const T of tokenList) {
    const row = kvHeads * dim;
    const K = gaussian(T * row, T), V = gaussian(T * row, T + 1), q = gaussian(heads * dim, T + 2);
    let cache;
    if (config.preset) {
      const n = Math.min(T, 1024);
      const cal = t.calibrate({ layers: 1, kvHeads, headDim: dim }, [{ keys: K.subarray(0, n * row), values: V.subarray(0, n * row) }]);
      cache = t.createCache({ preset: config.preset, heads, kvHeads, headDim: dim, calibration: cal, precision });
      cal.dispose();
    } else {
      cache = t.createCache({ heads, kvHeads, headDim: dim, keyBits, valueBits, ...(config.precision ? { precision } : {}) });
    }
    for (let t0 = 0; t0 < T; t0 += 4096) {
      const n = Math.min(4096, T - t0);
      cache.append(0, K.subarray(t0 * row, (t0 + n) * row), V.subarray(t0 * row, (t0 + n) * row));
    }
    const out = new Float32Array(heads * dim);
    const fused = nsPerCall(() => cache.attend(0, q, out, false));
    // Dense fp32 attention over the same keys/values, head-major, already in wasm memory.
    const x = t._x;
    const n = T * row;
    const pk = x.malloc(4 * n), pv = x.malloc(4 * n), pq = x.malloc(4 * q.length), po = x.malloc(4 * q.length);
    if (!pk || !pv || !pq || !po) throw new Error('bench: out of wasm memory');
    const f = new Float32Array(t._memory.buffer);
    for (let h = 0; h < kvHeads; h++)
      for (let i = 0; i < T; i++)
        for (let j = 0; j < dim; j++) {
          const src = (i * kvHeads + h) * dim + j, dst = (h * T + i) * dim + j;
          f[(pk >> 2) + dst] = K[src];
          f[(pv >> 2) + dst] = V[src];
        }
    f.set(q, pq >> 2);
    const shape = { heads, kvHeads, headDim: dim, tokens: T };
    const dense = nsPerCall(() => t.denseAttentionAt(shape, pq, pk, pv, po));
    const exact = new Float32Array(t._memory.buffer, po, q.length).slice();
    let cos = 0;
    for (let h = 0; h < heads; h++) {
      let d = 0, n1 = 0, n2 = 0;
      for (let j = 0; j < dim; j++) {
        const a = out[h * dim + j], b = exact[h * dim + j];
        d += a * b;
        n1 += a * a;
        n2 += b * b;
      }
      cos += d / Math.sqrt(n1 * n2) / heads;
    }
    for (const p of [pk, pv, pq, po]) x.free(p);
    const line = {
      target: `wasm-${variant}`, kernel: cache.kernel, heads, kv_heads: kvHeads, dim, tokens: T,
      key_bits: config.preset ? cache.config.keyBits : keyBits, value_bits: config.preset ? cache.config.valueBits : valueBits,
      spec: presetSpec ?? `K${keyBits}V${valueBits}`, preset: config.preset ?? null, precision: cache.config.precision ?? 'exact',
      ns_per_query: Math.round(fused), dense_fp32_ns_per_query: Math.round(dense),
      speedup_vs_dense_fp32: +(dense / fused).toFixed(4), cosine_vs_exact: +cos.toFixed(6),
      bytes_used: cache.bytesUsed(), variant: t.variant, engine: `node ${process.versions.node} (V8 ${process.versions.v8})`,
    };
    cache.dispose();
    console.log(JSON.stringify(line));
    rows.push(line);
  }
  return rows;
}

function nativeTarget(kernel) {
  const here = fileURLToPath(new URL('.', import.meta.url));
  const bin = process.env.TQKV_BENCH || resolve(here, '../build/bench/tqkv-bench');
  if (!existsSync(bin)) {
    console.log(JSON.stringify({ target: 'native', error: `no native benchmark at ${bin} (bash scripts/build.sh)` }));
    return [];
  }
  const argv = ['attend', '--json', '--tokens', tokenList.join(','), '--seconds', String(budget), '--heads', String(heads),
    '--kv-heads', String(kvHeads), '--dim', String(dim), '--key-bits', String(keyBits), '--value-bits', String(valueBits)];
  if (kernel) argv.push('--kernel', kernel);
  const r = spawnSync(bin, argv, { encoding: 'utf8' });
  if (r.status !== 0) {
    console.log(JSON.stringify({ target: 'native', kernel, error: (r.stderr || r.stdout).trim().split('\n').pop() }));
    return [];
  }
  const rows = r.stdout.split('\n').filter((l) => l.startsWith('{'))
    .map((l) => ({ target: 'native', ...JSON.parse(l), spec: `K${keyBits}V${valueBits}`, preset: null, precision: 'exact' }));
  for (const row of rows) console.log(JSON.stringify(row));
  return rows;
}

// Codec.dot: the teaching-page path (VectorCodec::dot through the C ABI), not the cache's fused one.
async function codecDot(simd) {
  let t;
  try {
    t = await Tqkv.load({ simd });
  } catch (e) {
    console.log(JSON.stringify({ target: 'codec-dot', variant: String(simd), error: String(e.message ?? e) }));
    return;
  }
  const d = 128, n = 4096, m = 4;
  const x = gaussian(n * d, 11), q = gaussian(m * d, 12);
  const codec = t.createCodec({ dim: d, bits: 4 });
  const codes = codec.encode(x);
  const out = new Float32Array(m * n);
  const perQuery = nsPerCall(() => {
    for (let i = 0; i < m; i++) codec.dot(q.subarray(i * d, (i + 1) * d), codes, out.subarray(i * n, (i + 1) * n));
  });
  let oneCall = null;
  try {
    codec.dot(q, codes, out);
    oneCall = Math.round(nsPerCall(() => codec.dot(q, codes, out)));
  } catch {} // a build before several queries per call
  const js = nsPerCall(() => {
    for (let i = 0; i < m; i++)
      for (let v = 0; v < n; v++) {
        let acc = 0;
        for (let j = 0; j < d; j++) acc += q[i * d + j] * x[v * d + j];
        out[i * n + v] = acc;
      }
  });
  const best = Math.min(perQuery, oneCall ?? Infinity);
  const line = { target: 'codec-dot', variant: t.variant ?? (simd ? 'simd128' : 'scalar'), kernel: t.kernel, queries: m, vectors: n, dim: d,
    bits: 4, per_query_calls_ns: Math.round(perQuery), one_call_ns: oneCall, js_fp32_ns: Math.round(js),
    speedup_vs_js_fp32: +(js / best).toFixed(3) };
  codec.dispose();
  console.log(JSON.stringify(line));
}

if (args.only === 'codec') {
  await codecDot('relaxed');
  await codecDot(true);
  await codecDot(false);
  process.exit(0);
}

const relaxed = await wasmTarget('relaxed');
const simd = await wasmTarget('simd128');
const scalar = await wasmTarget('scalar');
const native = nativeTarget('');
const nativeKernel = native[0]?.kernel;
const avx2 = nativeKernel && nativeKernel !== 'avx2' ? nativeTarget('avx2') : native;
for (const T of tokenList) {
  const s = simd.find((r) => r.tokens === T), c = scalar.find((r) => r.tokens === T);
  const x = relaxed.find((r) => r.tokens === T);
  const n = native.find((r) => r.tokens === T), a = avx2.find((r) => r.tokens === T);
  const ratio = { target: 'ratio', tokens: T, wasm_simd_speedup_vs_wasm_scalar: +(c.ns_per_query / s.ns_per_query).toFixed(3) };
  if (n) ratio[`wasm_simd_slowdown_vs_native_${n.kernel}`] = +(s.ns_per_query / n.ns_per_query).toFixed(3);
  if (a && a !== n) ratio.wasm_simd_slowdown_vs_native_avx2 = +(s.ns_per_query / a.ns_per_query).toFixed(3);
  if (x) {
    ratio.wasm_relaxed_speedup_vs_wasm_simd = +(s.ns_per_query / x.ns_per_query).toFixed(3);
    if (n) ratio[`wasm_relaxed_slowdown_vs_native_${n.kernel}`] = +(x.ns_per_query / n.ns_per_query).toFixed(3);
    if (a && a !== n) ratio.wasm_relaxed_slowdown_vs_native_avx2 = +(x.ns_per_query / a.ns_per_query).toFixed(3);
  }
  console.log(JSON.stringify(ratio));
}
// The calibrated default beside K4V4, 2 KV heads, per wasm build (interleaved per build so that
// both rows of a ratio are timed in the same minute of this loaded machine).
if (args['no-default'] === undefined) {
  for (const variant of ['relaxed', 'simd128', 'scalar']) {
    const k4 = await wasmTarget(variant, { kvHeads: 2 });
    const def = await wasmTarget(variant, { kvHeads: 2, preset: 'default' });
    const k4f = await wasmTarget(variant, { kvHeads: 2, precision: 'fast' });
    const deff = await wasmTarget(variant, { kvHeads: 2, preset: 'default', precision: 'fast' });
    for (const T of tokenList) {
      const a = k4.find((r) => r.tokens === T), d = def.find((r) => r.tokens === T);
      const af = k4f.find((r) => r.tokens === T), df = deff.find((r) => r.tokens === T);
      if (!a || !d) continue;
      console.log(JSON.stringify({ target: 'ratio-default', variant: `wasm-${variant}`, tokens: T, kv_heads: 2, spec: d.spec,
        default_slowdown_vs_k4v4: +(d.ns_per_query / a.ns_per_query).toFixed(3),
        fast_speedup_vs_exact_default: df ? +(d.ns_per_query / df.ns_per_query).toFixed(3) : null,
        fast_speedup_vs_exact_k4v4: af ? +(a.ns_per_query / af.ns_per_query).toFixed(3) : null,
        default_memory_vs_k4v4: +(d.bytes_used / a.bytes_used).toFixed(3),
        cosine_vs_exact_default: d.cosine_vs_exact, cosine_vs_exact_k4v4: a.cosine_vs_exact }));
    }
  }
}
await codecDot('relaxed');
await codecDot(true);
await codecDot(false);
