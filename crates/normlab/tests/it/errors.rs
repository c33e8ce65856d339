//! Layers refuse bad input with an error that says what is wrong, never a
//! panic, a NaN or a silent zero in the running statistics.

use normlab::layers::{BatchNorm, BatchNormConfig, BnImpl, Conv2d, Layer, LayerNorm, Linear, Mode, Momentum};
use normlab::models::{self, ModelKind, Sequential};
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

/// One layer of every kind, with one example's shape, a batch `x` and an
/// output gradient `dy` that fit it.
struct Case {
    name: &'static str,
    make: fn() -> Box<dyn Layer<f32>>,
    example: Vec<usize>,
    x: Vec<usize>,
    dy: Vec<usize>,
    /// Whether backward reads what forward kept (statistics, masks, outputs).
    keeps_forward_state: bool,
    /// Whether the layer has sizes to infer at build.
    needs_build: bool,
}

fn cases() -> Vec<Case> {
    use normlab::layers::{
        AvgPool2d, Dropout, Flatten, GroupNorm, LeakyReLU, MaxPool2d, ReLU, SiLU, Sigmoid, Tanh, GELU,
    };
    let case = |name, make, example: &[usize], x: &[usize], dy: &[usize], keeps_forward_state, needs_build| Case {
        name,
        make,
        example: example.to_vec(),
        x: x.to_vec(),
        dy: dy.to_vec(),
        keeps_forward_state,
        needs_build,
    };
    vec![
        case(
            "BatchNorm scratch",
            || Box::new(BatchNorm::with_impl(BatchNormConfig::pytorch(), BnImpl::Scratch)),
            &[3],
            &[4, 3],
            &[4, 3],
            true,
            true,
        ),
        case(
            "BatchNorm fused",
            || Box::new(BatchNorm::with_impl(BatchNormConfig::pytorch(), BnImpl::Fused)),
            &[2, 4, 4],
            &[4, 2, 4, 4],
            &[4, 2, 4, 4],
            true,
            true,
        ),
        // the fused layers exist only as a model makes them, built
        case(
            "BatchNorm2d+Sigmoid+AvgPool2d",
            || {
                fused(
                    Sequential::new().push(pytorch_bn()).push(Sigmoid::new()).push(AvgPool2d::new(2, 2)),
                    &[2, 4, 4],
                    "BatchNorm2d+Sigmoid+AvgPool2d",
                )
            },
            &[2, 4, 4],
            &[4, 2, 4, 4],
            &[4, 2, 2, 2],
            true,
            false,
        ),
        case(
            "Conv2d+BatchNorm2d+Sigmoid+AvgPool2d",
            || {
                let net = Sequential::new().push(Conv2d::new(6, 5)).push(pytorch_bn()).push(Sigmoid::new());
                fused(net.push(AvgPool2d::new(2, 2)), &[1, 28, 28], "Conv2d+BatchNorm2d+Sigmoid+AvgPool2d")
            },
            &[1, 28, 28],
            &[3, 1, 28, 28],
            &[3, 6, 12, 12],
            true,
            false,
        ),
        case(
            "BatchNorm2d+ReLU",
            || fused(Sequential::new().push(pytorch_bn()).push(ReLU::new()), &[2, 4, 4], "BatchNorm2d+ReLU"),
            &[2, 4, 4],
            &[4, 2, 4, 4],
            &[4, 2, 4, 4],
            true,
            false,
        ),
        case(
            "BatchNorm1d+GELU",
            || fused(Sequential::new().push(pytorch_bn()).push(GELU::new(false)), &[3], "BatchNorm1d+GELU"),
            &[3],
            &[4, 3],
            &[4, 3],
            true,
            false,
        ),
        case("Conv2d", || Box::new(Conv2d::new(3, 3)), &[2, 5, 5], &[2, 2, 5, 5], &[2, 3, 3, 3], false, true),
        case("Linear", || Box::new(Linear::new(3)), &[4], &[2, 4], &[2, 3], false, true),
        case("LayerNorm", || Box::new(LayerNorm::new(&[4])), &[4], &[2, 4], &[2, 4], true, true),
        case("GroupNorm", || Box::new(GroupNorm::new(2)), &[4, 3], &[2, 4, 3], &[2, 4, 3], true, true),
        case("AvgPool2d", || Box::new(AvgPool2d::new(2, 2)), &[1, 4, 4], &[2, 1, 4, 4], &[2, 1, 2, 2], false, true),
        case("MaxPool2d", || Box::new(MaxPool2d::new(2, 2)), &[1, 4, 4], &[2, 1, 4, 4], &[2, 1, 2, 2], true, true),
        case("Flatten", || Box::new(Flatten::new()), &[2, 3], &[2, 2, 3], &[2, 6], false, true),
        case("Sigmoid", || Box::new(Sigmoid::new()), &[3], &[2, 3], &[2, 3], true, false),
        case("ReLU", || Box::new(ReLU::new()), &[3], &[2, 3], &[2, 3], true, false),
        case("LeakyReLU", || Box::new(LeakyReLU::new(0.01)), &[3], &[2, 3], &[2, 3], true, false),
        case("Tanh", || Box::new(Tanh::new()), &[3], &[2, 3], &[2, 3], true, false),
        case("SiLU", || Box::new(SiLU::new()), &[3], &[2, 3], &[2, 3], true, false),
        case("GELU", || Box::new(GELU::new(false)), &[3], &[2, 3], &[2, 3], true, false),
        case("Dropout", || Box::new(Dropout::new(0.5).unwrap()), &[3], &[2, 3], &[2, 3], true, false),
    ]
}

fn pytorch_bn() -> BatchNorm<f32> {
    BatchNorm::new(BatchNormConfig::pytorch())
}

