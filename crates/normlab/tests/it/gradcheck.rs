//! Finite-difference gradient checks in f64 for every layer, the loss and a
//! whole BNLeNet: the analytic backward pass against central differences of
//! `L = Σ y·dy` with a random `dy`.

use normlab::layers::*;
use normlab::loss::CrossEntropy;
use normlab::models;
use normlab::rng::{self, Rng};
use normlab::Tensor;
use rand::Rng as _;

const H: f64 = 1e-6;
const TOL: f64 = 1e-6;

fn random(shape: &[usize], rng: &mut Rng, scale: f64, offset: f64) -> Tensor<f64> {
    let n = shape.iter().product();
    Tensor::from_vec(shape, (0..n).map(|_| offset + scale * (rng.gen::<f64>() * 2.0 - 1.0)).collect()).unwrap()
}

fn dot(a: &Tensor<f64>, b: &Tensor<f64>) -> f64 {
    a.data().iter().zip(b.data()).map(|(x, y)| x * y).sum()
}

fn check(what: &str, analytic: f64, numeric: f64) -> f64 {
    let err = (analytic - numeric).abs() / analytic.abs().max(numeric.abs()).max(1.0);
    assert!(err < TOL, "{what}: analytic {analytic:.10e} vs numeric {numeric:.10e} (err {err:.2e})");
    err
}

/// Checks dx and every parameter gradient of `layer` at `x` in `mode`.
fn gradcheck(name: &str, layer: &mut dyn Layer<f64>, x: &Tensor<f64>, mode: Mode) {
    let mut rng = rng::seeded(7);
    let y = layer.forward(x, mode).unwrap().clone();
    let dy = random(y.shape(), &mut rng, 1.0, 0.0);
    let dx = layer.backward(x, &dy, true).unwrap().clone();
    let param_grads: Vec<(String, Tensor<f64>)> = layer
        .state_mut()
        .into_iter()
        .filter_map(|(n, s)| match s {
            StateMut::Param { grad, .. } => Some((n.to_string(), grad.clone())),
            _ => None,
        })
        .collect();

    let mut worst = 0.0f64;
    let mut xp = x.clone();
    for i in 0..x.numel() {
        let orig = xp.data()[i];
        xp.data_mut()[i] = orig + H;
        let lp = dot(layer.forward(&xp, mode).unwrap(), &dy);
        xp.data_mut()[i] = orig - H;
        let lm = dot(layer.forward(&xp, mode).unwrap(), &dy);
        xp.data_mut()[i] = orig;
        worst = worst.max(check(&format!("{name} dx[{i}]"), dx.data()[i], (lp - lm) / (2.0 * H)));
    }
    for (pname, grad) in &param_grads {
        for i in 0..grad.numel() {
            let mut eval = |delta: f64| {
                for (n, s) in layer.state_mut() {
                    if n == pname.as_str() {
                        if let StateMut::Param { value, .. } = s {
                            value.data_mut()[i] += delta;
                        }
                    }
                }
                dot(layer.forward(x, mode).unwrap(), &dy)
            };
            let lp = eval(H);
            let lm = eval(-2.0 * H);
            eval(H);
            worst = worst.max(check(&format!("{name} d{pname}[{i}]"), grad.data()[i], (lp - lm) / (2.0 * H)));
        }
    }
    eprintln!("  {name:<40} max rel err {worst:.2e}");
}

fn built<L: Layer<f64>>(mut layer: L, example: &[usize]) -> L {
    layer.build(example, &mut rng::seeded(3)).unwrap();
    layer
}

/// Gives gamma/beta non-trivial values so their gradients matter.
fn perturb_params(layer: &mut dyn Layer<f64>, rng: &mut Rng) {
    for (_, s) in layer.state_mut() {
        if let StateMut::Param { value, .. } = s {
            for v in value.data_mut() {
                *v += 0.3 * (rng.gen::<f64>() - 0.5);
            }
        }
    }
}

#[test]
fn batch_norm_gradients() {
    let mut rng = rng::seeded(1);
    for imp in [BnImpl::Scratch, BnImpl::Fused] {
        for shape in [vec![6, 4], vec![3, 2, 4, 5]] {
            let x = random(&shape, &mut rng, 2.0, 0.5);
            for (label, config, mode) in [
                ("train", BatchNormConfig::pytorch(), Mode::Train),
                ("eval", BatchNormConfig::pytorch(), Mode::Eval),
                ("affine off", BatchNormConfig::pytorch().affine(false), Mode::Train),
                ("no running stats, eval", BatchNormConfig::pytorch().track_running_stats(false), Mode::Eval),
            ] {
                let mut layer = built(BatchNorm::with_impl(config, imp), &shape[1..]);
                perturb_params(&mut layer, &mut rng);
                if mode == Mode::Eval {
                    // non-trivial running statistics
                    for _ in 0..3 {
                        layer.forward(&random(&shape, &mut rng, 1.0, 0.2), Mode::Train).unwrap();
                    }
                }
                gradcheck(&format!("BN {imp:?} {shape:?} {label}"), &mut layer, &x, mode);
            }
        }
    }
}

