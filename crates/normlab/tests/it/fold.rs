//! Folding batch norm into the layer before it (`Sequential::fold_batch_norms`):
//! eval-mode outputs unchanged to 1e-5 over the committed test subset, for
//! the built-in LeNets and for networks with batch norms in every position a
//! fold must handle (after a conv, after a linear layer through flatten and
//! dropout, two in a row, inside a residual block) or must refuse (after an
//! activation, first, over flattened spatial positions). Fused again after
//! folding (`Sequential::fuse`), the outputs are bitwise the folded layers'.

use std::path::PathBuf;

use normlab::data::{load_dir, Batch, Split};
use normlab::layers::{
    AvgPool2d, BatchNorm, BatchNormConfig, BatchRenorm, BnImpl, BnParts, Conv2d, Dropout, Flatten, FrozenBatchNorm,
    GhostBatchNorm, InstanceNorm, Linear, MaxPool2d, ReLU, RenormSchedule, RmsNorm, Sigmoid, StateMut,
};
use normlab::models::{LeNetConfig, ModelKind, Residual, Sequential};
use normlab::rng::{self, Rng};

fn test_subset() -> Split {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fashion-mnist-subset");
    load_dir(&dir).expect("the committed subset loads").test
}

/// Every batch-norm parameter and buffer drawn at random (running variances
/// positive, from 0.05 to 4), so a fold that drops or misplaces any of them
/// changes the outputs.
fn randomize_batch_norms(net: &mut Sequential<f32>, rng: &mut Rng) {
    use rand::Rng as _;
    for (name, state) in net.state_mut() {
        let (value, low, high) = match state {
            StateMut::Buffer(v) if name.ends_with("running_var") => (v, 0.05, 4.0),
            StateMut::Buffer(v) => (v, -1.0, 1.0),
            // gamma, beta and the biases: the rank-1 parameters
            StateMut::Param { value, .. } if value.rank() == 1 => (value, -1.5, 1.5),
            _ => continue,
        };
        for v in value.data_mut() {
            *v = rng.gen_range(low..high);
        }
    }
}

/// The eval-mode outputs of `net` on every image of `split`, in batches of 250.
fn outputs(net: &mut Sequential<f32>, split: &Split) -> Vec<f32> {
    let mut batch = Batch::default();
    let mut out = Vec::new();
    let indices: Vec<usize> = (0..split.len()).collect();
    for chunk in indices.chunks(250) {
        batch.fill(split, chunk).unwrap();
        out.extend_from_slice(net.forward(&batch.x).unwrap().data());
    }
    out
}

/// Folds `net` (built, random batch-norm state, eval mode) and checks that
/// `expect_folded` batch norms went and that every output moved by at most
/// 1e-5 (relative to the output's size, at least 1) and the predicted class
/// of no image changed.
fn check_fold(what: &str, mut net: Sequential<f32>, split: &Split, expect_folded: usize) {
    net.eval();
    let before = outputs(&mut net, split);
    let layers = net.len();
    let folded = net.fold_batch_norms().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(folded, expect_folded, "{what}: batch norms folded");
    assert!(net.len() < layers || expect_folded == 0, "{what}: no layer removed");
    let after = outputs(&mut net, split);
    assert_eq!(before.len(), after.len());
    let mut worst = 0f64;
    for (b, a) in before.iter().zip(&after) {
        let err = (*b as f64 - *a as f64).abs() / (b.abs() as f64).max(1.0);
        worst = worst.max(err);
    }
    assert!(worst <= 1e-5, "{what}: folded outputs differ by {worst:e}");
    let classes = |v: &[f32]| -> Vec<usize> {
        let width = v.len() / split.len();
        v.chunks(width)
            .map(|r| r.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap())
            .collect()
    };
    assert_eq!(classes(&before), classes(&after), "{what}: a prediction changed");
    // fused again (convolution or linear layer + activation (+ pooling)):
    // bitwise the folded layers' outputs, in fewer layers
    let unfused_layers = net.len();
    net.fuse().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(net.len() <= unfused_layers, "{what}: fusing added layers");
    let fused = outputs(&mut net, split);
    assert!(
        fused.iter().zip(&after).all(|(f, a)| f.to_bits() == a.to_bits()),
        "{what}: the fused folded model's outputs differ from the folded layers'"
    );
    // one image at a time (prediction: the small-batch kernels) agrees too
    let width = after.len() / split.len();
    let mut batch = Batch::default();
    for i in 0..3 {
        batch.fill(split, &[i]).unwrap();
        let one = net.forward(&batch.x).unwrap().data().to_vec();
        for (o, a) in one.iter().zip(&after[i * width..(i + 1) * width]) {
            assert!((o - a).abs() as f64 <= 1e-5 * (a.abs() as f64).max(1.0), "{what}: image {i} alone: {o} vs {a}");
        }
    }
    eprintln!(
        "{what}: {folded} folded, largest difference {worst:.2e}; {unfused_layers} -> {} layers fused",
        net.len()
    );
}

fn built(mut net: Sequential<f32>, input: &[usize], seed: u64) -> Sequential<f32> {
    let mut rng = rng::seeded(seed);
    net = net.fusion(false);
    net.build(input, &mut rng).unwrap();
    randomize_batch_norms(&mut net, &mut rng);
    net
}

fn bn() -> BatchNorm<f32> {
    BatchNorm::new(BatchNormConfig::pytorch())
}

