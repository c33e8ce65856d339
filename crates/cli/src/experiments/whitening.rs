//! `whitening`: exercise 7's "can you use a full-rank covariance estimate?
//! Why might this not be a good idea?". BN-LeNet with each BN replaced by
//! full whitening of the channels (IterNorm, [`normlab::layers::Whitening`]:
//! Newton-Schulz iterations toward Σ^(-1/2), T = 5), against BN: accuracy,
//! cost per step, behaviour at small batch (a covariance of rank below the
//! number of channels) and stability (failed runs, condition numbers, how
//! white the output really is).

use std::fmt::Write as _;

use normlab::layers::whitening::{matmul, symmetric_eigen, transpose};
use normlab::layers::{BatchNorm, BatchNormConfig, Layer, Mode, Whitening};
use normlab::rng;
use normlab::tensor::Tensor;
use normlab::train::fill_batch;
use normlab::Result;
use rand::Rng as _;

use super::report::{self, settings_table, standard_plots, train_loss_col, val_acc_col, Report, Table};
use super::research::{
    batch_norm, diverged_count, median_seconds, seconds_col, seconds_per_epoch, train_all, Insert, Net, NetSetting,
    STAGES,
};
use super::runner::{num, restore_net_buffers, save_net_buffers, Run};
use super::{fmt_lr, Context, Experiment, Scale};

pub static EXPERIMENT: Experiment = Experiment {
    name: "whitening",
    title: "Research exercise: full-covariance whitening (decorrelated BN, IterNorm)",
    summary: "exercise 7: full whitening (IterNorm) vs BN: cost, batch 8, lr 1",
    question: "Instead of scaling each channel by its own variance, whiten the channels with the full covariance (Σ^(-1/2), by IterNorm's Newton-Schulz iterations). Does BN-LeNet train better, and why might this not be a good idea: what does it cost per step, what happens at small batches where the covariance has lower rank than the number of channels, and is it stable?",
    defaults: Scale { epochs: 3, train: 6_000, val: 10_000 },
    measured_seconds: 116,
    run,
};

/// Small batch: fewer examples than fc1's 120 and fc2's 84 features.
pub const SMALL: usize = 8;

pub fn full_whitening() -> Box<Insert> {
    Box::new(|_| Ok(vec![Box::new(Whitening::full()) as Box<dyn Layer<f32>>]))
}

/// Batches for the covariance measurements.
const PROBE_BATCHES: [usize; 3] = [4, SMALL, 128];

/// After a run at batch 128: for each probe batch size, each stage's
/// covariance (the normalization's input, training-mode forward on the
/// first images) — its rank and the condition number of Σ + eps·I — and,
/// for the whitened network, how far the output of T = 5 iterations is
/// from white: ||W Σ Wᵀ − I||_F / sqrt(C).
fn measure(ctx: &Context, net: &mut Net, run: &mut Run) -> Result<()> {
    let saved = save_net_buffers(&mut net.net);
    net.net.train();
    let (mut x, mut labels) = (Tensor::default(), Vec::new());
    for &b in &PROBE_BATCHES {
        let idx: Vec<usize> = (0..b.min(ctx.train.len())).collect();
        fill_batch(&ctx.train, &idx, &mut x, &mut labels);
        net.net.forward(&x)?;
        for (k, &(name, c)) in STAGES.iter().enumerate() {
            let input = net.net.layers()[net.affine_at[k]].output();
            let mut cov = super::research::channel_covariance(input);
            let (vals, _) = symmetric_eigen(&cov, c);
            let top = vals[c - 1].max(f64::MIN_POSITIVE);
            let rank = vals.iter().filter(|&&v| v > 1e-9 * top).count();
            for i in 0..c {
                cov[i * c + i] += 1e-5;
            }
            let (vals, _) = symmetric_eigen(&cov, c);
            run.values.push((format!("rank_{name}_b{b}"), rank as f64));
            run.values.push((format!("cond_{name}_b{b}"), vals[c - 1] / vals[0]));
            let layer = &net.net.layers()[net.affine_at[k] + 1];
            if let Some(w) = (layer.as_ref() as &dyn std::any::Any).downcast_ref::<Whitening<f32>>() {
                let (s, wm) = (&w.last_covariances()[0], &w.last_whitening()[0]);
                let wswt = matmul(&matmul(wm, s, c), &transpose(wm, c), c);
                let err: f64 = (0..c * c)
                    .map(|i| (wswt[i] - if i % (c + 1) == 0 { 1.0 } else { 0.0 }).powi(2))
                    .sum::<f64>()
                    .sqrt()
                    / (c as f64).sqrt();
                run.values.push((format!("white_{name}_b{b}"), err));
            }
        }
    }
    restore_net_buffers(&mut net.net, &saved);
    net.net.eval();
    Ok(())
}

