//! Checkpoints damaged field by field (a header length beyond the file, a
//! tensor with the wrong shape or dtype, missing and unknown names, another
//! model's weights, an invalid network description, NaN, infinite or
//! overflowing weights, a negative variance or count, a corrupt optimizer
//! state) are refused by `eval`, `inspect` and `checkpoint::load` with exit
//! code 2 or an `Err` and a one-line message that names the file, never a
//! panic, a NaN printed with exit code 0, or an allocation the file does
//! not justify.
//!
//! Two tests keep fixed the bugs that hostile testing found here (their doc
//! comments start with "Regression"): network-description errors that did
//! not name the checkpoint, and a model name in the metadata that
//! contradicted the network.

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::panic;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use normlab::models::ModelKind;
use normlab::train::checkpoint;

use crate::largest_alloc;
use largest_alloc::largest_allocation;

use common::checkpoints::{f32_bytes, trained};
use common::{normlab, s, subset};

/// A checkpoint taken apart, to be edited and written back.
#[derive(Clone)]
struct Ckpt {
    tensors: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
    meta: HashMap<String, String>,
}

impl Ckpt {
    fn read(path: &Path) -> Ckpt {
        let bytes = std::fs::read(path).expect("checkpoint");
        let (_, meta) = SafeTensors::read_metadata(&bytes).expect("safetensors header");
        let st = SafeTensors::deserialize(&bytes).expect("safetensors");
        let tensors =
            st.tensors().into_iter().map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec()))).collect();
        Ckpt { tensors, meta: meta.metadata().clone().unwrap_or_default() }
    }

    /// Written with the `safetensors` crate: a valid safetensors file.
    fn write(&self, path: &Path) -> PathBuf {
        let views: Vec<(String, TensorView<'_>)> = self
            .tensors
            .iter()
            .map(|(n, (d, shape, b))| (n.clone(), TensorView::new(*d, shape.clone(), b).expect("consistent tensor")))
            .collect();
        std::fs::write(path, safetensors::serialize(views, &Some(self.meta.clone())).unwrap()).unwrap();
        path.to_path_buf()
    }

    fn f32s(&self, name: &str) -> Vec<f32> {
        self.tensors[name].2.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    }

    fn set(&mut self, name: &str, dtype: Dtype, shape: &[usize], data: Vec<u8>) {
        self.tensors.insert(name.to_string(), (dtype, shape.to_vec(), data));
    }
}

/// `normlab eval` and `normlab inspect` refuse the checkpoint with exit code
/// 2 and a message holding every needle, and so does `checkpoint::load`.
fn refused(ck: &Path, needles: &[&str]) {
    let sub = subset();
    normlab(&["eval", "--checkpoint", s(ck), "--data-dir", s(&sub), "--limit", "64"]).user_error(needles);
    normlab(&["inspect", "--checkpoint", s(ck)]).user_error(needles);
    let err = match panic::catch_unwind(|| checkpoint::load(ck)) {
        Ok(Ok(_)) => panic!("checkpoint::load accepts {}", ck.display()),
        Ok(Err(e)) => e.to_string(),
        Err(_) => panic!("checkpoint::load panics on {}", ck.display()),
    };
    for n in needles {
        assert!(err.contains(n), "checkpoint::load's error should mention '{n}': {err}");
    }
}

#[test]
fn checkpoint_whose_header_length_exceeds_the_file() {
    let good = std::fs::read(&trained().bn).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let len = good.len() as u64;
    for (name, claimed) in [
        ("past-end.safetensors", len - 7), // one byte more than follows the length
        ("megabyte.safetensors", len + (1 << 20)),
        ("huge.safetensors", u64::MAX),
        ("zero.safetensors", 0),
    ] {
        let mut bytes = good.clone();
        bytes[..8].copy_from_slice(&claimed.to_le_bytes());
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        refused(&path, &[name]);
        // nothing is allocated from the claimed length
        let (r, largest) = largest_allocation(|| checkpoint::info(&path));
        assert!(r.is_err());
        assert!(largest <= 2 * good.len(), "{name}: checkpoint::info allocated {largest} bytes");
    }
    // shorter than the 8-byte length itself
    let stub = dir.path().join("stub.safetensors");
    std::fs::write(&stub, &good[..5]).unwrap();
    refused(&stub, &["stub.safetensors"]);
}

