//! Image-folder data sets (`--dataset image-folder --data-dir DIR`) and the
//! MNIST family's other members through the command line: trees written
//! here from the committed subset's images, RGB and grey, of several sizes,
//! trained, evaluated and predicted end to end; bad trees refused with one
//! line naming the path; KMNIST found in its cache with its class names.

use crate::common;

use std::path::{Path, PathBuf};

use common::runs::f;
use common::{normlab, s, subset};
use serde_json::Value;

/// Three Fashion-MNIST classes, easy to tell apart, as folders.
const CLASSES: [(&str, u8); 3] = [("sneaker", 7), ("trouser", 1), ("tshirt", 0)];

/// How a tree's images are written.
#[derive(Clone, Copy)]
enum Style {
    /// Grey PNGs at 28x28 and 40x40.
    Grey,
    /// Colour: PNGs of 36x30 and JPEGs of 56x56 (tinted: red = the grey
    /// level, green = its half, blue = its inverse).
    Rgb,
}

/// Writes `root/train/<class>/*` and `root/test/<class>/*` from the first
/// `per_class` training and `per_class / 2` test images of each class.
fn write_tree(root: &Path, style: Style, per_class: usize) {
    let fm = normlab::data::load_dir(&subset()).expect("subset loads");
    for (split_name, split, n) in [("train", &fm.train, per_class), ("test", &fm.test, per_class / 2)] {
        for (class, label) in CLASSES {
            let dir = root.join(split_name).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            let indices = (0..split.len()).filter(|&i| split.labels[i] == label).take(n);
            for (k, i) in indices.enumerate() {
                let grey = image::GrayImage::from_raw(28, 28, split.image(i).to_vec()).unwrap();
                let filter = image::imageops::FilterType::Triangle;
                match style {
                    Style::Grey => {
                        let img = if k % 2 == 0 { grey } else { image::imageops::resize(&grey, 40, 40, filter) };
                        img.save(dir.join(format!("{k:03}.png"))).unwrap();
                    }
                    Style::Rgb => {
                        let rgb = image::RgbImage::from_fn(28, 28, |x, y| {
                            let v = grey.get_pixel(x, y).0[0];
                            image::Rgb([v, v / 2, 255 - v])
                        });
                        if k % 2 == 0 {
                            image::imageops::resize(&rgb, 36, 30, filter)
                                .save(dir.join(format!("{k:03}.png")))
                                .unwrap();
                        } else {
                            image::imageops::resize(&rgb, 56, 56, filter)
                                .save(dir.join(format!("{k:03}.jpg")))
                                .unwrap();
                        }
                    }
                }
            }
        }
    }
}

fn train_json(tree: &Path, out: &Path, epochs: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "train",
        "--dataset",
        "image-folder",
        "--data-dir",
        s(tree),
        "--out",
        s(out),
        "--epochs",
        epochs,
        "--batch-size",
        "16",
        "--lr",
        "0.3",
        "--json",
        "--quiet",
    ];
    args.extend(extra);
    let run = normlab(&args).ok();
    run.stdout.lines().map(|l| serde_json::from_str(l).expect("JSON lines")).collect()
}

fn metadata(path: &Path) -> std::collections::HashMap<String, String> {
    common::runs::tensors(path).1
}

