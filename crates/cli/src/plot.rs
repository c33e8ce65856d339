//! Training curves and experiment plots, written as SVG and PNG.
//!
//! [`plot_curves`] draws the chapter's figure (d2l's `ProgressBoard`): loss
//! and accuracy against epoch. [`plot_lines`] is the general multi-line plot
//! behind it (learning-rate sweeps, accuracy against a log-scale learning
//! rate), and [`plot_heatmap`] shows a grid of values with a colour bar (each
//! layer's activation statistics over training).
//!
//! Text is drawn with DejaVu Sans, embedded in the binary, so PNGs render the
//! same on a machine without system fonts. Every file is written atomically:
//! rendered to a temporary file in the target directory, then renamed.
//! Non-finite values (a diverged run's NaN loss) are skipped, never fatal.

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

use normlab::train::metrics::EpochMetrics;
use normlab::{Error, Result};

/// Size of every plot, in pixels (PNG) or user units (SVG).
pub const PLOT_SIZE: (u32, u32) = (800, 500);

const FONT_FAMILY: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
static FONT_INIT: Once = Once::new();

/// Registers the embedded font with plotters (once per process). Every text
/// measurement and every glyph goes through it; plotters' `ab_glyph` backend
/// never looks at system fonts.
fn register_font() {
    FONT_INIT.call_once(|| {
        // The font is compiled in and known to parse; a failure here would
        // show as missing text, caught by the tests.
        let _ = plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT_BYTES);
    });
}

/// One line of a [`plot_lines`] plot: a legend label and its `(x, y)` points,
/// drawn in the given order. Non-finite points are skipped (the line breaks
/// there).
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series { label: label.into(), points }
    }
}

/// How a line is drawn, beyond its colour.
#[derive(Clone, Copy, Debug, PartialEq)]
enum LineKind {
    Solid,
    Dashed,
}

struct Line<'a> {
    series: &'a Series,
    color: RGBColor,
    kind: LineKind,
}

struct LinePlot<'a> {
    lines: Vec<Line<'a>>,
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    log_x: bool,
    /// Fixed axis ranges; `None` fits the data.
    x_range: Option<Range<f64>>,
    y_range: Option<Range<f64>>,
    /// At most this many x-axis numbers (plotters' default when `None`).
    x_labels: Option<usize>,
}

/// Distinct colours (matplotlib's "tab10"), cycled when there are more series.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Draws the chapter's training curves: `train_loss`, `val_loss` and
/// `val_acc` as solid lines and `train_acc` dashed, against epoch, on
/// `0..=last epoch` by `0..max(1, largest loss)`. Writes an SVG and a PNG
/// ([`PLOT_SIZE`]). NaN or infinite values are left out; the rest is drawn.
pub fn plot_curves(metrics: &[EpochMetrics], title: &str, svg_path: &Path, png_path: &Path) -> Result<()> {
    let column = |label: &str, f: fn(&EpochMetrics) -> f64| Series {
        label: label.to_string(),
        points: metrics.iter().map(|m| (m.epoch as f64, f(m))).collect(),
    };
    let train_loss = column("train loss", |m| m.train_loss);
    let train_acc = column("train acc", |m| m.train_acc);
    let val_loss = column("val loss", |m| m.val_loss);
    let val_acc = column("val acc", |m| m.val_acc);

    let last_epoch = metrics.iter().map(|m| m.epoch).max().unwrap_or(0).max(1) as f64;
    let max_loss =
        metrics.iter().flat_map(|m| [m.train_loss, m.val_loss]).filter(|v| v.is_finite()).fold(1.0f64, f64::max);

    let plot = LinePlot {
        lines: vec![
            Line { series: &train_loss, color: PALETTE[0], kind: LineKind::Solid },
            Line { series: &val_loss, color: PALETTE[1], kind: LineKind::Solid },
            Line { series: &train_acc, color: PALETTE[2], kind: LineKind::Dashed },
            Line { series: &val_acc, color: PALETTE[2], kind: LineKind::Solid },
        ],
        title,
        x_label: "epoch",
        y_label: "loss / accuracy",
        log_x: false,
        // Whole epochs on the axis; a sliver past the last so its markers are not cut.
        x_range: Some(0.0..last_epoch * 1.015),
        x_labels: Some((last_epoch as usize + 1).min(11)),
        // A little headroom so a line at the top value is not drawn on the frame.
        y_range: Some(0.0..max_loss * 1.04),
    };
    write_both(svg_path, png_path, &plot)
}