#[test]
fn checkpoint_tensor_with_the_wrong_shape() {
    let good = Ckpt::read(&trained().bn);
    let dir = tempfile::tempdir().unwrap();
    // same number of values, another shape
    let mut c = good.clone();
    let w = c.tensors["net.0.weight"].2.clone();
    c.set("net.0.weight", Dtype::F32, &[6, 25], w);
    refused(&c.write(&dir.path().join("reshaped.safetensors")), &["reshaped.safetensors", "net.0.weight", "[6, 25]"]);
    // one value more
    let mut c = good.clone();
    let mut v = c.f32s("net.1.running_mean");
    v.push(0.0);
    c.set("net.1.running_mean", Dtype::F32, &[7], f32_bytes(&v));
    refused(&c.write(&dir.path().join("seven.safetensors")), &["seven.safetensors", "net.1.running_mean"]);
    // a linear layer of another width (fewer values)
    let mut c = good.clone();
    c.set("net.9.weight", Dtype::F32, &[100, 256], f32_bytes(&vec![0.0; 100 * 256]));
    refused(&c.write(&dir.path().join("narrow.safetensors")), &["narrow.safetensors", "net.9.weight"]);
    // num_batches_tracked as a vector
    let mut c = good;
    c.set("net.5.num_batches_tracked", Dtype::I64, &[2], vec![0; 16]);
    refused(&c.write(&dir.path().join("counter.safetensors")), &["counter.safetensors", "net.5.num_batches_tracked"]);
}

#[test]
fn checkpoint_tensor_with_the_wrong_dtype() {
    let good = Ckpt::read(&trained().bn);
    let dir = tempfile::tempdir().unwrap();
    let w = good.f32s("net.0.weight");
    let cases: Vec<(&str, &str, Dtype, Vec<u8>)> = vec![
        // a double-precision model: the same values as f64
        ("f64", "net.0.weight", Dtype::F64, w.iter().flat_map(|&x| (x as f64).to_le_bytes()).collect()),
        ("i32", "net.0.weight", Dtype::I32, w.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect()),
        ("f16", "net.0.weight", Dtype::F16, vec![0; w.len() * 2]),
        ("counter-f32", "net.1.num_batches_tracked", Dtype::F32, 4.0f32.to_le_bytes().to_vec()),
        ("counter-i32", "net.1.num_batches_tracked", Dtype::I32, 4i32.to_le_bytes().to_vec()),
    ];
    for (label, tensor, dtype, data) in cases {
        let mut c = good.clone();
        let shape = c.tensors[tensor].1.clone();
        c.set(tensor, dtype, &shape, data);
        let file = format!("{label}.safetensors");
        let path = c.write(&dir.path().join(&file));
        refused(&path, &[&file, tensor, &format!("{dtype:?}")]);
    }
}

#[test]
fn checkpoint_with_a_missing_or_an_unknown_tensor() {
    let good = Ckpt::read(&trained().bn);
    let dir = tempfile::tempdir().unwrap();
    let mut c = good.clone();
    c.tensors.remove("net.13.running_var");
    refused(&c.write(&dir.path().join("missing.safetensors")), &["missing.safetensors", "net.13.running_var"]);
    let mut c = good.clone();
    c.set("net.99.weight", Dtype::F32, &[2], vec![0; 8]);
    refused(&c.write(&dir.path().join("unknown.safetensors")), &["unknown.safetensors", "net.99.weight"]);
    // a misspelt name: one missing, one unknown, both named
    let mut c = good;
    let w = c.tensors.remove("net.0.weight").unwrap();
    c.tensors.insert("net.0.weights".into(), w);
    refused(
        &c.write(&dir.path().join("typo.safetensors")),
        &["typo.safetensors", "missing net.0.weight ", "net.0.weights"],
    );
}

