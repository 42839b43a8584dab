// run.js inside a module Web Worker (index.html?in=worker).
import { run } from './run.js';

self.onmessage = async (e) => self.postMessage(await run(new URLSearchParams(e.data)));
