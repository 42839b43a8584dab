// Shared by the node tests: loading both builds, deterministic inputs, comparisons.
import { Tqkv } from '../dist/node.js';

export { Tqkv };
export const builds = [
  ['simd', { simd: true }],
  ['scalar', { simd: false }],
];

// The golden input stream, bit-identical to js_stream() in tests/test_capi.cpp: xorshift32,
// each value a 24-bit integer / 2^22 in [-2, 2) (exact in float32).
import { fnv1a, stream } from '../test-pages/inputs.js';

export { fnv1a, stream };

// Relative error ||a - b|| / ||b|| over rows of `d` floats; returns the worst row.
export function worstRowRelError(a, b, d) {
  let worst = 0;
  for (let r = 0; r < a.length / d; r++) {
    let num = 0, den = 0;
    for (let j = r * d; j < (r + 1) * d; j++) {
      num += (a[j] - b[j]) ** 2;
      den += b[j] ** 2;
    }
    worst = Math.max(worst, Math.sqrt(num / Math.max(den, 1e-30)));
  }
  return worst;
}

// Cache configurations every build must code identically (parity.test.mjs, variants.test.mjs).
export const parityConfigs = [
  { heads: 4, kvHeads: 4, headDim: 128, keyBits: 4, valueBits: 4, tokens: 300 },
  { heads: 8, kvHeads: 2, headDim: 64, keyBits: 3, valueBits: 2, window: 16, blockTokens: 32, tokens: 200 },
  { heads: 2, kvHeads: 1, headDim: 96, keyBits: 2, valueBits: 1, keyMethod: 'prod', tokens: 150 },
  { heads: 2, kvHeads: 2, headDim: 80, keyBits: 1, valueBits: 3, tokens: 97 },
  { heads: 4, kvHeads: 2, headDim: 128, keyBits: 6, valueBits: 5, normFormat: 'f32', tokens: 130 },
  { heads: 2, kvHeads: 1, headDim: 64, keyBits: 3.5, valueBits: 2.5, keyHighChannels: [...Array(32).keys()],
    valueHighChannels: [...Array(32).keys()], tokens: 100 },
];

// Codecs every build must encode identically: [method, bits, dim], and their input.
export const parityCodecs = [['mse', 4, 128], ['mse', 3, 100], ['prod', 3, 64], ['qjl', 1, 128], ['mse', 8, 48], ['mse', 2, 256]];
export function parityCodecInput(dim, bits) {
  const x = stream(50 * dim, dim + bits);
  x[0] = 0; // also a zero coordinate and extreme magnitudes
  x[dim] = 1e-30;
  x[2 * dim + 1] = 1000;
  return x;
}

// Appends `tokens` tokens to layer 0 of each cache in uneven chunks (window and block boundaries
// fall inside chunks), the same inputs for config index i everywhere.
export function appendParityTokens(caches, cfg, tokens, i) {
  const row = cfg.kvHeads * cfg.headDim;
  for (let t0 = 0, step = 1; t0 < tokens; t0 += step, step = step * 3 + 1) {
    const n = Math.min(step, tokens - t0);
    const k = stream(n * row, 100 + i * 10 + t0), v = stream(n * row, 200 + i * 10 + t0);
    for (const c of caches) c.append(0, k, v);
  }
}

