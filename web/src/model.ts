// Llama models in wasm memory (the C ABI's tqkv_model_* / tqkv_calibration_* / tqkv_runner_*):
// LlamaModel, Calibration (the runner's key/value statistics), Runner (prefill, decode, NLL,
// generation through a KV cache of a spec), and loading checkpoints from bytes or URLs.
import { MODEL_INFO_SIZE, RUNNER_STATS_SIZE } from './abi.js';
import { disposedError, Status, TqkvError } from './errors.js';
import { asFloat32, asInt } from './input.js';
import { FetchError, isNotFound, readUrl, toUrl } from './platform.js';
import { Calibration } from './calibration.js';
import { fetchTokenizer, type Tokenizer } from './tokenizer.js';
import type { Tqkv } from './tqkv.js';

/** The shape of a loaded model. */
export interface ModelInfo {
  layers: number;
  hidden: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  intermediate: number;
  /** 256 = byte vocabulary: a token is a byte of UTF-8 text. */
  vocab: number;
  /** The longest sequence the runner accepts (max_position_embeddings). */
  context: number;
  tied: boolean;
  parameters: number;
}

/** The KV cache of a runner ({@link Runner.stats}). */
export interface RunnerStats {
  /** Tokens run since the last reset (= tokens in the cache). */
  position: number;
  /** Storage the cache format needs for the tokens it holds: codes, norms, scales, exact window
   *  tokens (as fp16); all layers, keys and values. Tokens a sliding window (Mistral's
   *  sliding_window) dropped are not held. */
  cacheBytes: number;
  /** An fp16 cache of the same (held) tokens. */
  fp16Bytes: number;
  /** cacheBytes * 8 / coordinates of the held tokens. */
  bitsPerCoord: number;
  /** Memory the cache holds (buffers reserved for the whole context). */
  memoryBytes: number;
}

/** Tokens for the runner: a string (its UTF-8 bytes, byte-vocabulary models) or token ids. */
export type TokenInput = string | Uint8Array | Int32Array | ArrayLike<number>;

/** Options of {@link Runner.generate}. */
export interface GenerateOptions {
  /** Tokens to generate (default 256); generation also stops at the model's context. */
  maxTokens?: number;
  /** 0 (default) = greedy; otherwise sample from softmax(logits / temperature). */
  temperature?: number;
  /** Sample among the topK most likely tokens (0 = all). */
  topK?: number;
  /** Seed of the sampler (a deterministic xorshift; default 1). */
  seed?: number;
}

type Handle = number;
const encoder = /* @__PURE__ */ new TextEncoder();

/** A Llama model in wasm memory ({@link Tqkv.loadModel}, {@link Tqkv.fetchModel}). */
export class LlamaModel {
  /** @internal */ handle: Handle;
  readonly tqkv: Tqkv;
  readonly info: ModelInfo;

  /** config.json's eos_token_id (a number or a list of them; [] when it has none), those inside the
   *  vocabulary. */
  readonly configEos: readonly number[];

  /** @internal */
  constructor(t: Tqkv, handle: Handle) {
    this.tqkv = t;
    this.handle = handle;
    const p = t.structPtr;
    t.view().setUint32(p, MODEL_INFO_SIZE, true);
    t.check(t._x.tqkv_model_get_info(handle, p));
    const d = t.view();
    this.info = {
      layers: d.getInt32(p + 4, true),
      hidden: d.getInt32(p + 8, true),
      heads: d.getInt32(p + 12, true),
      kvHeads: d.getInt32(p + 16, true),
      headDim: d.getInt32(p + 20, true),
      intermediate: d.getInt32(p + 24, true),
      vocab: d.getInt32(p + 28, true),
      context: d.getInt32(p + 32, true),
      tied: d.getInt32(p + 36, true) !== 0,
      parameters: Number(d.getBigUint64(p + 40, true)),
    };
    this.configEos = this.eosIds(0);
    t._modelFinalizer?.register(this, { destroy: t._x.tqkv_model_destroy, h: handle }, this);
  }

