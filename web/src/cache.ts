// KVCache: a compressed KV cache of one or more layers (the C ABI's tqkv_cache_*), and the
// translation of CacheOptions into the C struct tqkv_cache_config.
import { CACHE_CFG_SIZE } from './abi.js';
import { disposedError, Status } from './errors.js';
import { asFloat32, asInt, asNumber } from './input.js';
import { Calibration } from './calibration.js';
import type { ModuleVariant } from './loader.js';
import type { Tqkv } from './tqkv.js';

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
  /** Default layout of the tensors given to append / attend / attendStats: 'token-major'
   *  ([n][heads][headDim], the default) or 'head-major' ([heads][n][headDim]). */
  layout?: TensorLayout;
  /** A cache spec as `tqkv-run --cache` takes for tqkv formats, e.g. 'K3.5V2.5-w16', 'K4V4',
   *  'K3V2-w16-prod' (grammar: {@link Tqkv.specGrammar}); sets the rates, method, window, scale and
   *  seed, so those options may not be given with it. */
  spec?: string;
  /** A preset name ({@link Tqkv.presets}, e.g. 'default'); like `spec`. */
  preset?: string;
  /** Statistics of this model's keys and values ({@link Tqkv.calibrate}): with `spec`/`preset`,
   *  keys and values are mean-centred, logits and values debiased, and fractional rates take
   *  their high channels from it. Without it a spec gives plain TurboQuant (fractional rates
   *  then need one). The cache keeps what it needs: the calibration may be disposed after. */
  calibration?: Calibration;
  /** Attention arithmetic: 'fast' (default: integer tables for the key scores, int8 value
   *  centroids; the same codes, scores within a bound derived in
   *  lib/src/kernels/simd/fast_attention.hpp, RMS error under 1/10 of the codec's own) or 'exact'
   *  (float tables, the reference). Beside a spec, the spec's own -exact / -fast wins. */
  precision?: Precision;
}

/** How a tensor of n tokens is laid out: 'token-major' [n][heads][headDim] or 'head-major'
 *  [heads][n][headDim] (heads = kvHeads for keys and values, query heads for queries). */
export type TensorLayout = 'token-major' | 'head-major';

/** Keys and values: fp32, or IEEE half bits (Uint16Array, or Float16Array where the engine has
 *  it), widened exactly inside the module. */
export type KVTensor = Float32Array | Uint16Array | Float16ArrayLike;
/** Float16Array (ES2025), where the engine has it. */
export interface Float16ArrayLike extends ArrayBufferView {
  readonly length: number;
  readonly [Symbol.toStringTag]: 'Float16Array';
}

/** Options of {@link KVCache.append}. */
export interface AppendOptions {
  /** Layout of keys and values (default: the cache's `layout`). */
  layout?: TensorLayout;
  /** head-major only: append tokens [start, start + count) of a [kvHeads][seq][headDim] tensor
   *  holding seq = length / (kvHeads * headDim) tokens (e.g. the new tokens of a runtime's
   *  present-KV tensor); default all of them. Each head's rows are copied as they are. */
  start?: number;
  count?: number;
}

/** Options of {@link KVCache.attend}. */
export interface AttendOptions {
  /** See attend's `causal`; default true. */
  causal?: boolean;
  /** Layout of queries and out (default: the cache's `layout`). */
  layout?: TensorLayout;
}

/** Softmax statistics of queries over a layer ({@link KVCache.attendStats}), per query token and
 *  head: maxLogit M, sumExp S = sum_t exp(s_t - M), acc A = sum_t exp(s_t - M) v_t (unnormalised),
 *  with s_t = scale * <q, k_t>. */
export interface AttentionStats {
  /** [m][heads][headDim] (token-major) or [heads][m][headDim]. */
  acc: Float32Array;
  /** [m][heads] or [heads][m]. */
  maxLogit: Float32Array;
  /** [m][heads] or [heads][m]. */
  sumExp: Float32Array;
}

/** Attention arithmetic of a cache (the C ABI's TQKV_PRECISION_EXACT / _FAST). */
export type Precision = 'exact' | 'fast';
const PRECISIONS: Record<Precision, number> = { exact: 0, fast: 1 };
// At offset 92 of tqkv_cache_config on wasm32 (tqkv.h).
const PRECISION_OFFSET = 92;

