// What the test page computes (test/browser.test.mjs checks it against Node; outside test/, whose
// every .js file node --test would run as a test): on the page itself
// (index.html) or, with ?in=worker, inside a module Web Worker (worker.js), as runtimes that run
// their model off the main thread use tqkv. Parameters are the page's query string.
import { Tqkv, TqkvError, simdSupported, relaxedSimdSupported } from '/node_modules/tqkv/dist/index.js';
import { fnv1a, stream } from './inputs.js';

export async function run(params) {
  const simdParam = params.get('simd');  // '0' forces the scalar build, '1' the SIMD128 one, or a variant name
  const result = { ok: false };
  try {
    const simd = simdParam === null ? undefined : simdParam === '0' ? false : simdParam === '1' ? true : simdParam;
    // ?threads=N: the threaded build with N - 1 workers (the test server makes the page
    // cross-origin isolated, as threads need); ?threads=auto.
    const threadsParam = params.get('threads') ?? '1';
    const threads = threadsParam === 'auto' ? 'auto' : Number(threadsParam);
    const t = await Tqkv.load({ ...(simd === undefined ? {} : { simd }), ...(threads === 'auto' || threads > 1 ? { threads } : {}) });
    const heads = 8, kvHeads = 2, headDim = 128, tokens = 1000, row = kvHeads * headDim, q = heads * headDim;
    const cache = t.createCache({ layers: 2, heads, kvHeads, headDim, keyBits: 4, valueBits: 3, window: 16 });
    // prefill in chunks, then decode steps
    for (let t0 = 0; t0 < tokens; t0 += 250)
      cache.append(1, stream(250 * row, 10 + t0), stream(250 * row, 20 + t0));
    const queries = stream(q, 7);
    const out = new Float32Array(q);
    cache.attend(1, queries, out);
    const t1 = performance.now();
    let reps = 0;
    while (performance.now() - t1 < 300) { cache.attend(1, queries, out, false); reps++; }
    const nsPerQuery = (performance.now() - t1) / reps * 1e6;
    cache.attend(1, queries, out);
    const bytes = cache.serialize();
    const again = Tqkv.deserialize(bytes);
    const out2 = new Float32Array(q);
    (again === undefined ? cache : again).attend(1, queries, out2);
    let error = null;
    try { cache.append(1, new Float32Array(row - 1), new Float32Array(row - 1)); } catch (e) { error = { name: e.name, code: e.code, message: e.message, isTqkvError: e instanceof TqkvError }; }
    const nan = stream(row, 3); nan[5] = NaN;
    let nanError = null;
    try { cache.append(1, nan, stream(row, 4)); } catch (e) { nanError = e.message; }
    Object.assign(result, {
      ok: true, simdSupported: simdSupported(), relaxedSimdSupported: relaxedSimdSupported(), simd: t.simd,
      variant: t.variant, fallbacks: t.fallbacks, kernel: cache.kernel, defaultKernel: t.kernel,
      tokens: cache.tokens(1), bytesUsed: cache.bytesUsed(), fp16Bytes: 2 * tokens * row * 2,
      serializedLength: bytes.length, serializedHash: fnv1a(bytes), out: Array.from(out),
      roundTripEqual: out.every((x, i) => x === out2[i]), error, nanError, tokensAfterErrors: cache.tokens(1),
      nsPerQuery, memoryBytes: t.memoryBytes, userAgent: navigator.userAgent,
      threads: t.threads, threaded: t.threaded, workers: t._x.tqkv_worker_threads(), crossOriginIsolated,
      hardwareConcurrency: navigator.hardwareConcurrency,
    });
    // dispose(): the workers stop; the cache goes on, on this thread, with the same bits.
    t.dispose();
    const out3 = new Float32Array(q);
    cache.attend(1, queries, out3);
    Object.assign(result, { threadsAfterDispose: t.threads, sameAfterDispose: out.every((x, i) => x === out3[i]) });
    cache.dispose();
    again.dispose();
  } catch (e) {
    result.error = `${String(e)}\n${(e && e.stack) || ''}`;  // (Firefox's stack has no message)
  }
  result.inWorker = typeof document === 'undefined';
  return result;
}