export function bytesEqual(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

// The real model (tq-ref-128) and the native runner's results on it: model.json, written by the
// native test binary (tests/test_capi_model.cpp, tag [golden]) into TQKV_GOLDEN_DIR (wasm/test.sh
// makes it), or here into a temporary directory by TQKV_NATIVE_TESTS / build/tests/tqkv_tests.
// Returns { golden, modelDir } or { skip: 'reason' }.
let modelGoldenCache;
export async function modelGolden() {
  if (modelGoldenCache) return modelGoldenCache;
  const { existsSync, mkdtempSync, readFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join, resolve } = await import('node:path');
  const { spawnSync } = await import('node:child_process');
  const { fileURLToPath } = await import('node:url');
  const here = fileURLToPath(new URL('.', import.meta.url));
  const modelDir = process.env.TQKV_MODEL || resolve(here, '../../../shared/data/tq-ref-128');
  const find = (dir) => existsSync(join(dir, 'model.json')) ? JSON.parse(readFileSync(join(dir, 'model.json'), 'utf8')) : null;
  modelGoldenCache = (() => {
    if (!existsSync(join(modelDir, 'model.safetensors')) || !existsSync(join(modelDir, 'eval.txt')))
      return { skip: `no model at ${modelDir} (set TQKV_MODEL to a directory with config.json, model.safetensors, eval.txt)` };
    let dir = process.env.TQKV_GOLDEN_DIR;
    if (dir && find(dir)) return { golden: find(dir), modelDir: find(dir).model_dir };
    // The first native test binary that writes model.json (an older build lacks the test).
    const candidates = [process.env.TQKV_NATIVE_TESTS, resolve(here, '../../build/tests/tqkv_tests'),
      resolve(here, '../../build-webmodel/tests/tqkv_tests')].filter((p) => p && existsSync(p));
    if (!candidates.length) return { skip: 'no native results: set TQKV_GOLDEN_DIR or build the native tests (build/tests/tqkv_tests)' };
    let g = null;
    for (const nativeTests of candidates) {
      dir = mkdtempSync(join(tmpdir(), 'tqkv-model-golden-'));
      const r = spawnSync(nativeTests, ['C ABI model: golden values for the wasm tests (TQKV_GOLDEN_DIR)'],
        { env: { ...process.env, TQKV_GOLDEN_DIR: dir, TQKV_MODEL: modelDir }, encoding: 'utf8' });
      if (r.status !== 0 && /No test cases matched/.test(r.stdout + r.stderr)) continue;
      if (r.status !== 0) throw new Error(`native model golden writer ${nativeTests} failed:\n${r.stdout}\n${r.stderr}`);
      if ((g = find(dir))) break;
    }
    if (!g) return { skip: `${candidates.join(', ')} wrote no model.json (built without tests/test_capi_model.cpp? rebuild)` };
    return { golden: g, modelDir: g.model_dir };
  })();
  return modelGoldenCache;
}

// A tiny random Llama (hidden 64, 2 layers, 4 query / 2 KV heads of 32, MLP 48, byte vocabulary,
// context 128) as config.json text + safetensors bytes (F32), for API tests without the model.
export function tinyModel(seed = 1, overrides = {}) {
  const config = { hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 32,
    intermediate_size: 48, vocab_size: 256, rope_theta: 10000.0, rms_norm_eps: 1e-5, tie_word_embeddings: true,
    max_position_embeddings: 128, model_type: 'llama', hidden_act: 'silu', ...overrides };
  const H = config.hidden_size, I = config.intermediate_size, V = config.vocab_size;
  const QD = config.num_attention_heads * config.head_dim, KD = config.num_key_value_heads * config.head_dim;
  const tensors = [];
  let s = seed;
  const mat = (name, r, c, scale) => tensors.push([name, [r, c], stream(r * c, s++).map((x) => x * scale)]);
  const norm = (name, n) => tensors.push([name, [n], stream(n, s++).map((x) => 1 + 0.1 * x)]);
  mat('model.embed_tokens.weight', V, H, 0.5);
  norm('model.norm.weight', H);
  for (let l = 0; l < config.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    norm(p + 'input_layernorm.weight', H);
    norm(p + 'post_attention_layernorm.weight', H);
    mat(p + 'self_attn.q_proj.weight', QD, H, 0.2);
    mat(p + 'self_attn.k_proj.weight', KD, H, 0.2);
    mat(p + 'self_attn.v_proj.weight', KD, H, 0.2);
    mat(p + 'self_attn.o_proj.weight', H, QD, 0.1);
    mat(p + 'mlp.gate_proj.weight', I, H, 0.15);
    mat(p + 'mlp.up_proj.weight', I, H, 0.15);
    mat(p + 'mlp.down_proj.weight', H, I, 0.1);
  }
  return { config: JSON.stringify(config), weights: safetensors(tensors), tensors };
}

/** A safetensors file (F32) of [name, shape, Float32Array] tensors. */
export function safetensors(tensors) {
  const header = {};
  let off = 0;
  for (const [name, shape, data] of tensors) {
    header[name] = { dtype: 'F32', shape, data_offsets: [off, off + 4 * data.length] };
    off += 4 * data.length;
  }
  let h = JSON.stringify(header);
  while ((h.length + 8) % 8) h += ' ';
  const hb = new TextEncoder().encode(h);
  const bytes = new Uint8Array(8 + hb.length + off);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(hb.length), true);
  bytes.set(hb, 8);
  let p = 8 + hb.length;
  for (const [, , data] of tensors) {
    bytes.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), p);
    p += data.byteLength;
  }
  return bytes;
}

// A tokenizer.model in the protobuf wire format (sentencepiece_model.proto): <unk>, <s>, </s> and
// the 256 byte pieces <0x00>..<0xFF> (ids 3..258) of a BPE model with byte fallback, nothing else.
export function byteFallbackModel() {
  const out = [];
  const varint = (v) => { for (; v > 0x7f; v >>>= 7) out.push((v & 0x7f) | 0x80); out.push(v); };
  const bytesField = (field, b) => { varint((field << 3) | 2); varint(b.length); out.push(...b); };
  const sub = (fn) => { const start = out.length; fn(); return out.splice(start); };
  const piece = (text, type) => bytesField(1, sub(() => {
    bytesField(1, [...new TextEncoder().encode(text)]);
    varint((3 << 3) | 0); varint(type);
  }));
  piece('<unk>', 2); piece('<s>', 3); piece('</s>', 3);
  for (let b = 0; b < 256; b++) piece(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`, 6);
  bytesField(2, sub(() => { varint(3 << 3); varint(2); varint(35 << 3); varint(1); }));  // trainer_spec: BPE, byte_fallback
  bytesField(3, sub(() => { varint(4 << 3); varint(0); }));  // normalizer_spec: keep extra whitespace
  return Uint8Array.from(out);
}
