#include "plot.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>

namespace plot {
namespace {

using plotmath::AxisMap;

struct Candidate {
    float dist = FLT_MAX;
    std::string series;
    int index = -1;
    double x = 0, y = 0;
    ImU32 col = 0;
    std::string text;  // overrides the default "x = .., y = .." lines
};

struct LegendItem {
    std::string name;
    ImU32 col;
    int style;  // 0 line, 1 dashed, 2 box, 3 dot
};

struct State {
    ImDrawList* dl = nullptr;
    Spec spec;
    ImVec2 outer0, outer1, p0, p1;  // whole chart, plot area
    AxisMap xm, ym;
    bool hovered = false, clicked = false;
    ImVec2 mouse;
    std::vector<LegendItem> legend;
    Candidate best;
    Candidate fallback;  // histogram bins: shown only when no point is near
    Hover last;
    bool last_clicked = false;
} S;

ImU32 text_col() { return ImGui::GetColorU32(ImGuiCol_Text); }
ImU32 dim_text_col() { return ImGui::GetColorU32(ImGuiCol_TextDisabled); }

ImVec2 to_px(double x, double y) { return ImVec2(float(S.xm.to_px(x)), float(S.ym.to_px(y))); }

void dashed_line(ImDrawList* dl, ImVec2 a, ImVec2 b, ImU32 col, float th, float dash = 6, float gap = 4) {
    const float dx = b.x - a.x, dy = b.y - a.y, len = std::sqrt(dx * dx + dy * dy);
    if (len < 1e-3f) return;
    const float ux = dx / len, uy = dy / len;
    for (float s = 0; s < len; s += dash + gap) {
        const float e = std::min(len, s + dash);
        dl->AddLine(ImVec2(a.x + ux * s, a.y + uy * s), ImVec2(a.x + ux * e, a.y + uy * e), col, th);
    }
}

void add_legend(const char* name, ImU32 col, int style) {
    if (!name || !*name || (name[0] == '#' && name[1] == '#')) return;
    for (const auto& l : S.legend)
        if (l.name == name) return;
    S.legend.push_back({name, col, style});
}

void consider(const char* name, int index, double x, double y, ImU32 col, float max_dist) {
    if (!S.hovered || !S.spec.hover) return;
    const ImVec2 p = to_px(x, y);
    if (p.x < S.p0.x - 1 || p.x > S.p1.x + 1 || p.y < S.p0.y - 1 || p.y > S.p1.y + 1) return;
    const float dx = p.x - S.mouse.x, dy = p.y - S.mouse.y, d = std::sqrt(dx * dx + dy * dy);
    if (d < max_dist && d < S.best.dist) {
        S.best.dist = d;
        S.best.series = name ? name : "";
        if (S.best.series.rfind("##", 0) == 0) S.best.series.erase(0, 2);
        S.best.index = index;
        S.best.x = x, S.best.y = y;
        S.best.col = col;
        S.best.text.clear();
    }
}

bool finite_pt(double x, double y) {
    return std::isfinite(x) && std::isfinite(y) && (!S.spec.xlog || x > 0) && (!S.spec.ylog || y > 0);
}

void draw_legend() {
    if (S.legend.empty() || S.spec.legend == Legend::None) return;
    const float pad = 5, sw = 22, lh = ImGui::GetTextLineHeight();
    float w = 0;
    for (const auto& l : S.legend) w = std::max(w, ImGui::CalcTextSize(l.name.c_str()).x);
    const ImVec2 size(w + sw + 3 * pad, S.legend.size() * (lh + 2) + 2 * pad - 2);
    ImVec2 o;
    switch (S.spec.legend) {
        case Legend::TopLeft: o = ImVec2(S.p0.x + 6, S.p0.y + 6); break;
        case Legend::BottomRight: o = ImVec2(S.p1.x - size.x - 6, S.p1.y - size.y - 6); break;
        case Legend::BottomLeft: o = ImVec2(S.p0.x + 6, S.p1.y - size.y - 6); break;
        case Legend::Outside: o = ImVec2(S.p1.x + 8, S.p0.y); break;
        default: o = ImVec2(S.p1.x - size.x - 6, S.p0.y + 6); break;
    }
    S.dl->AddRectFilled(o, ImVec2(o.x + size.x, o.y + size.y), IM_COL32(255, 255, 255, 225), 3);
    S.dl->AddRect(o, ImVec2(o.x + size.x, o.y + size.y), IM_COL32(160, 160, 160, 255), 3);
    float y = o.y + pad;
    for (const auto& l : S.legend) {
        const float cy = y + lh * 0.5f;
        const ImVec2 a(o.x + pad, cy), b(o.x + pad + sw, cy);
        switch (l.style) {
            case 1: dashed_line(S.dl, a, b, l.col, 2.0f, 5, 3); break;
            case 2: S.dl->AddRectFilled(ImVec2(a.x, y + 2), ImVec2(b.x, y + lh - 2), l.col); break;
            case 3: S.dl->AddCircleFilled(ImVec2((a.x + b.x) / 2, cy), 3.5f, l.col); break;
            default: S.dl->AddLine(a, b, l.col, 2.5f); break;
        }
        S.dl->AddText(ImVec2(b.x + pad, y), text_col(), l.name.c_str());
        y += lh + 2;
    }
}

std::string axis_value(double v) { return plotmath::format_value(v, 5); }

// An axis label for read-outs: without the "(log)" that only describes the axis.
std::string readout_label(const char* label, const char* fallback) {
    std::string s = label ? label : fallback;
    const auto p = s.find("(log)");
    if (p != std::string::npos) s.erase(p, 5);
    while (!s.empty() && s.back() == ' ') s.pop_back();
    return s;
}

// A title in [x0, x1] (or from `alt_x0` when that gives room), shortened with "…" when it does
// not fit (cut at UTF-8 character boundaries); the full text is the tooltip of the cut one.
void draw_title(ImDrawList* dl, float x0, float alt_x0, float x1, float y, const char* title) {
    const float w = ImGui::CalcTextSize(title).x;
    if (w <= x1 - x0) {
        dl->AddText(ImVec2(x0, y), text_col(), title);
        return;
    }
    if (w <= x1 - alt_x0) {
        dl->AddText(ImVec2(x1 - w, y), text_col(), title);
        return;
    }
    std::string t = title;
    const float ell = ImGui::CalcTextSize("…").x;
    while (!t.empty() && ImGui::CalcTextSize(t.c_str()).x + ell > x1 - alt_x0) {
        t.pop_back();
        while (!t.empty() && (static_cast<unsigned char>(t.back()) & 0xC0) == 0x80) t.pop_back();
        if (!t.empty() && (static_cast<unsigned char>(t.back()) & 0x80)) t.pop_back();  // a lead byte left alone
    }
    t += "…";
    dl->AddText(ImVec2(alt_x0, y), text_col(), t.c_str());
    const ImVec2 m = ImGui::GetIO().MousePos;
    if (m.x >= alt_x0 && m.x <= x1 && m.y >= y && m.y <= y + ImGui::GetTextLineHeight()) ImGui::SetTooltip("%s", title);
}

// The widget's rectangle at the cursor: a size <= 0 on an axis means "the space left, minus that
// much" (at least 120 x 80 pixels). Claims it as one item, so hover and click are the widget's.
ImVec2 claim_area(const char* id, ImVec2 size) {
    const ImVec2 avail = ImGui::GetContentRegionAvail();
    if (size.x <= 0) size.x = std::max(120.0f, avail.x + size.x);
    if (size.y <= 0) size.y = std::max(80.0f, avail.y + size.y);
    const ImVec2 o0 = ImGui::GetCursorScreenPos();
    ImGui::InvisibleButton(id, size);
    return ImVec2(o0.x + size.x, o0.y + size.y);
}

}  // namespace

ImU32 color(int i, float alpha) {
    static const ImU32 c[10] = {IM_COL32(31, 119, 180, 255),  IM_COL32(255, 127, 14, 255), IM_COL32(44, 160, 44, 255),
                                IM_COL32(214, 39, 40, 255),   IM_COL32(148, 103, 189, 255), IM_COL32(140, 86, 75, 255),
                                IM_COL32(227, 119, 194, 255), IM_COL32(127, 127, 127, 255), IM_COL32(188, 189, 34, 255),
                                IM_COL32(23, 190, 207, 255)};
    ImU32 col = c[((i % 10) + 10) % 10];
    const ImU32 a = ImU32(std::clamp(alpha, 0.0f, 1.0f) * 255.0f + 0.5f);
    return (col & ~IM_COL32_A_MASK) | (a << IM_COL32_A_SHIFT);
}

ImU32 rgba(float r, float g, float b, float a) { return ImGui::ColorConvertFloat4ToU32(ImVec4(r, g, b, a)); }

ImU32 heat_color(double t) {
    const auto c = plotmath::viridis(t);
    return rgba(c[0], c[1], c[2], 1.0f);
}

void vertical_text(ImDrawList* dl, ImVec2 center, ImU32 col, const char* text) {
    const ImVec2 sz = ImGui::CalcTextSize(text);
    const int start = dl->VtxBuffer.Size;
    // Drawn horizontally first, then rotated: the horizontal text may stick out of the window's
    // clip rectangle (AddText culls glyphs outside it), so clip only after rotating.
    dl->PushClipRect(ImVec2(-1e5f, -1e5f), ImVec2(1e5f, 1e5f), false);
    dl->AddText(ImVec2(center.x - sz.x * 0.5f, center.y - sz.y * 0.5f), col, text);
    dl->PopClipRect();
    for (int i = start; i < dl->VtxBuffer.Size; ++i) {
        ImDrawVert& v = dl->VtxBuffer[i];
        const float dx = v.pos.x - center.x, dy = v.pos.y - center.y;
        v.pos = ImVec2(center.x + dy, center.y - dx);  // 90° counter-clockwise on screen
    }
}

void begin(const char* id, const Spec& spec) {
    S.dl = ImGui::GetWindowDrawList();
    S.spec = spec;
    S.legend.clear();
    S.best = Candidate{};
    S.fallback = Candidate{};
    if (S.spec.xlog && !(S.spec.x.lo > 0)) S.spec.x = {1e-3, 1};
    if (S.spec.ylog && !(S.spec.y.lo > 0)) S.spec.y = {1e-3, 1};
    if (!(S.spec.x.hi > S.spec.x.lo)) S.spec.x = plotmath::padded(S.spec.x, 0.05, S.spec.xlog);
    if (!(S.spec.y.hi > S.spec.y.lo)) S.spec.y = plotmath::padded(S.spec.y, 0.05, S.spec.ylog);

    S.outer0 = ImGui::GetCursorScreenPos();
    S.outer1 = claim_area(id, spec.size);
    S.clicked = ImGui::IsItemClicked();
    const bool item_hovered = ImGui::IsItemHovered();
    const ImVec2 size(S.outer1.x - S.outer0.x, S.outer1.y - S.outer0.y);

    const float lh = ImGui::GetTextLineHeight();
    // Tick labels decide the margins; no more ticks than fit (about 80 px apart in x, 40 in y).
    const int nyt = spec.yticks <= 0 ? 0 : std::max(2, std::min(spec.yticks, int(size.y / 40)));
    const int nxt = std::max(2, std::min(spec.xticks, int(size.x / 80)));
    const auto yt = nyt == 0        ? plotmath::Ticks{}
                    : S.spec.ylog ? plotmath::log_ticks(S.spec.y.lo, S.spec.y.hi, nyt)
                                  : plotmath::linear_ticks(S.spec.y.lo, S.spec.y.hi, nyt);
    const auto xt = S.spec.xlog ? plotmath::log_ticks(S.spec.x.lo, S.spec.x.hi, nxt)
                                : plotmath::linear_ticks(S.spec.x.lo, S.spec.x.hi, nxt);
    std::vector<std::string> ylab, xlab;
    float ywidth = 0;
    for (double v : yt.values) {
        ylab.push_back(plotmath::format_tick(v, yt.decimals, S.spec.ylog));
        ywidth = std::max(ywidth, ImGui::CalcTextSize(ylab.back().c_str()).x);
    }
    for (double v : xt.values) xlab.push_back(plotmath::format_tick(v, xt.decimals, S.spec.xlog));

    const float left = spec.margin_left > 0 ? spec.margin_left : 6 + (spec.ylabel ? lh + 4 : 0) + ywidth + 6;
    const float bottom = lh + 6 + (spec.xlabel ? lh + 4 : 0);
    const float top = (spec.title ? lh + 8 : 6);
    float right = 12;
    if (spec.legend == Legend::Outside) right = 170;
    S.p0 = ImVec2(S.outer0.x + left, S.outer0.y + top);
    S.p1 = ImVec2(S.outer1.x - right, S.outer1.y - bottom);
    if (S.p1.x < S.p0.x + 10) S.p1.x = S.p0.x + 10;
    if (S.p1.y < S.p0.y + 10) S.p1.y = S.p0.y + 10;
    S.xm = AxisMap{S.spec.x.lo, S.spec.x.hi, S.p0.x, S.p1.x, S.spec.xlog};
    S.ym = AxisMap{S.spec.y.lo, S.spec.y.hi, S.p1.y, S.p0.y, S.spec.ylog};
    S.mouse = ImGui::GetIO().MousePos;
    S.hovered = item_hovered && S.mouse.x >= S.p0.x && S.mouse.x <= S.p1.x && S.mouse.y >= S.p0.y && S.mouse.y <= S.p1.y;

    ImDrawList* dl = S.dl;
    if (spec.title) draw_title(dl, S.p0.x, S.outer0.x, S.outer1.x, S.outer0.y + 2, spec.title);
    dl->AddRectFilled(S.p0, S.p1, IM_COL32(255, 255, 255, 255));
    const ImU32 grid = IM_COL32(225, 225, 225, 255), tick = IM_COL32(90, 90, 90, 255);
    for (size_t i = 0; i < yt.values.size(); ++i) {
        const float py = float(S.ym.to_px(yt.values[i]));
        if (py < S.p0.y - 0.5f || py > S.p1.y + 0.5f) continue;
        dl->AddLine(ImVec2(S.p0.x, py), ImVec2(S.p1.x, py), grid);
        dl->AddLine(ImVec2(S.p0.x - 4, py), ImVec2(S.p0.x, py), tick);
        const ImVec2 ts = ImGui::CalcTextSize(ylab[i].c_str());
        dl->AddText(ImVec2(S.p0.x - 6 - ts.x, py - ts.y * 0.5f), text_col(), ylab[i].c_str());
    }
    float last_right = -FLT_MAX;
    for (size_t i = 0; i < xt.values.size(); ++i) {
        const float px = float(S.xm.to_px(xt.values[i]));
        if (px < S.p0.x - 0.5f || px > S.p1.x + 0.5f) continue;
        dl->AddLine(ImVec2(px, S.p0.y), ImVec2(px, S.p1.y), grid);
        dl->AddLine(ImVec2(px, S.p1.y), ImVec2(px, S.p1.y + 4), tick);
        const ImVec2 ts = ImGui::CalcTextSize(xlab[i].c_str());
        float tx = px - ts.x * 0.5f;
        tx = std::min(tx, S.outer1.x - ts.x);
        if (tx < last_right + 6) continue;  // never overlap labels
        dl->AddText(ImVec2(tx, S.p1.y + 5), text_col(), xlab[i].c_str());
        last_right = tx + ts.x;
    }
    // Zero lines are drawn a little darker: they anchor signed data.
    if (!S.spec.ylog && S.spec.y.lo < 0 && S.spec.y.hi > 0) {
        const float py = float(S.ym.to_px(0));
        dl->AddLine(ImVec2(S.p0.x, py), ImVec2(S.p1.x, py), IM_COL32(170, 170, 170, 255));
    }
    if (spec.xlabel) {
        const ImVec2 ts = ImGui::CalcTextSize(spec.xlabel);
        dl->AddText(ImVec2((S.p0.x + S.p1.x - ts.x) * 0.5f, S.p1.y + lh + 8), text_col(), spec.xlabel);
    }
    if (spec.ylabel) vertical_text(dl, ImVec2(S.outer0.x + 4 + lh * 0.5f, (S.p0.y + S.p1.y) * 0.5f), text_col(), spec.ylabel);
    dl->PushClipRect(S.p0, S.p1, true);
}

void end() {
    ImDrawList* dl = S.dl;
    dl->PopClipRect();
    dl->AddRect(S.p0, S.p1, IM_COL32(120, 120, 120, 255));
    draw_legend();
    S.last = Hover{};
    S.last_clicked = S.clicked;
    if (S.hovered && S.spec.hover) {
        // Crosshair position in the corner.
        const double mx = S.xm.to_data(S.mouse.x), my = S.ym.to_data(S.mouse.y);
        char buf[96];
        std::snprintf(buf, sizeof buf, "(%s, %s)", axis_value(mx).c_str(), axis_value(my).c_str());
        const ImVec2 ts = ImGui::CalcTextSize(buf);
        dl->AddText(ImVec2(S.p1.x - ts.x - 4, S.p1.y - ts.y - 2), dim_text_col(), buf);
        const Candidate* c = S.best.index >= 0 ? &S.best : (S.fallback.index >= 0 ? &S.fallback : nullptr);
        if (c) {
            if (c == &S.best) {
                const ImVec2 p = to_px(c->x, c->y);
                dl->AddCircle(p, 6.0f, IM_COL32(0, 0, 0, 255), 0, 2.0f);
                dl->AddCircleFilled(p, 3.5f, c->col);
            }
            ImGui::BeginTooltip();
            if (!c->series.empty()) ImGui::TextColored(ImGui::ColorConvertU32ToFloat4(c->col | IM_COL32_A_MASK), "%s", c->series.c_str());
            if (!c->text.empty()) {
                ImGui::TextUnformatted(c->text.c_str());
            } else {
                ImGui::Text("%s = %s", readout_label(S.spec.xlabel, "x").c_str(), axis_value(c->x).c_str());
                ImGui::Text("%s = %s", readout_label(S.spec.ylabel, "y").c_str(), axis_value(c->y).c_str());
            }
            ImGui::EndTooltip();
            S.last.valid = true;
            S.last.series = c->series;
            S.last.index = c->index;
            S.last.x = c->x;
            S.last.y = c->y;
        }
    }
}

void line(const char* name, const double* x, const double* y, int n, ImU32 col, float thickness) {
    add_legend(name, col, 0);
    std::vector<ImVec2> pts;
    pts.reserve(size_t(n));
    auto flush = [&] {
        if (pts.size() >= 2) S.dl->AddPolyline(pts.data(), int(pts.size()), col, 0, thickness);
        else if (pts.size() == 1) S.dl->AddCircleFilled(pts[0], thickness + 1, col);
        pts.clear();
    };
    for (int i = 0; i < n; ++i) {
        if (!finite_pt(x[i], y[i])) {
            flush();
            continue;
        }
        ImVec2 p = to_px(x[i], y[i]);
        // Keep far-off points finite for the rasterizer.
        p.y = std::clamp(p.y, S.p0.y - 2000.0f, S.p1.y + 2000.0f);
        pts.push_back(p);
        consider(name, i, x[i], y[i], col, 24.0f);
    }
    flush();
}

void line_seq(const char* name, const double* y, int n, ImU32 col, double x0, double dx, float thickness) {
    std::vector<double> x(size_t(std::max(0, n)));
    for (int i = 0; i < n; ++i) x[size_t(i)] = x0 + i * dx;
    line(name, x.data(), y, n, col, thickness);
}

void stems(const char* name, const double* y, int n, ImU32 col, double x0, double dx) {
    add_legend(name, col, 3);
    const double base = S.spec.ylog ? S.spec.y.lo : 0.0;
    const float px_per = n > 1 ? std::fabs(float(S.xm.to_px(x0 + dx) - S.xm.to_px(x0))) : 10.0f;
    const float r = std::clamp(px_per * 0.3f, 1.0f, 3.0f);
    for (int i = 0; i < n; ++i) {
        const double x = x0 + i * dx;
        if (!finite_pt(x, y[i])) continue;
        const ImVec2 a = to_px(x, base), b = to_px(x, y[i]);
        S.dl->AddLine(a, b, col, std::clamp(px_per * 0.35f, 1.0f, 2.0f));
        if (px_per >= 3 && y[i] != 0) S.dl->AddCircleFilled(b, r, col);
        consider(name, i, x, y[i], col, 16.0f);
    }
}

void scatter(const char* name, const double* x, const double* y, int n, ImU32 col, float radius) {
    add_legend(name, col, 3);
    for (int i = 0; i < n; ++i) {
        if (!finite_pt(x[i], y[i])) continue;
        S.dl->AddCircleFilled(to_px(x[i], y[i]), radius, col, 8);
        consider(name, i, x[i], y[i], col, 10.0f);
    }
}

void histogram(const char* name, const plotmath::Histogram& h, ImU32 fill, ImU32 edge, bool counts) {
    add_legend(name, fill, 2);
    const auto& v = counts ? h.counts : h.density;
    const double w = h.width();
    const double base = S.spec.ylog ? S.spec.y.lo : 0.0;
    for (size_t b = 0; b < v.size(); ++b) {
        const double x0 = h.lo + b * w, x1 = x0 + w;
        if (!(v[b] > 0)) continue;
        ImVec2 a = to_px(x0, v[b]), c = to_px(x1, base);
        a.y = std::max(a.y, S.p0.y - 2);
        S.dl->AddRectFilled(a, c, fill);
        if (edge) S.dl->AddRect(a, c, edge);
        if (a.y <= S.p0.y - 1) {  // clipped bar: mark it
            S.dl->AddTriangleFilled(ImVec2((a.x + c.x) / 2, S.p0.y + 1), ImVec2((a.x + c.x) / 2 - 4, S.p0.y + 8),
                                    ImVec2((a.x + c.x) / 2 + 4, S.p0.y + 8), edge ? edge : fill);
        }
    }
    if (S.hovered && S.spec.hover) {
        const int b = plotmath::bin_of(h, S.xm.to_data(S.mouse.x));
        if (b >= 0) {
            S.fallback.index = b;
            S.fallback.series = name && name[0] != '#' ? name : "";
            S.fallback.x = h.lo + (b + 0.5) * w;
            S.fallback.y = v[size_t(b)];
            S.fallback.col = fill;
            char buf[200];
            std::snprintf(buf, sizeof buf, "bin [%s, %s)\n%s = %s\ncount = %.0f", axis_value(h.lo + b * w).c_str(),
                          axis_value(h.lo + (b + 1) * w).c_str(), counts ? "count" : "density",
                          axis_value(v[size_t(b)]).c_str(), h.counts[size_t(b)]);
            S.fallback.text = buf;
        }
    }
}

void hline(double y, ImU32 col, float thickness, bool dashed, const char* legend) {
    if (legend) add_legend(legend, col, dashed ? 1 : 0);
    if (!std::isfinite(y) || (S.spec.ylog && !(y > 0))) return;
    const float py = float(S.ym.to_px(y));
    if (dashed) dashed_line(S.dl, ImVec2(S.p0.x, py), ImVec2(S.p1.x, py), col, thickness);
    else S.dl->AddLine(ImVec2(S.p0.x, py), ImVec2(S.p1.x, py), col, thickness);
}

void vline(double x, ImU32 col, float thickness, bool dashed, const char* legend) {
    if (legend) add_legend(legend, col, dashed ? 1 : 0);
    if (!std::isfinite(x) || (S.spec.xlog && !(x > 0))) return;
    const float px = float(S.xm.to_px(x));
    if (dashed) dashed_line(S.dl, ImVec2(px, S.p0.y), ImVec2(px, S.p1.y), col, thickness);
    else S.dl->AddLine(ImVec2(px, S.p0.y), ImVec2(px, S.p1.y), col, thickness);
}

void segment(double x0, double y0, double x1, double y1, ImU32 col, float thickness) {
    S.dl->AddLine(to_px(x0, y0), to_px(x1, y1), col, thickness);
}

void xband(double x0, double x1, ImU32 col) {
    const float a = float(S.xm.to_px(x0)), b = float(S.xm.to_px(x1));
    S.dl->AddRectFilled(ImVec2(std::min(a, b), S.p0.y), ImVec2(std::max(a, b), S.p1.y), col);
}

void marker(double x, double y, ImU32 col, float radius) {
    if (!finite_pt(x, y)) return;
    S.dl->AddCircleFilled(to_px(x, y), radius, col);
}

void text(double x, double y, const char* s, ImU32 col, ImVec2 align, ImVec2 offset_px) {
    const ImVec2 ts = ImGui::CalcTextSize(s);
    const ImVec2 p = to_px(x, y);
    S.dl->AddText(ImVec2(p.x - ts.x * align.x + offset_px.x, p.y - ts.y * align.y + offset_px.y), col, s);
}

void corner_text(int corner, const char* s, ImU32 col) {
    const ImVec2 ts = ImGui::CalcTextSize(s);
    const float x = (corner & 1) ? S.p1.x - ts.x - 6 : S.p0.x + 6;
    const float y = (corner & 2) ? S.p1.y - ts.y - 4 : S.p0.y + 4;
    S.dl->AddRectFilled(ImVec2(x - 3, y - 1), ImVec2(x + ts.x + 3, y + ts.y + 1), IM_COL32(255, 255, 255, 210));
    S.dl->AddText(ImVec2(x, y), col, s);
}

void legend_entry(const char* name, ImU32 col, int style) { add_legend(name, col, style); }

bool mouse(double* x, double* y) {
    if (!S.hovered) return false;
    *x = S.xm.to_data(S.mouse.x);
    *y = S.ym.to_data(S.mouse.y);
    return true;
}

const Hover& last_hover() { return S.last; }
bool last_clicked() { return S.last_clicked; }

bool heatmap(const char* id, const double* values, int rows, int cols, const std::vector<std::string>& row_labels,
             const std::vector<std::string>& col_labels, const HeatSpec& spec, int* click_row, int* click_col,
             int sel_row, int sel_col) {
    ImDrawList* dl = ImGui::GetWindowDrawList();
    const ImVec2 o0 = ImGui::GetCursorScreenPos(), o1 = claim_area(id, spec.size);
    const bool hovered = ImGui::IsItemHovered();
    const bool clicked = ImGui::IsItemClicked();
    const float lh = ImGui::GetTextLineHeight();
    float rw = 0;
    for (const auto& s : row_labels) rw = std::max(rw, ImGui::CalcTextSize(s.c_str()).x);
    const float bar_w = 14, bar_gap = 10;
    // Colour-bar labels.
    char lo_s[32], hi_s[32], mid_s[32];
    std::snprintf(lo_s, sizeof lo_s, spec.fmt, spec.vmin);
    std::snprintf(hi_s, sizeof hi_s, spec.fmt, spec.vmax);
    const double mid = spec.log ? std::sqrt(spec.vmin * spec.vmax) : 0.5 * (spec.vmin + spec.vmax);
    std::snprintf(mid_s, sizeof mid_s, spec.fmt, mid);
    const float bar_lab = std::max({ImGui::CalcTextSize(lo_s).x, ImGui::CalcTextSize(hi_s).x, ImGui::CalcTextSize(mid_s).x});
    const ImVec2 p0(o0.x + 6 + (spec.ylabel ? lh + 4 : 0) + rw + 6, o0.y + (spec.title ? lh + 8 : 4));
    const ImVec2 p1(o1.x - bar_gap - bar_w - 6 - bar_lab - 6 - lh - 4, o1.y - lh - 6 - (spec.xlabel ? lh + 4 : 0));
    if (spec.title) draw_title(dl, p0.x, o0.x, o1.x, o0.y + 2, spec.title);
    if (rows <= 0 || cols <= 0 || p1.x <= p0.x || p1.y <= p0.y) return false;
    const float cw = (p1.x - p0.x) / cols, ch = (p1.y - p0.y) / rows;
    const ImVec2 mouse = ImGui::GetIO().MousePos;
    int hr = -1, hc = -1;
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c) {
            const double v = values[size_t(r) * cols + c];
            const ImVec2 a(p0.x + c * cw, p0.y + r * ch), b(a.x + cw, a.y + ch);
            const double t = plotmath::normalize(v, spec.vmin, spec.vmax, spec.log);
            dl->AddRectFilled(a, b, std::isfinite(v) ? heat_color(t) : IM_COL32(200, 200, 200, 255));
            if (spec.annotate && std::isfinite(v)) {
                char buf[32];
                std::snprintf(buf, sizeof buf, spec.fmt, v);
                const ImVec2 ts = ImGui::CalcTextSize(buf);
                if (ts.x + 4 < cw && ts.y + 2 < ch)
                    dl->AddText(ImVec2((a.x + b.x - ts.x) / 2, (a.y + b.y - ts.y) / 2),
                                t > 0.6 ? IM_COL32(0, 0, 0, 255) : IM_COL32(255, 255, 255, 255), buf);
            }
            if (hovered && mouse.x >= a.x && mouse.x < b.x && mouse.y >= a.y && mouse.y < b.y) hr = r, hc = c;
        }
    if (sel_row >= 0 && sel_col >= 0 && sel_row < rows && sel_col < cols) {
        const ImVec2 a(p0.x + sel_col * cw, p0.y + sel_row * ch);
        dl->AddRect(ImVec2(a.x + 1, a.y + 1), ImVec2(a.x + cw - 1, a.y + ch - 1), IM_COL32(255, 40, 40, 255), 0, 0, 3.0f);
    }
    if (hr >= 0) {
        const ImVec2 a(p0.x + hc * cw, p0.y + hr * ch);
        dl->AddRect(a, ImVec2(a.x + cw, a.y + ch), IM_COL32(255, 255, 255, 255), 0, 0, 2.0f);
        ImGui::BeginTooltip();
        ImGui::Text("%s %s, %s %s", spec.ylabel ? spec.ylabel : "row", row_labels.size() > size_t(hr) ? row_labels[hr].c_str() : "",
                    spec.xlabel ? spec.xlabel : "column", col_labels.size() > size_t(hc) ? col_labels[hc].c_str() : "");
        char buf[64];
        std::snprintf(buf, sizeof buf, spec.fmt, values[size_t(hr) * cols + hc]);
        ImGui::Text("%s = %s", spec.value_label, buf);
        if (click_row) ImGui::TextDisabled("click to select");
        ImGui::EndTooltip();
    }
    dl->AddRect(p0, p1, IM_COL32(120, 120, 120, 255));
    // Row labels (left), column labels (below), axis titles.
    for (int r = 0; r < rows && r < int(row_labels.size()); ++r) {
        const ImVec2 ts = ImGui::CalcTextSize(row_labels[r].c_str());
        if (ch < ts.y * 0.9f && r % int(std::ceil(ts.y / ch)) != 0) continue;
        dl->AddText(ImVec2(p0.x - 6 - ts.x, p0.y + (r + 0.5f) * ch - ts.y / 2), text_col(), row_labels[r].c_str());
    }
    float last_right = -FLT_MAX;
    for (int c = 0; c < cols && c < int(col_labels.size()); ++c) {
        const ImVec2 ts = ImGui::CalcTextSize(col_labels[c].c_str());
        const float x = p0.x + (c + 0.5f) * cw - ts.x / 2;
        if (x < last_right + 4) continue;
        dl->AddText(ImVec2(x, p1.y + 4), text_col(), col_labels[c].c_str());
        last_right = x + ts.x;
    }
    if (spec.xlabel) {
        const ImVec2 ts = ImGui::CalcTextSize(spec.xlabel);
        dl->AddText(ImVec2((p0.x + p1.x - ts.x) / 2, p1.y + lh + 6), text_col(), spec.xlabel);
    }
    if (spec.ylabel) vertical_text(dl, ImVec2(o0.x + 4 + lh / 2, (p0.y + p1.y) / 2), text_col(), spec.ylabel);
    // Colour bar.
    const float bx = p1.x + bar_gap;
    const int steps = 48;
    for (int i = 0; i < steps; ++i) {
        const float y0 = p1.y - (p1.y - p0.y) * (i + 1) / steps, y1 = p1.y - (p1.y - p0.y) * i / steps;
        dl->AddRectFilled(ImVec2(bx, y0), ImVec2(bx + bar_w, y1 + 0.5f), heat_color((i + 0.5) / steps));
    }
    dl->AddRect(ImVec2(bx, p0.y), ImVec2(bx + bar_w, p1.y), IM_COL32(120, 120, 120, 255));
    dl->AddText(ImVec2(bx + bar_w + 4, p0.y - 2), text_col(), hi_s);
    dl->AddText(ImVec2(bx + bar_w + 4, (p0.y + p1.y) / 2 - lh / 2), text_col(), mid_s);
    dl->AddText(ImVec2(bx + bar_w + 4, p1.y - lh + 2), text_col(), lo_s);
    vertical_text(dl, ImVec2(bx + bar_w + 6 + bar_lab + 4 + lh / 2, (p0.y + p1.y) / 2), text_col(), spec.value_label);
    if (clicked && hr >= 0) {
        if (click_row) *click_row = hr;
        if (click_col) *click_col = hc;
        return true;
    }
    return false;
}

