// Panel 2: the Lloyd–Max codebook of the coordinate density, and how the iteration gets there.
#include <imgui.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numbers>

#include "app.hpp"
#include "plot.hpp"

namespace ex {
namespace {

const int kDims[] = {3, 8, 16, 32, 64, 80, 96, 128, 256, 512, 1024};

struct DensityCurve {
    std::vector<double> x, y;
    double lim = 1, peak = 0;
};

DensityCurve density_curve(const tqkv::CoordinateDensity& f) {
    DensityCurve c;
    c.lim = std::min(1.0, 4.2 / std::sqrt(double(f.dim())));
    for (int i = 0; i <= 400; ++i) {
        const double t = -c.lim + 2 * c.lim * i / 400.0;
        c.x.push_back(t);
        c.y.push_back(f.pdf(t));
        c.peak = std::max(c.peak, c.y.back());
    }
    return c;
}

// Density with cells shaded, boundaries dashed and centroids as stems up to f.
void codebook_plot(const char* id, const char* title, const tqkv::CoordinateDensity& f, const DensityCurve& dc,
                   const std::vector<double>& centroids, ImU32 col, ImVec2 size, const std::vector<double>* reference,
                   plot::Legend legend = plot::Legend::TopRight, bool full_legend = true) {
    plot::Spec s;
    s.title = title;
    s.xlabel = "t = one coordinate of a rotated unit vector";
    s.ylabel = "density f(t)";
    s.x = {-dc.lim, dc.lim};
    s.y = {0, dc.peak * 1.12};
    s.size = size;
    s.legend = legend;
    plot::begin(id, s);
    const size_t n = centroids.size();
    std::vector<double> bounds;
    for (size_t i = 0; i + 1 < n; ++i) bounds.push_back(0.5 * (centroids[i] + centroids[i + 1]));
    for (size_t i = 0; i < n; ++i) {
        const double lo = i == 0 ? -1.0 : bounds[i - 1], hi = i + 1 == n ? 1.0 : bounds[i];
        if (i % 2) plot::xband(lo, hi, IM_COL32(120, 150, 200, 40));
    }
    plot::line(full_legend ? "f(t) ∝ (1−t²)^((d−3)/2)" : "##f", dc.x.data(), dc.y.data(), int(dc.x.size()),
               IM_COL32(40, 40, 40, 255), 2.0f);
    for (double b : bounds) plot::vline(b, IM_COL32(110, 110, 110, 255), 1.0f, true);
    if (full_legend) plot::legend_entry("decision boundaries", IM_COL32(110, 110, 110, 255), 1);
    if (reference)
        for (double c : *reference) {
            plot::text(c, 0, "▲", IM_COL32(120, 120, 120, 255), ImVec2(0.5f, 1.0f));
        }
    if (reference) plot::legend_entry("converged (▲)", IM_COL32(120, 120, 120, 255), 3);
    std::vector<double> cy(n);
    for (size_t i = 0; i < n; ++i) {
        cy[i] = f.pdf(centroids[i]);
        plot::segment(centroids[i], 0, centroids[i], cy[i], col, n > 64 ? 1.0f : 1.5f);
    }
    plot::scatter(reference ? "current centroids" : "centroids", centroids.data(), cy.data(), int(n), col, n > 64 ? 2.0f : 4.0f);
    plot::end();
    const auto& h = plot::last_hover();
    if (h.valid && h.series.find("centroids") != std::string::npos && h.index >= 0 && size_t(h.index) < n) {
        ImGui::BeginTooltip();
        const size_t i = size_t(h.index);
        const double lo = i == 0 ? -1.0 : bounds[i - 1], hi = i + 1 == n ? 1.0 : bounds[i];
        ImGui::Text("code %zu of %zu: centroid %.5f", i, n, centroids[i]);
        ImGui::Text("cell [%.5f, %.5f], mass %.4f", lo, hi, f.mass(std::max(lo, -1.0), std::min(hi, 1.0)));
        ImGui::EndTooltip();
    }
}

}  // namespace

void panel_codebook(App& app) {
    auto& C = app.cb;
    help_text(
        "After the rotation every coordinate has the density f(t) below, so TurboQuant quantizes each coordinate with "
        "the Lloyd–Max codebook of f: 2^b centroids that minimize the expected squared error, each the mean of its cell, "
        "cells split at midpoints. The table compares the resulting error per unit vector with the Gaussian limit "
        "(d → ∞) and Shannon's lower bound 4^−b; the bottom plots replay the Lloyd–Max iteration from a poor start.");
    ImGui::Spacing();

    // Solve the selected codebook (cached by the library per (d, b)).
    const auto cbk = tqkv::LloydMaxCodebook::get(C.dim, C.bits);
    const tqkv::CoordinateDensity& f = density(C.dim);
    const auto dc = density_curve(f);

    if (C.reset_dim != C.dim || C.reset_bits != C.bits || C.reset_start != C.start || C.iterate.empty()) {
        C.iterate = poor_start(f, C.bits, C.start);
        C.mse_history = {tqkv::LloydMaxCodebook::expected_mse(f, C.iterate) * C.dim};
        C.reset_dim = C.dim, C.reset_bits = C.bits, C.reset_start = C.start;
        C.playing = false;
    }
    auto step = [&](int n) {
        for (int i = 0; i < n; ++i) {
            C.iterate = tqkv::LloydMaxCodebook::lloyd_step(f, C.iterate);
            C.mse_history.push_back(tqkv::LloydMaxCodebook::expected_mse(f, C.iterate) * C.dim);
        }
    };

    const ImVec2 avail = ImGui::GetContentRegionAvail();
    const float spx = ImGui::GetStyle().ItemSpacing.x, spy = ImGui::GetStyle().ItemSpacing.y;
    const float top_h = std::floor((avail.y - spy) * 0.5f), bot_h = avail.y - top_h - spy;

    // ---- top left: controls -----------------------------------------------------------------
    ImGui::BeginChild("cb_controls", ImVec2(330, top_h), false);
    ImGui::PushItemWidth(150);
    char dbuf[16];
    std::snprintf(dbuf, sizeof dbuf, "%d", C.dim);
    if (ImGui::BeginCombo("dimension d", dbuf)) {
        for (int d : kDims) {
            std::snprintf(dbuf, sizeof dbuf, "%d", d);
            if (ImGui::Selectable(dbuf, d == C.dim)) C.dim = d;
        }
        ImGui::EndCombo();
    }
    ImGui::SliderInt("bits b", &C.bits, 1, 8);
    ImGui::PopItemWidth();
    ImGui::Text("%d centroids, error per unit vector", cbk->levels());
    ImGui::Text("E‖u − û‖² = %.5f", cbk->mse());
    ImGui::TextDisabled("(solved by Newton iteration in %d steps)", cbk->iterations());
    ImGui::Separator();
    ImGui::TextUnformatted("Lloyd–Max iteration from a poor start");
    ImGui::SetNextItemWidth(190);
    if (ImGui::BeginCombo("start", start_name(C.start))) {
        for (int k = 0; k < 3; ++k)
            if (ImGui::Selectable(start_name(StartKind(k)), int(C.start) == k)) C.start = StartKind(k);
        ImGui::EndCombo();
    }
    if (ImGui::Button("Reset")) {
        C.iterate.clear();
        C.reset_dim = -1;
    }
    ImGui::SameLine();
    if (ImGui::Button("Step")) step(1);
    ImGui::SameLine();
    if (ImGui::Button("Step ×10")) step(10);
    ImGui::SameLine();
    if (ImGui::Button(C.playing ? "Pause" : "Play")) C.playing = !C.playing;
    if (C.pending_steps > 0) {  // requested from the command line (screenshots)
        step(C.pending_steps);
        C.pending_steps = 0;
    }
    if (C.playing && !app.screenshot) {
        const double t = now_seconds();
        if (t - C.last_step_time > 0.12) {
            step(1);
            C.last_step_time = t;
        }
        if (C.mse_history.size() > 400) C.playing = false;
    }
    const int iters = int(C.mse_history.size()) - 1;
    const double cur = C.mse_history.back();
    ImGui::Text("iteration %d:  E‖u − û‖² = %.5f", iters, cur);
    ImGui::Text("optimum %.5f, excess %.2f%%", cbk->mse(), 100.0 * (cur / cbk->mse() - 1));
    help_text("Each step puts the boundaries at midpoints, then moves every centroid to the mean of f over its cell; the "
              "error can only go down.");
    ImGui::EndChild();
    ImGui::SameLine();

    // ---- top right: the converged codebook --------------------------------------------------
    {
        char title[160];
        std::snprintf(title, sizeof title,
                      "The %d-bit Lloyd–Max codebook for d = %d: %d centroids (dots), cells split at the dashed boundaries",
                      C.bits, C.dim, cbk->levels());
        codebook_plot("##codebook", title, f, dc, cbk->centroids(), plot::color(1), ImVec2(0, top_h), nullptr);
    }

    // ---- bottom left: the table -------------------------------------------------------------
    const float table_w = std::min(560.0f, std::floor(avail.x * 0.4f));
    ImGui::BeginChild("cb_table", ImVec2(table_w, bot_h), false);
    ImGui::TextUnformatted("Error per unit vector E‖u − û‖² by bits per coordinate b");
    const ImGuiTableFlags tf = ImGuiTableFlags_Borders | ImGuiTableFlags_RowBg | ImGuiTableFlags_SizingStretchSame;
    if (ImGui::BeginTable("mse", 6, tf)) {
        char hdr[48];
        std::snprintf(hdr, sizeof hdr, "d = %d", C.dim);
        ImGui::TableSetupColumn("bits", ImGuiTableColumnFlags_WidthFixed, ImGui::CalcTextSize("bits").x + 6);
        ImGui::TableSetupColumn(hdr);
        ImGui::TableSetupColumn("d → ∞");
        ImGui::TableSetupColumn("4^−b");
        ImGui::TableSetupColumn("÷ 4^−b");
        ImGui::TableSetupColumn("bound");
        ImGui::TableHeadersRow();
        for (int b = 1; b <= 8; ++b) {
            const auto cb = tqkv::LloydMaxCodebook::get(C.dim, b);
            ImGui::TableNextRow();
            ImGui::TableNextColumn();
            char lab[16];
            std::snprintf(lab, sizeof lab, "%d", b);
            if (ImGui::Selectable(lab, b == C.bits, ImGuiSelectableFlags_SpanAllColumns)) C.bits = b;
            ImGui::TableNextColumn();
            ImGui::Text("%.6f", cb->mse());
            ImGui::TableNextColumn();
            if (b <= 4) ImGui::Text("%.6f", tqkv::gaussian_limit_mse(b));
            else ImGui::TextDisabled("—");
            ImGui::TableNextColumn();
            ImGui::Text("%.6f", tqkv::shannon_bound(b));
            ImGui::TableNextColumn();
            ImGui::Text("%.2f×", cb->mse() / tqkv::shannon_bound(b));
            ImGui::TableNextColumn();
            ImGui::Text("%.6f", std::sqrt(3.0) * std::numbers::pi / 2 * tqkv::shannon_bound(b));
        }
        ImGui::EndTable();
    }
    help_text("Columns: Lloyd–Max on f at this d; the Gaussian limit d → ∞ (b ≤ 4); Shannon's lower bound 4^−b, which no "
              "quantizer beats; the ratio; the paper's upper bound (√3·π/2)·4^−b. Lloyd–Max stays between 1.4 and 2.7 "
              "times the lower bound, and slightly below the Gaussian limit because f has lighter tails.");
    ImGui::EndChild();
    ImGui::SameLine();

    // ---- bottom middle: the iterate ---------------------------------------------------------
    const float rest = ImGui::GetContentRegionAvail().x;
    const float wa = std::floor((rest - spx) * 0.55f), wb = rest - wa - spx;
    {
        char title[160];
        std::snprintf(title, sizeof title, "Lloyd–Max iteration %d, started %s", iters, start_name(C.start));
        codebook_plot("##iterate", title, f, dc, C.iterate, plot::color(1), ImVec2(wa, bot_h), &cbk->centroids(),
                      plot::Legend::TopLeft, false);
    }
    ImGui::SameLine();
    // ---- bottom right: convergence ----------------------------------------------------------
    {
        std::vector<double> excess(C.mse_history.size());
        for (size_t i = 0; i < excess.size(); ++i) excess[i] = std::max(1e-12, C.mse_history[i] / cbk->mse() - 1);
        plot::Spec s;
        s.title = "How far from optimal after each iteration";
        s.xlabel = "iteration";
        s.ylabel = "MSE / optimal MSE − 1  (log)";
        s.x = {0, double(std::max(10, iters))};
        s.ylog = true;
        const auto r = plotmath::data_range(excess, true);
        s.y = plotmath::nice_bounds({std::max(1e-9, r.lo), std::max(r.hi, 1e-3)}, 5, true);
        s.size = ImVec2(wb, bot_h);
        plot::begin("##conv", s);
        plot::line_seq("excess error of the iterate", excess.data(), int(excess.size()), plot::color(1), 0, 1, 2.0f);
        if (excess.size() < 60) {
            std::vector<double> x(excess.size());
            for (size_t i = 0; i < x.size(); ++i) x[i] = double(i);
            plot::scatter("##pts", x.data(), excess.data(), int(x.size()), plot::color(1), 3.0f);
        }
        plot::end();
    }
}

}  // namespace ex
