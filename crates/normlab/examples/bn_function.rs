//! Batch norm as a function on a tensor: a `(N, C, H, W)` batch whose
//! channels have different means and spreads goes through `BatchNorm` in
//! training mode (normalized with the batch's own statistics, which also
//! update the running ones) and in prediction mode (normalized with the
//! running statistics).
//!
//! Run: `cargo run --release -p normlab --example bn_function`

use normlab::layers::{BatchNorm, BatchNormConfig, Layer, Mode};
use normlab::{rng, Result, Tensor};

/// Each channel's mean and (biased) standard deviation over N, H and W.
fn channel_stats(t: &Tensor<f32>) -> Vec<(f64, f64)> {
    let (n, c) = (t.dim(0), t.dim(1));
    let s = t.numel() / (n * c);
    (0..c)
        .map(|ch| {
            let v: Vec<f64> = (0..n).flat_map(|i| &t.data()[(i * c + ch) * s..][..s]).map(|&v| v as f64).collect();
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            (mean, (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt())
        })
        .collect()
}

fn show(what: &str, t: &Tensor<f32>) {
    let stats: Vec<String> = channel_stats(t).iter().map(|(m, s)| format!("{m:7.3} ±{s:6.3}")).collect();
    println!("{what:<24} {}", stats.join("   "));
}

fn show_running(bn: &BatchNorm<f32>, after: &str) {
    let (mean, var) = (bn.running_mean().expect("tracked").data(), bn.running_var().expect("tracked").data());
    println!("running mean {mean:.3?}, running var {var:.3?} after {after}");
}

fn main() -> Result<()> {
    // 8 examples, 3 channels of 4x4: channel c has mean about 2c and spread about c + 1
    let (n, c, hw) = (8, 3, 16);
    let data = (0..n * c * hw)
        .map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * (i / hw % c + 1) as f32 + (2 * (i / hw % c)) as f32);
    let x = Tensor::from_vec(&[n, c, 4, 4], data.collect())?;

    let mut bn = BatchNorm::<f32>::new(BatchNormConfig::pytorch()); // nn.BatchNorm2d(3): gamma 1, beta 0
    bn.build(&[c, 4, 4], &mut rng::seeded(0))?;
    println!("{:<24} {}", "per channel:", "  mean ±   std    ".repeat(c).trim_end());
    show("input", &x);
    show("training mode", bn.forward(&x, Mode::Train)?);
    show_running(&bn, "1 batch (momentum 0.1: 10% of the way from 0 and 1)");
    show("prediction mode", bn.forward(&x, Mode::Eval)?);

    for _ in 1..100 {
        bn.forward(&x, Mode::Train)?;
    }
    show_running(&bn, "100 batches");
    show("prediction mode", bn.forward(&x, Mode::Eval)?);
    let m = (n * hw) as f64;
    println!(
        "(std {:.3}, not 1: the running variance is the unbiased one, m/(m-1) times the batch's)",
        ((m - 1.0) / m).sqrt()
    );
    Ok(())
}
