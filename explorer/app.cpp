#include "app.hpp"

#include <imgui.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>

namespace ex {

const char* const kBenchMethods[8] = {"fp32", "fp16", "tqkv-mse-2", "tqkv-mse-3", "tqkv-mse-4", "tqkv-prod-4", "tqkv-mse-2.5",
                                      "tqkv-mse-8"};
const size_t kBenchTokens[5] = {1024, 4096, 16384, 65536, 262144};

const char* panel_id(int p) {
    static const char* ids[kPanels] = {"rotation", "codebook", "tokens", "attention", "memory", "model"};
    return p >= 0 && p < kPanels ? ids[p] : "?";
}

double now_seconds() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

namespace {

void after_load(App& app) {
    const auto& d = app.dump;
    ++app.data_gen;
    app.heads.clear();
    app.tok.layer = std::clamp(app.tok.layer, 0, d.layers - 1);
    app.tok.kv_head = std::clamp(app.tok.kv_head, 0, d.kv_heads - 1);
    app.tok.selected = -1;
    app.att.layer = std::clamp(app.att.layer, 0, d.layers - 1);
    app.att.head = std::clamp(app.att.head, 0, d.heads - 1);
    app.att.pos = -1;
    app.mem.tier_layer = std::clamp(app.mem.tier_layer, 0, d.layers - 1);
    app.mem.tier_kv_head = std::clamp(app.mem.tier_kv_head, 0, d.kv_heads - 1);
    app.rot.q.layer = std::clamp(app.rot.q.layer, 0, d.layers - 1);
    app.rot.q.kv_head = std::clamp(app.rot.q.kv_head, 0, d.kv_heads - 1);
    if (app.rot.q.input == InputKind::RealKeys) app.rot.q.dim = d.head_dim;
}

std::string meta_field(const std::string& json, const std::string& key) {
    // Enough for meta.json's flat "key": "value" pairs; the UI only shows it.
    const auto k = json.find("\"" + key + "\"");
    if (k == std::string::npos) return "";
    const auto q1 = json.find('"', json.find(':', k) + 1);
    if (q1 == std::string::npos) return "";
    const auto q2 = json.find('"', q1 + 1);
    return q2 == std::string::npos ? "" : json.substr(q1 + 1, q2 - q1 - 1);
}

void data_bar(App& app) {
    const auto& d = app.dump;
    const bool synthetic = d.meta_json.empty() && d.source.rfind("synthetic", 0) == 0;
    std::string model = meta_field(d.meta_json, "model");
    ImGui::AlignTextToFramePadding();
    ImGui::TextUnformatted("Data:");
    ImGui::SameLine();
    ImGui::TextColored(ImVec4(0.1f, 0.3f, 0.6f, 1), "%s", synthetic ? "built-in synthetic cache" : (model.empty() ? "KV dump" : model.c_str()));
    ImGui::SameLine();
    ImGui::Text("%d layers, %d query heads / %d KV heads, %zu tokens, head dim %d", d.layers, d.heads, d.kv_heads, d.tokens,
                d.head_dim);
    if (ImGui::IsItemHovered()) {
        ImGui::BeginTooltip();
        ImGui::PushTextWrapPos(600);
        ImGui::TextUnformatted(d.source.c_str());
        if (!d.meta_json.empty()) ImGui::TextUnformatted(d.meta_json.c_str());
        ImGui::PopTextWrapPos();
        ImGui::EndTooltip();
    }
    // The load field on the same line when there is room, else on the next.
    const float need = ImGui::CalcTextSize("Load a KV dump directory:").x + 520;
    if (ImGui::GetWindowPos().x + ImGui::GetWindowContentRegionMax().x - ImGui::GetItemRectMax().x > need + 30)
        ImGui::SameLine(0, 30);
    ImGui::AlignTextToFramePadding();
    ImGui::TextUnformatted("Load a KV dump directory:");
    if (ImGui::IsItemHovered())
        ImGui::SetTooltip("A directory with keys.npy and values.npy [layers, kv_heads, tokens, head_dim] and queries.npy\n"
                          "[layers, heads, tokens, head_dim], float32 or float16, as written by numpy.save\n"
                          "(the same dumps as tqkv-bench report --data DIR).");
    ImGui::SameLine();
    const float buttons = ImGui::CalcTextSize("Load").x + ImGui::CalcTextSize("Synthetic").x +
                          4 * ImGui::GetStyle().FramePadding.x + 3 * ImGui::GetStyle().ItemSpacing.x;
    ImGui::SetNextItemWidth(std::max(160.0f, ImGui::GetContentRegionAvail().x - buttons));
    const bool enter = ImGui::InputText("##path", app.path, sizeof app.path, ImGuiInputTextFlags_EnterReturnsTrue);
    ImGui::SameLine();
    if (ImGui::Button("Load") || enter) load_data(app, app.path);
    ImGui::SameLine();
    if (ImGui::Button("Synthetic")) use_synthetic(app);
    if (ImGui::IsItemHovered()) ImGui::SetTooltip("%s", tqkv::describe(tqkv::SyntheticConfig{}).c_str());
    if (!app.load_error.empty()) {
        ImGui::PushStyleColor(ImGuiCol_Text, ImVec4(0.8f, 0.1f, 0.1f, 1));
        ImGui::TextWrapped("Could not load: %s", app.load_error.c_str());
        ImGui::PopStyleColor();
        ImGui::SameLine();
        if (ImGui::SmallButton("dismiss")) app.load_error.clear();
    }
}

}  // namespace

void use_synthetic(App& app) {
    tqkv::SyntheticConfig cfg;
    app.dump = tqkv::make_synthetic(cfg);
    app.load_error.clear();
    after_load(app);
}

bool load_data(App& app, const std::string& dir) {
    try {
        if (dir.empty()) throw std::invalid_argument("no directory given");
        tqkv::KvDump d = tqkv::load_kv_dump(dir);
        if (d.layers < 1 || d.kv_heads < 1 || d.heads < 1 || d.tokens < 1 || d.head_dim < 3)
            throw std::invalid_argument("the dump is empty");
        if (d.heads % d.kv_heads != 0) throw std::invalid_argument("query heads are not a multiple of KV heads");
        app.dump = std::move(d);
        app.load_error.clear();
        std::snprintf(app.path, sizeof app.path, "%s", dir.c_str());
        after_load(app);
        return true;
    } catch (const std::exception& e) {
        app.load_error = dir + ": " + e.what();
        return false;
    }
}

void set_model_dir(App& app, const std::string& dir) {
    app.mdl.want.dir = dir;
    std::snprintf(app.mdl.dir_buf, sizeof app.mdl.dir_buf, "%s", dir.c_str());
}

void set_model_caches(App& app, const std::string& a, const std::string& b) {
    auto& M = app.mdl;
    M.want.spec_a = a, M.want.spec_b = b;
    std::snprintf(M.spec_a_buf, sizeof M.spec_a_buf, "%s", a.c_str());
    std::snprintf(M.spec_b_buf, sizeof M.spec_b_buf, "%s", b.c_str());
    // The plan shown is B's (else A's) when it is an auto spec.
    for (const std::string& s : {a, b})
        if (s.rfind("auto-", 0) == 0) M.want.plan_spec = s;
}

void help_text(const char* text) {
    ImGui::PushStyleColor(ImGuiCol_Text, ImVec4(0.30f, 0.30f, 0.36f, 1));
    ImGui::TextWrapped("%s", text);
    ImGui::PopStyleColor();
}

bool method_picker(const char* id, MethodSpec& m, bool with_fp16) {
    bool changed = false;
    ImGui::PushID(id);
    ImGui::SetNextItemWidth(130);
    if (ImGui::BeginCombo("method", family_name(m.family))) {
        for (int f = 0; f < kFamilies; ++f) {
            const Family fam = Family(f);
            if (!with_fp16 && fam == Family::Fp16) continue;
            if (ImGui::Selectable(family_name(fam), fam == m.family)) {
                if (fam != m.family) {
                    m.family = fam;
                    m.bits = default_bits(fam);
                    changed = true;
                }
            }
            if (ImGui::IsItemHovered()) ImGui::SetTooltip("%s", family_help(fam));
        }
        ImGui::EndCombo();
    }
    if (ImGui::IsItemHovered()) ImGui::SetTooltip("%s", family_help(m.family));
    const auto choices = bit_choices(m.family);
    ImGui::SameLine();
    ImGui::SetNextItemWidth(70);
    char cur[32];
    std::snprintf(cur, sizeof cur, "%g", m.bits);
    ImGui::BeginDisabled(choices.size() < 2);
    if (ImGui::BeginCombo(m.family == Family::Qjl ? "value bits" : "bits", cur)) {
        for (double b : choices) {
            char s[32];
            std::snprintf(s, sizeof s, "%g", b);
            if (ImGui::Selectable(s, b == m.bits) && b != m.bits) {
                m.bits = b;
                changed = true;
            }
        }
        ImGui::EndCombo();
    }
    ImGui::EndDisabled();
    ImGui::PopID();
    return changed;
}

bool layer_head_picker(App& app, int* layer, int* head, bool kv_heads) {
    bool changed = false;
    ImGui::SetNextItemWidth(110);
    changed |= ImGui::SliderInt("layer", layer, 0, std::max(0, app.dump.layers - 1));
    ImGui::SameLine();
    ImGui::SetNextItemWidth(110);
    const int n = kv_heads ? app.dump.kv_heads : app.dump.heads;
    changed |= ImGui::SliderInt(kv_heads ? "KV head" : "query head", head, 0, std::max(0, n - 1));
    *layer = std::clamp(*layer, 0, std::max(0, app.dump.layers - 1));
    *head = std::clamp(*head, 0, std::max(0, n - 1));
    return changed;
}

void draw_app(App& app) {
    const ImGuiIO& io = ImGui::GetIO();
    ImGui::SetNextWindowPos(ImVec2(0, 0));
    ImGui::SetNextWindowSize(io.DisplaySize);
    ImGui::Begin("tqkv explorer", nullptr,
                 ImGuiWindowFlags_NoDecoration | ImGuiWindowFlags_NoMove | ImGuiWindowFlags_NoSavedSettings |
                     ImGuiWindowFlags_NoBringToFrontOnFocus);
    data_bar(app);
    ImGui::Spacing();
    if (ImGui::BeginTabBar("panels")) {
        static const char* labels[kPanels] = {"1  Rotation", "2  Codebook", "3  Per-token error", "4  Attention fidelity",
                                              "5  Memory and speed", "6  Model"};
        void (*fns[kPanels])(App&) = {panel_rotation, panel_codebook, panel_tokens, panel_attention, panel_memory,
                                      panel_model};
        for (int p = 0; p < kPanels; ++p) {
            const ImGuiTabItemFlags flags = app.force_panel == p ? ImGuiTabItemFlags_SetSelected : 0;
            if (ImGui::BeginTabItem(labels[p], nullptr, flags)) {
                ImGui::BeginChild("panel", ImVec2(0, 0), false);
                fns[p](app);
                ImGui::EndChild();
                ImGui::EndTabItem();
            }
        }
        ImGui::EndTabBar();
    }
    app.force_panel = -1;
    ImGui::End();
    ++app.frame;
}

}  // namespace ex