void hbars(const char* id, const std::vector<std::string>& labels, const std::vector<double>& values,
           const std::vector<ImU32>& colors, const BarSpec& spec, const std::vector<std::string>* value_text,
           const std::vector<std::string>* tooltips) {
    ImDrawList* dl = ImGui::GetWindowDrawList();
    const ImVec2 o0 = ImGui::GetCursorScreenPos(), o1 = claim_area(id, spec.size);
    const bool hovered = ImGui::IsItemHovered();
    const float lh = ImGui::GetTextLineHeight();
    float lw = 0, vw = 0;
    for (const auto& s : labels) lw = std::max(lw, ImGui::CalcTextSize(s.c_str()).x);
    std::vector<std::string> vt(values.size());
    for (size_t i = 0; i < values.size(); ++i) {
        vt[i] = value_text && i < value_text->size() ? (*value_text)[i] : plotmath::format_value(values[i], 4);
        vw = std::max(vw, ImGui::CalcTextSize(vt[i].c_str()).x);
    }
    const ImVec2 p0(o0.x + lw + 10, o0.y + (spec.title ? lh + 8 : 4));
    const ImVec2 p1(o1.x - vw - 14, o1.y - lh - 6 - (spec.xlabel ? lh + 4 : 0));
    if (spec.title) draw_title(dl, o0.x, o0.x, o1.x, o0.y + 2, spec.title);
    if (p1.x <= p0.x || p1.y <= p0.y || labels.empty()) return;
    AxisMap xm{spec.x.lo, spec.x.hi, p0.x, p1.x, spec.xlog};
    const int nxt = std::max(2, int((p1.x - p0.x) / 80));
    const auto xt = spec.xlog ? plotmath::log_ticks(spec.x.lo, spec.x.hi, nxt) : plotmath::linear_ticks(spec.x.lo, spec.x.hi, nxt);
    float last_right = -FLT_MAX;
    for (double v : xt.values) {
        const float px = float(xm.to_px(v));
        dl->AddLine(ImVec2(px, p0.y), ImVec2(px, p1.y), IM_COL32(225, 225, 225, 255));
        const std::string s = plotmath::format_tick(v, xt.decimals, spec.xlog);
        const ImVec2 ts = ImGui::CalcTextSize(s.c_str());
        const float tx = px - ts.x / 2;
        if (tx < last_right + 6) continue;
        dl->AddText(ImVec2(tx, p1.y + 4), text_col(), s.c_str());
        last_right = tx + ts.x;
    }
    if (spec.xlabel) {
        const ImVec2 ts = ImGui::CalcTextSize(spec.xlabel);
        dl->AddText(ImVec2((p0.x + p1.x - ts.x) / 2, p1.y + lh + 6), text_col(), spec.xlabel);
    }
    const int n = int(labels.size());
    const float rh = (p1.y - p0.y) / n;
    const ImVec2 mouse = ImGui::GetIO().MousePos;
    const double base = spec.xlog ? spec.x.lo : 0.0;
    for (int i = 0; i < n; ++i) {
        const float y0 = p0.y + i * rh + rh * 0.15f, y1 = p0.y + (i + 1) * rh - rh * 0.15f;
        const float xa = float(xm.to_px(base));
        const float xb = std::clamp(float(xm.to_px(values[size_t(i)])), p0.x, p1.x);
        const ImU32 col = i < int(colors.size()) ? colors[size_t(i)] : color(0);
        dl->AddRectFilled(ImVec2(xa, y0), ImVec2(xb, y1), col);
        const ImVec2 ls = ImGui::CalcTextSize(labels[size_t(i)].c_str());
        dl->AddText(ImVec2(p0.x - 6 - ls.x, (y0 + y1 - ls.y) / 2), text_col(), labels[size_t(i)].c_str());
        const ImVec2 vs = ImGui::CalcTextSize(vt[size_t(i)].c_str());
        if (xb + 4 + vs.x <= p1.x - 2 || xb - xa < vs.x + 8)
            dl->AddText(ImVec2(xb + 4, (y0 + y1 - ls.y) / 2), text_col(), vt[size_t(i)].c_str());
        else  // no room to the right: inside the bar
            dl->AddText(ImVec2(xb - 4 - vs.x, (y0 + y1 - ls.y) / 2), IM_COL32(255, 255, 255, 255), vt[size_t(i)].c_str());
        if (hovered && mouse.y >= p0.y + i * rh && mouse.y < p0.y + (i + 1) * rh) {
            dl->AddRect(ImVec2(xa, y0), ImVec2(xb, y1), IM_COL32(0, 0, 0, 255), 0, 0, 2.0f);
            ImGui::BeginTooltip();
            ImGui::TextUnformatted(labels[size_t(i)].c_str());
            if (tooltips && size_t(i) < tooltips->size()) ImGui::TextUnformatted((*tooltips)[size_t(i)].c_str());
            else ImGui::Text("%s", vt[size_t(i)].c_str());
            ImGui::EndTooltip();
        }
    }
    // Axis lines only (value labels may run past the right end of the bars' area).
    dl->AddLine(ImVec2(p0.x, p0.y), ImVec2(p0.x, p1.y), IM_COL32(120, 120, 120, 255));
    dl->AddLine(ImVec2(p0.x, p1.y), ImVec2(p1.x, p1.y), IM_COL32(120, 120, 120, 255));
}

}  // namespace plot
