//! `deep`: internal covariate shift, measured. A deep plain network (20
//! hidden fully connected layers, sigmoid or ReLU) without normalization,
//! with BN and with LN: loss curves, and each layer's activation mean and
//! standard deviation over training as heat maps.
//!
//! This experiment trains its own loop (the LeNet trainer has no hook inside
//! an epoch) so that the statistics are those of the very batches the
//! network trains on, taken every few steps without an extra forward pass.

use std::fmt::Write as _;
use std::time::Instant;

use rand::seq::SliceRandom;

use crate::plot::{plot_heatmap_scaled, plot_lines, Series};
use normlab::layers::{BatchNorm, BatchNormConfig, Flatten, Init, Layer, LayerNorm, Linear, ReLU, Sigmoid};
use normlab::loss::CrossEntropy;
use normlab::models::{Activation, Sequential, INPUT_SHAPE};
use normlab::optim::{Sgd, SgdConfig};
use normlab::rng;
use normlab::tensor::Tensor;
use normlab::train::{evaluate, fill_batch, EpochMetrics};
use normlab::Result;

use super::report::{self, settings_table, train_loss_col, val_acc_col, Col, Plot, Report};
use super::runner::{csv_field, num, Run, Runs, Stat, Status};
use super::{fmt_lr, Context, Experiment, Scale};

pub static EXPERIMENT: Experiment = Experiment {
    name: "deep",
    title: "A deep network: what drifts, and what BN does about it",
    summary: "20-layer sigmoid/ReLU network, no norm vs BN vs LN; activation maps",
    question: "In a deep plain network (20 hidden layers, sigmoid and ReLU), how do training loss and each layer's activation statistics evolve without normalization, with BN and with LN? What does \"internal covariate shift\" look like when it is measured?",
    defaults: Scale { epochs: 5, train: 60_000, val: 10_000 },
    measured_seconds: 77,
    run,
};

pub const DEPTH: usize = 20;
pub const WIDTH: usize = 64;
pub const LR: f64 = 0.1;
pub const BATCH: usize = 128;
/// Statistics are taken about this many times per run.
const PROBES: usize = 48;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeepNorm {
    None,
    Batch,
    Layer,
}

/// The network and, per hidden layer, the index of its linear layer and of
/// its activation (whose output is the next layer's input). The probes read
/// every layer's output, so the model keeps its layers apart (no fusion:
/// the same values, see `Sequential::fusion`).
pub fn build(act: Activation, norm: DeepNorm) -> (Sequential<f32>, Vec<usize>, Vec<usize>) {
    let mut net = Sequential::new().fusion(false);
    let (mut lin, mut out) = (Vec::new(), Vec::new());
    net.push_boxed(Box::new(Flatten::new()));
    for _ in 0..DEPTH {
        lin.push(net.len());
        net.push_boxed(Box::new(Linear::new(WIDTH).init(Init::XavierUniform)));
        match norm {
            DeepNorm::Batch => net.push_boxed(Box::new(BatchNorm::new(BatchNormConfig::pytorch()))),
            DeepNorm::Layer => net.push_boxed(Box::new(LayerNorm::per_example())),
            DeepNorm::None => {}
        }
        let a: Box<dyn Layer<f32>> = match act {
            Activation::Sigmoid => Box::new(Sigmoid::new()),
            Activation::ReLU => Box::new(ReLU::new()),
        };
        net.push_boxed(a);
        out.push(net.len() - 1);
    }
    net.push_boxed(Box::new(Linear::new(10).init(Init::XavierUniform)));
    (net, lin, out)
}

fn mean_std(t: &Tensor<f32>) -> (f64, f64) {
    let n = t.numel().max(1) as f64;
    let m = t.data().iter().map(|&v| v as f64).sum::<f64>() / n;
    let v = t.data().iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / n;
    (m, v.sqrt())
}

