// tqkv for browsers and Node: a compressed transformer KV cache (TurboQuant codes, 1-8 bits per
// coordinate) with attention computed directly on the codes, compiled to WebAssembly from the
// same C++ sources as the native library.
//
//   import { Tqkv } from 'tqkv';
//   const tqkv = await Tqkv.load();                       // SIMD128 build, or the scalar one
//   const cache = tqkv.createCache({ layers: 32, heads: 32, kvHeads: 8, headDim: 128,
//                                    keyBits: 4, valueBits: 3, window: 64 });
//   cache.append(layer, keys, values);                   // Float32Array [n][kvHeads][headDim]
//   cache.attend(layer, queries, out);                   // [m][heads][headDim] -> out
//   const bytes = cache.serialize();                     // portable: loads natively too
//   const again = Tqkv.deserialize(bytes);
//   cache.dispose();
//
//   const model = await tqkv.fetchModel('/models/tq-ref-128/');  // config.json + model.safetensors
//   const runner = model.createRunner('K4V4', { calibration: model.calibrate(someText) });
//   for (const token of runner.generate('The ', { maxTokens: 64 })) ...   // greedy by default
//   runner.stats();                                       // cache bytes vs fp16, position
//   runner.dispose(); model.dispose();
//
// This file is the whole loader: no Emscripten JS glue. The .wasm modules (dist/tqkv.wasm with
// SIMD128, dist/tqkv-scalar.wasm without) export the C ABI of lib/include/tqkv/tqkv.h; they
// import their memory (so the caller may cap it) and four small functions provided here.

/** Status codes of the C ABI (tqkv.h). */
export const Status = {
  OK: 0,
  INVALID_ARGUMENT: 1,
  INVALID_HANDLE: 2,
  OUT_OF_MEMORY: 3,
  CAPACITY: 4,
  BAD_DATA: 5,
  BUFFER_TOO_SMALL: 6,
  INTERNAL: 7,
} as const;

const STATUS_NAMES: Record<number, string> = {
  0: 'ok',
  1: 'invalid argument',
  2: 'invalid handle',
  3: 'out of memory',
  4: 'capacity exceeded',
  5: 'bad data',
  6: 'buffer too small',
  7: 'internal error',
};

/** An error from the library: `message` is the C++ library's message, `status` its C ABI code. */
export class TqkvError extends Error {
  readonly status: number;
  readonly code: string;
  constructor(message: string, status: number) {
    super(message);
    this.name = 'TqkvError';
    this.status = status;
    this.code = STATUS_NAMES[status] ?? 'unknown';
  }
}

/** Options of {@link Tqkv.load}. */
export interface LoadOptions {
  /** true = SIMD128 build (fails where unsupported), false = scalar build, 'auto' (default) =
   *  SIMD128 when `WebAssembly.validate` accepts a SIMD instruction. */
  simd?: boolean | 'auto';
  /** The module to use instead of the packaged file: a URL (fetched in browsers, read from disk
   *  for file: URLs in Node), bytes, or a compiled module. */
  wasm?: URL | string | ArrayBuffer | Uint8Array | WebAssembly.Module;
  /** Upper bound of the wasm memory in bytes (default and limit 4 GiB). Appends that would need
   *  more fail with an 'out of memory' TqkvError and leave the cache as it was. */
  maximumMemory?: number;
}

/** Configuration of a cache (the C++ tqkv::CacheConfig, plus the number of layers). */
export interface CacheOptions {
  /** Layers (1..1024), each with its own codes; default 1. */
  layers?: number;
  /** Query heads. */
  heads: number;
  /** KV heads (grouped-query attention); divides `heads`; default `heads`. */
  kvHeads?: number;
  /** Head dimension, 3..1024. */
  headDim: number;
  /** Bits per key coordinate: 1..8 (mse), 2..8 (prod), or fractional with keyHighChannels; default 4. */
  keyBits?: number;
  /** Bits per value coordinate (values always use mse); default 4. */
  valueBits?: number;
  /** 'mse' (default, lowest error) or 'prod' (unbiased inner products). */
  keyMethod?: 'mse' | 'prod';
  /** Most recent tokens kept exactly (fp32) and merged into the same softmax; default 0. */
  window?: number;
  /** Tokens per block of codes: a multiple of 32 in [32, 4096]; default 64. Memory grows by blocks. */
  blockTokens?: number;
  /** Attention scale; default 1/sqrt(headDim). */
  scale?: number;
  /** Capacity per layer in tokens; default unbounded (2^28). */
  maxTokens?: number;
  /** Seed of the random rotations (the same seed gives the same codes on every target). */
  seed?: bigint | number;
  /** Storage of the per-vector norms: 'f16' (default) or 'f32'. */
  normFormat?: 'f16' | 'f32';
  /** Channels coded with one more bit for fractional keyBits / valueBits (e.g. 3.5). */
  keyHighChannels?: ArrayLike<number>;
  valueHighChannels?: ArrayLike<number>;
  /** Kernel table: '' (best: 'wasm128' in the SIMD build) or 'scalar'. */
  kernel?: string;
}

