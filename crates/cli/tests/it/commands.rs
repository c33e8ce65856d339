//! Every command's output when it succeeds (train, eval, predict, inspect,
//! recompute-stats, --help), end to end on the committed subset
//! (`tests/data/fashion-mnist-subset`: 2,000 training and 1,000 test images).
//!
//! One small training run (1,024 images, 2 epochs) is shared by most tests
//! through a `OnceLock` (`common::runs::trained`); the others train their
//! own runs of the same size. Each run takes well under a second in release
//! mode.

use crate::common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use normlab::data::CLASS_NAMES;
use serde_json::Value;

use common::runs::{eval_json, f, read_metrics, tensor, tensors, test_images, train, trained, EPOCHS, LIMIT_VAL};
use common::{normlab, s, subset};

const CSV_HEADER: &str = "epoch,train_loss,train_acc,val_loss,val_acc,train_seconds,eval_seconds,lr";
const EPOCH_KEYS: [&str; 8] =
    ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "train_seconds", "eval_seconds", "lr"];
const SUMMARY_KEYS: [&str; 11] = [
    "epochs",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "train_seconds_per_epoch",
    "train_examples_per_sec",
    "total_seconds",
    "threads",
    "isa",
    "out",
];
const BN_LAYERS: [(&str, usize); 4] = [("net.1", 6), ("net.5", 16), ("net.10", 120), ("net.13", 84)];

// ---------------------------------------------------------------- 1. train

#[test]
fn train_writes_every_output_under_out() {
    let t = trained();
    let mut names: Vec<String> =
        std::fs::read_dir(&t.out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, common::runs::RUN_OUTPUTS, "exactly the seven outputs, no temporary files left behind");

    let (header, rows) = read_metrics(&t.out);
    assert_eq!(header, CSV_HEADER);
    assert_eq!(rows.len(), EPOCHS, "one row per epoch");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.len(), 8, "{row:?}");
        assert_eq!(row[7], 0.2, "the lr column: the recipe's constant --lr 0.2");
        assert_eq!(row[0], (i + 1) as f64, "epochs are counted from 1");
        assert!(row.iter().all(|x| x.is_finite()), "{row:?}");
        assert!(row[1] > 0.0 && row[3] > 0.0, "losses are positive: {row:?}");
        assert!((0.0..=1.0).contains(&row[2]) && (0.0..=1.0).contains(&row[4]), "{row:?}");
        assert!(row[5] >= 0.0 && row[6] >= 0.0, "{row:?}");
    }
    assert!(rows[1][1] < rows[0][1], "training loss falls: {rows:?}");

    let svg = std::fs::read_to_string(t.out.join("curves.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"), "curves.svg is an SVG document");
    let png = image::open(t.out.join("curves.png")).expect("curves.png decodes");
    assert!(png.width() >= 200 && png.height() >= 100, "{}x{}", png.width(), png.height());

    let (weights, meta) = tensors(&t.model());
    assert_eq!(meta.get("normlab.model").map(String::as_str), Some("bn-lenet"));
    assert!(
        weights.iter().any(|(n, _)| n == "net.1.running_var"),
        "{:?}",
        weights.iter().map(|w| &w.0).collect::<Vec<_>>()
    );

    let run: Value =
        serde_json::from_str(&std::fs::read_to_string(t.out.join("run.json")).unwrap()).expect("run.json is JSON");
    let o = &run["options"];
    assert_eq!(o["epochs"], 2, "{o}");
    assert_eq!(o["batch_size"], 32, "{o}");
    assert_eq!(o["sgd"]["lr"], 0.2, "{o}");
    assert_eq!(o["seed"], 7, "{o}");
    assert_eq!(o["limit_train"], 1024, "{o}");
    assert_eq!(o["limit_val"], 256, "{o}");
    assert_eq!(o["model"], "bn-lenet", "{o}");
    assert_eq!(run["train_examples"], 1024);
    assert_eq!(run["val_examples"], 256);
    let result = &run["result"];
    assert_eq!(result["summary"], true, "run.json holds the final summary: {run}");
    assert_eq!(f(result, "val_acc"), f(t.last_epoch(), "val_acc"));
    assert_eq!(f(result, "val_loss"), f(t.last_epoch(), "val_loss"));
    assert_eq!(run["epochs"].as_array().map(Vec::len), Some(EPOCHS), "per-epoch history");
}

