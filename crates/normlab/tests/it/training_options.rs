//! The training options against PyTorch (fixtures written by
//! `tools/make_training_fixtures.py`, PyTorch 2.15, float32): AdamW and
//! Nesterov SGD steps on a small network with label smoothing, the smoothed loss and its
//! gradient, and every learning-rate schedule step by step. Errors are
//! `|ours - torch| / max(1, |torch|)`.

use crate::common;

use common::{assert_close, compare_state, fixture, load_state};
use normlab::loss::CrossEntropy;
use normlab::models::{LayerSpec, ModelSpec, Sequential};
use normlab::optim::{AdamW, AdamWConfig, Sgd, SgdConfig};
use normlab::train::{Schedule, ScheduleKind};
use normlab::{rng, Tensor};

const TOL: f64 = 1e-5;

fn labels(f: &common::Fixture, key: &str) -> Vec<usize> {
    f.i(key).iter().map(|&l| l as usize).collect()
}

/// The fixtures' small network with the fixture's initial state.
fn small_net(f: &common::Fixture) -> Sequential<f32> {
    #[rustfmt::skip]
    let spec = ModelSpec::new(vec![
        LayerSpec::Conv2d { out_channels: 4, kernel: 3, stride: 1, padding: 1, bias: false, init: Default::default() },
        LayerSpec::batch_norm(), LayerSpec::Relu, LayerSpec::MaxPool { kernel: 2, stride: None },
        LayerSpec::Flatten, LayerSpec::Linear { out_features: 5, bias: true, init: Default::default() },
    ]);
    let mut net = spec.build::<f32>(Some(&[1, 6, 6]), &mut rng::seeded(0)).unwrap();
    load_state(&mut net, f, "before.");
    net.train();
    net
}

/// The fixture's three train-mode steps on cross-entropy with label
/// smoothing 0.1, `step` updating the network after each backward pass;
/// each loss is checked against PyTorch's when `check_loss`.
fn three_steps(
    f: &common::Fixture,
    net: &mut Sequential<f32>,
    check_loss: bool,
    mut step: impl FnMut(&mut Sequential<f32>),
) {
    let mut ce = CrossEntropy::with_label_smoothing(0.1).unwrap();
    for i in 1..=3 {
        let x: Tensor<f32> = f.t(&format!("x{i}"));
        let (loss, _) = ce.forward(net.forward(&x).unwrap(), &labels(f, &format!("labels{i}"))).unwrap();
        if check_loss {
            assert_close(&format!("step {i} loss"), &[loss], &f.f(&format!("loss{i}")), TOL);
        }
        net.backward(&x, ce.grad()).unwrap();
        step(net);
    }
}

/// Three AdamW steps (decoupled weight decay, bias correction, betas and
/// eps off their defaults) on cross-entropy with label smoothing 0.1:
/// every loss and every parameter and running statistic after the steps.
#[test]
fn adamw_steps_with_label_smoothing_match_pytorch() {
    let f = fixture("adamw_steps");
    let mut net = small_net(&f);
    let config = AdamWConfig { lr: 0.01, beta1: 0.9, beta2: 0.99, eps: 1e-6, weight_decay: 0.05 };
    let mut adamw = AdamW::new(config).unwrap();
    three_steps(&f, &mut net, true, |n| adamw.step(n));
    assert_eq!(adamw.steps(), 3);
    compare_state(&mut net, &f, "after.", "after three AdamW steps", 1e-6);
}

/// Three steps of SGD with Nesterov momentum and weight decay (the fast
/// preset's optimizer) on cross-entropy with label smoothing 0.1; plain
/// momentum ends elsewhere, so the fixture tells the two apart.
#[test]
fn sgd_nesterov_steps_match_pytorch() {
    let f = fixture("sgd_nesterov_steps");
    let config = SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: true, ..SgdConfig::new(0.1) };
    let mut net = small_net(&f);
    let mut sgd = Sgd::new(config).unwrap();
    three_steps(&f, &mut net, true, |n| sgd.step(n));
    compare_state(&mut net, &f, "after.", "after three Nesterov SGD steps", 1e-6);

    let mut plain_net = small_net(&f);
    let mut plain = Sgd::new(SgdConfig { nesterov: false, ..config }).unwrap();
    three_steps(&f, &mut plain_net, false, |n| plain.step(n));
    let differs = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        compare_state(&mut plain_net, &f, "after.", "plain momentum", 1e-6)
    }));
    assert!(differs.is_err(), "plain momentum matched the Nesterov fixture: the test cannot tell them apart");
}

