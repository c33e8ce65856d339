//! `normlab train`'s training options end to end on the committed subset:
//! AdamW, schedules, label smoothing and augmentation recorded and resumed
//! exactly, best.safetensors, BN momentum and eps, a model file's [train]
//! defaults, and the one-line errors of bad values.

use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::runs::{read_metrics, train};
use common::{normlab, s, subset};
use serde_json::Value;

fn run_json(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap()
}

/// metrics.csv without the two timing columns.
fn metrics_without_times(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|l| {
            l.split(',').enumerate().filter(|(i, _)| *i != 5 && *i != 6).map(|(_, v)| v).collect::<Vec<_>>().join(",")
        })
        .collect()
}

const RECIPE: [&str; 16] = [
    "--epochs",
    "4",
    "--limit-train",
    "1536",
    "--batch-size",
    "32",
    "--optimizer",
    "adamw",
    "--lr",
    "3e-3",
    "--schedule",
    "cosine",
    "--warmup-epochs",
    "0.5",
    "--augment",
    "crop,flip",
];

/// AdamW + cosine with warm-up + crops and flips + label smoothing, killed
/// (SIGKILL) once an epoch is on disk, resumes to the uninterrupted run's
/// metrics (lr column included) and weights, byte for byte; the options
/// are in run.json.
#[test]
fn adamw_cosine_augmented_run_killed_and_resumed_equals_the_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (whole, cut) = (tmp.path().join("whole"), tmp.path().join("cut"));
    let data = subset();
    let mut args: Vec<&str> = vec!["train", "--quiet", "--label-smoothing", "0.1", "--data-dir", s(&data)];
    args.extend(RECIPE);
    let mut a = args.clone();
    a.extend(["--out", s(&whole)]);
    normlab(&a).ok();
    let options = &run_json(&whole)["options"];
    assert_eq!(options["optimizer"]["kind"], "adamw");
    assert_eq!(options["schedule"]["kind"], "cosine");
    assert_eq!(options["augment"], serde_json::json!({"crop_padding": 2, "hflip": true}));
    assert_eq!(options["label_smoothing"], 0.1);
    let (header, rows) = read_metrics(&whole);
    assert!(header.ends_with(",lr"), "{header}");
    // warm-up from 0 over half an epoch, then the cosine down
    assert_eq!(rows[0][7], 0.0);
    assert!(rows[1][7] > rows[2][7] && rows[2][7] > rows[3][7] && rows[3][7] > 0.0, "{rows:?}");

    let mut b = args.clone();
    b.extend(["--out", s(&cut)]);
    let mut child = Command::new(common::BIN).args(&b).stdout(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while !cut.join("checkpoint.safetensors").exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "no checkpoint after a minute");
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(20));
    child.kill().unwrap();
    child.wait().unwrap();
    let done = metrics_without_times(&cut).len().saturating_sub(1);
    if done >= 4 {
        eprintln!("skipped the kill: the run ended before it (a fast machine); resuming a finished run instead");
    }
    // a conflicting option is refused, naming it
    normlab(&["train", "--resume", s(&cut), "--optimizer", "sgd"]).user_error(&["--optimizer", "adamw"]);
    normlab(&["train", "--resume", s(&cut), "--epochs", "6"]).user_error(&["--epochs", "cosine"]);
    normlab(&["train", "--resume", s(&cut), "--quiet", "--augment", "flip,crop"]).ok();
    assert_eq!(metrics_without_times(&whole), metrics_without_times(&cut));
    for file in ["model.safetensors", "best.safetensors"] {
        assert_eq!(std::fs::read(whole.join(file)).unwrap(), std::fs::read(cut.join(file)).unwrap(), "{file}");
    }
}

/// best.safetensors is model.safetensors of the epoch with the best
/// validation accuracy (the same bytes a run stopped there writes), and
/// run.json names that epoch.
#[test]
fn best_safetensors_is_the_best_epochs_model() {
    let tmp = tempfile::tempdir().unwrap();
    let long = tmp.path().join("long");
    train(&long, &["--epochs", "4", "--lr", "0.9", "--quiet"]).ok();
    let (_, rows) = read_metrics(&long);
    let best = rows.iter().fold(0, |b, r| if r[4] > rows[b][4] { (r[0] as usize) - 1 } else { b }) + 1;
    assert_eq!(run_json(&long)["best"]["epoch"], best);
    let short = tmp.path().join("short");
    train(&short, &["--epochs", &best.to_string(), "--lr", "0.9", "--quiet"]).ok();
    assert_eq!(
        std::fs::read(long.join("best.safetensors")).unwrap(),
        std::fs::read(short.join("model.safetensors")).unwrap(),
        "best.safetensors of the 4-epoch run is the model after epoch {best}"
    );
    // it loads where a model does
    let e = normlab(&[
        "eval",
        "--checkpoint",
        s(&long.join("best.safetensors")),
        "--data-dir",
        s(&subset()),
        "--limit",
        "64",
        "--json",
    ]);
    e.ok();
}

