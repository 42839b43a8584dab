// The measurements of `npm run bench`, shared by Node (bench.mjs) and Chromium (bench/page.html,
// `npm run bench -- --browser`): the same code times the same calls in both engines. Nothing here
// prints; bench.mjs turns the rows into JSON lines.

// The median of a list of numbers (upper median for even lengths; the list is left as it was).
export const median = (v) => [...v].sort((x, y) => x - y)[v.length >> 1];

// Median over batches of the time per call, each batch at least ~20 ms (as tqkv-bench does).
// performance.now() is coarsened in browsers (to 100 us without cross-origin isolation): 0.5% of a
// 20 ms batch.
export function nsPerCall(fn, budget) {
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
  return median(per);
}

// Two functions timed in alternating batches (as tqkv-bench attend's interleaved rounds): the median
// time per call of each and the median over rounds of b's time / a's time, a ratio that a shared
// machine's drift hits on both sides alike.
export function pairedNsPerCall(a, b, budget) {
  const reps = [a, b].map((fn) => {
    fn();
    let r = 1;
    for (;;) {
      const t0 = performance.now();
      for (let i = 0; i < r; i++) fn();
      if (performance.now() - t0 > 20) return r;
      r *= 2;
    }
  });
  const ta = [], tb = [], ratio = [];
  const batch = (fn, r) => {
    const t0 = performance.now();
    for (let i = 0; i < r; i++) fn();
    return ((performance.now() - t0) / r) * 1e6;
  };
  const start = performance.now();
  while (ta.length < 3 || (performance.now() - start < 2 * budget * 1000 && ta.length < 15)) {
    ta.push(batch(a, reps[0]));
    tb.push(batch(b, reps[1]));
    ratio.push(tb[tb.length - 1] / ta[ta.length - 1]);
  }
  return { a: median(ta), b: median(tb), ratio: median(ratio) };
}