/// Draws several lines in distinct colours with a legend (to the right of the
/// plot), axis labels and a title; writes an SVG and a PNG ([`PLOT_SIZE`]).
/// With `log_x` the x axis is logarithmic and points with `x <= 0` are left
/// out. Non-finite points are left out too; axes fit the remaining points.
pub fn plot_lines(
    series: &[Series],
    title: &str,
    x_label: &str,
    y_label: &str,
    log_x: bool,
    svg_path: &Path,
    png_path: &Path,
) -> Result<()> {
    let plot = LinePlot {
        lines: series
            .iter()
            .enumerate()
            .map(|(i, s)| Line {
                series: s,
                color: PALETTE[i % PALETTE.len()],
                kind: if (i / PALETTE.len()).is_multiple_of(2) { LineKind::Solid } else { LineKind::Dashed },
            })
            .collect(),
        title,
        x_label,
        y_label,
        log_x,
        x_range: None,
        y_range: None,
        x_labels: None,
    };
    write_both(svg_path, png_path, &plot)
}

/// Draws `values[row][col]` as coloured cells (row 0 at the top) with the
/// row and column labels on the axes and a colour bar on the right. The
/// colour scale spans the finite values; non-finite cells are grey. Rows may
/// have different lengths (missing cells are left blank). `row_labels` and
/// `col_labels` may be shorter than the grid (missing labels are blank).
pub fn plot_heatmap(
    values: &[Vec<f64>],
    row_labels: &[String],
    col_labels: &[String],
    title: &str,
    svg_path: &Path,
    png_path: &Path,
) -> Result<()> {
    let heatmap = Heatmap { values, row_labels, col_labels, title, range: None };
    write_both(svg_path, png_path, &heatmap)
}

/// [`plot_heatmap`] with the colour scale fixed to `range` (`lo..hi`), so
/// that several maps drawn with the same range compare by colour; the
/// colour bar shows that range. Values outside it take the end colours.
pub fn plot_heatmap_scaled(
    values: &[Vec<f64>],
    (row_labels, col_labels): (&[String], &[String]),
    title: &str,
    range: (f64, f64),
    svg_path: &Path,
    png_path: &Path,
) -> Result<()> {
    let heatmap = Heatmap { values, row_labels, col_labels, title, range: Some(range) };
    write_both(svg_path, png_path, &heatmap)
}

// ---------------------------------------------------------------------------
// Rendering

/// Black text of the given size in the embedded font.
fn text(size: f64) -> TextStyle<'static> {
    FontDesc::new(FontFamily::Name(FONT_FAMILY), size, FontStyle::Normal).color(&BLACK)
}

fn plot_err<E: std::fmt::Display>(e: E) -> String {
    format!("plotting failed: {e}")
}

fn finite_points<'a>(s: &'a Series, log_x: bool) -> impl Iterator<Item = (f64, f64)> + 'a {
    s.points.iter().copied().filter(move |&(x, y)| x.is_finite() && y.is_finite() && (!log_x || x > 0.0))
}

/// Runs of consecutive drawable points; a skipped point breaks the line.
fn runs(s: &Series, log_x: bool) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = vec![];
    let mut current = vec![];
    for &(x, y) in &s.points {
        if x.is_finite() && y.is_finite() && (!log_x || x > 0.0) {
            current.push((x, y));
        } else if !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// `lo..hi` widened so it has a positive length and a little margin.
fn padded_range(lo: f64, hi: f64, log: bool) -> Range<f64> {
    if log {
        // Multiplicative margins; degenerate ranges become a decade around the value.
        if hi <= lo {
            return lo / 3.0..hi * 3.0;
        }
        let f = (hi / lo).powf(0.04);
        return lo / f..hi * f;
    }
    if hi <= lo {
        let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        return lo - d..hi + d;
    }
    let m = (hi - lo) * 0.04;
    lo - m..hi + m
}

fn fit_range(values: impl Iterator<Item = f64>, log: bool) -> Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        // Nothing to draw: a sensible empty axis.
        return if log { 0.1..10.0 } else { 0.0..1.0 };
    }
    padded_range(lo, hi, log)
}

