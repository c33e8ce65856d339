//! The API the examples stand on: saving and loading the state of a network
//! built in code, and a training loop of one's own with `data::Batches`
//! (the path of `examples/your_own_network.rs`, shortened).

use std::path::PathBuf;

use normlab::data::{self, Batch, Batches, LastBatch};
use normlab::layers::{BatchNorm, BatchNormConfig, Conv2d, Flatten, Linear, MaxPool2d, ReLU};
use normlab::loss::CrossEntropy;
use normlab::models::Sequential;
use normlab::optim::{Sgd, SgdConfig};
use normlab::train::{checkpoint, evaluate};
use normlab::{rng, Tensor};

/// conv / BN / ReLU / max-pool twice, then a linear classifier.
fn custom(channels: usize) -> Sequential<f32> {
    let bn = || BatchNorm::new(BatchNormConfig::pytorch());
    Sequential::new()
        .push(Conv2d::new(channels, 3).padding(1))
        .push(bn())
        .push(ReLU::new())
        .push(MaxPool2d::new(2, 2))
        .push(Conv2d::new(8, 3))
        .push(bn())
        .push(ReLU::new())
        .push(MaxPool2d::new(2, 2))
        .push(Flatten::new())
        .push(Linear::new(10))
}

fn built(channels: usize, seed: u64) -> Sequential<f32> {
    let mut net = custom(channels);
    net.build(&[1, 28, 28], &mut rng::seeded(seed)).unwrap();
    net
}

fn subset() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fashion-mnist-subset")
}

/// Deterministic inputs in [0, 1).
fn inputs(n: usize) -> Tensor<f32> {
    let data = (0..n * 28 * 28).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect();
    Tensor::from_vec(&[n, 1, 28, 28], data).unwrap()
}

#[test]
fn a_saved_custom_network_loads_into_a_fresh_one_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("custom.safetensors");
    let mut net = built(6, 0);
    // a few training-mode passes, so the running statistics and the batch
    // counters are not their initial values
    net.train();
    for k in 0..3 {
        let mut x = inputs(4);
        x.data_mut().iter_mut().for_each(|v| *v = *v * (k + 1) as f32 + 0.1);
        net.forward(&x).unwrap();
    }
    checkpoint::save_state_dict(&mut net, &[("note", "test".into())], &path).unwrap();

    let mut fresh = built(6, 1);
    let x = inputs(5);
    net.eval();
    fresh.eval();
    let want = net.forward(&x).unwrap().data().to_vec();
    assert_ne!(fresh.forward(&x).unwrap().data(), &want[..], "another seed starts from other weights");
    let meta = checkpoint::load_into(&mut fresh, &path).unwrap();
    assert_eq!(meta.get("note").map(String::as_str), Some("test"));
    let got = fresh.forward(&x).unwrap().data().to_vec();
    assert_eq!(
        got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        "eval outputs after loading"
    );
    // every entry of the state, counters included, came across
    let names = net.state_names();
    assert!(
        names.contains(&"net.1.running_var".to_string()) && names.contains(&"net.5.num_batches_tracked".to_string())
    );
    let (a, b) = (net.state_mut(), fresh.state_mut());
    for ((name, s), (_, t)) in a.into_iter().zip(b) {
        use normlab::layers::StateMut::*;
        match (s, t) {
            (Param { value: v, .. }, Param { value: w, .. }) | (Buffer(v), Buffer(w)) => {
                assert_eq!(v.data(), w.data(), "{name}")
            }
            (Count(c), Count(d)) => assert_eq!((*c, *d), (3, 3), "{name}"),
            _ => panic!("{name}: different kinds of state"),
        }
    }
    // written atomically: no temporary file left beside it
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["custom.safetensors"]);
}