/// The "lite" batch norms of the chapter's exercise (fused implementation).
#[test]
fn lite_batch_norm_gradients() {
    let mut rng = rng::seeded(11);
    for shape in [vec![6, 4], vec![3, 2, 4, 5]] {
        let x = random(&shape, &mut rng, 2.0, 0.5);
        for parts in [BnParts::CenterOnly, BnParts::ScaleOnly] {
            for mode in [Mode::Train, Mode::Eval] {
                let mut layer = built(BatchNorm::new(BatchNormConfig::pytorch().parts(parts)), &shape[1..]);
                perturb_params(&mut layer, &mut rng);
                layer.forward(&random(&shape, &mut rng, 1.0, 0.2), Mode::Train).unwrap();
                gradcheck(&format!("BN {parts:?} {shape:?} {mode:?}"), &mut layer, &x, mode);
            }
        }
    }
}

#[test]
fn frozen_affine_is_saved_but_not_learned() {
    let mut layer = built(BatchNorm::<f64>::new(BatchNormConfig::pytorch().learn_affine(false)), &[3]);
    let kinds: Vec<(String, bool)> =
        layer.state_mut().into_iter().map(|(n, s)| (n.into_owned(), matches!(s, StateMut::Param { .. }))).collect();
    assert_eq!(kinds[0], ("weight".to_string(), false));
    assert_eq!(kinds[1], ("bias".to_string(), false));
    let mut net = normlab::models::Sequential::<f64>::new().push(layer);
    net.build(&[3], &mut rng::seeded(0)).unwrap();
    let x = random(&[4, 3], &mut rng::seeded(1), 1.0, 0.0);
    let y = net.forward(&x).unwrap().clone();
    net.backward(&x, &y).unwrap();
    normlab::optim::Sgd::new(normlab::optim::SgdConfig::new(1.0)).unwrap().step(&mut net);
    let names = net.state_names();
    assert_eq!(names[0], "net.0.weight");
    for (_, s) in net.state_mut().into_iter().take(2) {
        if let StateMut::Buffer(t) = s {
            assert!(t.data().iter().all(|&v| v == 1.0 || v == 0.0), "gamma/beta unchanged: {:?}", t.data());
        } else {
            panic!("frozen gamma/beta must not be parameters");
        }
    }
}

#[test]
fn layer_norm_gradients() {
    let mut rng = rng::seeded(2);
    for (shape, k) in [(vec![4, 6], 1), (vec![3, 2, 3, 4], 3), (vec![3, 2, 3, 4], 2)] {
        let x = random(&shape, &mut rng, 2.0, 0.5);
        let mut layer = built(LayerNorm::trailing(k), &shape[1..]);
        perturb_params(&mut layer, &mut rng);
        gradcheck(&format!("LayerNorm {shape:?} over last {k}"), &mut layer, &x, Mode::Train);
    }
}

