// What a tqkv module imports: its memory and the few WASI calls the C++ runtime makes. One
// definition for the main thread (loader.ts) and the workers of the threaded builds, whose code
// (threads.ts: WORKER_SOURCE) embeds this function's source text: so it must not refer to anything
// but its argument and the engine's globals.
/** @internal */
export function wasmImports(memory: WebAssembly.Memory): WebAssembly.Imports {
  return {
    env: {
      memory,
      // The module grew its memory (malloc): views are refreshed lazily (Tqkv.refresh()).
      emscripten_notify_memory_growth: () => {},
    },
    // The WASI calls the C++ runtime makes: getenv (no environment here), the clock, exit.
    wasi_snapshot_preview1: {
      environ_sizes_get: (count: number, size: number) => {
        const dv = new DataView(memory.buffer);
        dv.setUint32(count, 0, true);
        dv.setUint32(size, 0, true);
        return 0;
      },
      environ_get: () => 0,
      // The runner's timers (std::chrono::steady_clock): nanoseconds as a u64.
      clock_time_get: (id: number, _precision: bigint, out: number) => {
        const ms = id === 0 ? Date.now() : typeof performance !== 'undefined' ? performance.now() : Date.now();
        new DataView(memory.buffer).setBigUint64(out, BigInt(Math.round(ms * 1e6)), true);
        return 0;
      },
      proc_exit: (code: number) => {
        throw new Error(`tqkv: the wasm module exited (code ${code})`);
      },
    },
  };
}
