// Tokenizer: a Hugging Face tokenizer.json (byte-level BPE as GPT-2 / Llama 3 / Qwen2 / SmolLM,
// SentencePiece-style BPE with byte fallback as Llama 2 / Mistral / TinyLlama) or a SentencePiece
// tokenizer.model (BPE and unigram models), run by the same C++ as the native tools
// (lib/src/model/tokenizer.cpp and sentencepiece.cpp, through tqkv_tokenizer_* of the C ABI).
import { FetchError, readUrl, toUrl } from './platform.js';
import { disposedError, Status } from './errors.js';
import { asInt } from './input.js';
import type { Tqkv } from './tqkv.js';

const encoder = /* @__PURE__ */ new TextEncoder();
const decoder = /* @__PURE__ */ new TextDecoder();

export class Tokenizer {
  /** @internal */ handle: number;
  readonly tqkv: Tqkv;
  /** Number of token ids (added tokens included). */
  readonly vocab: number;
  /** Beginning / end of sequence ids as tokenizer.json and tokenizer_config.json say (-1: none). */
  readonly bos: number;
  readonly eos: number;
  /** The file it was read from (fetchTokenizer: the URL of tokenizer.json or tokenizer.model; undefined
   *  for loadTokenizer). */
  source: string | undefined;

  /** @internal */
  constructor(t: Tqkv, handle: number) {
    this.tqkv = t;
    this.handle = handle;
    const p = t.slot;
    t.check(t._x.tqkv_tokenizer_get_info(handle, p, p + 4, p + 8));
    const d = t.view();
    this.vocab = d.getInt32(p, true);
    this.bos = d.getInt32(p + 4, true);
    this.eos = d.getInt32(p + 8, true);
  }

  /** @internal */
  h(): number {
    if (!this.handle) throw disposedError('tokenizer');
    return this.handle;
  }

  /** Token ids of text (special tokens written in it are recognized); special: add BOS/EOS. */
  encode(text: string, options: { special?: boolean } = {}): Int32Array {
    const t = this.tqkv;
    const h = this.h();
    const bytes = encoder.encode(text);
    // Usually fewer ids than bytes (plus BOS/EOS and a prepended marker); more only when spaces or
    // characters are spelled byte by byte (then the call says how many, and it runs again).
    let capacity = bytes.length + 8;
    for (;;) {
      const p = t.scratchPtr(bytes.length + 4 * capacity + 32);
      const ids = (p + bytes.length + 15) & ~15;
      t.bytes().set(bytes, p);
      const status = t._x.tqkv_tokenizer_encode(h, p, bytes.length, options.special ? 1 : 0, ids, capacity, t.slot);
      const n = t.u32(t.slot);
      if (status === 0) return new Int32Array(t.bytes().slice(ids, ids + 4 * n).buffer); // a copy, never a view of the (maybe shared) memory
      if (n > capacity) {
        capacity = n;  // TQKV_ERR_CAPACITY: the count it needs
        continue;
      }
      t.check(status);
    }
  }

  /** Text of token ids (special tokens as their text; invalid UTF-8 becomes U+FFFD). */
  decode(ids: ArrayLike<number>): string {
    const t = this.tqkv;
    const h = this.h();
    let capacity = 16 * ids.length + 64;
    for (;;) {
      const p = t.scratchPtr(4 * ids.length + capacity + 32);
      new Int32Array(t.bytes().buffer, p, ids.length).set(ids);
      const out = p + 4 * ids.length;
      const status = t._x.tqkv_tokenizer_decode(h, p, ids.length, out, capacity, t.slot);
      const n = t.u32(t.slot);
      if (status === 0) return decoder.decode(t.bytes().slice(out, out + n)); // a copy: TextDecoder refuses views of a shared memory
      if (n > capacity) {
        capacity = n;  // TQKV_ERR_CAPACITY: the length it needs
        continue;
      }
      t.check(status);
    }
  }

  get disposed(): boolean {
    return this.handle === 0;
  }

  /** Frees the tokenizer; later calls throw. */
  dispose(): void {
    if (!this.handle) return;
    const h = this.handle;
    this.handle = 0;
    this.tqkv.check(this.tqkv._x.tqkv_tokenizer_destroy(h));
  }
}

/**
 * The text of generated ids as they come, for display: push(id) returns the text the id adds,
 * holding back a character whose other bytes are in the next ids (a byte-level or byte-fallback
 * token can end in the middle of one), so no replacement character appears mid-stream; flush()
 * returns what is held back at the end.
 *
 *   using stream = new TokenStream(model.tokenizer, promptIds);   // or stream.dispose() when done
 *   for (const id of runner.generate(promptIds)) out += stream.push(id);
 *   out += stream.flush();
 *
 * It is the native library's tqkv::TokenStream (tqkv_token_stream_* of the C ABI), so the text is
 * tqkv-run's: together, the pushes and the flush are decode(context + ids) without the context's
 * text, and each push decodes a few ids, not the whole list. context: the ids before the generated
 * ones (the prompt); its last few are decoded with them, so that a decoder's rule for the first
 * token of a text (SentencePiece drops its leading space) does not eat the space before the first
 * generated word. The stream keeps its tokenizer's wasm object alive until it is disposed.
 */
