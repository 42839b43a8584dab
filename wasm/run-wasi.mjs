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
// File-system syscalls emscripten imports from env outside WASI (std::filesystem: stat, getcwd):
// the tests only ask whether the model data exists, so every path is absent (-ENOENT) and the
// rest is unsupported (-ENOSYS); those tests skip with a message.
const ENOENT = 44, ENOSYS = 52;
for (const imp of WebAssembly.Module.imports(module)) {
  if (imp.module !== 'env' || imp.kind !== 'function' || imp.name in env) continue;
  env[imp.name] = /stat/.test(imp.name) ? () => -ENOENT : () => -ENOSYS;
}
const instance = await WebAssembly.instantiate(module, { wasi_snapshot_preview1: wasi.wasiImport, env });
process.exitCode = wasi.start(instance);