  // tqkv_model_end_of_sequence: with a tokenizer handle, the ids that end generation; with 0,
  // config.json's eos_token_id(s).
  private eosIds(tokenizer: number): number[] {
    const t = this.tqkv;
    for (let capacity = 16; ; ) {
      const p = t._x.malloc(4 * capacity);
      if (!p) throw new Error('tqkv: out of wasm memory');
      try {
        const status = t._x.tqkv_model_end_of_sequence(this.h(), tokenizer, p, capacity, t.slot);
        const n = t.u32(t.slot);
        if (status === Status.CAPACITY && n > capacity) {
          capacity = n;
          continue;
        }
        t.check(status);
        return Array.from(new Int32Array(t._memory.buffer, p, n));
      } finally {
        t._x.free(p);
      }
    }
  }

  /** @internal */ h(): Handle {
    if (!this.handle) throw disposedError('model');
    return this.handle;
  }

  get disposed(): boolean {
    return this.handle === 0;
  }

  /** The model's tokenizer (fetchModel loads DIR/tokenizer.json, else DIR/tokenizer.model); text goes
   *  through it. Without one, text is read as UTF-8 bytes (byte-vocabulary models). */
  tokenizer: Tokenizer | undefined;

  /** The ids that end generation (where tqkv-run stops, tqkv::end_of_sequence_ids): config.json's
   *  eos_token_id(s) and the tokenizer's EOS, each once; none without a tokenizer (a byte
   *  vocabulary: every id is a byte of text). Runner.generate does not stop by itself: the caller
   *  breaks out when one comes. */
  get endOfSequence(): number[] {
    const tok = this.tokenizer;
    return tok ? this.eosIds(tok.h()) : [];
  }

  /** Token ids of a string (through the tokenizer, or its UTF-8 bytes for a byte-vocabulary
   *  model) or of an array of ids. */
  tokens(input: TokenInput): Int32Array {
    if (typeof input === 'string') {
      if (this.tokenizer) return this.tokenizer.encode(input);
      if (this.info.vocab !== 256)
        throw new TypeError('tqkv: text needs a tokenizer (model.tokenizer = tqkv.loadTokenizer(...)) or a byte-vocabulary model; pass token ids');
      return Int32Array.from(encoder.encode(input));
    }
    if (input instanceof Int32Array) return input;
    if (input && typeof (input as ArrayLike<number>).length === 'number') return Int32Array.from(input as ArrayLike<number>);
    throw new TypeError('tqkv: tokens must be a string, a Uint8Array, an Int32Array or an array of numbers');
  }

  /**
   * Statistics of keys, values and queries from an exact-cache pass over `text`: the tqkv cache
   * specs (K4V4, K3.5V2.5-w16, ...) precondition with them (tqkv-run uses the last 2048 bytes of
   * eval.txt). Costs one forward pass over the text.
   */
  calibrate(text: TokenInput): Calibration {
    const t = this.tqkv;
    const h = this.h();
    const tokens = this.tokens(text);
    const p = t.scratchPtr(4 * tokens.length + 16);
    new Int32Array(t._memory.buffer, p, tokens.length).set(tokens);
    t.check(t._x.tqkv_calibration_create(h, p, tokens.length, t.slot));
    return new Calibration(t, t.u32(t.slot));
  }

  /**
   * A runner with a KV cache from a spec: 'fp32' (exact), 'fp16', 'q8_0', 'q4_0', 'kivi2',
   * 'kivi4', or tqkv 'K<bits>V<bits>[-w<window>][-prod][-raw]...' ('K4V4', 'K3.5V2.5-w16',
   * 'K4V4-raw'). The tqkv specs use `calibration` when given (without: plain TurboQuant with no
   * mean centering).
   */
  createRunner(cache = 'fp32', options: { calibration?: Calibration; maxChunk?: number } = {}): Runner {
    const t = this.tqkv;
    const h = this.h();
    if (typeof cache !== 'string' || cache.length > 200) throw new TypeError('tqkv: the cache spec must be a string');
    const spec = encoder.encode(cache);
    const cal = options.calibration ? options.calibration.h() : 0;
    const maxChunk = asInt(options.maxChunk ?? 0, 'maxChunk', 0, 4096);
    const p = t.scratchPtr(spec.length + 1);
    const u8 = t.bytes();
    u8.set(spec, p);
    u8[p + spec.length] = 0;
    t.check(t._x.tqkv_runner_create(h, p, cal, maxChunk, t.slot));
    return new Runner(this, t.u32(t.slot), cache);
  }