/// The one layer a model makes of `net` at build, checked to be `kind`.
fn fused(mut net: normlab::models::Sequential<f32>, example: &[usize], kind: &str) -> Box<dyn Layer<f32>> {
    net.build(example, &mut rng::seeded(0)).unwrap();
    let mut layers = net.into_layers();
    assert_eq!(layers.len(), 1, "{kind}: fused into one layer");
    assert_eq!(layers[0].kind(), kind);
    layers.remove(0)
}

/// Values that vary within every channel, so batch statistics are regular.
fn ramp(shape: &[usize]) -> Tensor<f32> {
    let n: usize = shape.iter().product();
    Tensor::from_vec(shape, (0..n).map(|i| ((i * 37 % 11) as f32) / 5.0 - 1.0).collect()).unwrap()
}

/// `shape` with one more example.
fn one_more(shape: &[usize]) -> Vec<usize> {
    let mut s = shape.to_vec();
    s[0] += 1;
    s
}

#[test]
fn backward_before_build_is_an_error_for_every_layer() {
    for c in cases() {
        for need_dx in [true, false] {
            let mut layer = (c.make)();
            let err = message(layer.backward(&ramp(&c.x), &ramp(&c.dy), need_dx).unwrap_err());
            let says = if c.needs_build { "before build()" } else { "run forward() on this input first" };
            assert!(err.contains(says), "{} (need_dx {need_dx}): {err}", c.name);
            assert!(!err.contains('\n'), "{}: one line: {err}", c.name);
        }
    }
}

#[test]
fn backward_before_forward_is_an_error_where_backward_reads_the_forward_pass() {
    for c in cases() {
        let mut layer = (c.make)();
        layer.build(&c.example, &mut rng::seeded(0)).unwrap();
        let result = layer.backward(&ramp(&c.x), &ramp(&c.dy), true).map(|dx| dx.shape().to_vec());
        if c.keeps_forward_state {
            let err = message(result.unwrap_err());
            assert!(err.contains("backward() before forward()"), "{}: {err}", c.name);
        } else {
            // the gradients follow from x, dy and the parameters alone
            assert_eq!(result.unwrap(), c.x, "{}", c.name);
        }
    }
}

#[test]
fn backward_on_another_batch_than_the_forward_is_an_error_not_a_panic() {
    for c in cases() {
        let mut layer = (c.make)();
        layer.build(&c.example, &mut rng::seeded(0)).unwrap();
        layer.forward(&ramp(&c.x), Mode::Train).unwrap();
        let (x, dy) = (ramp(&one_more(&c.x)), ramp(&one_more(&c.dy)));
        let result = layer.backward(&x, &dy, true).map(|dx| dx.shape().to_vec());
        if c.keeps_forward_state {
            let err = message(result.unwrap_err());
            assert!(err.contains("run forward() on the same input first"), "{}: {err}", c.name);
            assert!(err.contains(&format!("{:?}", c.x)), "{}: names the forward's shape: {err}", c.name);
        } else {
            assert_eq!(result.unwrap(), x.shape(), "{}", c.name);
        }
        // and the pass on the forward's own input still works
        let dx = layer.backward(&ramp(&c.x), &ramp(&c.dy), true).unwrap();
        assert_eq!(dx.shape(), c.x.as_slice(), "{}", c.name);
    }
}

#[test]
fn a_gradient_of_the_wrong_shape_or_a_wrong_input_is_an_error() {
    for c in cases() {
        let mut layer = (c.make)();
        layer.build(&c.example, &mut rng::seeded(0)).unwrap();
        layer.forward(&ramp(&c.x), Mode::Train).unwrap();
        let mut wrong_dy = c.dy.clone();
        *wrong_dy.last_mut().unwrap() += 1;
        let err = message(layer.backward(&ramp(&c.x), &ramp(&wrong_dy), true).unwrap_err());
        assert!(err.contains(&format!("{wrong_dy:?}")), "{}: names the gradient's shape: {err}", c.name);
        // an input of another rank, and a scalar
        let err = layer.backward(&ramp(&c.x[1..]), &ramp(&c.dy), true).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{}: {err}", c.name);
        assert!(layer.backward(&ramp(&[]), &ramp(&c.dy), true).is_err(), "{}", c.name);
    }
}

#[test]
fn a_model_refuses_backward_before_build_and_scalar_input() {
    use normlab::models::Sequential;
    let mut empty = Sequential::<f32>::new();
    assert!(empty.grad_input().data().is_empty());
    let err = message(empty.backward(&ramp(&[2, 3]), &ramp(&[2, 3])).unwrap_err());
    assert!(err.contains("build()"), "{err}");
    assert_eq!(empty.batch_norm_name(0), "net.0");

    let mut net = models::build::<f32>(ModelKind::BnLenet, &mut rng::seeded(0)).unwrap();
    let err = message(net.forward(&Tensor::full(&[], 1.0)).unwrap_err());
    assert!(err.starts_with("net.0 "), "{err}");
    // past the last layer the names count on from its entries
    let last = net.len() - 1;
    let last_entry: usize = net.state_names().last().unwrap().split('.').nth(1).unwrap().parse().unwrap();
    assert_eq!(net.batch_norm_name(last), format!("net.{last_entry}"));
    assert_eq!(net.batch_norm_name(last + 1), format!("net.{}", last_entry + 1));
    // a model grown after build must be built again
    let mut grown = Sequential::<f32>::new().push(Linear::new(2));
    grown.build(&[3], &mut rng::seeded(0)).unwrap();
    let mut grown = grown.push(Linear::new(2));
    assert!(message(grown.forward(&ramp(&[1, 3])).unwrap_err()).contains("build()"));
}
