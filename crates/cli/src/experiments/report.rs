//! The report writer: `report.md`, the CSV files, the plots (SVG and PNG) and
//! a self-contained `index.html` (the PNGs embedded as data URIs, the tables
//! as HTML) for each experiment, and the top-level index of `experiment all`.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::plot::{plot_lines, Series};
use normlab::fsutil::write_atomic;
use normlab::{Error, Result};

use super::runner::{Run, Runs, Stat};

/// One table cell; `best` cells are set in bold.
#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    pub text: String,
    pub best: bool,
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Cell { text, best: false }
    }
}
impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        Cell { text: text.to_string(), best: false }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Table {
    pub caption: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
    /// Sentences printed under the table.
    pub notes: Vec<String>,
}

/// A plot written as `<stem>.svg` and `<stem>.png` in the output directory.
#[derive(Clone, Debug, Serialize)]
pub struct Plot {
    pub stem: String,
    pub caption: String,
}

/// Everything an experiment's page shows.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub name: String,
    pub title: String,
    pub question: String,
    /// Bullet points: data, network, training recipe, what varies.
    pub setup: Vec<String>,
    /// The first table is the main one (settings × mean ± std).
    pub tables: Vec<Table>,
    /// What the numbers show, one sentence per entry, computed from them.
    pub reading: Vec<String>,
    pub plots: Vec<Plot>,
    /// Data files written beside the report, with a description.
    pub files: Vec<(String, String)>,
    /// Wall time of the whole experiment, filled in by the runner.
    pub seconds: f64,
    pub threads: usize,
    /// A note on the running time at the defaults (measured on 2 cores).
    pub timing_note: String,
    /// A `--quick` run: the page says at the top that its numbers are not
    /// for reading (filled in by the runner).
    pub quick: bool,
}

/// The line at the top of a `--quick` run's pages.
pub const QUICK_BANNER: &str = "Quick run: not for reading the numbers. A small subset and 2 epochs, for checking the pipeline; run without --quick for numbers to read.";

/// How a column reads its value from a run (`None`: no value).
pub type ColFn<'a> = Box<dyn Fn(&Run) -> Option<f64> + 'a>;

/// One column of a [`settings_table`].
pub struct Col<'a> {
    pub header: &'a str,
    pub decimals: usize,
    /// Which direction is better (for the bold best cell); `None`: no marking.
    pub higher_is_better: Option<bool>,
    /// Show the mean alone (for values the seed does not change: parameters, lr).
    pub plain: bool,
    pub value: ColFn<'a>,
}

impl<'a> Col<'a> {
    pub fn new(header: &'a str, decimals: usize, value: impl Fn(&Run) -> Option<f64> + 'a) -> Self {
        Col { header, decimals, higher_is_better: None, plain: false, value: Box::new(value) }
    }
    pub fn higher(mut self) -> Self {
        self.higher_is_better = Some(true);
        self
    }
    pub fn lower(mut self) -> Self {
        self.higher_is_better = Some(false);
        self
    }
    pub fn plain(mut self) -> Self {
        self.plain = true;
        self
    }
}

/// The final validation accuracy of a run (its last epoch).
pub fn val_acc_col<'a>() -> Col<'a> {
    Col::new("final val acc", 4, |r: &Run| r.last().map(|m| m.val_acc)).higher()
}
/// The mean training loss of a run's last epoch.
pub fn train_loss_col<'a>() -> Col<'a> {
    Col::new("final train loss", 4, |r: &Run| r.last().map(|m| m.train_loss)).lower()
}

