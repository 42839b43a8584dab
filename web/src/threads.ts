// Threads for the threaded builds (tqkv-mt.wasm, tqkv-relaxed-mt.wasm; Tqkv.load({ threads })).
//
// The modules have no pthread runtime (they are standalone, without Emscripten's JS glue), so the
// threads are started here: each worker instantiates the same compiled module on the same shared
// memory, gives itself its own stack and thread-local storage, and enters tqkv_worker_main(),
// which never returns (lib/src/util/thread_pool.cpp: it sleeps on the memory until the caller
// publishes work, e.g. the KV heads and token ranges of an attention call). The caller's thread
// takes part in every call and spins, without blocking, while the workers finish, so calls stay
// synchronous and work on a browser's main thread as well as in a worker.
//
// The worker's code is the string below, started from a Blob URL in browsers and with
// { eval: true } in Node (platform-node.ts): no separate file for a bundler to find.
import { Status, TqkvError } from './errors.js';
import { wasmImports } from './imports.js';
import { platform } from './platform.js';

/** What a worker receives. */
export interface WorkerStart {
  module: WebAssembly.Module;
  memory: WebAssembly.Memory;
  /** The top of the worker's stack (it grows down) and its thread-local storage. */
  stackTop: number;
  tls: number;
}

/** @internal The exports a threaded module adds. */
export interface ThreadExports {
  malloc(n: number): number;
  stackAlloc(n: number): number;
  __wasm_init_tls(p: number): void;
  __tls_size: WebAssembly.Global;
  __tls_align: WebAssembly.Global;
  tqkv_worker_threads(): number;
}

const STACK_BYTES = 1 << 20; // as the module's own stack (-sTOTAL_STACK=1MB)

/** @internal The worker's program (plain JavaScript, run in a Web Worker or a Node worker thread). */
export const WORKER_SOURCE = `
'use strict';
const wasmImports = ${wasmImports.toString()};
function start(d, post) {
  try {
    const x = new WebAssembly.Instance(d.module, wasmImports(d.memory)).exports;
    x.stackRestore(d.stackTop);
    x.__wasm_init_tls(d.tls);
    post('ready');
    x.tqkv_worker_main();
  } catch (e) {
    post('error: ' + (e && e.message ? e.message : String(e)));
  }
}
if (typeof require === 'function' && typeof self === 'undefined') {
  const { parentPort, workerData } = require('node:worker_threads');
  start(workerData, (m) => parentPort.postMessage(m));
} else {
  self.onmessage = (e) => start(e.data, (m) => self.postMessage(m));
}
`;

/** @internal A worker just started with WORKER_SOURCE: `ready` resolves when it is about to enter
 *  the pool and rejects when it failed to start. */
export interface SpawnedWorker {
  ready: Promise<void>;
  terminate(): void;
}

/** @internal Starts a worker with WORKER_SOURCE and `data` (throws when the engine refuses at once). */
export type SpawnWorker = (source: string, data: WorkerStart) => SpawnedWorker;

// A page whose Content-Security-Policy has worker-src (or script-src) without blob: cannot start them.
const CSP_HINT = "(tqkv's workers start from a blob: URL, which a page's Content-Security-Policy must allow in worker-src)";

/** @internal Web Workers from a Blob URL (browsers). */
export const spawnWebWorker: SpawnWorker = (source, data) => {
  if (typeof Worker === 'undefined') throw new Error('tqkv: threads: this engine has no Web Workers');
  const url = URL.createObjectURL(new Blob([source], { type: 'text/javascript' }));
  let w: Worker;
  try {
    w = new Worker(url);
  } catch (e) {
    URL.revokeObjectURL(url);
    throw new Error(`tqkv: threads: cannot start a worker: ${e instanceof Error ? e.message : String(e)} ${CSP_HINT}`);
  }
  const ready = new Promise<void>((resolve, reject) => {
    w.onmessage = (e: MessageEvent) => {
      URL.revokeObjectURL(url);
      if (e.data === 'ready') resolve();
      else reject(new Error(`tqkv: threads: a worker failed to start: ${String(e.data)}`));
    };
    w.onerror = (e: ErrorEvent) => {
      URL.revokeObjectURL(url);
      reject(new Error(`tqkv: threads: a worker failed to start: ${e.message || 'no reason given'} ${CSP_HINT}`));
    };
    w.postMessage(data);
  });
  return { ready, terminate: () => w.terminate() };
};