#[test]
fn train_json_prints_only_json_objects() {
    let t = trained();
    assert_eq!(t.lines.len(), EPOCHS + 1, "one line per epoch and a summary:\n{}", t.stdout);
    let (_, rows) = read_metrics(&t.out);
    for (i, line) in t.lines[..EPOCHS].iter().enumerate() {
        let keys: BTreeSet<&str> = line.as_object().expect("an object").keys().map(String::as_str).collect();
        assert_eq!(keys, EPOCH_KEYS.into_iter().collect(), "{line}");
        assert_eq!(line["epoch"], i + 1);
        // the CSV holds the same numbers, to its 6 decimals
        for (j, k) in EPOCH_KEYS[1..5].iter().enumerate() {
            assert_eq!(format!("{:.6}", f(line, k)), format!("{:.6}", rows[i][j + 1]), "epoch {}: {k}", i + 1);
        }
    }
    let sum = t.summary();
    assert_eq!(sum["summary"], true, "{sum}");
    for k in SUMMARY_KEYS {
        assert!(sum.get(k).is_some(), "summary lacks '{k}': {sum}");
    }
    assert_eq!(sum["epochs"], EPOCHS);
    assert_eq!(sum["out"].as_str(), Some(s(&t.out)));
    assert_eq!(format!("{:.6}", f(sum, "val_acc")), format!("{:.6}", rows[EPOCHS - 1][4]));
    assert_eq!(f(sum, "val_acc"), f(t.last_epoch(), "val_acc"));
    assert_eq!(f(sum, "train_loss"), f(t.last_epoch(), "train_loss"));
    for k in ["train_seconds_per_epoch", "train_examples_per_sec", "total_seconds"] {
        assert!(f(sum, k) > 0.0 && f(sum, k).is_finite(), "{k}: {sum}");
    }
    // the instruction set the kernels ran with, as this process would pick it
    assert_eq!(sum["isa"].as_str(), Some(normlab::isa::active().name()), "{sum}");
}

// ---------------------------------------------------------------- 2. eval

#[test]
fn eval_reproduces_the_last_epoch_from_the_checkpoint() {
    let t = trained();
    let e = eval_json(&t.model(), Some(LIMIT_VAL));
    assert_eq!(e["examples"], LIMIT_VAL);
    assert_eq!(e["model"], "bn-lenet");
    let last = t.last_epoch();
    assert!((f(&e, "val_acc") - f(last, "val_acc")).abs() < 1e-6, "eval {e} vs train {last}");
    assert!((f(&e, "val_loss") - f(last, "val_loss")).abs() < 1e-6, "eval {e} vs train {last}");

    let confusion: Vec<Vec<u64>> = serde_json::from_value(e["confusion"].clone()).expect("10x10 counts");
    assert_eq!(confusion.len(), 10);
    assert!(confusion.iter().all(|r| r.len() == 10));
    let total: u64 = confusion.iter().flatten().sum();
    assert_eq!(total, LIMIT_VAL as u64, "the confusion matrix counts every example");
    let correct: u64 = (0..10).map(|i| confusion[i][i]).sum();
    assert!((correct as f64 / LIMIT_VAL as f64 - f(&e, "val_acc")).abs() < 1e-12);
    let names: Vec<&str> = e["class_names"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(names, CLASS_NAMES);
    let per_class = e["per_class_acc"].as_object().expect("per-class accuracy");
    assert_eq!(per_class.len(), 10);
}

#[test]
fn eval_text_names_the_classes_and_prints_the_confusion_matrix() {
    let t = trained();
    let sub = subset();
    let r = normlab(&["eval", "--checkpoint", s(&t.model()), "--data-dir", s(&sub)]).ok();
    let json = eval_json(&t.model(), None);
    assert_eq!(json["examples"], 1000, "the whole test split of the subset by default");
    for name in CLASS_NAMES {
        assert!(r.stdout.contains(name), "eval output lacks '{name}':\n{}", r.stdout);
    }
    assert!(r.stdout.contains(&format!("{:.4}", f(&json, "val_acc"))), "{}", r.stdout);
    let lines: Vec<&str> = r.stdout.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.contains("confusion matrix"))
        .unwrap_or_else(|| panic!("no confusion matrix:\n{}", r.stdout));
    // the header of short names, then one row per class
    let rows: Vec<Vec<u64>> = lines[start + 2..start + 12]
        .iter()
        .zip(CLASS_NAMES)
        .map(|(l, name)| {
            let rest = l.strip_prefix(name).unwrap_or_else(|| panic!("row '{l}' should start with {name}"));
            rest.split_whitespace().map(|x| x.parse().unwrap()).collect()
        })
        .collect();
    assert!(rows.iter().all(|r| r.len() == 10), "{rows:?}");
    assert_eq!(rows.iter().flatten().sum::<u64>(), 1000);
    let confusion: Vec<Vec<u64>> = serde_json::from_value(json["confusion"].clone()).unwrap();
    assert_eq!(rows, confusion, "text and JSON agree");
}

