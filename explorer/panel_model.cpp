// Panel 6: a real model with two KV caches — the text coloured by how much more (or less) each
// token costs under cache B than under cache A, the per-layer rate plan of an auto preset, and
// greedy continuations side by side. The work runs on ModelWork's thread (model_analysis.hpp).
#include <imgui.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "app.hpp"
#include "plot.hpp"

namespace ex {
namespace {

const ImVec4 kRed(0.8f, 0.1f, 0.1f, 1), kBlue(0.1f, 0.3f, 0.6f, 1), kMuted(0.40f, 0.40f, 0.45f, 1);

ImU32 diverging_color(double t) {
    const auto c = plotmath::diverging(t);
    return plot::rgba(c[0], c[1], c[2], 1.0f);
}

// Bytes of the well-formed UTF-8 sequence starting at s[i] (0: not one).
size_t utf8_length(const std::string& s, size_t i) {
    const unsigned char c = s[i];
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return 0;
    for (size_t k = 1; k < n; ++k)
        if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return 0;
    return n;
}

// A token's text as drawn: line breaks and tabs made visible, other control bytes and bytes that
// are not UTF-8 (a byte model's or a random model's stray bytes) as '·'.
std::string visible(const std::string& piece) {
    std::string s;
    for (size_t i = 0; i < piece.size();) {
        const unsigned char c = piece[i];
        const size_t n = utf8_length(piece, i);
        if (c == '\n') s += "↵";
        else if (c == '\t') s += "→";
        else if (c == '\r') {
        } else if (n == 0 || c < 0x20 || c == 0x7f) s += "·";
        else s.append(piece, i, n);
        i += std::max<size_t>(n, 1);
    }
    return s;
}

// Tokens left to right on coloured backgrounds, wrapped at the child window's width (a line break
// in a token breaks the line). Returns the hovered token or -1. outline: one token framed.
int token_flow(const char* id, const std::vector<std::string>& pieces, const std::function<ImU32(int)>& bg, ImVec2 size,
               int outline = -1, const std::vector<std::string>* lead = nullptr) {
    int hovered = -1;
    ImGui::BeginChild(id, size, true);
    ImDrawList* dl = ImGui::GetWindowDrawList();
    const ImVec2 origin = ImGui::GetCursorScreenPos();
    const float right = origin.x + ImGui::GetContentRegionAvail().x;
    const float lh = ImGui::GetTextLineHeight() + 3;
    const ImVec2 mouse = ImGui::GetIO().MousePos;
    const bool window_hovered = ImGui::IsWindowHovered();
    float x = origin.x, y = origin.y;
    auto place = [&](const std::string& text, ImU32 fill, ImU32 ink, int index) {
        const float w = text.empty() ? 3.0f : ImGui::CalcTextSize(text.c_str()).x;
        if (x + w > right && x > origin.x) x = origin.x, y += lh;
        const ImVec2 a(x, y), b(x + w, y + lh - 1);
        if (fill) dl->AddRectFilled(a, b, fill);
        dl->AddText(ImVec2(x, y + 1), ink, text.c_str());
        if (index >= 0 && index == outline) dl->AddRect(ImVec2(a.x - 1, a.y), ImVec2(b.x + 1, b.y), IM_COL32(0, 0, 0, 255), 0, 0, 2);
        if (index >= 0 && window_hovered && mouse.x >= a.x && mouse.x < b.x && mouse.y >= a.y && mouse.y < b.y) {
            hovered = index;
            dl->AddRect(a, b, IM_COL32(0, 0, 0, 160));
        }
        x += w;
    };
    const ImU32 ink = ImGui::GetColorU32(ImGuiCol_Text), muted = ImGui::GetColorU32(kMuted);
    auto lay = [&](const std::vector<std::string>& ps, bool colour) {
        for (size_t i = 0; i < ps.size(); ++i) {
            const std::string& p = ps[i];
            place(visible(p), colour ? bg(int(i)) : 0, colour ? ink : muted, colour ? int(i) : -1);
            if (p.find('\n') != std::string::npos) x = origin.x, y += lh;
        }
    };
    if (lead) lay(*lead, false);
    lay(pieces, true);
    ImGui::Dummy(ImVec2(right - origin.x, y + lh - origin.y));
    ImGui::EndChild();
    return hovered;
}

// The colour legend of the ΔNLL scale: blue (B better) .. white .. red (B worse).
void diverging_legend(double scale) {
    ImGui::AlignTextToFramePadding();
    ImGui::TextColored(kBlue, "B better");
    ImGui::SameLine();
    const ImVec2 p = ImGui::GetCursorScreenPos();
    const float w = 220, h = ImGui::GetFrameHeight() - 4;
    ImDrawList* dl = ImGui::GetWindowDrawList();
    const int steps = 44;
    for (int i = 0; i < steps; ++i) {
        const double t = -1 + 2.0 * (i + 0.5) / steps;
        dl->AddRectFilled(ImVec2(p.x + w * i / steps, p.y + 2), ImVec2(p.x + w * (i + 1) / steps + 0.5f, p.y + 2 + h),
                          diverging_color(t));
    }
    dl->AddRect(ImVec2(p.x, p.y + 2), ImVec2(p.x + w, p.y + 2 + h), IM_COL32(120, 120, 120, 255));
    char lo[32], hi[32];
    std::snprintf(lo, sizeof lo, "−%.2g", scale);
    std::snprintf(hi, sizeof hi, "+%.2g", scale);
    const ImU32 ink = ImGui::GetColorU32(ImGuiCol_Text);
    dl->AddText(ImVec2(p.x + 3, p.y + 2), ink, lo);
    dl->AddText(ImVec2(p.x + w / 2 - 3, p.y + 2), ink, "0");
    dl->AddText(ImVec2(p.x + w - ImGui::CalcTextSize(hi).x - 3, p.y + 2), IM_COL32(255, 255, 255, 255), hi);
    ImGui::Dummy(ImVec2(w, h + 4));
    ImGui::SameLine();
    ImGui::TextColored(kRed, "B worse");
    ImGui::SameLine();
    ImGui::TextDisabled("(nats: NLL under B − NLL under A)");
}

// A spec field with a drop-down of presets and baselines; true when the committed spec changed.
bool spec_picker(const char* label, std::string& spec, char* buf, size_t n) {
    bool changed = false;
    ImGui::PushID(label);
    ImGui::SetNextItemWidth(150);
    ImGui::InputText("##spec", buf, n);
    if (ImGui::IsItemDeactivatedAfterEdit() && spec != buf) spec = buf, changed = true;
    if (ImGui::IsItemHovered()) ImGui::SetTooltip("Any cache spec (Enter to apply):\n%s", tqkv::cache_spec_grammar());
    ImGui::SameLine(0, 2);
    if (ImGui::BeginCombo("##pick", nullptr, ImGuiComboFlags_NoPreview | ImGuiComboFlags_HeightLarge)) {
        auto item = [&](const char* name, const char* help) {
            if (ImGui::Selectable(name, spec == name) && spec != name) {
                spec = name;
                std::snprintf(buf, n, "%s", name);
                changed = true;
            }
            if (help && ImGui::IsItemHovered()) ImGui::SetTooltip("%s", help);
        };
        ImGui::TextDisabled("reference and baselines");
        for (const char* b : {"fp32", "fp16", "q8_0", "q4_0", "q4_0-rot", "kivi4", "kivi2", "turbo4", "turbo3"}) item(b, nullptr);
        ImGui::Separator();
        ImGui::TextDisabled("tqkv presets");
        for (const auto& p : tqkv::presets()) {
            const std::string help = std::string(p.spec) + ": " + p.summary;
            item(p.name, help.c_str());
        }
        for (const char* a : {"auto-3", "auto-4"}) item(a, "rates per layer chosen by the calibration within this budget");
        ImGui::EndCombo();
    }
    ImGui::SameLine();
    ImGui::TextUnformatted(label);
    ImGui::PopID();
    return changed;
}

// The rate plan: K and V bits of every layer as bars, with the probe's sensitivities.
void rate_plan(const ModelResult& R, float height) {
    ImGui::BeginChild("plan", ImVec2(0, height), true);
    ImGui::TextUnformatted("Per-layer rate plan of");
    ImGui::SameLine();
    ImGui::TextColored(kBlue, "%s", R.q.plan_spec.c_str());
    if (R.plan_pending) {
        ImGui::TextWrapped("computing… the layer sensitivities the plan needs (a probe of 2 × %d + 1 passes over "
                           "the calibration text's first tokens); the caches' comparison is ready meanwhile.", R.layers);
        ImGui::EndChild();
        return;
    }
    if (!R.plan) {
        ImGui::PushStyleColor(ImGuiCol_Text, kRed);
        ImGui::TextWrapped("%s", R.plan_error.empty() ? "no plan" : R.plan_error.c_str());
        ImGui::PopStyleColor();
        ImGui::EndChild();
        return;
    }
    const tqkv::RatePlan& P = *R.plan;
    ImGui::TextWrapped("%.3f b/coord of a budget of %.2f (codes, norms and the exact window over the context); predicted "
                       "ΔNLL %.4f nats/token",
                       P.bits_per_coord, P.budget, P.predicted);
    if (ImGui::IsItemHovered()) ImGui::SetTooltip("plan_rates(...).json():\n%s", R.plan_json.c_str());
    double top = 1;
    for (const auto& l : P.layers) top = std::max({top, l.key_bits, l.value_bits});
    top = std::ceil(top);
    if (ImGui::BeginTable("rates", 5, ImGuiTableFlags_SizingStretchProp | ImGuiTableFlags_RowBg | ImGuiTableFlags_BordersInnerH)) {
        ImGui::TableSetupColumn("layer", ImGuiTableColumnFlags_WidthFixed);
        ImGui::TableSetupColumn("key bits", ImGuiTableColumnFlags_WidthStretch, 1);
        ImGui::TableSetupColumn("value bits", ImGuiTableColumnFlags_WidthStretch, 1);
        ImGui::TableSetupColumn("K sens.", ImGuiTableColumnFlags_WidthFixed);
        ImGui::TableSetupColumn("V sens.", ImGuiTableColumnFlags_WidthFixed);
        ImGui::TableHeadersRow();
        auto bar = [&](double bits, ImU32 col) {
            const ImVec2 p = ImGui::GetCursorScreenPos();
            const float w = ImGui::GetContentRegionAvail().x, h = ImGui::GetTextLineHeight();
            const float fill = float(std::clamp(bits / top, 0.0, 1.0)) * (w - 44);
            ImGui::GetWindowDrawList()->AddRectFilled(p, ImVec2(p.x + fill, p.y + h), col);
            ImGui::SetCursorScreenPos(ImVec2(p.x + fill + 4, p.y));
            ImGui::Text("%g", bits);
        };
        for (size_t l = 0; l < P.layers.size(); ++l) {
            ImGui::TableNextRow();
            ImGui::TableNextColumn();
            ImGui::Text("%zu", l);
            ImGui::TableNextColumn();
            bar(P.layers[l].key_bits, plot::color(0, 0.8f));
            ImGui::TableNextColumn();
            bar(P.layers[l].value_bits, plot::color(1, 0.8f));
            ImGui::TableNextColumn();
            if (l < R.key_sens.size()) ImGui::Text("%.3g", R.key_sens[l]);
            ImGui::TableNextColumn();
            if (l < R.value_sens.size()) ImGui::Text("%.3g", R.value_sens[l]);
        }
        ImGui::EndTable();
    }
    help_text("Sensitivity: the expected ΔNLL (KL divergence of the next-token distribution from the exact cache's) per "
              "unit of relative coding error of that layer's keys (values), from the probe on the calibration text; the "
              "plan spends bits where they save the most loss per bit, within the budget.");
    ImGui::EndChild();
}

// Where along the text B gains or loses: the mean of NLL(B) − NLL(A) over a sliding window.
void running_difference(const std::vector<double>& d, float height) {
    if (d.empty() || height < 80) return;
    const int n = int(d.size()), win = std::clamp(n / 16, 1, 64);
    std::vector<double> mean(d.size());
    double sum = 0;
    int count = 0;  // finite values in the window (segment starts are not scored)
    for (int i = 0; i < n; ++i) {
        if (std::isfinite(d[size_t(i)])) sum += d[size_t(i)], ++count;
        if (i >= win && std::isfinite(d[size_t(i - win)])) sum -= d[size_t(i - win)], --count;
        mean[size_t(i)] = count ? sum / count : 0.0;
    }
    double lo = 0, hi = 0;
    for (double m : mean) lo = std::min(lo, m), hi = std::max(hi, m);
    const auto y = plotmath::nice_bounds(plotmath::padded({lo, hi}, 0.05), 5);
    char title[96];
    std::snprintf(title, sizeof title, "NLL(B) − NLL(A), mean of %d tokens", win);
    plot::Spec s;
    s.title = title;
    s.xlabel = "token";
    s.ylabel = "nats";
    s.x = {0, double(std::max(1, n - 1))};
    s.y = y;
    s.size = ImVec2(-1, height);
    s.legend = plot::Legend::None;
    plot::begin("##running", s);
    plot::hline(0, IM_COL32(90, 90, 90, 255), 1.0f, true);
    plot::line_seq("B − A", mean.data(), n, plot::color(3));
    plot::end();
}

// Greedy continuations under A and B side by side; tokens from the first divergence on are tinted.
void continuations(const ModelResult& R, float height) {
    const float w = (ImGui::GetContentRegionAvail().x - ImGui::GetStyle().ItemSpacing.x) / 2;
    const int div = R.first_divergence;
    if (R.cont_a.empty() && R.cont_b.empty()) {
        ImGui::TextDisabled("(no prompt: no continuations)");
        return;
    }
    if (div < 0) ImGui::Text("Greedy continuations: identical for %zu tokens.", std::min(R.cont_a.size(), R.cont_b.size()));
    else ImGui::Text("Greedy continuations: the same for %d tokens, then they part (framed: the first token that differs).", div);
    // The prompt in words, so that a long one wraps like the tokens after it.
    std::vector<std::string> lead(1);
    for (char c : R.prompt_text) {
        lead.back() += c;
        if (c == ' ' || c == '\n') lead.emplace_back();
    }
    auto tint = [div](ImU32 col) { return [div, col](int i) { return div >= 0 && i >= div ? col : ImU32(0); }; };
    const float h = height - ImGui::GetFrameHeightWithSpacing();
    const int ha = token_flow("cont_a", R.cont_a, tint(plot::color(0, 0.22f)), ImVec2(w, h), div, &lead);
    ImGui::SameLine();
    const int hb = token_flow("cont_b", R.cont_b, tint(plot::color(3, 0.22f)), ImVec2(w, h), div, &lead);
    if (const int i = std::max(ha, hb); i >= 0) {
        auto at = [i](const std::vector<std::string>& p) { return size_t(i) < p.size() ? visible(p[size_t(i)]) : "(ended)"; };
        ImGui::SetTooltip("token %d of the continuations: A \"%s\", B \"%s\"%s", i + 1, at(R.cont_a).c_str(),
                          at(R.cont_b).c_str(), i == div ? " (the first that differs)" : "");
    }
}

}  // namespace

void panel_model(App& app) {
    auto& S = app.mdl;
    help_text("A real model with its cache swapped: the same text scored with cache A and cache B, each token coloured by "
              "how many more nats it costs under B (red) or fewer (blue); the per-layer bits an auto preset chooses; and "
              "what each cache makes the model write (greedy). Loading, calibrating and the auto presets' sensitivity probe "
              "run in the background.");
    // --- the checkpoint ----------------------------------------------------------------------
    ImGui::AlignTextToFramePadding();
    ImGui::TextUnformatted("Checkpoint:");
    if (ImGui::IsItemHovered())
        ImGui::SetTooltip("A Hugging Face directory of the Llama family: config.json + model.safetensors (or shards), a\n"
                          "tokenizer.json / tokenizer.model unless the vocabulary is bytes; eval.txt beside it is\n"
                          "scored from its start and calibrates from its last 2048 bytes.");
    ImGui::SameLine();
    ImGui::SetNextItemWidth(std::min(520.0f, ImGui::GetContentRegionAvail().x - 80));
    const bool enter = ImGui::InputText("##dir", S.dir_buf, sizeof S.dir_buf, ImGuiInputTextFlags_EnterReturnsTrue);
    ImGui::SameLine();
    const bool load = ImGui::Button("Load") || enter;
    if (load) S.want.dir = S.dir_buf;

    // --- the caches and the text ------------------------------------------------------------
    bool caches = spec_picker("cache A", S.want.spec_a, S.spec_a_buf, sizeof S.spec_a_buf);
    ImGui::SameLine(0, 24);
    caches |= spec_picker("cache B", S.want.spec_b, S.spec_b_buf, sizeof S.spec_b_buf);
    if (caches) set_model_caches(app, S.want.spec_a, S.want.spec_b);  // the plan follows an auto spec
    ImGui::SameLine(0, 24);
    ImGui::SetNextItemWidth(90);
    if (ImGui::BeginCombo("plan of", S.want.plan_spec.c_str())) {
        for (const char* a : {"auto-2.5", "auto-3", "auto-3.5", "auto-4"})
            if (ImGui::Selectable(a, S.want.plan_spec == a)) S.want.plan_spec = a;
        ImGui::EndCombo();
    }
    if (ImGui::IsItemHovered()) ImGui::SetTooltip("The auto preset whose per-layer rates are shown (B's when B is one).");
    ImGui::AlignTextToFramePadding();
    ImGui::TextUnformatted("Text:");
    ImGui::SameLine();
    ImGui::RadioButton("eval.txt from its start", &S.own_text, 0);
    ImGui::SameLine();
    ImGui::SetNextItemWidth(110);
    ImGui::BeginDisabled(S.own_text != 0);
    ImGui::SliderInt("##bytes", &S.want.eval_bytes, 128, 4096, "%d bytes");
    ImGui::EndDisabled();
    S.want.eval_bytes = std::clamp(S.want.eval_bytes, 16, 1 << 20);
    ImGui::SameLine();
    bool apply_text = ImGui::RadioButton("my text", &S.own_text, 1);
    if (S.own_text) {
        ImGui::SameLine();
        ImGui::SetNextItemWidth(320);
        ImGui::InputText("##text", S.text_buf, sizeof S.text_buf);
        apply_text |= ImGui::IsItemDeactivatedAfterEdit();
        if (ImGui::IsItemHovered()) ImGui::SetTooltip("Applied when you leave the field.");
    }
    if (!S.own_text) S.want.user_text.clear();
    else if (apply_text) S.want.user_text = S.text_buf;
    ImGui::SameLine(0, 24);
    ImGui::TextUnformatted("Prompt:");
    ImGui::SameLine();
    ImGui::SetNextItemWidth(220);
    ImGui::InputText("##prompt", S.prompt_buf, sizeof S.prompt_buf);
    if (ImGui::IsItemDeactivatedAfterEdit()) S.want.prompt = S.prompt_buf;
    ImGui::SameLine();
    ImGui::SetNextItemWidth(90);
    ImGui::SliderInt("tokens", &S.want.continue_tokens, 8, 256);
    S.want.continue_tokens = std::clamp(S.want.continue_tokens, 1, 4096);

    // --- run (whenever what is asked changes) -------------------------------------------------
    if (S.want.dir.empty()) {
        ImGui::Spacing();
        ImGui::PushStyleColor(ImGuiCol_Text, kRed);
        ImGui::TextWrapped("No model loaded. Type a checkpoint directory above and press Load (or start the explorer "
                           "with --model DIR), e.g. ../shared/data/tq-ref-128 beside the repository.");
        ImGui::PopStyleColor();
        return;
    }
    const auto asked = S.work.query();
    if (!asked || !(*asked == S.want) || load) S.work.start(S.want);
    S.work.poll();
    const auto R = S.work.result();
    if (S.work.busy()) {
        ImGui::ProgressBar(S.work.progress(), ImVec2(-1, 0), ("computing… " + S.work.status()).c_str());
    }
    if (!R) return;
    if (!R->error.empty()) {
        ImGui::PushStyleColor(ImGuiCol_Text, kRed);
        ImGui::TextWrapped("%s: %s", R->q.dir.c_str(), R->error.c_str());
        ImGui::PopStyleColor();
        if (R->model_summary.empty()) ImGui::TextWrapped("No model loaded.");
        return;
    }

    // --- what was computed -------------------------------------------------------------------
    ImGui::TextColored(kBlue, "%s", R->q.dir.c_str());
    ImGui::SameLine();
    ImGui::TextWrapped("%s; %s", R->model_summary.c_str(), R->calib_summary.c_str());
    const double rel = R->mean_a > 0 ? 100.0 * (R->mean_b / R->mean_a - 1) : 0;
    size_t agree = 0, scored = 0;
    for (size_t i = 0; i < std::min(R->argmax_a.size(), R->argmax_b.size()); ++i)
        if (R->argmax_a[i] >= 0) agree += R->argmax_a[i] == R->argmax_b[i], ++scored;
    ImGui::TextWrapped("A = %s: %.4f nats/token at %.2f b/coord.   B = %s: %.4f nats/token (%+.2f%% vs A) at %.2f b/coord.   "
                "%zu tokens scored; top-1 predictions agree on %.1f%%.",
                R->q.spec_a.c_str(), R->mean_a, R->bits_a, R->q.spec_b.c_str(), R->mean_b, rel, R->bits_b, scored,
                scored ? 100.0 * double(agree) / double(scored) : 0.0);

    // Colour scale: the 98th percentile of |ΔNLL|, so a few outliers do not wash out the rest.
    std::vector<double> d(R->pieces.size());
    for (size_t i = 0; i < d.size(); ++i) d[i] = double(R->nll_b[i]) - double(R->nll_a[i]);
    std::vector<double> mag;
    for (double x : d)
        if (std::isfinite(x)) mag.push_back(std::fabs(x));
    double scale = 0.01;
    if (!mag.empty()) {
        const size_t k = std::min(mag.size() - 1, size_t(0.98 * double(mag.size())));
        std::nth_element(mag.begin(), mag.begin() + long(k), mag.end());
        scale = std::max(scale, mag[k]);
    }

    const ImVec2 avail = ImGui::GetContentRegionAvail();
    const float spx = ImGui::GetStyle().ItemSpacing.x, spy = ImGui::GetStyle().ItemSpacing.y;
    const float left_w = std::floor(avail.x * 0.62f), right_w = avail.x - left_w - spx;
    ImGui::BeginChild("left", ImVec2(left_w, avail.y), false);
    diverging_legend(scale);
    const float text_h = std::floor((ImGui::GetContentRegionAvail().y - spy) * 0.7f);
    const int hov = token_flow(
        "scored", R->pieces,
        [&](int i) { return std::isfinite(d[size_t(i)]) ? diverging_color(d[size_t(i)] / scale) : IM_COL32(205, 205, 205, 255); },
        ImVec2(0, text_h));
    if (hov >= 0) {
        const size_t i = size_t(hov);
        ImGui::BeginTooltip();
        ImGui::Text("token %zu: \"%s\"", i + 1, visible(R->pieces[i]).c_str());
        if (!std::isfinite(d[i])) {
            ImGui::TextUnformatted("not scored: the first token of a context-length segment (grey)");
        } else {
            ImGui::Text("NLL under A (%s): %.4f nats (p = %.3f)", R->q.spec_a.c_str(), R->nll_a[i], std::exp(-R->nll_a[i]));
            ImGui::Text("NLL under B (%s): %.4f nats (p = %.3f)", R->q.spec_b.c_str(), R->nll_b[i], std::exp(-R->nll_b[i]));
            ImGui::TextColored(d[i] > 0 ? kRed : kBlue, "B − A: %+.4f nats", d[i]);
            if (R->argmax_a[i] != R->argmax_b[i]) ImGui::TextUnformatted("the two caches predict different top tokens here");
        }
        ImGui::EndTooltip();
    }
    continuations(*R, ImGui::GetContentRegionAvail().y);
    ImGui::EndChild();
    ImGui::SameLine();
    ImGui::BeginChild("right", ImVec2(right_w, avail.y), false);
    // The plan's table as tall as its layers need (scrolling past ~half the column), the running
    // difference below.
    const float row = ImGui::GetTextLineHeightWithSpacing() + 2;
    const float plan_h = std::min(std::floor(avail.y * 0.6f), row * float(R->layers + 9));
    rate_plan(*R, plan_h);
    running_difference(d, ImGui::GetContentRegionAvail().y);
    ImGui::EndChild();
}

}  // namespace ex
