//! `smoothness`: Santurkar et al. (2018), section 3.2 and appendix A.2.2:
//! does BN make the loss landscape smoother? Every few steps of training,
//! the network is moved from its current point `w` along the current
//! minibatch gradient `g = ∇L(w)` by step sizes `η = f·lr` with `f` in
//! [`FACTORS`] (1/2 to 4 times the learning rate), and on the same
//! minibatch it records
//!
//! - the loss variation: `max_η L(w − ηg) − min_η L(w − ηg)` (with `η = 0`),
//! - the gradient predictiveness: `max_η ‖∇L(w − ηg) − g‖₂`,
//! - the effective β-smoothness: `max_η ‖∇L(w − ηg) − g‖₂ / ‖ηg‖₂`.
//!
//! Small numbers mean a landscape on which the gradient is a good guide a
//! step ahead. The networks: the chapter's LeNet and the deep ReLU network
//! of `deep`, each with and without BN. The moves change nothing: the
//! parameters, running statistics and counters are put back bitwise.

use std::fmt::Write as _;

use crate::plot::{plot_lines, Series};
use normlab::layers::StateMut;
use normlab::loss::CrossEntropy;
use normlab::models::{Activation, Sequential, INPUT_SHAPE};
use normlab::rng::{self, Rng};
use normlab::tensor::Tensor;
use normlab::train::evaluate;
use normlab::Result;

use super::deep::{self, DeepNorm};
use super::noisy_bn;
use super::report::{self, settings_table, standard_plots, train_loss_col, val_acc_col, Col, Plot, Report};
use super::runner::{csv_field, num, Run, Runs, Stat};
use super::steps::{self, StepHooks, StepPlan};
use super::{fmt_lr, Context, Experiment, Scale};

pub static EXPERIMENT: Experiment = Experiment {
    name: "smoothness",
    title: "The loss landscape along the gradient, with and without BN (Santurkar et al. 2018)",
    summary: "Santurkar et al.: loss and gradient along the gradient, with/without BN",
    question: "Moving a step along the gradient, how much do the loss and the gradient change, with and without BN? Does BN make the landscape smoother, as Santurkar et al. argue is the real reason it helps?",
    // the whole training set: in fewer steps the networks without BN do not
    // leave chance, and a stuck network's landscape is flat for that reason
    defaults: Scale { epochs: 3, train: 60_000, val: 10_000 },
    // 4 networks x 3 seeds, about 40 measurements of 8 moves per run
    measured_seconds: 55,
    run,
};

pub const BATCH: usize = 128;
/// Step sizes, as multiples of the learning rate (the paper's range 1/2 to 4).
pub const FACTORS: [f64; 8] = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0];
/// The landscape is measured about this many times per run.
const MEASUREMENTS: usize = 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Net {
    LeNet,
    Deep,
}

/// (label, network, BN).
const SETTINGS: [(&str, Net, bool); 4] = [
    ("LeNet", Net::LeNet, false),
    ("BN-LeNet", Net::LeNet, true),
    ("deep", Net::Deep, false),
    ("deep + BN", Net::Deep, true),
];

/// The learning rate of each network, the same with and without BN: the
/// chapter's LeNet at 1.0 (at 0.1 the plain LeNet hardly leaves chance in a
/// few epochs, see `noisy-bn`), the deep ReLU network at `deep`'s rate.
fn lr_of(net: Net) -> f64 {
    match net {
        Net::LeNet => noisy_bn::LR,
        Net::Deep => deep::LR,
    }
}

fn build(net: Net, bn: bool, seed: u64) -> Result<(Sequential<f32>, Rng)> {
    match net {
        Net::LeNet => {
            let (net, _, shuffle) = noisy_bn::build(bn, false, seed)?;
            Ok((net, shuffle))
        }
        Net::Deep => {
            let (mut net, _, _) = deep::build(Activation::ReLU, if bn { DeepNorm::Batch } else { DeepNorm::None });
            let mut init = rng::seeded(seed);
            net.build(&INPUT_SHAPE, &mut init)?;
            Ok((net, rng::fork(&mut init)))
        }
    }
}