/** The configuration a cache reports (see {@link KVCache.config}). */
export interface CacheConfig {
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  keyBits: number;
  valueBits: number;
  keyMethod: 'mse' | 'prod';
  window: number;
  blockTokens: number;
  scale: number;
  maxTokens: number;
  /** Layer 0's seed (layer l codes with a seed derived from the configured one). */
  seed: bigint;
  normFormat: 'f16' | 'f32';
}

/** Options of a vector codec ({@link Tqkv.createCodec}). */
export interface CodecOptions {
  dim: number;
  /** 1..8 (mse), 2..8 (prod), 1 (qjl), or fractional with highChannels; default 4. */
  bits?: number;
  method?: 'mse' | 'prod' | 'qjl';
  seed?: bigint | number;
  normFormat?: 'f16' | 'f32';
  highChannels?: ArrayLike<number>;
  kernel?: string;
}

interface Exports {
  memory: WebAssembly.Memory;
  _initialize(): void;
  malloc(n: number): number;
  free(p: number): void;
  tqkv_last_error(): number;
  tqkv_abi_version(): number;
  tqkv_default_kernel(): number;
  tqkv_cache_config_init(cfg: number): number;
  tqkv_cache_config_size(): number;
  tqkv_cache_create(cfg: number, out: number): number;
  tqkv_cache_destroy(h: number): number;
  tqkv_cache_append(h: number, layer: number, k: number, nk: number, v: number, nv: number): number;
  tqkv_cache_attend(h: number, layer: number, q: number, nq: number, o: number, no: number, causal: number): number;
  tqkv_cache_truncate(h: number, n: number): number;
  tqkv_cache_clear(h: number): number;
  tqkv_cache_tokens(h: number, layer: number, out: number): number;
  tqkv_cache_bytes_used(h: number, out: number): number;
  tqkv_cache_get_config(h: number, cfg: number): number;
  tqkv_cache_kernel(h: number): number;
  tqkv_cache_save(h: number, buf: number, cap: number, size: number): number;
  tqkv_cache_load(bytes: number, n: number, kernel: number, out: number): number;
  tqkv_codec_config_init(cfg: number): number;
  tqkv_codec_config_size(): number;
  tqkv_codec_create(cfg: number, out: number): number;
  tqkv_codec_destroy(h: number): number;
  tqkv_codec_bytes_per_vector(h: number, out: number): number;
  tqkv_codec_encode(h: number, x: number, nx: number, out: number, nout: number): number;
  tqkv_codec_decode(h: number, c: number, nc: number, out: number, nout: number): number;
  tqkv_codec_dot(h: number, q: number, nq: number, c: number, nc: number, s: number, ns: number): number;
  tqkv_dense_attention_f32(heads: number, kvHeads: number, dim: number, tokens: number, q: number, nq: number,
                           k: number, v: number, nkv: number, o: number, no: number): number;
  tqkv_model_load(cfg: number, ncfg: number, st: number, nst: number, out: number): number;
  tqkv_model_destroy(h: number): number;
  tqkv_model_get_info(h: number, info: number): number;
  tqkv_matmul_kernel(): number;
  tqkv_calibration_create(model: number, tokens: number, n: number, out: number): number;
  tqkv_calibration_destroy(h: number): number;
  tqkv_runner_create(model: number, spec: number, cal: number, maxChunk: number, out: number): number;
  tqkv_runner_destroy(h: number): number;
  tqkv_runner_prefill(h: number, tokens: number, n: number, logits: number, nLogits: number, next: number): number;
  tqkv_runner_decode(h: number, token: number, logits: number, nLogits: number, next: number): number;
  tqkv_runner_reset(h: number): number;
  tqkv_runner_get_stats(h: number, stats: number): number;
  tqkv_runner_nll(h: number, tokens: number, n: number, ctx: number, nll: number, scored: number): number;
}

const ABI_VERSION = 1;
const PAGE = 65536;
// -sINITIAL_MEMORY=4MB in wasm/build.sh: the memory the modules import must start at least this big.
const INITIAL_PAGES = 64;
const MAX_PAGES = 65536;
// wasm32 layout of tqkv_cache_config / tqkv_codec_config (offsets fixed in tqkv.h).
const CACHE_CFG_SIZE = 96;
const CODEC_CFG_SIZE = 48;
// tqkv_model_info / tqkv_runner_stats (48 bytes each, offsets fixed in tqkv.h).
const MODEL_INFO_SIZE = 48;
const RUNNER_STATS_SIZE = 48;

// A module with one SIMD128 instruction (i8x16.splat + i8x16.popcnt), as feature detection.
const SIMD_PROBE = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11,
]);

/** true when this engine validates WebAssembly SIMD128 instructions. */
export function simdSupported(): boolean {
  try {
    return WebAssembly.validate(SIMD_PROBE);
  } catch {
    return false;
  }
}