/// The smoothed loss and its gradient for two values of epsilon.
#[test]
fn label_smoothing_loss_and_gradient_match_pytorch() {
    let f = fixture("label_smoothing");
    let logits: Tensor<f32> = f.t("logits");
    for (k, eps) in [(1, 0.1), (2, 0.35)] {
        let mut ce = CrossEntropy::with_label_smoothing(eps).unwrap();
        let (loss, _) = ce.forward(&logits, &labels(&f, "labels")).unwrap();
        assert_close(&format!("loss, eps {eps}"), &[loss], &f.f(&format!("loss_{k}")), TOL);
        let grad: Vec<f64> = ce.grad().data().iter().map(|&v| v as f64).collect();
        assert_close(&format!("dlogits, eps {eps}"), &grad, &f.f(&format!("dlogits_{k}")), TOL);
    }
    for bad in [-0.1, 1.0, f64::NAN] {
        let e = CrossEntropy::<f32>::with_label_smoothing(bad).err().expect("refused").to_string();
        assert!(e.contains("--label-smoothing"), "{e}");
    }
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    schedule: String,
    lr: f64,
    epochs: usize,
    steps_per_epoch: usize,
    warmup_epochs: Option<f64>,
    step_size: Option<usize>,
    gamma: f64,
    lrs: Vec<f64>,
}

/// Every step's rate of each case against PyTorch's schedulers (StepLR,
/// CosineAnnealingLR, OneCycleLR, linear warm-up as a LambdaLR).
#[test]
fn schedules_match_pytorchs_schedulers_step_by_step() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/schedules.json");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let cases: Vec<Case> = serde_json::from_value(doc["cases"].clone()).unwrap();
    assert_eq!(cases.len(), 6);
    for c in cases {
        let kind: ScheduleKind = c.schedule.parse().unwrap();
        let s = Schedule { kind, warmup_epochs: c.warmup_epochs, step_size: c.step_size, gamma: c.gamma };
        s.validate(c.epochs).unwrap();
        let total = c.epochs * c.steps_per_epoch;
        assert_eq!(c.lrs.len(), total, "{}", c.name);
        let ours: Vec<f64> = (0..total).map(|t| s.lr(c.lr, t, c.steps_per_epoch, total)).collect();
        // relative to the base rate: a rate near 0 is compared as such
        let scale = |v: &[f64]| v.iter().map(|x| x / c.lr).collect::<Vec<_>>();
        assert_close(&format!("schedule {}", c.name), &scale(&ours), &scale(&c.lrs), 1e-9);
    }
    let step = Schedule { step_size: None, ..Schedule::of(ScheduleKind::Step) };
    assert!(step.validate(5).unwrap_err().to_string().contains("--step-size"));
    let warm = Schedule { warmup_epochs: Some(6.0), ..Schedule::of(ScheduleKind::Cosine) };
    assert!(warm.validate(5).unwrap_err().to_string().contains("--warmup-epochs"));
    assert!("linear".parse::<ScheduleKind>().unwrap_err().contains("one-cycle"));
}

/// AdamW refuses what PyTorch would take but no one means: a beta of 1
/// or more, a non-positive eps.
#[test]
fn adamw_settings_are_checked() {
    for (config, needle) in [
        (AdamWConfig { beta1: 1.0, ..AdamWConfig::new(1e-3) }, "--beta1"),
        (AdamWConfig { beta2: 1.5, ..AdamWConfig::new(1e-3) }, "--beta2"),
        (AdamWConfig { eps: 0.0, ..AdamWConfig::new(1e-3) }, "--adam-eps"),
        (AdamWConfig { weight_decay: -1.0, ..AdamWConfig::new(1e-3) }, "weight decay"),
    ] {
        let e = AdamW::<f32>::new(config).err().expect("refused").to_string();
        assert!(e.contains(needle), "{e}");
    }
}