#[test]
fn conv_linear_pool_activation_gradients() {
    let mut rng = rng::seeded(3);
    let img = random(&[2, 3, 7, 6], &mut rng, 1.0, 0.0);
    gradcheck("Conv2d k3 s2 p1", &mut built(Conv2d::new(4, 3).stride(2).padding(1), &[3, 7, 6]), &img, Mode::Train);
    gradcheck("Conv2d k5 no bias", &mut built(Conv2d::new(2, 5).bias(false), &[3, 7, 6]), &img, Mode::Train);
    gradcheck("Conv2d k2 s1 p2", &mut built(Conv2d::new(3, 2).padding(2), &[3, 7, 6]), &img, Mode::Train);
    // the direct kernels (outputs at least 8 wide): the direct weight gradient
    // (27 taps), and the channels-in-lanes one (100 taps, 9 channels: one
    // vector and a padded one); 9 images, so a group of 8 and a group of 1
    let wide = random(&[9, 3, 10, 11], &mut rng, 1.0, 0.0);
    gradcheck("Conv2d k3 direct", &mut built(Conv2d::new(5, 3), &[3, 10, 11]), &wide, Mode::Train);
    let deep = random(&[9, 4, 12, 13], &mut rng, 1.0, 0.0);
    gradcheck("Conv2d k5 by channels", &mut built(Conv2d::new(9, 5), &[4, 12, 13]), &deep, Mode::Train);
    let flat = random(&[5, 7], &mut rng, 1.0, 0.0);
    gradcheck("Linear", &mut built(Linear::new(4), &[7]), &flat, Mode::Train);
    gradcheck("Linear no bias", &mut built(Linear::new(3).bias(false), &[7]), &flat, Mode::Train);
    let pool_in = random(&[2, 3, 6, 8], &mut rng, 1.0, 0.0);
    gradcheck("AvgPool2d 2/2", &mut built(AvgPool2d::new(2, 2), &[3, 6, 8]), &pool_in, Mode::Train);
    gradcheck("AvgPool2d 3/2", &mut built(AvgPool2d::new(3, 2), &[3, 6, 8]), &pool_in, Mode::Train);
    gradcheck("MaxPool2d 2/2", &mut built(MaxPool2d::new(2, 2), &[3, 6, 8]), &pool_in, Mode::Train);
    gradcheck("MaxPool2d 3/2", &mut built(MaxPool2d::new(3, 2), &[3, 6, 8]), &pool_in, Mode::Train);
    gradcheck("Sigmoid", &mut built(Sigmoid::new(), &[7]), &flat, Mode::Train);
    // ReLU: keep every input away from the kink at 0
    let away =
        Tensor::from_vec(&[5, 7], flat.data().iter().map(|v| if v.abs() < 0.05 { v + 0.1 } else { *v }).collect())
            .unwrap();
    gradcheck("ReLU", &mut built(ReLU::new(), &[7]), &away, Mode::Train);
    gradcheck("LeakyReLU", &mut built(LeakyReLU::new(0.2), &[7]), &away, Mode::Train);
    let wider = random(&[5, 7], &mut rng, 3.0, 0.0);
    gradcheck("Tanh", &mut built(Tanh::new(), &[7]), &wider, Mode::Train);
    gradcheck("SiLU", &mut built(SiLU::new(), &[7]), &wider, Mode::Train);
    gradcheck("GELU", &mut built(GELU::new(false), &[7]), &wider, Mode::Train);
    gradcheck("GELU tanh", &mut built(GELU::new(true), &[7]), &wider, Mode::Train);
    gradcheck("Flatten", &mut built(Flatten::new(), &[3, 7, 6]), &img, Mode::Train);
    gradcheck("Dropout (eval)", &mut built(Dropout::new(0.5).unwrap(), &[7]), &flat, Mode::Eval);
}

#[test]
fn dropout_backward_uses_the_forward_mask() {
    let mut layer = built(Dropout::<f64>::new(0.5).unwrap(), &[1000]);
    let x = Tensor::full(&[1, 1000], 1.0);
    let y = layer.forward(&x, Mode::Train).unwrap().clone();
    let kept = y.data().iter().filter(|&&v| v != 0.0).count();
    assert!((400..600).contains(&kept), "kept {kept} of 1000 at p = 0.5");
    assert!(y.data().iter().all(|&v| v == 0.0 || v == 2.0), "kept values are scaled by 1/(1-p)");
    let dx = layer.backward(&x, &Tensor::full(&[1, 1000], 3.0), true).unwrap();
    for (d, v) in dx.data().iter().zip(y.data()) {
        assert_eq!(*d, v * 3.0);
    }
}

#[test]
fn cross_entropy_gradient() {
    let mut rng = rng::seeded(4);
    let logits = random(&[5, 4], &mut rng, 3.0, 0.0);
    let labels = [0, 3, 1, 1, 2];
    let mut ce = CrossEntropy::<f64>::new();
    ce.forward(&logits, &labels).unwrap();
    let grad = ce.grad().clone();
    let mut z = logits.clone();
    for i in 0..z.numel() {
        let orig = z.data()[i];
        z.data_mut()[i] = orig + H;
        let lp = ce.forward(&z, &labels).unwrap().0;
        z.data_mut()[i] = orig - H;
        let lm = ce.forward(&z, &labels).unwrap().0;
        z.data_mut()[i] = orig;
        check(&format!("cross-entropy dz[{i}]"), grad.data()[i], (lp - lm) / (2.0 * H));
    }
}