/// One measurement: after `step` updates (at `epoch` = step / steps per epoch).
#[derive(Clone, Debug)]
struct Snapshot {
    step: usize,
    epoch: f64,
    /// Mean training loss of the batches since the previous snapshot.
    loss: f64,
    /// Per hidden layer: mean and std of its output (the next layer's input)
    /// and of its linear layer's output (before any normalization).
    input: Vec<(f64, f64)>,
    linear: Vec<(f64, f64)>,
}

struct DeepRun {
    run: Run,
    snapshots: Vec<Snapshot>,
}

fn train_one(ctx: &Context, setting: usize, act: Activation, norm: DeepNorm, seed: u64) -> Result<DeepRun> {
    let started = Instant::now();
    let (mut net, lin, out) = build(act, norm);
    let mut init = rng::seeded(seed);
    net.build(&INPUT_SHAPE, &mut init)?;
    let mut shuffle = rng::fork(&mut init);
    let mut sgd = Sgd::new(SgdConfig::new(LR))?;
    let mut ce = CrossEntropy::new();
    let n = ctx.train.len();
    let batches = n.div_ceil(BATCH);
    let every = (batches * ctx.epochs / PROBES).max(1);
    let mut order: Vec<usize> = (0..n).collect();
    let (mut x, mut labels) = (Tensor::default(), Vec::new());
    let mut run = Run::new(setting, seed, net.num_params());
    let mut snapshots = Vec::new();
    let (mut since_sum, mut since_n, mut step) = (0.0, 0usize, 0usize);
    'epochs: for epoch in 1..=ctx.epochs {
        let t = Instant::now();
        order.shuffle(&mut shuffle);
        net.train();
        let (mut loss_sum, mut correct, mut seen, mut min_batch) = (0.0, 0, 0, f64::INFINITY);
        for b in 0..batches {
            let idx = &order[b * BATCH..((b + 1) * BATCH).min(n)];
            if idx.len() < 2 && norm == DeepNorm::Batch {
                continue;
            }
            fill_batch(&ctx.train, idx, &mut x, &mut labels);
            let logits = net.forward(&x)?;
            let (loss, right) = ce.forward(logits, &labels)?;
            if !loss.is_finite() {
                run.diverge(epoch, 0, format!("loss {loss} at step {step}"));
                break 'epochs;
            }
            if step == 0 {
                run.start_loss = loss;
            } else {
                min_batch = f64::min(min_batch, loss);
            }
            since_sum += loss;
            since_n += 1;
            if step % every == 0 || (epoch == ctx.epochs && b + 1 == batches) {
                let layers = net.layers();
                snapshots.push(Snapshot {
                    step,
                    epoch: step as f64 / batches as f64,
                    loss: since_sum / since_n as f64,
                    input: out.iter().map(|&i| mean_std(layers[i].output())).collect(),
                    linear: lin.iter().map(|&i| mean_std(layers[i].output())).collect(),
                });
                since_sum = 0.0;
                since_n = 0;
            }
            net.backward(&x, ce.grad())?;
            sgd.step(&mut net);
            loss_sum += loss * idx.len() as f64;
            correct += right;
            seen += idx.len();
            step += 1;
        }
        let train_seconds = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let e = evaluate(&mut net, &ctx.val, 500, None)?;
        run.epochs.push(EpochMetrics {
            epoch,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            val_loss: e.loss,
            val_acc: e.accuracy,
            train_seconds,
            eval_seconds: t.elapsed().as_secs_f64(),
            lr: None,
        });
        run.extra.push(Vec::new());
        if min_batch.is_finite() && min_batch > super::runner::failure_threshold(run.start_loss) {
            run.status = Status::LossAboveStart { epoch, min_batch_loss: min_batch, start: run.start_loss };
            break;
        }
    }
    if run.status.is_ok() {
        if let (Some(first), Some(last)) = (snapshots.first(), snapshots.last()) {
            let drift = |f: &dyn Fn(&Snapshot) -> &Vec<(f64, f64)>, which: usize| -> f64 {
                let (a, b) = (f(first), f(last));
                let d: f64 =
                    a.iter()
                        .zip(b)
                        .map(|(p, q)| {
                            if which == 0 {
                                (q.0 - p.0).abs()
                            } else {
                                (q.1.max(1e-12) / p.1.max(1e-12)).log10().abs()
                            }
                        })
                        .sum();
                d / a.len() as f64
            };
            run.values = vec![
                ("input_mean_drift".into(), drift(&|s| &s.input, 0)),
                ("input_log10_std_drift".into(), drift(&|s| &s.input, 1)),
                ("linear_mean_drift".into(), drift(&|s| &s.linear, 0)),
                ("linear_log10_std_drift".into(), drift(&|s| &s.linear, 1)),
            ];
        }
    }
    run.seconds = started.elapsed().as_secs_f64();
    Ok(DeepRun { run, snapshots })
}

