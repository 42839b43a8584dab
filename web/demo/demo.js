// The demo page: load a Llama model from a local URL into the tqkv WebAssembly module, generate
// text token by token through the KV cache the user picks, show the cache's bytes against an fp16
// cache and the decode speed as they change. After every run the session (the runner's position
// and cache, Runner.serialize) is kept in IndexedDB; a reload restores it and Continue goes on
// exactly where it stopped.
//
// Any model the package loads: with a tokenizer beside it (tokenizer.json, else tokenizer.model;
// fetchModel attaches it as model.tokenizer) the prompt is its token ids (BOS as its config says),
// generated ids are shown as text as they come (TokenStream: a character split over ids appears
// once complete) and generation stops at the model's end-of-sequence ids; a byte-vocabulary model
// (vocab_size 256, no tokenizer) takes the prompt's UTF-8 bytes and generates bytes.
//
// State for tests and curious people: window.tqkvDemo = { state, runs: [...], model, error,
// saved, restored }. state: 'loading' | 'ready' | 'calibrating' | 'generating' | 'error' (also
// <body data-state>). Each run: { cache, prompt, tokens: [ids], text, decodeTokensPerSecond,
// prefillTokensPerSecond, stats: { position, cacheBytes, fp16Bytes, bitsPerCoord, memoryBytes },
// stopped, continued, endOfSequence (stopped at an EOS id) }. model: ModelInfo + { loadMs, variant,
// matmul, memoryBytes, tokenizer: { source, vocab, bos, eos, endOfSequence } | null }. saved / restored: { spec, position, bytes, fp16Bytes, tokens }.
import { Tqkv, TokenStream, saveToIndexedDB, loadFromIndexedDB, removeFromIndexedDB } from 'tqkv';

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
  $('continue').disabled = busy || !session;
  $('forget').disabled = busy || !demo.saved;
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
// The sequence the runner holds: { spec, prompt (text), tokens (generated ids), text, last (the
// last generated token: not run yet, the next input) }; null before the first run.
let session = null;
const isTqkv = (spec) => /^k/i.test(spec);
const sessionKey = () => `session:${modelUrl.href}:${model.info.parameters}`;
const STORE = { store: 'sessions' };

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
  // A model with a tokenizer takes its token ids (BOS as its config says); a byte-vocabulary
  // model the UTF-8 bytes.
  const tok = model.tokenizer;
  let prompt;
  try {
    prompt = tok ? tok.encode(promptText, { special: true }) : new TextEncoder().encode(promptText);
  } catch (e) {
    setState('ready', `the tokenizer refused the prompt: ${e?.message ?? e}`, true);
    return;
  }
  if (promptText.length === 0 || prompt.length === 0) {
    setState('ready', 'type a prompt first');
    return;
  }
  if (prompt.length >= model.info.context) {
    setState('ready', `the prompt has ${prompt.length} ${unit()}; the model's context is ${model.info.context}`, true);
    return;
  }
  stopRequested = false;
  const run = { cache: spec, prompt: promptText, tokens: [], text: '', decodeTokensPerSecond: 0, prefillTokensPerSecond: 0, stats: null, stopped: false };
  try {
    const calibrationMs = isTqkv(spec) ? await ensureCalibration(promptText) : 0;
    runner?.dispose();
    runner = model.createRunner(spec, { calibration: isTqkv(spec) ? calibration : undefined });
    session = { spec, prompt: promptText, promptIds: Array.from(prompt), tokens: [], text: '', last: -1 };
    $('out-prompt').textContent = promptText;
    $('out-text').textContent = '';
    await runTokens(run, prompt, maxTokens, temperature, calibrationMs);
  } catch (e) {
    run.error = String(e?.message ?? e);
    demo.runs.push(run);
    setState('ready', `failed: ${run.error}`, true);
  }
}

