// Writes the seed corpora of the fuzz targets: valid serialized caches of several configurations
// and valid .npy files, so the fuzzers start from deep inside the parsers. Generated at build /
// test time, never committed.
#include <filesystem>
#include <fstream>
#include <string>

#include "tqkv/tqkv.hpp"

namespace fs = std::filesystem;

static void write(const fs::path& p, const std::vector<uint8_t>& b) {
    std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

int main(int argc, char** argv) {
    if (argc != 2) return 2;
    const fs::path root = argv[1];
    fs::create_directories(root / "cache");
    fs::create_directories(root / "npy");
    fs::create_directories(root / "kernels");
    tqkv::Rng rng(1);
    int i = 0;
    for (auto [heads, kv, dim, kb, vb, window, prod] :
         {std::tuple{2, 1, 16, 4.0, 4.0, 0, false}, {4, 2, 32, 3.0, 2.0, 3, true}, {1, 1, 8, 2.0, 1.0, 2, false},
          {2, 2, 64, 4.5, 3.0, 0, false}}) {
        tqkv::CacheConfig c;
        c.heads = heads;
        c.kv_heads = kv;
        c.head_dim = dim;
        c.key_bits = kb;
        c.value_bits = vb;
        c.window = window;
        c.block_tokens = 32;
        c.key_method = prod ? tqkv::Method::Prod : tqkv::Method::Mse;
        if (kb != int(kb)) {
            c.key_high_channels.clear();
            for (int j = 0; j < int((kb - int(kb)) * dim + 0.5); ++j) c.key_high_channels.push_back(j);
        }
        tqkv::KVCache cache(c);
        std::vector<float> k(size_t(kv) * dim * 40), v(k.size());
        for (auto& x : k) x = float(rng.normal());
        for (auto& x : v) x = float(rng.normal());
        cache.append(k, v);
        write(root / "cache" / ("seed" + std::to_string(i++)), cache.save());
        tqkv::ModelKVCache model(2, c);
        model.append(0, std::span(k).first(size_t(kv) * dim * 5), std::span(v).first(size_t(kv) * dim * 5));
        model.append(1, std::span(k).first(size_t(kv) * dim * 3), std::span(v).first(size_t(kv) * dim * 3));
        write(root / "cache" / ("seed" + std::to_string(i++)), model.save());
    }
    std::vector<float> x(2 * 3 * 8);
    for (auto& f : x) f = float(rng.normal());
    write(root / "npy" / "f32", tqkv::make_npy({2, 3, 8}, x.data()));
    write(root / "npy" / "f16", tqkv::make_npy({6, 8}, x.data(), true));
    write(root / "npy" / "v1d", tqkv::make_npy({48}, x.data()));
    std::vector<uint8_t> k(300);
    for (auto& b : k) b = uint8_t(rng.next());
    write(root / "kernels" / "random", k);
    return 0;
}
