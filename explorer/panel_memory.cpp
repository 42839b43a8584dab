// Panel 5: memory per token by method, and the attend benchmark on a background thread.
#include <imgui.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

#include "app.hpp"
#include "plot.hpp"

namespace ex {
namespace {

struct MemRow {
    std::string label;
    double bytes = 0;  // per token, one layer, all KV heads, keys + values
    double bits = 0;   // per coordinate
    ImU32 col = 0;
    std::string help;
};

ImU32 family_color(Family f) {
    switch (f) {
        case Family::TqMse: return plot::color(0);
        case Family::TqProd: return plot::color(9);
        case Family::Qjl: return plot::color(4);
        case Family::Polar: return plot::color(2);
        case Family::Kivi: return plot::color(1);
        case Family::Turbo: return plot::color(3);
        case Family::Q4_0:
        case Family::Q4_0Rot:
        case Family::Q4_0Rots:
        case Family::Q8_0:
        case Family::Q8_0Rot:
        case Family::Q8_0Rots: return plot::color(5);
        case Family::Fp16: return plot::color(7);
    }
    return plot::color(7);
}

ImU32 bench_color(const std::string& m) {
    if (m == "fp32") return IM_COL32(40, 40, 40, 255);
    if (m == "fp16") return plot::color(7);
    if (m.rfind("tqkv-prod", 0) == 0) return plot::color(9);
    if (m == "tqkv-mse-2") return plot::color(2);
    if (m == "tqkv-mse-3") return plot::color(1);
    if (m == "tqkv-mse-4") return plot::color(0);
    if (m == "tqkv-mse-2.5") return plot::color(4);
    return plot::color(3);
}

// Budget tiers: colours from dark (most bits) to light (fewest), grey for evicted — sequential, so
// the strip reads as "how much is left of each position" even in grey scale.
constexpr int kTierKinds = 4;  // exact, 4-bit, 2-bit, evicted (index 3)
ImU32 tier_color(int tier) {
    static const ImU32 c[kTierKinds] = {plot::heat_color(0.05), plot::heat_color(0.5), plot::heat_color(0.9),
                                        IM_COL32(205, 205, 205, 255)};
    return c[std::clamp(tier, 0, kTierKinds - 1)];
}

std::string tier_name(int tier) {
    if (tier == 0) return "exact (fp16)";
    const auto tiers = tqkv::TieredOptions{}.tiers;  // the rates the "tiered" spec uses
    if (tier <= int(tiers.size())) {
        const auto& r = tiers[size_t(tier) - 1];
        char buf[64];
        std::snprintf(buf, sizeof buf, "%g-bit (K%gV%g)", r.key_bits, r.key_bits, r.value_bits);
        return buf;
    }
    return "evicted";
}

const char* policy_label(BudgetPolicy p) {
    static const char* l[kBudgetPolicies] = {"tiered (tqkv)", "H2O", "SnapKV", "StreamingLLM"};
    return l[int(p)];
}

// Below the bytes and speed: which tier every position of one (layer, KV head) ends up in under
// a byte budget, and the importance that decided it. Takes the rest of the panel's height.
void budget_tiers(App& app) {
    auto& M = app.mem;
    const auto& D = app.dump;
    M.tiers_open = ImGui::CollapsingHeader("Budget tiers: where a budgeted cache keeps its bits", ImGuiTreeNodeFlags_DefaultOpen);
    if (!M.tiers_open) return;
    // Policy, budget and data decide the run; layer and KV head only what is drawn of it.
    const TierQuery want{M.tier_policy, M.tier_div, app.data_gen};
    if (!(M.tier_sim.query() == want) || (!M.tier_sim.running() && !M.tier_sim.result())) M.tier_sim.start(want, D);
    const auto R = M.tier_sim.result();
    const bool stale = M.tier_sim.running() || !R || !(R->q == want);

    help_text("The dump replayed token by token (append, then attend its query: attention sets each token's importance) into "
              "a cache of a fixed fraction of fp16. Tiered: 4 sinks and the last 16 tokens stay exact; older ones drop to 4, "
              "then 2 bits where importance × distortion per byte saved is least; eviction only once all else is at 2 bits. "
              "The baselines keep tokens exact and evict.");
    const float left_w = 390;
    ImGui::BeginChild("tiers_left", ImVec2(left_w, 0), false);
    ImGui::SetNextItemWidth(130);
    if (ImGui::BeginCombo("policy", policy_label(M.tier_policy))) {
        for (int p = 0; p < kBudgetPolicies; ++p) {
            if (ImGui::Selectable(policy_label(BudgetPolicy(p)), BudgetPolicy(p) == M.tier_policy)) M.tier_policy = BudgetPolicy(p);
            if (ImGui::IsItemHovered()) ImGui::SetTooltip("%s", policy_help(BudgetPolicy(p)));
        }
        ImGui::EndCombo();
    }
    if (ImGui::IsItemHovered()) ImGui::SetTooltip("%s", policy_help(M.tier_policy));
    ImGui::SameLine();
    ImGui::SetNextItemWidth(120);
    ImGui::SliderInt("budget", &M.tier_div, 4, 16, "1/%d of fp16");
    M.tier_div = std::clamp(M.tier_div, 2, 64);  // ctrl+click lets one type any value
    layer_head_picker(app, &M.tier_layer, &M.tier_kv_head, true);

    // Per tier: tokens of the chosen (layer, KV head) — the table doubles as the legend.
    const size_t T = D.tokens;
    std::vector<int> tier_at(T, kTierKinds - 1);  // evicted unless held
    std::vector<float> score_at(T, 0.0f);
    size_t count[kTierKinds] = {};
    const std::vector<tqkv::HeldToken>* held = nullptr;
    if (R && R->error.empty() && R->tokens == T && R->layers == D.layers && R->kv_heads == D.kv_heads)
        held = &R->held[size_t(M.tier_layer) * R->kv_heads + M.tier_kv_head];
    if (held)
        for (const auto& h : *held) {
            const size_t p = size_t(h.position);
            if (p >= T) continue;
            tier_at[p] = std::min(h.tier, kTierKinds - 2);
            score_at[p] = h.score;
        }
    for (int t : tier_at) ++count[t];
    if (ImGui::BeginTable("tiers", 3, ImGuiTableFlags_SizingFixedFit | ImGuiTableFlags_RowBg | ImGuiTableFlags_BordersInnerH)) {
        ImGui::TableSetupColumn("tier (this layer and KV head)");
        ImGui::TableSetupColumn("tokens");
        ImGui::TableSetupColumn("of all");
        ImGui::TableHeadersRow();
        for (int t = 0; t < kTierKinds; ++t) {
            ImGui::TableNextRow();
            ImGui::TableNextColumn();
            const float s = ImGui::GetTextLineHeight();
            ImGui::PushID(t);
            ImGui::ColorButton("##swatch", ImGui::ColorConvertU32ToFloat4(tier_color(t)),
                               ImGuiColorEditFlags_NoTooltip | ImGuiColorEditFlags_NoDragDrop, ImVec2(s, s));
            ImGui::PopID();
            ImGui::SameLine();
            ImGui::TextUnformatted(tier_name(t).c_str());
            ImGui::TableNextColumn();
            if (held) ImGui::Text("%zu", count[t]);
            else ImGui::TextDisabled("—");
            ImGui::TableNextColumn();
            if (held) ImGui::Text("%.0f%%", 100.0 * double(count[t]) / double(std::max<size_t>(1, T)));
        }
        ImGui::EndTable();
    }
    if (R && R->error.empty()) {
        // Totals are over every layer and KV head (the budget is), not just the one drawn.
        ImGui::Text("budget %s = %s fp16 / %d", plotmath::format_bytes(R->budget_bytes).c_str(),
                    plotmath::format_bytes(R->fp16_bytes).c_str(), R->q.budget_div);
        ImGui::Text("used %s (%.1f%%), %zu evicted · %.2f s", plotmath::format_bytes(R->format_bytes).c_str(),
                    100.0 * R->format_bytes / std::max(1.0, R->budget_bytes), R->evicted, R->seconds);
        if (ImGui::IsItemHovered())
            ImGui::SetTooltip("Over all %d layers × %d KV heads (each gets an equal share of the budget): fp16 would take %s for\n"
                              "%zu tokens; the cache holds %s (peak %s) and evicted %zu tokens in all.\n"
                              "%zu appends + attends of one token each took %.2f s%s.\ncache: %s",
                              R->layers, R->kv_heads, plotmath::format_bytes(R->fp16_bytes).c_str(), R->tokens,
                              plotmath::format_bytes(R->format_bytes).c_str(), plotmath::format_bytes(R->peak_bytes).c_str(),
                              R->evicted, R->tokens * size_t(R->layers), R->seconds,
                              R->synthetic_queries ? " (no queries in the dump: each token's key asked instead)" : "",
                              R->name.c_str());
    } else if (R) {
        ImGui::PushStyleColor(ImGuiCol_Text, ImVec4(0.8f, 0.1f, 0.1f, 1));
        ImGui::TextWrapped("%s", R->error.c_str());
        ImGui::PopStyleColor();
    }
    ImGui::EndChild();
    ImGui::SameLine();

    // ---- the strip and the importance over position (same x axis) -----------------------------
    ImGui::BeginChild("tiers_right", ImVec2(0, 0), false);
    const float margin = 64;  // both plots: room for the importance plot's log tick labels
    char title[160];
    std::snprintf(title, sizeof title, "Tier of each position after all %zu tokens, layer %d, KV head %d (%s, 1/%d of fp16)", T,
                  M.tier_layer, M.tier_kv_head, policy_label(M.tier_policy), M.tier_div);
    plot::Spec ss;
    ss.title = title;
    ss.x = {0, double(std::max<size_t>(T, 1))};
    ss.y = {0, 1};
    ss.yticks = 0;
    ss.margin_left = margin;
    ss.legend = plot::Legend::None;
    ss.hover = false;  // its own read-out below
    ss.size = ImVec2(0, 62);
    plot::begin("##tier_strip", ss);
    if (held)
        for (const auto& run : plotmath::runs(tier_at)) plot::xband(double(run.begin), double(run.end), tier_color(run.label));
    if (stale) {
        char msg[64];
        std::snprintf(msg, sizeof msg, "simulating… %.0f%%", 100.0 * M.tier_sim.progress());
        plot::corner_text(1, msg, IM_COL32(200, 30, 30, 255));
    }
    double mx = 0, my = 0;
    if (held && plot::mouse(&mx, &my) && mx >= 0 && mx < double(T)) {
        const size_t p = size_t(mx);
        if (tier_at[p] == kTierKinds - 1) ImGui::SetTooltip("position %zu: evicted", p);
        else ImGui::SetTooltip("position %zu: %s, importance %.3g", p, tier_name(tier_at[p]).c_str(), score_at[p]);
    }
    plot::end();

    // Importance of every held token (the policy's own measure), coloured by tier.
    const bool tiered = M.tier_policy == BudgetPolicy::Tiered;
    std::vector<double> xs[kTierKinds - 1], ys[kTierKinds - 1];
    double hi = 0;
    for (size_t p = 0; p < T && held; ++p) hi = std::max(hi, double(score_at[p]));
    const double lo_floor = hi * 1e-5;  // a few decades below the top: the rest is "never attended"
    double lo = hi;
    for (size_t p = 0; p < T && held; ++p)
        if (tier_at[p] < kTierKinds - 1 && score_at[p] > 0) {
            xs[tier_at[p]].push_back(double(p));
            ys[tier_at[p]].push_back(std::max(double(score_at[p]), lo_floor));
            lo = std::min(lo, ys[tier_at[p]].back());
        }
    plot::Spec is;
    is.title = tiered ? "Importance over position (attention relative to a uniform share, decayed mean; 1 = average)"
               : M.tier_policy == BudgetPolicy::H2O    ? "Accumulated attention over position (H2O's heavy-hitter score)"
               : M.tier_policy == BudgetPolicy::SnapKV ? "Attention from the last 32 queries over position (SnapKV's votes)"
                                                       : "Score over position";
    is.xlabel = "position";
    is.ylabel = tiered ? "importance (log)" : "score (log)";
    is.x = ss.x;
    is.ylog = true;
    is.y = hi > 0 ? plotmath::nice_bounds({lo, hi}, 5, true) : plotmath::Range{0.1, 10};
    is.margin_left = margin;
    is.legend = plot::Legend::None;  // the table on the left is the legend
    is.size = ImVec2(0, 0);
    plot::begin("##tier_importance", is);
    for (int t = 0; t < kTierKinds - 1; ++t)
        plot::scatter(tier_name(t).c_str(), xs[t].data(), ys[t].data(), int(xs[t].size()), tier_color(t), 2.0f);
    if (tiered) plot::hline(1.0, IM_COL32(90, 90, 90, 255), 1.0f, true);
    if (held && hi <= 0)
        plot::corner_text(0, "no scores: StreamingLLM keeps the sinks and the most recent tokens whatever they attract",
                          IM_COL32(90, 90, 90, 255));
    plot::end();
    ImGui::EndChild();
}

}  // namespace

void panel_memory(App& app) {
    auto& M = app.mem;
    const auto& D = app.dump;
    help_text(
        "What the cache costs. Left: bytes per token for one layer (all KV heads, keys + values, every norm, scale and fp16 "
        "residual token included), measured on the loaded data. Right: the fused attention over the compressed cache "
        "against exact attention over fp32/fp16 caches (same kernels, one thread, one query token, all heads), run in the "
        "background — the window stays responsive.");
    ImGui::Spacing();
    const ImVec2 avail = ImGui::GetContentRegionAvail();
    const float spx = ImGui::GetStyle().ItemSpacing.x;
    const float left_w = std::floor((avail.x - spx) * 0.46f);
    // The budget-tier section below takes about 40% when open (its state of the last frame); the
    // columns above keep room for their rows and scroll when the window is too short for both.
    const float tiers_h = M.tiers_open ? std::clamp(avail.y * 0.42f, 260.0f, 340.0f) : ImGui::GetFrameHeightWithSpacing();
    const float top_h = std::max(200.0f, avail.y - tiers_h - ImGui::GetStyle().ItemSpacing.y);

    // ---- memory -----------------------------------------------------------------------------
    ImGui::BeginChild("mem_left", ImVec2(left_w, top_h), false);
    std::vector<MemRow> rows;
    const double fp32 = 2.0 * D.kv_heads * D.head_dim * 4;
    rows.push_back({"fp32", fp32, 32, IM_COL32(40, 40, 40, 255), "uncompressed single precision"});
    // q4_0-rot / q8_0-rot store exactly q4_0 / q8_0 (the rotation costs no bytes): not repeated here.
    const std::vector<MethodSpec> methods = {{Family::Fp16, 16}, {Family::Q8_0, 8},   {Family::Kivi, 4},   {Family::Q4_0, 4},
                                             {Family::Turbo, 4}, {Family::Turbo, 3},
                                             {Family::Polar, 4}, {Family::Kivi, 2},   {Family::TqMse, 4},  {Family::TqProd, 4},
                                             {Family::TqMse, 3.5}, {Family::TqMse, 3}, {Family::TqMse, 2.5}, {Family::TqMse, 2},
                                             {Family::Qjl, 2}};
    std::string errors, unavailable;
    for (const auto& m : methods) {
        double bytes = 0;
        bool ok = true;
        for (int h = 0; h < D.kv_heads && ok; ++h) {
            std::string err;
            const auto c = app.heads.get(D, 0, h, m, &err);
            if (!c) {
                ok = false;
                errors += m.label() + ": " + err + "\n";
                unavailable += (unavailable.empty() ? "" : ", ") + m.label();
                break;
            }
            bytes += double(c->k.bytes + c->v.bytes);
        }
        if (!ok) continue;
        bytes /= double(D.tokens);
        rows.push_back({m.label(), bytes, 8.0 * bytes / (2.0 * D.kv_heads * D.head_dim), family_color(m.family), family_help(m.family)});
    }
    std::sort(rows.begin(), rows.end(), [](const MemRow& a, const MemRow& b) { return a.bytes > b.bytes; });
    std::vector<std::string> labels, texts, tips;
    std::vector<double> values;
    std::vector<ImU32> colors;
    for (const auto& r : rows) {
        labels.push_back(r.label);
        values.push_back(r.bytes);
        colors.push_back(r.col);
        char buf[96];
        if (r.bits >= 16) std::snprintf(buf, sizeof buf, "%.0f B · %.0f bits/coord", r.bytes, r.bits);
        else std::snprintf(buf, sizeof buf, "%.0f B · %.2f bits/coord · %.1f× less than fp16", r.bytes, r.bits, fp32 / 2 / r.bytes);
        texts.push_back(buf);
        char tip[400];
        std::snprintf(tip, sizeof tip, "%s\n%.1f bytes per token per layer, %.3f bits per coordinate\nwhole model (%d layers) at %d tokens: %s",
                      r.help.c_str(), r.bytes, r.bits, D.layers, M.ctx_tokens,
                      plotmath::format_bytes(r.bytes * D.layers * M.ctx_tokens).c_str());
        tips.push_back(tip);
    }
    char title[200];
    std::snprintf(title, sizeof title, "Bytes per token per layer (%d KV heads × d=%d, keys + values)", D.kv_heads,
                  D.head_dim);
    char xlabel[96];
    std::snprintf(xlabel, sizeof xlabel, "bytes per token per layer, measured on %zu tokens", D.tokens);
    plot::BarSpec bs;
    bs.title = title;
    bs.xlabel = xlabel;
    bs.x = {0, fp32 * 1.02};
    const float bar_h = std::max(60 + ImGui::GetTextLineHeight() * float(rows.size()), ImGui::GetContentRegionAvail().y - 180);
    bs.size = ImVec2(0, bar_h);
    plot::hbars("##bytes", labels, values, colors, bs, &texts, &tips);
    ImGui::SetNextItemWidth(160);
    ImGui::SliderInt("context length for the model total", &M.ctx_tokens, 1024, 1 << 20, "%d tokens", ImGuiSliderFlags_Logarithmic);
    {
        // The whole model's cache at that context length, for the common choices.
        const auto find = [&](const char* l) -> double {
            for (const auto& r : rows)
                if (r.label == l) return r.bytes;
            return 0;
        };
        ImGui::Text("Whole model (%d layers) at %d tokens:", D.layers, M.ctx_tokens);
        std::string line;
        for (const char* l : {"fp16", "q4_0", "tqkv-mse-4", "tqkv-mse-3"}) {
            const double b = find(l);
            line += std::string(l) + " " + (b > 0 ? plotmath::format_bytes(b * D.layers * M.ctx_tokens) : "n/a") + "   ";
        }
        ImGui::TextUnformatted(line.c_str());
        help_text("KIVI keeps its last 128 tokens in fp16, so its cost per token falls as the context grows; tqkv and q4_0 "
                  "cost the same for every token. The rotation and codebook tables are shared by all tokens (not counted).");
    }
    if (!errors.empty()) {
        ImGui::PushStyleColor(ImGuiCol_Text, ImVec4(0.8f, 0.1f, 0.1f, 1));
        ImGui::TextWrapped("Not available for head dim %d: %s (hover for why)", D.head_dim, unavailable.c_str());
        ImGui::PopStyleColor();
        if (ImGui::IsItemHovered()) ImGui::SetTooltip("%s", errors.c_str());
    }
    ImGui::EndChild();
    ImGui::SameLine();

    // ---- speed ------------------------------------------------------------------------------
    ImGui::BeginChild("mem_right", ImVec2(0, top_h), false);
    auto& B = M.bench;
    const bool running = B.running();
    ImGui::BeginDisabled(running);
    ImGui::TextUnformatted("tokens:");
    for (int i = 0; i < 5; ++i) {
        ImGui::SameLine();
        char lab[32];
        std::snprintf(lab, sizeof lab, "%zuk", kBenchTokens[i] / 1024);
        ImGui::Checkbox(lab, &M.tokens_on[i]);
    }
    ImGui::TextUnformatted("methods:");
    for (int i = 0; i < 8; ++i) {
        // Wrap the row of check boxes when the next one would not fit.
        const float w = ImGui::GetFrameHeight() + ImGui::GetStyle().ItemInnerSpacing.x + ImGui::CalcTextSize(kBenchMethods[i]).x;
        const float right = ImGui::GetWindowPos().x + ImGui::GetWindowContentRegionMax().x;
        if (ImGui::GetItemRectMax().x + ImGui::GetStyle().ItemSpacing.x + w < right) ImGui::SameLine();
        ImGui::Checkbox(kBenchMethods[i], &M.methods_on[i]);
    }
    ImGui::SetNextItemWidth(120);
    ImGui::SliderFloat("seconds per point", &M.seconds, 0.05f, 2.0f, "%.2f", ImGuiSliderFlags_Logarithmic);
    ImGui::EndDisabled();
    ImGui::SameLine(0, 20);
    if (!running) {
        if (ImGui::Button("Run attend benchmark")) {
            BenchConfig bc;
            bc.heads = D.heads;
            bc.kv_heads = D.kv_heads;
            bc.dim = D.head_dim;
            bc.tokens.clear();
            bc.methods.clear();
            for (int i = 0; i < 5; ++i)
                if (M.tokens_on[i]) bc.tokens.push_back(kBenchTokens[i]);
            for (int i = 0; i < 8; ++i)
                if (M.methods_on[i]) bc.methods.push_back(kBenchMethods[i]);
            bc.seconds = M.seconds;
            B.start(bc);
        }
    } else if (ImGui::Button("Cancel")) {
        B.cancel();
    }
    char overlay[160];
    std::snprintf(overlay, sizeof overlay, "%s (%.0f%%)", B.status().c_str(), 100.0 * B.progress());
    ImGui::ProgressBar(B.progress(), ImVec2(-1, 0), overlay);

    const auto results = B.rows();
    const auto bc = B.config();
    std::map<std::string, std::vector<const BenchRow*>> by;
    std::vector<std::string> order;
    for (const auto& r : results) {
        if (!by.count(r.method)) order.push_back(r.method);
        by[r.method].push_back(&r);
    }
    {
        plot::Spec s;
        char t2[200];
        std::snprintf(t2, sizeof t2, "Attention time per query token (%d heads / %d KV heads, d=%d, kernel %s)", bc.heads,
                      bc.kv_heads, bc.dim, tqkv::default_kernel().c_str());
        s.title = t2;
        s.xlabel = "cached tokens (log)";
        s.ylabel = "µs per query token (log)";
        s.xlog = s.ylog = true;
        double xlo = 1e300, xhi = 0, ylo = 1e300, yhi = 0;
        for (const auto& r : results) {
            xlo = std::min(xlo, double(r.tokens));
            xhi = std::max(xhi, double(r.tokens));
            ylo = std::min(ylo, r.ns_per_query / 1000);
            yhi = std::max(yhi, r.ns_per_query / 1000);
        }
        if (results.empty()) xlo = 1024, xhi = 16384, ylo = 1, yhi = 1000;
        s.x = plotmath::padded({xlo, xhi}, 0.08, true);
        s.y = plotmath::nice_bounds({ylo, yhi}, 5, true);
        s.size = ImVec2(0, std::max(200.0f, std::floor(ImGui::GetContentRegionAvail().y * 0.55f)));
        s.legend = plot::Legend::TopLeft;
        plot::begin("##speed", s);
        for (const auto& m : order) {
            std::vector<double> x, y;
            for (const auto* r : by[m]) x.push_back(double(r->tokens)), y.push_back(r->ns_per_query / 1000);
            plot::line(m.c_str(), x.data(), y.data(), int(x.size()), bench_color(m), 2.0f);
            plot::scatter(("##" + m).c_str(), x.data(), y.data(), int(x.size()), bench_color(m), 3.5f);
        }
        if (results.empty()) plot::corner_text(0, "press \"Run attend benchmark\"", IM_COL32(90, 90, 90, 255));
        plot::end();
    }
    // Table: one row per method, one column per context length.
    std::map<size_t, double> fp32_ns;
    std::vector<size_t> Ts;
    for (const auto& r : results) {
        if (r.method == "fp32") fp32_ns[r.tokens] = r.ns_per_query;
        if (std::find(Ts.begin(), Ts.end(), r.tokens) == Ts.end()) Ts.push_back(r.tokens);
    }
    const ImGuiTableFlags tf = ImGuiTableFlags_Borders | ImGuiTableFlags_RowBg | ImGuiTableFlags_ScrollY |
                               ImGuiTableFlags_SizingFixedFit;
    const float foot = 3 * ImGui::GetTextLineHeightWithSpacing() + 4;
    const float table_h = std::max(5 * ImGui::GetFrameHeightWithSpacing(), ImGui::GetContentRegionAvail().y - foot);
    if (ImGui::BeginTable("bench", 3 + int(Ts.size()), tf, ImVec2(0, table_h))) {
        ImGui::TableSetupScrollFreeze(0, 1);
        ImGui::TableSetupColumn("method");
        ImGui::TableSetupColumn("bytes/token");
        ImGui::TableSetupColumn("cos vs fp32");
        std::vector<std::string> heads;
        for (size_t T : Ts) heads.push_back(std::to_string(T) + " tokens");
        for (const auto& h : heads) ImGui::TableSetupColumn(h.c_str());
        ImGui::TableHeadersRow();
        for (const auto& m : order) {
            const auto& rs = by[m];
            ImGui::TableNextRow();
            ImGui::TableNextColumn();
            ImGui::TextColored(ImGui::ColorConvertU32ToFloat4(bench_color(m)), "%s", m.c_str());
            ImGui::TableNextColumn();
            ImGui::Text("%.0f", rs.front()->bytes_per_token);
            ImGui::TableNextColumn();
            ImGui::Text("%.5f", rs.back()->cos_vs_fp32);
            for (size_t T : Ts) {
                ImGui::TableNextColumn();
                const BenchRow* row = nullptr;
                for (const auto* r : rs)
                    if (r->tokens == T) row = r;
                if (!row) {
                    ImGui::TextDisabled("—");
                } else if (fp32_ns.count(T)) {
                    ImGui::Text("%.1f  (%.2f×)", row->ns_per_query / 1000, fp32_ns[T] / row->ns_per_query);
                } else {
                    ImGui::Text("%.1f", row->ns_per_query / 1000);
                }
            }
        }
        ImGui::EndTable();
    }
    help_text("Cells: µs per query token, fastest of several batches (speed vs exact fp32 attention; > 1× = faster). Decode is bound by memory traffic, so fewer bytes per token "
              "pay off most at long contexts. Gaussian data; the baselines (q4_0, KIVI, PolarQuant) only have reference "
              "loops here and are not timed — see tqkv-bench report.");
    ImGui::EndChild();

    // ---- budget tiers -----------------------------------------------------------------------
    budget_tiers(app);
}

}  // namespace ex