const isNode = !!(globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node;

async function readBytes(url: URL): Promise<ArrayBuffer | Uint8Array> {
  if (isNode && url.protocol === 'file:') {
    const fs = await import(/* webpackIgnore: true */ 'node:fs/promises' as string);
    return (fs as { readFile(u: URL): Promise<Uint8Array> }).readFile(url);
  }
  const res = await fetch(url);
  if (!res.ok) throw new Error(`tqkv: cannot fetch ${url.href}: ${res.status} ${res.statusText}`);
  return res.arrayBuffer();
}

async function readUrl(url: URL, signal?: AbortSignal): Promise<Uint8Array> {
  if (isNode && url.protocol === 'file:') return new Uint8Array((await readBytes(url)) as Uint8Array);
  const res = await fetch(url, { signal });
  if (!res.ok) throw new Error(`tqkv: cannot fetch ${url.href}: ${res.status} ${res.statusText}`);
  return new Uint8Array(await res.arrayBuffer());
}

async function compileModule(src: LoadOptions['wasm'], simd: boolean): Promise<WebAssembly.Module> {
  if (src instanceof WebAssembly.Module) return src;
  if (src instanceof ArrayBuffer || src instanceof Uint8Array) return WebAssembly.compile(src as BufferSource);
  const url =
    src === undefined
      ? simd
        ? new URL('./tqkv.wasm', import.meta.url)
        : new URL('./tqkv-scalar.wasm', import.meta.url)
      : new URL(String(src), typeof location !== 'undefined' ? location.href : import.meta.url);
  if (!(isNode && url.protocol === 'file:') && typeof WebAssembly.compileStreaming === 'function') {
    try {
      const res = await fetch(url);
      if (!res.ok) throw new Error(`tqkv: cannot fetch ${url.href}: ${res.status} ${res.statusText}`);
      // compileStreaming needs the application/wasm content type; fall back to bytes otherwise.
      if ((res.headers.get('content-type') ?? '').startsWith('application/wasm')) return await WebAssembly.compileStreaming(res);
      return await WebAssembly.compile(await res.arrayBuffer());
    } catch (e) {
      if (e instanceof Error && e.message.startsWith('tqkv:')) throw e;
      return WebAssembly.compile((await readBytes(url)) as BufferSource);
    }
  }
  return WebAssembly.compile((await readBytes(url)) as BufferSource);
}

function asFloat32(x: unknown, what: string): Float32Array {
  if (!(x instanceof Float32Array)) throw new TypeError(`tqkv: ${what} must be a Float32Array`);
  return x;
}

function asInt(x: unknown, what: string, min = -2147483648, max = 2147483647): number {
  if (typeof x !== 'number' || !Number.isInteger(x) || x < min || x > max)
    throw new TypeError(`tqkv: ${what} must be an integer in [${min}, ${max}], got ${String(x)}`);
  return x;
}

let defaultInstance: Tqkv | undefined;
let defaultLoading: Promise<Tqkv> | undefined;

/** A loaded tqkv WebAssembly module: creates caches and codecs. */
export class Tqkv {
  /** true when the SIMD128 build is in use. */
  readonly simd: boolean;
  /** The kernel a cache uses by default ('wasm128' or 'scalar'). */
  readonly kernel: string;
  /** @internal */ readonly _x: Exports;
  /** @internal */ readonly _memory: WebAssembly.Memory;
  private u8: Uint8Array;
  private f32: Float32Array;
  private dv: DataView;
  private scratch = 0;
  private scratchBytes = 0;
  private readonly slots: number; // 64 bytes for out-parameters and configs
  private readonly cfgPtr: number;
  /** @internal */ readonly _finalizer: FinalizationRegistry<number> | undefined;
  /** @internal */ readonly _codecFinalizer: FinalizationRegistry<number> | undefined;
  /** @internal Models, calibrations and runners: the destroy function of the handle's kind. */
  readonly _modelFinalizer: FinalizationRegistry<{ destroy: (h: number) => number; h: number }> | undefined;

  private constructor(instance: WebAssembly.Instance, memory: WebAssembly.Memory) {
    this._x = instance.exports as unknown as Exports;
    this._memory = memory;
    this.u8 = new Uint8Array(memory.buffer);
    this.f32 = new Float32Array(memory.buffer);
    this.dv = new DataView(memory.buffer);
    this._x._initialize();
    if (this._x.tqkv_abi_version() !== ABI_VERSION) throw new Error('tqkv: the .wasm file does not match this loader (ABI version)');
    if (this._x.tqkv_cache_config_size() !== CACHE_CFG_SIZE || this._x.tqkv_codec_config_size() !== CODEC_CFG_SIZE)
      throw new Error('tqkv: unexpected config struct layout in the .wasm file');
    this.slots = this._x.malloc(64);
    this.cfgPtr = this._x.malloc(CACHE_CFG_SIZE + 64);
    if (!this.slots || !this.cfgPtr) throw new TqkvError('tqkv: out of memory', Status.OUT_OF_MEMORY);
    this.kernel = this.cstr(this._x.tqkv_default_kernel());
    this.simd = this.kernel === 'wasm128';
    const x = this._x;
    this._finalizer =
      typeof FinalizationRegistry === 'function' ? new FinalizationRegistry<number>((h) => x.tqkv_cache_destroy(h)) : undefined;
    this._codecFinalizer =
      typeof FinalizationRegistry === 'function' ? new FinalizationRegistry<number>((h) => x.tqkv_codec_destroy(h)) : undefined;
    this._modelFinalizer =
      typeof FinalizationRegistry === 'function'
        ? new FinalizationRegistry<{ destroy: (h: number) => number; h: number }>(({ destroy, h }) => destroy(h))
        : undefined;
  }

  /**
   * Loads and instantiates the module. With no options the instance is shared: later calls (and
   * {@link Tqkv.deserialize}) get the same one.
   */
  static load(options: LoadOptions = {}): Promise<Tqkv> {
    const isDefault = options.simd === undefined && options.wasm === undefined && options.maximumMemory === undefined;
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
    const want = options.simd ?? 'auto';
    const simd = want === 'auto' ? simdSupported() : want;
    const module = await compileModule(options.wasm, simd);
    let maxPages = MAX_PAGES;
    if (options.maximumMemory !== undefined) {
      if (!(options.maximumMemory > 0)) throw new RangeError('tqkv: maximumMemory must be a positive number of bytes');
      maxPages = Math.max(INITIAL_PAGES, Math.min(MAX_PAGES, Math.floor(options.maximumMemory / PAGE)));
    }
    const memory = new WebAssembly.Memory({ initial: INITIAL_PAGES, maximum: maxPages });
    const imports = {
      env: {
        memory,
        // The module grew its memory (malloc): views are refreshed lazily (see refresh()).
        emscripten_notify_memory_growth: () => {},
      },
      // The three WASI calls the C++ runtime makes: getenv (no environment here) and exit.
      wasi_snapshot_preview1: {
        environ_sizes_get: (count: number, size: number) => {
          const dv = new DataView(memory.buffer);
          dv.setUint32(count, 0, true);
          dv.setUint32(size, 0, true);
          return 0;
        },
        environ_get: () => 0,
        // The runner's timers (std::chrono::steady_clock): nanoseconds as a u64.
        clock_time_get: (id: number, _precision: bigint, out: number) => {
          const ms = id === 0 ? Date.now() : typeof performance !== 'undefined' ? performance.now() : Date.now();
          new DataView(memory.buffer).setBigUint64(out, BigInt(Math.round(ms * 1e6)), true);
          return 0;
        },
        proc_exit: (code: number) => {
          throw new Error(`tqkv: the wasm module exited (code ${code})`);
        },
      },
    };
    const instance = await WebAssembly.instantiate(module, imports);
    return new Tqkv(instance, memory);
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
  // Memory helpers (internal)

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
    for (let i = 0, n = dst.length; i < n; i++) dst[i] = f[base + i];
  }
  /** @internal */ u32(ptr: number): number {
    this.refresh();
    return this.dv.getUint32(ptr, true);
  }
  /** @internal */ get slot(): number {
    return this.slots;
  }
  /** @internal 160 bytes for structs (model info, runner stats). */
  get structPtr(): number {
    return this.cfgPtr;
  }
  /** @internal A DataView of the current memory. */
  view(): DataView {
    this.refresh();
    return this.dv;
  }
  /** @internal Bytes copied into a new malloc'd block (freed by the caller). */
  mallocCopy(bytes: Uint8Array, what: string): number {
    const p = this._x.malloc(Math.max(1, bytes.length));
    if (!p)
      throw new TqkvError(
        `tqkv: out of memory: cannot grow the wasm memory for ${what} (${bytes.length} bytes; memory is ` +
          `${this._memory.buffer.byteLength} bytes)`,
        Status.OUT_OF_MEMORY,
      );
    new Uint8Array(this._memory.buffer, p, bytes.length).set(bytes);
    return p;
  }

  private writeString(ptr: number, s: string, max: number): void {
    if (s.length >= max) throw new RangeError('tqkv: kernel name too long');
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c > 126 || c < 32) throw new RangeError('tqkv: kernel name must be ASCII');
      this.u8[ptr + i] = c;
    }
    this.u8[ptr + s.length] = 0;
  }

  private writeChannels(list: ArrayLike<number> | undefined, what: string): [number, number] {
    if (!list || list.length === 0) return [0, 0];
    const p = this._x.malloc(list.length * 4);
    if (!p) throw new TqkvError('tqkv: out of memory', Status.OUT_OF_MEMORY);
    this.refresh();
    for (let i = 0; i < list.length; i++) this.dv.setInt32(p + 4 * i, asInt(list[i], `${what}[${i}]`), true);
    return [p, list.length];
  }

  // ---------------------------------------------------------------------------------------------
  // Caches

  /** A new, empty cache. Throws a TqkvError with the library's message for a bad configuration. */
  createCache(options: CacheOptions): KVCache {
    if (typeof options !== 'object' || options === null) throw new TypeError('tqkv: createCache needs an options object');
    const x = this._x;
    const cfg = this.cfgPtr;
    this.check(x.tqkv_cache_config_init(cfg));
    this.refresh();
    const dv = this.dv;
    const int = (v: unknown, what: string) => asInt(v, what);
    const num = (v: unknown, what: string) => {
      if (typeof v !== 'number') throw new TypeError(`tqkv: ${what} must be a number`);
      return v;
    };
    dv.setInt32(cfg + 4, int(options.layers ?? 1, 'layers'), true);
    dv.setInt32(cfg + 8, int(options.heads, 'heads'), true);
    dv.setInt32(cfg + 12, int(options.kvHeads ?? options.heads, 'kvHeads'), true);
    dv.setInt32(cfg + 16, int(options.headDim, 'headDim'), true);
    const method = options.keyMethod ?? 'mse';
    if (method !== 'mse' && method !== 'prod') throw new TypeError("tqkv: keyMethod must be 'mse' or 'prod'");
    dv.setInt32(cfg + 20, method === 'prod' ? 1 : 0, true);
    if (options.keyBits !== undefined) dv.setFloat64(cfg + 24, num(options.keyBits, 'keyBits'), true);
    if (options.valueBits !== undefined) dv.setFloat64(cfg + 32, num(options.valueBits, 'valueBits'), true);
    if (options.blockTokens !== undefined) dv.setInt32(cfg + 40, int(options.blockTokens, 'blockTokens'), true);
    if (options.window !== undefined) dv.setInt32(cfg + 44, int(options.window, 'window'), true);
    if (options.scale !== undefined) dv.setFloat32(cfg + 48, num(options.scale, 'scale'), true);
    const norm = options.normFormat ?? 'f16';
    if (norm !== 'f16' && norm !== 'f32') throw new TypeError("tqkv: normFormat must be 'f16' or 'f32'");
    dv.setInt32(cfg + 52, norm === 'f32' ? 1 : 0, true);
    if (options.maxTokens !== undefined) {
      const m = asInt(options.maxTokens, 'maxTokens', 0, Number.MAX_SAFE_INTEGER);
      dv.setBigUint64(cfg + 56, BigInt(m), true);
    }
    if (options.seed !== undefined) dv.setBigUint64(cfg + 64, BigInt.asUintN(64, BigInt(options.seed)), true);
    const kernel = options.kernel ?? '';
    this.writeString(cfg + CACHE_CFG_SIZE, kernel, 64);
    dv.setUint32(cfg + 88, kernel ? cfg + CACHE_CFG_SIZE : 0, true);
    const [kp, kn] = this.writeChannels(options.keyHighChannels, 'keyHighChannels');
    let vp = 0;
    try {
      let vn: number;
      [vp, vn] = this.writeChannels(options.valueHighChannels, 'valueHighChannels');
      this.refresh();
      this.dv.setInt32(cfg + 72, kn, true);
      this.dv.setInt32(cfg + 76, vn, true);
      this.dv.setUint32(cfg + 80, kp, true);
      this.dv.setUint32(cfg + 84, vp, true);
      this.check(x.tqkv_cache_create(cfg, this.slots));
    } finally {
      if (kp) x.free(kp);
      if (vp) x.free(vp);
    }
    return new KVCache(this, this.u32(this.slots));
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
  // Llama models

  /** The matrix-product kernel of the model runner ('wasm128' in the SIMD build, 'plain' otherwise). */
  get matmulKernel(): string {
    return this.cstr(this._x.tqkv_matmul_kernel());
  }

  /**
   * A Llama model (Hugging Face checkpoint) from config.json (text, bytes or the parsed object) and
   * the bytes of model.safetensors (fp16, bf16 or fp32; kept as fp32 in wasm memory: 4 bytes per
   * parameter). Malformed files throw a 'bad data' TqkvError naming the problem.
   */
  loadModel(config: string | Uint8Array | object, weights: Uint8Array | ArrayBuffer): LlamaModel {
    const w = weights instanceof ArrayBuffer ? new Uint8Array(weights) : weights;
    if (!(w instanceof Uint8Array)) throw new TypeError('tqkv: loadModel: weights must be a Uint8Array or ArrayBuffer');
    const p = this.mallocCopy(w, 'the model weights');
    try {
      return this.loadModelAt(config, p, w.length);
    } finally {
      this._x.free(p);
    }
  }

  /**
   * Fetches `url`config.json and `url`model.safetensors (in Node, file: URLs and paths are read
   * from disk) and loads the model. The weights stream straight into wasm memory when the server
   * sends their length. onProgress(loaded, total) reports the weights' bytes.
   */
  async fetchModel(
    url: string | URL,
    options: { onProgress?: (loaded: number, total: number | undefined) => void; signal?: AbortSignal } = {},
  ): Promise<LlamaModel> {
    let base = url instanceof URL ? url : undefined;
    if (!base) {
      const s = String(url);
      if (isNode && !/^[a-z][a-z0-9+.-]*:/i.test(s)) {
        const { pathToFileURL } = (await import(/* webpackIgnore: true */ 'node:url' as string)) as {
          pathToFileURL(p: string): URL;
        };
        base = pathToFileURL(s.endsWith('/') ? s : s + '/');
      } else {
        base = new URL(s.endsWith('/') ? s : s + '/', typeof location !== 'undefined' ? location.href : undefined);
      }
    } else if (!base.pathname.endsWith('/')) {
      base = new URL(base.href + '/');
    }
    const configUrl = new URL('config.json', base), weightsUrl = new URL('model.safetensors', base);
    const config = new TextDecoder().decode(await readUrl(configUrl, options.signal));
    if (isNode && weightsUrl.protocol === 'file:') {
      const bytes = await readUrl(weightsUrl, options.signal);
      options.onProgress?.(bytes.length, bytes.length);
      return this.loadModel(config, bytes);
    }
    const res = await fetch(weightsUrl, { signal: options.signal });
    if (!res.ok) throw new Error(`tqkv: cannot fetch ${weightsUrl.href}: ${res.status} ${res.statusText}`);
    const total = Number(res.headers.get('content-length') ?? NaN);
    const identity = !res.headers.get('content-encoding') || res.headers.get('content-encoding') === 'identity';
    if (!res.body || !(total > 0) || !identity) {
      const bytes = new Uint8Array(await res.arrayBuffer());
      options.onProgress?.(bytes.length, bytes.length);
      return this.loadModel(config, bytes);
    }
    // Stream into a block of wasm memory (no second copy of 38+ MB in JavaScript).
    const p = this._x.malloc(total);
    if (!p)
      throw new TqkvError(
        `tqkv: out of memory: cannot grow the wasm memory for the model weights (${total} bytes)`,
        Status.OUT_OF_MEMORY,
      );
    try {
      const reader = res.body.getReader();
      let loaded = 0;
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        if (loaded + value.length > total) throw new Error(`tqkv: ${weightsUrl.href}: more bytes than its content-length`);
        new Uint8Array(this._memory.buffer, p + loaded, value.length).set(value);
        loaded += value.length;
        options.onProgress?.(loaded, total);
      }
      if (loaded !== total) throw new Error(`tqkv: ${weightsUrl.href}: ${loaded} of ${total} bytes received`);
      return this.loadModelAt(config, p, total);
    } finally {
      this._x.free(p);
    }
  }

  private loadModelAt(config: string | Uint8Array | object, p: number, n: number): LlamaModel {
    const text =
      typeof config === 'string' ? config : config instanceof Uint8Array ? new TextDecoder().decode(config) : JSON.stringify(config);
    const cfg = new TextEncoder().encode(text);
    const pc = this.mallocCopy(cfg, 'config.json');
    try {
      this.check(this._x.tqkv_model_load(pc, cfg.length, p, n, this.slots));
    } finally {
      this._x.free(pc);
    }
    return new LlamaModel(this, this.u32(this.slots));
  }

  // ---------------------------------------------------------------------------------------------
  // Codecs

  /** A vector codec (encode / decode / score plain vectors: teaching pages, tools). */
  createCodec(options: CodecOptions): Codec {
    if (typeof options !== 'object' || options === null) throw new TypeError('tqkv: createCodec needs an options object');
    const x = this._x;
    const cfg = this.cfgPtr;
    this.check(x.tqkv_codec_config_init(cfg));
    this.refresh();
    const dv = this.dv;
    dv.setInt32(cfg + 4, asInt(options.dim, 'dim'), true);
    if (options.bits !== undefined) {
      if (typeof options.bits !== 'number') throw new TypeError('tqkv: bits must be a number');
      dv.setFloat64(cfg + 8, options.bits, true);
    }
    const methods = { mse: 0, prod: 1, qjl: 2 } as const;
    const method = options.method ?? 'mse';
    if (!(method in methods)) throw new TypeError("tqkv: method must be 'mse', 'prod' or 'qjl'");
    dv.setInt32(cfg + 16, methods[method], true);
    const norm = options.normFormat ?? 'f16';
    if (norm !== 'f16' && norm !== 'f32') throw new TypeError("tqkv: normFormat must be 'f16' or 'f32'");
    dv.setInt32(cfg + 20, norm === 'f32' ? 1 : 0, true);
    if (options.seed !== undefined) dv.setBigUint64(cfg + 24, BigInt.asUintN(64, BigInt(options.seed)), true);
    const kernel = options.kernel ?? '';
    this.writeString(cfg + CACHE_CFG_SIZE, kernel, 64);
    dv.setUint32(cfg + 44, kernel ? cfg + CACHE_CFG_SIZE : 0, true);
    const [hp, hn] = this.writeChannels(options.highChannels, 'highChannels');
    try {
      this.refresh();
      this.dv.setInt32(cfg + 32, hn, true);
      this.dv.setUint32(cfg + 40, hp, true);
      this.check(x.tqkv_codec_create(cfg, this.slots));
    } finally {
      if (hp) x.free(hp);
    }
    const h = this.u32(this.slots);
    this.check(x.tqkv_codec_bytes_per_vector(h, this.slots));
    return new Codec(this, h, options.dim, this.u32(this.slots));
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
}

