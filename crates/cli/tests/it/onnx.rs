//! `normlab export --onnx`, checked by ONNX's own checker and run in ONNX
//! Runtime (tools/check_onnx.py) on the whole committed test subset: the
//! logits equal normlab's (what `eval` and `predict` compute, fused layers
//! and all) to 1e-5 and the accuracy is the same, for every built-in model
//! and a model-file network, exported as trained and with its batch norms
//! folded.
//!
//! The script needs `onnx` and `onnxruntime`, which CI installs in a
//! virtual environment (`.ci/run`) and names with NORMLAB_ONNX_PYTHON (its
//! python); without it these tests say that they skipped, unless
//! NORMLAB_REQUIRE_ONNX=1 (set by CI), when they fail.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::checkpoints::{model_file_checkpoint, subset_logits};
use common::{normlab, s, subset};

/// The python with onnx and onnxruntime, or `None` (the test then skips).
fn onnx_python(test: &str) -> Option<PathBuf> {
    match std::env::var_os("NORMLAB_ONNX_PYTHON") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            assert!(
                std::env::var("NORMLAB_REQUIRE_ONNX").as_deref() != Ok("1"),
                "{test}: NORMLAB_REQUIRE_ONNX=1 but NORMLAB_ONNX_PYTHON is not set: point it at a python \
                 with onnx and onnxruntime (.ci/run makes one)"
            );
            eprintln!(
                "SKIPPED {test}: set NORMLAB_ONNX_PYTHON to a python with onnx and onnxruntime \
                 (python3 -m venv v && v/bin/pip install onnx onnxruntime) to run it"
            );
            None
        }
    }
}

/// normlab's logits for every test image of the subset, as `eval` computes
/// them (the checkpoint loaded as trained, fused layers included), written
/// as raw little-endian f32 to `out`.
fn write_normlab_logits(model: &Path, out: &Path) {
    let bytes: Vec<u8> = subset_logits(model).iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(out, bytes).unwrap();
}

/// Runs tools/check_onnx.py on every `(onnx, logits)` pair in one python
/// process and returns its JSON lines, after asserting that each passed.
fn check(python: &Path, pairs: &[(PathBuf, PathBuf)]) -> Vec<serde_json::Value> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/check_onnx.py");
    let mut cmd = Command::new(python);
    cmd.args([s(&script), "--data-dir", s(&subset())]);
    for (onnx, logits) in pairs {
        cmd.args(["--model", s(onnx), "--expected", s(logits)]);
    }
    let out = cmd.output().expect("the python named by NORMLAB_ONNX_PYTHON runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reports: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("check_onnx.py: not JSON: {l}\n{stderr}")))
        .collect();
    assert_eq!(reports.len(), pairs.len(), "check_onnx.py stopped early:\n{stdout}\n{stderr}");
    for r in &reports {
        eprintln!("{r}");
        assert!(r["ok"] == true, "check_onnx.py failed: {r}");
        assert_eq!(r["images"], 1000, "{r}");
    }
    assert!(out.status.success(), "check_onnx.py exited with {}: {stderr}", out.status);
    reports
}

/// Trains `model` briefly on the subset (so that its running statistics
/// and weights are real: accuracy well above chance), exports it plain and
/// folded, and returns the two (onnx, normlab logits) pairs to check.
fn train_and_export(dir: &Path, model: &str) -> Vec<(PathBuf, PathBuf)> {
    let run = dir.join(model);
    normlab(&[
        "train",
        "--model",
        model,
        "--limit-train",
        "2000",
        "--limit-val",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--lr",
        "0.5",
        "--seed",
        "5",
        "--quiet",
        "--data-dir",
        s(&subset()),
        "--out",
        s(&run),
    ])
    .ok();
    export_both(dir, model, &run.join("model.safetensors"))
}

/// Exports `checkpoint` plain and folded; the two (onnx, logits) pairs.
fn export_both(dir: &Path, model: &str, checkpoint: &Path) -> Vec<(PathBuf, PathBuf)> {
    let logits = dir.join(format!("{model}.f32"));
    write_normlab_logits(checkpoint, &logits);
    let mut pairs = Vec::new();
    for fold in [false, true] {
        let onnx = dir.join(format!("{model}{}.onnx", if fold { "-folded" } else { "" }));
        let mut args = vec!["export", "--onnx", "--checkpoint", s(checkpoint), "--out", s(&onnx)];
        if fold {
            args.push("--fold");
        }
        let out = normlab(&args).ok();
        assert!(out.stderr.contains("opset 17"), "{}", out.ctx());
        pairs.push((onnx, logits.clone()));
    }
    pairs
}

#[test]
fn every_built_in_model_and_a_model_file_network_run_in_onnx_runtime_with_normlabs_outputs() {
    let Some(python) =
        onnx_python("every_built_in_model_and_a_model_file_network_run_in_onnx_runtime_with_normlabs_outputs")
    else {
        return;
    };
    let dir = tempfile::Builder::new().prefix("normlab-onnx-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let models = ["bn-lenet", "lenet", "ln-lenet", "bn-lenet-scratch"];
    let mut pairs: Vec<_> = models.iter().flat_map(|m| train_and_export(dir.path(), m)).collect();
    // and a network from a model file (3x3 convs with padding, BN, ReLU, max-pool)
    let vgg = model_file_checkpoint(dir.path());
    pairs.extend(export_both(dir.path(), "vgg-small", &vgg));
    let reports = check(&python, &pairs);
    // the BN models train in one epoch (the sigmoid LeNets without BN sit
    // near chance that early, as in the chapter): the accuracy compared is
    // that of a model that predicts, not of one that guesses
    for r in reports.iter().filter(|r| r["model"].as_str().unwrap().contains("bn-lenet")) {
        assert!(r["accuracy_normlab"].as_f64().unwrap() > 0.3, "{r}");
    }
}

#[test]
fn export_refuses_bad_options_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.safetensors");
    let onnx = dir.path().join("m.onnx");
    normlab(&["export", "--onnx", "--checkpoint", s(&missing), "--out", s(&onnx)]).user_error(&["missing.safetensors"]);
    let not_onnx = dir.path().join("m.bin");
    normlab(&["export", "--onnx", "--checkpoint", s(&missing), "--out", s(&not_onnx)]).user_error(&["--out", ".onnx"]);
    normlab(&["export", "--checkpoint", s(&missing), "--out", s(&onnx)]).user_error(&["--onnx"]);
    assert!(!onnx.exists());
}
