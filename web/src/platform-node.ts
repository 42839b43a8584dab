// Node's side of platform.ts: files are read from disk. Imported only by the Node entry (node.ts),
// so browser bundles never see a `node:` module.
import { readFile } from 'node:fs/promises';
import { pathToFileURL } from 'node:url';
import type { Platform } from './platform.js';

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
};