  /** Frees the model's wasm memory once no runner uses it; later calls throw. */
  dispose(): void {
    if (!this.handle) return;
    const h = this.handle;
    this.handle = 0;
    this.tqkv._modelFinalizer?.unregister(this);
    this.tqkv.check(this.tqkv._x.tqkv_model_destroy(h));
  }

  /** dispose(), for `using`. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** Prefill, decode and scoring of one sequence through a KV cache. */
export class Runner {
  private handle: Handle;
  private readonly t: Tqkv;
  readonly model: LlamaModel;
  /** The cache spec. */
  readonly cache: string;

  /** @internal */
  constructor(model: LlamaModel, handle: Handle, cache: string) {
    this.model = model;
    this.t = model.tqkv;
    this.handle = handle;
    this.cache = cache;
    this.t._modelFinalizer?.register(this, { destroy: this.t._x.tqkv_runner_destroy, h: handle }, this);
  }

  private h(): Handle {
    if (!this.handle) throw disposedError('runner');
    return this.handle;
  }

  get disposed(): boolean {
    return this.handle === 0;
  }

  /**
   * Runs tokens at the current position and returns the greedy next token (argmax of the last
   * token's logits). `logits`: vocab floats (the last token's) or n * vocab (every token's).
   */
  prefill(input: TokenInput, logits?: Float32Array): number {
    const h = this.h();
    const t = this.t;
    const tokens = this.model.tokens(input);
    const nl = logits ? asFloat32(logits, 'logits').length : 0;
    const p = t.scratchPtr(4 * tokens.length + 4 * nl + 16);
    const pl = p + 4 * tokens.length;
    new Int32Array(t._memory.buffer, p, tokens.length).set(tokens);
    t.check(t._x.tqkv_runner_prefill(h, p, tokens.length, nl ? pl : 0, nl, t.slot));
    if (logits) {
      t.refresh();
      t.copyOut(pl, logits);
    }
    return t.view().getInt32(t.slot, true);
  }

  /** Runs one token; returns the greedy next token. `logits` (vocab floats) receives the logits. */
  decode(token: number, logits?: Float32Array): number {
    const h = this.h();
    const t = this.t;
    asInt(token, 'token');
    const nl = logits ? asFloat32(logits, 'logits').length : 0;
    const pl = nl ? t.scratchPtr(4 * nl) : 0;
    t.check(t._x.tqkv_runner_decode(h, token, pl, nl, t.slot));
    if (logits) {
      t.refresh();
      t.copyOut(pl, logits);
    }
    return t.view().getInt32(t.slot, true);
  }

  /**
   * The runner's state as bytes ("TQKVRUNR": the model's shape, the position and the cache; CRC-
   * checked): keep them (e.g. {@link saveToIndexedDB}) and {@link Runner.restore} them into a
   * runner of the same model, cache spec and calibration after a reload; decoding then continues
   * exactly as this runner would have. Only the tqkv caches can be saved (their codes and exact
   * window: about {@link RunnerStats.cacheBytes}); the others (fp32, fp16, q8_0, q4_0, kivi, the
   * emulated tqkv path) throw 'invalid argument': keep their tokens and prefill them again.
   */
  serialize(): Uint8Array {
    const h = this.h();
    const t = this.t;
    const st = t._x.tqkv_runner_save(h, 0, 0, t.slot);
    if (st !== Status.BUFFER_TOO_SMALL) t.check(st);
    const size = t.u32(t.slot);
    const p = t.malloc(size, 'the saved runner');
    try {
      t.check(t._x.tqkv_runner_save(h, p, size, t.slot));
      return t.bytes().slice(p, p + size);
    } finally {
      t._x.free(p);
    }
  }