/// --bn-momentum and --bn-eps reach every BN layer of a built-in model
/// (recorded in the checkpoint's description), and a model file's [train]
/// table gives defaults that the command line overrides.
#[test]
fn bn_settings_and_model_file_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let bn = tmp.path().join("bn");
    train(&bn, &["--epochs", "1", "--bn-momentum", "0.01", "--bn-eps", "1e-3", "--quiet"]).ok();
    let spec: Value =
        serde_json::from_str(&common::runs::tensors(&bn.join("model.safetensors")).1["normlab.spec"]).unwrap();
    let bns: Vec<&Value> = spec["layers"].as_array().unwrap().iter().filter(|l| l["type"] == "batch_norm").collect();
    assert_eq!(bns.len(), 4);
    assert!(bns.iter().all(|l| l["momentum"] == 0.01 && l["eps"] == 1e-3), "{bns:?}");
    normlab(&["train", "--resume", s(&bn), "--bn-momentum", "0.1"]).user_error(&["--bn-momentum"]);

    let file = tmp.path().join("small.toml");
    let layers = "[[layers]]\ntype = \"conv2d\"\nout_channels = 4\nkernel = 3\n[[layers]]\ntype = \"batch_norm\"\nmomentum = 0.3\n\
                  [[layers]]\ntype = \"relu\"\n[[layers]]\ntype = \"max_pool\"\nkernel = 2\n[[layers]]\ntype = \"flatten\"\n\
                  [[layers]]\ntype = \"linear\"\nout_features = 10\n";
    std::fs::write(&file, format!("{layers}\n[train]\nepochs = 1\noptimizer = \"adamw\"\nlabel_smoothing = 0.2\nbn_momentum = 0.05\nschedule = \"one-cycle\"\n")).unwrap();
    let out = tmp.path().join("file");
    // the small recipe without its --epochs, which [train] gives
    let sub = subset();
    normlab(&[
        "train",
        "--model",
        s(&file),
        "--label-smoothing",
        "0.05",
        "--quiet",
        "--limit-train",
        "512",
        "--limit-val",
        "128",
        "--batch-size",
        "32",
        "--data-dir",
        s(&sub),
        "--out",
        s(&out),
    ])
    .ok();
    let doc = run_json(&out);
    let o = &doc["options"];
    assert_eq!(doc["epochs"].as_array().unwrap().len(), 1, "epochs from [train]");
    assert_eq!((o["optimizer"]["kind"].as_str(), o["schedule"]["kind"].as_str()), (Some("adamw"), Some("one-cycle")));
    assert_eq!(o["label_smoothing"], 0.05, "the command line wins over [train]");
    assert_eq!(o["sgd"]["lr"], 1e-3, "AdamW's default lr");
    assert_eq!(o["network"]["layers"][1]["momentum"], 0.05, "[train] bn_momentum overrides the layer's 0.3");

    // a bad key or value in [train] is named with its line
    std::fs::write(&file, format!("{layers}\n[train]\nepochs = 1\nlr_decay = 0.5\n")).unwrap();
    train(&tmp.path().join("bad1"), &["--model", s(&file)]).user_error(&["small.toml", "line 21", "lr_decay"]);
    std::fs::write(&file, format!("{layers}\n[train]\nlabel_smoothing = 1.5\n")).unwrap();
    train(&tmp.path().join("bad2"), &["--model", s(&file)]).user_error(&["small.toml", "line 20", "label_smoothing"]);
}

/// Bad values: exit 2, one line naming the option.
#[test]
fn bad_training_options_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    for (extra, needle) in [
        (&["--label-smoothing", "-0.1"][..], "--label-smoothing"),
        (&["--optimizer", "adamw", "--beta1", "1"], "--beta1"),
        (&["--optimizer", "adamw", "--beta2", "1.5"], "--beta2"),
        (&["--beta1", "0.9"], "--beta1"),
        (&["--optimizer", "adamw", "--momentum", "0.9"], "--momentum"),
        (&["--schedule", "linear"], "--schedule"),
        (&["--schedule", "step"], "--step-size"),
        (&["--warmup-epochs", "9"], "--warmup-epochs"),
        (&["--augment", "rotate"], "--augment"),
        (&["--crop-padding", "30"], "--crop-padding"),
        (&["--bn-momentum", "1.5"], "--bn-momentum"),
        (&["--bn-eps", "0"], "--bn-eps"),
        (&["--model", "lenet", "--bn-momentum", "0.2"], "--bn-momentum"),
    ] {
        train(&tmp.path().join("bad"), extra).user_error(&[needle]);
    }
}
