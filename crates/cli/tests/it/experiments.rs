//! `normlab experiment`: each experiment in `--quick` mode on the committed
//! subset (report, CSV files, plots, self-contained page, and the table's
//! numbers recomputed from the CSV), the command line's errors, and the
//! research layer (group norm): finite differences in f64 and PyTorch's
//! `nn.GroupNorm`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_normlab");

fn subset() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fashion-mnist-subset")
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn normlab(args: &[&str]) -> Out {
    let out =
        Command::new(BIN).args(args).env_remove("NORMLAB_DATA").stdin(Stdio::null()).output().expect("run normlab");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `normlab experiment NAME --quick --seeds 2` on the subset into a fresh directory.
fn quick(name: &str) -> (tempfile::TempDir, PathBuf) {
    quick_with(name, "2")
}

/// [`quick`] with `seeds` seeds.
fn quick_with(name: &str, seeds: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(name);
    let sub = subset();
    let r = normlab(&[
        "experiment",
        name,
        "--quick",
        "--seeds",
        seeds,
        "--data-dir",
        sub.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "normlab experiment {name} failed:\n{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert!(r.stdout.starts_with(&format!("{name}:")), "stdout carries the result: {}", r.stdout);
    (tmp, out)
}

// ---------------------------------------------------------------- reading the outputs

/// A CSV file as rows of column name → text.
fn read_csv(path: &Path) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().expect("a header").split(',').map(String::from).collect();
    lines
        .map(|l| {
            // labels never contain commas; the last field (a note) may be quoted
            let mut fields: Vec<String> = Vec::new();
            let (mut cur, mut quoted) = (String::new(), false);
            for ch in l.chars() {
                match ch {
                    '"' => quoted = !quoted,
                    ',' if !quoted => fields.push(std::mem::take(&mut cur)),
                    c => cur.push(c),
                }
            }
            fields.push(cur);
            assert_eq!(fields.len(), header.len(), "{}: row '{l}'", path.display());
            header.iter().cloned().zip(fields).collect()
        })
        .collect()
}

fn f(row: &BTreeMap<String, String>, key: &str) -> f64 {
    let v = row.get(key).unwrap_or_else(|| panic!("no column {key} in {row:?}"));
    v.parse().unwrap_or_else(|_| panic!("'{v}' ({key}) is not a number"))
}

/// The first Markdown table under "## Results": header and rows of cells.
fn main_table(report: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let results = report.find("## Results").expect("a Results section");
    let lines: Vec<&str> =
        report[results..].lines().skip_while(|l| !l.starts_with('|')).take_while(|l| l.starts_with('|')).collect();
    assert!(lines.len() >= 3, "a table with a header, a rule and rows:\n{report}");
    let cells = |l: &str| -> Vec<String> {
        l.trim().trim_matches('|').split(" | ").map(|c| c.trim().trim_matches('*').replace("\\|", "|")).collect()
    };
    let header = cells(lines[0]);
    let rows: Vec<Vec<String>> = lines[2..].iter().map(|l| cells(l)).collect();
    for r in &rows {
        assert_eq!(r.len(), header.len(), "row {r:?} against header {header:?}");
    }
    (header, rows)
}

/// The leading number of a cell such as `0.8123 ± 0.0042`.
fn lead(cell: &str) -> Option<f64> {
    cell.split_whitespace().next()?.parse().ok()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Every (setting, seed) run's last row in epochs.csv, for runs whose status is ok.
fn last_rows(dir: &Path) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let rows = read_csv(&dir.join("epochs.csv"));
    let mut last: BTreeMap<(String, String), BTreeMap<String, String>> = BTreeMap::new();
    for r in rows {
        if r["status"] == "ok" {
            let key = (r["setting"].clone(), r["seed"].clone());
            let replace = last.get(&key).is_none_or(|p| f(&r, "epoch") > f(p, "epoch"));
            if replace {
                last.insert(key, r);
            }
        }
    }
    let mut by_setting: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for ((s, _), r) in last {
        by_setting.entry(s).or_default().push(r);
    }
    by_setting
}

/// What every experiment writes, and the table's numbers against the CSV:
/// for each row of the main table, "final val acc" (and "final train loss"
/// when present) is the mean of the last epoch.csv row of that setting's
/// successful runs, and "runs ok" counts runs.csv's statuses.
fn check_common(dir: &Path, plots: &[&str], epochs: usize) -> (Vec<String>, Vec<Vec<String>>) {
    for file in ["report.md", "index.html", "epochs.csv", "runs.csv", "summary.csv"] {
        let p = dir.join(file);
        assert!(p.is_file() && std::fs::metadata(&p).unwrap().len() > 0, "{} is missing or empty", p.display());
    }
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    for section in ["**Question.**", "## Setup", "## Results", "## Reading", "## Plots", "Running time:"] {
        assert!(report.contains(section), "report.md has {section}");
    }
    let html = std::fs::read_to_string(dir.join("index.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    assert!(html.contains("<table>"), "index.html shows the table");
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http") && !html.contains("url(http"),
        "index.html loads nothing from the network"
    );
    for stem in plots {
        for ext in ["svg", "png"] {
            let p = dir.join(format!("{stem}.{ext}"));
            assert!(p.is_file(), "{} is missing", p.display());
        }
        let img = image::open(dir.join(format!("{stem}.png"))).unwrap_or_else(|e| panic!("{stem}.png: {e}"));
        assert!(img.width() >= 400 && img.height() >= 300, "{stem}.png is {}x{}", img.width(), img.height());
        let svg = std::fs::read_to_string(dir.join(format!("{stem}.svg"))).unwrap();
        assert!(svg.contains("<svg"), "{stem}.svg is an SVG");
        assert!(report.contains(&format!("({stem}.png)")), "report.md shows {stem}.png");
    }
    assert!(html.matches("data:image/png;base64,").count() >= plots.len(), "index.html embeds every plot");
    let (header, rows) = main_table(&report);
    assert_eq!(&header[..2], &["setting".to_string(), "runs ok".to_string()]);
    let last = last_rows(dir);
    let runs = read_csv(&dir.join("runs.csv"));
    for r in &runs {
        let done = f(r, "epochs") as usize;
        if r["status"] == "ok" {
            assert_eq!(done, epochs, "a successful run trains every epoch: {r:?}");
        }
    }
    let mut checked = 0;
    for row in &rows {
        let setting = &row[0];
        let all: Vec<_> = runs.iter().filter(|r| &r["setting"] == setting).collect();
        assert!(!all.is_empty(), "setting '{setting}' of the table has runs in runs.csv");
        let ok = all.iter().filter(|r| r["status"] == "ok").count();
        assert_eq!(row[1], format!("{ok}/{}", all.len()), "runs ok of '{setting}'");
        for (col, key) in [("final val acc", "val_acc"), ("final train loss", "train_loss")] {
            let Some(c) = header.iter().position(|h| h == col) else { continue };
            match last.get(setting) {
                Some(list) => {
                    let want = mean(&list.iter().map(|r| f(r, key)).collect::<Vec<_>>());
                    let got =
                        lead(&row[c]).unwrap_or_else(|| panic!("'{}' is not a number ({setting}, {col})", row[c]));
                    assert!(
                        (got - want).abs() <= 6e-5,
                        "{setting} {col}: table {got} but the CSV's last rows give {want}"
                    );
                    checked += 1;
                }
                None => assert_eq!(row[c], "failed", "{setting}: no run trained, so the cell says failed"),
            }
        }
    }
    assert!(checked > 0, "the table has a number checked against the CSV");
    // summary.csv holds the same means, unrounded
    let summary = read_csv(&dir.join("summary.csv"));
    for s in summary.iter().filter(|s| s["column"] == "final val acc" && s["mean"] != "nan") {
        let list = &last[&s["setting"]];
        let want = mean(&list.iter().map(|r| f(r, "val_acc")).collect::<Vec<_>>());
        assert!((f(s, "mean") - want).abs() < 2e-6, "summary.csv {s:?} against {want}");
    }
    (header, rows)
}

fn column(header: &[String], rows: &[Vec<String>], setting: &str, col: &str) -> String {
    let c = header.iter().position(|h| h == col).unwrap_or_else(|| panic!("no column {col} in {header:?}"));
    rows.iter().find(|r| r[0] == setting).unwrap_or_else(|| panic!("no row {setting}"))[c].clone()
}

// ---------------------------------------------------------------- one test per experiment

#[test]
fn lr_quick() {
    let (_t, dir) = quick("lr");
    let (header, rows) =
        check_common(&dir, &["acc_vs_lr", "val_acc_bn", "val_acc_no_bn", "train_loss_bn", "train_loss_no_bn"], 2);
    assert_eq!(rows.len(), 18, "9 learning rates × BN / no BN");
    assert!(header.iter().any(|h| h == "trains"));
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(report.contains("### Usable learning rates") && report.contains("largest lr that trains"));
    // every run of the grid is in the CSV, failed or not, and a failed run's status is one of the two rules
    let runs = read_csv(&dir.join("runs.csv"));
    assert_eq!(runs.len(), 36);
    for r in &runs {
        assert!(["ok", "diverged", "loss-above-start"].contains(&r["status"].as_str()), "{r:?}");
    }
}

#[test]
fn placement_quick() {
    let (header, rows) = {
        let (_t, dir) = quick("placement");
        check_common(&dir, &["val_acc", "train_loss"], 2)
    };
    let settings: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(settings.len(), 5);
    assert!(settings.contains(&"every layer after act") && settings.contains(&"conv layers only"));
    // BN in fewer layers means fewer parameters
    let params = |s: &str| lead(&column(&header, &rows, s, "params")).unwrap();
    assert!(params("conv layers only") < params("every layer before act (chapter)"));
    assert!(params("no BN") < params("fc layers only"));
}

#[test]
fn lite_quick() {
    let (_t, dir) = quick("lite");
    let (_, rows) = check_common(&dir, &["val_acc", "train_loss"], 2);
    let settings: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(settings, ["full BN", "centre only", "scale only", "no BN"]);
}

#[test]
fn frozen_affine_quick() {
    let (_t, dir) = quick("frozen-affine");
    let (header, rows) = check_common(&dir, &["val_acc", "train_loss"], 2);
    let params = |s: &str| lead(&column(&header, &rows, s, "params")).unwrap();
    // gamma and beta of 6 + 16 + 120 + 84 channels
    assert_eq!(params("learned (chapter)") - params("frozen gamma=1 beta=0"), 452.0);
    // frozen gamma and beta do not move
    assert_eq!(lead(&column(&header, &rows, "frozen gamma=1 beta=0", "mean |gamma-1|")), Some(0.0));
}

#[test]
fn bias_quick() {
    let (_t, dir) = quick("bias");
    let (header, rows) = check_common(&dir, &["val_acc", "train_loss"], 2);
    let params = |s: &str| lead(&column(&header, &rows, s, "params")).unwrap();
    assert_eq!(params("biases before BN (chapter)") - params("no biases before BN"), 226.0);
    for r in read_csv(&dir.join("runs.csv")) {
        let p = f(&r, "params");
        assert_eq!(p, if r["setting"] == "no biases before BN" { 44652.0 } else { 44878.0 });
    }
    // the biases in front of BN do not learn: their gradient is zero up to rounding
    let moved = lead(&column(&header, &rows, "biases before BN (chapter)", "max |Δ bias| before BN")).unwrap();
    let output = lead(&column(&header, &rows, "biases before BN (chapter)", "max |Δ bias| output layer")).unwrap();
    assert!(moved < 1e-5 && output > 1e-3, "before BN {moved}, output layer {output}");
}

#[test]
fn dropout_quick() {
    let (_t, dir) = quick("dropout");
    let (header, rows) = check_common(&dir, &["val_acc", "train_loss"], 2);
    assert_eq!(rows.len(), 4);
    // the gap column is train acc (eval mode) minus val acc, per run, then averaged
    let runs = read_csv(&dir.join("runs.csv"));
    let last = last_rows(&dir);
    for row in &rows {
        let gaps: Vec<f64> = runs
            .iter()
            .filter(|r| r["setting"] == row[0] && r["status"] == "ok")
            .map(|r| {
                let val = last[&row[0]].iter().find(|l| l["seed"] == r["seed"]).map(|l| f(l, "val_acc")).unwrap();
                f(r, "train_acc_eval") - val
            })
            .collect();
        let got = lead(&column(&header, &rows, &row[0], "gap train − val")).unwrap();
        assert!((got - mean(&gaps)).abs() <= 6e-5, "{}: gap {got} against {}", row[0], mean(&gaps));
    }
}

#[test]
fn batch_size_quick() {
    let (_t, dir) = quick("batch-size");
    let (header, rows) = check_common(&dir, &["acc_vs_batch", "gap_vs_batch", "val_acc_bn", "val_acc_ln"], 2);
    assert_eq!(rows.len(), 12);
    assert_eq!(lead(&column(&header, &rows, "BN batch 16", "lr")), Some(0.0125));
    assert_eq!(lead(&column(&header, &rows, "LN batch 512", "lr")), Some(0.4));
}

#[test]
fn recompute_quick() {
    let (_t, dir) = quick("recompute");
    let (header, rows) = check_common(&dir, &["val_acc_running", "val_acc_recomputed", "difference"], 2);
    let last = last_rows(&dir);
    for row in &rows {
        let list = &last[&row[0]];
        let running = mean(&list.iter().map(|r| f(r, "val_acc")).collect::<Vec<_>>());
        let recomputed = mean(&list.iter().map(|r| f(r, "val_acc_recomputed")).collect::<Vec<_>>());
        let got_run = lead(&column(&header, &rows, &row[0], "final val acc")).unwrap();
        let got_rec = lead(&column(&header, &rows, &row[0], "final val acc (recomputed)")).unwrap();
        assert!((got_run - running).abs() <= 6e-5 && (got_rec - recomputed).abs() <= 6e-5, "{row:?}");
    }
}

#[test]
fn deep_quick() {
    let (_t, dir) = quick("deep");
    let mut plots = vec!["loss".to_string()];
    for s in ["sigmoid_no_norm", "sigmoid_bn", "sigmoid_ln", "relu_no_norm", "relu_bn", "relu_ln"] {
        plots.push(format!("{s}_input_mean"));
        plots.push(format!("{s}_input_log10_std"));
    }
    let plots: Vec<&str> = plots.iter().map(|s| s.as_str()).collect();
    let (_, rows) = check_common(&dir, &plots, 2);
    assert_eq!(rows.len(), 6);
    // 20 hidden layers per snapshot in activations.csv
    let acts = read_csv(&dir.join("activations.csv"));
    let layers: std::collections::BTreeSet<String> = acts.iter().map(|r| r["layer"].clone()).collect();
    assert_eq!(layers.len(), 20);
    assert!(!read_csv(&dir.join("steps.csv")).is_empty());
    // BN before each activation: the inputs of a BN network's sigmoids are normalized,
    // so its layer inputs sit near sigmoid(0) = 0.5 on the first step
    let first_bn: Vec<f64> = acts
        .iter()
        .filter(|r| r["setting"] == "sigmoid BN" && r["seed"] == "0" && r["step"] == "0")
        .map(|r| f(r, "input_mean"))
        .collect();
    assert_eq!(first_bn.len(), 20);
    assert!(first_bn.iter().all(|m| (m - 0.5).abs() < 0.05), "{first_bn:?}");
}

#[test]
fn group_norm_quick() {
    let (_t, dir) = quick("group-norm");
    let (header, rows) = check_common(&dir, &["val_acc", "train_loss"], 2);
    assert_eq!(rows.len(), 6);
    // GN's output for an example does not depend on the rest of the batch; BN's does
    let dep = |s: &str| lead(&column(&header, &rows, s, "batch dependence")).unwrap();
    assert!(dep("GN 2 groups") < 1e-4 && dep("LN") < 1e-4, "GN {} LN {}", dep("GN 2 groups"), dep("LN"));
    assert!(dep("BN") > 1e-3, "BN {}", dep("BN"));
    // GN has the same parameters as BN (gamma and beta per channel)
    assert_eq!(column(&header, &rows, "GN 2 groups", "params"), column(&header, &rows, "BN", "params"));
}

#[test]
fn ioffe_fig1_quick() {
    let (_t, dir) = quick("ioffe-fig1");
    let (_, rows) = check_common(&dir, &["accuracy", "percentiles_without_bn", "percentiles_with_bn"], 2);
    assert_eq!(rows.len(), 2);
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    // the paper's values stand beside ours, and the data set is named from its labels
    for paper in ["0.953", "0.710", "0.967", "0.906", "0.982", "0.972"] {
        assert!(report.contains(paper), "report.md quotes the paper's {paper}");
    }
    assert!(report.contains("on Fashion-MNIST"), "the subset is recognised as Fashion-MNIST");
    // 1000 images at batch 60: 16 steps per pass, 2 passes; measured from step 0
    let cps = read_csv(&dir.join("checkpoints.csv"));
    for setting in ["without BN", "with BN"] {
        for seed in ["0", "1"] {
            let mine: Vec<_> = cps.iter().filter(|r| r["setting"] == setting && r["seed"] == seed).collect();
            let steps: Vec<f64> = mine.iter().map(|r| f(r, "step")).collect();
            assert_eq!(steps.first(), Some(&0.0), "{setting} {seed}: {steps:?}");
            assert_eq!(steps.last(), Some(&32.0), "{setting} {seed}: {steps:?}");
            assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
            for r in &mine {
                assert!(f(r, "p15") <= f(r, "p50") && f(r, "p50") <= f(r, "p85"), "{r:?}");
            }
            // the untrained network (weights of std 0.01, biases 0) predicts near chance
            assert!(f(mine[0], "val_acc") < 0.3, "{:?}", mine[0]);
        }
    }
    // the table's accuracy at the end is the last checkpoint's
    let last = cps.iter().rfind(|r| r["setting"] == "with BN" && r["seed"] == "0").unwrap();
    let epochs = read_csv(&dir.join("epochs.csv"));
    let end = epochs.iter().find(|r| r["setting"] == "with BN" && r["seed"] == "0" && r["epoch"] == "2").unwrap();
    assert_eq!(f(last, "val_acc"), f(end, "val_acc"));
}

#[test]
fn ioffe_fig1_percentiles_and_data_set_names() {
    use normlab_cli::experiments::ioffe_fig1::{dataset_name, percentile};
    assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), 2.5);
    assert!((percentile(&[0.0, 10.0], 15.0) - 1.5).abs() < 1e-12);
    assert_eq!(percentile(&[7.0], 85.0), 7.0);
    assert!(percentile(&[], 50.0).is_nan());
    let split = |labels: &[u8]| normlab::data::Split {
        images: vec![0; labels.len() * 784],
        labels: labels.to_vec(),
        rows: 28,
        cols: 28,
        channels: 1,
    };
    assert_eq!(dataset_name(&split(&[5, 0, 4, 1, 9, 2, 1, 3, 1, 4, 7])), "MNIST");
    assert_eq!(dataset_name(&split(&[9, 0, 0, 3, 0, 2, 7, 2, 5, 5])), "Fashion-MNIST");
    assert_eq!(dataset_name(&split(&[1, 2])), "the data set in --data-dir");
}

#[test]
fn noisy_bn_quick() {
    let (_t, dir) = quick("noisy-bn");
    let (header, rows) = check_common(&dir, &["val_acc", "train_loss", "shift"], 2);
    assert_eq!(rows.len(), 4);
    // the noise after BN makes the layers' inputs move more per step than BN alone
    let shift = |s: &str| lead(&column(&header, &rows, s, "shift, fc2 input"));
    let (bn, noisy) = (shift("BN").unwrap(), shift("BN + noise").unwrap());
    assert!(noisy > 2.0 * bn, "BN + noise {noisy} against BN {bn}");
    let per_step = read_csv(&dir.join("shift.csv"));
    assert!(per_step.iter().all(|r| f(r, "shift_conv2") >= 0.0 && f(r, "shift_fc2") >= 0.0));
    assert!(per_step.iter().any(|r| r["setting"] == "noise, no BN"));
}

#[test]
fn wasserstein_distance_between_unit_distributions() {
    use normlab::Tensor;
    use normlab_cli::experiments::noisy_bn::{covariate_shift, unit_distributions, wasserstein1};
    assert_eq!(wasserstein1(&[0.0, 1.0], &[0.5, 1.5]), 0.5);
    // (N=2, C=2, H=1, W=2): channel 0 holds 1 2 5 6, channel 1 holds 3 4 7 8
    let t = Tensor::from_vec(&[2, 2, 1, 2], (1..=8).map(|v| v as f32).collect()).unwrap();
    assert_eq!(unit_distributions(&t), vec![vec![1.0, 2.0, 5.0, 6.0], vec![3.0, 4.0, 7.0, 8.0]]);
    // a shift by 0.25 of every value moves every unit by 0.25; a permutation of examples by nothing
    let shifted = Tensor::from_vec(&[2, 2, 1, 2], t.data().iter().map(|v| v + 0.25).collect()).unwrap();
    assert!((covariate_shift(&t, &shifted) - 0.25).abs() < 1e-6);
    let mut swapped = t.data()[4..].to_vec();
    swapped.extend(&t.data()[..4]);
    assert_eq!(covariate_shift(&t, &Tensor::from_vec(&[2, 2, 1, 2], swapped).unwrap()), 0.0);
}

#[test]
fn smoothness_quick() {
    let (_t, dir) = quick("smoothness");
    let (header, rows) = check_common(&dir, &["loss-range", "gradient-change", "val_acc", "train_loss"], 2);
    assert_eq!(rows.len(), 4);
    for setting in ["LeNet", "BN-LeNet", "deep", "deep + BN"] {
        let beta = lead(&column(&header, &rows, setting, "β-smoothness")).unwrap();
        assert!(beta.is_finite() && beta > 0.0, "{setting}: β {beta}");
    }
    let points = read_csv(&dir.join("landscape.csv"));
    assert!(points.len() >= 4 * 10, "about 40 measurements per run, {} in all", points.len());
    for r in &points {
        let (lo, l, hi) = (f(r, "loss_min"), f(r, "loss"), f(r, "loss_max"));
        assert!(lo <= l && l <= hi && f(r, "grad_change") >= 0.0 && f(r, "grad_norm") > 0.0, "{r:?}");
    }
}

/// The landscape measurement: for a tiny learning rate the loss falls
/// linearly along the gradient, so its range over moves of up to 4·lr is
/// 4·lr·‖g‖² (first order); and the network is put back bitwise.
#[test]
fn landscape_measurement_is_first_order_exact_and_leaves_the_network_as_it_was() {
    use normlab::layers::StateMut;
    use normlab::Tensor;
    use normlab_cli::experiments::{noisy_bn, smoothness::measure};
    use rand::Rng as _;
    let (mut net, _, mut rng) = noisy_bn::build(true, false, 3).unwrap();
    net.train();
    let x = Tensor::from_vec(&[16, 1, 28, 28], (0..16 * 784).map(|_| rng.gen_range(0.0..1.0f32)).collect()).unwrap();
    let labels: Vec<usize> = (0..16).map(|i| i % 10).collect();
    let snapshot = |net: &mut normlab::models::Sequential<f32>| -> Vec<Vec<f32>> {
        net.state_mut()
            .into_iter()
            .map(|(_, s)| match s {
                StateMut::Param { value, .. } => value.data().to_vec(),
                StateMut::Buffer(b) => b.data().to_vec(),
                StateMut::Count(c) => vec![*c as f32],
            })
            .collect()
    };
    let before = snapshot(&mut net);
    let lr = 1e-3;
    let m = measure(&mut net, &x, &labels, lr).unwrap();
    assert_eq!(snapshot(&mut net), before, "parameters, running statistics and counters put back");
    let first_order = 4.0 * lr * m.grad_norm * m.grad_norm;
    assert!(
        (m.loss_range() / first_order - 1.0).abs() < 0.05,
        "range {} against 4·lr·|g|² = {first_order}",
        m.loss_range()
    );
    assert!((m.loss - m.loss_max).abs() < 1e-12, "the loss falls along the gradient, so w has the largest");
    // the same point measured again gives the same numbers
    assert_eq!(measure(&mut net, &x, &labels, lr).unwrap(), m);
}

/// `experiment all`: every experiment's page and a top-level index linking each.
// ---------------------------------------------------------------- exercise 7: other normalizing transforms

#[test]
fn pit_quick() {
    let (_t, dir) = quick_with("pit", "1");
    let (header, rows) = check_common(&dir, &["val_acc", "train_loss"], 2);
    assert_eq!(rows.len(), 2);
    let secs = |s: &str| lead(&column(&header, &rows, s, "train s/epoch")).unwrap();
    assert!(secs("PIT (straight-through)") > 0.0 && secs("BN") > 0.0);
    let batch = lead(&column(&header, &rows, "PIT (straight-through)", "val acc, batch statistics")).unwrap();
    assert!((0.0..=1.0).contains(&batch));
}

#[test]
fn whitening_quick() {
    let (_t, dir) = quick_with("whitening", "1");
    let (_, rows) = check_common(&dir, &["val_acc", "train_loss"], 2);
    assert_eq!(rows.len(), 6);
    // the covariance of fc1's input over 8 examples has rank at most 7 (centred), below its 120 features
    let cov = read_csv(&dir.join("covariance.csv"));
    let fc1_8 = cov.iter().find(|r| r["stage"] == "fc1" && r["batch"] == "8").expect("fc1 at batch 8");
    assert!(f(fc1_8, "rank") <= 7.0, "{fc1_8:?}");
    let fc1_128 = cov.iter().find(|r| r["stage"] == "fc1" && r["batch"] == "128").expect("fc1 at batch 128");
    assert!(f(fc1_128, "rank") > 7.0 && f(fc1_128, "whiteness_error") >= 0.0, "{fc1_128:?}");
    let costs = read_csv(&dir.join("layer_costs.csv"));
    assert_eq!(costs.len(), 8, "4 stages x 2 batch sizes");
    assert!(costs.iter().all(|r| f(r, "bn_seconds") > 0.0 && f(r, "whitening_seconds") > 0.0));
}

#[test]
fn block_whitening_quick() {
    let (_t, dir) = quick_with("block-whitening", "1");
    let (_, rows) = check_common(&dir, &["val_acc", "train_loss"], 2);
    let labels: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        labels,
        ["BN", "blocks of 1", "blocks of 2", "blocks of 4", "blocks of 8", "blocks of 16", "one block (full)"]
    );
}

#[test]
fn structured_quick() {
    let (_t, dir) = quick_with("structured", "1");
    check_common(&dir, &["val_acc", "train_loss"], 2);
    let forms = read_csv(&dir.join("forms.csv"));
    assert_eq!(forms.len(), 4 * 7, "4 stages x 7 forms");
    for stage in ["conv1", "conv2", "fc1", "fc2"] {
        let get = |form: &str| forms.iter().find(|r| r["stage"] == stage && r["form"] == form).unwrap();
        // the full form is the exact whitening matrix: no error, white output
        assert!(f(get("full"), "relative_error") < 1e-6 && f(get("full"), "whiteness_error") < 1e-4, "{stage}");
        // the diagonal (BN) leaves correlations the full form removes
        assert!(f(get("diagonal (BN)"), "whiteness_error") > f(get("full"), "whiteness_error"), "{stage}");
    }
}

#[test]
fn sparsify_quick() {
    let (_t, dir) = quick_with("sparsify", "1");
    let (header, rows) = check_common(&dir, &["val_acc", "train_loss"], 2);
    assert_eq!(rows.len(), 7);
    assert!(header.iter().any(|h| h == "gap train − val"));
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(report.contains("At matched accuracy: dropout 0.2"), "the reading matches dropout to a top-k setting");
}

#[test]
fn all_writes_an_index_linking_each() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("all");
    let sub = subset();
    let r = normlab(&[
        "experiment",
        "all",
        "--quick",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--limit-train",
        "300",
        "--quiet",
        "--json",
        "--data-dir",
        sub.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<serde_json::Value> =
        r.stdout.lines().map(|l| serde_json::from_str(l).expect("JSON lines")).collect();
    assert_eq!(lines.len(), normlab_cli::experiments::names().len() + 1, "one line per experiment and the index");
    let index = std::fs::read_to_string(out.join("index.html")).unwrap();
    for name in normlab_cli::experiments::names() {
        assert!(index.contains(&format!("href=\"{name}/index.html\"")), "index links {name}");
        assert!(out.join(name).join("index.html").is_file() && out.join(name).join("report.md").is_file());
        assert!(lines.iter().any(|l| l["name"] == name && l["reading"].as_array().is_some_and(|a| !a.is_empty())));
    }
}

// ---------------------------------------------------------------- the command line

fn one_line_user_error(r: &Out, needles: &[&str]) {
    assert_eq!(r.code, 2, "exit code 2: {}", r.stderr);
    assert!(!r.stderr.contains("panicked"));
    assert!(r.stderr.starts_with("error:"), "{}", r.stderr);
    assert_eq!(r.stderr.trim_end().lines().count(), 1, "one line: {}", r.stderr);
    assert!(r.stdout.is_empty());
    for n in needles {
        assert!(r.stderr.contains(n), "stderr mentions '{n}': {}", r.stderr);
    }
}

#[test]
fn unknown_experiments_and_bad_options_are_one_line_user_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x");
    let o = out.to_str().unwrap();
    let mut names = normlab_cli::experiments::names();
    names.push("all");
    let r = normlab(&["experiment", "warp-drive", "--out", o]);
    one_line_user_error(&r, &names);
    assert!(r.stderr.contains("warp-drive"));
    one_line_user_error(&normlab(&["experiment", "lr", "--seeds", "0", "--out", o]), &["--seeds"]);
    one_line_user_error(&normlab(&["experiment", "lr", "--seeds", "three", "--out", o]), &["--seeds", "three"]);
    one_line_user_error(&normlab(&["experiment", "lr", "--epochs", "0", "--out", o]), &["--epochs"]);
    one_line_user_error(&normlab(&["experiment", "lr", "--limit-train", "-5", "--out", o]), &["--limit-train"]);
    assert!(!out.exists(), "nothing is written for a bad command");
}

#[test]
fn help_has_examples_and_lists_every_experiment() {
    let r = normlab(&["experiment", "--help"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("Example"));
    for name in normlab_cli::experiments::names() {
        assert!(r.stdout.contains(name), "--help lists {name}");
    }
}

#[test]
fn a_quiet_experiment_prints_nothing_and_still_writes_its_report() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("lite");
    let sub = subset();
    let args = ["experiment", "lite", "--quick", "--seeds", "1", "--epochs", "1", "--limit-train", "300", "--quiet"];
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--data-dir", sub.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let r = normlab(&all);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.is_empty() && r.stderr.is_empty(), "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(out.join("report.md").is_file() && out.join("index.html").is_file());
}

/// `small-batch --quick` on 200 training images (its 36 settings reach batch
/// 2, whose 100 steps an epoch are the cost): every normalization at every
/// batch size, the lr scaled linearly, the quick banner at the top.
#[test]
fn small_batch_quick() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("small-batch");
    let sub = subset();
    let r = normlab(&[
        "experiment",
        "small-batch",
        "--quick",
        "--seeds",
        "2",
        "--limit-train",
        "200",
        "--data-dir",
        sub.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (header, rows) = check_common(&dir, &["acc_vs_batch", "seconds_vs_batch"], 2);
    assert_eq!(rows.len(), 36);
    for norm in ["BN", "GN", "LN", "BRN", "GhostBN", "RMS"] {
        assert_eq!(lead(&column(&header, &rows, &format!("{norm} batch 2"), "lr")), Some(0.0016));
        assert_eq!(lead(&column(&header, &rows, &format!("{norm} batch 128"), "lr")), Some(0.1));
    }
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    let banner = report.find("Quick run: not for reading the numbers").expect("quick banner");
    assert!(banner < report.find("## Setup").unwrap(), "the banner is at the top");
    assert!(report.contains("from batch 128 to batch 2"), "{report}");
    assert!(!report.contains("-0.0000") && !report.contains("1 seeds"));
}