/** @internal Why this engine cannot run the threaded builds, or undefined when it can. */
export function threadsUnavailable(): string | undefined {
  if (typeof SharedArrayBuffer === 'undefined')
    return 'this engine has no SharedArrayBuffer (a browser page must be cross-origin isolated: serve it with ' +
      "'Cross-Origin-Opener-Policy: same-origin' and 'Cross-Origin-Embedder-Policy: require-corp')";
  if (platform().name === 'browser' && (globalThis as { crossOriginIsolated?: boolean }).crossOriginIsolated === false)
    return "the page is not cross-origin isolated (serve it with 'Cross-Origin-Opener-Policy: same-origin' and " +
      "'Cross-Origin-Embedder-Policy: require-corp')";
  return undefined;
}

/** @internal Cores of this machine (navigator.hardwareConcurrency; Node: os.availableParallelism). */
export function hardwareConcurrency(): number {
  const n = (globalThis as { navigator?: { hardwareConcurrency?: number } }).navigator?.hardwareConcurrency ??
    platform().hardwareConcurrency?.() ?? 1;
  return Number.isInteger(n) && n > 0 ? n : 1;
}

/** @internal The calling thread's thread-local storage: called once, before _initialize. */
export function initMainThread(x: ThreadExports): void {
  const size = Number(x.__tls_size.value), align = Math.max(16, Number(x.__tls_align.value));
  // The top of the module's own stack, for good: the main thread's stack pointer stays below it.
  const p = x.stackAlloc(size + align);
  x.__wasm_init_tls((p + align - 1) & ~(align - 1));
}

const START_MS = 10_000; // for all workers to start and enter the pool

/** @internal Starts `count` workers on the module's shared memory (after _initialize). When one
 *  fails, or they do not all enter the pool within 10 s, every one started is terminated and the
 *  error thrown; the module then runs on its calling thread alone (tqkv_set_threads stays 1). */
export async function startWorkers(module: WebAssembly.Module, memory: WebAssembly.Memory, x: ThreadExports,
                                   count: number): Promise<SpawnedWorker[]> {
  const spawn = platform().spawnWorker ?? spawnWebWorker;
  const size = Number(x.__tls_size.value), align = Math.max(16, Number(x.__tls_align.value));
  const workers: SpawnedWorker[] = [];
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    for (let i = 0; i < count; i++) {
      // (Never freed: a terminated worker may still run a few instructions on its stack.)
      const stack = x.malloc(STACK_BYTES), tls = x.malloc(size + align);
      if (!stack || !tls) throw new TqkvError('tqkv: out of memory: cannot allocate a worker thread\'s stack', Status.OUT_OF_MEMORY);
      const w = spawn(WORKER_SOURCE, {
        module, memory, stackTop: (stack + STACK_BYTES) & ~15, tls: (tls + align - 1) & ~(align - 1),
      });
      w.ready.catch(() => {}); // (awaited below; a failure after an earlier throw is not unhandled)
      workers.push(w);
    }
    const deadline = Date.now() + START_MS;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`tqkv: threads: the workers did not start within ${START_MS / 1000} s`)), START_MS);
    });
    await Promise.race([Promise.all(workers.map((w) => w.ready)), late]);
    // 'ready' comes just before a worker enters the pool: wait until all are counted in it.
    while (x.tqkv_worker_threads() < count) {
      if (Date.now() > deadline)
        throw new Error(`tqkv: threads: only ${x.tqkv_worker_threads()} of ${count} workers entered the pool within ${START_MS / 1000} s`);
      await new Promise((r) => setTimeout(r, 1));
    }
    return workers;
  } catch (e) {
    for (const w of workers) w.terminate();
    throw e;
  } finally {
    clearTimeout(timer);
  }
}
