// A saved runner (LlamaRunner::load, tqkv_runner_load) from hostile bytes: byte 0 picks one of the
// runners of runner_model.hpp (exact: always refused; tqkv; calibrated fractional tqkv), the rest is loaded
// into it. load must succeed or throw std::invalid_argument leaving the runner as it was; a runner
// that loaded saves and decodes on (hostile but finite rows may give non-finite logits, never a
// crash or an out-of-bounds access).
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "runner_model.hpp"
#include "util/binary_io.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* input, size_t size) {
    static tqkv_fuzz::RunnerFixture fx;
    if (size < 1) return 0;
    tqkv::LlamaRunner& run = *fx.runners[input[0] % fx.runners.size()];
    // Most mutations break the CRC, which load() checks first. To reach the parsers behind it,
    // inputs whose last byte is odd get a valid CRC written over their last four bytes.
    std::vector<uint8_t> buf(input + 1, input + size);
    if (buf.size() >= 16 && (buf.back() & 1)) {
        const uint32_t c = tqkv::detail::crc32(buf.data(), buf.size() - 4);
        for (int i = 0; i < 4; ++i) buf[buf.size() - 4 + i] = uint8_t(c >> (8 * i));
    }
    const size_t before = run.position();
    try {
        run.load(buf);
    } catch (const std::invalid_argument&) {
        if (run.position() != before) __builtin_trap();  // a refused load changes nothing
        return 0;
    }
    std::vector<float> logits(16);
    if (run.position() < 32) run.decode(int32_t(size % 16), logits);
    if (run.save().size() < 16) __builtin_trap();  // a runner that loaded saves again
    return 0;
}
