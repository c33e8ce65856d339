//! PyTorch parity: every layer, the loss and whole BNLeNet SGD steps against
//! fixtures written by `tools/make_fixtures.py` (PyTorch 2.15, float32).
//! Errors are `|ours - torch| / max(1, |torch|)`; each comparison prints its
//! largest error (`cargo test --test parity -- --nocapture`).

use crate::common;

use common::{close_t, compare_state, fixture, get_grad, get_state, load_state, set_state, Fixture};
use normlab::layers::*;
use normlab::loss::CrossEntropy;
use normlab::models;
use normlab::optim::{Sgd, SgdConfig};
use normlab::{rng, Tensor};

const TOL: f64 = 1e-5;

fn built<L: Layer<f32>>(mut layer: L, example: &[usize]) -> L {
    layer.build(example, &mut rng::seeded(0)).unwrap();
    layer
}

fn bn(config: BatchNormConfig, imp: BnImpl, x: &Tensor<f32>) -> BatchNorm<f32> {
    built(BatchNorm::with_impl(config, imp), &x.shape()[1..])
}

fn check_backward(f: &Fixture, layer: &mut dyn Layer<f32>, x: &Tensor<f32>, params: &[(&str, &str)], tag: &str) {
    let dx = layer.backward(x, &f.t("dy"), true).unwrap().clone();
    close_t(&format!("{tag} dx"), &dx, &f.t("dx"), TOL);
    for (param, key) in params {
        close_t(&format!("{tag} {key}"), &get_grad(layer, param), &f.t(key), TOL);
    }
}

#[test]
fn batch_norm_training_matches_pytorch() {
    for name in ["bn_fc_train", "bn_conv_train"] {
        let f = fixture(name);
        for imp in [BnImpl::Scratch, BnImpl::Fused] {
            let tag = format!("{name} {imp:?}");
            let x = f.t("x");
            let mut layer = bn(BatchNormConfig::pytorch(), imp, &x);
            for (p, k) in [
                ("weight", "weight"),
                ("bias", "bias"),
                ("running_mean", "running_mean_in"),
                ("running_var", "running_var_in"),
            ] {
                set_state(&mut layer, p, &f.t(k));
            }
            let y = layer.forward(&x, Mode::Train).unwrap().clone();
            close_t(&format!("{tag} y"), &y, &f.t("y"), TOL);
            close_t(
                &format!("{tag} running_mean"),
                &get_state(&mut layer, "running_mean"),
                &f.t("running_mean_out"),
                TOL,
            );
            close_t(&format!("{tag} running_var"), &get_state(&mut layer, "running_var"), &f.t("running_var_out"), TOL);
            assert_eq!(layer.num_batches_tracked(), f.i("num_batches_tracked_out")[0]);
            check_backward(&f, &mut layer, &x, &[("weight", "dweight"), ("bias", "dbias")], &tag);
        }
    }
}

#[test]
fn batch_norm_eval_uses_running_statistics_and_takes_one_example() {
    for name in ["bn_fc_eval", "bn_conv_eval"] {
        let f = fixture(name);
        for imp in [BnImpl::Scratch, BnImpl::Fused] {
            let tag = format!("{name} {imp:?}");
            let x = f.t("x");
            let mut layer = bn(BatchNormConfig::pytorch(), imp, &x);
            for (p, k) in [
                ("weight", "weight"),
                ("bias", "bias"),
                ("running_mean", "running_mean_in"),
                ("running_var", "running_var_in"),
            ] {
                set_state(&mut layer, p, &f.t(k));
            }
            let y = layer.forward(&x, Mode::Eval).unwrap().clone();
            close_t(&format!("{tag} y"), &y, &f.t("y"), TOL);
            check_backward(&f, &mut layer, &x, &[("weight", "dweight"), ("bias", "dbias")], &tag);
            // eval updates nothing
            close_t(
                &format!("{tag} running_mean unchanged"),
                &get_state(&mut layer, "running_mean"),
                &f.t("running_mean_in"),
                0.0,
            );
            assert_eq!(layer.num_batches_tracked(), 0);
            let y1 = layer.forward(&f.t("x1"), Mode::Eval).unwrap().clone();
            close_t(&format!("{tag} single example"), &y1, &f.t("y1"), TOL);
        }
    }
}

