// Tqkv: one instantiated module (loader.ts) and its memory. It creates caches (cache.ts), codecs
// (codec.ts) and models (model.ts), and holds the helpers they share to move data in and out of
// wasm memory: a reusable staging buffer, views refreshed after the memory grew, the status check.
import { ABI_VERSION, CACHE_CFG_SIZE, CODEC_CFG_SIZE, type Exports } from './abi.js';
import { createCache, KVCache, type CacheOptions } from './cache.js';
import {
  Calibration,
  createCalibration,
  loadCalibration,
  presets,
  type CachePreset,
  type CalibrationSample,
  type CalibrationShape,
} from './calibration.js';
import { Codec, createCodec, type CodecOptions } from './codec.js';
import { Status, STATUS_NAMES, TqkvError } from './errors.js';
import { asFloat32 } from './input.js';
import { instantiate, type LoadOptions, type ModuleVariant } from './loader.js';
import { initMainThread, startWorkers, type SpawnedWorker, type ThreadExports } from './threads.js';
import { fetchModel, loadModelFrom, type LlamaModel, type ModelWeights } from './model.js';
import { fetchTokenizer, loadTokenizerFrom, type Tokenizer } from './tokenizer.js';

let defaultInstance: Tqkv | undefined;
let defaultLoading: Promise<Tqkv> | undefined;

/** A loaded tqkv WebAssembly module: creates caches and codecs. */
export class Tqkv {
  /** true when a SIMD build is in use (relaxed or SIMD128). */
  readonly simd: boolean;
  /** The build in use: 'relaxed', 'simd128' or 'scalar'. */
  readonly variant: ModuleVariant;
  /** Builds tried before this one and why they were skipped (e.g. a missing tqkv-relaxed.wasm). */
  readonly fallbacks: readonly string[];
  /** The kernel a cache uses by default ('wasm128' or 'scalar'). */
  readonly kernel: string;
  /** true for a threaded build (shared memory; Tqkv.load({ threads })). */
  readonly threaded: boolean;
  private threadCount = 1;
  private workers: SpawnedWorker[] = [];
  /** @internal */ readonly _x: Exports;
  /** @internal */ readonly _memory: WebAssembly.Memory;
  private u8: Uint8Array;
  private f32: Float32Array;
  private dv: DataView;
  private scratch = 0;
  private scratchBytes = 0;
  private readonly slots: number; // 64 bytes for out-parameters
  private readonly cfgPtr: number; // configs and structs, plus 64 bytes for a kernel name
  /** @internal */ readonly _finalizer: FinalizationRegistry<number> | undefined;
  /** @internal */ readonly _codecFinalizer: FinalizationRegistry<number> | undefined;
  /** @internal Models, calibrations and runners: the destroy function of the handle's kind. */
  readonly _modelFinalizer: FinalizationRegistry<{ destroy: (h: number) => number; h: number }> | undefined;

  private constructor(instance: WebAssembly.Instance, memory: WebAssembly.Memory, variant: ModuleVariant | undefined,
                      fallbacks: string[], threaded: boolean) {
    this._x = instance.exports as unknown as Exports;
    this._memory = memory;
    this.u8 = new Uint8Array(memory.buffer);
    this.f32 = new Float32Array(memory.buffer);
    this.dv = new DataView(memory.buffer);
    this.threaded = threaded;
    if (threaded) initMainThread(instance.exports as unknown as ThreadExports);
    this._x._initialize();
    if (this._x.tqkv_abi_version() !== ABI_VERSION) throw new Error('tqkv: the .wasm file does not match this loader (ABI version)');
    if (this._x.tqkv_cache_config_size() !== CACHE_CFG_SIZE || this._x.tqkv_codec_config_size() !== CODEC_CFG_SIZE)
      throw new Error('tqkv: unexpected config struct layout in the .wasm file');
    this.slots = this._x.malloc(64);
    this.cfgPtr = this._x.malloc(CACHE_CFG_SIZE + 64);
    if (!this.slots || !this.cfgPtr) throw new TqkvError('tqkv: out of memory', Status.OUT_OF_MEMORY);
    this.kernel = this.cstr(this._x.tqkv_default_kernel());
    this.simd = this.kernel !== 'scalar';
    this.variant = variant ?? (this.kernel === 'scalar' ? 'scalar' : /relax/.test(this.kernel) ? 'relaxed' : 'simd128');
    this.fallbacks = Object.freeze([...fallbacks]);
    const x = this._x;
    const registry = <T,>(fn: (v: T) => void) => (typeof FinalizationRegistry === 'function' ? new FinalizationRegistry<T>(fn) : undefined);
    this._finalizer = registry<number>((h) => x.tqkv_cache_destroy(h));
    this._codecFinalizer = registry<number>((h) => x.tqkv_codec_destroy(h));
    this._modelFinalizer = registry<{ destroy: (h: number) => number; h: number }>(({ destroy, h }) => destroy(h));
  }