/** A compressed KV cache of one or more layers. Free it with {@link KVCache.dispose} (or let the
 *  garbage collector do it). A call that throws leaves the cache as it was. */
export class KVCache {
  private handle: number;
  private readonly t: Tqkv;
  private readonly cfg: CacheConfig;
  private readonly row: number;
  private readonly qrow: number;

  /** @internal */
  constructor(t: Tqkv, handle: number) {
    this.t = t;
    this.handle = handle;
    this.cfg = this.readConfig();
    this.row = this.cfg.kvHeads * this.cfg.headDim;
    this.qrow = this.cfg.heads * this.cfg.headDim;
    t._finalizer?.register(this, handle, this);
  }

  private h(): number {
    if (!this.handle) throw new TqkvError('tqkv: the cache has been disposed', Status.INVALID_HANDLE);
    return this.handle;
  }

  private readConfig(): CacheConfig {
    const t = this.t;
    const x = t._x;
    const p = t.scratchPtr(128);
    const dv = new DataView(t._memory.buffer);
    dv.setUint32(p, CACHE_CFG_SIZE, true);
    t.check(x.tqkv_cache_get_config(this.handle, p));
    const d = new DataView(t._memory.buffer);
    return {
      layers: d.getInt32(p + 4, true),
      heads: d.getInt32(p + 8, true),
      kvHeads: d.getInt32(p + 12, true),
      headDim: d.getInt32(p + 16, true),
      keyMethod: d.getInt32(p + 20, true) === 1 ? 'prod' : 'mse',
      keyBits: d.getFloat64(p + 24, true),
      valueBits: d.getFloat64(p + 32, true),
      blockTokens: d.getInt32(p + 40, true),
      window: d.getInt32(p + 44, true),
      scale: d.getFloat32(p + 48, true),
      normFormat: d.getInt32(p + 52, true) === 1 ? 'f32' : 'f16',
      maxTokens: Number(d.getBigUint64(p + 56, true)),
      seed: d.getBigUint64(p + 64, true),
    };
  }

