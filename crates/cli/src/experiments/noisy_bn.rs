//! `noisy-bn`: Santurkar et al. (2018), "How Does Batch Normalization Help
//! Optimization?", Algorithm 1 and Figure 2 on BN-LeNet. After each BN, noise
//! that changes every step shifts and scales each unit ([`ShiftNoise`]);
//! does the network still train as well as with BN alone, while the inputs
//! of its layers shift more from step to step than in the plain network?
//!
//! Covariate shift, as measured here: for a layer, the change of the
//! distribution of its input over one training step. At a measured step t
//! with minibatch B, the input of the layer on B in the step's training
//! forward (batch statistics, the step's noise) is compared with its input
//! on the same B after the update, in another training-mode forward (new
//! noise, as the next step would draw). The distance is the 1-Wasserstein
//! distance between the two empirical distributions of each unit (a
//! feature; for a convolution's input, a channel with its positions as
//! samples), averaged over the units. The extra forward changes nothing:
//! running statistics and the noise's random streams are put back.

use std::fmt::Write as _;

use crate::plot::{plot_lines, Series};
use normlab::layers::{
    AvgPool2d, BatchNorm, BatchNormConfig, Conv2d, Flatten, Init, Layer, Linear, ShiftNoise, Sigmoid, StateMut,
};
use normlab::models::{Sequential, INPUT_SHAPE};
use normlab::rng::{self, Rng};
use normlab::tensor::Tensor;
use normlab::train::evaluate;
use normlab::Result;

use super::report::{self, settings_table, standard_plots, train_loss_col, val_acc_col, Col, Plot, Report};
use super::runner::{csv_field, num, Run, Runs, Stat, Status};
use super::steps::{self, StepHooks, StepPlan};
use super::{fmt_lr, Context, Experiment, Scale};

pub static EXPERIMENT: Experiment = Experiment {
    name: "noisy-bn",
    title: "BN with noise that shifts every step (Santurkar et al. 2018)",
    summary: "Santurkar et al.: BN + per-step noise vs BN vs noise alone; covariate shift",
    question: "If noise after each BN changes every unit's distribution at every step, does the network still train as well as with BN alone, and how much do its layers' inputs shift from step to step compared with the plain network?",
    defaults: Scale { epochs: 3, train: 20_000, val: 10_000 },
    // 4 networks x 3 seeds, 3 epochs of 20,000 images each
    measured_seconds: 102,
    run,
};

pub const BATCH: usize = 128;
/// One rate for the four networks: at the chapter's 0.1 the plain LeNet
/// does not leave chance within a few epochs (see the `lr` experiment), and
/// the plain network is the reference for the shift.
pub const LR: f64 = 1.0;
/// The shift is measured about this many times per run.
const MEASUREMENTS: usize = 40;

/// The four networks: (label, BN, noise).
pub const SETTINGS: [(&str, bool, bool); 4] =
    [("plain", false, false), ("BN", true, false), ("BN + noise", true, true), ("noise, no BN", false, true)];

/// The layers whose input is followed: the second convolution and the
/// second hidden linear layer.
pub const FOLLOWED: [&str; 2] = ["conv2", "fc2"];

/// BN-LeNet (the chapter's network; sigmoid, average pooling), with BN and
/// the noise after each convolution and hidden linear layer as asked, and
/// the indices of the layers whose outputs are the inputs of conv2 and fc2.
pub fn build(bn: bool, noise: bool, seed: u64) -> Result<(Sequential<f32>, [usize; 2], Rng)> {
    let mut net = Sequential::new().fusion(false);
    let stage = |net: &mut Sequential<f32>, affine: Box<dyn Layer<f32>>| {
        net.push_boxed(affine);
        if bn {
            net.push_boxed(Box::new(BatchNorm::new(BatchNormConfig::pytorch())));
        }
        if noise {
            net.push_boxed(Box::new(ShiftNoise::new()));
        }
        net.push_boxed(Box::new(Sigmoid::new()));
    };
    let mut followed = [0; 2];
    stage(&mut net, Box::new(Conv2d::new(6, 5).init(Init::XavierUniform)));
    net.push_boxed(Box::new(AvgPool2d::new(2, 2)));
    followed[0] = net.len() - 1;
    stage(&mut net, Box::new(Conv2d::new(16, 5).init(Init::XavierUniform)));
    net.push_boxed(Box::new(AvgPool2d::new(2, 2)));
    net.push_boxed(Box::new(Flatten::new()));
    stage(&mut net, Box::new(Linear::new(120).init(Init::XavierUniform)));
    followed[1] = net.len() - 1;
    stage(&mut net, Box::new(Linear::new(84).init(Init::XavierUniform)));
    net.push_boxed(Box::new(Linear::new(10).init(Init::XavierUniform)));
    let mut init = rng::seeded(seed);
    net.build(&INPUT_SHAPE, &mut init)?;
    Ok((net, followed, rng::fork(&mut init)))
}

