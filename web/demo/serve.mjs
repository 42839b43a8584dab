// A local static server for the demo page and the browser tests: web/ at /, a model directory
// (config.json, model.safetensors or its shards, eval.txt) at /model/. Nothing is copied into the repository.
//
//   node demo/serve.mjs [--model DIR] [--port 8080]     (from web/; or `npm run demo`)
//   -> open http://127.0.0.1:8080/demo/
//
// DIR defaults to $TQKV_MODEL, else ../shared/data/tq-ref-128 beside the repository.
// As a module: serve([[prefix, dir], ...], port = 0) resolves to a listening http.Server.
import { createServer } from 'node:http';
import { createReadStream, existsSync, statSync } from 'node:fs';
import { extname, join, normalize, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const web = resolve(fileURLToPath(new URL('.', import.meta.url)), '..');
export const defaultModelDir = process.env.TQKV_MODEL || resolve(web, '../../shared/data/tq-ref-128');

const types = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css',
  '.wasm': 'application/wasm', '.json': 'application/json', '.ts': 'text/plain', '.txt': 'text/plain; charset=utf-8',
  '.map': 'application/json',
};

/** Serves files under each [prefix, dir] mount (the first prefix that matches), with their length. */
export function serve(mounts, port = 0, host = '127.0.0.1') {
  const roots = mounts.map(([prefix, dir]) => [prefix, resolve(dir)]);
  const server = createServer((req, res) => {
    let path;
    try {
      path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    } catch {
      res.writeHead(400).end('bad request');
      return;
    }
    if (path === '/') {
      res.writeHead(302, { location: '/demo/' }).end();
      return;
    }
    for (const [prefix, dir] of roots) {
      if (!path.startsWith(prefix)) continue;
      let file = normalize(join(dir, path.slice(prefix.length)));
      if (file !== dir && !file.startsWith(dir + '/')) break;
      if (existsSync(file) && statSync(file).isDirectory()) file = join(file, 'index.html');
      if (!existsSync(file) || !statSync(file).isFile()) break;
      res.writeHead(200, {
        'content-type': types[extname(file)] ?? 'application/octet-stream',
        'content-length': statSync(file).size,
        'cache-control': 'no-store',
        // Cross-origin isolated (SharedArrayBuffer): the threaded builds can load.
        'cross-origin-opener-policy': 'same-origin',
        'cross-origin-embedder-policy': 'require-corp',
      });
      if (req.method === 'HEAD') res.end();
      else createReadStream(file).pipe(res);
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
  });
  return new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(port, host, () => ok(server));
  });
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const opt = (name, fallback) => {
    const i = args.indexOf(name);
    return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
  };
  const modelDir = resolve(opt('--model', defaultModelDir));
  const port = Number(opt('--port', 8080));
  if (!existsSync(join(web, 'dist', 'index.js')) || !existsSync(join(web, 'dist', 'tqkv.wasm')))
    console.error('note: web/dist is incomplete: run `bash wasm/build.sh` and `npm run build` first');
  if (!existsSync(join(modelDir, 'model.safetensors')) && !existsSync(join(modelDir, 'model.safetensors.index.json')))
    console.error(`note: no model.safetensors nor model.safetensors.index.json in ${modelDir} (--model DIR or TQKV_MODEL): the page will say so`);
  const server = await serve([['/model/', modelDir], ['/', web]], port);
  console.log(`tqkv demo: http://127.0.0.1:${server.address().port}/demo/   (model: ${modelDir} at /model/)`);
}
