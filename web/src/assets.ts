// Where the packaged modules are: beside this file, as `new URL('./x.wasm', import.meta.url)` with
// literal names, the pattern Vite and webpack recognise, copy into the build and rewrite (see
// README.md for esbuild, which does not).
import type { ModuleVariant } from './loader.js';

/** @internal The packaged .wasm file of a variant (threaded: its build on a shared memory). */
export function packagedModuleUrl(variant: ModuleVariant, threaded = false): URL {
  switch (variant) {
    case 'relaxed':
      return threaded ? new URL('./tqkv-relaxed-mt.wasm', import.meta.url) : new URL('./tqkv-relaxed.wasm', import.meta.url);
    case 'simd128':
      return threaded ? new URL('./tqkv-mt.wasm', import.meta.url) : new URL('./tqkv.wasm', import.meta.url);
    case 'scalar':
      return new URL('./tqkv-scalar.wasm', import.meta.url);
  }
}
