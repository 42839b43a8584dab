// tqkv-explorer: the desktop explorer (Dear ImGui + GLFW + OpenGL 3).
//
//   tqkv-explorer [--data DIR] [--model DIR] [--caches A,B] [--prompt TEXT] [--panel NAME]
//   tqkv-explorer --screenshot OUT.png --panel rotation|codebook|tokens|attention|memory|model
//                 [--size 1600x1000] [--data DIR] [--model DIR] [--hover X,Y] [--frames N] [--font-size PX]
//
// Headless mode renders a few frames (so the layout settles; the memory panel also runs its
// budget-tier simulation and its benchmark to the end, the model panel its model runs) into an
// offscreen framebuffer of exactly the requested size, writes the last one as a PNG and exits
// (the model panel also prints what it computed). It needs an X display: run it under xvfb-run.
#include <GLFW/glfw3.h>
#include <imgui.h>
#include <imgui_impl_glfw.h>
#include <imgui_impl_opengl3.h>
#include <stb_image_write.h>

#include <algorithm>
#include <cfloat>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "app.hpp"

#ifndef TQKV_SHARED_DATA
#define TQKV_SHARED_DATA ""
#endif

namespace {

struct Options {
    std::string data, screenshot, panel = "rotation";
    std::optional<std::string> model;  // the Model panel's checkpoint (default: tq-ref-128 beside the repo)
    std::string cache_a, cache_b;      // its caches (default: the panel's)
    std::optional<std::string> prompt; // its continuations' prompt
    int width = 1600, height = 1000;
    int frames = 6;
    float font_size = 15.0f;
    bool hover = false;
    float hover_x = 0, hover_y = 0;
    double bench_seconds = 0.05;  // memory panel screenshot: timing budget per benchmark point
    double timeout = 180;  // seconds the memory panel's benchmark may take in a screenshot
    double model_timeout = 900;  // the model panel's runs (its sensitivity probe: minutes on a busy 2-core VM)
};

void usage(FILE* f) {
    std::fprintf(f,
                 "usage: tqkv-explorer [--data DIR] [--model DIR] [--caches A,B] [--panel NAME] [--size WxH] [--font-size PX]\n"
                 "       tqkv-explorer --screenshot OUT.png --panel NAME [--size 1600x1000] [--data DIR] [--model DIR]\n"
                 "                     [--hover X,Y] [--frames N] [--bench-seconds S]\n"
                 "  --data DIR        a KV dump: keys.npy, values.npy [layers, kv_heads, tokens, dim],\n"
                 "                    queries.npy [layers, heads, tokens, dim] (default: built-in synthetic data)\n"
                 "  --model DIR       the Model panel's checkpoint: config.json + safetensors (default:\n"
                 "                    ../shared/data/tq-ref-128 beside the repository when there; \"\" for none)\n"
                 "  --caches A,B      the Model panel's two cache specs (default fp32,K3.5V2.5-w16)\n"
                 "  --prompt TEXT     the Model panel's prompt for greedy continuations (\"\": none)\n"
                 "  --panel NAME      rotation | codebook | tokens | attention | memory | model\n"
                 "  --screenshot PNG  render one frame of the panel offscreen, write it, exit (needs an X\n"
                 "                    display: run under xvfb-run)\n"
                 "  --size WxH        window / image size in pixels (default 1600x1000)\n"
                 "  --hover X,Y       put the mouse there (screenshots of the hover read-outs)\n"
                 "  --bench-seconds S memory panel screenshot: timing budget per benchmark point (0.05)\n");
}

int panel_index(const std::string& name) {
    for (int p = 0; p < ex::kPanels; ++p)
        if (name == ex::panel_id(p)) return p;
    return -1;
}

bool parse(int argc, char** argv, Options& o) {
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&](std::string& out) {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "tqkv-explorer: %s needs a value\n", a.c_str());
                return false;
            }
            out = argv[++i];
            return true;
        };
        std::string v;
        if (a == "--help" || a == "-h") {
            usage(stdout);
            std::exit(0);
        } else if (a == "--data") {
            if (!value(o.data)) return false;
        } else if (a == "--model") {
            if (!value(v)) return false;
            o.model = v;
        } else if (a == "--caches") {
            if (!value(v)) return false;
            const auto comma = v.find(',');
            if (comma == std::string::npos || comma == 0 || comma + 1 == v.size()) {
                std::fprintf(stderr, "tqkv-explorer: --caches wants two cache specs A,B, got '%s'\n", v.c_str());
                return false;
            }
            o.cache_a = v.substr(0, comma), o.cache_b = v.substr(comma + 1);
        } else if (a == "--prompt") {
            if (!value(v)) return false;
            o.prompt = v;
        } else if (a == "--screenshot") {
            if (!value(o.screenshot)) return false;
        } else if (a == "--panel") {
            if (!value(o.panel)) return false;
            if (panel_index(o.panel) < 0) {
                std::fprintf(stderr, "tqkv-explorer: unknown panel '%s' (rotation, codebook, tokens, attention, memory, model)\n",
                             o.panel.c_str());
                return false;
            }
        } else if (a == "--size") {
            if (!value(v)) return false;
            if (std::sscanf(v.c_str(), "%dx%d", &o.width, &o.height) != 2 || o.width < 320 || o.height < 240 ||
                o.width > 8192 || o.height > 8192) {
                std::fprintf(stderr, "tqkv-explorer: --size wants WxH between 320x240 and 8192x8192, got '%s'\n", v.c_str());
                return false;
            }
        } else if (a == "--bench-seconds") {
            if (!value(v)) return false;
            o.bench_seconds = std::clamp(std::atof(v.c_str()), 0.01, 5.0);
        } else if (a == "--frames") {
            if (!value(v)) return false;
            o.frames = std::max(2, std::atoi(v.c_str()));
        } else if (a == "--font-size") {
            if (!value(v)) return false;
            o.font_size = std::clamp(float(std::atof(v.c_str())), 8.0f, 40.0f);
        } else if (a == "--hover") {
            if (!value(v)) return false;
            if (std::sscanf(v.c_str(), "%f,%f", &o.hover_x, &o.hover_y) != 2) {
                std::fprintf(stderr, "tqkv-explorer: --hover wants X,Y, got '%s'\n", v.c_str());
                return false;
            }
            o.hover = true;
        } else {
            std::fprintf(stderr, "tqkv-explorer: unknown argument '%s'\n", a.c_str());
            return false;
        }
    }
    return true;
}