// ---------------------------------------------------------------- 3. determinism

fn without_timing(rows: &[Vec<f64>]) -> Vec<Vec<f64>> {
    rows.iter().map(|r| r[..5].to_vec()).collect()
}

#[test]
fn same_seed_gives_the_same_run_and_another_seed_does_not() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    // same seed, and one kernel thread instead of all cores: results must
    // not depend on the thread count either
    let again = dir.path().join("again");
    train(&again, &["--seed", "7", "--quiet", "--threads", "1"]).ok();
    let other = dir.path().join("other");
    train(&other, &["--seed", "8", "--quiet"]).ok();

    let (_, a) = read_metrics(&t.out);
    let (_, b) = read_metrics(&again);
    let (_, c) = read_metrics(&other);
    assert_eq!(without_timing(&a), without_timing(&b), "same seed, same metrics");
    assert_eq!(tensors(&t.model()).0, tensors(&again.join("model.safetensors")).0, "same seed, same weights");
    for e in 0..EPOCHS {
        assert_ne!(a[e][1], c[e][1], "seed 8 should give other training losses: {a:?} vs {c:?}");
        assert_ne!(a[e][3], c[e][3], "seed 8 should give other validation losses: {a:?} vs {c:?}");
    }
}

// ---------------------------------------------------------------- 4. predict

struct Images {
    _dir: tempfile::TempDir,
    /// (path, true label of the image it was made from)
    files: Vec<(PathBuf, usize)>,
}

/// Test images 0..4 as 28x28 grey PNGs, image 0 also as a 100x100 RGB PNG
/// and image 1 as a JPEG.
fn predict_images() -> Images {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let imgs = test_images(4);
    for (i, (img, label)) in imgs.iter().enumerate() {
        let p = dir.path().join(format!("test-{i}.png"));
        img.save(&p).unwrap();
        files.push((p, *label));
    }
    let big = image::imageops::resize(&imgs[0].0, 100, 100, image::imageops::FilterType::Triangle);
    let rgb = image::DynamicImage::ImageLuma8(big).to_rgb8();
    let p = dir.path().join("big-rgb.png");
    rgb.save(&p).unwrap();
    assert_eq!(image::open(&p).unwrap().color(), image::ColorType::Rgb8);
    files.push((p, imgs[0].1));
    let p = dir.path().join("photo.jpg");
    imgs[1].0.save(&p).unwrap();
    files.push((p, imgs[1].1));
    Images { _dir: dir, files }
}

fn check_top3(v: &Value) -> Vec<(usize, f64)> {
    let top = v["top"].as_array().unwrap_or_else(|| panic!("no 'top' in {v}"));
    assert_eq!(top.len(), 3, "{v}");
    let list: Vec<(usize, f64)> = top
        .iter()
        .map(|e| {
            let c = e["class"].as_u64().unwrap() as usize;
            assert_eq!(e["name"].as_str(), Some(CLASS_NAMES[c]), "{e}");
            (c, f(e, "probability"))
        })
        .collect();
    let sum: f64 = list.iter().map(|x| x.1).sum();
    assert!(sum <= 1.0 + 1e-6, "top-3 probabilities sum to {sum} > 1: {v}");
    assert!(list.iter().all(|x| x.1 > 0.0 && x.1 <= 1.0), "{v}");
    assert!(list.windows(2).all(|w| w[0].1 >= w[1].1), "sorted descending: {v}");
    let classes: BTreeSet<usize> = list.iter().map(|x| x.0).collect();
    assert_eq!(classes.len(), 3, "three different classes: {v}");
    list
}

