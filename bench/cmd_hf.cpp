// tqkv-bench logits / tokenize: the runner's and the tokenizer's raw outputs, for checking them
// against other implementations (Hugging Face transformers and tokenizers) on the same inputs.
#include <ctime>
#include <fstream>
#include <iostream>
#include <iterator>

#include "commands.hpp"
#include "tqkv/kvdump.hpp"
#include "tqkv/model.hpp"
#include "tqkv/tokenizer.hpp"

namespace bench {

// logits --model DIR --tokens IDS.npy --out LOGITS.npy [--cache SPEC]: fp32 logits [T, vocab] of
// one forward pass over the int32 (or int64) token ids [T], exact cache unless --cache.
int cmd_logits(const Args& args) {
    args.allow({"model", "tokens", "out", "cache", "json"});
    const std::string dir = args.get("model", ""), ids_path = args.get("tokens", ""), out = args.get("out", "");
    if (dir.empty() || ids_path.empty() || out.empty())
        throw std::invalid_argument("logits: --model DIR --tokens IDS.npy --out LOGITS.npy are required");
    const tqkv::LlamaModel model = tqkv::LlamaModel::load(dir);
    const size_t V = size_t(model.config().vocab_size);
    const tqkv::NpyArray ids = tqkv::load_npy(ids_path);
    if (ids.dtype != "<i4" && ids.dtype != "<i8")
        throw std::invalid_argument("logits: " + ids_path + " holds " + ids.dtype + "; token ids must be int32 or int64");
    if (ids.shape.size() != 1 && !(ids.shape.size() == 2 && ids.shape[0] == 1))
        throw std::invalid_argument("logits: " + ids_path + " must have shape [T] (or [1, T])");
    std::vector<int32_t> tokens;
    for (float x : ids.data) {
        if (x < 0 || size_t(x) >= V)
            throw std::invalid_argument("logits: token id " + std::to_string(int64_t(x)) + " outside the vocabulary of " +
                                        std::to_string(V));
        tokens.push_back(int32_t(x));
    }
    if (tokens.empty()) throw std::invalid_argument("logits: no token ids in " + ids_path);
    const std::string spec = args.get("cache", "fp32");
    auto cache = tqkv::make_cache(spec, tqkv::CacheShape::of(model.config()));
    cache->reserve(tokens.size());
    tqkv::LlamaRunner run(model, *cache);
    std::vector<float> logits(tokens.size() * V);
    const double t0 = now();
    run.prefill(tokens, logits);
    const double seconds = now() - t0;
    const auto bytes = tqkv::make_npy({tokens.size(), V}, logits.data());
    std::ofstream f(out, std::ios::binary);
    if (!f || !f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size())))
        throw std::invalid_argument("logits: cannot write " + out);
    Json j;
    j.add("tokens", tokens.size()).add("vocab", V).add("cache", cache->name()).add("seconds", seconds).add("out", out);
    if (args.flag("json")) std::cout << j.str() << "\n";
    else std::cerr << "wrote " << out << ": logits [" << tokens.size() << ", " << V << "] (" << cache->name() << " cache, "
                   << seconds << " s)\n";
    return 0;
}

// tokenize --tokenizer FILE|DIR [--special]: UTF-8 text on stdin -> {"ids": [...], "decoded": "..."}.
int cmd_tokenize(const Args& args) {
    args.allow({"tokenizer", "special", "bench"});
    const std::string path = args.get("tokenizer", "");
    if (path.empty()) throw std::invalid_argument("tokenize: --tokenizer FILE (tokenizer.json, tokenizer.model or a directory)");
    const tqkv::Tokenizer tok = tqkv::Tokenizer::load(path);
    const std::string text((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    const double t0 = now();
    const std::clock_t c0 = std::clock();
    const std::vector<int32_t> ids = tok.encode(text, args.flag("special"));
    const double encode_s = now() - t0, encode_cpu_s = double(std::clock() - c0) / CLOCKS_PER_SEC;
    const std::string decoded = tok.decode(ids);
    if (args.flag("bench")) {
        // Throughput instead of the ids: one core, the whole input in one encode() call.
        Json j;
        j.add("bytes", text.size()).add("tokens", ids.size()).add("encode_s", encode_s)
            .add("encode_mb_per_s", double(text.size()) / encode_s / 1e6).add("encode_cpu_s", encode_cpu_s)
            .add("encode_mb_per_cpu_s", double(text.size()) / encode_cpu_s / 1e6).add("round_trip", decoded == text)
            .add("kind", tok.kind());
        std::cout << j.str() << "\n";
        return 0;
    }
    std::string line = "{\"ids\": [";
    for (size_t i = 0; i < ids.size(); ++i) line += (i ? ", " : "") + std::to_string(ids[i]);
    line += "], \"decoded\": \"" + json_escape(decoded) + "\"}\n";
    std::cout << line;
    return 0;
}

}  // namespace bench
