// Panel 3: per-token reconstruction error along the sequence, per layer x head, worst tokens.
#include <imgui.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "app.hpp"
#include "plot.hpp"

namespace ex {

void panel_tokens(App& app) {
    auto& S = app.tok;
    const auto& D = app.dump;
    help_text(
        "How much does each cached token lose? For one layer and KV head: the relative error ‖x − x̂‖ / ‖x‖ and the cosine "
        "between every original key (value) and its reconstruction, along the sequence. The heat maps give the mean "
        "relative error of every layer × KV head (click a cell to select it); the table lists the worst tokens.");
    ImGui::Spacing();
    layer_head_picker(app, &S.layer, &S.kv_head, true);
    ImGui::SameLine(0, 24);
    method_picker("tok", S.method);
    ImGui::SameLine(0, 24);
    ImGui::Checkbox("keys", &S.keys);
    ImGui::SameLine();
    ImGui::Checkbox("values", &S.values);

    std::string err;
    const auto c = app.heads.get(D, S.layer, S.kv_head, S.method, &err);
    if (!c) {
        ImGui::TextColored(ImVec4(0.8f, 0.1f, 0.1f, 1), "%s is not available for this data: %s", S.method.label().c_str(),
                           err.c_str());
        return;
    }
    const int d = D.head_dim;
    const size_t T = D.tokens;
    const std::vector<int> key = {S.layer, S.kv_head, app.data_gen};
    if (key != S.err_key || !(S.err_method == S.method)) {
        S.ke = token_errors(D.key(S.layer, S.kv_head, 0), c->k.decoded.data(), T, d);
        S.ve = token_errors(D.value(S.layer, S.kv_head, 0), c->v.decoded.data(), T, d);
        S.err_key = key;
        S.err_method = S.method;
    }
    const auto& ke = S.ke;
    const auto& ve = S.ve;
    ImGui::Text("keys: %s — mean relative error %.4f, mean cosine %.5f, Σ‖k − k̂‖² / Σ‖k‖² = %.5f", c->k.desc.c_str(),
                ke.mean_rel, ke.mean_cos, ke.rel_mse);
    ImGui::Text("values: %s — mean relative error %.4f, mean cosine %.5f, Σ‖v − v̂‖² / Σ‖v‖² = %.5f", c->v.desc.c_str(),
                ve.mean_rel, ve.mean_cos, ve.rel_mse);

    // Heat maps: every layer x KV head with this method.
    if (!(S.done_method == S.method) || S.done_gen != app.data_gen) {
        S.heat_k.assign(size_t(D.layers) * D.kv_heads, NAN);
        S.heat_v = S.heat_k;
        S.heat_error.clear();
        for (int l = 0; l < D.layers; ++l)
            for (int h = 0; h < D.kv_heads; ++h) {
                std::string e;
                const auto ch = app.heads.get(D, l, h, S.method, &e);
                if (!ch) {
                    S.heat_error = e;
                    continue;
                }
                S.heat_k[size_t(l) * D.kv_heads + h] = token_errors(D.key(l, h, 0), ch->k.decoded.data(), T, d).mean_rel;
                S.heat_v[size_t(l) * D.kv_heads + h] = token_errors(D.value(l, h, 0), ch->v.decoded.data(), T, d).mean_rel;
            }
        S.done_method = S.method;
        S.done_gen = app.data_gen;
    }

    const ImVec2 avail = ImGui::GetContentRegionAvail();
    const float spx = ImGui::GetStyle().ItemSpacing.x, spy = ImGui::GetStyle().ItemSpacing.y;
    const float left_w = std::floor(avail.x * 0.6f), right_w = avail.x - left_w - spx;
    const float ph = std::floor((avail.y - spy) / 2);

    // ---- left: along the sequence -----------------------------------------------------------
    ImGui::BeginGroup();
    auto seq_plot = [&](const char* id, const char* title, const char* ylabel, const std::vector<double>& kv,
                        const std::vector<double>& vv, double kmean, double vmean, bool cosine) {
        plot::Spec s;
        s.title = title;
        s.xlabel = "token position in the sequence";
        s.ylabel = ylabel;
        s.x = {-0.5, double(T) - 0.5};
        plotmath::Range r{1e300, -1e300};
        if (S.keys) r = plotmath::merge(r, plotmath::data_range(kv));
        if (S.values) r = plotmath::merge(r, plotmath::data_range(vv));
        if (!(r.hi >= r.lo)) r = {0, 1};
        s.y = cosine ? plotmath::padded({r.lo, 1.0}, 0.05) : plotmath::Range{0, r.hi * 1.08 + 1e-12};
        s.size = ImVec2(left_w, ph);
        s.legend = cosine ? plot::Legend::BottomRight : plot::Legend::TopRight;
        plot::begin(id, s);
        if (S.keys) plot::line_seq("keys", kv.data(), int(kv.size()), plot::color(0, 0.85f), 0, 1, 1.2f);
        if (S.values) plot::line_seq("values", vv.data(), int(vv.size()), plot::color(1, 0.85f), 0, 1, 1.2f);
        if (S.keys) plot::hline(kmean, plot::color(0), 1.5f, true, "key mean");
        if (S.values) plot::hline(vmean, plot::color(1), 1.5f, true, "value mean");
        if (S.selected >= 0) plot::vline(S.selected, IM_COL32(214, 39, 40, 200), 1.5f, false, "selected token");
        double mx, my;
        if (plot::mouse(&mx, &my) && ImGui::IsMouseClicked(0)) S.selected = std::clamp(int(std::lround(mx)), 0, int(T) - 1);
        plot::end();
        const auto& h = plot::last_hover();
        if (h.valid && h.index >= 0 && size_t(h.index) < T) {
            ImGui::BeginTooltip();
            ImGui::Text("‖k‖ = %.3f, ‖v‖ = %.3f", ke.norm[size_t(h.index)], ve.norm[size_t(h.index)]);
            ImGui::TextDisabled("click to select this token");
            ImGui::EndTooltip();
        }
    };
    seq_plot("##rel", "Relative error per token  ‖x − x̂‖ / ‖x‖  (lower is better)", "relative error", ke.rel, ve.rel,
             ke.mean_rel, ve.mean_rel, false);
    seq_plot("##cos", "Cosine similarity per token  cos(x, x̂)  (1 = direction kept exactly)", "cosine", ke.cos, ve.cos,
             ke.mean_cos, ve.mean_cos, true);
    ImGui::EndGroup();
    ImGui::SameLine();

    // ---- right: heat maps and worst tokens --------------------------------------------------
    ImGui::BeginGroup();
    {
        std::vector<std::string> rows, cols;
        for (int l = 0; l < D.layers; ++l) rows.push_back(std::to_string(l));
        for (int h = 0; h < D.kv_heads; ++h) cols.push_back(std::to_string(h));
        // One colour scale for both maps, from the smallest to the largest mean (the printed
        // numbers say how large the differences really are).
        auto r = plotmath::merge(plotmath::data_range(S.heat_k), plotmath::data_range(S.heat_v));
        if (!(r.hi > r.lo)) r = {r.lo * 0.9, r.lo * 1.1 + 1e-9};
        const float hw = std::floor((right_w - spx) / 2);
        const float hh = std::floor(avail.y * 0.42f);
        plot::HeatSpec hs;
        hs.xlabel = "KV head";
        hs.ylabel = "layer";
        hs.value_label = "mean rel. error";
        hs.vmin = r.lo;
        hs.vmax = r.hi;
        hs.size = ImVec2(hw, hh);
        hs.fmt = "%.3f";
        int cr = -1, cc = -1;
        hs.title = "Keys: mean relative error";
        if (plot::heatmap("##heatk", S.heat_k.data(), D.layers, D.kv_heads, rows, cols, hs, &cr, &cc, S.layer, S.kv_head))
            S.layer = cr, S.kv_head = cc;
        ImGui::SameLine();
        hs.title = "Values: mean relative error";
        if (plot::heatmap("##heatv", S.heat_v.data(), D.layers, D.kv_heads, rows, cols, hs, &cr, &cc, S.layer, S.kv_head))
            S.layer = cr, S.kv_head = cc;
        if (!S.heat_error.empty()) ImGui::TextColored(ImVec4(0.8f, 0.1f, 0.1f, 1), "%s", S.heat_error.c_str());
    }
    ImGui::Text("Worst %s of layer %d, KV head %d (click a row to mark it in the plots)", S.keys || !S.values ? "keys" : "values",
                S.layer, S.kv_head);
    {
        const auto& by = (S.keys || !S.values) ? ke.rel : ve.rel;
        std::vector<int> idx(T);
        std::iota(idx.begin(), idx.end(), 0);
        const size_t k = std::min<size_t>(12, T);
        std::partial_sort(idx.begin(), idx.begin() + long(k), idx.end(), [&](int a, int b) { return by[size_t(a)] > by[size_t(b)]; });
        const ImGuiTableFlags tf = ImGuiTableFlags_Borders | ImGuiTableFlags_RowBg | ImGuiTableFlags_ScrollY |
                                   ImGuiTableFlags_SizingStretchProp;
        if (ImGui::BeginTable("worst", 6, tf, ImVec2(right_w, ImGui::GetContentRegionAvail().y))) {
            ImGui::TableSetupScrollFreeze(0, 1);
            ImGui::TableSetupColumn("token");
            ImGui::TableSetupColumn("key rel. err");
            ImGui::TableSetupColumn("key cos");
            ImGui::TableSetupColumn("‖k‖");
            ImGui::TableSetupColumn("value rel. err");
            ImGui::TableSetupColumn("value cos");
            ImGui::TableHeadersRow();
            for (size_t i = 0; i < k; ++i) {
                const size_t t = size_t(idx[i]);
                ImGui::TableNextRow();
                ImGui::TableNextColumn();
                char lab[32];
                std::snprintf(lab, sizeof lab, "%zu", t);
                if (ImGui::Selectable(lab, S.selected == int(t), ImGuiSelectableFlags_SpanAllColumns)) S.selected = int(t);
                ImGui::TableNextColumn();
                ImGui::Text("%.4f", ke.rel[t]);
                ImGui::TableNextColumn();
                ImGui::Text("%.5f", ke.cos[t]);
                ImGui::TableNextColumn();
                ImGui::Text("%.2f", ke.norm[t]);
                ImGui::TableNextColumn();
                ImGui::Text("%.4f", ve.rel[t]);
                ImGui::TableNextColumn();
                ImGui::Text("%.5f", ve.cos[t]);
            }
            ImGui::EndTable();
        }
    }
    ImGui::EndGroup();
}

}  // namespace ex