#[test]
fn predict_prints_each_image_with_its_top_classes() {
    let t = trained();
    let imgs = predict_images();
    let model = t.model();
    let mut args = vec!["predict", "--checkpoint", s(&model)];
    args.extend(imgs.files.iter().map(|(p, _)| s(p)));
    let r = normlab(&args).ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), imgs.files.len(), "one line per image:\n{}", r.stdout);
    for ((path, _), line) in imgs.files.iter().zip(&lines) {
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(line.contains(name), "line '{line}' should name {name}");
        let (_, classes) = line.rsplit_once(": ").unwrap_or_else(|| panic!("'{line}'"));
        let parts: Vec<&str> = classes.split(", ").collect();
        assert_eq!(parts.len(), 3, "three classes in '{line}'");
        for part in parts {
            let (class, p) = part.rsplit_once(' ').unwrap();
            assert!(CLASS_NAMES.contains(&class), "'{class}' in '{line}' is not a class name");
            let p: f64 = p.parse().unwrap_or_else(|_| panic!("probability '{p}' in '{line}'"));
            assert!((0.0..=1.0).contains(&p), "'{line}'");
        }
    }
}

#[test]
fn predict_json_gives_sorted_top3_and_matches_eval() {
    let t = trained();
    let imgs = predict_images();
    let model = t.model();
    let mut args = vec!["predict", "--checkpoint", s(&model), "--json"];
    args.extend(imgs.files.iter().map(|(p, _)| s(p)));
    let r = normlab(&args).ok();
    let all: Vec<Value> = r.stdout.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(all.len(), imgs.files.len(), "{}", r.stdout);
    for ((path, _), v) in imgs.files.iter().zip(&all) {
        assert_eq!(v["image"].as_str(), Some(s(path)), "{v}");
        check_top3(v);
    }

    // one image at a time works and gives the same answer
    for (i, (path, _)) in imgs.files.iter().enumerate() {
        let one = normlab(&["predict", "--checkpoint", s(&model), "--json", s(path)]).ok().json();
        let (a, b) = (check_top3(&one), check_top3(&all[i]));
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.0, y.0, "{one} vs {}", all[i]);
            assert!((x.1 - y.1).abs() < 1e-6, "{one} vs {}", all[i]);
        }
    }

    // a 28x28 PNG of test image 0 is exactly what eval sees: eval on that
    // one example says whether the top class is right, and its loss is
    // -ln p(true class)
    let e = eval_json(&model, Some(1));
    let (_, label) = imgs.files[0];
    let top = check_top3(&all[0]);
    assert_eq!(top[0].0 == label, f(&e, "val_acc") == 1.0, "predict {} vs eval {e}", all[0]);
    if let Some(&(_, p)) = top.iter().find(|x| x.0 == label) {
        let from_eval = (-f(&e, "val_loss")).exp();
        assert!((p - from_eval).abs() < 1e-4, "p(true) {p} from predict, {from_eval} from eval");
    }
}

// ---------------------------------------------------------------- 5. inspect

#[test]
fn inspect_shows_every_bn_layer() {
    let t = trained();
    let model = t.model();
    let r = normlab(&["inspect", "--checkpoint", s(&model)]).ok();
    for (name, c) in BN_LAYERS {
        let kind = if c <= 16 { "BatchNorm2d" } else { "BatchNorm1d" };
        assert!(r.stdout.contains(&format!("{name}  {kind}({c})")), "no {name} {kind}({c}):\n{}", r.stdout);
    }
    for k in ["gamma", "beta", "running_mean", "running_var"] {
        assert_eq!(r.stdout.matches(k).count(), 4, "'{k}' once per BN layer:\n{}", r.stdout);
    }

    let v = normlab(&["inspect", "--checkpoint", s(&model), "--json"]).ok().json();
    let layers = v["batch_norm_layers"].as_array().expect("a list of layers");
    let got: Vec<(String, u64)> = layers
        .iter()
        .map(|l| (l["layer"].as_str().unwrap().to_string(), l["num_features"].as_u64().unwrap()))
        .collect();
    let want: Vec<(String, u64)> = BN_LAYERS.iter().map(|(n, c)| (n.to_string(), *c as u64)).collect();
    assert_eq!(got, want);
    for l in layers {
        for k in ["gamma", "beta", "running_mean", "running_var"] {
            assert!(l[k]["mean"].is_number(), "{k} of {l}");
        }
    }
}