  /**
   * Restores {@link Runner.serialize}'s bytes: position and cache. Bytes of another model shape,
   * cache spec or calibration, or damaged bytes, throw a 'bad data' TqkvError and leave the runner
   * as it was. Returns the runner; the next token to feed is the last one generated before saving.
   */
  restore(bytes: Uint8Array): this {
    const h = this.h();
    if (!(bytes instanceof Uint8Array)) throw new TypeError('tqkv: Runner.restore needs a Uint8Array');
    const t = this.t;
    const p = t.mallocCopy(bytes, 'the saved runner');
    try {
      t.check(t._x.tqkv_runner_load(h, p, bytes.length));
    } finally {
      t._x.free(p);
    }
    return this;
  }

  /** Empties the cache (position 0). */
  reset(): void {
    this.t.check(this.t._x.tqkv_runner_reset(this.h()));
  }

  /** Tokens run since the last reset. */
  get position(): number {
    return this.stats().position;
  }

  /** The cache: bytes of its format vs an fp16 cache, bits per coordinate, memory held. */
  stats(): RunnerStats {
    const h = this.h();
    const t = this.t;
    const p = t.structPtr;
    t.view().setUint32(p, RUNNER_STATS_SIZE, true);
    t.check(t._x.tqkv_runner_get_stats(h, p));
    const d = t.view();
    return {
      position: Number(d.getBigUint64(p + 8, true)),
      cacheBytes: d.getFloat64(p + 16, true),
      fp16Bytes: d.getFloat64(p + 24, true),
      bitsPerCoord: d.getFloat64(p + 32, true),
      memoryBytes: Number(d.getBigUint64(p + 40, true)),
    };
  }

  /**
   * Mean negative log-likelihood (nats per token) of tokens[1..] given the prefix, in segments
   * of `ctx` tokens (0 = the model's context), token-by-token attention as in decode. Resets the
   * runner before and after.
   */
  nll(input: TokenInput, ctx = 0): { nll: number; scored: number } {
    const h = this.h();
    const t = this.t;
    const tokens = this.model.tokens(input);
    asInt(ctx, 'ctx', 0, 0x7fffffff);
    const p = t.scratchPtr(4 * tokens.length + 32);
    const out = (p + 4 * tokens.length + 7) & ~7;
    new Int32Array(t._memory.buffer, p, tokens.length).set(tokens);
    t.check(t._x.tqkv_runner_nll(h, p, tokens.length, ctx, out, out + 8));
    const d = t.view();
    return { nll: d.getFloat64(out, true), scored: d.getUint32(out + 8, true) };
  }

