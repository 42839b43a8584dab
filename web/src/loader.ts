// Finding, compiling and instantiating a tqkv module: three builds of the same C++ sources
// (web/dist/), tried in this order where the engine supports them:
//   relaxed  tqkv-relaxed.wasm  SIMD128 + relaxed SIMD (relaxed_swizzle, relaxed_madd, ...)
//   simd128  tqkv.wasm          SIMD128
//   scalar   tqkv-scalar.wasm   no SIMD
// Support is feature-detected with WebAssembly.validate on tiny hand-written probe modules (as
// wasm-feature-detect does): no module is fetched for a feature the engine lacks. Safari rejects
// any module containing a relaxed op, and Node 20 accepts them only with
// --experimental-wasm-relaxed-simd; Chromium 114+ and Node 22+ run them as they are.
// With `threads` > 1 the two SIMD builds are taken in their threaded form (tqkv-relaxed-mt.wasm,
// tqkv-mt.wasm) on a shared memory; threads.ts starts the workers.
//
// The modules are standalone (no Emscripten JS glue): they import their memory (env.memory, so the
// caller can cap it) and a handful of WASI functions provided here.
import { packagedModuleUrl } from './assets.js';
import { FetchError, platform, readUrl, toUrl } from './platform.js';
import { wasmImports } from './imports.js';
import { hardwareConcurrency, threadsUnavailable } from './threads.js';

/** A build of the module: relaxed SIMD, SIMD128, or scalar. */
export type ModuleVariant = 'relaxed' | 'simd128' | 'scalar';

/** The variants in the order `'auto'` tries them. */
export const MODULE_VARIANTS: readonly ModuleVariant[] = ['relaxed', 'simd128', 'scalar'];

/** A module: a URL (fetched; in Node a file path or file: URL is read from disk), its bytes, a
 *  compiled WebAssembly.Module, or a fetch Response (compiled while it streams in). */
export type WasmSource = URL | string | ArrayBuffer | ArrayBufferView | WebAssembly.Module | Response;

/** Options of {@link Tqkv.load}. */
export interface LoadOptions {
  /**
   * Which build: 'auto' (default) = the first of 'relaxed', 'simd128', 'scalar' that this engine
   * validates and that loads (a relaxed file that is missing or rejected falls back to the next
   * one); a variant name forces it (an error where the engine lacks the feature); `true` =
   * 'simd128', `false` = 'scalar'.
   */
  simd?: boolean | 'auto' | ModuleVariant;
  /**
   * The module(s) to use instead of the packaged files (dist/*.wasm beside the package's code):
   * one source, used for the variant chosen by `simd`; or one per variant, e.g.
   * `{ simd128: url1, scalar: url2 }`, and then 'auto' chooses among those given only.
   */
  wasm?: WasmSource | Partial<Record<ModuleVariant, WasmSource>>;
  /** Upper bound of the wasm memory in bytes (default and limit 4 GiB). Appends that would need
   *  more fail with an 'out of memory' TqkvError and leave the cache as it was. */
  maximumMemory?: number;
  /**
   * Threads for attention and the model runner, the caller's included: 1 (default) to 64. Above 1
   * the threaded build of the chosen variant is loaded (dist/tqkv-relaxed-mt.wasm or
   * dist/tqkv-mt.wasm, or the module(s) given in `wasm`, which must then be threaded builds) on a
   * shared memory, and threads - 1 workers start (threads.ts). Results are the same bits for
   * every count. Needs SharedArrayBuffer: Node, or a cross-origin isolated page (COOP/COEP
   * headers); there is no threaded scalar build. 'auto': as many as the machine has cores (at most
   * 8) where threads can run (SharedArrayBuffer, a SIMD build, no `wasm` sources given), else 1;
   * `fallbacks` then says why.
   */
  threads?: number | 'auto';
}

const LOAD_OPTION_KEYS = ['simd', 'wasm', 'maximumMemory', 'threads'];

const PAGE = 65536;
// -sINITIAL_MEMORY=4MB in wasm/build.sh: the memory the modules import must start at least this big.
const INITIAL_PAGES = 64;
const MAX_PAGES = 65536;

// Probe modules: one function () -> v128.
//   SIMD128: i32.const 0; i8x16.splat; i8x16.popcnt
//   relaxed: i32.const 0; i8x16.splat; i32.const 0; i8x16.splat; i8x16.relaxed_swizzle (0xfd 0x100)
const SIMD_PROBE = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11,
]);
const RELAXED_PROBE = new Uint8Array([
  0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 15, 1, 13, 0, 65, 0, 253, 15, 65, 0, 253, 15,
  253, 128, 2, 11,
]);

