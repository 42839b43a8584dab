// Codec: encode / decode / score single vectors (the C ABI's tqkv_codec_*), for teaching pages
// and tools.
import { CACHE_CFG_SIZE } from './abi.js';
import { writeChannels } from './cache.js';
import { disposedError } from './errors.js';
import { asFloat32, asInt } from './input.js';
import type { Tqkv } from './tqkv.js';

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

const METHODS = { mse: 0, prod: 1, qjl: 2 } as const;

/** @internal Tqkv.createCodec. */
export function createCodec(t: Tqkv, options: CodecOptions): Codec {
  if (typeof options !== 'object' || options === null) throw new TypeError('tqkv: createCodec needs an options object');
  const x = t._x;
  const cfg = t.structPtr;
  t.check(x.tqkv_codec_config_init(cfg));
  const dv = t.view();
  dv.setInt32(cfg + 4, asInt(options.dim, 'dim'), true);
  if (options.bits !== undefined) {
    if (typeof options.bits !== 'number') throw new TypeError('tqkv: bits must be a number');
    dv.setFloat64(cfg + 8, options.bits, true);
  }
  const method = options.method ?? 'mse';
  if (!(method in METHODS)) throw new TypeError("tqkv: method must be 'mse', 'prod' or 'qjl'");
  dv.setInt32(cfg + 16, METHODS[method], true);
  const norm = options.normFormat ?? 'f16';
  if (norm !== 'f16' && norm !== 'f32') throw new TypeError("tqkv: normFormat must be 'f16' or 'f32'");
  dv.setInt32(cfg + 20, norm === 'f32' ? 1 : 0, true);
  if (options.seed !== undefined) dv.setBigUint64(cfg + 24, BigInt.asUintN(64, BigInt(options.seed)), true);
  const kernel = options.kernel ?? '';
  t.writeString(cfg + CACHE_CFG_SIZE, kernel, 64);
  t.view().setUint32(cfg + 44, kernel ? cfg + CACHE_CFG_SIZE : 0, true);
  const [hp, hn] = writeChannels(t, options.highChannels, 'highChannels');
  try {
    const d = t.view();
    d.setInt32(cfg + 32, hn, true);
    d.setUint32(cfg + 40, hp, true);
    t.check(x.tqkv_codec_create(cfg, t.slot));
  } finally {
    if (hp) x.free(hp);
  }
  const h = t.u32(t.slot);
  t.check(x.tqkv_codec_bytes_per_vector(h, t.slot));
  return new Codec(t, h, options.dim, t.u32(t.slot));
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
    if (!this.handle) throw disposedError('codec');
    return this.handle;
  }

  get disposed(): boolean {
    return this.handle === 0;
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
    o.set(t.bytes().subarray(po, po + o.length));
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
    t.bytes().set(codes, pc);
    t.check(t._x.tqkv_codec_decode(h, pc, codes.length, po, o.length));
    t.refresh();
    t.copyOut(po, o);
    return o;
  }

  /** scores[v] = estimate of <query, x_v> for each encoded vector, from the codes. Several
   *  queries at once (query.length = m * dim): scores [m][n], the codes copied and checked once. */
  dot(query: Float32Array, codes: Uint8Array, out?: Float32Array): Float32Array {
    const h = this.h();
    asFloat32(query, 'query');
    if (!(codes instanceof Uint8Array)) throw new TypeError('tqkv: codes must be a Uint8Array');
    const n = Math.floor(codes.length / this.bytesPerVector), m = Math.max(1, Math.floor(query.length / this.dim));
    const o = out === undefined ? new Float32Array(m * n) : asFloat32(out, 'out');
    const t = this.t;
    const pq = t.scratchPtr(4 * query.length + codes.length + 4 * o.length + 32);
    const pc = pq + 4 * query.length;
    const po = (pc + codes.length + 15) & ~15;
    t.copyIn(query, pq);
    t.bytes().set(codes, pc);
    t.check(t._x.tqkv_codec_dot_many(h, pq, query.length, pc, codes.length, po, o.length));
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

  /** dispose(), for `using`. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}
