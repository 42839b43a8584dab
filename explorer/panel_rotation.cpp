// Panel 1: what the random rotation does to a vector's coordinates.
#include <imgui.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "app.hpp"
#include "plot.hpp"

namespace ex {
namespace {

bool pow2(int d) { return d > 0 && (d & (d - 1)) == 0; }

bool kind_ok(tqkv::RotationKind k, int d) {
    switch (k) {
        case tqkv::RotationKind::Hadamard: return pow2(d);
        case tqkv::RotationKind::Structured: return d % 2 == 0;
        default: return true;
    }
}

const char* kind_label(tqkv::RotationKind k) {
    switch (k) {
        case tqkv::RotationKind::Hadamard: return "hadamard: rounds of random signs + Walsh–Hadamard";
        case tqkv::RotationKind::Structured: return "structured: Hadamard blocks + permutations";
        case tqkv::RotationKind::Dense: return "dense: a Haar-random orthogonal matrix";
        default: return "auto";
    }
}

void colored_wrapped(ImVec4 col, const char* text) {
    ImGui::PushStyleColor(ImGuiCol_Text, col);
    ImGui::TextWrapped("%s", text);
    ImGui::PopStyleColor();
}

}  // namespace

void panel_rotation(App& app) {
    auto& R = app.rot;
    auto& q = R.q;
    help_text(
        "TurboQuant first multiplies every key and value by one fixed random orthogonal matrix R. After that, each "
        "coordinate of a unit vector follows one known density f(t) ∝ (1 − t²)^((d−3)/2) ≈ N(0, 1/d), whatever the input "
        "was, so a single scalar codebook fits every coordinate. Pick an adversarial input and count the rounds the fast "
        "Hadamard rotation needs before its output passes a Kolmogorov–Smirnov test against f.");
    ImGui::Spacing();

    // ---- controls ---------------------------------------------------------------------------
    ImGui::BeginChild("controls", ImVec2(340, 0), false);
    ImGui::PushItemWidth(170);
    if (ImGui::BeginCombo("input", input_name(q.input))) {
        for (int k = 0; k < 4; ++k)
            if (ImGui::Selectable(input_name(InputKind(k)), int(q.input) == k)) q.input = InputKind(k);
        ImGui::EndCombo();
    }
    const bool real = q.input == InputKind::RealKeys;
    if (real) {
        q.dim = app.dump.head_dim;
        layer_head_picker(app, &q.layer, &q.kv_head, true);
        ImGui::SetNextItemWidth(170);
        ImGui::SliderInt("token", &q.index, 0, int(app.dump.tokens) - 1);
    } else if (q.input == InputKind::OneHot) {
        ImGui::SliderInt("hot coordinate", &q.index, 0, q.dim - 1);
    } else {
        ImGui::SliderInt("random draw", &q.index, 0, 99);
    }
    ImGui::BeginDisabled(real);
    char dbuf[16];
    std::snprintf(dbuf, sizeof dbuf, "%d", q.dim);
    if (ImGui::BeginCombo("dimension d", dbuf)) {
        std::vector<int> dims = {16, 32, 64, 80, 96, 128, 256, 512};
        if (std::find(dims.begin(), dims.end(), app.dump.head_dim) == dims.end()) dims.push_back(app.dump.head_dim);
        std::sort(dims.begin(), dims.end());
        for (int d : dims) {
            std::snprintf(dbuf, sizeof dbuf, "%d", d);
            if (ImGui::Selectable(dbuf, d == q.dim)) q.dim = d;
        }
        ImGui::EndCombo();
    }
    ImGui::EndDisabled();
    if (q.input == InputKind::OneHot) q.index = std::clamp(q.index, 0, q.dim - 1);
    if (!kind_ok(q.kind, q.dim)) q.kind = q.dim % 2 == 0 ? tqkv::RotationKind::Structured : tqkv::RotationKind::Dense;
    if (ImGui::BeginCombo("rotation", to_string(q.kind))) {
        for (auto k : {tqkv::RotationKind::Hadamard, tqkv::RotationKind::Structured, tqkv::RotationKind::Dense}) {
            ImGui::BeginDisabled(!kind_ok(k, q.dim));
            if (ImGui::Selectable(kind_label(k), k == q.kind)) q.kind = k;
            ImGui::EndDisabled();
        }
        ImGui::EndCombo();
    }
    const bool dense = q.kind == tqkv::RotationKind::Dense;
    ImGui::BeginDisabled(dense);
    ImGui::SliderInt("rounds", &q.rounds, 1, 8);
    ImGui::EndDisabled();
    ImGui::SliderInt("random rotations", &q.seeds, 1, 256, "%d", ImGuiSliderFlags_Logarithmic);
    if (dense && q.dim >= 512) q.seeds = std::min(q.seeds, 16);  // O(d^3) to draw each
    ImGui::PopItemWidth();
    help_text(dense ? "A dense rotation has no rounds: it is exactly Haar-random, but costs O(d²) per vector."
                    : "One round = random ±1 signs, then a Walsh–Hadamard transform: O(d log d). The library uses 3 rounds "
                      "(hadamard) and 4 (structured).");

    // ---- compute on change ------------------------------------------------------------------
    if (!(q == R.done_q) || R.done_gen != app.data_gen) {
        // The KS-vs-rounds curve does not depend on the selected rounds.
        RotationQuery a = q, b = R.done_q;
        a.rounds = b.rounds = 0;
        const bool curve_ok = a == b && R.done_gen == app.data_gen && !R.ks_rounds.empty();
        try {
            R.error.clear();
            R.result = analyze_rotation(q, app.dump);
            if (!curve_ok) R.ks_rounds = dense ? std::vector<double>{} : ks_by_rounds(q, app.dump, 8);
        } catch (const std::exception& e) {
            R.error = e.what();
            R.result = RotationResult{};
            R.ks_rounds.clear();
        }
        R.done_q = q;
        R.done_gen = app.data_gen;
    }
    const auto& r = R.result;

    ImGui::Separator();
    if (!R.error.empty()) {
        colored_wrapped(ImVec4(0.8f, 0.1f, 0.1f, 1), R.error.c_str());
    } else {
        const bool pass = r.ks <= r.ks_crit;
        ImGui::Text("KS distance to f:  %.4f", r.ks);
        ImGui::Text("99.9%% critical value:  %.4f", r.ks_crit);
        ImGui::TextDisabled("(%zu samples: %d rotations × d = %d)", r.pooled.size(), q.seeds, q.dim);
        colored_wrapped(pass ? ImVec4(0.1f, 0.5f, 0.1f, 1) : ImVec4(0.8f, 0.2f, 0.1f, 1),
                        pass ? "Passes: the rotated coordinates are indistinguishable from f, so the Lloyd–Max codebook "
                               "for f is the right one."
                             : "Fails: the rotated coordinates are still visibly not distributed as f.");
        ImGui::Spacing();
        const char* why = "";
        if (q.input == InputKind::Gaussian)
            why = "A Gaussian vector is already isotropic: any rotation, even one round, leaves it distributed as f.";
        else if (q.input == InputKind::OneHot)
            why = "A one-hot vector is the worst case: one Hadamard round maps it to exactly ±1/√d in every coordinate "
                  "(two spikes), two rounds to a coarse lattice; three rounds pass at the library's test size (64 "
                  "rotations).";
        else if (q.input == InputKind::Outliers)
            why = "Real keys have a few huge channels. Unrotated, those channels would need a codebook with a huge range; "
                  "rotated, their energy is spread evenly over all coordinates.";
        else
            why = "A key from the data: after the rotation its outlier channels are gone, as for the synthetic outliers.";
        help_text(why);
        ImGui::Spacing();
        help_text("Even a perfect sample from f has a KS distance of about 0.9/√n, so close to the critical line the "
                  "verdict flips with the seeds; more rotations make the test sharper.");
    }
    ImGui::EndChild();
    ImGui::SameLine();

    // ---- plots ------------------------------------------------------------------------------
    ImGui::BeginChild("plots", ImVec2(0, 0), false);
    const ImVec2 avail = ImGui::GetContentRegionAvail();
    const float sp = ImGui::GetStyle().ItemSpacing.x;
    const float w2 = std::floor((avail.x - sp) / 2), h2 = std::floor((avail.y - ImGui::GetStyle().ItemSpacing.y) / 2);
    const int d = q.dim;
    const double inv_sqrt_d = 1.0 / std::sqrt(double(d));

    auto sym = [](const std::vector<double>& v, double at_least) {
        double m = at_least;
        for (double x : v) m = std::max(m, std::fabs(x));
        return plotmath::Range{-m * 1.08, m * 1.08};
    };
    char title[200];
    {
        plot::Spec s;
        std::snprintf(title, sizeof title, "Before rotation: x_j / ‖x‖ of %s", input_name(q.input));
        s.title = title;
        s.xlabel = "coordinate j";
        s.ylabel = "x_j / ‖x‖";
        s.x = {-0.5, d - 0.5};
        s.y = sym(r.before, 3 * inv_sqrt_d);
        s.size = ImVec2(w2, h2);
        plot::begin("##before", s);
        plot::hline(inv_sqrt_d, plot::color(7), 1, true, "±1/√d (typical size)");
        plot::hline(-inv_sqrt_d, plot::color(7), 1, true);
        plot::stems("x_j / ‖x‖", r.before.data(), int(r.before.size()), plot::color(3));
        plot::end();
    }
    ImGui::SameLine();
    {
        plot::Spec s;
        if (dense) std::snprintf(title, sizeof title, "After rotation: (R x)_j / ‖x‖, dense R");
        else
            std::snprintf(title, sizeof title, "After rotation: (R x)_j / ‖x‖, %s, %d round%s", to_string(q.kind), q.rounds,
                          q.rounds == 1 ? "" : "s");
        s.title = title;
        s.xlabel = "coordinate j";
        s.ylabel = "(R x)_j / ‖x‖";
        s.x = {-0.5, d - 0.5};
        s.y = sym(r.before, 3 * inv_sqrt_d);  // same scale as "before": the spread is the point
        s.size = ImVec2(w2, h2);
        plot::begin("##after", s);
        plot::hline(inv_sqrt_d, plot::color(7), 1, true, "±1/√d (typical size)");
        plot::hline(-inv_sqrt_d, plot::color(7), 1, true);
        plot::stems("(R x)_j / ‖x‖", r.after.data(), int(r.after.size()), plot::color(0));
        plot::end();
    }
    {
        const tqkv::CoordinateDensity& f = density(d);
        const double lim = std::min(1.0, 4.5 * inv_sqrt_d);
        const auto h = plotmath::histogram(r.pooled.data(), r.pooled.size(), -lim, lim, 60);
        std::vector<double> tx(241), ty(241);
        double peak = 0;
        for (int i = 0; i <= 240; ++i) {
            tx[size_t(i)] = -lim + 2 * lim * i / 240.0;
            ty[size_t(i)] = f.pdf(tx[size_t(i)]);
            peak = std::max(peak, ty[size_t(i)]);
        }
        plot::Spec s;
        std::snprintf(title, sizeof title, "Its coordinates under %d random rotations vs the exact f", q.seeds);
        s.title = title;
        s.xlabel = "coordinate value t";
        s.ylabel = "density";
        s.x = {-lim, lim};
        s.y = {0, peak * 1.45};
        s.size = ImVec2(w2, h2);
        plot::begin("##hist", s);
        plot::histogram("rotated coordinates", h, plot::color(0, 0.45f), plot::color(0, 0.9f));
        plot::line("exact density f(t)", tx.data(), ty.data(), int(tx.size()), plot::color(3), 2.5f);
        char ks[96];
        std::snprintf(ks, sizeof ks, "KS = %.4f (critical %.4f)", r.ks, r.ks_crit);
        plot::corner_text(0, ks, r.ks <= r.ks_crit ? IM_COL32(20, 120, 20, 255) : IM_COL32(200, 40, 20, 255));
        plot::end();
    }
    ImGui::SameLine();
    {
        plot::Spec s;
        s.title = dense ? "KS distance vs rounds (a dense rotation has no rounds)"
                        : "KS distance vs rounds (click to select)";
        s.xlabel = "rounds";
        s.ylabel = "KS distance (log)";
        s.x = {0.5, 8.5};
        s.ylog = true;
        double lo = r.ks_crit > 0 ? r.ks_crit / 3 : 1e-3;
        for (double v : R.ks_rounds) lo = std::min(lo, v / 1.5);
        s.y = plotmath::nice_bounds({std::max(1e-4, lo), 1.0}, 5, true);
        s.size = ImVec2(w2, h2);
        s.xticks = 8;
        plot::begin("##ksrounds", s);
        plot::hline(r.ks_crit, plot::color(3), 1.5f, true, "99.9% critical value (below = pass)");
        if (!R.ks_rounds.empty()) {
            std::vector<double> x(R.ks_rounds.size());
            for (size_t i = 0; i < x.size(); ++i) x[i] = double(i + 1);
            plot::line("KS distance", x.data(), R.ks_rounds.data(), int(x.size()), plot::color(0), 2.0f);
            plot::scatter("##KS distance", x.data(), R.ks_rounds.data(), int(x.size()), plot::color(0), 4.0f);
            plot::marker(q.rounds, R.ks_rounds[size_t(q.rounds - 1)], IM_COL32(0, 0, 0, 255), 6.5f);
            plot::marker(q.rounds, R.ks_rounds[size_t(q.rounds - 1)], plot::color(1), 5.0f);
            plot::legend_entry("selected rounds", plot::color(1), 3);
        } else if (r.ks > 0) {
            plot::hline(r.ks, plot::color(0), 2.0f, false, "KS distance (dense)");
        }
        double mx, my;
        if (!R.ks_rounds.empty() && plot::mouse(&mx, &my) && ImGui::IsMouseClicked(0))
            q.rounds = std::clamp(int(std::lround(mx)), 1, 8);
        plot::end();
    }
    ImGui::EndChild();
}

}  // namespace ex