  /**
   * Loads and instantiates the module. With no options the instance is shared: later calls (and
   * {@link Tqkv.deserialize}) get the same one.
   */
  static load(options: LoadOptions = {}): Promise<Tqkv> {
    const isDefault =
      typeof options === 'object' && options !== null && options.simd === undefined && options.wasm === undefined &&
      options.maximumMemory === undefined && Object.keys(options).length === 0;
    if (isDefault) {
      if (!defaultLoading) {
        defaultLoading = Tqkv.instantiate(options).then(
          (t) => (defaultInstance = t),
          (e) => {
            defaultLoading = undefined;
            throw e;
          },
        );
      }
      return defaultLoading;
    }
    return Tqkv.instantiate(options).then((t) => {
      defaultInstance ??= t;
      return t;
    });
  }

  private static async instantiate(options: LoadOptions): Promise<Tqkv> {
    const { instance, memory, variant, fallbacks, module, threaded, threads } = await instantiate(options);
    const t = new Tqkv(instance, memory, variant, fallbacks, threaded);
    if (threads > 1) {
      try {
        t.workers = await startWorkers(module, memory, instance.exports as unknown as ThreadExports, threads - 1);
      } catch (e) {
        // threads: 'auto' asked for whatever runs here: one thread, and why in fallbacks.
        if (options.threads !== 'auto') throw e;
        const why = e instanceof Error ? e.message.replace(/^tqkv: threads: /, '') : String(e);
        (t as { fallbacks: readonly string[] }).fallbacks = Object.freeze([...t.fallbacks, `threads: auto: 1 thread (${why})`]);
        return t;
      }
      t.check(t._x.tqkv_set_threads(threads));
      t.threadCount = threads;
    }
    return t;
  }

  /** Threads that attention and the model runner use, the caller's included (Tqkv.load({ threads })). */
  get threads(): number {
    return this.threadCount;
  }

