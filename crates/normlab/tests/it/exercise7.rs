//! The chapter's exercise 7 layers (IterNorm whitening in blocks, PIT
//! normalization, top-k sparsification): gradients against central finite
//! differences in f64 (of `L = Σ y·dy` with a random `dy`), and the
//! properties each layer claims.

use normlab::layers::pit_norm::{normal_cdf, normal_quantile, pit};
use normlab::layers::whitening::symmetric_eigen;
use normlab::layers::*;
use normlab::rng::{self, Rng};
use normlab::Tensor;
use rand::Rng as _;

const H: f64 = 1e-6;
const TOL: f64 = 1e-6;

fn uniform(shape: &[usize], rng: &mut Rng, scale: f64, offset: f64) -> Tensor<f64> {
    let n: usize = shape.iter().product();
    Tensor::from_vec(shape, (0..n).map(|_| offset + scale * (2.0 * rng.gen::<f64>() - 1.0)).collect()).unwrap()
}

fn loss_of(y: &Tensor<f64>, dy: &Tensor<f64>) -> f64 {
    y.data().iter().zip(dy.data()).map(|(a, b)| a * b).sum()
}

fn assert_grad(what: &str, analytic: f64, numeric: f64) -> f64 {
    let err = (analytic - numeric).abs() / analytic.abs().max(numeric.abs()).max(1.0);
    assert!(err < TOL, "{what}: analytic {analytic:.10e}, finite differences {numeric:.10e} (err {err:.2e})");
    err
}

/// Central difference of `f` along coordinate `i` of `v`.
fn central(v: &mut [f64], i: usize, mut f: impl FnMut(&[f64]) -> f64) -> f64 {
    let orig = v[i];
    v[i] = orig + H;
    let lp = f(v);
    v[i] = orig - H;
    let lm = f(v);
    v[i] = orig;
    (lp - lm) / (2.0 * H)
}

/// Analytic dx and parameter gradients of `layer` at `x` in `mode`,
/// against finite differences of `surrogate(layer, x)` (for dx) and of the
/// layer itself (for the parameters). The surrogate is the layer's own
/// forward unless its backward is defined through another function.
/// A function of the layer and its input standing in for its forward pass.
type Surrogate<'a> = &'a dyn Fn(&mut dyn Layer<f64>, &Tensor<f64>) -> Tensor<f64>;

fn check_layer(name: &str, layer: &mut dyn Layer<f64>, x: &Tensor<f64>, mode: Mode, surrogate: Option<Surrogate<'_>>) {
    let mut rng = rng::seeded(11);
    // parameters away from their initial values, so their gradients matter
    for (_, s) in layer.state_mut() {
        if let StateMut::Param { value, .. } = s {
            value.data_mut().iter_mut().for_each(|v| *v += 0.4 * (rng.gen::<f64>() - 0.5));
        }
    }
    let y = layer.forward(x, mode).unwrap().clone();
    let dy = uniform(y.shape(), &mut rng, 1.0, 0.0);
    let dx = layer.backward(x, &dy, true).unwrap().clone();
    let grads: Vec<(String, Vec<f64>)> = layer
        .state_mut()
        .into_iter()
        .filter_map(|(n, s)| match s {
            StateMut::Param { grad, .. } => Some((n.to_string(), grad.to_f64_vec())),
            _ => None,
        })
        .collect();
    let mut worst = 0.0f64;
    let mut xv = x.data().to_vec();
    for i in 0..xv.len() {
        let num = central(&mut xv, i, |v| {
            let t = Tensor::from_vec(x.shape(), v.to_vec()).unwrap();
            match surrogate {
                Some(f) => loss_of(&f(layer, &t), &dy),
                None => loss_of(layer.forward(&t, mode).unwrap(), &dy),
            }
        });
        worst = worst.max(assert_grad(&format!("{name} dx[{i}]"), dx.data()[i], num));
    }
    for (pname, grad) in &grads {
        for (i, &g) in grad.iter().enumerate() {
            let mut shift = |delta: f64| {
                for (n, s) in layer.state_mut() {
                    if n == pname.as_str() {
                        if let StateMut::Param { value, .. } = s {
                            value.data_mut()[i] += delta;
                        }
                    }
                }
                loss_of(layer.forward(x, mode).unwrap(), &dy)
            };
            let lp = shift(H);
            let lm = shift(-2.0 * H);
            shift(H);
            worst = worst.max(assert_grad(&format!("{name} d{pname}[{i}]"), g, (lp - lm) / (2.0 * H)));
        }
    }
    eprintln!("  {name:<44} max rel err {worst:.2e}");
}

