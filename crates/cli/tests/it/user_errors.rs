//! Everyday mistakes on the command line: bad options, a wrong data
//! directory, a file that is not a checkpoint or an image, an output that
//! cannot be created, a closed stdout. Each is a one-line error with exit
//! code 2 that names the culprit, never a panic.
//!
//! Checkpoints damaged field by field are in `corrupt_checkpoints.rs`,
//! hostile images in `predict_images.rs`.

use crate::common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::runs::{subset_copy, test_images, train, trained};
use common::{normlab, s, subset, BIN};

#[test]
fn bad_training_options_are_user_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never");
    train(&out, &["--model", "foo"]).user_error(&["foo", "model"]);
    for lr in ["0", "-1", "nan", "inf"] {
        train(&out, &["--lr", lr]).user_error(&["--lr"]);
    }
    train(&out, &["--batch-size", "0"]).user_error(&["--batch-size"]);
    train(&out, &["--epochs", "0"]).user_error(&["--epochs"]);
    train(&out, &["--limit-train", "0"]).user_error(&["--limit-train"]);
    assert!(!out.exists(), "nothing is written for a run that cannot start");
}

#[test]
fn bad_data_directories_are_user_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    normlab(&["train", "--data-dir", s(&empty), "--out", s(&out)]).user_error(&[s(&empty), "--data-dir"]);
    let missing = dir.path().join("no-such-dir");
    normlab(&["train", "--data-dir", s(&missing), "--out", s(&out)]).user_error(&[s(&missing)]);

    // random bytes in place of the training images
    let data = subset_copy(dir.path());
    let mut garbage = vec![0u8; 100_000];
    for (i, b) in garbage.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    let images = data.join("train-images-idx3-ubyte.gz");
    std::fs::write(&images, &garbage).unwrap();
    normlab(&["train", "--data-dir", s(&data), "--out", s(&out), "--epochs", "1"])
        .user_error(&["train-images-idx3-ubyte"]);

    // a valid gzip stream of garbage in place of the test images
    let data2 = dir.path().join("data2");
    std::fs::rename(&data, &data2).unwrap();
    std::fs::copy(subset().join("train-images-idx3-ubyte.gz"), data2.join("train-images-idx3-ubyte.gz")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&garbage).unwrap();
    std::fs::write(data2.join("t10k-images-idx3-ubyte.gz"), gz.finish().unwrap()).unwrap();
    let t = trained();
    normlab(&["eval", "--checkpoint", s(&t.model()), "--data-dir", s(&data2)]).user_error(&["t10k-images-idx3-ubyte"]);
}

#[test]
fn bad_checkpoints_are_user_errors() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let sub = subset();
    let good = std::fs::read(t.model()).unwrap();
    let random = dir.path().join("random.safetensors");
    let bytes: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    std::fs::write(&random, bytes).unwrap();
    let half = dir.path().join("half.safetensors");
    std::fs::write(&half, &good[..good.len() / 2]).unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "these are not the weights you are looking for\n").unwrap();
    // a valid safetensors file that normlab did not write
    let foreign = dir.path().join("foreign.safetensors");
    let data = [0u8; 16];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &data).unwrap();
    std::fs::write(&foreign, safetensors::serialize([("w", view)], &None).unwrap()).unwrap();

    for ck in [&random, &half, &text, &foreign] {
        let name = ck.file_name().unwrap().to_str().unwrap();
        normlab(&["eval", "--checkpoint", s(ck), "--data-dir", s(&sub)]).user_error(&[name]);
    }
    let img = dir.path().join("x.png");
    test_images(1)[0].0.save(&img).unwrap();
    normlab(&["predict", "--checkpoint", s(&half), s(&img)]).user_error(&["half.safetensors"]);
    normlab(&["inspect", "--checkpoint", s(&text)]).user_error(&["notes.txt"]);
    let g = dir.path().join("g.safetensors");
    normlab(&["recompute-stats", "--checkpoint", s(&random), "--out", s(&g), "--data-dir", s(&sub)])
        .user_error(&["random.safetensors"]);
    assert!(!g.exists());
}

#[test]
fn a_missing_checkpoint_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.safetensors");
    let r = normlab(&["inspect", "--checkpoint", s(&missing)]);
    r.user_error(&["missing.safetensors"]);
    // "error: PATH: No such file or directory (os error 2)", not the OS
    // message twice
    assert_eq!(r.stderr.matches("os error").count(), 1, "the cause is repeated: {}", r.stderr);
}