/// The x-axis numbers, where plotters' own choice reads badly: on a log
/// axis, the data's own x values when there are at most 12 of them (batch
/// sizes 2, 4, ..., 512: each labelled, not only 100-500), else 1, 2 and 5
/// times the powers of ten; on a linear axis whose data are all whole numbers
/// (epochs, steps), whole numbers only, every 1, 2, 5, 10, 20, ... so that at
/// most 11 show (no 1.1, 1.2 ... on a 2-epoch run). `None`: plotters' ticks.
fn x_key_points(xs: &[f64], range: &Range<f64>, log: bool) -> Option<Vec<f64>> {
    let inside = |v: &f64| *v >= range.start && *v <= range.end;
    if log {
        let mut distinct: Vec<f64> = xs.iter().copied().filter(|v| *v > 0.0).collect();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        if !distinct.is_empty() && distinct.len() <= 12 {
            return Some(distinct);
        }
        let (lo, hi) = (range.start.max(f64::MIN_POSITIVE).log10().floor() as i32, range.end.log10().ceil() as i32);
        let keys: Vec<f64> = (lo..=hi).flat_map(|e| [1.0, 2.0, 5.0].map(|m| decade(m, e))).filter(inside).collect();
        return (keys.len() >= 2).then_some(keys);
    }
    if xs.is_empty() || xs.iter().any(|v| v.fract() != 0.0) {
        return None;
    }
    let (first, last) = (range.start.ceil(), range.end.floor());
    if last < first {
        return None;
    }
    let span = last - first;
    let step = [1.0, 2.0, 5.0]
        .iter()
        .flat_map(|m| (0..12).map(move |e| decade(*m, e)))
        .filter(|st| span / st <= 10.0)
        .fold(f64::INFINITY, f64::min);
    let start = (first / step).ceil() * step;
    let keys: Vec<f64> = (0..).map(|k| start + k as f64 * step).take_while(|v| *v <= last).collect();
    Some(keys)
}

/// `m·10^e`, rounded once (`2e-3` is the literal 0.002).
fn decade(m: f64, e: i32) -> f64 {
    if e >= 0 {
        m * 10f64.powi(e)
    } else {
        m / 10f64.powi(-e)
    }
}

/// Axis numbers without float noise: `0.1`, `2`, `0.0003`, `1e-5`.
fn format_tick(v: f64) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    let a = v.abs();
    if !(1e-4..1e5).contains(&a) {
        return format!("{v:e}");
    }
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

/// Something drawn the same way on any plotters backend (SVG and bitmap).
trait Drawing {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> std::result::Result<(), String>;
}

impl Drawing for LinePlot<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> std::result::Result<(), String> {
        draw_line_plot(root, self)
    }
}

struct Heatmap<'a> {
    values: &'a [Vec<f64>],
    row_labels: &'a [String],
    col_labels: &'a [String],
    title: &'a str,
    /// A fixed colour scale; `None`: the finite values' range.
    range: Option<(f64, f64)>,
}

impl Drawing for Heatmap<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> std::result::Result<(), String> {
        draw_heatmap(root, self, colour_range(self.values, self.range))
    }
}