/// An RGB tree of mixed sizes and formats trains with 3 input channels and
/// 3 classes named after the folders; eval (reading the data set and its
/// shape from the checkpoint) gives the run's last validation accuracy
/// exactly, with a 3x3 confusion matrix; predict names a folder's class.
#[test]
fn rgb_tree_trains_evaluates_and_predicts() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("photos");
    write_tree(&tree, Style::Rgb, 40);
    let out = dir.path().join("run");
    let lines = train_json(&tree, &out, "3", &[]);
    let summary = lines.last().unwrap();
    let val_acc = f(summary, "val_acc");
    // three classes: chance is 1/3; sneakers, trousers and shirts are easy
    assert!(val_acc > 0.6, "an RGB LeNet should tell three easy classes apart: {summary}");

    let model = out.join("model.safetensors");
    let meta = metadata(&model);
    assert_eq!(meta["normlab.data.input_shape"], "[3,28,28]");
    assert_eq!(meta["normlab.data.class_names"], r#"["sneaker","trouser","tshirt"]"#);
    assert_eq!(meta["normlab.data.dataset"], "image-folder");
    let w = common::runs::tensors(&model).0.into_iter().find(|(n, _)| n == "net.0.weight").unwrap().1;
    assert_eq!(w.len(), 6 * 3 * 5 * 5, "the first conv takes 3 channels");
    let run: Value = serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["dataset"], "image-folder");

    let eval = normlab(&["eval", "--checkpoint", s(&model), "--data-dir", s(&tree), "--json"]).ok().json();
    assert_eq!(eval["val_acc"].as_f64(), Some(val_acc), "eval sees what training validated on: {eval}");
    assert_eq!(eval["examples"], 60);
    assert_eq!(eval["class_names"], serde_json::json!(["sneaker", "trouser", "tshirt"]));
    let confusion: Vec<Vec<u64>> = serde_json::from_value(eval["confusion"].clone()).unwrap();
    assert_eq!(confusion.len(), 3);
    assert!(confusion.iter().all(|r| r.len() == 3 && r.iter().sum::<u64>() == 20), "{confusion:?}");
    // the table for people names the classes too
    let text = normlab(&["eval", "--checkpoint", s(&model), "--data-dir", s(&tree)]).ok().stdout;
    assert!(text.contains("tshirt") && text.contains("sneaker"), "{text}");

    // predict: the top class of each image is one of the folders, 3 at most
    let image = first_file(&tree.join("test/trouser"));
    let p = normlab(&["predict", "--checkpoint", s(&model), "--json", s(&image)]).ok().json();
    let top = p["top"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    let sum: f64 = top.iter().map(|t| t["probability"].as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-4, "three classes, all of the probability: {p}");
    assert!(top.iter().all(|t| ["sneaker", "trouser", "tshirt"].contains(&t["name"].as_str().unwrap())), "{p}");

    // eval on Fashion-MNIST is refused: other classes
    normlab(&["eval", "--checkpoint", s(&model), "--dataset", "fashion-mnist", "--data-dir", s(&subset())])
        .user_error(&["--dataset", "sneaker", "image-folder"]);
    // an image folder needs --data-dir
    normlab(&["eval", "--checkpoint", s(&model)]).user_error(&["--data-dir", "image-folder"]);
}

/// A grey tree trains with 1 channel; --channels 3 makes it RGB; resume
/// extends the run on the recorded folder, and refuses another --dataset
/// or --channels.
#[test]
fn grey_tree_channels_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("grey");
    write_tree(&tree, Style::Grey, 16);
    let out = dir.path().join("run");
    let lines = train_json(&tree, &out, "1", &[]);
    assert_eq!(lines.len(), 2, "one epoch and the summary");
    assert_eq!(metadata(&out.join("model.safetensors"))["normlab.data.input_shape"], "[1,28,28]");

    let forced = dir.path().join("forced");
    train_json(&tree, &forced, "1", &["--channels", "3"]);
    assert_eq!(metadata(&forced.join("model.safetensors"))["normlab.data.input_shape"], "[3,28,28]");

    normlab(&["train", "--resume", s(&out), "--dataset", "mnist"]).user_error(&["--dataset", "image-folder"]);
    normlab(&["train", "--resume", s(&out), "--channels", "3"]).user_error(&["--channels"]);
    let resumed = normlab(&["train", "--resume", s(&out), "--epochs", "2", "--json", "--quiet"]).ok();
    let last: Value = serde_json::from_str(resumed.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["epochs"], 2);
    // --channels is for image folders only
    normlab(&["train", "--channels", "3", "--data-dir", s(&subset()), "--out", s(&dir.path().join("x"))])
        .user_error(&["--channels", "image-folder"]);
}

fn first_file(dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.remove(0)
}

