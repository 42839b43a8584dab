// KVCache: a compressed KV cache of one or more layers (the C ABI's tqkv_cache_*), and the
// translation of CacheOptions into the C struct tqkv_cache_config.
import { CACHE_CFG_SIZE } from './abi.js';
import { disposedError, Status } from './errors.js';
import { asFloat32, asInt, asNumber } from './input.js';
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

/** @internal Tqkv.createCache. */
export function createCache(t: Tqkv, options: CacheOptions): KVCache {
  if (typeof options !== 'object' || options === null) throw new TypeError('tqkv: createCache needs an options object');
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
  return new KVCache(t, t.u32(t.slot));
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

/** A compressed KV cache of one or more layers. Free it with {@link KVCache.dispose} (or let the
 *  garbage collector do it). A call that throws leaves the cache as it was. */
export class KVCache {
  private handle: number;
  private readonly t: Tqkv;
  private readonly cfg: CacheConfig;

  /** @internal */
  constructor(t: Tqkv, handle: number) {
    this.t = t;
    this.handle = handle;
    this.cfg = this.readConfig();
    t._finalizer?.register(this, handle, this);
  }

  private h(): number {
    if (!this.handle) throw disposedError('cache');
    return this.handle;
  }

  private readConfig(): CacheConfig {
    const t = this.t;
    const p = t.scratchPtr(128);
    t.view().setUint32(p, CACHE_CFG_SIZE, true);
    t.check(t._x.tqkv_cache_get_config(this.handle, p));
    const d = t.view();
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
}
