// Argument checks shared by the classes: typed arrays, integers, option objects.

/** @internal */
export function asFloat32(x: unknown, what: string): Float32Array {
  if (!(x instanceof Float32Array)) throw new TypeError(`tqkv: ${what} must be a Float32Array`);
  return x;
}

/** @internal */
export function asInt(x: unknown, what: string, min = -2147483648, max = 2147483647): number {
  if (typeof x !== 'number' || !Number.isInteger(x) || x < min || x > max)
    throw new TypeError(`tqkv: ${what} must be an integer in [${min}, ${max}], got ${String(x)}`);
  return x;
}

/** @internal */
export function asNumber(x: unknown, what: string): number {
  if (typeof x !== 'number') throw new TypeError(`tqkv: ${what} must be a number`);
  return x;
}