/** @internal The C ABI code of a precision option; anything else is a TypeError naming the accepted values. */
export function precisionCode(p: unknown): number {
  if (typeof p !== 'string' || !Object.hasOwn(PRECISIONS, p))
    throw new TypeError(`tqkv: precision must be 'exact' or 'fast', got ${typeof p === 'string' ? `'${p}'` : String(p)}`);
  return PRECISIONS[p as Precision];
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
  /** The kernel table the cache uses ('wasm128', 'scalar', ...). */
  kernel: string;
  /** The module build of the instance ('relaxed', 'simd128' or 'scalar'). */
  variant: ModuleVariant;
  /** Channels with one more bit for a fractional keyBits / valueBits (counts). */
  keyHighChannels: number;
  valueHighChannels: number;
  /** Default layout of append / attend tensors. */
  layout: TensorLayout;
  /** Attention arithmetic ('exact' or 'fast'). */
  precision: Precision;
}

const CACHE_OPTION_KEYS = ['layers', 'heads', 'kvHeads', 'headDim', 'keyBits', 'valueBits', 'keyMethod', 'window',
  'blockTokens', 'scale', 'maxTokens', 'seed', 'normFormat', 'keyHighChannels', 'valueHighChannels', 'kernel', 'layout',
  'spec', 'preset', 'calibration', 'precision'];
// What a spec decides: not accepted beside spec / preset.
const SPEC_SETS = ['keyBits', 'valueBits', 'keyMethod', 'window', 'scale', 'seed', 'keyHighChannels', 'valueHighChannels'];
const LAYOUTS = { 'token-major': 0, 'head-major': 1 } as const;
const DTYPE_F32 = 0, DTYPE_F16 = 1;

/** @internal Throws a TypeError naming the first unknown key of an options object. */
export function checkKeys(options: object, accepted: readonly string[], what: string): void {
  for (const k of Object.keys(options))
    if (!accepted.includes(k)) throw new TypeError(`tqkv: ${what}: unknown option '${k}' (accepted: ${accepted.join(', ')})`);
}

function layoutOf(x: unknown, what: string): TensorLayout {
  if (x !== 'token-major' && x !== 'head-major') throw new TypeError(`tqkv: ${what} must be 'token-major' or 'head-major', got ${String(x)}`);
  return x;
}

const hasFloat16 = typeof (globalThis as { Float16Array?: unknown }).Float16Array === 'function';
/** @internal The element type and the bits of a key/value tensor. */
export function kvBits(x: unknown, what: string): { dtype: number; f32?: Float32Array; u16?: Uint16Array } {
  if (x instanceof Float32Array) return { dtype: DTYPE_F32, f32: x };
  if (x instanceof Uint16Array) return { dtype: DTYPE_F16, u16: x };
  if (hasFloat16 && x instanceof (globalThis as unknown as { Float16Array: new () => ArrayBufferView }).Float16Array) {
    const v = x as ArrayBufferView & { length: number };
    return { dtype: DTYPE_F16, u16: new Uint16Array(v.buffer, v.byteOffset, v.length) };
  }
  throw new TypeError(`tqkv: ${what} must be a Float32Array, a Uint16Array (fp16 bits) or a Float16Array`);
}

