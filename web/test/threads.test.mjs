// The threaded builds (Tqkv.load({ threads })): workers on a shared memory give the same bits as
// one thread, for attention with both precisions, causal chunks, softmax statistics, appends that
// grow the memory between calls, and many calls in a row; bad thread options are refused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tqkv, relaxedSimdSupported } from '../dist/node.js';

const H = 8, KH = 4, D = 128, ROW = KH * D;

function gaussian(n, seed) {
  let s = seed >>> 0 || 1;
  const next = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) + 0.5) / 4294967296;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(next())), a = 2 * Math.PI * next();
    out[i] = r * Math.cos(a);
    if (i + 1 < n) out[i + 1] = r * Math.sin(a);
  }
  return out;
}

const sameBits = (a, b, what) => {
  assert.equal(a.length, b.length, what);
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length), y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) assert.fail(`${what}: element ${i} differs (${a[i]} vs ${b[i]})`);
};

const variants = ['simd128', ...(relaxedSimdSupported() ? ['relaxed'] : [])];

for (const simd of variants) {
  test(`${simd}: 3 threads give the bits of 1 thread`, async () => {
    const one = await Tqkv.load({ simd });
    const three = await Tqkv.load({ simd, threads: 3 });
    assert.equal(one.threads, 1);
    assert.equal(one.threaded, false);
    assert.equal(three.threads, 3);
    assert.equal(three.threaded, true);
    assert.equal(three._x.tqkv_worker_threads(), 2, 'two workers entered the pool');
    assert.equal(three.variant, simd);

    for (const precision of ['fast', 'exact']) {
      // 5000 tokens: three 2048-token units per KV head (12 pieces of work), window and sinks.
      const opts = { heads: H, kvHeads: KH, headDim: D, keyBits: 4, valueBits: 3, window: 16, precision };
      const a = one.createCache(opts), b = three.createCache(opts);
      const K = gaussian(5000 * ROW, 1), V = gaussian(5000 * ROW, 2);
      a.append(0, K, V);
      b.append(0, K, V);
      const q = gaussian(4 * H * D, 3);
      sameBits(b.attend(0, q.subarray(0, H * D), undefined, false), a.attend(0, q.subarray(0, H * D), undefined, false),
        `${precision}: one query`);
      sameBits(b.attend(0, q), a.attend(0, q), `${precision}: a causal chunk of 4 queries`);
      const sa = a.attendStats(0, q.subarray(0, H * D)), sb = b.attendStats(0, q.subarray(0, H * D));
      for (const k of ['acc', 'maxLogit', 'sumExp']) sameBits(sb[k], sa[k], `${precision}: attendStats ${k}`);
      // Appends between calls (the memory grows under the workers), many calls in a row.
      for (let round = 0; round < 40; round++) {
        const k = gaussian(97 * ROW, 10 + round), v = gaussian(97 * ROW, 100 + round);
        a.append(0, k, v);
        b.append(0, k, v);
        const qq = gaussian(H * D, 1000 + round);
        sameBits(b.attend(0, qq, undefined, false), a.attend(0, qq, undefined, false), `${precision}: round ${round}`);
      }
      a.dispose();
      b.dispose();
    }
  });
}

test('thread options are checked', async () => {
  for (const threads of [0, 1.5, 65, -1, '2', NaN, 'all'])
    await assert.rejects(Tqkv.load({ threads }), (e) => e instanceof RangeError && /threads must be 'auto' or an integer from 1 to 64/.test(e.message));
  // 'auto': every core (at most 8) where threads can run, else one thread and a note why.
  const auto = await Tqkv.load({ simd: 'simd128', threads: 'auto' });
  const cores = (await import('node:os')).availableParallelism?.() ?? (await import('node:os')).cpus().length;
  assert.equal(auto.threads, Math.min(8, cores));
  assert.equal(auto.threaded, auto.threads > 1);
  const scalar = await Tqkv.load({ simd: 'scalar', threads: 'auto' });
  assert.equal(scalar.threads, 1);
  assert.match(scalar.fallbacks[0], /^threads: auto: 1 thread \(no SIMD build\)/);
  await assert.rejects(Tqkv.load({ simd: 'scalar', threads: 2 }), /there is no threaded scalar build/);
  // A module that is not a threaded build.
  const single = new URL('../dist/tqkv.wasm', import.meta.url);
  await assert.rejects(Tqkv.load({ simd: 'simd128', wasm: single, threads: 2 }), /not a threaded build/);
  // threads: 1 with a threaded module runs it on one thread.
  const t = await Tqkv.load({ simd: 'simd128', wasm: new URL('../dist/tqkv-mt.wasm', import.meta.url) });
  assert.equal(t.threaded, true);
  assert.equal(t.threads, 1);
  const c = t.createCache({ heads: 2, kvHeads: 1, headDim: 64 });
  c.append(0, gaussian(64 * 10, 5), gaussian(64 * 10, 6));
  assert.equal(c.attend(0, gaussian(128, 7)).length, 128);
  // C++ exceptions keep their type in the threaded build (its landing pads are thread-local as
  // in Emscripten's pthread libraries: wasm/build.sh compiles it with clang-16).
  const three = await Tqkv.load({ simd: 'simd128', threads: 3 });
  const d = three.createCache({ heads: 2, kvHeads: 1, headDim: 64 });
  assert.throws(() => d.append(0, new Float32Array(63), new Float32Array(63)),
    (e) => e.code === 'invalid argument' && /keys have 63 floats, expected a positive multiple/.test(e.message));
  assert.throws(() => three.createCache({ heads: 3, kvHeads: 2, headDim: 64 }),
    (e) => e.code === 'invalid argument' && /kv_heads 2 must divide heads 3/.test(e.message));
});