/// A trainer saved after one epoch and resumed runs the remaining two
/// exactly as one that never stopped: AdamW's moments and step count, the
/// cosine schedule's position and the augmentation stream all carry over.
#[test]
fn a_resumed_trainer_continues_adamw_cosine_and_augmentation_exactly() {
    use normlab::models::ModelKind;
    use normlab::optim::{OptimizerKind, SgdConfig};
    use normlab::train::{Augment, NoObserver, TrainOptions, Trainer};
    let subset = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fashion-mnist-subset");
    let mut fm = normlab::data::load_dir(&subset).unwrap();
    fm.train.truncate(384);
    fm.test.truncate(128);
    let mut o = TrainOptions::chapter(ModelKind::BnLenet);
    (o.epochs, o.batch_size, o.label_smoothing) = (3, 32, 0.1);
    o.optimizer = OptimizerKind::adamw();
    o.sgd = SgdConfig { weight_decay: 0.01, ..SgdConfig::new(3e-3) };
    o.schedule = Schedule { warmup_epochs: Some(0.5), ..Schedule::of(ScheduleKind::Cosine) };
    o.augment = Augment { crop_padding: 2, hflip: true };
    let epochs = |t: &mut Trainer, n: usize| {
        for _ in 0..n {
            t.run_epoch(&fm.train, &fm.test, &mut NoObserver).unwrap();
        }
    };
    let mut whole = Trainer::new(o.clone()).unwrap();
    epochs(&mut whole, 3);
    let mut first = Trainer::new(o).unwrap();
    epochs(&mut first, 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.safetensors");
    first.save_state(&path).unwrap();
    let mut resumed = Trainer::resume(&path).unwrap();
    epochs(&mut resumed, 2);
    let without_times = |t: &Trainer| {
        t.history.iter().map(|m| (m.train_loss, m.train_acc, m.val_loss, m.val_acc, m.lr)).collect::<Vec<_>>()
    };
    assert_eq!(without_times(&whole), without_times(&resumed));
    let bits = |t: &mut Trainer| -> Vec<u32> {
        t.net
            .state_mut()
            .into_iter()
            .flat_map(|(_, s)| match s {
                normlab::layers::StateMut::Param { value, .. } | normlab::layers::StateMut::Buffer(value) => {
                    value.data().iter().map(|v| v.to_bits()).collect()
                }
                normlab::layers::StateMut::Count(c) => vec![*c as u32],
            })
            .collect()
    };
    assert_eq!(bits(&mut whole), bits(&mut resumed));
    // the lr of each epoch's first step: warm-up from 0, then down the cosine
    let lrs: Vec<f64> = whole.history.iter().map(|m| m.lr.unwrap()).collect();
    assert!(lrs[0] == 0.0 && lrs[1] > lrs[2] && lrs[2] > 0.0, "{lrs:?}");
}

/// `Trainer::with_network` trains a network built in code (here with no
/// description at all) with the same options, learns, and refuses a
/// training checkpoint it could not rebuild, or a network built for
/// another shape.
#[test]
fn the_trainer_takes_a_network_built_in_code() {
    use normlab::layers::{BatchNorm, BatchNormConfig, Conv2d, Flatten, Linear, MaxPool2d, ReLU};
    use normlab::models::{ModelKind, Sequential};
    use normlab::optim::{OptimizerKind, SgdConfig};
    use normlab::train::{Augment, NoObserver, TrainOptions, Trainer};
    let subset = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fashion-mnist-subset");
    let mut fm = normlab::data::load_dir(&subset).unwrap();
    fm.train.truncate(1024);
    fm.test.truncate(256);
    let net = |side: usize| {
        let mut n = Sequential::<f32>::new()
            .push(Conv2d::new(8, 3).padding(1))
            .push(BatchNorm::new(BatchNormConfig::pytorch()))
            .push(ReLU::new())
            .push(MaxPool2d::new(2, 2))
            .push(Flatten::new())
            .push(Linear::new(10));
        n.build(&[1, side, side], &mut rng::seeded(0)).unwrap();
        n
    };
    let mut o = TrainOptions::chapter(ModelKind::BnLenet);
    (o.epochs, o.batch_size) = (2, 32);
    o.optimizer = OptimizerKind::adamw();
    o.sgd = SgdConfig { weight_decay: 0.01, ..SgdConfig::new(3e-3) };
    o.schedule = Schedule::of(ScheduleKind::OneCycle);
    o.augment = Augment { crop_padding: 1, hflip: false };
    let e = Trainer::with_network(o.clone(), net(14)).err().expect("refused").to_string();
    assert!(e.contains("[1, 14, 14]") && e.contains("input_shape"), "{e}");
    let mut trainer = Trainer::with_network(o, net(28)).unwrap();
    for _ in 0..2 {
        trainer.run_epoch(&fm.train, &fm.test, &mut NoObserver).unwrap();
    }
    let acc = trainer.history[1].val_acc;
    assert!(acc > 0.6, "test accuracy after two epochs on 1,024 images: {acc}");
    let dir = tempfile::tempdir().unwrap();
    let e = trainer.save_state(&dir.path().join("state.safetensors")).unwrap_err().to_string();
    assert!(e.contains("save_state_dict"), "{e}");
}
