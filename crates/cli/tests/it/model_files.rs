//! `normlab train --model FILE.toml`: a VGG-style network described in a
//! model file trains, reloads for eval/inspect/predict/recompute-stats,
//! resumes to the same bytes as an uninterrupted run, and bad files exit 2
//! with the file, line, layer and field named.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn normlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_normlab")).args(args).output().expect("normlab runs")
}

fn ok(args: &[&str]) -> String {
    let out = normlab(args);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn json_line(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.lines().last().expect("a line on stdout")).unwrap()
}

/// A small VGG-style file: 3x3 convolutions with padding, BN, ReLU, max-pool.
const VGG: &str = r#"
[[layers]]
type = "conv2d"
out_channels = 8
kernel = 3
padding = 1
bias = false

[[layers]]
type = "batch_norm"

[[layers]]
type = "relu"

[[layers]]
type = "max_pool"
kernel = 2

[[layers]]
type = "conv2d"
out_channels = 8
kernel = 3
padding = 1
bias = false

[[layers]]
type = "batch_norm"
momentum = 0.2

[[layers]]
type = "relu"

[[layers]]
type = "max_pool"
kernel = 2

[[layers]]
type = "flatten"

[[layers]]
type = "linear"
out_features = 10
"#;

fn run_args<'a>(model: &'a str, data: &'a str, epochs: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--model",
        model,
        "--epochs",
        epochs,
        "--limit-train",
        "384",
        "--limit-val",
        "200",
        "--batch-size",
        "32",
        "--momentum",
        "0.9",
        "--lr",
        "0.05",
        "--quiet",
        "--threads",
        "2",
        "--data-dir",
        data,
    ]
}

#[test]
fn a_model_file_trains_reloads_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("tiny-vgg.toml");
    std::fs::write(&file, VGG).unwrap();
    let data = repo().join("tests/data/fashion-mnist-subset");
    let (file_s, data_s) = (file.to_str().unwrap(), data.to_str().unwrap());
    let (whole, cut) = (tmp.path().join("whole"), tmp.path().join("cut"));

    let mut a = run_args(file_s, data_s, "2");
    a.extend(["--json", "--out", whole.to_str().unwrap()]);
    let summary = json_line(&ok(&a));
    let val_acc = summary["val_acc"].as_f64().unwrap();
    assert!(val_acc > 0.3, "the network learns something in 2 short epochs: {val_acc}");

    // eval on the same 200 images gives the run's validation accuracy
    let model = whole.join("model.safetensors");
    let eval = json_line(&ok(&[
        "eval",
        "--checkpoint",
        model.to_str().unwrap(),
        "--data-dir",
        data_s,
        "--limit",
        "200",
        "--json",
    ]));
    assert_eq!(eval["val_acc"].as_f64().unwrap(), val_acc, "{eval}");

    // inspect names the file's layers with PyTorch's names
    let inspect = ok(&["inspect", "--checkpoint", model.to_str().unwrap()]);
    assert!(inspect.contains("net.5") && inspect.contains("tiny-vgg"), "{inspect}");

    // recompute-stats rebuilds and writes the same network
    let recomputed = tmp.path().join("recomputed.safetensors");
    ok(&[
        "recompute-stats",
        "--checkpoint",
        model.to_str().unwrap(),
        "--out",
        recomputed.to_str().unwrap(),
        "--data-dir",
        data_s,
    ]);
    let again = json_line(&ok(&[
        "eval",
        "--checkpoint",
        recomputed.to_str().unwrap(),
        "--data-dir",
        data_s,
        "--limit",
        "200",
        "--json",
    ]));
    assert!(again["val_acc"].as_f64().unwrap() > 0.3, "{again}");

    torch_strict_load(&file, &model, &data, val_acc);

    // one epoch, then --resume to two: the same bytes as the run of two
    let mut b = run_args(file_s, data_s, "1");
    b.extend(["--out", cut.to_str().unwrap()]);
    ok(&b);
    ok(&["train", "--resume", cut.to_str().unwrap(), "--epochs", "2", "--quiet", "--model", file_s]);
    assert_eq!(
        std::fs::read(whole.join("model.safetensors")).unwrap(),
        std::fs::read(cut.join("model.safetensors")).unwrap(),
        "the resumed model file run equals the uninterrupted one, byte for byte"
    );

    // --resume with a file describing another network is refused
    let other = tmp.path().join("other.toml");
    std::fs::write(&other, VGG.replace("momentum = 0.2", "momentum = 0.3")).unwrap();
    let out =
        normlab(&["train", "--resume", cut.to_str().unwrap(), "--epochs", "3", "--model", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--model"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// tools/model_to_torch.py builds the file's nn.Sequential in PyTorch,
/// strict-loads the checkpoint and gets the same accuracy. Needs a Python
/// with PyTorch named by NORMLAB_TORCH_PYTHON (CI has none): says it
/// skipped otherwise.
fn torch_strict_load(file: &Path, model: &Path, data: &Path, val_acc: f64) {
    let Some(python) = std::env::var_os("NORMLAB_TORCH_PYTHON") else {
        eprintln!("SKIPPED tools/model_to_torch.py check: set NORMLAB_TORCH_PYTHON to a Python with PyTorch to run it");
        return;
    };
    let script = repo().join("tools/model_to_torch.py");
    let out = Command::new(python)
        .arg(&script)
        .args([file, model])
        .args(["--data-dir", data.to_str().unwrap(), "--limit", "200"])
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("strict load ok"), "{stdout}");
    assert!(
        stdout.contains(&format!("accuracy {val_acc:.4} on 200")),
        "PyTorch's accuracy differs from normlab's {val_acc}: {stdout}"
    );
}

/// The committed example trains as the README says.
#[test]
fn the_readme_example_file_is_valid() {
    let spec =
        normlab::models::ModelSpec::from_toml_file(&repo().join("examples/models/vgg-small.toml"), Some(&[1, 28, 28]));
    assert!(spec.is_ok(), "{spec:?}");
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(readme.contains("examples/models/vgg-small.toml"), "README shows the example file");
}

#[test]
fn bad_model_files_exit_2_naming_file_line_layer_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let data = repo().join("tests/data/fashion-mnist-subset");
    let cases = [
        ("unknown.toml", VGG.replacen("\"relu\"", "\"relu6\"", 1), vec!["line 13", "layers[2]", "relu6"]),
        (
            "zero.toml",
            VGG.replacen("out_channels = 8", "out_channels = 0", 1),
            vec!["line 2", "layers[0] (conv2d)", "field out_channels"],
        ),
        (
            "kernel.toml",
            VGG.replacen("kernel = 2", "kernel = 29", 1),
            vec!["line 15", "layers[3] (max_pool)", "field kernel", "28x28"],
        ),
        ("shape.toml", VGG.replace("type = \"flatten\"", "type = \"relu\""), vec!["layers[9] (linear)", "flatten"]),
    ];
    for (name, text, wants) in cases {
        let path = tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = normlab(&[
            "train",
            "--model",
            path.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            tmp.path().join(format!("run-{name}")).to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{name}: one line: {err}");
        assert!(err.contains(name), "{name}: {err}");
        for want in wants {
            assert!(err.contains(want), "{name}: '{want}' not in {err}");
        }
        assert!(!Path::new(&tmp.path().join(format!("run-{name}"))).join("model.safetensors").exists());
    }
}
