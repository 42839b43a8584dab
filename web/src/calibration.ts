// Calibration: per layer and KV head, channel statistics of keys and values (and optionally
// queries) from samples a runtime already has (e.g. the K/V of its first prefill), or from an
// exact pass of a Llama model (LlamaModel.calibrate). Caches from a spec or preset use it: mean
// centring, debiased logits and values, the high channels of fractional rates
// (createCache({ preset | spec, calibration })). Serializable ("TQKVCALI", CRC-32), so a page
// keeps it beside its cache.
import { disposedError, Status } from './errors.js';
import { asFloat32, asInt } from './input.js';
import type { Tqkv } from './tqkv.js';
import type { LlamaModel } from './model.js';

/** The shape of a calibration (and of the caches it serves). */
export interface CalibrationShape {
  layers: number;
  kvHeads: number;
  headDim: number;
}

/** Samples of one layer for {@link Tqkv.calibrate}: keys/values [n][kvHeads][headDim] (keys after
 *  RoPE, as the cache receives them), optionally queries [n][heads][headDim]. */
export interface CalibrationSample {
  keys: Float32Array;
  values: Float32Array;
  queries?: Float32Array;
  heads?: number;
}

/** Calibration statistics ({@link Tqkv.createCalibration}, {@link Tqkv.calibrate},
 *  {@link Tqkv.loadCalibration}, {@link LlamaModel.calibrate}); reusable by many caches and runners. */
export class Calibration {
  /** @internal */ handle: number;
  private readonly t: Tqkv;
  /** @internal */
  constructor(t: Tqkv, handle: number) {
    this.t = t;
    this.handle = handle;
    t._modelFinalizer?.register(this, { destroy: t._x.tqkv_calibration_destroy, h: handle }, this);
  }
  /** @internal */ h(): number {
    if (!this.handle) throw disposedError('calibration');
    return this.handle;
  }
  get disposed(): boolean {
    return this.handle === 0;
  }

  /** Shape and the fewest tokens added to any layer (a cache needs at least 1 in every layer). */
  get info(): CalibrationShape & { minTokens: number } {
    const t = this.t, p = t.slot;
    t.check(t._x.tqkv_calibration_get_info(this.h(), p, p + 4, p + 8, p + 16));
    const d = t.view();
    return { layers: d.getInt32(p, true), kvHeads: d.getInt32(p + 4, true), headDim: d.getInt32(p + 8, true),
      minTokens: Number(d.getBigUint64(p + 16, true)) };
  }

  /** Adds n tokens of one layer: keys and values [n][kvHeads][headDim], finite. */
  add(layer: number, keys: Float32Array, values: Float32Array): this {
    const h = this.h();
    asFloat32(keys, 'keys');
    asFloat32(values, 'values');
    asInt(layer, 'layer');
    const t = this.t;
    const p = t.scratchPtr(4 * (keys.length + values.length));
    t.copyIn(keys, p);
    t.copyIn(values, p + 4 * keys.length);
    t.check(t._x.tqkv_calibration_add(h, layer, p, keys.length, p + 4 * keys.length, values.length));
    return this;
  }

  /** Optional: queries [n][heads][headDim] of the same tokens (heads a multiple of kvHeads). */
  addQueries(layer: number, heads: number, queries: Float32Array): this {
    const h = this.h();
    asFloat32(queries, 'queries');
    const t = this.t;
    const p = t.scratchPtr(4 * queries.length);
    t.copyIn(queries, p);
    t.check(t._x.tqkv_calibration_add_queries(h, asInt(layer, 'layer'), asInt(heads, 'heads'), p, queries.length));
    return this;
  }

  /** The calibration as portable bytes ("TQKVCALI", version, sums, CRC-32); Tqkv.loadCalibration reads them. */
  serialize(): Uint8Array {
    const h = this.h();
    const t = this.t;
    const st = t._x.tqkv_calibration_save(h, 0, 0, t.slot);
    if (st !== Status.BUFFER_TOO_SMALL) t.check(st);
    const size = t.u32(t.slot);
    const p = t.scratchPtr(size);
    t.check(t._x.tqkv_calibration_save(h, p, size, t.slot));
    return t.bytes().slice(p, p + size);
  }

  /** Frees it; caches made with it keep what they need. A second dispose does nothing. */
  dispose(): void {
    if (!this.handle) return;
    const h = this.handle;
    this.handle = 0;
    this.t._modelFinalizer?.unregister(this);
    this.t.check(this.t._x.tqkv_calibration_destroy(h));
  }

  /** dispose(), for `using`. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** @internal Tqkv.createCalibration. */
export function createCalibration(t: Tqkv, shape: CalibrationShape): Calibration {
  if (typeof shape !== 'object' || shape === null) throw new TypeError('tqkv: createCalibration needs { layers, kvHeads, headDim }');
  for (const k of Object.keys(shape))
    if (!['layers', 'kvHeads', 'headDim'].includes(k))
      throw new TypeError(`tqkv: createCalibration: unknown option '${k}' (accepted: layers, kvHeads, headDim)`);
  t.check(t._x.tqkv_calibration_new(asInt(shape.layers, 'layers'), asInt(shape.kvHeads, 'kvHeads'), asInt(shape.headDim, 'headDim'), t.slot));
  return new Calibration(t, t.u32(t.slot));
}

/** @internal Tqkv.loadCalibration. */
export function loadCalibration(t: Tqkv, bytes: Uint8Array): Calibration {
  if (!(bytes instanceof Uint8Array)) throw new TypeError('tqkv: loadCalibration needs a Uint8Array');
  const p = t.scratchPtr(bytes.length + 16);
  t.bytes().set(bytes, p);
  t.check(t._x.tqkv_calibration_load(p, bytes.length, t.slot));
  return new Calibration(t, t.u32(t.slot));
}

/** A preset of {@link Tqkv.presets}. */
export interface CachePreset {
  name: string;
  spec: string;
  summary: string;
}

/** @internal */
export function presets(t: Tqkv): CachePreset[] {
  const x = t._x;
  return Array.from({ length: x.tqkv_preset_count() }, (_, i) => ({
    name: t.cstr(x.tqkv_preset_name(i)),
    spec: t.cstr(x.tqkv_preset_spec(i)),
    summary: t.cstr(x.tqkv_preset_summary(i)),
  }));
}