#[test]
fn batch_norm_momentum_none_is_a_cumulative_average() {
    let f = fixture("bn_momentum_none");
    for imp in [BnImpl::Scratch, BnImpl::Fused] {
        let x1 = f.t("x1");
        let mut layer = bn(BatchNormConfig::pytorch().momentum(Momentum::CumulativeAverage), imp, &x1);
        for (p, k) in [
            ("weight", "weight"),
            ("bias", "bias"),
            ("running_mean", "running_mean_in"),
            ("running_var", "running_var_in"),
        ] {
            set_state(&mut layer, p, &f.t(k));
        }
        layer.forward(&x1, Mode::Train).unwrap();
        layer.forward(&f.t("x2"), Mode::Train).unwrap();
        let y3 = layer.forward(&f.t("x3"), Mode::Train).unwrap().clone();
        close_t(&format!("momentum None {imp:?} y3"), &y3, &f.t("y3"), TOL);
        close_t(
            &format!("momentum None {imp:?} running_mean"),
            &get_state(&mut layer, "running_mean"),
            &f.t("running_mean_out"),
            TOL,
        );
        close_t(
            &format!("momentum None {imp:?} running_var"),
            &get_state(&mut layer, "running_var"),
            &f.t("running_var_out"),
            TOL,
        );
        assert_eq!(layer.num_batches_tracked(), f.i("num_batches_tracked_out")[0]);
    }
}

#[test]
fn batch_norm_without_affine_parameters() {
    let f = fixture("bn_affine_off");
    for imp in [BnImpl::Scratch, BnImpl::Fused] {
        let x = f.t("x");
        let mut layer = bn(BatchNormConfig::pytorch().affine(false), imp, &x);
        let names: Vec<String> = layer.state_mut().into_iter().map(|(n, _)| n.into_owned()).collect();
        assert_eq!(names, ["running_mean", "running_var", "num_batches_tracked"]);
        set_state(&mut layer, "running_mean", &f.t("running_mean_in"));
        set_state(&mut layer, "running_var", &f.t("running_var_in"));
        let y = layer.forward(&x, Mode::Train).unwrap().clone();
        close_t(&format!("affine off {imp:?} y"), &y, &f.t("y"), TOL);
        close_t(
            &format!("affine off {imp:?} running_var"),
            &get_state(&mut layer, "running_var"),
            &f.t("running_var_out"),
            TOL,
        );
        check_backward(&f, &mut layer, &x, &[], &format!("affine off {imp:?}"));
    }
}

#[test]
fn batch_norm_without_running_stats_uses_batch_stats_in_eval() {
    let f = fixture("bn_no_tracking");
    for imp in [BnImpl::Scratch, BnImpl::Fused] {
        let x = f.t("x");
        let mut layer = bn(BatchNormConfig::pytorch().track_running_stats(false), imp, &x);
        let names: Vec<String> = layer.state_mut().into_iter().map(|(n, _)| n.into_owned()).collect();
        assert_eq!(names, ["weight", "bias"]);
        set_state(&mut layer, "weight", &f.t("weight"));
        set_state(&mut layer, "bias", &f.t("bias"));
        let y = layer.forward(&x, Mode::Eval).unwrap().clone();
        close_t(&format!("no tracking {imp:?} y"), &y, &f.t("y"), TOL);
        check_backward(
            &f,
            &mut layer,
            &x,
            &[("weight", "dweight"), ("bias", "dbias")],
            &format!("no tracking {imp:?}"),
        );
    }
}