#[test]
fn inspect_layer_prints_the_vectors_of_that_layer() {
    let t = trained();
    let model = t.model();
    let r = normlab(&["inspect", "--checkpoint", s(&model), "--layer", "net.1"]).ok();
    assert!(!r.stdout.contains("net.5"), "only the layer asked for:\n{}", r.stdout);
    let gamma = r
        .stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("gamma"))
        .unwrap_or_else(|| panic!("no gamma line:\n{}", r.stdout));
    let values: Vec<f64> = gamma
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|x| x.trim().parse().unwrap())
        .collect();
    assert_eq!(values.len(), 6, "{gamma}");

    let v = normlab(&["inspect", "--checkpoint", s(&model), "--layer", "net.1", "--json"]).ok().json();
    let layers = v["batch_norm_layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{v}");
    for (key, tensor_name) in [
        ("gamma", "net.1.weight"),
        ("beta", "net.1.bias"),
        ("running_mean", "net.1.running_mean"),
        ("running_var", "net.1.running_var"),
    ] {
        let got: Vec<f64> = serde_json::from_value(layers[0][key].clone()).unwrap();
        let want = tensor(&model, tensor_name);
        assert_eq!(got.len(), 6, "{key}");
        for (g, w) in got.iter().zip(&want) {
            assert!((g - *w as f64).abs() < 1e-6, "{key}: {got:?} vs {want:?}");
        }
    }
    // the text rounds to 4 decimals what the JSON gives in full
    let gamma_json: Vec<f64> = serde_json::from_value(layers[0]["gamma"].clone()).unwrap();
    for (a, b) in values.iter().zip(&gamma_json) {
        assert!((a - b).abs() <= 5e-5 + 1e-9, "{values:?} vs {gamma_json:?}");
    }
}

#[test]
fn inspect_a_layer_that_is_not_batch_norm_is_a_user_error() {
    let t = trained();
    let model = t.model();
    let r = normlab(&["inspect", "--checkpoint", s(&model), "--layer", "net.2"]);
    r.user_error(&["--layer", "net.2", "net.1", "net.5", "net.10", "net.13"]);
    let r = normlab(&["inspect", "--checkpoint", s(&model), "--layer", "conv1"]);
    r.user_error(&["conv1", "net.1"]);
}

#[test]
fn inspect_a_model_without_batch_norm() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lenet");
    train(&out, &["--model", "lenet", "--quiet", "--limit-train", "256"]).ok();
    let model = out.join("model.safetensors");
    let r = normlab(&["inspect", "--checkpoint", s(&model)]).ok();
    assert!(r.stdout.contains("no batch-norm layers"), "{}", r.stdout);
    // --json must print JSON whatever the model
    let v = normlab(&["inspect", "--checkpoint", s(&model), "--json"]).ok().json();
    assert_eq!(v["batch_norm_layers"].as_array().map(Vec::len), Some(0), "{v}");
}

#[test]
fn inspect_layer_of_a_model_without_batch_norm_is_a_user_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lenet");
    train(&out, &["--model", "lenet", "--quiet", "--limit-train", "256"]).ok();
    let model = out.join("model.safetensors");
    // asking for a BN layer that this model does not have is the same user
    // error as asking for a non-BN layer of bn-lenet
    normlab(&["inspect", "--checkpoint", s(&model), "--layer", "net.1"]).user_error(&["--layer", "net.1"]);
}

// ---------------------------------------------------------------- 6. recompute-stats

