//! `normlab fold`: the folded checkpoint loads in `eval` and `predict`, has
//! fewer layers, and gives the same logits (to 1e-5, relative to
//! max(1, |logit|)) and so the same accuracy as the original on every
//! image of the committed test subset, for every built-in model and a
//! network from a model file.

use crate::common;

use std::path::Path;

use common::checkpoints::{model_file_checkpoint, subset_logits};
use common::runs::f;
use common::{normlab, s, subset};

/// Folds `checkpoint` into `dir/NAME-folded.safetensors` and compares.
fn fold_and_compare(dir: &Path, name: &str, checkpoint: &Path, expect_folded: usize) {
    let folded = dir.join(format!("{name}-folded.safetensors"));
    let out = normlab(&["fold", "--checkpoint", s(checkpoint), "--out", s(&folded)]).ok();
    assert!(out.stderr.contains(&format!("{expect_folded} batch norm")), "{}", out.ctx());
    let (before, after) = (subset_logits(checkpoint), subset_logits(&folded));
    assert_eq!(before.len(), after.len(), "{name}");
    let worst = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (*b as f64 - *a as f64).abs() / (b.abs() as f64).max(1.0))
        .fold(0.0, f64::max);
    assert!(worst <= 1e-5, "{name}: folded logits differ by {worst:e}");
    let eval = |c: &Path| normlab(&["eval", "--checkpoint", s(c), "--data-dir", s(&subset()), "--json"]).ok().json();
    let (e0, e1) = (eval(checkpoint), eval(&folded));
    assert_eq!(f(&e0, "val_acc"), f(&e1, "val_acc"), "{name}: accuracy changed");
    assert_eq!(e0["confusion"], e1["confusion"], "{name}: a prediction changed");
    eprintln!("{name}: {expect_folded} folded, largest difference {worst:.2e}, accuracy {}", f(&e1, "val_acc"));
}

#[test]
fn folded_checkpoints_give_the_same_outputs_for_every_built_in_model_and_a_model_file() {
    let dir = tempfile::Builder::new().prefix("normlab-fold-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for (model, folds) in [("bn-lenet", 4), ("bn-lenet-scratch", 4), ("lenet", 0), ("ln-lenet", 0)] {
        let run = dir.path().join(model);
        normlab(&[
            "train",
            "--model",
            model,
            "--limit-train",
            "1024",
            "--limit-val",
            "64",
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--lr",
            "0.5",
            "--seed",
            "2",
            "--quiet",
            "--data-dir",
            s(&subset()),
            "--out",
            s(&run),
        ])
        .ok();
        fold_and_compare(dir.path(), model, &run.join("model.safetensors"), folds);
    }
    let vgg = model_file_checkpoint(dir.path());
    fold_and_compare(dir.path(), "vgg-small", &vgg, 3);
    // the folded network is a network like any other: folding it again folds nothing
    let again = dir.path().join("again.safetensors");
    let out =
        normlab(&["fold", "--checkpoint", s(&dir.path().join("vgg-small-folded.safetensors")), "--out", s(&again)]);
    assert!(out.ok().stderr.contains("0 batch norms folded"));
}

#[test]
fn fold_refuses_bad_options_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.safetensors");
    let out = dir.path().join("f.safetensors");
    normlab(&["fold", "--checkpoint", s(&missing), "--out", s(&out)]).user_error(&["missing.safetensors"]);
    normlab(&["fold", "--checkpoint", s(&missing), "--out", s(&dir.path().join("f.onnx"))])
        .user_error(&["--out", ".safetensors"]);
    assert!(!out.exists());
}