fn draw_line_plot<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    plot: &LinePlot,
) -> std::result::Result<(), String> {
    root.fill(&WHITE).map_err(plot_err)?;
    let (width, _) = root.dim_in_pixel();

    // Legend to the right of the plot, so it never hides a line.
    let legend_font = text(15.0);
    let mut legend_w = 0u32;
    for line in &plot.lines {
        let (w, _) = root.estimate_text_size(&line.series.label, &legend_font).map_err(plot_err)?;
        legend_w = legend_w.max(w);
    }
    let legend_w = if plot.lines.is_empty() { 0 } else { (legend_w + 60).clamp(90, width / 3) };

    let titled = root.titled(plot.title, text(22.0)).map_err(plot_err)?;
    let (chart_area, legend_area) = titled.split_horizontally(titled.dim_in_pixel().0 - legend_w);

    let x_range = match &plot.x_range {
        Some(r) => r.clone(),
        None => fit_range(plot.lines.iter().flat_map(|l| finite_points(l.series, plot.log_x).map(|p| p.0)), plot.log_x),
    };
    let y_range = match &plot.y_range {
        Some(r) => r.clone(),
        None => fit_range(plot.lines.iter().flat_map(|l| finite_points(l.series, plot.log_x).map(|p| p.1)), false),
    };

    let xs: Vec<f64> = plot.lines.iter().flat_map(|l| finite_points(l.series, plot.log_x).map(|p| p.0)).collect();
    match (plot.log_x, x_key_points(&xs, &x_range, plot.log_x)) {
        (true, Some(keys)) => {
            draw_chart(&chart_area, x_range.log_scale().with_key_points(keys), y_range, plot, plot.x_labels)?
        }
        (true, None) => draw_chart(&chart_area, x_range.log_scale(), y_range, plot, plot.x_labels)?,
        // plotters takes the smallest 1-2-5 step that gives at most this
        // many ticks: asking for as many as there are whole-number keys
        // gives those keys (a finer step would give more)
        (false, Some(keys)) => draw_chart(&chart_area, x_range, y_range, plot, Some(keys.len().max(2)))?,
        (false, None) => draw_chart(&chart_area, x_range, y_range, plot, plot.x_labels)?,
    }

    // The legend: a short line sample (with the marker) and the label per series.
    let row_h = 24;
    let mut y = 40;
    for line in &plot.lines {
        let style = line.color.stroke_width(2);
        let (x0, x1) = (8, 38);
        let ym = y + row_h / 2;
        match line.kind {
            LineKind::Solid => {
                legend_area.draw(&PathElement::new(vec![(x0, ym), (x1, ym)], style)).map_err(plot_err)?
            }
            LineKind::Dashed => {
                for (a, b) in [(x0, x0 + 8), (x0 + 12, x0 + 20), (x0 + 24, x1)] {
                    legend_area.draw(&PathElement::new(vec![(a, ym), (b, ym)], style)).map_err(plot_err)?;
                }
            }
        }
        legend_area.draw(&Circle::new(((x0 + x1) / 2, ym), 3, line.color.filled())).map_err(plot_err)?;
        legend_area
            .draw(&Text::new(
                line.series.label.clone(),
                (x1 + 8, ym),
                legend_font.clone().pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(plot_err)?;
        y += row_h;
    }

    root.present().map_err(plot_err)
}

fn draw_chart<DB, X>(
    area: &DrawingArea<DB, Shift>,
    x_spec: X,
    y_range: Range<f64>,
    plot: &LinePlot,
    x_labels: Option<usize>,
) -> std::result::Result<(), String>
where
    DB: DrawingBackend,
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(x_spec, y_range)
        .map_err(plot_err)?;
    let mut mesh = chart.configure_mesh();
    if let Some(n) = x_labels {
        mesh.x_labels(n);
    }
    mesh.x_desc(plot.x_label)
        .y_desc(plot.y_label)
        .axis_desc_style(text(16.0))
        .label_style(text(13.0))
        .x_label_formatter(&|v| format_tick(*v))
        .y_label_formatter(&|v| format_tick(*v))
        .max_light_lines(4)
        .light_line_style(RGBColor(240, 240, 240))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()
        .map_err(plot_err)?;

    for line in &plot.lines {
        let style = line.color.stroke_width(2);
        for run in runs(line.series, plot.log_x) {
            match line.kind {
                LineKind::Solid => {
                    chart.draw_series(LineSeries::new(run.clone(), style)).map_err(plot_err)?;
                }
                LineKind::Dashed => {
                    chart.draw_series(DashedLineSeries::new(run.clone(), 8, 5, style)).map_err(plot_err)?;
                }
            }
            // Markers, so that a single epoch (one point) still shows.
            chart.draw_series(run.iter().map(|&p| Circle::new(p, 3, line.color.filled()))).map_err(plot_err)?;
        }
    }
    Ok(())
}

/// Every how many labels to draw so that `n` labels, each needing `each`
/// pixels, fit in `space` pixels.
fn thin_step(n: usize, space: u32, each: u32) -> usize {
    let fit = (space / each.max(1)).max(1) as usize;
    n.div_ceil(fit).max(1)
}

/// Viridis, sampled at nine points and interpolated linearly; `t` in `0..=1`.
fn viridis(t: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 9] = [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let pos = t * (STOPS.len() - 1) as f64;
    let i = (pos.floor() as usize).min(STOPS.len() - 2);
    let f = pos - i as f64;
    let lerp = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    RGBColor(lerp(a.0, b.0), lerp(a.1, b.1), lerp(a.2, b.2))
}

const MISSING: RGBColor = RGBColor(160, 160, 160);

/// The colour scale of a heat map: `fixed` when given (and not empty),
/// else the finite values' range; a single value gets ±10 % around it.
fn colour_range(values: &[Vec<f64>], fixed: Option<(f64, f64)>) -> (f64, f64) {
    let (lo, hi) = match fixed {
        Some((lo, hi)) if lo.is_finite() && hi.is_finite() && lo <= hi => (lo, hi),
        _ => values
            .iter()
            .flatten()
            .filter(|v| v.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v))),
    };
    if lo > hi {
        (0.0, 1.0)
    } else if lo == hi {
        let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo - d, hi + d)
    } else {
        (lo, hi)
    }
}