/// The main table: one row per setting (in the order of `runs.settings`),
/// a "runs ok" column, then mean ± std over the runs that trained of each
/// column. A setting none of whose runs trained shows "failed".
pub fn settings_table(caption: &str, runs: &Runs, cols: &[Col]) -> Table {
    let mut header = vec!["setting".to_string(), "runs ok".to_string()];
    header.extend(cols.iter().map(|c| c.header.to_string()));
    let stats: Vec<Vec<Option<Stat>>> =
        (0..runs.settings.len()).map(|s| cols.iter().map(|c| runs.stat(s, |r| (c.value)(r))).collect()).collect();
    let mut rows = Vec::new();
    for (s, label) in runs.settings.iter().enumerate() {
        let (ok, all) = runs.ok_count(s);
        let mut row: Vec<Cell> = vec![label.as_str().into(), format!("{ok}/{all}").into()];
        for (c, col) in cols.iter().enumerate() {
            let cell = match stats[s][c] {
                Some(st) => {
                    let best = col.higher_is_better.is_some_and(|higher| {
                        let means: Vec<f64> = stats.iter().filter_map(|r| r[c].map(|x| x.mean)).collect();
                        let best = if higher {
                            means.iter().copied().fold(f64::MIN, f64::max)
                        } else {
                            means.iter().copied().fold(f64::MAX, f64::min)
                        };
                        // bold marks a winner: not when every setting has the best mean
                        st.mean == best && means.iter().any(|&m| m != best)
                    });
                    let text = if col.plain && st.std <= 1e-9 * st.mean.abs().max(1.0) {
                        format!("{:.*}", col.decimals, st.mean)
                    } else {
                        st.fmt(col.decimals)
                    };
                    Cell { text, best }
                }
                None if ok == 0 => "failed".into(),
                None => "n/a".into(),
            };
            row.push(cell);
        }
        rows.push(row);
    }
    let seeds = runs.runs.iter().map(|r| r.seed).max().map_or(0, |m| m + 1);
    let spread = if seeds == 1 {
        "The value of the one run that trained (1 seed per setting: no spread to show)".to_string()
    } else {
        format!("Mean ± sample standard deviation over the runs that trained ({seeds} seeds per setting)")
    };
    let bold = rows.iter().flatten().any(|c: &Cell| c.best);
    let mut notes = vec![format!(
        "{spread}; \"runs ok\" counts the runs that did not fail.{}",
        if bold { " Best mean of each column in bold." } else { "" }
    )];
    let failed: Vec<String> = runs
        .runs
        .iter()
        .filter(|r| !r.status.is_ok())
        .map(|r| format!("{} (seed {}): {}", runs.settings[r.setting], r.seed, r.status.describe()))
        .collect();
    if !failed.is_empty() {
        notes.push(format!("Failed runs: {}.", failed.join("; ")));
    }
    Table { caption: caption.to_string(), header, rows, notes }
}

/// `summary.csv`: the unrounded numbers behind a settings table.
pub fn summary_csv(runs: &Runs, cols: &[Col]) -> String {
    let mut s = String::from("setting,column,mean,std,n_ok,n_runs\n");
    for (i, label) in runs.settings.iter().enumerate() {
        let (ok, all) = runs.ok_count(i);
        for c in cols {
            let (m, sd) = runs.stat(i, |r| (c.value)(r)).map_or((f64::NAN, f64::NAN), |st| (st.mean, st.std));
            let _ = writeln!(
                s,
                "{},{},{},{},{ok},{all}",
                super::runner::csv_field(label),
                super::runner::csv_field(c.header),
                super::runner::num(m),
                super::runner::num(sd)
            );
        }
    }
    s
}

/// A line per setting (listed in `which`) of the per-epoch mean over seeds of `f`.
pub fn epoch_plot(
    dir: &Path,
    stem: &str,
    title: &str,
    y_label: &str,
    runs: &Runs,
    which: &[usize],
    f: impl Fn(&normlab::train::EpochMetrics, &[f64]) -> f64,
) -> Result<Plot> {
    epoch_plot_with(dir, stem, title, y_label, runs, which, false, f)
}

/// [`epoch_plot`] over the runs that trained only when `ok_only`.
#[allow(clippy::too_many_arguments)]
pub fn epoch_plot_with(
    dir: &Path,
    stem: &str,
    title: &str,
    y_label: &str,
    runs: &Runs,
    which: &[usize],
    ok_only: bool,
    f: impl Fn(&normlab::train::EpochMetrics, &[f64]) -> f64,
) -> Result<Plot> {
    let curve = |s: usize| if ok_only { runs.epoch_curve_ok(s, &f) } else { runs.epoch_curve(s, &f) };
    let series: Vec<Series> = which.iter().map(|&s| Series::new(runs.settings[s].clone(), curve(s))).collect();
    plot_lines(
        &series,
        title,
        "epoch",
        y_label,
        false,
        &dir.join(format!("{stem}.svg")),
        &dir.join(format!("{stem}.png")),
    )?;
    Ok(Plot { stem: stem.into(), caption: title.into() })
}