// The calibration of the tqkv caches: from IndexedDB when an earlier visit kept one, else an
// exact-cache pass (kept for the next visit). Returns the milliseconds spent calibrating (0 when
// restored or already there).
async function ensureCalibration(promptText) {
  if (calibration) return 0;
  const tok = model.tokenizer;
  const key = `calibration:${modelUrl.href}:${model.info.parameters}`;
  const saved = await loadFromIndexedDB(key, { store: 'calibrations' }).catch(() => undefined);
  if (saved) {
    calibration = tqkv.loadCalibration(saved);
    calibrationSource = `a calibration restored from IndexedDB (${mb(saved.length)})`;
    demo.calibrationRestored = saved.length;
    return 0;
  }
  setState('calibrating', 'calibrating the tqkv cache (once: an exact-cache pass over 2048 bytes, then kept in IndexedDB)…');
  await yieldToBrowser();
  const { bytes, source } = await calibrationText(new TextEncoder().encode(promptText));
  const t0 = performance.now();
  calibration = model.calibrate(tok ? tok.encode(new TextDecoder().decode(bytes)) : bytes);
  const ms = performance.now() - t0;
  calibrationSource = source;
  demo.calibrationSaved = await saveToIndexedDB(key, calibration.serialize(), { store: 'calibrations' }).catch(() => 0);
  return ms;
}

// Continue: the same runner (or one restored from IndexedDB) goes on from the last token.
async function continueSession() {
  if (demo.state !== 'ready' || !session || !runner) return;
  if (session.last < 0 || runner.position >= model.info.context) {
    setState('ready', 'nothing to continue: the context is full', true);
    return;
  }
  stopRequested = false;
  const maxTokens = Math.max(1, Math.min(100000, Math.floor(Number($('tokens').value) || 1)));
  const temperature = Math.max(0, Number($('temperature').value) || 0);
  const run = { cache: session.spec, prompt: session.prompt, tokens: [], text: '', decodeTokensPerSecond: 0, prefillTokensPerSecond: 0,
    stats: null, stopped: false, continued: true };
  try {
    await runTokens(run, [session.last], maxTokens, temperature, 0);
  } catch (e) {
    run.error = String(e?.message ?? e);
    demo.runs.push(run);
    setState('ready', `failed: ${run.error}`, true);
  }
}