void setup_style(float font_size) {
    ImGuiIO& io = ImGui::GetIO();
    io.IniFilename = nullptr;  // no imgui.ini next to the user's files
    ImGui::StyleColorsLight();
    ImGuiStyle& s = ImGui::GetStyle();
    s.WindowRounding = 0;
    s.FrameRounding = 3;
    s.GrabRounding = 3;
    s.TabRounding = 3;
    s.ItemSpacing = ImVec2(8, 6);
    s.FramePadding = ImVec2(6, 3);
    s.Colors[ImGuiCol_WindowBg] = ImVec4(0.955f, 0.955f, 0.96f, 1);
    s.Colors[ImGuiCol_ChildBg] = ImVec4(0, 0, 0, 0);
    s.Colors[ImGuiCol_PlotHistogram] = ImVec4(0.26f, 0.55f, 0.85f, 1);
    // DejaVu Sans with the symbols the panels print (‖ √ − ≈ ∝ → ▲ µ ² ±); ImGui's built-in
    // bitmap font otherwise (then those symbols show as '?').
    static const ImWchar ranges[] = {0x0020, 0x00FF, 0x0300, 0x036F, 0x0391, 0x03C9, 0x2010, 0x2027, 0x2070, 0x209F,
                                     0x2190, 0x21FF, 0x2200, 0x22FF, 0x25A0, 0x25FF, 0};
    const char* fonts[] = {"/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                           "/usr/share/fonts/TTF/DejaVuSans.ttf"};
    for (const char* f : fonts)
        if (std::filesystem::exists(f) && io.Fonts->AddFontFromFileTTF(f, font_size, nullptr, ranges)) return;
    io.Fonts->AddFontDefault();
}

// Offscreen framebuffer of exactly the screenshot size (the window itself may be clamped to the
// X screen, and reading a hidden window's back buffer is not reliable).
struct Offscreen {
    GLuint fbo = 0, color = 0, depth = 0;
    PFNGLGENFRAMEBUFFERSPROC GenFramebuffers = nullptr;
    PFNGLBINDFRAMEBUFFERPROC BindFramebuffer = nullptr;
    PFNGLFRAMEBUFFERTEXTURE2DPROC FramebufferTexture2D = nullptr;
    PFNGLCHECKFRAMEBUFFERSTATUSPROC CheckFramebufferStatus = nullptr;
    PFNGLDELETEFRAMEBUFFERSPROC DeleteFramebuffers = nullptr;

    bool create(int w, int h) {
        GenFramebuffers = (PFNGLGENFRAMEBUFFERSPROC)glfwGetProcAddress("glGenFramebuffers");
        BindFramebuffer = (PFNGLBINDFRAMEBUFFERPROC)glfwGetProcAddress("glBindFramebuffer");
        FramebufferTexture2D = (PFNGLFRAMEBUFFERTEXTURE2DPROC)glfwGetProcAddress("glFramebufferTexture2D");
        CheckFramebufferStatus = (PFNGLCHECKFRAMEBUFFERSTATUSPROC)glfwGetProcAddress("glCheckFramebufferStatus");
        DeleteFramebuffers = (PFNGLDELETEFRAMEBUFFERSPROC)glfwGetProcAddress("glDeleteFramebuffers");
        if (!GenFramebuffers || !BindFramebuffer || !FramebufferTexture2D || !CheckFramebufferStatus) return false;
        glGenTextures(1, &color);
        glBindTexture(GL_TEXTURE_2D, color);
        glTexImage2D(GL_TEXTURE_2D, 0, GL_RGBA8, w, h, 0, GL_RGBA, GL_UNSIGNED_BYTE, nullptr);
        glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_MIN_FILTER, GL_NEAREST);
        glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_MAG_FILTER, GL_NEAREST);
        GenFramebuffers(1, &fbo);
        BindFramebuffer(GL_FRAMEBUFFER, fbo);
        FramebufferTexture2D(GL_FRAMEBUFFER, GL_COLOR_ATTACHMENT0, GL_TEXTURE_2D, color, 0);
        const bool ok = CheckFramebufferStatus(GL_FRAMEBUFFER) == GL_FRAMEBUFFER_COMPLETE;
        BindFramebuffer(GL_FRAMEBUFFER, 0);
        return ok;
    }
    void bind() const { BindFramebuffer(GL_FRAMEBUFFER, fbo); }
    void unbind() const { BindFramebuffer(GL_FRAMEBUFFER, 0); }
};

