// tqkv-explorer-pngcheck FILE WIDTH HEIGHT [MIN_COLOURS]: checks that a screenshot has the
// requested size and is not blank — the luma varies (standard deviation of at least 8 grey
// levels), it has at least MIN_COLOURS distinct colours (default 24), and no single colour covers
// more than 97% of it. Prints the measurements; exit code 0 when all hold.
#include <stb_image.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <unordered_map>

int main(int argc, char** argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: tqkv-explorer-pngcheck FILE WIDTH HEIGHT [MIN_COLOURS]\n");
        return 2;
    }
    const int want_w = std::atoi(argv[2]), want_h = std::atoi(argv[3]);
    const size_t min_colours = argc > 4 ? size_t(std::atoi(argv[4])) : 24;
    int w = 0, h = 0, n = 0;
    unsigned char* px = stbi_load(argv[1], &w, &h, &n, 3);
    if (!px) {
        std::fprintf(stderr, "%s: cannot read PNG: %s\n", argv[1], stbi_failure_reason());
        return 1;
    }
    double sum = 0, sum2 = 0;
    std::unordered_map<unsigned, size_t> colours;
    const size_t total = size_t(w) * h;
    for (size_t i = 0; i < total; ++i) {
        const unsigned char* p = px + 3 * i;
        const double y = 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
        sum += y;
        sum2 += y * y;
        ++colours[(unsigned(p[0]) << 16) | (unsigned(p[1]) << 8) | p[2]];
    }
    stbi_image_free(px);
    const double mean = sum / double(total), sd = std::sqrt(std::max(0.0, sum2 / double(total) - mean * mean));
    size_t top = 0;
    for (const auto& [c, k] : colours) top = std::max(top, k);
    const double top_share = double(top) / double(total);
    bool ok = true;
    std::printf("%s: %dx%d, luma mean %.1f sd %.1f, %zu colours, most common colour %.1f%%", argv[1], w, h, mean, sd,
                colours.size(), 100 * top_share);
    if (w != want_w || h != want_h) std::printf("  FAIL: expected %dx%d", want_w, want_h), ok = false;
    if (sd < 8) std::printf("  FAIL: nearly uniform (luma sd < 8)"), ok = false;
    if (colours.size() < min_colours) std::printf("  FAIL: fewer than %zu colours", min_colours), ok = false;
    if (top_share > 0.97) std::printf("  FAIL: one colour covers > 97%%"), ok = false;
    std::printf("%s\n", ok ? "  ok" : "");
    return ok ? 0 : 1;
}