#[test]
fn bad_images_are_user_errors() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let model = t.model();
    let text = dir.path().join("shoe.png");
    std::fs::write(&text, "not an image at all\n").unwrap();
    normlab(&["predict", "--checkpoint", s(&model), s(&text)]).user_error(&["shoe.png"]);

    let good = dir.path().join("good.png");
    test_images(1)[0].0.save(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.png");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    normlab(&["predict", "--checkpoint", s(&model), s(&truncated)]).user_error(&["truncated.png"]);
    let missing = dir.path().join("missing.png");
    normlab(&["predict", "--checkpoint", s(&model), s(&missing)]).user_error(&["missing.png"]);
}

#[test]
fn a_damaged_jpeg_is_a_one_line_user_error() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let model = t.model();
    let good = dir.path().join("good.jpg");
    test_images(1)[0].0.save(&good).unwrap();
    normlab(&["predict", "--checkpoint", s(&model), s(&good)]).ok();
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.jpg");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let empty = dir.path().join("empty.jpg");
    std::fs::write(&empty, b"").unwrap();
    for (p, name) in [(&truncated, "truncated.jpg"), (&empty, "empty.jpg")] {
        normlab(&["predict", "--checkpoint", s(&model), s(p)]).user_error(&[name]);
    }
}

#[test]
fn an_output_that_cannot_be_created_is_a_user_error() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "a regular file").unwrap();
    train(&blocker.join("run"), &["--quiet"]).user_error(&["blocker"]);
    let sub = subset();
    normlab(&[
        "recompute-stats",
        "--checkpoint",
        s(&t.model()),
        "--out",
        s(&blocker.join("model.safetensors")),
        "--data-dir",
        s(&sub),
    ])
    .user_error(&["blocker"]);
}

#[test]
fn eval_limit_zero_names_the_option() {
    let t = trained();
    let sub = subset();
    normlab(&["eval", "--checkpoint", s(&t.model()), "--data-dir", s(&sub), "--limit", "0"]).user_error(&["--limit"]);
}

#[test]
fn a_closed_stdout_is_not_a_panic() {
    // `normlab eval ... | head -1`: the reader goes away early
    let t = trained();
    let sub = subset();
    let mut child = Command::new(BIN)
        .args(["eval", "--checkpoint", s(&t.model()), "--data-dir", s(&sub)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "normlab panics when stdout is closed:\n{stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
}

#[test]
fn the_instruction_set_cap_is_checked_and_used() {
    let dir = tempfile::tempdir().unwrap();
    let run = |isa: &str, out: &str| {
        Command::new(BIN)
            .args(["train", "--epochs", "1", "--limit-train", "64", "--limit-val", "64", "--json", "--quiet"])
            .arg("--data-dir")
            .arg(subset())
            .arg("--out")
            .arg(dir.path().join(out))
            .env("NORMLAB_ISA", isa)
            .stdin(Stdio::null())
            .output()
            .expect("run normlab")
    };
    let bad = run("sse9", "bad");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(err.contains("NORMLAB_ISA") && err.contains("avx2") && err.lines().count() == 1, "{err}");
    assert!(!dir.path().join("bad").exists(), "nothing is written for a run that cannot start");
    // a cap is used as given (every CPU has the portable level)
    let capped = run("portable", "capped");
    assert!(capped.status.success(), "{}", String::from_utf8_lossy(&capped.stderr));
    let summary = String::from_utf8_lossy(&capped.stdout).lines().last().unwrap_or("").to_string();
    assert!(summary.contains(r#""isa":"portable""#), "{summary}");
}

#[test]
fn progress_goes_to_stderr_results_to_stdout_and_quiet_means_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let run = |out: &str, extra: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.args(["train", "--epochs", "2", "--limit-train", "64", "--limit-val", "64", "--data-dir"])
            .arg(subset())
            .arg("--out")
            .arg(dir.path().join(out))
            .args(extra)
            .stdin(Stdio::null());
        let o = cmd.output().expect("run normlab");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    // people: the epochs on stderr, one closing line on stdout
    let (stdout, stderr) = run("plain", &[]);
    assert_eq!(stdout.lines().count(), 1, "only the result on stdout:\n{stdout}");
    assert!(stdout.starts_with("done in"), "{stdout}");
    assert_eq!(stderr.lines().filter(|l| l.starts_with("epoch")).count(), 2, "{stderr}");
    // --quiet: nothing at all
    let (stdout, stderr) = run("quiet", &["--quiet"]);
    assert!(stdout.is_empty() && stderr.is_empty(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    // more threads than cores: one warning line, and the run still works
    let too_many = (cores + 1).to_string();
    let mut cmd = Command::new(BIN);
    cmd.args(["--threads", &too_many, "train", "--epochs", "1", "--limit-train", "64", "--limit-val", "64", "--quiet"])
        .arg("--data-dir")
        .arg(subset())
        .arg("--out")
        .arg(dir.path().join("threads"))
        .stdin(Stdio::null());
    let o = cmd.output().expect("run normlab");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--threads") && stderr.contains(&format!("{cores} cores")), "{stderr}");
}