#[test]
fn loading_into_a_network_of_another_shape_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("custom.safetensors");
    checkpoint::save_state_dict(&mut built(6, 0), &[], &path).unwrap();
    let e = checkpoint::load_into(&mut built(4, 0), &path).unwrap_err().to_string();
    assert!(e.contains("net.0.weight") && e.contains("[6, 1, 3, 3]") && e.contains("[4, 1, 3, 3]"), "{e}");

    // one layer fewer: the names that do not match are listed
    let mut shorter =
        Sequential::<f32>::new().push(Conv2d::new(6, 3).padding(1)).push(Flatten::new()).push(Linear::new(10));
    shorter.build(&[1, 28, 28], &mut rng::seeded(0)).unwrap();
    let e = checkpoint::load_into(&mut shorter, &path).unwrap_err().to_string();
    assert!(e.contains("net.2.weight") && e.contains("net.1.running_mean"), "{e}");

    // a network not yet built is named as the thing to fix
    let e = checkpoint::load_into(&mut custom(6), &path).unwrap_err().to_string();
    assert!(e.contains("build()"), "{e}");
}

#[test]
fn a_state_dict_is_not_taken_for_a_ready_made_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("custom.safetensors");
    checkpoint::save_state_dict(&mut built(6, 0), &[], &path).unwrap();
    let e = checkpoint::load(&path).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("load_into"), "{e}");
}

/// The example's loop on 1,000 subset images: one epoch of SGD over
/// shuffled batches learns (well above the 10% of guessing), and the
/// saved and reloaded network evaluates the same.
#[test]
fn a_loop_of_ones_own_learns_and_round_trips() {
    let mut fm = data::load_dir(&subset()).unwrap();
    fm.train.truncate(1000);
    fm.test.truncate(500);
    let mut net = built(6, 0);
    let mut sgd = Sgd::new(SgdConfig::new(0.1)).unwrap();
    let mut loss = CrossEntropy::new();
    let mut batches = Batches::new(fm.train.len(), 32, LastBatch::Drop).unwrap().shuffled(0);
    let mut batch = Batch::default();
    net.train();
    for _ in 0..2 {
        for idx in batches.epoch() {
            batch.fill(&fm.train, idx).unwrap();
            let logits = net.forward(&batch.x).unwrap();
            loss.forward(logits, &batch.labels).unwrap();
            net.backward(&batch.x, loss.grad()).unwrap();
            sgd.step(&mut net);
        }
    }
    let trained = evaluate(&mut net, &fm.test, 100, None).unwrap();
    assert!(trained.accuracy > 0.5, "test accuracy after two epochs on 1,000 images: {}", trained.accuracy);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net.safetensors");
    checkpoint::save_state_dict(&mut net, &[], &path).unwrap();
    let mut loaded = built(6, 99);
    checkpoint::load_into(&mut loaded, &path).unwrap();
    assert_eq!(evaluate(&mut loaded, &fm.test, 100, None).unwrap(), trained);
}

/// `save_state_dict` and the ready-made models' `save` share the writer:
/// each file carries its own metadata and only that.
#[test]
fn state_dicts_and_ready_made_checkpoints_carry_their_own_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let kind = normlab::models::ModelKind::BnLenet;
    let mut lenet = normlab::models::build_config(&kind.config(), &mut rng::seeded(0)).unwrap();
    let ready = dir.path().join("bn-lenet.safetensors");
    checkpoint::save(&mut lenet, kind.name(), kind.config(), &[("epoch", "1".into())], &ready).unwrap();
    let info = checkpoint::info(&ready).unwrap();
    assert_eq!(info.model, "bn-lenet");
    let mut keys: Vec<&str> = info.metadata.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["epoch", "format", "normlab.model", "normlab.network", "normlab.spec", "normlab.version"]);

    let custom = dir.path().join("custom.safetensors");
    checkpoint::save_state_dict(&mut built(6, 0), &[("epoch", "2".into())], &custom).unwrap();
    let meta = checkpoint::load_into(&mut built(6, 1), &custom).unwrap();
    let mut keys: Vec<&str> = meta.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["epoch", "format", "normlab.state_dict", "normlab.version"]);
    assert_eq!(meta["format"], "pt");
}
