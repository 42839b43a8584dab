// The tokenizer in WebAssembly (Tokenizer over tqkv_tokenizer_* of the C ABI, the same C++ as the
// native tools):
//   - a byte-level BPE tokenizer.json written here: ids derived by hand (as tests/test_tokenizer.cpp),
//     special tokens, round trips, errors;
//   - the real tq-bpe-64 tokenizer (../shared/data/tq-bpe-64; skipped with a message when absent):
//     the ids of eval.txt equal kv/tokens.npy (produced by Hugging Face tokenizers), and
//     fetchModel attaches it as model.tokenizer;
//   - SentencePiece tokenizer.model files: a byte-fallback-only model written here (ids derived by
//     hand), the handmade BPE and unigram models of tests/test_tokenizer.cpp with the native
//     build's ids and text (spm.json, its [golden] test case), refusals, and fetchModel's fallback
//     to DIR/tokenizer.model;
//   - TokenStream (the demo's display of generated ids; the C++ tqkv::TokenStream through
//     tqkv_token_stream_*): characters split over ids, U+FFFD only at flush, the first generated
//     word's space after a context; random ids give decode(ids); errors, a long token's text,
//     dispose; LlamaModel.endOfSequence.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Tqkv, TqkvError, Tokenizer, TokenStream } from '../dist/node.js';
import { byteFallbackModel, tinyModel } from './helpers.mjs';

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

// spm.json and the .model files of tests/test_tokenizer.cpp's [golden] case: from TQKV_GOLDEN_DIR
// (wasm/test.sh writes it), else written here by the native test binary; null when neither.
function spmGolden() {
  const dir = process.env.TQKV_GOLDEN_DIR;
  if (dir && existsSync(join(dir, 'spm.json'))) return dir;
  const bin = [process.env.TQKV_NATIVE_TESTS, resolve(here, '../../build/tests/tqkv_tests')].find((p) => p && existsSync(p));
  if (!bin) return null;
  const out = mkdtempSync(join(tmpdir(), 'tqkv-spm-golden-'));
  spawnSync(bin, ['tokenizer: tokenizer.model golden ids for the wasm tests (TQKV_GOLDEN_DIR)'],
    { env: { ...process.env, TQKV_GOLDEN_DIR: out }, encoding: 'utf8' });
  return existsSync(join(out, 'spm.json')) ? out : null;
}

test('tokenizer.model: byte fallback only (ids derived by hand, more ids than bytes), refusals', async () => {
  const tq = await Tqkv.load();
  const tok = tq.loadTokenizer(byteFallbackModel());
  assert.equal(tok.vocab, 259);
  assert.equal(tok.bos, 1);
  assert.equal(tok.eos, 2);
  // "▁a": U+2581 is not a piece, so its three UTF-8 bytes, then a's.
  const sp = [3 + 0xe2, 3 + 0x96, 3 + 0x81];
  assert.deepEqual([...tok.encode('a', { special: true })], [1, ...sp, 3 + 0x61]);
  // 20 spaces: 21 '▁' of 3 byte ids each, 63 ids for 20 bytes (the encoder asks again for room).
  // Byte pieces decode to the bytes themselves: here '▁' stays '▁' (as in libsentencepiece).
  const spaces = tok.encode(' '.repeat(20));
  assert.equal(spaces.length, 63);
  assert.deepEqual([...spaces.subarray(0, 6)], [...sp, ...sp]);
  assert.equal(tok.decode(spaces), '\u2581'.repeat(21));
  assert.equal(tok.decode(tok.encode('héllo日本🙂')), '\u2581héllo日本🙂');
  // A broken character map (a normalizer_spec with 4 bytes of one appended) and a WORD model
  // (trainer_spec.model_type 3 appended) are refused by name.
  const withMap = Uint8Array.from([...byteFallbackModel(), 0x1a, 6, 0x12, 4, 1, 2, 3, 4]);
  assert.throws(() => tq.loadTokenizer(withMap),
    (e) => e instanceof TqkvError && /normalizer_spec\.precompiled_charsmap of 4 bytes is broken/.test(e.message));
  const word = Uint8Array.from([...byteFallbackModel(), 0x12, 2, 0x18, 3]);
  assert.throws(() => tq.loadTokenizer(word),
    (e) => e instanceof TqkvError && /unsupported: trainer_spec\.model_type 3 \(WORD\)/.test(e.message));
  assert.throws(() => tq.loadTokenizer(Uint8Array.from([0x0a, 0x40, 1])), (e) => e instanceof TqkvError && /malformed protobuf/.test(e.message));
  tok.dispose();
});

