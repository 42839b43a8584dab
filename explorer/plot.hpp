// The explorer's plotting module: a few chart types drawn with ImGui's ImDrawList (Debian has no
// ImPlot). The pure math (ticks, mappings, binning, colour map) lives in plot_math.hpp.
//
//   plot::Spec s;  s.title = "..."; s.xlabel = "..."; s.x = {0, 1}; s.y = {0, 5};
//   plot::begin("##id", s);          // reserves the space, draws frame, grid, ticks and labels
//   plot::line("exact", xs, ys, n, plot::color(0));
//   plot::histogram("rotated", h, plot::color(1, 0.5f));
//   plot::end();                     // legend, hover read-out (tooltip of the nearest point)
//
// Ranges are given by the caller (plot_math's data_range / padded / nice_bounds help), so a
// chart never jumps while data changes unless the caller wants it to.
#pragma once
#include <imgui.h>

#include <string>
#include <vector>

#include "plot_math.hpp"

namespace plot {

// Categorical palette (Tableau 10): 0 blue, 1 orange, 2 green, 3 red, 4 purple, 5 brown, 6 pink,
// 7 grey, 8 olive, 9 cyan.
ImU32 color(int i, float alpha = 1.0f);
ImU32 rgba(float r, float g, float b, float a = 1.0f);
ImU32 heat_color(double t);  // viridis

enum class Legend { None, TopRight, TopLeft, BottomRight, BottomLeft, Outside };

struct Spec {
    const char* title = nullptr;
    const char* xlabel = nullptr;
    const char* ylabel = nullptr;
    plotmath::Range x{0, 1}, y{0, 1};
    bool xlog = false, ylog = false;
    ImVec2 size{-1, 260};  // width <= 0: all available width (minus -width); height <= 0: likewise
    Legend legend = Legend::TopRight;
    int xticks = 6, yticks = 5;  // yticks = 0: no y axis (a strip)
    float margin_left = 0;  // > 0: this much room left of the plot area, so stacked plots share their x axis
    bool hover = true;     // tooltip of the nearest point
};

void begin(const char* id, const Spec& spec);
void end();

// Series (between begin and end). Names appear in the legend and in read-outs; a name starting
// with "##" is hidden from the legend.
void line(const char* name, const double* x, const double* y, int n, ImU32 col, float thickness = 1.5f);
// y[i] at x = x0 + i * dx.
void line_seq(const char* name, const double* y, int n, ImU32 col, double x0 = 0, double dx = 1, float thickness = 1.5f);
// Vertical stems from 0 to y[i] at x = x0 + i * dx, with a dot on top.
void stems(const char* name, const double* y, int n, ImU32 col, double x0 = 0, double dx = 1);
void scatter(const char* name, const double* x, const double* y, int n, ImU32 col, float radius = 2.5f);
// Bars of h.density (or h.counts when counts = true) over its bins.
void histogram(const char* name, const plotmath::Histogram& h, ImU32 fill, ImU32 edge, bool counts = false);
void hline(double y, ImU32 col, float thickness = 1.0f, bool dashed = false, const char* legend = nullptr);
void vline(double x, ImU32 col, float thickness = 1.0f, bool dashed = false, const char* legend = nullptr);
void xband(double x0, double x1, ImU32 col);  // shaded vertical band
void segment(double x0, double y0, double x1, double y1, ImU32 col, float thickness = 1.0f);
void marker(double x, double y, ImU32 col, float radius = 3.5f);
// Text at a data point; align (0..1, 0..1) picks which point of the text box sits there.
void text(double x, double y, const char* s, ImU32 col, ImVec2 align = {0, 0}, ImVec2 offset_px = {0, 0});
// Text in a corner of the plot area (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right).
void corner_text(int corner, const char* s, ImU32 col);
// A legend entry without a series (style 0 line, 1 dashed line, 2 filled box, 3 dot).
void legend_entry(const char* name, ImU32 col, int style = 0);

// The mouse position in data coordinates, if the plot area is hovered (between begin and end).
bool mouse(double* x, double* y);
// After end(): which point the read-out shows (series name, index), for extra tooltip lines —
// call ImGui::BeginTooltip() again to append to it.
struct Hover {
    bool valid = false;
    std::string series;
    int index = -1;
    double x = 0, y = 0;
};
const Hover& last_hover();
bool last_clicked();  // the plot area was clicked this frame

// Standalone charts.

// Heat map of values[r * cols + c] with row and column labels and a colour bar; returns true when
// a cell was clicked (and sets *click_row / *click_col). sel_row/sel_col outline one cell.
struct HeatSpec {
    const char* title = nullptr;
    const char* xlabel = nullptr;  // what the columns are
    const char* ylabel = nullptr;  // what the rows are
    const char* value_label = "value";
    const char* fmt = "%.3f";
    double vmin = 0, vmax = 1;
    bool log = false;
    bool annotate = true;          // print the value in each cell when it fits
    ImVec2 size{-1, 260};
};
bool heatmap(const char* id, const double* values, int rows, int cols, const std::vector<std::string>& row_labels,
             const std::vector<std::string>& col_labels, const HeatSpec& spec, int* click_row = nullptr,
             int* click_col = nullptr, int sel_row = -1, int sel_col = -1);

// Horizontal bars, one per label, with the value (or value_text[i]) printed at the end of each.
struct BarSpec {
    const char* title = nullptr;
    const char* xlabel = nullptr;
    plotmath::Range x{0, 1};
    bool xlog = false;
    ImVec2 size{-1, 260};
};
void hbars(const char* id, const std::vector<std::string>& labels, const std::vector<double>& values,
           const std::vector<ImU32>& colors, const BarSpec& spec, const std::vector<std::string>* value_text = nullptr,
           const std::vector<std::string>* tooltips = nullptr);

// Text rotated 90° counter-clockwise (reads bottom to top), centred on `center`.
void vertical_text(ImDrawList* dl, ImVec2 center, ImU32 col, const char* text);

}  // namespace plot