fn built<L: Layer<f64>>(mut layer: L, example: &[usize]) -> L {
    layer.build(example, &mut rng::seeded(3)).unwrap();
    layer
}

/// Trains the layer's running statistics on a few batches like `x`.
fn warm_up(layer: &mut dyn Layer<f64>, shape: &[usize], rng: &mut Rng) {
    for _ in 0..4 {
        layer.forward(&uniform(shape, rng, 1.5, 0.3), Mode::Train).unwrap();
    }
}

// ------------------------------------------------------------------ whitening

#[test]
fn whitening_gradients_train_and_eval() {
    let mut rng = rng::seeded(1);
    for (shape, group) in [(vec![9, 4], 4), (vec![10, 6], 4), (vec![7, 5], 1), (vec![3, 3, 2, 2], 3), (vec![4, 4], 2)] {
        for affine in [true, false] {
            let x = uniform(&shape, &mut rng, 2.0, 0.5);
            let mut w = built(Whitening::<f64>::new(group).affine(affine), &shape[1..]);
            check_layer(
                &format!("Whitening(g={group}) {shape:?} affine {affine} train"),
                &mut w,
                &x,
                Mode::Train,
                None,
            );
            warm_up(&mut w, &shape, &mut rng);
            check_layer(&format!("Whitening(g={group}) {shape:?} affine {affine} eval"), &mut w, &x, Mode::Eval, None);
        }
    }
}

/// A batch smaller than the block (rank-deficient covariance: 3 examples,
/// 6 channels): the backward pass stays finite and exact.
#[test]
fn whitening_gradients_with_fewer_examples_than_channels() {
    let mut rng = rng::seeded(2);
    let x = uniform(&[3, 6], &mut rng, 1.0, 0.0);
    let mut w = built(Whitening::<f64>::full(), &[6]);
    check_layer("Whitening full, 3 examples x 6 channels", &mut w, &x, Mode::Train, None);
}

/// Empirical covariance of a layer output (N, C).
fn covariance(y: &Tensor<f64>) -> Vec<f64> {
    let (n, c) = (y.dim(0), y.dim(1));
    let d = y.data();
    let mean: Vec<f64> = (0..c).map(|j| (0..n).map(|i| d[i * c + j]).sum::<f64>() / n as f64).collect();
    let mut cov = vec![0.0; c * c];
    for a in 0..c {
        for b in 0..c {
            cov[a * c + b] =
                (0..n).map(|i| (d[i * c + a] - mean[a]) * (d[i * c + b] - mean[b])).sum::<f64>() / n as f64;
        }
    }
    cov
}

#[test]
fn whitening_decorrelates_and_blocks_of_one_are_batch_norm() {
    let mut rng = rng::seeded(4);
    // correlated channels: x = A z with a well-conditioned mixing A
    let (n, c) = (4000, 4);
    let mix = [1.0, 0.5, 0.2, 0.0, 0.3, 1.0, 0.4, 0.1, 0.0, 0.2, 1.0, 0.5, 0.1, 0.0, 0.3, 1.0];
    let z = uniform(&[n, c], &mut rng, 1.7, 0.0);
    let mut x = vec![0.0; n * c];
    for i in 0..n {
        for a in 0..c {
            x[i * c + a] = 3.0 + (0..c).map(|b| mix[a * c + b] * z.data()[i * c + b]).sum::<f64>();
        }
    }
    let x = Tensor::from_vec(&[n, c], x).unwrap();
    let off_diagonal = |cov: &[f64]| (0..c * c).filter(|k| k % (c + 1) != 0).map(|k| cov[k].abs()).fold(0.0, f64::max);
    assert!(off_diagonal(&covariance(&x)) > 0.3, "the input is correlated");
    let mut errs = Vec::new();
    for t in [1, 5, 15] {
        let mut w = built(Whitening::<f64>::full().iterations(t).affine(false), &[c]);
        let cov = covariance(w.forward(&x, Mode::Train).unwrap());
        let err = (0..c * c).map(|k| (cov[k] - if k % (c + 1) == 0 { 1.0 } else { 0.0 }).powi(2)).sum::<f64>().sqrt();
        errs.push(err);
    }
    eprintln!("  ||cov(x_hat) - I||_F for T = 1, 5, 15: {errs:?}");
    assert!(
        errs[1] < 0.1 && errs[2] < 0.02 && errs[0] > errs[1] && errs[1] > errs[2],
        "Newton-Schulz converges to the whitening: {errs:?}"
    );

    let mut one = built(Whitening::<f64>::new(1), &[c]);
    let mut bn = built(BatchNorm::<f64>::new(BatchNormConfig::pytorch()), &[c]);
    let a = one.forward(&x, Mode::Train).unwrap().clone();
    let b = bn.forward(&x, Mode::Train).unwrap();
    let diff = a.data().iter().zip(b.data()).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
    assert!(diff < 1e-10, "blocks of one channel are batch norm (max diff {diff:e})");
}

