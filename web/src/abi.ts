// The wasm modules' exports (the C ABI of lib/include/tqkv/tqkv.h, plus malloc/free) and the
// wasm32 layout of the structs the bindings fill by offset (static_asserts in c_api.cpp).

/** @internal */
export interface Exports {
  memory: WebAssembly.Memory;
  _initialize(): void;
  malloc(n: number): number;
  free(p: number): void;
  tqkv_last_error(): number;
  tqkv_abi_version(): number;
  tqkv_default_kernel(): number;
  tqkv_set_threads(threads: number): number;
  tqkv_get_threads(): number;
  tqkv_worker_threads(): number;
  tqkv_cache_config_init(cfg: number): number;
  tqkv_cache_config_size(): number;
  tqkv_cache_create(cfg: number, out: number): number;
  tqkv_cache_destroy(h: number): number;
  tqkv_cache_append(h: number, layer: number, k: number, nk: number, v: number, nv: number): number;
  tqkv_cache_attend(h: number, layer: number, q: number, nq: number, o: number, no: number, causal: number): number;
  tqkv_cache_truncate(h: number, n: number): number;
  tqkv_cache_clear(h: number): number;
  tqkv_cache_tokens(h: number, layer: number, out: number): number;
  tqkv_cache_bytes_used(h: number, out: number): number;
  tqkv_cache_get_config(h: number, cfg: number): number;
  tqkv_cache_kernel(h: number): number;
  tqkv_cache_set_precision(h: number, precision: number): number;
  tqkv_cache_set_attention_window(h: number, window: number): number;
  tqkv_cache_release_chunk_rows(h: number, layer: number): number;
  tqkv_cache_save(h: number, buf: number, cap: number, size: number): number;
  tqkv_cache_load(bytes: number, n: number, kernel: number, out: number): number;
  tqkv_codec_config_init(cfg: number): number;
  tqkv_codec_config_size(): number;
  tqkv_codec_create(cfg: number, out: number): number;
  tqkv_codec_destroy(h: number): number;
  tqkv_codec_bytes_per_vector(h: number, out: number): number;
  tqkv_codec_encode(h: number, x: number, nx: number, out: number, nout: number): number;
  tqkv_codec_decode(h: number, c: number, nc: number, out: number, nout: number): number;
  tqkv_codec_dot(h: number, q: number, nq: number, c: number, nc: number, s: number, ns: number): number;
  tqkv_dense_attention_f32(heads: number, kvHeads: number, dim: number, tokens: number, q: number, nq: number,
                           k: number, v: number, nkv: number, o: number, no: number): number;
  tqkv_model_load(cfg: number, ncfg: number, st: number, nst: number, out: number): number;
  tqkv_model_load_shards(cfg: number, ncfg: number, index: number, nindex: number, n: number, names: number,
                         shards: number, sizes: number, out: number): number;
  tqkv_model_destroy(h: number): number;
  tqkv_model_get_info(h: number, info: number): number;
  tqkv_model_end_of_sequence(h: number, tok: number, ids: number, capacity: number, nIds: number): number;
  tqkv_matmul_kernel(): number;
  tqkv_calibration_create(model: number, tokens: number, n: number, out: number): number;
  tqkv_calibration_destroy(h: number): number;
  tqkv_runner_create(model: number, spec: number, cal: number, maxChunk: number, out: number): number;
  tqkv_runner_destroy(h: number): number;
  tqkv_runner_prefill(h: number, tokens: number, n: number, logits: number, nLogits: number, next: number): number;
  tqkv_runner_decode(h: number, token: number, logits: number, nLogits: number, next: number): number;
  tqkv_runner_reset(h: number): number;
  tqkv_runner_get_stats(h: number, stats: number): number;
  tqkv_runner_nll(h: number, tokens: number, n: number, ctx: number, nll: number, scored: number): number;
  tqkv_runner_save(h: number, buf: number, cap: number, size: number): number;
  tqkv_runner_load(h: number, bytes: number, n: number): number;
  // calibrations and caches from specs
  tqkv_calibration_new(layers: number, kvHeads: number, dim: number, out: number): number;
  tqkv_calibration_add(h: number, layer: number, k: number, nk: number, v: number, nv: number): number;
  tqkv_calibration_add_queries(h: number, layer: number, heads: number, q: number, nq: number): number;
  tqkv_calibration_get_info(h: number, layers: number, kvHeads: number, dim: number, minTokens: number): number;
  tqkv_calibration_save(h: number, buf: number, cap: number, size: number): number;
  tqkv_calibration_load(bytes: number, n: number, out: number): number;
  tqkv_cache_create_spec(spec: number, base: number, cal: number, out: number): number;
  tqkv_cache_spec_grammar(): number;
  tqkv_preset_count(): number;
  tqkv_preset_name(i: number): number;
  tqkv_preset_spec(i: number): number;
  tqkv_preset_summary(i: number): number;
  // input formats and attention statistics (tqkv.h, the block at the end)
  tqkv_cache_append_ex(h: number, layer: number, k: number, nk: number, v: number, nv: number, dtype: number, layout: number): number;
  tqkv_cache_attend_ex(h: number, layer: number, q: number, nq: number, o: number, no: number, causal: number, layout: number): number;
  tqkv_cache_attend_stats(h: number, layer: number, q: number, nq: number, layout: number, acc: number, nAcc: number,
                          max: number, nMax: number, sum: number, nSum: number): number;
  tqkv_codec_dot_many(h: number, q: number, nq: number, c: number, nc: number, s: number, ns: number): number;
  tqkv_tokenizer_load(json: number, njson: number, cfg: number, ncfg: number, out: number): number;
  tqkv_tokenizer_destroy(h: number): number;
  tqkv_tokenizer_encode(h: number, text: number, n: number, special: number, ids: number, cap: number, nOut: number): number;
  tqkv_tokenizer_decode(h: number, ids: number, n: number, text: number, cap: number, nOut: number): number;
  tqkv_tokenizer_get_info(h: number, vocab: number, bos: number, eos: number): number;
  tqkv_token_stream_create(tok: number, context: number, n: number, out: number): number;
  tqkv_token_stream_destroy(h: number): number;
  tqkv_token_stream_push(h: number, id: number, text: number, cap: number, nOut: number): number;
  tqkv_token_stream_flush(h: number, text: number, cap: number, nOut: number): number;
}

/** @internal TQKV_ABI_VERSION the bindings were written for. */
export const ABI_VERSION = 1;
/** @internal sizeof(tqkv_cache_config) / sizeof(tqkv_codec_config) on wasm32. */
export const CACHE_CFG_SIZE = 96;
export const CODEC_CFG_SIZE = 48;
/** @internal tqkv_model_info / tqkv_runner_stats (48 bytes each, offsets fixed in tqkv.h). */
export const MODEL_INFO_SIZE = 48;
export const RUNNER_STATS_SIZE = 48;