// Headless runs of the model panel say what it computed (explorer/test.sh checks these lines).
void report_model(const ex::App& app) {
    const auto r = app.mdl.work.result();
    if (app.mdl.want.dir.empty() || !r) {
        std::printf("tqkv-explorer: model panel: no model loaded\n");
    } else if (!r->error.empty()) {
        std::fprintf(stderr, "tqkv-explorer: model panel: %s: %s\n", r->q.dir.c_str(), r->error.c_str());
    } else {
        size_t scored = 0;  // segment starts are not
        for (int32_t a : r->argmax_a) scored += a >= 0;
        std::printf("tqkv-explorer: model panel: %zu tokens, %zu scored, A %s %.4f nats/token, B %s %.4f nats/token; plan %s %s; "
                    "continuations of %zu and %zu tokens, first divergence %d\n",
                    r->pieces.size(), scored, r->q.spec_a.c_str(), r->mean_a, r->q.spec_b.c_str(), r->mean_b, r->q.plan_spec.c_str(),
                    r->plan ? r->plan_json.c_str() : r->plan_pending ? "(probe not finished)" : r->plan_error.c_str(),
                    r->cont_a.size(), r->cont_b.size(),
                    r->first_divergence);
    }
}

bool write_png(const std::string& path, int w, int h) {
    std::vector<unsigned char> px(size_t(w) * h * 3), flipped(px.size());
    glPixelStorei(GL_PACK_ALIGNMENT, 1);
    glReadPixels(0, 0, w, h, GL_RGB, GL_UNSIGNED_BYTE, px.data());
    for (int y = 0; y < h; ++y) std::memcpy(&flipped[size_t(y) * w * 3], &px[size_t(h - 1 - y) * w * 3], size_t(w) * 3);
    stbi_write_png_compression_level = 9;
    return stbi_write_png(path.c_str(), w, h, 3, flipped.data(), w * 3) != 0;
}

}  // namespace

