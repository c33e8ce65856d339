//! `Linear`'s forward pass over packed weights (`kernels::linear_packed`,
//! f32 at AVX2 or AVX-512): the values of the `gemm` path at every batch
//! size, each row the same alone as in a batch, and the packed weights
//! renewed whenever the weights change (through `state_mut`: an optimizer
//! step, a checkpoint load; through folding a batch norm).
//!
//! To 1e-5: the `isa` test of this binary switches the level of the whole
//! process while these run, and at the portable level a batch of up to 4
//! takes dot products, another sum order. That the packed kernel gives
//! `gemm`'s bits at every level is tested by its unit tests and by `isa`.

use normlab::isa::{self, Isa};
use normlab::kernels::gemm::{gemm, Product};
use normlab::layers::{BatchNorm, BatchNormConfig, Layer, Linear, Mode, StateMut};
use normlab::models::Sequential;
use normlab::{rng, Tensor};

fn values(shape: &[usize], seed: usize) -> Tensor<f32> {
    let n: usize = shape.iter().product();
    Tensor::from_vec(shape, (0..n).map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 - 1001.0) / 400.0).collect())
        .unwrap()
}

/// Says which forward pass the layer takes at the level now active.
fn report_level() {
    if isa::active() < Isa::Avx2 {
        eprintln!("linear_packed: {} active, the packed kernel skipped (the gemm path tested)", isa::active());
    }
}

/// `x·wᵀ + b` through `gemm`, as the layer's portable path forms it.
fn by_gemm(layer: &Linear<f32>, x: &Tensor<f32>) -> Vec<f32> {
    let (out, k) = (layer.out_features(), layer.weight().shape()[1]);
    let n = x.shape()[0];
    let mut y: Vec<f32> = match layer.bias_values() {
        Some(b) => b.data().iter().cycle().take(n * out).copied().collect(),
        None => vec![0.0; n * out],
    };
    let beta = if layer.bias_values().is_some() { 1.0 } else { 0.0 };
    gemm(Product::nt(n, out, k), 1.0, x.data(), layer.weight().data(), beta, &mut y);
    y
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: sizes");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{what}: y[{i}] {g} vs {w}");
    }
}

/// Batch sizes 1 to 13, 37 and 256 (one and two halves, whole tiles and
/// tails), mlp-bn's and LeNet's widths, with and without bias, training
/// and prediction mode: the `gemm` path's values; each of the first rows
/// alone as in the batch.
#[test]
fn forward_is_gemms_at_every_batch_size() {
    report_level();
    for (inputs, outputs, bias) in [(784, 100, true), (100, 10, true), (400, 120, false), (37, 70, true)] {
        let mut layer = Linear::<f32>::new(outputs).bias(bias);
        layer.build(&[inputs], &mut rng::seeded(1)).unwrap();
        for n in (1..=13).chain([37, 256]) {
            let x = values(&[n, inputs], n);
            let want = by_gemm(&layer, &x);
            let what = format!("{inputs}->{outputs} bias {bias}, batch {n}");
            for mode in [Mode::Train, Mode::Eval] {
                let got = layer.forward(&x, mode).unwrap().data().to_vec();
                assert_close(&got, &want, &format!("{what} {mode:?}"));
            }
            let whole = layer.forward(&x, Mode::Eval).unwrap().data().to_vec();
            for i in 0..n.min(3) {
                let row = Tensor::from_vec(&[1, inputs], x.data()[i * inputs..][..inputs].to_vec()).unwrap();
                let alone = layer.forward(&row, Mode::Eval).unwrap().data().to_vec();
                assert_close(&alone, &whole[i * outputs..][..outputs], &format!("{what}: row {i} alone"));
            }
        }
    }
}

/// New weights written through `state_mut` (what an optimizer step and a
/// checkpoint load do) are used by the next forward pass, and so are the
/// weights a folded batch norm leaves.
#[test]
fn weights_changed_after_a_forward_pass_are_used() {
    report_level();
    let mut layer = Linear::<f32>::new(50);
    layer.build(&[64], &mut rng::seeded(2)).unwrap();
    let x = values(&[9, 64], 3);
    let before = layer.forward(&x, Mode::Eval).unwrap().data().to_vec();
    for (name, state) in layer.state_mut() {
        if let StateMut::Param { value, .. } = state {
            value.data_mut().iter_mut().enumerate().for_each(|(i, v)| *v = -*v + (i % 7) as f32 * 0.01);
        } else {
            panic!("{name}: not a parameter");
        }
    }
    let after = layer.forward(&x, Mode::Eval).unwrap().data().to_vec();
    assert_close(&after, &by_gemm(&layer, &x), "after state_mut");
    assert!(after.iter().zip(&before).any(|(a, b)| a != b), "the new weights changed nothing");

    // Linear -> BN with running statistics far from 0 and 1: the folded
    // layer's outputs are the pair's, computed after a forward pass packed
    // the unfolded weights
    let mut net = Sequential::<f32>::new().push(Linear::new(30)).push(BatchNorm::new(BatchNormConfig::pytorch()));
    net = net.fusion(false);
    net.build(&[64], &mut rng::seeded(4)).unwrap();
    for (name, state) in net.state_mut() {
        if let StateMut::Buffer(t) = state {
            let fill = if name.ends_with("running_mean") { 0.7 } else { 2.5 };
            t.data_mut().iter_mut().enumerate().for_each(|(i, v)| *v = fill + (i % 5) as f32 * 0.1);
        }
    }
    net.eval();
    let unfolded = net.forward(&x).unwrap().data().to_vec();
    assert_eq!(net.fold_batch_norms().unwrap(), 1);
    let folded = net.forward(&x).unwrap().data().to_vec();
    assert_close(&folded, &unfolded, "folded");
}