  /**
   * Generates up to maxTokens tokens after `prompt` (run from the current position; reset() first
   * for a fresh sequence), yielding each as it is chosen. Greedy unless temperature > 0. The
   * consumer may stop early (break); the runner then holds everything yielded but the last token.
   */
  *generate(prompt: TokenInput, options: GenerateOptions = {}): Generator<number, void, void> {
    const maxTokens = asInt(options.maxTokens ?? 256, 'maxTokens', 0, 0x7fffffff);
    const temperature = options.temperature ?? 0;
    if (typeof temperature !== 'number' || !(temperature >= 0)) throw new TypeError('tqkv: temperature must be >= 0');
    const topK = asInt(options.topK ?? 0, 'topK', 0, 0x7fffffff);
    let s = (asInt(options.seed ?? 1, 'seed') >>> 0) || 1;
    const uniform = () => {
      s ^= s << 13;
      s >>>= 0;
      s ^= s >>> 17;
      s ^= s << 5;
      s >>>= 0;
      return s / 4294967296;
    };
    const V = this.model.info.vocab, context = this.model.info.context;
    const logits = temperature > 0 ? new Float32Array(V) : undefined;
    const probs = temperature > 0 ? new Float64Array(V) : undefined;
    const pick = (greedy: number): number => {
      if (!logits || !probs) return greedy;
      let mx = -Infinity;
      for (let v = 0; v < V; v++) mx = Math.max(mx, logits[v]);
      for (let v = 0; v < V; v++) probs[v] = Math.exp((logits[v] - mx) / temperature);
      if (topK > 0 && topK < V) {
        const kth = Array.from(probs).sort((a, b) => b - a)[topK - 1];
        let kept = 0;
        for (let v = 0; v < V; v++) if (probs[v] < kth || (probs[v] === kth && kept >= topK)) probs[v] = 0; else kept++;
      }
      let sum = 0;
      for (let v = 0; v < V; v++) sum += probs[v];
      let u = uniform() * sum;
      for (let v = 0; v < V; v++) if ((u -= probs[v]) < 0) return v;
      return V - 1;
    };
    if (maxTokens === 0) return;
    let next = pick(this.prefill(prompt, logits));
    for (let i = 0; i < maxTokens; i++) {
      yield next;
      if (i + 1 === maxTokens || this.position >= context) return;
      next = pick(this.decode(next, logits));
    }
  }

  /** Frees the runner (its cache); a second dispose does nothing. */
  dispose(): void {
    if (!this.handle) return;
    const h = this.handle;
    this.handle = 0;
    this.t._modelFinalizer?.unregister(this);
    this.t.check(this.t._x.tqkv_runner_destroy(h));
  }

