#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "test_util.hpp"
#include "tqkv/tqkv.hpp"

using namespace tqkv;

namespace {

std::vector<uint8_t> with_header(const std::string& dict, size_t data_bytes, int version = 1) {
    std::string h = dict;
    const size_t pre = version == 1 ? 10 : 12;
    while ((pre + h.size() + 1) % 64) h += ' ';
    h += '\n';
    std::vector<uint8_t> b = {0x93, 'N', 'U', 'M', 'P', 'Y', uint8_t(version), 0};
    b.push_back(uint8_t(h.size()));
    b.push_back(uint8_t(h.size() >> 8));
    if (version != 1) b.push_back(0), b.push_back(0);
    b.insert(b.end(), h.begin(), h.end());
    b.resize(b.size() + data_bytes, 0);
    return b;
}

std::string data_dir() {
    if (const char* env = std::getenv("TQKV_DATA")) return env;
    return TQKV_SHARED_DATA "/tq-ref-128/kv";
}

}  // namespace

TEST_CASE("npy: the reference writer round-trips float32 and float16", "[npy]") {
    const auto x = tqkv_test::gaussian_vectors(6, 20, 1);
    const auto a = parse_npy(make_npy({2, 3, 20}, x.data()));
    CHECK(a.shape == std::vector<size_t>{2, 3, 20});
    CHECK(a.dtype == "<f4");
    CHECK(a.data == x);
    const auto h = parse_npy(make_npy({120}, x.data(), true));
    CHECK(h.dtype == "<f2");
    for (size_t i = 0; i < x.size(); ++i) CHECK(h.data[i] == half_to_float(float_to_half(x[i])));
    // Versions 2.0 / 3.0 use a 4-byte header length.
    auto v2 = with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }", 16, 2);
    CHECK(parse_npy(v2).shape == std::vector<size_t>{2, 2});
    // A scalar-shaped 1-D array written by numpy: shape (5,).
    CHECK(parse_npy(with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }", 20)).data.size() == 5);
}

TEST_CASE("npy: malformed files give clear errors", "[npy]") {
    const std::string ok = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
    CHECK_NOTHROW(parse_npy(with_header(ok, 24)));
    auto bad_magic = with_header(ok, 24);
    bad_magic[1] = 'X';
    CHECK_THROWS_WITH(parse_npy(bad_magic), Catch::Contains("magic"));
    CHECK_THROWS_WITH(parse_npy(with_header(ok, 23)), Catch::Contains("needs 24"));       // truncated data
    CHECK_THROWS_WITH(parse_npy(with_header(ok, 25)), Catch::Contains("needs 24"));       // trailing bytes
    auto cut = with_header(ok, 24);
    cut.resize(30);
    CHECK_THROWS_WITH(parse_npy(cut), Catch::Contains("truncated"));                      // truncated header
    CHECK_THROWS_WITH(parse_npy(with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }", 48)),
                      Catch::Contains("dtype <f8"));
    CHECK_THROWS_WITH(parse_npy(with_header("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", 24)),
                      Catch::Contains("dtype >f4"));
    CHECK_THROWS_WITH(parse_npy(with_header("{'descr': '<u2', 'fortran_order': False, 'shape': (2, 3), }", 12)),
                      Catch::Contains("dtype <u2"));
    CHECK_THROWS_WITH(parse_npy(with_header("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", 24)),
                      Catch::Contains("Fortran"));
    CHECK_THROWS_WITH(parse_npy(with_header("{'fortran_order': False, 'shape': (2, 3), }", 24)), Catch::Contains("descr"));
    CHECK_THROWS_WITH(parse_npy(with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, x), }", 24)),
                      Catch::Contains("shape"));
    CHECK_THROWS_WITH(parse_npy(with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }", 24)),
                      Catch::Contains("too large"));
    std::vector<uint8_t> tiny = {0x93, 'N'};
    CHECK_THROWS_AS(parse_npy(tiny), std::invalid_argument);
    CHECK_THROWS_WITH(load_npy("/nonexistent/keys.npy"), Catch::Contains("cannot open"));
}

TEST_CASE("kv dumps: shapes must agree", "[npy]") {
    namespace fs = std::filesystem;
    const fs::path dir = fs::temp_directory_path() / ("tqkv_dump_test_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    auto write = [&](const char* name, const std::vector<size_t>& shape) {
        size_t n = 1;
        for (size_t s : shape) n *= s;
        const auto x = tqkv_test::gaussian_vectors(1, int(n), n);
        const auto b = make_npy(shape, x.data(), true);
        std::ofstream(dir / name, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
    };
    write("keys.npy", {2, 2, 40, 64});
    write("values.npy", {2, 2, 40, 64});
    write("queries.npy", {2, 4, 40, 64});
    const KvDump d = load_kv_dump(dir.string());
    CHECK(d.layers == 2);
    CHECK(d.heads == 4);
    CHECK(d.kv_heads == 2);
    CHECK(d.tokens == 40);
    CHECK(d.head_dim == 64);
    write("queries.npy", {2, 3, 40, 64});
    CHECK_THROWS_WITH(load_kv_dump(dir.string()), Catch::Contains("multiple of the KV heads"));
    write("queries.npy", {2, 4, 40, 64});
    write("values.npy", {2, 2, 41, 64});
    CHECK_THROWS_WITH(load_kv_dump(dir.string()), Catch::Contains("differs"));
    fs::remove_all(dir);
}

TEST_CASE("the real dump tq-ref-128 loads (skipped when absent)", "[npy][data]") {
    const std::string dir = data_dir();
    if (!std::filesystem::exists(dir + "/keys.npy")) {
        WARN("skipped: no KV dump at " << dir << " (set TQKV_DATA to a directory with keys/values/queries.npy)");
        return;
    }
    const KvDump d = load_kv_dump(dir);
    CHECK(d.layers == 6);
    CHECK(d.kv_heads == 2);
    CHECK(d.heads == 4);
    CHECK(d.head_dim == 128);
    CHECK(d.tokens == 1024);
}

TEST_CASE("synthetic data: deterministic, with outlier channels and sinks", "[npy]") {
    SyntheticConfig c;
    c.tokens = 256;
    const KvDump a = make_synthetic(c), b = make_synthetic(c);
    CHECK(a.keys == b.keys);
    CHECK(a.queries == b.queries);
    // Outlier channels: the largest mean |k_j| is several times the median one.
    std::vector<double> mean_abs(c.head_dim, 0.0);
    for (size_t t = 0; t < a.tokens; ++t)
        for (int j = 0; j < c.head_dim; ++j) mean_abs[j] += std::fabs(a.key(0, 0, t)[j]) / a.tokens;
    std::vector<double> sorted = mean_abs;
    std::sort(sorted.begin(), sorted.end());
    CHECK(sorted.back() > 3 * sorted[sorted.size() / 2]);
    // The sink token draws more attention than an average token from late queries.
    double sink = 0, other = 0;
    for (size_t t = 200; t < 256; ++t) {
        const float* q = a.query(0, 0, t);
        sink += tqkv_test::dot(q, a.key(0, 0, 0), c.head_dim);
        other += tqkv_test::dot(q, a.key(0, 0, 100), c.head_dim);
    }
    CHECK(sink > other + 56 * 20);  // ~ 3 sqrt(d) * 1.5 per query above an ordinary key
}