  /** The configuration (a copy). */
  get config(): CacheConfig {
    return { ...this.cfg };
  }
  get layers(): number {
    return this.cfg.layers;
  }
  /** The kernel table in use ('wasm128' or 'scalar'). */
  get kernel(): string {
    return this.t.cstr(this.t._x.tqkv_cache_kernel(this.h()));
  }
  get disposed(): boolean {
    return this.handle === 0;
  }

  /** Appends n tokens to a layer: keys and values are Float32Array [n][kvHeads][headDim]. */
  append(layer: number, keys: Float32Array, values: Float32Array): void {
    const h = this.h();
    asFloat32(keys, 'keys');
    asFloat32(values, 'values');
    if (layer !== (layer | 0)) throw new TypeError('tqkv: layer must be an integer');
    const t = this.t;
    const p = t.scratchPtr(4 * (keys.length + values.length));
    t.copyIn(keys, p);
    t.copyIn(values, p + 4 * keys.length);
    t.check(t._x.tqkv_cache_append(h, layer, p, keys.length, p + 4 * keys.length, values.length));
  }

  /** Attention of m queries [m][heads][headDim] over a layer into `out` (same shape; a new array
   *  when omitted). causal (default): query i sits at position tokens - m + i and sees the tokens
   *  up to it (chunked prefill after appending the chunk); otherwise every query sees every token. */
  attend(layer: number, queries: Float32Array, out?: Float32Array, causal = true): Float32Array {
    const h = this.h();
    asFloat32(queries, 'queries');
    if (layer !== (layer | 0)) throw new TypeError('tqkv: layer must be an integer');
    const o = out === undefined ? new Float32Array(queries.length) : asFloat32(out, 'out');
    const t = this.t;
    const p = t.scratchPtr(4 * (queries.length + o.length));
    t.copyIn(queries, p);
    const po = p + 4 * queries.length;
    t.check(t._x.tqkv_cache_attend(h, layer, p, queries.length, po, o.length, causal ? 1 : 0));
    t.refresh();
    t.copyOut(po, o);
    return o;
  }

