// tqkv-bench: quality and speed of the tqkv codecs, measured against baselines in the same run.
#include <cstring>
#include <exception>
#include <iostream>
#include <string>

#include "commands.hpp"

static void usage() {
    std::cerr << "usage: tqkv-bench <command> [options]\n"
                 "  report   [--data DIR] [--json FILE] [--markdown FILE] [--tokens N] [--queries 64]\n"
                 "           fidelity, memory and speed of tqkv (also the calibrated presets, tqkv-cal) and the\n"
                 "           baselines (q4_0, q8_0, with llama.cpp's rotation -rot and random signs -rots, KIVI,\n"
                 "           PolarQuant, TurboQuant+ turbo3/4, fp16) on built-in synthetic data or a KV dump\n"
                 "           (keys/values/queries.npy)\n"
                 "  quality  --dim 128 --bits 1,2,3,4 --method mse,prod,qjl --vectors 100000 [--seed N] [--json]\n"
                 "           distortion and inner-product fidelity of the codecs on random unit vectors\n"
                 "  encode   --dim 128 --bits 4 [--method mse] [--vectors 200000] [--json]\n"
                 "           encode/decode throughput of the best kernel vs the scalar kernel, one core\n"
                 "  attend   --heads 4 --kv-heads 4 --dim 128 --tokens 1024,4096,16384,65536,131072 --key-bits 4\n"
                 "           --value-bits 4 [--key-method mse|prod] [--window 0] [--precision exact|fast] [--threads 1,2] [--skip EPS] [--json]\n"
                 "           fused attention over the compressed cache vs dense fp32/fp16 attention, per thread count;\n"
                 "           --data DIR|synthetic [--queries 256]: skipped values on a KV dump's queries or the built-in\n"
                 "           structured data (share skipped, output change)\n"
                 "  ppl      --model DIR [--bytes 4096] [--config K4V3,q4_0,...] [--frontier] [--json] [--ctx N]\n"
                 "           [--offset 0] [--calib-bytes 8192] [--prefill sequential|chunked|both] [--threads 1]\n"
                 "           [--tokenizer FILE] [--tokens IDS.npy] [--skip EPS]\n"
                 "           a Llama model over held-out text (DIR/eval.txt, through DIR's tokenizer.json /\n"
                 "           tokenizer.model, bytes for a byte vocabulary; or the token ids of --tokens) with each\n"
                 "           KV-cache configuration: NLL per byte (and per token) vs the exact cache, argmax agreement,\n"
                 "           bytes per token, verdicts against each baseline; --frontier: the fewest bits per\n"
                 "           coordinate within ΔNLL 0.5/1/3% per method; --config takes specs and presets; --prefill: prefill chunks attend token by token (default) or as one causal batch\n"
                 "           (--chunked = --prefill chunked)\n"
                 "  decode   --model DIR [--context 1024] [--steps 64] [--repeats 3] [--config fp32,K3V3-w16,...] [--json]\n"
                 "           [--threads 1] [--skip EPS]\n"
                 "           tokens/s of token-by-token decode ending at the context length, per cache (the caches\n"
                 "           take turns token by token), and the paired speed-up against the fp32 cache\n"
                 "  budget   --model DIR [--budget-mb X] [--policies tiered,h2o,snapkv,streaming,...] [--json]\n"
                 "           [--bytes 4096] [--trials 4] [--depths 0.1,...] [--format repl|repl-digits|word|digits] [--threads 1]\n"
                 "           a KV cache under a byte budget (default 1/6 of the fp16 cache at the model's context):\n"
                 "           ΔNLL, passkey retrieval and speed of tqkv's tiered cache and H2O/SnapKV/StreamingLLM\n"
                 "  logits   --model DIR --tokens IDS.npy --out LOGITS.npy [--cache SPEC] [--json]\n"
                 "           fp32 logits [T, vocab] of one forward pass over int32/int64 token ids [T] (exact cache\n"
                 "           unless --cache), to compare with transformers on the same checkpoint\n"
                 "  tokenize --tokenizer FILE|DIR [--special] [--bench]\n"
                 "           UTF-8 text on stdin -> one JSON line {\"ids\": [...], \"decoded\": \"...\"} (BOS/EOS only with\n"
                 "           --special); --bench: encode throughput (MB/s, one core) and round trip instead\n";
}

int main(int argc, char** argv) {
    if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
        usage();
        return argc < 2 ? 2 : 0;
    }
    try {
        const bench::Args args(argc, argv, 2);
        const std::string cmd = argv[1];
        if (cmd == "quality") return bench::cmd_quality(args);
        if (cmd == "encode") return bench::cmd_encode(args);
        if (cmd == "attend") return bench::cmd_attend(args);
        if (cmd == "report") return bench::cmd_report(args);
        if (cmd == "ppl") return bench::cmd_ppl(args);
        if (cmd == "decode") return bench::cmd_decode(args);
        if (cmd == "budget") return bench::cmd_budget(args);
        if (cmd == "logits") return bench::cmd_logits(args);
        if (cmd == "tokenize") return bench::cmd_tokenize(args);
        std::cerr << "tqkv-bench: unknown command '" << cmd << "'\n";
        usage();
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "tqkv-bench: " << e.what() << "\n";
        return 1;
    }
}