test('tokenizer.model: the native build\'s ids and text (BPE, unigram); fetchModel falls back to DIR/tokenizer.model', async (t) => {
  const dir = spmGolden();
  if (!dir) {
    t.skip('no native results: set TQKV_GOLDEN_DIR or build the native tests (build/tests/tqkv_tests)');
    return;
  }
  const golden = JSON.parse(readFileSync(join(dir, 'spm.json'), 'utf8'));
  assert.equal(golden.models.length, 2);
  const tq = await Tqkv.load();
  for (const m of golden.models) {
    const tok = tq.loadTokenizer(new Uint8Array(readFileSync(join(dir, m.file))));
    for (const c of m.cases) {
      assert.deepEqual([...tok.encode(c.text, { special: true })], c.ids, `${m.file}: ${JSON.stringify(c.text)}`);
      assert.equal(tok.decode(c.ids), c.decoded);
    }
    tok.dispose();
  }
  // A checkpoint directory with tokenizer.model (the BPE one, 271 pieces) and tokenizer_config.json
  // but no tokenizer.json.
  const modelDir = mkdtempSync(join(tmpdir(), 'tqkv-spm-model-'));
  try {
    const { config, weights } = tinyModel(4, { vocab_size: 271 });
    writeFileSync(join(modelDir, 'config.json'), config);
    writeFileSync(join(modelDir, 'model.safetensors'), weights);
    writeFileSync(join(modelDir, 'tokenizer.model'), readFileSync(join(dir, 'spm-bpe.model')));
    const bpe = golden.models.find((m) => m.file === 'spm-bpe.model').cases[0];
    let model = await tq.fetchModel(modelDir);
    assert.ok(model.tokenizer instanceof Tokenizer);
    assert.deepEqual([...model.tokenizer.encode(bpe.text, { special: true })], bpe.ids);  // BOS: ids[0] = 1
    model.dispose();
    writeFileSync(join(modelDir, 'tokenizer_config.json'), '{"add_bos_token": false}');
    model = await tq.fetchModel(modelDir);
    assert.deepEqual([...model.tokenizer.encode(bpe.text, { special: true })], bpe.ids.slice(1));
    model.dispose();
  } finally {
    rmSync(modelDir, { recursive: true, force: true });
  }
});

