// The Node entry point (the package's 'node' export condition): the same API as index.ts, with
// the packaged .wasm files, file: URLs and paths read from disk.
import { nodePlatform } from './platform-node.js';
import { setPlatform } from './platform.js';

setPlatform(nodePlatform);

export * from './index.js';
import { Tqkv } from './index.js';
export default Tqkv;
