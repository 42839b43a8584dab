// run.js inside a module Web Worker (index.html?in=worker). The parameters come in the worker's
// own URL, not in a message: a message posted before a module worker has evaluated (its imports
// load first) may be dispatched before it listens, and the page would wait forever.
import { run } from './run.js';

self.postMessage(await run(new URLSearchParams(location.search)));