#[test]
fn recompute_stats_writes_a_checkpoint_that_eval_loads() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let sub = subset();
    let model = t.model();
    let precise = dir.path().join("precise.safetensors");
    let r =
        normlab(&["recompute-stats", "--checkpoint", s(&model), "--out", s(&precise), "--data-dir", s(&sub), "--json"])
            .ok()
            .json();
    assert_eq!(r["bn_layers"], 4, "{r}");
    assert_eq!(r["out"].as_str(), Some(s(&precise)));
    for k in ["val_acc_before", "val_acc_after", "val_loss_before", "val_loss_after"] {
        assert!(f(&r, k).is_finite(), "{k}: {r}");
    }
    assert!(precise.is_file());
    // the numbers are those eval gives for the two files (all test images)
    let before = eval_json(&model, None);
    let after = eval_json(&precise, None);
    assert!((f(&before, "val_acc") - f(&r, "val_acc_before")).abs() < 1e-12, "{before} vs {r}");
    assert!((f(&after, "val_acc") - f(&r, "val_acc_after")).abs() < 1e-12, "{after} vs {r}");
    assert!((f(&after, "val_loss") - f(&r, "val_loss_after")).abs() < 1e-9, "{after} vs {r}");
    // only the running statistics change
    let (old, _) = tensors(&model);
    let (new, meta) = tensors(&precise);
    assert_eq!(old.len(), new.len());
    for ((n, a), (m, b)) in old.iter().zip(&new) {
        assert_eq!(n, m);
        if n.contains("running_") {
            assert_ne!(a, b, "{n} should be recomputed");
        } else {
            assert_eq!(a, b, "{n} should not change");
        }
    }
    assert!(meta.contains_key("bn_stats"), "{meta:?}");
    // the input checkpoint is left alone
    assert_eq!(tensors(&model).0, old);
}

#[test]
fn train_recompute_stats_reports_before_and_after() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let r = train(&out, &["--recompute-stats", "--json", "--quiet"]).ok();
    let lines: Vec<Value> = r.stdout.lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    let last_epoch = &lines[EPOCHS - 1];
    let run: Value = serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    let rs = &run["result"]["recompute_stats"];
    assert_eq!(rs["bn_layers"], 4, "{run}");
    assert_eq!(f(rs, "val_acc_before"), f(last_epoch, "val_acc"), "{rs}");
    let after = f(rs, "val_acc_after");
    assert!((0.0..=1.0).contains(&after), "{rs}");
    assert_eq!(&lines[EPOCHS]["recompute_stats"], rs, "the summary line says the same");
    // the saved model is the one with recomputed statistics
    let e = eval_json(&out.join("model.safetensors"), Some(LIMIT_VAL));
    assert!((f(&e, "val_acc") - after).abs() < 1e-12, "{e} vs {rs}");
    assert!((f(&e, "val_loss") - f(rs, "val_loss_after")).abs() < 1e-9, "{e} vs {rs}");
}
// ---------------------------------------------------------------- 7. help

#[test]
fn every_command_has_help_with_examples() {
    for cmd in [
        &["--help"][..],
        &["train", "--help"],
        &["eval", "--help"],
        &["predict", "--help"],
        &["inspect", "--help"],
        &["recompute-stats", "--help"],
    ] {
        let r = normlab(cmd);
        assert_eq!(r.code, 0, "normlab {}: {}", r.args, r.stderr);
        assert!(r.stdout.contains("Example"), "normlab {} has no example:\n{}", r.args, r.stdout);
    }
}

// ---------------------------------------------------------------- bench --inference