// The workers' side of the platform (platform-node.ts), wrapped: what the loader starts and stops.
const { platform, setPlatform } = await import('../dist/platform.js');

async function withSpawner(wrap, fn) {
  const node = platform();
  setPlatform({ ...node, spawnWorker: wrap(node.spawnWorker) });
  try {
    return await fn();
  } finally {
    setPlatform(node);
  }
}

test('dispose() stops the workers; the instance goes on, on one thread, with the same bits', async () => {
  let started = 0, stopped = 0;
  const counting = (spawn) => (src, data) => {
    const w = spawn(src, data);
    started++;
    return { ready: w.ready, terminate: () => (stopped++, w.terminate()) };
  };
  await withSpawner(counting, async () => {
    const one = await Tqkv.load({ simd: 'simd128' });
    const opts = { heads: H, kvHeads: KH, headDim: D, keyBits: 4, valueBits: 4 };
    const K = gaussian(3000 * ROW, 21), V = gaussian(3000 * ROW, 22), q = gaussian(H * D, 23);
    const ref = one.createCache(opts);
    ref.append(0, K, V);
    const want = ref.attend(0, q, undefined, false);
    {
      const three = await Tqkv.load({ simd: 'simd128', threads: 3 });
      assert.equal(started, 2);
      const c = three.createCache(opts);
      c.append(0, K, V);
      sameBits(c.attend(0, q, undefined, false), want, '3 threads');
      three.dispose();
      assert.equal(stopped, 2, 'both workers terminated');
      assert.equal(three.threads, 1);
      // The cache made before goes on, and so does a new one.
      sameBits(c.attend(0, q, undefined, false), want, 'after dispose');
      const c2 = three.createCache(opts);
      c2.append(0, K, V);
      sameBits(c2.attend(0, q, undefined, false), want, 'a cache made after dispose');
      three.dispose(); // idempotent
      three[Symbol.dispose](); // (what `using` calls)
      assert.equal(stopped, 2);
    }
    one.dispose(); // a one-thread instance: nothing to do, still usable
    assert.equal(ref.attend(0, q, undefined, false).length, H * D);
  });
});

test('workers that cannot start: threads N throws and stops the ones started, auto falls back to 1 thread', async () => {
  // The second worker is refused at once (as a Content-Security-Policy without blob: does in a
  // browser), or fails after starting.
  let stopped = 0;
  const failing = (how, at) => (spawn) => {
    let n = 0;
    return (src, data) => {
      if (++n === at) {
        if (how === 'throws') throw new Error('tqkv: threads: cannot start a worker: refused by the test');
        return { ready: Promise.reject(new Error('tqkv: threads: a worker failed to start: failed in the test')), terminate: () => stopped++ };
      }
      const w = spawn(src, data);
      return { ready: w.ready, terminate: () => (stopped++, w.terminate()) };
    };
  };
  for (const how of ['throws', 'rejects']) {
    stopped = 0;
    await withSpawner(failing(how, 2), () =>
      assert.rejects(Tqkv.load({ simd: 'simd128', threads: 3 }), how === 'throws' ? /refused by the test/ : /failed in the test/));
    assert.equal(stopped, how === 'throws' ? 1 : 2, `${how}: every worker started was terminated`);
    stopped = 0;
    const cores = (await import('node:os')).availableParallelism?.() ?? (await import('node:os')).cpus().length;
    const auto = await withSpawner(failing(how, 1), () => Tqkv.load({ simd: 'simd128', threads: 'auto' }));
    assert.equal(auto.threads, 1);
    if (cores > 1) {  // (one core: 'auto' is one thread without trying workers)
      assert.match(auto.fallbacks.at(-1), how === 'throws' ? /^threads: auto: 1 thread \(cannot start a worker: refused/ : /^threads: auto: 1 thread \(a worker failed to start: failed in the test\)/);
      // Refused at once: nothing started; a failure after starting: all min(8, cores) - 1 stopped.
      assert.equal(stopped, how === 'throws' ? 0 : Math.min(8, cores) - 1);
    }
    const c = auto.createCache({ heads: 2, kvHeads: 1, headDim: 64 });
    c.append(0, gaussian(64 * 100, 5), gaussian(64 * 100, 6));
    assert.equal(c.attend(0, gaussian(128, 7)).length, 128);
  }
});