#[test]
fn checkpoint_from_a_different_model() {
    let t = trained();
    let bn = Ckpt::read(&t.bn);
    let ln = Ckpt::read(&t.ln);
    let dir = tempfile::tempdir().unwrap();
    // ln-lenet weights whose metadata claims bn-lenet (name and network)
    let mut c = ln.clone();
    c.meta.insert("normlab.model".into(), "bn-lenet".into());
    c.meta.insert("normlab.network".into(), bn.meta["normlab.network"].clone());
    refused(
        &c.write(&dir.path().join("ln-as-bn.safetensors")),
        &["ln-as-bn.safetensors", "net.1.weight", "different model"],
    );
    // and the other way round
    let mut c = bn.clone();
    c.meta.insert("normlab.model".into(), "ln-lenet".into());
    c.meta.insert("normlab.network".into(), ln.meta["normlab.network"].clone());
    refused(&c.write(&dir.path().join("bn-as-ln.safetensors")), &["bn-as-ln.safetensors", "net.1.weight"]);
    // bn-lenet weights described as plain lenet: every BN tensor is unknown
    let mut c = bn;
    c.meta.insert("normlab.model".into(), "lenet".into());
    c.meta.insert("normlab.network".into(), serde_json::to_string(&ModelKind::Lenet.config()).unwrap());
    refused(&c.write(&dir.path().join("bn-as-lenet.safetensors")), &["bn-as-lenet.safetensors", "different model"]);
}

/// Regression: a checkpoint whose `normlab.model` names one of the CLI's
/// models while its `normlab.network` describes another used to load
/// silently, and the commands then reported the wrong model: `inspect` says
/// "(bn-lenet) has no batch-norm layers", `eval --json` says "model":
/// "bn-lenet" for a layer-norm network. Either refusing the file (exit 2,
/// naming it) or reporting the network it actually holds is correct.
#[test]
fn checkpoint_whose_model_name_contradicts_its_network() {
    let mut c = Ckpt::read(&trained().ln);
    c.meta.insert("normlab.model".into(), "bn-lenet".into());
    let dir = tempfile::tempdir().unwrap();
    let path = c.write(&dir.path().join("label.safetensors"));
    let sub = subset();
    for args in [
        vec!["inspect", "--checkpoint", s(&path)],
        vec!["eval", "--checkpoint", s(&path), "--data-dir", s(&sub), "--limit", "64", "--json"],
    ] {
        let r = normlab(&args);
        if r.code == 0 {
            assert!(
                !r.stdout.contains("bn-lenet"),
                "an ln-lenet network is reported as bn-lenet (the unchecked metadata name): {}",
                r.ctx()
            );
        } else {
            r.user_error(&["label.safetensors"]);
        }
    }
}

/// Regression: an invalid network description in the metadata (dropout 2,
/// eps -1, 0 groups, momentum 7) gave exit code 2, but the message did not
/// name the checkpoint: "error: invalid dropout p: 2 is not
/// in [0, 1)" read as if an option were wrong: `checkpoint::load` passed
/// the error of `models::build_config` on without the path.
#[test]
fn checkpoint_with_an_invalid_network_description_names_the_file() {
    let good = Ckpt::read(&trained().bn);
    let network = good.meta["normlab.network"].clone();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("dropout", network.replace("\"dropout\":null", "\"dropout\":2.0")),
        ("eps", network.replace("\"eps\":0.00001", "\"eps\":-1.0")),
        ("momentum", network.replace("{\"NewStatWeight\":0.1}", "{\"NewStatWeight\":7.0}")),
        (
            "groups",
            network.replace(
                &network[network.find("{\"Batch\"").unwrap()..network.find(",\"placement\"").unwrap()],
                "{\"Group\":{\"groups\":0}}",
            ),
        ),
        ("garbage", "{\"norm\": 17}".to_string()),
    ];
    let mut failures = Vec::new();
    for (label, net) in cases {
        assert_ne!(net, network, "{label}: the replacement did not apply");
        let mut c = good.clone();
        c.meta.insert("normlab.network".into(), net);
        let file = format!("network-{label}.safetensors");
        let path = c.write(&dir.path().join(&file));
        let r = normlab(&["inspect", "--checkpoint", s(&path)]);
        assert!(!r.stderr.contains("panicked"), "{}", r.ctx());
        assert_eq!(r.code, 2, "{}", r.ctx());
        eprintln!("[{}] {}", r.args, r.stderr.trim_end());
        if !r.stderr.contains(&file) {
            failures.push(format!("{file}: {}", r.stderr.trim_end()));
        }
    }
    assert!(failures.is_empty(), "messages that do not name the checkpoint:\n{}", failures.join("\n"));
}