/// `bench --inference`: each network, batch and variant timed, the folded
/// network's logits within 1e-4 of the unfolded one's, and the ONNX models
/// of the networks timed written where asked.
#[test]
fn bench_inference_times_unfolded_and_folded_networks() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("onnx");
    let r = normlab(&[
        "bench",
        "--inference",
        "--networks",
        "bn-lenet,mlp-bn",
        "--batches",
        "1,3",
        "--budget",
        "0.01",
        "--rounds",
        "1",
        "--threads",
        "2",
        "--json",
        "--onnx-dir",
        s(&onnx),
    ])
    .ok();
    let v = r.json();
    assert_eq!(v["isa"].as_str(), Some(normlab::isa::active().name()), "{v}");
    assert_eq!(v["threads"].as_u64(), Some(2), "{v}");
    let rows = v["inference"].as_array().expect("an inference array");
    let keys: Vec<(String, u64, String)> = rows
        .iter()
        .map(|t| {
            (t["network"].as_str().unwrap().into(), t["batch"].as_u64().unwrap(), t["variant"].as_str().unwrap().into())
        })
        .collect();
    let mut want = Vec::new();
    for n in ["bn-lenet", "mlp-bn"] {
        for b in [1, 3] {
            for variant in ["unfolded", "folded"] {
                want.push((n.to_string(), b, variant.to_string()));
            }
        }
    }
    assert_eq!(keys, want);
    for t in rows {
        for k in ["latency_ms", "min_ms", "images_per_sec"] {
            let x = t[k].as_f64().unwrap_or(f64::NAN);
            assert!(x > 0.0 && x.is_finite(), "{k} in {t}");
        }
        let rate = t["batch"].as_f64().unwrap() / (t["latency_ms"].as_f64().unwrap() / 1e3);
        assert!((rate / t["images_per_sec"].as_f64().unwrap() - 1.0).abs() < 1e-9, "{t}");
        assert!(t["max_abs_diff"].as_f64().unwrap() <= 1e-4, "{t}");
        let folded = t["variant"] == "folded";
        // BNLeNet's four batch norms and the MLP's three fold
        let expect = if !folded {
            0
        } else if t["network"] == "bn-lenet" {
            4
        } else {
            3
        };
        assert_eq!(t["batch_norms_folded"].as_u64(), Some(expect), "{t}");
    }
    for name in ["bn-lenet.onnx", "bn-lenet-folded.onnx", "mlp-bn.onnx", "mlp-bn-folded.onnx"] {
        let len = std::fs::metadata(onnx.join(name)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 1000, "{name}: {len} bytes");
    }
    // the text table has a row per network, batch and variant
    let r = normlab(&["bench", "--inference", "--networks", "mlp-bn", "--batches", "2", "--budget", "0.01"]).ok();
    assert_eq!(r.stdout.lines().filter(|l| l.starts_with("mlp-bn")).count(), 2, "{}", r.stdout);
}

#[test]
fn bench_inference_options_are_checked() {
    normlab(&["bench", "--inference", "--networks", "alexnet"]).user_error(&["--networks", "alexnet", "bn-lenet"]);
    normlab(&["bench", "--inference", "--batches", "0"]).user_error(&["--batches"]);
    normlab(&["bench", "--inference", "--batches", "100000"]).user_error(&["--batches", "4096"]);
    normlab(&["bench", "--inference", "--rounds", "0"]).user_error(&["--rounds"]);
}

// ---------------------------------------------------------------- bench --suite

#[test]
fn bench_suite_times_each_network_against_the_measured_peak() {
    let r = normlab(&["bench", "--suite", "--budget", "0.01", "--threads", "2", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(r.stdout.trim()).expect("one JSON object");
    assert_eq!(v["isa"].as_str(), Some(normlab::isa::active().name()), "{v}");
    let suite = v["suite"].as_array().expect("a suite array");
    let names: Vec<&str> = suite.iter().filter_map(|t| t["network"].as_str()).collect();
    assert_eq!(names, ["bn-lenet", "vgg-bn", "resnet-bn", "mlp-bn"]);
    for t in suite {
        for k in ["step_ms", "examples_per_sec", "gflop_per_step", "gflops", "fraction_of_peak"] {
            let x = t[k].as_f64().unwrap_or(f64::NAN);
            assert!(x > 0.0 && x.is_finite(), "{k} in {t}");
        }
        // the step's arithmetic cannot beat the peak measured in the same run by much
        assert!(t["fraction_of_peak"].as_f64().unwrap() < 1.5, "{t}");
        let rate = t["batch"].as_f64().unwrap() / (t["step_ms"].as_f64().unwrap() / 1e3);
        assert!((rate / t["examples_per_sec"].as_f64().unwrap() - 1.0).abs() < 1e-9, "{t}");
    }
    // the VGG-style network does about 80 times the chapter's arithmetic per example
    let per_example = |i: usize| suite[i]["gflop_per_step"].as_f64().unwrap() / suite[i]["batch"].as_f64().unwrap();
    assert!((60.0..100.0).contains(&(per_example(1) / per_example(0))), "{v}");
    // the ResNet-style one (3x32x32) about 40 times
    assert!((30.0..50.0).contains(&(per_example(2) / per_example(0))), "{v}");
}