/** @internal Tqkv.createCache. */
export function createCache(t: Tqkv, options: CacheOptions): KVCache {
  if (typeof options !== 'object' || options === null) throw new TypeError('tqkv: createCache needs an options object');
  checkKeys(options, CACHE_OPTION_KEYS, 'createCache');
  const layout = layoutOf(options.layout ?? 'token-major', 'layout');
  const x = t._x;
  const cfg = t.structPtr;
  t.check(x.tqkv_cache_config_init(cfg));
  const dv = t.view();
  const int = (v: unknown, what: string) => asInt(v, what);
  dv.setInt32(cfg + 4, int(options.layers ?? 1, 'layers'), true);
  dv.setInt32(cfg + 8, int(options.heads, 'heads'), true);
  dv.setInt32(cfg + 12, int(options.kvHeads ?? options.heads, 'kvHeads'), true);
  dv.setInt32(cfg + 16, int(options.headDim, 'headDim'), true);
  const method = options.keyMethod ?? 'mse';
  if (method !== 'mse' && method !== 'prod') throw new TypeError("tqkv: keyMethod must be 'mse' or 'prod'");
  dv.setInt32(cfg + 20, method === 'prod' ? 1 : 0, true);
  if (options.keyBits !== undefined) dv.setFloat64(cfg + 24, asNumber(options.keyBits, 'keyBits'), true);
  if (options.valueBits !== undefined) dv.setFloat64(cfg + 32, asNumber(options.valueBits, 'valueBits'), true);
  if (options.blockTokens !== undefined) dv.setInt32(cfg + 40, int(options.blockTokens, 'blockTokens'), true);
  if (options.window !== undefined) dv.setInt32(cfg + 44, int(options.window, 'window'), true);
  if (options.scale !== undefined) dv.setFloat32(cfg + 48, asNumber(options.scale, 'scale'), true);
  const norm = options.normFormat ?? 'f16';
  if (norm !== 'f16' && norm !== 'f32') throw new TypeError("tqkv: normFormat must be 'f16' or 'f32'");
  dv.setInt32(cfg + 52, norm === 'f32' ? 1 : 0, true);
  if (options.maxTokens !== undefined) {
    const m = asInt(options.maxTokens, 'maxTokens', 0, Number.MAX_SAFE_INTEGER);
    dv.setBigUint64(cfg + 56, BigInt(m), true);
  }
  if (options.seed !== undefined) dv.setBigUint64(cfg + 64, BigInt.asUintN(64, BigInt(options.seed)), true);
  const kernel = options.kernel ?? '';
  t.writeString(cfg + CACHE_CFG_SIZE, kernel, 64);
  t.view().setUint32(cfg + 88, kernel ? cfg + CACHE_CFG_SIZE : 0, true);
  if (options.precision !== undefined) dv.setInt32(cfg + PRECISION_OFFSET, precisionCode(options.precision), true);
  const spec = options.spec ?? options.preset;
  if (options.spec !== undefined && options.preset !== undefined) throw new TypeError('tqkv: createCache: give spec or preset, not both');
  if (spec !== undefined || options.calibration !== undefined) {
    if (spec === undefined) throw new TypeError('tqkv: createCache: calibration needs a spec or preset (e.g. { preset: \'default\' })');
    if (typeof spec !== 'string' || spec.length === 0 || spec.length > 200) throw new TypeError('tqkv: createCache: spec/preset must be a non-empty string');
    for (const k of SPEC_SETS)
      if ((options as unknown as Record<string, unknown>)[k] !== undefined)
        throw new TypeError(`tqkv: createCache: '${k}' is decided by the spec '${spec}' (give one or the other)`);
    if (options.calibration !== undefined && !(options.calibration instanceof Calibration))
      throw new TypeError('tqkv: createCache: calibration must be a Calibration (Tqkv.calibrate, loadCalibration, LlamaModel.calibrate)');
    const cal = options.calibration ? options.calibration.h() : 0;
    const bytes = new TextEncoder().encode(spec);
    const p = t.scratchPtr(bytes.length + 1);
    t.bytes().set(bytes, p);
    t.bytes()[p + bytes.length] = 0;
    t.check(x.tqkv_cache_create_spec(p, cfg, cal, t.slot));
    return new KVCache(t, t.u32(t.slot), layout);
  }
  const [kp, kn] = writeChannels(t, options.keyHighChannels, 'keyHighChannels');
  let vp = 0;
  try {
    let vn: number;
    [vp, vn] = writeChannels(t, options.valueHighChannels, 'valueHighChannels');
    const d = t.view();
    d.setInt32(cfg + 72, kn, true);
    d.setInt32(cfg + 76, vn, true);
    d.setUint32(cfg + 80, kp, true);
    d.setUint32(cfg + 84, vp, true);
    t.check(x.tqkv_cache_create(cfg, t.slot));
  } finally {
    if (kp) x.free(kp);
    if (vp) x.free(vp);
  }
  return new KVCache(t, t.u32(t.slot), layout);
}

/** @internal A malloc'd int32 array of channel indices (freed by the caller), or [0, 0]. */
export function writeChannels(t: Tqkv, list: ArrayLike<number> | undefined, what: string): [number, number] {
  if (!list || list.length === 0) return [0, 0];
  const p = t.malloc(list.length * 4, what);
  try {
    const dv = t.view();
    for (let i = 0; i < list.length; i++) dv.setInt32(p + 4 * i, asInt(list[i], `${what}[${i}]`), true);
  } catch (e) {
    t._x.free(p);
    throw e;
  }
  return [p, list.length];
}