/// The usual pair: validation accuracy and training loss against epoch, every setting.
pub fn standard_plots(dir: &Path, runs: &Runs) -> Result<Vec<Plot>> {
    let all: Vec<usize> = (0..runs.settings.len()).collect();
    Ok(vec![
        epoch_plot(dir, "val_acc", "Validation accuracy (mean over seeds)", "val accuracy", runs, &all, |m, _| {
            m.val_acc
        })?,
        epoch_plot(dir, "train_loss", "Training loss (mean over seeds)", "train loss", runs, &all, |m, _| {
            m.train_loss
        })?,
    ])
}

// ---------------------------------------------------------------------------
// Writing

/// Writes `report.md` and `index.html` (the CSVs and plots are written by
/// the experiment, into the same directory).
pub fn write_report(dir: &Path, report: &Report) -> Result<()> {
    write_atomic(&dir.join("report.md"), markdown(report).as_bytes())?;
    write_atomic(&dir.join("index.html"), html(dir, report)?.as_bytes())?;
    Ok(())
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# {}\n", r.title);
    if r.quick {
        let _ = writeln!(s, "> **{QUICK_BANNER}**\n");
    }
    let _ = writeln!(s, "**Question.** {}\n", r.question);
    let _ = writeln!(s, "## Setup\n");
    for b in &r.setup {
        let _ = writeln!(s, "- {b}");
    }
    let _ = writeln!(
        s,
        "- Running time: {:.1} s on {} thread{} (this run). {}\n",
        r.seconds,
        r.threads,
        if r.threads == 1 { "" } else { "s" },
        r.timing_note
    );
    let _ = writeln!(s, "## Results\n");
    for t in &r.tables {
        let _ = writeln!(s, "### {}\n", t.caption);
        let _ = writeln!(s, "| {} |", t.header.iter().map(|h| md_escape(h)).collect::<Vec<_>>().join(" | "));
        let _ = writeln!(
            s,
            "|{}|",
            t.header.iter().enumerate().map(|(i, _)| if i == 0 { "---" } else { "---:" }).collect::<Vec<_>>().join("|")
        );
        for row in &t.rows {
            let cells: Vec<String> = row
                .iter()
                .map(|c| if c.best { format!("**{}**", md_escape(&c.text)) } else { md_escape(&c.text) })
                .collect();
            let _ = writeln!(s, "| {} |", cells.join(" | "));
        }
        s.push('\n');
        for n in &t.notes {
            let _ = writeln!(s, "{n}\n");
        }
    }
    let _ = writeln!(s, "## Reading\n");
    for line in &r.reading {
        let _ = writeln!(s, "- {line}");
    }
    s.push('\n');
    let _ = writeln!(s, "## Plots\n");
    for p in &r.plots {
        let _ = writeln!(s, "![{}]({}.png)\n\n*{}* ([SVG]({}.svg))\n", p.caption, p.stem, p.caption, p.stem);
    }
    let _ = writeln!(s, "## Files\n");
    for (f, d) in &r.files {
        let _ = writeln!(s, "- [`{f}`]({f}): {d}");
    }
    let _ = writeln!(s, "- `report.md` (this file), `index.html` (the same as one page, plots embedded)");
    s
}

pub fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            _ => o.push(c),
        }
    }
    o
}