function validates(bytes: Uint8Array): boolean {
  try {
    return WebAssembly.validate(bytes as BufferSource);
  } catch {
    return false;
  }
}

/** true when this engine validates WebAssembly SIMD128 instructions. */
export function simdSupported(): boolean {
  return validates(SIMD_PROBE);
}

/** true when this engine validates relaxed SIMD instructions (i8x16.relaxed_swizzle). */
export function relaxedSimdSupported(): boolean {
  return simdSupported() && validates(RELAXED_PROBE);
}

/** The variants this engine can run, in the order 'auto' tries them. */
export function supportedVariants(): ModuleVariant[] {
  const simd = simdSupported();
  return MODULE_VARIANTS.filter((v) => v === 'scalar' || (simd && (v === 'simd128' || validates(RELAXED_PROBE))));
}

/** @internal What {@link instantiate} produced. */
export interface LoadedModule {
  instance: WebAssembly.Instance;
  memory: WebAssembly.Memory;
  /** undefined for a single module given in `wasm` with simd 'auto' (Tqkv asks its kernel). */
  variant: ModuleVariant | undefined;
  /** Why earlier candidates were skipped, e.g. "relaxed: cannot fetch .../tqkv-relaxed.wasm: 404". */
  fallbacks: string[];
  /** The compiled module (workers instantiate it again), whether it is a threaded build (on a
   *  shared memory) and the threads asked for. */
  module: WebAssembly.Module;
  threaded: boolean;
  threads: number;
}

const isResponse = (x: unknown): x is Response => typeof Response !== 'undefined' && x instanceof Response;

const isSource = (x: unknown): x is WasmSource =>
  typeof x === 'string' ||
  x instanceof URL ||
  x instanceof ArrayBuffer ||
  ArrayBuffer.isView(x) ||
  x instanceof WebAssembly.Module ||
  isResponse(x);

/** @internal Validates the options of Tqkv.load; returns the candidates in order with their sources. */
export function plan(options: LoadOptions): {
  candidates: [ModuleVariant | undefined, WasmSource | undefined][];
  forced: boolean;
  maxPages: number;
  threads: number;
  threadNote?: string;
} {
  if (typeof options !== 'object' || options === null) throw new TypeError('tqkv: Tqkv.load options must be an object');
  for (const k of Object.keys(options))
    if (!LOAD_OPTION_KEYS.includes(k))
      throw new TypeError(`tqkv: unknown Tqkv.load option '${k}' (accepted: ${LOAD_OPTION_KEYS.join(', ')})`);
  const s = options.simd ?? 'auto';
  const want: ModuleVariant | 'auto' | undefined =
    s === true ? 'simd128' : s === false ? 'scalar' : s === 'auto' || MODULE_VARIANTS.includes(s as ModuleVariant) ? s : undefined;
  if (want === undefined)
    throw new TypeError(`tqkv: simd must be 'auto', 'relaxed', 'simd128', 'scalar', true or false, got ${String(s)}`);

  let sources: Partial<Record<ModuleVariant, WasmSource>> | undefined;
  let single: WasmSource | undefined;
  const w = options.wasm;
  if (w !== undefined) {
    if (isSource(w)) single = w;
    else if (typeof w === 'object' && w !== null) {
      for (const k of Object.keys(w))
        if (!MODULE_VARIANTS.includes(k as ModuleVariant))
          throw new TypeError(`tqkv: wasm: unknown variant '${k}' (accepted: ${MODULE_VARIANTS.join(', ')})`);
      for (const [k, v] of Object.entries(w)) if (!isSource(v)) throw new TypeError(`tqkv: wasm.${k} is not a URL, path, bytes, Module or Response`);
      sources = w as Partial<Record<ModuleVariant, WasmSource>>;
    } else throw new TypeError('tqkv: wasm must be a URL, path, bytes, Module, Response, or an object of them per variant');
  }

  let maxPages = MAX_PAGES;
  if (options.maximumMemory !== undefined) {
    if (typeof options.maximumMemory !== 'number' || !(options.maximumMemory > 0))
      throw new RangeError('tqkv: maximumMemory must be a positive number of bytes');
    maxPages = Math.max(INITIAL_PAGES, Math.min(MAX_PAGES, Math.floor(options.maximumMemory / PAGE)));
  }

  let threads = 1, threadNote: string | undefined;
  if (options.threads === 'auto') {
    const why = threadsUnavailable() ??
      (!simdSupported() || want === 'scalar' ? 'no SIMD build' : w !== undefined ? 'wasm sources given' : undefined);
    const cores = hardwareConcurrency();
    if (why) threadNote = `threads: auto: 1 thread (${why})`;
    else threads = Math.max(1, Math.min(8, cores));
  } else if (options.threads !== undefined) {
    threads = options.threads as number;
    if (typeof threads !== 'number' || !Number.isInteger(threads) || threads < 1 || threads > 64)
      throw new RangeError(`tqkv: threads must be 'auto' or an integer from 1 to 64, got ${String(options.threads)}`);
  }
  if (threads > 1) {
    const why = threadsUnavailable();
    if (why) throw new Error(`tqkv: threads: ${threads} asked, but ${why}`);
    if (want === 'scalar') throw new TypeError('tqkv: threads > 1 needs a SIMD build (there is no threaded scalar build)');
  }

  if (want !== 'auto') {
    const supported = supportedVariants();
    if (!supported.includes(want))
      throw new Error(
        `tqkv: this engine does not support the ${want} build (WebAssembly.validate rejects its probe; supported: ` +
          `${supported.join(', ')})` + (want === 'relaxed' ? '. Node 20 needs --experimental-wasm-relaxed-simd' : ''),
      );
    if (sources && !sources[want]) throw new TypeError(`tqkv: simd: '${want}' but wasm has no '${want}' entry`);
    return { candidates: [[want, single ?? sources?.[want]]], forced: true, maxPages, threads, threadNote };
  }
  // A single explicit module of unknown build: its variant is read from its kernel (Tqkv).
  if (single !== undefined) return { candidates: [[undefined, single]], forced: true, maxPages, threads, threadNote };
  const candidates = supportedVariants()
    .filter((v) => (!sources || sources[v] !== undefined) && (threads === 1 || v !== 'scalar'))
    .map((v): [ModuleVariant, WasmSource | undefined] => [v, sources?.[v]]);
  if (!candidates.length)
    throw new TypeError(`tqkv: wasm names no variant this engine supports (supported: ${supportedVariants().join(', ')})`);
  return { candidates, forced: false, maxPages, threads, threadNote };
}