/** A compressed KV cache of one or more layers. Free it with {@link KVCache.dispose} (or `using`,
 *  or let the garbage collector do it). A call that throws leaves the cache as it was. */
export class KVCache {
  private handle: number;
  private readonly t: Tqkv;
  private cfg: CacheConfig;

  /** @internal */
  constructor(t: Tqkv, handle: number, layout: TensorLayout = 'token-major') {
    this.t = t;
    this.handle = handle;
    this.cfg = this.readConfig(layout);
    t._finalizer?.register(this, handle, this);
  }

  private h(): number {
    if (!this.handle) throw disposedError('cache');
    return this.handle;
  }

  private readConfig(layout: TensorLayout): CacheConfig {
    const t = this.t;
    const p = t.scratchPtr(128);
    t.view().setUint32(p, CACHE_CFG_SIZE, true);
    t.check(t._x.tqkv_cache_get_config(this.handle, p));
    const d = t.view();
    const headDim = d.getInt32(p + 16, true);
    const scale = d.getFloat32(p + 48, true);
    const maxTokens = Number(d.getBigUint64(p + 56, true));
    const cfg = {
      layers: d.getInt32(p + 4, true),
      heads: d.getInt32(p + 8, true),
      kvHeads: d.getInt32(p + 12, true),
      headDim,
      keyMethod: d.getInt32(p + 20, true) === 1 ? 'prod' : 'mse',
      keyBits: d.getFloat64(p + 24, true),
      valueBits: d.getFloat64(p + 32, true),
      blockTokens: d.getInt32(p + 40, true),
      window: d.getInt32(p + 44, true),
      // the effective values: 0 means 1/sqrt(headDim) (as float(1 / sqrt(double)) in C++) and unbounded (2^28)
      scale: scale > 0 ? scale : Math.fround(1 / Math.sqrt(headDim)),
      normFormat: d.getInt32(p + 52, true) === 1 ? 'f32' : 'f16',
      maxTokens: maxTokens || 2 ** 28,
      seed: d.getBigUint64(p + 64, true),
      keyHighChannels: d.getInt32(p + 72, true),
      valueHighChannels: d.getInt32(p + 76, true),
      precision: d.getInt32(p + PRECISION_OFFSET, true) === 1 ? 'fast' : 'exact',
    } as const;
    return { ...cfg, kernel: t.cstr(t._x.tqkv_cache_kernel(this.handle)), variant: t.variant, layout };
  }