export class TokenStream {
  readonly tokenizer: Tokenizer;
  private handle: number;
  // UTF-8 bytes to text; the C++ stream returns whole characters (invalid bytes become U+FFFD).
  private readonly utf8 = new TextDecoder();

  constructor(tokenizer: Tokenizer, context: ArrayLike<number> = []) {
    const t = tokenizer.tqkv;
    const h = tokenizer.h();
    const n = context.length;
    const p = t.scratchPtr(4 * n + 16);
    const ids = new Int32Array(t.bytes().buffer, p, n);
    for (let i = 0; i < n; i++) ids[i] = asInt(context[i], `context[${i}]`);
    t.check(t._x.tqkv_token_stream_create(h, p, n, t.slot));
    this.tokenizer = tokenizer;
    this.handle = t.u32(t.slot);
    t._modelFinalizer?.register(this, { destroy: t._x.tqkv_token_stream_destroy, h: this.handle }, this);
  }

  /** The text that id adds ('' while a character is incomplete). */
  push(id: number): string {
    return this.take(asInt(id, 'id'));
  }

  /** What is held back, as text (an incomplete character becomes U+FFFD). */
  flush(): string {
    return this.take(undefined);
  }

  get disposed(): boolean {
    return this.handle === 0;
  }

  /** Frees the stream's wasm object; later calls throw, a second dispose does nothing. */
  dispose(): void {
    if (!this.handle) return;
    const h = this.handle;
    const t = this.tokenizer.tqkv;
    this.handle = 0;
    t._modelFinalizer?.unregister(this);
    t.check(t._x.tqkv_token_stream_destroy(h));
  }

  /** dispose(), for `using`. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  // push(id), or flush() when id is undefined; a text longer than the buffer: again with its length.
  private take(id: number | undefined): string {
    if (!this.handle) throw disposedError('token stream');
    const t = this.tokenizer.tqkv;
    let capacity = 256;
    for (;;) {
      const p = t.scratchPtr(capacity);
      const status = id === undefined
        ? t._x.tqkv_token_stream_flush(this.handle, p, capacity, t.slot)
        : t._x.tqkv_token_stream_push(this.handle, id, p, capacity, t.slot);
      const n = t.u32(t.slot);
      if (status === 0) return this.utf8.decode(t.bytes().slice(p, p + n), { stream: id !== undefined }); // a copy (shared memory)
      if (status === Status.CAPACITY && n > capacity) {
        capacity = n;  // nothing changed: the same call with room for its text
        continue;
      }
      t.check(status);
    }
  }
}

/** @internal Tqkv.loadTokenizer. */
// tokenizer: tokenizer.json (text or bytes) or tokenizer.model (bytes); the C ABI tells them apart.
export function loadTokenizerFrom(t: Tqkv, tokenizer: string | Uint8Array, config?: string | Uint8Array): Tokenizer {
  if (!t._x.tqkv_tokenizer_load) throw new Error('tqkv: this .wasm build has no tokenizer');
  const j = typeof tokenizer === 'string' ? encoder.encode(tokenizer) : tokenizer;
  const c = config === undefined ? undefined : typeof config === 'string' ? encoder.encode(config) : config;
  const pj = t.mallocCopy(j, 'tokenizer');
  const pc = c ? t.mallocCopy(c, 'tokenizer_config.json') : 0;
  try {
    t.check(t._x.tqkv_tokenizer_load(pj, j.length, pc, c ? c.length : 0, t.slot));
  } finally {
    t._x.free(pj);
    if (pc) t._x.free(pc);
  }
  return new Tokenizer(t, t.u32(t.slot));
}

// Absent: HTTP 404, or no such file on disk.
function isMissing(e: unknown): boolean {
  return (e instanceof FetchError && e.status === 404) || (e as { code?: string })?.code === 'ENOENT';
}

/**
 * @internal Tqkv.fetchTokenizer: `url`tokenizer.json, else `url`tokenizer.model (as the native
 * tools prefer them), and, when present, `url`tokenizer_config.json. When neither exists, the
 * error is tokenizer.json's (a 404 / ENOENT, which fetchModel takes as "no tokenizer").
 */
export async function fetchTokenizer(t: Tqkv, url: string | URL, signal?: AbortSignal): Promise<Tokenizer> {
  let base = toUrl(url);
  if (!base.pathname.endsWith('/')) base = new URL(base.href + '/');
  let tokenizer: Uint8Array;
  let source = 'tokenizer.json';
  try {
    tokenizer = await readUrl(new URL('tokenizer.json', base), signal);
  } catch (e) {
    if (!isMissing(e)) throw e;
    try {
      source = 'tokenizer.model';
      tokenizer = await readUrl(new URL('tokenizer.model', base), signal);
    } catch (e2) {
      if (!isMissing(e2)) throw e2;
      throw e;
    }
  }
  let config: Uint8Array | undefined;
  try {
    config = await readUrl(new URL('tokenizer_config.json', base), signal);
  } catch (e) {
    if (!isMissing(e)) throw e;  // optional file
  }
  const tok = loadTokenizerFrom(t, tokenizer, config);
  tok.source = new URL(source, base).href;
  return tok;
}
