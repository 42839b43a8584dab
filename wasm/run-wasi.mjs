// Runs a standalone WASI program built by wasm/build.sh (the Catch2 suite) under Node's WASI:
//   node wasm/run-wasi.mjs build-wasm/tqkv_tests-simd.wasm [catch2 args...]
// Exits with the program's exit code.
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';
import process from 'node:process';

const [file, ...args] = process.argv.slice(2);
if (!file) {
  console.error('usage: node wasm/run-wasi.mjs PROGRAM.wasm [args...]');
  process.exit(2);
}
const wasi = new WASI({ version: 'preview1', args: [file, ...args], env: {}, returnOnExit: true });
const module = await WebAssembly.compile(await readFile(file));
const env = { emscripten_notify_memory_growth() {} };
const instance = await WebAssembly.instantiate(module, { wasi_snapshot_preview1: wasi.wasiImport, env });
process.exitCode = wasi.start(instance);
