// Memory: the wasm memory grows as blocks are added (views of it are refreshed), and when it
// cannot grow (a small maximumMemory) calls fail with 'out of memory' and change nothing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tqkv, TqkvError } from '../dist/node.js';
import { stream, bytesEqual } from './helpers.mjs';

for (const simd of [true, false]) {
  test(`${simd ? 'simd' : 'scalar'}: growth failure with maximumMemory = 8 MiB leaves the cache usable and unchanged`, async () => {
    const t = await Tqkv.load({ simd, maximumMemory: 8 << 20 });
    const c = t.createCache({ heads: 8, kvHeads: 8, headDim: 128, blockTokens: 256 });
    const row = 8 * 128;
    const chunk = 256;
    const k = stream(chunk * row, 1), v = stream(chunk * row, 2);
    // The attention workspace (per-thread tables, partial softmax states of the work units) is
    // allocated by the first attend and reused: attend once before the memory fills, as a runtime
    // does, over more than one work unit of 2048 tokens (the filled cache holds 2304-2560 tokens,
    // two units; warmed up with one, whether the second unit's state still fits after the fill
    // depended on where the last arena happened to end).
    const q = stream(8 * 128, 3);
    for (let i = 0; i < 9; i++) c.append(0, k, v);
    c.attend(0, q);
    c.truncate(0);
    let appended = 0, error;
    for (let i = 0; i < 100 && !error; i++) {
      try {
        c.append(0, k, v);
        appended += chunk;
      } catch (e) {
        error = e;
      }
    }
    assert.ok(error instanceof TqkvError, `expected an out-of-memory TqkvError after ${appended} tokens, got ${error}`);
    assert.equal(error.code, 'out of memory', error.message);
    assert.ok(appended > 0);
    assert.equal(c.tokens(), appended, 'the failed append added nothing');
    assert.ok(t.memoryBytes <= 8 << 20);
    // the cache still works: attend, serialize (small enough), truncate, append again
    const out = c.attend(0, q);
    assert.ok(out.every(Number.isFinite));
    c.truncate(chunk);
    c.append(0, k, v);
    assert.equal(c.tokens(), 2 * chunk);
    // a staging buffer too large for the memory: the JS side fails the same way
    assert.throws(() => c.append(0, new Float32Array(2 << 20), new Float32Array(2 << 20)),
      (e) => e instanceof TqkvError && e.code === 'out of memory');
    assert.equal(c.tokens(), 2 * chunk);
    // creating caches until memory runs out fails cleanly too
    const made = [];
    assert.throws(() => {
      for (let i = 0; i < 1000; i++) {
        const x = t.createCache({ heads: 8, headDim: 128, window: 4096 });
        made.push(x);
      }
    }, (e) => e instanceof TqkvError && e.code === 'out of memory');
    for (const x of made) x.dispose();
    c.dispose();
  });
}

test('views survive memory growth: results after the memory grew are correct', async () => {
  const t = await Tqkv.load({ simd: true, maximumMemory: 256 << 20 });
  const ref = await Tqkv.load({ simd: true });
  const cfg = { heads: 4, kvHeads: 4, headDim: 128, blockTokens: 64 };
  const a = t.createCache(cfg), b = ref.createCache(cfg);
  const q = stream(512, 9);
  const outA = new Float32Array(512), outB = new Float32Array(512);
  const before = t.memoryBytes;
  for (let i = 0; i < 12; i++) {
    const k = stream(2048 * 512, 100 + i), v = stream(2048 * 512, 200 + i);
    a.append(0, k, v);
    b.append(0, k, v);
    a.attend(0, q, outA, false);
    b.attend(0, q, outB, false);
    assert.deepEqual(outA, outB);
  }
  assert.ok(t.memoryBytes > before, 'the memory grew');
  assert.ok(bytesEqual(a.serialize(), b.serialize()));
  a.dispose();
  b.dispose();
});

// releaseChunkRows: with a window, append keeps a prefill chunk's exact fp32 rows for its causal
// queries until the next append; releasing them after the chunk's attend returns the cache to the
// size of its codes plus the window, and the next decode step attends as without the release.
test('releaseChunkRows frees a prefill chunk\'s exact rows; decode steps are unchanged', async () => {
  const t = await Tqkv.load({});
  const opts = { layers: 2, heads: 4, kvHeads: 2, headDim: 64, keyBits: 4, valueBits: 3, window: 16, precision: 'exact' };
  const a = t.createCache(opts), b = t.createCache(opts);
  const row = 2 * 64, n = 1000;
  const k = stream(n * row, 5), v = stream(n * row, 6);
  for (const c of [a, b]) for (const l of [0, 1]) c.append(l, k, v);
  const full = a.bytesUsed();
  a.releaseChunkRows(0);
  assert.equal(full - a.bytesUsed(), (n - 16) * row * 8, 'one layer: (chunk - window) rows of keys and values');
  a.releaseChunkRows();
  assert.equal(full - a.bytesUsed(), 2 * (n - 16) * row * 8, 'every layer');
  assert.throws(() => a.releaseChunkRows(2), TypeError);
  const k1 = stream(row, 7), v1 = stream(row, 8), q = stream(4 * 64, 9);
  for (const c of [a, b]) c.append(1, k1, v1);
  assert.deepEqual(a.attend(1, q), b.attend(1, q), 'a decode step sees its exact window either way');
  a.dispose();
  b.dispose();
});
