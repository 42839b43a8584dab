// The demo page: load a Llama model from a local URL into the tqkv WebAssembly module, generate
// text token by token through the KV cache the user picks, show the cache's bytes against an fp16
// cache and the decode speed as they change.
//
// State for tests and curious people: window.tqkvDemo = { state, runs: [...], model, error }.
// state: 'loading' | 'ready' | 'calibrating' | 'generating' | 'error' (also <body data-state>).
// Each run: { cache, prompt, tokens: [ids], text, decodeTokensPerSecond, prefillTokensPerSecond,
//             stats: { position, cacheBytes, fp16Bytes, bitsPerCoord, memoryBytes }, stopped }.
import { Tqkv, saveToIndexedDB, loadFromIndexedDB } from 'tqkv';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const modelUrl = new URL(params.get('model') ?? '/model/', location.href);
const simdParam = params.get('simd');
const CALIB_BYTES = 2048; // tqkv-run's default: the last 2048 bytes of eval.txt

const demo = { state: 'loading', runs: [], model: null, error: null, kernel: null };
window.tqkvDemo = demo;

function setState(state, message, isError = false) {
  demo.state = state;
  document.body.dataset.state = state;
  if (message !== undefined) {
    $('status').textContent = message;
    $('status').classList.toggle('error', isError);
  }
  const busy = state !== 'ready';
  $('generate').disabled = busy;
  $('stop').disabled = state !== 'generating';
  $('cache').disabled = busy;
}

function mb(bytes) {
  if (bytes < 1024) return `${bytes.toFixed(0)} B`;
  if (bytes < 1 << 20) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / (1 << 20)).toFixed(2)} MiB`;
}

function showStats(stats, context) {
  $('cache-bytes').textContent = mb(stats.cacheBytes);
  $('bits').textContent = stats.position ? `${stats.bitsPerCoord.toFixed(2)} bits per coordinate` : '\u00a0';
  $('fp16-bytes').textContent = mb(stats.fp16Bytes);
  const ratio = stats.cacheBytes > 0 ? stats.fp16Bytes / stats.cacheBytes : 0;
  $('ratio').textContent = !ratio ? '\u00a0' : ratio >= 1 ? `${ratio.toFixed(2)}× smaller with this cache` : `${(1 / ratio).toFixed(2)}× larger with this cache`;
  $('position').textContent = String(stats.position);
  $('context').textContent = `of ${context} (context)`;
  $('bar-cache').style.width = `${stats.fp16Bytes > 0 ? Math.min(100, (100 * stats.cacheBytes) / stats.fp16Bytes) : 0}%`;
}

// Yields to the browser (rendering, input) without setTimeout's 4 ms clamp.
const channel = new MessageChannel();
const pending = [];
channel.port1.onmessage = () => pending.shift()?.();
const yieldToBrowser = () => new Promise((resolve) => { pending.push(resolve); channel.port2.postMessage(0); });

let tqkv, model, calibration, calibrationSource, runner, stopRequested = false;

async function calibrationText(promptBytes) {
  try {
    const res = await fetch(new URL('eval.txt', modelUrl));
    if (res.ok) {
      const bytes = new Uint8Array(await res.arrayBuffer());
      if (bytes.length > 0) return { bytes: bytes.subarray(Math.max(0, bytes.length - CALIB_BYTES)), source: `the last ${Math.min(CALIB_BYTES, bytes.length)} bytes of eval.txt` };
    }
  } catch {}
  return { bytes: promptBytes, source: 'the prompt (no eval.txt beside the model)' };
}

async function generate() {
  if (demo.state !== 'ready') return;
  const spec = $('cache').value;
  const promptText = $('prompt').value;
  const maxTokens = Math.max(1, Math.min(100000, Math.floor(Number($('tokens').value) || 1)));
  const temperature = Math.max(0, Number($('temperature').value) || 0);
  // A model with a tokenizer.json takes its token ids (BOS as its config says); a byte-vocabulary
  // model the UTF-8 bytes.
  const tok = model.tokenizer;
  const prompt = tok ? tok.encode(promptText, { special: true }) : new TextEncoder().encode(promptText);
  if (prompt.length === 0) {
    setState('ready', 'type a prompt first');
    return;
  }
  if (prompt.length >= model.info.context) {
    setState('ready', `the prompt has ${prompt.length} bytes; the model's context is ${model.info.context}`, true);
    return;
  }
  stopRequested = false;
  const run = { cache: spec, prompt: promptText, tokens: [], text: '', decodeTokensPerSecond: 0, prefillTokensPerSecond: 0, stats: null, stopped: false };
  try {
    let calibrationMs = 0;
    if (/^k/i.test(spec) && !calibration) {
      // A calibration saved by an earlier visit (IndexedDB) saves the exact-cache pass.
      const key = `calibration:${modelUrl.href}:${model.info.parameters}`;
      const saved = await loadFromIndexedDB(key, { store: 'calibrations' }).catch(() => undefined);
      if (saved) {
        calibration = tqkv.loadCalibration(saved);
        calibrationSource = `a calibration restored from IndexedDB (${mb(saved.length)})`;
        demo.calibrationRestored = saved.length;
      } else {
        setState('calibrating', 'calibrating the tqkv cache (once: an exact-cache pass over 2048 bytes, then kept in IndexedDB)…');
        await yieldToBrowser();
        const { bytes, source } = await calibrationText(new TextEncoder().encode(promptText));
        const t0 = performance.now();
        calibration = model.calibrate(tok ? tok.encode(new TextDecoder().decode(bytes)) : bytes);
        calibrationMs = performance.now() - t0;
        calibrationSource = source;
        demo.calibrationSaved = await saveToIndexedDB(key, calibration.serialize(), { store: 'calibrations' }).catch(() => 0);
      }
    }
    runner?.dispose();
    runner = model.createRunner(spec, { calibration: /^k/i.test(spec) ? calibration : undefined });
    setState('generating', `generating with the ${spec} cache…`);
    $('out-prompt').textContent = promptText;
    $('out-text').textContent = '';
    $('tps').textContent = '–';
    $('prefill').textContent = '\u00a0';
    showStats(runner.stats(), model.info.context);
    await yieldToBrowser();

    const decoder = new TextDecoder('utf-8');
    const tokens = runner.generate(prompt, { maxTokens, temperature, seed: 1 });
    const t0 = performance.now();
    let first = true, tDecode = 0, decoded = 0, sliceStart = performance.now();
    let shown = '';  // with a tokenizer: the decoded text so far (pieces of a character wait for the rest)
    for (const token of tokens) {
      if (tok && token === tok.eos) break;
      const now = performance.now();
      if (first) {
        run.prefillTokensPerSecond = prompt.length / ((now - t0) / 1000);
        $('prefill').textContent = `prefill ${run.prefillTokensPerSecond.toFixed(0)} tokens/s (${prompt.length} tokens)`;
        tDecode = now;
        first = false;
      } else {
        decoded++;
      }
      run.tokens.push(token);
      let piece;
      if (tok) {
        const all = tok.decode(run.tokens);
        const complete = all.endsWith('\ufffd') ? all.slice(0, all.lastIndexOf('\ufffd')) : all;
        piece = complete.startsWith(shown) ? complete.slice(shown.length) : '';
        shown += piece;
      } else {
        piece = decoder.decode(new Uint8Array([token]), { stream: true });
      }
      run.text += piece;
      $('out-text').textContent += piece;
      if (decoded > 0) {
        run.decodeTokensPerSecond = decoded / ((now - tDecode) / 1000);
        $('tps').textContent = `${run.decodeTokensPerSecond.toFixed(1)} tokens/s`;
      }
      run.stats = runner.stats();
      showStats(run.stats, model.info.context);
      if (now - sliceStart > 30) {  // let the page render about 30 times a second
        await yieldToBrowser();
        sliceStart = performance.now();
      }
      if (stopRequested) {
        run.stopped = true;
        break;
      }
    }
    const tail = tok ? tok.decode(run.tokens).slice(shown.length) : decoder.decode();
    run.text += tail;
    $('out-text').textContent += tail;
    run.stats = runner.stats();
    showStats(run.stats, model.info.context);
    if (decoded === 0) $('tps').textContent = 'n/a (1 token)';
    const cal = calibrationMs ? `; calibrated in ${(calibrationMs / 1000).toFixed(1)} s on ${calibrationSource}`
      : demo.calibrationRestored && /^k/i.test(spec) ? `; ${calibrationSource}` : '';
    demo.runs.push(run);
    setState('ready', `${run.stopped ? 'stopped' : 'done'}: ${run.tokens.length} ${tok ? 'tokens' : 'bytes'} with the ${spec} cache${run.tokens.length < maxTokens && !run.stopped ? ' (the context is full)' : ''}${cal}`);
  } catch (e) {
    run.error = String(e?.message ?? e);
    demo.runs.push(run);
    setState('ready', `failed: ${run.error}`, true);
  }
}

