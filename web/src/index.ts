// tqkv for browsers and Node: a compressed transformer KV cache (TurboQuant codes, 1-8 bits per
// coordinate) with attention computed directly on the codes, compiled to WebAssembly from the
// same C++ sources as the native library.
//
//   import { Tqkv } from 'tqkv';
//   const tqkv = await Tqkv.load();                       // relaxed SIMD, SIMD128 or scalar build
//   const cache = tqkv.createCache({ layers: 32, heads: 32, kvHeads: 8, headDim: 128,
//                                    keyBits: 4, valueBits: 3, window: 64 });
//   cache.append(layer, keys, values);                   // Float32Array [n][kvHeads][headDim]
//   cache.attend(layer, queries, out);                   // [m][heads][headDim] -> out
//   const bytes = cache.serialize();                     // portable: loads natively too
//   const again = Tqkv.deserialize(bytes);
//   cache.dispose();
//
//   const model = await tqkv.fetchModel('/models/tq-ref-128/');  // config.json + model.safetensors
//                                                         // (+ tokenizer.json: model.tokenizer)
//   const runner = model.createRunner('K4V4', { calibration: model.calibrate(someText) });
//   for (const token of runner.generate('The ', { maxTokens: 64 })) ...   // greedy by default
//   runner.stats();                                       // cache bytes vs fp16, position
//   runner.dispose(); model.dispose();
//
// The package's code, by concern (as onnxruntime-web's lib/wasm/):
//   loader.ts    module variants (relaxed / SIMD128 / scalar), feature probes, instantiation
//   threads.ts   workers of the threaded builds (Tqkv.load({ threads }))
//   imports.ts   what a module imports (memory, a few WASI calls), for the main thread and workers
//   assets.ts    where the packaged .wasm files are (new URL(..., import.meta.url))
//   platform.ts  fetch vs the file system (platform-node.ts, installed by the Node entry node.ts)
//   tqkv.ts      Tqkv: one instance and its memory, shared helpers
//   cache.ts     KVCache        codec.ts  Codec        model.ts  LlamaModel, Calibration, Runner
//   tokenizer.ts Tokenizer (tokenizer.json, the same C++ as the native tools)
//   errors.ts    TqkvError, Status           abi.ts  the C ABI's exports and struct layouts
//   persist.ts   saving serialized caches, runners and calibrations in IndexedDB
//   calibration.ts  Calibration (key/value statistics for calibrated caches from specs and presets)
// This file is the browser-safe entry point (no `node:` import); node.ts adds file access.

export { Status, TqkvError } from './errors.js';
export {
  MODULE_VARIANTS,
  relaxedSimdSupported,
  simdSupported,
  supportedVariants,
  type LoadOptions,
  type ModuleVariant,
  type WasmSource,
} from './loader.js';
export { Tqkv } from './tqkv.js';
export {
  KVCache,
  type AppendOptions,
  type AttendOptions,
  type AttentionStats,
  type CacheConfig,
  type Precision,
  type CacheOptions,
  type Float16ArrayLike,
  type KVTensor,
  type TensorLayout,
} from './cache.js';
export { Codec, type CodecOptions } from './codec.js';
export { Calibration, type CachePreset, type CalibrationSample, type CalibrationShape } from './calibration.js';
export {
  LlamaModel,
  Runner,
  type GenerateOptions,
  type ModelInfo,
  type ModelWeights,
  type RunnerStats,
  type TokenInput,
} from './model.js';
export { Tokenizer, TokenStream } from './tokenizer.js';

export { loadFromIndexedDB, removeFromIndexedDB, saveToIndexedDB, type IndexedDBOptions, type Serializable } from './persist.js';

import { Tqkv } from './tqkv.js';
export default Tqkv;