  /** dispose(), for `using`. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}


// -------------------------------------------------------------------------------------------------
// Loading checkpoints

/** The bytes of model.safetensors, or of each shard of a sharded checkpoint. */
export type ModelWeights = Uint8Array | ArrayBuffer | readonly (Uint8Array | ArrayBuffer)[];

const asBytes = (w: Uint8Array | ArrayBuffer): Uint8Array => {
  const b = w instanceof ArrayBuffer ? new Uint8Array(w) : w;
  if (!(b instanceof Uint8Array)) throw new TypeError('tqkv: loadModel: weights must be a Uint8Array or ArrayBuffer, or an array of them (shards)');
  return b;
};

/** @internal Tqkv.loadModel. */
export function loadModelFrom(t: Tqkv, config: string | Uint8Array | object, weights: ModelWeights): LlamaModel {
  if (Array.isArray(weights)) {
    // Shards without an index: merged (a tensor in two shards is refused).
    const shards = (weights as readonly (Uint8Array | ArrayBuffer)[]).map(asBytes);
    const blocks: Shard[] = [];
    try {
      for (const [i, b] of shards.entries()) blocks.push({ name: `shard ${i}`, p: t.mallocCopy(b, 'the model weights'), n: b.length });
      return loadShardsAt(t, config, undefined, blocks);
    } finally {
      for (const b of blocks) t._x.free(b.p);
    }
  }
  const w = asBytes(weights as Uint8Array | ArrayBuffer);
  const p = t.mallocCopy(w, 'the model weights');
  try {
    return loadModelAt(t, config, p, w.length);
  } finally {
    t._x.free(p);
  }
}

const configBytes = (config: string | Uint8Array | object): Uint8Array =>
  encoder.encode(
    typeof config === 'string' ? config : config instanceof Uint8Array ? new TextDecoder().decode(config) : JSON.stringify(config),
  );

function loadModelAt(t: Tqkv, config: string | Uint8Array | object, p: number, n: number): LlamaModel {
  const cfg = configBytes(config);
  const pc = t.mallocCopy(cfg, 'config.json');
  try {
    t.check(t._x.tqkv_model_load(pc, cfg.length, p, n, t.slot));
  } finally {
    t._x.free(pc);
  }
  return new LlamaModel(t, t.u32(t.slot));
}

/** A shard's bytes in wasm memory and its file name. */
interface Shard {
  name: string;
  p: number;
  n: number;
}

// tqkv_model_load_shards over shards already in wasm memory; index: model.safetensors.index.json's
// text (checked against the shards' names) or undefined.
function loadShardsAt(t: Tqkv, config: string | Uint8Array | object, index: string | undefined, shards: Shard[]): LlamaModel {
  const cfg = configBytes(config);
  const idx = index === undefined ? undefined : encoder.encode(index);
  const names = shards.map((s) => encoder.encode(s.name + '\0'));
  const blocks: number[] = [];  // freed at the end, whatever happens
  const copy = (b: Uint8Array, what: string) => {
    const p = t.mallocCopy(b, what);
    blocks.push(p);
    return p;
  };
  try {
    const pc = copy(cfg, 'config.json');
    const pi = idx ? copy(idx, 'model.safetensors.index.json') : 0;
    const pn = names.map((nm) => copy(nm, 'the shard names'));
    // names, pointers, sizes: one 32-bit word each (wasm32)
    const table = t.malloc(Math.max(4, 12 * shards.length), 'the shard tables');
    blocks.push(table);
    const d = t.view();
    shards.forEach((s, i) => {
      d.setUint32(table + 4 * i, pn[i], true);
      d.setUint32(table + 4 * (shards.length + i), s.p, true);
      d.setUint32(table + 4 * (2 * shards.length + i), s.n, true);
    });
    t.check(t._x.tqkv_model_load_shards(pc, cfg.length, pi, idx ? idx.length : 0, shards.length, table,
      table + 4 * shards.length, table + 8 * shards.length, t.slot));
  } finally {
    for (const b of blocks) t._x.free(b);
  }
  return new LlamaModel(t, t.u32(t.slot));
}

/** @internal Tqkv.fetchModel. */
export async function fetchModel(
  t: Tqkv,
  url: string | URL,
  options: { onProgress?: (loaded: number, total: number | undefined) => void; signal?: AbortSignal } = {},
): Promise<LlamaModel> {
  let base = toUrl(url);
  if (!base.pathname.endsWith('/')) base = new URL(base.href + '/');
  const configUrl = new URL('config.json', base);
  const config = new TextDecoder().decode(await readUrl(configUrl, options.signal));
  const model = await fetchWeights(t, config, base, options);
  // A tokenizer.json (or tokenizer.model) beside the weights becomes model.tokenizer (none: byte
  // vocabulary, or ids).
  try {
    model.tokenizer = await fetchTokenizer(t, base, options.signal);
  } catch (e) {
    const missing = (e instanceof FetchError && e.status === 404) || (e as { code?: string })?.code === 'ENOENT';
    if (!missing) {
      model.dispose();
      throw e;
    }
  }
  return model;
}

type Progress = { onProgress?: (loaded: number, total: number | undefined) => void; signal?: AbortSignal };

// DIR/model.safetensors, or when there is none (404 / ENOENT) the shards DIR/model.safetensors.index.json
// lists, each streamed into wasm memory.
async function fetchWeights(t: Tqkv, config: string, base: URL, options: Progress): Promise<LlamaModel> {
  const single = new URL('model.safetensors', base), indexUrl = new URL('model.safetensors.index.json', base);
  let block: { p: number; n: number };
  try {
    block = await fetchToWasm(t, single, options.signal, (loaded, total) => options.onProgress?.(loaded, total));
  } catch (e) {
    if (!isNotFound(e)) throw e;
    let index: string;
    try {
      index = new TextDecoder().decode(await readUrl(indexUrl, options.signal));
    } catch (e2) {
      if (!isNotFound(e2)) throw e2;
      throw new Error(`tqkv: ${base.href} has neither model.safetensors nor model.safetensors.index.json`);
    }
    return fetchShards(t, config, base, index, options);
  }
  try {
    return loadModelAt(t, config, block.p, block.n);
  } finally {
    t._x.free(block.p);
  }
}

// The shard files of model.safetensors.index.json ({"metadata": {"total_size": bytes of the
// tensors}, "weight_map": {tensor: file}}) in order of first appearance; its total_size, if any.
// Only plain file names beside the index are fetched; the C++ loader checks the rest.
function shardFiles(index: string, url: URL): { files: string[]; totalSize: number | undefined } {
  const bad = (why: string) => new TqkvError(`tqkv: ${url.href}: ${why}`, Status.BAD_DATA);
  let root: unknown;
  try {
    root = JSON.parse(index);
  } catch (e) {
    throw bad(`invalid JSON (${(e as Error).message})`);
  }
  const map = (root as { weight_map?: unknown } | null)?.weight_map;
  if (!map || typeof map !== 'object' || Array.isArray(map)) throw bad('missing object "weight_map"');
  const files: string[] = [];
  for (const f of Object.values(map)) {
    if (typeof f !== 'string') throw bad('weight_map values must be file names');
    if (!f || f.includes('/') || f.includes('\\') || f === '.' || f === '..') throw bad(`weight_map file "${f}" is not a plain file name`);
    if (!files.includes(f)) files.push(f);
  }
  if (!files.length) throw bad('empty weight_map');
  if (files.length > 4096) throw bad('more than 4096 shard files');
  const total = (root as { metadata?: { total_size?: unknown } }).metadata?.total_size;
  return { files, totalSize: typeof total === 'number' && total > 0 ? total : undefined };
}

// Every shard into wasm memory, one after the other; onProgress(loaded, total) counts the bytes of
// all shards: total is exact once the last shard's response has arrived, before that the index's
// total_size (its tensors' bytes, a slight underestimate) or undefined.
async function fetchShards(t: Tqkv, config: string, base: URL, index: string, options: Progress): Promise<LlamaModel> {
  const { files, totalSize } = shardFiles(index, new URL('model.safetensors.index.json', base));
  const shards: Shard[] = [];
  try {
    let done = 0;  // bytes of the shards received completely
    for (const [i, name] of files.entries()) {
      const block = await fetchToWasm(t, new URL(encodeURIComponent(name), base), options.signal, (loaded, length) => {
        const all = done + loaded;
        const total = i === files.length - 1 && length !== undefined ? done + length : totalSize === undefined ? undefined : Math.max(totalSize, all);
        options.onProgress?.(all, total);
      });
      shards.push({ name, ...block });
      done += block.n;
    }
    return loadShardsAt(t, config, index, shards);
  } finally {
    for (const s of shards) t._x.free(s.p);
  }
}

// The bytes of a URL in a block of wasm memory, streamed there when the server sends their
// length (no second copy of 38+ MB in JavaScript); the caller frees p. progress(loaded, length).
async function fetchToWasm(
  t: Tqkv,
  url: URL,
  signal: AbortSignal | undefined,
  progress: (loaded: number, length: number | undefined) => void,
): Promise<{ p: number; n: number }> {
  const copy = (bytes: Uint8Array) => {
    progress(bytes.length, bytes.length);
    return { p: t.mallocCopy(bytes, 'the model weights'), n: bytes.length };
  };
  if (url.protocol === 'file:') return copy(await readUrl(url, signal));
  const res = await fetch(url, { signal });
  if (!res.ok) throw new FetchError(url, res);
  const total = Number(res.headers.get('content-length') ?? NaN);
  const identity = !res.headers.get('content-encoding') || res.headers.get('content-encoding') === 'identity';
  if (!res.body || !(total > 0) || !identity) return copy(new Uint8Array(await res.arrayBuffer()));
  const p = t.malloc(total, 'the model weights');
  try {
    const reader = res.body.getReader();
    let loaded = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (loaded + value.length > total) throw new Error(`tqkv: ${url.href}: more bytes than its content-length`);
      t.bytes().set(value, p + loaded);
      loaded += value.length;
      progress(loaded, total);
    }
    if (loaded !== total) throw new Error(`tqkv: ${url.href}: ${loaded} of ${total} bytes received`);
    return { p, n: total };
  } catch (e) {
    t._x.free(p);
    throw e;
  }
}