// Gaussian values (speed does not depend on them).
export function gaussian(n, seed) {
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

// One row per token count: the fused attention of one query over the cache (non-causal) against
// dense fp32 attention over the same keys and values in the same wasm module.
//   Tqkv: the package's class (dist/node.js or dist/index.js); engine: a label for the rows.
//   o: { variant: 'relaxed' | 'simd128' | 'scalar', precision: 'exact' | 'fast', preset (optional:
//        calibrated on the first 1024 tokens of each token count's keys and values), tokens: [T...],
//        heads, kvHeads, dim, keyBits, valueBits, seconds }
// Returns { rows } or { error } when the build cannot load here.
export async function attendRows(Tqkv, engine, o) {
  const { variant, precision, preset, heads, kvHeads, dim, keyBits, valueBits } = o;
  let t;
  try {
    t = await Tqkv.load({ simd: variant, ...(o.threads > 1 ? { threads: o.threads } : {}) });
  } catch (e) {
    return { error: String(e.message ?? e) };
  }
  const presetSpec = preset && t.presets.find((p) => p.name === preset)?.spec;
  if (preset && !presetSpec) throw new Error(`bench: no preset '${preset}' in this build`);
  const rows = [];
  for (const T of o.tokens) {
    const row = kvHeads * dim;
    const K = gaussian(T * row, T), V = gaussian(T * row, T + 1), q = gaussian(heads * dim, T + 2);
    let cache;
    if (preset) {
      const n = Math.min(T, 1024);
      const cal = t.calibrate({ layers: 1, kvHeads, headDim: dim }, [{ keys: K.subarray(0, n * row), values: V.subarray(0, n * row) }]);
      cache = t.createCache({ preset, heads, kvHeads, headDim: dim, calibration: cal, precision });
      cal.dispose();
    } else {
      cache = t.createCache({ heads, kvHeads, headDim: dim, keyBits, valueBits, precision });
    }
    for (let t0 = 0; t0 < T; t0 += 4096) {
      const n = Math.min(4096, T - t0);
      cache.append(0, K.subarray(t0 * row, (t0 + n) * row), V.subarray(t0 * row, (t0 + n) * row));
    }
    // As a runtime does once the prefill chunk's queries are answered: the exact rows kept for
    // them go (with a window; bytes_used is then the decode-time size).
    cache.releaseChunkRows();
    const out = new Float32Array(heads * dim);
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
    const timed = pairedNsPerCall(() => cache.attend(0, q, out, false), () => t.denseAttentionAt(shape, pq, pk, pv, po), o.seconds);
    const fused = timed.a, dense = timed.b;
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
    rows.push({
      target: `wasm-${variant}`, kernel: cache.kernel, heads, kv_heads: kvHeads, dim, tokens: T,
      key_bits: preset ? cache.config.keyBits : keyBits, value_bits: preset ? cache.config.valueBits : valueBits,
      spec: presetSpec ?? `K${keyBits}V${valueBits}`, preset: preset ?? null, precision: cache.config.precision,
      ns_per_query: Math.round(fused), dense_fp32_ns_per_query: Math.round(dense),
      speedup_vs_dense_fp32: +(dense / fused).toFixed(4), paired_speedup_vs_dense_fp32: +timed.ratio.toFixed(4),
      cosine_vs_exact: +cos.toFixed(6),
      bytes_used: cache.bytesUsed(), variant: t.variant, engine, threads: t.threads,
    });
    cache.dispose();
  }
  return { rows };
}

// Codec.dot: the teaching-page path (VectorCodec::dot through the C ABI), not the cache's fused
// one: 4 queries over 4096 4-bit codes (d = 128), one call per query and one call for all four,
// against a plain JavaScript fp32 dot loop over the uncompressed vectors.
export async function codecDotRow(Tqkv, simd, seconds) {
  let t;
  try {
    t = await Tqkv.load({ simd });
  } catch (e) {
    return { target: 'codec-dot', variant: String(simd), error: String(e.message ?? e) };
  }
  const d = 128, n = 4096, m = 4;
  const x = gaussian(n * d, 11), q = gaussian(m * d, 12);
  const codec = t.createCodec({ dim: d, bits: 4 });
  const codes = codec.encode(x);
  const out = new Float32Array(m * n);
  const perQuery = nsPerCall(() => {
    for (let i = 0; i < m; i++) codec.dot(q.subarray(i * d, (i + 1) * d), codes, out.subarray(i * n, (i + 1) * n));
  }, seconds);
  codec.dot(q, codes, out);
  const oneCall = Math.round(nsPerCall(() => codec.dot(q, codes, out), seconds));
  const js = nsPerCall(() => {
    for (let i = 0; i < m; i++)
      for (let v = 0; v < n; v++) {
        let acc = 0;
        for (let j = 0; j < d; j++) acc += q[i * d + j] * x[v * d + j];
        out[i * n + v] = acc;
      }
  }, seconds);
  const best = Math.min(perQuery, oneCall);
  codec.dispose();
  return { target: 'codec-dot', variant: t.variant ?? (simd ? 'simd128' : 'scalar'), kernel: t.kernel, queries: m, vectors: n, dim: d,
    bits: 4, per_query_calls_ns: Math.round(perQuery), one_call_ns: oneCall, js_fp32_ns: Math.round(js),
    speedup_vs_js_fp32: +(js / best).toFixed(3) };
}

// Decode tokens/s of a real model with the calibrated default cache (preset 'default') against the
// exact fp32 cache in the same module, as `tqkv-bench decode` measures natively. Procedure: the
// model's eval.txt as token ids; calibration on its last `calibrationTokens` ids (held out: the
// decoded ids are the first `context`); each runner prefilled with the first context - steps ids;
// then the last `steps` ids decoded token by token, the two runners taking turns in batches of 8
// tokens, so that a shared machine's drift falls on both alike. speedup_vs_fp32 is the median over
// batches of (fp32 time / default time), speedup_vs_fp32_min the smallest.
//   o: { variant: 'relaxed' | 'simd128' | 'scalar', modelUrl (directory: config.json,
//        model.safetensors, eval.txt), model (its name, for the rows), context, steps, calibrationTokens }
//   readBytes(url): a file's bytes (fetch in a browser, node:fs in Node)
// Returns { rows } (one per cache: fp32 first) or { error }.
export async function decodeRows(Tqkv, engine, o, readBytes) {
  const { variant, modelUrl, context, steps, calibrationTokens } = o;
  let t;
  try {
    t = await Tqkv.load({ simd: variant, ...(o.threads > 1 ? { threads: o.threads } : {}) });
  } catch (e) {
    return { error: String(e.message ?? e) };
  }
  const model = await t.fetchModel(modelUrl);
  try {
    const ids = model.tokens(new TextDecoder().decode(await readBytes(new URL('eval.txt', modelUrl))));
    if (ids.length < context + calibrationTokens) return { error: `bench decode: eval.txt has ${ids.length} tokens, needs ${context + calibrationTokens}` };
    const spec = t.presets.find((p) => p.name === 'default').spec;
    const t0 = performance.now();
    const calibration = model.calibrate(ids.slice(ids.length - calibrationTokens));
    const calibrationMs = performance.now() - t0;
    const runs = [{ config: 'fp32', runner: model.createRunner('fp32') }];
    try {
      runs.push({ config: spec, runner: model.createRunner(spec, { calibration }) });
      for (const r of runs) {
        const p0 = performance.now();
        r.runner.prefill(ids.subarray(0, context - steps));
        r.prefillMs = performance.now() - p0;
        r.batches = [];
      }
      const batch = 8;
      for (let i = context - steps; i < context; i += batch) {
        const end = Math.min(context, i + batch);
        for (const r of runs) {
          const b0 = performance.now();
          for (let k = i; k < end; k++) r.runner.decode(ids[k]);
          r.batches.push((performance.now() - b0) / (end - i));
        }
      }
      const ratios = runs[0].batches.map((f, k) => f / runs[1].batches[k]);
      const rows = runs.map((r, k) => ({
        target: 'decode', variant: `wasm-${variant}`, model: o.model ?? null, config: r.config, preset: k ? 'default' : null,
        context, steps, decode_tokens_per_s: +(1000 / median(r.batches)).toFixed(2), ms_per_token: +median(r.batches).toFixed(3),
        prefill_tokens_per_s: +((context - steps) / r.prefillMs * 1000).toFixed(1), bits_per_coord: +r.runner.stats().bitsPerCoord.toFixed(3),
        ...(k ? { speedup_vs_fp32: +median(ratios).toFixed(4), speedup_vs_fp32_min: +Math.min(...ratios).toFixed(4),
          calibration_tokens: calibrationTokens, calibration_ms: Math.round(calibrationMs) } : {}),
        engine, threads: t.threads,
      }));
      return { rows };
    } finally {
      for (const r of runs) r.runner.dispose();
      calibration.dispose();
    }
  } finally {
    model.dispose();
  }
}