/// The whole network, end to end: input gradient and a sample of every
/// parameter's gradient through conv, BN, sigmoid, pooling and linear layers.
#[test]
fn whole_bnlenet_gradients() {
    for kind in [models::ModelKind::BnLenet, models::ModelKind::BnLenetScratch, models::ModelKind::LnLenet] {
        let mut rng = rng::seeded(5);
        let mut net = models::build::<f64>(kind, &mut rng).unwrap();
        net.set_input_grad(true);
        let x = random(&[3, 1, 28, 28], &mut rng, 0.5, 0.5);
        let labels = [1, 7, 3];
        let mut ce = CrossEntropy::<f64>::new();
        let logits = net.forward(&x).unwrap();
        ce.forward(logits, &labels).unwrap();
        net.backward(&x, ce.grad()).unwrap();
        let dx = net.grad_input().clone();
        let grads: Vec<(String, Tensor<f64>)> = net
            .state_mut()
            .into_iter()
            .filter_map(|(n, s)| if let StateMut::Param { grad, .. } = s { Some((n, grad.clone())) } else { None })
            .collect();
        let mut loss_at = |net: &mut models::Sequential<f64>, x: &Tensor<f64>| {
            let logits = net.forward(x).unwrap();
            ce.forward(logits, &labels).unwrap().0
        };
        let mut xp = x.clone();
        for i in (0..x.numel()).step_by(37) {
            let orig = xp.data()[i];
            xp.data_mut()[i] = orig + H;
            let lp = loss_at(&mut net, &xp);
            xp.data_mut()[i] = orig - H;
            let lm = loss_at(&mut net, &xp);
            xp.data_mut()[i] = orig;
            check(&format!("{} dx[{i}]", kind.name()), dx.data()[i], (lp - lm) / (2.0 * H));
        }
        for (pname, grad) in &grads {
            let step = (grad.numel() / 7).max(1);
            for i in (0..grad.numel()).step_by(step) {
                let bump = |net: &mut models::Sequential<f64>, delta: f64| {
                    for (n, s) in net.state_mut() {
                        if &n == pname {
                            if let StateMut::Param { value, .. } = s {
                                value.data_mut()[i] += delta;
                            }
                        }
                    }
                };
                bump(&mut net, H);
                let lp = loss_at(&mut net, &x);
                bump(&mut net, -2.0 * H);
                let lm = loss_at(&mut net, &x);
                bump(&mut net, H);
                check(&format!("{} {pname}[{i}]", kind.name()), grad.data()[i], (lp - lm) / (2.0 * H));
            }
        }
    }
}

#[test]
fn group_norm_gradients() {
    let mut rng = rng::seeded(5);
    for (shape, groups) in [
        (vec![3, 6, 4, 5], 2),
        (vec![3, 6, 4, 5], 3),
        (vec![2, 6, 3, 3], 1),
        (vec![2, 6, 3, 3], 6),
        (vec![5, 8], 4),
        (vec![4, 6], 2),
    ] {
        for affine in [true, false] {
            let x = random(&shape, &mut rng, 2.0, 0.5);
            let mut gn = built(GroupNorm::<f64>::new(groups).affine(affine), &shape[1..]);
            perturb_params(&mut gn, &mut rng);
            gradcheck(&format!("GroupNorm({groups}) {shape:?} affine {affine}"), &mut gn, &x, Mode::Train);
        }
    }
}

/// The new activations' values in f32 against their definitions in f64
/// (PyTorch's formulas; erf from the same libm in f64): within 2e-6 of
/// max(1, |y|), and the named special points exactly.
#[test]
fn activation_values_match_their_definitions() {
    let xs: Vec<f32> = (-400..=400).map(|i| i as f32 / 40.0).collect();
    let x = Tensor::from_vec(&[1, xs.len()], xs.clone()).unwrap();
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let erf = |v: f64| libm::erf(v);
    type Case = (&'static str, Box<dyn Layer<f32>>, Box<dyn Fn(f64) -> f64>);
    let cases: Vec<Case> = vec![
        ("LeakyReLU", Box::new(LeakyReLU::new(0.01)), Box::new(|v| if v > 0.0 { v } else { 0.01 * v })),
        ("Tanh", Box::new(Tanh::new()), Box::new(|v: f64| v.tanh())),
        ("SiLU", Box::new(SiLU::new()), Box::new(move |v| v * sig(v))),
        ("GELU", Box::new(GELU::new(false)), Box::new(move |v| 0.5 * v * (1.0 + erf(v / 2f64.sqrt())))),
        (
            "GELU tanh",
            Box::new(GELU::new(true)),
            Box::new(|v: f64| {
                0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh())
            }),
        ),
    ];
    for (name, mut layer, def) in cases {
        layer.build(&[xs.len()], &mut rng::seeded(0)).unwrap();
        let y = layer.forward(&x, Mode::Train).unwrap().clone();
        for (&v, &got) in xs.iter().zip(y.data()) {
            let want = def(v as f64);
            assert!(
                (got as f64 - want).abs() <= 2e-6 * want.abs().max(1.0),
                "{name}({v}) = {got}, the definition gives {want}"
            );
        }
        assert_eq!(layer.kind(), name.split(' ').next().unwrap());
    }
    // GELU(0) = 0, GELU'(0) = 1/2; LeakyReLU's slope at 0 is PyTorch's: the negative one
    let mut gelu = built(GELU::<f64>::new(false), &[1]);
    let zero = Tensor::from_vec(&[1, 1], vec![0.0]).unwrap();
    assert_eq!(gelu.forward(&zero, Mode::Train).unwrap().data(), &[0.0]);
    let one = Tensor::from_vec(&[1, 1], vec![1.0]).unwrap();
    assert_eq!(gelu.backward(&zero, &one, true).unwrap().data(), &[0.5]);
    let mut leaky = built(LeakyReLU::<f64>::new(0.2), &[1]);
    leaky.forward(&zero, Mode::Train).unwrap();
    assert_eq!(leaky.backward(&zero, &one, true).unwrap().data(), &[0.2]);
}