#[test]
fn the_built_in_lenets_fold_to_the_same_outputs() {
    let split = test_subset();
    for kind in ModelKind::ALL {
        let config: LeNetConfig = kind.config();
        let net = built(config.network().unwrap(), &[1, 28, 28], 7);
        let expect = match kind {
            ModelKind::BnLenet | ModelKind::BnLenetScratch => 4,
            ModelKind::Lenet | ModelKind::LnLenet => 0,
        };
        check_fold(kind.name(), net, &split, expect);
    }
    // BNLeNet folded: each stage one fused layer (conv + sigmoid + pool,
    // flatten + linear + sigmoid, linear + sigmoid), then the last linear layer
    let mut net = built(ModelKind::BnLenet.config().network().unwrap(), &[1, 28, 28], 7);
    net.eval();
    net.fold_batch_norms().unwrap();
    net.fuse().unwrap();
    let kinds: Vec<String> = net.layers().iter().map(|l| l.kind()).collect();
    assert_eq!(
        kinds,
        ["Conv2d+Sigmoid+AvgPool2d", "Conv2d+Sigmoid+AvgPool2d", "Flatten+Linear+Sigmoid", "Linear+Sigmoid", "Linear"]
    );
    assert_eq!(net.state_names()[..4], ["net.0.weight", "net.0.bias", "net.3.weight", "net.3.bias"]);
    assert_eq!(net.state_names()[4..6], ["net.7.weight", "net.7.bias"], "the linear layer after the flatten");
}

#[test]
fn batch_norms_fold_through_flatten_and_dropout_and_in_residual_blocks() {
    let split = test_subset();
    let body = Sequential::new()
        .push(Conv2d::new(8, 3).padding(1).bias(false))
        .push(bn())
        .push(ReLU::new())
        .push(Conv2d::new(8, 3).padding(1))
        .push(bn());
    let net = Sequential::new()
        .push(Conv2d::new(8, 3).padding(1).bias(false))
        .push(BatchNorm::new(BatchNormConfig::pytorch().parts(BnParts::CenterOnly)))
        .push(BatchNorm::with_impl(BatchNormConfig::d2l(), BnImpl::Scratch)) // a second one in a row folds too
        .push(ReLU::new())
        .push(Residual::new(body))
        .push(MaxPool2d::new(2, 2))
        .push(Conv2d::new(16, 14)) // a 1x1 output: flatten keeps its channels
        .push(Flatten::new())
        .push(Dropout::new(0.3).unwrap())
        .push(BatchNorm::new(BatchNormConfig::pytorch().parts(BnParts::ScaleOnly)))
        .push(Linear::new(10));
    check_fold("conv/residual/flatten", built(net, &[1, 28, 28], 3), &split, 5);
}

#[test]
fn batch_norms_with_nothing_to_fold_into_stay() {
    let split = test_subset();
    let net = Sequential::new()
        .push(bn()) // the input
        .push(Conv2d::new(4, 5))
        .push(ReLU::new())
        .push(bn()) // after an activation
        .push(Flatten::new())
        .push(bn()) // after a flatten of 4x24x24 positions: not the conv's 4 channels
        .push(Linear::new(10))
        .push(BatchNorm::new(BatchNormConfig::pytorch().track_running_stats(false))); // batch statistics
    let mut net = built(net, &[1, 28, 28], 5);
    net.eval();
    let before = outputs(&mut net, &split);
    assert_eq!(net.fold_batch_norms().unwrap(), 0);
    assert_eq!(net.len(), 8);
    assert_eq!(outputs(&mut net, &split), before, "nothing folded, nothing changed");
}

#[test]
fn a_fused_model_is_refused_with_the_fix() {
    let mut net = normlab::models::bn_lenet::<f32>(&mut rng::seeded(0)).unwrap();
    let err = net.fold_batch_norms().unwrap_err().to_string();
    assert!(err.contains("fusion(false)"), "{err}");
    let mut unbuilt = Sequential::<f32>::new().push(Linear::new(3)).push(bn());
    let err = unbuilt.fold_batch_norms().unwrap_err().to_string();
    assert!(err.contains("build()"), "{err}");
}

/// Frozen BN, ghost BN and batch renormalization are per-channel affine
/// maps in eval mode and fold like batch norm; instance norm and RMS norm
/// (per example, not affine) keep their places, and folding goes on past
/// them without an error.
#[test]
fn frozen_ghost_and_renorm_fold_and_per_example_norms_stay() {
    let split = test_subset();
    let net = Sequential::<f32>::new()
        .push(Conv2d::new(4, 5))
        .push(FrozenBatchNorm::new())
        .push(Sigmoid::new())
        .push(Conv2d::new(4, 5).bias(false))
        .push(GhostBatchNorm::new(4))
        .push(InstanceNorm::new().affine(true))
        .push(Sigmoid::new())
        .push(AvgPool2d::new(4, 4))
        .push(Flatten::new())
        .push(Linear::new(16))
        .push(BatchRenorm::new(RenormSchedule::paper()))
        .push(RmsNorm::per_example())
        .push(Linear::new(10));
    let mut net = built(net, &[1, 28, 28], 4);
    net.eval();
    let mut folded = built(Sequential::new().push(Conv2d::new(2, 3)).push(RmsNorm::per_example()), &[1, 6, 6], 1);
    folded.eval();
    assert_eq!(folded.fold_batch_norms().unwrap(), 0, "nothing to fold, no error");
    assert_eq!(folded.layers().iter().map(|l| l.kind()).collect::<Vec<_>>(), ["Conv2d", "RMSNorm"]);
    check_fold("frozen/ghost/renorm", std::mem::take(&mut net), &split, 3);
}