#[test]
fn whitening_refuses_bad_settings_and_non_finite_input() {
    let mut w = Whitening::<f64>::new(0);
    let e = w.build(&[4], &mut rng::seeded(0)).unwrap_err().to_string();
    assert!(e.contains("group size"), "{e}");
    let mut w = built(Whitening::<f64>::full(), &[3]);
    let e = w.forward(&Tensor::from_vec(&[1, 3], vec![1.0, 2.0, 3.0]).unwrap(), Mode::Train).unwrap_err().to_string();
    assert!(e.contains("more than one value"), "{e}");
    let bad = Tensor::from_vec(&[2, 3], vec![1.0, f64::NAN, 3.0, 1.0, 2.0, 0.0]).unwrap();
    assert!(matches!(w.forward(&bad, Mode::Train), Err(normlab::Error::Diverged(_))));
}

#[test]
fn symmetric_eigen_reconstructs_its_matrix() {
    let mut rng = rng::seeded(5);
    let n = 7;
    let b = uniform(&[n, n], &mut rng, 1.0, 0.0);
    let a: Vec<f64> =
        (0..n * n).map(|k| (0..n).map(|j| b.data()[(k / n) * n + j] * b.data()[(k % n) * n + j]).sum()).collect();
    let (vals, vecs) = symmetric_eigen(&a, n);
    assert!(vals.windows(2).all(|w| w[0] <= w[1]), "ascending");
    for r in 0..n {
        for s in 0..n {
            let rec: f64 = (0..n).map(|k| vecs[r * n + k] * vals[k] * vecs[s * n + k]).sum();
            assert!((rec - a[r * n + s]).abs() < 1e-10, "V Λ Vᵀ = A at ({r}, {s})");
        }
    }
}

// ------------------------------------------------------------------ PIT

#[test]
fn normal_quantile_inverts_the_cdf() {
    for &p in &[1e-12, 1e-6, 0.001, 0.02, 0.1, 0.3, 0.5, 0.77, 0.975, 0.999, 1.0 - 1e-9] {
        let z = normal_quantile(p);
        assert!((normal_cdf(z) - p).abs() <= 1e-14_f64.max(1e-12 * p), "Φ(Φ⁻¹({p})) = {}", normal_cdf(z));
    }
    assert!((normal_quantile(0.975) - 1.959963984540054).abs() < 1e-12);
}

#[test]
fn pit_maps_ranks_to_normal_quantiles_with_ties_averaged() {
    let (z, sorted) = pit(&[3.0, 1.0, 1.0, 2.0]);
    // sorted 1, 1, 2, 3: the two ones share rank (0 + 1)/2
    let q = |r: f64| normal_quantile((r + 0.5) / 4.0);
    assert_eq!(z, vec![q(3.0), q(0.5), q(0.5), q(2.0)]);
    assert_eq!(sorted, vec![1.0, 1.0, 2.0, 3.0]);
    // a monotone change of the input changes nothing
    let mut rng = rng::seeded(6);
    let v: Vec<f64> = (0..50).map(|_| rng.gen::<f64>()).collect();
    let w: Vec<f64> = v.iter().map(|a| (5.0 * a).exp() - 3.0).collect();
    assert_eq!(pit(&v).0, pit(&w).0, "PIT depends on ranks only");
}

/// y = gamma · x_hat + beta with BN's batch standardization: the function
/// whose gradient the straight-through backward pass is.
fn standardized(layer: &mut dyn Layer<f64>, x: &Tensor<f64>) -> Tensor<f64> {
    let (c, sp) = (x.dim(1), x.numel() / (x.dim(0) * x.dim(1)));
    let mut params: Vec<Vec<f64>> = Vec::new();
    for (_, s) in layer.state_mut() {
        if let StateMut::Param { value, .. } = s {
            params.push(value.to_f64_vec());
        }
    }
    let d = x.data();
    let mut y = x.clone();
    for ch in 0..c {
        let idx: Vec<usize> = (0..d.len()).filter(|i| (i / sp) % c == ch).collect();
        let m = idx.len() as f64;
        let mean = idx.iter().map(|&i| d[i]).sum::<f64>() / m;
        let var = idx.iter().map(|&i| (d[i] - mean).powi(2)).sum::<f64>() / m;
        for &i in &idx {
            let h = (d[i] - mean) / (var + 1e-5).sqrt();
            y.data_mut()[i] = if params.is_empty() { h } else { params[0][ch] * h + params[1][ch] };
        }
    }
    y
}