int main(int argc, char** argv) {
    Options opt;
    if (!parse(argc, argv, opt)) {
        usage(stderr);
        return 2;
    }
    const bool shot = !opt.screenshot.empty();

    glfwSetErrorCallback([](int code, const char* msg) { std::fprintf(stderr, "tqkv-explorer: GLFW error %d: %s\n", code, msg); });
    if (!glfwInit()) {
        std::fprintf(stderr, "tqkv-explorer: cannot open a display. Without a screen, run it under Xvfb:\n"
                             "  xvfb-run -a -s '-screen 0 1920x1200x24' tqkv-explorer --screenshot out.png --panel rotation\n");
        return 1;
    }
    glfwWindowHint(GLFW_CONTEXT_VERSION_MAJOR, 3);
    glfwWindowHint(GLFW_CONTEXT_VERSION_MINOR, 0);
    if (shot) glfwWindowHint(GLFW_VISIBLE, GLFW_FALSE);
    GLFWwindow* window = glfwCreateWindow(opt.width, opt.height, "tqkv explorer — TurboQuant KV-cache compression", nullptr, nullptr);
    if (!window) {
        std::fprintf(stderr, "tqkv-explorer: cannot create an OpenGL 3.0 window (no GL driver? install libgl1-mesa-dri)\n");
        glfwTerminate();
        return 1;
    }
    glfwMakeContextCurrent(window);
    glfwSwapInterval(shot ? 0 : 1);

    IMGUI_CHECKVERSION();
    ImGui::CreateContext();
    setup_style(opt.font_size);
    ImGui_ImplGlfw_InitForOpenGL(window, true);
    ImGui_ImplOpenGL3_Init("#version 130");

    Offscreen off;
    if (shot && !off.create(opt.width, opt.height)) {
        std::fprintf(stderr, "tqkv-explorer: cannot create an offscreen framebuffer\n");
        return 1;
    }

    auto app = std::make_unique<ex::App>();
    app->screenshot = shot;
    if (!opt.data.empty()) {
        if (!ex::load_data(*app, opt.data)) {
            std::fprintf(stderr, "tqkv-explorer: %s (using the built-in synthetic data)\n", app->load_error.c_str());
            const std::string err = app->load_error;
            ex::use_synthetic(*app);
            app->load_error = err;  // keep it on screen
            std::snprintf(app->path, sizeof app->path, "%s", opt.data.c_str());
        }
    } else {
        ex::use_synthetic(*app);
        const std::string shared = std::string(TQKV_SHARED_DATA) + "/tq-ref-128/kv";
        if (!std::string(TQKV_SHARED_DATA).empty() && std::filesystem::exists(shared + "/keys.npy"))
            std::snprintf(app->path, sizeof app->path, "%s", std::filesystem::weakly_canonical(shared).c_str());
    }
    if (opt.model) {
        ex::set_model_dir(*app, *opt.model);
    } else {
        const std::string shared = std::string(TQKV_SHARED_DATA) + "/tq-ref-128";
        if (!std::string(TQKV_SHARED_DATA).empty() && std::filesystem::exists(shared + "/config.json"))
            ex::set_model_dir(*app, std::filesystem::weakly_canonical(shared).string());
    }
    if (!opt.cache_a.empty()) ex::set_model_caches(*app, opt.cache_a, opt.cache_b);  // a bad spec shows in the panel
    if (opt.prompt) {
        app->mdl.want.prompt = *opt.prompt;
        std::snprintf(app->mdl.prompt_buf, sizeof app->mdl.prompt_buf, "%s", opt.prompt->c_str());
    }
    const int panel = panel_index(opt.panel);
    app->force_panel = panel;
    if (shot && panel == ex::kCodebook) app->cb.pending_steps = 4;  // show the iteration under way

    const double t_start = ex::now_seconds();
    int frames = 0;
    bool bench_started = false;
    int settled_from = 0;
    bool gave_up = false;
    int rc = 0;
    for (;;) {
        glfwPollEvents();
        if (!shot && glfwWindowShouldClose(window)) break;
        ImGui_ImplOpenGL3_NewFrame();
        ImGui_ImplGlfw_NewFrame();
        ImGuiIO& io = ImGui::GetIO();
        if (shot) {
            io.DisplaySize = ImVec2(float(opt.width), float(opt.height));
            io.DisplayFramebufferScale = ImVec2(1, 1);
            io.MousePos = opt.hover ? ImVec2(opt.hover_x, opt.hover_y) : ImVec2(-FLT_MAX, -FLT_MAX);
            if (frames < 3) app->force_panel = panel;
        }
        ImGui::NewFrame();
        ex::draw_app(*app);
        ImGui::Render();

        int fw = opt.width, fh = opt.height;
        if (shot) off.bind();
        else glfwGetFramebufferSize(window, &fw, &fh);
        glViewport(0, 0, fw, fh);
        glClearColor(0.955f, 0.955f, 0.96f, 1.0f);
        glClear(GL_COLOR_BUFFER_BIT);
        ImGui_ImplOpenGL3_RenderDrawData(ImGui::GetDrawData());
        ++frames;
        if (!shot) {
            glfwSwapBuffers(window);
            continue;
        }
        // Headless: the memory panel first finishes the budget-tier simulation its first frame
        // started, then runs a short benchmark (both in background threads, the frames keep
        // coming as they would on screen; one after the other, so the simulation does not take
        // cores from the timed runs).
        const bool tiers_pending =
            panel == ex::kMemory && (app->mem.tier_sim.running() || !app->mem.tier_sim.result());
        if (panel == ex::kMemory && !bench_started && frames >= 2 && !tiers_pending) {
            ex::BenchConfig bc;
            bc.heads = app->dump.heads;
            bc.kv_heads = app->dump.kv_heads;
            bc.dim = app->dump.head_dim;
            bc.tokens = {1024, 4096, 16384};
            bc.methods = {"fp32", "fp16", "tqkv-mse-2", "tqkv-mse-3", "tqkv-mse-4", "tqkv-prod-4"};
            bc.seconds = opt.bench_seconds;
            app->mem.seconds = float(opt.bench_seconds);  // what the panel's slider shows
            app->mem.bench.start(bc);
            bench_started = true;
        }
        // The model panel: until its runs have finished (started by its first frame).
        const bool model_pending = panel == ex::kModel && !app->mdl.want.dir.empty() &&
                                   (app->mdl.work.busy() || !app->mdl.work.result());
        const bool waiting = (panel == ex::kMemory && (tiers_pending || !bench_started || app->mem.bench.running())) ||
                             (model_pending && frames >= 2);
        const double limit = panel == ex::kModel ? opt.model_timeout : opt.timeout;
        if (waiting && ex::now_seconds() - t_start >= limit && !gave_up) {
            std::fprintf(stderr, "tqkv-explorer: gave up waiting after %.0f s: the picture shows the state then\n", limit);
            gave_up = true;
        }
        if (waiting && ex::now_seconds() - t_start < limit) {
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
            settled_from = frames + 4;  // draw the finished state a few more times (a tooltip appears on its 2nd frame)
            continue;
        }
        if (frames >= std::max(opt.frames, settled_from)) {
            if (!write_png(opt.screenshot, opt.width, opt.height)) {
                std::fprintf(stderr, "tqkv-explorer: cannot write %s\n", opt.screenshot.c_str());
                rc = 1;
            } else {
                std::printf("tqkv-explorer: wrote %s (%dx%d, panel %s)\n", opt.screenshot.c_str(), opt.width, opt.height,
                            opt.panel.c_str());
            }
            off.unbind();
            if (panel == ex::kModel) report_model(*app);
            break;
        }
    }
    app->mem.bench.cancel();
    app->mem.bench.wait();
    ImGui_ImplOpenGL3_Shutdown();
    ImGui_ImplGlfw_Shutdown();
    ImGui::DestroyContext();
    glfwDestroyWindow(window);
    glfwTerminate();
    // A model-panel pass under way (a load, the sensitivity probe: up to minutes) cannot be
    // interrupted, and ModelWork's destructor would wait for it after the window is gone: leave
    // without waiting.
    if (app->mdl.work.busy()) {
        std::fflush(nullptr);
        std::_Exit(rc);
    }
    return rc;
}