  /** The configuration with effective values (a copy): scale 1/sqrt(headDim) when none was given,
   *  maxTokens 2^28 when unbounded, the kernel and module build in use. */
  get config(): CacheConfig {
    return { ...this.cfg };
  }
  /** Sets the attention arithmetic of every layer ('exact' or 'fast'; the codes stay the same).
   *  Not serialized: a deserialized cache computes 'exact' until this is called. */
  setPrecision(precision: Precision): void {
    const h = this.h();
    this.t.check(this.t._x.tqkv_cache_set_precision(h, precisionCode(precision)));
    this.cfg = { ...this.cfg, precision };
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

  /**
   * Appends n tokens to a layer. keys and values: Float32Array, or fp16 as Uint16Array (IEEE half
   * bits) or Float16Array, widened exactly inside the module (the same codes as appending the
   * widened floats); token-major [n][kvHeads][headDim] or, with layout 'head-major',
   * [kvHeads][n][headDim] (reordered inside the module; `start`/`count` select tokens of a
   * longer head-major tensor).
   */
  append(layer: number, keys: KVTensor, values: KVTensor, options: AppendOptions = {}): void {
    const h = this.h();
    const k = kvBits(keys, 'keys'), v = kvBits(values, 'values');
    if (k.dtype !== v.dtype) throw new TypeError('tqkv: keys and values must have the same element type');
    if (layer !== (layer | 0)) throw new TypeError('tqkv: layer must be an integer');
    if (typeof options !== 'object' || options === null) throw new TypeError('tqkv: append options must be an object');
    checkKeys(options, ['layout', 'start', 'count'], 'append');
    const layout = LAYOUTS[layoutOf(options.layout ?? this.cfg.layout, 'layout')];
    const t = this.t;
    const x = t._x;
    if (k.dtype === DTYPE_F32 && layout === 0 && options.start === undefined && options.count === undefined) {
      const kf = k.f32!, vf = v.f32!;
      const p = t.scratchPtr(4 * (kf.length + vf.length));
      t.copyIn(kf, p);
      t.copyIn(vf, p + 4 * kf.length);
      t.check(x.tqkv_cache_append(h, layer, p, kf.length, p + 4 * kf.length, vf.length));
      return;
    }
    const ka: ArrayLike<number> & { subarray(a: number, b: number): Float32Array | Uint16Array } = (k.f32 ?? k.u16)!;
    const va: typeof ka = (v.f32 ?? v.u16)!;
    const size = k.dtype === DTYPE_F32 ? 4 : 2;
    let rows: Array<[number, number]> = [[0, ka.length]]; // [offset, length] element ranges copied one after the other
    let vrows = [[0, va.length]];
    if (options.start !== undefined || options.count !== undefined) {
      if (layout !== 1) throw new TypeError("tqkv: append: start/count need layout 'head-major'");
      const H = this.cfg.kvHeads, D = this.cfg.headDim;
      const seq = Math.floor(ka.length / (H * D));
      if (ka.length !== seq * H * D || va.length !== ka.length)
        throw new TypeError(`tqkv: append: keys and values must both hold kvHeads * seq * headDim elements (kvHeads * headDim = ${H * D})`);
      const start = asInt(options.start ?? 0, 'start', 0, seq);
      const count = asInt(options.count ?? seq - start, 'count', 0, seq - start);
      rows = Array.from({ length: H }, (_, hh): [number, number] => [(hh * seq + start) * D, count * D]);
      vrows = rows;
    }
    const n = rows.reduce((a, r) => a + r[1], 0), nv = vrows.reduce((a, r) => a + r[1], 0);
    const p = t.scratchPtr(size * (n + nv) + 16);
    const pv = (p + size * n + 3) & ~3;
    const copy = (src: typeof ka, ranges: number[][], ptr: number) => {
      const len = ranges.reduce((a, r) => a + r[1], 0);
      const view = size === 4 ? new Float32Array(t._memory.buffer, ptr, len) : new Uint16Array(t._memory.buffer, ptr, len);
      let o = 0;
      for (const [off, len] of ranges) {
        view.set(src.subarray(off, off + len), o);
        o += len;
      }
    };
    copy(ka, rows, p);
    copy(va, vrows, pv);
    t.check(x.tqkv_cache_append_ex(h, layer, p, n, pv, nv, k.dtype, layout));
  }

  /** Attention of m queries [m][heads][headDim] over a layer into `out` (same shape; a new array
   *  when omitted). causal (default): query i sits at position tokens - m + i and sees the tokens
   *  up to it (chunked prefill after appending the chunk); otherwise every query sees every token.
   *  The fourth argument may also be `{ causal, layout }` (layout 'head-major': queries and out
   *  are [heads][m][headDim]). */
  attend(layer: number, queries: Float32Array, out?: Float32Array, causal: boolean | AttendOptions = true): Float32Array {
    const h = this.h();
    asFloat32(queries, 'queries');
    if (layer !== (layer | 0)) throw new TypeError('tqkv: layer must be an integer');
    const o = out === undefined ? new Float32Array(queries.length) : asFloat32(out, 'out');
    let isCausal = true, layout = LAYOUTS[this.cfg.layout];
    if (typeof causal === 'boolean') isCausal = causal;
    else if (typeof causal === 'object' && causal !== null) {
      checkKeys(causal, ['causal', 'layout'], 'attend');
      isCausal = causal.causal ?? true;
      if (typeof isCausal !== 'boolean') throw new TypeError('tqkv: attend: causal must be a boolean');
      if (causal.layout !== undefined) layout = LAYOUTS[layoutOf(causal.layout, 'layout')];
    } else throw new TypeError('tqkv: attend: the fourth argument must be a boolean (causal) or { causal, layout }');
    const t = this.t;
    const p = t.scratchPtr(4 * (queries.length + o.length));
    t.copyIn(queries, p);
    const po = p + 4 * queries.length;
    t.check(t._x.tqkv_cache_attend_ex(h, layer, p, queries.length, po, o.length, isCausal ? 1 : 0, layout));
    t.refresh();
    t.copyOut(po, o);
    return o;
  }

  /**
   * Softmax statistics of m queries over every token of a layer (no causal mask: for merging the
   * cache's part of attention with attention over tokens held elsewhere, e.g. the exact current
   * chunk): per query token and head, maxLogit M, sumExp S and the unnormalised output acc A (see
   * {@link AttentionStats}). Attention over the union of the cache's tokens and other tokens with
   * statistics (M', S', A'): X = max(M, M'), out = (e^(M-X) A + e^(M'-X) A') / (e^(M-X) S + e^(M'-X) S').
   * `into` receives the results when given (each the right length).
   */
  attendStats(layer: number, queries: Float32Array, into?: Partial<AttentionStats>, options: { layout?: TensorLayout } = {}): AttentionStats {
    const h = this.h();
    asFloat32(queries, 'queries');
    if (layer !== (layer | 0)) throw new TypeError('tqkv: layer must be an integer');
    checkKeys(options, ['layout'], 'attendStats');
    const layout = LAYOUTS[layoutOf(options.layout ?? this.cfg.layout, 'layout')];
    const m = Math.floor(queries.length / (this.cfg.heads * this.cfg.headDim));
    const acc = into?.acc === undefined ? new Float32Array(queries.length) : asFloat32(into.acc, 'acc');
    const maxLogit = into?.maxLogit === undefined ? new Float32Array(m * this.cfg.heads) : asFloat32(into.maxLogit, 'maxLogit');
    const sumExp = into?.sumExp === undefined ? new Float32Array(m * this.cfg.heads) : asFloat32(into.sumExp, 'sumExp');
    const t = this.t;
    const p = t.scratchPtr(4 * (queries.length + acc.length + maxLogit.length + sumExp.length));
    const pa = p + 4 * queries.length, pm = pa + 4 * acc.length, ps = pm + 4 * maxLogit.length;
    t.copyIn(queries, p);
    t.check(t._x.tqkv_cache_attend_stats(h, layer, p, queries.length, layout, pa, acc.length, pm, maxLogit.length, ps, sumExp.length));
    t.refresh();
    t.copyOut(pa, acc);
    t.copyOut(pm, maxLogit);
    t.copyOut(ps, sumExp);
    return { acc, maxLogit, sumExp };
  }

  /** Sliding-window attention (Mistral's sliding_window) on every layer: a query at position p
   *  sees only tokens p - window + 1 .. p, and tokens no later query sees are dropped (codes and
   *  blocks: memory bounded by the window, not the context). 0 = none. Serialized with the cache.
   *  Throws (nothing changed) when tokens were dropped under another window; after dropping,
   *  truncate refuses to go below what the next query sees. */
  setAttentionWindow(window: number): void {
    const h = this.h();
    asInt(window, 'window', 0, 0x10000000);
    this.t.check(this.t._x.tqkv_cache_set_attention_window(h, window));
  }

  /** The queries of the last chunk appended to `layer` (default: every layer) have been answered:
   *  frees the exact fp32 rows kept for them beyond the window. With a window, `append` keeps the
   *  chunk's rows so that its causal queries see what token-by-token decode would have seen; a
   *  4096-token prefill chunk with 2 KV heads of 128 holds 8 MiB per layer until the next append.
   *  Call it after the chunk's `attend`; attention afterwards reads those tokens as codes (decode
   *  steps see what they did before: their window is exact either way). */
  releaseChunkRows(layer?: number): void {
    const h = this.h();
    if (layer !== undefined) asInt(layer, 'layer', 0, this.cfg.layers - 1);
    this.t.check(this.t._x.tqkv_cache_release_chunk_rows(h, layer ?? -1));
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
    return t.bytes().slice(p, p + size);
  }

  /** Frees the cache's wasm memory; any later call throws. A second dispose does nothing. */
  dispose(): void {
    if (!this.handle) return;
    const h = this.handle;
    this.handle = 0;
    this.t._finalizer?.unregister(this);
    this.t.check(this.t._x.tqkv_cache_destroy(h));
  }

  /** dispose(), for `using cache = tqkv.createCache(...)`. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}
