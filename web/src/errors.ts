// Errors of the library: status codes of the C ABI (lib/include/tqkv/tqkv.h) and TqkvError.

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

/** @internal The short name of a status (tqkv_status_name). */
export const STATUS_NAMES: Record<number, string> = {
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

/** @internal A TqkvError for a handle used after dispose(). */
export function disposedError(what: string): TqkvError {
  return new TqkvError(`tqkv: the ${what} has been disposed`, Status.INVALID_HANDLE);
}
