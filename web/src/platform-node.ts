// Node's side of platform.ts: files are read from disk. Imported only by the Node entry (node.ts),
// so browser bundles never see a `node:` module.
import { readFile } from 'node:fs/promises';
import { pathToFileURL } from 'node:url';
import * as os from 'node:os';
import { Worker } from 'node:worker_threads';
import type { Platform } from './platform.js';
import type { SpawnedWorker, WorkerStart } from './threads.js';

/** @internal */
export const nodePlatform: Platform = {
  name: 'node',
  async readFile(url: URL): Promise<Uint8Array> {
    const b = await readFile(url);
    return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  },
  pathToFileURL(path: string): URL {
    return pathToFileURL(path);
  },
  hardwareConcurrency(): number {
    return typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  },
  // A worker thread that does not keep the process alive (it sleeps in the pool until terminated).
  spawnWorker(source: string, data: WorkerStart): SpawnedWorker {
    const w = new Worker(source, { eval: true, workerData: data });
    w.unref();
    const ready = new Promise<void>((resolve, reject) => {
      w.once('message', (m) => (m === 'ready' ? resolve() : reject(new Error(`tqkv: threads: a worker failed to start: ${String(m)}`))));
      w.once('error', (e) => reject(new Error(`tqkv: threads: a worker failed to start: ${e.message}`)));
    });
    return { ready, terminate: () => void w.terminate() };
  },
};