#[test]
fn batch_norm_d2l_variant_matches_the_chapter_scratch_code() {
    let f = fixture("bn_d2l");
    for (p, imp) in [("", BnImpl::Scratch), ("", BnImpl::Fused), ("fc_", BnImpl::Scratch), ("fc_", BnImpl::Fused)] {
        let tag = format!("d2l {p}{imp:?}");
        let x = f.t(&format!("{p}x"));
        let mut layer = bn(BatchNormConfig::d2l(), imp, &x);
        for (name, k) in [
            ("weight", "gamma"),
            ("bias", "beta"),
            ("running_mean", "moving_mean_in"),
            ("running_var", "moving_var_in"),
        ] {
            set_state(&mut layer, name, &f.t(&format!("{p}{k}")));
        }
        let y = layer.forward(&x, Mode::Train).unwrap().clone();
        close_t(&format!("{tag} y"), &y, &f.t(&format!("{p}y")), TOL);
        close_t(
            &format!("{tag} moving_mean"),
            &get_state(&mut layer, "running_mean"),
            &f.t(&format!("{p}moving_mean_out")),
            TOL,
        );
        close_t(
            &format!("{tag} moving_var"),
            &get_state(&mut layer, "running_var"),
            &f.t(&format!("{p}moving_var_out")),
            TOL,
        );
        let dx = layer.backward(&x, &f.t(&format!("{p}dy")), true).unwrap().clone();
        close_t(&format!("{tag} dx"), &dx, &f.t(&format!("{p}dx")), TOL);
        close_t(&format!("{tag} dgamma"), &get_grad(&mut layer, "weight"), &f.t(&format!("{p}dgamma")), TOL);
        close_t(&format!("{tag} dbeta"), &get_grad(&mut layer, "bias"), &f.t(&format!("{p}dbeta")), TOL);
    }
}

#[test]
fn layer_norm_matches_pytorch() {
    for (name, dims) in [("layer_norm", 2), ("layer_norm_1d", 1)] {
        let f = fixture(name);
        let x = f.t("x");
        let shape = f.t::<f32>("weight").shape().to_vec();
        for mut layer in
            [built(LayerNorm::new(&shape), &x.shape()[1..]), built(LayerNorm::trailing(dims), &x.shape()[1..])]
        {
            set_state(&mut layer, "weight", &f.t("weight"));
            set_state(&mut layer, "bias", &f.t("bias"));
            for mode in [Mode::Train, Mode::Eval] {
                let y = layer.forward(&x, mode).unwrap().clone();
                close_t(&format!("{name} y {mode:?}"), &y, &f.t("y"), TOL);
            }
            check_backward(&f, &mut layer, &x, &[("weight", "dweight"), ("bias", "dbias")], name);
        }
    }
}

#[test]
fn conv2d_matches_pytorch() {
    let cases: [(&str, Conv2d<f32>, bool); 2] = [
        ("conv2d", Conv2d::new(4, 3).stride(2).padding(1), true),
        ("conv2d_nobias", Conv2d::new(3, 5).bias(false), false),
    ];
    for (name, conv, has_bias) in cases {
        let f = fixture(name);
        let x = f.t("x");
        let mut layer = built(conv, &x.shape()[1..]);
        set_state(&mut layer, "weight", &f.t("weight"));
        let mut grads = vec![("weight", "dweight")];
        if has_bias {
            set_state(&mut layer, "bias", &f.t("bias"));
            grads.push(("bias", "dbias"));
        } else {
            assert_eq!(layer.state_mut().len(), 1, "no bias parameter");
        }
        let y = layer.forward(&x, Mode::Train).unwrap().clone();
        close_t(&format!("{name} y"), &y, &f.t("y"), TOL);
        check_backward(&f, &mut layer, &x, &grads, name);
    }
}

#[test]
fn linear_matches_pytorch() {
    for (name, has_bias) in [("linear", true), ("linear_nobias", false)] {
        let f = fixture(name);
        let x = f.t("x");
        let mut layer = built(Linear::new(5).bias(has_bias), &x.shape()[1..]);
        set_state(&mut layer, "weight", &f.t("weight"));
        let mut grads = vec![("weight", "dweight")];
        if has_bias {
            set_state(&mut layer, "bias", &f.t("bias"));
            grads.push(("bias", "dbias"));
        }
        let y = layer.forward(&x, Mode::Train).unwrap().clone();
        close_t(&format!("{name} y"), &y, &f.t("y"), TOL);
        check_backward(&f, &mut layer, &x, &grads, name);
    }
}

