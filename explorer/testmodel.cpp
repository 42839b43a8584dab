// tqkv-explorer-testmodel DIR: writes a small random-weight checkpoint (the tests' tiny Llama of
// tests/tiny_model.hpp: 2 layers, d 32, byte vocabulary; context 512) as config.json +
// model.safetensors, with an eval.txt, so explorer/test.sh can run the Model panel end to end
// where the real models are absent. Its text is nonsense; the panel's mechanics are what is tested.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "tiny_model.hpp"

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: tqkv-explorer-testmodel DIR\n");
        return 2;
    }
    const std::filesystem::path dir = argv[1];
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    const std::vector<uint8_t> st = tqkv_test::make_safetensors(tqkv_test::tiny_tensors(7));
    // Deterministic text with some structure: dictionary-style lines from a few words.
    static const char* words[] = {"cache", "key", "value", "token", "layer", "bits", "attention", "memory", "model", "text"};
    std::string text;
    tqkv::Rng rng(11);
    while (text.size() < 6144) {
        text += words[rng.next() % 10];
        text += ": ";
        for (int i = 0; i < 6; ++i) text += std::string(words[rng.next() % 10]) + (i < 5 ? " " : "\n");
    }
    // Context 512 instead of 256 (the weights do not depend on it): auto budgets count the exact
    // window over the context, and at 256 a 16-token window leaves auto-3.5 few bits at d 32; still
    // shorter than the 1024 bytes the panel scores, so the text is scored in two segments.
    std::string config = tqkv_test::kTinyConfig;
    const std::string ctx256 = "\"max_position_embeddings\": 256";
    if (const auto at = config.find(ctx256); at != std::string::npos)
        config.replace(at, ctx256.size(), "\"max_position_embeddings\": 512");
    std::ofstream(dir / "config.json", std::ios::binary) << config;
    std::ofstream(dir / "model.safetensors", std::ios::binary).write(reinterpret_cast<const char*>(st.data()), long(st.size()));
    std::ofstream(dir / "eval.txt", std::ios::binary) << text;
    if (!std::filesystem::exists(dir / "eval.txt")) {
        std::fprintf(stderr, "tqkv-explorer-testmodel: cannot write into %s\n", argv[1]);
        return 1;
    }
    std::printf("tqkv-explorer-testmodel: wrote %s (config.json, model.safetensors %zu bytes, eval.txt %zu bytes)\n", argv[1],
                st.size(), text.size());
    return 0;
}