/// Each unit's values in a layer output of shape (N, C) or (N, C, H, W),
/// sorted: the unit's empirical distribution over the batch (and positions).
pub fn unit_distributions(t: &Tensor<f32>) -> Vec<Vec<f64>> {
    let (n, c) = (t.dim(0), t.dim(1));
    let spatial = t.numel() / (n * c).max(1);
    let mut units = vec![Vec::with_capacity(n * spatial); c];
    for (i, chunk) in t.data().chunks_exact(spatial).enumerate() {
        units[i % c].extend(chunk.iter().map(|&v| v as f64));
    }
    for u in &mut units {
        u.sort_by(f64::total_cmp);
    }
    units
}

/// 1-Wasserstein distance between two empirical distributions of the same
/// size, each sorted: the mean absolute difference of their order statistics.
pub fn wasserstein1(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "equal sample sizes");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len().max(1) as f64
}

/// Mean over units of the 1-Wasserstein distance between two layer outputs.
pub fn covariate_shift(before: &Tensor<f32>, after: &Tensor<f32>) -> f64 {
    let (a, b) = (unit_distributions(before), unit_distributions(after));
    a.iter().zip(&b).map(|(x, y)| wasserstein1(x, y)).sum::<f64>() / a.len().max(1) as f64
}

/// Running statistics, counters and every layer's random stream, to put back
/// after a measuring forward.
pub struct Saved {
    buffers: Vec<Tensor<f32>>,
    counts: Vec<i64>,
    rngs: Vec<Rng>,
}

pub fn save(net: &mut Sequential<f32>) -> Saved {
    let mut s = Saved { buffers: Vec::new(), counts: Vec::new(), rngs: Vec::new() };
    for layer in net.layers_mut() {
        if let Some(r) = layer.rng_mut() {
            s.rngs.push(r.clone());
        }
        for (_, st) in layer.state_mut() {
            match st {
                StateMut::Buffer(b) => s.buffers.push(b.clone()),
                StateMut::Count(c) => s.counts.push(*c),
                StateMut::Param { .. } => {}
            }
        }
    }
    s
}

pub fn restore(net: &mut Sequential<f32>, s: &Saved) {
    let (mut b, mut c, mut r) = (s.buffers.iter(), s.counts.iter(), s.rngs.iter());
    for layer in net.layers_mut() {
        if let (Some(rng), Some(saved)) = (layer.rng_mut(), r.next()) {
            *rng = saved.clone();
        }
        for (_, st) in layer.state_mut() {
            match st {
                StateMut::Buffer(t) => t.copy_from(b.next().expect("saved buffer")),
                StateMut::Count(n) => *n = *c.next().expect("saved count"),
                StateMut::Param { .. } => {}
            }
        }
    }
}

/// A measured step and the shift of each [`FOLLOWED`] layer's input.
type ShiftPoint = (usize, [f64; 2]);

/// Per measured step: the shift of each followed layer's input.
struct ShiftHooks<'a> {
    ctx: &'a Context,
    followed: [usize; 2],
    every: usize,
    points: Vec<ShiftPoint>,
}

impl StepHooks for ShiftHooks<'_> {
    fn after_update(
        &mut self,
        net: &mut Sequential<f32>,
        step: usize,
        x: &Tensor<f32>,
        _labels: &[usize],
    ) -> Result<()> {
        // steps 1, 1 + every, ...: the first step is measured too
        if !(step - 1).is_multiple_of(self.every) {
            return Ok(());
        }
        let before: Vec<Tensor<f32>> = self.followed.iter().map(|&i| net.layers()[i].output().clone()).collect();
        let saved = save(net);
        // the next step's view of the same batch: new parameters, new noise
        let _ = net.forward(x)?;
        let after = self.followed.map(|i| net.layers()[i].output().clone());
        restore(net, &saved);
        let shift = [covariate_shift(&before[0], &after[0]), covariate_shift(&before[1], &after[1])];
        self.points.push((step, shift));
        Ok(())
    }
    fn end_of_pass(&mut self, net: &mut Sequential<f32>, _step: usize) -> Result<(f64, f64)> {
        let e = evaluate(net, &self.ctx.val, 500, None)?;
        Ok((e.loss, e.accuracy))
    }
}