#[test]
fn pooling_matches_pytorch() {
    let cases: Vec<(&str, Box<dyn Layer<f32>>)> = vec![
        ("avgpool", Box::new(AvgPool2d::new(2, 2))),
        ("maxpool", Box::new(MaxPool2d::new(2, 2))),
        ("maxpool_k3s2", Box::new(MaxPool2d::new(3, 2))),
    ];
    for (name, mut layer) in cases {
        let f = fixture(name);
        let x = f.t("x");
        layer.build(&x.shape()[1..], &mut rng::seeded(0)).unwrap();
        let y = layer.forward(&x, Mode::Train).unwrap().clone();
        close_t(&format!("{name} y"), &y, &f.t("y"), TOL);
        check_backward(&f, layer.as_mut(), &x, &[], name);
    }
}

#[test]
fn activations_match_pytorch() {
    let f = fixture("sigmoid_relu");
    let x = f.t("x");
    let mut s = built(Sigmoid::new(), &x.shape()[1..]);
    close_t("sigmoid y", &s.forward(&x, Mode::Train).unwrap().clone(), &f.t("sigmoid_y"), TOL);
    close_t("sigmoid dx", &s.backward(&x, &f.t("dy"), true).unwrap().clone(), &f.t("sigmoid_dx"), TOL);
    let mut r = built(ReLU::new(), &x.shape()[1..]);
    close_t("relu y", &r.forward(&x, Mode::Train).unwrap().clone(), &f.t("relu_y"), TOL);
    close_t("relu dx", &r.backward(&x, &f.t("dy"), true).unwrap().clone(), &f.t("relu_dx"), TOL);
}

#[test]
fn cross_entropy_matches_pytorch() {
    let f = fixture("cross_entropy");
    let labels: Vec<usize> = f.i("labels").iter().map(|&l| l as usize).collect();
    let mut ce = CrossEntropy::<f32>::new();
    let (loss, _) = ce.forward(&f.t("logits"), &labels).unwrap();
    common::assert_close("cross-entropy loss", &[loss], &f.f("loss"), TOL);
    close_t("cross-entropy dlogits", ce.grad(), &f.t("dlogits"), TOL);
}

/// Copies `prefix + name` of every state entry from the fixture into the model.
fn labels_of(f: &Fixture, key: &str) -> Vec<usize> {
    f.i(key).iter().map(|&l| l as usize).collect()
}

#[test]
fn bnlenet_sgd_step_matches_pytorch() {
    let f = fixture("bnlenet_step");
    for kind in [models::ModelKind::BnLenet, models::ModelKind::BnLenetScratch] {
        let tag = kind.name();
        let mut net = models::build::<f32>(kind, &mut rng::seeded(0)).unwrap();
        load_state(&mut net, &f, "before.");
        let x = f.t("x");
        let labels = labels_of(&f, "labels");
        let mut ce = CrossEntropy::new();
        let logits = net.forward(&x).unwrap();
        close_t(&format!("{tag} logits"), logits, &f.t("logits"), TOL);
        let (loss, _) = ce.forward(logits, &labels).unwrap();
        common::assert_close(&format!("{tag} loss"), &[loss], &f.f("loss"), TOL);
        net.backward(&x, ce.grad()).unwrap();
        for (name, s) in net.state_mut() {
            if let StateMut::Param { grad, .. } = s {
                close_t(&format!("{tag} grad.{name}"), grad, &f.t(&format!("grad.{name}")), TOL);
            }
        }
        Sgd::new(SgdConfig::new(0.1)).unwrap().step(&mut net);
        compare_state(&mut net, &f, "after.", tag, TOL);
        net.eval();
        close_t(&format!("{tag} eval logits"), net.forward(&x).unwrap(), &f.t("eval_logits"), TOL);
    }
}

