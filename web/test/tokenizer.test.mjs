// The tokenizer in WebAssembly (Tokenizer over tqkv_tokenizer_* of the C ABI, the same C++ as the
// native tools):
//   - a byte-level BPE tokenizer.json written here: ids derived by hand (as tests/test_tokenizer.cpp),
//     special tokens, round trips, errors;
//   - the real tq-bpe-64 tokenizer (../shared/data/tq-bpe-64; skipped with a message when absent):
//     the ids of eval.txt equal kv/tokens.npy (produced by Hugging Face tokenizers), and
//     fetchModel attaches it as model.tokenizer.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Tqkv, TqkvError, Tokenizer } from '../dist/node.js';

const here = dirname(fileURLToPath(import.meta.url));
const bpeDir = process.env.TQKV_BPE_MODEL || resolve(here, '../../../shared/data/tq-bpe-64');

// GPT-2's byte -> character map.
function byteChar(b) {
  let n = 0;
  for (let x = 0; x < 256; x++) {
    const keep = (x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255);
    const c = keep ? x : 256 + n++;
    if (x === b) return String.fromCodePoint(c);
  }
}
// ids 0..255 = bytes; 256 Ġt, 257 he, 258 Ġthe, 259 12, 260 ĠĠ; 261 <|endoftext|>.
function byteLevelJson() {
  const vocab = {};
  for (let b = 0; b < 256; b++) vocab[byteChar(b)] = b;
  const merges = [['Ġ', 't'], ['h', 'e'], ['Ġt', 'he'], ['1', '2'], ['Ġ', 'Ġ']];
  merges.forEach(([a, b], i) => (vocab[a + b] = 256 + i));
  return JSON.stringify({
    added_tokens: [{ id: 261, content: '<|endoftext|>', special: true }],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, use_regex: true },
    decoder: { type: 'ByteLevel' },
    model: { type: 'BPE', vocab, merges: merges.map(([a, b]) => `${a} ${b}`) },
  });
}

for (const simd of [true, false]) {
  test(`${simd ? 'simd' : 'scalar'}: byte-level BPE tokenizer: hand-derived ids, round trips, errors`, async () => {
    const t = await Tqkv.load({ simd });
    const tok = t.loadTokenizer(byteLevelJson());
    assert.ok(tok instanceof Tokenizer);
    assert.equal(tok.vocab, 262);
    assert.equal(tok.bos, -1);
    assert.deepEqual([...tok.encode(' the')], [258]);
    assert.deepEqual([...tok.encode('the the')], [116, 257, 258]);
    assert.deepEqual([...tok.encode('12 12345')], [259, 32, 259, 51, 52, 53]);
    assert.deepEqual([...tok.encode('a    b')], [97, 260, 32, 32, 98]);  // "   " | " b"
    assert.deepEqual([...tok.encode('a<|endoftext|>b')], [97, 261, 98]);
    for (const s of ['héllo wörld 日本語 🙂', 'a   b\t\t\n\n c  ', '0123456789 3.14', '', '<|endoftext|>x']) {
      assert.equal(tok.decode(tok.encode(s)), s);
    }
    assert.throws(() => tok.decode([262]), (e) => e instanceof TqkvError && /outside the vocabulary/.test(e.message));
    assert.throws(() => t.loadTokenizer('{"model": {"type": "Unigram", "vocab": []}}'),
      (e) => e instanceof TqkvError && /unsupported: model.type "Unigram"/.test(e.message));
    tok.dispose();
    assert.throws(() => tok.encode('x'), TqkvError);
  });
}

test('tq-bpe-64: ids of eval.txt equal Hugging Face tokenizers\' (kv/tokens.npy); fetchModel attaches the tokenizer', async (t) => {
  if (!existsSync(resolve(bpeDir, 'tokenizer.json')) || !existsSync(resolve(bpeDir, 'kv/tokens.npy'))) {
    t.skip(`no ${bpeDir}/tokenizer.json + kv/tokens.npy`);
    return;
  }
  const tq = await Tqkv.load();
  const tok = await tq.fetchTokenizer(bpeDir);
  assert.equal(tok.vocab, 8192);
  assert.equal(tok.eos, 0);
  const npy = readFileSync(resolve(bpeDir, 'kv/tokens.npy'));
  const hl = npy[8] | (npy[9] << 8);
  const want = new Int32Array(npy.buffer.slice(npy.byteOffset + 10 + hl, npy.byteOffset + npy.length));
  const text = readFileSync(resolve(bpeDir, 'eval.txt')).subarray(0, 20000).toString('utf8');
  const ids = tok.encode(text);
  assert.deepEqual([...ids.subarray(2048, 3072)], [...want]);
  assert.equal(tok.decode(ids), text);
  const model = await tq.fetchModel(bpeDir);
  assert.ok(model.tokenizer instanceof Tokenizer);
  assert.deepEqual([...model.tokens('The Python interpreter ')], [...tok.encode('The Python interpreter ')]);
  model.dispose();
});