#[test]
fn checkpoint_with_non_finite_weights() {
    let mut c = Ckpt::read(&trained().bn);
    let mut v = c.f32s("net.5.running_var");
    v[3] = f32::NAN;
    c.set("net.5.running_var", Dtype::F32, &[16], f32_bytes(&v));
    let dir = tempfile::tempdir().unwrap();
    refused(&c.write(&dir.path().join("nan.safetensors")), &["nan.safetensors", "net.5.running_var", "NaN"]);
}

#[test]
fn checkpoint_with_impossible_values_names_the_tensor() {
    let good = Ckpt::read(&trained().bn);
    let dir = tempfile::tempdir().unwrap();
    // a negative running variance: eval printed "loss NaN" with exit code 0
    let mut c = good.clone();
    let mut v = c.f32s("net.5.running_var");
    v[2] = -0.5;
    c.set("net.5.running_var", Dtype::F32, &[16], f32_bytes(&v));
    refused(&c.write(&dir.path().join("negative.safetensors")), &["negative.safetensors", "net.5.running_var", "-0.5"]);
    // infinity in a weight
    let mut c = good.clone();
    let mut w = c.f32s("net.0.weight");
    w[7] = f32::NEG_INFINITY;
    c.set("net.0.weight", Dtype::F32, &[6, 1, 5, 5], f32_bytes(&w));
    refused(&c.write(&dir.path().join("inf.safetensors")), &["inf.safetensors", "net.0.weight", "-inf"]);
    // a negative count of batches
    let mut c = good;
    c.set("net.1.num_batches_tracked", Dtype::I64, &[], (-4i64).to_le_bytes().to_vec());
    refused(&c.write(&dir.path().join("count.safetensors")), &["count.safetensors", "net.1.num_batches_tracked"]);
}

#[test]
fn weights_that_overflow_are_refused_by_eval_predict_and_recompute_stats() {
    // finite weights of 3e38: every check on load passes, the outputs overflow
    let mut c = Ckpt::read(&trained().bn);
    let weights: Vec<String> = c.tensors.keys().filter(|n| n.ends_with(".weight")).cloned().collect();
    for name in &weights {
        let w: Vec<f32> = c.f32s(name).iter().map(|x| x.signum() * 3e38).collect();
        let shape = c.tensors[name].1.clone();
        c.set(name, Dtype::F32, &shape, f32_bytes(&w));
    }
    let dir = tempfile::tempdir().unwrap();
    let ck = c.write(&dir.path().join("huge.safetensors"));
    let sub = subset();
    for json in [false, true] {
        let mut args = vec!["eval", "--checkpoint", s(&ck), "--data-dir", s(&sub), "--limit", "64"];
        if json {
            args.push("--json");
        }
        normlab(&args).user_error(&["huge.safetensors", "overflow"]);
    }
    let img = dir.path().join("x.png");
    common::runs::test_images(1)[0].0.save(&img).unwrap();
    normlab(&["predict", "--checkpoint", s(&ck), s(&img)]).user_error(&["huge.safetensors", "overflow"]);
    // recompute-stats neither prints NaN losses nor writes a model
    let out = dir.path().join("precise.safetensors");
    normlab(&["recompute-stats", "--checkpoint", s(&ck), "--data-dir", s(&sub), "--out", s(&out)])
        .user_error(&["huge.safetensors", "overflow"]);
    assert!(!out.exists(), "no model written");
    // inspect shows the values as they are
    normlab(&["inspect", "--checkpoint", s(&ck)]).ok();
}

#[test]
fn a_corrupt_optimizer_state_is_called_corrupt_not_diverged() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    common::runs::train(&run, &["--momentum", "0.9", "--epochs", "1", "--quiet"]).ok();
    let state = run.join("checkpoint.safetensors");
    let mut c = Ckpt::read(&state);
    let name = c.tensors.keys().find(|n| n.starts_with("optim.momentum_buffer.")).expect("a momentum buffer").clone();
    let mut b = c.f32s(&name);
    b[0] = f32::NAN;
    let shape = c.tensors[&name].1.clone();
    c.set(&name, Dtype::F32, &shape, f32_bytes(&b));
    c.write(&state);
    let sub = subset();
    let r = normlab(&["train", "--resume", s(&run), "--epochs", "2", "--quiet", "--data-dir", s(&sub)]);
    r.user_error(&["checkpoint.safetensors", &name, "corrupt"]);
    assert!(!r.stderr.contains("diverged") && !r.stderr.contains("learning rate"), "{}", r.ctx());
}