/// Bad trees: exit 2, one line naming the path at fault.
#[test]
fn bad_trees_are_refused_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    write_tree(&good, Style::Grey, 4);
    let copy = |name: &str| {
        let to = dir.path().join(name);
        copy_dir(&good, &to);
        to
    };
    let try_train = |tree: &Path| {
        normlab(&[
            "train",
            "--dataset",
            "image-folder",
            "--data-dir",
            s(tree),
            "--epochs",
            "1",
            "--out",
            s(&tree.with_extension("run")),
        ])
    };

    let empty = copy("empty-class");
    std::fs::create_dir(empty.join("train/bag")).unwrap();
    std::fs::create_dir(empty.join("test/bag")).unwrap();
    try_train(&empty).user_error(&[s(&empty.join("train/bag")), "no .png or .jpg"]);

    let no_train = copy("no-train");
    std::fs::remove_dir_all(no_train.join("train")).unwrap();
    try_train(&no_train).user_error(&[s(&no_train.join("train")), "does not exist"]);

    let no_test = copy("no-test");
    std::fs::remove_dir_all(no_test.join("test")).unwrap();
    try_train(&no_test).user_error(&[s(&no_test.join("test")), "does not exist"]);

    let mismatched = copy("mismatched");
    std::fs::rename(mismatched.join("test/tshirt"), mismatched.join("test/shirt")).unwrap();
    try_train(&mismatched).user_error(&[s(&mismatched.join("test")), "only in train/: tshirt", "only in test/: shirt"]);

    let undecodable = copy("undecodable");
    let broken = undecodable.join("train/sneaker/000.png");
    let bytes = std::fs::read(&broken).unwrap();
    std::fs::write(&broken, &bytes[..bytes.len() / 2]).unwrap();
    try_train(&undecodable).user_error(&[s(&broken), "decode"]);

    let stray = copy("stray");
    std::fs::write(stray.join("train/sneaker/notes.txt"), "hello").unwrap();
    try_train(&stray).user_error(&[s(&stray.join("train/sneaker/notes.txt")), ".png or .jpg"]);

    // a FIFO would block a reader: refused unopened, as a broken link is
    let fifo_tree = copy("fifo");
    let fifo = fifo_tree.join("train/trouser/pipe.png");
    let c_path = std::ffi::CString::new(s(&fifo)).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path that lives across the call.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    try_train(&fifo_tree).user_error(&[s(&fifo), "not a regular file"]);

    let one_class = copy("one-class");
    for c in ["trouser", "tshirt"] {
        std::fs::remove_dir_all(one_class.join("train").join(c)).unwrap();
        std::fs::remove_dir_all(one_class.join("test").join(c)).unwrap();
    }
    try_train(&one_class).user_error(&["2 to 256 classes"]);

    // more than memory allows: refused from the headers, before decoding
    let big = dir.path().join("big");
    write_tree(&big, Style::Rgb, 160); // 720 images of 3x28x28 bytes: 1.6 MiB
    normlab(&[
        "train",
        "--dataset",
        "image-folder",
        "--data-dir",
        s(&big),
        "--max-data-mib",
        "1",
        "--out",
        s(&dir.path().join("big-run")),
    ])
    .user_error(&[s(&big), "720 images", "2 MiB", "--max-data-mib"]);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// KMNIST found in its cache directory ($XDG_CACHE_HOME/normlab/kmnist,
/// here holding the subset's files): trained with its hiragana class names,
/// recorded in the run, and a resume with another --dataset refused.
#[test]
fn kmnist_from_its_cache_has_its_class_names() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let kmnist = cache.join("normlab/kmnist");
    std::fs::create_dir_all(&kmnist).unwrap();
    for e in std::fs::read_dir(subset()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), kmnist.join(e.file_name())).unwrap();
    }
    let out = dir.path().join("run");
    let run = std::process::Command::new(common::BIN)
        .args(["train", "--dataset", "kmnist", "--limit-train", "256", "--limit-val", "64", "--epochs", "1"])
        .args(["--json", "--quiet", "--out"])
        .arg(&out)
        .env_remove("NORMLAB_DATA")
        .env("XDG_CACHE_HOME", &cache)
        .env("NORMLAB_MIRROR", "http://127.0.0.1:9/")
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", String::from_utf8_lossy(&run.stderr));
    let meta = metadata(&out.join("model.safetensors"));
    assert_eq!(meta["normlab.data.dataset"], "kmnist");
    let names: Vec<String> = serde_json::from_str(&meta["normlab.data.class_names"]).unwrap();
    assert_eq!(names[0], "o (お)");
    assert_eq!(names[9], "wo (を)");
    // eval picks KMNIST from the checkpoint; --data-dir names the same files
    let eval =
        normlab(&["eval", "--checkpoint", s(&out.join("model.safetensors")), "--data-dir", s(&kmnist)]).ok().stdout;
    assert!(eval.contains("tsu (つ)"), "{eval}");
    normlab(&["train", "--resume", s(&out), "--dataset", "fashion-mnist"]).user_error(&["--dataset", "kmnist"]);
}
