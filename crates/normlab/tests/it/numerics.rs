//! Batch norm on a hard channel, against the exact answer: f32 inputs with
//! a mean of 1e4 and a standard deviation of 1e-2, where rounding the mean
//! to f32 (spacing 2^-10 ≈ 1e-3 at 1e4) alone would move every centred value
//! by up to 5e-4, i.e. 5% of a standard deviation. The reference is the
//! same formulas in f64 on the same f32 inputs; fused and scratch BN must
//! agree with it to 1e-4 (|ours - exact| / max(1, |exact|)) in y, dx,
//! dgamma and dbeta, in training and evaluation mode. (PyTorch's own f32
//! kernel is about 1.8e-2 off in y and 0.1 in the gradients on such a
//! channel.)

use normlab::layers::{BatchNorm, BatchNormConfig, BnImpl, Layer, Mode, StateMut};
use normlab::{rng, Tensor};
use rand::Rng as _;

const TOL: f64 = 1e-4;

/// (N, C, S) = (8, 3, 37) or (64, 3, 1): channel 0 ordinary, channel 1 at
/// 1e4 ± 1e-2, channel 2 at -3e3 ± 2e-3.
fn hard_input(n: usize, s: usize) -> Vec<f32> {
    let mut r = rng::seeded(11);
    let c = 3;
    (0..n * c * s)
        .map(|i| {
            let ch = (i / s) % c;
            let u: f64 = r.gen::<f64>() * 2.0 - 1.0;
            (match ch {
                0 => 0.5 + u,
                1 => 1e4 + 1.7e-2 * u,
                _ => -3e3 + 3.4e-3 * u,
            }) as f32
        })
        .collect()
}

struct Exact {
    y: Vec<f64>,
    dx: Vec<f64>,
    dgamma: Vec<f64>,
    dbeta: Vec<f64>,
}

/// The layer's formulas in f64: batch statistics in training, the given
/// running ones in evaluation.
fn exact(
    x: &[f32],
    dy: &[f32],
    (n, c, s): (usize, usize, usize),
    gamma: &[f64],
    beta: &[f64],
    running: Option<(&[f64], &[f64])>,
) -> Exact {
    let m = (n * s) as f64;
    let idx = |i: usize, ch: usize, k: usize| (i * c + ch) * s + k;
    let (mut y, mut dx) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    let (mut dgamma, mut dbeta) = (vec![0.0; c], vec![0.0; c]);
    for ch in 0..c {
        let values = || (0..n).flat_map(move |i| (0..s).map(move |k| idx(i, ch, k)));
        let (mean, var) = match running {
            Some((rm, rv)) => (rm[ch], rv[ch]),
            None => {
                let mean = values().map(|j| x[j] as f64).sum::<f64>() / m;
                (mean, values().map(|j| (x[j] as f64 - mean).powi(2)).sum::<f64>() / m)
            }
        };
        let inv = 1.0 / (var + 1e-5).sqrt();
        let xhat = |j: usize| (x[j] as f64 - mean) * inv;
        dbeta[ch] = values().map(|j| dy[j] as f64).sum();
        dgamma[ch] = values().map(|j| dy[j] as f64 * xhat(j)).sum();
        for j in values() {
            y[j] = gamma[ch] * xhat(j) + beta[ch];
            dx[j] = match running {
                Some(_) => gamma[ch] * inv * dy[j] as f64,
                None => gamma[ch] * inv * (dy[j] as f64 - dbeta[ch] / m - xhat(j) * dgamma[ch] / m),
            };
        }
    }
    Exact { y, dx, dgamma, dbeta }
}

fn worst(what: &str, ours: &[f32], exact: &[f64]) -> f64 {
    let e = ours
        .iter()
        .zip(exact)
        .map(|(&o, &e)| {
            assert!(o.is_finite(), "{what}: {o}");
            (o as f64 - e).abs() / e.abs().max(1.0)
        })
        .fold(0.0, f64::max);
    eprintln!("  {what:<44} {e:.1e}");
    e
}