/// One measurement of the landscape at a point, on one minibatch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Landscape {
    /// The loss at the point and its smallest and largest value over the moves.
    pub loss: f64,
    pub loss_min: f64,
    pub loss_max: f64,
    /// `max ‖∇L(w − ηg) − g‖₂` over the moves.
    pub grad_change: f64,
    /// `max ‖∇L(w − ηg) − g‖₂ / ‖ηg‖₂` over the moves.
    pub beta: f64,
    /// `‖g‖₂`.
    pub grad_norm: f64,
}

impl Landscape {
    /// The loss variation along the gradient: the range of the loss values.
    pub fn loss_range(&self) -> f64 {
        self.loss_max - self.loss_min
    }
}

fn params(net: &mut Sequential<f32>) -> Vec<Vec<f32>> {
    net.state_mut()
        .into_iter()
        .filter_map(|(_, s)| match s {
            StateMut::Param { value, .. } => Some(value.data().to_vec()),
            _ => None,
        })
        .collect()
}

fn grads(net: &mut Sequential<f32>) -> Vec<Vec<f32>> {
    net.state_mut()
        .into_iter()
        .filter_map(|(_, s)| match s {
            StateMut::Param { grad, .. } => Some(grad.data().to_vec()),
            _ => None,
        })
        .collect()
}

/// Sets every parameter to `w − η·g`.
fn set_params(net: &mut Sequential<f32>, w: &[Vec<f32>], g: &[Vec<f32>], eta: f64) {
    let params = net.state_mut().into_iter().filter_map(|(_, s)| match s {
        StateMut::Param { value, .. } => Some(value),
        _ => None,
    });
    for ((value, w), g) in params.zip(w).zip(g) {
        for ((p, &w), &g) in value.data_mut().iter_mut().zip(w).zip(g) {
            *p = (w as f64 - eta * g as f64) as f32;
        }
    }
}

fn distance(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let sq: f64 =
        a.iter().zip(b).flat_map(|(a, b)| a.iter().zip(b)).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum();
    sq.sqrt()
}

fn loss_and_grads(
    net: &mut Sequential<f32>,
    ce: &mut CrossEntropy,
    x: &Tensor<f32>,
    labels: &[usize],
) -> Result<(f64, Vec<Vec<f32>>)> {
    let logits = net.forward(x)?;
    let (loss, _) = ce.forward(logits, labels)?;
    net.backward(x, ce.grad())?;
    Ok((loss, grads(net)))
}

/// Measures the landscape at the network's current point on `(x, labels)`,
/// in the network's current mode, for the learning rate `lr`; the network's
/// parameters, running statistics and counters are put back as they were.
pub fn measure(net: &mut Sequential<f32>, x: &Tensor<f32>, labels: &[usize], lr: f64) -> Result<Landscape> {
    let saved = noisy_bn::save(net);
    let w = params(net);
    let mut ce = CrossEntropy::new();
    let result = (|| {
        let (loss, g) = loss_and_grads(net, &mut ce, x, labels)?;
        let zero: Vec<Vec<f32>> = g.iter().map(|v| vec![0.0; v.len()]).collect();
        let grad_norm = distance(&g, &zero);
        let mut m = Landscape { loss, loss_min: loss, loss_max: loss, grad_change: 0.0, beta: 0.0, grad_norm };
        for f in FACTORS {
            let eta = f * lr;
            set_params(net, &w, &g, eta);
            let (l, gm) = loss_and_grads(net, &mut ce, x, labels)?;
            let change = distance(&gm, &g);
            m.loss_min = m.loss_min.min(l);
            m.loss_max = m.loss_max.max(l);
            m.grad_change = m.grad_change.max(change);
            m.beta = m.beta.max(change / (eta * grad_norm).max(f64::MIN_POSITIVE));
        }
        Ok(m)
    })();
    set_params(net, &w, &w, 0.0);
    noisy_bn::restore(net, &saved);
    result
}