async function main() {
  try {
    tqkv = await Tqkv.load(simdParam === null ? {} : { simd: simdParam !== '0' });
    demo.kernel = tqkv.kernel;
    setState('loading', `loading the model from ${modelUrl.href}…`);
    const t0 = performance.now();
    model = await tqkv.fetchModel(modelUrl, {
      onProgress: (loaded, total) => {
        $('status').textContent = `loading the model: ${mb(loaded)}${total ? ` of ${mb(total)}` : ''}`;
      },
    });
    const loadMs = performance.now() - t0;
    const i = model.info;
    demo.model = { ...i, loadMs, matmul: tqkv.matmulKernel, memoryBytes: tqkv.memoryBytes };
    $('model-line').textContent =
      `Model ${modelUrl.pathname}: Llama, ${(i.parameters / 1e6).toFixed(1)} M parameters, ${i.layers} layers, ` +
      `${i.heads} query / ${i.kvHeads} KV heads of ${i.headDim}, context ${i.context}` +
      `${i.vocab === 256 ? ', byte vocabulary' : ''}. WebAssembly ${({ relaxed: 'relaxed SIMD', simd128: 'SIMD128', scalar: 'scalar' })[tqkv.variant]} (matmul ${tqkv.matmulKernel}, attention ${tqkv.kernel}).`;
    if (i.vocab !== 256) throw new Error('this page needs a byte-vocabulary model (vocab_size 256)');
    showStats({ position: 0, cacheBytes: 0, fp16Bytes: 0, bitsPerCoord: 0 }, i.context);
    setState('ready', `ready: model loaded in ${(loadMs / 1000).toFixed(1)} s (wasm memory ${mb(tqkv.memoryBytes)}). Type a prompt, pick a cache, Generate.`);
  } catch (e) {
    demo.error = String(e?.message ?? e);
    setState('error', `cannot load the model from ${modelUrl.href}: ${demo.error}. Serve a model directory ` +
      '(config.json + model.safetensors) there: `node web/demo/serve.mjs --model DIR`.', true);
  }
}

$('generate').addEventListener('click', (e) => { e.preventDefault(); generate(); });
$('stop').addEventListener('click', (e) => { e.preventDefault(); stopRequested = true; });
$('prompt').addEventListener('keydown', (e) => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) generate(); });
main();
