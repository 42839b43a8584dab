// The explorer's whole state in one plain struct, and one function per panel (the shape of
// ImGui's own demo). Panels recompute only when their inputs change (each keeps the inputs of
// its last result and compares).
#pragma once
#include <string>
#include <vector>

#include "analysis.hpp"
#include "model_analysis.hpp"

namespace ex {

enum Panel { kRotation, kCodebook, kTokens, kAttention, kMemory, kModel, kPanels };
const char* panel_id(int p);  // "rotation", "codebook", "tokens", "attention", "memory", "model"

struct App {
    // --- data -----------------------------------------------------------------------------
    tqkv::KvDump dump;
    int data_gen = 0;              // bumped on every load: invalidates every panel's results
    char path[1024] = {};          // the load field
    std::string load_error;        // shown in red under the data bar
    HeadCache heads;               // compressed heads of the current data

    // --- window ---------------------------------------------------------------------------
    int force_panel = -1;          // select this tab on the next frame (startup, screenshots)
    bool screenshot = false;       // headless: no animation timing, deterministic frames
    int frame = 0;

    // --- rotation -------------------------------------------------------------------------
    struct {
        RotationQuery q;
        RotationQuery done_q;
        int done_gen = -1;
        RotationResult result;
        std::vector<double> ks_rounds;  // KS for rounds 1..8 (Hadamard/structured)
        std::string error;
    } rot;

    // --- codebook -------------------------------------------------------------------------
    struct {
        int dim = 128, bits = 3;
        StartKind start = StartKind::OneSide;
        std::vector<double> iterate;        // current Lloyd–Max centroids
        std::vector<double> mse_history;    // E||u-û||^2 per iteration (iteration 0 = the start)
        bool playing = false;
        int pending_steps = 0;              // steps to take on the next frame
        double last_step_time = 0;
        int reset_dim = -1, reset_bits = -1;
        StartKind reset_start = StartKind::OneSide;
    } cb;

    // --- per-token error ------------------------------------------------------------------
    struct {
        int layer = 0, kv_head = 0;
        MethodSpec method{Family::TqMse, 3};
        int selected = -1;                  // token highlighted in the plots
        bool keys = true, values = true;
        // layers x kv_heads mean relative error, for done_method
        std::vector<double> heat_k, heat_v;
        std::vector<int> err_key;           // (layer, kv_head, data_gen) of ke/ve
        MethodSpec err_method{Family::Fp16, 0};
        TokenErrors ke, ve;
        MethodSpec done_method{Family::Fp16, 0};
        int done_gen = -1;
        std::string heat_error;
    } tok;

    // --- attention ------------------------------------------------------------------------
    struct {
        int layer = 0, head = 0;
        int pos = -1;                       // query position; -1 = last token
        MethodSpec method{Family::TqMse, 3};
        bool log_weights = true;
        int order = 0;                      // weights plot: 0 = tokens ranked by exact weight, 1 = by position
        // Results for the inputs in `key` (layer, head, pos, data_gen): the selected method and
        // the comparison table of every method.
        std::vector<int> key;
        MethodSpec done_method{Family::Fp16, 0};
        AttentionResult result;
        std::string error;
        std::vector<MethodSpec> table_methods;
        std::vector<AttentionResult> table;
        std::vector<double> table_bits;
        std::vector<std::string> table_errors;
    } att;

    // --- memory and speed -----------------------------------------------------------------
    struct {
        Benchmark bench;
        bool tokens_on[5] = {true, true, true, false, false};  // 1k 4k 16k 64k 256k
        bool methods_on[8] = {true, true, true, true, true, true, false, false};
        float seconds = 0.15f;
        int ctx_tokens = 32768;             // for the whole-model size column
        // Budget tiers: a budgeted cache fed the whole dump (tier_sim reruns when policy, budget or
        // data change; layer and KV head only pick what is drawn).
        bool tiers_open = true;             // the section's state last frame (sizes the sections above)
        BudgetPolicy tier_policy = BudgetPolicy::Tiered;
        int tier_div = 6;                   // budget = fp16 cache of the dump / tier_div
        int tier_layer = 0, tier_kv_head = 0;
        TierSimulation tier_sim;
    } mem;

    // --- model ----------------------------------------------------------------------------
    // `want` holds the committed inputs (text fields commit on Enter / leaving them); the panel
    // starts `work` whenever it differs from the last query started.
    struct {
        ModelQuery want = [] {
            ModelQuery q;
            q.prompt = "memory: ";  // as prompt_buf
            return q;
        }();
        char dir_buf[1024] = {};
        char spec_a_buf[128] = "fp32", spec_b_buf[128] = "K3.5V2.5-w16";  // as want
        char text_buf[4096] = "The attention of a transformer reads every key of its cache for every new token.";
        char prompt_buf[512] = "memory: ";
        int own_text = 0;               // 0: eval.txt from its start, 1: text_buf
        ModelWork work;
    } mdl;
};

// Data: the built-in synthetic set, or a dump directory (errors go to app.load_error).
// (The Model panel loads its checkpoint itself: set_model_dir.)
void use_synthetic(App& app);
bool load_data(App& app, const std::string& dir);
void set_model_dir(App& app, const std::string& dir);  // the Model panel loads it when shown
void set_model_caches(App& app, const std::string& a, const std::string& b);  // its caches A and B

void draw_app(App& app);  // the whole window: data bar + tabs
void panel_rotation(App& app);
void panel_codebook(App& app);
void panel_tokens(App& app);
void panel_attention(App& app);
void panel_memory(App& app);
void panel_model(App& app);

// Shared widgets.
bool method_picker(const char* id, MethodSpec& m, bool with_fp16 = true);
bool layer_head_picker(App& app, int* layer, int* head, bool kv_heads);
void help_text(const char* text);  // one wrapped line of explanation in a muted colour
double now_seconds();

// Bench method names offered in the memory panel (index = mem.methods_on).
extern const char* const kBenchMethods[8];
extern const size_t kBenchTokens[5];

}  // namespace ex