#[test]
fn bnlenet_two_sgd_momentum_weight_decay_steps_match_pytorch() {
    let f = fixture("bnlenet_momentum");
    let mut net = models::bn_lenet::<f32>(&mut rng::seeded(0)).unwrap();
    load_state(&mut net, &f, "before.");
    let mut sgd = Sgd::new(SgdConfig { momentum: 0.9, weight_decay: 1e-3, ..SgdConfig::new(0.05) }).unwrap();
    let mut ce = CrossEntropy::new();
    for step in ["1", "2"] {
        let x = f.t(&format!("x{step}"));
        let labels = labels_of(&f, &format!("labels{step}"));
        let logits = net.forward(&x).unwrap();
        let (loss, _) = ce.forward(logits, &labels).unwrap();
        common::assert_close(&format!("momentum step {step} loss"), &[loss], &f.f(&format!("loss{step}")), TOL);
        net.backward(&x, ce.grad()).unwrap();
        sgd.step(&mut net);
    }
    compare_state(&mut net, &f, "after.", "momentum+wd", TOL);
}

#[test]
fn group_norm_matches_pytorch() {
    let fx = fixture("group_norm");
    for (prefix, groups, affine) in [("conv", 2, true), ("fc", 2, true), ("noaff", 3, false)] {
        let x: Tensor<f32> = fx.t(&format!("{prefix}_x"));
        let mut gn = GroupNorm::<f32>::new(groups).affine(affine);
        gn.build(&x.shape()[1..], &mut rng::seeded(0)).unwrap();
        if affine {
            set_state(&mut gn, "weight", &fx.t(&format!("{prefix}_weight")));
            set_state(&mut gn, "bias", &fx.t(&format!("{prefix}_bias")));
        }
        let y = gn.forward(&x, Mode::Train).unwrap().clone();
        close_t(&format!("{prefix} y"), &y, &fx.t(&format!("{prefix}_y")), 1e-5);
        // prediction mode is the same computation: no running statistics
        let y_eval = gn.forward(&x, Mode::Eval).unwrap().clone();
        assert_eq!(y_eval, y);
        let dx = gn.backward(&x, &fx.t(&format!("{prefix}_dy")), true).unwrap().clone();
        close_t(&format!("{prefix} dx"), &dx, &fx.t(&format!("{prefix}_dx")), 1e-5);
        if affine {
            close_t(
                &format!("{prefix} dweight"),
                &get_grad(&mut gn, "weight"),
                &fx.t(&format!("{prefix}_dweight")),
                1e-5,
            );
            close_t(&format!("{prefix} dbias"), &get_grad(&mut gn, "bias"), &fx.t(&format!("{prefix}_dbias")), 1e-5);
        } else {
            assert!(gn.state_mut().is_empty());
        }
    }
}

// ---- the normalizations users ask for (issue 18): tests/fixtures/user_norms.safetensors,
// written by tools/make_user_norm_fixtures.py ----

#[test]
fn rms_norm_matches_pytorch() {
    let fx = fixture("user_norms");
    for (prefix, dims, eps, affine) in
        [("rms", 2, None, true), ("rms1d", 1, Some(1e-5), true), ("rmsnoaff", 1, None, false)]
    {
        let x: Tensor<f32> = fx.t(&format!("{prefix}_x"));
        let mut rms = RmsNorm::<f32>::trailing(dims).eps(eps).elementwise_affine(affine);
        rms.build(&x.shape()[1..], &mut rng::seeded(0)).unwrap();
        if affine {
            set_state(&mut rms, "weight", &fx.t(&format!("{prefix}_weight")));
        }
        let y = rms.forward(&x, Mode::Train).unwrap().clone();
        close_t(&format!("{prefix} y"), &y, &fx.t(&format!("{prefix}_y")), 1e-5);
        let dx = rms.backward(&x, &fx.t(&format!("{prefix}_dy")), true).unwrap().clone();
        close_t(&format!("{prefix} dx"), &dx, &fx.t(&format!("{prefix}_dx")), 1e-5);
        if affine {
            let dw = get_grad(&mut rms, "weight");
            close_t(&format!("{prefix} dweight"), &dw, &fx.t(&format!("{prefix}_dweight")), 1e-5);
        } else {
            assert!(rms.state_mut().is_empty());
        }
    }
}