async function compile(src: WasmSource | undefined, variant: ModuleVariant | undefined,
                       threaded: boolean): Promise<WebAssembly.Module> {
  if (src instanceof WebAssembly.Module) return src;
  if (src instanceof ArrayBuffer || ArrayBuffer.isView(src)) return WebAssembly.compile(src as BufferSource);
  if (isResponse(src)) return compileResponse(src, new URL(src.url || 'about:blank'));
  const url = src === undefined ? packagedModuleUrl(variant ?? 'simd128', threaded) : toUrl(src as string | URL);
  if (url.protocol === 'file:') return WebAssembly.compile((await readUrl(url)) as BufferSource);
  const res = await fetch(url);
  if (!res.ok) throw new FetchError(url, res);
  return compileResponse(res, url);
}

async function compileResponse(res: Response, url: URL): Promise<WebAssembly.Module> {
  if (!res.ok) throw new FetchError(url, res);
  // compileStreaming needs the application/wasm content type; otherwise compile the bytes.
  if (typeof WebAssembly.compileStreaming === 'function' && (res.headers.get('content-type') ?? '').startsWith('application/wasm'))
    return WebAssembly.compileStreaming(res);
  return WebAssembly.compile(await res.arrayBuffer());
}


/** @internal Compiles and instantiates the first candidate that loads. */
export async function instantiate(options: LoadOptions): Promise<LoadedModule> {
  const { candidates, forced, maxPages, threads, threadNote } = plan(options);
  const fallbacks: string[] = threadNote ? [threadNote] : [];
  for (let i = 0; i < candidates.length; i++) {
    const [variant, src] = candidates[i];
    const last = forced || i === candidates.length - 1;
    let module: WebAssembly.Module;
    try {
      module = await compile(src, variant, threads > 1);
    } catch (e) {
      if (last) throw e;
      // Missing (404, ENOENT) or rejected (CompileError): try the next build.
      fallbacks.push(`${variant}: ${e instanceof Error ? e.message : String(e)}`);
      continue;
    }
    const threaded = WebAssembly.Module.exports(module).some((e) => e.name === '__wasm_init_tls');
    if (threads > 1 && !threaded)
      throw new TypeError(`tqkv: threads: ${threads} asked, but the module is not a threaded build (tqkv-mt.wasm or tqkv-relaxed-mt.wasm)`);
    const memory = new WebAssembly.Memory({ initial: INITIAL_PAGES, maximum: maxPages, shared: threaded } as WebAssembly.MemoryDescriptor);
    const instance = await WebAssembly.instantiate(module, wasmImports(memory));
    return { instance, memory, variant, fallbacks, module, threaded, threads };
  }
  throw new Error('tqkv: no module to load'); // unreachable: the last candidate throws
}

/** @internal For messages: which platform reads the files. */
export const platformName = (): string => platform().name;