const PLAN: StepPlan = StepPlan { batch: BATCH, lr: LR };

fn train_one(ctx: &Context, setting: usize, seed: u64) -> Result<(Run, Vec<ShiftPoint>)> {
    let (_, bn, noise) = SETTINGS[setting];
    let (mut net, followed, mut shuffle) = build(bn, noise, seed)?;
    let every = (PLAN.steps_per_pass(ctx) * ctx.epochs / MEASUREMENTS).max(1);
    let mut hooks = ShiftHooks { ctx, followed, every, points: Vec::new() };
    let mut run = steps::train(ctx, setting, seed, &mut net, &mut shuffle, &PLAN, &mut hooks)?;
    if !hooks.points.is_empty() {
        for (k, name) in FOLLOWED.iter().enumerate() {
            let v: Vec<f64> = hooks.points.iter().map(|p| p.1[k]).filter(|v| v.is_finite()).collect();
            run.values.push((format!("shift_{name}"), v.iter().sum::<f64>() / v.len().max(1) as f64));
        }
    }
    Ok((run, hooks.points))
}

fn run(ctx: &Context) -> Result<Report> {
    let mut runs =
        Runs { settings: SETTINGS.iter().map(|s| s.0.to_string()).collect(), columns: Vec::new(), runs: Vec::new() };
    let mut points: Vec<Vec<Vec<ShiftPoint>>> = vec![Vec::new(); SETTINGS.len()];
    let total = SETTINGS.len() * ctx.seeds.len();
    for si in 0..SETTINGS.len() {
        for &seed in &ctx.seeds {
            let (run, list) = train_one(ctx, si, seed)?;
            let outcome = match (&run.status, run.last()) {
                (Status::Ok, Some(m)) => format!("val acc {:.4}, train loss {:.4}", m.val_acc, m.train_loss),
                (s, _) => format!("FAILED: {}", s.describe()),
            };
            ctx.log(&format!(
                "[noisy-bn] {}/{total} {} seed {seed}: {outcome} ({:.1} s)",
                runs.runs.len() + 1,
                SETTINGS[si].0,
                run.seconds
            ));
            runs.runs.push(run);
            points[si].push(list);
        }
    }
    let secs_per_epoch = |r: &Run| {
        let v: Vec<f64> = r.epochs.iter().map(|m| m.train_seconds).filter(|s| s.is_finite()).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let cols = [
        val_acc_col(),
        train_loss_col(),
        Col::new("shift, conv2 input", 4, |r: &Run| r.value("shift_conv2")),
        Col::new("shift, fc2 input", 4, |r: &Run| r.value("shift_fc2")),
        Col::new("train s/epoch", 2, secs_per_epoch),
    ];
    let mut table = settings_table("Accuracy and covariate shift per step", &runs, &cols);
    table.notes.push(format!(
        "Shift: the mean, over about {MEASUREMENTS} measured steps, of the 1-Wasserstein distance between a unit's values on the step's minibatch in the step's training forward and on the same minibatch after the update (training mode, fresh noise), averaged over the layer's units (conv2's input: 6 channels, each over 128 × 12 × 12 values; fc2's input: 120 features over 128 values). Both inputs are sigmoid outputs, in (0, 1), so the numbers compare across networks. \"train s/epoch\" excludes the measurements."
    ));
    // a run that stopped early has fewer epochs; its shift still counts in the CSV
    let mut files = report::write_csvs(ctx, &runs, &cols)?;
    let mut csv = String::from("setting,seed,step,shift_conv2,shift_fc2\n");
    for (si, per_seed) in points.iter().enumerate() {
        for (k, list) in per_seed.iter().enumerate() {
            for (step, s) in list {
                let _ =
                    writeln!(csv, "{},{},{step},{},{}", csv_field(SETTINGS[si].0), ctx.seeds[k], num(s[0]), num(s[1]));
            }
        }
    }
    ctx.write("shift.csv", &csv)?;
    files.push((
        "shift.csv".into(),
        "per run and measured step: the covariate shift of conv2's and fc2's inputs (see the table's note)".into(),
    ));

    let mut plots = standard_plots(&ctx.out, &runs)?;
    let series: Vec<Series> = (0..SETTINGS.len())
        .map(|si| {
            let n = points[si].iter().map(|l| l.len()).min().unwrap_or(0);
            let pts = (0..n)
                .map(|j| {
                    let v: Vec<f64> = points[si].iter().map(|l| l[j].1[1]).collect();
                    (points[si][0][j].0 as f64, Stat::of(&v).map_or(f64::NAN, |s| s.mean))
                })
                .collect();
            Series::new(SETTINGS[si].0, pts)
        })
        .collect();
    plot_lines(
        &series,
        "Covariate shift of fc2's input per step (mean over seeds)",
        "training step",
        "mean 1-Wasserstein distance",
        false,
        &ctx.path("shift.svg"),
        &ctx.path("shift.png"),
    )?;
    plots.push(Plot {
        stem: "shift".into(),
        caption: "Covariate shift of the second hidden linear layer's input over one step, during training (the runs that failed stop early)".into(),
    });

    // reading
    let mut reading = vec![report::ranking(&runs, &[0, 1, 2, 3])];
    reading.push(format!("BN + noise against BN: {}", report::versus(&runs, 2, 1)));
    let shift = |s: usize, key: &str| runs.stat(s, |r| r.value(key)).map(|st| st.mean);
    // the shift of every run, failed ones included (a run that fails still shifts)
    let shift_all = |s: usize, key: &str| {
        let v: Vec<f64> = runs.of_setting(s).filter_map(|r| r.value(key)).collect();
        Stat::of(&v).map(|st| st.mean)
    };
    if let (Some(noisy), Some(plain), Some(bn)) =
        (shift(2, "shift_fc2"), shift_all(0, "shift_fc2"), shift(1, "shift_fc2"))
    {
        let mut line = format!(
            "Covariate shift of fc2's input per step: BN + noise {noisy:.4}, plain {plain:.4}, BN {bn:.4}; BN + noise shifts {:.1} times as much as the plain network and {:.1} times as much as BN{}",
            noisy / plain.max(1e-12),
            noisy / bn.max(1e-12),
            if noisy > plain {
                ", as in the paper: more shift, yet it trains about as well as BN (the accuracies above)."
            } else {
                ", unlike the paper, where the noisy network shifts more."
            }
        );
        if runs.final_val_acc(0).is_none_or(|s| s.mean < report::NEAR_CHANCE) {
            line += " The plain network did not leave chance in this budget, so its shift is that of a network that hardly moves; the comparison with BN is the informative one here.";
        }
        reading.push(line);
    }
    let (ok, all) = runs.ok_count(3);
    let noise_acc = runs.final_val_acc(3).map(|s| s.mean);
    reading.push(match noise_acc {
        Some(a) if a >= report::NEAR_CHANCE => format!(
            "The noise without BN: {ok} of {all} runs trained, final validation accuracy {a:.4}; {}",
            report::versus(&runs, 3, 0)
        ),
        _ => format!(
            "The noise without BN: {ok} of {all} runs trained{}; as in the paper, the noise that BN + noise absorbs prevents training without BN.",
            noise_acc.map_or(String::new(), |a| format!(" and they end at {a:.4}, near chance"))
        ),
    });
    Ok(Report {
        setup: vec![
            ctx.data_line(),
            "Networks: the chapter's LeNet (sigmoid, average pooling, Xavier-uniform weights) plain; with BN after each convolution and hidden linear layer; with BN followed by Santurkar et al.'s noise; and with the noise alone in the same places.".into(),
            "Noise (Algorithm 1), drawn anew at every training step: per unit (feature or channel) mu ~ U(-0.5, 0.5) and sigma ~ U(1, 1.25); per example (and, for convolutions, per position: height and width count as batch) m ~ U(mu - 0.1, mu + 0.1) and s ~ N(sigma, 0.1²); the activation becomes s·a + m. Prediction mode has no noise.".into(),
            format!("Training: plain SGD, batch {BATCH}, lr {} for all four (at the chapter's 0.1 the plain LeNet stays at chance for several epochs); the last partial batch of each pass is dropped.", fmt_lr(LR)),
        ],
        tables: vec![table],
        reading,
        plots,
        files,
        ..report::empty()
    })
}