#[test]
fn instance_norm_matches_pytorch() {
    let fx = fixture("user_norms");
    for prefix in ["in", "in1d"] {
        let x: Tensor<f32> = fx.t(&format!("{prefix}_x"));
        let mut inorm = InstanceNorm::<f32>::new();
        inorm.build(&x.shape()[1..], &mut rng::seeded(0)).unwrap();
        assert!(inorm.state_mut().is_empty(), "PyTorch's defaults: no affine, no running statistics");
        let y = inorm.forward(&x, Mode::Train).unwrap().clone();
        close_t(&format!("{prefix} y"), &y, &fx.t(&format!("{prefix}_y")), 1e-5);
        assert_eq!(inorm.forward(&x, Mode::Eval).unwrap(), &y, "no running statistics: eval = train");
        let dx = inorm.backward(&x, &fx.t(&format!("{prefix}_dy")), true).unwrap().clone();
        close_t(&format!("{prefix} dx"), &dx, &fx.t(&format!("{prefix}_dx")), 1e-5);
    }
    // affine, with running statistics: a training step, then prediction mode
    let x: Tensor<f32> = fx.t("inrun_x");
    let mut inorm = InstanceNorm::<f32>::new().affine(true).track_running_stats(true);
    inorm.build(&x.shape()[1..], &mut rng::seeded(0)).unwrap();
    set_state(&mut inorm, "weight", &fx.t("inrun_weight"));
    set_state(&mut inorm, "bias", &fx.t("inrun_bias"));
    let y = inorm.forward(&x, Mode::Train).unwrap().clone();
    close_t("inrun y", &y, &fx.t("inrun_y"), 1e-5);
    let dx = inorm.backward(&x, &fx.t("inrun_dy"), true).unwrap().clone();
    close_t("inrun dx", &dx, &fx.t("inrun_dx"), 1e-5);
    close_t("inrun dweight", &get_grad(&mut inorm, "weight"), &fx.t("inrun_dweight"), 1e-5);
    close_t("inrun dbias", &get_grad(&mut inorm, "bias"), &fx.t("inrun_dbias"), 1e-5);
    close_t("inrun running_mean", &get_state(&mut inorm, "running_mean"), &fx.t("inrun_running_mean"), 1e-6);
    close_t("inrun running_var", &get_state(&mut inorm, "running_var"), &fx.t("inrun_running_var"), 1e-6);
    let x2: Tensor<f32> = fx.t("inrun_x2");
    let y2 = inorm.forward(&x2, Mode::Eval).unwrap().clone();
    close_t("inrun y_eval", &y2, &fx.t("inrun_y_eval"), 1e-5);
    let dx2 = inorm.backward(&x2, &fx.t("inrun_dy2"), true).unwrap().clone();
    close_t("inrun dx_eval", &dx2, &fx.t("inrun_dx_eval"), 1e-5);
}

/// torchvision's FrozenBatchNorm2d formula evaluated by PyTorch (torchvision
/// itself is not in the fixture venv; the script writes its forward out).
#[test]
fn frozen_batch_norm_matches_torchvisions_formula() {
    let fx = fixture("user_norms");
    let x: Tensor<f32> = fx.t("frozen_x");
    let mut frozen = FrozenBatchNorm::<f32>::new();
    frozen.build(&x.shape()[1..], &mut rng::seeded(0)).unwrap();
    let names: Vec<String> = frozen.state_mut().into_iter().map(|(n, _)| n.into_owned()).collect();
    assert_eq!(names, ["weight", "bias", "running_mean", "running_var"], "torchvision's buffers");
    for name in names {
        set_state(&mut frozen, &name, &fx.t(&format!("frozen_{name}")));
    }
    let y = frozen.forward(&x, Mode::Train).unwrap().clone();
    close_t("frozen y", &y, &fx.t("frozen_y"), 1e-5);
    let dx = frozen.backward(&x, &fx.t("frozen_dy"), true).unwrap().clone();
    close_t("frozen dx", &dx, &fx.t("frozen_dx"), 1e-5);
}