fn param(bn: &mut BatchNorm<f32>, want: &str) -> (Vec<f32>, Vec<f32>) {
    for (name, s) in bn.state_mut() {
        if name == want {
            if let StateMut::Param { value, grad } = s {
                return (value.data().to_vec(), grad.data().to_vec());
            }
        }
    }
    panic!("no parameter {want}")
}

#[test]
fn batch_norm_is_exact_to_1e_4_on_a_channel_with_mean_1e4_and_std_1e_2() {
    let mut r = rng::seeded(5);
    for (n, s) in [(8, 37), (64, 1)] {
        let c = 3;
        let x = hard_input(n, s);
        let dy: Vec<f32> = (0..x.len()).map(|_| r.gen::<f32>() - 0.5).collect();
        let shape: Vec<usize> = if s == 1 { vec![n, c] } else { vec![n, c, s] };
        let (xt, dyt) = (Tensor::from_vec(&shape, x.clone()).unwrap(), Tensor::from_vec(&shape, dy.clone()).unwrap());
        for imp in [BnImpl::Fused, BnImpl::Scratch] {
            let mut bn = BatchNorm::<f32>::with_impl(BatchNormConfig::pytorch(), imp);
            bn.build(&shape[1..], &mut rng::seeded(0)).unwrap();
            // gamma and beta away from 1 and 0
            for (name, s) in bn.state_mut() {
                if let StateMut::Param { value, .. } = s {
                    let v: Vec<f32> = (0..c)
                        .map(|ch| if name == "weight" { 1.5 - 0.25 * ch as f32 } else { 0.3 * ch as f32 - 0.2 })
                        .collect();
                    value.data_mut().copy_from_slice(&v);
                }
            }
            let gamma: Vec<f64> = param(&mut bn, "weight").0.iter().map(|&v| v as f64).collect();
            let beta: Vec<f64> = param(&mut bn, "bias").0.iter().map(|&v| v as f64).collect();
            // training: the batch's statistics
            let y = bn.forward(&xt, Mode::Train).unwrap().data().to_vec();
            let dx = bn.backward(&xt, &dyt, true).unwrap().data().to_vec();
            let want = exact(&x, &dy, (n, c, s), &gamma, &beta, None);
            let tag = format!("{imp:?} ({n},{c},{s}) train");
            let mut e = worst(&format!("{tag} y"), &y, &want.y);
            e = e.max(worst(&format!("{tag} dx"), &dx, &want.dx));
            e = e.max(worst(&format!("{tag} dgamma"), &param(&mut bn, "weight").1, &want.dgamma));
            e = e.max(worst(&format!("{tag} dbeta"), &param(&mut bn, "bias").1, &want.dbeta));
            assert!(e <= TOL, "{tag}: {e:.2e} from the exact answer");
            // evaluation: running statistics set to the batch's (f64 -> f32)
            let (rm, rv): (Vec<f64>, Vec<f64>) = (0..c)
                .map(|ch| {
                    let v: Vec<f64> =
                        (0..n).flat_map(|i| (0..s).map(move |k| (i * c + ch) * s + k)).map(|j| x[j] as f64).collect();
                    let mean = v.iter().sum::<f64>() / v.len() as f64;
                    (mean, v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / v.len() as f64)
                })
                .unzip();
            for (name, s) in bn.state_mut() {
                if let StateMut::Buffer(b) = s {
                    let src = if name == "running_mean" { &rm } else { &rv };
                    b.data_mut().iter_mut().zip(src).for_each(|(d, &v)| *d = v as f32);
                }
            }
            let rm32: Vec<f64> = rm.iter().map(|&v| v as f32 as f64).collect();
            let rv32: Vec<f64> = rv.iter().map(|&v| v as f32 as f64).collect();
            let y = bn.forward(&xt, Mode::Eval).unwrap().data().to_vec();
            let dx = bn.backward(&xt, &dyt, true).unwrap().data().to_vec();
            let want = exact(&x, &dy, (n, c, s), &gamma, &beta, Some((&rm32, &rv32)));
            let tag = format!("{imp:?} ({n},{c},{s}) eval");
            let e = worst(&format!("{tag} y"), &y, &want.y).max(worst(&format!("{tag} dx"), &dx, &want.dx));
            assert!(e <= TOL, "{tag}: {e:.2e} from the exact answer");
        }
    }
}