// A Llama-2-style tokenizer.json decoder (Replace ▁ -> space, ByteFallback, Fuse, Strip one leading
// space): 0 <unk>, 1 <s>, 2 </s>, 3 ▁, 4 a, 5 b, 6 ▁a, 7 ▁b, 8 <0xC3>, 9 <0xA9>.
function metaspaceJson() {
  const vocab = { '<unk>': 0, '<s>': 1, '</s>': 2, '\u2581': 3, a: 4, b: 5, '\u2581a': 6, '\u2581b': 7, '<0xC3>': 8, '<0xA9>': 9 };
  return JSON.stringify({
    added_tokens: [{ id: 0, content: '<unk>', special: true }, { id: 1, content: '<s>', special: true }, { id: 2, content: '</s>', special: true }],
    normalizer: null, pre_tokenizer: null,
    decoder: { type: 'Sequence', decoders: [
      { type: 'Replace', pattern: { String: '\u2581' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' },
      { type: 'Strip', content: ' ', start: 1, stop: 0 }] },
    model: { type: 'BPE', vocab, merges: ['\u2581 a', '\u2581 b'], byte_fallback: true, unk_token: '<unk>' },
  });
}

test('TokenStream is the C++ one: random ids give decode(ids); bad ids are errors that change nothing; long texts; dispose', async () => {
  const tq = await Tqkv.load();
  const bytes = tq.loadTokenizer(byteLevelJson());
  // Random ids (characters split anyhow, invalid UTF-8, the special token): the text of decode.
  let x = 12345;
  const ids = Array.from({ length: 2000 }, () => ((x = (x * 1103515245 + 12345) >>> 0) >>> 8) % bytes.vocab);
  let stream = new TokenStream(bytes, [0x61]);
  assert.equal(ids.map((id) => stream.push(id)).join('') + stream.flush(), bytes.decode([0x61, ...ids]).slice(1));
  // Hostile input: a clear error, the stream unchanged.
  stream = new TokenStream(bytes);
  assert.equal(stream.push(0xc3), '');
  assert.throws(() => stream.push(bytes.vocab), (e) => e instanceof TqkvError && e.code === 'invalid argument' &&
    /outside the vocabulary of 262/.test(e.message));
  for (const bad of [1.5, NaN, 2 ** 32 + 0xa9, '0xa9', undefined]) assert.throws(() => stream.push(bad), TypeError);
  assert.equal(stream.push(0xa9), '\u00e9');
  assert.throws(() => new TokenStream(bytes, [0x61, 300]), (e) => e instanceof TqkvError && /context id 300/.test(e.message));
  assert.throws(() => new TokenStream(bytes, [0x61, -0.5]), TypeError);
  // A token longer than the first buffer (256 bytes): the call again with room for it.
  const json = JSON.parse(byteLevelJson());
  json.added_tokens[0].content = '<' + 'x'.repeat(400) + '>';
  const long = tq.loadTokenizer(JSON.stringify(json));
  const longStream = new TokenStream(long, [0x61]);
  assert.equal(longStream.push(261), json.added_tokens[0].content);
  // The stream keeps its tokenizer's wasm object; dispose frees the stream, twice is harmless.
  long.dispose();
  assert.equal(longStream.push(0x62), 'b');
  longStream[Symbol.dispose]();
  longStream.dispose();
  assert.ok(longStream.disposed);
  assert.throws(() => longStream.push(0x62), /token stream has been disposed/);
  stream.dispose();
  bytes.dispose();
  assert.throws(() => new TokenStream(bytes), /tokenizer has been disposed/);
});

test('TokenStream: a character split over ids appears whole (no U+FFFD mid-stream), the first generated word keeps its space; endOfSequence', async () => {
  const tq = await Tqkv.load();
  // Byte-level BPE: ids 0..255 are the bytes, so every character of more than one byte is split.
  const bytes = tq.loadTokenizer(byteLevelJson());
  const text = 'héllo 日本🙂 x';
  const ids = [...new TextEncoder().encode(text)];
  let stream = new TokenStream(bytes);
  const pieces = ids.map((id) => stream.push(id));
  assert.equal(pieces.join('') + stream.flush(), text);
  assert.ok(pieces.every((p) => !p.includes('\ufffd')), JSON.stringify(pieces));
  assert.deepEqual(pieces.slice(0, 3), ['h', '', 'é']);
  assert.deepEqual(pieces.slice(7, 10), ['', '', '日']);
  // An unfinished character is U+FFFD only when flushed; an invalid byte once the next character comes.
  stream = new TokenStream(bytes);
  assert.equal(stream.push(0xe6), '');
  assert.equal(stream.push(0x97), '');
  assert.equal(stream.flush(), '\ufffd');
  stream = new TokenStream(bytes);
  assert.equal(stream.push(0xff), '');
  assert.equal(stream.push(0x61), '\ufffda');
  // The context is not repeated; a character it leaves unfinished is completed by the next ids.
  stream = new TokenStream(bytes, [0x61, 0x62]);
  assert.equal(stream.push(0x63), 'c');
  stream = new TokenStream(bytes, [0x61, 0xc3]);
  assert.equal(stream.push(0xa9), 'é');

  // SentencePiece byte fallback decodes each missing byte to U+FFFD: held back until the character is whole.
  const spm = tq.loadTokenizer(byteFallbackModel());
  const spmIds = [...spm.encode('日本 é', { special: true })];
  stream = new TokenStream(spm, spmIds.slice(0, 1));
  const spmPieces = spmIds.slice(1).map((id) => stream.push(id));
  assert.equal(spmPieces.join('') + stream.flush(), spm.decode(spmIds.slice(1)));
  assert.ok(spmPieces.every((p) => !p.includes('\ufffd')), JSON.stringify(spmPieces));

  // A decoder that strips the text's leading space: alone '▁b' is "b"; after the prompt '▁a' it is " b".
  const meta = tq.loadTokenizer(metaspaceJson());
  assert.equal(meta.decode([7]), 'b');
  assert.equal(meta.decode([6, 7]), 'a b');
  assert.equal(new TokenStream(meta).push(7), 'b');
  stream = new TokenStream(meta, [1, 6]);
  assert.deepEqual([7, 8, 9, 3, 4].map((id) => stream.push(id)), [' b', '', 'é', ' ', 'a']);

  // endOfSequence: config.json's eos_token_id(s) and the tokenizer's EOS, only with a tokenizer.
  const { config, weights } = tinyModel(3, { vocab_size: 262, eos_token_id: [5, 261, 7] });
  const model = tq.loadModel(config, weights);
  assert.deepEqual(model.configEos, [5, 261, 7]);
  assert.deepEqual(model.endOfSequence, [], 'no tokenizer: every id is text');
  model.tokenizer = tq.loadTokenizer(byteLevelJson(), '{"eos_token": "<|endoftext|>"}');
  assert.equal(model.tokenizer.eos, 261);
  assert.deepEqual(model.endOfSequence, [5, 261, 7]);
  model.tokenizer = bytes;
  assert.deepEqual(model.endOfSequence, [5, 261, 7]);
  const single = tq.loadModel(tinyModel(3, { eos_token_id: 2 }).config, tinyModel(3).weights);
  single.tokenizer = spm;
  assert.deepEqual(single.endOfSequence, [2]);
  single.dispose();
  model.dispose();
});