fn draw_heatmap<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    map: &Heatmap,
    (lo, hi): (f64, f64),
) -> std::result::Result<(), String> {
    let Heatmap { values, row_labels, col_labels, title, .. } = *map;
    root.fill(&WHITE).map_err(plot_err)?;
    let rows = values.len().max(row_labels.len()).max(1);
    let cols = values.iter().map(Vec::len).max().unwrap_or(0).max(col_labels.len()).max(1);
    let scale = |v: f64| (v - lo) / (hi - lo);

    // Room for the row labels: as wide as the widest, within reason.
    let label_font = text(13.0);
    let mut row_label_w = 0u32;
    for l in row_labels {
        row_label_w = row_label_w.max(root.estimate_text_size(l, &label_font).map_err(plot_err)?.0);
    }
    let (width, _) = root.dim_in_pixel();
    let row_label_w = (row_label_w + 15).clamp(40, width / 3);

    let titled = root.titled(title, text(22.0)).map_err(plot_err)?;
    let (map_area, bar_area) = titled.split_horizontally(titled.dim_in_pixel().0 - 110);

    // Cell (r, c) is the unit square at x = c, y = rows - 1 - r (row 0 at the top).
    let mut chart = ChartBuilder::on(&map_area)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(row_label_w)
        .build_cartesian_2d(0.0..cols as f64, 0.0..rows as f64)
        .map_err(plot_err)?;
    chart.configure_mesh().disable_mesh().x_labels(0).y_labels(0).draw().map_err(plot_err)?;

    let cells = values.iter().enumerate().flat_map(|(r, row)| {
        let y = (rows - 1 - r) as f64;
        row.iter().enumerate().map(move |(c, &v)| {
            let color = if v.is_finite() { viridis(scale(v)) } else { MISSING };
            Rectangle::new([(c as f64, y), (c as f64 + 1.0, y + 1.0)], color.filled())
        })
    });
    chart.draw_series(cells).map_err(plot_err)?;

    // Labels at the cells' centres, thinned so they do not overlap. Drawn on
    // `root`, whose coordinates are the backend's pixels.
    let (left, bottom) = chart.backend_coord(&(0.0, 0.0));
    let (right, top) = chart.backend_coord(&(cols as f64, rows as f64));
    let row_step = thin_step(row_labels.len().min(rows), (bottom - top) as u32, 16);
    for (r, label) in row_labels.iter().enumerate().take(rows).step_by(row_step) {
        let (_, y) = chart.backend_coord(&(0.0, (rows - r) as f64 - 0.5));
        root.draw(&Text::new(
            label.clone(),
            (left - 6, y),
            label_font.clone().pos(Pos::new(HPos::Right, VPos::Center)),
        ))
        .map_err(plot_err)?;
    }
    let mut col_label_w = 0u32;
    for l in col_labels {
        col_label_w = col_label_w.max(root.estimate_text_size(l, &label_font).map_err(plot_err)?.0);
    }
    let col_step = thin_step(col_labels.len().min(cols), (right - left) as u32, col_label_w + 12);
    for (c, label) in col_labels.iter().enumerate().take(cols).step_by(col_step) {
        let (x, _) = chart.backend_coord(&(c as f64 + 0.5, 0.0));
        root.draw(&Text::new(
            label.clone(),
            (x, bottom + 6),
            label_font.clone().pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(plot_err)?;
    }

    // The colour bar: a column of thin bands from `lo` to `hi`, numbers on the right.
    let mut bar = ChartBuilder::on(&bar_area)
        .margin_top(10)
        .margin_bottom(50)
        .margin_left(10)
        .margin_right(5)
        .y_label_area_size(0)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0.0..1.0, lo..hi)
        .map_err(plot_err)?;
    const BANDS: usize = 128;
    bar.draw_series((0..BANDS).map(|k| {
        let a = lo + (hi - lo) * k as f64 / BANDS as f64;
        let b = lo + (hi - lo) * (k + 1) as f64 / BANDS as f64;
        Rectangle::new([(0.0, a), (1.0, b)], viridis((k as f64 + 0.5) / BANDS as f64).filled())
    }))
    .map_err(plot_err)?;
    bar.configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(6)
        .label_style(label_font)
        .y_label_formatter(&|v| format_tick(*v))
        .draw()
        .map_err(plot_err)?;

    root.present().map_err(plot_err)
}

// ---------------------------------------------------------------------------
// Output

/// Renders the same drawing into an SVG and a PNG and writes both atomically.
/// Rendering errors name the file being rendered.
fn write_both(svg_path: &Path, png_path: &Path, drawing: &impl Drawing) -> Result<()> {
    register_font();
    let (w, h) = PLOT_SIZE;

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        drawing.draw(&root).map_err(|m| Error::data(svg_path, m))?;
    }

    let mut rgb = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        drawing.draw(&root).map_err(|m| Error::data(png_path, m))?;
    }
    let image = image::RgbImage::from_raw(w, h, rgb)
        .ok_or_else(|| Error::data(png_path, "plotting failed: pixel buffer has the wrong size"))?;
    let mut png = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut png, image::ImageFormat::Png)
        .map_err(|e| Error::data(png_path, format!("PNG encoding failed: {e}")))?;

    write_atomic(svg_path, svg.as_bytes())?;
    write_atomic(png_path, &png.into_inner())
}