/// A measured step and its landscape.
type Point = (usize, Landscape);

struct Hooks<'a> {
    ctx: &'a Context,
    lr: f64,
    every: usize,
    points: Vec<Point>,
}

impl StepHooks for Hooks<'_> {
    fn after_update(
        &mut self,
        net: &mut Sequential<f32>,
        step: usize,
        x: &Tensor<f32>,
        labels: &[usize],
    ) -> Result<()> {
        if !(step - 1).is_multiple_of(self.every) {
            return Ok(());
        }
        let m = measure(net, x, labels, self.lr)?;
        self.points.push((step, m));
        Ok(())
    }
    fn end_of_pass(&mut self, net: &mut Sequential<f32>, _step: usize) -> Result<(f64, f64)> {
        let e = evaluate(net, &self.ctx.val, 500, None)?;
        Ok((e.loss, e.accuracy))
    }
}

fn mean_of(points: &[Point], f: impl Fn(&Landscape) -> f64) -> Option<f64> {
    let v: Vec<f64> = points.iter().map(|p| f(&p.1)).filter(|v| v.is_finite()).collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn train_one(ctx: &Context, setting: usize, seed: u64) -> Result<(Run, Vec<Point>)> {
    let (_, kind, bn) = SETTINGS[setting];
    let (mut net, mut shuffle) = build(kind, bn, seed)?;
    let plan = StepPlan { batch: BATCH, lr: lr_of(kind) };
    let per_pass = plan.steps_per_pass(ctx);
    let every = (per_pass * ctx.epochs / MEASUREMENTS).max(1);
    let mut hooks = Hooks { ctx, lr: plan.lr, every, points: Vec::new() };
    let mut run = steps::train(ctx, setting, seed, &mut net, &mut shuffle, &plan, &mut hooks)?;
    // the first pass (early training, where the paper's figures differ most)
    // and the last (where a network without BN that trains slowly has left
    // its starting plateau)
    let passes = run.epochs.len().max(1);
    let first: Vec<Point> = hooks.points.iter().copied().filter(|p| p.0 <= per_pass).collect();
    let last: Vec<Point> = hooks.points.iter().copied().filter(|p| p.0 > per_pass * (passes - 1)).collect();
    let values = [
        ("range_first", mean_of(&first, Landscape::loss_range)),
        ("range_last", mean_of(&last, Landscape::loss_range)),
        ("grad_change_first", mean_of(&first, |m| m.grad_change)),
        ("grad_change_last", mean_of(&last, |m| m.grad_change)),
        ("beta", mean_of(&hooks.points, |m| m.beta)),
    ];
    for (name, v) in values {
        if let Some(v) = v {
            run.values.push((name.to_string(), v));
        }
    }
    Ok((run, hooks.points))
}

fn run(ctx: &Context) -> Result<Report> {
    let mut runs =
        Runs { settings: SETTINGS.iter().map(|s| s.0.to_string()).collect(), columns: Vec::new(), runs: Vec::new() };
    let mut points: Vec<Vec<Vec<Point>>> = vec![Vec::new(); SETTINGS.len()];
    let total = SETTINGS.len() * ctx.seeds.len();
    for si in 0..SETTINGS.len() {
        for &seed in &ctx.seeds {
            let (run, list) = train_one(ctx, si, seed)?;
            let outcome = match (run.status.is_ok(), run.last()) {
                (true, Some(m)) => format!("val acc {:.4}, train loss {:.4}", m.val_acc, m.train_loss),
                _ => format!("FAILED: {}", run.status.describe()),
            };
            ctx.log(&format!(
                "[smoothness] {}/{total} {} seed {seed}: {outcome} ({:.1} s)",
                runs.runs.len() + 1,
                SETTINGS[si].0,
                run.seconds
            ));
            runs.runs.push(run);
            points[si].push(list);
        }
    }
    let cols = [
        val_acc_col(),
        train_loss_col(),
        Col::new("loss range, first pass", 4, |r: &Run| r.value("range_first")).lower(),
        Col::new("loss range, last pass", 4, |r: &Run| r.value("range_last")).lower(),
        Col::new("gradient change, first pass", 4, |r: &Run| r.value("grad_change_first")).lower(),
        Col::new("gradient change, last pass", 4, |r: &Run| r.value("grad_change_last")).lower(),
        Col::new("β-smoothness", 3, |r: &Run| r.value("beta")).lower(),
    ];
    let mut table = settings_table("Loss and gradient along the gradient direction", &runs, &cols);
    table.notes.push(format!(
        "Every measured step (about {MEASUREMENTS} per run), on that step's minibatch, the parameters are moved to w − ηg for η = {} × lr. Loss range: the largest minus the smallest loss over those points and w itself. Gradient change: the largest ‖∇L(w − ηg) − g‖₂. β-smoothness: the largest ‖∇L(w − ηg) − g‖₂ / ‖ηg‖₂. Each column is the mean over the measured steps of the first or the last pass over the data (β-smoothness: of all), then mean ± std over seeds. Compare within a network: LeNet with BN-LeNet, deep with deep + BN.",
        FACTORS.iter().map(|f| format!("{f}")).collect::<Vec<_>>().join(", ")
    ));
    let mut files = report::write_csvs(ctx, &runs, &cols)?;
    let mut csv = String::from("setting,seed,step,loss,loss_min,loss_max,grad_change,beta,grad_norm\n");
    for (si, per_seed) in points.iter().enumerate() {
        for (k, list) in per_seed.iter().enumerate() {
            for (step, m) in list {
                let _ = writeln!(
                    csv,
                    "{},{},{step},{},{},{},{},{},{}",
                    csv_field(SETTINGS[si].0),
                    ctx.seeds[k],
                    num(m.loss),
                    num(m.loss_min),
                    num(m.loss_max),
                    num(m.grad_change),
                    num(m.beta),
                    num(m.grad_norm)
                );
            }
        }
    }
    ctx.write("landscape.csv", &csv)?;
    files.push((
        "landscape.csv".into(),
        "per run and measured step: the loss at w, its range along the gradient, the gradient change and β-smoothness (see the table's note)".into(),
    ));

    let mut plots = standard_plots(&ctx.out, &runs)?;
    let per_step = |f: &dyn Fn(&Landscape) -> f64| -> Vec<Series> {
        (0..SETTINGS.len())
            .map(|si| {
                let n = points[si].iter().map(|l| l.len()).min().unwrap_or(0);
                let pts = (0..n)
                    .map(|j| {
                        let v: Vec<f64> = points[si].iter().map(|l| f(&l[j].1)).collect();
                        (points[si][0][j].0 as f64, Stat::of(&v).map_or(f64::NAN, |s| s.mean))
                    })
                    .collect();
                Series::new(SETTINGS[si].0, pts)
            })
            .collect()
    };
    plot_lines(
        &per_step(&Landscape::loss_range),
        "Loss range along the gradient (mean over seeds)",
        "training step",
        "max loss − min loss",
        false,
        &ctx.path("loss-range.svg"),
        &ctx.path("loss-range.png"),
    )?;
    plot_lines(
        &per_step(&|m: &Landscape| m.grad_change),
        "Gradient change along the gradient (mean over seeds)",
        "training step",
        "max ‖∇L(w − ηg) − g‖₂",
        false,
        &ctx.path("gradient-change.svg"),
        &ctx.path("gradient-change.png"),
    )?;
    plots.insert(
        0,
        Plot {
            stem: "loss-range".into(),
            caption: "Loss variation: the range of the loss over steps of 1/2 to 4 learning rates along the gradient, during training".into(),
        },
    );
    plots.insert(
        1,
        Plot {
            stem: "gradient-change".into(),
            caption: "Gradient predictiveness: the largest change of the gradient over the same moves (smaller: the gradient predicts better)".into(),
        },
    );

    let reading = read(&runs);
    Ok(Report {
        setup: vec![
            ctx.data_line(),
            "Networks: the chapter's LeNet (sigmoid, average pooling, Xavier-uniform weights) without and with BN after each convolution and hidden linear layer; the deep network of `deep` (20 hidden linear layers of 64 ReLU units) without and with BN after each linear layer.".into(),
            format!(
                "Training: plain SGD, batch {BATCH}; lr {} for both LeNets, {} for both deep networks (the same rate with and without BN, as in the paper); the last partial batch of each pass is dropped. The measurements do not change the training: parameters and running statistics are put back.",
                fmt_lr(lr_of(Net::LeNet)),
                fmt_lr(lr_of(Net::Deep))
            ),
            "The paper's numbers (VGG on CIFAR-10): early in training BN narrows the loss range from 2.7–8.1 to 1.9–2.2, and the gradient change by one to two orders of magnitude.".into(),
        ],
        tables: vec![table],
        reading,
        plots,
        files,
        ..report::empty()
    })
}

/// The reading: per network, BN against none, from the numbers: in the
/// first pass and in the last (where a network without BN that trains has
/// left its plateau).
fn read(runs: &Runs) -> Vec<String> {
    let mut reading = vec![report::ranking(runs, &[0, 1, 2, 3])];
    let mean = |s: usize, key: &str| runs.stat(s, |r| r.value(key)).map(|st| st.mean);
    let mut held = Vec::new();
    for (plain, bn, name) in [(0, 1, "LeNet"), (2, 3, "The deep network")] {
        let ratio = |key: &str| match (mean(plain, key), mean(bn, key)) {
            (Some(p), Some(b)) if b > 0.0 => Some((p, b, p / b)),
            _ => None,
        };
        let trained = runs.final_val_acc(plain).is_some_and(|s| s.mean >= report::NEAR_CHANCE);
        let mut line = format!("{name}:");
        for (pass, range, change) in
            [("first", "range_first", "grad_change_first"), ("last", "range_last", "grad_change_last")]
        {
            let (Some(r), Some(c)) = (ratio(range), ratio(change)) else {
                line += &format!(" no measurement in the {pass} pass.");
                continue;
            };
            line += &format!(
                " in the {pass} pass BN {} the loss range from {:.3} to {:.3} ({:.2}x) and {} the gradient change from {:.3} to {:.3} ({:.2}x);",
                if r.2 >= 1.0 { "narrows" } else { "widens" },
                r.0,
                r.1,
                r.2,
                if c.2 >= 1.0 { "shrinks" } else { "grows" },
                c.0,
                c.1,
                c.2
            );
            if pass == "last" && trained {
                held.push(r.2 > 1.0 && c.2 > 1.0);
            }
        }
        if let Some(b) = ratio("beta") {
            line += &format!(" over the run, β-smoothness {:.3} without BN and {:.3} with it.", b.0, b.1);
        }
        if !trained {
            line += " The network without BN did not leave chance here: its landscape is flat because it is stuck, so it says nothing about smoothness.";
        }
        reading.push(line);
    }
    reading.push(match (held.len(), held.iter().filter(|&&h| h).count()) {
        (0, _) => "No network without BN trained here, so the paper's claim cannot be checked at this scale.".into(),
        (n, k) if k == n => "As Santurkar et al. found, once training is under way BN makes the landscape smoother here: along the gradient the loss varies less and the gradient changes less.".into(),
        (_, 0) => "Unlike Santurkar et al.'s VGG on CIFAR-10, BN did not make the landscape smoother here once training was under way: with BN the loss and the gradient change more along the same moves (see the ratios above). A likely reason: the moves are the same multiples of the same learning rate, and BN makes the loss invariant to the scale of the weights in front of it, so its gradient grows as those weights shrink, and the same move is a larger step for it.".into(),
        _ => "The paper's claim held for one network here and not for the other (see the ratios above).".into(),
    });
    reading
}
