// Panel 4: one query's attention, exact against compressed.
#include <imgui.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "app.hpp"
#include "plot.hpp"

namespace ex {
namespace {

std::vector<MethodSpec> comparison_methods() {
    return {{Family::TqMse, 2},  {Family::TqMse, 3},  {Family::TqMse, 3.5}, {Family::TqMse, 4},
            {Family::TqProd, 3}, {Family::TqProd, 4}, {Family::Qjl, 2},     {Family::Polar, 4},
            {Family::Kivi, 2},   {Family::Kivi, 4},   {Family::Turbo, 3},   {Family::Turbo, 4},
            {Family::Q4_0, 4},   {Family::Q4_0Rot, 4}, {Family::Q4_0Rots, 4}, {Family::Q8_0, 8},
            {Family::Q8_0Rot, 8}};
}

}  // namespace

void panel_attention(App& app) {
    auto& A = app.att;
    const auto& D = app.dump;
    help_text(
        "Does attention over the compressed cache pick the same tokens? For one query (layer, query head, position): its "
        "exact logits q·k/√d against the logits computed from the compressed keys (all on the line y = x if perfect), "
        "the softmax weights of both over the tokens it sees, and how close the attention output stays. The table runs "
        "every method on the same query (click a row to select it).");
    ImGui::Spacing();
    layer_head_picker(app, &A.layer, &A.head, false);
    ImGui::SameLine(0, 20);
    if (A.pos < 0 || A.pos >= int(D.tokens)) A.pos = int(D.tokens) - 1;
    ImGui::SetNextItemWidth(130);
    ImGui::SliderInt("query position", &A.pos, 0, int(D.tokens) - 1);
    ImGui::SameLine(0, 16);
    method_picker("att", A.method, false);
    ImGui::SameLine(0, 16);
    ImGui::SetNextItemWidth(170);
    const char* orders[] = {"tokens ranked by weight", "tokens by position"};
    ImGui::Combo("##order", &A.order, orders, 2);
    ImGui::SameLine();
    ImGui::Checkbox("log scale", &A.log_weights);

    const int G = D.heads / D.kv_heads, kvh = A.head / G;
    const std::vector<int> key = {A.layer, A.head, A.pos, app.data_gen};
    if (key != A.key || !(A.done_method == A.method)) {
        std::string err;
        const auto c = app.heads.get(D, A.layer, kvh, A.method, &err);
        A.error = c ? "" : A.method.label() + " is not available for this data: " + err;
        if (c) A.result = attend_one(D, A.layer, A.head, size_t(A.pos), *c);
        A.done_method = A.method;
    }
    if (key != A.key) {
        A.table_methods = comparison_methods();
        A.table.assign(A.table_methods.size(), AttentionResult{});
        A.table_bits.assign(A.table_methods.size(), 0.0);
        A.table_errors.assign(A.table_methods.size(), "");
        for (size_t i = 0; i < A.table_methods.size(); ++i) {
            std::string err;
            const auto c = app.heads.get(D, A.layer, kvh, A.table_methods[i], &err);
            if (!c) {
                A.table_errors[i] = err;
                continue;
            }
            A.table[i] = attend_one(D, A.layer, A.head, size_t(A.pos), *c);
            A.table_bits[i] = c->bits_per_coord();
        }
        A.key = key;
    }
    if (!A.error.empty()) {
        ImGui::TextColored(ImVec4(0.8f, 0.1f, 0.1f, 1), "%s", A.error.c_str());
        return;
    }
    const auto& r = A.result;
    const size_t n = r.visible;

    const ImVec2 avail = ImGui::GetContentRegionAvail();
    const float spy = ImGui::GetStyle().ItemSpacing.y;
    const float top_h = std::floor((avail.y - spy) * 0.5f), bot_h = avail.y - top_h - spy;
    const float sc_w = std::min(std::floor(avail.x * 0.4f), top_h * 1.25f);

    // ---- scatter: exact vs compressed logits ------------------------------------------------
    std::vector<uint8_t> is_top(n, 0);
    for (int t : r.top_exact) is_top[size_t(t)] = 1;
    {
        auto rr = plotmath::merge(plotmath::data_range(r.exact_logit), plotmath::data_range(r.approx_logit));
        rr = plotmath::padded(rr, 0.04);
        plot::Spec s;
        char title[160];
        std::snprintf(title, sizeof title, "Logits of %zu tokens: exact vs %s", n, A.method.label().c_str());
        s.title = title;
        s.xlabel = "exact logit q·k/√d";
        s.ylabel = "logit from the compressed key";
        s.x = rr;
        s.y = rr;
        s.size = ImVec2(sc_w, top_h);
        s.legend = plot::Legend::TopLeft;
        plot::begin("##scatter", s);
        const double diag[2] = {rr.lo, rr.hi};
        plot::line("y = x (no error)", diag, diag, 2, IM_COL32(60, 60, 60, 200), 1.0f);
        std::vector<double> ox, oy, tx, ty;
        for (size_t t = 0; t < n; ++t) {
            (is_top[t] ? tx : ox).push_back(r.exact_logit[t]);
            (is_top[t] ? ty : oy).push_back(r.approx_logit[t]);
        }
        plot::scatter("tokens", ox.data(), oy.data(), int(ox.size()), plot::color(0, 0.45f), 2.2f);
        plot::scatter("10 heaviest tokens (exact)", tx.data(), ty.data(), int(tx.size()), plot::color(3), 4.0f);
        char buf[96];
        std::snprintf(buf, sizeof buf, "RMSE %.4f, correlation %.5f", r.logit_rmse, r.logit_corr);
        plot::corner_text(3, buf, IM_COL32(30, 30, 30, 255));
        plot::end();
    }
    ImGui::SameLine();
    // ---- softmax weights over tokens --------------------------------------------------------
    {
        const bool rank = A.order == 0;
        plot::Spec s;
        s.title = rank ? "Softmax weights, tokens ranked by exact weight: exact (line) vs compressed (dots)"
                       : "Softmax weights over the token positions: exact vs compressed";
        s.xlabel = rank ? "rank of the token by exact weight (log)" : "token position";
        s.ylabel = A.log_weights ? "attention weight (log)" : "attention weight";
        if (rank) {
            s.xlog = true;
            s.x = {0.8, double(n) * 1.25};
        } else {
            s.x = {-0.5, double(n) - 0.5};
        }
        s.size = ImVec2(0, top_h);
        if (A.log_weights) {
            s.ylog = true;
            s.y = {1e-6, 1.5};
        } else {
            const auto rr = plotmath::merge(plotmath::data_range(r.exact_w), plotmath::data_range(r.approx_w));
            s.y = {0, rr.hi * 1.1};
        }
        plot::begin("##weights", s);
        std::vector<int> order(n);
        for (size_t t = 0; t < n; ++t) order[t] = int(t);
        if (rank) {
            std::sort(order.begin(), order.end(), [&](int a, int b) { return r.exact_w[size_t(a)] > r.exact_w[size_t(b)]; });
            std::vector<double> x(n), ye(n), ya(n);
            for (size_t i = 0; i < n; ++i) {
                x[i] = double(i + 1);
                ye[i] = r.exact_w[size_t(order[i])];
                ya[i] = r.approx_w[size_t(order[i])];
            }
            plot::scatter(("compressed: " + A.method.label()).c_str(), x.data(), ya.data(), int(n), plot::color(1, 0.75f), 2.5f);
            plot::line("exact", x.data(), ye.data(), int(n), plot::color(0), 2.0f);
        } else {
            plot::line_seq("exact", r.exact_w.data(), int(n), plot::color(0, 0.9f), 0, 1, 1.4f);
            plot::line_seq(("compressed: " + A.method.label()).c_str(), r.approx_w.data(), int(n), plot::color(1, 0.8f), 0, 1, 1.2f);
        }
        plot::end();
        const auto& h = plot::last_hover();
        if (h.valid && h.index >= 0 && size_t(h.index) < n) {
            const size_t t = size_t(order[size_t(h.index)]);
            ImGui::BeginTooltip();
            ImGui::Text("token %zu: exact weight %.5f, compressed %.5f", t, r.exact_w[t], r.approx_w[t]);
            ImGui::Text("logits: exact %.3f, compressed %.3f", r.exact_logit[t], r.approx_logit[t]);
            ImGui::EndTooltip();
        }
    }

    // ---- bottom: metrics and the comparison table -------------------------------------------
    ImGui::BeginChild("att_metrics", ImVec2(std::floor(avail.x * 0.34f), bot_h), false);
    ImGui::Text("Query: layer %d, query head %d (KV head %d), position %d", A.layer, A.head, kvh, A.pos);
    ImGui::Separator();
    ImGui::Text("attention output cosine    %.5f", r.out_cos);
    ImGui::Text("output relative error      %.4f", r.out_rel);
    ImGui::Text("top-1 / top-5 / top-10 overlap  %.0f%% / %.0f%% / %.0f%%", 100 * r.top[0], 100 * r.top[1], 100 * r.top[2]);
    ImGui::Text("weight error (TV)          %.4f", r.weight_tv);
    ImGui::Spacing();
    ImGui::TextUnformatted("The 10 heaviest tokens:");
    if (ImGui::BeginTable("top", 4,
                          ImGuiTableFlags_Borders | ImGuiTableFlags_RowBg | ImGuiTableFlags_SizingStretchProp |
                              ImGuiTableFlags_ScrollY,
                          ImVec2(0, ImGui::GetContentRegionAvail().y))) {
        ImGui::TableSetupScrollFreeze(0, 1);
        ImGui::TableSetupColumn("token");
        ImGui::TableSetupColumn("exact weight");
        ImGui::TableSetupColumn("compressed weight");
        ImGui::TableSetupColumn("exact logit");
        ImGui::TableHeadersRow();
        for (int t : r.top_exact) {
            ImGui::TableNextRow();
            ImGui::TableNextColumn();
            ImGui::Text("%d", t);
            ImGui::TableNextColumn();
            ImGui::Text("%.4f", r.exact_w[size_t(t)]);
            ImGui::TableNextColumn();
            ImGui::Text("%.4f", r.approx_w[size_t(t)]);
            ImGui::TableNextColumn();
            ImGui::Text("%.3f", r.exact_logit[size_t(t)]);
        }
        ImGui::EndTable();
    }
    ImGui::EndChild();
    ImGui::SameLine();
    ImGui::BeginChild("att_table", ImVec2(0, bot_h), false);
    ImGui::TextUnformatted("Every method on this query:");
    const ImGuiTableFlags tf = ImGuiTableFlags_Borders | ImGuiTableFlags_RowBg | ImGuiTableFlags_ScrollY |
                               ImGuiTableFlags_SizingStretchProp;
    const float foot = 2 * ImGui::GetTextLineHeightWithSpacing() + 4;
    if (ImGui::BeginTable("cmp", 8, tf, ImVec2(0, ImGui::GetContentRegionAvail().y - foot))) {
        ImGui::TableSetupScrollFreeze(0, 1);
        static const char* cols[8][2] = {
            {"method", "click a row to select the method"},
            {"bits/coord", "storage per coordinate, keys and values averaged, every norm, scale and fp16 token included"},
            {"output cos", "cosine between the attention output and the exact one (1 = identical direction)"},
            {"top-1", "is the heaviest token (exact) also the heaviest with compressed keys?"},
            {"top-5", "share of the 5 heaviest tokens (exact) also among the 5 heaviest with compressed keys"},
            {"top-10", "share of the 10 heaviest tokens (exact) also among the 10 heaviest with compressed keys"},
            {"logit RMSE", "root mean square error of the logits q·k/√d"},
            {"weight error", "total variation distance of the softmax weights: ½ Σ |exact − compressed|"}};
        for (auto& col : cols) ImGui::TableSetupColumn(col[0]);
        ImGui::TableNextRow(ImGuiTableRowFlags_Headers);
        for (int col = 0; col < 8; ++col) {
            ImGui::TableSetColumnIndex(col);
            ImGui::TableHeader(cols[col][0]);
            if (ImGui::IsItemHovered()) ImGui::SetTooltip("%s", cols[col][1]);
        }
        for (size_t i = 0; i < A.table_methods.size(); ++i) {
            const auto& m = A.table_methods[i];
            const auto& t = A.table[i];
            ImGui::TableNextRow();
            ImGui::TableNextColumn();
            if (ImGui::Selectable(m.label().c_str(), m == A.method, ImGuiSelectableFlags_SpanAllColumns)) A.method = m;
            if (!A.table_errors[i].empty()) {
                ImGui::TableNextColumn();
                ImGui::TextDisabled("n/a");
                if (ImGui::IsItemHovered()) ImGui::SetTooltip("%s", A.table_errors[i].c_str());
                continue;
            }
            ImGui::TableNextColumn();
            ImGui::Text("%.3f", A.table_bits[i]);
            ImGui::TableNextColumn();
            ImGui::Text("%.5f", t.out_cos);
            ImGui::TableNextColumn();
            ImGui::Text("%.0f%%", 100 * t.top[0]);
            ImGui::TableNextColumn();
            ImGui::Text("%.0f%%", 100 * t.top[1]);
            ImGui::TableNextColumn();
            ImGui::Text("%.0f%%", 100 * t.top[2]);
            ImGui::TableNextColumn();
            ImGui::Text("%.4f", t.logit_rmse);
            ImGui::TableNextColumn();
            ImGui::Text("%.4f", t.weight_tv);
        }
        ImGui::EndTable();
    }
    help_text("Hover a column header for its definition. tqkv-mse logits shrink by about (1 − MSE), the slope of the "
              "scatter, so attention gets a little flatter; tqkv-prod and QJL are unbiased but noisier.");
    ImGui::EndChild();
}

}  // namespace ex