fn run(ctx: &Context) -> Result<Report> {
    let settings = [
        ("sigmoid no norm", Activation::Sigmoid, DeepNorm::None),
        ("sigmoid BN", Activation::Sigmoid, DeepNorm::Batch),
        ("sigmoid LN", Activation::Sigmoid, DeepNorm::Layer),
        ("ReLU no norm", Activation::ReLU, DeepNorm::None),
        ("ReLU BN", Activation::ReLU, DeepNorm::Batch),
        ("ReLU LN", Activation::ReLU, DeepNorm::Layer),
    ];
    let mut runs =
        Runs { settings: settings.iter().map(|s| s.0.to_string()).collect(), columns: Vec::new(), runs: Vec::new() };
    let mut snaps: Vec<Vec<Vec<Snapshot>>> = vec![Vec::new(); settings.len()];
    let total = settings.len() * ctx.seeds.len();
    for (si, &(label, act, norm)) in settings.iter().enumerate() {
        for &seed in &ctx.seeds {
            let d = train_one(ctx, si, act, norm, seed)?;
            let outcome = match (&d.run.status, d.run.last()) {
                (Status::Ok, Some(m)) => format!("val acc {:.4}, train loss {:.4}", m.val_acc, m.train_loss),
                (s, _) => format!("FAILED: {}", s.describe()),
            };
            ctx.log(&format!(
                "[deep] {}/{total} {label} seed {seed}: {outcome} ({:.1} s)",
                runs.runs.len() + 1,
                d.run.seconds
            ));
            runs.runs.push(d.run);
            snaps[si].push(d.snapshots);
        }
    }

    let cols = [
        train_loss_col(),
        val_acc_col(),
        Col::new("|Δ mean| layer inputs", 4, |r: &Run| r.value("input_mean_drift")),
        Col::new("|Δ log10 std| layer inputs", 3, |r: &Run| r.value("input_log10_std_drift")),
        Col::new("|Δ mean| linear outputs", 4, |r: &Run| r.value("linear_mean_drift")),
        Col::new("|Δ log10 std| linear outputs", 3, |r: &Run| r.value("linear_log10_std_drift")),
    ];
    let mut table = settings_table(
        "Final loss and accuracy, and how far each layer's statistics moved from the first step to the last",
        &runs,
        &cols,
    );
    table.notes.push(format!(
        "Drift columns: for each of the {DEPTH} hidden layers, the change between the first batch (untrained network) and the last batch of training of the mean, and of log10 of the standard deviation, of the layer's input (the previous layer's activation output) and of its linear output (before normalization); averaged over the layers, then over seeds."
    ));
    let mut files = report::write_csvs(ctx, &runs, &cols)?;

    // steps.csv and activations.csv
    let mut steps = String::from("setting,seed,step,epoch,train_loss\n");
    let mut acts = String::from("setting,seed,step,epoch,layer,input_mean,input_std,linear_mean,linear_std\n");
    for (si, per_seed) in snaps.iter().enumerate() {
        for (k, list) in per_seed.iter().enumerate() {
            let seed = ctx.seeds[k];
            for s in list {
                let _ = writeln!(
                    steps,
                    "{},{seed},{},{:.4},{}",
                    csv_field(&runs.settings[si]),
                    s.step,
                    s.epoch,
                    num(s.loss)
                );
                for l in 0..s.input.len() {
                    let _ = writeln!(
                        acts,
                        "{},{seed},{},{:.4},{},{},{},{},{}",
                        csv_field(&runs.settings[si]),
                        s.step,
                        s.epoch,
                        l + 1,
                        num(s.input[l].0),
                        num(s.input[l].1),
                        num(s.linear[l].0),
                        num(s.linear[l].1)
                    );
                }
            }
        }
    }
    ctx.write("steps.csv", &steps)?;
    ctx.write("activations.csv", &acts)?;
    files.push((
        "steps.csv".into(),
        "the training loss every few steps (mean of the batches since the previous row), per run".into(),
    ));
    files.push(("activations.csv".into(), "per run, step and hidden layer: mean and standard deviation of the layer's input (the previous activation's output) and of its linear output".into()));

    // loss curves: mean over seeds at each snapshot
    let curve = |si: usize| -> Vec<(f64, f64)> {
        let n = snaps[si].iter().map(|l| l.len()).max().unwrap_or(0);
        (0..n)
            .map(|j| {
                let v: Vec<f64> = snaps[si].iter().filter_map(|l| l.get(j).map(|s| s.loss)).collect();
                let e = snaps[si].iter().find_map(|l| l.get(j).map(|s| s.epoch)).unwrap_or(f64::NAN);
                (e, Stat::of(&v).map_or(f64::NAN, |st| st.mean))
            })
            .collect()
    };
    let series: Vec<Series> = (0..settings.len()).map(|si| Series::new(settings[si].0, curve(si))).collect();
    plot_lines(
        &series,
        "Training loss (mean over seeds, every few steps)",
        "epoch",
        "train loss",
        false,
        &ctx.path("loss.svg"),
        &ctx.path("loss.png"),
    )?;
    let mut plots = vec![Plot { stem: "loss".into(), caption: "Training loss during training, every setting".into() }];

    // heat maps of seed 0: rows are layers, columns snapshots. The three
    // networks of an activation share one colour scale per quantity, so
    // their colours compare; each map's colour bar shows that scale.
    let mean_of = |s: &Snapshot, l: usize| s.input[l].0;
    let log_std_of = |s: &Snapshot, l: usize| s.input[l].1.max(1e-12).log10();
    type Quantity<'a> = (&'a str, &'a str, &'a dyn Fn(&Snapshot, usize) -> f64);
    let quantities: [Quantity; 2] = [
        ("mean of each layer's input", "input_mean", &mean_of),
        ("log10 std of each layer's input", "input_log10_std", &log_std_of),
    ];
    let row_labels = layer_row_labels();
    for group in [0..3, 3..6] {
        for (what, suffix, f) in quantities {
            let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
            for si in group.clone() {
                for s in snaps[si].first().into_iter().flatten() {
                    for l in 0..DEPTH {
                        let v = f(s, l);
                        if v.is_finite() {
                            lo = lo.min(v);
                            hi = hi.max(v);
                        }
                    }
                }
            }
            for si in group.clone() {
                let label = settings[si].0;
                let Some(list) = snaps[si].first().filter(|l| !l.is_empty()) else { continue };
                let col_labels: Vec<String> = list.iter().map(|s| format!("{:.2}", s.epoch)).collect();
                let grid: Vec<Vec<f64>> = (0..DEPTH).map(|l| list.iter().map(|s| f(s, l)).collect()).collect();
                let stem = format!("{}_{suffix}", label.to_lowercase().replace(' ', "_"));
                let seed = ctx.seeds[0];
                let title = format!("{label}: {what} (seed {seed}; x: epoch)");
                plot_heatmap_scaled(
                    &grid,
                    (&row_labels, &col_labels),
                    &title,
                    (lo, hi),
                    &ctx.path(&format!("{stem}.svg")),
                    &ctx.path(&format!("{stem}.png")),
                )?;
                plots.push(Plot {
                    stem,
                    caption: format!(
                        "{label}: {what} over training (rows: hidden layers 1 to {DEPTH} from the top; columns: epochs; seed {seed}). The colour scale is shared by the three {} networks; the colour bar shows it.",
                        settings[si].0.split(' ').next().unwrap_or("")
                    ),
                });
            }
        }
    }

    // reading
    let mut reading = Vec::new();
    let acc = |s: usize| runs.final_val_acc(s);
    for (act, base) in [("sigmoid", 0), ("ReLU", 3)] {
        let parts: Vec<String> = (base..base + 3)
            .map(|s| match acc(s) {
                Some(st) => format!("{} {:.4}", runs.settings[s], st.mean),
                None => format!("{} (all runs failed)", runs.settings[s]),
            })
            .collect();
        reading.push(format!("{act}: final validation accuracy {}.", parts.join(", ")));
    }
    let v = |s: usize, key: &str| runs.stat(s, |r| r.value(key)).map(|st| st.mean);
    for (plain, bn) in [(0, 1), (3, 4)] {
        if let (Some(pi), Some(bi), Some(pl), Some(bl)) = (
            v(plain, "input_log10_std_drift"),
            v(bn, "input_log10_std_drift"),
            v(plain, "linear_log10_std_drift"),
            v(bn, "linear_log10_std_drift"),
        ) {
            let name = runs.settings[plain].split(' ').next().unwrap_or("");
            let mut line = format!(
                "{name}: from the first step to the last, the standard deviation of the layer inputs moves by {pi:.3} decades on average without normalization and by {bi:.3} with BN; the linear outputs (before normalization) move by {pl:.3} and {bl:.3} decades."
            );
            if acc(plain).is_none_or(|st| st.mean < 0.2) {
                line += &format!(
                    " (Without normalization this network hardly learns in {} epochs, so its statistics have little reason to move.)",
                    ctx.epochs
                );
            }
            if bl > 2.0 * bi {
                line += &format!(
                    " With BN the linear outputs drift {:.1} times as much as the inputs the next layer receives: the drift is there, and BN removes most of it before the next layer.",
                    bl / bi.max(1e-12)
                );
            } else if bi >= pi {
                line += " BN does not make the layer inputs drift less here.";
            }
            reading.push(line);
        }
    }
    for (s, name) in [(0, "sigmoid"), (3, "ReLU")] {
        if let Some(list) = snaps[s].first().filter(|l| !l.is_empty()) {
            let (first, last) = (&list[0], &list[list.len() - 1]);
            reading.push(format!(
                "{name} without normalization (seed {}): the standard deviation of the layer inputs is {:.2e} at layer 1 and {:.2e} at layer {DEPTH} at the first step, {:.2e} and {:.2e} at the last.",
                ctx.seeds[0],
                first.input[0].1,
                first.input[DEPTH - 1].1,
                last.input[0].1,
                last.input[DEPTH - 1].1
            ));
        }
    }
    Ok(Report {
        setup: vec![
            ctx.data_line(),
            format!("Network: flatten, then {DEPTH} hidden layers of linear({WIDTH}) → [BN or LN] → activation, then linear(10); Xavier-uniform weights. Sigmoid and ReLU; no normalization, BN (PyTorch defaults) or LN before each activation."),
            format!("Training: plain SGD, lr {}, batch {BATCH}, for every setting. Statistics are taken from the training batches themselves (training mode) about {PROBES} times per run, before the update of that step.", fmt_lr(LR)),
            "Heat maps show seed 0: each row a hidden layer (1 at the top), each column a moment of training; colour is the mean, or log10 of the standard deviation, over the batch and the layer's units of the layer's input (the previous layer's activation output).".into(),
        ],
        tables: vec![table],
        reading,
        plots,
        files,
        ..report::empty()
    })
}

/// The heat maps' rows: one per hidden layer, nothing else (the shared
/// colour scale is the maps' colour bar, not an extra row).
fn layer_row_labels() -> Vec<String> {
    (1..=DEPTH).map(|l| format!("layer {l}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn heat_map_rows_are_the_hidden_layers_only() {
        let rows = super::layer_row_labels();
        assert_eq!(rows.len(), super::DEPTH);
        assert!(rows.iter().all(|r| r.starts_with("layer ")), "no extra 'scale' row: {rows:?}");
    }
}