/// Forward + backward seconds of one layer on random input of LeNet's
/// stage shapes, BN against full whitening, side by side.
fn step_costs(ctx: &Context) -> Result<Vec<(String, usize, f64, f64)>> {
    let mut out = Vec::new();
    let mut r = rng::seeded(0);
    let reps = if ctx.quick { 3 } else { 7 };
    for &(name, c) in &STAGES {
        let example: Vec<usize> = match name {
            "conv1" => vec![c, 24, 24],
            "conv2" => vec![c, 8, 8],
            _ => vec![c],
        };
        for batch in [SMALL, 128] {
            let mut shape = vec![batch];
            shape.extend(&example);
            let n: usize = shape.iter().product();
            let x = Tensor::from_vec(&shape, (0..n).map(|_| r.gen::<f32>() * 2.0 - 1.0).collect())?;
            let dy = Tensor::from_vec(&shape, (0..n).map(|_| r.gen::<f32>() - 0.5).collect())?;
            let mut layers: [Box<dyn Layer<f32>>; 2] =
                [Box::new(BatchNorm::new(BatchNormConfig::pytorch())), Box::new(Whitening::full())];
            let mut secs = [0.0; 2];
            for l in layers.iter_mut() {
                l.build(&example, &mut rng::seeded(1))?;
            }
            // alternate the two, a few calls each, and take medians
            let inner = if n > 50_000 { 3 } else { 20 };
            let mut all = [Vec::new(), Vec::new()];
            for _ in 0..reps {
                for (i, l) in layers.iter_mut().enumerate() {
                    all[i].push(median_seconds(1, inner, || {
                        l.forward(&x, Mode::Train)?;
                        l.backward(&x, &dy, true)?;
                        Ok(())
                    })?);
                }
            }
            for i in 0..2 {
                all[i].sort_by(f64::total_cmp);
                secs[i] = all[i][all[i].len() / 2];
            }
            out.push((name.to_string(), batch, secs[0], secs[1]));
        }
    }
    Ok(out)
}