// Generates through `runner` from `input` (the prompt, or the last token when continuing), shows
// the text and the numbers as they change, then saves the session.
async function runTokens(run, input, maxTokens, temperature, calibrationMs) {
  const spec = session.spec;
  const tok = model.tokenizer;
  setState('generating', `generating with the ${spec} cache…`);
  $('tps').textContent = '–';
  $('prefill').textContent = '\u00a0';
  showStats(runner.stats(), model.info.context);
  await yieldToBrowser();

  // The text of the generated ids: bytes as UTF-8, or the tokenizer's decoding after what the
  // runner holds (the prompt and the earlier runs' tokens: context for the decoder's first-token rules).
  const decoder = new TextDecoder('utf-8');
  const stream = tok ? new TokenStream(tok, [...(session.promptIds ?? []), ...session.tokens]) : null;
  const endOfSequence = new Set(model.endOfSequence);
  const prompt = input;
  const tokens = runner.generate(input, { maxTokens, temperature, seed: 1 });
  const t0 = performance.now();
  let first = true, tDecode = 0, decoded = 0, sliceStart = performance.now();
  for (const token of tokens) {
    if (endOfSequence.has(token)) {
      session.last = token;  // yielded, not run: the next input if the user continues
      run.endOfSequence = true;
      break;
    }
    const now = performance.now();
    if (first) {
      run.prefillTokensPerSecond = prompt.length / ((now - t0) / 1000);
      if (!run.continued) $('prefill').textContent = `prefill ${run.prefillTokensPerSecond.toFixed(0)} tokens/s (${prompt.length} tokens)`;
      tDecode = now;
      first = false;
    } else {
      decoded++;
    }
    run.tokens.push(token);
    session.tokens.push(token);
    session.last = token;
    const piece = stream ? stream.push(token) : decoder.decode(new Uint8Array([token]), { stream: true });
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
  const tail = stream ? stream.flush() : decoder.decode();
  stream?.dispose();
  run.text += tail;
  session.text += run.text;
  $('out-text').textContent += tail;
  run.stats = runner.stats();
  showStats(run.stats, model.info.context);
  if (decoded === 0) $('tps').textContent = 'n/a (1 token)';
  const cal = calibrationMs ? `; calibrated in ${(calibrationMs / 1000).toFixed(1)} s on ${calibrationSource}`
    : demo.calibrationRestored && isTqkv(spec) ? `; ${calibrationSource}` : '';
  const saved = await saveSession();
  demo.runs.push(run);
  const why = run.endOfSequence ? ' (end of sequence)' : run.tokens.length < maxTokens && !run.stopped ? ' (the context is full)' : '';
  setState('ready', `${run.stopped ? 'stopped' : 'done'}: ${run.tokens.length} ${unit()} with the ${spec} cache${why}${cal}${saved}`);
}

// The session in IndexedDB: the runner's bytes (position + cache) and what the page shows.
async function saveSession() {
  try {
    const bytes = runner.serialize();
    const stats = runner.stats();
    const meta = { ...session, position: stats.position, fp16Bytes: stats.fp16Bytes, cacheBytes: stats.cacheBytes };
    await saveToIndexedDB(`${sessionKey()}:runner`, bytes, STORE);
    await saveToIndexedDB(`${sessionKey()}:meta`, new TextEncoder().encode(JSON.stringify(meta)), STORE);
    demo.saved = { spec: session.spec, position: stats.position, bytes: bytes.length, fp16Bytes: stats.fp16Bytes, tokens: session.tokens.length };
    showSaved(`saved in IndexedDB: ${mb(bytes.length)} for ${stats.position} tokens (an fp16 cache: ${mb(stats.fp16Bytes)})`);
    return `; session saved (${mb(bytes.length)})`;
  } catch (e) {  // kivi and the emulated tqkv path cannot be saved; or no IndexedDB
    demo.saved = null;
    showSaved(`not saved: ${e?.message ?? e}`);
    return '';
  }
}

function showSaved(text) {
  $('saved').textContent = text;
  $('forget').disabled = demo.state !== 'ready' || !demo.saved;
}

// After a reload: the saved session's runner, restored (its calibration from IndexedDB too).
async function restoreSession() {
  const [metaBytes, bytes] = await Promise.all([loadFromIndexedDB(`${sessionKey()}:meta`, STORE), loadFromIndexedDB(`${sessionKey()}:runner`, STORE)])
    .catch(() => [undefined, undefined]);
  if (!metaBytes || !bytes) return '';
  try {
    const meta = JSON.parse(new TextDecoder().decode(metaBytes));
    if (isTqkv(meta.spec)) await ensureCalibration(meta.prompt);
    const r = model.createRunner(meta.spec, { calibration: isTqkv(meta.spec) ? calibration : undefined });
    try {
      r.restore(bytes);
    } catch (e) {
      r.dispose();
      throw e;
    }
    runner = r;
    session = { spec: meta.spec, prompt: meta.prompt, promptIds: meta.promptIds ?? [], tokens: meta.tokens, text: meta.text, last: meta.last };
    $('cache').value = meta.spec;
    $('prompt').value = meta.prompt;
    $('out-prompt').textContent = meta.prompt;
    $('out-text').textContent = meta.text;
    const stats = runner.stats();
    showStats(stats, model.info.context);
    demo.restored = { spec: meta.spec, position: stats.position, bytes: bytes.length, fp16Bytes: stats.fp16Bytes, tokens: meta.tokens.length };
    demo.saved = demo.restored;
    showSaved(`restored from IndexedDB: ${mb(bytes.length)} for ${stats.position} tokens (an fp16 cache: ${mb(stats.fp16Bytes)})`);
    return ` Restored the saved ${meta.spec} session (${stats.position} tokens, ${mb(bytes.length)}): Continue goes on from there.`;
  } catch (e) {
    return ` (the saved session could not be restored: ${e?.message ?? e})`;
  }
}

async function forgetSession() {
  await removeFromIndexedDB(`${sessionKey()}:runner`, STORE).catch(() => {});
  await removeFromIndexedDB(`${sessionKey()}:meta`, STORE).catch(() => {});
  demo.saved = null;
  showSaved('nothing saved');
}

// Bytes for a byte-vocabulary model, tokens with a tokenizer.
const unit = () => (model?.tokenizer ? 'tokens' : 'bytes');

// 'tokenizer tokenizer.json (8192 ids, no BOS, stops at "<|endoftext|>" = 0)', or "byte vocabulary".
function describeTokenizer() {
  const tok = model.tokenizer;
  if (!tok) return model.info.vocab === 256 ? 'byte vocabulary (no tokenizer: the prompt is read as UTF-8 bytes)' : 'no tokenizer';
  // A SentencePiece control piece (<s>) decodes to nothing: then its id alone.
  const name = (id) => { const text = tok.decode([id]); return text ? `${JSON.stringify(text)} = ${id}` : `id ${id}`; };
  const file = tok.source ? decodeURIComponent(new URL(tok.source).pathname.split('/').pop()) : 'a tokenizer';
  const eos = model.endOfSequence;
  return `tokenizer ${file} (${tok.vocab} ids, ${tok.bos >= 0 ? `BOS ${name(tok.bos)}` : 'no BOS'}, ` +
    `${eos.length ? `stops at ${eos.map(name).join(', ')}` : 'no EOS'})`;
}

async function main() {
  try {
    // ?threads=N (default 'auto': every core up to 8 when the page is cross-origin isolated, as
    // `npm run demo` serves it; ?threads=1 for one thread).
    const threads = params.get('threads') === null || params.get('threads') === 'auto' ? 'auto' : Number(params.get('threads'));
    tqkv = await Tqkv.load({ ...(simdParam === null ? {} : { simd: simdParam !== '0' }), threads });
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
    const tok = model.tokenizer;
    demo.model = { ...i, loadMs, variant: tqkv.variant, matmul: tqkv.matmulKernel, memoryBytes: tqkv.memoryBytes, threads: tqkv.threads,
      tokenizer: tok ? { source: tok.source, vocab: tok.vocab, bos: tok.bos, eos: tok.eos, endOfSequence: model.endOfSequence } : null };
    $('model-line').textContent =
      `Model ${modelUrl.pathname}: Llama, ${(i.parameters / 1e6).toFixed(1)} M parameters, ${i.layers} layers, ` +
      `${i.heads} query / ${i.kvHeads} KV heads of ${i.headDim}, context ${i.context}, ${describeTokenizer()}. ` +
      `WebAssembly ${({ relaxed: 'relaxed SIMD', simd128: 'SIMD128', scalar: 'scalar' })[tqkv.variant]} (matmul ${tqkv.matmulKernel}, attention ${tqkv.kernel}), ` +
      `${tqkv.threads === 1 ? '1 thread' : `${tqkv.threads} threads`}.`;
    if (!tok && i.vocab !== 256)
      throw new Error(`the model has ${i.vocab} token ids but no tokenizer.json nor tokenizer.model beside config.json ` +
        '(without a tokenizer only a byte-vocabulary model, vocab_size 256, can read text)');
    $('tokens-label').textContent = tok ? 'Tokens' : 'Bytes';
    showStats({ position: 0, cacheBytes: 0, fp16Bytes: 0, bitsPerCoord: 0 }, i.context);
    const restored = await restoreSession();
    setState('ready', `ready: model loaded in ${(loadMs / 1000).toFixed(1)} s (wasm memory ${mb(tqkv.memoryBytes)}). Type a prompt, pick a cache, Generate.${restored}`);
  } catch (e) {
    demo.error = String(e?.message ?? e);
    setState('error', `cannot load the model from ${modelUrl.href}: ${demo.error}. Serve a model directory ` +
      '(config.json + model.safetensors, or model.safetensors.index.json + its shards) there: ' +
      '`node web/demo/serve.mjs --model DIR`.', true);
  }
}

$('generate').addEventListener('click', (e) => { e.preventDefault(); generate(); });
$('stop').addEventListener('click', (e) => { e.preventDefault(); stopRequested = true; });
$('continue').addEventListener('click', (e) => { e.preventDefault(); continueSession(); });
$('forget').addEventListener('click', (e) => { e.preventDefault(); forgetSession(); });
$('prompt').addEventListener('keydown', (e) => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) generate(); });
main();