  /**
   * Stops the worker threads of Tqkv.load({ threads }). While they run they hold the module's
   * memory, so a threaded instance is never garbage-collected: call this when the page no longer
   * needs it (or `using t = await Tqkv.load(...)`). Caches, codecs and models of the instance
   * keep working, on the calling thread alone (`threads` becomes 1). Idempotent; nothing to do
   * for a one-thread instance.
   */
  dispose(): void {
    if (!this.workers.length) return;
    // Calls are synchronous, so no job is running: the workers are asleep or polling, holding no lock.
    this.check(this._x.tqkv_set_threads(1));
    for (const w of this.workers) w.terminate();
    this.workers = [];
    this.threadCount = 1;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /** The instance loaded by the first {@link Tqkv.load} (undefined before). */
  static get default(): Tqkv | undefined {
    return defaultInstance;
  }

  /** A cache from serialized bytes ({@link KVCache.serialize}, or tqkv::ModelKVCache::save natively),
   *  using the instance of the first {@link Tqkv.load}. */
  static deserialize(bytes: Uint8Array, kernel = ''): KVCache {
    if (!defaultInstance) throw new Error('tqkv: call `await Tqkv.load()` before Tqkv.deserialize');
    return defaultInstance.deserialize(bytes, kernel);
  }

  /** Bytes of wasm memory in use by this instance (grows with the caches, never shrinks). */
  get memoryBytes(): number {
    return this._memory.buffer.byteLength;
  }

  // ---------------------------------------------------------------------------------------------
  // Caches and codecs (cache.ts, codec.ts)

  /** A new, empty cache. Throws a TqkvError with the library's message for a bad configuration. */
  createCache(options: CacheOptions): KVCache {
    return createCache(this, options);
  }

  /** A cache from serialized bytes (this instance's memory). */
  deserialize(bytes: Uint8Array, kernel = ''): KVCache {
    if (!(bytes instanceof Uint8Array)) throw new TypeError('tqkv: deserialize needs a Uint8Array');
    const p = this.scratchPtr(bytes.length + 64);
    this.u8.set(bytes, p);
    let kptr = 0;
    if (kernel) {
      kptr = p + bytes.length;
      this.writeString(kptr, kernel, 64);
    }
    this.check(this._x.tqkv_cache_load(p, bytes.length, kptr, this.slots));
    return new KVCache(this, this.u32(this.slots));
  }

  // ---------------------------------------------------------------------------------------------
  // Calibrations and specs (calibration.ts)

  /** An empty calibration of a model's shape; add samples with {@link Calibration.add}. */
  createCalibration(shape: CalibrationShape): Calibration {
    return createCalibration(this, shape);
  }

  /**
   * A calibration from samples a runtime already has, one entry per layer (e.g. the keys and
   * values of its first prefill: keys after RoPE, [n][kvHeads][headDim]); optional queries.
   * Then `createCache({ preset: 'default', calibration, ... })`.
   */
  calibrate(shape: CalibrationShape, samples: ArrayLike<CalibrationSample>): Calibration {
    if (!samples || typeof samples.length !== 'number') throw new TypeError('tqkv: calibrate: samples must be an array, one entry per layer');
    const cal = createCalibration(this, shape);
    try {
      if (samples.length !== shape.layers)
        throw new TypeError(`tqkv: calibrate: ${samples.length} samples for ${shape.layers} layers (one entry per layer)`);
      for (let l = 0; l < samples.length; l++) {
        const s = samples[l];
        if (typeof s !== 'object' || s === null) throw new TypeError(`tqkv: calibrate: samples[${l}] must be { keys, values }`);
        for (const k of Object.keys(s))
          if (!['keys', 'values', 'queries', 'heads'].includes(k))
            throw new TypeError(`tqkv: calibrate: samples[${l}]: unknown key '${k}' (accepted: keys, values, queries, heads)`);
        cal.add(l, s.keys, s.values);
        if (s.queries !== undefined) cal.addQueries(l, s.heads ?? NaN, s.queries);
      }
      return cal;
    } catch (e) {
      cal.dispose();
      throw e;
    }
  }

  /** A calibration from {@link Calibration.serialize}'s bytes (hostile bytes: a 'bad data' TqkvError). */
  loadCalibration(bytes: Uint8Array): Calibration {
    return loadCalibration(this, bytes);
  }

  /** The named presets of `createCache({ preset })`, with their specs and a one-line summary. */
  get presets(): CachePreset[] {
    return presets(this);
  }

  /** The grammar of cache specs (text). */
  get specGrammar(): string {
    return this.cstr(this._x.tqkv_cache_spec_grammar());
  }

  /** A vector codec (encode / decode / score plain vectors: teaching pages, tools). */
  createCodec(options: CodecOptions): Codec {
    return createCodec(this, options);
  }

  /** Encodes vectors (n * dim floats) with a temporary codec. */
  encode(vectors: Float32Array, options: CodecOptions): Uint8Array {
    const c = this.createCodec(options);
    try {
      return c.encode(vectors);
    } finally {
      c.dispose();
    }
  }

  /** Decodes vectors encoded with the same options. */
  decode(codes: Uint8Array, options: CodecOptions): Float32Array {
    const c = this.createCodec(options);
    try {
      return c.decode(codes);
    } finally {
      c.dispose();
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Llama models (model.ts)

  /** The matrix-product kernel of the model runner ('wasm128' in the SIMD build, 'plain' otherwise). */
  get matmulKernel(): string {
    return this.cstr(this._x.tqkv_matmul_kernel());
  }

  /**
   * A Llama model (Hugging Face checkpoint) from config.json (text, bytes or the parsed object) and
   * the bytes of model.safetensors (fp16, bf16 or fp32; fp16 matrices stay fp16 in wasm memory),
   * or an array of the bytes of each shard of a sharded checkpoint (merged; a tensor in two shards
   * is refused). Malformed files throw a 'bad data' TqkvError naming the problem.
   */
  loadModel(config: string | Uint8Array | object, weights: ModelWeights): LlamaModel {
    return loadModelFrom(this, config, weights);
  }

  /**
   * Fetches `url`config.json and `url`model.safetensors, or when there is none (404) the shards
   * `url`model.safetensors.index.json lists (checked against it: every shard present, every tensor
   * where the index says), and loads the model (in Node, file: URLs and paths are read from disk).
   * The weights stream straight into wasm memory when the server sends their length.
   * onProgress(loaded, total) reports the weights' bytes, over all shards (total: see README).
   * `url`tokenizer.json, else `url`tokenizer.model, becomes model.tokenizer when there is one.
   */
  fetchModel(
    url: string | URL,
    options: { onProgress?: (loaded: number, total: number | undefined) => void; signal?: AbortSignal } = {},
  ): Promise<LlamaModel> {
    return fetchModel(this, url, options);
  }

  /**
   * A tokenizer from the text (or bytes) of a Hugging Face tokenizer.json, or from the bytes of a
   * SentencePiece tokenizer.model (told apart by the first byte: JSON starts with '{'), and,
   * optionally, its tokenizer_config.json (BOS/EOS). What it does not implement throws a 'bad
   * data' TqkvError naming it ("unsupported: model.type \"WordPiece\"",
   * "unsupported: trainer_spec.model_type 3 (WORD) ...").
   */
  loadTokenizer(tokenizer: string | Uint8Array, config?: string | Uint8Array): Tokenizer {
    return loadTokenizerFrom(this, tokenizer, config);
  }

  /**
   * Fetches `url`tokenizer.json, or `url`tokenizer.model when there is no tokenizer.json (and
   * `url`tokenizer_config.json when there is one).
   */
  fetchTokenizer(url: string | URL, options: { signal?: AbortSignal } = {}): Promise<Tokenizer> {
    return fetchTokenizer(this, url, options.signal);
  }

  // ---------------------------------------------------------------------------------------------
  // Dense baseline

  /** Exact attention over a plain fp32 cache (the baseline of the benchmarks): query
   *  [heads][headDim], keys/values head-major [kvHeads][tokens][headDim]. */
  denseAttention(
    shape: { heads: number; kvHeads: number; headDim: number; tokens: number },
    query: Float32Array,
    keys: Float32Array,
    values: Float32Array,
    out?: Float32Array,
  ): Float32Array {
    asFloat32(query, 'query');
    asFloat32(keys, 'keys');
    asFloat32(values, 'values');
    const o = out ? asFloat32(out, 'out') : new Float32Array(query.length);
    if (values.length !== keys.length)
      throw new TqkvError('tqkv: dense attention: keys and values differ in length', Status.INVALID_ARGUMENT);
    const n = query.length + 2 * keys.length + o.length;
    const p = this.scratchPtr(4 * n);
    const pk = p + 4 * query.length, pv = pk + 4 * keys.length, po = pv + 4 * keys.length;
    this.copyIn(query, p);
    this.copyIn(keys, pk);
    this.copyIn(values, pv);
    this.check(
      this._x.tqkv_dense_attention_f32(shape.heads, shape.kvHeads, shape.headDim, shape.tokens, p, query.length, pk, pv,
        keys.length, po, o.length),
    );
    this.refresh();
    this.copyOut(po, o);
    return o;
  }

  /** @internal Keys and values already in wasm memory (benchmarks: no copy per call). */
  denseAttentionAt(
    shape: { heads: number; kvHeads: number; headDim: number; tokens: number },
    q: number, k: number, v: number, o: number,
  ): void {
    const nq = shape.heads * shape.headDim, nkv = shape.kvHeads * shape.tokens * shape.headDim;
    this.check(this._x.tqkv_dense_attention_f32(shape.heads, shape.kvHeads, shape.headDim, shape.tokens, q, nq, k, v, nkv, o, nq));
  }

  // ---------------------------------------------------------------------------------------------
  // Memory helpers (internal: used by cache.ts, codec.ts, model.ts)

  /** @internal Views are recreated only when the memory grew (its buffer was replaced). */
  refresh(): void {
    if (this.u8.buffer !== this._memory.buffer) {
      this.u8 = new Uint8Array(this._memory.buffer);
      this.f32 = new Float32Array(this._memory.buffer);
      this.dv = new DataView(this._memory.buffer);
    }
  }

  /** @internal A scratch region of at least `bytes` bytes (16-byte aligned), reused across calls. */
  scratchPtr(bytes: number): number {
    if (bytes > this.scratchBytes) {
      const size = Math.max(bytes, Math.min(2 * this.scratchBytes, this.scratchBytes + (64 << 20)), 4096);
      const p = this._x.malloc(size);
      if (!p)
        throw new TqkvError(
          `tqkv: out of memory: cannot grow the wasm memory for a ${size}-byte staging buffer ` +
            `(memory is ${this._memory.buffer.byteLength} bytes)`,
          Status.OUT_OF_MEMORY,
        );
      if (this.scratch) this._x.free(this.scratch);
      this.scratch = p;
      this.scratchBytes = size;
    }
    this.refresh();
    return this.scratch;
  }

  /** @internal */ cstr(p: number): string {
    this.refresh();
    let end = p;
    while (this.u8[end] !== 0) end++;
    let s = '';
    for (let i = p; i < end; i++) s += String.fromCharCode(this.u8[i]);
    return s;
  }

  /** @internal Throws the library's error for a non-zero status. */
  check(status: number): void {
    if (status !== 0) throw new TqkvError(this.cstr(this._x.tqkv_last_error()) || `tqkv: ${STATUS_NAMES[status]}`, status);
  }

  /** @internal */ copyIn(src: Float32Array, ptr: number): void {
    this.f32.set(src, ptr >>> 2);
  }
  /** @internal */ copyOut(ptr: number, dst: Float32Array): void {
    const f = this.f32;
    const base = ptr >>> 2;
    const n = dst.length;
    if (n > 64) dst.set(f.subarray(base, base + n)); // a memcpy; the view object costs less than the loop
    else for (let i = 0; i < n; i++) dst[i] = f[base + i];
  }
  /** @internal */ u32(ptr: number): number {
    this.refresh();
    return this.dv.getUint32(ptr, true);
  }
  /** @internal 64 bytes for out-parameters. */
  get slot(): number {
    return this.slots;
  }
  /** @internal 96 + 64 bytes for configs and structs (model info, runner stats). */
  get structPtr(): number {
    return this.cfgPtr;
  }
  /** @internal The current memory as bytes. */
  bytes(): Uint8Array {
    this.refresh();
    return this.u8;
  }
  /** @internal A DataView of the current memory. */
  view(): DataView {
    this.refresh();
    return this.dv;
  }
  /** @internal Bytes copied into a new malloc'd block (freed by the caller). */
  mallocCopy(bytes: Uint8Array, what: string): number {
    const p = this.malloc(Math.max(1, bytes.length), what);
    new Uint8Array(this._memory.buffer, p, bytes.length).set(bytes);
    return p;
  }
  /** @internal malloc that throws an 'out of memory' TqkvError naming `what`. */
  malloc(bytes: number, what: string): number {
    const p = this._x.malloc(bytes);
    if (!p)
      throw new TqkvError(
        `tqkv: out of memory: cannot grow the wasm memory for ${what} (${bytes} bytes; memory is ` +
          `${this._memory.buffer.byteLength} bytes)`,
        Status.OUT_OF_MEMORY,
      );
    this.refresh();
    return p;
  }

  /** @internal A NUL-terminated ASCII string (a kernel name) at ptr, at most max bytes. */
  writeString(ptr: number, s: string, max: number): void {
    if (s.length >= max) throw new RangeError('tqkv: kernel name too long');
    const u8 = this.bytes();
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c > 126 || c < 32) throw new RangeError('tqkv: kernel name must be ASCII');
      u8[ptr + i] = c;
    }
    u8[ptr + s.length] = 0;
  }
}
