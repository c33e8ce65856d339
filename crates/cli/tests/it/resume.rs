//! Interrupted and resumed runs, divergence, and what stays on disk.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn subset() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fashion-mnist-subset")
}

fn normlab(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_normlab")).args(args).output().expect("normlab runs")
}

/// metrics.csv without the two timing columns.
fn metrics_without_times(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("metrics.csv"))
        .expect("metrics.csv")
        .lines()
        .map(|l| l.split(',').take(5).collect::<Vec<_>>().join(","))
        .collect()
}

const RUN: [&str; 12] = [
    "train",
    "--epochs",
    "5",
    "--limit-train",
    "1536",
    "--batch-size",
    "32",
    "--momentum",
    "0.9",
    "--quiet",
    "--threads",
    "2",
];

#[test]
fn a_run_killed_mid_epoch_resumes_to_the_same_metrics_and_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let data = subset();
    let (whole, cut) = (tmp.path().join("whole"), tmp.path().join("cut"));
    let mut args: Vec<&str> = RUN.to_vec();
    args.extend(["--data-dir", data.to_str().unwrap()]);

    let mut a = args.clone();
    a.extend(["--out", whole.to_str().unwrap()]);
    assert!(normlab(&a).status.success());

    // kill -9 the same run once an epoch is on disk and the next one is under way
    let mut b = args.clone();
    b.extend(["--out", cut.to_str().unwrap()]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_normlab")).args(&b).stdout(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while !cut.join("checkpoint.safetensors").exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "no checkpoint after a minute");
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(20));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let done = metrics_without_times(&cut).len() - 1;
    assert!(done < 5, "the run was cut before its end ({done} epochs done)");
    // a kill -9 can land inside any write: a temporary file may be left
    // beside the files it was to replace (never in their place), and the
    // resume removes it

    let out = normlab(&["train", "--resume", cut.to_str().unwrap(), "--data-dir", data.to_str().unwrap(), "--quiet"]);
    assert!(out.status.success(), "resume failed: {}", String::from_utf8_lossy(&out.stderr));
    for entry in std::fs::read_dir(&cut).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(!name.contains(".tmp"), "temporary file {name} left behind after the resume");
    }
    assert_eq!(
        std::fs::read(whole.join("best.safetensors")).unwrap(),
        std::fs::read(cut.join("best.safetensors")).unwrap()
    );
    assert_eq!(metrics_without_times(&whole), metrics_without_times(&cut));
    assert_eq!(
        std::fs::read(whole.join("model.safetensors")).unwrap(),
        std::fs::read(cut.join("model.safetensors")).unwrap(),
        "resumed weights equal the uninterrupted run's, byte for byte"
    );
}

#[test]
fn resume_of_a_directory_without_a_checkpoint_is_a_user_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = normlab(&["train", "--resume", tmp.path().to_str().unwrap(), "--quiet"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("checkpoint.safetensors"), "{err}");
}

#[test]
fn divergence_stops_with_epoch_and_batch_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = subset();
    let dir = tmp.path().join("run");
    let common = ["--limit-train", "512", "--epochs", "1", "--quiet", "--data-dir", data.to_str().unwrap()];
    let mut good = vec!["train", "--out", dir.to_str().unwrap()];
    good.extend(common);
    assert!(normlab(&good).status.success());
    let saved = std::fs::read(dir.join("model.safetensors")).unwrap();
    let state = std::fs::read(dir.join("checkpoint.safetensors")).unwrap();

    // --force: the new run may replace the old one, but only once it has an epoch to show for it
    let mut bad = vec!["train", "--out", dir.to_str().unwrap(), "--force", "--lr", "3e38"];
    bad.extend(common);
    let out = normlab(&bad);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("diverged at epoch 1, batch"), "{err}");
    assert!(err.contains("smaller learning rate"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read(dir.join("model.safetensors")).unwrap(), saved, "the last good model is untouched");
    assert_eq!(std::fs::read(dir.join("checkpoint.safetensors")).unwrap(), state, "the last good state is untouched");
}