#[test]
fn pit_gradients_straight_through_in_training_and_exact_in_eval() {
    let mut rng = rng::seeded(7);
    for shape in [vec![12, 3], vec![4, 2, 3, 3]] {
        for affine in [true, false] {
            let x = uniform(&shape, &mut rng, 2.0, 0.5);
            let mut p = built(PitNorm::<f64>::new().affine(affine), &shape[1..]);
            check_layer(
                &format!("PitNorm {shape:?} affine {affine} train (ST)"),
                &mut p,
                &x,
                Mode::Train,
                Some(&standardized),
            );
            warm_up(&mut p, &shape, &mut rng);
            check_layer(&format!("PitNorm {shape:?} affine {affine} eval"), &mut p, &x, Mode::Eval, None);
        }
    }
}

#[test]
fn pit_running_quantiles_reproduce_the_training_map() {
    let mut rng = rng::seeded(8);
    let mut p = built(PitNorm::<f64>::new().affine(false), &[2]);
    // channel 0 skewed (exponential), channel 1 normal-ish and shifted
    let batch = |rng: &mut Rng| {
        let v: Vec<f64> = (0..4096)
            .flat_map(|_| {
                let u: f64 = rng.gen_range(1e-9..1.0);
                [-u.ln(), 4.0 + (0..12).map(|_| rng.gen::<f64>()).sum::<f64>() - 6.0]
            })
            .collect();
        Tensor::from_vec(&[4096, 2], v).unwrap()
    };
    for _ in 0..60 {
        p.forward(&batch(&mut rng), Mode::Train).unwrap();
    }
    // the eval map against the channels' true maps x -> Φ⁻¹(F(x)): exponential
    // F(x) = 1 - e^(-x); the Irwin-Hall sum of 12 uniforms, shifted, is
    // close to N(4, 1)
    let (mut worst, mut sum, mut count) = (0.0f64, 0.0, 0);
    for k in 1..40 {
        let p_k = k as f64 / 40.0;
        let x = Tensor::from_vec(&[1, 2], vec![-(1.0 - p_k).ln(), 4.0 + normal_quantile(p_k)]).unwrap();
        let y = p.forward(&x, Mode::Eval).unwrap();
        for &z in y.data() {
            let err = (z - normal_quantile(p_k)).abs();
            worst = worst.max(err);
            sum += err;
            count += 1;
        }
    }
    let mean = sum / count as f64;
    eprintln!("  eval map against the true Φ⁻¹(F(x)) for p in [0.025, 0.975]: mean {mean:.4}, max {worst:.4}");
    assert!(mean < 0.03 && worst < 0.1, "running quantiles approximate the population's map: mean {mean}, max {worst}");
}

// ------------------------------------------------------------------ top-k

#[test]
fn top_k_keeps_the_largest_magnitudes_and_its_gradient() {
    let mut t = built(TopK::<f64>::new(0.5).unwrap(), &[4]);
    let x = Tensor::from_vec(&[2, 4], vec![0.1, -3.0, 2.0, 0.5, 1.0, 1.0, -1.0, 0.0]).unwrap();
    let y = t.forward(&x, Mode::Train).unwrap().data().to_vec();
    // ties at the k-th magnitude keep the earlier positions
    assert_eq!(y, vec![0.0, -3.0, 2.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
    assert_eq!(t.keep(), 2);
    let mut rng = rng::seeded(9);
    for (shape, f) in [(vec![5, 12], 0.25), (vec![3, 2, 3, 3], 0.1), (vec![4, 6], 1.0)] {
        let x = uniform(&shape, &mut rng, 2.0, 0.0);
        let mut t = built(TopK::<f64>::new(f).unwrap(), &shape[1..]);
        check_layer(&format!("TopK({f}) {shape:?}"), &mut t, &x, Mode::Train, None);
        let kept = t.output().data().iter().filter(|v| **v != 0.0).count();
        assert_eq!(kept, shape[0] * t.keep(), "exactly k per example");
    }
    for bad in [0.0, -0.5, 1.5, f64::NAN] {
        assert!(TopK::<f64>::new(bad).is_err(), "fraction {bad} refused");
    }
}