  /** Keeps the first n tokens of every layer (speculative-decoding rollback). */
  truncate(tokens: number): void {
    const h = this.h();
    asInt(tokens, 'tokens', 0, 0x7fffffff);
    this.t.check(this.t._x.tqkv_cache_truncate(h, tokens));
  }

  /** Removes every token (the configuration stays). */
  clear(): void {
    this.t.check(this.t._x.tqkv_cache_clear(this.h()));
  }

  /** Tokens held by a layer (default 0). */
  tokens(layer = 0): number {
    const h = this.h();
    this.t.check(this.t._x.tqkv_cache_tokens(h, asInt(layer, 'layer'), this.t.slot));
    return this.t.u32(this.t.slot);
  }

  /** All memory the cache holds (blocks, exact windows, tables), every layer. */
  bytesUsed(): number {
    const h = this.h();
    this.t.check(this.t._x.tqkv_cache_bytes_used(h, this.t.slot));
    return this.t.u32(this.t.slot);
  }

  /** The cache as portable bytes (magic, version, config, payload, CRC32): the same bytes on every
   *  target, loadable natively with tqkv::ModelKVCache::load. */
  serialize(): Uint8Array {
    const h = this.h();
    const t = this.t;
    const x = t._x;
    const st = x.tqkv_cache_save(h, 0, 0, t.slot);
    if (st !== Status.BUFFER_TOO_SMALL) t.check(st);
    const size = t.u32(t.slot);
    const p = t.scratchPtr(size);
    t.check(x.tqkv_cache_save(h, p, size, t.slot));
    t.refresh();
    return new Uint8Array(t._memory.buffer, p, size).slice();
  }

