// A W3C WebDriver (classic) client of the few commands the WebKit test needs, over fetch: Debian's
// WebKitGTK ships WebKitWebDriver and MiniBrowser, and playwright's WebKit is a patched build it
// downloads, which this project cannot. WebKitGTK needs a display: the driver runs under xvfb-run.
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';

export const webkitDriverPath = process.env.WEBKIT_DRIVER || '/usr/bin/WebKitWebDriver';
export const miniBrowserPath = process.env.WEBKIT_BROWSER || '/usr/lib/x86_64-linux-gnu/webkit2gtk-4.1/MiniBrowser';

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

/** Starts WebKitWebDriver under xvfb-run (the browsers it starts inherit `env` as well);
 * `stop()` ends both (their process group). */
export async function startWebKitDriver(env = {}) {
  const port = await freePort();
  const child = spawn('xvfb-run', ['-a', webkitDriverPath, `--port=${port}`],
    { detached: true, stdio: 'ignore', env: { ...process.env, ...env } });
  const url = `http://127.0.0.1:${port}`;
  const stop = () => {
    try {
      process.kill(-child.pid, 'SIGTERM');
    } catch {}
  };
  for (let i = 0; i < 100; i++) {
    try {
      const status = await (await fetch(`${url}/status`)).json();
      if (status.value?.ready !== undefined) return { url, stop };
    } catch {}
    await new Promise((r) => setTimeout(r, 100));
  }
  stop();
  throw new Error(`WebKitWebDriver did not answer on ${url} within 10 s`);
}

async function call(url, method, path, body) {
  const res = await fetch(url + path, {
    method,
    headers: { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json();
  if (!res.ok) throw new Error(`WebDriver ${method} ${path}: ${json.value?.error}: ${json.value?.message}`);
  return json.value;
}

/** A MiniBrowser session (the page session of test/page-suite.mjs): navigate, run a script, close. */
export async function newSession(driverUrl) {
  const created = await call(driverUrl, 'POST', '/session', {
    capabilities: { alwaysMatch: { 'webkitgtk:browserOptions': { binary: miniBrowserPath, args: ['--automation'] } } },
  });
  const base = `/session/${created.sessionId}`;
  return {
    logs: [],  // (WebDriver classic does not report the console)
    goto: (url) => call(driverUrl, 'POST', `${base}/url`, { url }),
    /** Runs `script` (a function body; arguments[i] = args[i]) in the page and returns its value. */
    evaluate: (script, ...args) => call(driverUrl, 'POST', `${base}/execute/sync`, { script, args }),
    /** Runs `script` with a callback as its last argument; resolves with the value passed to it. */
    executeAsync: (script, ...args) => call(driverUrl, 'POST', `${base}/execute/async`, { script, args }),
    /** How long an executeAsync may take (WebDriver's default: 30 s). */
    setScriptTimeout: (ms) => call(driverUrl, 'POST', `${base}/timeouts`, { script: ms }),
    close: () => call(driverUrl, 'DELETE', base).catch(() => {}),
  };
}