/// Standard base64 (RFC 4648, with padding).
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub const CSS: &str = "
body { font-family: 'DejaVu Sans', 'Liberation Sans', Arial, sans-serif; margin: 0; color: #1d2330; background: #f5f6f8; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { font-size: 28px; margin: 8px 0 4px; }
h2 { font-size: 20px; margin: 28px 0 10px; border-bottom: 1px solid #d5d9e0; padding-bottom: 4px; }
h3 { font-size: 16px; margin: 18px 0 8px; }
.question { font-size: 17px; background: #fff; border-left: 5px solid #1f77b4; padding: 12px 16px; margin: 12px 0; }
.reading { background: #fffbea; border: 1px solid #f0dc8c; border-radius: 6px; padding: 8px 16px 8px 32px; }
.reading li { margin: 6px 0; }
ul.setup { color: #333; }
table { border-collapse: collapse; background: #fff; margin: 6px 0; font-size: 14px; }
th, td { border: 1px solid #d5d9e0; padding: 5px 10px; text-align: right; white-space: nowrap; }
th { background: #eef1f5; white-space: normal; vertical-align: bottom; }
.tablewrap { max-width: 100%; overflow-x: auto; }
td:first-child, th:first-child { text-align: left; }
td.best { font-weight: bold; background: #e6f4ea; }
td.failed { color: #b00020; }
p.note { font-size: 13px; color: #555; margin: 4px 0 10px; max-width: 1100px; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; }
figure { background: #fff; border: 1px solid #d5d9e0; margin: 0; padding: 8px; width: 540px; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-size: 13px; color: #333; margin-top: 4px; }
a { color: #1f5fa8; }
.meta { color: #666; font-size: 13px; }
.quick { background: #fdecea; border: 1px solid #e8a39b; border-radius: 6px; padding: 8px 16px; color: #8a1c12; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(540px, 1fr)); gap: 16px; }
.card { background: #fff; border: 1px solid #d5d9e0; border-radius: 6px; padding: 12px 16px; }
.card h2 { border: none; margin: 4px 0; font-size: 18px; }
.card img { width: 100%; height: auto; border: 1px solid #eee; }
";

fn html_table(t: &Table) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "<h3>{}</h3>\n<div class=\"tablewrap\"><table>\n<tr>", html_escape(&t.caption));
    for h in &t.header {
        let _ = write!(s, "<th>{}</th>", html_escape(h));
    }
    s += "</tr>\n";
    for row in &t.rows {
        s += "<tr>";
        for c in row {
            let class = if c.best {
                " class=\"best\""
            } else if c.text.starts_with("failed") {
                " class=\"failed\""
            } else {
                ""
            };
            let _ = write!(s, "<td{class}>{}</td>", html_escape(&c.text));
        }
        s += "</tr>\n";
    }
    s += "</table></div>\n";
    for n in &t.notes {
        let _ = writeln!(s, "<p class=\"note\">{}</p>", html_escape(n));
    }
    s
}

/// The PNG of a plot as a data URI.
pub fn png_data_uri(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(format!("data:image/png;base64,{}", base64(&bytes)))
}

pub fn html(dir: &Path, r: &Report) -> Result<String> {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>normlab: {}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n",
        html_escape(&r.title)
    );
    let _ = writeln!(s, "<p class=\"meta\">normlab experiment <b>{}</b></p>", html_escape(&r.name));
    let _ = writeln!(s, "<h1>{}</h1>", html_escape(&r.title));
    if r.quick {
        let _ = writeln!(s, "<p class=\"quick\"><b>{}</b></p>", html_escape(QUICK_BANNER));
    }
    let _ = writeln!(s, "<div class=\"question\"><b>Question.</b> {}</div>", html_escape(&r.question));
    let _ = writeln!(s, "<h2>What the numbers show</h2>\n<ul class=\"reading\">");
    for line in &r.reading {
        let _ = writeln!(s, "<li>{}</li>", html_escape(line));
    }
    s += "</ul>\n<h2>Results</h2>\n";
    for t in &r.tables {
        s += &html_table(t);
    }
    s += "<h2>Plots</h2>\n<div class=\"plots\">\n";
    for p in &r.plots {
        let uri = png_data_uri(&dir.join(format!("{}.png", p.stem)))?;
        let _ = writeln!(
            s,
            "<figure><img src=\"{uri}\" alt=\"{cap}\"><figcaption>{cap} (<a href=\"{stem}.svg\">SVG</a>, <a href=\"{stem}.png\">PNG</a>)</figcaption></figure>",
            cap = html_escape(&p.caption),
            stem = html_escape(&p.stem)
        );
    }
    s += "</div>\n<h2>Setup</h2>\n<ul class=\"setup\">\n";
    for b in &r.setup {
        let _ = writeln!(s, "<li>{}</li>", html_escape(b));
    }
    let _ = writeln!(
        s,
        "<li>Running time: {:.1} s on {} thread(s) (this run). {}</li>\n</ul>",
        r.seconds,
        r.threads,
        html_escape(&r.timing_note)
    );
    s += "<h2>Files</h2>\n<ul>\n";
    for (f, d) in &r.files {
        let _ = writeln!(s, "<li><a href=\"{f}\">{f}</a>: {}</li>", html_escape(d), f = html_escape(f));
    }
    s += "<li><a href=\"report.md\">report.md</a>: this page as Markdown</li>\n</ul>\n</main>\n</body>\n</html>\n";
    Ok(s)
}

/// What the top-level index shows of each experiment.
#[derive(Clone, Debug, Serialize)]
pub struct IndexEntry {
    pub name: String,
    pub title: String,
    pub question: String,
    /// The experiment's directory, relative to the index.
    pub dir: String,
    pub reading: Vec<String>,
    pub seconds: f64,
    /// A plot to show as a thumbnail, relative to the index.
    pub thumbnail: Option<String>,
}

/// The top-level `index.html` of `experiment all`: one card per experiment
/// with its question, what the numbers show, a plot and a link.
pub fn write_index(path: &Path, entries: &[IndexEntry], heading_note: &str) -> Result<()> {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>normlab experiments</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
    );
    let _ = writeln!(s, "<h1>normlab: the batch-normalization chapter's questions, answered by training</h1>");
    let _ = writeln!(s, "<p class=\"meta\">{}</p>", html_escape(heading_note));
    s += "<div class=\"cards\">\n";
    for e in entries {
        let _ = writeln!(
            s,
            "<div class=\"card\"><h2><a href=\"{dir}/index.html\">{title}</a></h2><p class=\"meta\">{name} · {secs:.0} s</p><p><b>Question.</b> {q}</p>",
            dir = html_escape(&e.dir),
            title = html_escape(&e.title),
            name = html_escape(&e.name),
            secs = e.seconds,
            q = html_escape(&e.question)
        );
        if let Some(first) = e.reading.first() {
            let _ = writeln!(s, "<p>{}</p>", html_escape(first));
        }
        if let Some(t) = &e.thumbnail {
            let _ = writeln!(
                s,
                "<a href=\"{dir}/index.html\"><img src=\"{t}\" alt=\"{title}\"></a>",
                dir = html_escape(&e.dir),
                t = html_escape(t),
                title = html_escape(&e.title)
            );
        }
        s += "</div>\n";
    }
    s += "</div>\n</main>\n</body>\n</html>\n";
    write_atomic(path, s.as_bytes())
}

// ---------------------------------------------------------------------------
// Shared pieces of the experiments

/// Writes `epochs.csv`, `runs.csv` and `summary.csv` and returns their
/// descriptions for the report's file list.
pub fn write_csvs(ctx: &super::Context, runs: &Runs, cols: &[Col]) -> Result<Vec<(String, String)>> {
    ctx.write("epochs.csv", &runs.epochs_csv())?;
    ctx.write("runs.csv", &runs.runs_csv())?;
    ctx.write("summary.csv", &summary_csv(runs, cols))?;
    let mut extra = String::new();
    if !runs.columns.is_empty() {
        extra = format!(" and this experiment's own measurements ({})", runs.columns.join(", "));
    }
    Ok(vec![
        (
            "epochs.csv".into(),
            format!("every run's metrics after each epoch (setting, seed, epoch, losses, accuracies, seconds{extra}, and the run's status: ok, diverged or loss-above-start)"),
        ),
        ("runs.csv".into(), "one row per run: status, epochs, starting loss, final numbers, parameters, seconds".into()),
        ("summary.csv".into(), "the numbers behind the main table, unrounded (mean, std, runs)".into()),
    ])
}

/// `full BN 0.8512` or `full BN (all runs failed)`.
pub fn acc_phrase(runs: &Runs, s: usize) -> String {
    match runs.final_val_acc(s) {
        Some(st) => format!("{} {}", runs.settings[s], fixed(st.mean, 4)),
        None => format!("{} (all runs failed)", runs.settings[s]),
    }
}

/// "Ranked by final validation accuracy: A 0.85 > B 0.84 = C 0.84 > ...":
/// settings whose means print the same (4 decimals) are a tie, joined by
/// "="; when all of them tie there is no ranking to print.
pub fn ranking(runs: &Runs, which: &[usize]) -> String {
    let key = |s: usize| runs.final_val_acc(s).map(|st| (st.mean * 1e4).round() as i64);
    let mut order: Vec<(usize, Option<i64>)> = which.iter().map(|&s| (s, key(s))).collect();
    order.sort_by_key(|o| std::cmp::Reverse(o.1));
    let trained: Vec<i64> = order.iter().filter_map(|o| o.1).collect();
    if trained.len() > 1 && trained.iter().all(|&k| k == trained[0]) {
        let failed: Vec<String> = order.iter().filter(|o| o.1.is_none()).map(|o| acc_phrase(runs, o.0)).collect();
        return format!(
            "No ranking: {} settings end at the same final validation accuracy, {} (mean over seeds){}.",
            trained.len(),
            fixed(trained[0] as f64 / 1e4, 4),
            if failed.is_empty() { String::new() } else { format!("; {}", failed.join(", ")) }
        );
    }
    let mut text = String::new();
    for (i, &(s, k)) in order.iter().enumerate() {
        if i > 0 {
            text += if k.is_some() && k == order[i - 1].1 { " = " } else { " > " };
        }
        text += &acc_phrase(runs, s);
    }
    format!("Ranked by final validation accuracy (mean over seeds): {text}.")
}

/// `x` with `decimals` places, never "-0.0000": a value that rounds to
/// zero prints without a sign.
pub fn fixed(x: f64, decimals: usize) -> String {
    let s = format!("{x:.decimals$}");
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string()
    } else {
        s
    }
}

/// `x` with an explicit sign and `decimals` places ("+0.0123", "-0.0040");
/// a value that rounds to zero is "+0.0000", never "-0.0000".
pub fn signed(x: f64, decimals: usize) -> String {
    let s = fixed(x, decimals);
    if s.starts_with('-') {
        s
    } else {
        format!("+{s}")
    }
}

/// Below this final validation accuracy (twice chance) a setting counts as
/// not having trained, in the readings.
pub const NEAR_CHANCE: f64 = 0.2;

/// "A minus B: +0.0123 in final validation accuracy, larger than the
/// seed-to-seed spread explains (3.1 standard errors)".
pub fn versus(runs: &Runs, a: usize, b: usize) -> String {
    let (sa, sb) = match (runs.final_val_acc(a), runs.final_val_acc(b)) {
        (Some(x), Some(y)) => (x, y),
        _ => {
            return format!(
                "{} against {}: no comparison, a setting has no run that trained.",
                runs.settings[a], runs.settings[b]
            )
        }
    };
    let d = sa.mean - sb.mean;
    let se = (sa.sem().powi(2) + sb.sem().powi(2)).sqrt();
    let verdict = if sa.n < 2 || sb.n < 2 {
        "one seed each, so no statement about noise".to_string()
    } else if sa.clearly_differs(&sb) {
        format!("more than the seed-to-seed spread explains ({:.1} standard errors)", d.abs() / se.max(1e-12))
    } else {
        format!("within the seed-to-seed spread ({:.1} standard errors)", d.abs() / se.max(1e-12))
    };
    let chance = if sa.mean < NEAR_CHANCE && sb.mean < NEAR_CHANCE {
        " Both end near chance (0.1 on 10 classes): neither trained here."
    } else {
        ""
    };
    format!(
        "{} minus {}: {} in final validation accuracy ({} vs {}), {verdict}.{chance}",
        runs.settings[a],
        runs.settings[b],
        signed(d, 4),
        fixed(sa.mean, 4),
        fixed(sb.mean, 4)
    )
}

/// A report with nothing in it; experiments fill in what they have (the
/// runner sets name, title, question, time and threads).
pub fn empty() -> Report {
    Report {
        name: String::new(),
        title: String::new(),
        question: String::new(),
        setup: Vec::new(),
        tables: Vec::new(),
        reading: Vec::new(),
        plots: Vec::new(),
        files: Vec::new(),
        seconds: 0.0,
        threads: 0,
        timing_note: String::new(),
        quick: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use normlab::train::EpochMetrics;

    /// Runs whose final validation accuracies are `accs[setting][seed]`.
    fn runs_of(accs: &[&[f64]]) -> Runs {
        let mut runs = Vec::new();
        for (setting, seeds) in accs.iter().enumerate() {
            for (seed, &acc) in seeds.iter().enumerate() {
                let mut r = Run::new(setting, seed as u64, 10);
                r.epochs.push(EpochMetrics {
                    epoch: 1,
                    train_loss: 1.0,
                    train_acc: acc,
                    val_loss: 1.0,
                    val_acc: acc,
                    train_seconds: 1.0,
                    eval_seconds: 0.1,
                    lr: None,
                });
                r.extra.push(Vec::new());
                runs.push(r);
            }
        }
        Runs { settings: (0..accs.len()).map(|i| format!("S{i}")).collect(), columns: Vec::new(), runs }
    }

    #[test]
    fn ties_are_not_a_ranking() {
        let all_tied = runs_of(&[&[0.104], &[0.104], &[0.10401]]);
        let text = ranking(&all_tied, &[0, 1, 2]);
        assert!(!text.contains(" > "), "{text}");
        assert!(text.starts_with("No ranking: 3 settings end at the same final validation accuracy, 0.1040"), "{text}");
        let some = runs_of(&[&[0.8], &[0.9], &[0.8]]);
        assert_eq!(
            ranking(&some, &[0, 1, 2]),
            "Ranked by final validation accuracy (mean over seeds): S1 0.9000 > S0 0.8000 = S2 0.8000."
        );
    }

    #[test]
    fn no_negative_zero() {
        assert_eq!(fixed(-0.00001, 4), "0.0000");
        assert_eq!(fixed(-0.5, 1), "-0.5");
        assert_eq!(signed(-0.00001, 4), "+0.0000");
        assert_eq!(signed(-0.0123, 4), "-0.0123");
        assert_eq!(signed(0.0123, 4), "+0.0123");
        assert_eq!(Stat { mean: -0.00001, std: 0.0, n: 1 }.fmt(4), "0.0000");
        let runs = runs_of(&[&[0.50001, 0.6], &[0.50002, 0.6]]);
        let text = versus(&runs, 0, 1);
        assert!(!text.contains("-0.0000") && text.contains("+0.0000"), "{text}");
    }

    #[test]
    fn one_seed_is_singular_and_bold_is_only_claimed_when_shown() {
        let one = runs_of(&[&[0.8], &[0.9]]);
        let t = settings_table("c", &one, &[val_acc_col()]);
        assert!(t.notes[0].contains("1 seed per setting") && !t.notes[0].contains("1 seeds"), "{}", t.notes[0]);
        assert!(t.notes[0].contains("in bold") && t.rows[1][2].best && !t.rows[0][2].best);
        // every setting has the same mean: nothing in bold, and no caption saying so
        let tied = runs_of(&[&[0.8, 0.7], &[0.8, 0.7]]);
        let t = settings_table("c", &tied, &[val_acc_col()]);
        assert!(t.rows.iter().flatten().all(|c| !c.best));
        assert!(!t.notes[0].contains("bold") && t.notes[0].contains("2 seeds per setting"), "{}", t.notes[0]);
        // a column without a direction has no bold cell either
        let t = settings_table("c", &one, &[Col::new("x", 2, |_| Some(1.0))]);
        assert!(!t.notes[0].contains("bold"));
    }

    #[test]
    fn quick_pages_say_so_at_the_top() {
        let mut r = empty();
        r.title = "T".into();
        r.reading = vec!["a reading".into()];
        r.quick = true;
        let md = markdown(&r);
        let banner = md.find("not for reading the numbers").expect("banner in report.md");
        assert!(banner < md.find("**Question.**").unwrap(), "the banner comes before the question");
        let dir = tempfile::tempdir().unwrap();
        let page = html(dir.path(), &r).unwrap();
        assert!(page.find("not for reading the numbers").unwrap() < page.find("Question.").unwrap());
        r.quick = false;
        assert!(!markdown(&r).contains("Quick run"));
    }
}