  /** Frees the cache's wasm memory; any later call throws. A second dispose does nothing. */
  dispose(): void {
    if (!this.handle) return;
    const h = this.handle;
    this.handle = 0;
    this.t._finalizer?.unregister(this);
    this.t.check(this.t._x.tqkv_cache_destroy(h));
  }
}

/** A vector codec: encode float vectors to packed codes, decode them, score queries against them. */
export class Codec {
  private handle: number;
  private readonly t: Tqkv;
  readonly dim: number;
  readonly bytesPerVector: number;

  /** @internal */
  constructor(t: Tqkv, handle: number, dim: number, bytesPerVector: number) {
    this.t = t;
    this.handle = handle;
    this.dim = dim;
    this.bytesPerVector = bytesPerVector;
    t._codecFinalizer?.register(this, handle, this);
  }

  private h(): number {
    if (!this.handle) throw new TqkvError('tqkv: the codec has been disposed', Status.INVALID_HANDLE);
    return this.handle;
  }

  /** Real storage cost per coordinate, norms included. */
  get bitsPerCoord(): number {
    return (8 * this.bytesPerVector) / this.dim;
  }

  /** n = x.length / dim vectors -> n * bytesPerVector bytes. */
  encode(x: Float32Array, out?: Uint8Array): Uint8Array {
    const h = this.h();
    asFloat32(x, 'x');
    const n = Math.floor(x.length / this.dim);
    const o = out ?? new Uint8Array(n * this.bytesPerVector);
    if (!(o instanceof Uint8Array)) throw new TypeError('tqkv: out must be a Uint8Array');
    const t = this.t;
    const p = t.scratchPtr(4 * x.length + o.length + 16);
    const po = p + 4 * x.length;
    t.copyIn(x, p);
    t.check(t._x.tqkv_codec_encode(h, p, x.length, po, o.length));
    t.refresh();
    o.set(new Uint8Array(t._memory.buffer, po, o.length));
    return o;
  }

