//! Checkpoints for the tests of bad input: a bn-lenet and an ln-lenet
//! checkpoint trained once per test process (1 epoch on 256 images), and
//! safetensors files taken apart and put back together byte for byte.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

use super::{normlab, s, subset};

pub struct Trained {
    _dir: tempfile::TempDir,
    pub bn: PathBuf,
    pub ln: PathBuf,
}

pub fn trained() -> &'static Trained {
    static T: OnceLock<Trained> = OnceLock::new();
    T.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let dir = tempfile::Builder::new().prefix("normlab-robustness-").tempdir_in(base).expect("temporary directory");
        let sub = subset();
        let mut paths = Vec::new();
        for model in ["bn-lenet", "ln-lenet"] {
            let out = dir.path().join(model);
            normlab(&[
                "train",
                "--model",
                model,
                "--limit-train",
                "256",
                "--limit-val",
                "64",
                "--epochs",
                "1",
                "--batch-size",
                "64",
                "--seed",
                "3",
                "--quiet",
                "--data-dir",
                s(&sub),
                "--out",
                s(&out),
            ])
            .ok();
            paths.push(out.join("model.safetensors"));
        }
        Trained { bn: paths[0].clone(), ln: paths[1].clone(), _dir: dir }
    })
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A safetensors file from a JSON header and a data section, as is (no
/// validation, so that the mutations can break every rule).
pub fn safetensors_raw(header: &Value, data: &[u8]) -> Vec<u8> {
    let text = serde_json::to_vec(header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(data);
    out
}

/// The JSON header and the data section of a valid safetensors file.
pub fn split_safetensors(bytes: &[u8]) -> (Value, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (serde_json::from_slice(&bytes[8..8 + n]).expect("JSON header"), bytes[8 + n..].to_vec())
}

/// A checkpoint of the example model file (examples/models/vgg-small.toml,
/// a network described layer by layer, not a built-in LeNet), written to
/// `dir/vgg-small.safetensors`: initialized from seed 11, its batch norms'
/// running statistics taken from 8 training-mode passes over 64 subset
/// images each, so that they are not the initial 0 and 1.
pub fn model_file_checkpoint(dir: &Path) -> PathBuf {
    use normlab::data::{load_dir, Batch};
    use normlab::models::{Architecture, ModelSpec};
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/models/vgg-small.toml");
    let spec = ModelSpec::from_toml_file(&file, None).expect("the example model file reads");
    let mut net = spec.build::<f32>(None, &mut normlab::rng::seeded(11)).expect("and builds");
    let train = load_dir(&subset()).expect("the subset loads").train;
    let mut batch = Batch::default();
    net.train();
    for start in (0..512).step_by(64) {
        batch.fill(&train, &(start..start + 64).collect::<Vec<_>>()).unwrap();
        net.forward(&batch.x).unwrap();
    }
    let path = dir.join("vgg-small.safetensors");
    normlab::train::checkpoint::save(&mut net, "vgg-small", Architecture::Spec(spec), &[], &path).unwrap();
    path
}

/// The eval-mode logits of a checkpoint (loaded as `eval` and `predict`
/// load it) for every test image of the subset, in order.
pub fn subset_logits(checkpoint: &Path) -> Vec<f32> {
    use normlab::data::{load_dir, Batch};
    let (mut net, _) = normlab::train::checkpoint::load(checkpoint).unwrap();
    net.eval();
    let test = load_dir(&subset()).unwrap().test;
    let indices: Vec<usize> = (0..test.len()).collect();
    let mut batch = Batch::default();
    let mut out = Vec::new();
    for chunk in indices.chunks(500) {
        batch.fill(&test, chunk).unwrap();
        out.extend_from_slice(net.forward(&batch.x).unwrap().data());
    }
    out
}
