//! Layers refuse bad input with an error that says what is wrong, never a
//! panic, a NaN or a silent zero in the running statistics.

use normlab::layers::{BatchNorm, BatchNormConfig, BnImpl, Conv2d, Layer, LayerNorm, Linear, Mode, Momentum};
use normlab::models::{self, ModelKind};
use normlab::{rng, Error, Tensor};

fn bn(imp: BnImpl, example: &[usize]) -> BatchNorm<f32> {
    let mut l = BatchNorm::with_impl(BatchNormConfig::pytorch(), imp);
    l.build(example, &mut rng::seeded(0)).unwrap();
    l
}

fn message(e: Error) -> String {
    e.to_string()
}

#[test]
fn one_value_per_channel_in_training_is_an_error_and_changes_nothing() {
    for imp in [BnImpl::Scratch, BnImpl::Fused] {
        for (example, x_shape) in [(vec![4], vec![1, 4]), (vec![3, 1, 1], vec![1, 3, 1, 1])] {
            let mut layer = bn(imp, &example);
            let x = Tensor::full(&x_shape, 2.0);
            let err = message(layer.forward(&x, Mode::Train).unwrap_err());
            assert!(err.contains("more than 1 value per channel"), "{err}");
            assert!(err.contains(&format!("{x_shape:?}")), "names the shape: {err}");
            // running statistics untouched, no batch counted
            assert!(layer.running_mean().unwrap().data().iter().all(|&v| v == 0.0));
            assert!(layer.running_var().unwrap().data().iter().all(|&v| v == 1.0));
            assert_eq!(layer.num_batches_tracked(), 0);
            // one example in prediction mode is fine
            let y = layer.forward(&x, Mode::Eval).unwrap();
            assert!(y.all_finite());
        }
    }
}

#[test]
fn wrong_channel_count_and_rank_are_errors() {
    for imp in [BnImpl::Scratch, BnImpl::Fused] {
        let mut layer = bn(imp, &[6, 4, 4]);
        let err = message(layer.forward(&Tensor::zeros(&[2, 5, 4, 4]), Mode::Train).unwrap_err());
        assert!(err.contains("expected 6 channels") && err.contains("got 5"), "{err}");
        let err = message(layer.forward(&Tensor::zeros(&[2, 6, 16]), Mode::Train).unwrap_err());
        assert!(err.contains("rank") && err.contains("[2, 6, 16]"), "{err}");
        let err = message(layer.forward(&Tensor::zeros(&[6]), Mode::Train).unwrap_err());
        assert!(err.contains("BatchNorm"), "{err}");
    }
    let mut lin = Linear::<f32>::new(3);
    lin.build(&[4], &mut rng::seeded(0)).unwrap();
    let err = message(lin.forward(&Tensor::zeros(&[2, 5]), Mode::Train).unwrap_err());
    assert!(err.contains("expected input of shape [N, 4]"), "{err}");
    let mut conv = Conv2d::<f32>::new(2, 3);
    let err = message(conv.build(&[1, 2, 2], &mut rng::seeded(0)).unwrap_err());
    assert!(err.contains("does not fit"), "{err}");
    let mut ln = LayerNorm::<f32>::new(&[5]);
    let err = message(ln.build(&[4], &mut rng::seeded(0)).unwrap_err());
    assert!(err.contains("trailing dimensions"), "{err}");
}

#[test]
fn a_model_names_the_layer_that_failed() {
    let mut net = models::build::<f32>(ModelKind::BnLenet, &mut rng::seeded(0)).unwrap();
    let err = message(net.forward(&Tensor::zeros(&[2, 1, 32, 32])).unwrap_err());
    assert!(err.starts_with("net.0 (Conv2d)"), "{err}");
    let err = message(net.forward(&Tensor::zeros(&[1, 1, 28, 28])).unwrap_err());
    assert!(err.contains("more than 1 value per channel"), "{err}");
}

#[test]
fn momentum_out_of_range_is_refused_with_both_conventions_named() {
    let mut layer = BatchNorm::<f32>::new(BatchNormConfig::pytorch().momentum(Momentum::NewStatWeight(0.99 * 2.0)));
    let err = message(layer.build(&[3], &mut rng::seeded(0)).unwrap_err());
    assert!(err.contains("NewStatWeight(0.1)") && err.contains("OldStatWeight(0.99)"), "{err}");
    let mut layer = BatchNorm::<f32>::new(BatchNormConfig::pytorch().eps(0.0));
    assert!(message(layer.build(&[3], &mut rng::seeded(0)).unwrap_err()).contains("eps"));
}

#[test]
fn layers_used_before_build_say_so() {
    let mut layer = BatchNorm::<f32>::new(BatchNormConfig::pytorch());
    let err = message(layer.forward(&Tensor::zeros(&[2, 3]), Mode::Train).unwrap_err());
    assert!(err.contains("before build"), "{err}");
}

#[test]
fn group_norm_rejects_groups_that_do_not_divide_the_channels() {
    let mut gn = normlab::layers::GroupNorm::<f32>::new(4);
    let err = gn.build(&[6, 5, 5], &mut rng::seeded(0)).unwrap_err().to_string();
    assert!(err.contains("4 groups") && err.contains("6 channels"), "{err}");
    // and a LeNet with GN names the layer
    let cfg = normlab::models::LeNetConfig::with_norm(normlab::models::Norm::Group { groups: 4 });
    assert!(normlab::models::build_config::<f32>(&cfg, &mut rng::seeded(0)).is_err());
    let ok = normlab::models::LeNetConfig::with_norm(normlab::models::Norm::Group { groups: 2 });
    let mut net = normlab::models::build_config::<f32>(&ok, &mut rng::seeded(0)).unwrap();
    let kinds: Vec<String> = net.layers().iter().map(|l| l.kind()).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "GroupNorm").count(), 4);
    assert_eq!(net.num_params(), 44878, "GN has BNLeNet's parameters: gamma and beta per channel");
}