fn run(ctx: &Context) -> Result<Report> {
    let small_lr = 0.1 * SMALL as f64 / 128.0;
    let settings = vec![
        NetSetting::new("BN", batch_norm()),
        NetSetting::new("whitening", full_whitening()),
        NetSetting::new(format!("BN batch {SMALL}"), batch_norm()).plan(SMALL, small_lr),
        NetSetting::new(format!("whitening batch {SMALL}"), full_whitening()).plan(SMALL, small_lr),
        NetSetting::new("BN lr 1", batch_norm()).plan(128, 1.0),
        NetSetting::new("whitening lr 1", full_whitening()).plan(128, 1.0),
    ];
    let mut finish = |s: usize, net: &mut Net, run: &mut Run| if s < 2 { measure(ctx, net, run) } else { Ok(()) };
    let runs = train_all(ctx, &settings, &mut finish)?;
    let cols = [val_acc_col(), train_loss_col(), seconds_col()];
    let mut table = settings_table("Final validation accuracy, training loss and cost", &runs, &cols);
    table.notes.push(format!("Batch {SMALL} trains with lr {} (scaled linearly from 0.1 at batch 128), so the same epochs take 16 times as many steps. \"train s/epoch\" counts the training steps only.", fmt_lr(small_lr)));
    let mut files = report::write_csvs(ctx, &runs, &cols)?;

    // covariance table: stage x probe batch, over the seeds of BN and whitening
    let mean_of = |s: usize, key: &str| runs.stat(s, |r| r.value(key)).map(|st| st.mean);
    let mut cov_table = Table {
        caption: "The covariance each normalization sees (its input, after training, one training-mode batch)".into(),
        header: ["stage", "channels", "batch", "values per channel", "rank", "cond(Σ + eps I), BN net", "cond(Σ + eps I), whitened net", "||WΣWᵀ − I||/√C, T = 5"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        rows: Vec::new(),
        notes: vec!["Rank: eigenvalues of the batch covariance above 1e-9 of the largest (BN net). cond: largest over smallest eigenvalue of Σ + 1e-5·I, as the layers use it. The last column: how far the whitened network's output covariance is from the identity after IterNorm's 5 Newton-Schulz iterations (0 = white). Means over the seeds.".into()],
    };
    let mut csv = String::from("stage,channels,batch,values,rank,cond_bn_net,cond_whitened_net,whiteness_error\n");
    for &(name, c) in &STAGES {
        let spatial = match name {
            "conv1" => 576,
            "conv2" => 64,
            _ => 1,
        };
        for &b in &PROBE_BATCHES {
            let rank = mean_of(0, &format!("rank_{name}_b{b}"));
            let (cb, cw) = (mean_of(0, &format!("cond_{name}_b{b}")), mean_of(1, &format!("cond_{name}_b{b}")));
            let white = mean_of(1, &format!("white_{name}_b{b}"));
            let f = |v: Option<f64>, d: usize| v.map_or("n/a".to_string(), |v| format!("{v:.d$}"));
            let e = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.2e}"));
            cov_table.rows.push(
                vec![
                    name.into(),
                    c.to_string(),
                    b.to_string(),
                    (b * spatial).to_string(),
                    f(rank, 1),
                    e(cb),
                    e(cw),
                    f(white, 3),
                ]
                .into_iter()
                .map(Into::into)
                .collect(),
            );
            let o = |v: Option<f64>| num(v.unwrap_or(f64::NAN));
            let _ = writeln!(csv, "{name},{c},{b},{},{},{},{},{}", b * spatial, o(rank), o(cb), o(cw), o(white));
        }
    }
    ctx.write("covariance.csv", &csv)?;
    files.push(("covariance.csv".into(), "per stage and batch size: rank and condition number of the normalization's input covariance, and the whitened output's distance from white".into()));

    let costs = step_costs(ctx)?;
    let mut cost_table = Table {
        caption: "Cost of one layer, forward + backward, training mode (median of alternating timings)".into(),
        header: ["stage", "batch", "BN (µs)", "whitening (µs)", "whitening / BN"].iter().map(|s| s.to_string()).collect(),
        rows: Vec::new(),
        notes: vec![format!("Random input of the stage's shape, {} threads; the whitening runs in f64 (IterNorm, T = 5), BN is the fused f32 layer. Absolute times move with whatever else runs on the machine; the ratio, measured side by side, is the number to read.", rayon::current_num_threads())],
    };
    let mut csv = String::from("stage,batch,bn_seconds,whitening_seconds\n");
    for (name, b, bn, w) in &costs {
        cost_table.rows.push(
            vec![
                name.clone(),
                b.to_string(),
                format!("{:.0}", bn * 1e6),
                format!("{:.0}", w * 1e6),
                format!("{:.1}", w / bn.max(1e-12)),
            ]
            .into_iter()
            .map(Into::into)
            .collect(),
        );
        let _ = writeln!(csv, "{name},{b},{},{}", num(*bn), num(*w));
    }
    ctx.write("layer_costs.csv", &csv)?;
    files.push((
        "layer_costs.csv".into(),
        "seconds per forward + backward of one layer, BN and whitening, per stage and batch".into(),
    ));

    let plots = standard_plots(&ctx.out, &runs)?;
    let mut reading = vec![
        format!("At batch 128: {}", report::versus(&runs, 1, 0)),
        format!("At batch {SMALL}: {}", report::versus(&runs, 3, 2)),
        format!("At lr 1: {}", report::versus(&runs, 5, 4)),
    ];
    if let (Some(b), Some(w)) = (runs.stat(0, seconds_per_epoch), runs.stat(1, seconds_per_epoch)) {
        let worst = costs.iter().map(|c| c.3 / c.2.max(1e-12)).fold(0.0, f64::max);
        reading.push(format!(
            "Cost: an epoch takes {:.2} s with whitening against {:.2} s with BN ({:.1} times); one layer's forward + backward costs up to {worst:.0} times BN's (the covariance is C² values per position and the iterations C³ per step: at fc1, 120³ per matrix product, whatever the batch).",
            w.mean, b.mean, w.mean / b.mean.max(1e-9)
        ));
    }
    let small_rank = mean_of(0, &format!("rank_fc1_b{SMALL}"));
    if let Some(r) = small_rank {
        reading.push(format!(
            "Small batch: with {SMALL} examples fc1's covariance has rank {r:.0} for 120 features (at most batch − 1 after centring), so Σ + eps·I has eigenvalues at eps and whitening scales those directions by up to 1/sqrt(eps); condition number {} at batch {SMALL} against {} at 128 (BN net).",
            mean_of(0, &format!("cond_fc1_b{SMALL}")).map_or("n/a".into(), |v| format!("{v:.1e}")),
            mean_of(0, "cond_fc1_b128").map_or("n/a".into(), |v| format!("{v:.1e}")),
        ));
    }
    let fails: Vec<String> = (0..settings.len())
        .map(|s| {
            let (d, all) = diverged_count(&runs, s);
            let (ok, _) = runs.ok_count(s);
            format!("{} {d} diverged, {} failed otherwise, of {all}", runs.settings[s], all - ok - d)
        })
        .collect();
    reading.push(format!("Stability (runs that diverged, with a non-finite loss or layer value, or failed to leave the starting loss): {}.", fails.join("; ")));
    if let (Some(w128), Some(wsmall)) = (mean_of(1, "white_fc1_b128"), mean_of(1, &format!("white_fc1_b{SMALL}"))) {
        reading.push(format!(
            "How white: after T = 5 iterations fc1's output covariance is {w128:.3} (batch 128) and {wsmall:.3} (batch {SMALL}) from the identity (Frobenius, per √C): Newton-Schulz converges slowly in the directions of small eigenvalues, so IterNorm whitens the well-conditioned part and leaves the near-null directions (where the batch carries no information) barely amplified; this is what keeps it trainable where exact ZCA would multiply noise by 1/sqrt(eps)."
        ));
    }
    Ok(Report {
        setup: vec![
            ctx.data_line(),
            "Network: the chapter's BN-LeNet, and the same with each of its four BN layers replaced by full whitening of that layer's channels (6 and 16 after the convolutions, spatial positions counting as examples; 120 and 84 features after the linear layers), per-channel gamma and beta after it.".into(),
            "Whitening: IterNorm (Huang et al. 2019): Σ = covariance + 1e-5·I, trace-normalized, 5 Newton-Schulz iterations toward Σ^(-1/2), all in f64; backward through the iterations (checked by finite differences). Chosen over ZCA by eigendecomposition because the eigendecomposition's backward pass divides by eigenvalue gaps, which vanish exactly in the small-batch case asked about (many eigenvalues equal to eps). Prediction: running averages of the mean and of the whitening matrix (momentum 0.1).".into(),
            format!("Training: plain SGD, batch 128 with lr 0.1 (the chapter's recipe), batch {SMALL} with lr {} (linear scaling), and batch 128 with lr 1 (stability at a large step); the last partial batch of each pass is dropped.", fmt_lr(small_lr)),
        ],
        tables: vec![table, cov_table, cost_table],
        reading,
        plots,
        files,
        ..report::empty()
    })
}
