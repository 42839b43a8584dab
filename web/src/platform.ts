// What differs between Node and browsers: reading file: URLs and turning paths into URLs. The
// browser-safe entry (index.ts) uses fetch only and never names a `node:` module; the Node entry
// (node.ts) installs platform-node.ts, which reads files with node:fs and starts worker_threads.
import type { SpawnWorker } from './threads.js';

/** @internal */
export interface Platform {
  readonly name: 'node' | 'browser';
  /** The bytes of a file: URL (Node only). */
  readFile?(url: URL): Promise<Uint8Array>;
  /** A file: URL for a file-system path, relative to the working directory (Node only). */
  pathToFileURL?(path: string): URL;
  /** Starts a worker thread running `source` (threads.ts); browsers: Web Workers from a Blob URL. */
  spawnWorker?: SpawnWorker;
  /** Cores of this machine (Node; browsers: navigator.hardwareConcurrency). */
  hardwareConcurrency?(): number;
}

let current: Platform = { name: 'browser' };

/** @internal */
export function platform(): Platform {
  return current;
}

/** @internal Called once by the Node entry point. */
export function setPlatform(p: Platform): void {
  current = p;
}

const hasScheme = (s: string) => /^[a-z][a-z0-9+.-]*:/i.test(s);

/** @internal A URL from a URL or string: in Node, a string without a scheme is a file path;
 *  elsewhere it is relative to the page (or to this file when there is no page). */
export function toUrl(src: string | URL, base = import.meta.url): URL {
  if (src instanceof URL) return src;
  const s = String(src);
  const p = current;
  if (p.pathToFileURL && !hasScheme(s)) return p.pathToFileURL(s);
  return new URL(s, typeof location !== 'undefined' ? location.href : base);
}

/** @internal The response body of a URL, or the file's bytes for a file: URL in Node. */
export async function readUrl(url: URL, signal?: AbortSignal): Promise<Uint8Array> {
  if (url.protocol === 'file:') {
    const p = current;
    if (!p.readFile)
      throw new Error(
        `tqkv: cannot read ${url.href}: this is the browser entry of tqkv, which has no file-system access. ` +
          "In Node, import 'tqkv' (its 'node' export condition), or pass the bytes (Tqkv.load({ wasm }))",
      );
    return p.readFile(url);
  }
  const res = await fetch(url, { signal });
  if (!res.ok) throw new FetchError(url, res);
  return new Uint8Array(await res.arrayBuffer());
}

/** @internal A failed fetch (a status other than 2xx). `notFound` lets the loader fall back. */
export class FetchError extends Error {
  readonly status: number;
  constructor(url: URL, res: Response) {
    super(`tqkv: cannot fetch ${url.href}: ${res.status} ${res.statusText}`);
    this.name = 'FetchError';
    this.status = res.status;
  }
}

/** @internal A missing file: a 404 from fetch, or ENOENT reading a file: URL in Node. */
export function isNotFound(e: unknown): boolean {
  return (e instanceof FetchError && e.status === 404) || (e as { code?: string } | null)?.code === 'ENOENT';
}