/// The layer a model fuses `net` into at build (one layer), checked to be
/// `kind`.
fn fused(net: models::Sequential<f64>, example: &[usize], kind: &str) -> Box<dyn Layer<f64>> {
    let mut net = net;
    net.build(example, &mut rng::seeded(3)).unwrap();
    let mut layers = net.into_layers();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0].kind(), kind);
    layers.remove(0)
}

#[test]
fn batch_norm_fused_with_its_activation_gradients() {
    let bn = || BatchNorm::new(BatchNormConfig::pytorch());
    let cases: Vec<(models::Sequential<f64>, Vec<usize>, &str)> = vec![
        (models::Sequential::new().push(bn()).push(Tanh::new()), vec![3, 2, 3], "BatchNorm2d+Tanh"),
        (models::Sequential::new().push(bn()).push(GELU::new(false)), vec![4], "BatchNorm1d+GELU"),
        (models::Sequential::new().push(bn()).push(Sigmoid::new()), vec![2, 3, 3], "BatchNorm2d+Sigmoid"),
    ];
    for (net, example, kind) in cases {
        let mut layer = fused(net, &example, kind);
        perturb_params(layer.as_mut(), &mut rng::seeded(5));
        let mut shape = vec![5];
        shape.extend(&example);
        let x = random(&shape, &mut rng::seeded(2), 1.5, 0.3);
        for mode in [Mode::Train, Mode::Eval] {
            gradcheck(&format!("{kind} {mode:?}"), layer.as_mut(), &x, mode);
        }
    }
}

#[test]
fn residual_block_gradients() {
    use models::{Residual, Sequential};
    let bn = || BatchNorm::new(BatchNormConfig::pytorch());
    // identity shortcut: the body keeps the shape
    let body = Sequential::new()
        .push(Conv2d::new(3, 3).padding(1))
        .push(bn())
        .push(Tanh::new())
        .push(Conv2d::new(3, 3).padding(1))
        .push(bn());
    let mut block = built(Residual::new(body), &[3, 4, 4]);
    perturb_params(&mut block, &mut rng::seeded(5));
    let x = random(&[2, 3, 4, 4], &mut rng::seeded(2), 1.0, 0.0);
    gradcheck("Residual (identity)", &mut block, &x, Mode::Train);
    // a stride-2 body and a 1x1 convolution + BN shortcut
    let body = Sequential::new().push(Conv2d::new(4, 3).padding(1).stride(2)).push(bn()).push(Tanh::new());
    let shortcut = Sequential::new().push(Conv2d::new(4, 1).stride(2)).push(bn());
    let mut block = built(Residual::with_shortcut(body, shortcut), &[2, 5, 5]);
    perturb_params(&mut block, &mut rng::seeded(6));
    let x = random(&[3, 2, 5, 5], &mut rng::seeded(4), 1.0, 0.0);
    for mode in [Mode::Train, Mode::Eval] {
        gradcheck(&format!("Residual (shortcut) {mode:?}"), &mut block, &x, mode);
    }
    let names: Vec<String> = block.state_mut().into_iter().map(|(n, _)| n.into_owned()).collect();
    assert_eq!(names[0], "body.0.weight");
    assert!(names.contains(&"shortcut.1.running_mean".to_string()), "{names:?}");
}

#[test]
fn residual_block_refuses_shapes_that_do_not_add_up_and_dropout() {
    use models::{Residual, Sequential};
    let mut r = Residual::<f64>::new(Sequential::new().push(Conv2d::new(4, 3)));
    let err = r.build(&[2, 5, 5], &mut rng::seeded(0)).unwrap_err().to_string();
    assert!(err.contains("differs from") && err.contains("shortcut"), "{err}");
    let mut r = Residual::<f64>::new(Sequential::new().push(Dropout::new(0.5).unwrap()));
    let err = r.build(&[3], &mut rng::seeded(0)).unwrap_err().to_string();
    assert!(err.contains("dropout inside a residual block"), "{err}");
}

