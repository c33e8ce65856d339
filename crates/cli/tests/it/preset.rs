//! `normlab train --preset fast` end to end on the committed subset: the
//! preset's network and options are recorded, options given beside it
//! replace its values, its run resumes, and `--nesterov` is SGD's.

use crate::common;

use std::path::Path;

use common::{normlab, s, subset};
use serde_json::Value;

fn run_json(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap()
}

fn preset_run(out: &Path, extra: &[&str]) -> common::Out {
    let data = subset();
    let mut args = vec![
        "train",
        "--preset",
        "fast",
        "--quiet",
        "--limit-train",
        "512",
        "--limit-val",
        "200",
        "--data-dir",
        s(&data),
    ];
    args.extend(["--out", s(out)]);
    args.extend(extra);
    normlab(&args)
}

/// The preset's [train] table and network reach the run, and an option
/// given beside it wins.
#[test]
fn preset_fast_records_its_recipe_and_takes_options_over_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fast");
    preset_run(&dir, &["--epochs", "1"]).ok();
    let o = &run_json(&dir)["options"];
    assert_eq!(o["model"], "fast");
    assert_eq!(o["epochs"], 1, "--epochs given replaces the preset's 7");
    assert_eq!(o["sgd"]["nesterov"], true);
    assert_eq!(o["sgd"]["momentum"], 0.9);
    assert_eq!(o["schedule"]["kind"], "one-cycle");
    assert_eq!(o["label_smoothing"], 0.1);
    assert_eq!(o["augment"]["hflip"], true);
    let layers = o["network"]["layers"].as_array().unwrap();
    assert_eq!(layers.iter().filter(|l| l["type"] == "batch_norm").count(), 4, "{layers:?}");
    assert_eq!(layers.last().unwrap()["out_features"], 10);
    assert!(dir.join("model.safetensors").is_file());

    let other = tmp.path().join("lr");
    preset_run(&other, &["--epochs", "1", "--lr", "0.05", "--label-smoothing", "0"]).ok();
    let o = &run_json(&other)["options"];
    assert_eq!(o["sgd"]["lr"], 0.05);
    assert_eq!(o["label_smoothing"], 0.0);
    assert_eq!(o["sgd"]["nesterov"], true, "what is not given stays the preset's");
}

/// Two preset runs with one seed give the same weights; `--resume` of a
/// finished preset run accepts `--preset fast` and leaves it as it was, and
/// refuses another network or an optimizer it did not record.
#[test]
fn preset_run_is_deterministic_and_resume_checks_its_options() {
    let tmp = tempfile::tempdir().unwrap();
    let (whole, cut) = (tmp.path().join("whole"), tmp.path().join("cut"));
    preset_run(&whole, &["--epochs", "2"]).ok();
    preset_run(&cut, &["--epochs", "2"]).ok();
    let weights = std::fs::read(cut.join("model.safetensors")).unwrap();
    assert_eq!(std::fs::read(whole.join("model.safetensors")).unwrap(), weights, "same seed, same weights");
    normlab(&["train", "--resume", s(&cut), "--preset", "fast", "--quiet"]).ok();
    assert_eq!(std::fs::read(cut.join("model.safetensors")).unwrap(), weights, "a finished run stays as it was");
    normlab(&["train", "--resume", s(&cut), "--model", "bn-lenet"]).user_error(&["--model"]);
    let plain = tmp.path().join("plain");
    let data = subset();
    let args = ["train", "--quiet", "--epochs", "1", "--limit-train", "256", "--limit-val", "100"];
    normlab(&[&args[..], &["--data-dir", s(&data), "--out", s(&plain), "--momentum", "0.9"]].concat()).ok();
    normlab(&["train", "--resume", s(&plain), "--nesterov"]).user_error(&["--nesterov"]);
    normlab(&["train", "--resume", s(&plain), "--preset", "fast"]).user_error(&["--preset"]);
}

/// `--nesterov` is SGD's, needs momentum, and cannot go with --model.
#[test]
fn nesterov_and_preset_errors_are_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = subset();
    let base = ["train", "--quiet", "--epochs", "1", "--limit-train", "256", "--data-dir", s(&data)];
    let out = tmp.path().join("x");
    normlab(&[&base[..], &["--out", s(&out), "--nesterov", "--optimizer", "adamw"]].concat())
        .user_error(&["--nesterov", "adamw"]);
    normlab(&[&base[..], &["--out", s(&out), "--nesterov"]].concat()).user_error(&["nesterov", "momentum"]);
    let e = normlab(&[&base[..], &["--out", s(&out), "--preset", "fast", "--model", "lenet"]].concat());
    assert_eq!(e.code, 2, "{}", e.ctx());
    assert!(e.stderr.contains("--preset") && e.stderr.contains("--model"), "{}", e.ctx());
    let e = normlab(&[&base[..], &["--out", s(&out), "--preset", "slow"]].concat());
    assert_eq!(e.code, 2, "{}", e.ctx());
    assert!(e.stderr.contains("fast"), "the error lists the presets: {}", e.ctx());
    assert!(!out.join("model.safetensors").exists());
}