/// Writes `bytes` to a fresh temporary file beside `path`, then renames it
/// over `path`: readers see the old file or the new one, never half of one.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| Error::data(path, "not a file path"))?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.{}.tmp", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_axis_labels_every_batch_size_and_epoch_axes_whole_numbers() {
        let batches = [16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
        let range = padded_range(16.0, 512.0, true);
        assert_eq!(x_key_points(&batches, &range, true), Some(batches.to_vec()));
        // many points on a log axis: 1-2-5 per decade inside the range
        let lrs: Vec<f64> = (0..20).map(|i| 10f64.powf(-3.0 + i as f64 * 0.15)).collect();
        let keys = x_key_points(&lrs, &(0.001..1.0), true).unwrap();
        assert_eq!(keys, vec![0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]);
        // two epochs: 1 and 2 only, no 1.1, 1.2, ...
        let range = padded_range(1.0, 2.0, false);
        assert_eq!(x_key_points(&[1.0, 2.0], &range, false), Some(vec![1.0, 2.0]));
        // 30 epochs: every 5th
        let epochs: Vec<f64> = (1..=30).map(f64::from).collect();
        assert_eq!(x_key_points(&epochs, &padded_range(1.0, 30.0, false), false).unwrap()[..3], [0.0, 5.0, 10.0]);
        // fractional x (epochs at steps): plotters' ticks
        assert_eq!(x_key_points(&[0.5, 1.5], &(0.0..2.0), false), None);
    }

    #[test]
    fn a_fixed_colour_range_wins_over_the_values() {
        let v = vec![vec![1.0, 2.0], vec![f64::NAN, 3.0]];
        assert_eq!(colour_range(&v, None), (1.0, 3.0));
        assert_eq!(colour_range(&v, Some((0.0, 10.0))), (0.0, 10.0));
        assert_eq!(colour_range(&v, Some((f64::INFINITY, f64::NEG_INFINITY))), (1.0, 3.0));
        let (lo, hi) = colour_range(&[vec![2.0]], None);
        assert!((lo - 1.8).abs() < 1e-12 && (hi - 2.2).abs() < 1e-12);
    }

    #[test]
    fn tick_format_has_no_float_noise() {
        assert_eq!(format_tick(0.0), "0");
        assert_eq!(format_tick(0.30000000000000004), "0.3");
        assert_eq!(format_tick(2.0), "2");
        assert_eq!(format_tick(-1.5), "-1.5");
        assert_eq!(format_tick(1e-5), "1e-5");
    }

    #[test]
    fn runs_break_at_non_finite_points() {
        let s = Series::new("s", vec![(1.0, 1.0), (2.0, f64::NAN), (3.0, 3.0), (4.0, 4.0)]);
        assert_eq!(runs(&s, false), vec![vec![(1.0, 1.0)], vec![(3.0, 3.0), (4.0, 4.0)]]);
        let s = Series::new("s", vec![(0.0, 1.0), (0.1, 2.0)]);
        assert_eq!(runs(&s, true), vec![vec![(0.1, 2.0)]]);
    }

    #[test]
    fn viridis_ends() {
        assert_eq!(viridis(0.0), RGBColor(68, 1, 84));
        assert_eq!(viridis(1.0), RGBColor(253, 231, 37));
        assert_eq!(viridis(f64::NAN), RGBColor(68, 1, 84));
    }
}