/// Santurkar et al.'s noise draws anew at every forward, so the finite
/// differences replay the same draws: the layer's random stream is put back
/// before each forward. Then `dx = s · dy` must match, and the draws must
/// follow Algorithm 1's ranges (per channel for an image input).
#[test]
fn shift_noise_gradients_and_ranges() {
    let mut rng = rng::seeded(11);
    for example in [vec![5], vec![3, 4, 2]] {
        let mut layer = built(ShiftNoise::<f64>::new(), &example);
        let mut shape = vec![4];
        shape.extend(&example);
        let x = random(&shape, &mut rng, 1.0, 0.0);
        let saved = layer.rng_mut().unwrap().clone();
        let replay = |layer: &mut ShiftNoise<f64>, x: &Tensor<f64>| {
            *layer.rng_mut().unwrap() = saved.clone();
            layer.forward(x, Mode::Train).unwrap().clone()
        };
        let y = replay(&mut layer, &x);
        let dy = random(y.shape(), &mut rng, 1.0, 0.0);
        let dx = layer.backward(&x, &dy, true).unwrap().clone();
        let mut xp = x.clone();
        for i in 0..x.numel() {
            let orig = xp.data()[i];
            xp.data_mut()[i] = orig + H;
            let lp = dot(&replay(&mut layer, &xp), &dy);
            xp.data_mut()[i] = orig - H;
            let lm = dot(&replay(&mut layer, &xp), &dy);
            xp.data_mut()[i] = orig;
            check(&format!("ShiftNoise {example:?} dx[{i}]"), dx.data()[i], (lp - lm) / (2.0 * H));
        }
        // evaluation mode is the identity, forward and backward
        assert_eq!(layer.forward(&x, Mode::Eval).unwrap().data(), x.data());
        assert_eq!(layer.backward(&x, &dy, true).unwrap().data(), dy.data());
    }
    // the ranges: on x = 0 the output is the shift m alone, on x = 1 it is s + m
    let mut layer = built(ShiftNoise::<f64>::new(), &[2, 10, 10]);
    let zeros = Tensor::zeros(&[50, 2, 10, 10]);
    let saved = layer.rng_mut().unwrap().clone();
    let m = layer.forward(&zeros, Mode::Train).unwrap().clone();
    *layer.rng_mut().unwrap() = saved;
    let sm = layer.forward(&Tensor::full(&[50, 2, 10, 10], 1.0), Mode::Train).unwrap().clone();
    for c in 0..2 {
        let (mut shifts, mut scales) = (Vec::new(), Vec::new());
        for n in 0..50 {
            for p in 0..100 {
                let i = (n * 2 + c) * 100 + p;
                shifts.push(m.data()[i]);
                scales.push(sm.data()[i] - m.data()[i]);
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (mu, sigma) = (mean(&shifts), mean(&scales));
        // one unit's per-element shifts lie within mu ± 0.1, mu in [-0.5, 0.5]
        let (lo, hi) = shifts.iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        assert!(hi - lo <= 0.2 + 1e-12 && hi - lo > 0.18, "channel {c}: shifts span {lo}..{hi}");
        assert!((-0.5..0.5).contains(&mu), "channel {c}: mean shift {mu}");
        // scales ~ N(sigma, 0.1²) around sigma in [1, 1.25]
        let sd = (scales.iter().map(|s| (s - sigma).powi(2)).sum::<f64>() / scales.len() as f64).sqrt();
        assert!((0.98..1.27).contains(&sigma) && (0.09..0.11).contains(&sd), "channel {c}: scale {sigma} ± {sd}");
    }
}

// ---- the normalizations users ask for (issue 18) ----

#[test]
fn rms_norm_gradients() {
    let mut rng = rng::seeded(21);
    for (shape, k, eps) in [(vec![4, 6], 1, None), (vec![3, 2, 3, 4], 3, Some(1e-5)), (vec![3, 2, 3, 4], 2, None)] {
        for affine in [true, false] {
            let x = random(&shape, &mut rng, 2.0, 0.3);
            let mut layer = built(RmsNorm::trailing(k).eps(eps).elementwise_affine(affine), &shape[1..]);
            perturb_params(&mut layer, &mut rng);
            gradcheck(&format!("RMSNorm {shape:?} last {k} affine {affine}"), &mut layer, &x, Mode::Train);
        }
    }
}

#[test]
fn instance_norm_gradients() {
    let mut rng = rng::seeded(22);
    for shape in [vec![3, 4, 3, 5], vec![2, 3, 7]] {
        for (label, affine, track, mode) in [
            ("default", false, false, Mode::Train),
            ("affine", true, false, Mode::Train),
            ("running stats, train", true, true, Mode::Train),
            ("running stats, eval", true, true, Mode::Eval),
        ] {
            let x = random(&shape, &mut rng, 2.0, 0.5);
            let mut layer = built(InstanceNorm::new().affine(affine).track_running_stats(track), &shape[1..]);
            perturb_params(&mut layer, &mut rng);
            for _ in 0..2 {
                layer.forward(&random(&shape, &mut rng, 1.0, 0.2), Mode::Train).unwrap();
            }
            gradcheck(&format!("InstanceNorm {shape:?} {label}"), &mut layer, &x, mode);
        }
    }
}

#[test]
fn frozen_batch_norm_gradients_reach_the_input_only() {
    let mut rng = rng::seeded(23);
    let shape = [3, 4, 2, 3];
    let mut bn = built(BatchNorm::<f64>::new(BatchNormConfig::pytorch()), &shape[1..]);
    perturb_params(&mut bn, &mut rng);
    for _ in 0..3 {
        bn.forward(&random(&shape, &mut rng, 1.0, 0.4), Mode::Train).unwrap();
    }
    let mut frozen = built(FrozenBatchNorm::from_batch_norm(&bn).unwrap(), &shape[1..]);
    let x = random(&shape, &mut rng, 2.0, 0.5);
    // the same map as the batch norm it was frozen from, in either mode
    let want = bn.forward(&x, Mode::Eval).unwrap().clone();
    for mode in [Mode::Train, Mode::Eval] {
        let got = frozen.forward(&x, mode).unwrap();
        assert!(got.data().iter().zip(want.data()).all(|(a, b)| (a - b).abs() < 1e-12), "frozen BN = BN in eval mode");
    }
    assert!(frozen.state_mut().iter().all(|(_, s)| matches!(s, StateMut::Buffer(_))), "nothing is learned");
    gradcheck("FrozenBatchNorm2d", &mut frozen, &x, Mode::Train);
}

#[test]
fn ghost_batch_norm_gradients() {
    let mut rng = rng::seeded(24);
    // 7 examples with G = 3: virtual batches of 3 and 4; G = 8 > N: plain BN
    for (shape, g) in [(vec![7, 3], 3), (vec![5, 2, 3, 2], 2), (vec![4, 3], 8)] {
        for mode in [Mode::Train, Mode::Eval] {
            let x = random(&shape, &mut rng, 2.0, 0.5);
            let mut layer = built(GhostBatchNorm::new(g), &shape[1..]);
            perturb_params(&mut layer, &mut rng);
            layer.forward(&random(&shape, &mut rng, 1.0, 0.2), Mode::Train).unwrap();
            gradcheck(&format!("GhostBatchNorm G={g} {shape:?} {mode:?}"), &mut layer, &x, mode);
        }
    }
}

#[test]
fn ghost_batch_norm_normalizes_each_virtual_batch_and_is_bn_for_one() {
    let mut rng = rng::seeded(25);
    let x = random(&[6, 2], &mut rng, 2.0, 0.5);
    let mut ghost = built(GhostBatchNorm::<f64>::new(3), &[2]);
    assert_eq!(ghost.virtual_batches(7), vec![0..3, 3..7]);
    assert_eq!(ghost.virtual_batches(2), vec![0..2]);
    let y = ghost.forward(&x, Mode::Train).unwrap().clone();
    for half in [0..3, 3..6] {
        for ch in 0..2 {
            let vals: Vec<f64> = half.clone().map(|i| y.data()[i * 2 + ch]).collect();
            let mean = vals.iter().sum::<f64>() / 3.0;
            assert!(mean.abs() < 1e-12, "each virtual batch is centred: {vals:?}");
        }
    }
    let mut whole = built(GhostBatchNorm::<f64>::new(6), &[2]);
    let mut bn = built(BatchNorm::<f64>::new(BatchNormConfig::pytorch()), &[2]);
    let (a, b) = (whole.forward(&x, Mode::Train).unwrap().clone(), bn.forward(&x, Mode::Train).unwrap());
    assert!(a.data().iter().zip(b.data()).all(|(p, q)| (p - q).abs() < 1e-12), "G = N is batch norm");
}

/// With the corrections clipped (running statistics far from the batch's)
/// r and d are locally constant, so the paper's backward pass (r, d held
/// constant) is the true gradient and finite differences check it. The
/// momentum is 0 so that the forward passes of the check do not move the
/// running statistics.
#[test]
fn batch_renorm_gradients_with_clipped_corrections_and_in_eval() {
    let mut rng = rng::seeded(26);
    let schedule = RenormSchedule { rmax: 1.5, dmax: 0.5, warmup_steps: 0, rmax_steps: 0, dmax_steps: 0 };
    for shape in [vec![6, 3], vec![3, 2, 3, 2]] {
        let x = random(&shape, &mut rng, 1.0, 0.5);
        let mut layer = built(BatchRenorm::new(schedule).momentum(0.0), &shape[1..]);
        perturb_params(&mut layer, &mut rng);
        let c = shape[1];
        for (name, value) in [("running_mean", 10.0), ("running_var", 100.0)] {
            for (n, s) in layer.state_mut() {
                if n == name {
                    if let StateMut::Buffer(t) = s {
                        *t = Tensor::full(&[c], value);
                    }
                }
            }
        }
        layer.forward(&x, Mode::Train).unwrap();
        let (r, d) = layer.corrections();
        assert!(r.iter().all(|&r| (r - 1.0 / 1.5).abs() < 1e-12) && d.iter().all(|&d| d == -0.5), "{r:?} {d:?}");
        gradcheck(&format!("BatchRenorm {shape:?} clipped"), &mut layer, &x, Mode::Train);
        gradcheck(&format!("BatchRenorm {shape:?} eval"), &mut layer, &x, Mode::Eval);
    }
}

/// Unclipped, r = sigma_B/sigma depends on x, and the backward pass holds it
/// constant: dx must be the gradient of the output with r and d frozen at
/// their values, i.e. batch norm's gradient scaled by r (dbeta unchanged,
/// dgamma = Σ dy·(x_n·r + d)).
#[test]
fn batch_renorm_backward_holds_r_and_d_constant() {
    let mut rng = rng::seeded(27);
    let shape = [8, 3];
    let x = random(&shape, &mut rng, 1.0, 0.5);
    let schedule = RenormSchedule { rmax: 100.0, dmax: 100.0, warmup_steps: 0, rmax_steps: 0, dmax_steps: 0 };
    let mut renorm = built(BatchRenorm::<f64>::new(schedule), &shape[1..]);
    let mut bn = built(BatchNorm::<f64>::new(BatchNormConfig::pytorch()), &shape[1..]);
    // move the running statistics away from the batch's
    renorm.forward(&random(&shape, &mut rng, 3.0, 2.0), Mode::Train).unwrap();
    let y = renorm.forward(&x, Mode::Train).unwrap().clone();
    let (r, d) = (renorm.corrections().0.to_vec(), renorm.corrections().1.to_vec());
    assert!(r.iter().all(|&r| (r - 1.0).abs() > 1e-3), "r unclipped and not 1: {r:?}");
    let ybn = bn.forward(&x, Mode::Train).unwrap().clone();
    for (i, (a, b)) in y.data().iter().zip(ybn.data()).enumerate() {
        assert!((a - (b * r[i % 3] + d[i % 3])).abs() < 1e-10, "forward = BN·r + d");
    }
    let dy = random(&shape, &mut rng, 1.0, 0.0);
    let dx = renorm.backward(&x, &dy, true).unwrap().clone();
    let dxbn = bn.backward(&x, &dy, true).unwrap().clone();
    for (i, (a, b)) in dx.data().iter().zip(dxbn.data()).enumerate() {
        assert!((a - b * r[i % 3]).abs() < 1e-10, "dx = r · BN's dx at {i}: {a} vs {}", b * r[i % 3]);
    }
}

#[test]
fn batch_renorm_schedule_is_the_papers() {
    let s = RenormSchedule::paper();
    assert_eq!(s.limits(0), (1.0, 0.0));
    assert_eq!(s.limits(5000), (1.0, 0.0));
    let (r, d) = s.limits(15_000);
    assert!((r - (1.0 + 2.0 * 10_000.0 / 35_000.0)).abs() < 1e-12 && (d - 2.5).abs() < 1e-12, "{r} {d}");
    assert_eq!(s.limits(25_000).1, 5.0);
    assert_eq!(s.limits(40_000), (3.0, 5.0));
    assert_eq!(s.limits(1_000_000), (3.0, 5.0));
    let scaled = RenormSchedule::scaled_to(1000);
    assert_eq!((scaled.warmup_steps, scaled.dmax_steps, scaled.rmax_steps), (50, 250, 400));
    assert!(RenormSchedule { rmax: 0.5, ..s }.validate().is_err());
    assert!(RenormSchedule { warmup_steps: 50_000, ..s }.validate().is_err());
}