  /** n = codes.length / bytesPerVector vectors -> n * dim floats. */
  decode(codes: Uint8Array, out?: Float32Array): Float32Array {
    const h = this.h();
    if (!(codes instanceof Uint8Array)) throw new TypeError('tqkv: codes must be a Uint8Array');
    const n = Math.floor(codes.length / this.bytesPerVector);
    const o = out === undefined ? new Float32Array(n * this.dim) : asFloat32(out, 'out');
    const t = this.t;
    const pc = t.scratchPtr(codes.length + 4 * o.length + 16);
    const po = (pc + codes.length + 15) & ~15;
    new Uint8Array(t._memory.buffer).set(codes, pc);
    t.check(t._x.tqkv_codec_decode(h, pc, codes.length, po, o.length));
    t.refresh();
    t.copyOut(po, o);
    return o;
  }

  /** scores[v] = estimate of <query, x_v> for each encoded vector, from the codes. */
  dot(query: Float32Array, codes: Uint8Array, out?: Float32Array): Float32Array {
    const h = this.h();
    asFloat32(query, 'query');
    if (!(codes instanceof Uint8Array)) throw new TypeError('tqkv: codes must be a Uint8Array');
    const n = Math.floor(codes.length / this.bytesPerVector);
    const o = out === undefined ? new Float32Array(n) : asFloat32(out, 'out');
    const t = this.t;
    const pq = t.scratchPtr(4 * query.length + codes.length + 4 * o.length + 32);
    const pc = pq + 4 * query.length;
    const po = (pc + codes.length + 15) & ~15;
    t.copyIn(query, pq);
    new Uint8Array(t._memory.buffer).set(codes, pc);
    t.check(t._x.tqkv_codec_dot(h, pq, query.length, pc, codes.length, po, o.length));
    t.refresh();
    t.copyOut(po, o);
    return o;
  }

  dispose(): void {
    if (!this.handle) return;
    const h = this.handle;
    this.handle = 0;
    this.t._codecFinalizer?.unregister(this);
    this.t.check(this.t._x.tqkv_codec_destroy(h));
  }
}

// -------------------------------------------------------------------------------------------------
// Llama models (the C ABI's tqkv_model_* / tqkv_calibration_* / tqkv_runner_*)

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
  /** Storage the cache format needs for them: codes, norms, scales, exact window tokens (as fp16);
   *  all layers, keys and values. */
  cacheBytes: number;
  /** An fp16 cache of the same tokens. */
  fp16Bytes: number;
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
    t._modelFinalizer?.register(this, { destroy: t._x.tqkv_model_destroy, h: handle }, this);
  }

  /** @internal */ h(): Handle {
    if (!this.handle) throw new TqkvError('tqkv: the model has been disposed', Status.INVALID_HANDLE);
    return this.handle;
  }

  get disposed(): boolean {
    return this.handle === 0;
  }

  /** Token ids of a string (UTF-8 bytes; byte-vocabulary models only) or of an array of ids. */
  tokens(input: TokenInput): Int32Array {
    if (typeof input === 'string') {
      if (this.info.vocab !== 256) throw new TypeError('tqkv: text needs a byte-vocabulary model (vocab 256); pass token ids');
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
    const u8 = new Uint8Array(t._memory.buffer);
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
}

/** Calibration statistics of a model ({@link LlamaModel.calibrate}); reusable by many runners. */
export class Calibration {
  /** @internal */ handle: Handle;
  private readonly t: Tqkv;
  /** @internal */
  constructor(t: Tqkv, handle: Handle) {
    this.t = t;
    this.handle = handle;
    t._modelFinalizer?.register(this, { destroy: t._x.tqkv_calibration_destroy, h: handle }, this);
  }
  /** @internal */ h(): Handle {
    if (!this.handle) throw new TqkvError('tqkv: the calibration has been disposed', Status.INVALID_HANDLE);
    return this.handle;
  }
  dispose(): void {
    if (!this.handle) return;
    const h = this.handle;
    this.handle = 0;
    this.t._modelFinalizer?.unregister(this);
    this.t.check(this.t._x.tqkv_calibration_destroy(h));
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
    if (!this.handle) throw new TqkvError('tqkv: the runner has been disposed', Status.INVALID_HANDLE);
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
}

export default Tqkv;
