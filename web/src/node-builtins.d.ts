// The Node built-ins platform-node.ts uses, declared here so the package builds without
// @types/node (its published typings never mention them).
declare module 'node:fs/promises' {
  export function readFile(url: URL): Promise<Uint8Array>;
}
declare module 'node:url' {
  export function pathToFileURL(path: string): URL;
}
declare module 'node:worker_threads' {
  export class Worker {
    constructor(source: string, options: { eval: boolean; workerData: unknown });
    unref(): void;
    terminate(): Promise<number>;
    once(event: 'message', fn: (m: unknown) => void): this;
    once(event: 'error', fn: (e: Error) => void): this;
  }
}
declare module 'node:os' {
  export const availableParallelism: (() => number) | undefined;
  export function cpus(): unknown[];
}
